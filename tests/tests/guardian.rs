//! detector's probe guardian, live, as root. The guardian is the child process that
//! creates and removes every uprobe, so that a SIGKILL of detector can never land
//! inside the kernel's uprobe (un)registration (which makes the kernel leak the
//! uprobe and its int3). These tests aim kills at exactly those moments, check the
//! guardian's own lifecycle, and check that detector carries on if the guardian dies.
//!
//! Targets run from private copies of the `service` fixture (their own inodes: uprobes
//! are per file, so no other test's detector can touch them).
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use detector::watch::discover::stat_field;
use detector_tests::{
    breakpoints::{
        any_breakpoint, check_after_kill, guardian_of, kernel_uprobe_leaks, probe_sites,
        wait_no_breakpoints,
    },
    detector_bin, program_ids_of, require_bpf_privileges,
    soak::{collect, readmemstats_calls, signal, Guard, Rng, Service, SIGKILL, SIGTERM},
    version_dir, wait_programs_freed,
};

fn start_service(tag: &str) -> Service {
    let bin = version_dir("service", 27).join("default/service");
    Service::start(&bin, tag, &["-misuse", "readmemstats", "-rate", "200"])
        .expect("start the service fixture")
}

/// Waits until `cond` holds, polling every 2 ms, up to `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Kills aimed at the two moments a leak could happen: while the probes are being
/// attached (right after the first breakpoint appears) and while they are being detached
/// (right after the report is printed). After each, the guardian must remove every
/// uprobe and exit, with no breakpoint left and no leak in the kernel log. Without
/// the guardian about one kill in five leaked an uprobe.
/// Rounds of [`kills_during_attach_and_detach_leave_no_uprobe`]: half on each path.
const ROUNDS: usize = 24;
/// Forces detector's fallback path (see detector::probes::multi::FORCE_ENV).
const FORCE_PER_UPROBE: (&str, &str) = (detector::probes::multi::FORCE_ENV, "per-uprobe");

