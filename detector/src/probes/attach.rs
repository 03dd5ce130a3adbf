//! Loads the eBPF object with aya and attaches a [`Plan`]'s probes. On kernels with
//! uprobe_multi links (see `multi`), the probes of one program and probe id go in and
//! out together, through one link the guardian process (see `guardian`) creates and
//! holds. Otherwise (or when that fails) each probe is a uprobe the guardian creates,
//! with detector's program linked to it. Dropping the links detaches every probe; if
//! detector dies, the kernel drops its links with its descriptors and the guardian
//! closes what it holds, so nothing outlives the process.
use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::UProbe,
    Ebpf, EbpfLoader,
};
use detector_common::{errors, CallKey, Stack, StackKey, StwKey, StwOpen, StwStats, HIT_SLOTS};

use super::detacher::Detacher;
pub use super::multi::AttachPath;
use super::multi::{self, MultiPrograms};
pub use super::privileges::{check_privileges, watch_privilege_warning};
use super::{
    guardian::Guardian,
    plan::{Plan, PlannedProbe, Program},
    uprobe,
};
use crate::exit::{Code, Failure};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-ebpf"));

#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    #[error("missing privileges: {missing}; run as root or grant CAP_BPF and CAP_PERFMON (e.g. `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep detector`)")]
    Privileges { missing: String },
    #[error("the kernel refused the eBPF programs: {0}; detector needs Linux 5.15+ with uprobe and BPF cookie support")]
    Load(String),
    #[error("no probe could be attached to {target}: {first_error}; check that the kernel supports uprobes (/sys/bus/event_source/devices/uprobe)")]
    NothingAttached { target: String, first_error: String },
    #[error("this kernel has no uprobe support: {UPROBE_PMU_TYPE} is missing; detector needs Linux 5.15+ built with CONFIG_UPROBE_EVENTS (and /sys mounted)")]
    NoUprobeSupport,
}

/// Hidden test knob: `MAP=N[,MAP=N]...` shrinks (or grows) kernel maps at load time,
/// so tests can fill them (e.g. `CALLS=4,STACKS=2`) and check that every loss is
/// counted and totals stay right.
pub const MAP_SIZES_ENV: &str = "DETECTOR_MAP_SIZES";

/// The maps whose size [`MAP_SIZES_ENV`] may set.
const SIZABLE_MAPS: [&str; 7] = [
    "CALLS",
    "CALLS_UNSITED",
    "STACKS",
    "STW",
    "STW_OPEN",
    "STW_PENDING",
    "FORCED_GC",
];

/// The map sizes [`MAP_SIZES_ENV`] asks for (none when unset).
fn map_sizes_override() -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let Ok(spec) = std::env::var(MAP_SIZES_ENV) else {
        return Ok(vec![]);
    };
    parse_map_sizes(&spec).map_err(|e| ProbeError::Load(format!("{MAP_SIZES_ENV}={spec}: {e}")))
}

