//! Row 2: the target's CPU while it makes a misuse call at a fixed offered rate.
//! hitbench's paced mode calls `main.logLine` (which calls `runtime.Caller(0)`, the
//! hot-log-path misuse) R times per second, in batches every millisecond, for
//! [`SECONDS`], and reports its own CPU time over exactly that part. Configurations:
//! bare, detector with its default overhead budget, detector with `--overhead-budget 0`
//! (every hit probed); interleaved, [`ROUNDS`] each. detector's reported calls are
//! compared with the calls made.
use std::{fmt::Write as _, path::Path, time::Duration, time::Instant};

use anyhow::{Context, Result};

use super::{
    calls_of, fields, fmt_f, median_f, probe_addresses, ratio, thousands, wait_breakpoint,
    Diagnose, Env, Hitbench,
};
use crate::workspace_root;

/// Offered misuse calls per second.
pub const RATES: [u64; 3] = [1_000, 10_000, 100_000];
/// Length of each paced run.
const SECONDS: f64 = 15.0;
/// Runs of each configuration at each rate. Five, not three: at 100k/s the default
/// budget's extra (about 1 % of a core) is the size of bare's own spread between runs.
const ROUNDS: usize = 5;
/// The misuse call, as detector's report names it.
/// runtime.Caller is seen through the two functions it calls: runtime.callers (one
/// hit per call, counted here) and runtime.(*Frames).Next.
const SYMBOL: &str = "runtime.callers";
/// The budget the issue sets, in % of one core.
const BUDGET_PERCENT: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    Bare,
    /// detector with its defaults (the overhead budget on, when it has one).
    Default,
    /// `--overhead-budget 0`: every hit probed.
    NoBudget,
}

const CONFIGS: [Config; 3] = [Config::Bare, Config::Default, Config::NoBudget];

struct Run {
    rate: u64,
    config: Config,
    calls: u64,
    elapsed_s: f64,
    user_s: f64,
    sys_s: f64,
    seen: Option<Seen>,
}

impl Run {
    fn cpu_share(&self) -> f64 {
        (self.user_s + self.sys_s) / self.elapsed_s
    }

    fn sys_share(&self) -> f64 {
        self.sys_s / self.elapsed_s
    }
}

/// What detector reported about the misuse call.
struct Seen {
    calls: f64,
    per_second: f64,
    duration_s: f64,
    /// Share of the window the probe was live, when duty-cycled.
    sampled: Option<f64>,
}

pub struct Throughput {
    runs: Vec<Run>,
}

impl Throughput {
    fn of(&self, rate: u64, config: Config) -> Vec<&Run> {
        self.runs
            .iter()
            .filter(|r| r.rate == rate && r.config == config)
            .collect()
    }

    /// Median CPU of the target, as a share of one core.
    fn share(&self, rate: u64, config: Config) -> Option<f64> {
        let runs = self.of(rate, config);
        (!runs.is_empty()).then(|| median_f(runs.iter().map(|r| r.cpu_share())))
    }

    /// CPU the configuration added to the target over bare, in % of one core.
    pub fn extra_at(&self, rate: u64, config: Config) -> Option<f64> {
        Some((self.share(rate, config)? - self.share(rate, Config::Bare)?) * 100.0)
    }

    /// Median share of the window the probe was live (1 when never cycled).
    fn live(&self, rate: u64, config: Config) -> Option<f64> {
        let runs = self.of(rate, config);
        let seen: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.seen.as_ref().map(|s| s.sampled.unwrap_or(1.0)))
            .collect();
        (!seen.is_empty()).then(|| median_f(seen.into_iter()))
    }
}

fn label(rate: u64) -> String {
    format!("{}k", rate / 1000)
}

pub fn measure(env: &Env, hitbench: &Path) -> Result<Throughput> {
    let addr = probe_addresses(&env.detector, hitbench, SYMBOL)?;
    // XTASK_BENCH_RATES=100000,...: only those rates (work on one line; with
    // XTASK_BENCH_ONLY, nothing is written).
    let rates: Vec<u64> = match std::env::var("XTASK_BENCH_RATES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => RATES.to_vec(),
    };
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for &rate in &rates {
            for config in CONFIGS {
                if config == Config::NoBudget && !env.budget_flag {
                    continue;
                }
                let r = run(env, hitbench, addr.probe, rate, config).with_context(|| {
                    format!("paced hitbench at {rate}/s, {config:?}, round {round}")
                })?;
                eprintln!(
                    "bench: throughput {round}/{ROUNDS}: {:>4}/s {:<9} {:>8.0} calls/s, \
                     CPU {:5.2} % of a core{}",
                    label(rate),
                    format!("{config:?}"),
                    r.calls as f64 / r.elapsed_s,
                    r.cpu_share() * 100.0,
                    r.seen.as_ref().map_or_else(String::new, |s| format!(
                        ", detector counted {:.0} ({:.0}/s{})",
                        s.calls,
                        s.per_second,
                        s.sampled
                            .map_or_else(String::new, |x| format!(", live {:.1} %", x * 100.0))
                    ))
                );
                runs.push(r);
            }
        }
    }
    Ok(Throughput { runs })
}

