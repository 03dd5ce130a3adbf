//! Kernel map snapshots, taken on a tick, turned into per-process facts: calls per
//! second by function, call site and argument; pauses by reason with percentiles;
//! the share of wall time the process was stopped.
pub mod paths;
pub mod stw;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use detector_common::{
    pause_bucket_bounds, CallKey, StwStats, STACK_FRAMES, STW_BUCKETS, STW_FORCED_GC_FLAG,
    STW_REASON_STRING_FLAG, UNSITED_CALLER,
};
use serde::{Deserialize, Serialize};

use detector_common::ArgMode;

use crate::{
    apis::Api,
    gobin::{owner::Owner, trace_multiplexer, GoVersion},
    probes::{attach::Snapshot, plan::Plan},
    target::{CallSiteName, Frame, Target},
};
pub use paths::{Culprit, Exclusion};
pub use stw::Reason;

/// The call site shown for calls counted while the kernel's call map was full.
pub const UNSITED_SITE: &str = "(call site not recorded: kernel call map full)";

/// What one calling path (probe, call site, stack) was judged to be.
#[derive(Default)]
struct Judged {
    /// The calling function and the line in its own code.
    site: CallSiteName,
    /// Owner of the first frame that is not the API's own (the immediate caller).
    site_owner: Option<Owner>,
    culprit: Option<Culprit>,
    excluded: Option<Exclusion>,
}

/// What one tick saw of one process: cumulative since its probes went in.
#[derive(Clone, Debug)]
pub struct Tick {
    pub at: Instant,
    /// Its kernel entries, call probe ids local to its binary's plan (estimates for
    /// duty-cycled probes).
    pub snap: Snapshot,
    /// CPU seconds the process has used, when readable.
    pub cpu_s: Option<f64>,
    /// The CPU profiling rate in effect (`runtime.prof.hz`), when readable.
    pub cpu_profile_hz: Option<i32>,
    /// Live seconds of each duty-cycled call probe (local ids).
    pub on_s: HashMap<u32, f64>,
}

/// The samples of the window that `ticks` (oldest first) span: each later tick's
/// counts since the first.
pub fn window(ticks: &[Tick]) -> Vec<Sample> {
    let Some(first) = ticks.first() else {
        return vec![];
    };
    ticks[1..]
        .iter()
        .map(|t| Sample {
            at_s: t.at.duration_since(first.at).as_secs_f64(),
            snap: t.snap.since(&first.snap),
            cpu_s: first.cpu_s.zip(t.cpu_s).map(|(a, b)| (b - a).max(0.0)),
            cpu_profile_hz: t.cpu_profile_hz,
            on_s: t
                .on_s
                .iter()
                .map(|(id, s)| (*id, s - first.on_s.get(id).copied().unwrap_or(*s)))
                .collect(),
        })
        .collect()
}

