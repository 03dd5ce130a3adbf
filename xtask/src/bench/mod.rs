//! `cargo xtask bench`: measures what detector costs and writes BENCHMARKS.md. Every
//! number in the file comes from one run, each against a baseline measured in that run:
//!
//! 1. [`perhit`]: the cost of one probe hit on the target (hitbench's tight loop),
//!    bare vs `detector diagnose` vs an equivalent bpftrace uprobe.
//! 2. [`throughput`]: the target's CPU at 1k/10k/100k misuse calls per second (hitbench's
//!    paced mode), bare vs detector with and without its overhead budget, and the rate
//!    detector reports vs the true one.
//! 3. [`agent`]: `detector watch`'s own CPU and peak RSS while it watches 1, 10 and 100
//!    Go processes and is scraped every second.
//! 4. [`large`]: analysis and attach time on large binaries (the Go toolchain's
//!    `compile` and `link`, `compile` stripped, and a generated stripped binary of
//!    100+ MB, [`big`]).
//! 5. [`stw`]: stop-the-world pauses as detector measures them vs the target's own
//!    runtime/metrics histograms, Go 1.22 and later.
//!
//! Needs root (uprobes). For work on the harness: `XTASK_BENCH_ONLY=row,row` (perhit,
//! throughput, agent, large, stw) runs only those rows and prints them without writing
//! BENCHMARKS.md; `XTASK_BENCH_RATES=100000` runs row 2 at those rates only;
//! `XTASK_BENCH_DETECTOR=PATH` measures that detector binary instead of
//! a fresh release build.
mod agent;
mod big;
mod large;
mod perhit;
mod stw;
mod throughput;

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{cargo, fixtures, run_cmd, setup, workspace_root};

/// How often a process's state is polled while waiting for it.
const POLL: Duration = Duration::from_millis(5);

/// What every row needs.
struct Env {
    detector: PathBuf,
    newest: setup::GoTool,
    /// Every installed Go toolchain, oldest first.
    go: Vec<setup::GoTool>,
    /// target/bench: scratch files of this run.
    work: PathBuf,
    /// Whether this detector build has `--overhead-budget`.
    budget_flag: bool,
}

