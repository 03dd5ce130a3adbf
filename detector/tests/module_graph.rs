//! Data flows one way through detector's modules: each module uses only the modules
//! before it in [`LAYERS`] (discover → analyse → plan → attach → collect → judge →
//! report/export). This test reads the sources and fails on a use that goes back up,
//! so an import cycle cannot creep in. `cargo test --test module_graph -- --nocapture`
//! prints the graph.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The top-level modules of `detector/src`, lowest first.
const LAYERS: &[&str] = &[
    "exit",     // exit codes: a leaf
    "gobin",    // the Go binary parser (the detector-gobin crate, re-exported)
    "apis",     // the table of probed APIs
    "target",   // the process and its binary
    "probes",   // plan, attach, duty cycle
    "collect",  // kernel maps into facts
    "rules",    // facts into findings
    "report",   // findings and facts into text and JSON
    "session",  // the loop that ticks probes into samples
    "watch",    // the daemon and its exports
    "cmd",      // the subcommands
    "generate", // man pages and completions from the subcommands' definitions
];

/// The top-level modules named after `crate::` in `text`, including every name of a
/// `use crate::{a::.., b, ..}` group.
fn used_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at depth 0 of the group: each starts after `{` or `,`.
            let mut depth = 0;
            let mut at_name = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_name = true,
                    c if at_name && (c.is_ascii_alphabetic() || c == '_') => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        at_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

fn sources(path: &Path, out: &mut String) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            sources(&e.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(&fs::read_to_string(path).unwrap());
    }
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut found = BTreeSet::new();
    for e in fs::read_dir(&src).unwrap().flatten() {
        let name = e.path().file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        found.insert(name.clone());
        let layer = LAYERS
            .iter()
            .find(|l| **l == name)
            .unwrap_or_else(|| panic!("module `{name}` is not in LAYERS: place it there"));
        let mut text = String::new();
        sources(&e.path(), &mut text);
        let mut used = used_modules(&text);
        used.remove(*layer);
        graph.insert(layer, used);
    }
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = vec![];
    for (m, used) in &graph {
        println!(
            "{m:>8} -> {}",
            used.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        for u in used {
            match rank(u) {
                Some(r) if r < rank(m).unwrap() => {}
                Some(_) => wrong.push(format!("{m} uses {u}, a later layer")),
                None => wrong.push(format!("{m} uses crate::{u}, which is in no layer")),
            }
        }
    }
    assert!(
        found.len() >= 10,
        "read {} modules from {}: the test is not looking at the sources",
        found.len(),
        src.display()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_parser_sees_groups_and_paths() {
    let used = used_modules(
        "use crate::{\n    apis::{Api, X},\n    collect,\n};\nfn f() { crate::exit::Code::Other; }",
    );
    let want: BTreeSet<String> = ["apis", "collect", "exit"].map(String::from).into();
    assert_eq!(used, want);
}
