//! Row 5: stop-the-world accuracy. hitbench's pause mode calls `runtime.GC()` and
//! `runtime.ReadMemStats` at fixed rates for [`SECONDS`] and reads its own
//! runtime/metrics pause histograms right before and after; `detector diagnose`
//! watches it over the same stretch. Pause counts and total time from both, per Go
//! version from 1.22 (the first with `/sched/pauses/total/*`).
use std::{fmt::Write as _, time::Duration, time::Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{fields, ratio, Diagnose, Env, Hitbench};

const SECONDS: f64 = 10.0;
const GC_RATE: u32 = 10;
const READMEMSTATS_RATE: u32 = 50;

/// Pauses and their total time, ns.
#[derive(Default, Clone, Copy)]
struct Pauses {
    count: u64,
    total_ns: f64,
}

/// runtime/metrics' view: exact count, total within [lo, hi], mid as the estimate.
#[derive(Default, Clone, Copy)]
struct Histogram {
    count: u64,
    lo_ns: f64,
    mid_ns: f64,
    hi_ns: f64,
}

pub struct VersionRun {
    go: String,
    /// Err: why this version could not be measured.
    result: Result<Measured, String>,
}

struct Measured {
    gc_calls: u64,
    rms_calls: u64,
    /// The target's window (start signal to its second read).
    window_s: f64,
    /// diagnose's window.
    detector_s: f64,
    runtime_gc: Histogram,
    runtime_other: Histogram,
    detector_gc: Pauses,
    detector_other: Pauses,
}

fn at_least_122(v: &str) -> bool {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (1, 22)
}

pub fn measure(env: &Env) -> Result<Vec<VersionRun>> {
    let mut out = Vec::new();
    for go in env.go.iter().filter(|g| at_least_122(&g.version)) {
        let result = run(env, &go.version).map_err(|e| format!("{e:#}"));
        match &result {
            Ok(m) => eprintln!(
                "bench: STW Go {}: GC pauses {} (runtime) vs {} (detector), other {} vs {}",
                go.version,
                m.runtime_gc.count,
                m.detector_gc.count,
                m.runtime_other.count,
                m.detector_other.count
            ),
            Err(e) => eprintln!("bench: STW Go {}: {e}", go.version),
        }
        out.push(VersionRun {
            go: go.version.clone(),
            result,
        });
    }
    Ok(out)
}

fn run(env: &Env, version: &str) -> Result<Measured> {
    let bin = env.fixture(version, "default", "hitbench");
    let mut hb = Hitbench::start(
        &bin,
        &[
            "-stw",
            "-seconds",
            &SECONDS.to_string(),
            "-gc-rate",
            &GC_RATE.to_string(),
            "-readmemstats-rate",
            &READMEMSTATS_RATE.to_string(),
        ],
    )?;
    let started = Instant::now();
    let mut det = Diagnose::start(&env.detector, hb.pid, &[])?;
    det.wait_attached(started, Duration::from_secs(60))?;
    // diagnose's window opened when its handler went in: start the target's now.
    hb.go()?;
    let line = hb.result("gc_calls=", Duration::from_secs_f64(SECONDS * 3.0 + 30.0))?;
    let (_, json) = det.stop()?;
    hb.finish()?;

    let f = fields(&line);
    let num = |k: &str| -> Result<f64> {
        f.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k}= in {line:?} (Go {version} without the metrics?)"))
    };
    let hist = |p: &str| -> Result<Histogram> {
        Ok(Histogram {
            count: num(&format!("{p}_count"))? as u64,
            lo_ns: num(&format!("{p}_lo_ns"))?,
            mid_ns: num(&format!("{p}_mid_ns"))?,
            hi_ns: num(&format!("{p}_hi_ns"))?,
        })
    };
    let (detector_gc, detector_other) = detector_pauses(&json);
    Ok(Measured {
        gc_calls: num("gc_calls")? as u64,
        rms_calls: num("readmemstats_calls")? as u64,
        window_s: num("elapsed_ns")? / 1e9,
        detector_s: json["collected"]["duration_s"].as_f64().unwrap_or(f64::NAN),
        runtime_gc: hist("gc")?,
        runtime_other: hist("other")?,
        detector_gc,
        detector_other,
    })
}

/// detector's pauses split as runtime/metrics splits them: the collector's (sweep and
/// mark termination, forced or not) and all others.
fn detector_pauses(report: &Value) -> (Pauses, Pauses) {
    let mut gc = Pauses::default();
    let mut other = Pauses::default();
    for p in report["collected"]["pauses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let code = p["reason"]["code"].as_u64();
        let is_gc = match code {
            Some(c) => c == 1 || c == 2,
            None => p["reason"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("GC")),
        };
        let into = if is_gc { &mut gc } else { &mut other };
        into.count += p["pauses"].as_u64().unwrap_or(0);
        into.total_ns += p["total_ns"].as_f64().unwrap_or(0.0);
    }
    (gc, other)
}