fn run(env: &Env, hitbench: &Path, probe: u64, rate: u64, config: Config) -> Result<Run> {
    let mut hb = Hitbench::start(
        hitbench,
        &[
            "-fn",
            "caller",
            "-rate",
            &rate.to_string(),
            "-seconds",
            &SECONDS.to_string(),
        ],
    )?;
    let mut det = None;
    if config != Config::Bare {
        let extra: &[&str] = match config {
            Config::NoBudget => &["--overhead-budget", "0"],
            _ => &[],
        };
        let started = Instant::now();
        let mut d = Diagnose::start(&env.detector, hb.pid, extra)?;
        d.wait_attached(started, Duration::from_secs(60))?;
        wait_breakpoint(hb.pid, probe, Duration::from_secs(5))
            .context("detector's uprobe on runtime.Caller is not in the target")?;
        det = Some(d);
    }
    hb.go()?;
    let line = hb.result("calls=", Duration::from_secs_f64(SECONDS * 4.0 + 60.0))?;
    let seen = match det {
        Some(d) => {
            let (_, json) = d.stop()?;
            let c = calls_of(&json, SYMBOL).context("no runtime.callers in detector's report")?;
            Some(Seen {
                calls: c["calls"].as_f64().unwrap_or(f64::NAN),
                per_second: c["per_second"].as_f64().unwrap_or(f64::NAN),
                duration_s: json["collected"]["duration_s"].as_f64().unwrap_or(f64::NAN),
                sampled: c["sampled"].as_f64(),
            })
        }
        None => None,
    };
    hb.finish()?;
    let f = fields(&line);
    let num = |k: &str| -> Result<f64> {
        f.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k}= in {line:?}"))
    };
    Ok(Run {
        rate,
        config,
        calls: num("calls")? as u64,
        elapsed_s: num("elapsed_ns")? / 1e9,
        user_s: num("utime_ns")? / 1e9,
        sys_s: num("stime_ns")? / 1e9,
        seen,
    })
}

fn config_name(env: &Env, c: Config) -> &'static str {
    match c {
        Config::Bare => "bare (no probes)",
        Config::Default if env.budget_flag => "detector, default budget (1 %)",
        Config::Default => "detector, default (no budget in this build)",
        Config::NoBudget => "detector `--overhead-budget 0`",
    }
}

