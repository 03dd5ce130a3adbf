//! Binary analysis (`detector::gobin`, the detector-gobin crate) against real Go
//! binaries: every Go version and build kind of the `allapis` fixture, checked against
//! `go tool nm`.
//!
//! Fixtures come from `cargo xtask fixtures` (root `target/fixtures`, or
//! `$DETECTOR_FIXTURES`): `go<version>/<kind>/allapis` plus `allapis.nm` next to the
//! default, pie and cgo builds. Missing fixtures fail the tests; they are never skipped.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use detector::apis::Api;
use detector::gobin::{AnalysisError, GoBinary, GoVersion, ProbePoint};
use detector_tests::{KINDS, MISSING};

const FIXTURE: &str = "allapis";

fn versions() -> Vec<(GoVersion, String, PathBuf)> {
    detector_tests::versions(FIXTURE)
}

fn read_nm(path: &Path) -> HashMap<String, Vec<u64>> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{MISSING} ({}: {e})", path.display()));
    let mut map: HashMap<String, Vec<u64>> = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind != "T" && kind != "t" {
            continue;
        }
        let name = parts.collect::<Vec<_>>().join(" ");
        if let Ok(a) = u64::from_str_radix(addr, 16) {
            map.entry(name).or_default().push(a);
        }
    }
    map
}

/// Address of a data symbol (D/d/B/b) in a `go tool nm` listing.
fn nm_data_symbol(path: &Path, name: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        let (addr, kind, sym) = (parts.next()?, parts.next()?, parts.next()?);
        (matches!(kind, "D" | "d" | "B" | "b") && sym == name)
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })
}

/// Every function symbol of the API table (`detector::apis`) for Go `v`, with the
/// table's `nosplit` flag: each must be in every fixture, where `go tool nm` puts it.
fn catalog_symbols(v: GoVersion) -> Vec<(&'static str, bool)> {
    Api::ALL
        .iter()
        .filter_map(|a| a.presence(v).symbol().map(|s| (s, a.nosplit())))
        .collect()
}

/// The probe point is the prologue's JBE (when it says so), else the file bytes before
/// it are the prologue's conditional jump.
fn assert_jump_precedes(file: &[u8], p: &ProbePoint, what: &str) {
    let off = p.probe_file_offset as usize;
    if p.on_stack_check_jump {
        let jbe = file[off] == 0x76 || (file[off] == 0x0f && file[off + 1] == 0x86);
        assert!(jbe, "{what}: no JBE at file offset {off:#x}");
        return;
    }
    let short = off >= 2 && matches!(file[off - 2], 0x70..=0x7f);
    let near = off >= 6 && file[off - 6] == 0x0f && matches!(file[off - 5], 0x80..=0x8f);
    assert!(short || near, "{what}: no Jcc before file offset {off:#x}");
}

