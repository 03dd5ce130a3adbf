//! The accuracy suite: every catalog case × variant (misuse / fixed) × Go version ×
//! build kind, run live (the `cases` fixture diagnosed by the detector binary), and
//! the confusion matrix of (cell, rule) → finding expected or not.
//!
//! A misuse cell expects its case's rule and nothing else; a fixed cell and the
//! healthy service expect no finding at all. Every rule is judged on every cell, so
//! a rule firing on the wrong case counts as a false positive.
//!
//! The same runs record the rules' golden data ([`record_golden`], `cargo xtask
//! golden`): the `collected` facts of each case × variant, which the unit test
//! detector/src/rules/golden.rs judges again without eBPF, root or Go.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// `-case` value of the fixture → the rule its misuse variant must raise: every rule
/// of detector's rule book names its case, and the healthy service raises nothing.
pub fn cases() -> Vec<(&'static str, Option<&'static str>)> {
    detector::rules::RULES
        .iter()
        .map(|r| (r.fixture_case, Some(r.id)))
        .chain([("healthy", None)])
        .collect()
}

/// Build kinds the matrix covers (cgo builds are covered by the e2e suite).
pub const ACCURACY_KINDS: [&str; 3] = ["default", "stripped", "pie"];

/// How long each cell is diagnosed; the config scales the "longer than a profile
/// window" thresholds to it (tests/accuracy.toml).
pub const WINDOW: &str = "3s";

#[derive(Clone, Debug)]
pub struct Cell {
    pub case: &'static str,
    pub misuse: bool,
    /// Fixture directory name, e.g. "go1.21.13".
    pub go: String,
    pub kind: &'static str,
    pub binary: PathBuf,
}

impl Cell {
    pub fn variant(&self) -> &'static str {
        if self.misuse {
            "misuse"
        } else {
            "fixed"
        }
    }

    pub fn expected(&self) -> Option<&'static str> {
        if !self.misuse {
            return None;
        }
        cases()
            .into_iter()
            .find(|c| c.0 == self.case)
            .and_then(|c| c.1)
    }

    pub fn name(&self) -> String {
        format!("{} {} {} {}", self.case, self.variant(), self.go, self.kind)
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub cell: Cell,
    /// Rules that fired.
    pub fired: BTreeSet<String>,
    /// A run that could not be judged (fixture or detector failed), with why.
    pub error: Option<String>,
    /// Functions whose probes the overhead budget duty-cycled (counts extrapolated).
    pub sampled: BTreeSet<String>,
}

impl Outcome {
    pub fn correct(&self) -> bool {
        self.error.is_none()
            && match self.cell.expected() {
                Some(r) => self.fired.len() == 1 && self.fired.contains(r),
                None => self.fired.is_empty(),
            }
    }
}

/// Every (case, variant) pair: misuse and fixed of each case, healthy once.
fn variants() -> Vec<(&'static str, bool)> {
    cases()
        .into_iter()
        .flat_map(|(case, rule)| {
            if rule.is_some() {
                vec![(case, true), (case, false)]
            } else {
                vec![(case, false)]
            }
        })
        .collect()
}

