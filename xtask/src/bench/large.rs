//! Row 4: analysis and attach time on large binaries: the Go toolchain's `compile` and
//! `link`, `compile` rebuilt stripped, and a generated stripped binary of 100+ MB
//! ([`super::big`]). `detector inspect` wall time, and `detector diagnose` from its
//! start until its probes are in, on a live process of each binary; the time from
//! SIGINT until diagnose exited with its report, through uprobe_multi links and through
//! the per-uprobe fallback; and, on the reference, the duty cycle's detach tail on
//! each path.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    big::Big, go_cmd, go_output, inspect_json, mb, median_d, ms, ratio, short_path, spread,
    thousands, Diagnose, Env, Guard, Hitbench,
};
use crate::{run_cmd, setup};

/// Runs of each measurement; the median is reported.
const ROUNDS: usize = 3;

/// How a live process of the binary is had.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Speaks hitbench's protocol (hitbench, the generated binary).
    Protocol,
    /// A Go tool started on a FIFO nobody writes to: it blocks in open(2).
    Fifo,
}

pub struct Measured {
    name: String,
    path: PathBuf,
    size: u64,
    /// Err: why this binary could not be measured.
    times: Result<Times, String>,
}

/// Detach tails: (per uprobe, uprobe_multi).
type Tails = (Tail, Tail);

struct Times {
    inspect: Vec<Duration>,
    attach: Vec<Duration>,
    stop: Vec<Duration>,
    /// `stop` with the per-uprobe path forced (the fallback on kernels before 6.6).
    stop_per_uprobe: Vec<Duration>,
    /// The path diagnose took unforced (its report's `probes.attach_path`).
    path: Option<String>,
    /// The reference's duty cycle detaches at 100k calls/s: (per uprobe, uprobe_multi).
    tails: Option<Result<Tails, String>>,
    probes: Option<u64>,
    stripped: Option<bool>,
    functions: Option<u64>,
}

