//! `diagnose` targets, as root with real eBPF: `--exe GLOB` (every matching process,
//! one report each, the worst exit code), `-- CMD ARGS` (started, diagnosed, stopped),
//! and a target that exits mid-window (its report is kept, exit code 8). Every JSON
//! report is checked against schema/diagnosis.schema.json.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use detector_tests::{
    breakpoints::{any_breakpoint, probe_sites},
    detector_bin, require_bpf_privileges, schema, version_dir,
};
use serde_json::Value;

fn service_bin() -> PathBuf {
    version_dir("service", 27).join("default/service")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, args: &[&str]) -> Proc {
    Proc(
        detector_tests::spawn_fresh_copy(
            Command::new(bin)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    )
}

fn detector(args: &[&str]) -> Output {
    Command::new(detector_bin())
        .args(args)
        .output()
        .expect("run detector")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "exit {:?}, no JSON report ({e}); stderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rules(report: &Value) -> Vec<&str> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["rule"].as_str())
        .collect()
}

/// `-- CMD` that exits by itself 6 s after it starts, within a 12 s window: the report
/// covers the window up to the exit (findings included: the attach takes well under
/// 6 s even on a loaded machine), says when it exited, and the exit code is 8.
#[test]
fn a_command_exiting_mid_window_keeps_its_report() {
    require_bpf_privileges();
    let bin = service_bin();
    let out = detector(&[
        "diagnose",
        "--duration",
        "12s",
        "--format",
        "json",
        "--",
        bin.to_str().unwrap(),
        "-misuse",
        "readmemstats",
        "-rate",
        "200",
        "-exit-after",
        "6s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(8), "stderr: {stderr}");
    schema::check("diagnose -- CMD (exited)", &report);
    let after = report["target_exited_after_s"]
        .as_f64()
        .expect("target_exited_after_s is set");
    assert!(
        (1.0..=6.5).contains(&after),
        "exited {after} s into the window (6 s after start, minus the attach)"
    );
    let watched = report["collected"]["duration_s"].as_f64().unwrap();
    assert!(
        (watched - after).abs() < 1.1,
        "window {watched} s for a target that exited after {after} s"
    );
    assert_eq!(rules(&report), ["readmemstats-hot-path"], "{report:#}");
    assert!(
        stderr.contains("exited") && stderr.contains("what was collected"),
        "{stderr}"
    );
    // The command's own output went to stderr, not into the JSON on stdout.
    assert!(stderr.contains("calls_total="), "{stderr}");
    println!("exited after {after:.2} s; window {watched:.2} s; stderr: {stderr}");
}

/// `--pid` of a process that exits mid-window (SIGTERM 3 s after the probes are in,
/// so a loaded machine's slow attach does not shorten the window), text format: the
/// report is printed and says so, exit code 8.
#[test]
fn a_pid_exiting_mid_window_keeps_its_text_report() {
    require_bpf_privileges();
    let bin = service_bin();
    let mut target = start(&bin, &["-misuse", "readmemstats", "-rate", "200"]);
    let pid = target.0.id();
    let sites = probe_sites(&detector_bin(), &bin);
    let d = Command::new(detector_bin())
        .args(["diagnose", "--pid", &pid.to_string(), "--duration", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run detector");
    let t0 = std::time::Instant::now();
    while !any_breakpoint(pid, &sites) {
        assert!(t0.elapsed() < Duration::from_secs(20), "no probe in 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc_kill(pid as i32, 15) };
    let _ = target.0.wait();
    let out = d.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{text}\nstderr: {stderr}");
    assert!(text.contains("the process exited"), "{text}");
    assert!(text.contains("readmemstats-hot-path"), "{text}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `-- CMD` still running at the end of the window: reported (exit 0, healthy), then
/// stopped: nothing of it is left.
#[test]
fn a_command_is_stopped_after_its_window() {
    require_bpf_privileges();
    let bin = service_bin();
    let out = detector(&[
        "diagnose",
        "--duration",
        "2s",
        "--format",
        "json",
        "--",
        bin.to_str().unwrap(),
        "-misuse",
        "none",
        "-rate",
        "50",
    ]);
    let report = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    schema::check("diagnose -- CMD", &report);
    assert!(report["target_exited_after_s"].is_null());
    let pid = report["target"]["pid"].as_u64().expect("pid");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the command (pid {pid}) still exists after diagnose ended"
    );

    // detector killed mid-window: the kernel stops the command (parent-death signal).
    let mut d = Command::new(detector_bin())
        .args(["diagnose", "--duration", "30s", "--format", "json", "--"])
        .arg(&bin)
        .args(["-misuse", "none", "-rate", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run detector");
    let t0 = std::time::Instant::now();
    let child = loop {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.id()))
            .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().find_map(|k| k.parse::<u32>().ok()) {
            if std::fs::read_link(format!("/proc/{k}/exe")).is_ok_and(|e| e == bin) {
                break k;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no command started");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    d.kill().unwrap();
    d.wait().unwrap();
    let t1 = std::time::Instant::now();
    while detector::target::is_alive(child) {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "the command (pid {child}) outlived the detector that started it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--exe GLOB` over three processes of one binary: one with a finding, one healthy,
/// one that exits mid-window (SIGTERM 1 s into it). A JSON array of three reports; exit code 8, the worst.
#[test]
fn exe_reports_every_matching_process() {
    require_bpf_privileges();
    let dir = std::env::temp_dir().join(format!("detector-exe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("exe-target");
    std::fs::copy(service_bin(), &app).unwrap();
    let misuse = start(&app, &["-misuse", "readmemstats", "-rate", "200"]);
    let healthy = start(&app, &["-misuse", "none", "-rate", "50"]);
    let mut leaving = start(&app, &["-misuse", "none", "-rate", "50"]);
    std::thread::sleep(Duration::from_millis(300));
    let glob = format!("{}/exe-*", dir.display());
    let d = Command::new(detector_bin())
        .args([
            "diagnose",
            "--exe",
            &glob,
            "--duration",
            "5s",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run detector");
    // One of them exits 1 s after the probes are in all three.
    let sites = probe_sites(&detector_bin(), &app);
    let t0 = std::time::Instant::now();
    while ![&misuse, &healthy, &leaving]
        .iter()
        .all(|p| any_breakpoint(p.0.id(), &sites))
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "no probes in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc_kill(leaving.0.id() as i32, 15) };
    let _ = leaving.0.wait();
    let out = d.wait_with_output().unwrap();
    let reports = json(&out);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    schema::check("diagnose --exe", &reports);
    let reports = reports.as_array().expect("--exe prints an array");
    let of = |p: &Proc| {
        reports
            .iter()
            .find(|r| r["target"]["pid"].as_u64() == Some(p.0.id() as u64))
            .unwrap_or_else(|| panic!("no report for pid {}", p.0.id()))
    };
    assert_eq!(reports.len(), 3);
    assert_eq!(rules(of(&misuse)), ["readmemstats-hot-path"]);
    assert!(rules(of(&healthy)).is_empty());
    assert!(of(&healthy)["target_exited_after_s"].is_null());
    assert!(of(&leaving)["target_exited_after_s"].as_f64().is_some());

    // The same in text: one report per process.
    let out = detector(&["diagnose", "--exe", &glob, "--duration", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("detector diagnose: pid ").count(), 2, "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");

    // A pattern nothing matches: exit 3, one line.
    let out = detector(&["diagnose", "--exe", "/nonexistent/*", "--duration", "1s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no running Go process"), "{stderr}");
    drop((misuse, healthy, leaving));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Exactly one of --pid, --exe and -- CMD: none or two is a usage error (exit 2). A
/// command that does not exist is exit 3; one that is not a Go program is exit 4, and
/// is stopped.
#[test]
fn bad_targets() {
    let code = |args: &[&str]| detector(args).status.code();
    assert_eq!(code(&["diagnose"]), Some(2));
    assert_eq!(code(&["diagnose", "--pid", "1", "--exe", "x"]), Some(2));
    assert_eq!(
        code(&["diagnose", "--pid", "1", "--", "/bin/true"]),
        Some(2)
    );
    let out = detector(&["diagnose", "--", "/nonexistent/cmd"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot start \"/nonexistent/cmd\""),
        "{stderr}"
    );
    // A unique argument, to find the command afterwards.
    let tag = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        std::process::id()
    );
    let out = detector(&["diagnose", "--", "sleep", &tag]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not a Go binary"), "{stderr}");
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(&tag));
    assert!(!left, "the command `sleep {tag}` was left running");
}
