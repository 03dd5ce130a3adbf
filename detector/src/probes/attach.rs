//! Loads the eBPF object and attaches a [`Plan`]'s probes with aya. Dropping
//! [`Attached`] detaches every probe; if the agent dies, the kernel drops them with
//! its file descriptors, so nothing outlives the process.
use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::Path,
};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use detector_common::{errors, CallKey, StwKey, StwOpen, StwStats};

use super::plan::{Plan, Program};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-ebpf"));

#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    #[error("missing privileges: {missing}; run as root or grant CAP_BPF and CAP_PERFMON (e.g. `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep detector`)")]
    Privileges { missing: String },
    #[error("the kernel refused the eBPF programs: {0}; detector needs Linux 5.15+ with uprobe and BPF cookie support")]
    Load(String),
    #[error("no probe could be attached to {target}: {first_error}; check that the kernel supports uprobes (/sys/bus/event_source/devices/uprobe)")]
    NothingAttached { target: String, first_error: String },
}

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks the effective capabilities needed to load BPF and create uprobes.
pub fn check_privileges() -> Result<(), ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(ProbeError::Privileges {
        missing: missing.join(" and "),
    })
}

/// The loaded eBPF object: programs verified and loaded, maps shared by every probe
/// attached through it. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
}

/// The probes of one plan attached through [`Probes::attach_plan`].
#[derive(Debug, Default)]
pub struct AttachedPlan {
    links: Vec<(Program, UProbeLinkId)>,
    /// Probes attached.
    pub attached: usize,
    /// Probes that failed to attach: (symbol, error).
    pub failures: Vec<(String, String)>,
}

/// Loaded programs with one plan attached (what `diagnose` uses).
pub struct Attached {
    probes: Probes,
    /// Probes attached.
    pub attached: usize,
    /// Probes that failed to attach: (symbol, error).
    pub failures: Vec<(String, String)>,
}

/// What the kernel side has counted so far (cumulative since attach).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub calls: HashMap<CallKey, u64>,
    pub stw: HashMap<StwKey, StwStats>,
    pub errors: [u64; errors::COUNT as usize],
}

const PROGRAMS: [Program; 5] = [
    Program::CountCall,
    Program::StwReason,
    Program::StwStart,
    Program::StwEnd,
    Program::ForcedGcExit,
];

/// Loads the object, then attaches every planned probe to `target` (a path the kernel
/// can open: `/proc/PID/exe` reaches binaries inside containers and deleted ones),
/// for process `pid` only, or for every process running the file when `pid` is None.
pub fn attach(plan: &Plan, target: &Path, pid: Option<u32>) -> Result<Attached, ProbeError> {
    let mut probes = Probes::load()?;
    let a = probes.attach_plan(plan, target, pid, 0)?;
    Ok(Attached {
        probes,
        attached: a.attached,
        failures: a.failures,
    })
}

impl Probes {
    /// Loads and verifies every program (no probe attached yet).
    pub fn load() -> Result<Probes, ProbeError> {
        raise_memlock();
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| ProbeError::Load(format!("{e:#}")))?;
        for p in PROGRAMS {
            let prog: &mut UProbe = ebpf
                .program_mut(p.name())
                .ok_or_else(|| ProbeError::Load(format!("program {} missing", p.name())))?
                .try_into()
                .map_err(|e| ProbeError::Load(format!("{e:#}")))?;
            prog.load()
                .map_err(|e| ProbeError::Load(format!("{}: {e:#}", p.name())))?;
        }
        Ok(Probes { ebpf })
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
        let scope = match pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let mut out = AttachedPlan::default();
        for probe in &plan.probes {
            let cookie = if probe.program == Program::CountCall {
                probe.cookie + id_base as u64
            } else {
                probe.cookie
            };
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                cookie: Some(cookie),
            };
            match self.program(probe.program).attach(point, target, scope) {
                Ok(link) => {
                    out.links.push((probe.program, link));
                    out.attached += 1;
                }
                Err(e) => out
                    .failures
                    .push((probe.symbol.to_string(), format!("{e:#}"))),
            }
        }
        if out.attached == 0 && !plan.probes.is_empty() {
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

    /// Detaches the probes of one plan.
    pub fn detach(&mut self, plan: AttachedPlan) {
        for (p, link) in plan.links {
            if let Err(e) = self.program(p).detach(link) {
                log::warn!("detaching a {} probe: {e:#}", p.name());
            }
        }
    }

    /// Drops every kernel-side entry of processes that are gone, so the maps do not
    /// fill up with the dead (pids are reused).
    pub fn forget(&mut self, gone: &HashSet<u32>) {
        if gone.is_empty() {
            return;
        }
        if let Some(m) = self.ebpf.map_mut("CALLS") {
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
        Snapshot { calls, stw, errors }
    }
}

impl Attached {
    /// Reads every map, summing the per-CPU slots.
    pub fn snapshot(&self) -> Snapshot {
        self.probes.snapshot()
    }
}

impl Probes {
    /// Reads every map, summing the per-CPU slots.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        if let Some(m) = self.ebpf.map("CALLS") {
            if let Ok(calls) = PerCpuHashMap::<&MapData, CallKey, u64>::try_from(m) {
                for (k, v) in calls.iter().map_while(Result::ok) {
                    snap.calls.insert(k, v.iter().sum());
                }
            }
        }
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
