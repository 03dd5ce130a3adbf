//! The process under diagnosis: its executable (through `/proc/PID/exe`, which also
//! reaches binaries inside containers and deleted ones) and where it is loaded.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use serde::{Deserialize, Serialize};

use crate::{
    exit::{Code, Failure},
    gobin::{owner::Owner, trace_multiplexer, AnalysisError, GoBinary},
};

#[derive(thiserror::Error, Debug)]
pub enum TargetError {
    #[error(
        "no process with pid {0}; check the pid (`pgrep -a NAME`) and that it is still running"
    )]
    NoSuchProcess(u32),
    #[error("cannot read /proc/{pid}/exe: {source}; run detector as root (or with CAP_SYS_PTRACE) to inspect other users' processes")]
    Exe {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} ({exe}): {source}")]
    Analysis {
        pid: u32,
        exe: String,
        #[source]
        source: AnalysisError,
    },
}

pub struct Target {
    pub pid: u32,
    /// The executable's path as the process sees it (display only).
    pub exe_display: String,
    /// Path the kernel and we open: `/proc/PID/exe`.
    pub exe_path: PathBuf,
    /// Shared by every process running the same file (see `watch`).
    pub binary: Arc<GoBinary>,
    /// Runtime address minus file virtual address (non-zero for PIE).
    pub load_bias: u64,
    /// File virtual address of `runtime.prof.hz` (the CPU profiling rate in effect).
    pub cpu_profile_hz_addr: Option<u64>,
    /// File virtual address of `runtime/trace.tracing` (programs with a flight recorder).
    pub trace_multiplexer_addr: Option<u64>,
    /// (device, inode) of the file the process ran when opened: a process that
    /// execs another program is no longer this target (its memory is not laid out
    /// as the binary says any more), though its pid lives on.
    exe_id: Option<(u64, u64)>,
    /// Call sites already symbolised, shared by every process of the binary (`watch`
    /// summarises every process, and processes of one binary share most stacks).
    frames: Arc<FrameCache>,
    /// /proc/PID/stat and /proc/PID/mem, opened at first use and kept: `watch` reads
    /// both for every process at every tick. They stay bound to this process: one
    /// that later reuses the pid is not read through them.
    stat: OnceLock<Option<fs::File>>,
    mem: OnceLock<Option<fs::File>>,
}

/// Symbolised call sites of one binary, by file address.
#[derive(Default)]
pub struct FrameCache(Mutex<HashMap<u64, Arc<[Frame]>>>);

/// A call site's function, file and line.
pub type CallSiteName = (String, String, u32);

/// One logical frame of a calling stack: a function (inlined or not), the source
/// position in it, and who owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub owner: Owner,
    /// The module of program code, when the build info names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Entries kept in a binary's frame cache (a bound against hostile churn).
const MAX_CACHED_FRAMES: usize = 16_384;