fn check_fixture(version: GoVersion, dir_name: &str, dir: &Path, kind: &str) -> usize {
    let path = dir.join(kind).join(FIXTURE);
    let what = format!("{dir_name}/{kind}");
    let bin = GoBinary::open(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
    let file = fs::read(&path).unwrap();
    let info = bin.info();

    assert_eq!(info.go_version_string, dir_name, "{what}: version string");
    assert_eq!(info.go_version, Some(version), "{what}");
    assert_eq!(info.stripped, kind == "stripped", "{what}: stripped");
    assert_eq!(info.pie, kind == "pie", "{what}: pie");
    if kind != "pie" {
        assert_eq!(info.cgo, kind == "cgo", "{what}: cgo");
    }
    assert_eq!(info.external_link, kind == "cgo", "{what}: external_link");
    assert_eq!(info.has_dwarf, kind != "stripped", "{what}: has_dwarf");
    let magic = if version.at_least(1, 20) {
        0xffff_fff1
    } else {
        0xffff_fff0
    };
    assert_eq!(info.pclntab_magic, magic, "{what}: pclntab magic");
    assert!(
        info.function_count > 1000,
        "{what}: {} functions",
        info.function_count
    );
    assert!(
        info.symtab_mismatches.is_empty(),
        "{what}: symtab disagrees with pclntab for {:?}",
        info.symtab_mismatches
    );
    assert!(
        info.build_settings
            .iter()
            .any(|(k, v)| k == "GOARCH" && v == "amd64"),
        "{what}: build settings {:?}",
        info.build_settings
    );

    // Stripped builds have no .nm: they must match the default build's symbols.
    let nm_kind = if kind == "stripped" { "default" } else { kind };
    let nm = read_nm(&dir.join(nm_kind).join(format!("{FIXTURE}.nm")));
    if kind != "stripped" {
        assert_eq!(
            nm.get("runtime.text"),
            Some(&vec![info.text_start]),
            "{what}: text base"
        );
    }

    // runtime.prof.hz, found in setcpuprofilerate's code, is runtime.prof + 4.
    let prof = nm_data_symbol(
        &dir.join(nm_kind).join(format!("{FIXTURE}.nm")),
        "runtime.prof",
    );
    // Stripped builds lay data out differently (no nm to compare with): found is enough
    // here; the live read is checked end to end (the accuracy suite's CPU profile case).
    if kind == "stripped" {
        assert!(
            bin.cpu_profile_hz_addr().is_some(),
            "{what}: runtime.prof.hz"
        );
    } else {
        assert_eq!(
            bin.cpu_profile_hz_addr(),
            prof.map(|a| a + 4),
            "{what}: runtime.prof.hz address (runtime.prof at {prof:x?})"
        );
    }

    let mut checked = 0;
    for (name, nosplit) in catalog_symbols(version) {
        let f = bin
            .func_by_name(name)
            .unwrap_or_else(|| panic!("{what}: {name} not found"));
        let expected = nm
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} not in {nm_kind} nm"));
        assert!(
            expected.contains(&f.entry),
            "{what}: {name} at {:#x}, nm says {expected:x?}",
            f.entry
        );
        assert!(f.end > f.entry, "{what}: {name} empty");
        assert_eq!(
            bin.func_at(f.entry).as_ref(),
            Some(&f),
            "{what}: func_at {name}"
        );
        assert_eq!(
            bin.func_at(f.end - 1).as_ref(),
            Some(&f),
            "{what}: func_at end {name}"
        );

        let p = bin
            .probe_point(&f)
            .unwrap_or_else(|e| panic!("{what}: probe_point {name}: {e}"));
        assert_eq!(p.entry, f.entry);
        assert_eq!(p.stack_check, !nosplit, "{what}: {name} stack check");
        if nosplit {
            assert_eq!(p.probe_vaddr, f.entry, "{what}: {name}");
        } else {
            assert!(
                p.probe_vaddr > f.entry && p.probe_vaddr < f.entry + 32,
                "{what}: {name} probe at {:#x}, entry {:#x}",
                p.probe_vaddr,
                f.entry
            );
            assert_jump_precedes(&file, &p, &format!("{what}: {name}"));
        }
        let entry_off = bin.file_offset(f.entry).expect("entry maps into the file") as usize;
        assert!(entry_off < file.len(), "{what}: {name} file offset");
        assert_eq!(
            bin.read_bytes_at(f.entry, 16),
            file.get(entry_off..entry_off + 16),
            "{what}: {name} bytes"
        );
        assert_eq!(
            p.probe_file_offset - entry_off as u64,
            p.probe_vaddr - f.entry,
            "{what}: {name}"
        );
        assert_eq!(p.rets.len(), p.ret_file_offsets.len());
        for (&r, &ro) in p.rets.iter().zip(&p.ret_file_offsets) {
            assert!(r >= f.entry && r < f.end, "{what}: {name} ret outside");
            assert!(
                matches!(file[ro as usize], 0xc3 | 0xc2),
                "{what}: {name} ret byte at {ro:#x}"
            );
        }
        if name == "runtime.startTheWorldWithSema" {
            assert!(!p.rets.is_empty(), "{what}: {name} has no RET");
        }
        checked += 1;
    }

    let rms = bin.func_by_name("runtime.ReadMemStats").unwrap();
    let (file_name, line) = bin.file_line(rms.entry).expect("file:line of ReadMemStats");
    assert!(
        file_name.ends_with("runtime/mstats.go"),
        "{what}: ReadMemStats in {file_name}"
    );
    assert!(line > 0, "{what}: line {line}");
    let main_main = bin.func_by_name("main.main").expect("main.main");
    let (main_file, _) = bin
        .file_line(main_main.entry)
        .expect("file:line of main.main");
    assert!(
        main_file.ends_with("main.go"),
        "{what}: main.main in {main_file}"
    );
    assert!(matches!(
        bin.probe_point_by_name("no.such.function"),
        Err(AnalysisError::NoSuchFunction(_))
    ));
    checked
}

#[test]
fn every_version_and_kind_matches_go_tool_nm() {
    let mut summary = Vec::new();
    for (v, name, dir) in versions() {
        for kind in KINDS {
            let n = check_fixture(v, &name, &dir, kind);
            summary.push(format!("{name}/{kind}: {n} functions"));
        }
    }
    eprintln!("checked:\n  {}", summary.join("\n  "));
}

