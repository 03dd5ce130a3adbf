//! Row 3: `detector watch`'s own cost. N Go processes (the `service` fixture of every
//! installed Go, one in ten with a light ReadMemStats misuse) run while the agent watches
//! them and is scraped every second, as Prometheus would; its CPU time (/proc/PID/stat)
//! over [`MEASURE`] and its peak RSS (VmHWM) are reported per N.
use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    cpu_seconds, lines, median_f, next_line, short_path, signal, status_kb, wait_timeout, Env,
    Guard,
};

/// Watched processes per run.
const COUNTS: [usize; 3] = [1, 10, 100];
/// The measured part of each run, after discovery settled.
const MEASURE: Duration = Duration::from_secs(30);
/// Requests per second each service sends itself.
const SERVICE_RATE: &str = "2";
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
}

pub fn measure(env: &Env) -> Result<Vec<AgentRun>> {
    let bins = service_copies(env)?;
    let mut out = Vec::new();
    for n in COUNTS {
        let r = run(env, &bins, n).with_context(|| format!("watching {n} processes"))?;
        eprintln!(
            "bench: agent: {n:>3} processes: CPU {:.2} % of a core, peak RSS {:.1} MB, \
             tick {:.1} ms (median)",
            r.cpu_share * 100.0,
            r.hwm_kb as f64 / 1024.0,
            median_f(r.ticks.iter().copied()) * 1e3
        );
        out.push(r);
    }
    Ok(out)
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

fn run(env: &Env, bins: &[PathBuf], n: usize) -> Result<AgentRun> {
    // The services: binary i % len, every tenth (from the first) misusing.
    let mut services = Vec::with_capacity(n);
    for i in 0..n {
        let misuse = if i % 10 == 0 { "readmemstats" } else { "none" };
        let child = Command::new(&bins[i % bins.len()])
            .args(["-addr", "127.0.0.1:0", "-rate", SERVICE_RATE])
            .args(["-misuse", misuse])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("could not start a service")?;
        services.push(Guard(child));
    }
    thread::sleep(Duration::from_millis(500));
    for s in &mut services {
        if let Some(st) = s.0.try_wait()? {
            bail!("a service exited at start: {st}");
        }
    }

    let started = Instant::now();
    let mut child = Command::new(&env.detector)
        .args(["watch", "--listen", "127.0.0.1:0", "--exe", &glob(env)])
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
    let drained = collect_lines(err);

    // Discovery settles: every service watched, then two more ticks.
    let deadline = Instant::now() + Duration::from_secs(180);
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
                "detector watch saw {:?} of {n} processes after 180 s",
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
    })
}

/// Drains a line channel on a thread until it closes.
fn collect_lines(rx: std::sync::mpsc::Receiver<String>) -> thread::JoinHandle<()> {
    thread::spawn(move || for _ in rx {})
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
         the 1-process run.\n",
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
    )?;
    writeln!(
        md,
        "| processes | binaries | misusing | discovery | agent CPU, % of a core | × 1 process | peak RSS (VmHWM) | × 1 process | RSS at end (anon + file) | tick (median / max) | scrape (median, size) | probes | stop |"
    )?;
    writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let base = runs.iter().find(|r| r.n == 1);
    for r in runs {
        let tick_max = r.ticks.iter().copied().fold(f64::NAN, f64::max);
        let x = |a: f64, b: Option<f64>| b.map_or_else(|| "–".into(), |b| super::ratio(a / b));
        writeln!(
            md,
            "| {} | {} | {} | {:.1} s | {:.2} | {} | {:.1} MB | {} | {:.1} MB ({:.1} + {:.1}) | {:.1} ms / {:.1} ms | {:.1} ms, {} kB | {}{} | {} |",
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
