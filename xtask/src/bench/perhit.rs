//! Row 1: the cost of one probe hit on the target. hitbench calls
//! `runtime.GOMAXPROCS(0)` in a tight loop and times it itself, bare, under
//! `detector diagnose` and under an equivalent bpftrace uprobe (configurations
//! interleaved, median of [`ROUNDS`]), built with the newest Go and with the oldest
//! supported (Go 1.19, whose frames are built by instructions the kernel would
//! single-step: detector's probe sits on the stack check's JBE there).
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    calls_of, collect, first_line, lines, median_f, next_line, probe_addresses, ratio, signal,
    spread, thousands, wait_breakpoint, wait_timeout, Addresses, Diagnose, Env, Guard, Hitbench,
    POLL,
};
use crate::{run_cmd, workspace_root};

/// Calls in each timed loop of hitbench.
const CALLS: u64 = 2_000_000;
/// Calls in each timed loop of the oldest Go's hitbench: fewer, as bpftrace's
/// single-stepped probe costs ~30 µs a hit there.
const CALLS_OLDEST: u64 = 500_000;
/// detector's per-hit cost on the oldest Go at most this many times the newest's.
pub const OLDEST_PER_HIT_TARGET: f64 = 1.5;
/// Runs of each configuration; the median is reported.
const ROUNDS: usize = 3;
/// The probed function hitbench calls, as bpftrace and detector's report name it.
const SYMBOL: &str = "runtime.GOMAXPROCS";

pub struct Run {
    ns_per_op: f64,
    /// Probe hits the tracer counted for the target during the run.
    hits: Option<u64>,
    /// detector only: from its start until its probes were in.
    attach: Option<Duration>,
}

/// One Go version's runs.
pub struct Series {
    /// The Go version, e.g. "1.27.3".
    go: String,
    hitbench: PathBuf,
    calls: u64,
    bare: Vec<Run>,
    detector: Vec<Run>,
    /// Err: why bpftrace could not be measured.
    bpftrace: Result<Vec<Run>, String>,
}

pub struct PerHit {
    /// The newest Go's hitbench.
    newest: Series,
    /// The oldest Go's (Go 1.19), measured in the same rounds; None when it is the
    /// newest.
    oldest: Option<Series>,
}

impl PerHit {
    pub fn bare_median(&self) -> f64 {
        self.newest.bare_median()
    }

    /// detector's and (when measured) bpftrace's median ns/op (newest Go).
    pub fn medians(&self) -> (f64, Option<f64>) {
        self.newest.medians()
    }

    /// The oldest Go's version, detector's per-hit cost there (median ns/op over
    /// bare) and its ratio to the newest Go's.
    pub fn oldest_ratio(&self) -> Option<(&str, f64, f64)> {
        let o = self.oldest.as_ref()?;
        let old = o.medians().0 - o.bare_median();
        let new = self.newest.medians().0 - self.newest.bare_median();
        Some((o.go.as_str(), old, old / new))
    }
}

impl Series {
    fn bare_median(&self) -> f64 {
        median_f(self.bare.iter().map(|x| x.ns_per_op))
    }

    /// detector's and (when measured) bpftrace's median ns/op.
    fn medians(&self) -> (f64, Option<f64>) {
        let det = median_f(self.detector.iter().map(|x| x.ns_per_op));
        let bt = match &self.bpftrace {
            Ok(runs) if runs.len() == ROUNDS => Some(median_f(runs.iter().map(|x| x.ns_per_op))),
            _ => None,
        };
        (det, bt)
    }
}

fn start(hitbench: &Path, calls: u64) -> Result<Hitbench> {
    let n = calls.to_string();
    Hitbench::start(hitbench, &["-fn", "gomaxprocs", "-n", &n])
}

