//! Modern replacements stay silent, and fix texts follow the target's Go version
//! (issue 14, item 6), live, as root, on the `cases` fixture of every Go release:
//!
//! - `-case flightrecorder` (Go 1.25+, case_flightrecorder.go): a
//!   runtime/trace.FlightRecorder on for the whole life of the process raises
//!   nothing, although the tracer's reader runs in every second watched (what
//!   trace-always-on looks for); detector reads that the tracer runs for a flight
//!   recorder and no trace.Start writer. Every build kind on the newest release (the
//!   multiplexer's address is found in code, not in `.symtab`, and read at the PIE
//!   load bias).
//! - `-case addcleanup` (Go 1.24+, case_addcleanup.go): runtime.AddCleanup on every
//!   request raises nothing, and no SetFinalizer call comes from the fixture's code.
//! - On older releases the build constraints leave those cases out of the fixture.
//! - The trace and finalizer-cleanup misuse findings name trace.FlightRecorder and
//!   runtime.AddCleanup in their fix exactly from Go 1.25 and 1.24 (on releases
//!   around those boundaries; the golden unit tests cover every release).
use std::path::Path;
use std::process::Command;

use detector_tests::{
    accuracy::{self, Cell, Settings},
    detector_bin, require_bpf_privileges, version_dir,
};
use serde_json::Value;

fn settings() -> Settings {
    Settings {
        config: Path::new(env!("CARGO_MANIFEST_DIR")).join("accuracy.toml"),
        budget: None,
    }
}

/// Diagnoses `case` (its misuse variant) on Go 1.`minor`'s `kind` build: the rules
/// fired and detector's JSON report.
fn diagnose(minor: u32, case: &'static str, kind: &'static str) -> (Vec<String>, Value) {
    let dir = version_dir("cases", minor);
    let cell = Cell {
        case,
        misuse: true,
        go: dir.file_name().unwrap().to_string_lossy().into_owned(),
        kind,
        binary: dir.join(kind).join("cases"),
    };
    let (outcome, json) = accuracy::run_cell_json(&cell, &detector_bin(), &settings());
    assert!(
        outcome.error.is_none(),
        "{}: {:?}",
        cell.name(),
        outcome.error
    );
    (
        outcome.fired.into_iter().collect(),
        json.expect("a JSON report"),
    )
}

/// The counted calls of API `id` in a report.
fn calls<'a>(json: &'a Value, id: &str) -> Option<&'a Value> {
    json["collected"]["calls"]
        .as_array()?
        .iter()
        .find(|c| c["func"] == id)
}

/// Whether the fixture of Go 1.`minor` knows `-case case` (its usage, printed by
/// `-h`, lists the cases it was built with).
fn fixture_has_case(minor: u32, case: &str) -> bool {
    let bin = version_dir("cases", minor).join("default/cases");
    let out = Command::new(&bin)
        .arg("-h")
        .output()
        .expect("run the cases fixture");
    let usage = String::from_utf8_lossy(&out.stderr);
    assert!(usage.contains("healthy"), "{}: {usage}", bin.display());
    usage.contains(&format!(" {case},")) || usage.contains(&format!(" {case}\n"))
}

/// The newest Go minor the fixtures cover.
const NEWEST: u32 = detector_tests::MINORS[detector_tests::MINORS.len() - 1];

fn check(minor: u32) {
    require_bpf_privileges();

    // A flight recorder left on (1.25+).
    assert_eq!(fixture_has_case(minor, "flightrecorder"), minor >= 25);
    if minor >= 25 {
        // Every build kind on the newest release, the default build on the others.
        let kinds: &[&'static str] = if minor == NEWEST {
            &detector_tests::KINDS
        } else {
            &["default"]
        };
        for &kind in kinds {
            let (fired, json) = diagnose(minor, "flightrecorder", kind);
            assert!(
                fired.is_empty(),
                "go1.{minor} {kind}: a flight recorder left on raised {fired:?}"
            );
            let c = &json["collected"];
            assert_eq!(
                c["trace_subscribers"],
                serde_json::json!({"trace_start": false, "flight_recorder": true}),
                "go1.{minor} {kind}"
            );
            // What trace-always-on looks for was there: the reader in every tick.
            let reader = calls(&json, "tracereader").expect("the tracer's reader is probed");
            let ticks = reader["per_tick"].as_array().expect("per_tick");
            assert!(
                !ticks.is_empty() && ticks.iter().all(|n| n.as_u64() > Some(0)),
                "go1.{minor} {kind}: the reader did not run in every tick: {ticks:?}"
            );
        }
    }

    // AddCleanup per object (1.24+).
    assert_eq!(fixture_has_case(minor, "addcleanup"), minor >= 24);
    if minor >= 24 {
        let (fired, json) = diagnose(minor, "addcleanup", "default");
        assert!(
            fired.is_empty(),
            "go1.{minor}: AddCleanup per request raised {fired:?}"
        );
        if let Some(sf) = calls(&json, "setfinalizer") {
            let from_main: Vec<&Value> = sf["sites"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| {
                    s["function"]
                        .as_str()
                        .is_some_and(|f| f.starts_with("main."))
                })
                .collect();
            assert!(
                from_main.is_empty(),
                "go1.{minor}: AddCleanup reached the SetFinalizer probe: {from_main:?}"
            );
        }
    }

    // The misuse findings' fix texts follow the version (the oldest release, both
    // sides of each feature's first release and the newest; the golden unit tests
    // check the texts on every release).
    if ![19, 23, 24, 25, NEWEST].contains(&minor) {
        return;
    }
    for (case, rule, text, since) in [
        ("trace", "trace-always-on", "FlightRecorder", 25),
        (
            "finalizer-cleanup",
            "finalizer-cleanup",
            "runtime.AddCleanup",
            24,
        ),
    ] {
        let (fired, json) = diagnose(minor, case, "default");
        assert_eq!(fired, [rule], "go1.{minor} {case}");
        let finding = &json["findings"][0];
        let fix = finding["fix"].as_str().expect("a fix text");
        assert_eq!(
            fix.contains(text),
            minor >= since,
            "go1.{minor} {case}: fix {fix:?}"
        );
    }
}

detector_tests::per_go_release!(check);

/// `runtime/trace.tracing`, found in `(*FlightRecorder).Start`'s code, is where `go
/// tool nm` puts it on every Go release and build kind that has a flight recorder
/// (stripped builds: found), and absent before Go 1.25. (It is data or BSS, by
/// release and build.)
#[test]
fn the_trace_multiplexer_is_found_in_code() {
    for (v, name, dir) in detector_tests::versions("cases") {
        for kind in detector_tests::KINDS {
            let what = format!("{name}/{kind}");
            let bin = detector::gobin::GoBinary::open(&dir.join(kind).join("cases"))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let found = bin.trace_multiplexer_addr();
            if !v.at_least(1, 25) {
                assert_eq!(found, None, "{what}");
                continue;
            }
            if kind == "stripped" {
                assert!(found.is_some(), "{what}");
                continue;
            }
            let nm = std::fs::read_to_string(dir.join(kind).join("cases.nm"))
                .unwrap_or_else(|e| panic!("{what}: cases.nm: {e}"));
            let want = nm.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                (f.nth(1)? == "runtime/trace.tracing").then_some(addr)
            });
            assert!(want.is_some(), "{what}: no runtime/trace.tracing in nm");
            assert_eq!(found, want, "{what}");
        }
    }
}
