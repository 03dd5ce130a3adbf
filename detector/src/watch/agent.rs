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
    collect::{self, Tick},
    gobin::GoBinary,
    probes::{attach::Probes, budget::Budget, plan},
    report::Diagnosis,
    rules::{Severity, Thresholds},
    session::{self, Host, Session},
    target::Target,
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
    /// Processes exported with series of their own (`pid` label); the rest by service.
    pub per_pid_series: usize,
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
    /// (rule, severity, culprit function or "").
    pub findings: Vec<(String, Severity, String)>,
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
    /// (map, entries) in the kernel maps at the last tick.
    pub map_entries: Vec<(&'static str, u64)>,
    /// Processes watched since start (each new pid once).
    pub processes_discovered: u64,
    pub ticks: u64,
    pub last_tick_seconds: f64,
}

/// What the HTTP endpoints serve: replaced as a whole at every tick.
#[derive(Clone, Debug, Default)]
pub struct Exported {
    pub processes: Vec<ProcExport>,
    /// The series groups /metrics exports (see `metrics::Services`).
    pub series: Vec<super::metrics::SeriesGroup>,
    /// Processes left out of per-pid series by the cap.
    pub per_pid_capped: u64,
    pub stats: SelfStats,
    pub last_tick: Option<Instant>,
}

/// What is known of a binary some process runs.
enum Binary {
    /// Analysed and attached: its session is in the host under the same key.
    Watched(Arc<GoBinary>),
    /// Not a Go binary, unsupported, or failed to attach: remembered so it is not
    /// analysed again while processes run it.
    Ignored,
}

struct Watched {
    start_ticks: u64,
    key: BinaryKey,
    target: Target,
    container_id: String,
    /// Oldest first.
    ticks: VecDeque<Tick>,
    /// The last judgement: findings and the report.
    judged: Option<Judgement>,
}

/// A process's findings (rule, severity, culprit function) and its report, as last
/// judged.
type Judgement = (Vec<(String, Severity, String)>, Arc<Diagnosis>);

/// How often the duty cycles look for probes that turned hot between ticks.
const LOOK: Duration = Duration::from_millis(250);

pub struct Agent {
    cfg: Config,
    host: Host<BinaryKey>,
    binaries: HashMap<BinaryKey, Binary>,
    procs: HashMap<u32, Watched>,
    stats: SelfStats,
    shared: Arc<Mutex<Exported>>,
    services: super::metrics::Services,
    /// An open descriptor of each watched binary: probes are attached (and the duty
    /// cycle re-attaches them) through `/proc/self/fd/N`, which stays valid when the
    /// process it was found through exits (under churn, it often has before the
    /// attach is done).
    exe_files: HashMap<BinaryKey, std::fs::File>,
}

impl Agent {
    pub fn new(cfg: Config, probes: Probes, shared: Arc<Mutex<Exported>>) -> Agent {
        Agent {
            host: Host::new(probes, cfg.budget, cfg.interval),
            cfg,
            binaries: HashMap::new(),
            procs: HashMap::new(),
            stats: SelfStats::default(),
            shared,
            services: Default::default(),
            exe_files: HashMap::new(),
        }
    }

