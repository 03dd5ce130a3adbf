//! Row 3: `detector watch`'s own cost. N Go processes (the `service` fixture of every
//! installed Go, one in ten with a light ReadMemStats misuse) run while the agent watches
//! them and is scraped every second, as Prometheus would; its CPU time (/proc/PID/stat)
//! over [`MEASURE`] and its peak RSS (VmHWM) are reported per N. At 1,000 the processes
//! run [`DISTINCT_AT_1000`] distinct binaries (copies of the fixture of every Go and
//! build kind). At 100 and 1,000, [`LAUNCHES`] more processes are then started one by
//! one: how long after its exec each is watched is the agent's discovery latency.
use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    cpu_seconds, lines, median_f, next_line, short_path, signal, status_kb, wait_timeout, Env,
    Guard,
};

/// Watched processes per run (`XTASK_BENCH_AGENT_N=100,1000` picks some).
const COUNTS: [usize; 4] = [1, 10, 100, 1000];
/// Distinct binaries the 1,000 processes run (below, one per installed Go).
const DISTINCT_AT_1000: usize = 100;
/// Processes started one by one, at 100 and 1,000, to measure discovery latency.
const LAUNCHES: usize = 100;
/// How long each of them runs (the next starts when it is killed).
const LAUNCH_LIFE: Duration = Duration::from_millis(300);
/// The measured part of each run, after discovery settled.
const MEASURE: Duration = Duration::from_secs(30);
/// Requests per second each service sends itself (1 at 1,000 processes).
const SERVICE_RATE: &str = "2";
const SERVICE_RATE_1000: &str = "1";
/// The copies of the service fixture live here (their own inodes: the agent's
/// uprobes on them touch nobody else's processes), and `--exe` selects them.
const DIR: &str = "watch";

pub struct AgentRun {
    pub n: usize,
    binaries: usize,
    misusing: usize,
    /// From the agent's start until it watched all N.
    discovery: Duration,
    /// CPU over the measured part, as a share of one core.
    pub cpu_share: f64,
    wall: Duration,
    /// Peak and final resident set, kB.
    pub hwm_kb: u64,
    rss_kb: u64,
    /// RssAnon and RssFile at the end (file: the mmapped binaries), kB.
    anon_kb: u64,
    file_kb: u64,
    /// detector_tick_duration_seconds at each scrape.
    ticks: Vec<f64>,
    scrapes: usize,
    scrape_ms: Vec<f64>,
    scrape_bytes: usize,
    probes: Option<f64>,
    duty_cycled: Option<f64>,
    analysis_s: Option<f64>,
    /// From SIGTERM until the agent exited (it detaches every probe).
    stop: Option<Duration>,
    /// Processes started after the measurement to time discovery.
    launched: usize,
    /// Of those, how long after its start each was watched (the agent's own figure,
    /// from its debug log; its /metrics histogram counts the same), ms.
    discovered_ms: Vec<f64>,
}

impl AgentRun {
    /// Discovery latency percentile `q` (0..1), ms.
    pub fn discovery_ms(&self, q: f64) -> Option<f64> {
        let mut v = self.discovered_ms.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i])
    }
}

pub fn measure(env: &Env) -> Result<Vec<AgentRun>> {
    let counts: Vec<usize> = match std::env::var("XTASK_BENCH_AGENT_N") {
        Ok(v) => v
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .context("XTASK_BENCH_AGENT_N: numbers, comma-separated")
            })
            .collect::<Result<_>>()?,
        Err(_) => COUNTS.to_vec(),
    };
    let bins = service_copies(env)?;
    let mut out = Vec::new();
    for n in counts {
        let r = if n >= 1000 {
            let many = distinct_copies(env)?;
            run(env, &many, &glob_many(env), n)
        } else {
            run(env, &bins, &glob(env), n)
        }
        .with_context(|| format!("watching {n} processes"))?;
        eprintln!(
            "bench: agent: {n:>4} processes ({} binaries): CPU {:.2} % of a core, peak RSS \
             {:.1} MB, tick {:.1} ms (median), discovery {} / {} ms (p50 / p99 of {} of {})",
            r.binaries,
            r.cpu_share * 100.0,
            r.hwm_kb as f64 / 1024.0,
            median_f(r.ticks.iter().copied()) * 1e3,
            r.discovery_ms(0.5)
                .map_or("–".into(), |v| format!("{v:.1}")),
            r.discovery_ms(0.99)
                .map_or("–".into(), |v| format!("{v:.1}")),
            r.discovered_ms.len(),
            r.launched,
        );
        out.push(r);
    }
    Ok(out)
}

