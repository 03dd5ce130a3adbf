//! Pause durations agree with the runtime's own: `hitbench -stw` calls `runtime.GC()`
//! and `runtime.ReadMemStats` at fixed rates and reads its own runtime/metrics pause
//! histograms (`/sched/pauses/{total,stopping}/{gc,other}`, Go 1.22+) right before and
//! after, while `detector diagnose` watches it; on Go 1.19 and 1.21, which have no such
//! metrics, the comparison is with gctrace's clock figures of the same collections.
//!
//! Counts must be exact. Totals must fall within the runtime's own bucket bounds
//! (a histogram gives each pause only as a bucket) ±10 % on 1.22+, and within 15 % of
//! gctrace on 1.19 and 1.21 (gctrace's mark termination ends a little earlier than any
//! probe can see on those releases: docs/stw-timing.md).
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use detector_tests::{detector_bin, require_bpf_privileges, version_dir};
use serde_json::Value;

const SECONDS: &str = "3";
/// Signal number of SIGINT on Linux.
const SIGINT: u32 = 2;
const GC_RATE: &str = "10";
const READMEMSTATS_RATE: &str = "50";

/// Kills a child left behind by a failed assertion.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &Receiver<String>, within: Duration, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("hitbench: no expected line within {within:?} ({e})"),
        }
    }
}

/// Whether `pid` catches SIGINT: diagnose installs its handler once every probe is in,
/// right before its window opens.
fn catches_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (SIGINT - 1)) != 0)
}

