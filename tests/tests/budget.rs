//! The overhead budget, live: a target calling runtime.Caller 50,000 times a second,
//! several % of a core if every call were probed, is diagnosed with the default
//! budget (1 %). The probe must be duty-cycled, the extrapolated rate must match the
//! rate the target reports itself, and the finding must say its counts are estimates.
//! With `--overhead-budget 0` nothing is cycled. A load that starts after the probes
//! are in (a surge) is cut between evaluations and still estimated right. (The cost
//! itself is measured by `cargo xtask bench`, not asserted here.)
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use detector_tests::{diagnose_json, require_bpf_privileges, version_dir};
use serde_json::Value;

/// Calls per second the target makes: enough to cost several % of a core probed (on
/// every version: no probe of a function with a stack check is single-stepped).
const RATE: u64 = 50_000;

struct Hitbench {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Hitbench {
    /// Starts paced mode and returns once it prints `ready`.
    fn start(minor: u32, seconds: u32) -> Hitbench {
        let bin = version_dir("hitbench", minor).join("default/hitbench");
        let mut child = Command::new(&bin)
            .args(["-fn", "caller", "-rate", &RATE.to_string()])
            .args(["-seconds", &seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(first.starts_with("ready"), "hitbench said {first:?}");
        Hitbench { child, lines }
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(b"\n").expect("hitbench stdin");
        stdin.flush().expect("hitbench stdin");
    }

    /// The paced part's result: calls per second it made.
    fn true_rate(&mut self) -> f64 {
        let line = self.lines.next().and_then(Result::ok).unwrap_or_default();
        let field = |name: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in hitbench's {line:?}"))
        };
        field("calls") / (field("elapsed_ns") / 1e9)
    }
}

impl Drop for Hitbench {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn diagnose(pid: u32, budget: &str, duration: &str) -> Value {
    let (code, json) = diagnose_json(pid, duration, &["--overhead-budget", budget]);
    assert_eq!(code, 1, "expected findings (exit 1): {json}");
    json
}

fn caller_stats(json: &Value) -> &Value {
    json["collected"]["calls"]
        .as_array()
        // runtime.Caller is seen through its runtime.callers call, one per call.
        .and_then(|a| a.iter().find(|c| c["func"] == "callers"))
        .expect("runtime.callers is probed")
}

fn check(minor: u32) {
    // diagnose's default window: a hot probe goes live every few seconds, for as long
    // as its detach tail at least (docs/overhead.md), so a shorter window may hold
    // no live phase past the probation. The paced part outlasts it, with room for a
    // slow attach.
    let mut hb = Hitbench::start(minor, 14);
    hb.go();
    std::thread::sleep(Duration::from_millis(300));
    let json = diagnose(hb.child.id(), "1", "10s");
    let truth = hb.true_rate();
    let caller = caller_stats(&json);
    let sampled = caller["sampled"].as_f64().unwrap_or_else(|| {
        panic!("go1.{minor}: runtime.Caller at {truth:.0}/s was not duty-cycled: {caller}")
    });
    assert!(
        sampled < 0.5,
        "go1.{minor}: probe live {:.1}% of the time at {truth:.0}/s, budget 1 %",
        sampled * 100.0
    );
    let estimate = caller["per_second"].as_f64().expect("per_second");
    let error = (estimate - truth).abs() / truth;
    assert!(
        error < 0.15,
        "go1.{minor}: estimated {estimate:.0}/s, true {truth:.0}/s ({:.1}% off)",
        error * 100.0
    );
    let finding = json["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["rule"] == "caller-hot-path"))
        .unwrap_or_else(|| panic!("go1.{minor}: no caller-hot-path finding: {json}"));
    assert!(
        finding["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.contains("counts are estimates")))),
        "go1.{minor}: the evidence does not say the counts are estimates: {finding}"
    );
    assert_eq!(json["probes"]["overhead_budget_percent"], 1.0);
    println!(
        "go1.{minor}: true {truth:.0}/s, estimated {estimate:.0}/s ({:+.1}%), probe live {:.1}%",
        (estimate - truth) / truth * 100.0,
        sampled * 100.0
    );
}

#[test]
fn hot_probes_are_duty_cycled_and_extrapolated_go1_19() {
    require_bpf_privileges();
    check(19);
}

#[test]
fn hot_probes_are_duty_cycled_and_extrapolated_newest() {
    require_bpf_privileges();
    check(*detector_tests::MINORS.last().expect("versions"));
}

#[test]
fn without_a_budget_every_call_is_probed() {
    require_bpf_privileges();
    // The paced part outlasts the window by far: on a host busy with uprobes, the
    // attach alone can wait a second or more behind other users' detaches.
    let mut hb = Hitbench::start(27, 10);
    hb.go();
    std::thread::sleep(Duration::from_millis(300));
    let json = diagnose(hb.child.id(), "0", "4s");
    let truth = hb.true_rate();
    let caller = caller_stats(&json);
    assert!(caller["sampled"].is_null(), "cycled with the budget off");
    let estimate = caller["per_second"].as_f64().expect("per_second");
    assert!(
        (estimate - truth).abs() / truth < 0.05,
        "counted {estimate:.0}/s, true {truth:.0}/s"
    );
}

#[test]
fn a_load_that_starts_after_attach_is_cut_and_estimated() {
    require_bpf_privileges();
    let minor = *detector_tests::MINORS.last().expect("versions");
    let mut hb = Hitbench::start(minor, 12);
    let pid = hb.child.id();
    let diagnose = std::thread::spawn(move || diagnose(pid, "1", "6s"));
    // The probes are in and past their probation, all quiet: live in full.
    std::thread::sleep(Duration::from_millis(1500));
    let go_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as f64;
    hb.go();
    let json = diagnose.join().expect("diagnose thread");
    let rate = hb.true_rate();
    let ms = |k: &str| json["collected"][k].as_f64().expect(k);
    let (from, to) = (ms("window_start_unix_ms"), ms("window_end_unix_ms"));
    assert!(
        go_ms > from && go_ms < to,
        "the load started outside the window"
    );
    // The paced part outlasts the window: calls from `go` to the window's end.
    let truth = rate * (to - go_ms) / (to - from);
    let caller = caller_stats(&json);
    assert!(
        caller["sampled"].as_f64().is_some(),
        "go1.{minor}: runtime.Caller was not duty-cycled after its load began: {caller}"
    );
    let estimate = caller["per_second"].as_f64().expect("per_second");
    let error = (estimate - truth).abs() / truth;
    println!(
        "go1.{minor}: load from {:.2} s into the window; true {truth:.0}/s over the window, estimated {estimate:.0}/s ({:+.1}%)",
        (go_ms - from) / 1e3,
        (estimate - truth) / truth * 100.0
    );
    assert!(
        error < 0.15,
        "go1.{minor}: estimated {estimate:.0}/s, true {truth:.0}/s over the window ({:.1}% off)",
        error * 100.0
    );
}