/// A snapshot and when it was taken (seconds since the window started).
pub struct Sample {
    pub at_s: f64,
    pub snap: Snapshot,
    /// CPU seconds the target used since the window started, when readable.
    pub cpu_s: Option<f64>,
    /// The CPU profiling rate in effect at this tick (`runtime.prof.hz`), when readable.
    pub cpu_profile_hz: Option<i32>,
    /// Seconds each call probe id was live since the window started, for probes the
    /// overhead budget duty-cycles (their counts in `snap` are estimates).
    pub on_s: HashMap<u32, f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallSite {
    /// The calling function, e.g. "main.metricsMiddleware.func1", and the line in
    /// its own code (past any inlined wrapper).
    pub function: String,
    pub file: String,
    pub line: u32,
    pub calls: u64,
    /// Whether these calls count for the rules: false when excluded by what they are
    /// (`excluded` says why), whoever made them.
    #[serde(alias = "user_code")]
    pub counted: bool,
    /// Argument values passed from this site (functions whose argument matters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCount>,
    /// The code to change, and the path from it down to the API (from the calling
    /// stack; absent when the stack was not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Culprit>,
    /// Why these calls do not count, when they do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArgCount {
    pub value: i64,
    pub calls: u64,
    /// For a code pointer (the finalizer passed to SetFinalizer): its function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// For a finalizer: whether it (or a function it calls) is a Close method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_resource: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallStats {
    /// The API, by id ("readmemstats").
    pub func: Api,
    /// As a Go programmer writes it ("runtime.ReadMemStats").
    pub api: String,
    pub symbol: String,
    pub calls: u64,
    pub per_second: f64,
    /// Calls in each tick of the window (for "sustained" checks and sparklines).
    pub per_tick: Vec<u64>,
    /// The same, counting only the calls that count (see [`CallSite::counted`]).
    #[serde(alias = "user_per_tick")]
    pub counted_per_tick: Vec<u64>,
    /// Call sites by culprit, most calls first.
    pub sites: Vec<CallSite>,
    /// Argument values seen (only for functions whose argument matters).
    pub args: Vec<ArgCount>,
    /// Share of the window the probe was live, when the overhead budget duty-cycled
    /// it: its counts are then estimates (counted ÷ this share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PauseStats {
    pub reason: Reason,
    pub pauses: u64,
    pub per_second: f64,
    /// Time stopped: from the request to stop the world until it runs again, as the
    /// runtime counts it (`/sched/pauses/total/*`).
    pub total_ns: u64,
    /// Percentiles, interpolated in the bucket of the measured distribution that holds
    /// them (at most 1/8 of an octave wide), capped at the maximum.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The stopping part of those pauses: until every goroutine reached a safe point
    /// (`/sched/pauses/stopping/*`). A long one points at a goroutine that does not
    /// reach a preemption point, not at the code that stopped the world.
    #[serde(default)]
    pub stopping: Option<Stopping>,
    /// Share of the window's wall time the process was stopped for this reason.
    pub wall_share: f64,
    /// Share of this process's total stopped time.
    pub stw_share: f64,
    /// The API that stops the world for this reason, when it was seen called.
    pub api: Option<String>,
    /// Its busiest call site (user code first).
    pub call_site: Option<CallSite>,
}

/// The stopping part of a reason's pauses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopping {
    /// Pauses whose stopping part was measured.
    pub pauses: u64,
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Collected {
    /// The window's bounds in Unix time (ms), to line the numbers up with other sources.
    pub window_start_unix_ms: u64,
    pub window_end_unix_ms: u64,
    pub duration_s: f64,
    pub calls: Vec<CallStats>,
    pub pauses: Vec<PauseStats>,
    pub stw_measured: bool,
    pub pauses_total: u64,
    pub stopped_ns: u64,
    /// Of `stopped_ns`, the time spent stopping (bringing goroutines to a safe point).
    #[serde(default)]
    pub stopping_ns: u64,
    /// Share of wall time the process was stopped, all reasons.
    pub stopped_share: f64,
    /// Kernel-side counters of lost updates (map full, unreadable stack, ...).
    pub kernel_errors: Vec<u64>,
    /// CPU seconds the process used during the window (all threads).
    pub cpu_seconds: Option<f64>,
    /// Rate of the CPU tick counter the Go runtime uses for profile rates (RDTSC).
    pub ticks_per_second: Option<f64>,
    /// Highest CPU profiling rate in effect at any tick (read from process memory:
    /// `runtime.prof.hz`), and in how many ticks profiling was on.
    pub cpu_profile_hz_max: Option<i32>,
    pub cpu_profile_on_ticks: usize,
    /// The target's Go release, read from its binary (fix texts depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_version: Option<GoVersion>,
    /// Who the execution tracer ran for at the window's end (Go 1.25+ programs with a
    /// flight recorder), read from the process's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_subscribers: Option<trace_multiplexer::Subscribers>,
}

impl Collected {
    /// The counted calls of `api`, if probed.
    pub fn calls_of(&self, api: Api) -> Option<&CallStats> {
        self.calls.iter().find(|c| c.func == api)
    }
}

/// The probed API behind a pause reason: of the APIs whose calls stop the world for
/// it (the table's [`Api::pauses`]) and were called, the last one called from user
/// code, else the last one called. Last in table order: the outer API of a pair that
/// calls the other (debug.FreeOSMemory runs runtime.GC, trace.Start runs StartTrace).
fn cause<'a>(reason: &Reason, calls: &'a [CallStats]) -> Option<&'a CallStats> {
    let called: Vec<&CallStats> = Api::causing(reason.code, reason.forced)
        .filter_map(|api| calls.iter().find(|c| c.func == api && c.calls > 0))
        .collect();
    let user = |c: &&&CallStats| c.sites.iter().any(|s| s.counted);
    called.iter().rev().find(user).or(called.last()).copied()
}

