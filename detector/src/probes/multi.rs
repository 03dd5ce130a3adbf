//! The uprobe_multi path (Linux 6.6+): one BPF link attaches a program at many
//! offsets, and closing it detaches them all with one wait for the kernel's grace
//! periods (batched since 6.12) instead of one per uprobe. A cycled unit goes live
//! and off in one step, and `diagnose` stops in a fraction of the time.
//!
//! Such a link takes programs loaded with the expected attach type
//! BPF_TRACE_UPROBE_MULTI, which aya 0.14 never sets for a uprobe program, and the
//! kernel refuses them on perf-event links. So a second copy of each program is loaded
//! here from the same object: aya-obj (aya's own parser) relocates it against the
//! maps aya created, so both copies share every map, and BPF_PROG_LOAD sets the
//! attach type. Whether the kernel has the links is checked once, by linking the copy
//! of one program to a scratch file nobody maps.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{maps::Map, Ebpf};

use super::{plan::Program, uprobe};

/// Which kernel calls attach and detach probes (shown in `inspect` and `diagnose`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachPath {
    /// One uprobe_multi link per program and probe id: attached and detached in one
    /// step each.
    UprobeMulti,
    /// One perf event and one BPF link per uprobe (kernels before 6.6, or forced).
    #[default]
    PerUprobe,
}

impl AttachPath {
    pub fn describe(self) -> &'static str {
        match self {
            AttachPath::UprobeMulti => "uprobe_multi links",
            AttachPath::PerUprobe => "a perf event per uprobe",
        }
    }
}

/// Set to `per-uprobe` to force the perf-event path on kernels that have uprobe_multi
/// links (for tests and benchmarks of the fallback).
pub const FORCE_ENV: &str = "DETECTOR_ATTACH_PATH";

/// Whether the environment forces the per-uprobe path.
pub fn forced_per_uprobe() -> bool {
    std::env::var(FORCE_ENV).is_ok_and(|v| v == "per-uprobe")
}

/// The uprobe_multi copies of the programs, by program.
pub struct MultiPrograms {
    fds: HashMap<Program, OwnedFd>,
}

impl MultiPrograms {
    pub fn fd(&self, p: Program) -> Option<BorrowedFd<'_>> {
        self.fds.get(&p).map(|f| f.as_fd())
    }

    /// Loads a uprobe_multi copy of each of `programs` from `object` (the object `ebpf`
    /// was loaded from), sharing `ebpf`'s maps, and checks that the kernel links it.
    /// None (and why, for the log) when this kernel cannot.
    pub fn load(ebpf: &Ebpf, object: &[u8], programs: &[Program]) -> Result<Self, String> {
        let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("{e}"))?;
        let mut fds: Vec<(String, i32)> = Vec::new();
        for (name, map) in ebpf.maps() {
            fds.push((name.to_string(), map_fd(map)?));
        }
        let maps: Vec<(&str, i32, &aya_obj::Map)> = fds
            .iter()
            .filter_map(|(name, fd)| Some((name.as_str(), *fd, obj.maps.get(name)?)))
            .collect();
        // The borrow of `obj.maps` ends with the relocation, on a copy of it.
        let maps_copy: Vec<(String, i32, aya_obj::Map)> = maps
            .into_iter()
            .map(|(n, fd, m)| (n.to_string(), fd, m.clone()))
            .collect();
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(
            maps_copy.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text,
        )
        .map_err(|e| format!("{e}"))?;
        obj.relocate_calls(&text).map_err(|e| format!("{e}"))?;
        let mut out = HashMap::new();
        for &p in programs {
            let prog = obj
                .programs
                .get(p.name())
                .ok_or_else(|| format!("program {} missing", p.name()))?;
            let f = obj
                .functions
                .get(&prog.function_key())
                .ok_or_else(|| format!("program {}'s code missing", p.name()))?;
            let fd = prog_load(p.name(), &f.instructions)
                .map_err(|e| format!("loading {} for uprobe_multi: {e}", p.name()))?;
            out.insert(p, fd);
        }
        let me = MultiPrograms { fds: out };
        let probe = programs
            .first()
            .and_then(|&p| me.fd(p))
            .ok_or("no program")?;
        kernel_links(probe).map_err(|e| format!("the kernel refused a uprobe_multi link: {e}"))?;
        Ok(me)
    }
}