#[test]
fn stripped_and_default_builds_agree() {
    for (_, name, dir) in versions() {
        let default = GoBinary::open(&dir.join("default").join(FIXTURE)).unwrap();
        let stripped = GoBinary::open(&dir.join("stripped").join(FIXTURE)).unwrap();
        assert_eq!(
            default.info().text_start,
            stripped.info().text_start,
            "{name}: text base"
        );
        let d: Vec<_> = default.funcs().collect();
        let s: Vec<_> = stripped.funcs().collect();
        assert_eq!(
            d, s,
            "{name}: function tables of default and stripped builds differ"
        );
    }
}

/// Every Go function `go tool nm` lists (ABI wrappers `.abi0` aside) is found at its
/// address, for all kinds; stripped builds against the default build's listing.
#[test]
fn all_functions_match_nm() {
    for (_, name, dir) in versions() {
        for kind in KINDS {
            let what = format!("{name}/{kind}");
            let bin = GoBinary::open(&dir.join(kind).join(FIXTURE)).unwrap();
            let nm_kind = if kind == "stripped" { "default" } else { kind };
            let nm = read_nm(&dir.join(nm_kind).join(format!("{FIXTURE}.nm")));
            let mut matched = 0;
            for (sym, addrs) in &nm {
                if sym.ends_with(".abi0") {
                    continue;
                }
                // C functions of cgo builds and generic instantiations (named
                // `F[...]` in the pclntab) are not found by their nm name.
                let Some(f) = bin.func_by_name(sym) else {
                    continue;
                };
                assert!(
                    addrs.contains(&f.entry),
                    "{what}: {sym} at {:#x}, nm says {addrs:x?}",
                    f.entry
                );
                matched += 1;
            }
            let total = bin.info().function_count;
            assert!(
                matched * 10 > total * 9,
                "{what}: only {matched} of {total} functions matched nm"
            );
        }
    }
}