/// [`DISTINCT_AT_1000`] copies of the service fixture, cycling over every installed
/// Go and build kind, in target/bench/watch-1000 (each its own file: its own binary).
fn distinct_copies(env: &Env) -> Result<Vec<PathBuf>> {
    let dir = env.work.join(DIR_1000);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut sources = Vec::new();
    for go in &env.go {
        for kind in ["default", "stripped", "pie", "cgo"] {
            let src = env.fixture(&go.version, kind, "service");
            if src.is_file() {
                sources.push(src);
            }
        }
    }
    if sources.is_empty() {
        bail!("no service fixture: run `cargo xtask fixtures`");
    }
    let mut bins = Vec::new();
    for i in 0..DISTINCT_AT_1000 {
        let src = &sources[i % sources.len()];
        let dst = dir.join(format!("svc-{i:03}"));
        fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        bins.push(dst);
    }
    Ok(bins)
}

/// The copies for 1,000 processes live here.
const DIR_1000: &str = "watch-1000";

fn glob_many(env: &Env) -> String {
    format!("{}/svc-*", env.work.join(DIR_1000).display())
}

/// One copy of the service fixture per installed Go, in target/bench/watch.
fn service_copies(env: &Env) -> Result<Vec<PathBuf>> {
    let dir = env.work.join(DIR);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut bins = Vec::new();
    for go in &env.go {
        let src = env.fixture(&go.version, "default", "service");
        let dst = dir.join(format!("svc-go{}", go.version));
        fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        bins.push(dst);
    }
    Ok(bins)
}

fn glob(env: &Env) -> String {
    format!("{}/svc-go*", env.work.join(DIR).display())
}

/// A service: `bin` serving itself light load, misusing or not.
fn service(bin: &PathBuf, n: usize, misuse: bool) -> Result<Guard> {
    let mut cmd = Command::new(bin);
    let rate = if n >= 1000 {
        // 1,000 Go processes on a small machine: one P each, and less load.
        cmd.env("GOMAXPROCS", "1");
        SERVICE_RATE_1000
    } else {
        SERVICE_RATE
    };
    let child = cmd
        .args(["-addr", "127.0.0.1:0", "-rate", rate])
        .args(["-misuse", if misuse { "readmemstats" } else { "none" }])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("could not start a service")?;
    Ok(Guard(child))
}

