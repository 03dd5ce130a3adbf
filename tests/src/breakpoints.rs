//! Whether uprobe breakpoints are in a live process's text: a uprobe writes an int3
//! (0xCC) into the process's copy of the probed page and restores the original byte
//! when it is unregistered. Two checks, both through `/proc/PID/mem`:
//! - the probe sites `detector inspect --format json` reports (each function's entry
//!   and probe point), mapped through `/proc/PID/maps` (PIE included);
//! - every executable mapping of the program compared byte for byte with its file
//!   (reached through `/proc/PID/exe`, so a binary deleted or replaced on disk too):
//!   Go text is never patched at run time, so any difference is a breakpoint left
//!   behind, wherever it is (return sites included).
use std::{
    fs,
    os::unix::fs::{FileExt, MetadataExt},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

/// A probe site: a function's symbol and a file offset detector may probe.
#[derive(Clone, Debug)]
pub struct Site {
    pub symbol: String,
    pub file_offset: u64,
}

/// The entry and probe point of every function `detector inspect` finds in `bin`.
pub fn probe_sites(detector: &Path, bin: &Path) -> Vec<Site> {
    let out = Command::new(detector)
        .arg("inspect")
        .arg(bin)
        .args(["--format", "json"])
        .output()
        .expect("run detector inspect");
    assert!(
        out.status.success(),
        "detector inspect {}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("detector inspect's JSON");
    let mut sites = Vec::new();
    for f in json["functions"].as_array().expect("functions") {
        let symbol = f["symbol"].as_str().unwrap_or_default();
        for key in ["file_offset", "probe_file_offset"] {
            if let Some(off) = f[key].as_u64() {
                sites.push(Site {
                    symbol: symbol.to_string(),
                    file_offset: off,
                });
            }
        }
    }
    assert!(
        sites.iter().any(|s| s.symbol == "runtime.ReadMemStats"),
        "detector inspect found no probe site for runtime.ReadMemStats in {}",
        bin.display()
    );
    sites
}

/// An executable mapping of the program: `[start, end)` maps file offset `offset`.
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
}

/// The executable mappings of `pid`'s program file (matched by inode).
fn text_mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let ino = fs::metadata(format!("/proc/{pid}/exe"))?.ino();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut out = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || f[4].parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let Some((a, b)) = f[0].split_once('-') else {
            continue;
        };
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or(0);
        out.push(Mapping {
            start: hex(a),
            end: hex(b),
            offset: hex(f[2]),
        });
    }
    Ok(out)
}

/// The process addresses of `sites` (those inside an executable mapping).
fn site_addresses(maps: &[Mapping], sites: &[Site]) -> Vec<(u64, u64, String)> {
    sites
        .iter()
        .filter_map(|s| {
            let m = maps.iter().find(|m| {
                s.file_offset >= m.offset && s.file_offset - m.offset < m.end - m.start
            })?;
            Some((
                m.start + (s.file_offset - m.offset),
                s.file_offset,
                s.symbol.clone(),
            ))
        })
        .collect()
}

/// Whether an int3 is at any of `sites` in `pid` now (a probe is attached there).
pub fn any_breakpoint(pid: u32, sites: &[Site]) -> bool {
    let (Ok(maps), Ok(mem)) = (
        text_mappings(pid),
        fs::File::open(format!("/proc/{pid}/mem")),
    ) else {
        return false;
    };
    site_addresses(&maps, sites).iter().any(|(addr, _, _)| {
        let mut b = [0u8];
        mem.read_exact_at(&mut b, *addr).is_ok() && b[0] == 0xcc
    })
}