/// Without section headers (sstrip and the like) everything is found by scanning:
/// build info, pclntab, moduledata (Go 1.26+) and PIE relocations via PT_DYNAMIC.
#[test]
fn section_headers_are_optional() {
    for (v, name, dir) in versions() {
        for kind in KINDS {
            let what = format!("{name}/{kind} without section headers");
            let full = fs::read(dir.join(kind).join(FIXTURE)).unwrap();
            let original = GoBinary::parse(full.clone()).unwrap();
            let mut cut = full;
            cut[0x28..0x30].fill(0); // e_shoff
            cut[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
            let bin = GoBinary::parse(cut).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(bin.info().go_version, Some(v), "{what}");
            assert_eq!(bin.info().text_start, original.info().text_start, "{what}");
            assert!(bin.info().stripped, "{what}");
            let a: Vec<_> = original.funcs().collect();
            let b: Vec<_> = bin.funcs().collect();
            assert_eq!(a, b, "{what}: function tables differ");
            let p = bin.probe_point_by_name("runtime.ReadMemStats").unwrap();
            assert_eq!(
                p,
                original
                    .probe_point_by_name("runtime.ReadMemStats")
                    .unwrap()
            );
        }
    }
}

#[test]
fn non_go_elf_is_not_go() {
    let e = GoBinary::open(Path::new("/bin/true")).unwrap_err();
    assert!(matches!(e, AnalysisError::NotGo), "/bin/true: {e}");
    let e = GoBinary::open(Path::new("/nonexistent/binary")).unwrap_err();
    assert!(matches!(e, AnalysisError::Io { .. }), "{e}");
    let e = GoBinary::open(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("Cargo.toml")
            .as_path(),
    )
    .unwrap_err();
    assert!(matches!(e, AnalysisError::NotElf), "{e}");
}

/// A Go 1.17 binary (simulated by rewriting the version in the build info, or the
/// pclntab magic) is refused with a clear error.
#[test]
fn old_go_versions_are_refused() {
    let (_, name, dir) = versions().into_iter().next().expect(MISSING);
    let full = fs::read(dir.join("default").join(FIXTURE)).unwrap();
    let bin = GoBinary::parse(full.clone()).unwrap();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);

    let mut old = full.clone();
    let at = find(&old, b"\xff Go buildinf:").expect("buildinfo magic");
    let v = find(&old[at..], name.as_bytes()).expect("version string") + at;
    old[v + 4] = b'1'; // go1.19.8 -> go1.19.8 with minor 1x -> 1.1x; make it 1.17
    old[v + 5] = b'7';
    let e = GoBinary::parse(old).unwrap_err();
    assert!(
        matches!(e, AnalysisError::UnsupportedGoVersion { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("go1.17"), "{e}");

    let mut old = full;
    let magic = bin.info().pclntab_magic.to_le_bytes();
    let off = bin.file_offset(bin.info().pclntab_vaddr).unwrap() as usize;
    assert_eq!(old[off..off + 4], magic);
    old[off..off + 4].copy_from_slice(&0xffff_fffa_u32.to_le_bytes());
    let e = GoBinary::parse(old).unwrap_err();
    assert!(
        matches!(e, AnalysisError::UnsupportedGoVersion { .. }),
        "{e}"
    );
}

#[test]
fn truncated_fixture_is_an_error() {
    let (_, _, dir) = versions().into_iter().next().expect(MISSING);
    let full = fs::read(dir.join("default").join(FIXTURE)).unwrap();
    for cut in [
        16,
        64,
        4096,
        full.len() / 3,
        full.len() / 2,
        full.len() - 4096,
    ] {
        // The section headers are at the end: any cut loses them. Parsing may still
        // succeed by scanning; it must not panic, and where it succeeds the tables
        // must be usable.
        match GoBinary::parse(full[..cut].to_vec()) {
            Err(_) => {}
            Ok(bin) => {
                for f in bin.funcs().take(200) {
                    let _ = bin.probe_point(&f);
                    let _ = bin.file_line(f.entry);
                }
            }
        }
    }
    // Cutting inside the pclntab must fail.
    assert!(GoBinary::parse(full[..full.len() / 3].to_vec()).is_err());
}

/// No probe on a function with a stack check is single-stepped (each single-stepped
/// hit is a second trap, ~30x the cost here), on any Go version or build kind. Go 1.21+
/// frames start with `push rbp`, which the kernel emulates: the probe stays after the
/// stack check. Go 1.19 frames start with `sub rsp, N`, which it would single-step:
/// the probe sits on the stack check's JBE (emulated), flagged in its cookie so the
/// program ignores the hits bound for morestack. Single-stepped remain: the entries of
/// nosplit functions whose first instruction is not emulated (`runtime.LockOSThread`
/// on Go 1.19), the RET probes (rare: once per pause or `runtime.GC` call) and the
/// inlined `runtime.NumGoroutine` sites inside user functions.
#[test]
fn no_probe_is_single_stepped_after_a_stack_check() {
    use detector::probes::plan::Program;
    use detector_common::COOKIE_ON_STACK_CHECK;
    for (v, name, dir) in versions() {
        for kind in KINDS {
            let what = format!("{name}/{kind}");
            let bin = GoBinary::open(&dir.join(kind).join(FIXTURE)).unwrap();
            let plan = detector::probes::plan::plan(&bin, v);
            let entries: Vec<_> = plan
                .probes
                .iter()
                .filter(|p| {
                    matches!(
                        p.program,
                        Program::CountCall
                            | Program::StwStart
                            | Program::StwRestart
                            | Program::StwReason
                    )
                })
                // Inlined NumGoroutine is probed wherever its inlined body starts.
                .filter(|p| p.api != Api::NumGoroutine)
                .collect();
            assert!(entries.len() > 20, "{what}: {} entry probes", entries.len());
            let mut on_jbe = 0;
            for p in &entries {
                let f = bin.func_by_name(p.symbol).unwrap();
                let point = bin.probe_point(&f).unwrap();
                assert_eq!(p.vaddr, point.probe_vaddr, "{what}: {}", p.symbol);
                assert_eq!(
                    p.cookie & COOKIE_ON_STACK_CHECK != 0,
                    point.on_stack_check_jump,
                    "{what}: {} cookie",
                    p.symbol
                );
                assert_eq!(p.single_step, !point.emulated, "{what}: {}", p.symbol);
                if point.stack_check {
                    assert!(!p.single_step, "{what}: {} single-stepped", p.symbol);
                    // Go 1.19 needs the JBE; later versions keep the emulated push.
                    assert_eq!(
                        point.on_stack_check_jump,
                        v.minor < 21,
                        "{what}: {} placement",
                        p.symbol
                    );
                    on_jbe += usize::from(point.on_stack_check_jump);
                } else {
                    assert!(p.api.nosplit(), "{what}: {} has no stack check", p.symbol);
                }
            }
            if v.minor < 21 {
                assert!(on_jbe > 20, "{what}: {on_jbe} probes on a JBE");
            }
            // What else is single-stepped: RET probes, and inlined NumGoroutine sites
            // (a probe inside the calling function, on its body's first instruction).
            for p in plan
                .probes
                .iter()
                .filter(|p| p.single_step && p.api != Api::NumGoroutine)
            {
                let entry = entries.iter().any(|e| std::ptr::eq(*e, p));
                let ret = matches!(
                    p.program,
                    Program::StwStopped | Program::StwEnd | Program::ForcedGcExit
                );
                assert!(
                    ret || (entry && p.api.nosplit()),
                    "{what}: {} {:?} single-stepped",
                    p.symbol,
                    p.program
                );
            }
        }
    }
}
