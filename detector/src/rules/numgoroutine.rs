//! Catalog case 7: runtime.NumGoroutine polled in a hot loop. The function is always
//! inlined, so there is nothing to probe at its entry; instead detector finds each
//! place it was inlined into user code (the pclntab's inline tree) and puts a probe on
//! the first instruction of the inlined body there.
use super::{
    active_fraction, counted_calls, cpu_severity, fmt_pct, shared, site_lines, Finding, Param,
    Rule, Thresholds,
};
use crate::apis::Api;
use crate::collect::Collected;

pub const NUMGOROUTINE_PER_SECOND: Param = Param {
    key: "numgoroutine_per_second",
    default: 1000.0,
    whole: false,
    doc:
        "executions per second of an inlined runtime.NumGoroutine outside the runtime that make a finding",
};

pub const RULE: Rule = Rule {
    id: "numgoroutine-hot-loop",
    catalog_case: Some(7),
    title: "runtime.NumGoroutine polled in a hot loop",
    observes: "executions per second of runtime.NumGoroutine's inlined body in user functions (probes placed through the pclntab inline tree)",
    params: &[&NUMGOROUTINE_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::NumGoroutine],
    judge,
    fixture_case: "numgoroutine",
};

/// A contended read of the scheduler's goroutine counters (cache-line transfers),
/// plus the Gosched that usually comes with the polling loop.
const NS_PER_CALL: f64 = 200.0;

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let Some(u) = counted_calls(c, Api::NumGoroutine, |_| true) else {
        return vec![];
    };
    if u.per_second < t.get(&NUMGOROUTINE_PER_SECOND)
        || active_fraction(&u.stats.counted_per_tick) < t.get(&shared::SUSTAINED_FRACTION)
    {
        return vec![];
    }
    let site = u.sites.first().cloned();
    let core = u.per_second * NS_PER_CALL / 1e9;
    let mut evidence = vec![format!(
        "{} executions in {:.1} s ({:.0}/s)",
        u.calls, c.duration_s, u.per_second
    )];
    evidence.extend(site_lines(u.stats, 3));
    vec![Finding {
        rule: RULE.id,
        severity: cpu_severity(core),
        title: RULE.title.into(),
        summary: format!(
            "runtime.NumGoroutine {:.0}/s{}: a global counter read in a polling loop (cache-line ping-pong across cores, about {} of a core)",
            u.per_second,
            site.as_ref().map(|s| format!(" in {}", s.function)).unwrap_or_default(),
            fmt_pct(core)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "every read touches scheduler counters that every P writes; polled in a loop (usually with Gosched) it burns CPU and bounces cache lines between cores".into(),
        fix: "bound concurrency with a buffered channel used as a semaphore (or errgroup.SetLimit) instead of polling the global goroutine count".into(),
        fine_when: "coarse health checks and diagnostics (once per second or less)".into(),
    }]
}
