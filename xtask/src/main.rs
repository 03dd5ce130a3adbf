//! Project tasks: `cargo xtask setup | fixtures | dist | test | demo | accuracy | golden |
//! bench | soak | fuzz`.
//!
//! Every task installs what it needs and skips what is already there, so that the
//! README's two commands work on a fresh machine and cost little on a warm one.
mod bench;
mod corpus;
mod dist;
mod fixtures;
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, fixtures, tests and the demo for detector")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install rust-src, bpf-linker and the Go toolchains (skips what is present).
    Setup,
    /// Build the Go fixture programs for every Go version and build kind.
    Fixtures {
        /// Only these Go versions (e.g. 1.19, 1.27.3); default: all.
        #[arg(long = "go", value_delimiter = ',')]
        go: Vec<String>,
    },
    /// Build the release artifacts in target/dist/: the static binary, the .deb, the
    /// OCI image archive and SHA256SUMS.
    Dist,
    /// Set up, build fixtures, then run clippy, fmt and every test.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the accuracy matrix (case × variant × Go version × build kind, live) and
    /// print its confusion matrix. Needs root.
    Accuracy {
        /// Only the covering subset that CI runs.
        #[arg(long)]
        quick: bool,
        /// Cells run at once (each is one fixture and one detector).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Only Go versions whose directory name contains this (repeatable), e.g. 1.19.
        #[arg(long)]
        go: Vec<String>,
        /// Only these build kinds (default, stripped, pie; repeatable).
        #[arg(long)]
        kind: Vec<String>,
        /// Only these cases (repeatable), e.g. gc.
        #[arg(long)]
        case: Vec<String>,
        /// detector's --overhead-budget (percent of a core); default: detector's own.
        #[arg(long)]
        overhead_budget: Option<f64>,
    },
    /// Record the rules' golden data (detector/src/rules/testdata/<go>/<case>-<variant>.json):
    /// the `collected` facts of each rule's fixture case (misuse and fixed) and of the
    /// healthy service, diagnosed live on the default build kind. Needs root.
    Golden {
        /// Go versions whose directory name contains this (repeatable).
        #[arg(long, default_values_t = [GOLDEN_GO[0].to_string(), GOLDEN_GO[1].to_string()])]
        go: Vec<String>,
        /// Only these cases (repeatable), e.g. gctunables; default: all.
        #[arg(long)]
        case: Vec<String>,
    },
    /// Set up, start a demo Go service that misuses ReadMemStats, and diagnose it live.
    Demo {
        /// How long to watch the demo service.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Target safety soak: for every Go version, the service fixture under load from wrk
    /// while detector diagnose attaches and detaches N times, some runs SIGKILLed at
    /// random moments. Needs root.
    Soak {
        /// Attach/detach cycles per Go version.
        #[arg(long, default_value_t = 1000)]
        cycles: usize,
        /// Only Go versions whose directory name contains this (repeatable), e.g. 1.19.
        #[arg(long)]
        go: Vec<String>,
        /// One diagnose run in every K (chosen at random) is SIGKILLed; 0: none.
        #[arg(long, default_value_t = 10)]
        kill_every: usize,
        /// Seed of the random choices (default: the time); printed, to replay a run.
        #[arg(long)]
        seed: Option<u64>,
        /// Only this build kind (default, stripped, pie, cgo); default: rotate per version.
        #[arg(long)]
        kind: Option<String>,
        /// Instead: the host agent's soak (`detector watch`): --churn-seconds of new
        /// short-lived Go processes at --churn-rate per second, then --restarts
        /// SIGKILL + restart cycles while a target serves requests.
        #[arg(long)]
        agent: bool,
        #[arg(long, default_value_t = 600)]
        churn_seconds: u64,
        #[arg(long, default_value_t = 50)]
        churn_rate: u32,
        #[arg(long, default_value_t = 100)]
        restarts: usize,
    },
    /// Measure detector's cost (per probe hit vs. bare and bpftrace; target CPU at
    /// 1k/10k/100k misuse calls/s; the watch agent's CPU and RSS at 1/10/100 processes),
    /// its analysis and attach time on large binaries and its STW accuracy; write
    /// BENCHMARKS.md. Needs root.
    Bench,
    /// Build the cargo-fuzz targets (fuzz/) and run each on the seed corpus; fails on
    /// any crash. See docs/fuzzing.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Only this target (repeatable): buildinfo, pclntab, symtab, elf.
        #[arg(long)]
        target: Vec<String>,
        /// Regenerate the seed corpus (fuzz/corpus/*/seed-*) instead of fuzzing.
        #[arg(long)]
        seed: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        // The test corpus only where the tests may run: not for the demo.
        Cmd::Setup => setup::all().and_then(|_| corpus::install()),
        Cmd::Fixtures { go } => {
            let tools = setup::all()?;
            fixtures::build_all(&tools, &go)
        }
        Cmd::Dist => dist::run().map(|_| ()),
        Cmd::Test { args } => test(&args),
        Cmd::Demo { duration } => demo(&duration),
        Cmd::Bench => bench::run(),
        Cmd::Fuzz { seed: true, .. } => fuzz::seed(&setup::all()?),
        Cmd::Fuzz {
            seconds, target, ..
        } => fuzz::run(seconds, &target),
        Cmd::Soak {
            agent: true,
            churn_seconds,
            churn_rate,
            restarts,
            ..
        } => agent_soak(churn_seconds, churn_rate, restarts),
        Cmd::Soak {
            cycles,
            go,
            kill_every,
            seed,
            kind,
            ..
        } => soak(cycles, &go, kill_every, seed, kind),
        Cmd::Accuracy {
            quick,
            jobs,
            go,
            kind,
            case,
            overhead_budget,
        } => accuracy(quick, jobs, &go, &kind, &case, overhead_budget),
        Cmd::Golden { go, case } => golden(&go, &case),
    }
}

