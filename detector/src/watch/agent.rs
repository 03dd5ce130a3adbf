//! The daemon's loop: discover processes, analyse and attach each distinct binary
//! once (probes for all processes running it share one set of uprobes and the maps),
//! read the maps every tick, judge each process over a rolling window, and publish
//! what the HTTP endpoints serve.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use detector_common::StwStats;

use super::discover::{self, BinaryKey, Filter, Proc};
use crate::{
    collect::{self, Sample},
    gobin::GoBinary,
    probes::{
        attach::{self, AttachedPlan, Probes, Snapshot},
        budget::{Budget, DutyCycle, Extrapolator},
        plan::{self, Plan},
    },
    report::{Diagnosis, ProbeInfo},
    rules::{self, Severity, Thresholds},
    target::{self, Target},
};

pub struct Config {
    pub filter: Filter,
    pub thresholds: Thresholds,
    /// How often /proc is scanned and the maps are read.
    pub interval: Duration,
    /// Rules judge each process over this much of its recent past.
    pub window: Duration,
    /// At most this many processes are watched (and exported).
    pub max_processes: usize,
    /// CPU the probes may cost each target process (see `probes::budget`).
    pub budget: Budget,
}

/// One watched process, as exported.
#[derive(Clone, Debug)]
pub struct ProcExport {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub container_id: String,
    /// Cumulative calls by catalog function id, since the binary was attached.
    pub calls: BTreeMap<String, u64>,
    /// Cumulative pauses by reason slug.
    pub pauses: BTreeMap<String, StwStats>,
    pub findings: Vec<(String, Severity)>,
    /// Shared with the previous ticks' exports until the process is judged again.
    pub diagnosis: Arc<Diagnosis>,
}

/// Each process is judged (summarised over its window and run through the rules)
/// every this many ticks, staggered by pid; counters are exported every tick. The
/// rules look at a 60 s window, so findings are at most this many ticks late.
const JUDGE_EVERY_TICKS: u64 = 5;

/// The agent's own cost and health.
#[derive(Clone, Debug, Default)]
pub struct SelfStats {
    pub probe_hits: u64,
    pub probes_attached: u64,
    /// Call probes the overhead budget keeps live for only part of the time.
    pub probes_duty_cycled: u64,
    /// Whether the probe guardian runs (1) or not (0).
    pub probe_guardian_up: u64,
    /// How long the kernel takes to remove a duty-cycled probe, smoothed (seconds).
    pub probe_detach_tail_seconds: f64,
    pub attach_errors: u64,
    pub binaries_attached: u64,
    pub binaries_analysed: u64,
    pub analysis_seconds: f64,
    pub processes_watched: u64,
    /// Go processes left out by --max-processes.
    pub processes_over_limit: u64,
    pub kernel_errors: Vec<u64>,
    pub ticks: u64,
    pub last_tick_seconds: f64,
}

/// What the HTTP endpoints serve: replaced as a whole at every tick.
#[derive(Clone, Debug, Default)]
pub struct Exported {
    pub processes: Vec<ProcExport>,
    pub stats: SelfStats,
    pub last_tick: Option<Instant>,
}

enum Binary {
    Watched(Box<WatchedBinary>),
    /// Not a Go binary, unsupported, or failed to attach: remembered so it is not
    /// analysed again while processes run it.
    Ignored,
}

struct WatchedBinary {
    binary: Arc<GoBinary>,
    plan: Plan,
    id_base: u32,
    attached: AttachedPlan,
    duty: DutyCycle,
}

struct Watched {
    start_ticks: u64,
    key: BinaryKey,
    target: Target,
    container_id: String,
    /// Oldest first.
    samples: VecDeque<Tick>,
    /// The last judgement: findings and the report.
    judged: Option<Judgement>,
}

/// A process's findings (rule, severity) and its report, as last judged.
type Judgement = (Vec<(String, Severity)>, Arc<Diagnosis>);

/// What one tick saw of one process.
struct Tick {
    at: Instant,
    /// Cumulative counts of this process (estimates for duty-cycled probes).
    snap: Snapshot,
    cpu_s: Option<f64>,
    cpu_profile_hz: Option<i32>,
    /// Cumulative live seconds of each call probe of its binary (local ids).
    on_s: HashMap<u32, f64>,
}

pub struct Agent {
    cfg: Config,
    probes: Probes,
    binaries: HashMap<BinaryKey, Binary>,
    procs: HashMap<u32, Watched>,
    next_id_base: u32,
    extrapolate: Extrapolator,
    stats: SelfStats,
    shared: Arc<Mutex<Exported>>,
}

