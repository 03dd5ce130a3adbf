//! End to end, as root with real eBPF: real Go processes from the `service` fixture,
//! built with every Go version and build kind, diagnosed live by the detector binary.
//!
//! The fixture reports its own ReadMemStats count every 200 ms; detector's measured
//! rate must match it within 5 %, name the right call site, raise the finding, and
//! count one "read mem stats" pause per call. The healthy variant must raise nothing.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use detector_tests::{diagnose_json, require_bpf_privileges, version_dir, KINDS};
use serde_json::Value;

/// A running fixture whose stdout (the self-reported call counts) is collected.
struct Service {
    child: Child,
    /// (unix time in ns, cumulative ReadMemStats calls)
    counts: Arc<Mutex<Vec<(u128, u64)>>>,
}

impl Service {
    fn start(bin: &Path, misuse: &str, rate: u32) -> Service {
        let mut child = Command::new(bin)
            .args(["-misuse", misuse, "-rate", &rate.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let out = child.stdout.take().expect("piped");
        let counts = Arc::new(Mutex::new(Vec::new()));
        let sink = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut calls = None;
                let mut at = None;
                for field in line.split_whitespace() {
                    if let Some(v) = field.strip_prefix("calls_total=") {
                        calls = v.parse().ok();
                    } else if let Some(v) = field.strip_prefix("unix_nano=") {
                        at = v.parse().ok();
                    }
                }
                if let (Some(c), Some(t)) = (calls, at) {
                    sink.lock().unwrap().push((t, c));
                }
            }
        });
        Service { child, counts }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The service's own call rate between two instants (unix ns), its cumulative
    /// count interpolated between the reports on either side of each instant.
    fn rate_between(&self, from: u128, to: u128) -> f64 {
        let counts = self.counts.lock().unwrap();
        let at = |t: u128| -> f64 {
            let after = counts
                .iter()
                .position(|(ts, _)| *ts >= t)
                .unwrap_or_else(|| {
                    panic!(
                        "the service reported nothing after {t}: {:?}",
                        counts.last()
                    )
                });
            assert!(after > 0, "the service reported nothing before {t}");
            let ((t0, c0), (t1, c1)) = (counts[after - 1], counts[after]);
            c0 as f64 + (c1 - c0) as f64 * (t - t0) as f64 / (t1 - t0).max(1) as f64
        };
        (at(to) - at(from)) / ((to - from) as f64 / 1e9)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn calls_of<'a>(report: &'a Value, func: &str) -> &'a Value {
    report["collected"]["calls"]
        .as_array()
        .expect("calls array")
        .iter()
        .find(|c| c["func"] == func)
        .unwrap_or_else(|| panic!("no {func} in the report: {report:#}"))
}

fn read_mem_stats_pauses(report: &Value) -> u64 {
    report["collected"]["pauses"]
        .as_array()
        .expect("pauses array")
        .iter()
        .filter(|p| p["reason"]["code"] == 7)
        .map(|p| p["pauses"].as_u64().unwrap())
        .sum()
}

/// The closure inside metricsMiddleware: `main.metricsMiddleware.func1`, or
/// `main.main.metricsMiddleware.func2` where Go 1.21+ inlines the middleware into main.
fn assert_middleware_closure(function: &Value, what: &str) {
    let name = function.as_str().unwrap_or_default();
    let ok = [
        "main.metricsMiddleware.func",
        "main.main.metricsMiddleware.func",
    ]
    .iter()
    .any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| n.parse::<u32>().is_ok())
    });
    assert!(
        ok,
        "{what}: call site is {name}, not the middleware's closure"
    );
}

/// The line of the fixture that calls runtime.ReadMemStats.
fn read_mem_stats_line() -> u64 {
    let src = include_str!("../fixtures/service/main.go");
    src.lines()
        .position(|l| l.trim() == "runtime.ReadMemStats(&m)")
        .expect("the fixture calls runtime.ReadMemStats(&m)") as u64
        + 1
}

