//! `detector rules`: the rule book as detector applies it, with the thresholds in
//! effect (defaults, then the config file, then `--set`).
use std::fmt::Write;

use super::Format;
use crate::{
    exit::{self, Failure},
    rules::{Param, Thresholds, NOT_OBSERVABLE, RULES},
};

#[derive(serde::Serialize)]
struct RuleRow {
    id: &'static str,
    catalog_case: Option<u8>,
    title: &'static str,
    observes: &'static str,
    thresholds: Vec<(&'static str, serde_json::Value)>,
}

/// A threshold's value as the config file takes it (whole numbers without a point).
fn value(p: &Param, v: f64) -> serde_json::Value {
    if p.whole {
        serde_json::Value::from(v as u64)
    } else {
        serde_json::Value::from(v)
    }
}

pub fn run(t: &Thresholds, format: Format) -> Result<crate::exit::Code, Failure> {
    let rows: Vec<RuleRow> = RULES
        .iter()
        .map(|r| RuleRow {
            id: r.id,
            catalog_case: r.catalog_case,
            title: r.title,
            observes: r.observes,
            thresholds: r
                .params
                .iter()
                .map(|p| (p.key, value(p, t.get(p))))
                .collect(),
        })
        .collect();
    match format {
        Format::Json => {
            let json = serde_json::json!({
                "rules": rows,
                "not_observable": NOT_OBSERVABLE
                    .iter()
                    .map(|(case, what, why)| serde_json::json!({"catalog_case": case, "what": what, "why": why}))
                    .collect::<Vec<_>>(),
            });
            super::write_stdout(&format!(
                "{}\n",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            ))?;
        }
        Format::Text => {
            let mut o = String::new();
            for r in &rows {
                let case = r
                    .catalog_case
                    .map_or("beyond the catalog".to_string(), |c| format!("case {c:>2}"));
                let _ = writeln!(o, "{:<28} {case}  {}", r.id, r.title);
                let _ = writeln!(o, "    observes: {}", r.observes);
                let th: Vec<String> = r
                    .thresholds
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                let _ = writeln!(o, "    thresholds: {}", th.join(", "));
            }
            for (case, what, why) in NOT_OBSERVABLE {
                let _ = writeln!(
                    o,
                    "(not observable)            case {case:>2}  {what}: {why}"
                );
            }
            super::write_stdout(&o)?;
        }
    }
    Ok(exit::Code::NoFindings)
}
