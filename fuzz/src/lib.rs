//! What the fuzz targets run on every Go binary the parser accepts, besides the
//! parser's own queries: detector's use of the analysis (the JSON of `inspect` and the
//! probe plan of `diagnose`, which finds the probe point of every catalog function).
use detector::gobin::{version::NEWEST_TESTED, GoBinary};

/// The [`detector_gobin::fuzzing::Hook`] of the `pclntab`, `symtab` and `elf` targets.
pub fn detector(bin: &GoBinary) {
    let info = bin.info();
    let _ = serde_json::to_string(info);
    let version = info.go_version.unwrap_or(NEWEST_TESTED);
    let _ = detector::probes::plan::plan(bin, version);
}
