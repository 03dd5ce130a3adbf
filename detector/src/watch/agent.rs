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

use super::{
    discover::{self, BinaryKey, Filter, Proc},
    events::{self, DiscoveryStats, Event, Events},
};
use crate::{
    collect::{self, Tick},
    gobin::GoBinary,
    probes::{attach::Probes, budget::Budget, plan},
    report::Diagnosis,
    rules::{Severity, Thresholds},
    session::{self, Host, Session},
    target::{FrameCache, Target},
};

pub struct Config {
    pub filter: Filter,
    pub thresholds: Thresholds,
    /// How often the maps are read (and /proc scanned, when exec events cannot run).
    pub interval: Duration,
    /// How often /proc is scanned under the exec events, as a safety net.
    pub rescan_interval: Duration,
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
    pub discovery: DiscoveryStats,
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
    /// Analysed and attached: its session is in the host under the same key. Its
    /// processes share the frames symbolised so far.
    Watched(Arc<GoBinary>, Arc<FrameCache>),
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
    /// When it started, for the discovery latency; None once exported (or when it ran
    /// before detector).
    born: Option<Born>,
}

/// When a process started, as its discovery saw it.
#[derive(Clone, Copy, Debug)]
enum Born {
    /// Its exec event's time, CLOCK_MONOTONIC ns.
    Exec(u64),
    /// Its start time from /proc (a rescan found it), clock ticks since boot.
    Started(u64),
}

impl Born {
    /// Seconds from then until now.
    fn elapsed(self) -> f64 {
        match self {
            Born::Exec(ns) => {
                events::clock_ns(libc::CLOCK_MONOTONIC).saturating_sub(ns) as f64 / 1e9
            }
            Born::Started(ticks) => {
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                let now = events::clock_ns(libc::CLOCK_BOOTTIME) as f64 / 1e9;
                (now - ticks as f64 / hz).max(0.0)
            }
        }
    }
}

/// A process's findings (rule, severity, culprit function) and its report, as last
/// judged.
type Judgement = (Vec<(String, Severity, String)>, Arc<Diagnosis>);

/// Process events are taken at most this often (a new process waits at most this long
/// for it, besides a tick in progress).
const EVENTS_GAP: Duration = Duration::from_millis(10);

/// During a tick, pending process events are taken every this many processes.
const EVENTS_EVERY: usize = 16;

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
    /// Exec and exit events; None when they could not start (then /proc is scanned
    /// every tick).
    events: Option<Events>,
    /// When /proc is scanned again (the safety net under the events).
    next_rescan: Instant,
    /// Binaries nobody runs any more, detached once the change is published.
    unused: Vec<BinaryKey>,
    /// Whether a scan ran yet: processes found by the first one ran before detector.
    scanned: bool,
}

impl Agent {
    pub fn new(cfg: Config, mut probes: Probes, shared: Arc<Mutex<Exported>>) -> Agent {
        // Each watched process keeps two descriptors open (its /proc stat and mem,
        // read every tick): the soft limit (often 1,024) goes up to the hard one.
        if !crate::probes::guardian::raise_nofile_limit() {
            log::debug!("cannot raise the open files limit");
        }
        let events = match Events::start(&mut probes) {
            Ok(e) => Some(e),
            Err(e) => {
                log::warn!(
                    "cannot follow process execs and exits ({e}); /proc is scanned every --interval instead"
                );
                None
            }
        };
        let mut stats = SelfStats::default();
        stats.discovery.events_up = events.is_some();
        Agent {
            host: Host::new(probes, cfg.budget, cfg.interval),
            cfg,
            binaries: HashMap::new(),
            procs: HashMap::new(),
            stats,
            shared,
            services: Default::default(),
            exe_files: HashMap::new(),
            events,
            next_rescan: Instant::now(),
            unused: vec![],
            scanned: false,
        }
    }

