//! Catalog case 11: runtime.Caller (and Callers/FuncForPC/CallersFrames) on every log
//! line. Each call unwinds the stack or symbolises a PC through the pclntab (about
//! 1-2 µs), whoever makes it: `log` with Lshortfile counts, with the handler that logs
//! as the culprit. A one-PC `runtime.Callers` capture is not counted: log/slog takes
//! one for every record and symbolises it (runtime.(*Frames).Next, counted) only
//! with AddSource. runtime.Caller itself is seen through its own Frames.Next call
//! (no probe of its own: it would be a third hit per call), with Caller on the path.
use super::features::{self, Feature};
use super::{
    active_fraction, counted_calls, cpu_severity, fmt_pct, from_text, shared, site_lines, Finding,
    Param, Rule, Thresholds,
};
use crate::apis::Api;
use crate::collect::Collected;

pub const CALLER_PER_SECOND: Param = Param {
    key: "caller_per_second",
    default: 1000.0,
    whole: false,
    doc: "runtime.Caller/Callers/FuncForPC/CallersFrames calls per second that make a finding",
};

pub const RULE: Rule = Rule {
    id: "caller-hot-path",
    catalog_case: Some(11),
    title: "runtime.Caller on a hot path",
    observes: "calls to runtime.Caller, runtime.Callers (with more than one PC), runtime.FuncForPC and runtime.(*Frames).Next, per second",
    params: &[&CALLER_PER_SECOND, &shared::SUSTAINED_FRACTION],
    needs: &[Api::Caller, Api::Callers, Api::FuncForPc, Api::CallersFrames],
    judge,
    fixture_case: "caller",
};

/// Rough cost of one call (unwind + pclntab lookup), from the catalog's benchmark.
const NS_PER_CALL: f64 = 1_500.0;

fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let found: Vec<_> = RULE
        .needs
        .iter()
        .filter_map(|a| match a {
            // len(pc) is the recorded argument: one PC is a capture, not an unwind.
            Api::Callers => counted_calls(c, *a, |len| len != 1),
            _ => counted_calls(c, *a, |_| true),
        })
        .collect();
    let rate: f64 = found.iter().map(|u| u.per_second).sum();
    if rate < t.get(&CALLER_PER_SECOND) {
        return vec![];
    }
    let Some(main) = found.iter().max_by_key(|u| u.calls) else {
        return vec![];
    };
    if active_fraction(&main.stats.counted_per_tick) < t.get(&shared::SUSTAINED_FRACTION) {
        return vec![];
    }
    let site = main.sites.first().cloned();
    let core = rate * NS_PER_CALL / 1e9;
    let mut evidence: Vec<String> = found
        .iter()
        .map(|u| format!("{}: {} calls ({:.0}/s)", u.stats.api, u.calls, u.per_second))
        .collect();
    evidence.extend(site_lines(main.stats, 4));
    if let Some(cpu) = c.cpu_seconds {
        evidence.push(format!(
            "the process used {:.2} CPU-seconds in {:.1} s; the calls cost about {:.3}",
            cpu,
            c.duration_s,
            rate * NS_PER_CALL / 1e9 * c.duration_s
        ));
    }
    vec![Finding {
        rule: RULE.id,
        severity: cpu_severity(core),
        title: RULE.title.into(),
        summary: format!(
            "{} {rate:.0}/s{} spends about {} of a core unwinding and symbolising stacks",
            // Caller is seen through its Frames.Next: name what the program called,
            // where the culprit's path ends.
            site.as_ref()
                .and_then(|s| s.culprit.as_ref())
                .and_then(|c| c.path.last())
                .map_or(main.stats.api.as_str(), |f| f.as_str()),
            site.as_ref().map(from_text).unwrap_or_default(),
            fmt_pct(core)
        ),
        call_site: site,
        culprit: None,
        evidence,
        cost: "each call unwinds the stack and decodes the PC-to-line tables (about 1-2 µs and an allocation), on every log line".into(),
        fix: fix_text(features::has(c, Feature::Slog)).into(),
        fine_when: "error paths, test helpers that report the failing line, debug builds".into(),
    }]
}

/// log/slog (Go 1.21+: log/slog/handler.go's HandlerOptions.AddSource) only where
/// the target's Go has it.
fn fix_text(slog: bool) -> &'static str {
    if slog {
        "use a constant (or once-computed) file name for ordinary log lines and call runtime.Caller only on the error path; with log/slog enable AddSource only for the error sink"
    } else {
        "use a constant (or once-computed) file name for ordinary log lines and call runtime.Caller (or the log package's Lshortfile/Llongfile) only on the error path"
    }
}
