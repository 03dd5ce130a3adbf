//! `cargo xtask accuracy`: runs the accuracy matrix and prints its confusion matrix.
//!
//!   accuracy [--quick] [--jobs N] [--go SUBSTR]... [--kind KIND]... [--case CASE]...
//!            [--overhead-budget PERCENT] [--record-golden DIR]
//!
//! Without --quick every case × variant × Go version × build kind runs; --quick runs
//! the covering subset CI runs. Exits 1 unless the matrix is perfect.
//!
//! --record-golden DIR (`cargo xtask golden`) records the rules' golden data instead:
//! every selected case × variant on the default build kind, each run's `collected`
//! object written to DIR/<go>/<case>-<variant>.json (see accuracy::record_golden).
//! Exits 1 unless every file was written.
use std::{path::Path, process::ExitCode};

use detector_tests::{
    accuracy::{self, ACCURACY_KINDS},
    detector_bin, fixtures_root, require_bpf_privileges, versions,
};

fn main() -> ExitCode {
    let mut quick = false;
    let mut jobs = 1;
    let mut gos: Vec<String> = vec![];
    let mut kinds: Vec<String> = vec![];
    let mut cases: Vec<String> = vec![];
    let mut budget: Option<f64> = None;
    let mut golden: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--quick" => quick = true,
            "--jobs" => jobs = value().parse().unwrap_or(1),
            "--go" => gos.push(value()),
            "--kind" => kinds.push(value()),
            "--case" => cases.push(value()),
            "--record-golden" => golden = Some(value().into()),
            "--overhead-budget" => match value().parse() {
                Ok(b) => budget = Some(b),
                Err(_) => {
                    eprintln!("accuracy: --overhead-budget takes a percentage");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("accuracy: unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    require_bpf_privileges();
    let detector = detector_bin();
    let settings = accuracy::Settings {
        config: Path::new(env!("CARGO_MANIFEST_DIR")).join("accuracy.toml"),
        budget,
    };
    let vs: Vec<(String, std::path::PathBuf)> = versions("cases")
        .into_iter()
        .filter(|(_, name, _)| gos.is_empty() || gos.iter().any(|g| name.contains(g.as_str())))
        .map(|(_, name, p)| (name, p))
        .collect();
    let ks: Vec<&'static str> = ACCURACY_KINDS
        .iter()
        .copied()
        .filter(|k| kinds.is_empty() || kinds.iter().any(|x| x == k))
        .filter(|k| golden.is_none() || *k == "default")
        .collect();
    let mut cells = if quick {
        accuracy::covering_cells(&vs, &ks)
    } else {
        accuracy::all_cells(&vs, &ks)
    };
    cells.retain(|c| cases.is_empty() || cases.iter().any(|x| x == c.case));
    eprintln!(
        "accuracy: {} runs from {}, {} at a time",
        cells.len(),
        fixtures_root().display(),
        jobs
    );
    if let Some(dir) = golden {
        let outcomes = accuracy::record_golden(&cells, &detector, &settings, &dir);
        let failed = outcomes.iter().filter(|o| !o.correct()).count();
        eprintln!(
            "golden: {} of {} files written under {}",
            outcomes.len() - failed,
            outcomes.len(),
            dir.display()
        );
        return if failed == 0 && !outcomes.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let outcomes = accuracy::run_all(&cells, &detector, &settings, jobs);
    print!("{}", accuracy::render(&outcomes));
    if outcomes.iter().all(|o| o.correct()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
