//! Row 5: stop-the-world accuracy. hitbench's pause mode calls `runtime.GC()` and
//! `runtime.ReadMemStats` at fixed rates for [`SECONDS`] and reads its own
//! runtime/metrics pause histograms (total and stopping, GC and other) right before and
//! after; `detector diagnose` watches it over the same stretch. Go 1.19 and 1.21 have
//! no such metrics: their collector pauses are compared with gctrace's clock figures.
use std::{fmt::Write as _, time::Duration, time::Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{fields, ratio, Diagnose, Env, Hitbench};

const SECONDS: f64 = 10.0;
const GC_RATE: u32 = 10;
const READMEMSTATS_RATE: u32 = 50;

/// detector's pauses of one kind and their stopping part, ns.
#[derive(Default, Clone, Copy)]
struct Pauses {
    count: u64,
    total_ns: f64,
    stopping_count: u64,
    stopping_ns: f64,
}

/// runtime/metrics' view: exact count, total within [lo, hi], mid as the estimate.
#[derive(Default, Clone, Copy)]
struct Histogram {
    count: u64,
    lo_ns: f64,
    mid_ns: f64,
    hi_ns: f64,
}

/// What the target says of its own pauses.
enum Truth {
    /// Go 1.22+: runtime/metrics, (total, stopping) of GC and of other pauses.
    Metrics {
        gc: (Histogram, Histogram),
        other: (Histogram, Histogram),
    },
    /// Go 1.19 and 1.21: gctrace's clock figures (sweep + mark termination) of the
    /// collections in the window.
    Gctrace { cycles: u64, gc_ns: f64 },
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
    truth: Truth,
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
    for go in &env.go {
        let result = run(env, &go.version).map_err(|e| format!("{e:#}"));
        match &result {
            Ok(m) => eprintln!(
                "bench: STW Go {}: GC pauses {} (detector), other {}",
                go.version, m.detector_gc.count, m.detector_other.count
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
    let args = [
        "-stw".to_string(),
        "-seconds".into(),
        SECONDS.to_string(),
        "-gc-rate".into(),
        GC_RATE.to_string(),
        "-readmemstats-rate".into(),
        READMEMSTATS_RATE.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let metrics = at_least_122(version);
    let mut hb = if metrics {
        Hitbench::start(&bin, &args)?
    } else {
        Hitbench::start_gctrace(&bin, &args)?
    };
    let started = Instant::now();
    let mut det = Diagnose::start(&env.detector, hb.pid, &[])?;
    det.wait_attached(started, Duration::from_secs(60))?;
    // gctrace lines from before the window (start-up) are not the window's.
    if let Some(err) = &hb.err {
        while err.try_recv().is_ok() {}
    }
    // diagnose's window opened when its handler went in: start the target's now.
    hb.go()?;
    let line = hb.result("gc_calls=", Duration::from_secs_f64(SECONDS * 3.0 + 30.0))?;
    let (_, json) = det.stop()?;
    let gctrace: Vec<String> = hb
        .err
        .as_ref()
        .map(|e| e.try_iter().filter(|l| l.starts_with("gc ")).collect())
        .unwrap_or_default();
    hb.finish()?;

    let f = fields(&line);
    let num = |k: &str| -> Result<f64> {
        f.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k}= in {line:?}"))
    };
    let hist = |p: &str| -> Result<Histogram> {
        Ok(Histogram {
            count: num(&format!("{p}_count"))? as u64,
            lo_ns: num(&format!("{p}_lo_ns"))?,
            mid_ns: num(&format!("{p}_mid_ns"))?,
            hi_ns: num(&format!("{p}_hi_ns"))?,
        })
    };
    let truth = if metrics {
        Truth::Metrics {
            gc: (hist("gc")?, hist("stopping_gc")?),
            other: (hist("other")?, hist("stopping_other")?),
        }
    } else {
        Truth::Gctrace {
            cycles: gctrace.len() as u64,
            gc_ns: gctrace
                .iter()
                .map(|l| gctrace_pauses_ns(l))
                .collect::<Result<Vec<_>>>()?
                .iter()
                .sum(),
        }
    };
    let (detector_gc, detector_other) = detector_pauses(&json);
    Ok(Measured {
        gc_calls: num("gc_calls")? as u64,
        rms_calls: num("readmemstats_calls")? as u64,
        window_s: num("elapsed_ns")? / 1e9,
        detector_s: json["collected"]["duration_s"].as_f64().unwrap_or(f64::NAN),
        truth,
        detector_gc,
        detector_other,
    })
}

/// gctrace's `A+B+C ms clock`: sweep termination (A) + mark termination (C), ns.
fn gctrace_pauses_ns(line: &str) -> Result<f64> {
    let clock = line
        .split(", ")
        .find(|p| p.ends_with(" ms clock"))
        .with_context(|| format!("no clock figures in {line:?}"))?;
    let abc: Vec<f64> = clock
        .rsplit(' ')
        .nth(2)
        .and_then(|abc| abc.split('+').map(|x| x.parse().ok()).collect())
        .with_context(|| format!("clock figures of {line:?}"))?;
    Ok((abc[0] + abc[2]) * 1e6)
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
        into.stopping_count += p["stopping"]["pauses"].as_u64().unwrap_or(0);
        into.stopping_ns += p["stopping"]["total_ns"].as_f64().unwrap_or(0.0);
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
         {READMEMSTATS_RATE}` (the fixture of each Go) calls `runtime.GC()` {GC_RATE} \
         times and `runtime.ReadMemStats` {READMEMSTATS_RATE} times a second for \
         {SECONDS} s, in a batch every millisecond. On Go 1.22+ it reads its own \
         runtime/metrics histograms `/sched/pauses/total/{{gc,other}}:seconds` and \
         `/sched/pauses/stopping/{{gc,other}}:seconds` right before and right after; on \
         1.19 and 1.21, which have none, it runs with `GODEBUG=gctrace=1` and its \
         collector pauses are gctrace's clock figures (sweep + mark termination) of the \
         collections in the window (there is no runtime figure for other pauses). \
         `detector diagnose --format json` attaches first; the start signal goes to the \
         target as soon as diagnose's window opens, and diagnose is stopped as soon as \
         the target printed its second read. detector's pauses are split as the runtime \
         splits them: GC = sweep and mark termination (forced or not), other = every \
         other reason.\n\n\
         A histogram counts pauses exactly but gives each one's duration only as a \
         bucket: the runtime's totals are the sum of the bucket midpoints, with the sums \
         of the bounds in brackets. Ratios are detector ÷ runtime; the baseline is the \
         target's own view in the same run. How detector reads the runtime's own \
         timestamps is in docs/stw-timing.md.\n"
    )?;
    writeln!(
        md,
        "| Go | window | kind | pauses/s: runtime | detector | count ratio | total: runtime (bounds) | detector | time ratio | stopping: runtime (bounds) | detector | stopping ratio |"
    )?;
    writeln!(
        md,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in runs {
        let m = match &r.result {
            Ok(m) => m,
            Err(why) => {
                writeln!(
                    md,
                    "| {} | not measured: {} | | | | | | | | | | |",
                    r.go,
                    why.replace('|', "/")
                )?;
                continue;
            }
        };
        let per = |n: u64| n as f64 / m.window_s;
        let bounds = |h: &Histogram| format!("{} ({}–{})", ms(h.mid_ns), ms(h.lo_ns), ms(h.hi_ns));
        match &m.truth {
            Truth::Metrics { gc, other } => {
                for (kind, (total, stopping), det) in [
                    ("GC", gc, m.detector_gc),
                    ("other", other, m.detector_other),
                ] {
                    writeln!(
                        md,
                        "| {} | {:.2} s | {kind} | {:.1} | {:.1} | {} | {} | {} | **{}** | {} | {} | **{}** |",
                        r.go,
                        m.window_s,
                        per(total.count),
                        per(det.count),
                        ratio(det.count as f64 / total.count as f64),
                        bounds(total),
                        ms(det.total_ns),
                        ratio(det.total_ns / total.mid_ns),
                        bounds(stopping),
                        ms(det.stopping_ns),
                        ratio(det.stopping_ns / stopping.mid_ns),
                    )?;
                }
            }
            Truth::Gctrace { cycles, gc_ns } => {
                let det = m.detector_gc;
                writeln!(
                    md,
                    "| {} | {:.2} s | GC (gctrace) | {:.1} | {:.1} | {} | {} | {} | **{}** | – | {} | – |",
                    r.go,
                    m.window_s,
                    per(2 * cycles),
                    per(det.count),
                    ratio(det.count as f64 / (2 * cycles) as f64),
                    ms(*gc_ns),
                    ms(det.total_ns),
                    ratio(det.total_ns / gc_ns),
                    ms(det.stopping_ns),
                )?;
                let det = m.detector_other;
                writeln!(
                    md,
                    "| {} | {:.2} s | other | – | {:.1} | – | – | {} | – | – | {} | – |",
                    r.go,
                    m.window_s,
                    per(det.count),
                    ms(det.total_ns),
                    ms(det.stopping_ns),
                )?;
            }
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
    Ok(())
}
