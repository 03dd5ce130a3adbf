//! Target safety soak: a Go service under HTTP load from `wrk` on loopback while
//! `detector diagnose` attaches and detaches again and again, some runs SIGKILLed at
//! a random moment (while loading, attaching, in the window or detaching).
//!
//! The target is the `service` fixture misusing ReadMemStats on every request, so the
//! probes fire on every request while they come and go. Its `/fixed` endpoint answers
//! a deterministic body; wrk's Lua `response` hook compares every body with it.
//!
//! A violation (the soak fails) is any of: the target dies or stops serving; a request
//! fails (socket error, non-200 status, different body); a diagnose run that was not
//! killed exits with anything but 0 or 1, or hangs; an eBPF program a run held is
//! still loaded after it ended; a breakpoint is left in the target's text after a run
//! ended (see [`crate::breakpoints`]), once a killed run's probe guardian has exited;
//! a completed run leaving its guardian behind; the kernel logging a leaked uprobe
//! after a kill; the target does not exit cleanly (status 0) when asked to stop with
//! SIGTERM at the end.
//!
//! Used by `tests/tests/soak.rs` (a few cycles per Go version, in CI) and by
//! `cargo xtask soak` (`src/bin/soak.rs`, 1,000 cycles per Go version by default).
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{breakpoints, program_ids_of, wait_programs_freed};

pub struct Options {
    pub detector: PathBuf,
    /// The `service` fixture binary (copied to a private path before it runs).
    pub service: PathBuf,
    /// Shown in progress lines and errors, e.g. "go1.27.3/pie".
    pub label: String,
    pub cycles: usize,
    /// One diagnose run in every `kill_every` (chosen at random) is SIGKILLed; 0: none.
    pub kill_every: usize,
    pub seed: u64,
    /// diagnose's --duration.
    pub duration: String,
    /// wrk connections; each waits `delay_ms` between its requests (0: flat out).
    pub connections: u32,
    pub delay_ms: u32,
    /// Print a progress line every this many cycles (0: never).
    pub progress_every: usize,
}