#[test]
fn kills_during_attach_and_detach_leave_no_uprobe() {
    require_bpf_privileges();
    let mut service = start_service("guardian-kills");
    let sites = probe_sites(&detector_bin(), &service.exe);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let mut landed = [0usize; 2];
    // The first half through uprobe_multi links (where the kernel has them), the second
    // through a perf event per uprobe: each path's (un)registrations run in the
    // guardian.
    for round in 0..ROUNDS {
        let detaching = round % 2 == 1;
        let per_uprobe = round >= ROUNDS / 2;
        let leaks_before = kernel_uprobe_leaks();
        let mut d = Command::new(detector_bin());
        if per_uprobe {
            d.env(FORCE_PER_UPROBE.0, FORCE_PER_UPROBE.1);
        }
        let mut d = d
            .args(["diagnose", "--pid", &service.pid().to_string()])
            .args(["--duration", "200ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start diagnose");
        let d_pid = d.id();
        let report = collect(d.stdout.take().expect("piped"));
        let mut d = Guard(d);
        let phase_started = if detaching {
            wait_until(Duration::from_secs(20), || {
                !report.lock().unwrap().is_empty()
            })
        } else {
            // From the first breakpoint on: on a host busy with uprobes, the guardian
            // can wait a while for its first one.
            wait_until(Duration::from_secs(20), || {
                guardian_of(d_pid).is_some() && any_breakpoint(service.pid(), &sites)
            })
        };
        assert!(
            phase_started,
            "round {round}: diagnose never reached its phase"
        );
        // Attaching takes ~0.1-0.2 s; detaching ~2 s one uprobe after another (an RCU
        // wait each), ~0.1 s through uprobe_multi links.
        let window = match (detaching, per_uprobe) {
            (false, _) => 150,
            (true, true) => 1500,
            (true, false) => 100,
        };
        let kill_after = Duration::from_millis(rng.below(window));
        std::thread::sleep(kill_after);
        let held = program_ids_of(d_pid);
        let in_phase = any_breakpoint(service.pid(), &sites) && guardian_of(d_pid).is_some();
        signal(d_pid, SIGKILL);
        let _ = d.0.wait();
        landed[detaching as usize] += in_phase as usize;
        let when = format!(
            "round {round} (killed {kill_after:?} into {}, {})",
            if detaching { "detaching" } else { "attaching" },
            if per_uprobe {
                "per uprobe"
            } else {
                "uprobe_multi"
            }
        );
        if let Err(left) = wait_programs_freed(&held) {
            panic!("{when}: programs {left:?} still loaded");
        }
        if let Err(e) = check_after_kill(d_pid, service.pid(), &sites, leaks_before) {
            panic!("{when}: {e}");
        }
        service
            .check_alive(&when)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    println!(
        "kills with breakpoints in and the guardian running: {} attaching, {} detaching",
        landed[0], landed[1]
    );
    assert!(
        landed[0] >= 3 && landed[1] >= 3,
        "too few kills landed mid-phase ({landed:?}): the test did not test"
    );
    service.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// The guardian is detector's child in a session of its own (a terminal's ^C does not
/// reach it), ignores SIGTERM (it leaves with detector, not before), and is gone when
/// diagnose exits on its own.
#[test]
fn guardian_lives_exactly_as_long_as_detector() {
    require_bpf_privileges();
    let mut service = start_service("guardian-life");
    let sites = probe_sites(&detector_bin(), &service.exe);
    let d = Command::new(detector_bin())
        .args(["diagnose", "--pid", &service.pid().to_string()])
        .args(["--duration", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start diagnose");
    let d_pid = d.id();
    let mut d = Guard(d);
    let mut guardian = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            guardian = guardian_of(d_pid);
            guardian.is_some()
        }),
        "no guardian appeared for diagnose {d_pid}"
    );
    let g = guardian.unwrap();
    assert_eq!(
        stat_field(g, 4),
        Some(d_pid as u64),
        "the guardian's parent"
    );
    let (g_session, d_session) = (stat_field(g, 6), stat_field(d_pid, 6));
    assert!(
        g_session.is_some() && g_session != d_session,
        "the guardian shares detector's session ({g_session:?})"
    );
    signal(g, SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        guardian_of(d_pid) == Some(g),
        "the guardian died of SIGTERM while detector ran"
    );
    let out = d.0.wait().expect("wait for diagnose");
    assert!(
        matches!(out.code(), Some(0) | Some(1)),
        "diagnose ended with {out}"
    );
    assert_eq!(
        guardian_of(d_pid),
        None,
        "diagnose exited before its guardian"
    );
    wait_no_breakpoints(service.pid(), &sites, Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
    service.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// SIGKILL of the guardian mid-run: diagnose finishes its window and reports, says
/// the guardian is gone, removes its uprobes itself, and leaves nothing behind.
#[test]
fn detector_carries_on_when_its_guardian_dies() {
    require_bpf_privileges();
    let mut service = start_service("guardian-dies");
    let sites = probe_sites(&detector_bin(), &service.exe);
    let d = Command::new(detector_bin())
        .args(["diagnose", "--pid", &service.pid().to_string()])
        .args(["--duration", "2s", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start diagnose");
    let d_pid = d.id();
    let mut d = Guard(d);
    assert!(
        wait_until(Duration::from_secs(20), || guardian_of(d_pid).is_some()
            && any_breakpoint(service.pid(), &sites)),
        "diagnose never attached"
    );
    let held = program_ids_of(d_pid);
    let g = guardian_of(d_pid).expect("the guardian");
    signal(g, SIGKILL);
    let out = std::mem::replace(&mut d.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .expect("wait for diagnose");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "diagnose ended with {}: {stderr}",
        out.status
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let calls = readmemstats_calls(&report).expect("a JSON report on stdout");
    assert!(calls > 100, "ReadMemStats counted {calls} times: {report}");
    assert!(
        stderr.contains("probe guardian is gone"),
        "diagnose did not say its guardian died: {stderr}"
    );
    wait_programs_freed(&held).unwrap_or_else(|left| panic!("programs {left:?} still loaded"));
    wait_no_breakpoints(service.pid(), &sites, Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
    service
        .check_alive("after the guardian died")
        .unwrap_or_else(|e| panic!("{e:#}"));
    service.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// `detector __guardian` is not a user command: run by hand it refuses, with exit 2.
#[test]
fn guardian_refuses_to_run_by_hand() {
    let out = Command::new(detector_bin())
        .args(["__guardian", "--for", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run detector");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("started by detector itself"),
        "unexpected message: {stderr}"
    );
}
