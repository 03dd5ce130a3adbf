//! The deployment files under deploy/ stay in step with what detector exports: the
//! Grafana dashboard parses and queries only metrics that exist; the DaemonSet and the
//! systemd unit grant the capabilities the README documents.
use std::{fs, path::Path};

use detector_tests::exported_names;

fn deploy(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let names = exported_names();
    assert!(
        names.contains("detector_stw_pause_seconds_bucket"),
        "{names:?}"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&deploy("grafana/detector-dashboard.json")).expect("dashboard JSON");
    let mut queries = vec![];
    exprs(&dash, &mut queries);
    assert!(queries.len() >= 8, "only {} queries", queries.len());
    for q in &queries {
        for token in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("detector_") {
                assert!(
                    names.contains(token),
                    "dashboard queries unknown metric {token}: {q}"
                );
            }
        }
    }
}

#[test]
fn daemonset_and_unit_grant_the_documented_capabilities() {
    let ds = deploy("kubernetes/daemonset.yaml");
    let unit = deploy("systemd/detector-watch.service");
    for cap in ["BPF", "PERFMON", "SYS_PTRACE"] {
        assert!(ds.contains(cap), "DaemonSet lacks {cap}");
        assert!(unit.contains(&format!("CAP_{cap}")), "unit lacks CAP_{cap}");
    }
    assert!(
        ds.contains("hostPID: true"),
        "the DaemonSet must see the node's processes"
    );
    assert!(
        !ds.contains("privileged: true"),
        "the DaemonSet must not be privileged"
    );
    assert!(
        unit.contains("detector watch"),
        "the unit runs detector watch"
    );
}
