//! Odd targets, live, as root: a process that execs another program mid-window, whose
//! binary is deleted or replaced while attached, that is stopped (SIGSTOP) and
//! resumed, traced by a debugger (ptrace), in another PID and mount namespace, with
//! GOMAXPROCS far above the core count, calling through C code without frame
//! pointers (cgo), or from a huge stack.
//!
//! Each runs the `oddball` fixture from a private copy (its own inode) and checks both
//! sides: detector's count equals the target's own count exactly (the target calls
//! runtime.ReadMemStats in bursts and counts them), and the target is unharmed (it
//! exits cleanly with status 0 on SIGTERM, or runs its exec'd program to its end).
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use detector_tests::{
    breakpoints::{probe_sites, wait_no_breakpoints},
    detector_bin,
    oddball::{
        burst_counted_exactly, glob, private_copy, wait_exit, wait_watched, Oddball, SIGCONT,
        SIGSTOP,
    },
    require_bpf_privileges, scrape,
    soak::{signal, Guard, SIGTERM},
    start_watch, sum, version_dir, wait_until,
};

fn fixture(minor: u32, kind: &str) -> std::path::PathBuf {
    version_dir("oddball", minor).join(kind).join("oddball")
}

/// The agent for the copies of `tag`; `--per-pid-series` so counts are by process.
/// Killed when dropped (a failed test leaves no agent behind).
fn watch(tag: &str) -> (Guard, String) {
    let (w, addr) = start_watch(&glob(tag), &["--per-pid-series".as_ref()], "http");
    (Guard(w), addr)
}

/// SIGTERM: the agent exits 0, and leaves no breakpoint in `pids` (running `exe`).
fn stop_watch(mut w: Guard, exe: &std::path::Path, pids: &[u32]) {
    let sites = probe_sites(&detector_bin(), exe);
    signal(w.0.id(), SIGTERM);
    let status = wait_exit(&mut w.0, Duration::from_secs(60));
    assert!(status.success(), "watch exited with {status}");
    for &pid in pids {
        wait_no_breakpoints(pid, &sites, Duration::from_secs(10)).unwrap();
    }
}

const BURST: &[&str] = &["-calls", "200", "-every", "3ms"];

/// The process execs /bin/sleep 1.5 s into a 5 s diagnose window: the report covers
/// the calls made until then (no more than the target made), says it exec'd, exit
/// code 8; the exec'd program runs to its end with status 0.
#[test]
fn exec_into_another_program_mid_window() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(26, "default"), "exec");
    let mut args = vec!["-loop", "-every", "5ms", "-exec-after", "3s"];
    args.extend(["-exec", "/bin/sleep", "3"]);
    let mut odd = Oddball::start(&exe, &args, &[], &[]);
    let out = Command::new(detector_bin())
        .args([
            "diagnose",
            "--pid",
            &odd.pid.to_string(),
            "--duration",
            "6s",
        ])
        .args(["--format", "json"])
        .output()
        .expect("run detector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("exec'd another program"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let counted = v["collected"]["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["func"] == "readmemstats")
        .and_then(|c| c["calls"].as_u64())
        .unwrap_or(0);
    let at_exec: u64 = odd
        .lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("exec calls_total="))
        .and_then(|n| n.parse().ok())
        .expect("the exec line");
    println!("exec: the target made {at_exec} calls before exec, the report counts {counted}");
    assert!(counted > 0 && counted <= at_exec, "{counted} of {at_exec}");
    let after = v["target_exited_after_s"].as_f64().expect("exec time");
    assert!(after < 6.0, "{after}");
    assert!(
        v["collected"]["cpu_profile_hz_max"].as_i64().unwrap_or(0) == 0,
        "the profiling rate is the Go program's, not read from the exec'd one's memory"
    );
    let status = wait_exit(&mut odd.child, Duration::from_secs(10));
    assert!(status.success(), "the exec'd program ended with {status}");
}

/// The binary is deleted while watched, then another file takes its path: the old
/// process is still counted exactly, the new file's process is watched as a new
/// binary and counted exactly too; both exit cleanly.
#[test]
fn binary_deleted_then_replaced_while_watched() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(25, "pie"), "deleted");
    let old = Oddball::start(&exe, BURST, &[], &[]);
    let (w, addr) = watch("deleted");
    burst_counted_exactly(&addr, &old);
    std::fs::remove_file(&exe).unwrap();
    let n = burst_counted_exactly(&addr, &old);
    println!("deleted: {n} calls counted exactly after the binary was deleted");
    std::fs::copy(fixture(25, "pie"), &exe).unwrap();
    let new = Oddball::start(&exe, BURST, &[], &[]);
    let m = burst_counted_exactly(&addr, &new);
    // The old process, still running the deleted file, is still counted.
    assert!(burst_counted_exactly(&addr, &old) > n);
    println!("replaced: the new file's process counted {m} exactly");
    stop_watch(w, &exe, &[new.pid]);
    old.stop();
    new.stop();
}