/// Go releases whose golden data the rules' unit test reads: the newest and the oldest.
const GOLDEN_GO: [&str; 2] = ["1.27.3", "1.19.8"];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs a command to completion, failing with the command line when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// `cargo` with the bpf-linker on PATH (detector's build script compiles the eBPF code).
fn cargo(tools: &setup::Tools) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("PATH", tools.path_env());
    cmd
}

fn test(extra: &[String]) -> Result<()> {
    let tools = setup::all()?;
    corpus::install()?;
    fixtures::build_all(&tools, &[])?;
    let root = workspace_root();
    eprintln!("xtask: cargo fmt --check");
    run_cmd(cargo(&tools).args(["fmt", "--all", "--", "--check"]))?;
    eprintln!("xtask: cargo clippy");
    run_cmd(cargo(&tools).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    eprintln!("xtask: building detector");
    run_cmd(cargo(&tools).args(["build", "--package", "detector"]))?;
    let bin = root.join("target/debug/detector");
    eprintln!("xtask: cargo xtask dist (tests/tests/dist.rs checks the artifacts)");
    let dist = dist::run()?;
    eprintln!("xtask: cargo test");
    let mut child = cargo(&tools)
        .args(["test", "--no-fail-fast"])
        .arg("--")
        .args(extra)
        .env("DETECTOR_BIN", &bin)
        .env("DETECTOR_FIXTURES", fixtures::root())
        .env("DETECTOR_DIST", &dist)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    // Echo cargo's output and add up its "test result" lines into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    let out = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        let n = p.trim().strip_suffix(word)?.split_whitespace().last()?;
                        n.parse::<u64>().ok()
                    })
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    eprintln!("xtask: bounded fuzzing ({} s per target)", fuzz::CI_SECONDS);
    fuzz::run(fuzz::CI_SECONDS, &[])
}

