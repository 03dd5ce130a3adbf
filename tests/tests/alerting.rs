//! The Prometheus rules in deploy/prometheus: valid (`promtool check rules`), passing
//! their unit tests (`promtool test rules`), querying only metrics that `detector
//! watch` exports, and shown by the Grafana dashboard.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use detector_tests::exported_names;

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn read(name: &str) -> String {
    let p = prometheus_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs promtool in deploy/prometheus; fails with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): `cargo xtask setup` installs it (Debian package `prometheus`)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn rules_are_valid() {
    let out = promtool(&["check", "rules", "detector-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", "detector-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The PromQL of every `expr:` in a rule file (single-line or a block scalar).
fn exprs(yaml: &str) -> Vec<String> {
    let mut out = vec![];
    let lines: Vec<&str> = yaml.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = rest.trim().trim_start_matches(">-").to_string();
        for next in &lines[i + 1..] {
            if next.trim().is_empty() || next.len() - next.trim_start().len() <= indent {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
        }
        out.push(expr);
    }
    out
}

/// `detector_*` metric names in a PromQL expression (recording rules' outputs, which
/// hold a colon, are not metric names).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("detector_"))
        .collect()
}

#[test]
fn rules_query_exported_metrics() {
    let names = exported_names();
    let rules = read("detector-rules.yml");
    let exprs = exprs(&rules);
    assert!(exprs.len() >= 15, "only {} exprs: {exprs:?}", exprs.len());
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                names.contains(name),
                "rule queries {name}, which detector watch does not export: {e}"
            );
            used.insert(name);
        }
    }
    // The three subjects of the rules: findings, stop-the-world share, the agent.
    for needed in [
        "detector_finding_active",
        "detector_stopped_ratio",
        "detector_stw_pause_seconds_sum",
        "detector_ticks_total",
        "detector_probe_guardian_up",
    ] {
        assert!(used.contains(needed), "no rule uses {needed}");
    }
    // The unit tests feed the same names (and `up`).
    let tests = read("detector-rules.test.yml");
    for line in tests.lines() {
        if let Some(series) = line.trim().strip_prefix("- series: '") {
            let name = series.split('{').next().unwrap_or("");
            assert!(
                name == "up" || names.contains(name),
                "the unit tests feed {name}, which detector watch does not export"
            );
        }
    }
}

/// Alert names, in file order.
fn alerts(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn every_alert_is_unit_tested_and_on_the_dashboard() {
    let rules = read("detector-rules.yml");
    let tests = read("detector-rules.test.yml");
    let names = alerts(&rules);
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(
            tests.contains(&format!("alertname: {n}\n")),
            "alert {n} has no promtool unit test"
        );
        // The dashboard's annotation query selects ALERTS{alertname=~"Detector.*"}.
        assert!(
            n.starts_with("Detector"),
            "alert {n} does not start with Detector"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/detector-dashboard.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let annotations = dash["annotations"]["list"].as_array().expect("annotations");
    assert!(
        annotations.iter().any(|a| a["expr"]
            .as_str()
            .is_some_and(|e| e.contains("ALERTS{alertname=~\"Detector.*\""))),
        "the dashboard does not annotate firing Detector* alerts"
    );
    let links = dash["links"].as_array().expect("links");
    assert!(
        links
            .iter()
            .any(|l| l["url"].as_str().is_some_and(|u| u.contains("Detector"))),
        "the dashboard does not link to the Detector* alerts"
    );
    assert!(
        dash["description"]
            .as_str()
            .is_some_and(|d| d.contains("deploy/prometheus/detector-rules.yml")),
        "the dashboard's description does not name the rule file"
    );
}