fn misuse_is_found(bin: &Path, what: &str) {
    let svc = Service::start(bin, "readmemstats", 200);
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    let (code, report) = diagnose_json(svc.pid(), "3s", &[]);
    assert!(t0.elapsed() >= Duration::from_secs(3));
    // The truth over detector's own window, not over its whole run: attaching and
    // detaching take a varying share of the run on a loaded host.
    let ms = |k: &str| report["collected"][k].as_u64().expect(k) as u128 * 1_000_000;
    let (from, to) = (ms("window_start_unix_ms"), ms("window_end_unix_ms"));
    assert!(to - from >= 3_000_000_000, "{what}: window {from}..{to}");
    std::thread::sleep(Duration::from_millis(450)); // the report after the window's end
    let truth = svc.rate_between(from, to);
    assert_eq!(
        code, 1,
        "{what}: expected exit code 1 (findings): {report:#}"
    );

    let rms = calls_of(&report, "readmemstats");
    let measured = rms["per_second"].as_f64().unwrap();
    let err = (measured - truth).abs() / truth;
    eprintln!("{what}: measured {measured:.1}/s, service {truth:.1}/s");
    assert!(
        err <= 0.05,
        "{what}: detector measured {measured:.1} calls/s, the service reported {truth:.1}/s ({:.1}% off)",
        err * 100.0
    );
    let site = &rms["sites"][0];
    assert_middleware_closure(&site["function"], what);
    assert!(
        site["file"]
            .as_str()
            .unwrap()
            .ends_with("tests/fixtures/service/main.go"),
        "{what}: {site}"
    );
    assert_eq!(site["line"], read_mem_stats_line(), "{what}: {site}");

    let findings = report["findings"].as_array().unwrap();
    let f = findings
        .iter()
        .find(|f| f["rule"] == "readmemstats-hot-path")
        .unwrap_or_else(|| panic!("{what}: no readmemstats-hot-path finding: {report:#}"));
    assert_middleware_closure(&f["call_site"]["function"], what);
    // The culprit, from the stack walked in the kernel: the middleware, in the main
    // module (from the build info), right above the API.
    let culprit = &f["culprit"];
    assert_middleware_closure(&culprit["function"], what);
    assert_eq!(culprit["owner"], "main", "{what}: {culprit}");
    assert_eq!(
        culprit["module"], "detector.test/service",
        "{what}: {culprit}"
    );
    assert_eq!(
        culprit["path"].as_array().and_then(|p| p.last()),
        Some(&serde_json::json!("runtime.ReadMemStats")),
        "{what}: {culprit}"
    );
    assert_eq!(
        report["collected"]["kernel_errors"][5], 0,
        "{what}: stacks lost (stack map full)"
    );

    let calls = rms["calls"].as_u64().unwrap();
    let pauses = read_mem_stats_pauses(&report);
    assert!(
        calls.abs_diff(pauses) <= 2,
        "{what}: {calls} ReadMemStats calls but {pauses} \"read mem stats\" pauses"
    );
    assert!(calls > 300, "{what}: only {calls} calls seen");
}

fn healthy_is_quiet(bin: &Path, what: &str) {
    let svc = Service::start(bin, "none", 200);
    std::thread::sleep(Duration::from_millis(700));
    let (code, report) = diagnose_json(svc.pid(), "2s", &[]);
    assert_eq!(code, 0, "{what}: expected no findings: {report:#}");
    assert!(report["findings"].as_array().unwrap().is_empty());
    assert_eq!(calls_of(&report, "readmemstats")["calls"], 0, "{what}");
    assert_eq!(read_mem_stats_pauses(&report), 0, "{what}");
}

/// Every build kind of one Go release: the misuse is found, the fix is quiet.
fn check_release(minor: u32) {
    require_bpf_privileges();
    let dir = version_dir("service", minor);
    for kind in KINDS {
        let bin = dir.join(kind).join("service");
        let what = format!("{} {kind}", dir.file_name().unwrap().to_string_lossy());
        misuse_is_found(&bin, &what);
        if kind == "default" || kind == "stripped" {
            healthy_is_quiet(&bin, &what);
        }
    }
}

detector_tests::per_go_release!(check_release);