pub fn measure(env: &Env, hitbench: &Path, big: &Big) -> Result<Vec<Measured>> {
    let tooldir = go_output(&env.newest, &["env", "GOTOOLDIR"])?;
    let tooldir = PathBuf::from(tooldir.trim());
    let mut bins: Vec<(String, PathBuf, Live, Result<(), String>)> = vec![
        (
            "hitbench (reference)".into(),
            hitbench.to_path_buf(),
            Live::Protocol,
            Ok(()),
        ),
        (
            "compile".into(),
            tooldir.join("compile"),
            Live::Fifo,
            Ok(()),
        ),
        ("link".into(), tooldir.join("link"), Live::Fifo, Ok(())),
    ];
    let stripped = env.work.join("compile-stripped");
    let built = build_stripped_compile(&env.newest, &stripped).map_err(|e| format!("{e:#}"));
    bins.push((
        "compile, rebuilt `-ldflags='-s -w'`".into(),
        stripped,
        Live::Fifo,
        built,
    ));
    bins.push((
        "generated, `-ldflags='-s -w'`".into(),
        big.path.clone(),
        Live::Protocol,
        big.info.as_ref().map(|_| ()).map_err(Clone::clone),
    ));

    let fifo = env.work.join("blocked.go");
    let mut out = Vec::new();
    for (i, (name, path, live, ready)) in bins.into_iter().enumerate() {
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let times = ready.and_then(|()| {
            eprintln!("bench: analysis and attach: {}", path.display());
            let mut t = time_binary(&env.detector, &path, &name, live, &fifo)
                .map_err(|e| format!("{e:#}"))?;
            if i == 0 {
                eprintln!("bench: detach tails at {TAIL_RATE} calls/s");
                let per = detach_tails(&env.detector, hitbench, true);
                let multi = detach_tails(&env.detector, hitbench, false);
                t.tails = Some(
                    per.and_then(|p| Ok((p, multi?)))
                        .map_err(|e| format!("{e:#}")),
                );
            }
            Ok(t)
        });
        out.push(Measured {
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

fn time_binary(detector: &Path, bin: &Path, name: &str, live: Live, fifo: &Path) -> Result<Times> {
    let inspect = || -> Result<(Duration, Value)> {
        let t = Instant::now();
        let json = inspect_json(detector, bin)?;
        Ok((t.elapsed(), json))
    };
    // An untimed first run warms the page cache: every timed run reads a cached file.
    let (_, json) = inspect()?;
    let mut t = Times {
        inspect: Vec::new(),
        attach: Vec::new(),
        stop: Vec::new(),
        stop_per_uprobe: Vec::new(),
        path: None,
        tails: None,
        probes: None,
        stripped: json["binary"]["stripped"].as_bool(),
        functions: json["binary"]["function_count"].as_u64(),
    };
    for _ in 0..ROUNDS {
        t.inspect.push(inspect()?.0);
    }
    for _ in 0..ROUNDS {
        let mut hb = None;
        let mut tool = None;
        let target = match live {
            Live::Protocol => {
                let args: &[&str] = if name.starts_with("hitbench") {
                    &["-fn", "gomaxprocs", "-n", "1000"]
                } else {
                    &[]
                };
                let h = Hitbench::start(bin, args)?;
                let pid = h.pid;
                hb = Some(h);
                pid
            }
            Live::Fifo => {
                let child = blocked_tool(bin, name, fifo)?;
                let pid = child.id();
                tool = Some(Guard(child));
                pid
            }
        };
        let started = Instant::now();
        let mut det = Diagnose::start(detector, target, &[])?;
        t.attach
            .push(det.wait_attached(started, Duration::from_secs(120))?);
        let (stop, json) = det.stop()?;
        t.stop.push(stop);
        t.probes = t.probes.or(json["probes"]["attached"].as_u64());
        t.path = t
            .path
            .or(json["probes"]["attach_path"].as_str().map(String::from));
        // The same process again, through the fallback path.
        let mut det = Diagnose::start_env(detector, target, &[], &[FORCE_PER_UPROBE])?;
        det.wait_attached(Instant::now(), Duration::from_secs(120))?;
        t.stop_per_uprobe.push(det.stop()?.0);
        drop(tool);
        if let Some(h) = hb {
            h.finish()?;
        }
    }
    Ok(t)
}

/// The environment that makes detector take the per-uprobe path (its
/// `DETECTOR_ATTACH_PATH`).
const FORCE_PER_UPROBE: (&str, &str) = ("DETECTOR_ATTACH_PATH", "per-uprobe");
/// The paced rate of the tail runs: row 2's hot line.
const TAIL_RATE: u64 = 100_000;
/// How long diagnose's window runs in a tail run: the per-uprobe path goes live
/// about every 4 s at this rate (its head and tail are paid from the credit).
const TAIL_WINDOW: Duration = Duration::from_secs(12);

/// One path's duty cycle at [`TAIL_RATE`] calls/s (see [`detach_tails`]).
#[derive(Default)]
struct Tail {
    /// Per live phase but the last (ended by the stop): how long runtime.callers' int3
    /// stayed in the target beyond the phase (int3 present, read through
    /// /proc/PID/mem every 0.2 ms, minus the live phase detector logged; the median
    /// one after the first): head and tail. The first phase is the probation, from
    /// the first attach.
    beyond: Vec<Duration>,
    /// Each background detach, from its start until the kernel was done (detector's
    /// log).
    took: Vec<Duration>,
}

/// The duty cycle of one `diagnose` of hitbench at [`TAIL_RATE`] calls of
/// runtime.Caller a second, through one path: how long the breakpoint stays in after
/// each live phase (the tail, what the target pays for beyond the phase), read from
/// the target's memory, and how long detector's detaches took.
fn detach_tails(detector: &Path, hitbench: &Path, per_uprobe: bool) -> Result<Tail> {
    use std::os::unix::fs::FileExt;
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let probe = super::probe_addresses(detector, hitbench, "runtime.callers")?.probe;
    let seconds = (TAIL_WINDOW.as_secs() + 3).to_string();
    let rate = TAIL_RATE.to_string();
    let mut hb = Hitbench::start(
        hitbench,
        &["-fn", "caller", "-rate", &rate, "-seconds", &seconds],
    )?;
    let mem = fs::File::open(format!("/proc/{}/mem", hb.pid))?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut present = Vec::new();
            let mut since: Option<Instant> = None;
            let mut byte = [0u8];
            while !stop.load(Ordering::Relaxed) {
                if mem.read_exact_at(&mut byte, probe).is_err() {
                    break;
                }
                match (byte[0] == 0xcc, since) {
                    (true, None) => since = Some(Instant::now()),
                    (false, Some(t)) => {
                        present.push(t.elapsed());
                        since = None;
                    }
                    _ => {}
                }
                thread::sleep(Duration::from_micros(200));
            }
            present
        })
    };
    let log = ("RUST_LOG", "detector::probes=debug");
    let env: Vec<(&str, &str)> = if per_uprobe {
        vec![log, FORCE_PER_UPROBE]
    } else {
        vec![log]
    };
    let mut det = Diagnose::start_env(detector, hb.pid, &[], &env)?;
    det.wait_attached(Instant::now(), Duration::from_secs(60))?;
    hb.go()?;
    thread::sleep(TAIL_WINDOW);
    let (_, _, stderr) = det.stop_with_stderr()?;
    stop.store(true, Ordering::Relaxed);
    let present = watcher.join().unwrap_or_default();
    hb.result("calls=", Duration::from_secs(60))?;
    hb.finish()?;
    let after = |key: &str| -> Vec<Duration> {
        stderr
            .lines()
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|rest| parse_debug_duration(rest.split([',', ' ']).next()?))
            .collect()
    };
    let took = after("background detach took ");
    // Both units' phases, in pairs: the first pair is the probation.
    let live = after(" off after ");
    let probation = live.first().copied().unwrap_or_default();
    let phase = median_d(live.get(2..).unwrap_or_default());
    // An interval past the phases (two units each) was ended by the stop.
    let ended = present.len().min(live.len() / 2);
    let beyond = present
        .iter()
        .take(ended)
        .enumerate()
        .map(|(i, p)| p.saturating_sub(if i == 0 { probation } else { phase }))
        .collect();
    Ok(Tail { beyond, took })
}

