//! The Prometheus exposition, built at scrape time from the last tick's state with
//! prometheus-client. Names carry units and `_total`.
//!
//! Series are by service: (executable path as the process sees it, container id),
//! whatever the number of its processes, so short-lived processes (cron jobs, CI
//! runners) do not churn series. A service costs a bounded number of series: one per
//! probed function called, one histogram per pause reason seen, one per active
//! finding, its stopped ratio and its process count. A service's counters carry the
//! totals of its exited processes on (see [`Services`]), so they stay monotonic
//! while its processes come and go.
//!
//! `--per-pid-series[=MAX]` adds a `pid` label for up to MAX processes (lowest pids
//! first); the rest stay folded into their service's series (which then count only
//! those), so `sum by (exe, container_id)` is right either way.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use detector_common::{pause_bucket_bounds, StwStats, STW_BUCKETS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::agent::{Exported, ProcExport};

/// Kernel log2 buckets exported: from 2^10 ns (pauses below ~1 µs are folded into the
/// first bucket) up to 2^34 ns (~17 s; longer ones only in +Inf).
/// The exported histogram's first and last finite bounds: 2^12 ns (4 µs) and 2^34 ns.
const FIRST_OCTAVE: u32 = 12;
const LAST_OCTAVE: u32 = 34;

#[derive(Debug)]
struct StateCollector(Arc<Mutex<Exported>>);

