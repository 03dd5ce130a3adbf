//! Every call is counted once, even when the probed function's stack check fails and
//! it is re-entered after morestack. `hitbench -fn gomaxprocs -goroutines 2` makes N
//! calls of `runtime.GOMAXPROCS` from 2 goroutines while a third runs `runtime.GC()`
//! back to back; with asynchronous preemption off (`GODEBUG=asyncpreemptoff=1`) each
//! stop request (stackguard0 = stackPreempt) is served at a prologue, often
//! GOMAXPROCS's. On Go 1.19 detector's probe sits on the stack check's JBE and ignores
//! the hits bound for morestack; on Go 1.21+ it sits after the check. Either way the
//! calls from the loop must be exactly N. (Measured on Go 1.19 with the JBE probe's
//! cookie flag left out, so that every hit counts: 1,000,009 and 1,000,146 for
//! 1,000,000 calls; a bpftrace uprobe on the first instruction over-counts the same way.)
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::FileExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use detector::gobin::GoBinary;
use detector_tests::{detector_bin, require_bpf_privileges, version_dir};
use serde_json::Value;

const CALLS: u64 = 1_000_000;

/// Kills the child on drop, so no failed assertion leaves one behind.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `pid` has a handler for SIGINT (detector installs it once its probes are in).
fn catches_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|m| m & (1 << 1) != 0)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(minor: u32) {
    let bin = version_dir("hitbench", minor).join("default/hitbench");
    let probe = GoBinary::open(&bin)
        .and_then(|b| b.probe_point_by_name("runtime.GOMAXPROCS"))
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
        .probe_vaddr;
    let mut hb = Kill(
        Command::new(&bin)
            .args(["-fn", "gomaxprocs", "-goroutines", "2"])
            .args(["-n", &CALLS.to_string()])
            .env("GODEBUG", "asyncpreemptoff=1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    );
    let pid = hb.0.id();
    let mut lines = BufReader::new(hb.0.stdout.take().expect("piped")).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(ready.starts_with("ready"), "hitbench said {ready:?}");

    let det = Kill(
        Command::new(detector_bin())
            .args(["diagnose", "--pid", &pid.to_string(), "--duration", "120s"])
            .args(["--format", "json", "--overhead-budget", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run detector"),
    );
    let det_pid = det.0.id();
    wait_for("detector attaches", || catches_sigint(det_pid));
    // Non-PIE: the probe's address is the process's; the uprobe writes an int3 there.
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("target memory");
    wait_for("the probe's breakpoint in the target", || {
        let mut b = [0u8];
        mem.read_exact_at(&mut b, probe).is_ok() && b[0] == 0xcc
    });

    let stdin = hb.0.stdin.as_mut().expect("piped");
    stdin.write_all(b"\n").expect("hitbench stdin");
    stdin.flush().expect("hitbench stdin");
    let result = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        result.contains(&format!("calls={CALLS} ")),
        "hitbench said {result:?}"
    );

    let status = Command::new("kill")
        .args(["-s", "INT", &det_pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = output(det);
    let json: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "go1.{minor}: no JSON report ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    });
    let calls = json["collected"]["calls"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["api"] == "runtime.GOMAXPROCS"))
        .unwrap_or_else(|| panic!("go1.{minor}: runtime.GOMAXPROCS not reported: {json}"));
    // Other callers (sync.Pool after a collection) call it too: only the loop's count.
    let from_loop: u64 = calls["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter(|s| s["function"] == "main.loopGOMAXPROCS")
        .filter_map(|s| s["calls"].as_u64())
        .sum();
    assert_eq!(
        from_loop, CALLS,
        "go1.{minor}: detector counted {from_loop} calls from the loop, which made {CALLS}: {calls}"
    );
    println!("go1.{minor}: {from_loop} calls counted for {CALLS} made");
}

/// The guarded child's stdout, once it has exited.
fn output(mut k: Kill) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut s) = k.0.stdout.take() {
        std::io::Read::read_to_end(&mut s, &mut out).expect("detector stdout");
    }
    let _ = k.0.wait();
    out
}

#[test]
fn each_call_counted_once_through_morestack_go1_19() {
    require_bpf_privileges();
    check(19);
}

#[test]
fn each_call_counted_once_through_morestack_go1_27() {
    require_bpf_privileges();
    check(27);
}
