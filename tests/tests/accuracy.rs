//! The accuracy matrix on the covering subset (every case × variant once; every Go
//! version and build kind several times), live, as root. It must be perfect: each
//! misuse raises exactly its rule, each fixed variant and the healthy service raise
//! nothing. `cargo xtask accuracy` runs the full matrix.
use std::path::Path;

use detector_tests::{
    accuracy::{self, ACCURACY_KINDS},
    detector_bin, require_bpf_privileges, versions,
};

/// The budget the subset runs with (percent of a core).
const TIGHT_BUDGET_PERCENT: f64 = 0.05;
/// Runs that must have had a probe duty-cycled at that budget.
const MIN_CYCLED_RUNS: usize = 3;

#[test]
fn accuracy_matrix_is_perfect_on_the_covering_subset() {
    require_bpf_privileges();
    let detector = detector_bin();
    // A budget far below the default (1 % of a core) makes detector duty-cycle the
    // hot probes of several cases, so the subset also proves that findings survive
    // sampling and extrapolation (at 1 % the fixtures' rates never trigger it).
    let settings = accuracy::Settings {
        config: Path::new(env!("CARGO_MANIFEST_DIR")).join("accuracy.toml"),
        budget: Some(TIGHT_BUDGET_PERCENT),
    };
    let vs: Vec<_> = versions("cases")
        .into_iter()
        .map(|(_, name, p)| (name, p))
        .collect();
    let cells = accuracy::covering_cells(&vs, &ACCURACY_KINDS);
    // Every version and kind is covered at least once.
    for (go, _) in &vs {
        assert!(cells.iter().any(|c| &c.go == go), "{go} not covered");
    }
    for k in ACCURACY_KINDS {
        assert!(cells.iter().any(|c| c.kind == k), "{k} not covered");
    }
    let outcomes = accuracy::run_all(&cells, &detector, &settings, 1);
    let report = accuracy::render(&outcomes);
    println!("{report}");
    assert!(outcomes.iter().all(|o| o.correct()), "{report}");
    let cycled = outcomes.iter().filter(|o| !o.sampled.is_empty()).count();
    assert!(
        cycled >= MIN_CYCLED_RUNS,
        "only {cycled} runs had a probe duty-cycled at --overhead-budget {TIGHT_BUDGET_PERCENT}: \
         the subset no longer exercises the budget\n{report}"
    );
}