fn run(env: &Env, bins: &[PathBuf], glob: &str, n: usize) -> Result<AgentRun> {
    // The services: binary i % len, every tenth (from the first) misusing.
    let mut services = Vec::with_capacity(n);
    for i in 0..n {
        services.push(service(&bins[i % bins.len()], n, i % 10 == 0)?);
    }
    thread::sleep(Duration::from_millis(500 + n as u64));
    for s in &mut services {
        if let Some(st) = s.0.try_wait()? {
            bail!("a service exited at start: {st}");
        }
    }

    let started = Instant::now();
    let mut child = Command::new(&env.detector)
        .args(["watch", "--listen", "127.0.0.1:0", "--exe", glob])
        .args(["--max-processes", "2000"])
        // Its debug log times the discovery of each new process.
        .env("RUST_LOG", "warn,detector::watch::agent=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start detector watch")?;
    let err = lines(child.stderr.take().expect("piped"));
    let mut agent = Guard(child);
    let pid = agent.0.id();
    let line = next_line(&err, Duration::from_secs(60), |l| {
        l.contains("serving http://")
    })
    .context("detector watch did not print its address")?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .context("no address in detector watch's output")?
        .to_string();
    // Keep its stderr drained from here on.
    let discovered = Arc::new(Mutex::new(Vec::new()));
    let drained = collect_lines(err, discovered.clone());

    // Discovery settles: every service watched, then two more ticks. (At 1,000: 100
    // binaries to analyse and attach.)
    let settle = Duration::from_secs(180.max(n as u64 * 3 / 5));
    let deadline = Instant::now() + settle;
    let discovery = loop {
        let body = scrape(&addr).map(|(_, b)| b).unwrap_or_default();
        if metric(&body, "detector_processes_watched") == Some(n as f64) {
            break started.elapsed();
        }
        if let Some(st) = agent.0.try_wait()? {
            bail!("detector watch exited ({st})");
        }
        if Instant::now() > deadline {
            bail!(
                "detector watch saw {:?} of {n} processes after {settle:?}",
                metric(&body, "detector_processes_watched")
            );
        }
        thread::sleep(Duration::from_millis(250));
    };
    thread::sleep(Duration::from_secs(2));

    let cpu0 = cpu_seconds(pid).context("agent's /proc/PID/stat")?;
    let t0 = Instant::now();
    let mut ticks = Vec::new();
    let mut scrape_ms = Vec::new();
    let mut scrape_bytes = 0;
    let mut last = String::new();
    let mut next = t0;
    while t0.elapsed() < MEASURE {
        next += Duration::from_secs(1);
        let (took, body) = scrape(&addr).context("scraping /metrics")?;
        scrape_ms.push(took.as_secs_f64() * 1e3);
        scrape_bytes = body.len();
        if let Some(t) = metric(&body, "detector_tick_duration_seconds") {
            ticks.push(t);
        }
        last = body;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let wall = t0.elapsed();
    let cpu1 = cpu_seconds(pid).context("agent's /proc/PID/stat")?;
    let hwm_kb = status_kb(pid, "VmHWM").unwrap_or(0);
    let rss_kb = status_kb(pid, "VmRSS").unwrap_or(0);
    let anon_kb = status_kb(pid, "RssAnon").unwrap_or(0);
    let file_kb = status_kb(pid, "RssFile").unwrap_or(0);
    if metric(&last, "detector_processes_watched") != Some(n as f64) {
        bail!("the agent stopped watching all {n} processes during the measurement");
    }

    // Discovery latency: new processes of binaries already attached (a service
    // scaled up or restarted), one at a time, while the N run.
    let launches = if n >= 100 { LAUNCHES } else { 0 };
    let mut launched = Vec::with_capacity(launches);
    for i in 0..launches {
        let s = service(&bins[i % bins.len()], n, false)?;
        launched.push(s.0.id());
        thread::sleep(LAUNCH_LIFE);
        drop(s);
    }
    thread::sleep(Duration::from_secs(1));
    let discovered_ms: Vec<f64> = {
        let seen = discovered.lock().unwrap_or_else(|e| e.into_inner());
        launched
            .iter()
            .filter_map(|pid| seen.iter().find(|(p, _)| p == pid).map(|(_, ms)| *ms))
            .collect()
    };

    let asked = Instant::now();
    signal(pid, "TERM")?;
    let stop = wait_timeout(&mut agent.0, Duration::from_secs(120))?.map(|_| asked.elapsed());
    drop(agent);
    drop(services);
    let _ = drained.join();
    Ok(AgentRun {
        n,
        binaries: n.min(bins.len()),
        misusing: n.div_ceil(10),
        discovery,
        cpu_share: (cpu1 - cpu0) / wall.as_secs_f64(),
        wall,
        hwm_kb,
        rss_kb,
        anon_kb,
        file_kb,
        scrapes: scrape_ms.len(),
        ticks,
        scrape_ms,
        scrape_bytes,
        probes: metric(&last, "detector_probes_attached"),
        duty_cycled: metric(&last, "detector_probes_duty_cycled"),
        analysis_s: metric(&last, "detector_binary_analysis_seconds")
            .or_else(|| metric(&last, "detector_binary_analysis_seconds_total")),
        stop,
        launched: launched.len(),
        discovered_ms,
    })
}

/// Drains a line channel on a thread until it closes, keeping the discovery
/// latencies the agent logs ("discovered pid P X ms after its start") in `out`.
fn collect_lines(
    rx: std::sync::mpsc::Receiver<String>,
    out: Arc<Mutex<Vec<(u32, f64)>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in rx {
            if let Some(d) = parse_discovered(&line) {
                out.lock().unwrap_or_else(|e| e.into_inner()).push(d);
            }
        }
    })
}

/// (pid, ms) from "... discovered pid P X ms after its start".
fn parse_discovered(line: &str) -> Option<(u32, f64)> {
    let rest = line.split("discovered pid ").nth(1)?;
    let mut it = rest.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let ms = it.next()?.parse().ok()?;
    Some((pid, ms))
}