type Labels = Vec<(&'static str, String)>;

/// A service: (executable path as its processes see it, container id).
pub type ServiceKey = (String, String);

/// How long a service with no process left keeps its series (and its exited
/// processes' totals, so that a periodic job's counters do not restart every run).
const SERVICE_GRACE: Duration = Duration::from_secs(600);
/// At most this many services without a live process are remembered.
const MAX_IDLE_SERVICES: usize = 1_000;

/// One series group as exported: a process (per-pid) or the rest of a service.
#[derive(Clone, Debug, Default)]
pub struct SeriesGroup {
    /// Some for a per-pid group.
    pub pid: Option<u32>,
    pub exe: String,
    pub container_id: String,
    pub go_version: String,
    /// Live processes folded into this group (1 for a per-pid group).
    pub processes: u64,
    pub calls: BTreeMap<String, u64>,
    pub pauses: BTreeMap<String, StwStats>,
    pub findings: BTreeSet<(String, crate::rules::Severity, String)>,
    /// The highest stopped ratio of its processes over the window.
    pub stopped_ratio: f64,
}

impl SeriesGroup {
    fn labels(&self) -> Labels {
        let mut l = vec![];
        if let Some(p) = self.pid {
            l.push(("pid", p.to_string()));
        }
        l.push(("exe", self.exe.clone()));
        l.push(("container_id", self.container_id.clone()));
        l
    }

    fn add_process(&mut self, p: &ProcExport) {
        self.processes += 1;
        self.go_version = p.go_version.clone();
        add_totals(&mut self.calls, &mut self.pauses, &p.calls, &p.pauses);
        self.findings.extend(p.findings.iter().cloned());
        self.stopped_ratio = self.stopped_ratio.max(p.diagnosis.collected.stopped_share);
    }
}

fn add_totals(
    calls: &mut BTreeMap<String, u64>,
    pauses: &mut BTreeMap<String, StwStats>,
    more_calls: &BTreeMap<String, u64>,
    more_pauses: &BTreeMap<String, StwStats>,
) {
    for (f, n) in more_calls {
        *calls.entry(f.clone()).or_default() += n;
    }
    for (r, st) in more_pauses {
        pauses.entry(r.clone()).or_insert(StwStats::ZERO).merge(st);
    }
}

/// A live process's service and cumulative counts (calls by function, pauses by
/// reason) at the last tick.
type LiveCounts = (
    ServiceKey,
    BTreeMap<String, u64>,
    BTreeMap<String, StwStats>,
);

/// What exited processes leave to their service's series.
#[derive(Clone, Debug)]
struct Retired {
    calls: BTreeMap<String, u64>,
    pauses: BTreeMap<String, StwStats>,
    last_seen: Instant,
}

/// Per-service totals across ticks: the last counts of each live process, and what
/// exited ones counted. Updated by the agent at every tick.
#[derive(Debug, Default)]
pub struct Services {
    /// Live processes at the last tick: service and cumulative counts.
    live: HashMap<u32, LiveCounts>,
    retired: HashMap<ServiceKey, Retired>,
}

impl Services {
    /// Folds the processes gone since the last tick into their service's totals and
    /// returns the series groups to export: per-pid for up to `per_pid` processes
    /// (lowest pids first), by service for the rest, and how many processes were
    /// left out of per-pid series by the cap.
    pub fn update(
        &mut self,
        procs: &[ProcExport],
        per_pid: usize,
        now: Instant,
    ) -> (Vec<SeriesGroup>, u64) {
        let key = |p: &ProcExport| (p.exe.clone(), p.container_id.clone());
        let current: HashMap<u32, &ProcExport> = procs.iter().map(|p| (p.pid, p)).collect();
        // Processes gone since the last tick (or whose pid now runs something else).
        let gone: Vec<u32> = self
            .live
            .iter()
            .filter(|(pid, (k, ..))| current.get(pid).is_none_or(|p| key(p) != *k))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some((k, calls, pauses)) = self.live.remove(&pid) {
                let r = self.retired.entry(k).or_insert_with(|| Retired {
                    calls: BTreeMap::new(),
                    pauses: BTreeMap::new(),
                    last_seen: now,
                });
                add_totals(&mut r.calls, &mut r.pauses, &calls, &pauses);
                r.last_seen = now;
            }
        }
        self.live = procs
            .iter()
            .map(|p| (p.pid, (key(p), p.calls.clone(), p.pauses.clone())))
            .collect();
        // Services with processes are current; idle ones are kept for a grace period.
        for p in procs {
            if let Some(r) = self.retired.get_mut(&key(p)) {
                r.last_seen = now;
            }
        }
        self.retired
            .retain(|_, r| now.duration_since(r.last_seen) < SERVICE_GRACE);
        if self.retired.len() > MAX_IDLE_SERVICES {
            let mut by_age: Vec<(Instant, ServiceKey)> = self
                .retired
                .iter()
                .map(|(k, r)| (r.last_seen, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(self.retired.len() - MAX_IDLE_SERVICES) {
                self.retired.remove(k);
            }
        }

        let mut sorted: Vec<&ProcExport> = procs.iter().collect();
        sorted.sort_by_key(|p| p.pid);
        let mut groups = vec![];
        let mut services: BTreeMap<ServiceKey, SeriesGroup> = BTreeMap::new();
        let mut capped = 0;
        for (i, p) in sorted.iter().enumerate() {
            if i < per_pid {
                let mut g = SeriesGroup {
                    pid: Some(p.pid),
                    exe: p.exe.clone(),
                    container_id: p.container_id.clone(),
                    ..SeriesGroup::default()
                };
                g.add_process(p);
                groups.push(g);
                // Its service still shows that it runs.
                services.entry(key(p)).or_insert_with(|| SeriesGroup {
                    exe: p.exe.clone(),
                    container_id: p.container_id.clone(),
                    go_version: p.go_version.clone(),
                    ..SeriesGroup::default()
                });
            } else {
                if per_pid > 0 {
                    capped += 1;
                }
                services
                    .entry(key(p))
                    .or_insert_with(|| SeriesGroup {
                        exe: p.exe.clone(),
                        container_id: p.container_id.clone(),
                        ..SeriesGroup::default()
                    })
                    .add_process(p);
            }
        }
        for (k, r) in &self.retired {
            let g = services.entry(k.clone()).or_insert_with(|| SeriesGroup {
                exe: k.0.clone(),
                container_id: k.1.clone(),
                ..SeriesGroup::default()
            });
            add_totals(&mut g.calls, &mut g.pauses, &r.calls, &r.pauses);
        }
        groups.extend(services.into_values());
        (groups, capped)
    }
}

/// (upper bound in seconds, count in this bucket) from a kernel pause histogram,
/// exported with bounds ×4 from 4 µs to 17 s, then +Inf: 13 series per reason, still
/// fine enough for p99s. Kernel buckets tile powers of two, so none straddles a bound.
fn buckets(hist: &[u64; STW_BUCKETS]) -> Vec<(f64, u64)> {
    let bounds: Vec<u64> = (FIRST_OCTAVE..=LAST_OCTAVE)
        .step_by(2)
        .map(|o| 1u64 << o)
        .collect();
    let mut out: Vec<(f64, u64)> = bounds.iter().map(|b| (*b as f64 / 1e9, 0)).collect();
    out.push((f64::INFINITY, 0));
    for (b, &n) in hist.iter().enumerate() {
        let hi = pause_bucket_bounds(b).1;
        let i = bounds.iter().position(|&e| hi <= e).unwrap_or(bounds.len());
        out[i].1 += n;
    }
    out
}

/// One histogram family per process and pause reason, from `part` of its pause
/// statistics: (total ns, count, kernel histogram). Reasons with none are left out.
fn pause_histograms(
    enc: &mut DescriptorEncoder,
    groups: &[SeriesGroup],
    name: &str,
    help: &str,
    part: impl Fn(&StwStats) -> (u64, u64, &[u64; STW_BUCKETS]),
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for p in groups {
        for (reason, s) in &p.pauses {
            let (total_ns, count, hist) = part(s);
            if count == 0 {
                continue;
            }
            let mut l = p.labels();
            l.push(("reason", reason.clone()));
            m.encode_family(&l)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    total_ns as f64 / 1e9,
                    count,
                    &buckets(hist),
                    None,
                )?;
        }
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let procs = &state.processes;
        let groups = &state.series;

        let mut m = enc.encode_descriptor(
            "detector_service_processes",
            "Go processes watched per service (executable as its processes see it, container id)",
            None,
            MetricType::Gauge,
        )?;
        let mut per_service: BTreeMap<(&str, &str), (i64, &str)> = BTreeMap::new();
        for p in procs {
            let e = per_service
                .entry((p.exe.as_str(), p.container_id.as_str()))
                .or_insert((0, p.go_version.as_str()));
            e.0 += 1;
            e.1 = p.go_version.as_str();
        }
        for ((exe, container_id), (n, go_version)) in per_service {
            let labels: Labels = vec![
                ("exe", exe.to_string()),
                ("container_id", container_id.to_string()),
                ("go_version", go_version.to_string()),
            ];
            ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "detector_process_info",
            "A watched Go process with series of its own (--per-pid-series; value 1)",
            None,
            MetricType::Gauge,
        )?;
        for g in groups.iter().filter(|g| g.pid.is_some()) {
            let mut labels = g.labels();
            labels.push(("go_version", g.go_version.clone()));
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "detector_runtime_calls",
            "Calls to probed Go runtime functions (and runtime activity: sigprof, saveblockevent, ...) by catalog function id, since attach (a service's include its exited processes')",
            None,
            MetricType::Counter,
        )?;
        for g in groups {
            for (func, n) in &g.calls {
                let mut l = g.labels();
                l.push(("function", func.clone()));
                ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
            }
        }

        pause_histograms(
            &mut enc,
            groups,
            "detector_stw_pause_seconds",
            "Stop-the-world pauses by reason (forced_gc_* = inside runtime.GC), since attach",
            |s| (s.total_ns, s.count, &s.hist),
        )?;
        pause_histograms(
            &mut enc,
            groups,
            "detector_stw_stopping_seconds",
            "The stopping part of stop-the-world pauses (until every goroutine reached a safe point), by reason, since attach",
            |s| (s.stopping_total_ns, s.stopping_count, &s.stopping_hist),
        )?;

        let mut m = enc.encode_descriptor(
            "detector_finding_active",
            "A rule's finding on a process of the service (value 1 while it holds over the rolling window), with the function to change (culprit; never a whole stack)",
            None,
            MetricType::Gauge,
        )?;
        for g in groups {
            for (rule, sev, culprit) in &g.findings {
                let mut l = g.labels();
                l.push(("rule", rule.clone()));
                l.push(("severity", sev.label().to_ascii_lowercase()));
                l.push(("culprit", culprit.clone()));
                ConstGauge::new(1i64).encode(m.encode_family(&l)?)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "detector_stopped_ratio",
            "Share of wall time the process (for a service: its most stopped process) was stopped over the rolling window",
            None,
            MetricType::Gauge,
        )?;
        for g in groups.iter().filter(|g| g.processes > 0) {
            ConstGauge::new(g.stopped_ratio).encode(m.encode_family(&g.labels())?)?;
        }

        // Self-metrics: the agent's own work and cost.
        let s = &state.stats;
        use MetricType::{Counter, Gauge};
        let c = |v: u64| ConstCounter::new(v);
        let g = |v: u64| ConstGauge::new(v as i64);
        single(
            &mut enc,
            "detector_probe_hits",
            "Uprobe hits counted in the kernel maps (calls and pauses), for the watched processes",
            Counter,
            c(s.probe_hits),
        )?;
        single(
            &mut enc,
            "detector_attach_errors",
            "Probes or binaries that could not be attached",
            Counter,
            c(s.attach_errors),
        )?;
        single(
            &mut enc,
            "detector_binaries_analysed",
            "Distinct binaries (device + inode) analysed",
            Counter,
            c(s.binaries_analysed),
        )?;
        single(
            &mut enc,
            "detector_binary_analysis_seconds",
            "Time spent analysing binaries (ELF, pclntab, prologues, inline trees)",
            Counter,
            ConstCounter::new(s.analysis_seconds),
        )?;
        single(
            &mut enc,
            "detector_probes_attached",
            "Uprobes attached",
            Gauge,
            g(s.probes_attached),
        )?;
        single(
            &mut enc,
            "detector_probes_duty_cycled",
            "Call probes live only part of the time, to keep each target within --overhead-budget",
            Gauge,
            g(s.probes_duty_cycled),
        )?;
        single(
            &mut enc,
            "detector_probe_detach_tail_seconds",
            "How long the kernel takes to remove a duty-cycled probe, smoothed: the breakpoint stays in the target meanwhile, and the overhead budget pays for it (it grows when other uprobe users on the host keep the kernel busy)",
            Gauge,
            ConstGauge::new(s.probe_detach_tail_seconds),
        )?;
        single(
            &mut enc,
            "detector_probe_guardian_up",
            "1 while the probe guardian runs (it creates and removes uprobes, so that a SIGKILL of detector cannot leave a breakpoint in a target); 0 if it could not start or died",
            Gauge,
            g(s.probe_guardian_up),
        )?;
        single(
            &mut enc,
            "detector_binaries_attached",
            "Distinct binaries with probes attached",
            Gauge,
            g(s.binaries_attached),
        )?;
        single(
            &mut enc,
            "detector_processes_watched",
            "Go processes watched",
            Gauge,
            g(s.processes_watched),
        )?;
        single(
            &mut enc,
            "detector_processes_over_limit",
            "Go processes not watched because of --max-processes",
            Gauge,
            g(s.processes_over_limit),
        )?;
        single(
            &mut enc,
            "detector_processes_discovered",
            "Go processes watched since the agent started (short-lived ones included)",
            Counter,
            c(s.processes_discovered),
        )?;
        let mut m = enc.encode_descriptor(
            "detector_kernel_map_entries",
            "Entries in the kernel maps at the last tick, by map (calls: distinct call paths, stacks, stw: pause series); entries of exited processes are dropped at every tick",
            None,
            MetricType::Gauge,
        )?;
        for (map, n) in &s.map_entries {
            let l: Labels = vec![("map", map.to_string())];
            ConstGauge::new(*n as i64).encode(m.encode_family(&l)?)?;
        }
        single(
            &mut enc,
            "detector_per_pid_series_capped",
            "Processes without series of their own because of the --per-pid-series cap (their counts are in their service's series)",
            Gauge,
            g(state.per_pid_capped),
        )?;
        single(
            &mut enc,
            "detector_tick_duration_seconds",
            "Duration of the last collection tick (scan, map read, judge)",
            Gauge,
            ConstGauge::new(s.last_tick_seconds),
        )?;
        single(
            &mut enc,
            "detector_ticks",
            "Collection ticks done since start",
            Counter,
            c(s.ticks),
        )?;
        let kerr = |i: u32| s.kernel_errors.get(i as usize).copied().unwrap_or(0);
        single(
            &mut enc,
            "detector_calls_not_attributed",
            "Calls counted without their call site, argument and stack because the kernel's call map was full (they are in detector_runtime_calls_total; calls lost outright are detector_kernel_errors_total{kind=\"call_lost\"})",
            Counter,
            c(kerr(detector_common::errors::CALL_MAP_FULL)),
        )?;
        let mut m = enc.encode_descriptor(
            "detector_kernel_errors",
            "Kernel-side updates lost, by kind",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in detector_common::errors::NAMES
            .iter()
            .zip(s.kernel_errors.iter())
        {
            let l: Labels = vec![("kind", kind.to_string())];
            ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
        }
        // Process discovery (exec/exit events, rescans, latency): see watch::events.
        s.discovery.encode(&mut enc)?;
        if let Some((cpu, rss)) = own_usage() {
            single(
                &mut enc,
                "detector_cpu_seconds",
                "CPU time used by detector itself (user + system)",
                Counter,
                ConstCounter::new(cpu),
            )?;
            single(
                &mut enc,
                "detector_resident_memory_bytes",
                "Resident memory of detector itself",
                Gauge,
                g(rss),
            )?;
        }
        Ok(())
    }
}

/// One metric family with a single unlabelled sample.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    let no_labels: Labels = vec![];
    metric.encode(m.encode_family(&no_labels)?)
}

/// detector's own CPU seconds and resident bytes.
fn own_usage() -> Option<(f64, u64)> {
    let cpu = crate::target::cpu_seconds(std::process::id())?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((cpu, kb * 1024))
}

/// Prometheus text format 0.0.4 from prometheus-client's OpenMetrics text: counter
/// families are named with their `_total` suffix in HELP/TYPE (as the 0.0.4 parsers,
/// promtool included, expect), and the OpenMetrics-only `# UNIT`/`# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let renamed = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.strip_prefix("# HELP ").and_then(|h| h.split_once(' '));
                out.push_str(&format!("# HELP {renamed} {}\n", text.map_or("", |t| t.1)));
            }
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The exposition of `state` in text format 0.0.4 (what /metrics serves to non-
/// OpenMetrics scrapers); also how tests list the metric names.
pub fn render_text(state: Exported) -> String {
    let registry = registry(Arc::new(Mutex::new(state)));
    let mut om = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut om, &registry);
    to_prometheus_text(&om)
}

/// The registry served at /metrics.
pub fn registry(state: Arc<Mutex<Exported>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StateCollector(state)));
    r
}

