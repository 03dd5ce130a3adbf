//! Rules: each reads the collected facts and returns findings. One file per catalog
//! case (or family of cases); adding a rule touches only this folder, its fixture and
//! docs/rules.md. Thresholds come from [`Thresholds`] (TOML config and flags).
mod blockprofile;
mod caller;
mod cpuprofile;
mod finalizer;
mod forcedgc;
mod gomaxprocs;
mod lockosthread;
mod numgoroutine;
mod readmemstats;
mod stack;
mod trace;

use serde::{Deserialize, Serialize};

use crate::collect::{CallSite, CallStats, Collected, PauseStats};

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
    /// The user call site responsible for most of it.
    pub call_site: Option<CallSite>,
    pub evidence: Vec<String>,
    pub cost: String,
    pub fix: String,
    pub fine_when: String,
}

/// Thresholds of the rules. Every field is a key of the TOML config file and of
/// `--set KEY=VALUE`; the defaults are justified in docs/rules.md.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// ReadMemStats calls per second from user code that make a finding.
    pub readmemstats_per_second: f64,
    /// Share of the window's 1 s ticks that must see calls for a rate to be "sustained".
    pub sustained_fraction: f64,
    /// Calls in one window that make a timer-driven call periodic (runtime.GC,
    /// debug.FreeOSMemory, runtime.Stack(buf, true)); one call is a one-off.
    pub periodic_min_calls: u64,
    /// GOMAXPROCS(n > 0) calls from user code in one window that make a finding.
    pub gomaxprocs_min_calls: u64,
    /// runtime.Caller/Callers/FuncForPC calls per second from user code.
    pub caller_per_second: f64,
    /// SetFinalizer calls per second from user code.
    pub finalizer_per_second: f64,
    /// Highest CPU profiling rate (Hz) that is not a finding: the runtime's default.
    pub cpu_profile_max_hz: f64,
    /// A CPU profile running continuously for longer than this (seconds) is unbounded.
    pub cpu_profile_max_window_s: f64,
    /// Block profile sampling rates below this (ns of blocking per sample) record
    /// (nearly) every event.
    pub block_profile_min_rate_ns: f64,
    /// Mutex profile fractions below this record (nearly) every contention.
    pub mutex_profile_min_fraction: f64,
    /// The execution tracer running continuously for longer than this (seconds) is
    /// "always on" rather than an on-demand window.
    pub trace_max_window_s: f64,
    /// Executions per second of an inlined runtime.NumGoroutine in user code.
    pub numgoroutine_per_second: f64,
    /// Hand-offs per second of goroutines locked to their OS thread.
    pub lockedm_handoffs_per_second: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            readmemstats_per_second: 5.0,
            sustained_fraction: 0.5,
            periodic_min_calls: 2,
            gomaxprocs_min_calls: 2,
            caller_per_second: 1000.0,
            finalizer_per_second: 10.0,
            cpu_profile_max_hz: 100.0,
            cpu_profile_max_window_s: 30.0,
            block_profile_min_rate_ns: 1000.0,
            mutex_profile_min_fraction: 5.0,
            trace_max_window_s: 10.0,
            numgoroutine_per_second: 1000.0,
            lockedm_handoffs_per_second: 100.0,
        }
    }
}

impl Thresholds {
    /// Parses a TOML config file's `[thresholds]` table (or a bare table of keys).
    pub fn from_toml(text: &str) -> Result<Thresholds, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            thresholds: Option<Thresholds>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(file.thresholds.unwrap_or_default())
    }

    /// Applies one `KEY=VALUE` override.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("`{assignment}`: expected KEY=VALUE"))?;
        let mut table = toml::Table::new();
        let v: toml::Value = value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .or_else(|_| value.trim().parse::<f64>().map(toml::Value::Float))
            .map_err(|_| format!("`{assignment}`: {value} is not a number"))?;
        // Merge over the current values so one key changes.
        let current = toml::Value::try_from(&*self).map_err(|e| e.to_string())?;
        if let toml::Value::Table(t) = current {
            table = t;
        }
        let key = key.trim().replace('-', "_");
        let slot = table
            .get_mut(&key)
            .ok_or_else(|| format!("unknown threshold `{key}`; `detector rules` lists them"))?;
        *slot = match (&*slot, v) {
            (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
            (toml::Value::Integer(_), toml::Value::Float(_)) => {
                return Err(format!("`{key}` takes a whole number"))
            }
            (_, v) => v,
        };
        *self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        Ok(())
    }
}