/// The breakpoints in `pid`'s text now, described (empty when none): an int3 at one
/// of `sites`, or any byte of an executable mapping that differs from the file.
pub fn breakpoints_left(pid: u32, sites: &[Site]) -> std::io::Result<Vec<String>> {
    let maps = text_mappings(pid)?;
    if maps.is_empty() {
        return Err(std::io::Error::other(format!(
            "no executable mapping of /proc/{pid}/exe"
        )));
    }
    let mem = fs::File::open(format!("/proc/{pid}/mem"))?;
    let file = fs::File::open(format!("/proc/{pid}/exe"))?;
    let mut left = Vec::new();
    for (addr, off, symbol) in site_addresses(&maps, sites) {
        let mut b = [0u8];
        mem.read_exact_at(&mut b, addr)?;
        if b[0] == 0xcc {
            left.push(format!(
                "int3 at {addr:#x} ({symbol}, file offset {off:#x})"
            ));
        }
    }
    for m in &maps {
        let len = (m.end - m.start) as usize;
        let mut in_mem = vec![0u8; len];
        let mut in_file = vec![0u8; len];
        mem.read_exact_at(&mut in_mem, m.start)?;
        // The last page may extend past the end of the file.
        let n = file.read_at(&mut in_file, m.offset)?;
        for i in (0..n).filter(|&i| in_mem[i] != in_file[i]).take(8) {
            left.push(format!(
                "text byte at {:#x} (file offset {:#x}) is {:#04x}, the file has {:#04x}",
                m.start + i as u64,
                m.offset + i as u64,
                in_mem[i],
                in_file[i]
            ));
        }
    }
    Ok(left)
}

/// How many times the kernel log says an uprobe was leaked ("failed to unregister,
/// leaking uprobe"): the kernel does that when the task (un)registering it is killed
/// mid-way (its page walk sees the pending SIGKILL), and leaves the int3 in place.
/// detector's guardian process exists so that this never happens to its uprobes.
/// `None` when the log cannot be read.
pub fn kernel_uprobe_leaks() -> Option<usize> {
    let out = Command::new("dmesg").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("leaking uprobe"))
            .count(),
    )
}

/// The pid of the probe guardian serving detector process `detector_pid` (its command
/// line is `detector __guardian --for PID`), if it is running.
pub fn guardian_of(detector_pid: u32) -> Option<u32> {
    let want = detector_pid.to_string();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves = args
            .windows(3)
            .any(|w| w[0] == b"__guardian" && w[1] == b"--for" && w[2] == want.as_bytes());
        serves.then_some(pid)
    })
}

/// Waits until the guardian of `detector_pid` has exited (it removes every uprobe the
/// detector left, one RCU wait each, then exits), up to `timeout`.
pub fn wait_guardian_gone(detector_pid: u32, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    while let Some(g) = guardian_of(detector_pid) {
        if t0.elapsed() >= timeout {
            return Err(format!(
                "the probe guardian (pid {g}) of detector {detector_pid} is still running after {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Polls until `pid`'s text holds no breakpoint, up to `timeout`; the breakpoints
/// still there otherwise (or why they cannot be read).
pub fn wait_no_breakpoints(pid: u32, sites: &[Site], timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        match breakpoints_left(pid, sites) {
            Ok(left) if left.is_empty() => return Ok(()),
            Ok(left) if t0.elapsed() >= timeout => {
                return Err(format!(
                    "{} breakpoint(s) left in process {pid} after {timeout:?}: {}",
                    left.len(),
                    left.join("; ")
                ))
            }
            Err(e) => return Err(format!("cannot read the text of process {pid}: {e}")),
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// After detector process `detector_pid` was SIGKILLed: its guardian must remove every
/// uprobe and exit, after which `pid`'s text must hold no breakpoint, and the kernel
/// log must show no uprobe leaked since `leaks_before` ([`kernel_uprobe_leaks`]).
pub fn check_after_kill(
    detector_pid: u32,
    pid: u32,
    sites: &[Site],
    leaks_before: Option<usize>,
) -> Result<(), String> {
    wait_guardian_gone(detector_pid, Duration::from_secs(60))?;
    wait_no_breakpoints(pid, sites, Duration::from_secs(1))?;
    if let Some((before, after)) = leaks_before.zip(kernel_uprobe_leaks()) {
        if after > before {
            return Err(format!(
                "the kernel logged {} new \"leaking uprobe\" line(s)",
                after - before
            ));
        }
    }
    Ok(())
}
