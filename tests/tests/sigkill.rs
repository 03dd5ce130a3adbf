//! SIGKILL of `detector diagnose` at random points (while it loads, attaches, watches
//! or detaches): the target keeps running and serving, and no eBPF program of the
//! killed detector stays in the kernel (an uprobe keeps its program loaded, so no
//! program left means no probe left).
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use detector_tests::{
    detector_bin, program_ids_of, require_bpf_privileges, version_dir, wait_programs_freed,
};

#[test]
fn sigkill_at_any_point_leaves_nothing_and_spares_the_target() {
    require_bpf_privileges();
    let bin = version_dir("service", 27).join("stripped/service");
    let mut service = Command::new(&bin)
        .args(["-misuse", "readmemstats", "-rate", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the service fixture");
    // The service prints its call count every 200 ms: proof it is alive and serving.
    let calls = Arc::new(AtomicU64::new(0));
    let out = service.stdout.take().unwrap();
    let sink = calls.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(n) = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("calls_total="))
                .and_then(|n| n.parse().ok())
            {
                sink.store(n, Ordering::SeqCst);
            }
        }
    });
    let pid = service.id().to_string();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = seed | 1;
    let mut held_total = 0;
    for round in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Kill points spread over load + attach (~0-400 ms), the window and detach.
        let kill_after = Duration::from_millis(rng % 2500);
        let mut d = Command::new(detector_bin())
            .args(["diagnose", "--pid", &pid, "--duration", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start diagnose");
        let t0 = Instant::now();
        let mut held = BTreeSet::new();
        while t0.elapsed() < kill_after {
            held.extend(program_ids_of(d.id()));
            std::thread::sleep(Duration::from_millis(5));
        }
        held.extend(program_ids_of(d.id()));
        let _ = d.kill();
        let _ = d.wait();
        held_total += held.len();
        if let Err(left) = wait_programs_freed(&held) {
            panic!("round {round} (killed after {kill_after:?}): programs {left:?} still loaded");
        }
        assert!(
            service.try_wait().unwrap().is_none(),
            "round {round}: the target died (killed after {kill_after:?})"
        );
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
    let _ = service.kill();
    let _ = service.wait();
}