impl Options {
    pub fn new(detector: PathBuf, service: PathBuf, label: String) -> Options {
        Options {
            detector,
            service,
            label,
            cycles: 1000,
            kill_every: 10,
            seed: 1,
            duration: "300ms".into(),
            connections: 4,
            delay_ms: 1,
            progress_every: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub label: String,
    /// Cycles the target survived (all of them, when the soak passes).
    pub cycles: usize,
    /// diagnose runs that ended on their own (exit 0 or 1).
    pub completed: usize,
    /// diagnose runs SIGKILLed, by phase: before any program was seen, attached (attach
    /// or window: programs loaded, no report yet), detaching (report printed).
    pub killed: [usize; 3],
    /// Runs during which a breakpoint was seen at a probe site (the check can see them).
    pub breakpoints_seen: usize,
    /// eBPF program ids the runs held, all gone after each run.
    pub programs_held: usize,
    /// ReadMemStats calls the completed runs counted (the probes did fire).
    pub calls_observed: u64,
    /// Runs whose probe guardian was seen (it creates and removes every uprobe).
    pub guardian_seen: usize,
    /// wrk: requests completed and failures of each kind (all 0 when the soak passes).
    pub requests: u64,
    pub mismatches: u64,
    pub bad_status: u64,
    pub socket_errors: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    /// ReadMemStats calls the service made (one per request).
    pub target_calls: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn kills(&self) -> usize {
        self.killed.iter().sum()
    }

    pub fn errors(&self) -> u64 {
        self.mismatches + self.bad_status + self.socket_errors
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: {} cycles survived in {:.0} s; diagnose runs: {} completed, {} killed ({} loading, {} attached, {} detaching); \
             breakpoints seen in {} runs, {} programs held, all freed; guardian seen in {} runs, no uprobe leaked; \
             {} requests, {} errors (p99 {:.1} ms, max {:.1} ms); {} ReadMemStats calls in the target, {} counted by detector",
            self.label,
            self.cycles,
            self.elapsed.as_secs_f64(),
            self.completed,
            self.kills(),
            self.killed[0],
            self.killed[1],
            self.killed[2],
            self.breakpoints_seen,
            self.programs_held,
            self.guardian_seen,
            self.requests,
            self.errors(),
            self.latency_p99_us as f64 / 1e3,
            self.latency_max_us as f64 / 1e3,
            self.target_calls,
            self.calls_observed,
        )
    }
}

/// xorshift64*: reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The body `/fixed` answers (tests/fixtures/service/main.go).
pub fn fixed_body() -> String {
    (0..16).fold(String::new(), |mut s, i| {
        let _ = writeln!(s, "{i:02} /fixed fixed response of the service fixture");
        s
    })
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

pub fn signal(pid: u32, sig: i32) {
    unsafe { libc_kill(pid as i32, sig) };
}

/// A child killed (and reaped) when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Collects everything `r` produces, on a thread.
pub fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// The service fixture, started from a private copy of its binary (its own inode:
/// uprobes are per file, so no other test's detector can put breakpoints in it).
pub struct Service {
    pub guard: Guard,
    pub addr: String,
    pub exe: PathBuf,
    /// Last `calls_total` printed.
    pub calls: Arc<AtomicU64>,
    /// The `exit=clean` line was printed.
    pub clean_exit: Arc<AtomicBool>,
    /// Lines in no format the fixture prints (its output changed).
    pub odd_lines: Arc<Mutex<Vec<String>>>,
    /// Last `children_ok=N children_failed=M` printed (with -spawn).
    pub children: Arc<Mutex<(u64, u64)>>,
    pub stderr: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Service {
    pub fn start(fixture: &Path, tag: &str, args: &[&str]) -> Result<Service> {
        let dir = std::env::temp_dir().join(format!(
            "detector-soak-{}-{}",
            std::process::id(),
            tag.replace('/', "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let exe = dir.join("service");
        std::fs::copy(fixture, &exe).with_context(|| format!("copying {}", fixture.display()))?;
        let mut child = crate::spawn_fresh_copy(
            Command::new(&exe)
                .args(["-addr", "127.0.0.1:0"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = collect(child.stderr.take().expect("piped"));
        let guard = Guard(child);
        let calls = Arc::new(AtomicU64::new(0));
        let clean_exit = Arc::new(AtomicBool::new(false));
        let odd_lines = Arc::new(Mutex::new(Vec::new()));
        let children = Arc::new(Mutex::new((0, 0)));
        let (tx, rx) = mpsc::channel();
        {
            let (calls, clean_exit, odd_lines, children) = (
                calls.clone(),
                clean_exit.clone(),
                odd_lines.clone(),
                children.clone(),
            );
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let field = |name: &str| {
                        line.split_whitespace()
                            .find_map(|f| f.strip_prefix(name))
                            .map(str::to_string)
                    };
                    if let Some(a) = field("listening=") {
                        let _ = tx.send(a);
                    } else if let Some(n) = field("calls_total=").and_then(|n| n.parse().ok()) {
                        calls.store(n, Ordering::SeqCst);
                        if line.starts_with("exit=clean ") {
                            clean_exit.store(true, Ordering::SeqCst);
                        }
                    } else if let (Some(ok), Some(failed)) = (
                        field("children_ok=").and_then(|n| n.parse().ok()),
                        field("children_failed=").and_then(|n| n.parse().ok()),
                    ) {
                        *children.lock().unwrap() = (ok, failed);
                    } else {
                        odd_lines.lock().unwrap().push(line);
                    }
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the service did not print its address")?;
        Ok(Service {
            guard,
            addr,
            exe,
            calls,
            clean_exit,
            odd_lines,
            children,
            stderr,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// Fails when the service exited.
    pub fn check_alive(&mut self, when: &str) -> Result<()> {
        if let Some(status) = self.guard.0.try_wait()? {
            bail!(
                "the target died {when}: {status}; its stderr: {}",
                self.stderr.lock().unwrap().trim()
            );
        }
        Ok(())
    }

    /// SIGTERM, then its exit status must be 0 after its clean-exit line.
    pub fn stop(&mut self) -> Result<()> {
        signal(self.pid(), SIGTERM);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.guard.0.try_wait()? {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the target ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Its last line may still be on its way through the pipe.
        let t1 = Instant::now();
        while !self.clean_exit.load(Ordering::SeqCst) && t1.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !status.success() || !self.clean_exit.load(Ordering::SeqCst) {
            bail!(
                "the target did not exit cleanly on SIGTERM: {status}; its stderr: {}",
                self.stderr.lock().unwrap().trim()
            );
        }
        let odd = self.odd_lines.lock().unwrap();
        if !odd.is_empty() {
            bail!(
                "the target printed unexpected lines: {:?}",
                &odd[..odd.len().min(5)]
            );
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.guard.0.try_wait() {
            let _ = self.guard.0.kill();
        }
        let _ = self.guard.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// wrk's Lua script: every response must be a 200 with exactly `expected` as body.
fn wrk_script(expected: &str, delay_ms: u32) -> String {
    let mut level = String::from("=");
    while expected.contains(&format!("]{level}]")) {
        level.push('=');
    }
    let delay = if delay_ms > 0 {
        format!("function delay() return {delay_ms} end\n")
    } else {
        String::new()
    };
    format!(
        r#"-- Generated by detector-tests (soak): checks every response.
local expected = [{level}[
{expected}]{level}]
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) responses = 0; mismatches = 0; bad_status = 0 end
{delay}function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then bad_status = bad_status + 1 end
  if body ~= expected then mismatches = mismatches + 1 end
end
function done(summary, latency, requests)
  local r, m, b = 0, 0, 0
  for _, t in ipairs(threads) do
    r = r + t:get("responses"); m = m + t:get("mismatches"); b = b + t:get("bad_status")
  end
  local e = summary.errors
  io.write(string.format("SOAK requests=%d responses=%d mismatches=%d bad_status=%d connect=%d read=%d write=%d status=%d timeout=%d p99_us=%d max_us=%d\n",
    summary.requests, r, m, b, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(99), latency.max))
end
"#
    )
}

/// Starts wrk against `url` (it runs until SIGINT).
fn start_wrk(url: &str, script: &Path, connections: u32) -> Result<(Guard, Arc<Mutex<String>>)> {
    let mut child = Command::new("wrk")
        .args(["-t", "1", "-c", &connections.to_string()])
        .args(["-d", "100000s", "--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("wrk not found: `cargo xtask setup` installs it (Debian package `wrk`)")?;
    let out = collect(child.stdout.take().expect("piped"));
    let _err = collect(child.stderr.take().expect("piped"));
    Ok((Guard(child), out))
}

/// Stops wrk (SIGINT: it prints its summary) and reads its `SOAK` line.
fn stop_wrk(mut wrk: Guard, out: &Mutex<String>, o: &mut Outcome) -> Result<()> {
    signal(wrk.0.id(), SIGINT);
    let t0 = Instant::now();
    while wrk.0.try_wait()?.is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("wrk did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The reader thread may still hold the last bytes.
    let t1 = Instant::now();
    let line = loop {
        let text = out.lock().unwrap().clone();
        if let Some(l) = text.lines().find(|l| l.starts_with("SOAK ")) {
            break l.to_string();
        }
        if t1.elapsed() > Duration::from_secs(2) {
            bail!("wrk printed no summary: {text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let num = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    o.requests = num("requests");
    o.mismatches = num("mismatches");
    o.bad_status = num("bad_status");
    o.socket_errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| num(k))
        .fold(0u64, u64::saturating_add);
    o.latency_p99_us = num("p99_us");
    o.latency_max_us = num("max_us");
    if num("responses") != o.requests {
        bail!("wrk: {line} (responses seen by the Lua hook differ from requests)");
    }
    Ok(())
}

/// ReadMemStats calls a diagnose JSON report counted.
pub fn readmemstats_calls(report: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(report).ok()?;
    let calls = v["collected"]["calls"].as_array()?;
    Some(
        calls
            .iter()
            .find(|c| c["func"] == "readmemstats")
            .and_then(|c| c["calls"].as_u64())
            .unwrap_or(0),
    )
}

/// Runs the soak; `Err` names the first violation (with the seed to replay it).
pub fn run(o: &Options) -> Result<Outcome> {
    run_inner(o).with_context(|| format!("soak {} (seed {})", o.label, o.seed))
}

fn run_inner(o: &Options) -> Result<Outcome> {
    let t_start = Instant::now();
    let mut out = Outcome {
        label: o.label.clone(),
        ..Outcome::default()
    };
    let mut service = Service::start(
        &o.service,
        &o.label,
        &["-misuse", "readmemstats", "-rate", "0"],
    )?;
    let pid = service.pid();
    let sites = breakpoints::probe_sites(&o.detector, &service.exe);

    // The expected output: the fixture's documented body, answered before any probe.
    let expected = fixed_body();
    let (status, body) = crate::http::get(&service.addr, "/fixed")?;
    if status != 200 || body != expected {
        bail!("GET /fixed before the soak: {status} {body:?}, expected 200 {expected:?}");
    }
    breakpoints::wait_no_breakpoints(pid, &sites, Duration::ZERO)
        .map_err(anyhow::Error::msg)
        .context("before the first run")?;

    let script = service.exe.with_file_name("check.lua");
    std::fs::write(&script, wrk_script(&expected, o.delay_ms))?;
    let url = format!("http://{}/fixed", service.addr);
    let (wrk, wrk_out) = start_wrk(&url, &script, o.connections)?;
    // Load is flowing before the first run.
    let t0 = Instant::now();
    while service.calls.load(Ordering::SeqCst) < 10 {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!(
                "wrk sent no request in 10 s: {}",
                wrk_out.lock().unwrap().trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut rng = Rng::new(o.seed);
    let mut kill_at_cycle = usize::MAX;
    // Lifetime of a run (load, attach, window, report, detach), from completed ones.
    let mut lifetime_ms = 2500.0f64;
    let mut last_serving = (Instant::now(), service.calls.load(Ordering::SeqCst));
    for cycle in 0..o.cycles {
        if o.kill_every > 0 && cycle.is_multiple_of(o.kill_every) {
            kill_at_cycle = cycle + rng.below(o.kill_every as u64) as usize;
        }
        let kill_after =
            (cycle == kill_at_cycle).then(|| Duration::from_millis(rng.below(lifetime_ms as u64)));
        let when = |what: &str| format!("{what} (cycle {cycle}, kill after {kill_after:?})");
        let leaks_before = kill_after.and_then(|_| breakpoints::kernel_uprobe_leaks());

        let mut d = Command::new(&o.detector)
            .args(["diagnose", "--pid", &pid.to_string()])
            .args(["--duration", &o.duration, "--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting detector diagnose")?;
        let d_pid = d.id();
        let stdout = collect(d.stdout.take().expect("piped"));
        let stderr = collect(d.stderr.take().expect("piped"));
        let mut d = Guard(d);
        let t0 = Instant::now();
        let mut held = std::collections::BTreeSet::new();
        let mut seen_bp = false;
        let mut guarded = false;
        let mut polls = 0u32;
        let status = loop {
            if let Some(s) = d.0.try_wait()? {
                break Some(s);
            }
            held.extend(program_ids_of(d_pid));
            if polls.is_multiple_of(3) && !seen_bp {
                seen_bp = breakpoints::any_breakpoint(pid, &sites);
            }
            if polls.is_multiple_of(3) && !guarded {
                guarded = breakpoints::guardian_of(d_pid).is_some();
            }
            polls += 1;
            if kill_after.is_some_and(|k| t0.elapsed() >= k) {
                let phase = if !stdout.lock().unwrap().is_empty() {
                    2
                } else if !held.is_empty() || seen_bp {
                    1
                } else {
                    0
                };
                signal(d_pid, SIGKILL);
                let _ = d.0.wait();
                out.killed[phase] += 1;
                break None;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{}: detector diagnose did not finish in 120 s",
                    when("hang")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let killed = status.is_none();
        if let Some(status) = status {
            // Ended on its own (a kill planned after its end does not count as one).
            let code = status.code();
            // The reader threads may still hold the last bytes.
            let t1 = Instant::now();
            let report = loop {
                let r = stdout.lock().unwrap().clone();
                if readmemstats_calls(&r).is_some() || t1.elapsed() > Duration::from_secs(2) {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            if !matches!(code, Some(0) | Some(1)) {
                std::thread::sleep(Duration::from_millis(50));
                bail!(
                    "{}: detector diagnose exited with {status}: {}",
                    when("run failed"),
                    stderr.lock().unwrap().trim()
                );
            }
            let calls = readmemstats_calls(&report).with_context(|| {
                format!(
                    "{}: no JSON report: {report:?}",
                    when("run without a report")
                )
            })?;
            out.calls_observed += calls;
            out.completed += 1;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            lifetime_ms = if out.completed == 1 {
                ms
            } else {
                0.8 * lifetime_ms + 0.2 * ms
            };
        }
        out.breakpoints_seen += seen_bp as usize;
        out.programs_held += held.len();
        if let Err(left) = wait_programs_freed(&held) {
            bail!(
                "{}: eBPF programs {left:?} still loaded 5 s after detector ended",
                when("programs left")
            );
        }
        out.guardian_seen += guarded as usize;
        if killed {
            breakpoints::check_after_kill(d_pid, pid, &sites, leaks_before)
                .map_err(|e| anyhow::anyhow!("{}: {e}", when("after the kill")))?;
        } else {
            // A completed run waits for its guardian: nothing of it may be left.
            if let Some(g) = breakpoints::guardian_of(d_pid) {
                bail!(
                    "{}: its probe guardian (pid {g}) is still running",
                    when("run ended")
                );
            }
            breakpoints::wait_no_breakpoints(pid, &sites, Duration::from_secs(1))
                .map_err(|left| anyhow::anyhow!("{}: {left}", when("breakpoints left")))?;
        }
        service.check_alive(&when("during the soak"))?;
        // Still serving: its request count moves (wrk sends continuously).
        let calls = service.calls.load(Ordering::SeqCst);
        if last_serving.0.elapsed() >= Duration::from_secs(2) {
            if calls <= last_serving.1 {
                bail!(
                    "{}: the target served no request for {:.1} s",
                    when("target stalled"),
                    last_serving.0.elapsed().as_secs_f64()
                );
            }
            last_serving = (Instant::now(), calls);
        }
        out.cycles = cycle + 1;
        if o.progress_every > 0 && out.cycles.is_multiple_of(o.progress_every) {
            eprintln!(
                "soak {}: {}/{} cycles, {} killed, {} requests, {:.0} s",
                o.label,
                out.cycles,
                o.cycles,
                out.kills(),
                calls,
                t_start.elapsed().as_secs_f64()
            );
        }
    }

    stop_wrk(wrk, &wrk_out, &mut out)?;
    service.check_alive("at the end of the soak")?;
    service.stop()?;
    out.target_calls = service.calls.load(Ordering::SeqCst);
    out.elapsed = t_start.elapsed();
    if out.requests == 0 {
        bail!("wrk completed no request");
    }
    if out.errors() > 0 {
        bail!(
            "requests failed: {} different bodies, {} non-200 statuses, {} socket errors (of {} requests)",
            out.mismatches,
            out.bad_status,
            out.socket_errors,
            out.requests
        );
    }
    if out.target_calls < out.requests {
        bail!(
            "the target counted {} ReadMemStats calls for {} requests",
            out.target_calls,
            out.requests
        );
    }
    if out.completed > 0 && out.calls_observed == 0 {
        bail!("no diagnose run counted a ReadMemStats call: the probes never fired");
    }
    if out.cycles > 0 && out.breakpoints_seen == 0 {
        bail!("no breakpoint was ever seen in the target: the breakpoint check is blind");
    }
    Ok(out)
}
