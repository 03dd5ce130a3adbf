//! `cargo xtask bench`: measures what detector costs and writes BENCHMARKS.md.
//!
//! 1. Per-hit cost on the target: the `hitbench` fixture calls `runtime.GOMAXPROCS(0)`
//!    in a tight loop and times it itself, bare, under `detector diagnose` and under an
//!    equivalent bpftrace uprobe (configurations interleaved, median of [`ROUNDS`]).
//! 2. Analysis and attach time on large real binaries: the Go toolchain's `compile`
//!    and `link` (and `compile` rebuilt stripped): `detector inspect` wall time, and
//!    `detector diagnose` from its start until its probes are in, on a live process of
//!    each binary (kept alive blocked on opening a FIFO).
//!
//! Every number in the file comes from the same run. Needs root (uprobes).
use std::{
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

use crate::{cargo, fixtures, run_cmd, setup, workspace_root};

/// Calls in each timed loop of hitbench.
const CALLS: u64 = 2_000_000;
/// Runs of each configuration; the median is reported.
const ROUNDS: usize = 3;
/// The probed function hitbench calls, as bpftrace and detector's report name it.
const SYMBOL: &str = "runtime.GOMAXPROCS";
/// How often a process's state is polled while waiting for it.
const POLL: Duration = Duration::from_millis(5);

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench attaches uprobes: run it as root (sudo cargo xtask bench)");
    }
    let tools = setup::all()?;
    let newest = tools.go.last().context("no Go toolchain installed")?;
    fixtures::build_all(&tools, std::slice::from_ref(&newest.version))?;
    let hitbench = fixtures::root()
        .join(format!("go{}", newest.version))
        .join("default/hitbench");
    if !hitbench.exists() {
        bail!("{} was not built", hitbench.display());
    }
    eprintln!("bench: building detector (release)");
    run_cmd(cargo(&tools).args(["build", "--release", "--package", "detector"]))?;
    let detector = workspace_root().join("target/release/detector");
    let work = workspace_root().join("target/bench");
    fs::create_dir_all(&work)?;

    let bpftrace = bpftrace();
    let date = text("date", &["-u"]);
    let load_start = loadavg();

    let hits = per_hit(&detector, &hitbench, bpftrace.as_ref().map(|(p, _)| p))?;
    let big = large_binaries(&detector, newest, &hitbench, &work)?;

    let mut md = header(
        newest,
        bpftrace.as_ref().ok().map(|(_, v)| v.as_str()),
        &date,
        [load_start, loadavg()],
    );
    render_per_hit(&mut md, &hitbench, &hits)?;
    render_large(&mut md, &big)?;
    writeln!(
        md,
        "\n**Not measured yet:** throughput at 1k/10k/100k misuse calls/s (calls counted \
         vs. made, and the target's slowdown), the `watch` agent's CPU and RSS with 1/10/100 \
         watched processes, and the accuracy of the measured stop-the-world time against \
         runtime/metrics' `/sched/pauses/total/gc:seconds`."
    )?;
    let out = workspace_root().join("BENCHMARKS.md");
    fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    print!("{md}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// 1. Per-hit cost

struct Run {
    ns_per_op: f64,
    /// Probe hits the tracer counted for the target during the run.
    hits: Option<u64>,
    /// detector only: from its start until its probes were in.
    attach: Option<Duration>,
}

struct PerHit {
    bare: Vec<Run>,
    detector: Vec<Run>,
    /// Err: why bpftrace could not be measured.
    bpftrace: Result<Vec<Run>, String>,
}

fn per_hit(
    detector: &Path,
    hitbench: &Path,
    bpftrace: Result<&PathBuf, &String>,
) -> Result<PerHit> {
    let addr = probe_addresses(detector, hitbench)?;
    let mut r = PerHit {
        bare: Vec::new(),
        detector: Vec::new(),
        bpftrace: bpftrace.map(|_| Vec::new()).map_err(Clone::clone),
    };
    for round in 1..=ROUNDS {
        let bare = bare_run(hitbench).context("bare hitbench run")?;
        eprintln!(
            "bench: round {round}/{ROUNDS}: bare       {:>9.2} ns/op",
            bare.ns_per_op
        );
        r.bare.push(bare);

        let det = detector_run(detector, hitbench, &addr).context("hitbench under detector")?;
        eprintln!(
            "bench: round {round}/{ROUNDS}: detector   {:>9.2} ns/op ({} hits)",
            det.ns_per_op,
            shown(det.hits)
        );
        r.detector.push(det);

        if let (Ok(runs), Ok(bin)) = (&mut r.bpftrace, bpftrace) {
            match bpftrace_run(bin, hitbench, &addr) {
                Ok(run) => {
                    eprintln!(
                        "bench: round {round}/{ROUNDS}: bpftrace   {:>9.2} ns/op ({} hits)",
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

/// A running hitbench, stopped before its timed loop.
struct Hitbench {
    proc: Guard,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    pid: u32,
}

impl Hitbench {
    fn start(bin: &Path) -> Result<Hitbench> {
        let mut child = Command::new(bin)
            .args(["-fn", "gomaxprocs", "-n", &CALLS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", bin.display()))?;
        let stdin = child.stdin.take();
        let out = lines(child.stdout.take().expect("piped"));
        let proc = Guard(child);
        let ready = next_line(&out, Duration::from_secs(10), |l| l.starts_with("ready "))
            .context("hitbench did not print `ready pid=N`")?;
        let pid = ready
            .strip_prefix("ready pid=")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected hitbench line {ready:?}"))?;
        Ok(Hitbench {
            proc,
            stdin,
            out,
            pid,
        })
    }

    /// Starts the timed loop and returns its ns per call.
    fn time_loop(&mut self) -> Result<f64> {
        let stdin = self.stdin.as_mut().expect("open until finish");
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        let line = next_line(&self.out, Duration::from_secs(300), |l| {
            l.starts_with("ns_per_op=")
        })
        .context("hitbench did not report ns_per_op")?;
        line.split_whitespace()
            .next()
            .and_then(|f| f.strip_prefix("ns_per_op="))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unexpected hitbench line {line:?}"))
    }

    /// Lets it exit (EOF on stdin) and checks that it did.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        match wait_timeout(&mut self.proc.0, Duration::from_secs(10))? {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("hitbench exited with {s}"),
            None => bail!("hitbench did not exit after its loop"),
        }
    }
}

fn bare_run(hitbench: &Path) -> Result<Run> {
    let mut hb = Hitbench::start(hitbench)?;
    let ns_per_op = hb.time_loop()?;
    hb.finish()?;
    Ok(Run {
        ns_per_op,
        hits: None,
        attach: None,
    })
}

fn detector_run(detector: &Path, hitbench: &Path, addr: &Addresses) -> Result<Run> {
    let mut hb = Hitbench::start(hitbench)?;
    let started = Instant::now();
    let mut det = Diagnose::start(detector, hb.pid)?;
    let attach = det.wait_attached(started, Duration::from_secs(60))?;
    wait_breakpoint(hb.pid, addr.probe, Duration::from_secs(5))
        .context("detector's uprobe is not in the target")?;
    let ns_per_op = hb.time_loop()?;
    let (_, json) = det.stop()?;
    hb.finish()?;
    let hits = json_u64(
        &json,
        &["\"collected\"", &format!("\"symbol\": \"{SYMBOL}\"")],
        "calls",
    );
    Ok(Run {
        ns_per_op,
        hits,
        attach: Some(attach),
    })
}

/// `detector diagnose --pid PID --duration 60s --format json`, ended by SIGINT.
struct Diagnose {
    proc: Guard,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Diagnose {
    fn start(detector: &Path, pid: u32) -> Result<Diagnose> {
        let mut child = Command::new(detector)
            .args(["diagnose", "--pid", &pid.to_string()])
            .args(["--duration", "60s", "--format", "json"])
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

    /// diagnose installs its SIGINT handler once every probe is attached: the first
    /// moment it catches SIGINT is when the probes are in.
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
    fn stop(mut self) -> Result<(Duration, String)> {
        let asked = Instant::now();
        signal(self.proc.0.id(), "INT")?;
        let status = wait_timeout(&mut self.proc.0, Duration::from_secs(60))?
            .context("detector did not exit within 60 s of SIGINT")?;
        let took = asked.elapsed();
        let json = self
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
        Ok((took, json))
    }
}

fn bpftrace_run(bpftrace: &Path, hitbench: &Path, addr: &Addresses) -> Result<Run> {
    let mut hb = Hitbench::start(hitbench)?;
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
fn bpftrace() -> Result<(PathBuf, String), String> {
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

// ---------------------------------------------------------------------------------
// 2. Analysis and attach time

struct Big {
    name: String,
    path: PathBuf,
    size: u64,
    /// Err: why this binary could not be measured.
    times: Result<BigTimes, String>,
}

struct BigTimes {
    inspect: Vec<Duration>,
    attach: Vec<Duration>,
    stop: Vec<Duration>,
    probes: Option<u64>,
    stripped: Option<bool>,
    functions: Option<u64>,
}

fn large_binaries(
    detector: &Path,
    newest: &setup::GoTool,
    hitbench: &Path,
    work: &Path,
) -> Result<Vec<Big>> {
    let tooldir = go_output(newest, &["env", "GOTOOLDIR"])?;
    let tooldir = PathBuf::from(tooldir.trim());
    let mut bins: Vec<(String, PathBuf, Result<(), String>)> = vec![
        (
            "hitbench (reference)".into(),
            hitbench.to_path_buf(),
            Ok(()),
        ),
        ("compile".into(), tooldir.join("compile"), Ok(())),
        ("link".into(), tooldir.join("link"), Ok(())),
    ];
    let stripped = work.join("compile-stripped");
    let built = build_stripped_compile(newest, &stripped).map_err(|e| format!("{e:#}"));
    bins.push((
        "compile, rebuilt `-ldflags='-s -w'`".into(),
        stripped,
        built,
    ));

    let fifo = work.join("blocked.go");
    let mut out = Vec::new();
    for (name, path, ready) in bins {
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let times = ready.and_then(|()| {
            eprintln!("bench: analysis and attach: {}", path.display());
            time_binary(detector, &path, &name, &fifo).map_err(|e| format!("{e:#}"))
        });
        out.push(Big {
            name,
            path,
            size,
            times,
        });
    }
    let _ = fs::remove_file(&fifo);
    Ok(out)
}

/// `go build -ldflags='-s -w' cmd/compile` with the newest Go (once: kept in
/// target/bench; about 2 minutes with a cold Go build cache).
fn build_stripped_compile(go: &setup::GoTool, out: &Path) -> Result<()> {
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if mtime(out).is_some() && mtime(out) >= mtime(&go.go) {
        return Ok(());
    }
    eprintln!(
        "bench: building a stripped cmd/compile with Go {}",
        go.version
    );
    run_cmd(
        go_cmd(go)
            .args(["build", "-ldflags=-s -w", "-o"])
            .arg(out)
            .arg("cmd/compile")
            .current_dir(out.parent().expect("in target/bench")),
    )
}

fn time_binary(detector: &Path, bin: &Path, name: &str, fifo: &Path) -> Result<BigTimes> {
    let inspect = || -> Result<(Duration, String)> {
        let t = Instant::now();
        let o = Command::new(detector)
            .arg("inspect")
            .arg(bin)
            .args(["--format", "json"])
            .output()
            .context("could not run detector inspect")?;
        let took = t.elapsed();
        if !o.status.success() {
            bail!(
                "detector inspect {} failed ({}): {}",
                bin.display(),
                o.status,
                first_line(&String::from_utf8_lossy(&o.stderr))
            );
        }
        Ok((took, String::from_utf8_lossy(&o.stdout).into_owned()))
    };
    // An untimed first run warms the page cache: every timed run reads a cached file.
    let (_, json) = inspect()?;
    let mut t = BigTimes {
        inspect: Vec::new(),
        attach: Vec::new(),
        stop: Vec::new(),
        probes: None,
        stripped: json_value(&json, &["\"binary\""], "stripped").map(|v| v == "true"),
        functions: json_u64(&json, &["\"binary\""], "function_count"),
    };
    for _ in 0..ROUNDS {
        t.inspect.push(inspect()?.0);
    }
    for _ in 0..ROUNDS {
        let mut hb = None;
        let mut tool = None;
        let target = if name.starts_with("hitbench") {
            let h = Hitbench::start(bin)?;
            let pid = h.pid;
            hb = Some(h);
            pid
        } else {
            let child = blocked_tool(bin, name, fifo)?;
            let pid = child.id();
            tool = Some(Guard(child));
            pid
        };
        let started = Instant::now();
        let mut det = Diagnose::start(detector, target)?;
        t.attach
            .push(det.wait_attached(started, Duration::from_secs(120))?);
        let (stop, json) = det.stop()?;
        t.stop.push(stop);
        t.probes = t.probes.or(json_u64(&json, &["\"probes\""], "attached"));
        drop(tool);
        if let Some(h) = hb {
            h.finish()?;
        }
    }
    Ok(t)
}

/// Starts the Go tool `bin` on a FIFO nobody writes to: it runs its Go runtime and
/// blocks in open(2), a live process to attach to.
fn blocked_tool(bin: &Path, name: &str, fifo: &Path) -> Result<Child> {
    let _ = fs::remove_file(fifo);
    run_cmd(Command::new("mkfifo").arg(fifo))?;
    let mut cmd = Command::new(bin);
    if name.starts_with("link") {
        cmd.args(["-o", "/dev/null"]).arg(fifo);
    } else {
        cmd.args(["-o", "/dev/null", "-p", "main"]).arg(fifo);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("could not start {}", bin.display()))?;
    // Let its runtime start; it must still be running (blocked on the FIFO).
    thread::sleep(Duration::from_millis(300));
    if let Some(s) = child.try_wait()? {
        bail!(
            "{} exited ({s}) instead of blocking on {}",
            bin.display(),
            fifo.display()
        );
    }
    Ok(child)
}

// ---------------------------------------------------------------------------------
// BENCHMARKS.md

fn header(go: &setup::GoTool, bpftrace: Option<&str>, date: &str, load: [String; 2]) -> String {
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
    format!(
        "# Benchmarks\n\n\
         Written by `sudo cargo xtask bench` (xtask/src/bench.rs); every number below \
         comes from one run of it.\n\n\
         - date: {date}\n\
         - machine: {model}, {cpus} logical CPUs; load average (1 min) {} at the start, \
         {} at the end\n\
         - kernel: {kernel}\n\
         - Go: {gover} (the hitbench fixture and the toolchain binaries)\n\
         - detector: release build of commit {commit}\n\
         - bpftrace: {bpftrace}\n",
        load[0],
        load[1],
        kernel = text("uname", &["-r"]),
        gover = go.version,
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
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x if x >= 0.1 => format!("{x:.2}"),
        x => format!("{x:.3}"),
    }
}

/// "median (min–max)".
fn spread(xs: &[Duration]) -> String {
    let lo = xs.iter().min().copied().unwrap_or_default();
    let hi = xs.iter().max().copied().unwrap_or_default();
    format!("{} ({}–{})", ms(median_d(xs)), ms(lo), ms(hi))
}

fn render_per_hit(md: &mut String, hitbench: &Path, r: &PerHit) -> Result<()> {
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
         before the loop starts and counts the hits it saw.\n",
        calls = thousands(CALLS),
    )?;
    writeln!(
        md,
        "| configuration | ns/op (median) | runs | × bare | added per hit | hits counted (min) |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|")?;
    let bare = median_f(r.bare.iter().map(|x| x.ns_per_op));
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

fn render_large(md: &mut String, big: &[Big]) -> Result<()> {
    writeln!(md, "\n## 2. Analysis and attach time on large binaries\n")?;
    writeln!(
        md,
        "`inspect`: wall time of `detector inspect BINARY --format json` (ELF, build info, \
         pclntab, prologues and RETs of the probed functions), median of {ROUNDS} after \
         one untimed run, so the file is in the page cache; × reference: against the \
         small hitbench fixture. `attach`: `detector diagnose --pid PID` on a live process \
         of the binary (the Go tools are started on a FIFO nobody writes to and block in \
         open(2)), from the start of detector until its probes are in. `stop`: from \
         SIGINT until detector exited with its report (detach, symbolisation, rules). \
         attach and stop: median (min–max) of {ROUNDS}.\n"
    )?;
    writeln!(
        md,
        "| binary | size | stripped | functions | inspect | × reference | attach | probes | stop |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|")?;
    let reference = big
        .first()
        .and_then(|b| b.times.as_ref().ok())
        .map(|t| median_d(&t.inspect));
    for b in big {
        let size = format!("{:.1} MB", b.size as f64 / 1e6);
        match &b.times {
            Ok(t) => {
                let inspect = median_d(&t.inspect);
                let times = reference
                    .map(|r| ratio(inspect.as_secs_f64() / r.as_secs_f64()))
                    .unwrap_or_else(|| "–".into());
                writeln!(
                    md,
                    "| {} | {size} | {} | {} | {} | {times} | {} | {} | {} |",
                    b.name,
                    t.stripped.map_or("?", |s| if s { "yes" } else { "no" }),
                    t.functions.map_or_else(|| "?".into(), thousands),
                    ms(inspect),
                    spread(&t.attach),
                    t.probes.map_or_else(|| "?".into(), |p| p.to_string()),
                    spread(&t.stop),
                )?;
            }
            Err(why) => writeln!(
                md,
                "| {} | {size} | | | not measured: {} | | | | |",
                b.name,
                why.replace('|', "/")
            )?,
        }
    }
    writeln!(md)?;
    for b in big {
        writeln!(md, "- {}: `{}`", b.name, short_path(&b.path))?;
    }
    let largest_stripped = big
        .iter()
        .filter(|b| matches!(&b.times, Ok(t) if t.stripped == Some(true)))
        .max_by_key(|b| b.size);
    writeln!(
        md,
        "\nNo stripped Go binary of 100 MB or more was at hand, and none was built for \
         this run: the largest stripped one measured here is {}.",
        largest_stripped.map_or_else(
            || "none".to_string(),
            |b| format!("{} ({:.1} MB)", b.name, b.size as f64 / 1e6)
        )
    )?;
    Ok(())
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

// ---------------------------------------------------------------------------------
// Helpers

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

/// Where SYMBOL starts in hitbench and where detector probes it (non-PIE: the
/// addresses are the process's), from `detector inspect`.
struct Addresses {
    entry: u64,
    probe: u64,
}

fn probe_addresses(detector: &Path, hitbench: &Path) -> Result<Addresses> {
    let o = Command::new(detector)
        .arg("inspect")
        .arg(hitbench)
        .args(["--format", "json"])
        .output()
        .context("could not run detector inspect")?;
    let json = String::from_utf8_lossy(&o.stdout);
    let anchors = ["\"functions\"", &format!("\"symbol\": \"{SYMBOL}\"")];
    match (
        json_u64(&json, &anchors, "address"),
        json_u64(&json, &anchors, "probe_address"),
    ) {
        (Some(entry), Some(probe)) => Ok(Addresses { entry, probe }),
        _ => bail!(
            "detector inspect {} did not locate {SYMBOL}",
            hitbench.display()
        ),
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

/// The raw value of `"key": VALUE` after each anchor in turn (enough for detector's
/// pretty-printed JSON; xtask has no JSON parser).
fn json_value<'a>(json: &'a str, anchors: &[&str], key: &str) -> Option<&'a str> {
    let mut rest = json;
    for a in anchors {
        rest = &rest[rest.find(a)? + a.len()..];
    }
    let k = format!("\"{key}\":");
    let v = rest[rest.find(&k)? + k.len()..].trim_start();
    let end = v.find([',', '\n', '}', ']']).unwrap_or(v.len());
    Some(v[..end].trim())
}

fn json_u64(json: &str, anchors: &[&str], key: &str) -> Option<u64> {
    json_value(json, anchors, key)?.parse().ok()
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

fn median_f(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
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
