//! `detector inspect BINARY`: what can be probed, offline, without privileges.
use std::path::Path;

use super::Format;
use crate::{
    apis::{Api, Presence, Probe},
    exit::Failure,
    gobin::GoBinary,
    report::{render_inspection, FunctionReport, Inspection},
};

pub fn run(path: &Path, format: Format) -> Result<crate::exit::Code, Failure> {
    let bin = GoBinary::open(path)?;
    let info = bin.info().clone();
    let version = info.go_version.ok_or_else(|| {
        Failure::new(
            crate::exit::Code::UnsupportedGoVersion,
            format!(
                "cannot tell the Go version of {} (no build info; a development toolchain?)",
                path.display()
            ),
        )
    })?;
    let mut functions = Vec::new();
    for &api in Api::ALL {
        let base = FunctionReport {
            id: api,
            api: api.name(),
            symbol: None,
            status: "inlined",
            address: None,
            file_offset: None,
            probe_address: None,
            probe_file_offset: None,
            stack_check: None,
            rets: None,
            probe_on: None,
            single_step: None,
            note: None,
        };
        let sym = match api.presence(version) {
            Presence::Symbol(sym) => sym,
            Presence::Inlined { callee } => {
                // Inlined APIs are observed where they were inlined, or through activity.
                let sites = if api.probe() == Probe::InlinedSites {
                    crate::probes::plan::inlined_sites(&bin, callee)
                } else {
                    vec![]
                };
                let note = match api.probe() {
                    Probe::ObservedThrough(other) => format!(
                        "always inlined: its setting is read from each recorded event ({})",
                        other.presence(version).symbol().unwrap_or(other.name())
                    ),
                    _ if sites.is_empty() => {
                        "always inlined, and not inlined into any user function".to_string()
                    }
                    _ => {
                        let names: Vec<String> = sites
                            .iter()
                            .take(3)
                            .map(|s| format!("{} ({}:{})", s.caller, s.call_file, s.call_line))
                            .collect();
                        format!(
                            "always inlined: probed at {} inlined site(s) in user code: {}",
                            sites.len(),
                            names.join(", ")
                        )
                    }
                };
                functions.push(FunctionReport {
                    probe_address: sites.first().map(|s| s.probe_vaddr),
                    probe_file_offset: sites.first().map(|s| s.probe_file_offset),
                    note: Some(note),
                    ..base
                });
                continue;
            }
        };
        let base = FunctionReport {
            symbol: Some(sym),
            ..base
        };
        let Some(f) = bin.func_by_name(sym) else {
            functions.push(FunctionReport {
                status: "missing",
                note: Some("not linked in: the program does not use it".into()),
                ..base
            });
            continue;
        };
        let report = match bin.probe_point(&f) {
            Ok(p) => FunctionReport {
                status: "found",
                address: Some(f.entry),
                file_offset: bin.file_offset(f.entry),
                probe_address: Some(p.probe_vaddr),
                probe_file_offset: Some(p.probe_file_offset),
                stack_check: Some(p.stack_check),
                rets: Some(p.rets.len()),
                probe_on: Some(if p.on_stack_check_jump {
                    "stack_check_jump"
                } else if p.stack_check {
                    "after_stack_check"
                } else {
                    "entry"
                }),
                single_step: Some(!p.emulated),
                ..base
            },
            Err(e) => FunctionReport {
                status: "found",
                address: Some(f.entry),
                file_offset: bin.file_offset(f.entry),
                note: Some(format!("cannot be probed: {e}")),
                ..base
            },
        };
        functions.push(report);
    }
    let inspection = Inspection {
        path: path.display().to_string(),
        binary: info,
        functions,
        attach_path: crate::probes::multi::kernel_path(),
    };
    let text = match format {
        Format::Text => render_inspection(&inspection),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&inspection)
                .map_err(|e| Failure::new(crate::exit::Code::Other, e.to_string()))?
        ),
    };
    super::write_stdout(&text)?;
    Ok(crate::exit::Code::NoFindings)
}
