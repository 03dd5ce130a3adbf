//! The accuracy matrix on the covering subset (every case × variant once; every Go
//! version and build kind several times), live, as root. It must be perfect: each
//! misuse raises exactly its rule, each fixed variant and the healthy service raise
//! nothing. `cargo xtask accuracy` runs the full matrix.
use std::path::Path;

use detector_tests::{
    accuracy::{self, ACCURACY_KINDS},
    detector_bin, require_bpf_privileges, versions,
};

#[test]
fn accuracy_matrix_is_perfect_on_the_covering_subset() {
    require_bpf_privileges();
    let detector = detector_bin();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("accuracy.toml");
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
    let outcomes = accuracy::run_all(&cells, &detector, &config, 1);
    let report = accuracy::render(&outcomes);
    println!("{report}");
    assert!(outcomes.iter().all(|o| o.correct()), "{report}");
}