/// Whether finalizer `name` releases a resource: it is, or directly calls (two levels
/// deep, to see through small wrappers), a function named Close/close.
fn closes_resource(target: &Target, name: &str) -> bool {
    let is_close = |f: &str| {
        let last = f.rsplit('.').next().unwrap_or(f);
        let last = last.strip_suffix("-fm").unwrap_or(last);
        last.eq_ignore_ascii_case("close")
    };
    if is_close(name) {
        return true;
    }
    target.binary.called_functions(name).iter().any(|callee| {
        is_close(callee)
            || (target.binary.owner_of(callee).owner.is_program()
                && target
                    .binary
                    .called_functions(callee)
                    .iter()
                    .any(|f| is_close(f)))
    })
}

/// The Go runtime's `cputicks` on amd64 is RDTSC; profile rates are stored in its
/// ticks. Measured against the monotonic clock over 20 ms (invariant TSC assumed).
fn ticks_per_second() -> Option<f64> {
    static MEASURED: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *MEASURED.get_or_init(measure_ticks_per_second)
}

fn measure_ticks_per_second() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::time::Instant;
        // SAFETY: RDTSC has no preconditions on x86_64.
        let (t0, c0) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
        let secs = (t1 - t0).as_secs_f64();
        (c1 > c0 && secs > 0.0).then(|| (c1 - c0) as f64 / secs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The `q` quantile of a histogram of `count` pauses: linear within the bucket that
/// holds it, capped at the largest pause seen.
fn percentile(hist: &[u64; STW_BUCKETS], count: u64, max_ns: u64, q: f64) -> u64 {
    if count == 0 {
        return 0;
    }
    let want = ((count as f64) * q).ceil().max(1.0);
    let mut seen = 0.0;
    for (b, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if seen + n as f64 >= want {
            let (lo, hi) = pause_bucket_bounds(b);
            let hi = hi.min(max_ns.max(lo));
            let at = lo as f64 + (want - seen) / n as f64 * (hi - lo) as f64;
            return (at.round() as u64).min(max_ns);
        }
        seen += n as f64;
    }
    max_ns
}

/// The stopping part of `s`'s pauses, when measured.
fn stopping_of(s: &StwStats) -> Option<Stopping> {
    (s.stopping_count > 0).then(|| Stopping {
        pauses: s.stopping_count,
        total_ns: s.stopping_total_ns,
        p50_ns: percentile(&s.stopping_hist, s.stopping_count, s.stopping_max_ns, 0.50),
        p99_ns: percentile(&s.stopping_hist, s.stopping_count, s.stopping_max_ns, 0.99),
        max_ns: s.stopping_max_ns,
    })
}

/// The reason of a kernel pause key (reads Go 1.19 reason strings from the binary).
pub fn reason_of(target: &Target, raw: u64) -> Reason {
    let r = if raw & STW_REASON_STRING_FLAG == 0 {
        stw::from_code(raw as u8)
    } else {
        let ptr = raw & !(STW_REASON_STRING_FLAG | STW_FORCED_GC_FLAG);
        if ptr == 0 {
            stw::from_go119(None)
        } else {
            let bytes = target.binary.read_bytes_at(target.to_file_vaddr(ptr), 32);
            stw::from_go119(Some(bytes.unwrap_or(b"?")))
        }
    };
    if raw & STW_FORCED_GC_FLAG != 0 {
        r.forced()
    } else {
        r
    }
}

/// Turns the window's samples into facts about `target`. `samples` are cumulative
/// snapshots in time order, taken since `started`; the last one is the window's total.
pub fn summarize(
    target: &Target,
    plan: &Plan,
    samples: &[Sample],
    started: SystemTime,
) -> Collected {
    let pid = target.pid;
    let duration_s = samples.last().map(|s| s.at_s).unwrap_or(0.0).max(1e-9);
    let unix_ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let empty = Snapshot::default();
    let last = samples.last().map(|s| &s.snap).unwrap_or(&empty);

    // Each distinct calling path (probe, call site, stack) is judged once: its site,
    // culprit and exclusion (see `paths`).
    let probed: Vec<(&str, Api)> = plan.call_probes.iter().map(|p| (p.symbol, p.api)).collect();
    let mut judged: HashMap<(u32, u64, u64), Judged> = HashMap::new();
    for s in samples {
        for k in s.snap.calls.keys().filter(|k| k.tgid == pid) {
            judged
                .entry((k.probe, k.caller, k.stack))
                .or_insert_with(|| {
                    let Some(probe) = plan.call_probes.get(k.probe as usize) else {
                        return Judged::default();
                    };
                    if k.caller == UNSITED_CALLER {
                        // Counted while the kernel's call map was full: in the totals,
                        // with no site (and so no culprit to blame).
                        return Judged {
                            site: (UNSITED_SITE.to_string(), String::new(), 0),
                            ..Judged::default()
                        };
                    }
                    let stack = s.snap.stack_of(k);
                    let site_frames = target.frames(k.caller);
                    let outer: Vec<_> = stack.iter().map(|&pc| target.frames(pc)).collect();
                    let frames: Vec<&Frame> = site_frames
                        .iter()
                        .chain(outer.iter().flat_map(|f| f.iter()))
                        .collect();
                    let truncated = stack.len() == STACK_FRAMES;
                    let (culprit, excluded) =
                        paths::judge_path(probe.api, probe.symbol, &frames, truncated, &probed);
                    let site = site_frames.last();
                    Judged {
                        site: site.map_or_else(
                            || (format!("{:#x}", k.caller), String::new(), 0),
                            |f| (f.function.clone(), f.file.clone(), f.line),
                        ),
                        site_owner: site_frames
                            .iter()
                            .find(|f| !paths::is_api_frame(probe.api, probe.symbol, f))
                            .map(|f| f.owner),
                        culprit,
                        excluded,
                    }
                });
        }
    }
    // A finalizer's function is known per argument: the standard library's own, set
    // (or cleared) by its own code, is excluded by what it is.
    let finalizer_fn = |value: u64| -> Option<String> {
        target
            .binary
            .func_at(target.to_file_vaddr(value))
            .map(|f| f.name)
    };
    let mut std_finalizer: HashMap<u64, bool> = HashMap::new();
    let mut exclusion_of = |k: &CallKey| -> Option<Exclusion> {
        let j = judged.get(&(k.probe, k.caller, k.stack))?;
        if j.excluded.is_some() {
            return j.excluded;
        }
        let probe = plan.call_probes.get(k.probe as usize)?;
        if probe.mode == ArgMode::FinalizerFn && j.site_owner == Some(Owner::Std) {
            // 0 is `SetFinalizer(x, nil)`: Close clearing the finalizer it set.
            let std_fn = *std_finalizer.entry(k.arg).or_insert_with(|| {
                k.arg == 0
                    || finalizer_fn(k.arg).is_some_and(|f| {
                        matches!(
                            target.binary.owner_of(&f).owner,
                            Owner::Std | Owner::Runtime
                        )
                    })
            });
            if std_fn {
                return Some(Exclusion::StdFinalizer);
            }
        }
        None
    };
    let mut excluded: HashMap<CallKey, Option<Exclusion>> = HashMap::new();
    for s in samples {
        for k in s.snap.calls.keys().filter(|k| k.tgid == pid) {
            if !excluded.contains_key(k) {
                excluded.insert(*k, exclusion_of(k));
            }
        }
    }
    let counts = |k: &CallKey| excluded.get(k).is_some_and(|e| e.is_none());
    // (all calls, counted calls) per probe id, in each sample: one pass over each
    // snapshot (watch judges every process on every tick).
    let totals: Vec<HashMap<u32, (u64, u64)>> = samples
        .iter()
        .map(|s| {
            let mut t: HashMap<u32, (u64, u64)> = HashMap::new();
            for (k, v) in s.snap.calls.iter().filter(|(k, _)| k.tgid == pid) {
                let e = t.entry(k.probe).or_default();
                e.0 += v;
                if counts(k) {
                    e.1 += v;
                }
            }
            t
        })
        .collect();

    let mut calls = Vec::new();
    for (id, probe) in plan.call_probes.iter().enumerate() {
        let id = id as u32;
        let mut per_tick = Vec::with_capacity(samples.len());
        let mut counted_per_tick = Vec::with_capacity(samples.len());
        let mut prev = (0, 0);
        for t in &totals {
            let t = t.get(&id).copied().unwrap_or_default();
            per_tick.push(t.0.saturating_sub(prev.0));
            counted_per_tick.push(t.1.saturating_sub(prev.1));
            prev = t;
        }
        let total = prev.0;
        let code_pointer = probe.mode == ArgMode::FinalizerFn;
        let has_arg = probe.mode != ArgMode::None;
        // Sites by (call site, culprit, exclusion), each with its calls by argument.
        type SiteKey<'j> = (
            &'j CallSiteName,
            Option<(&'j str, &'j str, u32)>,
            Option<Exclusion>,
        );
        let mut sites: BTreeMap<SiteKey, (BTreeMap<i64, u64>, &Judged)> = BTreeMap::new();
        let mut args: BTreeMap<i64, u64> = BTreeMap::new();
        for (k, v) in last
            .calls
            .iter()
            .filter(|(k, _)| k.tgid == pid && k.probe == id)
        {
            let Some(j) = judged.get(&(k.probe, k.caller, k.stack)) else {
                continue;
            };
            let ex = excluded.get(k).copied().flatten();
            let culprit = j
                .culprit
                .as_ref()
                .map(|c| (c.function.as_str(), c.file.as_str(), c.line));
            let (per_arg, _) = sites
                .entry((&j.site, culprit, ex))
                .or_insert_with(|| (BTreeMap::new(), j));
            if has_arg {
                *per_arg.entry(k.arg as i64).or_default() += v;
                *args.entry(k.arg as i64).or_default() += v;
            } else {
                *per_arg.entry(0).or_default() += v;
            }
        }
        let arg_counts = |m: &BTreeMap<i64, u64>| -> Vec<ArgCount> {
            if !has_arg {
                return vec![];
            }
            m.iter()
                .map(|(&value, &calls)| {
                    let function = code_pointer
                        .then(|| target.binary.func_at(target.to_file_vaddr(value as u64)))
                        .flatten()
                        .map(|f| f.name);
                    ArgCount {
                        value,
                        calls,
                        closes_resource: function.as_deref().map(|f| closes_resource(target, f)),
                        function,
                    }
                })
                .collect()
        };
        let mut sites: Vec<CallSite> = sites
            .into_iter()
            .map(|((site, _, excluded), (per_arg, j))| CallSite {
                counted: excluded.is_none(),
                function: site.0.clone(),
                file: site.1.clone(),
                line: site.2,
                calls: per_arg.values().sum(),
                args: arg_counts(&per_arg),
                culprit: j.culprit.clone(),
                excluded: excluded.map(Exclusion::reason),
            })
            .collect();
        sites.sort_by_key(|s| std::cmp::Reverse(s.calls));
        let sampled = samples
            .last()
            .and_then(|s| s.on_s.get(&id))
            .map(|on| (on / duration_s).clamp(0.0, 1.0))
            .filter(|share| *share < 0.999);
        calls.push(CallStats {
            sampled,
            func: probe.api,
            api: probe.api.name().to_string(),
            symbol: probe.symbol.to_string(),
            calls: total,
            per_second: total as f64 / duration_s,
            per_tick,
            counted_per_tick,
            sites,
            args: arg_counts(&args),
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
    let stopping_ns: u64 = by_reason.values().map(|s| s.stopping_total_ns).sum();
    let wall_ns = duration_s * 1e9;
    let mut pauses: Vec<PauseStats> = by_reason
        .into_iter()
        .map(|(reason, s)| PauseStats {
            reason,
            pauses: s.count,
            per_second: s.count as f64 / duration_s,
            total_ns: s.total_ns,
            p50_ns: percentile(&s.hist, s.count, s.max_ns, 0.50),
            p99_ns: percentile(&s.hist, s.count, s.max_ns, 0.99),
            max_ns: s.max_ns,
            stopping: stopping_of(&s),
            wall_share: s.total_ns as f64 / wall_ns,
            stw_share: if stopped_ns == 0 {
                0.0
            } else {
                s.total_ns as f64 / stopped_ns as f64
            },
            api: None,
            call_site: None,
        })
        .collect();
    for p in &mut pauses {
        if let Some(stats) = cause(&p.reason, &calls) {
            p.api = Some(stats.api.clone());
            p.call_site = stats
                .sites
                .iter()
                .find(|s| s.counted)
                .or(stats.sites.first())
                .cloned();
        } else if p.reason.is_gc() {
            p.api = Some("(the collector, paced by GOGC/GOMEMLIMIT)".into());
        }
    }
    pauses.sort_by_key(|p| std::cmp::Reverse(p.total_ns));

    Collected {
        window_start_unix_ms: unix_ms(started),
        window_end_unix_ms: unix_ms(started + Duration::from_secs_f64(duration_s)),
        duration_s,
        calls,
        pauses,
        stw_measured: plan.stw,
        pauses_total,
        stopped_ns,
        stopping_ns,
        stopped_share: stopped_ns as f64 / wall_ns,
        kernel_errors: last.errors.to_vec(),
        cpu_seconds: samples.last().and_then(|s| s.cpu_s),
        ticks_per_second: ticks_per_second(),
        cpu_profile_hz_max: samples.iter().filter_map(|s| s.cpu_profile_hz).max(),
        cpu_profile_on_ticks: samples
            .iter()
            .filter(|s| s.cpu_profile_hz.is_some_and(|hz| hz > 0))
            .count(),
        go_version: target.binary.info().go_version,
        trace_subscribers: target.trace_subscribers(),
    }
}

#[cfg(test)]
mod tests {
    use detector_common::pause_bucket;

    use super::*;

    #[test]
    fn percentiles_come_from_the_measured_distribution() {
        let mut s = StwStats::ZERO;
        // 99 pauses spread over 10-20 µs, one of 1 ms.
        for i in 0..99u64 {
            s.hist[pause_bucket(10_000 + i * 100)] += 1;
        }
        s.hist[pause_bucket(1_000_000)] += 1;
        s.count = 100;
        s.max_ns = 1_000_000;
        let p = |q| percentile(&s.hist, s.count, s.max_ns, q);
        // The true p50 is 14.9 µs, p99 19.8 µs: within a bucket (≤ 12.5 %) of each.
        assert!((p(0.5) as f64 / 14_900.0 - 1.0).abs() < 0.125, "{}", p(0.5));
        assert!(
            (p(0.99) as f64 / 19_800.0 - 1.0).abs() < 0.125,
            "{}",
            p(0.99)
        );
        assert_eq!(p(1.0), 1_000_000);
        assert_eq!(percentile(&s.hist, 0, 0, 0.5), 0);
    }
}
