//! Short form of the agent's churn soak (see `detector_tests::agent_soak::churn`; the
//! long form is `cargo xtask soak --agent`): 50 new short-lived Go processes per
//! second for 25 s next to two long-lived ones under load, as root with real eBPF.
use std::time::Duration;

use detector_tests::{
    agent_soak::{churn, ChurnOptions},
    require_bpf_privileges,
};

#[test]
fn agent_stays_flat_under_process_churn() {
    require_bpf_privileges();
    let o = churn(&ChurnOptions {
        seconds: 25,
        per_second: 50,
        life: Duration::from_millis(1000),
        warmup: Duration::from_secs(8),
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    println!("{}", o.summary());
    assert_eq!(o.failed, 0, "every short-lived process exits cleanly");
    assert_eq!(o.exited_ok, o.spawned);
    assert!(
        o.spawned as f64 >= 0.9 * 50.0 * o.seconds,
        "{} spawned",
        o.spawned
    );
    // Every process lived 1 s, longer than the discovery latency (a 0.5 s scan).
    assert_eq!(o.seen, o.spawned, "every short-lived process is watched");
    // Their binary is probed, though its first process exits before the attach is done.
    assert!(o.short_calls > 0, "{}", o.summary());
    // Flat after the warm-up: bounded by what ~50 live processes hold, not by how
    // many came and went.
    let grew = |what: &str, warm: u64, peak: u64, slack: u64| {
        assert!(
            peak <= warm + slack,
            "{what} grew from {warm} to {peak} after the warm-up: {}",
            o.summary()
        );
    };
    // The agent's RSS still grows for ~40 s (allocator warm-up: measured in
    // docs/reliability.md), past this short form's warm-up: a loose bound here, the
    // long form (`cargo xtask soak --agent`) shows the plateau.
    grew("RSS (KiB)", o.warm.rss_kb, o.end.rss_kb, 32 * 1024);
    grew("open descriptors", o.warm.fds, o.peak.fds, 16);
    grew(
        "call map entries",
        o.warm.calls_entries,
        o.peak.calls_entries,
        256,
    );
    grew("/metrics series", o.warm.series, o.peak.series, 64);
    assert_eq!(o.warm.probes_attached, o.end.probes_attached, "links");
    // Once the churn stopped, only the long-lived processes' entries remain (they
    // may have found a few new call paths meanwhile).
    grew(
        "call map entries once the churn stopped",
        o.warm.calls_entries,
        o.after.calls_entries,
        16,
    );
}
