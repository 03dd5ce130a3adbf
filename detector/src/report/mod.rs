//! Reports: one schema ([`Diagnosis`], [`Inspection`]) rendered as text or JSON.
mod text;

use serde::Serialize;

use crate::{collect::Collected, gobin::BinaryInfo, probes::plan::Skipped, rules::Finding};
pub use text::{render_diagnosis, render_inspection};

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub stripped: bool,
    pub pie: bool,
    pub cgo: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeInfo {
    pub attached: usize,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<Skipped>,
    /// `--overhead-budget` in effect: percent of one core the probes may cost the
    /// target (0: off). Calls whose probes it duty-cycled carry `sampled`.
    pub overhead_budget_percent: f64,
    /// How the probes went in and out: `uprobe_multi` (Linux 6.6+: one link per
    /// program and probe id, detached in one step) or `per_uprobe` (a perf event each).
    pub attach_path: crate::probes::attach::AttachPath,
}

/// The version of the JSON report's shape, `schema_version` in every report and
/// `schema/diagnosis.schema.json`'s `$id`. Raised when a field is removed, renamed or
/// changes meaning; new optional fields keep it.
pub const SCHEMA_VERSION: u32 = 1;

/// What `diagnose` found: findings first, then the evidence.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    pub detector_version: &'static str,
    pub target: TargetInfo,
    pub probes: ProbeInfo,
    pub findings: Vec<Finding>,
    pub collected: Collected,
    /// Seconds into the window at which the target exited (`diagnose` reports what it
    /// collected until then and exits 8); null while it ran the whole window.
    pub target_exited_after_s: Option<f64>,
}

impl Diagnosis {
    /// The report for `target` from what was collected and judged.
    pub fn new(
        target: &crate::target::Target,
        probes: ProbeInfo,
        findings: Vec<Finding>,
        collected: Collected,
    ) -> Diagnosis {
        let info = target.binary.info();
        Diagnosis {
            schema_version: SCHEMA_VERSION,
            detector_version: env!("CARGO_PKG_VERSION"),
            target: TargetInfo {
                pid: target.pid,
                exe: target.exe_display.clone(),
                go_version: info.go_version_string.clone(),
                stripped: info.stripped,
                pie: info.pie,
                cgo: info.cgo,
            },
            probes,
            findings,
            collected,
            target_exited_after_s: None,
        }
    }
}

/// One runtime function as found in a binary by `inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionReport {
    pub id: crate::apis::Api,
    pub api: &'static str,
    pub symbol: Option<&'static str>,
    /// "found", "missing" or "inlined".
    pub status: &'static str,
    pub address: Option<u64>,
    pub file_offset: Option<u64>,
    pub probe_address: Option<u64>,
    pub probe_file_offset: Option<u64>,
    pub stack_check: Option<bool>,
    pub rets: Option<usize>,
    /// Where the entry probe sits: "after_stack_check", "stack_check_jump" (on the
    /// stack check's JBE; hits bound for morestack are not counted) or "entry" (no
    /// stack check).
    pub probe_on: Option<&'static str>,
    /// The kernel single-steps the probed instruction (each hit costs a second trap,
    /// see docs/overhead.md) rather than emulating it.
    pub single_step: Option<bool>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub binary: BinaryInfo,
    pub functions: Vec<FunctionReport>,
    /// How `diagnose` and `watch` would attach on this kernel (see
    /// [`ProbeInfo::attach_path`]); null when it cannot be told without privileges.
    pub attach_path: Option<crate::probes::attach::AttachPath>,
}
