//! Rules: each reads the collected facts and returns findings. One file per catalog
//! case; adding a rule touches only this folder (and its fixture).
mod readmemstats;

use serde::Serialize;

use crate::collect::{CallSite, Collected};

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

/// Thresholds of the rules (defaults are justified in docs/rules.md).
#[derive(Clone, Debug, Serialize)]
pub struct Thresholds {
    /// ReadMemStats calls per second from user code that make a finding.
    pub readmemstats_per_second: f64,
    /// Share of the window's ticks that must see calls for a rate to be "sustained".
    pub sustained_fraction: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            readmemstats_per_second: 5.0,
            sustained_fraction: 0.5,
        }
    }
}

/// A rule in the rule book.
pub struct Rule {
    pub id: &'static str,
    pub catalog_case: u8,
    pub observes: &'static str,
    judge: fn(&Collected, &Thresholds) -> Vec<Finding>,
}

pub const RULES: &[Rule] = &[readmemstats::RULE];

/// Runs every rule; findings come most severe first.
pub fn judge(c: &Collected, t: &Thresholds) -> Vec<Finding> {
    let mut findings: Vec<Finding> = RULES.iter().flat_map(|r| (r.judge)(c, t)).collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// Share of ticks (excluding a partial last one) that saw at least one call.
pub(crate) fn active_fraction(per_tick: &[u64]) -> f64 {
    if per_tick.is_empty() {
        return 0.0;
    }
    per_tick.iter().filter(|n| **n > 0).count() as f64 / per_tick.len() as f64
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