/// One run: (the target's result line, gctrace lines of the window, detector's report).
fn run(minor: u32) -> (HashMap<String, f64>, Vec<String>, Value) {
    let bin = version_dir("hitbench", minor)
        .join("default")
        .join("hitbench");
    let mut child = Command::new(&bin)
        .args(["-stw", "-seconds", SECONDS, "-gc-rate", GC_RATE])
        .args(["-readmemstats-rate", READMEMSTATS_RATE])
        .env("GODEBUG", "gctrace=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut stdin = child.stdin.take().expect("piped");
    let out = lines(child.stdout.take().expect("piped"));
    let err = lines(child.stderr.take().expect("piped"));
    let target = Guard(child);
    let ready = next_line(&out, Duration::from_secs(30), |l| l.starts_with("ready "));
    let pid: u32 = ready["ready pid=".len()..].trim().parse().expect("pid");

    let mut det = Command::new(detector_bin())
        .args(["diagnose", "--pid", &pid.to_string(), "--duration", "60s"])
        .args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("detector");
    let det_out = det.stdout.take().expect("piped");
    let report = std::thread::spawn(move || std::io::read_to_string(det_out).unwrap_or_default());
    let det = Guard(det);
    let t0 = Instant::now();
    while !catches_sigint(det.0.id()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "detector did not attach"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // gctrace lines from before the window (start-up) are not the window's.
    while err.try_recv().is_ok() {}
    stdin.write_all(b"go\n").expect("go");
    stdin.flush().expect("go");
    let result = next_line(&out, Duration::from_secs(120), |l| {
        l.starts_with("gc_calls=")
    });
    let stopped = Command::new("kill")
        .args(["-INT", &det.0.id().to_string()])
        .status();
    assert!(stopped.is_ok_and(|s| s.success()), "kill -INT detector");
    let report: Value = serde_json::from_str(&report.join().expect("report")).expect("JSON");
    drop(det);
    drop(stdin);
    drop(target);
    let gctrace: Vec<String> = err.try_iter().filter(|l| l.starts_with("gc ")).collect();
    let fields = result
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect();
    (fields, gctrace, report)
}

/// detector's pauses split as the runtime splits them: (count, total ns, stopping
/// count, stopping ns) of the collector's and of all others.
fn detector_pauses(report: &Value) -> [(u64, f64, u64, f64); 2] {
    let mut out = [(0, 0.0, 0, 0.0); 2];
    for p in report["collected"]["pauses"].as_array().expect("pauses") {
        let is_gc = match p["reason"]["code"].as_u64() {
            Some(c) => c == 1 || c == 2,
            None => p["reason"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("GC")),
        };
        let o = &mut out[if is_gc { 0 } else { 1 }];
        o.0 += p["pauses"].as_u64().unwrap_or(0);
        o.1 += p["total_ns"].as_f64().unwrap_or(0.0);
        o.2 += p["stopping"]["pauses"].as_u64().unwrap_or(0);
        o.3 += p["stopping"]["total_ns"].as_f64().unwrap_or(0.0);
    }
    out
}

/// gctrace's `A+B+C ms clock`: the sweep termination (A) and mark termination (C)
/// pauses of one collection, in ns.
fn gctrace_pauses(line: &str) -> (f64, f64) {
    let clock = line
        .split(", ")
        .find(|p| p.ends_with(" ms clock"))
        .unwrap_or_else(|| panic!("no clock figures in {line:?}"));
    let parts: Vec<f64> = clock
        .rsplit(' ')
        .nth(2)
        .and_then(|abc| abc.split('+').map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| panic!("clock figures in {line:?}"));
    (parts[0] * 1e6, parts[2] * 1e6)
}

fn check(minor: u32) {
    require_bpf_privileges();
    let (f, gctrace, report) = run(minor);
    let [gc, other] = detector_pauses(&report);
    let num = |k: &str| *f.get(k).unwrap_or_else(|| panic!("no {k} in {f:?}"));
    let what = format!("go1.{minor}");
    let within = |det: f64, lo: f64, hi: f64, kind: &str| {
        assert!(
            det >= lo * 0.9 && det <= hi * 1.1,
            "{what} {kind}: detector {:.1} µs, the runtime's buckets say {:.1}-{:.1} µs",
            det / 1e3,
            lo / 1e3,
            hi / 1e3
        );
    };
    if minor >= 22 {
        for (kind, d) in [("gc", gc), ("other", other)] {
            // The whole pauses, then their stopping part: counts exact, time in bounds.
            for (part, count, ns) in [
                (kind.to_string(), d.0, d.1),
                (format!("stopping_{kind}"), d.2, d.3),
            ] {
                let (lo, hi) = (num(&format!("{part}_lo_ns")), num(&format!("{part}_hi_ns")));
                eprintln!(
                    "{what} {part}: pauses {count} vs {}, {:.1} µs vs [{:.1}, {:.1}]",
                    num(&format!("{part}_count")),
                    ns / 1e3,
                    lo / 1e3,
                    hi / 1e3
                );
                assert_eq!(
                    count,
                    num(&format!("{part}_count")) as u64,
                    "{what} {part} pauses"
                );
                within(ns, lo, hi, &part);
            }
        }
    } else {
        let cycles = gctrace.len() as u64;
        assert!(
            cycles >= num("gc_calls") as u64,
            "{what}: {cycles} gctrace lines"
        );
        assert_eq!(
            gc.0,
            2 * cycles,
            "{what}: GC pauses vs {cycles} collections"
        );
        let (a, c): (f64, f64) = gctrace
            .iter()
            .map(|l| gctrace_pauses(l))
            .fold((0.0, 0.0), |(a, c), (x, y)| (a + x, c + y));
        let truth = a + c;
        eprintln!(
            "{what} gc: pauses {} vs 2 × {cycles}, total {:.1} µs vs gctrace {:.1} µs",
            gc.0,
            gc.1 / 1e3,
            truth / 1e3
        );
        assert!(
            (gc.1 / truth - 1.0).abs() <= 0.15,
            "{what}: detector's GC pauses {:.1} µs, gctrace's {:.1} µs (sweep {:.1} + mark {:.1})",
            gc.1 / 1e3,
            truth / 1e3,
            a / 1e3,
            c / 1e3
        );
        assert_eq!(
            other.0,
            num("readmemstats_calls") as u64,
            "{what}: one pause per ReadMemStats"
        );
    }
}

detector_tests::per_go_release!(check);
