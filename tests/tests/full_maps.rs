//! Full kernel maps, live, as root: the maps are shrunk at load time with the hidden
//! `DETECTOR_MAP_SIZES` knob, so they fill at once. Every loss must then be counted
//! (the report's warning line, `kernel_errors`, the exporter's self-metrics), and the
//! call totals must still equal the target's own count: a call with no room in the
//! call map is counted by (process, function) without its call site.
use std::{
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use detector_tests::{
    detector_bin, http, require_bpf_privileges, scrape,
    soak::{signal, Guard, Service, SIGTERM},
    start_watch_env, sum, version_dir, wait_until,
};

/// Two services under `watch` with a one-entry call map: the first fills it, so every
/// call of the second goes without its call site. The second's exported total must
/// equal the number of requests it served (its own count), and the loss is counted.
#[test]
fn full_call_map_keeps_totals_and_counts_the_loss_under_watch() {
    require_bpf_privileges();
    let fixture = version_dir("service", 27).join("default").join("service");
    let mut first = Service::start(&fixture, "fullmaps-first", &["-rate", "100"]).unwrap();
    let glob = format!(
        "{}/detector-soak-{}-fullmaps-*/service",
        std::env::temp_dir().canonicalize().unwrap().display(),
        std::process::id()
    );
    let (watch, addr) = start_watch_env(
        &glob,
        &["--per-pid-series".as_ref()],
        "http",
        &[("DETECTOR_MAP_SIZES", "CALLS=1,STACKS=1")],
    );
    // Killed if the test fails half-way.
    let mut watch = Guard(watch);
    let first_pid = first.pid().to_string();
    wait_until(
        "the first service's calls exported",
        Duration::from_secs(20),
        || {
            sum(
                &scrape(&addr),
                "detector_runtime_calls_total",
                &[("pid", &first_pid), ("function", "readmemstats")],
            ) > 0.0
        },
    );
    // The second one serves only the test's requests.
    let mut second = Service::start(&fixture, "fullmaps-second", &["-rate", "0"]).unwrap();
    let second_pid = second.pid().to_string();
    wait_until(
        "the second service watched",
        Duration::from_secs(20),
        || {
            sum(
                &scrape(&addr),
                "detector_process_info",
                &[("pid", &second_pid)],
            ) > 0.0
        },
    );
    const REQUESTS: u64 = 60;
    for _ in 0..REQUESTS {
        let (status, _) = http::get(&second.addr, "/fixed").expect("request to the target");
        assert_eq!(status, 200, "the target must keep serving");
    }
    wait_until(
        "the target's own count of its ReadMemStats calls",
        Duration::from_secs(5),
        || second.calls.load(Ordering::SeqCst) == REQUESTS,
    );
    let mut exported = 0.0;
    wait_until(
        "the second service's exported total equal to its own count",
        Duration::from_secs(10),
        || {
            exported = sum(
                &scrape(&addr),
                "detector_runtime_calls_total",
                &[("pid", &second_pid), ("function", "readmemstats")],
            );
            exported == REQUESTS as f64
        },
    );
    let s = scrape(&addr);
    let not_attributed = sum(&s, "detector_calls_not_attributed_total", &[]);
    let map_full = sum(
        &s,
        "detector_kernel_errors_total",
        &[("kind", "call_map_full")],
    );
    let lost = sum(&s, "detector_kernel_errors_total", &[("kind", "call_lost")]);
    println!(
        "CALLS=1: {REQUESTS} requests, {exported} calls exported, {not_attributed} not attributed, {lost} lost"
    );
    assert!(
        not_attributed >= REQUESTS as f64,
        "{not_attributed} calls not attributed"
    );
    assert_eq!(not_attributed, map_full);
    assert_eq!(lost, 0.0, "the overflow map had room: nothing lost");
    // The report of the second process says so too.
    let (_, body) = http::get(&addr, "/findings").expect("GET /findings");
    assert!(body.contains(&second_pid), "{body}");

    signal(watch.0.id(), SIGTERM);
    let status = watch.0.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    first.stop().expect("the first target exits cleanly");
    second.stop().expect("the second target exits cleanly");
}

/// `diagnose` with one-entry pause and call maps on a program forcing collections:
/// the pauses with no room are counted, the report's warning line says so, and the
/// program's calls are all in the totals.
#[test]
fn full_pause_map_is_counted_in_the_diagnose_report() {
    require_bpf_privileges();
    let cases = version_dir("cases", 27).join("default").join("cases");
    let mut target = Command::new(&cases)
        .args(["-case", "gc", "-variant", "misuse", "-rate", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cases fixture");
    std::thread::sleep(Duration::from_millis(300));
    let pid = target.id().to_string();
    let run = |format: &str| {
        Command::new(detector_bin())
            .args(["diagnose", "--pid", &pid, "--duration", "2s"])
            .args(["--format", format])
            .env("DETECTOR_MAP_SIZES", "STW=1,CALLS=1,STACKS=1")
            .output()
            .expect("run detector")
    };
    let out = run("json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let errors = v["collected"]["kernel_errors"].as_array().expect("errors");
    let stw_full = errors[detector::common::errors::STW_MAP_FULL as usize]
        .as_u64()
        .unwrap();
    let pauses = v["collected"]["pauses_total"].as_u64().unwrap();
    println!("STW=1: {pauses} pauses recorded, {stw_full} not recorded");
    assert!(pauses > 0, "the one series with room is recorded");
    assert!(
        stw_full > 0,
        "forced collections pause for two reasons: one has no room"
    );
    let gc_calls = v["collected"]["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["func"] == "gc")
        .and_then(|c| c["calls"].as_u64())
        .unwrap_or(0);
    assert!(gc_calls > 0, "runtime.GC calls counted: {gc_calls}");
    let text = String::from_utf8_lossy(&run("text").stdout).into_owned();
    assert!(
        text.contains("warning: kernel maps full:") && text.contains("pauses not recorded"),
        "{text}"
    );
    assert!(
        target.try_wait().unwrap().is_none(),
        "the target must be alive"
    );
    let _ = target.kill();
    let _ = target.wait();
}