pub fn measure(env: &Env, hitbench: &Path, bpftrace: Result<&PathBuf, &String>) -> Result<PerHit> {
    let series = |go: &str, hitbench: PathBuf, calls: u64| Series {
        go: go.to_string(),
        hitbench,
        calls,
        bare: Vec::new(),
        detector: Vec::new(),
        bpftrace: bpftrace.map(|_| Vec::new()).map_err(Clone::clone),
    };
    let mut r = PerHit {
        newest: series(&env.newest.version, hitbench.to_path_buf(), CALLS),
        oldest: env
            .go
            .first()
            .filter(|t| t.version != env.newest.version)
            .map(|t| {
                let bin = env.fixture(&t.version, "default", "hitbench");
                series(&t.version, bin, CALLS_OLDEST)
            }),
    };
    let addr = probe_addresses(&env.detector, hitbench, SYMBOL)?;
    let old_addr = match &r.oldest {
        Some(o) => Some(probe_addresses(&env.detector, &o.hitbench, SYMBOL)?),
        None => None,
    };
    // detector's runs of both versions back to back, then the slow bpftrace runs: on
    // a loaded machine, the two per-hit costs compared are taken close together.
    for round in 1..=ROUNDS {
        r.newest.round(env, round, &addr)?;
        if let (Some(o), Some(a)) = (&mut r.oldest, &old_addr) {
            o.round(env, round, a)?;
        }
        r.newest.bpftrace_round(round, &addr, bpftrace);
        if let (Some(o), Some(a)) = (&mut r.oldest, &old_addr) {
            o.bpftrace_round(round, a, bpftrace);
        }
    }
    Ok(r)
}

impl Series {
    /// One bare run and one under detector.
    fn round(&mut self, env: &Env, round: usize, addr: &Addresses) -> Result<()> {
        let go = &self.go;
        let bare = bare_run(&self.hitbench, self.calls).context("bare hitbench run")?;
        eprintln!(
            "bench: per-hit {round}/{ROUNDS} go{go}: bare       {:>9.2} ns/op",
            bare.ns_per_op
        );
        self.bare.push(bare);

        let det = detector_run(
            &env.detector,
            &self.hitbench,
            self.calls,
            addr,
            env.budget_flag,
        )
        .context("hitbench under detector")?;
        eprintln!(
            "bench: per-hit {round}/{ROUNDS} go{go}: detector   {:>9.2} ns/op ({} hits)",
            det.ns_per_op,
            shown(det.hits)
        );
        self.detector.push(det);
        Ok(())
    }

    /// One run under bpftrace, unless it is unavailable or already failed.
    fn bpftrace_round(
        &mut self,
        round: usize,
        addr: &Addresses,
        bpftrace: Result<&PathBuf, &String>,
    ) {
        let go = &self.go;
        if let (Ok(runs), Ok(bin)) = (&mut self.bpftrace, bpftrace) {
            match bpftrace_run(bin, &self.hitbench, self.calls, addr) {
                Ok(run) => {
                    eprintln!(
                        "bench: per-hit {round}/{ROUNDS} go{go}: bpftrace   {:>9.2} ns/op ({} hits)",
                        run.ns_per_op,
                        shown(run.hits)
                    );
                    runs.push(run);
                }
                Err(e) => {
                    eprintln!("bench: bpftrace run failed: {e:#}");
                    self.bpftrace = Err(format!("bpftrace failed: {e:#}"));
                }
            }
        }
    }
}

fn shown(n: Option<u64>) -> String {
    n.map_or_else(|| "?".into(), thousands)
}

fn bare_run(hitbench: &Path, calls: u64) -> Result<Run> {
    let mut hb = start(hitbench, calls)?;
    let ns_per_op = hb.time_loop()?;
    hb.finish()?;
    Ok(Run {
        ns_per_op,
        hits: None,
        attach: None,
    })
}

fn detector_run(
    detector: &Path,
    hitbench: &Path,
    calls: u64,
    addr: &Addresses,
    budget_flag: bool,
) -> Result<Run> {
    let mut hb = start(hitbench, calls)?;
    let started = Instant::now();
    // Every hit probed: this row measures the cost of one hit, not the budget.
    let extra: &[&str] = if budget_flag {
        &["--overhead-budget", "0"]
    } else {
        &[]
    };
    let mut det = Diagnose::start(detector, hb.pid, extra)?;
    let attach = det.wait_attached(started, Duration::from_secs(60))?;
    wait_breakpoint(hb.pid, addr.probe, Duration::from_secs(5))
        .context("detector's uprobe is not in the target")?;
    let ns_per_op = hb.time_loop()?;
    let (_, json) = det.stop()?;
    hb.finish()?;
    let hits = calls_of(&json, SYMBOL).and_then(|c| c["calls"].as_u64());
    Ok(Run {
        ns_per_op,
        hits,
        attach: Some(attach),
    })
}

