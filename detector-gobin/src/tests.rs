//! Unit tests of the whole parser on garbage and damaged input, and of the inline
//! tree and call decoding against the fixtures of every Go version and build kind.
//!
//! The fixtures are the Go programs of `tests/fixtures` built by `cargo xtask fixtures`
//! with every supported toolchain, found under `$DETECTOR_FIXTURES` (set by `cargo
//! xtask test`) or `target/fixtures`. A test that needs them fails when they are
//! missing, never skips. The damage tests also run on small real Go binaries that are
//! committed (the fuzz seeds), so their deep paths are checked without fixtures too.
use std::collections::HashSet;

use super::*;

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The fixtures the damage tests start from: a static binary, and a PIE from a Go
/// (1.26+) whose text base is only in moduledata.
const DAMAGE_SAMPLES: [(&str, &str); 2] = [("go1.22.10", "default"), ("go1.26.6", "pie")];

/// The bytes of the `allapis` fixture of `version`/`kind`, checked to parse as a Go
/// binary; fails (never skips) when the fixtures were not built.
fn fixture_bytes(version: &str, kind: &str) -> Vec<u8> {
    let path = fixtures_root().join(version).join(kind).join("allapis");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{MISSING_FIXTURES} ({}: {e})", path.display()));
    if let Err(e) = GoBinary::parse(bytes.clone()) {
        panic!("{}: {e}", path.display());
    }
    bytes
}

