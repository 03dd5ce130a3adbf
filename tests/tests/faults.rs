//! Faults around detector, live, as root: a target that forks and execs children,
//! exits or is replaced on disk while probes are being attached; the watch agent's
//! endpoint under a scrape storm; stdout and stderr on a full disk. In each case
//! detector keeps working or fails cleanly (its documented exit code, one line, no
//! panic), the target is unharmed and no finding is lost.
//!
//! Targets run from private copies of the `service` fixture (their own inodes: uprobes
//! are per file, so no other test's detector can touch them). The tests of this file
//! run one at a time: the scrape storm measures CPU and latency.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use detector_tests::{
    breakpoints::{any_breakpoint, probe_sites, wait_no_breakpoints},
    detector_bin, http, program_ids_of, require_bpf_privileges, scrape,
    soak::{collect, signal, Guard, Service, SIGKILL, SIGTERM},
    version_dir, wait_programs_freed,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture(minor: u32, kind: &str) -> PathBuf {
    version_dir("service", minor).join(kind).join("service")
}

fn diagnose(pid: u32, duration: &str) -> Command {
    let mut c = Command::new(detector_bin());
    c.args([
        "diagnose",
        "--pid",
        &pid.to_string(),
        "--duration",
        duration,
    ])
    .args(["--format", "json"]);
    c
}