fn bpftrace_run(bpftrace: &Path, hitbench: &Path, calls: u64, addr: &Addresses) -> Result<Run> {
    let mut hb = start(hitbench, calls)?;
    let program = format!(
        "uprobe:{}:{SYMBOL} {{ @[pid] = count(); }}",
        hitbench.display()
    );
    let mut child = Command::new(bpftrace)
        .args(["-e", &program])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {}", bpftrace.display()))?;
    let out = lines(child.stdout.take().expect("piped"));
    let err = collect(child.stderr.take().expect("piped"));
    let mut bt = Guard(child);
    if let Err(e) = next_line(&out, Duration::from_secs(60), |l| {
        l.starts_with("Attaching")
    }) {
        let _ = bt.0.kill();
        let _ = bt.0.wait();
        let msg = err.join().unwrap_or_default();
        bail!("{e:#}: {}", first_line(&msg));
    }
    // "Attaching N probes..." is printed before the probes are attached: wait until
    // the uprobe's breakpoint is in the target's text.
    wait_breakpoint(hb.pid, addr.entry, Duration::from_secs(60))
        .context("bpftrace's uprobe did not appear in the target")?;
    let ns_per_op = hb.time_loop()?;
    signal(bt.0.id(), "INT")?;
    let status = wait_timeout(&mut bt.0, Duration::from_secs(30))?
        .context("bpftrace did not exit within 30 s of SIGINT")?;
    if !status.success() {
        // bpftrace reports errors on detach but exits once its map is printed.
        let msg = err.join().unwrap_or_default();
        eprintln!("bench: bpftrace exited with {status}: {}", first_line(&msg));
    }
    // bpftrace prints its map on exit: `@[PID]: COUNT`.
    let key = format!("@[{}]:", hb.pid);
    hb.finish()?;
    let hits = out.try_iter().find_map(|l| {
        let n = l.strip_prefix(&key)?;
        n.trim().parse::<u64>().ok()
    });
    Ok(Run {
        ns_per_op,
        hits,
        attach: None,
    })
}

