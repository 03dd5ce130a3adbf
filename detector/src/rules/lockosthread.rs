//! Catalog case 9: runtime.LockOSThread used for "performance". A locked goroutine
//! that blocks parks its whole OS thread, and every wake-up must hand the goroutine
//! back to that thread (runtime.startlockedm): the hand-off rate is the live cost and
//! is visible even when the lock was taken long before detector attached.
use super::{
    active_fraction, counted_calls, cpu_severity, fmt_pct, shared, site_lines, Finding, Param,
    Rule, Thresholds,
};
use crate::apis::Api;
use crate::collect::Collected;

pub const LOCKEDM_HANDOFFS_PER_SECOND: Param = Param {
    key: "lockedm_handoffs_per_second",
    default: 100.0,
    whole: false,
    doc: "hand-offs per second of goroutines locked to their OS thread that make a finding",
};

pub const RULE: Rule = Rule {
    id: "lockosthread-worker",
    catalog_case: Some(9),
    title: "goroutines locked to OS threads keep blocking",
    observes: "hand-offs to locked threads (runtime.startlockedm) per second, and calls to runtime.LockOSThread",
    params: &[&LOCKEDM_HANDOFFS_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::LockOsThread, Api::StartLockedM],
    judge,
    fixture_case: "lockosthread",
};

/// A hand-off wakes one thread and parks another: two futex round trips, ~5 µs.
const NS_PER_HANDOFF: f64 = 5_000.0;

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let Some(handoffs) = c.calls_of(Api::StartLockedM) else {
        return vec![];
    };
    if handoffs.per_second < t.get(&LOCKEDM_HANDOFFS_PER_SECOND)
        || active_fraction(&handoffs.per_tick) < t.get(&shared::SUSTAINED_FRACTION)
    {
        return vec![];
    }
    let locks = counted_calls(c, Api::LockOsThread, |_| true);
    let site = locks.as_ref().and_then(|l| l.sites.first().cloned());
    let core = handoffs.per_second * NS_PER_HANDOFF / 1e9;
    let mut evidence = vec![format!(
        "{} hand-offs to locked threads in {:.1} s ({:.0}/s)",
        handoffs.calls, c.duration_s, handoffs.per_second
    )];
    match &locks {
        Some(l) => evidence.extend(site_lines(l.stats, 3)),
        None => evidence.push(
            "no LockOSThread call in the window: the goroutines were locked before detector attached"
                .into(),
        ),
    }
    vec![Finding {
        rule: RULE.id,
        severity: cpu_severity(core),
        title: RULE.title.into(),
        summary: format!(
            "{:.0} locked-thread hand-offs/s{}: each blocked locked goroutine parks its OS thread (about {} of a core in thread switches, and no work stealing)",
            handoffs.per_second,
            site.as_ref().map(|s| format!(" (locked in {})", s.function)).unwrap_or_default(),
            fmt_pct(core)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "LockOSThread pins the goroutine to one OS thread, not to a CPU: when it blocks, the thread parks with it and the scheduler cannot steal its work; each wake-up is a thread hand-off".into(),
        fix: "remove LockOSThread from worker goroutines; keep it only around code that needs a specific thread, in a small goroutine that does nothing else".into(),
        fine_when: "OpenGL/Cocoa main threads, cgo libraries with thread-local state, setns/unshare and other per-thread syscalls".into(),
    }]
}
