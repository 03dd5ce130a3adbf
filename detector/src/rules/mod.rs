//! Rules: each reads the collected facts and returns findings. One file per catalog
//! case (or family of cases); adding a rule touches only this folder, its fixture and
//! docs/rules.md. Thresholds come from [`Thresholds`] (TOML config and flags).
mod blockprofile;
mod caller;
mod cpuprofile;
pub mod features;
mod finalizer;
mod forcedgc;
mod gctunables;
#[cfg(test)]
mod golden;
mod gomaxprocs;
mod lockosthread;
mod numgoroutine;
mod readmemstats;
mod stack;
mod trace;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    apis::Api,
    collect::{CallSite, CallStats, Collected, Culprit, PauseStats},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
        }
    }
}

/// One finding: the one schema every output (text, JSON, metrics) uses.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Stable id, e.g. "readmemstats-hot-path".
    pub rule: &'static str,
    pub severity: Severity,
    pub title: String,
    /// The measured cost in one line.
    pub summary: String,
    /// The call site responsible for most of it.
    pub call_site: Option<CallSite>,
    /// The code to change, and the path from it down to the API: the call site's
    /// culprit (filled in by [`judge`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Culprit>,
    pub evidence: Vec<String>,
    pub cost: String,
    pub fix: String,
    pub fine_when: String,
}

/// A threshold a rule reads: a key of the TOML config file (`[thresholds]`) and of
/// `--set KEY=VALUE`, with its default. Each rule declares its own next to its code;
/// the few that several rules share are in [`shared`]. The defaults are justified in
/// docs/rules.md.
#[derive(Debug)]
pub struct Param {
    pub key: &'static str,
    pub default: f64,
    /// Takes a whole number (a count of calls).
    pub whole: bool,
    /// What it means, in one line (shown by `detector rules`).
    pub doc: &'static str,
}

/// Thresholds read by more than one rule.
pub mod shared {
    use super::Param;

    pub const SUSTAINED_FRACTION: Param = Param {
        key: "sustained_fraction",
        default: 0.5,
        whole: false,
        doc: "share of the window's 1 s ticks that must see calls for a rate to be \"sustained\"",
    };
    pub const PERIODIC_MIN_CALLS: Param = Param {
        key: "periodic_min_calls",
        default: 2.0,
        whole: true,
        doc: "calls in one window that make a timer-driven call periodic (one call is a one-off)",
    };
}

/// The thresholds in effect: every rule's parameters, at their defaults unless the
/// config file or `--set` changed them.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    values: BTreeMap<&'static str, f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            values: params().map(|p| (p.key, p.default)).collect(),
        }
    }
}

/// Every parameter of every rule, once each.
pub fn params() -> impl Iterator<Item = &'static Param> {
    let mut seen = std::collections::BTreeSet::new();
    RULES
        .iter()
        .flat_map(|r| r.params.iter().copied())
        .filter(move |p| seen.insert(p.key))
}

fn param(key: &str) -> Option<&'static Param> {
    params().find(|p| p.key == key)
}

impl Thresholds {
    /// The value of `p` in effect.
    pub fn get(&self, p: &Param) -> f64 {
        self.values.get(p.key).copied().unwrap_or(p.default)
    }

    /// The value of a whole-number parameter.
    pub fn count(&self, p: &Param) -> u64 {
        self.get(p).max(0.0) as u64
    }