/// bpftrace on PATH (installed with apt-get when missing): its path and version, or
/// why it is unavailable.
pub fn bpftrace() -> Result<(PathBuf, String), String> {
    let version = || {
        Command::new("bpftrace")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(v) = version() {
        return Ok(("bpftrace".into(), v));
    }
    eprintln!("bench: installing Debian's bpftrace package");
    let install = || {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "bpftrace"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let installed = install().or_else(|_| {
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        install()
    });
    if let Err(e) = installed {
        return Err(format!("could not install bpftrace: {e:#}"));
    }
    version()
        .map(|v| ("bpftrace".into(), v))
        .ok_or_else(|| "bpftrace installed but `bpftrace --version` fails".into())
}

pub fn render(md: &mut String, hitbench: &Path, r: &PerHit) -> Result<()> {
    let rel = |p: &Path| {
        p.strip_prefix(workspace_root())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    writeln!(md, "\n## 1. Per-hit cost on the target\n")?;
    let n = &r.newest;
    writeln!(
        md,
        "`{} -fn gomaxprocs -n {calls}` calls `{SYMBOL}(0)` {calls} times in a tight \
         loop and times the loop itself (ns per call). Each configuration runs {ROUNDS} \
         times, the three interleaved; the median is reported. The tracer is attached \
         before the loop starts and counts the hits it saw; detector runs with every hit \
         probed (`--overhead-budget 0` when it has the flag): this row is the cost of one \
         hit, the budget is row 2's subject.\n",
        rel(hitbench),
        calls = thousands(CALLS),
    )?;
    writeln!(md, "Go {}:\n", n.go)?;
    let (det, bt) = table(md, n)?;
    let bare = n.bare_median();
    match bt {
        Some(bt) => writeln!(
            md,
            "Ratios: detector ÷ bare = **{}**, bpftrace ÷ bare = **{}**, \
             detector ÷ bpftrace = **{}**.",
            ratio(det / bare),
            ratio(bt / bare),
            ratio(det / bt)
        )?,
        None => writeln!(
            md,
            "Ratios: detector ÷ bare = **{}**; bpftrace not measured.",
            ratio(det / bare)
        )?,
    }
    if let Some(o) = &r.oldest {
        writeln!(
            md,
            "\nGo {} (`{}`, {} calls a loop, in the same rounds):\n",
            o.go,
            rel(&o.hitbench),
            thousands(o.calls)
        )?;
        table(md, o)?;
        if let Some((go, per_hit, x)) = r.oldest_ratio() {
            writeln!(
                md,
                "detector's cost per hit on Go {go}: {per_hit:.0} ns, **{}×** Go {}'s \
                 (target: at most {OLDEST_PER_HIT_TARGET}×).",
                ratio(x),
                n.go
            )?;
        }
    }
    if bt.is_some() {
        writeln!(
            md,
            "\nThe two uprobes are not on the same instruction. bpftrace's \
             `uprobe:BINARY:FUNC` sits on the first instruction, the stack check \
             `cmp rsp, 0x10(r14)`, which the kernel single-steps out of line (a second \
             trap, a debug exception, on every hit). detector's sits on an instruction the \
             kernel emulates: after the stack-check prologue on Go 1.21+ (`push rbp`), and \
             on Go 1.19, whose frame is built by `sub rsp, N` (single-stepped), on the stack \
             check's own `jbe`, its program ignoring the hits where the jump to morestack \
             will be taken (the flags are in the trap's registers). Likely most of the \
             difference (not isolated here: this bpftrace build cannot place a uprobe at an \
             offset, \"compiled without (k|u)probe offset support\")."
        )?;
    }
    let over = |s: &Series| {
        s.bpftrace
            .as_ref()
            .ok()
            .and_then(|runs| runs.iter().map(|x| x.hits).min().flatten())
            .is_some_and(|h| h > s.calls)
    };
    if over(n) || r.oldest.as_ref().is_some_and(over) {
        writeln!(
            md,
            "\nbpftrace counts more hits than calls: a probe on the first instruction \
             fires again when the function is re-run after `morestack` (a preemption \
             request fails the stack check); detector's does not count that hit."
        )?;
    }
    let attach: Vec<Duration> = n.detector.iter().filter_map(|x| x.attach).collect();
    if !attach.is_empty() {
        writeln!(
            md,
            "\ndetector, started after hitbench, took {} from its start until its probes \
             were in (it installs its SIGINT handler then; polled every {} ms).",
            spread(&attach),
            POLL.as_millis()
        )?;
    }
    Ok(())
}

/// One version's table; returns detector's and bpftrace's median ns/op.
fn table(md: &mut String, s: &Series) -> Result<(f64, Option<f64>)> {
    writeln!(
        md,
        "| configuration | ns/op (median) | runs | × bare | added per hit | hits counted (min) |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|")?;
    let bare = s.bare_median();
    let mut row = |name: &str, runs: &[Run]| -> Result<f64> {
        let m = median_f(runs.iter().map(|x| x.ns_per_op));
        let all: Vec<String> = runs.iter().map(|x| format!("{:.1}", x.ns_per_op)).collect();
        let hits = runs.iter().map(|x| x.hits).min().flatten();
        let hits = match hits {
            None if name.starts_with("bare") => "–".to_string(),
            None => "not reported".to_string(),
            Some(h) if h < s.calls => format!("{} (**fewer than the calls**)", thousands(h)),
            Some(h) => thousands(h),
        };
        let added = if name.starts_with("bare") {
            "–".to_string()
        } else {
            format!("+{:.0} ns", m - bare)
        };
        writeln!(
            md,
            "| {name} | {m:.1} | {} | {} | {added} | {hits} |",
            all.join(", "),
            ratio(m / bare)
        )?;
        Ok(m)
    };
    row("bare (no probes)", &s.bare)?;
    let det = row("`detector diagnose --pid PID`", &s.detector)?;
    let bt = match &s.bpftrace {
        Ok(runs) if runs.len() == ROUNDS => Some(row(
            &format!("bpftrace `uprobe:…:{SYMBOL} {{ @[pid] = count(); }}`"),
            runs,
        )?),
        Ok(_) => None,
        Err(why) => {
            writeln!(md, "| bpftrace | bpftrace unavailable: {why} | | | | |")?;
            None
        }
    };
    writeln!(md)?;
    Ok((det, bt))
}