fn parse_map_sizes(spec: &str) -> Result<Vec<(&'static str, u32)>, String> {
    let mut out = vec![];
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not MAP=ENTRIES"))?;
        let name = SIZABLE_MAPS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| format!("no map `{name}` (sizable: {})", SIZABLE_MAPS.join(", ")))?;
        let n: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{n}` is not a positive number of entries"))?;
        out.push((*name, n));
    }
    Ok(out)
}

/// Where the kernel's uprobe PMU announces itself (uprobes are created through it).
const UPROBE_PMU_TYPE: &str = uprobe::PMU_TYPE_PATH;

/// The loaded eBPF object: programs verified and loaded, maps shared by every probe
/// attached through it. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    /// None when it could not start: detector then creates uprobes itself.
    guardian: Option<Arc<Guardian>>,
    /// Removes duty-cycled probes in the background, and measures how long it takes.
    detacher: Detacher,
    /// The uprobe_multi copies of the programs, when the kernel links them.
    multi: Option<MultiPrograms>,
    /// Every calling stack read from the kernel so far, live processes only. A stack
    /// is read once, when a call key first names it: the map is not walked per tick.
    stacks: Arc<HashMap<StackKey, Stack>>,
}

/// One live probe, or a group of them: detector's program linked to a uprobe, or to
/// many through one uprobe_multi link. Dropping it detaches the program, then removes
/// the uprobes (see [`Event`]).
pub struct Link {
    link: Option<OwnedFd>,
    event: Event,
    /// A uprobe_multi link (its close removes every breakpoint before it waits).
    multi: bool,
}

/// Who holds the uprobe's last reference, and so removes its breakpoint.
enum Event {
    /// The guardian: it closes its descriptor when asked (or when detector dies).
    Guarded { id: u64, guardian: Arc<Guardian> },
    /// detector itself (no guardian): held only to be closed.
    Own { _event: OwnedFd },
    /// Nothing besides the link: a uprobe_multi link detector made itself (no
    /// guardian), or a guarded one handed over to [`release_all`].
    None,
}

impl Link {
    /// Closes detector's side and hands back the guardian's id to close, so that
    /// many can be closed in one request (see [`release_all`]).
    fn into_guarded(mut self) -> Option<(u64, Arc<Guardian>)> {
        drop(self.link.take());
        match std::mem::replace(&mut self.event, Event::None) {
            Event::Guarded { id, guardian } => Some((id, guardian)),
            other => {
                self.event = other;
                None
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The link first: once it is closed, the guardian's close is the last one.
        drop(self.link.take());
        if let Event::Guarded { id, guardian } = &self.event {
            guardian.close(*id);
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.event {
            Event::Guarded { id, .. } => write!(f, "Link(guarded #{id})"),
            Event::Own { .. } => write!(f, "Link(own)"),
            Event::None => write!(f, "Link(multi)"),
        }
    }
}

/// The probes of one plan attached through [`Probes::attach_plan`].
#[derive(Debug, Default)]
pub struct AttachedPlan {
    /// Parallel to `Plan::probes`: the live link of each probe (None when it failed to
    /// attach, or is detached for now by the overhead budget's duty cycle). Probes
    /// attached through one uprobe_multi link share it; it goes when the last does.
    links: Vec<Option<Arc<Link>>>,
    /// Where and for whom the probes go, to re-attach one later.
    target: PathBuf,
    pid: Option<u32>,
    id_base: u32,
    /// Probes attached.
    pub attached: usize,
    /// How they were attached (the kernel's way; a group a uprobe_multi link failed
    /// for went in one by one).
    pub path: AttachPath,
    /// Probes that failed to attach: (symbol, error).
    pub failures: Vec<(String, String)>,
}

/// What the kernel side has counted so far (cumulative since attach).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub calls: HashMap<CallKey, u64>,
    pub stw: HashMap<StwKey, StwStats>,
    pub errors: [u64; errors::COUNT as usize],
    /// The calling stacks `calls` name (and others): shared, not copied, per tick.
    pub stacks: Arc<HashMap<StackKey, Stack>>,
}

impl Snapshot {
    /// The frames above the call site of `k`, innermost first (empty when unknown).
    pub fn stack_of(&self, k: &CallKey) -> &[u64] {
        if k.stack == 0 {
            return &[];
        }
        let key = StackKey {
            tgid: k.tgid,
            _pad: 0,
            hash: k.stack,
        };
        self.stacks.get(&key).map_or(&[], |s| {
            let n = s
                .frames
                .iter()
                .position(|&pc| pc == 0)
                .unwrap_or(s.frames.len());
            &s.frames[..n]
        })
    }
}

const PROGRAMS: [Program; 8] = [
    Program::CountCall,
    Program::StwReason,
    Program::StwStart,
    Program::StwStopped,
    Program::StwStopping,
    Program::StwRestart,
    Program::StwEnd,
    Program::ForcedGcExit,
];

impl Probes {
    /// Loads and verifies every program (no probe attached yet).
    pub fn load() -> Result<Probes, ProbeError> {
        raise_memlock();
        let mut loader = EbpfLoader::new();
        for (name, n) in map_sizes_override()? {
            log::warn!("{MAP_SIZES_ENV}: map {name} holds {n} entries");
            loader.map_max_entries(name, n);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(format!("{e:#}")))?;
        for p in PROGRAMS {
            let prog: &mut UProbe = ebpf
                .program_mut(p.name())
                .ok_or_else(|| ProbeError::Load(format!("program {} missing", p.name())))?
                .try_into()
                .map_err(|e| ProbeError::Load(format!("{e:#}")))?;
            prog.load()
                .map_err(|e| ProbeError::Load(format!("{}: {e:#}", p.name())))?;
        }
        let guardian = match Guardian::start() {
            Ok(g) => Some(Arc::new(g)),
            Err(e) => {
                log::warn!(
                    "cannot start the probe guardian ({e}); detector creates and removes uprobes itself, \
                     so a SIGKILL at the wrong moment can leave a breakpoint in a target"
                );
                None
            }
        };
        let multi = if multi::forced_per_uprobe() {
            log::debug!("{} forces one perf event per uprobe", multi::FORCE_ENV);
            None
        } else {
            match MultiPrograms::load(&ebpf, OBJECT, &PROGRAMS) {
                Ok(m) => Some(m),
                Err(e) => {
                    log::debug!("no uprobe_multi links ({e}): one perf event per uprobe");
                    None
                }
            }
        };
        let path = if multi.is_some() {
            AttachPath::UprobeMulti
        } else {
            AttachPath::PerUprobe
        };
        log::debug!("attach path: {}", path.describe());
        Ok(Probes {
            ebpf,
            guardian,
            detacher: Detacher::new(path),
            multi,
            stacks: Arc::default(),
        })
    }

    /// How probes are attached and detached on this kernel.
    pub fn attach_path(&self) -> AttachPath {
        if self.multi.is_some() {
            AttachPath::UprobeMulti
        } else {
            AttachPath::PerUprobe
        }
    }

    /// The loaded object, for programs outside the probe plans (`watch::events`).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn program(&mut self, p: Program) -> &mut UProbe {
        self.ebpf
            .program_mut(p.name())
            .expect("loaded in Probes::load")
            .try_into()
            .expect("a uprobe program")
    }

    /// Attaches `plan`'s probes to `target`. Call probes carry `id_base + index` in
    /// their cookie, so several binaries can share the maps (see `watch`).
    pub fn attach_plan(
        &mut self,
        plan: &Plan,
        target: &Path,
        pid: Option<u32>,
        id_base: u32,
    ) -> Result<AttachedPlan, ProbeError> {
        let mut out = AttachedPlan {
            target: target.to_path_buf(),
            pid,
            id_base,
            path: self.attach_path(),
            ..AttachedPlan::default()
        };
        out.links = plan.probes.iter().map(|_| None).collect();
        // Call probes go in last: the pause probes are then live before the first call
        // is counted, and a hot call probe traps for as short a time as possible before
        // the duty cycle's first look (attaching one probe can wait 0.1 s or more behind
        // other uprobe users on the host).
        let mut order: Vec<usize> = (0..plan.probes.len()).collect();
        order.sort_by_key(|&i| plan.probes[i].program == Program::CountCall);
        // With uprobe_multi links: one link per program and call probe id (a duty
        // cycle unit), in the same order.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if self.multi.is_some() {
            let mut by_key: HashMap<(Program, u64), usize> = HashMap::new();
            for &i in &order {
                let p = &plan.probes[i];
                let key = match p.program {
                    Program::CountCall => (p.program, p.cookie),
                    other => (other, 0),
                };
                let g = *by_key.entry(key).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
        } else {
            groups = order.into_iter().map(|i| vec![i]).collect();
        }
        for group in groups {
            let (attached, failures) = self.attach_group(plan, &mut out, &group);
            out.attached += attached;
            out.failures.extend(failures);
        }
        if out.attached == 0 && !plan.probes.is_empty() {
            if !Path::new(UPROBE_PMU_TYPE).exists() {
                return Err(ProbeError::NoUprobeSupport);
            }
            return Err(ProbeError::NothingAttached {
                target: target.display().to_string(),
                first_error: out
                    .failures
                    .first()
                    .map(|f| f.1.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Attaches the probes `group` of `plan` (not live yet): through one uprobe_multi
    /// link when the kernel has them, else (or if that fails) one by one. Returns how
    /// many went live, and the failures.
    fn attach_group(
        &mut self,
        plan: &Plan,
        out: &mut AttachedPlan,
        group: &[usize],
    ) -> (usize, Vec<(String, String)>) {
        let target = out.target.clone();
        if self.multi.is_some() {
            match self.attach_multi(plan, &target, out.pid, out.id_base, group) {
                Ok(Some(link)) => {
                    let link = Arc::new(link);
                    for &i in group {
                        out.links[i] = Some(link.clone());
                    }
                    return (group.len(), vec![]);
                }
                Ok(None) => {}
                // One bad offset fails the whole link: one by one, each failure is
                // told apart.
                Err(e) => log::debug!("uprobe_multi link failed ({e}); one by one"),
            }
        }
        let mut live = 0;
        let mut failures = vec![];
        for &i in group {
            let probe = &plan.probes[i];
            match self.attach_probe(probe, &target, out.pid, out.id_base) {
                Ok(link) => {
                    out.links[i] = Some(Arc::new(link));
                    live += 1;
                }
                Err(e) => failures.push((probe.symbol.to_string(), e)),
            }
        }
        (live, failures)
    }

    /// One uprobe_multi link for the probes `group` (one program), created by the
    /// guardian when there is one. `Ok(None)` without uprobe_multi links.
    fn attach_multi(
        &mut self,
        plan: &Plan,
        target: &Path,
        pid: Option<u32>,
        id_base: u32,
        group: &[usize],
    ) -> Result<Option<Link>, String> {
        let Some(multi) = &self.multi else {
            return Ok(None);
        };
        let Some(&first) = group.first() else {
            return Ok(None);
        };
        let program = plan.probes[first].program;
        if group.len() > super::guardian::MAX_MULTI_OFFSETS
            || group.iter().any(|&i| plan.probes[i].program != program)
        {
            return Ok(None);
        }
        let prog = multi.fd(program).ok_or("no uprobe_multi copy")?;
        let offsets: Vec<u64> = group.iter().map(|&i| plan.probes[i].file_offset).collect();
        let cookies: Vec<u64> = group
            .iter()
            .map(|&i| {
                let p = &plan.probes[i];
                if p.program == Program::CountCall {
                    p.cookie + id_base as u64
                } else {
                    p.cookie
                }
            })
            .collect();
        if let Some(guardian) = &self.guardian {
            match guardian.open_multi(prog, target, &offsets, &cookies, pid) {
                Ok(o) => {
                    // detector's duplicate keeps the probes in if the guardian dies.
                    return Ok(Some(Link {
                        multi: true,
                        link: Some(o.event),
                        event: Event::Guarded {
                            id: o.id,
                            guardian: guardian.clone(),
                        },
                    }));
                }
                Err(Some(e)) => return Err(format!("creating a uprobe_multi link: {e}")),
                Err(None) => {} // The guardian is gone: on our own.
            }
        }
        let link = uprobe::link_multi(prog, target, &offsets, &cookies, pid)
            .map_err(|e| format!("creating a uprobe_multi link: {e}"))?;
        Ok(Some(Link {
            multi: true,
            link: Some(link),
            event: Event::None,
        }))
    }

    fn attach_probe(
        &mut self,
        probe: &PlannedProbe,
        target: &Path,
        pid: Option<u32>,
        id_base: u32,
    ) -> Result<Link, String> {
        let cookie = if probe.program == Program::CountCall {
            probe.cookie + id_base as u64
        } else {
            probe.cookie
        };
        let (owner, event) = self.open_uprobe(target, probe.file_offset, pid)?;
        // From here on, dropping `unlinked` removes the uprobe again.
        let mut unlinked = Link {
            multi: false,
            link: None,
            event: owner,
        };
        let prog = self
            .program(probe.program)
            .fd()
            .map_err(|e| format!("{e:#}"))?
            .as_fd();
        let link = uprobe::link(prog, event.as_fd(), cookie)
            .map_err(|e| format!("linking {} to the uprobe: {e}", probe.program.name()))?;
        unlinked.link = Some(link);
        Ok(unlinked)
    }

    /// Creates the uprobe, through the guardian when there is one. Returns who owns it
    /// and a descriptor of it to link the program to.
    fn open_uprobe(
        &self,
        target: &Path,
        offset: u64,
        pid: Option<u32>,
    ) -> Result<(Event, OwnedFd), String> {
        let failed = |e: std::io::Error| format!("creating the uprobe (perf_event_open): {e}");
        if let Some(guardian) = &self.guardian {
            match guardian.open(target, offset, pid) {
                Ok(o) => {
                    let event = Event::Guarded {
                        id: o.id,
                        guardian: guardian.clone(),
                    };
                    return Ok((event, o.event));
                }
                Err(Some(e)) => return Err(failed(e)),
                Err(None) => {} // The guardian is gone: on our own.
            }
        }
        let own = uprobe::open(target, offset, pid).map_err(failed)?;
        let dup = own.try_clone().map_err(failed)?;
        Ok((Event::Own { _event: own }, dup))
    }

    /// Re-attaches probe `index` of `attached` (one the duty cycle detached); true when
    /// it is live afterwards.
    pub fn reattach(&mut self, plan: &Plan, attached: &mut AttachedPlan, index: usize) -> bool {
        let (Some(probe), Some(slot)) = (plan.probes.get(index), attached.links.get(index)) else {
            return false;
        };
        if slot.is_some() {
            return true;
        }
        let target = attached.target.clone();
        match self.attach_probe(probe, &target, attached.pid, attached.id_base) {
            Ok(link) => {
                attached.links[index] = Some(Arc::new(link));
                true
            }
            Err(e) => {
                log::warn!("re-attaching {}: {e}", probe.symbol);
                false
            }
        }
    }

    /// Re-attaches the probes `indexes` of `attached` (a duty cycle unit the cycle
    /// detached) in one step where the kernel allows it; true when any is live after.
    pub fn reattach_unit(
        &mut self,
        plan: &Plan,
        attached: &mut AttachedPlan,
        indexes: &[usize],
    ) -> bool {
        let off: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&i| {
                i < plan.probes.len() && attached.links.get(i).is_some_and(Option::is_none)
            })
            .collect();
        if !off.is_empty() {
            let (_, failures) = self.attach_group(plan, attached, &off);
            for (symbol, e) in failures {
                log::warn!("re-attaching {symbol}: {e}");
            }
        }
        indexes.iter().any(|&i| Self::is_live(attached, i))
    }

    /// Detaches probe `index` of `attached` without waiting (see
    /// [`Probes::detach_unit_later`]).
    pub fn detach_later(&mut self, attached: &mut AttachedPlan, index: usize) {
        self.detach_unit_later(attached, &[index]);
    }

    /// Detaches the probes `indexes` of `attached` (a duty cycle unit) without
    /// waiting: the kernel removes the breakpoints at once, then waits for grace
    /// periods, which a background thread sits out. One step for a unit attached
    /// through a uprobe_multi link; one probe after another otherwise.
    pub fn detach_unit_later(&mut self, attached: &mut AttachedPlan, indexes: &[usize]) {
        let links: Vec<Arc<Link>> = indexes
            .iter()
            .filter_map(|&i| attached.links.get_mut(i).and_then(Option::take))
            .collect();
        if !links.is_empty() {
            self.detacher.release_later(links);
        }
    }

    /// Pauses (`false`) or resumes counting by call probe `call_id` (the id base
    /// included), whether or not it is linked: a map update, so it takes effect at a
    /// moment the duty cycle knows, unlike an unlink (measured 17-64 ms with other
    /// BPF detaches on the host, the program counting all along). False when the
    /// kernel refused (the map is full); counting is then left as it was.
    pub fn set_counting(&mut self, call_id: u32, on: bool) -> bool {
        let Some(m) = self.ebpf.map_mut("PAUSED") else {
            return false;
        };
        let Ok(mut paused) = aya::maps::HashMap::<&mut MapData, u32, u8>::try_from(m) else {
            return false;
        };
        let done = if on {
            paused.get(&call_id, 0).is_err() || paused.remove(&call_id).is_ok()
        } else {
            paused.insert(call_id, 1, 0).is_ok()
        };
        // The programs look at `PAUSED` only while it holds something: its size, after
        // the change (a pause takes effect once both are written).
        let n = paused.keys().map_while(Result::ok).count() as u32;
        let count_set = self
            .ebpf
            .map_mut("PAUSED_COUNT")
            .and_then(|m| aya::maps::Array::<&mut MapData, u32>::try_from(m).ok())
            .is_some_and(|mut a| a.set(0, n, 0).is_ok());
        let done = done && count_set;
        if !done {
            log::warn!(
                "could not {} counting by probe {call_id}",
                if on { "resume" } else { "pause" }
            );
        }
        done
    }

    /// Hits of call probe `call_id` (the id base included) so far, from its slot in the
    /// kernel's `HITS` counters: one lookup, cheap enough to make at every wake.
    pub fn hits_of(&self, call_id: u32) -> Option<u64> {
        let m = self.ebpf.map("HITS")?;
        let hits = PerCpuArray::<&MapData, u64>::try_from(m).ok()?;
        let v = hits.get(&(call_id % HIT_SLOTS), 0).ok()?;
        Some(v.iter().sum())
    }

    /// The background detacher's state: how long a detach takes, how many are behind.
    pub fn detacher(&self) -> &Detacher {
        &self.detacher
    }

    /// Whether the probe guardian runs (see `guardian`): without it, a SIGKILL of
    /// detector at the wrong moment can leave a breakpoint in a target.
    pub fn guardian_running(&self) -> bool {
        self.guardian.as_ref().is_some_and(|g| g.is_running())
    }

    /// Whether probe `index` of `attached` is live.
    pub fn is_live(attached: &AttachedPlan, index: usize) -> bool {
        attached.links.get(index).is_some_and(Option::is_some)
    }

    /// Detaches the probes of one plan, and waits until the kernel is done. Each
    /// unregistration waits for RCU grace periods, so they run side by side.
    pub fn detach(&mut self, plan: AttachedPlan) {
        self.detach_many(std::iter::once(plan));
    }

    /// Detaches the probes of several plans at once (see [`Probes::detach`]).
    pub fn detach_many(&mut self, plans: impl IntoIterator<Item = AttachedPlan>) {
        release_all(plans.into_iter().flat_map(|a| a.links).flatten().collect());
    }

    /// Drops every kernel-side entry of processes that are gone, so the maps do not
    /// fill up with the dead (pids are reused).
    pub fn forget(&mut self, gone: &HashSet<u32>) {
        if gone.is_empty() {
            return;
        }
        for name in ["CALLS", "CALLS_UNSITED"] {
            if let Some(m) = self.ebpf.map_mut(name) {
                if let Ok(mut calls) = PerCpuHashMap::<&mut MapData, CallKey, u64>::try_from(m) {
                    let dead: Vec<CallKey> = calls
                        .keys()
                        .map_while(Result::ok)
                        .filter(|k| gone.contains(&k.tgid))
                        .collect();
                    for k in dead {
                        let _ = calls.remove(&k);
                    }
                }
            }
        }
        if let Some(m) = self.ebpf.map_mut("STW") {
            if let Ok(mut stw) = aya::maps::HashMap::<&mut MapData, StwKey, StwStats>::try_from(m) {
                let dead: Vec<StwKey> = stw
                    .keys()
                    .map_while(Result::ok)
                    .filter(|k| gone.contains(&k.tgid))
                    .collect();
                for k in dead {
                    let _ = stw.remove(&k);
                }
            }
        }
        if let Some(m) = self.ebpf.map_mut("STACKS") {
            if let Ok(mut stacks) = aya::maps::HashMap::<&mut MapData, StackKey, Stack>::try_from(m)
            {
                let dead: Vec<StackKey> = stacks
                    .keys()
                    .map_while(Result::ok)
                    .filter(|k| gone.contains(&k.tgid))
                    .collect();
                for k in dead {
                    let _ = stacks.remove(&k);
                }
            }
        }
        Arc::make_mut(&mut self.stacks).retain(|k, _| !gone.contains(&k.tgid));
        if let Some(m) = self.ebpf.map_mut("STW_OPEN") {
            if let Ok(mut h) = aya::maps::HashMap::<&mut MapData, u32, StwOpen>::try_from(m) {
                for pid in gone {
                    let _ = h.remove(pid);
                }
            }
        }
        if let Some(m) = self.ebpf.map_mut("FORCED_GC") {
            if let Ok(mut h) = aya::maps::HashMap::<&mut MapData, u32, u64>::try_from(m) {
                for pid in gone {
                    let _ = h.remove(pid);
                }
            }
        }
    }
}

/// What [`release_all`] measured.
pub(super) struct Released {
    /// From the call until the kernel was done with every link.
    pub took: Duration,
    /// How long the breakpoints stayed in the target after the call, as far as can be
    /// told: for uprobe_multi links, the wait for the guardian plus the removal itself
    /// (the kernel removes every breakpoint of a link before its grace periods; see
    /// [`MULTI_REMOVAL`]); otherwise all of `took` (each uprobe's breakpoint goes
    /// with its own unregistration, behind the others' grace periods).
    pub tail: Duration,
}

/// The time the kernel takes to remove the breakpoints of a uprobe_multi link, from
/// the start of the link's release: `bpf_uprobe_multi_link_release` unregisters every
/// uprobe without waiting (each a page write in each process), then waits once for the
/// grace periods. Measured by reading the probed byte of a target at 100k calls/s
/// through /proc/PID/mem: the int3 went within 1 ms of the release's start (6.18).
pub(super) const MULTI_REMOVAL: Duration = Duration::from_millis(2);

/// Drops `links` and returns when the kernel is done with them. Each last close of
/// a uprobe or link waits for grace periods: detector's side of every link is closed
/// first, then the guardian closes all it holds for them side by side, so that the
/// waits overlap.
pub(super) fn release_all(links: Vec<Arc<Link>>) -> Released {
    let t0 = Instant::now();
    let n = links.len();
    // Shared links (one uprobe_multi link per group) come out once, with their last
    // reference.
    let links: Vec<Link> = links.into_iter().filter_map(Arc::into_inner).collect();
    let all_multi = !links.is_empty() && links.iter().all(|l| l.multi);
    let mut guarded: Vec<(u64, Arc<Guardian>)> = Vec::new();
    for link in links {
        if let Some(g) = link.into_guarded() {
            guarded.push(g);
        }
    }
    let mut queued = Duration::ZERO;
    if let Some((_, guardian)) = guarded.first() {
        let guardian = guardian.clone();
        let ids: Vec<u64> = guarded.iter().map(|(id, _)| *id).collect();
        queued = guardian.close_many(&ids);
    }
    let took = t0.elapsed();
    if n > 0 {
        log::debug!("detached {n} probes in {took:?}");
    }
    Released {
        took,
        tail: if all_multi {
            (queued + MULTI_REMOVAL).min(took.max(MULTI_REMOVAL))
        } else {
            took
        },
    }
}

/// Ids of every eBPF program loaded in the kernel right now (all processes).
pub fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// RLIMIT_MEMLOCK only matters on kernels that charge BPF memory to it (before 5.11);
/// newer ones account by cgroup, so failing to raise it is not an error.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with cgroup BPF accounting");
    }
}

impl Snapshot {
    /// What happened after `baseline`: counters minus the baseline's. The maximum pause
    /// cannot be subtracted and stays the one since attach.
    pub fn since(&self, baseline: &Snapshot) -> Snapshot {
        let calls = self
            .calls
            .iter()
            .map(|(k, v)| (*k, v.saturating_sub(*baseline.calls.get(k).unwrap_or(&0))))
            .filter(|(_, v)| *v > 0)
            .collect();
        let stw = self
            .stw
            .iter()
            .filter_map(|(k, s)| {
                let Some(b) = baseline.stw.get(k) else {
                    return Some((*k, *s));
                };
                let mut d = *s;
                d.count = s.count.saturating_sub(b.count);
                d.total_ns = s.total_ns.saturating_sub(b.total_ns);
                for (x, y) in d.hist.iter_mut().zip(b.hist.iter()) {
                    *x = x.saturating_sub(*y);
                }
                (d.count > 0).then_some((*k, d))
            })
            .collect();
        let mut errors = self.errors;
        for (e, b) in errors.iter_mut().zip(baseline.errors.iter()) {
            *e = e.saturating_sub(*b);
        }
        Snapshot {
            calls,
            stw,
            errors,
            stacks: self.stacks.clone(),
        }
    }
}

impl Probes {
    /// Reads every map, summing the per-CPU slots; reads the stacks not seen before.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut snap = Snapshot::default();
        if let Some(m) = self.ebpf.map("CALLS") {
            if let Ok(calls) = PerCpuHashMap::<&MapData, CallKey, u64>::try_from(m) {
                for (k, v) in calls.iter().map_while(Result::ok) {
                    snap.calls.insert(k, v.iter().sum());
                }
            }
        }
        // Calls counted without their site (CALLS was full): their keys' caller is
        // UNSITED_CALLER, which no CALLS key has, so they merge without clashing.
        if let Some(m) = self.ebpf.map("CALLS_UNSITED") {
            if let Ok(calls) = PerCpuHashMap::<&MapData, CallKey, u64>::try_from(m) {
                for (k, v) in calls.iter().map_while(Result::ok) {
                    snap.calls.insert(k, v.iter().sum());
                }
            }
        }
        let new: Vec<StackKey> = snap
            .calls
            .keys()
            .filter(|k| k.stack != 0)
            .map(|k| StackKey {
                tgid: k.tgid,
                _pad: 0,
                hash: k.stack,
            })
            .filter(|k| !self.stacks.contains_key(k))
            .collect();
        if !new.is_empty() {
            if let Some(m) = self.ebpf.map("STACKS") {
                if let Ok(map) = aya::maps::HashMap::<&MapData, StackKey, Stack>::try_from(m) {
                    let cache = Arc::make_mut(&mut self.stacks);
                    for k in new {
                        if let Ok(s) = map.get(&k, 0) {
                            cache.insert(k, s);
                        }
                    }
                }
            }
        }
        snap.stacks = self.stacks.clone();
        if let Some(m) = self.ebpf.map("STW") {
            if let Ok(stw) = aya::maps::HashMap::<&MapData, StwKey, StwStats>::try_from(m) {
                for (k, s) in stw.iter().map_while(Result::ok) {
                    snap.stw.insert(k, s);
                }
            }
        }
        if let Some(m) = self.ebpf.map("ERRORS") {
            if let Ok(errs) = PerCpuArray::<&MapData, u64>::try_from(m) {
                for (i, slot) in snap.errors.iter_mut().enumerate() {
                    if let Ok(v) = errs.get(&(i as u32), 0) {
                        *slot = v.iter().sum();
                    }
                }
            }
        }
        snap
    }
}

impl From<ProbeError> for Failure {
    fn from(e: ProbeError) -> Self {
        let code = match &e {
            ProbeError::Privileges { .. } => Code::NoPrivileges,
            _ => Code::BpfFailed,
        };
        Failure::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_map_sizes;

    #[test]
    fn map_sizes_knob() {
        assert_eq!(
            parse_map_sizes("CALLS=4, stacks=2,").unwrap(),
            vec![("CALLS", 4), ("STACKS", 2)]
        );
        assert!(parse_map_sizes("CALLS")
            .unwrap_err()
            .contains("MAP=ENTRIES"));
        assert!(parse_map_sizes("NOPE=3").unwrap_err().contains("no map"));
        assert!(parse_map_sizes("CALLS=0").unwrap_err().contains("positive"));
    }
}