/// Exit code 0 or 1, a JSON report, no panic; the ReadMemStats calls it counted.
fn report_calls(out: &Output) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "diagnose exited with {}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    v["collected"]["calls"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["func"] == "readmemstats"))
        .and_then(|c| c["calls"].as_u64())
        .unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Go target that starts a child Go process (its own binary, fork + exec through
/// os/exec) every 100 ms while diagnose attaches, watches and detaches, four times:
/// every child runs to its clean exit, and the parent is unharmed.
#[test]
fn target_forking_and_execing_children_during_diagnose() {
    let _one = serial();
    require_bpf_privileges();
    let mut parent = Service::start(
        &fixture(23, "default"),
        "faults-fork",
        &[
            "-misuse",
            "readmemstats",
            "-rate",
            "200",
            "-spawn",
            "100ms",
            "-spawn-life",
            "700ms",
        ],
    )
    .unwrap();
    let sites = probe_sites(&detector_bin(), &parent.exe);
    let mut calls = 0;
    for _ in 0..4 {
        let out = diagnose(parent.pid(), "500ms").output().unwrap();
        calls += report_calls(&out);
        wait_no_breakpoints(parent.pid(), &sites, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        parent.check_alive("while diagnosed").unwrap();
    }
    // The children started during the last run end within their life.
    std::thread::sleep(Duration::from_millis(1200));
    let (ok, failed) = *parent.children.lock().unwrap();
    println!("children: {ok} ran to their clean exit, {failed} failed; {calls} ReadMemStats calls counted in the parent");
    assert_eq!(
        failed,
        0,
        "children crashed: {}",
        parent.stderr.lock().unwrap()
    );
    assert!(ok >= 40, "only {ok} children ran");
    assert!(calls > 0, "the probes never fired in the parent");
    parent.stop().unwrap();
}

/// The same forking target under `detector watch`: each child is discovered as its
/// own process (its parent being the target), and every child exits cleanly.
#[test]
fn target_forking_and_execing_children_under_watch() {
    let _one = serial();
    require_bpf_privileges();
    let mut parent = Service::start(
        &fixture(26, "pie"),
        "faults-fork-watch",
        &[
            "-misuse",
            "readmemstats",
            "-rate",
            "100",
            "-spawn",
            "500ms",
            "-spawn-life",
            "3s",
        ],
    )
    .unwrap();
    let exe = parent.exe.canonicalize().unwrap();
    let (mut watch, addr) = start_watch(&exe, Stdio::null(), Stdio::piped());
    let children_seen: BTreeSet<u32> = {
        let mut seen = BTreeSet::new();
        wait_for("a child watched", Duration::from_secs(15), || {
            for pid in watched_pids(&addr) {
                if pid != parent.pid() && parent_of(pid) == Some(parent.pid()) {
                    seen.insert(pid);
                }
            }
            seen.len() >= 2
        });
        seen
    };
    assert!(watched_pids(&addr).contains(&parent.pid()));
    signal(watch.0.id(), SIGTERM);
    let status = watch.0.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    std::thread::sleep(Duration::from_millis(3500));
    let (ok, failed) = *parent.children.lock().unwrap();
    println!("watch discovered children {children_seen:?}; {ok} children exited cleanly, {failed} failed");
    assert_eq!(
        failed,
        0,
        "children crashed: {}",
        parent.stderr.lock().unwrap()
    );
    parent.stop().unwrap();
}

/// The parent pid of `pid` (field 4 of /proc/PID/stat).
fn parent_of(pid: u32) -> Option<u32> {
    detector::watch::discover::stat_field(pid, 4).map(|p| p as u32)
}

/// A target that exits (SIGKILL, or SIGTERM and its clean exit) as soon as the first
/// breakpoint is in, i.e. while diagnose attaches: diagnose exits with code 8 ("target
/// exited mid-run"), one line, no panic, and frees its programs.
#[test]
fn target_exiting_during_attach() {
    let _one = serial();
    require_bpf_privileges();
    let bin = fixture(27, "default");
    let mut during_attach = 0;
    for round in 0..6 {
        let mut target = Service::start(
            &bin,
            &format!("faults-exit-{round}"),
            &["-misuse", "readmemstats", "-rate", "200"],
        )
        .unwrap();
        let pid = target.pid();
        let sites = probe_sites(&detector_bin(), &target.exe);
        let mut d = Guard(
            diagnose(pid, "2s")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = collect(d.0.stderr.take().unwrap());
        let t0 = Instant::now();
        let mut held = BTreeSet::new();
        while !any_breakpoint(pid, &sites) {
            held.extend(program_ids_of(d.0.id()));
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "round {round}: no breakpoint in 10 s"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        let sig = if round % 2 == 0 { SIGKILL } else { SIGTERM };
        signal(pid, sig);
        let _ = target.guard.0.wait();
        held.extend(program_ids_of(d.0.id()));
        let status = loop {
            if let Some(s) = d.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: diagnose did not end after its target exited"
            );
            held.extend(program_ids_of(d.0.id()));
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(50));
        let msg = stderr.lock().unwrap().clone();
        assert_eq!(status.code(), Some(8), "round {round}: {status}: {msg}");
        assert!(!msg.contains("panicked"), "{msg}");
        assert_eq!(msg.trim().lines().count(), 1, "one line expected: {msg}");
        assert!(msg.contains("exited"), "{msg}");
        during_attach += msg.contains("exited 0.0 s into") as usize;
        if let Err(left) = wait_programs_freed(&held) {
            panic!("round {round}: programs {left:?} still loaded");
        }
        println!(
            "round {round}: target {} at the first breakpoint; diagnose: {}",
            if sig == SIGKILL {
                "killed"
            } else {
                "terminated"
            },
            msg.trim()
        );
    }
    assert!(
        during_attach > 0,
        "no exit landed before the window started"
    );
}

/// The target's binary deleted and replaced by another file at the same path (a
/// deploy) while diagnose is attaching: diagnose completes with its report, the old
/// process keeps its probes (reached through /proc/PID/exe) and ends clean; a process
/// of the new file is unaffected.
#[test]
fn binary_replaced_on_disk_mid_attach() {
    let _one = serial();
    require_bpf_privileges();
    let mut target = Service::start(
        &fixture(25, "default"),
        "faults-replaced",
        &["-misuse", "readmemstats", "-rate", "200"],
    )
    .unwrap();
    let pid = target.pid();
    let sites = probe_sites(&detector_bin(), &target.exe);
    let d = diagnose(pid, "3s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first breakpoint", Duration::from_secs(10), || {
        any_breakpoint(pid, &sites)
    });
    // rm + copy: a new inode at the same path (writing into a running binary in
    // place fails with ETXTBSY).
    fs::remove_file(&target.exe).unwrap();
    fs::copy(fixture(27, "default"), &target.exe).unwrap();
    let mut newer = Service::start(
        &target.exe,
        "faults-replaced-new",
        &["-misuse", "readmemstats", "-rate", "200"],
    )
    .unwrap();
    let out = d.wait_with_output().unwrap();
    let calls = report_calls(&out);
    assert!(calls > 100, "only {calls} ReadMemStats calls counted");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["findings"][0]["rule"], "readmemstats-hot-path",
        "the finding is lost: {report}"
    );
    wait_no_breakpoints(pid, &sites, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    let new_sites = probe_sites(&detector_bin(), &newer.exe);
    wait_no_breakpoints(newer.pid(), &new_sites, Duration::ZERO)
        .unwrap_or_else(|e| panic!("the new file's process: {e}"));
    println!("diagnose of a process whose binary was replaced mid-attach: {calls} calls counted, finding reported");
    target.stop().unwrap();
    newer.stop().unwrap();
}

/// Starts `detector watch` for `exe` on a free port; (guard, address).
fn start_watch(exe: &Path, stdout: Stdio, stderr: Stdio) -> (Guard, String) {
    // The port is chosen here, so the address is known even when stderr (where watch
    // prints it) goes nowhere.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(detector_bin())
        .args(["watch", "--listen", &addr, "--interval", "500ms"])
        .arg("--per-pid-series")
        .args(["--window", "10s", "--exe"])
        .arg(exe)
        .env("RUST_LOG", "info")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start detector watch");
    let mut watch = Guard(child);
    if let Some(e) = watch.0.stderr.take() {
        let _ = collect(e);
    }
    wait_for("watch's /healthz", Duration::from_secs(15), || {
        if let Ok(Some(s)) = watch.0.try_wait() {
            panic!("watch exited: {s}");
        }
        matches!(http::get(&addr, "/healthz"), Ok((200, _)))
    });
    (watch, addr)
}

fn watched_pids(addr: &str) -> BTreeSet<u32> {
    scrape(addr)
        .samples
        .iter()
        .filter(|s| s.metric == "detector_process_info")
        .filter_map(|s| s.labels.get("pid").and_then(|p| p.parse().ok()))
        .collect()
}

fn has_finding(addr: &str, pid: u32) -> bool {
    let pid = pid.to_string();
    scrape(addr).samples.iter().any(|s| {
        s.metric == "detector_finding_active"
            && s.labels.get("pid") == Some(pid.as_str())
            && s.labels.get("rule") == Some("readmemstats-hot-path")
    })
}

fn ticks(addr: &str) -> f64 {
    scrape(addr)
        .samples
        .iter()
        .find(|s| s.metric == "detector_ticks" || s.metric == "detector_ticks_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .expect("detector_ticks exported")
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of `pid`, in seconds (clock ticks of 1/100 s).
fn cpu_s(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

const STORM_CLIENTS: usize = 8;
const STORM: Duration = Duration::from_secs(10);

/// 8 clients on loopback request /metrics, /findings and /healthz in turn as fast as
/// they can for 10 s: /healthz always answers 200, the collection loop keeps ticking,
/// the finding of a misusing process is still there after the storm, and the agent's
/// memory stays bounded.
#[test]
fn watch_endpoint_under_scrape_storm() {
    let _one = serial();
    require_bpf_privileges();
    let mut target = Service::start(
        &fixture(27, "default"),
        "faults-storm",
        &["-misuse", "readmemstats", "-rate", "200"],
    )
    .unwrap();
    let exe = target.exe.canonicalize().unwrap();
    let (mut watch, addr) = start_watch(&exe, Stdio::null(), Stdio::piped());
    let wpid = watch.0.id();
    wait_for("the finding", Duration::from_secs(20), || {
        has_finding(&addr, target.pid())
    });
    let ticks_before = ticks(&addr);
    let (rss_before, cpu_before) = (status_kib(wpid, "VmRSS:"), cpu_s(wpid));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..STORM_CLIENTS)
        .map(|i| {
            let (addr, failures, latencies) = (addr.clone(), failures.clone(), latencies.clone());
            std::thread::spawn(move || {
                let paths = ["/metrics", "/findings", "/healthz"];
                let mut mine = Vec::new();
                let mut n = i;
                while t0.elapsed() < STORM {
                    let path = paths[n % paths.len()];
                    n += 1;
                    let t = Instant::now();
                    match http::get(&addr, path) {
                        Ok((200, _)) => mine.push(t.elapsed()),
                        Ok((s, body)) => {
                            failures.lock().unwrap().push(format!("{path}: {s} {body}"))
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                    }
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(status_kib(wpid, "VmRSS:"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for c in clients {
        c.join().unwrap();
    }
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let cpu = (cpu_s(wpid) - cpu_before) / wall;
    let ticks_after = ticks(&addr);
    let hwm = status_kib(wpid, "VmHWM:");
    let rss_after = status_kib(wpid, "VmRSS:");
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let failures = failures.lock().unwrap().clone();
    println!(
        "scrape storm: {STORM_CLIENTS} clients, {} requests in {wall:.1} s ({:.0}/s), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
         {} failures; agent CPU {:.0}% of a core, RSS {} -> {} KiB (peak sampled {} KiB, VmHWM {} KiB); ticks {ticks_before} -> {ticks_after}",
        lat.len(),
        lat.len() as f64 / wall,
        pct(0.5),
        pct(0.99),
        lat.last().unwrap().as_secs_f64() * 1e3,
        failures.len(),
        cpu * 100.0,
        rss_before,
        rss_after,
        peak_rss.load(Ordering::SeqCst),
        hwm
    );
    assert!(
        failures.is_empty(),
        "{} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(lat.len() > 100, "only {} requests served", lat.len());
    // The loop ticks every 500 ms: at least half of its ticks happened.
    assert!(
        ticks_after - ticks_before >= STORM.as_secs_f64() / 0.5 / 2.0,
        "the collection loop stalled: {ticks_before} -> {ticks_after} ticks"
    );
    assert!(
        has_finding(&addr, target.pid()),
        "the finding is gone after the storm"
    );
    let (_, findings) = http::get(&addr, "/findings").unwrap();
    assert!(findings.contains("readmemstats-hot-path"), "{findings}");
    assert!(
        hwm < 256 * 1024,
        "the agent's memory peaked at {hwm} KiB under the storm"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the agent's RSS grew from {rss_before} to {rss_after} KiB"
    );
    let held = program_ids_of(wpid);
    signal(wpid, SIGTERM);
    let status = watch.0.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    if let Err(left) = wait_programs_freed(&held) {
        panic!("programs {left:?} still loaded");
    }
    target.stop().unwrap();
}

fn dev_full() -> Stdio {
    Stdio::from(
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

/// Output to a full disk: each command exits with code 10 ("other error") and one
/// line naming the cause, never a panic; an error with stderr itself full keeps its
/// own code; `watch` with stdout and stderr both full keeps serving and exits 0 on
/// SIGTERM.
#[test]
fn full_disk() {
    let _one = serial();
    require_bpf_privileges();
    let mut target = Service::start(
        &fixture(27, "default"),
        "faults-full",
        &["-misuse", "readmemstats", "-rate", "200"],
    )
    .unwrap();
    let pid = target.pid().to_string();
    let bin = target.exe.display().to_string();
    for args in [
        vec!["diagnose", "--pid", &pid, "--duration", "1s"],
        vec![
            "diagnose",
            "--pid",
            &pid,
            "--duration",
            "1s",
            "--format",
            "json",
        ],
        vec!["inspect", &bin],
        vec!["inspect", &bin, "--format", "json"],
        vec!["rules"],
        vec!["rules", "--format", "json"],
    ] {
        let out = Command::new(detector_bin())
            .args(&args)
            .stdout(dev_full())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "detector {} > /dev/full: {} {}",
            args.join(" "),
            out.status,
            stderr.trim()
        );
        assert_eq!(out.status.code(), Some(10), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout") && stderr.contains("No space left"),
            "{args:?}: {stderr}"
        );
    }
    // An error whose message cannot be written: still its own exit code.
    let out = Command::new(detector_bin())
        .args(["diagnose", "--pid", "999999999", "--duration", "1s"])
        .stdout(dev_full())
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", out.status);

    let exe = target.exe.canonicalize().unwrap();
    let (mut watch, addr) = start_watch(&exe, dev_full(), dev_full());
    wait_for("the finding", Duration::from_secs(20), || {
        has_finding(&addr, target.pid())
    });
    let (status, findings) = http::get(&addr, "/findings").unwrap();
    assert_eq!(status, 200);
    assert!(findings.contains("readmemstats-hot-path"), "{findings}");
    let wpid = watch.0.id();
    let held = program_ids_of(wpid);
    signal(wpid, SIGTERM);
    let status = watch.0.wait().unwrap();
    assert!(
        status.success(),
        "watch with a full stdout and stderr: {status}"
    );
    if let Err(left) = wait_programs_freed(&held) {
        panic!("programs {left:?} still loaded");
    }
    target.stop().unwrap();
}
