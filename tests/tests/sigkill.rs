//! SIGKILL of `detector diagnose` at random points (while it loads, attaches, watches
//! or detaches), and of `detector watch`: the target keeps running and serving, no
//! eBPF program of the killed detector stays in the kernel, and no uprobe breakpoint
//! (int3) stays in the target's text (read through /proc/PID/mem at every probe site,
//! and every executable mapping compared with the file; see
//! `detector_tests::breakpoints`) once detector's probe guardian has removed them and
//! exited, and the kernel logs no leaked uprobe. (Before the guardian, a kill that
//! landed inside an uprobe (un)registration made the kernel leak that uprobe and its
//! int3: 35 of 196 kills in the soak.)
//!
//! The target runs from a private copy of the fixture (its own inode: uprobes are per
//! file, so no other test's detector can put breakpoints in it).
use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use detector_tests::{
    breakpoints::{
        any_breakpoint, check_after_kill, guardian_of, kernel_uprobe_leaks, probe_sites,
    },
    detector_bin, program_ids_of, require_bpf_privileges,
    soak::{signal, Service, SIGKILL},
    version_dir, wait_programs_freed,
};

#[test]
fn sigkill_at_any_point_leaves_nothing_and_spares_the_target() {
    require_bpf_privileges();
    let bin = version_dir("service", 27).join("stripped/service");
    let mut service = Service::start(
        &bin,
        "sigkill-diagnose",
        &["-misuse", "readmemstats", "-rate", "200"],
    )
    .expect("start the service fixture");
    let sites = probe_sites(&detector_bin(), &service.exe);
    // The service prints its call count every 200 ms: proof it is alive and serving.
    let calls = service.calls.clone();
    let pid = service.pid().to_string();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = seed | 1;
    let mut held_total = 0;
    let (mut seen_total, mut guarded) = (0, 0);
    for round in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Kill points spread over load + attach (~0-400 ms), the window and detach.
        let kill_after = Duration::from_millis(rng % 2500);
        let leaks_before = kernel_uprobe_leaks();
        let mut d = Command::new(detector_bin())
            .args(["diagnose", "--pid", &pid, "--duration", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start diagnose");
        let t0 = Instant::now();
        let mut held = BTreeSet::new();
        let mut seen = false;
        while t0.elapsed() < kill_after {
            held.extend(program_ids_of(d.id()));
            seen = seen || any_breakpoint(service.pid(), &sites);
            std::thread::sleep(Duration::from_millis(5));
        }
        seen_total += seen as usize;
        held.extend(program_ids_of(d.id()));
        guarded += guardian_of(d.id()).is_some() as usize;
        let _ = d.kill();
        let _ = d.wait();
        held_total += held.len();
        if let Err(left) = wait_programs_freed(&held) {
            panic!("round {round} (killed after {kill_after:?}): programs {left:?} still loaded");
        }
        if let Err(e) = check_after_kill(d.id(), service.pid(), &sites, leaks_before) {
            panic!("round {round} (killed after {kill_after:?}): {e}");
        }
        service
            .check_alive(&format!("in round {round} (killed after {kill_after:?})"))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // Still serving after all the kills: its own request counter keeps moving.
    let before = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    let after = calls.load(Ordering::SeqCst);
    assert!(
        after > before,
        "the target stopped serving ({before} -> {after})"
    );
    assert!(held_total > 0, "no kill landed while programs were loaded");
    assert!(seen_total > 0, "no kill landed while a breakpoint was in");
    assert!(guarded > 0, "no kill landed while the probe guardian ran");
    println!("{seen_total} kills with breakpoints in, {guarded} with the guardian running; no uprobe leaked");
    service.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// `detector watch` SIGKILLed while it discovers and attaches, and once it watches the
/// target: its programs vanish, no breakpoint stays in the target, which runs on.
#[test]
fn sigkill_of_watch_leaves_nothing_and_spares_the_target() {
    require_bpf_privileges();
    let bin = version_dir("service", 24).join("pie/service");
    let mut service = Service::start(
        &bin,
        "sigkill-watch",
        &["-misuse", "readmemstats", "-rate", "200"],
    )
    .expect("start the service fixture");
    let pid = service.pid();
    let sites = probe_sites(&detector_bin(), &service.exe);
    let exe = service.exe.canonicalize().unwrap();
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    // Round 0: killed once the target is watched (its breakpoints in); then at random
    // moments of the start-up (load, first scan, analysis, attach).
    for round in 0..4 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = (round > 0).then(|| Duration::from_millis(rng % 2000));
        let leaks_before = kernel_uprobe_leaks();
        let mut watch = Command::new(detector_bin())
            .args(["watch", "--listen", "127.0.0.1:0", "--interval", "300ms"])
            .arg("--exe")
            .arg(&exe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start detector watch");
        let t0 = Instant::now();
        let mut held = BTreeSet::new();
        let mut seen = false;
        loop {
            held.extend(program_ids_of(watch.id()));
            seen = seen || any_breakpoint(pid, &sites);
            match kill_after {
                Some(k) if t0.elapsed() >= k => break,
                None if seen => break,
                _ => {}
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "round {round}: watch did not attach to the target in 15 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed_after = t0.elapsed();
        let guarded = guardian_of(watch.id()).is_some();
        signal(watch.id(), SIGKILL);
        let _ = watch.wait();
        assert!(
            kill_after.is_some() || !held.is_empty(),
            "round 0: watch held no program while its breakpoints were in"
        );
        if let Err(left) = wait_programs_freed(&held) {
            panic!("round {round} (kill after {kill_after:?}): programs {left:?} of the killed watch still loaded");
        }
        if let Err(e) = check_after_kill(watch.id(), pid, &sites, leaks_before) {
            panic!("round {round} (kill after {kill_after:?}): {e}");
        }
        service
            .check_alive(&format!("in round {round} (kill after {kill_after:?})"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!(
            "round {round}: watch killed after {:.2} s holding {} programs, breakpoints seen: {seen}, guardian running: {guarded}",
            killed_after.as_secs_f64(),
            held.len()
        );
    }
    let before = service.calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        service.calls.load(Ordering::SeqCst) > before,
        "the target stopped serving"
    );
    service.stop().unwrap_or_else(|e| panic!("{e:#}"));
}
