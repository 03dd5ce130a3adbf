//! Catalog cases 2 and 14: collections forced by the program on a timer or in a loop
//! (runtime.GC, debug.FreeOSMemory). Each forced collection stops the world twice
//! (sweep and mark termination) and throws away the pacer's work; FreeOSMemory adds a
//! synchronous scavenge of the whole heap. One call at a phase boundary is fine: a
//! finding needs `periodic_min_calls` calls in the window.
use super::{
    counted_calls, fmt_ns, fmt_pct, forced_gc_pauses, from_text, pause_line, periodic_line, shared,
    site_lines, stopping_line, stw_severity, Finding, Rule, Thresholds,
};
use crate::apis::Api;
use crate::collect::Collected;

pub const GC_RULE: Rule = Rule {
    id: "gc-forced-periodic",
    catalog_case: Some(2),
    title: "runtime.GC() called repeatedly",
    observes: "calls to runtime.GC, and the collector pauses that happen while a goroutine is inside runtime.GC (forced, not paced)",
    params: &[&shared::PERIODIC_MIN_CALLS],
    needs: &[Api::Gc],
    judge: judge_gc,
    fixture_case: "gc",
};

pub const FREEOSMEMORY_RULE: Rule = Rule {
    id: "freeosmemory-periodic",
    catalog_case: Some(14),
    title: "debug.FreeOSMemory() on a timer",
    observes: "calls to debug.FreeOSMemory, and the forced collection pauses they cause",
    params: &[&shared::PERIODIC_MIN_CALLS],
    needs: &[Api::FreeOsMemory, Api::Gc],
    judge: judge_freeosmemory,
    fixture_case: "freeosmemory",
};

struct Case {
    rule: &'static Rule,
    api: Api,
    cost: &'static str,
    fix: &'static str,
    fine_when: &'static str,
}

fn judge_gc(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    judge(
        c,
        t,
        &Case {
            rule: &GC_RULE,
            api: Api::Gc,
            cost: "every call runs a full collection with two stop-the-world pauses, marks the whole live heap and resets the pacer: the program measures or pays for the GC, not its own work",
            fix: "remove the call and let GOGC/GOMEMLIMIT pace the collector; in benchmarks use b.ReportAllocs and, if a clean heap is really needed, call runtime.GC once before b.ResetTimer",
            fine_when: "tests that assert on object liveness, microbenchmarks of the GC itself, a single call before a measurement",
        },
    )
}

fn judge_freeosmemory(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    judge(
        c,
        t,
        &Case {
            rule: &FREEOSMEMORY_RULE,
            api: Api::FreeOsMemory,
            cost: "every call forces a full collection (two stop-the-world pauses) and then a synchronous scavenge that madvises every free page, a latency spike each time for a marginally smaller RSS",
            fix: "remove the timer; set GOMEMLIMIT (env or debug.SetMemoryLimit) and let the background scavenger return memory, tune GOGC if needed",
            fine_when: "one call at a coarse phase boundary of a batch job that will not allocate again for a long time, shutdown hooks",
        },
    )
}

fn judge(c: &Collected, t: &Thresholds, case: &Case) -> Vec<Finding> {
    let Some(u) = counted_calls(c, case.api, |_| true) else {
        return vec![];
    };
    if u.calls < t.count(&shared::PERIODIC_MIN_CALLS) {
        return vec![];
    }
    let (pauses, total_ns, p99) = forced_gc_pauses(c);
    // Both APIs force the same collections; when both are called, split by calls.
    let other = if case.api == Api::Gc {
        Api::FreeOsMemory
    } else {
        Api::Gc
    };
    let other_calls = counted_calls(c, other, |_| true).map_or(0, |o| o.calls);
    let share = u.calls as f64 / (u.calls + other_calls) as f64;
    let stopped = (total_ns as f64 * share) as u64;
    let wall = stopped as f64 / (c.duration_s * 1e9);
    let stw_share = if c.stopped_ns == 0 {
        0.0
    } else {
        stopped as f64 / c.stopped_ns as f64
    };
    let site = u.sites.first().cloned();
    let from = site.as_ref().map(from_text).unwrap_or_default();
    let mut evidence = vec![periodic_line(&u, c, "")];
    evidence.extend(site_lines(u.stats, 4));
    if c.stw_measured {
        evidence.push(pause_line(pauses, "forced-collection", total_ns, p99));
        evidence.extend(stopping_line(c.pauses.iter().filter(|p| p.reason.forced)));
    }
    vec![Finding {
        rule: case.rule.id,
        severity: stw_severity(wall, p99),
        title: case.rule.title.into(),
        summary: format!(
            "{} {:.1}/s{from} forces collections that stop the world {}: {} of wall time, {} of this process's stop-the-world time",
            case.api.name(),
            u.per_second,
            fmt_ns(stopped),
            fmt_pct(wall),
            fmt_pct(stw_share)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: case.cost.into(),
        fix: case.fix.into(),
        fine_when: case.fine_when.into(),
    }]
}
