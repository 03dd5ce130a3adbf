//! The two kernel calls behind one probe, made directly rather than through aya so
//! that they can run in different processes (see `guardian`):
//! - [`open`] creates the uprobe as a perf event of the kernel's uprobe PMU. This is
//!   the call that writes the int3 into the target, and closing the last reference
//!   to its file is the call that removes it.
//! - [`link`] attaches a loaded eBPF program to that event with a BPF cookie, through
//!   a BPF link (Linux 5.15+). The link holds its own reference to the event.
//!
//! On Linux 6.6+ one call does both for many offsets at once: [`link_multi`] creates a
//! uprobe_multi link, which registers every uprobe itself and owns them; closing its
//! last reference unregisters them all, with one wait for the kernel's grace periods
//! instead of one per uprobe (Linux 6.12+ batches it).
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::OnceLock,
};

/// Where the kernel's uprobe PMU announces its perf type.
pub const PMU_TYPE_PATH: &str = "/sys/bus/event_source/devices/uprobe/type";

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1, 72 bytes): all a
/// uprobe needs; the kernel treats the fields after it as zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    /// Bit 0 asks for a uretprobe: never set (a uretprobe crashes Go programs).
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// `uprobe_path`: a pointer to the NUL-terminated path of the file to probe.
    config1: u64,
    /// `probe_offset`: the file offset of the probed instruction.
    config2: u64,
}

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// The uprobe PMU's perf type (read once).
fn pmu_type() -> io::Result<u32> {
    static TYPE: OnceLock<Result<u32, String>> = OnceLock::new();
    TYPE.get_or_init(|| {
        let text = std::fs::read_to_string(PMU_TYPE_PATH)
            .map_err(|e| format!("cannot read {PMU_TYPE_PATH}: {e}"))?;
        text.trim()
            .parse()
            .map_err(|_| format!("{PMU_TYPE_PATH} holds {:?}, not a number", text.trim()))
    })
    .clone()
    .map_err(io::Error::other)
}

/// Creates a uprobe on the instruction at file offset `offset` of `path`, firing for
/// process `pid` only, or for every process that maps the file when `pid` is None.
/// The kernel writes the breakpoint during this call.
pub fn open(path: &Path, offset: u64, pid: Option<u32>) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let attr = PerfEventAttr {
        type_: pmu_type()?,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config1: path.as_ptr() as u64,
        config2: offset,
        ..PerfEventAttr::default()
    };
    // One process: any CPU. Every process: perf needs a CPU; the uprobe still fires
    // on all of them (the program runs from the breakpoint handler, not the ring).
    let (pid, cpu) = match pid {
        Some(pid) => (pid as libc::pid_t, -1),
        None => (-1, 0),
    };
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares, and the path
    // it points to outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            pid,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` as BPF_LINK_CREATE reads it for a perf event target.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;

/// Attaches the loaded program `prog` to the uprobe `event`, with `cookie` readable
/// through `bpf_get_attach_cookie`. Closing the returned link detaches the program.
pub fn link(prog: BorrowedFd<'_>, event: BorrowedFd<'_>, cookie: u64) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: event.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: cookie,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as in `open`.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` as BPF_LINK_CREATE reads it for a uprobe_multi link.
#[repr(C)]
#[derive(Default)]
struct MultiLinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

/// `BPF_TRACE_UPROBE_MULTI` in `enum bpf_attach_type`.
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;

/// Attaches the program `prog` (loaded with expected attach type
/// [`BPF_TRACE_UPROBE_MULTI`]) at every file offset of `path` in `offsets`, each with
/// its cookie, for process `pid` only (every process when None). The kernel writes
/// every breakpoint during this call; closing the link's last reference removes them
/// all. Errors: EINVAL, EOPNOTSUPP or ENOSYS on kernels without uprobe_multi links.
pub fn link_multi(
    prog: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    cookies: &[u64],
    pid: Option<u32>,
) -> io::Result<OwnedFd> {
    if offsets.len() != cookies.len() || offsets.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "one cookie per offset, and at least one offset",
        ));
    }
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let attr = MultiLinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: offsets.len() as u32,
        pid: pid.unwrap_or(0),
        ..MultiLinkCreateAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the path and the
    // arrays it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const MultiLinkCreateAttr,
            std::mem::size_of::<MultiLinkCreateAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as in `open`.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `e` says the kernel has no uprobe_multi links (as opposed to a failure of
/// this attach): the caller then uses [`open`] and [`link`].
pub fn multi_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::E2BIG)
    )
}
