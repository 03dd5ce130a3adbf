//! Beyond the catalog (its failure mode 4, "global tunables that should be set once
//! at startup"): debug.SetGCPercent / debug.SetMemoryLimit called per request, per
//! batch or in a loop, typically to switch the collector off around a hot section.
//!
//! What a call costs (runtime/mgcpacer.go `setGCPercent` / `setMemoryLimit`, the same
//! from Go 1.19 to 1.27): it takes the global heap lock (`mheap_.lock`, which span
//! allocation also takes) on the system stack, stores the value and commits the
//! pacer (`gcControllerCommit`: a new heap goal and trigger, the mark assist ratio
//! revised when a cycle is running, the sweeper and scavenger re-paced). No call stops
//! the world. `SetGCPercent(n < 0)` then waits for a running mark phase to finish
//! (`gcWaitOnMark`) before it returns, and when the percent is restored the heap has
//! grown past the goal: the skipped collection starts at once. `SetMemoryLimit(limit
//! < 0)` is a query (no commit) and never counts, nor does any call from the runtime or
//! the standard library.
use super::features::{self, Feature};
use super::{
    active_fraction, counted_calls, from_text, shared, site_lines, CountedCalls, Finding, Param,
    Rule, Severity, Thresholds,
};
use crate::apis::Api;
use crate::collect::{CallStats, Collected};

pub const GC_TUNABLE_PER_SECOND: Param = Param {
    key: "gc_tunable_per_second",
    default: 2.0,
    whole: false,
    doc: "SetGCPercent and SetMemoryLimit (limit >= 0) calls per second, together, that make a finding",
};

pub const RULE: Rule = Rule {
    id: "gc-tunable-churn",
    catalog_case: None,
    title: "GOGC / GOMEMLIMIT changed repeatedly (debug.SetGCPercent, debug.SetMemoryLimit)",
    observes: "calls to debug.SetGCPercent (percent read from RAX) and debug.SetMemoryLimit with limit >= 0 (RAX), by call site and value",
    params: &[&GC_TUNABLE_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::SetGcPercent, Api::SetMemoryLimit],
    judge,
    fixture_case: "gctunables",
};

/// The percent passed to `setGCPercent(in int32)`: only EAX is defined.
fn percent(raw: i64) -> i32 {
    raw as i32
}