    /// Runs until `stop` is set; returning drops every probe.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            self.tick();
            self.stats.last_tick_seconds = t0.elapsed().as_secs_f64();
            self.host
                .wait(t0 + self.cfg.interval, LOOK, || stop.load(Ordering::SeqCst));
        }
        // Dropping the host detaches every session, side by side.
    }

    fn tick(&mut self) {
        let procs = discover::scan(std::process::id());
        log::debug!("tick: {} processes on the host", procs.len());
        let unused = self.update_processes(&procs);
        let now = Instant::now();
        let seen = self.host.tick(now);
        self.forget_strays(&seen);
        let mut exported = Vec::with_capacity(self.procs.len());
        let tick = self.stats.ticks;
        for (pid, w) in self.procs.iter_mut() {
            let (Some(session), Some(Binary::Watched(binary))) =
                (self.host.session(w.key), self.binaries.get(&w.key))
            else {
                continue;
            };
            w.ticks.push_back(seen.process(w.key, &w.target));
            while w.ticks.len() > 2 && now.duration_since(w.ticks[1].at) >= self.cfg.window {
                w.ticks.pop_front();
            }
            // Right after the agent starts (a restart), every process is judged at
            // each of the first ticks, so findings are back a tick or two after the
            // evidence, not up to JUDGE_EVERY_TICKS later. Not later on: judging every
            // new process at each tick costs too much under churn.
            let young = tick <= 3;
            if w.judged.is_none() || young || (tick + *pid as u64).is_multiple_of(JUDGE_EVERY_TICKS)
            {
                let d = session::judge(
                    &w.target,
                    session,
                    w.ticks.make_contiguous(),
                    &self.cfg.thresholds,
                    self.host.budget(),
                );
                let findings = d
                    .findings
                    .iter()
                    .map(|f| {
                        let culprit = f.culprit.as_ref().map(|c| c.function.clone());
                        (f.rule.to_string(), f.severity, culprit.unwrap_or_default())
                    })
                    .collect();
                w.judged = Some((findings, Arc::new(d)));
            }
            exported.push(export(w, session, binary));
        }
        exported.sort_by_key(|p| p.pid);
        log::debug!("tick: {} watched", exported.len());
        self.stats.ticks += 1;
        self.stats.processes_watched = self.procs.len() as u64;
        self.stats.probe_hits = seen.hits;
        self.stats.kernel_errors = seen.errors.to_vec();
        self.stats.map_entries = seen.map_entries.to_vec();
        self.stats.probe_guardian_up = self.host.probes().guardian_running() as u64;
        self.stats.probe_detach_tail_seconds = self.host.probes().detacher().tail().as_secs_f64();
        let sessions = || self.host.sessions().map(|(_, s)| s);
        self.stats.probes_duty_cycled = sessions().map(|s| s.duty.cycled().len() as u64).sum();
        self.stats.binaries_attached = sessions().count() as u64;
        self.stats.probes_attached = sessions().map(|s| s.attached.attached as u64).sum();
        let (series, per_pid_capped) =
            self.services
                .update(&exported, self.cfg.per_pid_series, now);
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        *shared = Exported {
            series,
            per_pid_capped,
            processes: exported,
            stats: self.stats.clone(),
            last_tick: Some(now),
        };
        drop(shared);
        // Unregistering uprobes waits for the kernel (RCU): done after publishing, so
        // an exited process's series are gone from /metrics at once.
        self.host.detach(unused);
    }

    /// Drops the kernel entries of processes that ran a watched binary but are not
    /// watched and have exited: shorter-lived than a scan, or left out by
    /// --max-processes. Without this, short-lived processes fill the maps.
    fn forget_strays(&mut self, seen: &session::HostTick<BinaryKey>) {
        let strays: HashSet<u32> = seen
            .pids()
            .into_iter()
            .filter(|pid| {
                !self.procs.contains_key(pid)
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
            .collect();
        if !strays.is_empty() {
            log::debug!("forgetting {} exited unwatched processes", strays.len());
            self.host.forget(&strays);
        }
    }

    /// New processes are analysed (once per binary) and attached; gone ones dropped,
    /// with their kernel entries. Returns the binaries nobody runs any more, to be
    /// detached once this tick is published.
    fn update_processes(&mut self, procs: &[Proc]) -> Vec<BinaryKey> {
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
        self.host.forget(&gone);

        let mut over = 0;
        for p in procs {
            if self.procs.contains_key(&p.pid) || !self.cfg.filter.wants(p) {
                continue;
            }
            if !self.binaries.contains_key(&p.key) {
                let b = self.analyse(p);
                if matches!(b, Binary::Ignored) && !crate::target::is_alive(p.pid) {
                    // Gone before its binary could be opened: not the binary's fault,
                    // another of its processes tries again.
                    continue;
                }
                self.binaries.insert(p.key, b);
            }
            let Some(Binary::Watched(b)) = self.binaries.get(&p.key) else {
                continue;
            };
            if self.procs.len() >= self.cfg.max_processes {
                over += 1;
                continue;
            }
            self.stats.processes_discovered += 1;
            self.procs.insert(
                p.pid,
                Watched {
                    start_ticks: p.start_ticks,
                    key: p.key,
                    target: Target::with_binary(p.pid, p.exe.clone(), b.clone()),
                    container_id: discover::container_id(p.pid).unwrap_or_default(),
                    ticks: VecDeque::new(),
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
        for k in &unused {
            self.binaries.remove(k);
            self.exe_files.remove(k);
        }
        unused
    }

    fn analyse(&mut self, p: &Proc) -> Binary {
        let t0 = Instant::now();
        let b = self.try_analyse(p);
        self.stats.binaries_analysed += 1;
        self.stats.analysis_seconds += t0.elapsed().as_secs_f64();
        b
    }

    fn try_analyse(&mut self, p: &Proc) -> Binary {
        let Ok(file) = std::fs::File::open(format!("/proc/{}/exe", p.pid)) else {
            return Binary::Ignored;
        };
        let exe = std::path::PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ));
        // Most processes on a host are not Go: the cheap refusal comes first.
        let Ok(binary) = GoBinary::open(&exe) else {
            return Binary::Ignored;
        };
        let Some(v) = binary.info().go_version.filter(|v| v.is_supported()) else {
            log::info!("pid {} ({}): Go version not supported", p.pid, p.exe);
            return Binary::Ignored;
        };
        let plan = plan::plan(&binary, v);
        match self.host.attach(p.key, plan, &exe, None) {
            Ok(session) => {
                let attached = &session.attached;
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
                self.exe_files.insert(p.key, file);
                Binary::Watched(Arc::new(binary))
            }
            Err(e) => {
                self.stats.attach_errors += 1;
                log::warn!("pid {} ({}): {e}", p.pid, p.exe);
                Binary::Ignored
            }
        }
    }
}

/// What /metrics and /findings show of one process: counters from this tick, the
/// findings and report of its last judgement.
fn export(w: &Watched, session: &Session, binary: &GoBinary) -> ProcExport {
    // Cumulative counters (monotonic while the process lives) for /metrics.
    let latest = &w.ticks.back().expect("non-empty").snap;
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in &latest.calls {
        if let Some(p) = session.plan.call_probes.get(k.probe as usize) {
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
        go_version: binary.info().go_version_string.clone(),
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