impl Env {
    /// A fixture binary built by `cargo xtask fixtures`.
    fn fixture(&self, go: &str, kind: &str, name: &str) -> PathBuf {
        fixtures::root()
            .join(format!("go{go}"))
            .join(kind)
            .join(name)
    }
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench attaches uprobes: run it as root (sudo cargo xtask bench)");
    }
    let started = Instant::now();
    let tools = setup::all()?;
    let newest = tools
        .go
        .last()
        .context("no Go toolchain installed")?
        .clone();
    // Every version: the STW row runs each Go, the agent row a mix of them.
    fixtures::build_all(&tools, &[])?;
    // XTASK_BENCH_DETECTOR=PATH: benchmark that detector binary instead of building one.
    let detector = match std::env::var_os("XTASK_BENCH_DETECTOR") {
        Some(p) => PathBuf::from(p),
        None => {
            eprintln!("bench: building detector (release)");
            run_cmd(cargo(&tools).args(["build", "--release", "--package", "detector"]))?;
            workspace_root().join("target/release/detector")
        }
    };
    let work = workspace_root().join("target/bench");
    fs::create_dir_all(&work)?;
    let help = Command::new(&detector)
        .args(["diagnose", "--help"])
        .output()
        .context("could not run detector diagnose --help")?;
    let env = Env {
        budget_flag: String::from_utf8_lossy(&help.stdout).contains("--overhead-budget"),
        detector,
        newest,
        go: tools.go.clone(),
        work,
    };
    let hitbench = env.fixture(&env.newest.version, "default", "hitbench");
    if !hitbench.exists() {
        bail!("{} was not built", hitbench.display());
    }
    if !env.budget_flag {
        eprintln!("bench: this detector has no --overhead-budget: its columns are n/a");
    }

    // XTASK_BENCH_ONLY=row,row (perhit, throughput, agent, large, stw): only those rows,
    // printed but not written to BENCHMARKS.md (which holds one whole run).
    let only: Option<Vec<String>> = std::env::var("XTASK_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let want = |row: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == row));

    let bpftrace = perhit::bpftrace();
    let date = text("date", &["-u"]);
    let load_start = loadavg();
    // The 100+ MB binary is built (once per machine) before anything is timed, so its
    // compile does not load the machine during the other rows.
    let big = want("large").then(|| big::binary(&env.newest));

    let mut timings = Vec::new();
    let mut timed = |name: &str, t: Instant| timings.push((name.to_string(), t.elapsed()));
    let t = Instant::now();
    let hits = match want("perhit") {
        true => Some(perhit::measure(
            &env,
            &hitbench,
            bpftrace.as_ref().map(|(p, _)| p),
        )?),
        false => None,
    };
    timed("per-hit cost", t);
    let t = Instant::now();
    let thr = match want("throughput") {
        true => Some(throughput::measure(&env, &hitbench)?),
        false => None,
    };
    timed("throughput", t);
    let t = Instant::now();
    let agents = match want("agent") {
        true => Some(agent::measure(&env)?),
        false => None,
    };
    timed("agent", t);
    let t = Instant::now();
    let bigs = match &big {
        Some(big) => Some(large::measure(&env, &hitbench, big)?),
        None => None,
    };
    timed("large binaries", t);
    let t = Instant::now();
    let pauses = match want("stw") {
        true => Some(stw::measure(&env)?),
        false => None,
    };
    timed("STW accuracy", t);

    let mut md = header(
        &env,
        bpftrace.as_ref().ok().map(|(_, v)| v.as_str()),
        &date,
        [load_start, loadavg()],
    );
    targets(
        &mut md,
        &env,
        hits.as_ref(),
        thr.as_ref(),
        agents.as_deref(),
    )?;
    if let Some(hits) = &hits {
        perhit::render(&mut md, &hitbench, hits)?;
    }
    if let Some(thr) = &thr {
        throughput::render(&mut md, &env, thr)?;
    }
    if let Some(agents) = &agents {
        agent::render(&mut md, &env, agents)?;
    }
    if let (Some(bigs), Some(big)) = (&bigs, &big) {
        large::render(&mut md, bigs, big)?;
    }
    if let Some(pauses) = &pauses {
        stw::render(&mut md, pauses)?;
    }
    writeln!(
        md,
        "\n---\n\nThe run took {:.1} min: {}.",
        started.elapsed().as_secs_f64() / 60.0,
        timings
            .iter()
            .filter(|(_, d)| d.as_secs_f64() >= 0.5)
            .map(|(n, d)| format!("{n} {:.0} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if only.is_some() {
        eprintln!("bench: XTASK_BENCH_ONLY is set: BENCHMARKS.md is left as it was");
        print!("{md}");
        return Ok(());
    }
    let out = workspace_root().join("BENCHMARKS.md");
    fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    print!("{md}");
    Ok(())
}

/// The issue's targets, each met or missed by this run's numbers.
fn targets(
    md: &mut String,
    env: &Env,
    hits: Option<&perhit::PerHit>,
    thr: Option<&throughput::Throughput>,
    agents: Option<&[agent::AgentRun]>,
) -> Result<()> {
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    };
    writeln!(md, "\n## Targets\n")?;
    writeln!(md, "| target | this run | verdict |")?;
    writeln!(md, "|---|---|---|")?;
    match hits {
        Some(hits) => {
            let (det, bt) = hits.medians();
            writeln!(
                md,
                "| per-hit cost at most bpftrace's | detector {} ns/op, bpftrace {} (bare \
                 {:.1} ns/op) | {} |",
                fmt_f(det, 1),
                bt.map_or_else(|| "not measured".into(), |b| format!("{b:.1} ns/op")),
                hits.bare_median(),
                verdict(bt.map(|b| det <= b)),
            )?
        }
        None => writeln!(md, "| per-hit cost at most bpftrace's | – | not measured |")?,
    }
    match hits.and_then(|h| h.oldest_ratio()) {
        Some((go, per_hit, x)) => writeln!(
            md,
            "| per-hit cost on Go 1.19 within {t}× of the newest Go's | Go {go}: {per_hit:.0} ns \
             a hit, {}× the newest's | {} |",
            ratio(x),
            verdict(Some(x <= perhit::OLDEST_PER_HIT_TARGET)),
            t = perhit::OLDEST_PER_HIT_TARGET,
        )?,
        None => writeln!(
            md,
            "| per-hit cost on Go 1.19 within {}× of the newest Go's | – | not measured |",
            perhit::OLDEST_PER_HIT_TARGET
        )?,
    }
    match thr.and_then(|t| t.extra_at(100_000, throughput::Config::Default)) {
        Some(extra) if env.budget_flag => writeln!(
            md,
            "| target CPU within the 1 % budget at 100k misuse calls/s | +{extra:.2} % of a \
             core over bare (default budget) | {} |",
            verdict(Some(extra <= 1.0))
        )?,
        Some(extra) => writeln!(
            md,
            "| target CPU within the 1 % budget at 100k misuse calls/s | +{extra:.2} % of a \
             core over bare; this detector has no `--overhead-budget` (every hit probed) | {} |",
            verdict(Some(extra <= 1.0))
        )?,
        None => writeln!(
            md,
            "| target CPU within the 1 % budget at 100k misuse calls/s | – | not measured |"
        )?,
    }
    match agents.and_then(|a| a.iter().find(|a| a.n == 100)) {
        Some(a) => {
            let mb = a.hwm_kb as f64 / 1024.0;
            writeln!(
                md,
                "| agent < 1 % of a core and < 50 MB RSS at 100 processes | {:.2} % of a core, \
                 peak RSS {mb:.1} MB | CPU {}, RSS {} |",
                a.cpu_share * 100.0,
                verdict(Some(a.cpu_share < 0.01)),
                verdict(Some(mb < 50.0)),
            )?
        }
        None => writeln!(
            md,
            "| agent < 1 % of a core and < 50 MB RSS at 100 processes | – | not measured |"
        )?,
    }
    agent::targets(md, agents, verdict)?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Processes

/// Kills (and reaps) its child when dropped, so no error path leaves one behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running hitbench (or any program speaking its protocol: `ready pid=N`, then a
/// line on stdin starts the measured part, EOF on stdin lets it exit).
struct Hitbench {
    proc: Guard,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    /// Its stderr, when started with gctrace on ([`Hitbench::start_gctrace`]).
    err: Option<Receiver<String>>,
    pid: u32,
}

impl Hitbench {
    fn start(bin: &Path, args: &[&str]) -> Result<Hitbench> {
        Self::spawn(bin, args, false)
    }

    /// The same with `GODEBUG=gctrace=1`, its stderr kept.
    fn start_gctrace(bin: &Path, args: &[&str]) -> Result<Hitbench> {
        Self::spawn(bin, args, true)
    }

    fn spawn(bin: &Path, args: &[&str], gctrace: bool) -> Result<Hitbench> {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        if gctrace {
            cmd.env("GODEBUG", "gctrace=1").stderr(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", bin.display()))?;
        let stdin = child.stdin.take();
        let out = lines(child.stdout.take().expect("piped"));
        let err = child.stderr.take().map(lines);
        let proc = Guard(child);
        let ready = next_line(&out, Duration::from_secs(30), |l| l.starts_with("ready "))
            .with_context(|| format!("{} did not print `ready pid=N`", bin.display()))?;
        let pid = ready
            .strip_prefix("ready pid=")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected line {ready:?}"))?;
        Ok(Hitbench {
            proc,
            stdin,
            out,
            err,
            pid,
        })
    }

    /// Starts the measured part.
    fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().expect("open until finish");
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// The result line, starting with `prefix`.
    fn result(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        next_line(&self.out, timeout, |l| l.starts_with(prefix))
            .with_context(|| format!("hitbench did not print `{prefix}…`"))
    }

    /// Runs the timed loop (loop mode) and returns its ns per call.
    fn time_loop(&mut self) -> Result<f64> {
        self.go()?;
        let line = self.result("ns_per_op=", Duration::from_secs(300))?;
        field(&line, "ns_per_op").with_context(|| format!("unexpected line {line:?}"))
    }

    /// Lets it exit (EOF on stdin) and checks that it did.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        match wait_timeout(&mut self.proc.0, Duration::from_secs(10))? {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("hitbench exited with {s}"),
            None => bail!("hitbench did not exit after its measured part"),
        }
    }
}

/// `detector diagnose --pid PID --duration 60s --format json [extra]`, ended by SIGINT.
struct Diagnose {
    proc: Guard,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Diagnose {
    fn start(detector: &Path, pid: u32, extra: &[&str]) -> Result<Diagnose> {
        Self::start_env(detector, pid, extra, &[])
    }

    /// The same with `env` set for detector (e.g. the attach path it must take).
    fn start_env(
        detector: &Path,
        pid: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Diagnose> {
        let mut child = Command::new(detector)
            .envs(env.iter().copied())
            .args(["diagnose", "--pid", &pid.to_string()])
            .args(["--duration", "60s", "--format", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", detector.display()))?;
        let stdout = Some(collect(child.stdout.take().expect("piped")));
        let stderr = Some(collect(child.stderr.take().expect("piped")));
        Ok(Diagnose {
            proc: Guard(child),
            stdout,
            stderr,
        })
    }

    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// diagnose installs its SIGINT handler once every probe is attached, right before
    /// its window starts: the first moment it catches SIGINT is when the probes are in.
    fn wait_attached(&mut self, since: Instant, timeout: Duration) -> Result<Duration> {
        let pid = self.proc.0.id();
        loop {
            if catches_sigint(pid) {
                return Ok(since.elapsed());
            }
            if let Some(status) = self.proc.0.try_wait()? {
                bail!(
                    "detector exited before attaching ({status}): {}",
                    self.stderr().trim()
                );
            }
            if since.elapsed() > timeout {
                bail!("detector did not attach within {timeout:?}");
            }
            thread::sleep(POLL);
        }
    }

    /// SIGINT ends the window early; returns the time until it exited and its JSON.
    fn stop(self) -> Result<(Duration, Value)> {
        self.stop_with_stderr().map(|(t, json, _)| (t, json))
    }

    /// [`Diagnose::stop`], and what detector wrote on stderr.
    fn stop_with_stderr(mut self) -> Result<(Duration, Value, String)> {
        let asked = Instant::now();
        signal(self.proc.0.id(), "INT")?;
        let status = wait_timeout(&mut self.proc.0, Duration::from_secs(120))?
            .context("detector did not exit within 120 s of SIGINT")?;
        let took = asked.elapsed();
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        // 0: no findings, 1: findings; both are a completed diagnosis.
        if !matches!(status.code(), Some(0) | Some(1)) {
            bail!(
                "detector diagnose failed ({status}): {}",
                self.stderr().trim()
            );
        }
        let json = serde_json::from_str(&out).context("detector's JSON report")?;
        let stderr = self.stderr();
        Ok((took, json, stderr))
    }
}

/// The entry of `collected.calls` for `symbol` in a diagnose report.
fn calls_of<'a>(report: &'a Value, symbol: &str) -> Option<&'a Value> {
    report["collected"]["calls"]
        .as_array()?
        .iter()
        .find(|c| c["symbol"] == symbol)
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?.to_string();
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Whether `pid` has a handler for SIGINT (/proc/PID/status, SigCgt bit 1).
fn catches_sigint(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|m| m & (1 << (2 - 1)) != 0)
}

/// Where `symbol` starts in a non-PIE binary and where detector probes it (the
/// process's addresses), from `detector inspect`.
struct Addresses {
    entry: u64,
    probe: u64,
}

/// `detector inspect BIN --format json`, parsed.
fn inspect_json(detector: &Path, bin: &Path) -> Result<Value> {
    let o = Command::new(detector)
        .arg("inspect")
        .arg(bin)
        .args(["--format", "json"])
        .output()
        .context("could not run detector inspect")?;
    if !o.status.success() {
        bail!(
            "detector inspect {} failed ({}): {}",
            bin.display(),
            o.status,
            first_line(&String::from_utf8_lossy(&o.stderr))
        );
    }
    serde_json::from_slice(&o.stdout).context("detector inspect's JSON")
}

fn probe_addresses(detector: &Path, bin: &Path, symbol: &str) -> Result<Addresses> {
    let json = inspect_json(detector, bin)?;
    let f = json["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["symbol"] == symbol));
    match f.map(|f| (f["address"].as_u64(), f["probe_address"].as_u64())) {
        Some((Some(entry), Some(probe))) => Ok(Addresses { entry, probe }),
        _ => bail!("detector inspect {} did not locate {symbol}", bin.display()),
    }
}

/// Waits until the byte at `addr` in `pid`'s memory is an int3: a uprobe is installed
/// there (uprobes write the breakpoint into the process's copy of the text page).
fn wait_breakpoint(pid: u32, addr: u64, timeout: Duration) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mem = fs::File::open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("opening /proc/{pid}/mem"))?;
    let deadline = Instant::now() + timeout;
    let mut byte = [0u8];
    loop {
        mem.read_exact_at(&mut byte, addr)
            .with_context(|| format!("reading /proc/{pid}/mem at {addr:#x}"))?;
        if byte[0] == 0xcc {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no breakpoint at {addr:#x} after {timeout:?}");
        }
        thread::sleep(POLL);
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    run_cmd(Command::new("kill").args(["-s", sig, &pid.to_string()]))
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// CPU seconds (user + system, all threads) `pid` used so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// `getconf CLK_TCK` (the unit of /proc/PID/stat's times), 100 when unknown.
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `/proc/PID/status` line's value in kB (VmHWM, VmRSS).
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    v.split_whitespace().next()?.parse().ok()
}

/// The lines of `r`, read on a thread.
fn lines<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// All of `r`, read on a thread.
fn collect<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn next_line(
    rx: &Receiver<String>,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return Ok(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("timed out after {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the output ended (process exited)"),
        }
    }
}

/// The `key=value` fields of a result line.
fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect()
}

/// One numeric `key=value` field of a result line.
fn field(line: &str, key: &str) -> Option<f64> {
    fields(line).get(key)?.parse().ok()
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn go_cmd(go: &setup::GoTool) -> Command {
    let mut cmd = Command::new(&go.go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env_remove("GOROOT");
    cmd
}

fn go_output(go: &setup::GoTool, args: &[&str]) -> Result<String> {
    let o = go_cmd(go).args(args).output().context("could not run go")?;
    if !o.status.success() {
        bail!(
            "go {} failed: {}",
            args.join(" "),
            first_line(&String::from_utf8_lossy(&o.stderr))
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

// ---------------------------------------------------------------------------------
// BENCHMARKS.md

fn header(env: &Env, bpftrace: Option<&str>, date: &str, load: [String; 2]) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let commit = text("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = text("git", &["status", "--porcelain", "--untracked-files=no"]);
    let commit = if dirty.is_empty() || dirty == "unknown" {
        commit
    } else {
        format!("{commit} with uncommitted changes")
    };
    let budget = if env.budget_flag {
        "has `--overhead-budget` (default 1 % of a core per target)"
    } else {
        "has no `--overhead-budget` yet: every hit is probed, budget columns are n/a"
    };
    format!(
        "# Benchmarks\n\n\
         Written by `sudo cargo xtask bench` (xtask/src/bench/); every number below \
         comes from one run of it, and every ratio is against a baseline measured in \
         the same run.\n\n\
         - date: {date}\n\
         - machine: {model}, {cpus} logical CPUs, shared with other work; load average \
         (1 min) {} at the start, {} at the end\n\
         - kernel: {kernel}\n\
         - Go: {gover} (hitbench, the toolchain binaries, the generated binary); the \
         agent row runs the `service` fixture of every installed Go, the STW row \
         hitbench of each Go\n\
         - detector: release build of commit {commit}; {budget}\n\
         - bpftrace: {bpftrace}\n",
        load[0],
        load[1],
        kernel = text("uname", &["-r"]),
        gover = env.newest.version,
        bpftrace = bpftrace.unwrap_or("unavailable"),
    )
}

/// The trimmed stdout of a command run in the workspace, or "unknown".
fn text(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A ratio with about three significant digits.
fn ratio(x: f64) -> String {
    match x {
        x if !x.is_finite() => "–".into(),
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x if x >= 0.1 => format!("{x:.2}"),
        x => format!("{x:.3}"),
    }
}

fn fmt_f(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "–".into()
    }
}

/// "median (min–max)".
fn spread(xs: &[Duration]) -> String {
    let lo = xs.iter().min().copied().unwrap_or_default();
    let hi = xs.iter().max().copied().unwrap_or_default();
    format!("{} ({}–{})", ms(median_d(xs)), ms(lo), ms(hi))
}

fn short_path(p: &Path) -> String {
    if let Ok(rel) = p.strip_prefix(workspace_root()) {
        return rel.display().to_string();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.as_deref().and_then(|h| p.strip_prefix(h).ok()) {
        Some(rel) => format!("~/{}", rel.display()),
        None => p.display().to_string(),
    }
}

fn median_f(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

fn median_d(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// 2000000 -> "2,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
