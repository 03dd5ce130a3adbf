//! Catalog case 6: runtime.Stack(buf, true) polled for monitoring. With all=true the
//! runtime stops the world and formats every goroutine's stack; with all=false it
//! only walks the caller's stack and is cheap, so only all=true calls count.
use super::{
    counted_calls, fmt_ns, fmt_pct, from_text, pause_line, pauses_with, periodic_line, shared,
    site_lines, stopping_line, stw_severity, Finding, Rule, Thresholds,
};
use crate::apis::Api;
use crate::collect::{stw::STACK_TRACE, Collected};

pub const RULE: Rule = Rule {
    id: "stack-all-polling",
    catalog_case: Some(6),
    title: "runtime.Stack(buf, true) polled",
    observes: "calls to runtime.Stack with all=true, and the pauses with reason \"all goroutines stack trace\"",
    params: &[&shared::PERIODIC_MIN_CALLS],
    needs: &[Api::Stack],
    judge,
    fixture_case: "stack-all",
};

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let Some(u) = counted_calls(c, Api::Stack, |all| all != 0) else {
        return vec![];
    };
    if u.calls < t.count(&shared::PERIODIC_MIN_CALLS) {
        return vec![];
    }
    let p = pauses_with(c, STACK_TRACE);
    let (count, total, p99, wall, stw_share) = p
        .map(|p| (p.pauses, p.total_ns, p.p99_ns, p.wall_share, p.stw_share))
        .unwrap_or_default();
    let site = u.sites.first().cloned();
    let mut evidence = vec![periodic_line(&u, c, " with all=true")];
    evidence.extend(site_lines(u.stats, 4));
    if c.stw_measured {
        evidence.push(pause_line(
            count,
            "\"all goroutines stack trace\"",
            total,
            p99,
        ));
        evidence.extend(stopping_line(p));
    }
    vec![Finding {
        rule: RULE.id,
        severity: stw_severity(wall, p99),
        title: RULE.title.into(),
        summary: format!(
            "runtime.Stack(all=true) {:.1}/s{} stops the world for {} per call (p99): {} of wall time, {} of this process's stop-the-world time",
            u.per_second,
            site.as_ref().map(from_text).unwrap_or_default(),
            fmt_ns(p99),
            fmt_pct(wall),
            fmt_pct(stw_share)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "each call stops the world and formats every goroutine's stack; the pause grows with the number of goroutines (hundreds of ms at 50k)".into(),
        fix: "watch the goroutine count (runtime.NumGoroutine or /sched/goroutines:goroutines) and dump all stacks only when it crosses a threshold, or on demand via /debug/pprof/goroutine".into(),
        fine_when: "crash or SIGQUIT dumps, forensic post-mortems, short-lived tests".into(),
    }]
}
