//! Row 1: the cost of one probe hit on the target. hitbench calls
//! `runtime.GOMAXPROCS(0)` in a tight loop and times it itself, bare, under
//! `detector diagnose` and under an equivalent bpftrace uprobe (configurations
//! interleaved, median of [`ROUNDS`]).
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

pub struct PerHit {
    bare: Vec<Run>,
    detector: Vec<Run>,
    /// Err: why bpftrace could not be measured.
    bpftrace: Result<Vec<Run>, String>,
}

impl PerHit {
    pub fn bare_median(&self) -> f64 {
        median_f(self.bare.iter().map(|x| x.ns_per_op))
    }

    /// detector's and (when measured) bpftrace's median ns/op.
    pub fn medians(&self) -> (f64, Option<f64>) {
        let det = median_f(self.detector.iter().map(|x| x.ns_per_op));
        let bt = match &self.bpftrace {
            Ok(runs) if runs.len() == ROUNDS => Some(median_f(runs.iter().map(|x| x.ns_per_op))),
            _ => None,
        };
        (det, bt)
    }
}

fn args() -> [String; 4] {
    [
        "-fn".into(),
        "gomaxprocs".into(),
        "-n".into(),
        CALLS.to_string(),
    ]
}

fn start(hitbench: &Path) -> Result<Hitbench> {
    let a = args();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    Hitbench::start(hitbench, &a)
}

pub fn measure(env: &Env, hitbench: &Path, bpftrace: Result<&PathBuf, &String>) -> Result<PerHit> {
    let addr = probe_addresses(&env.detector, hitbench, SYMBOL)?;
    let mut r = PerHit {
        bare: Vec::new(),
        detector: Vec::new(),
        bpftrace: bpftrace.map(|_| Vec::new()).map_err(Clone::clone),
    };
    for round in 1..=ROUNDS {
        let bare = bare_run(hitbench).context("bare hitbench run")?;
        eprintln!(
            "bench: per-hit {round}/{ROUNDS}: bare       {:>9.2} ns/op",
            bare.ns_per_op
        );
        r.bare.push(bare);

        let det = detector_run(&env.detector, hitbench, &addr, env.budget_flag)
            .context("hitbench under detector")?;
        eprintln!(
            "bench: per-hit {round}/{ROUNDS}: detector   {:>9.2} ns/op ({} hits)",
            det.ns_per_op,
            shown(det.hits)
        );
        r.detector.push(det);

        if let (Ok(runs), Ok(bin)) = (&mut r.bpftrace, bpftrace) {
            match bpftrace_run(bin, hitbench, &addr) {
                Ok(run) => {
                    eprintln!(
                        "bench: per-hit {round}/{ROUNDS}: bpftrace   {:>9.2} ns/op ({} hits)",
                        run.ns_per_op,
                        shown(run.hits)
                    );
                    runs.push(run);
                }
                Err(e) => {
                    eprintln!("bench: bpftrace run failed: {e:#}");
                    r.bpftrace = Err(format!("bpftrace failed: {e:#}"));
                }
            }
        }
    }
    Ok(r)
}

fn shown(n: Option<u64>) -> String {
    n.map_or_else(|| "?".into(), thousands)
}

fn bare_run(hitbench: &Path) -> Result<Run> {
    let mut hb = start(hitbench)?;
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
    addr: &Addresses,
    budget_flag: bool,
) -> Result<Run> {
    let mut hb = start(hitbench)?;
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

fn bpftrace_run(bpftrace: &Path, hitbench: &Path, addr: &Addresses) -> Result<Run> {
    let mut hb = start(hitbench)?;
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
    let rel = hitbench
        .strip_prefix(workspace_root())
        .unwrap_or(hitbench)
        .display();
    writeln!(md, "\n## 1. Per-hit cost on the target\n")?;
    writeln!(
        md,
        "`{rel} -fn gomaxprocs -n {calls}` calls `{SYMBOL}(0)` {calls} times in a tight \
         loop and times the loop itself (ns per call). Each configuration runs {ROUNDS} \
         times, the three interleaved; the median is reported. The tracer is attached \
         before the loop starts and counts the hits it saw; detector runs with every hit \
         probed (`--overhead-budget 0` when it has the flag): this row is the cost of one \
         hit, the budget is row 2's subject.\n",
        calls = thousands(CALLS),
    )?;
    writeln!(
        md,
        "| configuration | ns/op (median) | runs | × bare | added per hit | hits counted (min) |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|")?;
    let bare = r.bare_median();
    let mut row = |name: &str, runs: &[Run]| -> Result<f64> {
        let m = median_f(runs.iter().map(|x| x.ns_per_op));
        let all: Vec<String> = runs.iter().map(|x| format!("{:.1}", x.ns_per_op)).collect();
        let hits = runs.iter().map(|x| x.hits).min().flatten();
        let hits = match hits {
            None if name.starts_with("bare") => "–".to_string(),
            None => "not reported".to_string(),
            Some(h) if h < CALLS => format!("{} (**fewer than the calls**)", thousands(h)),
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
    row("bare (no probes)", &r.bare)?;
    let det = row("`detector diagnose --pid PID`", &r.detector)?;
    let bt = match &r.bpftrace {
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
    if bt.is_some() {
        writeln!(
            md,
            "\nThe two uprobes are not on the same instruction. detector's sits after \
             the stack-check prologue (on `push rbp`, which x86 uprobes emulate); \
             bpftrace's `uprobe:BINARY:FUNC` sits on the first instruction, the stack \
             check `cmp rsp, 0x10(r14)`, which the kernel single-steps out of line: \
             likely most of the difference (not isolated here: this bpftrace build \
             cannot place a uprobe at an offset, \"compiled without (k|u)probe offset \
             support\")."
        )?;
    }
    let bt_hits = r
        .bpftrace
        .as_ref()
        .ok()
        .and_then(|runs| runs.iter().map(|x| x.hits).min().flatten());
    if bt_hits.is_some_and(|h| h > CALLS) {
        writeln!(
            md,
            "\nbpftrace counts more hits than calls: a probe on the first instruction \
             fires again when the function is re-run after `morestack` (a preemption \
             request fails the stack check); detector's probe after the prologue does not."
        )?;
    }
    let attach: Vec<Duration> = r.detector.iter().filter_map(|x| x.attach).collect();
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