/// The whole matrix over `versions` (directory name, path) and `kinds`.
pub fn all_cells(versions: &[(String, PathBuf)], kinds: &[&'static str]) -> Vec<Cell> {
    let mut cells = vec![];
    for (go, dir) in versions {
        for kind in kinds {
            for (case, misuse) in variants() {
                cells.push(Cell {
                    case,
                    misuse,
                    go: go.clone(),
                    kind,
                    binary: dir.join(kind).join("cases"),
                });
            }
        }
    }
    cells
}

/// A covering subset for CI: every (case, variant) once, and every Go version and
/// build kind several times. Pair `i` runs on version `i mod V` and kind `i mod K`;
/// both misuse and fixed of one case land on different versions and kinds.
pub fn covering_cells(versions: &[(String, PathBuf)], kinds: &[&'static str]) -> Vec<Cell> {
    variants()
        .into_iter()
        .enumerate()
        .map(|(i, (case, misuse))| {
            let (go, dir) = &versions[i % versions.len()];
            let kind = kinds[i % kinds.len()];
            Cell {
                case,
                misuse,
                go: go.clone(),
                kind,
                binary: dir.join(kind).join("cases"),
            }
        })
        .collect()
}

/// Kills the fixture when dropped, whatever happens to the run.
struct Fixture(std::process::Child);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How detector runs in each cell: its thresholds (TOML) and overhead budget.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config: PathBuf,
    /// `--overhead-budget` in percent of a core (None: detector's default).
    pub budget: Option<f64>,
}

/// Runs one cell: start the fixture, wait for `ready`, diagnose, read the findings.
pub fn run_cell(cell: &Cell, detector: &Path, settings: &Settings) -> Outcome {
    run_cell_json(cell, detector, settings).0
}

/// [`run_cell`], also returning detector's JSON report when it produced one.
pub fn run_cell_json(
    cell: &Cell,
    detector: &Path,
    settings: &Settings,
) -> (Outcome, Option<Value>) {
    let fail = |e: String| {
        let o = Outcome {
            cell: cell.clone(),
            fired: BTreeSet::new(),
            error: Some(e),
            sampled: BTreeSet::new(),
        };
        (o, None)
    };
    let child = Command::new(&cell.binary)
        .args(["-case", cell.case, "-variant", cell.variant()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut fixture = match child {
        Ok(c) => Fixture(c),
        Err(e) => return fail(format!("cannot start {}: {e}", cell.binary.display())),
    };
    let out = fixture.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        return fail("the fixture never printed `ready`".into());
    }
    let pid = fixture.0.id().to_string();
    let started = Instant::now();
    let mut cmd = Command::new(detector);
    cmd.args(["diagnose", "--pid", &pid, "--duration", WINDOW])
        .args(["--format", "json", "--config"])
        .arg(&settings.config);
    if let Some(b) = settings.budget {
        cmd.args(["--overhead-budget", &b.to_string()]);
    }
    let res = cmd.stderr(Stdio::piped()).output();
    let out = match res {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot run {}: {e}", detector.display())),
    };
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && code != 1 {
        return fail(format!(
            "detector exited {code} after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return fail(format!("detector's JSON does not parse: {e}")),
    };
    let fired: BTreeSet<String> = json["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["rule"].as_str().map(str::to_string))
        .collect();
    let sampled: BTreeSet<String> = json["collected"]["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["sampled"].is_number())
        .filter_map(|c| c["func"].as_str().map(str::to_string))
        .collect();
    if (code == 1) == fired.is_empty() {
        return fail(format!(
            "exit code {code} disagrees with {} findings",
            fired.len()
        ));
    }
    let o = Outcome {
        cell: cell.clone(),
        fired,
        error: None,
        sampled,
    };
    (o, Some(json))
}

/// The golden data of a cell: `<dir>/<go>/<case>-<variant>.json`, read by the rules'
/// unit test (detector/src/rules/golden.rs).
pub fn golden_path(dir: &Path, cell: &Cell) -> PathBuf {
    dir.join(&cell.go)
        .join(format!("{}-{}.json", cell.case, cell.variant()))
}

/// Records golden data: runs each cell live and writes the `collected` object of its
/// report, pretty-printed, to [`golden_path`]. A cell whose live findings are not
/// the expected ones (or that fails) is retried once, then left unwritten and
/// reported. Returns the outcomes, in the order of `cells`.
pub fn record_golden(
    cells: &[Cell],
    detector: &Path,
    settings: &Settings,
    dir: &Path,
) -> Vec<Outcome> {
    let mut outcomes = vec![];
    for cell in cells {
        let mut attempt = run_cell_json(cell, detector, settings);
        if !attempt.0.correct() {
            eprintln!("retry {}{}", cell.name(), describe(&attempt.0));
            attempt = run_cell_json(cell, detector, settings);
        }
        let (mut o, json) = attempt;
        let path = golden_path(dir, cell);
        if o.correct() {
            let written = json
                .ok_or_else(|| "no report".to_string())
                .and_then(|j| {
                    // Through the type the rules read, so that the file is known to load.
                    serde_json::from_value::<detector::collect::Collected>(j["collected"].clone())
                        .map_err(|e| format!("`collected` does not deserialise: {e}"))
                })
                .and_then(|c| {
                    let text = serde_json::to_string_pretty(&c).expect("serialisable") + "\n";
                    std::fs::create_dir_all(path.parent().expect("has a parent"))
                        .and_then(|_| std::fs::write(&path, text))
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))
                });
            if let Err(e) = written {
                o.error = Some(e);
            }
        }
        eprintln!(
            "{} {}{}",
            if o.correct() { "wrote" } else { "FAIL " },
            if o.correct() {
                path.display().to_string()
            } else {
                cell.name()
            },
            describe(&o)
        );
        outcomes.push(o);
    }
    outcomes
}

/// Runs cells on `jobs` threads (each cell is one fixture + one detector).
pub fn run_all(cells: &[Cell], detector: &Path, settings: &Settings, jobs: usize) -> Vec<Outcome> {
    let (tx, rx) = mpsc::channel();
    let queue = std::sync::Mutex::new(cells.iter().cloned().enumerate().collect::<Vec<_>>());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            let tx = tx.clone();
            let queue = &queue;
            s.spawn(move || loop {
                let Some((i, cell)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let o = run_cell(&cell, detector, settings);
                eprintln!(
                    "{} {}{}",
                    if o.correct() { "ok  " } else { "FAIL" },
                    cell.name(),
                    describe(&o)
                );
                let _ = tx.send((i, o));
            });
        }
    });
    drop(tx);
    let mut out: Vec<(usize, Outcome)> = rx.into_iter().collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

fn describe(o: &Outcome) -> String {
    if let Some(e) = &o.error {
        return format!(": error: {e}");
    }
    let mut s = String::new();
    if !o.fired.is_empty() {
        s += &format!(
            ": {}",
            o.fired.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if !o.sampled.is_empty() {
        s += &format!(
            " (duty-cycled: {})",
            o.sampled.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    s
}

/// Counts over (cell, rule) pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confusion {
    pub tp: u32,
    pub fp: u32,
    pub tn: u32,
    pub r#fn: u32,
}

impl Confusion {
    pub fn perfect(&self) -> bool {
        self.fp == 0 && self.r#fn == 0
    }
}

/// Every rule the matrix knows.
fn rule_ids() -> Vec<&'static str> {
    cases().into_iter().filter_map(|c| c.1).collect()
}

pub fn confusion(outcomes: &[Outcome]) -> (Confusion, BTreeMap<&'static str, Confusion>) {
    let mut total = Confusion::default();
    let mut per_rule: BTreeMap<&'static str, Confusion> = BTreeMap::new();
    for o in outcomes {
        for rule in rule_ids() {
            let expected = o.cell.expected() == Some(rule);
            // An errored run counts as "did not fire": a miss when one was expected.
            let fired = o.error.is_none() && o.fired.contains(rule);
            let c = per_rule.entry(rule).or_default();
            for c in [c, &mut total] {
                match (expected, fired) {
                    (true, true) => c.tp += 1,
                    (true, false) => c.r#fn += 1,
                    (false, true) => c.fp += 1,
                    (false, false) => c.tn += 1,
                }
            }
        }
    }
    (total, per_rule)
}

/// The printed report: per-rule confusion, per (case, variant) the versions and
/// kinds that went wrong, and the total.
pub fn render(outcomes: &[Outcome]) -> String {
    let (total, per_rule) = confusion(outcomes);
    let mut o = String::new();
    let versions: BTreeSet<&str> = outcomes.iter().map(|o| o.cell.go.as_str()).collect();
    let kinds: BTreeSet<&str> = outcomes.iter().map(|o| o.cell.kind).collect();
    let _ = writeln!(
        o,
        "accuracy: {} runs over {} Go versions ({}) and {} build kinds ({}), window {WINDOW}",
        outcomes.len(),
        versions.len(),
        versions.iter().cloned().collect::<Vec<_>>().join(", "),
        kinds.len(),
        kinds.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  {:<28} {:>5} {:>5} {:>5} {:>6}   (over every run: expected = misuse of its case)",
        "rule", "TP", "FN", "FP", "TN"
    );
    for (rule, c) in &per_rule {
        let _ = writeln!(
            o,
            "  {:<28} {:>5} {:>5} {:>5} {:>6}{}",
            rule,
            c.tp,
            c.r#fn,
            c.fp,
            c.tn,
            if c.perfect() { "" } else { "   <-" }
        );
    }
    let _ = writeln!(
        o,
        "  {:<28} {:>5} {:>5} {:>5} {:>6}",
        "total", total.tp, total.r#fn, total.fp, total.tn
    );
    let cycled: Vec<&Outcome> = outcomes.iter().filter(|o| !o.sampled.is_empty()).collect();
    let _ = writeln!(
        o,
        "\n{} runs had probes duty-cycled by the overhead budget{}",
        cycled.len(),
        if cycled.is_empty() { "" } else { ":" }
    );
    for c in &cycled {
        let _ = writeln!(
            o,
            "  {}: {}",
            c.cell.name(),
            c.sampled.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let wrong: Vec<&Outcome> = outcomes.iter().filter(|o| !o.correct()).collect();
    let _ = writeln!(o);
    if wrong.is_empty() {
        let _ = writeln!(o, "every run gave exactly the expected findings");
    } else {
        let _ = writeln!(o, "{} runs went wrong:", wrong.len());
        for w in wrong {
            let _ = writeln!(
                o,
                "  {} (expected {}){}",
                w.cell.name(),
                w.cell.expected().unwrap_or("nothing"),
                if describe(w).is_empty() {
                    ": nothing fired".to_string()
                } else {
                    describe(w)
                }
            );
        }
    }
    o
}
