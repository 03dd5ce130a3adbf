//! The target safety soak, short form (`cargo xtask soak` is the long one): for every
//! Go version of the fixtures (build kinds in rotation), the `service` fixture under
//! load from wrk while `detector diagnose` attaches and detaches a few times, one run
//! SIGKILLed at a random moment. Any violation fails the test with its cause and the
//! seed that replays it (`cargo xtask soak --seed S`).
use detector_tests::{detector_bin, require_bpf_privileges, soak, versions, KINDS};

/// Per Go version: cycles, and one run in this many killed (so one kill each).
const CYCLES: usize = 4;

#[test]
fn target_survives_attach_detach_and_kills_under_load() {
    require_bpf_privileges();
    let detector = detector_bin();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    println!("seed {seed}");
    let t0 = std::time::Instant::now();
    let mut total = (0, 0, 0u64);
    for (i, (_, name, dir)) in versions("service").into_iter().enumerate() {
        let kind = KINDS[i % KINDS.len()];
        let mut o = soak::Options::new(
            detector.clone(),
            dir.join(kind).join("service"),
            format!("{name}/{kind}"),
        );
        o.cycles = CYCLES;
        o.kill_every = CYCLES;
        o.seed = seed.wrapping_add(i as u64);
        let out = soak::run(&o).unwrap_or_else(|e| panic!("{e:#}"));
        println!("{}", out.summary());
        total.0 += out.cycles;
        total.1 += out.kills();
        total.2 += out.requests;
    }
    println!(
        "soak: {} cycles, {} runs killed, {} requests, 0 errors in {:.0} s",
        total.0,
        total.1,
        total.2,
        t0.elapsed().as_secs_f64()
    );
}
