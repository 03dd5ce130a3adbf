//! Finding the processes to watch: a scan of /proc. Each process is identified by
//! its executable's device and inode (`stat /proc/PID/exe`), which works across mount
//! namespaces (containers) and tells a binary replaced on disk from the old one.
use std::{collections::HashMap, fs, os::unix::fs::MetadataExt};

/// A binary on disk: device and inode of the file a process executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryKey {
    pub dev: u64,
    pub ino: u64,
}

/// One running process, as seen by a scan.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub key: BinaryKey,
    /// The executable path as the process sees it (inside its container).
    pub exe: String,
    /// Start time in clock ticks since boot: tells a reused pid from the old process.
    pub start_ticks: u64,
}

/// Which processes to watch (`--pid`, `--exe`, `--exclude`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub exe: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
}

impl Filter {
    /// Parses glob patterns, naming the bad one.
    pub fn new(pids: Vec<u32>, exe: &[String], exclude: &[String]) -> Result<Filter, String> {
        let parse = |v: &[String]| -> Result<Vec<glob::Pattern>, String> {
            v.iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| format!("bad pattern {p:?}: {e}")))
                .collect()
        };
        Ok(Filter {
            pids,
            exe: parse(exe)?,
            exclude: parse(exclude)?,
        })
    }

    pub fn wants(&self, p: &Proc) -> bool {
        self.wants_exe(p.pid, &p.exe)
    }

    /// Whether process `pid` running `exe` is to be watched.
    pub fn wants_exe(&self, pid: u32, exe: &str) -> bool {
        // A pattern matches the full path or the file name.
        let matches = |pat: &glob::Pattern| {
            pat.matches(exe) || exe.rsplit('/').next().is_some_and(|n| pat.matches(n))
        };
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.exe.is_empty() || self.exe.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }
}

/// Field `n` of /proc/PID/stat, numbered from 1 as in proc(5); only fields after the
/// command name (n >= 3), which is in parentheses and may hold spaces.
pub fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// When the process started (field 22, clock ticks since boot): with the pid, it
/// tells a process from a later one that reused its pid.
fn start_ticks(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

/// Every user-space process on the host except `skip` (detector itself). Kernel
/// threads and processes that vanish mid-scan are left out.
pub fn scan(skip: u32) -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    let mut out = vec![];
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == skip {
            continue;
        }
        out.extend(proc_of(pid));
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Process `pid`, if it still runs a user-space program.
pub fn proc_of(pid: u32) -> Option<Proc> {
    proc_if(pid, |_, _| true)
}

/// Process `pid`, if it still runs a user-space program and `want(exe, key)` says so
/// (asked before its start time is read).
pub fn proc_if(pid: u32, want: impl FnOnce(&str, BinaryKey) -> bool) -> Option<Proc> {
    let exe_link = format!("/proc/{pid}/exe");
    let exe = fs::read_link(&exe_link).ok()?.display().to_string();
    let meta = fs::metadata(&exe_link).ok()?;
    let key = BinaryKey {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if !want(&exe, key) {
        return None;
    }
    Some(Proc {
        pid,
        key,
        exe,
        start_ticks: start_ticks(pid)?,
    })
}

/// The container a process runs in, from its cgroup path: the last 64-hex-digit
/// component (docker, containerd, CRI-O and podman all name scopes after the id).
pub fn container_id(pid: u32) -> Option<String> {
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    container_id_from_cgroup(&cg)
}

pub(crate) fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    let mut found = None;
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/') {
            // "docker-<id>.scope", "cri-containerd-<id>.scope", "crio-<id>", "<id>"
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let id = part.rsplit('-').next().unwrap_or(part);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                found = Some(id.to_string());
            }
        }
    }
    found
}

/// Groups processes by binary.
pub fn by_binary(procs: &[Proc]) -> HashMap<BinaryKey, Vec<&Proc>> {
    let mut m: HashMap<BinaryKey, Vec<&Proc>> = HashMap::new();
    for p in procs {
        m.entry(p.key).or_default().push(p);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            container_id_from_cgroup(&format!("0::/system.slice/docker-{id}.scope\n")),
            Some(id.to_string())
        );
        assert_eq!(
            container_id_from_cgroup(&format!(
                "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n"
            )),
            Some(id.to_string())
        );
        assert_eq!(
            container_id_from_cgroup(&format!("12:cpu:/docker/{id}\n")),
            Some(id.to_string())
        );
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/session-2.scope\n"),
            None
        );
    }

    #[test]
    fn filters() {
        let p = Proc {
            pid: 7,
            key: BinaryKey { dev: 1, ino: 2 },
            exe: "/usr/local/bin/api-server".into(),
            start_ticks: 0,
        };
        assert!(Filter::default().wants(&p));
        assert!(Filter::new(vec![7], &[], &[]).unwrap().wants(&p));
        assert!(!Filter::new(vec![8], &[], &[]).unwrap().wants(&p));
        assert!(Filter::new(vec![], &["api-*".into()], &[])
            .unwrap()
            .wants(&p));
        assert!(Filter::new(vec![], &["/usr/local/bin/*".into()], &[])
            .unwrap()
            .wants(&p));
        assert!(!Filter::new(vec![], &[], &["*server".into()])
            .unwrap()
            .wants(&p));
        assert!(Filter::new(vec![], &["[".into()], &[]).is_err());
    }

    #[test]
    fn scan_sees_this_process() {
        let me = std::process::id();
        let procs = scan(0);
        let p = procs.iter().find(|p| p.pid == me).expect("self in /proc");
        assert!(p.start_ticks > 0);
        assert!(scan(me).iter().all(|p| p.pid != me));
    }
}