    /// Every parameter and its value, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&'static Param, f64)> + '_ {
        params().map(|p| (p, self.get(p)))
    }

    /// Parses a TOML config file's `[thresholds]` table.
    pub fn from_toml(text: &str) -> Result<Thresholds, String> {
        let mut file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut t = Thresholds::default();
        if let Some(other) = file.keys().find(|k| *k != "thresholds") {
            return Err(format!(
                "unknown table or key `{other}` (the file has one table, [thresholds])"
            ));
        }
        let Some(table) = file.remove("thresholds") else {
            return Ok(t);
        };
        let toml::Value::Table(table) = table else {
            return Err("`thresholds` must be a table".into());
        };
        for (key, value) in table {
            t.assign(&key, value)?;
        }
        Ok(t)
    }

    /// Applies one `KEY=VALUE` override.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("`{assignment}`: expected KEY=VALUE"))?;
        let v: toml::Value = value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .or_else(|_| value.trim().parse::<f64>().map(toml::Value::Float))
            .map_err(|_| format!("`{assignment}`: {value} is not a number"))?;
        self.assign(&key.trim().replace('-', "_"), v)
    }

    fn assign(&mut self, key: &str, value: toml::Value) -> Result<(), String> {
        let p = param(key)
            .ok_or_else(|| format!("unknown threshold `{key}`; `detector rules` lists them"))?;
        let v = match value {
            toml::Value::Integer(i) => i as f64,
            toml::Value::Float(f) if !p.whole => f,
            toml::Value::Float(_) => return Err(format!("`{key}` takes a whole number")),
            _ => return Err(format!("`{key}` takes a number")),
        };
        if !v.is_finite() || v < 0.0 {
            return Err(format!("`{key}` must be a number of 0 or more"));
        }
        self.values.insert(p.key, v);
        Ok(())
    }
}

/// A rule in the rule book: everything about it is declared in its own file, and it
/// is registered in [`RULES`]. Adding one means its file, a line in `RULES`, its
/// fixture case (tests/fixtures/cases), its section in docs/rules.md and its golden
/// data (`cargo xtask golden --case CASE`, judged by the unit test in golden.rs).
pub struct Rule {
    pub id: &'static str,
    /// Case number in the runtime-misuse catalog (None: beyond the catalog).
    pub catalog_case: Option<u8>,
    pub title: &'static str,
    /// What the rule measures, in one line (shown by `detector rules`).
    pub observes: &'static str,
    /// The thresholds it reads.
    pub params: &'static [&'static Param],
    /// The probed APIs it judges (its counts are flagged as estimates in its evidence
    /// when the overhead budget duty-cycled their probes).
    pub needs: &'static [Api],
    /// Its `-case` in the cases fixture, whose misuse variant must raise it and whose
    /// fixed variant must not (the accuracy matrix).
    pub fixture_case: &'static str,
    pub judge: fn(&Collected, &Thresholds) -> Vec<Finding>,
}

/// The rule book, one line per rule.
pub const RULES: &[Rule] = &[
    readmemstats::RULE,
    forcedgc::GC_RULE,
    finalizer::CLEANUP_RULE,
    cpuprofile::RATE_RULE,
    blockprofile::BLOCK_RULE,
    blockprofile::MUTEX_RULE,
    stack::RULE,
    numgoroutine::RULE,
    gomaxprocs::RULE,
    lockosthread::RULE,
    trace::RULE,
    caller::RULE,
    finalizer::LEAK_RULE,
    cpuprofile::UNBOUNDED_RULE,
    forcedgc::FREEOSMEMORY_RULE,
    gctunables::RULE,
];

/// Catalog cases no rule can observe, with the reason (shown by `detector rules`).
pub const NOT_OBSERVABLE: &[(u8, &str, &str)] = &[];

/// Runs every rule; findings come most severe first.
pub fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let mut findings: Vec<Finding> = RULES
        .iter()
        .flat_map(|r| {
            let mut found = (r.judge)(c, t);
            for f in &mut found {
                f.evidence.extend(sampling_notes(c, r.needs));
                if f.culprit.is_none() {
                    f.culprit = f.call_site.as_ref().and_then(|s| s.culprit.clone());
                }
            }
            found
        })
        .collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// Evidence lines for counts that are estimates: the overhead budget kept their probes
/// live for only part of the window (see `probes::budget`).
fn sampling_notes(c: &Collected, apis: &[Api]) -> Vec<String> {
    apis.iter()
        .filter_map(|a| c.calls_of(*a))
        .filter_map(|s| {
            let share = s.sampled?;
            Some(format!(
                "{} counts are estimates: its probe was live {:.1}% of the window to keep the \
                 target within the overhead budget, and counts were scaled up by that share",
                s.api,
                share * 100.0
            ))
        })
        .collect()
}

/// " from F" naming the code to change for a site's calls: the culprit, or the
/// standard library's entry point with what drives it; the calling function when
/// the stack is unknown.
pub(crate) fn from_text(s: &CallSite) -> String {
    match &s.culprit {
        Some(c) => match &c.driven_by {
            Some(d) => format!(
                " via {} (standard library, entered from {d}: something drives it, e.g. a client polling an endpoint)",
                c.function
            ),
            None => format!(" from {}", c.function),
        },
        None => format!(" from {}", s.function),
    }
}