/// The committed corpus directory of one fuzz target (`fuzz/corpus/<target>`).
fn corpus_dir(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The committed seeds of one fuzz target, by file name (`seed-*`; at least one).
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .map(|p| {
            let name = format!("{target}/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read(&p).expect("read seed"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seed-* file in {}", dir.display());
    out
}

/// Small Go binaries that need no fixture, each checked to parse: the committed `elf`
/// seeds (real stripped Go 1.19 and 1.27 programs) and the committed `pclntab` seeds
/// (real tables cut down to 48 functions) in an executable built by the fuzzing ELF
/// builder.
fn committed_go_binaries() -> Vec<(String, Vec<u8>)> {
    let mut out = seeds("elf");
    for (name, table) in seeds("pclntab") {
        let tab = pclntab::Pclntab::parse(&table, 0, fuzzing::INPUT_VADDR)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        out.push((name, fuzzing::pclntab_executable(&table, &tab)));
    }
    for (name, bytes) in &out {
        match GoBinary::parse(bytes.clone()) {
            Ok(bin) => assert!(bin.info().function_count >= 32, "{name}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    out
}

/// Uses every query of a parsed binary on a few functions.
fn exercise(bin: &GoBinary, rng: &mut Rng) {
    let n = bin.info().function_count;
    let funcs: Vec<Func> = bin.funcs().collect();
    assert_eq!(funcs.len(), n);
    for _ in 0..20 {
        if funcs.is_empty() {
            break;
        }
        let f = &funcs[rng.below(funcs.len())];
        let _ = bin.probe_point(f);
        let _ = bin.file_line(f.entry);
        let _ = bin.func_at(f.entry);
        let _ = bin.func_by_name(&f.name);
        let _ = bin.file_offset(f.entry);
        let _ = bin.call_targets(f);
    }
    if rng.below(4) == 0 {
        let _ = bin.inlined_calls("runtime.NumGoroutine");
    }
    let _ = bin.read_bytes_at(u64::MAX - 2, 10);
}

#[test]
fn random_bytes_are_rejected() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for len in [0usize, 1, 4, 16, 64, 100, 4096] {
        let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(matches!(GoBinary::parse(v), Err(AnalysisError::NotElf)));
    }
    // An ELF header followed by garbage.
    for _ in 0..200 {
        let mut v: Vec<u8> = (0..rng.below(8192)).map(|_| rng.next() as u8).collect();
        let head = [0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        for (i, b) in head.iter().enumerate() {
            if let Some(x) = v.get_mut(i) {
                *x = *b;
            }
        }
        if let Some(x) = v.get_mut(18) {
            *x = 62; // EM_X86_64
        }
        if let Some(x) = v.get_mut(19) {
            *x = 0;
        }
        assert!(GoBinary::parse(v).is_err());
    }
}

#[test]
fn wrong_machine_is_named() {
    let mut v = vec![0u8; 64];
    v[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
    v[6] = 1;
    v[18] = 183; // EM_AARCH64
    let e = GoBinary::parse(v).unwrap_err();
    assert!(
        matches!(e, AnalysisError::NotAmd64 { ref machine } if machine == "arm64"),
        "{e}"
    );
    let mut v32 = vec![0u8; 52];
    v32[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1]);
    v32[18] = 3; // EM_386
    assert!(matches!(
        GoBinary::parse(v32),
        Err(AnalysisError::NotAmd64 { .. })
    ));
}

#[test]
fn too_many_segments_is_a_named_limit() {
    let n = limits::MAX_LOAD_SEGMENTS + 1;
    let mut v = vec![0u8; 64 + n * 56];
    v[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    v[16] = 2; // ET_EXEC
    v[18] = 62; // EM_X86_64
    v[20] = 1;
    v[32] = 64; // e_phoff
    v[52] = 64; // e_ehsize
    v[54] = 56; // e_phentsize
    v[56..58].copy_from_slice(&(n as u16).to_le_bytes());
    for i in 0..n {
        v[64 + i * 56] = 1; // PT_LOAD
    }
    let e = GoBinary::parse(v.clone()).unwrap_err();
    assert!(
        matches!(e, AnalysisError::LimitExceeded(ref l) if l.limit == "MAX_LOAD_SEGMENTS"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "corrupt or hostile binary: number of PT_LOAD segments is 33, above detector's limit MAX_LOAD_SEGMENTS = 32"
    );
    // One fewer is within the limit (and then simply not a Go binary).
    v[56..58].copy_from_slice(&((n - 1) as u16).to_le_bytes());
    assert!(matches!(GoBinary::parse(v), Err(AnalysisError::NotGo)));
}

#[test]
fn truncated_binaries_fail_cleanly() {
    let full = fixture_bytes("go1.22.10", "default");
    let mut rng = Rng(7);
    let mut cuts: Vec<usize> = (0..40).map(|_| rng.below(full.len())).collect();
    cuts.extend([
        0,
        1,
        63,
        64,
        65,
        4096,
        full.len() / 2,
        full.len().saturating_sub(1),
    ]);
    for cut in cuts {
        // Section headers live at the end of the file, so any cut loses them; the
        // parser may still find the tables by scanning, but must never panic.
        if let Ok(bin) = GoBinary::parse(full[..cut].to_vec()) {
            exercise(&bin, &mut rng);
        }
    }
}

/// Flips bytes of the Go binary `full` (`name`), mostly inside the pclntab where the
/// parser goes deep, and uses every query of each damaged copy that still parses.
/// Returns how many did: a run where none did checked nothing deep.
fn mutate_and_exercise(name: &str, full: &[u8], rounds: usize, seed: u64) -> usize {
    let bin = GoBinary::parse(full.to_vec()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tab_start = bin.pcln.file_offset;
    let tab_len = bin.pcln.len;
    drop(bin);
    let mut rng = Rng(seed);
    let mut accepted = 0;
    for round in 0..rounds {
        let mut v = full.to_vec();
        let flips = 1 + rng.below(8);
        for _ in 0..flips {
            let at = if round % 3 == 0 {
                rng.below(v.len())
            } else {
                tab_start + rng.below(tab_len.min(4096 * (1 + round)))
            };
            if let Some(b) = v.get_mut(at) {
                *b = rng.next() as u8;
            }
        }
        if let Ok(bin) = GoBinary::parse(v) {
            exercise(&bin, &mut rng);
            accepted += 1;
        }
    }
    assert!(
        accepted > 0,
        "{name}: none of {rounds} mutated copies parsed, so no query ran on damaged tables"
    );
    accepted
}

#[test]
fn mutated_binaries_never_panic() {
    for (version, kind) in DAMAGE_SAMPLES {
        let full = fixture_bytes(version, kind);
        mutate_and_exercise(&format!("{version}/{kind}"), &full, 150, 0xdead_beef);
    }
}

/// The same on small Go binaries that are committed: runs without fixtures.
#[test]
fn mutated_small_go_binaries_never_panic() {
    for (i, (name, full)) in committed_go_binaries().iter().enumerate() {
        mutate_and_exercise(name, full, 100, 0xdead_beef + i as u64);
    }
}

/// The fixture versions and build kinds the inline-tree and call tests cover.
const FIXTURE_VERSIONS: [&str; 8] = [
    "go1.19.8",
    "go1.21.13",
    "go1.22.10",
    "go1.23.9",
    "go1.24.11",
    "go1.25.5",
    "go1.26.6",
    "go1.27.3",
];
const FIXTURE_KINDS: [&str; 4] = ["default", "stripped", "pie", "cgo"];
const MISSING_FIXTURES: &str = "fixtures missing: run `cargo xtask fixtures`";

fn fixtures_root() -> std::path::PathBuf {
    match std::env::var_os("DETECTOR_FIXTURES") {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"),
    }
}

/// The `allapis` fixture of `version`/`kind`, parsed; fails (never skips) when missing.
fn allapis(version: &str, kind: &str) -> GoBinary {
    let path = fixtures_root().join(version).join(kind).join("allapis");
    assert!(
        path.is_file(),
        "{MISSING_FIXTURES} ({} is missing)",
        path.display()
    );
    GoBinary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The source of the `allapis` fixture.
fn allapis_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/allapis/main.go");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The 1-based line of `source` containing `needle`, which must occur on one line.
fn line_of(source: &str, needle: &str) -> u32 {
    let lines: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{needle} should be on exactly one line of main.go"
    );
    lines[0] as u32
}

/// Start address of every instruction of `f`, decoding linearly from its entry.
fn instruction_starts(bin: &GoBinary, f: &Func) -> HashSet<u64> {
    let code = bin
        .read_bytes_at(f.entry, (f.end - f.entry) as usize)
        .expect("function bytes");
    let mut decoder = iced_x86::Decoder::with_ip(64, code, f.entry, iced_x86::DecoderOptions::NONE);
    let mut starts = HashSet::new();
    for ins in &mut decoder {
        starts.insert(ins.ip());
    }
    starts
}

/// The address `go tool nm` gives `symbol` in the listing next to a fixture.
fn nm_address(version: &str, kind: &str, symbol: &str) -> Option<u64> {
    let path = fixtures_root().join(version).join(kind).join("allapis.nm");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{MISSING_FIXTURES} ({}: {e})", path.display()));
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        let addr = parts.next()?;
        let _kind = parts.next()?;
        (parts.next()? == symbol).then(|| u64::from_str_radix(addr, 16).ok())?
    })
}

/// Checks the inlined calls of `callee` in one fixture and returns them all.
fn check_inlined(
    version: &str,
    kind: &str,
    bin: &GoBinary,
    callee: &str,
    needle: &str,
) -> Vec<InlinedCall> {
    let what = format!("{version}/{kind} {callee}");
    let line = line_of(&allapis_source(), needle);
    let main = bin.func_by_name("main.main").expect("main.main");
    // The file main.main is in: allapis/main.go (or the copy the fixture was built from).
    let (main_file, _) = bin.file_line(main.entry).expect("file of main.main");
    assert!(main_file.ends_with("/main.go"), "{what}: {main_file}");
    let calls = bin.inlined_calls(callee);
    let hits: Vec<&InlinedCall> = calls
        .iter()
        .filter(|c| {
            c.caller.starts_with("main.")
                && c.parent.starts_with("main.")
                && c.call_file == main_file
                && c.call_line == line
        })
        .collect();
    assert!(
        !hits.is_empty(),
        "{what}: no inlined call from main at {main_file}:{line}; found {calls:#x?}"
    );
    for c in &calls {
        let f = bin
            .func_by_name(&c.caller)
            .unwrap_or_else(|| panic!("{what}: caller {} not found", c.caller));
        assert!(!c.ranges.is_empty(), "{what}: {c:x?}");
        let starts = instruction_starts(bin, &f);
        for &(s, e) in &c.ranges {
            assert!(
                f.entry <= s && s < e && e <= f.end,
                "{what}: range outside {f:x?}: {c:x?}"
            );
            assert!(
                starts.contains(&s),
                "{what}: range start {s:#x} is not an instruction"
            );
        }
        assert!(
            f.entry <= c.probe_vaddr && c.probe_vaddr < f.end,
            "{what}: probe outside {f:x?}: {c:x?}"
        );
        assert!(
            c.ranges
                .iter()
                .any(|&(s, e)| s <= c.probe_vaddr && c.probe_vaddr < e),
            "{what}: probe not in the inlined body: {c:x?}"
        );
        assert!(
            starts.contains(&c.probe_vaddr),
            "{what}: probe {:#x} is not an instruction boundary of {}",
            c.probe_vaddr,
            f.name
        );
        assert_eq!(
            bin.file_offset(c.probe_vaddr),
            Some(c.probe_file_offset),
            "{what}"
        );
    }
    calls
}

#[test]
fn inlined_calls_in_every_fixture() {
    let apis = [
        ("runtime.NumGoroutine", "runtime.NumGoroutine("),
        (
            "runtime.SetMutexProfileFraction",
            "runtime.SetMutexProfileFraction(",
        ),
    ];
    for version in FIXTURE_VERSIONS {
        let mut by_kind: Vec<(&str, Vec<Vec<InlinedCall>>)> = Vec::new();
        for kind in FIXTURE_KINDS {
            let bin = allapis(version, kind);
            let base = bin.funcdata_base();
            assert!(base.is_some(), "{version}/{kind}: no moduledata.gofunc");
            if kind != "stripped" {
                let sym = if version == "go1.19.8" {
                    "go.func.*"
                } else {
                    "go:func.*"
                };
                assert_eq!(
                    base,
                    nm_address(version, kind, sym),
                    "{version}/{kind}: gofunc vs nm {sym}"
                );
            }
            let calls = apis
                .iter()
                .map(|(callee, needle)| check_inlined(version, kind, &bin, callee, needle))
                .collect();
            by_kind.push((kind, calls));
        }
        let get = |k: &str| &by_kind.iter().find(|(kind, _)| *kind == k).expect("kind").1;
        assert_eq!(
            get("default"),
            get("stripped"),
            "{version}: default and stripped differ"
        );
    }
}

#[test]
fn direct_calls_in_every_fixture() {
    for version in FIXTURE_VERSIONS {
        for kind in FIXTURE_KINDS {
            let what = format!("{version}/{kind}");
            let bin = allapis(version, kind);
            let main = bin.func_by_name("main.main").expect("main.main");
            let read = bin
                .func_by_name("runtime.ReadMemStats")
                .expect("runtime.ReadMemStats");
            let targets = bin.call_targets(&main);
            assert!(targets.contains(&read.entry), "{what}: {targets:x?}");
            // Direct calls go to function entries (except into Duff's devices), each once.
            for t in &targets {
                let f = bin
                    .func_at(*t)
                    .unwrap_or_else(|| panic!("{what}: {t:#x} not in a function"));
                if f.name != "runtime.duffzero" && f.name != "runtime.duffcopy" {
                    assert_eq!(f.entry, *t, "{what}: call into the middle of {}", f.name);
                }
            }
            let unique: HashSet<&u64> = targets.iter().collect();
            assert_eq!(unique.len(), targets.len(), "{what}: duplicates");
            // In instruction order: main calls ReadMemStats, then GC, on a straight path.
            let names = bin.called_functions("main.main");
            let pos = |n: &str| names.iter().position(|x| x == n);
            let (Some(r), Some(g)) = (pos("runtime.ReadMemStats"), pos("runtime.GC")) else {
                panic!("{what}: {names:?}");
            };
            assert!(r < g, "{what}: {names:?}");
            // Always-inlined functions are never called directly.
            assert!(!names.iter().any(|n| n == "runtime.NumGoroutine"), "{what}");
            assert!(bin.called_functions("no.such.function").is_empty());
        }
    }
}

/// Damages main.main's inline tree, its InlTreeIndex table and its `_func` in the
/// fixtures (the committed small binaries have no inlined calls in main.main), and
/// uses the inline queries on every damaged copy that still parses.
#[test]
fn damaged_inline_trees_never_panic() {
    // Go 1.19's inlinedCall has another layout than 1.20+'s.
    for (version, kind) in [("go1.19.8", "default")].into_iter().chain(DAMAGE_SAMPLES) {
        damage_inline_tree(&format!("{version}/{kind}"), &fixture_bytes(version, kind));
    }
}

fn damage_inline_tree(name: &str, full: &[u8]) {
    let bin = GoBinary::parse(full.to_vec()).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Where main.main's inline tree and its InlTreeIndex table are in the file.
    let main = bin.func_by_name("main.main").expect("main.main");
    let rec = *bin.rec_at(main.entry).expect("main.main record");
    let tab = bin.tab();
    let tree = bin
        .pcln
        .funcdata_off(tab, &rec, inline::FUNCDATA_INL_TREE)
        .and_then(|off| bin.funcdata_base()?.checked_add(u64::from(off)))
        .and_then(|v| bin.file_offset(v))
        .expect("main.main has an inline tree") as usize;
    let table = bin
        .pcln
        .pcdata_table(tab, &rec, inline::PCDATA_INL_TREE_INDEX)
        .expect("InlTreeIndex");
    let table = bin.pcln.file_offset + (table.as_ptr() as usize - tab.as_ptr() as usize);
    let func = bin.pcln.file_offset + rec.func_off;
    let before = bin.inlined_calls("runtime.NumGoroutine");
    assert!(!before.is_empty(), "{name}: NumGoroutine not inlined");
    drop(bin);
    let mut rng = Rng(0x1234_5678);
    let (rounds, mut accepted, mut found) = (60, 0, 0);
    for round in 0..rounds {
        let mut v = full.to_vec();
        let region = [tree, table, func][round % 3];
        for _ in 0..1 + rng.below(6) {
            if let Some(b) = v.get_mut(region + rng.below(256)) {
                *b = rng.next() as u8;
            }
        }
        if let Ok(bin) = GoBinary::parse(v) {
            for callee in [
                "runtime.NumGoroutine",
                "runtime.SetMutexProfileFraction",
                "runtime.gcount",
            ] {
                for c in bin.inlined_calls(callee) {
                    assert!(!c.ranges.is_empty(), "{name}: {c:x?}");
                    assert_eq!(
                        bin.file_offset(c.probe_vaddr),
                        Some(c.probe_file_offset),
                        "{name}"
                    );
                    found += 1;
                }
            }
            let _ = bin.called_functions("main.main");
            accepted += 1;
        }
    }
    // Most damage leaves the binary parseable (the inline tree is only read by these
    // queries), and some leaves inlined calls to check.
    assert!(
        accepted > 0 && found > 0,
        "{name}: {accepted} of {rounds} damaged copies parsed, {found} inlined calls found; nothing was checked"
    );
}

#[test]
fn nested_inlined_calls_name_their_parent() {
    for version in FIXTURE_VERSIONS {
        let bin = allapis(version, "default");
        let outer = bin.inlined_calls("runtime.NumGoroutine");
        let inner = bin.inlined_calls("runtime.gcount");
        // NumGoroutine is `return int(gcount())`: in main.main, gcount is inlined into
        // the inlined NumGoroutine.
        let Some(c) = inner
            .iter()
            .find(|c| c.caller == "main.main" && c.parent == "runtime.NumGoroutine")
        else {
            panic!("{version}: gcount not inlined into NumGoroutine in main.main: {inner:#x?}");
        };
        assert!(
            c.call_file.ends_with("runtime/debug.go"),
            "{version}: {c:x?}"
        );
        // The call site is a line of the toolchain's own debug.go that calls gcount.
        let src = std::fs::read_to_string(&c.call_file).unwrap_or_else(|e| {
            panic!(
                "{version}: Go sources missing ({}: {e}); run `cargo xtask fixtures`",
                c.call_file
            )
        });
        let line = src
            .lines()
            .nth(c.call_line as usize - 1)
            .unwrap_or_default();
        assert!(
            line.contains("gcount("),
            "{version}: {}:{}: {line}",
            c.call_file,
            c.call_line
        );
        // Its code is part of the enclosing NumGoroutine instance.
        let parent = outer
            .iter()
            .find(|o| o.caller == "main.main")
            .expect("NumGoroutine in main.main");
        for &(s, e) in &c.ranges {
            assert!(
                parent.ranges.iter().any(|&(ps, pe)| ps <= s && e <= pe),
                "{version}: {c:x?} not within {parent:x?}"
            );
        }
    }
}

#[test]
fn gofunc_found_without_build_info_version() {
    // Without a version (no build info) the moduledata layout is guessed and checked
    // against the inline trees; the guess must land on the same address.
    for version in FIXTURE_VERSIONS {
        for kind in ["stripped", "pie"] {
            let mut bin = allapis(version, kind);
            let expected = bin.funcdata_base();
            assert!(expected.is_some(), "{version}/{kind}");
            bin.info.go_version = None;
            bin.gofunc = inline::GofuncCell::new();
            assert_eq!(bin.funcdata_base(), expected, "{version}/{kind}");
        }
    }
}
