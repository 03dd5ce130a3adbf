//! `detector watch` end to end, as root with real eBPF: the daemon, real fixture
//! processes (one misusing ReadMemStats, two healthy, one of them stripped, from
//! three Go versions), a real HTTP client, Prometheus' own `promtool check metrics`
//! and an exposition-format parser.
//!
//! Checks: discovery of running processes and of new ones (latency printed), the
//! finding, the call counters and the pause histogram of the misusing process, none
//! for the healthy ones, /findings and /healthz, series gone when a process exits,
//! and SIGTERM: exit 0 with no eBPF program of detector left in the kernel.
use std::{
    collections::BTreeSet,
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use detector_tests::{program_ids_of, require_bpf_privileges, version_dir, wait_programs_freed};

/// Documented in README ("watch"): a new process is watched within this delay
/// (a scan interval plus the analysis and attach of its binary).
const DISCOVERY_BUDGET: Duration = Duration::from_secs(10);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn service(minor: u32, kind: &str, misuse: &str) -> Proc {
    let bin = version_dir("service", minor).join(kind).join("service");
    Proc(
        Command::new(&bin)
            .args(["-misuse", misuse, "-rate", "200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    )
}

/// A plain HTTP/1.1 GET: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    detector_tests::http::get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses")
}

fn pids_in(scrape: &prometheus_parse::Scrape, metric: &str) -> BTreeSet<u32> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter_map(|s| s.labels.get("pid").and_then(|p| p.parse().ok()))
        .collect()
}

/// Scrapes until `pid` is a watched process; the time it took.
fn wait_watched(addr: &str, pid: u32, since: Instant) -> Duration {
    loop {
        let (_, body) = get(addr, "/metrics");
        if pids_in(&parse(&body), "detector_process_info").contains(&pid) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < DISCOVERY_BUDGET,
            "process {pid} not watched after {:?}",
            DISCOVERY_BUDGET
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool not found ({e}): `cargo xtask setup` installs it (Debian package `prometheus`)")
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn watch_exports_processes_findings_and_detaches_on_sigterm() {
    require_bpf_privileges();
    // The kernel reports canonical executable paths.
    let fixtures = version_dir("service", 27)
        .canonicalize()
        .expect("fixture directory");
    let fixtures_glob = format!(
        "{}/*/*/service",
        fixtures.parent().expect("fixtures root").display()
    );
    // Healthy processes started before watch: found by the first scan.
    let healthy = service(21, "default", "none");
    let stripped = service(19, "stripped", "none");

    let (mut watch, addr) = start_watch(&fixtures_glob);

    let t0 = Instant::now();
    let at_start =
        wait_watched(&addr, healthy.0.id(), t0).max(wait_watched(&addr, stripped.0.id(), t0));
    // A new process, started while watch runs.
    let t1 = Instant::now();
    let misuse = service(27, "default", "readmemstats");
    let new_latency = wait_watched(&addr, misuse.0.id(), t1);
    println!(
        "discovery: running processes in {:.2} s, a new process in {:.2} s",
        at_start.as_secs_f64(),
        new_latency.as_secs_f64()
    );

    // Let the rolling window fill (rules need sustained activity).
    std::thread::sleep(Duration::from_secs(4));
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&body);
    let scrape = parse(&body);
    let m = misuse.0.id().to_string();
    let series = |pid: &str| {
        body.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("pid=\"{pid}\"")))
            .count()
    };
    println!(
        "scrape: {} bytes, {} lines; series for the misusing process: {}, for a healthy one: {}",
        body.len(),
        body.lines().count(),
        series(&m),
        series(&healthy.0.id().to_string())
    );

    let finding = |pid: &str, rule: &str| {
        scrape.samples.iter().any(|s| {
            s.metric == "detector_finding_active"
                && s.labels.get("pid") == Some(pid)
                && s.labels.get("rule") == Some(rule)
        })
    };
    assert!(finding(&m, "readmemstats-hot-path"), "{body}");
    // The finding names the function to change (the culprit), never a whole stack.
    assert!(
        scrape.samples.iter().any(|s| {
            s.metric == "detector_finding_active"
                && s.labels.get("pid") == Some(m.as_str())
                && s.labels.get("culprit") == Some("main.metricsMiddleware.func1")
        }),
        "no culprit label on the finding:\n{body}"
    );
    for quiet in [&healthy, &stripped] {
        assert!(
            !pids_in(&scrape, "detector_finding_active").contains(&quiet.0.id()),
            "a healthy process has a finding:\n{body}"
        );
    }
    let calls = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "detector_runtime_calls_total"
                && s.labels.get("pid") == Some(m.as_str())
                && s.labels.get("function") == Some("readmemstats")
        })
        .expect("ReadMemStats counter of the misusing process");
    match calls.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
            assert!(v >= 200.0, "only {v} ReadMemStats calls counted")
        }
        ref other => panic!("counter expected, got {other:?}"),
    }
    let hist = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "detector_stw_pause_seconds"
                && s.labels.get("pid") == Some(m.as_str())
                && s.labels.get("reason") == Some("read_mem_stats")
        })
        .expect("pause histogram of the misusing process");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!("histogram expected, got {:?}", hist.value);
    };
    let total = buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .map_or(0.0, |b| b.count);
    assert!(total >= 200.0, "{total} read mem stats pauses");
    let info = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "detector_process_info"
                && s.labels.get("pid") == Some(stripped.0.id().to_string().as_str())
        })
        .expect("info of the stripped process");
    assert_eq!(info.labels.get("go_version"), Some("go1.19.8"));

    let (status, findings) = get(&addr, "/findings");
    assert_eq!(status, 200);
    let reports: serde_json::Value = serde_json::from_str(&findings).expect("JSON");
    let mine = reports
        .as_array()
        .expect("an array of reports")
        .iter()
        .find(|r| r["target"]["pid"].as_u64() == Some(misuse.0.id() as u64))
        .expect("a report for the misusing process");
    assert_eq!(mine["findings"][0]["rule"], "readmemstats-hot-path");
    assert_eq!(get(&addr, "/healthz").0, 200);

    // The agent's own CPU between ticks, from its self-metric. The bench measures the
    // cost (< 1 % of a core); this bound, far above it, catches a loop that spins
    // between ticks instead of sleeping (a busy agent shows ~100 %).
    let (cpu0, at0) = (scalar(&addr, "detector_cpu_seconds_total"), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu = (scalar(&addr, "detector_cpu_seconds_total") - cpu0) / at0.elapsed().as_secs_f64();
    println!("agent CPU: {:.2} % of a core, 3 processes", cpu * 100.0);
    assert!(
        cpu < 0.25,
        "watch used {:.0} % of a core watching 3 processes",
        cpu * 100.0
    );

    // A process that exits: its series go at the next tick.
    let gone = misuse.0.id();
    drop(misuse);
    let t2 = Instant::now();
    loop {
        let (_, body) = get(&addr, "/metrics");
        if !body.contains(&format!("pid=\"{gone}\"")) {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(5),
            "series of exited process {gone} still exported"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "exit: series dropped after {:.2} s",
        t2.elapsed().as_secs_f64()
    );

    // SIGTERM: clean exit, nothing left in the kernel. The programs detector holds
    // are read from its descriptors first (other tools may load programs meanwhile);
    // an uprobe keeps its program loaded, so no program left means no probe left.
    let ours = program_ids_of(watch.id());
    assert!(ours.len() >= 5, "watch holds {} eBPF programs", ours.len());
    unsafe { libc_kill(watch.id() as i32, 15) };
    let t3 = Instant::now();
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(
            t3.elapsed() < Duration::from_secs(20),
            "watch ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "watch exited with {status}");
    println!(
        "shutdown: exit 0 {:.2} s after SIGTERM",
        t3.elapsed().as_secs_f64()
    );
    if let Err(left) = wait_programs_freed(&ours) {
        panic!("eBPF programs {left:?} of detector still loaded after it exited");
    }

    // A restart finds the same processes again.
    let (mut again, addr) = start_watch(&fixtures_glob);
    let t5 = Instant::now();
    wait_watched(&addr, healthy.0.id(), t5);
    wait_watched(&addr, stripped.0.id(), t5);
    unsafe { libc_kill(again.id() as i32, 15) };
    assert!(again.wait().unwrap().success());
}

/// Starts `detector watch` on a free port for the fixtures matching `glob`.
fn start_watch(glob: &str) -> (Child, String) {
    detector_tests::start_watch(glob, &["--per-pid-series".as_ref()], "http")
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The value of an unlabelled counter or gauge.
fn scalar(addr: &str, metric: &str) -> f64 {
    let (_, body) = get(addr, "/metrics");
    parse(&body)
        .samples
        .iter()
        .find(|s| s.metric == metric)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("{metric} not exported"))
}

#[test]
fn watch_follows_replaced_binaries_and_other_mount_namespaces() {
    require_bpf_privileges();
    let src = version_dir("service", 26).join("default/service");
    let root = std::env::temp_dir().join(format!("detector-watch-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("ns")).unwrap();
    let app = root.join("bin/app");
    std::fs::copy(&src, &app).unwrap();
    let (mut watch, addr) = start_watch(&format!("{}/*/app", root.display()));
    let spawn = |bin: &std::path::Path| {
        Proc(
            detector_tests::spawn_fresh_copy(
                Command::new(bin)
                    .args(["-misuse", "none", "-rate", "50"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .expect("start the copied service"),
        )
    };

    // A binary replaced on disk (a deploy: new file, new inode) is analysed anew,
    // while the process still running the old one stays watched.
    let old = spawn(&app);
    wait_watched(&addr, old.0.id(), Instant::now());
    let analysed = scalar(&addr, "detector_binaries_analysed_total");
    std::fs::remove_file(&app).unwrap();
    std::fs::copy(&src, &app).unwrap();
    let new = spawn(&app);
    wait_watched(&addr, new.0.id(), Instant::now());
    assert!(
        scalar(&addr, "detector_binaries_analysed_total") > analysed,
        "the replaced binary was not analysed again"
    );
    assert!(scalar(&addr, "detector_binaries_attached") >= 2.0);
    assert_eq!(scalar(&addr, "detector_probe_guardian_up"), 1.0);
    let tail = scalar(&addr, "detector_probe_detach_tail_seconds");
    assert!(tail > 0.0 && tail < 10.0, "detach tail {tail} s");
    let (_, body) = get(&addr, "/metrics");
    assert!(pids_in(&parse(&body), "detector_process_info").contains(&old.0.id()));

    // A process in another mount namespace (as in a container): its executable's path
    // does not exist on the host; it is reached through /proc/PID/exe.
    let ns = root.join("ns");
    let script = format!(
        "mount -t tmpfs none {ns} && cp {src} {ns}/app && exec {ns}/app -misuse readmemstats -rate 100",
        ns = ns.display(),
        src = src.display()
    );
    let contained = Proc(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)"),
    );
    wait_watched(&addr, contained.0.id(), Instant::now());
    assert!(
        !ns.join("app").exists(),
        "the namespaced binary must not be visible from the host"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (_, body) = get(&addr, "/metrics");
    let c = contained.0.id().to_string();
    assert!(
        parse(&body)
            .samples
            .iter()
            .any(|s| s.metric == "detector_finding_active"
                && s.labels.get("pid") == Some(c.as_str())
                && s.labels.get("rule") == Some("readmemstats-hot-path")),
        "no finding for the process in another mount namespace:\n{body}"
    );

    unsafe { libc_kill(watch.id() as i32, 15) };
    assert!(watch.wait().unwrap().success());
    drop((old, new, contained));
    let _ = std::fs::remove_dir_all(&root);
}