/// Share of ticks that saw at least one call.
pub(crate) fn active_fraction(per_tick: &[u64]) -> f64 {
    if per_tick.is_empty() {
        return 0.0;
    }
    per_tick.iter().filter(|n| **n > 0).count() as f64 / per_tick.len() as f64
}

/// The calls of one API that count (all but those excluded by what they are, whoever
/// made them), optionally only those whose argument matches.
pub(crate) struct CountedCalls<'a> {
    pub calls: u64,
    pub per_second: f64,
    /// Their call sites, most calls first (calls counted with the filter applied).
    pub sites: Vec<CallSite>,
    pub stats: &'a CallStats,
}

pub(crate) fn counted_calls<'a>(
    c: &'a Collected,
    api: Api,
    keep_arg: impl Fn(i64) -> bool,
) -> Option<CountedCalls<'a>> {
    let stats = c.calls_of(api)?;
    let mut sites: Vec<CallSite> = stats
        .sites
        .iter()
        .filter(|s| s.counted)
        .filter_map(|s| {
            let calls = if s.args.is_empty() {
                s.calls
            } else {
                s.args
                    .iter()
                    .filter(|a| keep_arg(a.value))
                    .map(|a| a.calls)
                    .sum()
            };
            (calls > 0).then(|| CallSite { calls, ..s.clone() })
        })
        .collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.calls));
    let calls: u64 = sites.iter().map(|s| s.calls).sum();
    (calls > 0).then(|| CountedCalls {
        calls,
        per_second: calls as f64 / c.duration_s,
        sites,
        stats,
    })
}