    /// Runs until `stop` is set; returning drops every probe.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut last_events = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            self.tick();
            self.stats.last_tick_seconds = t0.elapsed().as_secs_f64();
            let until = t0 + self.cfg.interval;
            // Between ticks: the duty cycles, and new or exited processes as they come.
            loop {
                let ready = std::cell::Cell::new(false);
                let events = &self.events;
                self.host.wait_on(
                    until,
                    LOOK,
                    || stop.load(Ordering::SeqCst) || ready.get(),
                    |d| match events {
                        Some(e) => ready.set(e.wait(d)),
                        None => std::thread::sleep(d),
                    },
                );
                if !ready.get() || stop.load(Ordering::SeqCst) {
                    break;
                }
                // A host busy exec'ing (a build) wakes the agent at most every
                // EVENTS_GAP: the events are taken in batches.
                std::thread::sleep(EVENTS_GAP.saturating_sub(last_events.elapsed()));
                last_events = Instant::now();
                self.on_events();
            }
        }
        // Dropping the host detaches every session, side by side.
    }

    /// A full /proc scan: at start, every `rescan_interval` (every tick without
    /// events) and after lost events.
    fn rescan(&mut self) {
        let procs = discover::scan(std::process::id());
        log::debug!("rescan: {} processes on the host", procs.len());
        self.stats.discovery.rescans += 1;
        let unused = self.update_processes(&procs);
        self.unused.extend(unused);
        self.scanned = true;
        self.next_rescan = Instant::now() + self.cfg.rescan_interval;
    }

    /// Takes the pending process events: exited processes are dropped, new ones
    /// attached (their binary analysed if new), and the change published at once.
    fn on_events(&mut self) {
        let Some(ev) = self.events.as_mut() else {
            return;
        };
        let mut batch = vec![];
        ev.drain(&mut batch);
        let lost = ev.lost();
        let mut gone = HashSet::new();
        let mut added = vec![];
        for e in batch {
            match e {
                Event::Exit { pid } => {
                    self.stats.discovery.exit_events += 1;
                    if self.procs.remove(&pid).is_some() {
                        gone.insert(pid);
                    }
                }
                Event::Exec { pid, at_ns } => {
                    self.stats.discovery.exec_events += 1;
                    // A watched process that execs runs another program now.
                    if self.procs.remove(&pid).is_some() {
                        gone.insert(pid);
                    }
                    // Most execs on a host are of other programs: the filter, then
                    // the binary's verdict, before reading more of /proc.
                    let Some(p) = discover::proc_if(pid, |exe, key| {
                        let wanted = self.cfg.filter.wants_exe(pid, exe);
                        wanted && !matches!(self.binaries.get(&key), Some(Binary::Ignored))
                    }) else {
                        continue; // gone already, or not for us
                    };
                    if self.add_process(&p, Some(Born::Exec(at_ns))) {
                        added.push(pid);
                    }
                }
            }
        }
        self.host.forget(&gone);
        // Binaries whose last watched process is gone.
        let running: HashSet<BinaryKey> = self.procs.values().map(|w| w.key).collect();
        let unused: Vec<BinaryKey> = gone_binaries(&self.binaries, &running);
        for k in &unused {
            self.binaries.remove(k);
            self.exe_files.remove(k);
        }
        self.unused.extend(unused);
        if lost > 0 {
            log::warn!("{lost} process events lost (ring buffer full): rescanning /proc");
            self.stats.discovery.lost_events += lost;
            self.rescan();
            added.extend(
                self.procs
                    .iter()
                    .filter(|(_, w)| w.born.is_some())
                    .map(|(p, _)| *p),
            );
        }
        self.publish_changes(&gone, &added);
        let unused = std::mem::take(&mut self.unused);
        self.host.detach(unused);
    }

    /// Publishes processes added or gone since the last tick, without waiting for it:
    /// the new ones with their process info and no counts yet.
    fn publish_changes(&mut self, gone: &HashSet<u32>, added: &[u32]) {
        let mut new = vec![];
        for pid in added {
            let Some(w) = self.procs.get_mut(pid) else {
                continue;
            };
            let (Some(session), Some(Binary::Watched(binary, _))) =
                (self.host.session(w.key), self.binaries.get(&w.key))
            else {
                continue;
            };
            if w.judged.is_none() {
                w.judged = Some(judgement(w, session, &self.cfg, self.host.budget()));
            }
            new.push(export(w, session, binary));
        }
        self.count_attached();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !gone.is_empty() || !added.is_empty() {
            shared
                .processes
                .retain(|p| !gone.contains(&p.pid) && !added.contains(&p.pid));
            shared.processes.extend(new);
            shared.processes.sort_by_key(|p| p.pid);
            // /metrics shows the change now too (a gone process's counts are folded
            // into its service's, as at a tick).
            let (series, capped) =
                self.services
                    .update(&shared.processes, self.cfg.per_pid_series, Instant::now());
            shared.series = series;
            shared.per_pid_capped = capped;
        }
        // Exported now: how long after it started.
        for pid in added {
            if let Some(born) = self.procs.get_mut(pid).and_then(|w| w.born.take()) {
                let s = born.elapsed();
                self.stats.discovery.observe_latency(s);
                log::debug!("discovered pid {pid} {:.3} ms after its start", s * 1e3);
            }
        }
        // What discovery changed of the self-metrics (the rest waits for the tick).
        let (to, from) = (&mut shared.stats, &self.stats);
        to.processes_watched = from.processes_watched;
        to.binaries_analysed = from.binaries_analysed;
        to.analysis_seconds = from.analysis_seconds;
        to.attach_errors = from.attach_errors;
        to.binaries_attached = from.binaries_attached;
        to.probes_attached = from.probes_attached;
        to.discovery = from.discovery.clone();
    }

    /// Processes watched, binaries and probes attached.
    fn count_attached(&mut self) {
        self.stats.processes_watched = self.procs.len() as u64;
        let sessions = || self.host.sessions().map(|(_, s)| s);
        self.stats.binaries_attached = sessions().count() as u64;
        self.stats.probes_attached = sessions().map(|s| s.attached.attached as u64).sum();
    }

    fn tick(&mut self) {
        if self.events.is_none() || Instant::now() >= self.next_rescan {
            self.rescan();
        }
        if self.events.is_some() {
            // Events that came during the tick's own work are taken at once.
            self.on_events();
        }
        let unused = std::mem::take(&mut self.unused);
        let now = Instant::now();
        let seen = self.host.tick(now);
        self.forget_strays(&seen);
        let mut exported = Vec::with_capacity(self.procs.len());
        let tick = self.stats.ticks;
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for (i, pid) in pids.iter().enumerate() {
            // A tick over many processes takes a while: new ones are not kept waiting.
            if i % EVENTS_EVERY == EVENTS_EVERY - 1
                && self.events.as_ref().is_some_and(|e| e.wait(Duration::ZERO))
            {
                self.on_events();
            }
            let Some(w) = self.procs.get_mut(pid) else {
                continue; // gone meanwhile
            };
            let (Some(session), Some(Binary::Watched(binary, _))) =
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
                w.judged = Some(judgement(w, session, &self.cfg, self.host.budget()));
            }
            exported.push(export(w, session, binary));
        }
        // Processes added or gone by events during the tick.
        exported.retain(|p| self.procs.contains_key(&p.pid));
        let have: HashSet<u32> = exported.iter().map(|p| p.pid).collect();
        for (pid, w) in &self.procs {
            if let (false, Some(session), Some(Binary::Watched(binary, _)), Some(_)) = (
                have.contains(pid),
                self.host.session(w.key),
                self.binaries.get(&w.key),
                &w.judged,
            ) {
                exported.push(export(w, session, binary));
            }
        }
        // Exported now (found by a scan, or events off): how long after it started.
        for w in self.procs.values_mut() {
            if let Some(born) = w.born.take() {
                self.stats.discovery.observe_latency(born.elapsed());
            }
        }
        exported.sort_by_key(|p| p.pid);
        log::debug!("tick: {} watched", exported.len());
        self.stats.ticks += 1;
        self.count_attached();
        self.stats.probe_hits = seen.hits;
        self.stats.kernel_errors = seen.errors.to_vec();
        self.stats.map_entries = seen.map_entries.to_vec();
        self.stats.probe_guardian_up = self.host.probes().guardian_running() as u64;
        self.stats.probe_detach_tail_seconds = self.host.probes().detacher().tail().as_secs_f64();
        let sessions = || self.host.sessions().map(|(_, s)| s);
        self.stats.probes_duty_cycled = sessions().map(|s| s.duty.cycled().len() as u64).sum();
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
        // Processes found by the first scan ran before detector: no discovery latency.
        let born = |p: &Proc| self.scanned.then_some(Born::Started(p.start_ticks));
        let found: Vec<(&Proc, Option<Born>)> = procs.iter().map(|p| (p, born(p))).collect();
        for (p, born) in found {
            if self.procs.contains_key(&p.pid) || !self.cfg.filter.wants(p) {
                continue;
            }
            if !self.add_process(p, born)
                && matches!(self.binaries.get(&p.key), Some(Binary::Watched(..)))
            {
                over += 1;
            }
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

    /// Watches `p` if the filter wants it and it runs a supported Go binary (analysed
    /// and attached here if new), within --max-processes. True when added.
    fn add_process(&mut self, p: &Proc, born: Option<Born>) -> bool {
        if self.procs.contains_key(&p.pid) || !self.cfg.filter.wants(p) {
            return false;
        }
        if !self.binaries.contains_key(&p.key) {
            let b = self.analyse(p);
            // A process that exited during analysis says nothing of its binary (found
            // by its exec event, it may have lived a few milliseconds): the next
            // process running it is analysed anew.
            if matches!(b, Binary::Ignored) && !crate::target::is_alive(p.pid) {
                return false;
            }
            self.binaries.insert(p.key, b);
        }
        let Some(Binary::Watched(b, frames)) = self.binaries.get(&p.key) else {
            return false;
        };
        if self.procs.len() >= self.cfg.max_processes {
            return false;
        }
        self.stats.processes_discovered += 1;
        self.procs.insert(
            p.pid,
            Watched {
                start_ticks: p.start_ticks,
                key: p.key,
                target: Target::with_frames(p.pid, p.exe.clone(), b.clone(), frames.clone()),
                container_id: discover::container_id(p.pid).unwrap_or_default(),
                ticks: VecDeque::new(),
                judged: None,
                born,
            },
        );
        log::debug!("watching pid {} ({})", p.pid, p.exe);
        true
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
                Binary::Watched(Arc::new(binary), Arc::default())
            }
            Err(e) => {
                self.stats.attach_errors += 1;
                log::warn!("pid {} ({}): {e}", p.pid, p.exe);
                Binary::Ignored
            }
        }
    }
}

