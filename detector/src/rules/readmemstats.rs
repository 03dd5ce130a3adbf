//! Catalog case 1: runtime.ReadMemStats on a hot path.
//!
//! Every call stops the world (reason "read mem stats"). Once per scrape interval is
//! harmless; per request or in a loop, the pauses land in every request's latency.
use super::{
    active_fraction, fmt_pct, from_text, pause_line, shared, site_lines, stopping_line, Finding,
    Param, Rule, Severity, Thresholds,
};
use crate::apis::Api;
use crate::collect::{stw::READ_MEM_STATS, Collected};

pub const READMEMSTATS_PER_SECOND: Param = Param {
    key: "readmemstats_per_second",
    default: 5.0,
    whole: false,
    doc: "ReadMemStats calls per second that make a finding",
};

pub const RULE: Rule = Rule {
    id: "readmemstats-hot-path",
    catalog_case: Some(1),
    title: "runtime.ReadMemStats on a hot path",
    observes:
        "calls to runtime.ReadMemStats by call site, and the pauses with reason \"read mem stats\"",
    params: &[&READMEMSTATS_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::ReadMemStats],
    judge,
    fixture_case: "readmemstats",
};

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let Some(calls) = c.calls_of(Api::ReadMemStats) else {
        return vec![];
    };
    let counted_calls: u64 = calls
        .sites
        .iter()
        .filter(|s| s.counted)
        .map(|s| s.calls)
        .sum();
    let rate = counted_calls as f64 / c.duration_s;
    let sustained = active_fraction(&calls.counted_per_tick);
    if rate < t.get(&READMEMSTATS_PER_SECOND) || sustained < t.get(&shared::SUSTAINED_FRACTION) {
        return vec![];
    }
    let site = calls.sites.iter().find(|s| s.counted).cloned();
    let pause = c
        .pauses
        .iter()
        .find(|p| p.reason.code == Some(READ_MEM_STATS));
    let (wall, stw_share, p99, count, total) = pause
        .map(|p| (p.wall_share, p.stw_share, p.p99_ns, p.pauses, p.total_ns))
        .unwrap_or_default();
    let severity = if wall >= 0.005 || p99 >= 1_000_000 {
        Severity::High
    } else if rate >= 10.0 * t.get(&READMEMSTATS_PER_SECOND) {
        Severity::Medium
    } else {
        Severity::Low
    };
    let from = site.as_ref().map(from_text).unwrap_or_default();
    let mut evidence = vec![format!(
        "{counted_calls} calls in {:.1} s ({rate:.1}/s), seen in {:.0}% of the 1 s ticks",
        c.duration_s,
        sustained * 100.0
    )];
    evidence.extend(site_lines(calls, 5));
    if c.stw_measured {
        evidence.push(pause_line(count, "\"read mem stats\"", total, p99));
        evidence.extend(stopping_line(pause));
    }
    vec![Finding {
        rule: RULE.id,
        severity,
        title: RULE.title.into(),
        summary: format!(
            "ReadMemStats {rate:.0}/s{from} stops the world {}: {} of wall time, {} of this process's stop-the-world time",
            if count > 0 { format!("{:.0} times/s", count as f64 / c.duration_s) } else { "on every call".into() },
            fmt_pct(wall),
            fmt_pct(stw_share),
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "each call pauses every goroutine while the runtime gathers heap statistics; the pause grows with GOMAXPROCS and the heap and is added to the latency of every request in flight".into(),
        fix: "read the values you need from runtime/metrics (no stop-the-world), at most once per scrape interval from one background goroutine, and hand requests that cached snapshot".into(),
        fine_when: "one-shot tools and tests, rare admin or debug dumps, and a metrics exporter that reads once per scrape".into(),
    }]
}