/// GET /metrics as Prometheus asks for it: the time it took and the body.
fn scrape(addr: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Prometheus/bench\r\n\
         Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = t.elapsed();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", head.lines().next().unwrap_or(""));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((took, dechunk(body)));
    }
    Ok((took, body.to_string()))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// An unlabelled sample's value (`name value`), OpenMetrics or Prometheus text.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == name).then(|| it.next()?.parse().ok())?
    })
}

/// The targets of the 1,000-process line and of discovery latency, as table rows.
pub fn targets(
    md: &mut String,
    runs: Option<&[AgentRun]>,
    verdict: impl Fn(Option<bool>) -> &'static str,
) -> Result<()> {
    let at = |n: usize| runs.and_then(|a| a.iter().find(|a| a.n == n));
    match at(1000) {
        Some(a) => {
            let mb = a.hwm_kb as f64 / 1024.0;
            writeln!(
                md,
                "| agent ≤ 1 % of a core and ≤ 64 MB peak RSS at 1,000 processes | {:.2} % \
                 of a core, peak RSS {mb:.1} MB | CPU {}, RSS {} |",
                a.cpu_share * 100.0,
                verdict(Some(a.cpu_share <= 0.01)),
                verdict(Some(mb <= 64.0)),
            )?;
        }
        None => writeln!(
            md,
            "| agent ≤ 1 % of a core and ≤ 64 MB peak RSS at 1,000 processes | – | not measured |"
        )?,
    }
    for n in [100, 1000] {
        let p99 = at(n).and_then(|a| a.discovery_ms(0.99));
        writeln!(
            md,
            "| discovery latency p99 ≤ 200 ms at {n} processes | {} | {} |",
            p99.map_or("–".into(), |v| format!("{v:.1} ms")),
            verdict(p99.map(|v| v <= 200.0)),
        )?;
    }
    Ok(())
}

