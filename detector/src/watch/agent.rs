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
    time::{Duration, Instant},
};

use detector_common::StwStats;

use super::discover::{self, BinaryKey, Filter, Proc};
use crate::{
    collect::{self, Sample},
    gobin::GoBinary,
    probes::{
        attach::{AttachedPlan, Probes, Snapshot},
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
    pub diagnosis: Diagnosis,
}

/// The agent's own cost and health.
#[derive(Clone, Debug, Default)]
pub struct SelfStats {
    pub probe_hits: u64,
    pub probes_attached: u64,
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
}

struct Watched {
    start_ticks: u64,
    key: BinaryKey,
    target: Target,
    container_id: String,
    /// (when, cumulative snapshot of this process, CPU seconds, CPU profile Hz),
    /// oldest first.
    samples: VecDeque<(Instant, Snapshot, Option<f64>, Option<i32>)>,
}

pub struct Agent {
    cfg: Config,
    probes: Probes,
    binaries: HashMap<BinaryKey, Binary>,
    procs: HashMap<u32, Watched>,
    next_id_base: u32,
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
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Detach explicitly, binary by binary, before the object goes.
        let binaries = std::mem::take(&mut self.binaries);
        for (_, b) in binaries {
            if let Binary::Watched(w) = b {
                self.probes.detach(w.attached);
            }
        }
    }

    fn tick(&mut self) {
        let procs = discover::scan(std::process::id());
        log::debug!("tick: {} processes on the host", procs.len());
        let unused = self.update_processes(&procs);
        let snap = self.probes.snapshot();
        let now = Instant::now();
        let mut exported = Vec::with_capacity(self.procs.len());
        for (pid, w) in self.procs.iter_mut() {
            let Some(Binary::Watched(b)) = self.binaries.get(&w.key) else {
                continue;
            };
            let own = own_snapshot(&snap, *pid, b.id_base, b.plan.call_probes.len() as u32);
            w.samples.push_back((
                now,
                own,
                target::cpu_seconds(*pid),
                w.target.cpu_profile_hz(),
            ));
            while w.samples.len() > 2 && now.duration_since(w.samples[1].0) >= self.cfg.window {
                w.samples.pop_front();
            }
            exported.push(judge(w, b, &self.cfg.thresholds));
        }
        exported.sort_by_key(|p| p.pid);
        log::debug!("tick: {} watched", exported.len());
        self.stats.ticks += 1;
        self.stats.processes_watched = self.procs.len() as u64;
        self.stats.probe_hits =
            snap.calls.values().sum::<u64>() + snap.stw.values().map(|s| s.count).sum::<u64>();
        self.stats.kernel_errors = snap.errors.to_vec();
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
        for w in unused {
            self.probes.detach(w.attached);
        }
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
                Binary::Watched(Box::new(WatchedBinary {
                    binary: Arc::new(binary),
                    plan,
                    id_base,
                    attached,
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

/// The entries of one process, with probe ids made relative to its binary's plan.
fn own_snapshot(snap: &Snapshot, pid: u32, base: u32, n: u32) -> Snapshot {
    Snapshot {
        calls: snap
            .calls
            .iter()
            .filter(|(k, _)| k.tgid == pid && k.probe >= base && k.probe < base + n)
            .map(|(k, v)| {
                let mut k = *k;
                k.probe -= base;
                (k, *v)
            })
            .collect(),
        stw: snap
            .stw
            .iter()
            .filter(|(k, _)| k.tgid == pid)
            .map(|(k, v)| (*k, *v))
            .collect(),
        errors: snap.errors,
    }
}

/// Summarises and judges one process over its window.
fn judge(w: &Watched, b: &WatchedBinary, t: &Thresholds) -> ProcExport {
    let (t0, base, cpu0, _) = w.samples.front().expect("a sample was just pushed");
    let samples: Vec<Sample> = w
        .samples
        .iter()
        .skip(1)
        .map(|(at, snap, cpu, hz)| Sample {
            at_s: at.duration_since(*t0).as_secs_f64(),
            snap: snap.since(base),
            cpu_s: cpu0.zip(*cpu).map(|(a, b)| (b - a).max(0.0)),
            cpu_profile_hz: *hz,
        })
        .collect();
    let collected = collect::summarize(&w.target, &b.plan, &samples);
    let findings = if samples.is_empty() {
        vec![]
    } else {
        rules::judge(&collected, t)
    };
    // Cumulative counters (monotonic while the process lives) for /metrics.
    let latest = &w.samples.back().expect("non-empty").1;
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in &latest.calls {
        if let Some(p) = b.plan.call_probes.get(k.probe as usize) {
            *calls.entry(p.func.to_string()).or_default() += v;
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
    let diagnosis = Diagnosis::new(
        &w.target,
        ProbeInfo {
            attached: b.attached.attached,
            failed: b.attached.failures.clone(),
            skipped: b.plan.skipped.clone(),
        },
        findings,
        collected,
    );
    ProcExport {
        pid: w.target.pid,
        exe: w.target.exe_display.clone(),
        go_version: b.binary.info().go_version_string.clone(),
        container_id: w.container_id.clone(),
        calls,
        pauses,
        findings: diagnosis
            .findings
            .iter()
            .map(|f| (f.rule.to_string(), f.severity))
            .collect(),
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