impl Agent {
    pub fn new(cfg: Config, probes: Probes, shared: Arc<Mutex<Exported>>) -> Agent {
        Agent {
            cfg,
            probes,
            binaries: HashMap::new(),
            procs: HashMap::new(),
            next_id_base: 0,
            extrapolate: Extrapolator::default(),
            stats: SelfStats::default(),
            shared,
        }
    }

    /// Runs until `stop` is set; returning drops every probe.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            self.tick();
            self.stats.last_tick_seconds = t0.elapsed().as_secs_f64();
            let deadline = t0 + self.cfg.interval;
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                let wake = self
                    .next_duty_deadline()
                    .map_or(deadline, |d| d.min(deadline));
                let nap = wake.saturating_duration_since(Instant::now());
                // Wake for duty-cycle deadlines, and often enough to see `stop`.
                std::thread::sleep(nap.min(Duration::from_millis(250)));
                self.run_duty_cycles(Instant::now(), None);
            }
        }
        // Detach explicitly, binary by binary, before the object goes.
        let binaries = std::mem::take(&mut self.binaries);
        self.probes
            .detach_many(binaries.into_values().filter_map(|b| match b {
                Binary::Watched(w) => Some(w.attached),
                Binary::Ignored => None,
            }));
    }

    fn next_duty_deadline(&self) -> Option<Instant> {
        self.binaries
            .values()
            .filter_map(|b| match b {
                Binary::Watched(w) => w.duty.next_deadline_between_ticks(),
                Binary::Ignored => None,
            })
            .min()
    }

    /// Ends live phases that are over and runs the evaluations that are due. Between
    /// ticks (`raw` None) only a new binary's first evaluation reads the maps; the
    /// others wait for the tick's snapshot (`raw`).
    fn run_duty_cycles(&mut self, now: Instant, raw: Option<&Snapshot>) {
        let due = self.binaries.values().any(|b| match b {
            Binary::Watched(w) => w.duty.probation_due(now),
            Binary::Ignored => false,
        });
        let ticked = raw.is_some();
        let fresh;
        let raw = match raw {
            Some(r) => Some(r),
            None if due => {
                fresh = self.probes.snapshot();
                Some(&fresh)
            }
            None => None,
        };
        for b in self.binaries.values_mut() {
            let Binary::Watched(w) = b else { continue };
            let w = &mut **w;
            w.duty.cut_surges(now, &mut self.probes, &mut w.attached);
            w.duty.poll(now, &mut self.probes, &mut w.attached);
            let due = if ticked {
                w.duty.due(now)
            } else {
                w.duty.probation_due(now)
            };
            if let Some(raw) = raw.filter(|_| due) {
                w.duty
                    .evaluate(now, raw, &w.plan, &mut self.probes, &mut w.attached);
            }
        }
    }

    fn tick(&mut self) {
        let procs = discover::scan(std::process::id());
        log::debug!("tick: {} processes on the host", procs.len());
        let unused = self.update_processes(&procs);
        let raw = self.probes.snapshot();
        let now = Instant::now();
        // Live seconds of every call probe id (global ids), for the estimates.
        let mut on: HashMap<u32, f64> = HashMap::new();
        for b in self.binaries.values_mut() {
            if let Binary::Watched(w) = b {
                on.extend(w.duty.on_seconds(now));
                for (probe, rate) in w.duty.take_surges() {
                    self.extrapolate.surged(probe, rate);
                }
            }
        }
        let snap = self.extrapolate.update(&raw, &on, now);
        let mut by_pid = split_by_pid(snap);
        let mut exported = Vec::with_capacity(self.procs.len());
        let tick = self.stats.ticks;
        for (pid, w) in self.procs.iter_mut() {
            let Some(Binary::Watched(b)) = self.binaries.get(&w.key) else {
                continue;
            };
            let n = b.plan.call_probes.len() as u32;
            let own = own_snapshot(by_pid.remove(pid).unwrap_or_default(), b.id_base, n);
            w.samples.push_back(Tick {
                at: now,
                snap: own,
                cpu_s: target::cpu_seconds(*pid),
                cpu_profile_hz: w.target.cpu_profile_hz(),
                on_s: on
                    .iter()
                    .filter(|(id, _)| **id >= b.id_base && **id < b.id_base + n)
                    .map(|(id, s)| (id - b.id_base, *s))
                    .collect(),
            });
            while w.samples.len() > 2 && now.duration_since(w.samples[1].at) >= self.cfg.window {
                w.samples.pop_front();
            }
            if w.judged.is_none() || (tick + *pid as u64).is_multiple_of(JUDGE_EVERY_TICKS) {
                w.judged = Some(judge(
                    w,
                    b,
                    &self.cfg.thresholds,
                    self.cfg.budget.share_of_core,
                ));
            }
            exported.push(export(w, b));
        }
        exported.sort_by_key(|p| p.pid);
        log::debug!("tick: {} watched", exported.len());
        self.stats.ticks += 1;
        self.stats.processes_watched = self.procs.len() as u64;
        self.stats.probe_hits =
            raw.calls.values().sum::<u64>() + raw.stw.values().map(|s| s.count).sum::<u64>();
        self.stats.kernel_errors = raw.errors.to_vec();
        self.stats.probe_guardian_up = self.probes.guardian_running() as u64;
        self.stats.probe_detach_tail_seconds = attach::detach_tail().as_secs_f64();
        self.stats.probes_duty_cycled = self
            .binaries
            .values()
            .map(|b| match b {
                Binary::Watched(w) => w.duty.cycled().len() as u64,
                Binary::Ignored => 0,
            })
            .sum();
        self.stats.binaries_attached = self
            .binaries
            .values()
            .filter(|b| matches!(b, Binary::Watched(_)))
            .count() as u64;
        self.stats.probes_attached = self
            .binaries
            .values()
            .map(|b| match b {
                Binary::Watched(w) => w.attached.attached as u64,
                Binary::Ignored => 0,
            })
            .sum();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        *shared = Exported {
            processes: exported,
            stats: self.stats.clone(),
            last_tick: Some(now),
        };
        drop(shared);
        // Unregistering uprobes waits for the kernel (RCU): done after publishing, so
        // an exited process's series are gone from /metrics at once.
        for w in &unused {
            w.duty.forget(&mut self.probes);
        }
        self.probes
            .detach_many(unused.into_iter().map(|w| w.attached));
        self.run_duty_cycles(Instant::now(), Some(&raw));
    }

    /// New processes are analysed (once per binary) and attached; gone ones dropped,
    /// with their kernel entries; binaries nobody runs any more are detached.
    fn update_processes(&mut self, procs: &[Proc]) -> Vec<WatchedBinary> {
        let alive: HashMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
        // Gone: exited, pid reused, or exec'd another binary.
        let gone: HashSet<u32> = self
            .procs
            .iter()
            .filter(|(pid, w)| {
                alive
                    .get(pid)
                    .is_none_or(|p| p.start_ticks != w.start_ticks || p.key != w.key)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &gone {
            self.procs.remove(pid);
        }
        self.probes.forget(&gone);
        self.extrapolate.forget(&gone);

        let mut over = 0;
        for p in procs {
            if self.procs.contains_key(&p.pid) || !self.cfg.filter.wants(p) {
                continue;
            }
            if !self.binaries.contains_key(&p.key) {
                let b = self.analyse(p);
                self.binaries.insert(p.key, b);
            }
            let Some(Binary::Watched(b)) = self.binaries.get(&p.key) else {
                continue;
            };
            if self.procs.len() >= self.cfg.max_processes {
                over += 1;
                continue;
            }
            self.procs.insert(
                p.pid,
                Watched {
                    start_ticks: p.start_ticks,
                    key: p.key,
                    target: Target::with_binary(p.pid, p.exe.clone(), b.binary.clone()),
                    container_id: discover::container_id(p.pid).unwrap_or_default(),
                    samples: VecDeque::new(),
                    judged: None,
                },
            );
        }
        self.stats.processes_over_limit = over;

        // Binaries no process runs any more (exited, or replaced on disk: the new
        // file has a new inode and is analysed as a new binary).
        let running: HashSet<BinaryKey> = procs.iter().map(|p| p.key).collect();
        let unused: Vec<BinaryKey> = self
            .binaries
            .keys()
            .filter(|k| !running.contains(k))
            .copied()
            .collect();
        unused
            .into_iter()
            .filter_map(|k| match self.binaries.remove(&k) {
                Some(Binary::Watched(w)) => Some(*w),
                _ => None,
            })
            .collect()
    }

    fn analyse(&mut self, p: &Proc) -> Binary {
        let t0 = Instant::now();
        let b = self.try_analyse(p);
        self.stats.binaries_analysed += 1;
        self.stats.analysis_seconds += t0.elapsed().as_secs_f64();
        b
    }

    fn try_analyse(&mut self, p: &Proc) -> Binary {
        let exe = std::path::PathBuf::from(format!("/proc/{}/exe", p.pid));
        // Most processes on a host are not Go: the cheap refusal comes first.
        let Ok(binary) = GoBinary::open(&exe) else {
            return Binary::Ignored;
        };
        let Some(v) = binary.info().go_version.filter(|v| v.is_supported()) else {
            log::info!("pid {} ({}): Go version not supported", p.pid, p.exe);
            return Binary::Ignored;
        };
        let plan = plan::plan(&binary, v);
        let id_base = self.next_id_base;
        match self.probes.attach_plan(&plan, &exe, None, id_base) {
            Ok(attached) => {
                self.next_id_base += plan.call_probes.len() as u32;
                for (sym, e) in &attached.failures {
                    log::warn!("{}: probe on {sym} not attached: {e}", p.exe);
                }
                self.stats.attach_errors += attached.failures.len() as u64;
                log::info!(
                    "attached {} probes to {} ({})",
                    attached.attached,
                    p.exe,
                    binary.info().go_version_string
                );
                // Analysis read much of the file; keep only what later lookups touch.
                binary.release_pages();
                let duty = DutyCycle::new(
                    &plan,
                    &attached,
                    id_base,
                    self.cfg.budget,
                    self.cfg.interval,
                    Instant::now(),
                );
                Binary::Watched(Box::new(WatchedBinary {
                    binary: Arc::new(binary),
                    plan,
                    id_base,
                    attached,
                    duty,
                }))
            }
            Err(e) => {
                self.stats.attach_errors += 1;
                log::warn!("pid {} ({}): {e}", p.pid, p.exe);
                Binary::Ignored
            }
        }
    }
}

/// The snapshot's entries grouped by process, in one pass.
fn split_by_pid(snap: Snapshot) -> HashMap<u32, Snapshot> {
    let mut out: HashMap<u32, Snapshot> = HashMap::new();
    for (k, v) in snap.calls {
        out.entry(k.tgid).or_default().calls.insert(k, v);
    }
    for (k, v) in snap.stw {
        out.entry(k.tgid).or_default().stw.insert(k, v);
    }
    for s in out.values_mut() {
        s.errors = snap.errors;
    }
    out
}

/// One process's entries, keeping its binary's call probes with ids made relative
/// to the binary's plan.
fn own_snapshot(mut snap: Snapshot, base: u32, n: u32) -> Snapshot {
    snap.calls = snap
        .calls
        .into_iter()
        .filter(|(k, _)| k.probe >= base && k.probe < base + n)
        .map(|(mut k, v)| {
            k.probe -= base;
            (k, v)
        })
        .collect();
    snap
}

/// Summarises and judges one process over its window.
fn judge(w: &Watched, b: &WatchedBinary, t: &Thresholds, budget_share: f64) -> Judgement {
    let first = w.samples.front().expect("a sample was just pushed");
    let samples: Vec<Sample> = w
        .samples
        .iter()
        .skip(1)
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
        .collect();
    // The wall time of the window's first sample, from how long ago it was taken.
    let started = SystemTime::now() - Instant::now().saturating_duration_since(first.at);
    let collected = collect::summarize(&w.target, &b.plan, &samples, started);
    let findings = if samples.is_empty() {
        vec![]
    } else {
        rules::judge(&collected, t)
    };
    let diagnosis = Diagnosis::new(
        &w.target,
        ProbeInfo {
            attached: b.attached.attached,
            failed: b.attached.failures.clone(),
            skipped: b.plan.skipped.clone(),
            overhead_budget_percent: budget_share * 100.0,
        },
        findings,
        collected,
    );
    let findings = diagnosis
        .findings
        .iter()
        .map(|f| (f.rule.to_string(), f.severity))
        .collect();
    (findings, Arc::new(diagnosis))
}

/// What /metrics and /findings show of one process: counters from this tick, the
/// findings and report of its last judgement.
fn export(w: &Watched, b: &WatchedBinary) -> ProcExport {
    // Cumulative counters (monotonic while the process lives) for /metrics.
    let latest = &w.samples.back().expect("non-empty").snap;
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in &latest.calls {
        if let Some(p) = b.plan.call_probes.get(k.probe as usize) {
            *calls.entry(p.api.id().to_string()).or_default() += v;
        }
    }
    let mut pauses: BTreeMap<String, StwStats> = BTreeMap::new();
    for (k, s) in &latest.stw {
        let reason = collect::reason_of(&w.target, k.reason);
        pauses
            .entry(slug(&reason.name))
            .or_insert(StwStats::ZERO)
            .merge(s);
    }
    let (findings, diagnosis) = w.judged.clone().expect("judged before export");
    ProcExport {
        pid: w.target.pid,
        exe: w.target.exe_display.clone(),
        go_version: b.binary.info().go_version_string.clone(),
        container_id: w.container_id.clone(),
        calls,
        pauses,
        findings,
        diagnosis,
    }
}

/// A reason's name as a label value: "forced GC: GC mark termination" →
/// "forced_gc_gc_mark_termination".
pub fn slug(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('_') {
            s.push('_');
        }
    }
    s.trim_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reason_slugs() {
        assert_eq!(super::slug("read mem stats"), "read_mem_stats");
        assert_eq!(
            super::slug("forced GC: GC mark termination"),
            "forced_gc_gc_mark_termination"
        );
        assert_eq!(
            super::slug("GC (sweep or mark termination)"),
            "gc_sweep_or_mark_termination"
        );
    }
}
