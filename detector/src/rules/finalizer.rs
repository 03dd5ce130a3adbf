//! Catalog cases 3 and 12: runtime.SetFinalizer as a cleanup mechanism, and as a leak
//! counter. Each finalized object survives an extra GC cycle and its finalizer runs
//! on one goroutine, late or never. The two are told apart by what the finalizer does:
//! the probe reads the finalizer's code pointer (the closure in SetFinalizer's second
//! argument) and user space checks whether that function calls a Close method.
//! SetFinalizer calls from the standard library (os closes files this way) and calls
//! that clear a finalizer (nil) are ignored.
use super::features::{self, Feature};
use super::{
    active_fraction, cpu_severity, fmt_pct, from_text, shared, site_lines, Finding, Param, Rule,
    Thresholds,
};
use crate::apis::Api;
use crate::collect::{CallSite, Collected};

pub const FINALIZER_PER_SECOND: Param = Param {
    key: "finalizer_per_second",
    default: 10.0,
    whole: false,
    doc: "SetFinalizer calls per second that make a finding",
};

pub const CLEANUP_RULE: Rule = Rule {
    id: "finalizer-cleanup",
    catalog_case: Some(3),
    title: "runtime.SetFinalizer used to release resources",
    observes: "SetFinalizer calls per second whose finalizer function calls a Close method (finalizer read from the call's arguments, its calls decoded from the binary)",
    params: &[&FINALIZER_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::SetFinalizer],
    judge: judge_cleanup,
    fixture_case: "finalizer-cleanup",
};

pub const LEAK_RULE: Rule = Rule {
    id: "finalizer-leak-counter",
    catalog_case: Some(12),
    title: "runtime.SetFinalizer on hot objects to count leaks",
    observes: "SetFinalizer calls per second whose finalizer does not close anything (counting or logging finalizers)",
    params: &[&FINALIZER_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::SetFinalizer],
    judge: judge_leak,
    fixture_case: "finalizer-leak",
};

/// Cost of one finalized object: the special record, the extra GC cycle it survives
/// and the finalizer goroutine's run (the catalog measures ~2.5 µs more per object).
const NS_PER_CALL: f64 = 2_500.0;

fn judge_cleanup(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    judge(c, t, true)
}

fn judge_leak(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    judge(c, t, false)
}

fn judge(c: &Collected, t: &Thresholds, cleanup: bool) -> Vec<Finding> {
    let Some(stats) = c.calls_of(Api::SetFinalizer) else {
        return vec![];
    };
    // User call sites, keeping only finalizers of the kind this rule is about.
    let mut sites: Vec<(CallSite, Vec<String>)> = vec![];
    for s in stats.sites.iter().filter(|s| s.counted) {
        let mut n = 0;
        let mut names = vec![];
        for a in s.args.iter().filter(|a| a.value != 0) {
            if a.closes_resource == Some(cleanup) {
                n += a.calls;
                names.extend(a.function.clone());
            }
        }
        if n > 0 {
            sites.push((
                CallSite {
                    calls: n,
                    ..s.clone()
                },
                names,
            ));
        }
    }
    sites.sort_by_key(|(s, _)| std::cmp::Reverse(s.calls));
    let calls: u64 = sites.iter().map(|(s, _)| s.calls).sum();
    let rate = calls as f64 / c.duration_s;
    if rate < t.get(&FINALIZER_PER_SECOND)
        || active_fraction(&stats.counted_per_tick) < t.get(&shared::SUSTAINED_FRACTION)
    {
        return vec![];
    }
    let Some((site, finalizers)) = sites.first().cloned() else {
        return vec![];
    };
    let core = rate * NS_PER_CALL / 1e9;
    let mut evidence = vec![format!(
        "{calls} SetFinalizer calls in {:.1} s ({rate:.0}/s), finalizer {}",
        c.duration_s,
        finalizers.join(", ")
    )];
    evidence.extend(site_lines(stats, 4));
    let rule = if cleanup { &CLEANUP_RULE } else { &LEAK_RULE };
    let (what, cost) = if cleanup {
        (
            "closes a resource",
            "the resource stays open until a GC finds the object and the single finalizer goroutine gets to it (or never, at exit): descriptors pile up, each object survives an extra GC cycle",
        )
    } else {
        (
            "only counts or logs",
            "every object with a finalizer survives an extra GC cycle (more heap), finalizers run serially on one goroutine, and the count arrives only after the object is already gone",
        )
    };
    let (fix, fine) = fix_texts(cleanup, features::has(c, Feature::AddCleanup));
    vec![Finding {
        rule: rule.id,
        severity: cpu_severity(core),
        title: rule.title.into(),
        summary: format!(
            "SetFinalizer {rate:.0}/s{} with a finalizer that {what}: about {} of a core, plus one extra GC cycle of retention per object",
            from_text(&site),
            fmt_pct(core)
        ),
        call_site: Some(site),
        culprit: None,
        evidence,
        cost: cost.into(),
        fix: fix.into(),
        fine_when: fine.into(),
    }]
}