/// A memory limit in the units a Go programmer would write it.
fn fmt_limit(bytes: i64) -> String {
    const MIB: i64 = 1 << 20;
    if bytes == i64::MAX {
        "none (math.MaxInt64)".into()
    } else if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

/// "value ×calls" for every value passed, most calls first.
fn values(u: &CountedCalls, keep: impl Fn(i64) -> bool, show: impl Fn(i64) -> String) -> String {
    let mut by_value: Vec<(String, u64)> = vec![];
    for a in u
        .sites
        .iter()
        .flat_map(|s| &s.args)
        .filter(|a| keep(a.value))
    {
        let v = show(a.value);
        match by_value.iter_mut().find(|(s, _)| *s == v) {
            Some((_, n)) => *n += a.calls,
            None => by_value.push((v, a.calls)),
        }
    }
    by_value.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    by_value
        .iter()
        .map(|(v, n)| format!("{v} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Share of the window's ticks in which either API was called.
fn sustained(stats: &[&CallStats]) -> f64 {
    let ticks = stats
        .iter()
        .map(|s| s.counted_per_tick.len())
        .max()
        .unwrap_or(0);
    let merged: Vec<u64> = (0..ticks)
        .map(|i| {
            stats
                .iter()
                .map(|s| s.counted_per_tick.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    active_fraction(&merged)
}

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let gogc = counted_calls(c, Api::SetGcPercent, |_| true);
    let limit = counted_calls(c, Api::SetMemoryLimit, |l| l >= 0);
    let calls = gogc.as_ref().map_or(0, |u| u.calls) + limit.as_ref().map_or(0, |u| u.calls);
    let stats: Vec<&CallStats> = gogc.iter().chain(&limit).map(|u| u.stats).collect();
    let active = sustained(&stats);
    let threshold = t.get(&GC_TUNABLE_PER_SECOND);
    // A probe the overhead budget duty-cycled counts a key seen fewer than 5 times
    // without scaling it up (probes::budget), and its ticks are empty while it is off:
    // at a tight budget a hot API can show a handful of calls in one tick. A probe is
    // only cycled when its calls cost the budget, so its calls are then judged by their
    // rate over the time it was live, and the ticks are not required.
    let cycled = stats.iter().any(|s| s.sampled.is_some());
    let live_rate: f64 = gogc
        .iter()
        .chain(&limit)
        .map(|u| u.calls as f64 / (c.duration_s * u.stats.sampled.unwrap_or(1.0).max(1e-3)))
        .sum();
    let mut rate = calls as f64 / c.duration_s;
    let from_live_time = cycled && rate < threshold;
    if from_live_time {
        rate = live_rate;
    }
    let steady = cycled || active >= t.get(&shared::SUSTAINED_FRACTION);
    if calls < 2 || rate < threshold || !steady {
        return vec![];
    }
    let off: u64 = gogc.as_ref().map_or(0, |u| {
        u.sites
            .iter()
            .flat_map(|s| &s.args)
            .filter(|a| percent(a.value) < 0)
            .map(|a| a.calls)
            .sum()
    });
    let queries: u64 = c.calls_of(Api::SetMemoryLimit).map_or(0, |s| {
        s.sites
            .iter()
            .filter(|s| s.counted)
            .flat_map(|s| &s.args)
            .filter(|a| a.value < 0)
            .map(|a| a.calls)
            .sum()
    });

    let mut evidence = vec![if from_live_time {
        format!(
            "{calls} calls seen while the probes were live, about {rate:.1}/s over that time (the overhead budget kept them off most of the {:.1} s window)",
            c.duration_s
        )
    } else {
        format!(
            "{calls} calls in {:.1} s ({rate:.1}/s), seen in {:.0}% of the 1 s ticks",
            c.duration_s,
            active * 100.0
        )
    }];
    if let Some(u) = &gogc {
        evidence.push(format!(
            "{}: {} calls ({:.1}/s): percent {}",
            Api::SetGcPercent.name(),
            u.calls,
            u.per_second,
            values(
                u,
                |_| true,
                |v| match percent(v) {
                    p if p < 0 => "-1 (collector off)".into(),
                    p => p.to_string(),
                }
            )
        ));
    }
    if let Some(u) = &limit {
        evidence.push(format!(
            "{}: {} calls ({:.1}/s): limit {}{}",
            Api::SetMemoryLimit.name(),
            u.calls,
            u.per_second,
            values(u, |l| l >= 0, fmt_limit),
            if queries > 0 {
                format!(" (and {queries} queries with limit < 0, not counted)")
            } else {
                String::new()
            }
        ));
    }
    if off > 0 {
        evidence.push(format!(
            "the collector was switched off {off} times ({:.1}/s): each SetGCPercent(-1) waits for a running mark phase to finish, and restoring the percent starts the skipped collection at once",
            off as f64 / c.duration_s
        ));
    }
    for u in gogc.iter().chain(&limit) {
        evidence.extend(site_lines(u.stats, 3));
    }

    // The busiest user call site of either API.
    let site = gogc
        .iter()
        .chain(&limit)
        .filter_map(|u| u.sites.first())
        .max_by_key(|s| s.calls)
        .cloned();
    // Pauses are not the cost here (no call stops the world): the pattern is.
    let severity = match (off > 0, rate >= 10.0 * threshold) {
        (true, true) => Severity::High,
        (true, false) | (false, true) => Severity::Medium,
        (false, false) => Severity::Low,
    };
    vec![Finding {
        rule: RULE.id,
        severity,
        title: RULE.title.into(),
        summary: format!(
            "GC tunables set {rate:.1}/s{}{}: every call takes the heap lock and re-paces the collector",
            site.as_ref().map(from_text).unwrap_or_default(),
            if off > 0 {
                format!(", switching the collector off {:.1} times/s", off as f64 / c.duration_s)
            } else {
                String::new()
            }
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "GOGC and GOMEMLIMIT are process-wide: every call takes the global heap lock (which span allocation also takes), recomputes the heap goal and re-paces the sweeper, the scavenger and any running mark phase; SetGCPercent(-1) also blocks until a running mark phase ends, and restoring the percent with the heap grown past its goal starts the skipped collection at once, so the collections bunch up after each section. Concurrent togglers race: GC stays off while any of them is inside its section, and one that never restores leaves it off for good".into(),
        fix: fix_text(features::has(c, Feature::GcSettingMetrics)),
        fine_when: "once at startup, on a configuration reload, or from an adaptive controller that adjusts the limit at most every several seconds (below the threshold rate); SetMemoryLimit(-1) queries, which change nothing".into(),
    }]
}

/// Reading the settings: runtime/metrics has /gc/gogc:percent and /gc/gomemlimit:bytes
/// from Go 1.21 (runtime/metrics/description.go); before, only SetMemoryLimit(-1)
/// reads without changing anything.
fn fix_text(gc_setting_metrics: bool) -> String {
    let read = if gc_setting_metrics {
        "to read the settings use runtime/metrics (/gc/gogc:percent, /gc/gomemlimit:bytes) or SetMemoryLimit(-1), not SetGCPercent(SetGCPercent(-1))"
    } else {
        "to read the settings keep the values you set (runtime/metrics has /gc/gogc:percent and /gc/gomemlimit:bytes only from Go 1.21) or call SetMemoryLimit(-1) for the limit, not SetGCPercent(SetGCPercent(-1))"
    };
    format!("set GOGC / GOMEMLIMIT once at startup (environment, or one debug.SetGCPercent / debug.SetMemoryLimit call in main); for sections that should run with fewer collections give the whole process the headroom once (a larger GOGC, with a memory limit as the safety net) instead of switching the collector off per section; for container memory limits use a controller that sets the limit once at start and adjusts it at most every several seconds; {read}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The go1.19.8 misuse run, cut down to what a tight overhead budget leaves: one
    /// call of each value, all in the first tick.
    fn seen_in_one_tick(sampled: Option<f64>) -> Collected {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/rules/testdata/go1.19.8/gctunables-misuse.json"
        );
        let mut c: Collected =
            serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).unwrap();
        for s in c.calls.iter_mut() {
            if s.func == Api::SetGcPercent || s.func == Api::SetMemoryLimit {
                for a in s
                    .args
                    .iter_mut()
                    .chain(s.sites.iter_mut().flat_map(|x| &mut x.args))
                {
                    a.calls = 1;
                }
                for site in s.sites.iter_mut() {
                    site.calls = site.args.len() as u64;
                }
                s.calls = s.args.len() as u64;
                s.per_tick = vec![s.calls, 0, 0];
                s.counted_per_tick = s.per_tick.clone();
                s.sampled = sampled;
            }
        }
        c
    }

    #[test]
    fn a_duty_cycled_probe_is_judged_over_its_live_time() {
        let t = Thresholds::default();
        // 4 calls in 3 s, one tick of three: a burst, when the probes were live.
        assert!(judge(&seen_in_one_tick(None), &t).is_empty());
        // The same 4 calls seen in 1.7% of the window: about 80/s.
        let f = judge(&seen_in_one_tick(Some(0.017)), &t);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].evidence[0].contains("about 78.4/s"),
            "{:?}",
            f[0].evidence
        );
    }

    #[test]
    fn values_read_as_go_writes_them() {
        assert_eq!(percent(-1), -1);
        assert_eq!(percent(0xffff_ffff), -1); // a 32-bit -1 in a zero-extended RAX
        assert_eq!(percent(100), 100);
        assert_eq!(fmt_limit(256 << 20), "256 MiB");
        assert_eq!(fmt_limit(2 << 30), "2 GiB");
        assert_eq!(fmt_limit(i64::MAX), "none (math.MaxInt64)");
        assert_eq!(fmt_limit(1000), "1000 B");
    }
}
