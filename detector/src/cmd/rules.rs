//! `detector rules`: the rule book as detector applies it, with the thresholds in
//! effect (defaults, then the config file, then `--set`).
use std::fmt::Write;

use super::Format;
use crate::{
    exit::{self, Failure},
    rules::{Thresholds, NOT_OBSERVABLE, RULES},
};

#[derive(serde::Serialize)]
struct RuleRow {
    id: &'static str,
    catalog_case: u8,
    title: &'static str,
    observes: &'static str,
    thresholds: Vec<(&'static str, toml::Value)>,
}

pub fn run(t: &Thresholds, format: Format) -> Result<u8, Failure> {
    let values = match toml::Value::try_from(t) {
        Ok(toml::Value::Table(v)) => v,
        _ => return Err(Failure::new(exit::OTHER, "thresholds are not a table")),
    };
    let rows: Vec<RuleRow> = RULES
        .iter()
        .map(|r| RuleRow {
            id: r.id,
            catalog_case: r.catalog_case,
            title: r.title,
            observes: r.observes,
            thresholds: r
                .thresholds
                .iter()
                .map(|k| {
                    (
                        *k,
                        values.get(*k).cloned().unwrap_or(toml::Value::Float(0.0)),
                    )
                })
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
                let _ = writeln!(o, "{:<28} case {:>2}  {}", r.id, r.catalog_case, r.title);
                let _ = writeln!(o, "    observes: {}", r.observes);
                let th: Vec<String> = r
                    .thresholds
                    .iter()
                    .map(|(k, v)| match v {
                        toml::Value::Integer(i) => format!("{k} = {i}"),
                        toml::Value::Float(f) => format!("{k} = {f}"),
                        other => format!("{k} = {other:?}"),
                    })
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
    Ok(exit::NO_FINDINGS)
}
