//! The `oddball` fixture (tests/fixtures/oddball) run from a private copy of its
//! binary, and `detector watch` checks on it: it calls runtime.ReadMemStats in bursts
//! on SIGUSR1 and counts its own calls, so detector's count can be compared with the
//! truth exactly.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    scrape,
    soak::{signal, SIGTERM},
    sum, wait_until,
};

pub const SIGUSR1: i32 = 10;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

/// One oddball process (possibly under a wrapper such as unshare).
pub struct Oddball {
    pub child: Child,
    /// The oddball's pid as the host sees it (the child's, or the wrapper's child's).
    pub pid: u32,
    pub exe: PathBuf,
    /// Last `calls_total` printed.
    pub calls: Arc<AtomicU64>,
    /// `burst_done` lines seen.
    pub bursts: Arc<AtomicU64>,
    pub clean_exit: Arc<AtomicBool>,
    pub lines: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

/// A private copy of `fixture` (its own inode: no other test's detector probes it) in
/// a directory named after this test process and `tag`.
pub fn private_copy(fixture: &Path, tag: &str) -> PathBuf {
    let dir = private_dir(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let exe = dir.join("oddball");
    std::fs::copy(fixture, &exe).unwrap_or_else(|e| panic!("copying {}: {e}", fixture.display()));
    exe
}

/// Where [`private_copy`] puts the copy for `tag` (canonical: as the kernel shows it).
pub fn private_dir(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .canonicalize()
        .expect("temp dir")
        .join(format!("detector-odd-{}-{tag}", std::process::id()))
}

/// The --exe glob matching every private copy of tag `tag`.
pub fn glob(tag: &str) -> String {
    format!("{}/*", private_dir(tag).display())
}

impl Oddball {
    /// Starts `exe` with `args`, under `wrapper` (a command line the program and its
    /// arguments are appended to) when given, with extra environment `env`.
    pub fn start(exe: &Path, args: &[&str], wrapper: &[&str], env: &[(&str, &str)]) -> Oddball {
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = crate::spawn_fresh_copy(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("piped");
        let calls = Arc::new(AtomicU64::new(0));
        let bursts = Arc::new(AtomicU64::new(0));
        let clean_exit = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let (calls, bursts, clean_exit, lines) = (
                calls.clone(),
                bursts.clone(),
                clean_exit.clone(),
                lines.clone(),
            );
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("ready ") {
                        let _ = tx.send(());
                    }
                    if let Some(n) = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("calls_total="))
                        .and_then(|n| n.parse().ok())
                    {
                        calls.store(n, Ordering::SeqCst);
                    }
                    if line.starts_with("burst_done ") {
                        bursts.fetch_add(1, Ordering::SeqCst);
                    }
                    if line.starts_with("exit=clean ") {
                        clean_exit.store(true, Ordering::SeqCst);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the oddball did not print its ready line");
        let pid = if wrapper.is_empty() {
            child.id()
        } else {
            descendant_running(child.id(), exe)
        };
        Oddball {
            child,
            pid,
            exe: exe.to_path_buf(),
            calls,
            bursts,
            clean_exit,
            lines,
            dir: exe.parent().expect("a directory").to_path_buf(),
        }
    }

    /// SIGUSR1, then waits for the burst's end; the target's own call count after it.
    pub fn burst(&self) -> u64 {
        let before = self.bursts.load(Ordering::SeqCst);
        signal(self.pid, SIGUSR1);
        wait_until("the burst's end", Duration::from_secs(30), || {
            self.bursts.load(Ordering::SeqCst) > before
        });
        self.calls.load(Ordering::SeqCst)
    }

    /// SIGTERM to the oddball; it must print its clean-exit line and its process (the
    /// wrapper's, if any) exit with status 0.
    pub fn stop(mut self) {
        signal(self.pid, SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(10));
        let t0 = Instant::now();
        while !self.clean_exit.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            status.success() && self.clean_exit.load(Ordering::SeqCst),
            "the target did not exit cleanly: {status}; its output: {:?}",
            self.lines.lock().unwrap()
        );
    }
}

impl Drop for Oddball {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid, crate::soak::SIGKILL);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child` to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            t0.elapsed() < timeout,
            "process still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first descendant of `pid` whose executable is `exe` (a wrapper's child).
fn descendant_running(pid: u32, exe: &Path) -> u32 {
    let t0 = Instant::now();
    loop {
        let mut queue = vec![pid];
        while let Some(p) = queue.pop() {
            if std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe) {
                return p;
            }
            let children =
                std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no process of {} under {pid}",
            exe.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the agent at `addr` watches process `pid`.
pub fn wait_watched(addr: &str, pid: u32) {
    let p = pid.to_string();
    wait_until(
        &format!("process {pid} watched"),
        Duration::from_secs(20),
        || sum(&scrape(addr), "detector_process_info", &[("pid", &p)]) > 0.0,
    );
}

/// The ReadMemStats calls the agent at `addr` exports for process `pid`.
pub fn exported_calls(addr: &str, pid: u32) -> f64 {
    sum(
        &scrape(addr),
        "detector_runtime_calls_total",
        &[("pid", &pid.to_string()), ("function", "readmemstats")],
    )
}

/// One burst of `odd`'s calls, once the agent watches it: the agent's count for the
/// process must reach the target's own count exactly. Returns that count.
pub fn burst_counted_exactly(addr: &str, odd: &Oddball) -> u64 {
    wait_watched(addr, odd.pid);
    let truth = odd.burst();
    let mut seen = 0.0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        seen = exported_calls(addr, odd.pid);
        if seen == truth as f64 {
            return truth;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "process {}: the target counted {truth} calls, the agent {seen}",
        odd.pid
    );
}