fn ms(ns: f64) -> String {
    format!("{:.2} ms", ns / 1e6)
}

pub fn render(md: &mut String, runs: &[VersionRun]) -> Result<()> {
    writeln!(md, "\n## 5. Stop-the-world accuracy\n")?;
    writeln!(
        md,
        "`hitbench -stw -seconds {SECONDS} -gc-rate {GC_RATE} -readmemstats-rate \
         {READMEMSTATS_RATE}` (the fixture of each Go from 1.22, the first with these \
         metrics) calls `runtime.GC()` {GC_RATE} times and `runtime.ReadMemStats` \
         {READMEMSTATS_RATE} times a second for {SECONDS} s, in a batch every millisecond, \
         and reads its own runtime/metrics histograms `/sched/pauses/total/gc:seconds` \
         and `/sched/pauses/total/other:seconds` right before and right after. `detector \
         diagnose --format json` attaches first; the start signal goes to the target as \
         soon as diagnose's window opens (its SIGINT handler goes in), and diagnose is \
         stopped (SIGINT) as soon as the target printed its second read. The target is \
         idle outside its window (no allocation, no timer), so the few extra \
         milliseconds of diagnose's window hold no pause. detector's pauses are split as \
         the runtime splits them: GC = sweep and mark termination (forced or not), \
         other = every other reason.\n\n\
         The histograms count pauses exactly, but give each one's duration only as a \
         bucket (a quarter of a power of two wide): the runtime's totals below are the \
         sum of the bucket midpoints, with the sums of the lower and upper bounds in \
         brackets. Ratios are detector ÷ runtime (midpoint); the baseline is the \
         target's own runtime/metrics in the same run.\n"
    )?;
    writeln!(
        md,
        "| Go | window | kind | pauses/s: runtime | detector | count ratio | total: runtime (bounds) | detector | time ratio | mean pause: runtime | detector |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in runs {
        let m = match &r.result {
            Ok(m) => m,
            Err(why) => {
                writeln!(
                    md,
                    "| {} | not measured: {} | | | | | | | | | |",
                    r.go,
                    why.replace('|', "/")
                )?;
                continue;
            }
        };
        for (kind, rt, det) in [
            ("GC", m.runtime_gc, m.detector_gc),
            ("other", m.runtime_other, m.detector_other),
        ] {
            let per = |n: u64| n as f64 / m.window_s;
            let mean = |total: f64, n: u64| {
                if n == 0 {
                    "–".into()
                } else {
                    format!("{:.0} µs", total / n as f64 / 1e3)
                }
            };
            writeln!(
                md,
                "| {} | {:.2} s | {kind} | {:.1} | {:.1} | {} | {} ({}–{}) | {} | **{}** | {} | {} |",
                r.go,
                m.window_s,
                per(rt.count),
                per(det.count),
                ratio(det.count as f64 / rt.count as f64),
                ms(rt.mid_ns),
                ms(rt.lo_ns),
                ms(rt.hi_ns),
                ms(det.total_ns),
                ratio(det.total_ns / rt.mid_ns),
                mean(rt.mid_ns, rt.count),
                mean(det.total_ns, det.count),
            )?;
        }
    }
    let ok: Vec<&Measured> = runs.iter().filter_map(|r| r.result.as_ref().ok()).collect();
    if let Some(m) = ok.first() {
        writeln!(
            md,
            "\nCalls made per run: {} × runtime.GC (two collector pauses each: sweep and \
             mark termination) and {} × ReadMemStats (one \"read mem stats\" pause each). \
             diagnose's window was {:.2} s for the target's {:.2} s (Go {}).",
            m.gc_calls,
            m.rms_calls,
            m.detector_s,
            m.window_s,
            runs.iter()
                .find(|r| r.result.is_ok())
                .map_or("", |r| r.go.as_str()),
        )?;
    }
    writeln!(
        md,
        "\nCounts are the accuracy that matters for the rules (pauses per second, by \
         reason); where the totals differ, the two do not time the same interval. \
         detector's pause runs from the entry of `stopTheWorldWithSema` to the return of \
         `startTheWorldWithSema`. The runtime records from the same start to a `now` \
         taken inside `startTheWorldWithSema` once the other Ms are woken (before its \
         final `wakep`), or, for GC mark termination, passed in by `gcMarkTermination` \
         from before `startTheWorldWithSema` is even called. So detector's figure also \
         holds the restart itself (`procresize`, waking the Ms, `wakep`), while the \
         world is running again: the stopping thread, having woken the others, can be \
         descheduled before it returns, which on a loaded 2-core machine takes up to \
         milliseconds. The GC ratio is the larger one because mark termination's own \
         pause is tiny (tens of µs) next to that restart. Ending the pause at the entry \
         of `startTheWorldWithSema` would match the runtime's interval for mark \
         termination and come within the wake-ups for the other reasons."
    )?;
    Ok(())
}