impl Target {
    pub fn open(pid: u32) -> Result<Target, TargetError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(TargetError::NoSuchProcess(pid));
        }
        let exe_path = proc_dir.join("exe");
        let exe_display = fs::read_link(&exe_path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => TargetError::NoSuchProcess(pid),
                _ => TargetError::Exe { pid, source },
            })?
            .display()
            .to_string();
        let binary = GoBinary::open(&exe_path).map_err(|source| TargetError::Analysis {
            pid,
            exe: exe_display.clone(),
            source,
        })?;
        Ok(Target::with_binary(pid, exe_display, Arc::new(binary)))
    }

    /// A process running an already analysed binary.
    pub fn with_binary(pid: u32, exe_display: String, binary: Arc<GoBinary>) -> Target {
        Target::with_frames(pid, exe_display, binary, Arc::default())
    }

    /// A process running an already analysed binary, sharing the frames already
    /// symbolised for other processes of the binary.
    pub fn with_frames(
        pid: u32,
        exe_display: String,
        binary: Arc<GoBinary>,
        frames: Arc<FrameCache>,
    ) -> Target {
        let exe_path = PathBuf::from(format!("/proc/{pid}/exe"));
        let load_bias = if binary.info().pie {
            load_bias(pid, &exe_path).unwrap_or(0)
        } else {
            0
        };
        Target {
            pid,
            exe_display,
            exe_id: file_id(&exe_path),
            exe_path,
            cpu_profile_hz_addr: binary.cpu_profile_hz_addr(),
            trace_multiplexer_addr: binary.trace_multiplexer_addr(),
            binary,
            load_bias,
            frames,
            stat: OnceLock::new(),
            mem: OnceLock::new(),
        }
    }

    /// Whether the process still runs the program it ran when opened (false once it
    /// has exec'd another one; a binary deleted or replaced on disk is still run).
    pub fn runs_same_program(&self) -> bool {
        self.exe_id.is_none() || file_id(&self.exe_path) == self.exe_id
    }

    /// The function, file and line of the call whose return address is `caller` (a
    /// runtime address).
    pub fn call_site(&self, caller: u64) -> CallSiteName {
        let frames = self.frames(caller);
        match frames.last() {
            Some(f) => (f.function.clone(), f.file.clone(), f.line),
            None => (format!("{caller:#x}"), String::new(), 0),
        }
    }

    /// The logical frames of the call whose return address is `ret` (a runtime
    /// address), innermost first: the functions inlined at the call, then the
    /// function that holds it, with its own line (see [`GoBinary::frames_at`]).
    /// Code outside every Go function (C, through cgo) is one foreign frame named by
    /// its address.
    pub fn frames(&self, ret: u64) -> Arc<[Frame]> {
        // The return address is just past the CALL: look up the byte before it.
        let pc = self.to_file_vaddr(ret).wrapping_sub(1);
        let mut cache = self.frames.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(&pc) {
            return f.clone();
        }
        let mut found = self.binary.frames_at(pc);
        let foreign = found.is_empty();
        if foreign {
            found.push(crate::gobin::SourceFrame {
                function: format!("{ret:#x}"),
                file: String::new(),
                line: 0,
            });
        }
        let frames: Arc<[Frame]> = found
            .into_iter()
            .map(|f| {
                let owned = self.binary.owner_of(&f.function);
                Frame {
                    owner: owned.owner,
                    module: owned.module.map(str::to_owned),
                    function: f.function,
                    file: f.file,
                    line: f.line,
                }
            })
            .collect();
        // A foreign frame is named by its runtime address: not shared.
        if !foreign {
            if cache.len() >= MAX_CACHED_FRAMES {
                cache.clear();
            }
            cache.insert(pc, frames.clone());
        }
        frames
    }

    /// Reads `len` bytes of the live process at file virtual address `vaddr`
    /// (through /proc/PID/mem: needs the same privileges as attaching).
    pub fn read_memory(&self, vaddr: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = self
            .mem
            .get_or_init(|| fs::File::open(format!("/proc/{}/mem", self.pid)).ok())
            .as_ref()?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, vaddr.wrapping_add(self.load_bias))
            .ok()?;
        Some(buf)
    }

    /// The CPU profiling rate in effect right now (`runtime.prof.hz`; 0 when no CPU
    /// profile runs), read from the process's memory.
    pub fn cpu_profile_hz(&self) -> Option<i32> {
        let b = self.read_memory(self.cpu_profile_hz_addr?, 4)?;
        Some(i32::from_le_bytes(b.try_into().ok()?))
    }

    /// Who the execution tracer runs for right now (`trace.Start`, a flight recorder),
    /// read from the process's memory; None without a flight recorder in the binary.
    pub fn trace_subscribers(&self) -> Option<trace_multiplexer::Subscribers> {
        let b = self.read_memory(self.trace_multiplexer_addr?, trace_multiplexer::SIZE)?;
        trace_multiplexer::parse(&b)
    }

    /// CPU time the process has used so far (see [`cpu_seconds`]), read through a
    /// descriptor kept open.
    pub fn cpu_seconds(&self) -> Option<f64> {
        use std::os::unix::fs::FileExt;
        let f = self
            .stat
            .get_or_init(|| fs::File::open(format!("/proc/{}/stat", self.pid)).ok())
            .as_ref()?;
        // Read from offset 0 each time: procfs renders the file anew.
        let mut buf = [0u8; 4096];
        let n = f.read_at(&mut buf, 0).ok()?;
        cpu_from_stat(std::str::from_utf8(&buf[..n]).ok()?)
    }

    /// True while the process exists, is not a zombie and still runs its program.
    pub fn alive(&self) -> bool {
        is_alive(self.pid) && self.runs_same_program()
    }

    /// File virtual address of a runtime address in the target.
    pub fn to_file_vaddr(&self, runtime_addr: u64) -> u64 {
        runtime_addr.wrapping_sub(self.load_bias)
    }
}

