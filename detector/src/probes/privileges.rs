//! The privileges detector needs (BPF and uprobes) and those `watch` can do without,
//! read from this process's effective capability set.
use super::attach::ProbeError;

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Checks the effective capabilities needed to load BPF and create uprobes.
pub fn check_privileges() -> Result<(), ProbeError> {
    let eff = effective_caps();
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

/// What `watch` can do without, but then sees less: a warning naming what is lost.
pub fn watch_privilege_warning() -> Option<String> {
    let eff = effective_caps();
    let mut lost = Vec::new();
    if eff & (1u64 << CAP_SYS_PTRACE) == 0 {
        lost.push("CAP_SYS_PTRACE (to open other users' /proc/PID/exe and read runtime.prof.hz)");
    }
    if eff & (1u64 << CAP_DAC_READ_SEARCH) == 0 {
        lost.push("CAP_DAC_READ_SEARCH (to read binaries other users cannot)");
    }
    (!lost.is_empty()).then(|| {
        format!(
            "without {}, processes of other users are skipped; grant them (deploy/ shows how) to watch every Go process",
            lost.join(" and ")
        )
    })
}