/// SIGSTOP for 3 s (6 ticks): the process stays watched, then resumes and is counted
/// exactly; it exits cleanly.
#[test]
fn stopped_and_resumed() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(24, "stripped"), "stopped");
    let odd = Oddball::start(&exe, BURST, &[], &[]);
    let (w, addr) = watch("stopped");
    burst_counted_exactly(&addr, &odd);
    signal(odd.pid, SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    let p = odd.pid.to_string();
    assert!(
        sum(&scrape(&addr), "detector_process_info", &[("pid", &p)]) > 0.0,
        "a stopped process is still watched"
    );
    signal(odd.pid, SIGCONT);
    let n = burst_counted_exactly(&addr, &odd);
    println!("stopped: {n} calls counted exactly around a 3 s SIGSTOP");
    stop_watch(w, &exe, &[odd.pid]);
    odd.stop();
}

/// A debugger attached (strace -f, ptrace) while watched: counted exactly, and the
/// process exits cleanly once the tracer has detached.
#[test]
fn traced_by_a_debugger() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(23, "default"), "ptrace");
    let odd = Oddball::start(&exe, BURST, &[], &[]);
    let (w, addr) = watch("ptrace");
    let mut tracer = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-p", &odd.pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (Debian package strace) is needed for this test");
    wait_until("strace attached", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/status", odd.pid)).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
        })
    });
    let n = burst_counted_exactly(&addr, &odd);
    println!("ptrace: {n} calls counted exactly under strace -f");
    signal(tracer.id(), 2); // SIGINT: strace detaches
    let _ = wait_exit(&mut tracer, Duration::from_secs(10));
    burst_counted_exactly(&addr, &odd);
    stop_watch(w, &exe, &[odd.pid]);
    odd.stop();
}

/// The process runs in its own PID and mount namespaces (unshare --pid --fork
/// --mount-proc: it is pid 1 there): watched by its host pid, counted exactly, and it
/// exits cleanly (as does unshare).
#[test]
fn in_another_pid_and_mount_namespace() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(22, "default"), "ns");
    let odd = Oddball::start(
        &exe,
        BURST,
        &["unshare", "--pid", "--fork", "--mount-proc"],
        &[],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", odd.pid)).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_string();
    assert!(
        nspid.split_whitespace().last() == Some("1") && nspid.split_whitespace().count() == 3,
        "pid 1 in a namespace of its own: {nspid}"
    );
    let (w, addr) = watch("ns");
    let n = burst_counted_exactly(&addr, &odd);
    println!(
        "namespace: {n} calls counted exactly for host pid {} ({nspid})",
        odd.pid
    );
    stop_watch(w, &exe, &[odd.pid]);
    odd.stop();
}

/// GOMAXPROCS=512 on a 2-core machine: counted exactly, the pauses measured, a clean
/// exit.
#[test]
fn gomaxprocs_far_above_the_core_count() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(27, "default"), "procs");
    let odd = Oddball::start(&exe, BURST, &[], &[("GOMAXPROCS", "512")]);
    let (w, addr) = watch("procs");
    let n = burst_counted_exactly(&addr, &odd);
    let p = odd.pid.to_string();
    let pauses = sum(
        &scrape(&addr),
        "detector_stw_pause_seconds",
        &[("pid", &p), ("reason", "read_mem_stats")],
    );
    println!("GOMAXPROCS=512: {n} calls counted exactly, {pauses} ReadMemStats pauses");
    assert!(pauses >= n as f64, "{pauses} pauses for {n} calls");
    stop_watch(w, &exe, &[odd.pid]);
    odd.stop();
}

/// Every call goes Go → C (compiled with -fomit-frame-pointer, 7 C frames) → Go →
/// ReadMemStats: the stack walk meets C frames with no chain, the count is exact,
/// the process exits cleanly.
#[test]
fn cgo_without_frame_pointers() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(27, "cgo"), "cgo");
    let mut args = BURST.to_vec();
    args.push("-cgo");
    let odd = Oddball::start(&exe, &args, &[], &[]);
    let (w, addr) = watch("cgo");
    let n = burst_counted_exactly(&addr, &odd);
    println!("cgo: {n} calls through C frames without frame pointers counted exactly");
    stop_watch(w, &exe, &[odd.pid]);
    odd.stop();
}

/// Every call is made 100,000 Go frames deep: the walk stops at its frame limit
/// (counted as truncated stacks), the count is exact, the process exits cleanly.
#[test]
fn huge_stacks() {
    require_bpf_privileges();
    let exe = private_copy(&fixture(21, "default"), "deep");
    let mut args = BURST.to_vec();
    args.extend(["-depth", "100000"]);
    let odd = Oddball::start(&exe, &args, &[], &[]);
    let (w, addr) = watch("deep");
    let n = burst_counted_exactly(&addr, &odd);
    let truncated = sum(
        &scrape(&addr),
        "detector_kernel_errors_total",
        &[("kind", "stack_truncated")],
    );
    println!("deep: {n} calls 100,000 frames deep counted exactly, {truncated} stacks truncated");
    assert!(truncated >= n as f64, "{truncated} truncated for {n} calls");
    wait_watched(&addr, odd.pid);
    stop_watch(w, &exe, &[odd.pid]);
    odd.stop();
}