/// Watched binaries no process in `running` runs.
fn gone_binaries(
    binaries: &HashMap<BinaryKey, Binary>,
    running: &HashSet<BinaryKey>,
) -> Vec<BinaryKey> {
    binaries
        .iter()
        .filter(|(k, b)| matches!(b, Binary::Watched(..)) && !running.contains(k))
        .map(|(k, _)| *k)
        .collect()
}

/// Summarises and judges a process over its window: its findings and report.
fn judgement(w: &mut Watched, session: &Session, cfg: &Config, budget: Budget) -> Judgement {
    let d = session::judge(
        &w.target,
        session,
        w.ticks.make_contiguous(),
        &cfg.thresholds,
        budget,
    );
    let findings = d
        .findings
        .iter()
        .map(|f| {
            let culprit = f.culprit.as_ref().map(|c| c.function.clone());
            (f.rule.to_string(), f.severity, culprit.unwrap_or_default())
        })
        .collect();
    (findings, Arc::new(d))
}

/// What /metrics and /findings show of one process: counters from this tick (none
/// before its first), the findings and report of its last judgement.
fn export(w: &Watched, session: &Session, binary: &GoBinary) -> ProcExport {
    // Cumulative counters (monotonic while the process lives) for /metrics.
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    let mut pauses: BTreeMap<String, StwStats> = BTreeMap::new();
    if let Some(latest) = w.ticks.back().map(|t| &t.snap) {
        for (k, v) in &latest.calls {
            if let Some(p) = session.plan.call_probes.get(k.probe as usize) {
                *calls.entry(p.api.id().to_string()).or_default() += v;
            }
        }
        for (k, s) in &latest.stw {
            let reason = collect::reason_of(&w.target, k.reason);
            pauses
                .entry(slug(&reason.name))
                .or_insert(StwStats::ZERO)
                .merge(s);
        }
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
