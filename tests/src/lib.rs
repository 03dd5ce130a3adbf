//! Helpers shared by the end-to-end and analysis tests: where the fixtures and the
//! detector binary are, and checks that fail loudly instead of skipping.
pub mod accuracy;
pub mod agent_soak;
pub mod breakpoints;
pub mod corpus;
pub mod http;
pub mod oddball;
pub mod schema;
pub mod soak;

use std::{
    fs,
    path::{Path, PathBuf},
};

use detector::gobin::GoVersion;

pub const KINDS: [&str; 4] = ["default", "stripped", "pie", "cgo"];
/// The one list of Go releases the fixtures cover: it makes [`MINORS`] and
/// [`per_go_release!`]. (`$d` is a `$` handed to the inner macro, whose own
/// metavariables the outer one must not expand.)
macro_rules! go_releases {
    ($d:tt $($name:ident = $minor:literal),* $(,)?) => {
        /// Go minor releases the fixtures must cover.
        pub const MINORS: [u32; [$($minor),*].len()] = [$($minor),*];

        /// One `#[test]` per Go release (`go1_19`, `go1_21`, ...) calling
        /// `check(minor)`: a suite that covers every release names it once.
        #[macro_export]
        macro_rules! per_go_release {
            ($d check:path) => {
                $(
                    #[test]
                    fn $name() {
                        $d check($minor)
                    }
                )*
            };
        }
    };
}

go_releases!($ go1_19 = 19, go1_21 = 21, go1_22 = 22, go1_23 = 23, go1_24 = 24, go1_25 = 25, go1_26 = 26, go1_27 = 27);
pub const MISSING: &str = "fixtures missing: run `cargo xtask fixtures`";

pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("DETECTOR_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"),
    }
}

/// `(version, directory name, path)` of every `go<version>` fixture directory holding
/// `fixture` for every kind; fails when fixtures are missing or a Go minor is absent.
pub fn versions(fixture: &str) -> Vec<(GoVersion, String, PathBuf)> {
    let root = fixtures_root();
    let entries = fs::read_dir(&root).unwrap_or_else(|e| {
        panic!("{MISSING} ({}: {e})", root.display());
    });
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(v) = GoVersion::parse(&name) else {
            continue;
        };
        for kind in KINDS {
            let bin = e.path().join(kind).join(fixture);
            assert!(bin.is_file(), "{MISSING} ({} is missing)", bin.display());
        }
        out.push((v, name, e.path()));
    }
    out.sort_by_key(|(v, _, _)| *v);
    let missing: Vec<_> = MINORS
        .iter()
        .filter(|m| !out.iter().any(|(v, _, _)| v.major == 1 && v.minor == **m))
        .map(|m| format!("go1.{m}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{MISSING} (no fixtures for {} under {})",
        missing.join(", "),
        root.display()
    );
    out
}

/// The fixture directory for Go minor `minor` (e.g. 21 → target/fixtures/go1.21.13).
pub fn version_dir(fixture: &str, minor: u32) -> PathBuf {
    versions(fixture)
        .into_iter()
        .find(|(v, _, _)| v.minor == minor)
        .map(|(_, _, p)| p)
        .unwrap_or_else(|| panic!("{MISSING} (no go1.{minor})"))
}

/// The detector binary built by `cargo xtask test` (or `cargo build`).
pub fn detector_bin() -> PathBuf {
    let bin = std::env::var_os("DETECTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/detector"));
    assert!(
        bin.is_file(),
        "detector binary not found at {}: run the tests with `cargo xtask test` (or `cargo build -p detector` first)",
        bin.display()
    );
    bin
}

/// Runs `detector diagnose --pid PID --duration D --format json` with `extra`
/// arguments, and returns its exit code and JSON report (panics without one).
pub fn diagnose_json(pid: u32, duration: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let pid = pid.to_string();
    let out = std::process::Command::new(detector_bin())
        .args(["diagnose", "--pid", &pid, "--duration", duration])
        .args(["--format", "json"])
        .args(extra)
        .output()
        .expect("run detector");
    let code = out.status.code().unwrap_or(-1);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "detector exited {code} without a JSON report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

/// Fails (never skips) when this process cannot load BPF programs and create uprobes.
pub fn require_bpf_privileges() {
    if let Err(e) = detector::probes::attach::check_privileges() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        panic!(
            "this test loads real eBPF programs and needs root (CAP_BPF + CAP_PERFMON): {e} (CI={ci}); run `sudo cargo xtask test`"
        );
    }
}

/// The eBPF program ids a process holds, from its descriptors' fdinfo: what must be
/// gone from the kernel once it exits (an uprobe keeps its program loaded).
pub fn program_ids_of(pid: u32) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        if let Ok(info) = fs::read_to_string(e.path()) {
            for line in info.lines() {
                if let Some(id) = line.strip_prefix("prog_id:") {
                    if let Ok(id) = id.trim().parse() {
                        ids.insert(id);
                    }
                }
            }
        }
    }
    ids
}

/// Waits (up to 5 s: the kernel frees programs after their last reference, through
/// RCU) until none of `ids` is loaded; the ids still loaded otherwise.
pub fn wait_programs_freed(ids: &std::collections::BTreeSet<u32>) -> Result<(), Vec<u32>> {
    let t0 = std::time::Instant::now();
    loop {
        let loaded: std::collections::BTreeSet<u32> =
            detector::probes::attach::loaded_program_ids()
                .into_iter()
                .collect();
        let left: Vec<u32> = ids.intersection(&loaded).copied().collect();
        if left.is_empty() {
            return Ok(());
        }
        if t0.elapsed() >= std::time::Duration::from_secs(5) {
            return Err(left);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Spawns `cmd` whose executable was just copied, retrying for up to a second while
/// the kernel calls it busy (ETXTBSY): another test thread that forked while the copy
/// was open for writing holds the write descriptor until its child execs.
pub fn spawn_fresh_copy(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Starts `detector watch` on a free loopback port for the processes matching
/// `exe_glob` (0.5 s ticks, 10 s window), with `extra` arguments; returns it and the
/// address it serves, read from the `scheme://` URL it prints. Its stderr is drained
/// in the background from then on.
pub fn start_watch(
    exe_glob: &str,
    extra: &[&std::ffi::OsStr],
    scheme: &str,
) -> (std::process::Child, String) {
    start_watch_env(exe_glob, extra, scheme, &[])
}

/// [`start_watch`] with extra environment variables (e.g. the hidden map size knob).
pub fn start_watch_env(
    exe_glob: &str,
    extra: &[&std::ffi::OsStr],
    scheme: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut watch = Command::new(detector_bin())
        .args(["watch", "--listen", "127.0.0.1:0", "--interval", "500ms"])
        .args(["--window", "10s", "--exe", exe_glob])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start detector watch");
    let stderr = watch.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let prefix = format!("{scheme}://");
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split(prefix.as_str())
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("watch prints the {scheme} address it serves"));
    std::thread::spawn(move || for _ in lines {});
    (watch, addr)
}

/// Polls `ok` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A `/metrics` scrape of `detector watch` at `addr` (status 200, parsed).
pub fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = crate::http::get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The sum of `metric`'s samples whose labels include every (name, value) of `labels`.
pub fn sum(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

/// Every sample name `detector watch`'s exporter can produce (counters with `_total`,
/// histograms with their series), from its text exposition.
pub fn exported_names() -> std::collections::BTreeSet<String> {
    use detector::watch::{agent::Exported, metrics::render_text};
    let text = render_text(Exported::default());
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}