#[cfg(test)]
mod tests {
    use detector_common::pause_bucket;

    use super::*;

    #[test]
    fn openmetrics_counters_become_text_format_counters() {
        let om = "# HELP a_calls Calls.\n# TYPE a_calls counter\na_calls_total{pid=\"1\"} 3\n# HELP b Gauge.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_calls_total Calls.\n# TYPE a_calls_total counter\na_calls_total{pid=\"1\"} 3\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
    }

    #[test]
    fn kernel_buckets_become_seconds() {
        let mut h = [0u64; STW_BUCKETS];
        h[pause_bucket(10)] = 2; // below the first bound
        h[pause_bucket(3_000)] = 1;
        h[pause_bucket(4_095)] = 5; // just under 4 µs
        h[pause_bucket(4_096)] = 3; // exactly 4 µs: the next bucket
        h[pause_bucket(3_000_000)] = 4; // 3 ms: the (1 ms, 4.2 ms] bucket
        h[pause_bucket(69_000_000_000)] = 7; // ~69 s: only in +Inf
        let b = buckets(&h);
        assert_eq!(b.len(), 13);
        assert_eq!(b[0], (4096.0 / 1e9, 8));
        assert_eq!(b[1], (16384.0 / 1e9, 3));
        assert_eq!(b[5], ((1u64 << 22) as f64 / 1e9, 4));
        assert_eq!(b.last(), Some(&(f64::INFINITY, 7)));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 2 + 1 + 5 + 3 + 4 + 7);
    }
}
