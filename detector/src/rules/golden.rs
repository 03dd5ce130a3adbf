//! Every rule judged on golden collected data: the `collected` facts of live runs of
//! the cases fixture (each rule's `fixture_case`, misuse and fixed, and the healthy
//! service), recorded once and judged again here without eBPF, root or Go.
//!
//! The files are `testdata/<go>/<case>-<variant>.json` (go1.27.3 and go1.19.8, default
//! build kind, 3 s windows with tests/accuracy.toml, as in the accuracy matrix).
//! Regenerate them, as root, with
//!
//! ```text
//! cargo xtask golden                      # every case, Go 1.27.3 and 1.19.8
//! cargo xtask golden --case gctunables    # one case (repeatable), e.g. a new rule's
//! cargo xtask golden --go 1.27.3          # one Go version
//! ```
//!
//! (the accuracy runner's `--record-golden DIR`: it writes a file only when the live
//! run raised exactly the expected findings). A rule added without its two files, or
//! a change that makes a rule fire on another case's data or miss its own, fails here.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use super::{judge, Thresholds, RULES};
use crate::collect::Collected;

/// The thresholds of the live runs the data was recorded with.
const ACCURACY_TOML: &str = include_str!("../../../tests/accuracy.toml");

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rules/testdata")
}

/// The Go versions with golden data: one directory each.
fn versions() -> Vec<PathBuf> {
    let dir = testdata();
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden data missing: {}: {e}", dir.display()))
        .map(|e| e.expect("readable testdata entry").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    let names: Vec<String> = out.iter().map(|p| name(p)).collect();
    for required in ["go1.27.3", "go1.19.8"] {
        assert!(
            names.iter().any(|n| n == required),
            "no golden data for {required} under {} (have {names:?}); run `cargo xtask golden`",
            dir.display()
        );
    }
    out
}

fn name(p: &Path) -> String {
    p.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// Every golden file a version must have, with the one rule it must raise (None:
/// nothing): each rule's case, misuse and fixed, and the healthy service.
fn expected() -> Vec<(String, Option<&'static str>)> {
    RULES
        .iter()
        .flat_map(|r| {
            [
                (format!("{}-misuse.json", r.fixture_case), Some(r.id)),
                (format!("{}-fixed.json", r.fixture_case), None),
            ]
        })
        .chain([("healthy-fixed.json".to_string(), None)])
        .collect()
}

/// The collected facts of a golden file, with the Go version of its directory when
/// the file predates `go_version` (fix texts depend on it).
fn load(path: &Path) -> Collected {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing or unreadable ({e}); record it with `cargo xtask golden`",
            path.display()
        )
    });
    let mut c: Collected = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden file {} does not load: {e}", path.display()));
    if c.go_version.is_none() {
        c.go_version = path
            .parent()
            .and_then(|d| crate::gobin::GoVersion::parse(&name(d)));
    }
    c
}

#[test]
fn every_rule_has_misuse_and_fixed_golden_data_and_nothing_is_stale() {
    let want: BTreeSet<String> = expected().into_iter().map(|(f, _)| f).collect();
    // Each rule has its own case: a misuse file raises exactly one rule.
    assert_eq!(
        want.len(),
        expected().len(),
        "two rules name the same fixture_case"
    );
    for dir in versions() {
        let have: BTreeSet<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| name(&e.expect("readable entry").path()))
            .collect();
        let missing: Vec<_> = want.difference(&have).collect();
        let stale: Vec<_> = have.difference(&want).collect();
        assert!(
            missing.is_empty(),
            "{}: golden data missing for {missing:?}; record it with `cargo xtask golden --case CASE`",
            dir.display()
        );
        assert!(
            stale.is_empty(),
            "{}: golden files no rule names: {stale:?} (a renamed or removed rule's case?)",
            dir.display()
        );
    }
}

