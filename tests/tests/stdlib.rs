//! Misuse reached through the standard library, and its modern replacements (issue 14,
//! item 7): the `stdlib` fixture (tests/fixtures/stdlib), diagnosed live.
//!
//! The culprit must be the code the user can change: the handler that logs with
//! `log.Lshortfile` or slog's `AddSource`, not `log.(*Logger).output`; the user loop
//! calling `debug.FreeOSMemory`, not `runtime/debug.FreeOSMemory`; and, where the
//! whole stack is the standard library (expvar's and net/http/pprof's handlers served
//! by net/http), that entry point and what drives it. The modern replacements
//! (runtime/metrics, `runtime.AddCleanup` from Go 1.24, `trace.FlightRecorder` from
//! Go 1.25, log/slog without AddSource from Go 1.21) must raise nothing.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use detector_tests::{
    corpus::{diagnose_while, Checks, Culprit, Daemon, Driver, Request},
    require_bpf_privileges, version_dir,
};

const WINDOW: &str = "4s";

/// Starts the fixture in `mode`; returns it, its address and its features line.
fn start(bin: &Path, mode: &str) -> (Daemon, String, String) {
    let mut child = Command::new(bin)
        .args(["-mode", mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let out = child.stdout.take().expect("piped");
    let d = Daemon {
        name: format!("stdlib -mode {mode}"),
        child,
        dir: None,
    };
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read the fixture's ready line");
    let mut addr = None;
    let mut features = String::new();
    for field in line.split_whitespace() {
        if let Some(a) = field.strip_prefix("addr=") {
            addr = Some(a.to_string());
        } else if let Some(f) = field.strip_prefix("features=") {
            features = f.to_string();
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("{}: no ready line, got {line:?}", d.name));
    (d, addr, features)
}

/// Culprit of a standard-library handler served by net/http.
fn std_handler(functions: &'static [&'static str], path_has: &'static [&'static str]) -> Culprit {
    Culprit {
        functions,
        owner: Some("std"),
        driven_by: Some("net/http"),
        path_has,
        ..Default::default()
    }
}

fn check(minor: u32, kind: &str) {
    require_bpf_privileges();
    let bin = version_dir("stdlib", minor).join(kind).join("stdlib");
    let what = |s: &str| format!("go1.{minor} {kind}: {s}");
    let mut checks = Checks::default();

    // log with Lshortfile on every request (5 lines per request, 300 requests/s), expvar's
    // /debug/vars polled 30/s, the goroutine profile with debug=2 polled 5/s, and
    // debug.FreeOSMemory every 500 ms from main.releaseMemory.
    {
        let (d, addr, _) = start(&bin, "log,expvar,freeosmemory");
        let report = diagnose_while(
            d.pid(),
            WINDOW,
            &[],
            vec![
                Driver::http(Request::get(&addr, "/debug/vars"), 30.0),
                Driver::http(Request::get(&addr, "/debug/pprof/goroutine?debug=2"), 5.0),
            ],
        );
        checks.finding(
            &report,
            "caller-hot-path",
            Some(&Culprit {
                functions: &["main.handleLog"],
                owner: Some("main"),
                // log.(*Logger).Output (Go 1.19) or .output (1.21+), then runtime.Caller.
                path_has: &["log.(*Logger).*", "runtime.Caller"],
                ..Default::default()
            }),
            &what("log.Lshortfile on every request"),
        );
        checks.finding(
            &report,
            "readmemstats-hot-path",
            Some(&std_handler(
                &["expvar.expvarHandler"],
                &["expvar.memstats", "runtime.ReadMemStats"],
            )),
            &what("/debug/vars polled 30/s"),
        );
        checks.finding(
            &report,
            "stack-all-polling",
            Some(&std_handler(
                &["net/http/pprof.Index", "net/http/pprof.handler.ServeHTTP"],
                &["runtime/pprof.writeGoroutineStacks", "runtime.Stack"],
            )),
            &what("/debug/pprof/goroutine?debug=2 polled 5/s"),
        );
        checks.finding(
            &report,
            "freeosmemory-periodic",
            Some(&Culprit {
                functions: &["main.releaseMemory"],
                owner: Some("main"),
                ..Default::default()
            }),
            &what("debug.FreeOSMemory every 500 ms"),
        );
    }

    // log/slog with AddSource on every request (Go 1.21+), and debug.FreeOSMemory
    // called through a function value (main.every(500ms, debug.FreeOSMemory)): the
    // exported wrapper is then a frame of its own, under main.every.
    {
        let mode = if minor >= 21 {
            "slog,freeosmemory-func"
        } else {
            "freeosmemory-func"
        };
        let (d, _, _) = start(&bin, mode);
        let report = diagnose_while(d.pid(), WINDOW, &[], vec![]);
        if minor >= 21 {
            checks.finding(
                &report,
                "caller-hot-path",
                Some(&Culprit {
                    functions: &["main.handleSlog"],
                    owner: Some("main"),
                    // AddSource's cost is symbolising the record's PC.
                    path_has: &["log/slog.(*Logger).log", "runtime.CallersFrames"],
                    ..Default::default()
                }),
                &what("slog AddSource on every request"),
            );
        }
        checks.finding(
            &report,
            "freeosmemory-periodic",
            Some(&Culprit {
                functions: &["main.every"],
                owner: Some("main"),
                // The exported wrapper is the API's own frame: the path ends in it.
                path_has: &["debug.FreeOSMemory"],
                ..Default::default()
            }),
            &what("debug.FreeOSMemory through a function value every 500 ms"),
        );
    }

    // The modern replacements, slog without AddSource among them (five records a
    // request: slog takes one caller PC per record, 1500/s, but never symbolizes it).
    // The trace window threshold is lowered so that a flight recorder judged as
    // case 10 (an always-on trace) would show within the window.
    {
        let (d, addr, features) = start(&bin, "modern");
        let want = match minor {
            ..=20 => "metrics",
            21..=23 => "metrics,slog",
            24 => "metrics,slog,addcleanup",
            _ => "metrics,slog,addcleanup,flightrecorder",
        };
        assert_eq!(features, want, "go1.{minor} {kind}: modern features");
        let report = diagnose_while(
            d.pid(),
            WINDOW,
            &["--set", "trace_max_window_s=3"],
            vec![Driver::http(Request::get(&addr, "/modern"), 20.0)],
        );
        checks.silent(&report, &what(&format!("modern replacements ({features})")));
    }
    checks.finish();
}

#[test]
fn go1_19_default() {
    check(19, "default")
}

#[test]
fn go1_19_stripped() {
    check(19, "stripped")
}

#[test]
fn go1_23_pie() {
    check(23, "pie")
}

#[test]
fn go1_27_default() {
    check(27, "default")
}

#[test]
fn go1_27_stripped() {
    check(27, "stripped")
}