/// The fix and "fine when" texts: with `add_cleanup` (Go 1.24+, runtime/mcleanup.go;
/// runtime/mfinal.go's SetFinalizer doc then says "New Go code should consider using
/// AddCleanup instead") the safety net is a cleanup, which gets the resource rather
/// than the object, so the object is freed in the cycle that finds it unreachable
/// (runtime/mgcsweep.go: an unmarked object with a finalizer special is marked again,
/// "revived"; with only a cleanup special it "is truly dead").
fn fix_texts(cleanup: bool, add_cleanup: bool) -> (&'static str, &'static str) {
    match (cleanup, add_cleanup) {
        (true, false) => (
            "make Close part of the API and `defer x.Close()` at the call site; if you want a safety net, let the finalizer only log that Close was forgotten",
            "cgo handles whose lifetime cannot be expressed with Close (and even then an explicit Close is preferred)",
        ),
        (true, true) => (
            "make Close part of the API and `defer x.Close()` at the call site; if you want a safety net, use runtime.AddCleanup (Go 1.24+) instead of SetFinalizer, passing it the resource rather than the object (the object is then freed in the cycle that finds it unreachable, and cleanups may run concurrently), cancel it in Close with Cleanup.Stop, and let it only log that Close was forgotten",
            "nothing with SetFinalizer on Go 1.24+: a resource whose lifetime cannot be expressed with Close (cgo handles) gets runtime.AddCleanup, which is not flagged",
        ),
        (false, false) => (
            "count opens and closes with atomic counters and an explicit Close, and find leaks with heap profile diffs (go tool pprof -base old.heap new.heap)",
            "one-off debugging of whether a specific object is collected, in debug builds",
        ),
        (false, true) => (
            "count opens and closes with atomic counters and an explicit Close, and find leaks with heap profile diffs (go tool pprof -base old.heap new.heap); if a forgotten Close must be reported, use runtime.AddCleanup (Go 1.24+) with the object's id as the argument, cancelled by Close with Cleanup.Stop: no extra GC cycle of retention, and it is not flagged",
            "one-off debugging of whether a specific object is collected, in debug builds (runtime.AddCleanup does the same without keeping the object for another cycle)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobin::GoVersion;

    #[test]
    fn fix_recommends_add_cleanup_from_go_1_24_only() {
        for (v, modern) in [
            ("go1.19.8", false),
            ("go1.23.9", false),
            ("go1.24.0", true),
            ("go1.27.3", true),
        ] {
            let v = GoVersion::parse(v).unwrap();
            assert_eq!(Feature::AddCleanup.in_version(v), modern, "{v}");
            for cleanup in [true, false] {
                let (fix, fine) = fix_texts(cleanup, Feature::AddCleanup.in_version(v));
                assert_eq!(fix.contains("runtime.AddCleanup"), modern, "{v}: {fix}");
                assert_eq!(fine.contains("AddCleanup"), modern, "{v}: {fine}");
            }
        }
    }
}