pub fn render(md: &mut String, env: &Env, runs: &[AgentRun]) -> Result<()> {
    writeln!(md, "\n## 3. The watch agent's CPU and memory\n")?;
    writeln!(
        md,
        "N copies of the `service` fixture run (binaries: the fixture of each installed \
         Go, {} of them, copied to `{}/`, process i runs copy i mod {}), each sending \
         itself {SERVICE_RATE} HTTP requests/s; every tenth calls `runtime.ReadMemStats` \
         on every request (a light misuse), the others serve from runtime/metrics. Then \
         `detector watch --listen 127.0.0.1:0 --exe '{}/svc-go*'` starts (default \
         interval 1 s{}); once it watches all N (and two more seconds) its CPU time \
         (utime + stime from /proc/PID/stat) is read, /metrics is scraped once a second \
         for {} s with Prometheus' Accept header, and its CPU time is read again. CPU: \
         that delta ÷ wall time, as % of one core. Peak RSS: VmHWM at the end (the \
         whole life of the agent: startup, analysis of each binary, attach). Baseline: \
         the 1-process run. At 1,000 processes: {DISTINCT_AT_1000} distinct binaries \
         (copies of the fixture of every installed Go and build kind, in `{}/`), each \
         process with GOMAXPROCS=1 and {SERVICE_RATE_1000} request/s. At 100 and 1,000, \
         {LAUNCHES} more processes (of binaries already attached: a service scaled up or \
         restarted) are then started one at a time, each killed after {} ms: new process \
         watched is how long after its exec the agent exported it (its own figure, logged \
         at debug level; `detector_discovery_latency_seconds` counts the same), p50 / p99 \
         over the launches.\n",
        env.go.len(),
        short_path(&env.work.join(DIR)),
        env.go.len(),
        short_path(&env.work.join(DIR)),
        if env.budget_flag {
            ", default overhead budget"
        } else {
            ""
        },
        MEASURE.as_secs(),
        short_path(&env.work.join(DIR_1000)),
        LAUNCH_LIFE.as_millis(),
    )?;
    writeln!(
        md,
        "| processes | binaries | misusing | discovery | agent CPU, % of a core | × 1 process | peak RSS (VmHWM) | × 1 process | RSS at end (anon + file) | tick (median / max) | scrape (median, size) | probes | stop | new process watched (p50 / p99) |"
    )?;
    writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let base = runs.iter().find(|r| r.n == 1);
    for r in runs {
        let tick_max = r.ticks.iter().copied().fold(f64::NAN, f64::max);
        let x = |a: f64, b: Option<f64>| b.map_or_else(|| "–".into(), |b| super::ratio(a / b));
        writeln!(
            md,
            "| {} | {} | {} | {:.1} s | {:.2} | {} | {:.1} MB | {} | {:.1} MB ({:.1} + {:.1}) | {:.1} ms / {:.1} ms | {:.1} ms, {} kB | {}{} | {} | {} |",
            r.n,
            r.binaries,
            r.misusing,
            r.discovery.as_secs_f64(),
            r.cpu_share * 100.0,
            x(r.cpu_share, base.map(|b| b.cpu_share)),
            r.hwm_kb as f64 / 1024.0,
            x(r.hwm_kb as f64, base.map(|b| b.hwm_kb as f64)),
            r.rss_kb as f64 / 1024.0,
            r.anon_kb as f64 / 1024.0,
            r.file_kb as f64 / 1024.0,
            median_f(r.ticks.iter().copied()) * 1e3,
            tick_max * 1e3,
            median_f(r.scrape_ms.iter().copied()),
            r.scrape_bytes / 1000,
            r.probes.map_or_else(|| "?".into(), |p| format!("{p:.0}")),
            r.duty_cycled
                .filter(|d| *d > 0.0)
                .map_or_else(String::new, |d| format!(" ({d:.0} duty-cycled)")),
            r.stop
                .map_or_else(|| "> 120 s".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            match (r.discovery_ms(0.5), r.discovery_ms(0.99)) {
                (Some(a), Some(b)) => format!(
                    "{a:.1} ms / {b:.1} ms ({} of {})",
                    r.discovered_ms.len(),
                    r.launched
                ),
                _ => "–".into(),
            },
        )?;
    }
    writeln!(
        md,
        "\nEach run measured {} over {} scrapes. discovery: from the agent's start until \
         /metrics showed all N watched (binary analysis took {} in total at 100). tick: \
         `detector_tick_duration_seconds` (scan /proc, read the maps, judge every \
         process over its window) at each scrape. stop: from SIGTERM until it exited \
         (it detaches every probe). RSS at end splits into anonymous memory and file pages \
         (RssAnon + RssFile: the analysed binaries are mmapped, and pages of them that \
         were read stay resident, shared with the page cache). The target is < 1 % of a \
         core and < 50 MB at 100 processes.",
        runs.first()
            .map_or_else(|| "–".into(), |r| format!("{:.1} s", r.wall.as_secs_f64())),
        runs.first().map_or(0, |r| r.scrapes),
        runs.iter()
            .find(|r| r.n == 100)
            .and_then(|r| r.analysis_s)
            .map_or_else(|| "?".into(), |s| format!("{:.2} s", s)),
    )?;
    if let Some(r) = runs.iter().find(|r| r.n == 1000) {
        writeln!(
            md,
            "\nAt 1,000 processes ({} binaries): CPU {:.2} % of a core (target ≤ 1 %), peak \
             RSS {:.1} MB (target ≤ 64 MB).",
            r.binaries,
            r.cpu_share * 100.0,
            r.hwm_kb as f64 / 1024.0,
        )?;
    }
    for r in runs.iter().filter(|r| r.launched > 0) {
        writeln!(
            md,
            "\nDiscovery at {} processes: p50 {}, p99 {} (target p99 ≤ 200 ms; {} of {} \
             launches seen).",
            r.n,
            r.discovery_ms(0.5)
                .map_or("–".into(), |v| format!("{v:.1} ms")),
            r.discovery_ms(0.99)
                .map_or("–".into(), |v| format!("{v:.1} ms")),
            r.discovered_ms.len(),
            r.launched,
        )?;
    }
    if let Some(r) = runs.iter().find(|r| r.n == 100) {
        let cpu = r.cpu_share * 100.0;
        let mb = r.hwm_kb as f64 / 1024.0;
        let how = |ok: bool, by: String| {
            if ok {
                "met".to_string()
            } else {
                format!("**missed** by {by}")
            }
        };
        writeln!(
            md,
            "\nAt 100 processes: CPU {cpu:.2} % of a core (target < 1 %: {}); peak RSS \
             {mb:.1} MB (target < 50 MB: {}); at the end its RSS was {:.1} MB, {:.1} MB of \
             it file pages of the mmapped binaries.",
            how(cpu < 1.0, format!("{:.2} % of a core", cpu - 1.0)),
            how(mb < 50.0, format!("{:.1} MB", mb - 50.0)),
            r.rss_kb as f64 / 1024.0,
            r.file_kb as f64 / 1024.0,
        )?;
    }
    Ok(())
}