/// CPU time the process has used so far (user + system, all threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_from_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime, in seconds, from the text of /proc/PID/stat.
fn cpu_from_stat(stat: &str) -> Option<f64> {
    // After "pid (comm)": field 3 is the state, 14 utime and 15 stime (clock ticks).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// (device, inode) of a file (through `/proc/PID/exe`: the running file, even when
/// deleted or replaced on disk).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// PIE load bias: the start of the executable's mapping at file offset 0 minus the
/// lowest PT_LOAD address of the file.
fn load_bias(pid: u32, exe: &Path) -> Option<u64> {
    use object::{Object, ObjectSegment};
    let ino = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(exe).ok()?.ino()
    };
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let start = maps.lines().find_map(|line| {
        // start-end perms offset dev inode path
        let mut f = line.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let _dev = f.next()?;
        let inode: u64 = f.next()?.parse().ok()?;
        if inode != ino || offset != 0 {
            return None;
        }
        u64::from_str_radix(range.split('-').next()?, 16).ok()
    })?;
    let f = fs::File::open(exe).ok()?;
    // SAFETY: read-only map of an executable; we only read program headers.
    let data = unsafe { memmap2::Mmap::map(&f) }.ok()?;
    let file = object::File::parse(&*data).ok()?;
    let lowest = file.segments().map(|s| s.address()).min()?;
    Some(start.wrapping_sub(lowest & !0xfff))
}

/// The exit code a binary that cannot be analysed ends `detector` with.
pub fn analysis_code(e: &AnalysisError) -> Code {
    match e {
        AnalysisError::NotGo => Code::NotGo,
        AnalysisError::UnsupportedGoVersion { .. } => Code::UnsupportedGoVersion,
        AnalysisError::Io { .. } => Code::Other,
        _ => Code::UnsupportedBinary,
    }
}

impl From<AnalysisError> for Failure {
    fn from(e: AnalysisError) -> Self {
        Failure::new(analysis_code(&e), e.to_string())
    }
}

impl From<TargetError> for Failure {
    fn from(e: TargetError) -> Self {
        let code = match &e {
            TargetError::NoSuchProcess(_) => Code::NoSuchProcess,
            TargetError::Exe { .. } => Code::NoPrivileges,
            TargetError::Analysis { source, .. } => analysis_code(source),
        };
        Failure::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Target::cpu_seconds` relies on: /proc/PID/stat read again at offset 0
    /// through the same descriptor is rendered anew.
    #[test]
    fn stat_read_again_through_a_kept_descriptor_moves_on() {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(format!("/proc/{}/stat", std::process::id())).unwrap();
        let read = || {
            let mut buf = [0u8; 4096];
            let n = f.read_at(&mut buf, 0).unwrap();
            cpu_from_stat(std::str::from_utf8(&buf[..n]).unwrap()).unwrap()
        };
        let before = read();
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            read() > before,
            "CPU time did not move after 300 ms of work"
        );
    }
}