/// Sets up, builds the fixtures and the release detector, and returns the command
/// that runs `bin` of detector-tests (a live runner: accuracy, soak) against them;
/// its own arguments follow.
fn live_runner(bin: &str) -> Result<Command> {
    let tools = setup::all()?;
    fixtures::build_all(&tools, &[])?;
    run_cmd(cargo(&tools).args(["build", "--release", "--package", "detector"]))?;
    let mut cmd = cargo(&tools);
    cmd.args(["run", "--quiet", "--release", "--package", "detector-tests"])
        .args(["--bin", bin, "--"])
        .env(
            "DETECTOR_BIN",
            workspace_root().join("target/release/detector"),
        )
        .env("DETECTOR_FIXTURES", fixtures::root());
    Ok(cmd)
}

fn accuracy(
    quick: bool,
    jobs: usize,
    go: &[String],
    kind: &[String],
    case: &[String],
    overhead_budget: Option<f64>,
) -> Result<()> {
    let mut cmd = live_runner("accuracy")?;
    cmd.args(["--jobs", &jobs.to_string()]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(b) = overhead_budget {
        cmd.args(["--overhead-budget", &b.to_string()]);
    }
    for (flag, values) in [("--go", go), ("--kind", kind), ("--case", case)] {
        for v in values {
            cmd.args([flag, v]);
        }
    }
    run_cmd(&mut cmd)
}

fn golden(go: &[String], case: &[String]) -> Result<()> {
    let mut cmd = live_runner("accuracy")?;
    cmd.arg("--record-golden")
        .arg(workspace_root().join("detector/src/rules/testdata"));
    for (flag, values) in [("--go", go), ("--case", case)] {
        for v in values {
            cmd.args([flag, v]);
        }
    }
    run_cmd(&mut cmd)
}

fn soak(
    cycles: usize,
    go: &[String],
    kill_every: usize,
    seed: Option<u64>,
    kind: Option<String>,
) -> Result<()> {
    let mut cmd = live_runner("soak")?;
    cmd.args(["--cycles", &cycles.to_string()])
        .args(["--kill-every", &kill_every.to_string()]);
    for v in go {
        cmd.args(["--go", v]);
    }
    if let Some(s) = seed {
        cmd.args(["--seed", &s.to_string()]);
    }
    if let Some(k) = kind {
        cmd.args(["--kind", &k]);
    }
    run_cmd(&mut cmd)
}

fn agent_soak(churn_seconds: u64, churn_rate: u32, restarts: usize) -> Result<()> {
    let mut cmd = live_runner("agent_soak")?;
    cmd.args(["--churn-seconds", &churn_seconds.to_string()])
        .args(["--churn-rate", &churn_rate.to_string()])
        .args(["--restarts", &restarts.to_string()]);
    run_cmd(&mut cmd)
}

fn demo(duration: &str) -> Result<()> {
    let tools = setup::all()?;
    let newest = tools.go.last().context("no Go toolchain installed")?;
    let demo_bin = fixtures::build_demo(newest)?;
    run_cmd(cargo(&tools).args(["build", "--release", "--package", "detector"]))?;
    let detector = workspace_root().join("target/release/detector");

    eprintln!("xtask: starting the demo service {}", demo_bin.display());
    let mut service = Command::new(&demo_bin)
        .args(["-rate", "400", "-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("could not start the demo service")?;
    // Give it a moment to reach its steady state before attaching.
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!(
        "xtask: {} diagnose --pid {} --duration {duration}",
        detector.display(),
        service.id()
    );
    let status = Command::new(&detector)
        .args(["diagnose", "--pid", &service.id().to_string()])
        .args(["--duration", duration])
        .status();
    let _ = service.kill();
    let _ = service.wait();
    let status = status.context("could not run detector")?;
    // Exit code 1 means "findings": exactly what the demo is meant to show.
    match status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => bail!("detector diagnose failed: {status}"),
    }
}
