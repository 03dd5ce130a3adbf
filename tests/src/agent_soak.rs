//! The host agent's soak: `detector watch` living through what a production host does
//! to it. Short forms run in `cargo xtask test` (tests/tests/churn.rs,
//! tests/tests/restarts.rs), long forms in `cargo xtask soak --agent`
//! (tests/src/bin/agent_soak.rs).
//!
//! - [`churn`]: N new short-lived Go processes per second (the `service` fixture,
//!   misusing ReadMemStats, living about a second) next to two long-lived ones under
//!   load. The agent's RSS, open descriptors, kernel map entries, links and /metrics
//!   series must stay flat after a warm-up, every short-lived process must be seen,
//!   and nothing may be left behind when it stops.
//! - [`restarts`]: the agent SIGKILLed and restarted N times while a target serves
//!   requests: no failed or changed response, no uprobe left behind after any kill,
//!   counting and the finding back after each restart.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    breakpoints::{check_after_kill, kernel_uprobe_leaks, probe_sites, wait_no_breakpoints},
    detector_bin, program_ids_of, scrape,
    soak::{fixed_body, signal, Service, SIGKILL, SIGTERM},
    start_watch, sum, version_dir, wait_programs_freed,
};

/// What the agent holds at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentSample {
    pub rss_kb: u64,
    pub fds: u64,
    /// Kernel map entries (calls, stacks, pause series) the agent reports.
    pub calls_entries: u64,
    pub stacks_entries: u64,
    pub stw_entries: u64,
    pub probes_attached: u64,
    /// Sample lines in /metrics.
    pub series: u64,
    pub processes_watched: u64,
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The agent `pid` serving at `addr`, now.
pub fn sample(pid: u32, addr: &str) -> AgentSample {
    let s = scrape(addr);
    let (_, body) = crate::http::get(addr, "/metrics").expect("GET /metrics");
    let entries = |map: &str| sum(&s, "detector_kernel_map_entries", &[("map", map)]) as u64;
    AgentSample {
        rss_kb: status_kb(pid, "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        calls_entries: entries("calls"),
        stacks_entries: entries("stacks"),
        stw_entries: entries("stw"),
        probes_attached: sum(&s, "detector_probes_attached", &[]) as u64,
        series: body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count() as u64,
        processes_watched: sum(&s, "detector_processes_watched", &[]) as u64,
    }
}

pub struct ChurnOptions {
    pub seconds: u64,
    /// New short-lived processes per second.
    pub per_second: u32,
    /// How long each short-lived process lives.
    pub life: Duration,
    /// Before this, the agent warms up (its figures are not held to flatness).
    pub warmup: Duration,
}

#[derive(Debug, Default)]
pub struct ChurnOutcome {
    pub seconds: f64,
    pub spawned: u64,
    pub exited_ok: u64,
    pub failed: u64,
    /// Short-lived processes the agent watched (its processes_discovered counter).
    pub seen: u64,
    pub warm: AgentSample,
    pub end: AgentSample,
    /// The highest of each figure after the warm-up.
    pub peak: AgentSample,
    /// Once the churn stopped and its processes were gone.
    pub after: AgentSample,
    /// /metrics series of the short-lived processes' service, and of one long-lived
    /// service.
    pub series_short_service: u64,
    pub series_long_service: u64,
    /// ReadMemStats calls the agent exported for the short-lived processes' service.
    pub short_calls: u64,
    pub programs: usize,
}

impl ChurnOutcome {
    pub fn summary(&self) -> String {
        format!(
            "churn: {:.0} s at {:.1} new processes/s: {} spawned, {} exited cleanly, {} failed, {} seen by the agent; \
             after warm-up -> end (peak): RSS {} -> {} ({}) KiB, fds {} -> {} ({}), call entries {} -> {} ({}), stack entries {} -> {} ({}), \
             pause series {} -> {} ({}), probes {} -> {} ({}), /metrics series {} -> {} ({}); once the churn stopped: call entries {}, series {}; \
             series per service: {} (short-lived), {} (long-lived); {} ReadMemStats calls counted for the short-lived service; {} eBPF programs freed",
            self.seconds,
            self.spawned as f64 / self.seconds,
            self.spawned,
            self.exited_ok,
            self.failed,
            self.seen,
            self.warm.rss_kb, self.end.rss_kb, self.peak.rss_kb,
            self.warm.fds, self.end.fds, self.peak.fds,
            self.warm.calls_entries, self.end.calls_entries, self.peak.calls_entries,
            self.warm.stacks_entries, self.end.stacks_entries, self.peak.stacks_entries,
            self.warm.stw_entries, self.end.stw_entries, self.peak.stw_entries,
            self.warm.probes_attached, self.end.probes_attached, self.peak.probes_attached,
            self.warm.series, self.end.series, self.peak.series,
            self.after.calls_entries, self.after.series,
            self.series_short_service, self.series_long_service,
            self.short_calls,
            self.programs,
        )
    }
}

fn private_dir(what: &str) -> PathBuf {
    std::env::temp_dir()
        .canonicalize()
        .expect("temp dir")
        .join(format!("detector-agent-{what}-{}", std::process::id()))
}

/// A private copy of the service fixture (Go 1.27, default build) at `dir/name/service`.
fn copy_service(dir: &Path, name: &str) -> Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    let exe = d.join("service");
    let fixture = version_dir("service", 27).join("default").join("service");
    std::fs::copy(&fixture, &exe).with_context(|| format!("copying {}", fixture.display()))?;
    Ok(exe)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn series_of(addr: &str, exe: &Path) -> u64 {
    let (_, body) = crate::http::get(addr, "/metrics").expect("GET /metrics");
    let label = format!("exe=\"{}\"", exe.display());
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .count() as u64
}

/// See the module comment.
pub fn churn(o: &ChurnOptions) -> Result<ChurnOutcome> {
    let dir = private_dir("churn");
    let _ = std::fs::remove_dir_all(&dir);
    let short = copy_service(&dir, "short")?;
    let mut long = vec![];
    for name in ["long1", "long2"] {
        let exe = copy_service(&dir, name)?;
        let child = crate::spawn_fresh_copy(
            Command::new(&exe)
                .args(["-rate", "200", "-misuse", "readmemstats"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        long.push((Killed(child), exe));
    }
    let (watch, addr) = start_watch(
        &format!("{}/*/service", dir.display()),
        &["--max-processes".as_ref(), "400".as_ref()],
        "http",
    );
    let watch = Killed(watch);
    let wpid = watch.0.id();
    let t_wait = Instant::now();
    while sum(&scrape(&addr), "detector_processes_watched", &[]) < 2.0 {
        if t_wait.elapsed() > Duration::from_secs(30) {
            bail!("the long-lived processes are not watched after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let discovered0 = sum(&scrape(&addr), "detector_processes_discovered_total", &[]) as u64;
    let leaks_before = kernel_uprobe_leaks();

    // The spawner and its reaper.
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let children: Arc<Mutex<Vec<Child>>> = Arc::default();
    let spawner = {
        let (stop, spawned, children, short) = (
            stop.clone(),
            spawned.clone(),
            children.clone(),
            short.clone(),
        );
        let life = format!("{}ms", o.life.as_millis());
        let period = Duration::from_secs_f64(1.0 / o.per_second as f64);
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let child = crate::spawn_fresh_copy(
                    Command::new(&short)
                        .args([
                            "-rate",
                            "20",
                            "-misuse",
                            "readmemstats",
                            "-exit-after",
                            &life,
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                );
                if let Ok(c) = child {
                    spawned.fetch_add(1, Ordering::SeqCst);
                    children.lock().unwrap().push(c);
                }
                n += 1;
                let next = t0 + period * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let reaper = {
        let (stop, ok, failed, children) =
            (stop.clone(), ok.clone(), failed.clone(), children.clone());
        std::thread::spawn(move || loop {
            let done = stop.load(Ordering::SeqCst);
            let mut list = children.lock().unwrap();
            list.retain_mut(|c| match c.try_wait() {
                Ok(Some(s)) => {
                    if s.success() {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    false
                }
                Ok(None) => true,
                Err(_) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    false
                }
            });
            let empty = list.is_empty();
            drop(list);
            if done && empty {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        })
    };

    let t0 = Instant::now();
    std::thread::sleep(o.warmup);
    let warm = sample(wpid, &addr);
    let programs = program_ids_of(wpid);
    let mut peak = warm;
    let end_at = t0 + Duration::from_secs(o.seconds);
    while Instant::now() < end_at {
        std::thread::sleep(
            Duration::from_secs(2).min(end_at.saturating_duration_since(Instant::now())),
        );
        let s = sample(wpid, &addr);
        peak = AgentSample {
            rss_kb: peak.rss_kb.max(s.rss_kb),
            fds: peak.fds.max(s.fds),
            calls_entries: peak.calls_entries.max(s.calls_entries),
            stacks_entries: peak.stacks_entries.max(s.stacks_entries),
            stw_entries: peak.stw_entries.max(s.stw_entries),
            probes_attached: peak.probes_attached.max(s.probes_attached),
            series: peak.series.max(s.series),
            processes_watched: peak.processes_watched.max(s.processes_watched),
        };
    }
    let end = sample(wpid, &addr);
    let series_short_service = series_of(&addr, &short);
    let series_long_service = series_of(&addr, &long[0].1);
    let short_label = short.display().to_string();
    let short_calls = sum(
        &scrape(&addr),
        "detector_runtime_calls_total",
        &[("exe", short_label.as_str()), ("function", "readmemstats")],
    ) as u64;
    stop.store(true, Ordering::SeqCst);
    let _ = spawner.join();
    let _ = reaper.join();
    let seconds = t0.elapsed().as_secs_f64();
    // The agent drops the exited processes at its next ticks.
    std::thread::sleep(Duration::from_secs(3));
    let after = sample(wpid, &addr);
    let seen =
        (sum(&scrape(&addr), "detector_processes_discovered_total", &[]) as u64) - discovered0;

    // Stop the agent: everything it held must go.
    let mut watch = watch;
    signal(wpid, SIGTERM);
    let t_exit = Instant::now();
    let status = loop {
        if let Some(s) = watch.0.try_wait()? {
            break s;
        }
        if t_exit.elapsed() > Duration::from_secs(60) {
            bail!("watch did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("watch exited with {status}");
    }
    if let Err(left) = wait_programs_freed(&programs) {
        bail!("eBPF programs left in the kernel: {left:?}");
    }
    for (child, exe) in &mut long {
        if let Some(s) = child.0.try_wait()? {
            bail!("a long-lived target died during the churn: {s}");
        }
        let sites = probe_sites(&detector_bin(), exe);
        wait_no_breakpoints(child.0.id(), &sites, Duration::from_secs(10))
            .map_err(anyhow::Error::msg)?;
        signal(child.0.id(), SIGTERM);
        let s = child.0.wait()?;
        if !s.success() {
            bail!("a long-lived target did not exit cleanly: {s}");
        }
    }
    if let (Some(b), Some(a)) = (leaks_before, kernel_uprobe_leaks()) {
        if a > b {
            bail!("the kernel logged {} leaked uprobe(s)", a - b);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ChurnOutcome {
        seconds,
        spawned: spawned.load(Ordering::SeqCst),
        exited_ok: ok.load(Ordering::SeqCst),
        failed: failed.load(Ordering::SeqCst),
        seen,
        warm,
        end,
        peak,
        after,
        series_short_service,
        series_long_service,
        short_calls,
        programs: programs.len(),
    })
}

#[derive(Debug, Default)]
pub struct RestartOutcome {
    pub restarts: usize,
    pub requests: u64,
    pub failed_requests: u64,
    /// Seconds from each start to the target's calls exported, and to its finding.
    pub counting_s: Vec<f64>,
    pub finding_s: Vec<f64>,
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

impl RestartOutcome {
    pub fn summary(&self) -> String {
        format!(
            "restarts: {} SIGKILL + restart cycles, {} requests, {} failed or changed; counting back after a start in {:.2} s median, {:.2} s max; \
             the finding back in {:.2} s median, {:.2} s max; no uprobe left after any kill",
            self.restarts,
            self.requests,
            self.failed_requests,
            percentile(&self.counting_s, 0.5),
            percentile(&self.counting_s, 1.0),
            percentile(&self.finding_s, 0.5),
            percentile(&self.finding_s, 1.0),
        )
    }
}

/// See the module comment. The agent ticks every 0.5 s, judges over 10 s.
pub fn restarts(n: usize) -> Result<RestartOutcome> {
    let fixture = version_dir("service", 27).join("default").join("service");
    let mut service = Service::start(&fixture, "agent-restarts", &["-rate", "0"])?;
    let exe = service.exe.clone();
    let exe_label = exe.display().to_string();
    let sites = probe_sites(&detector_bin(), &exe);
    let leaks_before = kernel_uprobe_leaks();
    // Clients: every response must be 200 with the fixture's body.
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, requests, failed, addr) = (
                stop.clone(),
                requests.clone(),
                failed.clone(),
                service.addr.clone(),
            );
            std::thread::spawn(move || {
                let want = fixed_body();
                while !stop.load(Ordering::SeqCst) {
                    match crate::http::get(&addr, "/fixed") {
                        Ok((200, body)) if body == want => {}
                        other => {
                            eprintln!("request failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let mut out = RestartOutcome::default();
    let result = (|| -> Result<()> {
        for i in 0..n {
            let t0 = Instant::now();
            let (watch, addr) = start_watch(&exe_label, &[], "http");
            let mut watch = Killed(watch);
            let mut counting = None;
            let mut finding = None;
            while counting.is_none() || finding.is_none() {
                if t0.elapsed() > Duration::from_secs(60) {
                    bail!("restart {i}: counting {counting:?}, finding {finding:?} after 60 s");
                }
                let s = scrape(&addr);
                let exe_l = [("exe", exe_label.as_str())];
                if counting.is_none() && sum(&s, "detector_runtime_calls_total", &exe_l) > 0.0 {
                    counting = Some(t0.elapsed().as_secs_f64());
                }
                if finding.is_none() && sum(&s, "detector_finding_active", &exe_l) > 0.0 {
                    finding = Some(t0.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            out.counting_s.extend(counting);
            out.finding_s.extend(finding);
            let wpid = watch.0.id();
            signal(wpid, SIGKILL);
            let _ = watch.0.wait();
            check_after_kill(wpid, service.pid(), &sites, leaks_before)
                .map_err(|e| anyhow::anyhow!("after kill {i}: {e}"))?;
            service.check_alive(&format!("after kill {i}"))?;
            out.restarts += 1;
        }
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    out.requests = requests.load(Ordering::SeqCst);
    out.failed_requests = failed.load(Ordering::SeqCst);
    result?;
    service.stop()?;
    Ok(out)
}