pub fn render(md: &mut String, env: &Env, t: &Throughput) -> Result<()> {
    let rel = |p: &Path| {
        p.strip_prefix(workspace_root())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let hitbench = env.fixture(&env.newest.version, "default", "hitbench");
    writeln!(
        md,
        "\n## 2. Target CPU at 1k, 10k and 100k misuse calls/s\n"
    )?;
    writeln!(
        md,
        "`{} -fn caller -rate R -seconds {SECONDS}` calls `main.logLine`, which calls \
         `runtime.Caller(0)` (the hot-log-path misuse, from user code), R times per \
         second for {SECONDS} s, in a batch every millisecond (each batch catches up with \
         R × elapsed time), and does nothing else. It measures its own CPU time over \
         exactly the paced part (getrusage: user + system time of all its threads; a \
         uprobe's trap and eBPF program are charged to the calling thread, as system \
         time). detector is `detector diagnose --pid PID --format json`, attached before \
         the paced part starts; it sees `runtime.Caller` through the two functions Caller \
         calls, `runtime.callers` and `runtime.(*Frames).Next`, so every call is two probe \
         hits. Each configuration runs \
         {ROUNDS} times, all interleaved; CPU is the median{}. **Extra** is the \
         configuration's CPU minus bare's at the same rate, in % of one core: the \
         overhead budget is {BUDGET_PERCENT} % of a core. **Extra per probed hit** divides \
         it by the probe hits the target took: two per call, while the probes were live. \
         **Within**: \"yes\" when the median extra is at most the budget, \"no\" when even \
         the configuration's cheapest run is over bare's dearest by more than the budget.\n",
        rel(&hitbench),
        if ROUNDS == 2 {
            " (mean of the two)"
        } else {
            ""
        },
    )?;
    writeln!(
        md,
        "| offered | configuration | achieved calls/s | target CPU, % of a core (runs) | of which system | extra vs bare | extra per probed hit | within {BUDGET_PERCENT} %? | detector's count ÷ calls made | detector's calls/s (true) | probe live |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")?;
    for rate in RATES {
        for config in CONFIGS {
            let name = config_name(env, config);
            let runs = t.of(rate, config);
            if runs.is_empty() {
                writeln!(
                    md,
                    "| {}/s | {name} | n/a (flag missing) | | | | | | | | |",
                    label(rate)
                )?;
                continue;
            }
            let achieved = median_f(runs.iter().map(|r| r.calls as f64 / r.elapsed_s));
            let share = median_f(runs.iter().map(|r| r.cpu_share())) * 100.0;
            let sys = median_f(runs.iter().map(|r| r.sys_share())) * 100.0;
            let all: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.2}", r.cpu_share() * 100.0))
                .collect();
            let (extra, within, per_hit) = match (config, t.extra_at(rate, config)) {
                (Config::Bare, _) | (_, None) => ("–".to_string(), "–".to_string(), "–".into()),
                (_, Some(x)) => {
                    // Clearly over: even the cheapest run of the configuration minus the
                    // dearest bare run is over the budget.
                    let lo = runs.iter().map(|r| r.cpu_share()).fold(f64::NAN, f64::min);
                    let bare_hi = t
                        .of(rate, Config::Bare)
                        .iter()
                        .map(|r| r.cpu_share())
                        .fold(f64::NAN, f64::max);
                    let within = if x <= BUDGET_PERCENT {
                        "yes".to_string()
                    } else if (lo - bare_hi) * 100.0 > BUDGET_PERCENT {
                        format!("**no** ({} × budget)", ratio(x / BUDGET_PERCENT))
                    } else {
                        "over at the median, not beyond the runs' spread".to_string()
                    };
                    // Probe hits per second while probed: two per call, times the
                    // share of the window the probes were live.
                    let live = t.live(rate, config).unwrap_or(1.0);
                    let hits = 2.0 * achieved * live;
                    (
                        format!("{x:+.2}"),
                        within,
                        format!("{:.1} µs", x / 100.0 / hits * 1e6),
                    )
                }
            };
            let seen: Vec<(&Run, &Seen)> = runs
                .iter()
                .filter_map(|r| r.seen.as_ref().map(|s| (*r, s)))
                .collect();
            let (count, rates, live) = if seen.is_empty() {
                ("–".to_string(), "–".to_string(), "–".to_string())
            } else {
                let counts: Vec<String> = seen
                    .iter()
                    .map(|(r, s)| ratio(s.calls / r.calls as f64))
                    .collect();
                let reported = median_f(seen.iter().map(|(_, s)| s.per_second));
                let truth = median_f(seen.iter().map(|(r, _)| r.calls as f64 / r.elapsed_s));
                let live: Vec<String> = seen
                    .iter()
                    .map(|(_, s)| {
                        s.sampled
                            .map_or_else(|| "100 %".into(), |x| format!("{:.1} %", x * 100.0))
                    })
                    .collect();
                (
                    counts.join(", "),
                    format!("{reported:.0} ({truth:.0})"),
                    live.join(", "),
                )
            };
            writeln!(
                md,
                "| {}/s | {name} | {achieved:.0} | {share:.2} ({}) | {sys:.2} | {extra} | {per_hit} | {within} | {count} | {rates} | {live} |",
                label(rate),
                all.join(", "),
            )?;
        }
    }
    // How long diagnose's windows were beyond the paced part.
    let slack: Vec<f64> = t
        .runs
        .iter()
        .filter_map(|r| r.seen.as_ref().map(|s| s.duration_s - r.elapsed_s))
        .collect();
    writeln!(
        md,
        "\nCounts compare exactly: every call is made inside diagnose's window, which opens \
         when its probes are in (before the start signal) and closes on SIGINT right \
         after the result line; its reported calls/s divide by that window, longer than \
         the paced part by {} s (median), so they read up to that much lower than the \
         truth. A probe duty-cycled by the budget (\"probe live\" < 100 %) reports \
         extrapolated counts.",
        fmt_f(median_f(slack.iter().copied()), 2)
    )?;
    // The cost of one hit at each rate, every hit probed.
    let per_hit: Vec<(u64, f64)> = RATES
        .iter()
        .filter_map(|r| {
            let x = t.extra_at(*r, Config::NoBudget)?;
            let runs = t.of(*r, Config::NoBudget);
            let achieved = median_f(runs.iter().map(|r| r.calls as f64 / r.elapsed_s));
            Some((*r, x / 100.0 / (2.0 * achieved) * 1e6))
        })
        .collect();
    if let (Some(first), Some(last)) = (per_hit.first(), per_hit.last()) {
        let shown: Vec<String> = per_hit
            .iter()
            .map(|(r, us)| format!("{us:.2} µs at {}/s", label(*r)))
            .collect();
        writeln!(
            md,
            "\nWith every hit probed, the target paid {} per hit.{}",
            shown.join(", "),
            if first.1 > 2.0 * last.1 {
                " Sparse hits cost more than row 1's tight loop suggests: at the lowest \
                 rate every millisecond's batch is a call or a few from a thread that just \
                 woke, so the trap path runs with cold caches (and the lowest rate's extra \
                 is the noisiest)."
            } else {
                ""
            }
        )?;
    }
    // Where the budgeted configuration's extra CPU goes: hits while live, the rest.
    if env.budget_flag {
        for rate in RATES {
            let (Some(extra), Some(full), Some(live)) = (
                t.extra_at(rate, Config::Default),
                t.extra_at(rate, Config::NoBudget),
                t.live(rate, Config::Default),
            ) else {
                continue;
            };
            if live >= 0.999 {
                continue;
            }
            let hits = full * live;
            writeln!(
                md,
                "\nAt {}/s the budget kept the probe live {:.1} % of the window. Probing every \
                 hit cost {full:+.2} % of a core, so the hits while live account for about \
                 {hits:.2} %; the budgeted run measured {extra:+.2} %, leaving {:+.2} % for \
                 the duty cycle itself (attaching and detaching the uprobes in the running \
                 target) and noise.",
                label(rate),
                live * 100.0,
                extra - hits
            )?;
        }
    }
    let bare: Vec<String> = RATES
        .iter()
        .filter(|r| !t.of(**r, Config::Bare).is_empty())
        .map(|r| {
            let runs = t.of(*r, Config::Bare);
            let lo = runs.iter().map(|r| r.cpu_share()).fold(f64::NAN, f64::min);
            let hi = runs.iter().map(|r| r.cpu_share()).fold(f64::NAN, f64::max);
            format!("{:.2}–{:.2} % at {}/s", lo * 100.0, hi * 100.0, label(*r))
        })
        .collect();
    writeln!(
        md,
        "\nNoise: bare runs of the same rate spread over {} (the 1 ms pacing wake-ups alone \
         cost a few % of a core here, and their cost moves with the machine's load); an \
         extra below about that spread is not distinguishable from zero.",
        bare.join(", ")
    )?;
    let calls = |rate: u64| thousands((rate as f64 * SECONDS) as u64);
    writeln!(
        md,
        "\nCalls made per run: {}.",
        RATES
            .iter()
            .map(|r| format!("{} at {}/s", calls(*r), label(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if !env.budget_flag {
        writeln!(
            md,
            "\nThis detector build has no `--overhead-budget`: its default probes every \
             hit, so the budget column and the `--overhead-budget 0` rows are n/a (flag \
             missing)."
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::GoTool;

    fn run(rate: u64, config: Config, cpu: f64, live: Option<f64>) -> Run {
        let calls = rate * SECONDS as u64;
        Run {
            rate,
            config,
            calls,
            elapsed_s: SECONDS,
            user_s: cpu * SECONDS / 2.0,
            sys_s: cpu * SECONDS / 2.0,
            seen: (config != Config::Bare).then_some(Seen {
                calls: calls as f64,
                per_second: rate as f64,
                duration_s: SECONDS + 0.05,
                sampled: live,
            }),
        }
    }

    #[test]
    fn renders_every_rate_and_verdict() {
        let go = GoTool {
            version: "1.27.3".into(),
            go: "/nonexistent/go".into(),
        };
        let env = Env {
            detector: "/nonexistent/detector".into(),
            newest: go.clone(),
            go: vec![go],
            work: "/nonexistent/work".into(),
            budget_flag: true,
        };
        let mut runs = Vec::new();
        for rate in RATES {
            for _ in 0..ROUNDS {
                runs.push(run(rate, Config::Bare, 0.05, None));
                runs.push(run(rate, Config::Default, 0.055, Some(0.3)));
                runs.push(run(rate, Config::NoBudget, 0.09, None));
            }
        }
        let t = Throughput { runs };
        assert!((t.extra_at(100_000, Config::NoBudget).unwrap() - 4.0).abs() < 1e-9);
        let mut md = String::new();
        render(&mut md, &env, &t).unwrap();
        assert!(
            md.contains("| 100k/s | detector, default budget (1 %) |"),
            "{md}"
        );
        assert!(md.contains("| +0.50 |"), "{md}");
        assert!(md.contains("**no** (4.00 × budget)"), "{md}");
        assert!(md.contains("live 30.0 % of the window"), "{md}");
        assert!(!md.contains("NaN"), "{md}");
    }
}
