//! Kernel map snapshots, taken on a tick, turned into per-process facts: calls per
//! second by function, call site and argument; pauses by reason with percentiles;
//! the share of wall time the process was stopped.
pub mod stw;

use std::collections::BTreeMap;

use detector_common::{StwStats, STW_BUCKETS, STW_REASON_STRING_FLAG};
use serde::Serialize;

use crate::{
    probes::{attach::Snapshot, plan::Plan},
    target::Target,
};
pub use stw::Reason;

/// A snapshot and when it was taken (seconds since the probes were attached).
pub struct Sample {
    pub at_s: f64,
    pub snap: Snapshot,
}

#[derive(Clone, Debug, Serialize)]
pub struct CallSite {
    /// The calling function, e.g. "main.metricsMiddleware.func1".
    pub function: String,
    pub file: String,
    pub line: u32,
    pub calls: u64,
    /// False for the runtime and standard-library code a user cannot change.
    pub user_code: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArgCount {
    pub value: i64,
    pub calls: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CallStats {
    /// Catalog id, e.g. "readmemstats".
    pub func: String,
    pub api: String,
    pub symbol: String,
    pub calls: u64,
    pub per_second: f64,
    /// Calls in each tick of the window (for "sustained" checks and sparklines).
    pub per_tick: Vec<u64>,
    /// Call sites, most calls first.
    pub sites: Vec<CallSite>,
    /// Argument values seen (only for functions whose argument matters).
    pub args: Vec<ArgCount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PauseStats {
    pub reason: Reason,
    pub pauses: u64,
    pub per_second: f64,
    pub total_ns: u64,
    /// Percentiles are the upper bound of the log2 bucket holding them, capped at max.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Share of the window's wall time the process was stopped for this reason.
    pub wall_share: f64,
    /// Share of this process's total stopped time.
    pub stw_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Collected {
    pub duration_s: f64,
    pub calls: Vec<CallStats>,
    pub pauses: Vec<PauseStats>,
    pub stw_measured: bool,
    pub pauses_total: u64,
    pub stopped_ns: u64,
    /// Share of wall time the process was stopped, all reasons.
    pub stopped_share: f64,
    /// Kernel-side counters of lost updates (map full, unreadable stack, ...).
    pub kernel_errors: Vec<u64>,
}

/// Code a user cannot change: calls from here never make findings.
pub fn is_user_code(function: &str) -> bool {
    const NOT_USER: &[&str] = &[
        "runtime.",
        "runtime/",
        "net/http/pprof.",
        "expvar.",
        "internal/",
        "sync.",
        "os.",
    ];
    !NOT_USER.iter().any(|p| function.starts_with(p))
}

fn percentile(s: &StwStats, q: f64) -> u64 {
    if s.count == 0 {
        return 0;
    }
    let want = ((s.count as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, n) in s.hist.iter().enumerate().take(STW_BUCKETS) {
        seen += n;
        if seen >= want {
            let upper = 1u64.checked_shl(b as u32 + 1).unwrap_or(u64::MAX);
            return upper.min(s.max_ns);
        }
    }
    s.max_ns
}

fn reason_of(target: &Target, raw: u64) -> Reason {
    if raw & STW_REASON_STRING_FLAG == 0 {
        return stw::from_code(raw as u8);
    }
    let ptr = raw & !STW_REASON_STRING_FLAG;
    if ptr == 0 {
        return stw::from_go119(None);
    }
    let bytes = target.binary.read_bytes_at(target.to_file_vaddr(ptr), 32);
    stw::from_go119(Some(bytes.unwrap_or(b"?")))
}

/// Turns the window's samples into facts about `target`. `samples` are cumulative
/// snapshots in time order; the last one is the window's total.
pub fn summarize(target: &Target, plan: &Plan, samples: &[Sample]) -> Collected {
    let pid = target.pid;
    let duration_s = samples.last().map(|s| s.at_s).unwrap_or(0.0).max(1e-9);
    let empty = Snapshot::default();
    let last = samples.last().map(|s| &s.snap).unwrap_or(&empty);

    let mut calls = Vec::new();
    for (id, probe) in plan.call_probes.iter().enumerate() {
        let id = id as u32;
        let total_at = |snap: &Snapshot| -> u64 {
            snap.calls
                .iter()
                .filter(|(k, _)| k.tgid == pid && k.probe == id)
                .map(|(_, v)| v)
                .sum()
        };
        let mut per_tick = Vec::with_capacity(samples.len());
        let mut prev = 0;
        for s in samples {
            let t = total_at(&s.snap);
            per_tick.push(t.saturating_sub(prev));
            prev = t;
        }
        let total = total_at(last);
        let mut sites: BTreeMap<(String, String, u32), u64> = BTreeMap::new();
        let mut args: BTreeMap<i64, u64> = BTreeMap::new();
        for (k, v) in last
            .calls
            .iter()
            .filter(|(k, _)| k.tgid == pid && k.probe == id)
        {
            // The return address is just past the CALL: look up the byte before it.
            let pc = target.to_file_vaddr(k.caller).wrapping_sub(1);
            let function = target
                .binary
                .func_at(pc)
                .map(|f| f.name)
                .unwrap_or_else(|| format!("{:#x}", k.caller));
            let (file, line) = target.binary.file_line(pc).unwrap_or_default();
            *sites.entry((function, file, line)).or_default() += v;
            if !probe.arg.is_empty() {
                *args.entry(k.arg as i64).or_default() += v;
            }
        }
        let mut sites: Vec<CallSite> = sites
            .into_iter()
            .map(|((function, file, line), calls)| CallSite {
                user_code: is_user_code(&function),
                function,
                file,
                line,
                calls,
            })
            .collect();
        sites.sort_by_key(|s| std::cmp::Reverse(s.calls));
        calls.push(CallStats {
            func: probe.func.to_string(),
            api: probe.api.to_string(),
            symbol: probe.symbol.to_string(),
            calls: total,
            per_second: total as f64 / duration_s,
            per_tick,
            sites,
            args: args
                .into_iter()
                .map(|(value, calls)| ArgCount { value, calls })
                .collect(),
        });
    }

    // Pauses: merge keys that map to the same reason (1.19 strings may repeat).
    let mut by_reason: BTreeMap<Reason, StwStats> = BTreeMap::new();
    for (k, s) in last.stw.iter().filter(|(k, _)| k.tgid == pid) {
        by_reason
            .entry(reason_of(target, k.reason))
            .or_insert(StwStats::ZERO)
            .merge(s);
    }
    let stopped_ns: u64 = by_reason.values().map(|s| s.total_ns).sum();
    let pauses_total: u64 = by_reason.values().map(|s| s.count).sum();
    let wall_ns = duration_s * 1e9;
    let mut pauses: Vec<PauseStats> = by_reason
        .into_iter()
        .map(|(reason, s)| PauseStats {
            reason,
            pauses: s.count,
            per_second: s.count as f64 / duration_s,
            total_ns: s.total_ns,
            p50_ns: percentile(&s, 0.50),
            p99_ns: percentile(&s, 0.99),
            max_ns: s.max_ns,
            wall_share: s.total_ns as f64 / wall_ns,
            stw_share: if stopped_ns == 0 {
                0.0
            } else {
                s.total_ns as f64 / stopped_ns as f64
            },
        })
        .collect();
    pauses.sort_by_key(|p| std::cmp::Reverse(p.total_ns));

    Collected {
        duration_s,
        calls,
        pauses,
        stw_measured: plan.stw,
        pauses_total,
        stopped_ns,
        stopped_share: stopped_ns as f64 / wall_ns,
        kernel_errors: last.errors.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_log2_buckets() {
        let mut s = StwStats::ZERO;
        // 99 pauses of ~1.5 µs (bucket 10: [1024, 2048) ns), one of 1 ms.
        s.hist[10] = 99;
        s.hist[19] = 1;
        s.count = 100;
        s.max_ns = 1_000_000;
        assert_eq!(percentile(&s, 0.5), 2048);
        assert_eq!(percentile(&s, 0.99), 2048);
        assert_eq!(percentile(&s, 1.0), 1_000_000);
    }

    #[test]
    fn standard_library_is_not_user_code() {
        assert!(is_user_code("main.metricsMiddleware.func1"));
        assert!(is_user_code("github.com/acme/svc/metrics.Export"));
        assert!(!is_user_code("net/http/pprof.Index"));
        assert!(!is_user_code("runtime/debug.FreeOSMemory"));
    }
}
