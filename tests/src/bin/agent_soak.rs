//! `cargo xtask soak --agent`: the long forms of the host agent's soak (see
//! `detector_tests::agent_soak`): churn, then SIGKILL + restart cycles.
//!
//!   agent_soak [--churn-seconds S] [--churn-rate N] [--restarts N]
//!
//! Defaults: 600 s of churn at 50 new processes per second, then 100 restarts. A
//! zero skips a part. Prints one summary line per part; exits 1 on any violation.
use std::{process::ExitCode, time::Duration};

use detector_tests::{agent_soak, require_bpf_privileges};

fn main() -> ExitCode {
    let mut churn_seconds = 600u64;
    let mut churn_rate = 50u32;
    let mut restarts = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        let ok = match a.as_str() {
            "--churn-seconds" => v.parse().map(|n| churn_seconds = n).is_ok(),
            "--churn-rate" => v.parse().map(|n| churn_rate = n).is_ok(),
            "--restarts" => v.parse().map(|n| restarts = n).is_ok(),
            _ => {
                eprintln!("agent_soak: unknown argument {a}");
                return ExitCode::from(2);
            }
        };
        if !ok {
            eprintln!("agent_soak: {a} takes a number");
            return ExitCode::from(2);
        }
    }
    require_bpf_privileges();
    let mut failed = false;
    if churn_seconds > 0 && churn_rate > 0 {
        match agent_soak::churn(&agent_soak::ChurnOptions {
            seconds: churn_seconds,
            per_second: churn_rate,
            life: Duration::from_millis(1000),
            warmup: Duration::from_secs(40),
        }) {
            Ok(o) => {
                println!("{}", o.summary());
                // Flat: bounded by what the live processes hold, not by how many
                // came and went (the peak of map entries follows the agent's tick lag).
                let flat = o.peak.fds <= o.warm.fds + 16
                    && o.end.calls_entries <= o.warm.calls_entries + 256
                    && o.after.calls_entries <= o.warm.calls_entries
                    && o.peak.series <= o.warm.series + 64
                    && o.end.rss_kb <= o.warm.rss_kb + 64 * 1024;
                println!(
                    "churn: {:.1} % of the short-lived processes seen",
                    100.0 * o.seen as f64 / o.spawned.max(1) as f64
                );
                if o.failed > 0 || o.seen * 100 < o.spawned * 95 || !flat {
                    eprintln!("agent_soak: churn violated a bound (see the line above)");
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("agent_soak: churn: {e:#}");
                failed = true;
            }
        }
    }
    if restarts > 0 {
        match agent_soak::restarts(restarts) {
            Ok(o) => {
                println!("{}", o.summary());
                failed |= o.failed_requests > 0;
            }
            Err(e) => {
                eprintln!("agent_soak: restarts: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