/// A rule in the rule book.
pub struct Rule {
    pub id: &'static str,
    /// Case number in the runtime-misuse catalog.
    pub catalog_case: u8,
    pub title: &'static str,
    /// What the rule measures, in one line (shown by `detector rules`).
    pub observes: &'static str,
    /// The thresholds it reads.
    pub thresholds: &'static [&'static str],
    /// The counted calls it judges (catalog ids), to flag estimates in its evidence.
    pub counts: &'static [&'static str],
    judge: fn(&Collected, &Thresholds) -> Vec<Finding>,
}

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
                f.evidence.extend(sampling_notes(c, r.counts));
            }
            found
        })
        .collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// Evidence lines for counts that are estimates: the overhead budget kept their probes
/// live for only part of the window (see `probes::budget`).
fn sampling_notes(c: &Collected, funcs: &[&str]) -> Vec<String> {
    funcs
        .iter()
        .filter_map(|f| c.calls_of(f))
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

/// Share of ticks that saw at least one call.
pub(crate) fn active_fraction(per_tick: &[u64]) -> f64 {
    if per_tick.is_empty() {
        return 0.0;
    }
    per_tick.iter().filter(|n| **n > 0).count() as f64 / per_tick.len() as f64
}

/// Calls of one API from user code, optionally only those whose argument matches.
pub(crate) struct UserCalls<'a> {
    pub calls: u64,
    pub per_second: f64,
    /// User call sites, most calls first (calls counted with the filter applied).
    pub sites: Vec<CallSite>,
    pub stats: &'a CallStats,
}

pub(crate) fn user_calls<'a>(
    c: &'a Collected,
    func: &str,
    keep_arg: impl Fn(i64) -> bool,
) -> Option<UserCalls<'a>> {
    let stats = c.calls_of(func)?;
    let mut sites: Vec<CallSite> = stats
        .sites
        .iter()
        .filter(|s| s.user_code)
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
    (calls > 0).then(|| UserCalls {
        calls,
        per_second: calls as f64 / c.duration_s,
        sites,
        stats,
    })
}

/// Evidence lines for the top call sites of an API (user code and ignored library).
pub(crate) fn site_lines(stats: &CallStats, n: usize) -> Vec<String> {
    stats
        .sites
        .iter()
        .take(n)
        .map(|s| {
            format!(
                "{} calls from {} ({}:{}){}",
                s.calls,
                s.function,
                s.file,
                s.line,
                if s.user_code {
                    ""
                } else {
                    " [runtime or standard library: ignored]"
                }
            )
        })
        .collect()
}

/// The activity `func` when it ran in every tick of a window at least `min_window_s`
/// long and nothing stopped it (`stopped`): a setting left on, not a bounded window.
pub(crate) fn on_throughout<'a>(
    c: &'a Collected,
    func: &str,
    stopped: bool,
    min_window_s: f64,
) -> Option<&'a CallStats> {
    let a = c.calls_of(func)?;
    (c.duration_s >= min_window_s && a.calls > 0 && !stopped && active_fraction(&a.per_tick) >= 1.0)
        .then_some(a)
}

/// The evidence line for a timer-driven API: "N calls<what> from user code in D s
/// (one every P s)".
pub(crate) fn periodic_line(u: &UserCalls, c: &Collected, what: &str) -> String {
    format!(
        "{} calls{what} from user code in {:.1} s (one every {:.2} s)",
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
        let t = Thresholds::from_toml("[thresholds]\ncaller_per_second = 50\n").unwrap();
        assert_eq!(t.caller_per_second, 50.0);
        assert_eq!(t.periodic_min_calls, 2);
        assert!(Thresholds::from_toml("[thresholds]\nno_such = 1\n").is_err());
        let mut t = Thresholds::default();
        t.set("trace-max-window-s=2").unwrap();
        t.set("periodic_min_calls=5").unwrap();
        assert_eq!(t.trace_max_window_s, 2.0);
        assert_eq!(t.periodic_min_calls, 5);
        assert!(t.set("periodic_min_calls=1.5").is_err());
        assert!(t.set("nope=1").is_err());
        assert!(t.set("caller_per_second").is_err());
    }

    #[test]
    fn every_rule_has_a_unique_id_and_known_thresholds() {
        let keys = match toml::Value::try_from(Thresholds::default()).unwrap() {
            toml::Value::Table(t) => t,
            _ => unreachable!(),
        };
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        for r in RULES {
            for k in r.thresholds {
                assert!(keys.contains_key(*k), "{}: unknown threshold {k}", r.id);
            }
        }
        // Every catalog case is covered by a rule or listed as not observable.
        for case in 1..=14u8 {
            assert!(
                RULES.iter().any(|r| r.catalog_case == case)
                    || NOT_OBSERVABLE.iter().any(|n| n.0 == case),
                "catalog case {case}"
            );
        }
    }
}
