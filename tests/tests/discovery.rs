//! `detector watch`'s discovery by kernel events, as root with real eBPF: a Go
//! process started after watch is watched without waiting for `--interval` (60 s
//! here: no tick and no /proc rescan happens during the test), an exited one is
//! dropped the same way, a non-Go program executed again and again is analysed once,
//! and events lost while the ring buffer was full make watch rescan /proc.
//!
//! Bounds are generous (this is about whether it happens, not how fast:
//! `cargo xtask bench` measures the latency).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use detector_tests::{corpus::scratch_dir, detector_bin, require_bpf_privileges, version_dir};

/// How long a correctness check waits for something that should take milliseconds.
const BOUND: Duration = Duration::from_secs(20);

/// One watch at a time: the lost-event test floods the host with execs.
static SERIAL: Mutex<()> = Mutex::new(());

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `detector watch` for `dir/*`, ticking every 60 s and rescanning /proc every 10
/// minutes: within a test, only events can find or drop a process. Returns it and the
/// address it serves.
fn start_watch(dir: &Path) -> (Kill, String) {
    use std::io::{BufRead, BufReader};
    let mut watch = Command::new(detector_bin())
        .args(["watch", "--listen", "127.0.0.1:0", "--interval", "60s"])
        // Per-pid series: the test looks for each process's own detector_process_info.
        .args(["--rescan-interval", "600s", "--per-pid-series", "--exe"])
        .arg(format!("{}/*", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start detector watch");
    let mut lines = BufReader::new(watch.stderr.take().expect("piped")).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("http://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        })
        .expect("watch prints the address it serves");
    std::thread::spawn(move || for _ in lines {});
    (Kill(watch), addr)
}

fn metrics(addr: &str) -> String {
    detector_tests::http::get(addr, "/metrics")
        .unwrap_or_else(|e| panic!("GET /metrics on {addr}: {e}"))
        .1
}

/// An unlabelled sample's value.
fn value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == name).then(|| it.next()?.parse().ok())?
    })
}

fn watched(body: &str, pid: u32) -> bool {
    body.lines()
        .any(|l| l.starts_with("detector_process_info{") && l.contains(&format!("pid=\"{pid}\"")))
}

/// Scrapes until `cond` holds on /metrics (panics after [`BOUND`] with `what`).
fn wait_for(addr: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let body = metrics(addr);
        if cond(&body) {
            return body;
        }
        assert!(t0.elapsed() < BOUND, "{what} after {BOUND:?}:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A copy of the service fixture (its own inode) in `dir`.
fn service_copy(dir: &Path) -> PathBuf {
    let src = version_dir("service", 27).join("default/service");
    let dst = dir.join("svc");
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    dst
}

fn start(bin: &Path) -> Kill {
    Kill(
        Command::new(bin)
            .args(["-addr", "127.0.0.1:0", "-rate", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display())),
    )
}

#[test]
fn exec_and_exit_events_add_and_drop_processes_between_ticks() {
    require_bpf_privileges();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("discovery-events");
    let svc = service_copy(&dir);
    // A program that is not Go, run several times: analysed (refused) once.
    let sleep = dir.join("not-go");
    std::fs::copy("/bin/sleep", &sleep).expect("copy /bin/sleep");

    let (_watch, addr) = start_watch(&dir);
    let body = wait_for(&addr, "no first tick", |b| {
        value(b, "detector_ticks_total") == Some(1.0)
    });
    assert_eq!(value(&body, "detector_proc_events_up"), Some(1.0), "{body}");

    let t0 = Instant::now();
    let p = start(&svc);
    let pid = p.0.id();
    let body = wait_for(&addr, "the new process is not watched", |b| watched(b, pid));
    println!(
        "a new process watched after {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    // Found between ticks, by its exec event: no tick and no rescan since the first.
    assert_eq!(value(&body, "detector_ticks_total"), Some(1.0), "{body}");
    assert_eq!(
        value(&body, "detector_proc_rescans_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&body, "detector_discovery_latency_seconds_count"),
        Some(1.0),
        "{body}"
    );
    assert!(value(&body, "detector_proc_exec_events_total").is_some_and(|n| n >= 1.0));

    for _ in 0..5 {
        let st = Command::new(&sleep)
            .arg("0.3")
            .status()
            .expect("run not-go");
        assert!(st.success());
    }
    let body = wait_for(&addr, "the exits of not-go are not seen", |b| {
        value(b, "detector_proc_exit_events_total").is_some_and(|n| n >= 5.0)
    });
    // The service's binary and not-go, each analysed once.
    assert_eq!(
        value(&body, "detector_binaries_analysed_total"),
        Some(2.0),
        "{body}"
    );

    drop(p);
    let body = wait_for(&addr, "the exited process is still exported", |b| {
        !watched(b, pid)
    });
    assert_eq!(
        value(&body, "detector_processes_watched"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(value(&body, "detector_ticks_total"), Some(1.0), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lost_events_make_watch_rescan_proc() {
    require_bpf_privileges();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("discovery-lost");
    let svc = service_copy(&dir);
    let (watch, addr) = start_watch(&dir);
    wait_for(&addr, "no first tick", |b| {
        value(b, "detector_ticks_total") == Some(1.0)
    });

    // Stopped, watch reads no event: 3,000 execs (an exec and an exit event each)
    // overflow its ring buffer (64 KiB, ~2,700 events), and the service's exec comes
    // after.
    let pid = watch.0.id().to_string();
    let signal = |s: &str| {
        let st = Command::new("kill").args([s, &pid]).status().expect("kill");
        assert!(st.success(), "kill {s} {pid}");
    };
    signal("-STOP");
    let flood = |n: u32| {
        Command::new("sh")
            .args([
                "-c",
                &format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"),
            ])
            .spawn()
            .expect("sh")
    };
    let mut floods = [flood(1500), flood(1500)];
    for f in &mut floods {
        assert!(f.wait().expect("sh").success());
    }
    let p = start(&svc);
    std::thread::sleep(Duration::from_millis(300));
    signal("-CONT");

    let body = wait_for(
        &addr,
        "the process whose exec was lost is not watched",
        |b| watched(b, p.0.id()),
    );
    assert!(
        value(&body, "detector_proc_events_lost_total").is_some_and(|n| n > 0.0),
        "{body}"
    );
    assert!(
        value(&body, "detector_proc_rescans_total").is_some_and(|n| n >= 2.0),
        "{body}"
    );
    // Neither a tick nor the periodic rescan found it.
    assert_eq!(value(&body, "detector_ticks_total"), Some(1.0), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
