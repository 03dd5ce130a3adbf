//! Catalog case 8: runtime.GOMAXPROCS(n) recomputed per request. GOMAXPROCS(0) is a
//! query (the standard library's sync.Pool makes it all the time) and never counts;
//! n > 0 takes the scheduler lock and, when n differs, stops the world to resize.
use super::features::{self, Feature};
use super::{
    counted_calls, fmt_pct, from_text, pause_line, pauses_with, site_lines, stopping_line,
    stw_severity, Finding, Param, Rule, Severity, Thresholds,
};
use crate::apis::Api;
use crate::collect::{stw::GOMAXPROCS, Collected};

pub const GOMAXPROCS_MIN_CALLS: Param = Param {
    key: "gomaxprocs_min_calls",
    default: 2.0,
    whole: true,
    doc: "GOMAXPROCS(n > 0) calls in one window that make a finding",
};

pub const RULE: Rule = Rule {
    id: "gomaxprocs-per-request",
    catalog_case: Some(8),
    title: "runtime.GOMAXPROCS(n) set repeatedly",
    observes: "calls to runtime.GOMAXPROCS with n > 0 (n is read from RAX), and the pauses with reason \"GOMAXPROCS\"",
    params: &[&GOMAXPROCS_MIN_CALLS],
    needs: &[Api::Gomaxprocs],
    judge,
    fixture_case: "gomaxprocs",
};

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let Some(u) = counted_calls(c, Api::Gomaxprocs, |n| n > 0) else {
        return vec![];
    };
    if u.calls < t.count(&GOMAXPROCS_MIN_CALLS) {
        return vec![];
    }
    let p = pauses_with(c, GOMAXPROCS);
    let (count, total, p99, wall, stw_share) = p
        .map(|p| (p.pauses, p.total_ns, p.p99_ns, p.wall_share, p.stw_share))
        .unwrap_or_default();
    let site = u.sites.first().cloned();
    let values: Vec<String> = site
        .iter()
        .flat_map(|s| s.args.iter().filter(|a| a.value > 0))
        .map(|a| format!("n={} ×{}", a.value, a.calls))
        .collect();
    let mut evidence = vec![format!(
        "{} calls with n > 0 in {:.1} s ({:.1}/s){}",
        u.calls,
        c.duration_s,
        u.per_second,
        if values.is_empty() {
            String::new()
        } else {
            format!(": {}", values.join(", "))
        }
    )];
    evidence.extend(site_lines(u.stats, 4));
    if c.stw_measured {
        evidence.push(pause_line(
            count,
            "\"GOMAXPROCS\" (only when n changes)",
            total,
            p99,
        ));
        evidence.extend(stopping_line(p));
    }
    // Same-value calls only take the scheduler lock; changing values stop the world.
    let severity = if count > 0 {
        stw_severity(wall, p99).max(Severity::Medium)
    } else if u.per_second >= 100.0 {
        Severity::Medium
    } else {
        Severity::Low
    };
    vec![Finding {
        rule: RULE.id,
        severity,
        title: RULE.title.into(),
        summary: format!(
            "GOMAXPROCS(n > 0) {:.1}/s{}: {} pauses ({} of wall time, {} of stop-the-world time) and the scheduler lock on every call",
            u.per_second,
            site.as_ref().map(from_text).unwrap_or_default(),
            count,
            fmt_pct(wall),
            fmt_pct(stw_share)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "every call takes the global scheduler lock; a value that differs from the current one stops the world to add or remove Ps".into(),
        fix: fix_text(features::has(c, Feature::CgroupGomaxprocs)).into(),
        fine_when: "test harnesses that deliberately vary the number of Ps, outside timed regions".into(),
    }]
}

/// With `cgroup_default` (Go 1.25+: runtime/cgroup_linux.go and SetDefaultGOMAXPROCS
/// in runtime/debug.go) the default follows the cgroup CPU limit and updates itself,
/// for main modules whose go.mod says 1.25 or later (older go lines default
/// GODEBUG containermaxprocs=0 and updatemaxprocs=0: internal/godebugs/table.go).
fn fix_text(cgroup_default: bool) -> &'static str {
    if cgroup_default {
        "stop setting GOMAXPROCS at run time and rely on the default: on Go 1.25+ it follows the cgroup CPU limit and the affinity mask and updates itself when they change (with `go 1.25` or later in go.mod; older go lines need GODEBUG=containermaxprocs=1,updatemaxprocs=1); after an explicit setting, runtime.SetDefaultGOMAXPROCS() returns to it"
    } else {
        "set GOMAXPROCS once at startup (or rely on the default, NumCPU); in a container with a CPU limit set it once in main from the cgroup quota, e.g. with go.uber.org/automaxprocs (Go 1.25+ does this itself)"
    }
}