/// Evidence lines for the top call sites of an API (counted or not, and why not).
pub(crate) fn site_lines(stats: &CallStats, n: usize) -> Vec<String> {
    stats
        .sites
        .iter()
        .take(n)
        .map(|s| {
            let from = match &s.culprit {
                Some(c) if c.function != s.function => {
                    format!("{} via {} ({}:{})", c.function, s.function, s.file, s.line)
                }
                _ => format!("{} ({}:{})", s.function, s.file, s.line),
            };
            format!(
                "{} calls from {from}{}",
                s.calls,
                s.excluded
                    .as_deref()
                    .map(|r| format!(" [not counted: {r}]"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// The activity `api` when it ran in every tick of a window at least `min_window_s`
/// long and nothing stopped it (`stopped`): a setting left on, not a bounded window.
pub(crate) fn on_throughout(
    c: &Collected,
    api: Api,
    stopped: bool,
    min_window_s: f64,
) -> Option<&CallStats> {
    let a = c.calls_of(api)?;
    (c.duration_s >= min_window_s && a.calls > 0 && !stopped && active_fraction(&a.per_tick) >= 1.0)
        .then_some(a)
}

/// The evidence line for a timer-driven API: "N calls<what> in D s
/// (one every P s)".
pub(crate) fn periodic_line(u: &CountedCalls, c: &Collected, what: &str) -> String {
    format!(
        "{} calls{what} in {:.1} s (one every {:.2} s)",
        u.calls,
        c.duration_s,
        c.duration_s / u.calls as f64
    )
}

/// The evidence line for a rule's pauses: "N <what> pauses, T stopped, p99 P".
pub(crate) fn pause_line(count: u64, what: &str, total_ns: u64, p99_ns: u64) -> String {
    format!(
        "{count} {what} pauses, {} stopped, p99 {}",
        fmt_ns(total_ns),
        fmt_ns(p99_ns)
    )
}

/// The evidence line for the stopping part of a rule's pauses, when measured: the time
/// until every goroutine reached a safe point (a long one points at a goroutine that
/// does not reach a preemption point, not at the caller).
pub(crate) fn stopping_line<'a>(
    pauses: impl IntoIterator<Item = &'a PauseStats>,
) -> Option<String> {
    let (n, total, p99) = pauses
        .into_iter()
        .filter_map(|p| p.stopping.as_ref())
        .fold((0, 0, 0), |(n, t, p99), s| {
            (n + s.pauses, t + s.total_ns, p99.max(s.p99_ns))
        });
    (n > 0).then(|| {
        format!(
            "of which {} stopping (until every goroutine reached a safe point), p99 {}",
            fmt_ns(total),
            fmt_ns(p99)
        )
    })
}

/// Pauses of the collector forced by the program (inside runtime.GC), merged.
pub(crate) fn forced_gc_pauses(c: &Collected) -> (u64, u64, u64) {
    c.pauses
        .iter()
        .filter(|p| p.reason.forced)
        .fold((0, 0, 0), |(n, total, p99), p| {
            (n + p.pauses, total + p.total_ns, p99.max(p.p99_ns))
        })
}

/// The pauses with a 1.21+ reason code.
pub(crate) fn pauses_with(c: &Collected, code: u8) -> Option<&PauseStats> {
    c.pauses
        .iter()
        .find(|p| p.reason.code == Some(code) && !p.reason.forced)
}

/// Severity of a stop-the-world misuse from its measured cost: HIGH when the pauses
/// take 0.5% of wall time or their p99 reaches 1 ms, MEDIUM from 0.05% or 100 µs.
pub(crate) fn stw_severity(wall_share: f64, p99_ns: u64) -> Severity {
    if wall_share >= 0.005 || p99_ns >= 1_000_000 {
        Severity::High
    } else if wall_share >= 0.0005 || p99_ns >= 100_000 {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// Severity of a CPU-cost misuse from the estimated share of one core it burns.
pub(crate) fn cpu_severity(core_share: f64) -> Severity {
    if core_share >= 0.05 {
        Severity::High
    } else if core_share >= 0.01 {
        Severity::Medium
    } else {
        Severity::Low
    }
}

pub(crate) fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

pub(crate) fn fmt_pct(share: f64) -> String {
    let p = share * 100.0;
    if p >= 10.0 {
        format!("{p:.0}%")
    } else if p >= 0.1 {
        format!("{p:.2}%")
    } else {
        format!("{p:.3}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_from_toml_and_flags() {
        let caller = &caller::CALLER_PER_SECOND;
        let t = Thresholds::from_toml("[thresholds]\ncaller_per_second = 50\n").unwrap();
        assert_eq!(t.get(caller), 50.0);
        assert_eq!(t.count(&shared::PERIODIC_MIN_CALLS), 2);
        assert!(Thresholds::from_toml("[thresholds]\nno_such = 1\n").is_err());
        assert!(Thresholds::from_toml("[other]\ncaller_per_second = 1\n").is_err());
        assert!(Thresholds::from_toml("[thresholds]\ncaller_per_second = \"x\"\n").is_err());
        let mut t = Thresholds::default();
        t.set("trace-max-window-s=2").unwrap();
        t.set("periodic_min_calls=5").unwrap();
        assert_eq!(t.get(&trace::TRACE_MAX_WINDOW_S), 2.0);
        assert_eq!(t.count(&shared::PERIODIC_MIN_CALLS), 5);
        assert!(t.set("periodic_min_calls=1.5").is_err());
        assert!(t.set("caller_per_second=-1").is_err());
        assert!(t.set("nope=1").is_err());
        assert!(t.set("caller_per_second").is_err());
    }

    #[test]
    fn every_rule_has_a_unique_id_and_its_own_declared_thresholds() {
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        // A key declared twice must be the same parameter (one default, one meaning).
        for r in RULES {
            assert!(!r.needs.is_empty(), "{}: needs no probed API", r.id);
            assert!(!r.fixture_case.is_empty(), "{}: no fixture case", r.id);
            for p in r.params {
                let first = param(p.key).unwrap();
                assert!(
                    first.default == p.default && first.doc == p.doc && first.whole == p.whole,
                    "{}: threshold {} declared twice with different meanings",
                    r.id,
                    p.key
                );
            }
        }
        // Every catalog case is covered by a rule or listed as not observable.
        for case in 1..=14u8 {
            assert!(
                RULES.iter().any(|r| r.catalog_case == Some(case))
                    || NOT_OBSERVABLE.iter().any(|n| n.0 == case),
                "catalog case {case}"
            );
        }
    }
}