/// The path `diagnose` and `watch` would take on this kernel, without loading
/// detector's programs (for `inspect`): a two-instruction program is loaded and the
/// kernel asked whether it would link it ([`kernel_takes_links`]). None when that cannot
/// be told (no privileges for BPF).
pub fn kernel_path() -> Option<AttachPath> {
    if forced_per_uprobe() {
        return Some(AttachPath::PerUprobe);
    }
    // r0 = 0; exit
    let code = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let insns = aya_obj::copy_instructions(&code).ok()?;
    // A kernel without uprobe_multi links still loads the program (the attach type
    // is not checked for uprobe programs before it), and refuses the link; a refused
    // load is a lack of privileges.
    match prog_load("detector_check", &insns) {
        Ok(prog) => Some(if kernel_takes_links(prog.as_fd()) {
            AttachPath::UprobeMulti
        } else {
            AttachPath::PerUprobe
        }),
        Err(e) => {
            log::debug!("cannot load a BPF program to check the kernel: {e}");
            None
        }
    }
}

/// A map's descriptor, for the relocation (every map type the object declares).
fn map_fd(map: &Map) -> Result<i32, String> {
    let data = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::StackTraceMap(m)
        | Map::RingBuf(m)
        | Map::PerfEventArray(m) => m,
        _ => return Err("a map of a type the uprobe_multi copy does not expect".into()),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_KPROBE: u32 = 2;

fn prog_load(name: &str, insns: &[aya_obj::generated::bpf_insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: uprobe::BPF_TRACE_UPROBE_MULTI,
        ..ProgLoadAttr::default()
    };
    let load = |attr: &ProgLoadAttr| {
        // SAFETY: a valid bpf_attr prefix of the size passed; the instructions, the
        // license and the log buffer outlive the call.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>() as u32,
            )
        }
    };
    let fd = load(&attr);
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor to us alone.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let first = io::Error::last_os_error();
    // Again with the verifier's log, for the error message.
    let mut log = vec![0u8; 64 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let fd = load(&attr);
    if fd >= 0 {
        // SAFETY: as above.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let text = String::from_utf8_lossy(&log);
    let tail: String = text
        .trim_end_matches('\0')
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    Err(io::Error::new(first.kind(), format!("{first} ({tail})")))
}

/// Links `prog` at offset 0 of an empty scratch file that nobody maps (so no
/// breakpoint is written anywhere), then closes the link: Ok when the kernel has
/// uprobe_multi links.
fn kernel_links(prog: BorrowedFd<'_>) -> io::Result<()> {
    let name = CString::new("detector-uprobe-multi-check").expect("no NUL");
    // SAFETY: plain memfd_create; the descriptor is ours alone.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    // One page of `int3`s: a regular file the offset lies in.
    let page = [0xccu8; 4096];
    // SAFETY: writing a local buffer to our own descriptor.
    if unsafe { libc::write(file.as_raw_fd(), page.as_ptr().cast(), page.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // Our own pid: even a mapping would not get a breakpoint for another process.
    let link = uprobe::link_multi(prog, &path, &[0], &[0], Some(std::process::id()))?;
    // Closing a link waits for a grace period (tens of ms): not on the attach's path.
    std::thread::spawn(move || drop(link));
    Ok(())
}

/// Whether the kernel takes uprobe_multi links for `prog`, asked without creating one
/// (closing a link waits for a grace period, which `inspect` would pay at its exit):
/// a link to a file that does not exist fails with ENOENT only in a kernel that got as
/// far as looking the path up, i.e. that has uprobe_multi links; an older kernel
/// refuses the attach type (EINVAL), one without uprobes says EOPNOTSUPP.
fn kernel_takes_links(prog: BorrowedFd<'_>) -> bool {
    let path = Path::new("/nonexistent/detector-uprobe-multi-check");
    match uprobe::link_multi(prog, path, &[0], &[0], Some(std::process::id())) {
        Ok(link) => {
            std::thread::spawn(move || drop(link));
            true
        }
        Err(e) => e.raw_os_error() == Some(libc::ENOENT),
    }
}