/// A `Duration`'s Debug form (`38.1ms`, `1.2s`, `950µs`, `120ns`).
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)]
        .into_iter()
        .find_map(|(unit, scale)| Some((s.strip_suffix(unit)?, scale)))?;
    Some(Duration::from_secs_f64(num.parse::<f64>().ok()? * scale))
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

pub fn render(md: &mut String, bins: &[Measured], big: &Big) -> Result<()> {
    writeln!(md, "\n## 4. Analysis and attach time on large binaries\n")?;
    writeln!(
        md,
        "`inspect`: wall time of `detector inspect BINARY --format json` (ELF, build info, \
         pclntab, prologues and RETs of the probed functions), median of {ROUNDS} after \
         one untimed run, so the file is in the page cache; × reference: against the \
         small hitbench fixture, measured in the same run. `attach`: `detector diagnose \
         --pid PID` on a live process of the binary (the Go tools are started on a FIFO \
         nobody writes to and block in open(2); hitbench and the generated program wait \
         on stdin), from the start of detector until its probes are in. `stop`: from \
         SIGINT until detector exited with its report (detach, symbolisation, rules), \
         through the path detector chose on this kernel (`path`); `stop, per uprobe`: \
         the same on the same process right after, with the per-uprobe fallback forced \
         (`DETECTOR_ATTACH_PATH=per-uprobe`, the path of kernels before 6.6). attach and \
         stop: median (min–max) of {ROUNDS}.\n"
    )?;
    writeln!(
        md,
        "| binary | size | stripped | functions | inspect | × reference | attach | × reference | probes | path | stop | stop, per uprobe |"
    )?;
    writeln!(
        md,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    )?;
    let reference = bins.first().and_then(|b| b.times.as_ref().ok());
    for b in bins {
        let size = mb(b.size);
        match &b.times {
            Ok(t) => {
                let x = |mine: &[Duration], of: fn(&Times) -> &[Duration]| {
                    reference.map_or_else(
                        || "–".into(),
                        |r| ratio(median_d(mine).as_secs_f64() / median_d(of(r)).as_secs_f64()),
                    )
                };
                writeln!(
                    md,
                    "| {} | {size} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    b.name,
                    t.stripped.map_or("?", |s| if s { "yes" } else { "no" }),
                    t.functions.map_or_else(|| "?".into(), thousands),
                    ms(median_d(&t.inspect)),
                    x(&t.inspect, |r| &r.inspect),
                    spread(&t.attach),
                    x(&t.attach, |r| &r.attach),
                    t.probes.map_or_else(|| "?".into(), |p| p.to_string()),
                    t.path.as_deref().unwrap_or("?"),
                    spread(&t.stop),
                    spread(&t.stop_per_uprobe),
                )?;
            }
            Err(why) => writeln!(
                md,
                "| {} | {size} | | | not measured: {} | | | | | | | |",
                b.name,
                why.replace('|', "/")
            )?,
        }
    }
    writeln!(md)?;
    render_stop_and_tails(md, bins)?;
    writeln!(md)?;
    for b in bins {
        writeln!(md, "- {}: `{}`", b.name, short_path(&b.path))?;
    }
    let size = fs::metadata(&big.path).map(|m| m.len()).unwrap_or(0);
    match &big.info {
        Ok(info) => writeln!(
            md,
            "\nThe generated binary ({}, from the standard library only: no module proxy \
             is reachable) is {} stripped; `go build` took {:.0} s on this machine{} and \
             used {:.0} MB of disk at its peak (sources, its own GOCACHE, output), of which \
             only the binary is kept in the cache dir.",
            big.describe(),
            mb(size),
            info.build_s,
            if info.built_now {
                " (in this run, before anything was timed)"
            } else {
                " (in an earlier run: cached)"
            },
            info.build_disk_mb,
        )?,
        Err(why) => writeln!(
            md,
            "\nThe generated 100+ MB binary could not be built: {why}"
        )?,
    }
    if size > 0 && size < 100_000_000 {
        writeln!(
            md,
            "\n**The generated binary is smaller than 100 MB** ({}): raise PACKAGES in \
             xtask/src/bench/big.rs.",
            mb(size)
        )?;
    }
    Ok(())
}