#[test]
fn every_rule_raises_exactly_its_finding_on_golden_data() {
    let thresholds = Thresholds::from_toml(ACCURACY_TOML).expect("tests/accuracy.toml parses");
    let mut wrong = vec![];
    let mut judged = 0;
    for dir in versions() {
        for (file, rule) in expected() {
            let path = dir.join(&file);
            let collected = load(&path);
            let fired: BTreeSet<&str> = judge(&collected, &thresholds)
                .iter()
                .map(|f| f.rule)
                .collect();
            let want: BTreeSet<&str> = rule.into_iter().collect();
            if fired != want {
                wrong.push(format!(
                    "{}/{file}: expected {want:?}, fired {fired:?}",
                    name(&dir)
                ));
            }
            judged += 1;
        }
    }
    assert!(judged > 0, "no golden data judged");
    assert!(
        wrong.is_empty(),
        "wrong findings:\n  {}",
        wrong.join("\n  ")
    );
}

/// The misuse data of `case` (recorded on Go 1.27.3) judged as if the target ran Go
/// `go`: the one finding's fix and "fine when" texts.
fn texts_for(case: &str, go: &str) -> (String, String) {
    let thresholds = Thresholds::from_toml(ACCURACY_TOML).expect("tests/accuracy.toml parses");
    let mut c = load(
        &testdata()
            .join("go1.27.3")
            .join(format!("{case}-misuse.json")),
    );
    c.go_version = crate::gobin::GoVersion::parse(go);
    let found = judge(&c, &thresholds);
    assert_eq!(found.len(), 1, "{case} as {go}: {found:?}");
    (found[0].fix.clone(), found[0].fine_when.clone())
}

#[test]
fn fix_texts_follow_the_targets_go_version() {
    // (case, text the fix names, first Go release it is named for)
    let cases = [
        ("finalizer-cleanup", "runtime.AddCleanup", (1, 24)),
        ("finalizer-leak", "runtime.AddCleanup", (1, 24)),
        ("trace", "FlightRecorder", (1, 25)),
        ("gomaxprocs", "SetDefaultGOMAXPROCS", (1, 25)),
        ("caller", "log/slog", (1, 21)),
        (
            "gctunables",
            "use runtime/metrics (/gc/gogc:percent",
            (1, 21),
        ),
    ];
    for go in [
        "go1.19.8",
        "go1.21.13",
        "go1.23.9",
        "go1.24.11",
        "go1.25.5",
        "go1.26.6",
        "go1.27.3",
    ] {
        let v = crate::gobin::GoVersion::parse(go).unwrap();
        for (case, text, (major, minor)) in cases {
            let (fix, _) = texts_for(case, go);
            assert_eq!(
                fix.contains(text),
                v.at_least(major, minor),
                "{case} on {go}: fix {fix:?}"
            );
        }
        // Older releases get the older advice, never a feature they lack.
        let (fix, _) = texts_for("gomaxprocs", go);
        assert_eq!(
            fix.contains("automaxprocs"),
            !v.at_least(1, 25),
            "{go}: {fix}"
        );
    }
    // Unknown version: the advice of the oldest supported release.
    let (fix, fine) = texts_for("finalizer-cleanup", "devel");
    assert!(!fix.contains("AddCleanup") && !fine.contains("AddCleanup"));
    // Advice that holds on every supported release.
    for go in ["go1.19.8", "go1.27.3"] {
        assert!(texts_for("readmemstats", go).0.contains("runtime/metrics"));
        assert!(texts_for("freeosmemory", go)
            .0
            .contains("debug.SetMemoryLimit"));
    }
}

#[test]
fn a_flight_recorder_left_on_is_not_an_always_on_trace() {
    use crate::gobin::trace_multiplexer::Subscribers;
    let thresholds = Thresholds::from_toml(ACCURACY_TOML).expect("tests/accuracy.toml parses");
    let mut c = load(&testdata().join("go1.27.3/trace-misuse.json"));
    let fired = |c: &Collected| -> Vec<&'static str> {
        judge(c, &thresholds).iter().map(|f| f.rule).collect()
    };
    for (trace_start, flight_recorder, fires) in [
        (false, true, false),
        (true, true, true),
        (true, false, true),
    ] {
        c.trace_subscribers = Some(Subscribers {
            trace_start,
            flight_recorder,
        });
        assert_eq!(
            fired(&c) == ["trace-always-on"],
            fires,
            "trace.Start {trace_start}, flight recorder {flight_recorder}"
        );
    }
    // Unknown subscribers (no flight recorder in the binary, or memory unreadable):
    // the reader alone decides, as before Go 1.25.
    c.trace_subscribers = None;
    assert_eq!(fired(&c), ["trace-always-on"]);
}
