//! Bad input: each gets one clear line on stderr, its own exit code, and no panic.
//! The table is the README's "Exit codes" section; keep them in step.
use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use detector_tests::{detector_bin, require_bpf_privileges, version_dir};

fn detector(args: &[&str]) -> Output {
    Command::new(detector_bin())
        .args(args)
        .output()
        .expect("run detector")
}

/// Asserts the exit code and that stderr is one line naming the cause.
fn expect_error(out: &Output, code: i32, words: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(
        stderr.contains(words),
        "expected {words:?} in the message: {stderr}"
    );
}

/// The newest Go's service fixture, lightly loaded.
fn start_service() -> std::process::Child {
    Command::new(version_dir("service", 27).join("default/service"))
        .args(["-rate", "50"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the service fixture")
}

fn newest_fixture(kind: &str, name: &str) -> std::path::PathBuf {
    version_dir("allapis", 27).join(kind).join(name)
}

#[test]
fn no_such_pid() {
    require_bpf_privileges();
    let out = detector(&["diagnose", "--pid", "999999999", "--duration", "1s"]);
    expect_error(&out, 3, "no process with pid 999999999");
}

#[test]
fn non_go_process() {
    require_bpf_privileges();
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let out = detector(&[
        "diagnose",
        "--pid",
        &sleeper.id().to_string(),
        "--duration",
        "1s",
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    expect_error(&out, 4, "not a Go binary");
}

#[test]
fn not_an_elf_file() {
    let out = detector(&[
        "inspect",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ]);
    expect_error(&out, 5, "not an ELF file");
}

#[test]
fn other_architecture() {
    let bin = newest_fixture("arm64", "allapis");
    let out = detector(&["inspect", bin.to_str().unwrap()]);
    expect_error(&out, 5, "not linux/amd64");
}

#[test]
fn truncated_elf() {
    let bin = newest_fixture("default", "allapis");
    let bytes = std::fs::read(&bin).unwrap();
    let dir = std::env::temp_dir().join(format!("detector-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for keep in [64usize, 4096, bytes.len() / 3] {
        let path = dir.join(format!("cut{keep}"));
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let out = detector(&["inspect", path.to_str().unwrap()]);
        let code = out.status.code();
        assert!(
            matches!(code, Some(4) | Some(5)),
            "truncated to {keep} bytes: exit {code:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_privileges() {
    require_bpf_privileges();
    let mut target = start_service();
    // The same binary, run as "nobody" with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(detector_bin())
        .args([
            "diagnose",
            "--pid",
            &target.id().to_string(),
            "--duration",
            "1s",
        ])
        .output()
        .expect("setpriv (util-linux)");
    let _ = target.kill();
    let _ = target.wait();
    expect_error(&out, 7, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("root") || stderr.contains("CAP_BPF"),
        "the message names the fix: {stderr}"
    );
}

#[test]
fn target_exits_mid_run() {
    require_bpf_privileges();
    let mut target = start_service();
    std::thread::sleep(Duration::from_millis(300));
    let pid = target.id();
    let diag = Command::new(detector_bin())
        .args(["diagnose", "--pid", &pid.to_string(), "--duration", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = target.kill();
    let _ = target.wait();
    let out = diag.wait_with_output().unwrap();
    expect_error(&out, 8, "exited");
    // What was collected until the exit is still reported.
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("the process exited"), "{report}");
}

#[test]
fn watch_port_in_use() {
    require_bpf_privileges();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = busy.local_addr().unwrap().to_string();
    let out = detector(&["watch", "--listen", &addr]);
    expect_error(&out, 11, "cannot listen on");
}

#[test]
fn bad_threshold_override() {
    let out = detector(&["rules", "--set", "no_such_threshold=3"]);
    expect_error(&out, 2, "unknown threshold");
    let out = detector(&["rules", "--set", "caller_per_second=fast"]);
    expect_error(&out, 2, "not a number");
}

/// A kernel without uprobes, simulated by hiding /sys/bus/event_source/devices in a
/// private mount namespace (the per-uprobe path creates uprobes through that PMU, and
/// this machine has no tracefs to fall back on) and by forcing the per-uprobe path:
/// such a kernel has no uprobe_multi links either, and those need no PMU.
#[test]
fn kernel_without_uprobe_support() {
    require_bpf_privileges();
    let mut target = start_service();
    std::thread::sleep(Duration::from_millis(300));
    let script = format!(
        "mount -t tmpfs none /sys/bus/event_source/devices && exec {} diagnose --pid {} --duration 1s",
        detector_bin().display(),
        target.id()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("DETECTOR_ATTACH_PATH", "per-uprobe")
        .output()
        .expect("run unshare (util-linux)");
    let _ = target.kill();
    let _ = target.wait();
    expect_error(&out, 9, "no uprobe support");
}