/// The stop line (median over every round of the large binaries, the reference left
/// out) and the detach tails, each path measured in this run.
fn render_stop_and_tails(md: &mut String, bins: &[Measured]) -> Result<()> {
    let large: Vec<&Times> = bins
        .iter()
        .skip(1)
        .filter_map(|b| b.times.as_ref().ok())
        .collect();
    let all = |of: fn(&Times) -> &[Duration]| -> Vec<Duration> {
        large.iter().flat_map(|t| of(t).iter().copied()).collect()
    };
    let (multi, per) = (all(|t| &t.stop), all(|t| &t.stop_per_uprobe));
    if !multi.is_empty() {
        writeln!(
            md,
            "**diagnose stop: interrupt to exit** (the large binaries, {} rounds each \
             path): {} through {}, {} per uprobe (the fallback); target: 300 ms median.\n",
            multi.len(),
            spread(&multi),
            large.first().and_then(|t| t.path.as_deref()).unwrap_or("?"),
            spread(&per),
        )?;
    }
    let tails = bins
        .first()
        .and_then(|b| b.times.as_ref().ok())
        .and_then(|t| t.tails.as_ref());
    match tails {
        Some(Ok((per, multi))) => writeln!(
            md,
            "**Detach tail** (hitbench paced at {} calls/s of runtime.Caller, one {} s \
             diagnose per path, its duty cycle live a few times): how long runtime.callers' \
             int3 stayed in the target after each live phase (read through /proc/PID/mem, \
             minus the phase; the first phase is the probation, from the attach), per \
             uprobe {} over {} phases, uprobe_multi {} over {}; \
             detector's background detaches (start to the kernel done, grace periods \
             included) took {} per uprobe, {} uprobe_multi: median (min–max).",
            thousands(TAIL_RATE),
            TAIL_WINDOW.as_secs(),
            or_none(&per.beyond),
            per.beyond.len(),
            or_none(&multi.beyond),
            multi.beyond.len(),
            or_none(&per.took),
            or_none(&multi.took),
        )?,
        Some(Err(why)) => writeln!(md, "Detach tail not measured: {why}")?,
        None => {}
    }
    Ok(())
}

/// [`spread`], or "none" for no sample.
fn or_none(xs: &[Duration]) -> String {
    if xs.is_empty() {
        "none".into()
    } else {
        spread(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations_parse() {
        let ms = |s| parse_debug_duration(s).map(|d| d.as_secs_f64() * 1e3);
        assert_eq!(ms("38.5ms"), Some(38.5));
        assert_eq!(ms("1.25s"), Some(1250.0));
        assert_eq!(ms("500µs"), Some(0.5));
        assert_eq!(ms("soon"), None);
    }
}
