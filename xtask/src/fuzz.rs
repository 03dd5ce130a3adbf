//! `cargo xtask fuzz`: builds the cargo-fuzz targets of `fuzz/` and runs each for a
//! bounded time on the committed seed corpus (`fuzz/corpus/<target>`, read-only: new
//! inputs go to `fuzz/target/corpus/<target>`, emptied first), failing on any crash.
//! `--seed` regenerates the seeds from small real Go binaries and the fixtures. See
//! docs/fuzzing.md.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{fixtures, run_cmd, setup, workspace_root};

/// The targets and the largest input each is given (`-max_len`), a little above its
/// largest seed.
pub const TARGETS: &[(&str, usize)] = &[
    ("buildinfo", 16 << 10),
    ("pclntab", 64 << 10),
    ("symtab", 256 << 10),
    ("elf", 2 << 20),
];
/// Seconds per target of the bounded run `cargo xtask test` makes.
pub const CI_SECONDS: u64 = 30;
/// One input slower than this is a failure (a hang), not only a slow unit.
const INPUT_TIMEOUT_SECONDS: u64 = 60;
/// libFuzzer's RSS limit. It counts the in-memory corpus too: the `elf` target's,
/// megabyte-sized inputs, reaches 1 GB in ten minutes.
const RSS_LIMIT_MB: u64 = 4096;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// How one target's run went.
struct Outcome {
    target: &'static str,
    executions: Option<u64>,
    seconds: f64,
    /// The crash report's tail and its reproducer, when the run failed.
    failure: Option<String>,
}

/// Builds the targets, then runs each (or those named in `only`) for `seconds`, as
/// many at once as there are cores; fails when any crashes, hangs or runs out of memory.
pub fn run(seconds: u64, only: &[String]) -> Result<()> {
    let started = Instant::now();
    let targets: Vec<(&'static str, usize)> = TARGETS
        .iter()
        .copied()
        .filter(|(t, _)| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if targets.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
        bail!("no fuzz target named {only:?}; the targets are {names:?}");
    }
    let fuzz_bin = setup::cargo_fuzz()?;
    eprintln!("xtask: building the fuzz targets (nightly, debug assertions)");
    run_cmd(
        cargo_fuzz(&fuzz_bin)
            .args(["build", "--debug-assertions", "--sanitizer", "none"])
            .args(["--fuzz-dir", "fuzz"]),
    )?;
    let built = started.elapsed().as_secs_f64();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "xtask: built in {built:.0} s; fuzzing {} target(s) for {seconds} s each, {jobs} at a time",
        targets.len()
    );
    let mut outcomes = Vec::new();
    for group in targets.chunks(jobs) {
        let handles: Vec<_> = group
            .iter()
            .map(|&(t, max_len)| std::thread::spawn(move || run_one(t, max_len, seconds)))
            .collect();
        for h in handles {
            outcomes.push(h.join().expect("fuzz runner thread")?);
        }
    }
    let mut failed = Vec::new();
    for o in &outcomes {
        let execs = o
            .executions
            .map_or("? executions".to_string(), |n| format!("{n} executions"));
        let rate = o
            .executions
            .map(|n| format!(" ({:.0}/s)", n as f64 / o.seconds.max(1.0)))
            .unwrap_or_default();
        match &o.failure {
            None => println!(
                "fuzz {}: {execs} in {:.0} s{rate}, no crash",
                o.target, o.seconds
            ),
            Some(report) => {
                println!(
                    "fuzz {}: FAILED after {execs} in {:.0} s\n{report}",
                    o.target, o.seconds
                );
                failed.push(o.target);
            }
        }
    }
    println!(
        "fuzz: {} target(s) in {:.0} s (build {built:.0} s)",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("fuzz target(s) {failed:?} crashed; reproducers are under fuzz/artifacts/");
    }
    Ok(())
}

/// `cargo +nightly fuzz` from the workspace root, with cargo-fuzz on PATH.
fn cargo_fuzz(bin_dir: &Path) -> Command {
    let mut path = vec![bin_dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"])
        .current_dir(workspace_root())
        .env(
            "PATH",
            std::env::join_paths(path).expect("PATH entries are valid"),
        )
        .env("CARGO_TARGET_DIR", fuzz_dir().join("target"));
    cmd
}

/// Runs the built target binary directly (libFuzzer flags, no rebuild check).
fn run_one(target: &'static str, max_len: usize, seconds: u64) -> Result<Outcome> {
    let dir = fuzz_dir();
    let bin = dir
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let work = dir.join("target/corpus").join(target);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let artifacts = dir.join("artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let log_path = dir.join("target/logs").join(format!("{target}.log"));
    fs::create_dir_all(log_path.parent().expect("has a parent"))?;
    let log = fs::File::create(&log_path)?;
    let started = Instant::now();
    let status = Command::new(&bin)
        .arg(&work)
        .arg(dir.join("corpus").join(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("could not start {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let executions = executions(&text);
    let failure = (!status.success()).then(|| {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("{tail}\n(exit {status}; full log {})", log_path.display())
    });
    Ok(Outcome {
        target,
        executions,
        seconds,
        failure,
    })
}

/// Executions from libFuzzer's output: `stat::number_of_executed_units: N`
/// (`-print_final_stats=1`), else the `#N DONE` / `Done N runs` lines.
fn executions(log: &str) -> Option<u64> {
    let num = |s: &str| s.trim().parse::<u64>().ok();
    log.lines()
        .rev()
        .find_map(|l| num(l.strip_prefix("stat::number_of_executed_units:")?))
        .or_else(|| {
            log.lines().rev().find_map(|l| {
                let (n, rest) = l.strip_prefix('#')?.split_once(char::is_whitespace)?;
                rest.trim_start().starts_with("DONE").then(|| num(n))?
            })
        })
        .or_else(|| {
            log.lines()
                .rev()
                .find_map(|l| num(l.strip_prefix("Done ")?.split_whitespace().next()?))
        })
}

/// A minimal Go program: the smallest real binaries each Go version makes.
const TINY_MAIN: &str = "package main\n\nfunc main() {}\n";

/// The seed binaries: Go version, `go build` arguments, name, and which targets get
/// what (`elf`: the file; `pclntab`: `.gopclntab` cut down to a few functions, the
/// whole tables being in the `elf` seeds; `symtab`: `.symtab` + `.strtab`).
/// `.go.buildinfo` of each goes to `buildinfo`, with those of the fixtures.
const SEED_BUILDS: &[(&str, &[&str], &str, &[&str])] = &[
    (
        "1.19",
        &["-ldflags=-s -w"],
        "static-stripped",
        &["elf", "pclntab"],
    ),
    (
        "1.27",
        &["-buildmode=pie", "-ldflags=-s -w"],
        "pie-stripped",
        &["elf", "pclntab"],
    ),
    ("1.22", &[], "static", &["pclntab", "symtab"]),
    ("1.27", &[], "static", &["symtab"]),
];

/// Regenerates the `seed-*` files of `fuzz/corpus/<target>/` (other files, such as
/// fixed crash reproducers, are kept). Go builds with `-trimpath` are reproducible,
/// so the same toolchains give the same seeds.
pub fn seed(tools: &setup::Tools) -> Result<()> {
    let corpus = fuzz_dir().join("corpus");
    for (t, _) in TARGETS {
        let dir = corpus.join(t);
        fs::create_dir_all(&dir)?;
        for e in fs::read_dir(&dir)? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                fs::remove_file(&p)?;
            }
        }
    }
    let build_dir = fuzz_dir().join("target/seed-build");
    fs::create_dir_all(&build_dir)?;
    fs::write(build_dir.join("main.go"), TINY_MAIN)?;
    fs::write(build_dir.join("go.mod"), "module tiny\n\ngo 1.19\n")?;
    let mut buildinfos: Vec<(String, Vec<u8>)> = Vec::new();
    for &(version, args, name, targets) in SEED_BUILDS {
        let tool = tools
            .go
            .iter()
            .find(|t| t.version.starts_with(&format!("{version}.")))
            .with_context(|| format!("no Go {version} toolchain installed"))?;
        let stem = format!("seed-go{}-{name}", tool.version);
        let out = build_dir.join(&stem);
        run_cmd(
            Command::new(&tool.go)
                .args(["build", "-trimpath", "-buildvcs=false"])
                .args(args)
                .arg("-o")
                .arg(&out)
                .arg(".")
                .current_dir(&build_dir)
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "")
                .env("GOPROXY", "off")
                .env("CGO_ENABLED", "0")
                .env_remove("GOROOT"),
        )?;
        let file = fs::read(&out)?;
        let sections = elf_sections(&file)
            .with_context(|| format!("reading the sections of {}", out.display()))?;
        let section = |names: &[&str]| {
            sections
                .iter()
                .find(|s| names.contains(&s.name.as_str()))
                .map(|s| s.bytes)
        };
        for &target in targets {
            let bytes = match target {
                "elf" => file.clone(),
                "pclntab" => mini_pclntab(
                    section(&[".gopclntab", ".data.rel.ro.gopclntab"]).context("no .gopclntab")?,
                    MINI_PCLNTAB_FUNCS,
                )?,
                "symtab" => {
                    let symtab = sections
                        .iter()
                        .find(|s| s.name == ".symtab")
                        .context("no .symtab")?;
                    let strtab = sections
                        .get(symtab.link as usize)
                        .context("bad .symtab link")?;
                    let mut v = (symtab.bytes.len() as u32).to_le_bytes().to_vec();
                    v.extend_from_slice(symtab.bytes);
                    v.extend_from_slice(strtab.bytes);
                    v
                }
                other => bail!("no seed extraction for {other}"),
            };
            fs::write(corpus.join(target).join(&stem), bytes)?;
        }
        if let Some(b) = section(&[".go.buildinfo"]) {
            buildinfos.push((stem, b.to_vec()));
        }
    }
    // The fixtures' build info has more settings (-buildmode, -ldflags, cgo flags).
    let fixtures = fixtures::root();
    let mut versions: Vec<PathBuf> = fs::read_dir(&fixtures)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    for v in versions {
        for kind in ["default", "pie", "cgo"] {
            let path = v.join(kind).join("allapis");
            let Ok(file) = fs::read(&path) else {
                continue;
            };
            let sections = elf_sections(&file)?;
            if let Some(s) = sections.iter().find(|s| s.name == ".go.buildinfo") {
                let version = v.file_name().unwrap_or_default().to_string_lossy();
                buildinfos.push((format!("seed-{version}-{kind}-allapis"), s.bytes.to_vec()));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (stem, bytes) in buildinfos {
        if seen.insert(bytes.clone()) {
            fs::write(corpus.join("buildinfo").join(stem), bytes)?;
        }
    }
    let mut total = 0;
    for (t, _) in TARGETS {
        let mut n = 0;
        for e in fs::read_dir(corpus.join(t))? {
            total += e?.metadata()?.len();
            n += 1;
        }
        println!("fuzz/corpus/{t}: {n} file(s)");
    }
    println!("fuzz/corpus: {} kB in all", total / 1024);
    Ok(())
}

/// Functions kept in the small pclntab seeds.
const MINI_PCLNTAB_FUNCS: usize = 48;

/// A real pclntab cut down to `keep` of its functions, evenly spread: the header,
/// their names, the whole cutab and filetab, their pc-value tables and `_func`s, all
/// offsets rewritten. Small inputs fuzz far faster than whole tables.
fn mini_pclntab(tab: &[u8], keep: usize) -> Result<Vec<u8>> {
    let u32_at = |o: usize| -> Result<u32> {
        let b = tab.get(o..o + 4).context("pclntab truncated")?;
        Ok(u32::from_le_bytes(b.try_into()?))
    };
    let u64_at = |o: usize| -> Result<usize> {
        let b = tab.get(o..o + 8).context("pclntab truncated")?;
        Ok(u64::from_le_bytes(b.try_into()?) as usize)
    };
    let old_layout = u32_at(0)? == 0xffff_fff0; // Go 1.18/1.19: no startLine
    let func_header = if old_layout { 40 } else { 44 };
    let [nfunc, _nfiles, _text, funcname, cutab, filetab, pctab, ftab] =
        [0, 1, 2, 3, 4, 5, 6, 7].map(|i| u64_at(8 + 8 * i));
    let (nfunc, funcname, cutab, filetab, pctab, ftab) =
        (nfunc?, funcname?, cutab?, filetab?, pctab?, ftab?);
    // Length of the pc-value table at `off` (pairs of uvarints, ended by a zero value
    // delta after the first pair).
    let table_len = |off: usize| -> Result<usize> {
        let mut p = off;
        let mut first = true;
        loop {
            let mut uvarint = || -> Result<u64> {
                let (mut v, mut shift) = (0u64, 0);
                loop {
                    let b = *tab.get(p).context("pc-value table truncated")?;
                    p += 1;
                    v |= u64::from(b & 0x7f) << shift;
                    if b & 0x80 == 0 {
                        return Ok(v);
                    }
                    shift += 7;
                }
            };
            if uvarint()? == 0 && !first {
                return Ok(p - off);
            }
            uvarint()?;
            first = false;
        }
    };
    let chosen: Vec<usize> = (0..keep.min(nfunc)).map(|k| k * nfunc / keep).collect();
    let mut names = Vec::new();
    let mut pcs = vec![0u8]; // offset 0 means "no table"
    let mut moved = std::collections::HashMap::new();
    let mut funcs = Vec::new();
    let mut entries = Vec::new();
    for &i in &chosen {
        let entry = u32_at(ftab + 8 * i)?;
        let func_off = ftab + u32_at(ftab + 8 * i + 4)? as usize;
        let npcdata = u32_at(func_off + 28)? as usize;
        let nfuncdata = usize::from(*tab.get(func_off + func_header - 1).context("_func")?);
        let len = func_header + 4 * (npcdata + nfuncdata);
        let mut f = tab.get(func_off..func_off + len).context("_func")?.to_vec();
        let name_start = funcname + u32_at(func_off + 4)? as usize;
        let name_len = tab[name_start..]
            .iter()
            .position(|&c| c == 0)
            .context("name")?;
        f[4..8].copy_from_slice(&(names.len() as u32).to_le_bytes());
        names.extend_from_slice(&tab[name_start..=name_start + name_len]);
        // pcsp, pcfile, pcln, then pcdata[npcdata].
        let fields = [16, 20, 24]
            .into_iter()
            .chain((0..npcdata).map(|k| func_header + 4 * k));
        for at in fields {
            let old = u32::from_le_bytes(f[at..at + 4].try_into()?) as usize;
            if old == 0 {
                continue;
            }
            let new = match moved.get(&old) {
                Some(&n) => n,
                None => {
                    let n = pcs.len();
                    let len = table_len(pctab + old)?;
                    pcs.extend_from_slice(&tab[pctab + old..pctab + old + len]);
                    moved.insert(old, n);
                    n
                }
            };
            f[at..at + 4].copy_from_slice(&(new as u32).to_le_bytes());
        }
        entries.push(entry);
        funcs.push(f);
    }
    // The end of the last function: the entry after it in the original table.
    let last = *chosen.last().context("empty pclntab")?;
    let end = u32_at(ftab + 8 * (last + 1))?;

    let mut out = tab.get(..funcname).context("header")?.to_vec();
    let new_funcname = out.len();
    out.extend_from_slice(&names);
    let new_cutab = out.len();
    out.extend_from_slice(tab.get(cutab..filetab).context("cutab")?);
    let new_filetab = out.len();
    out.extend_from_slice(tab.get(filetab..pctab).context("filetab")?);
    let new_pctab = out.len();
    out.extend_from_slice(&pcs);
    out.resize(out.len().next_multiple_of(8), 0);
    let new_ftab = out.len();
    let mut func_off = (funcs.len() + 1) * 8;
    let mut bodies = Vec::new();
    for (entry, f) in entries.iter().zip(&funcs) {
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&(func_off as u32).to_le_bytes());
        func_off += f.len().next_multiple_of(4);
        bodies.extend_from_slice(f);
        bodies.resize(bodies.len().next_multiple_of(4), 0);
    }
    out.extend_from_slice(&end.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&bodies);
    for (i, v) in [
        (0, funcs.len()),
        (3, new_funcname),
        (4, new_cutab),
        (5, new_filetab),
        (6, new_pctab),
        (7, new_ftab),
    ] {
        out[8 + 8 * i..16 + 8 * i].copy_from_slice(&(v as u64).to_le_bytes());
    }
    Ok(out)
}

/// One section of an ELF file.
struct ElfSection<'a> {
    name: String,
    link: u32,
    bytes: &'a [u8],
}

/// The sections of a little-endian ELF64 file (enough for Go's own binaries).
fn elf_sections(file: &[u8]) -> Result<Vec<ElfSection<'_>>> {
    let u16_at = |o: usize| -> Option<usize> {
        Some(u16::from_le_bytes(file.get(o..o + 2)?.try_into().ok()?).into())
    };
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(file.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |o: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(file.get(o..o + 8)?.try_into().ok()?)).ok()
    };
    if file.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not a little-endian ELF64 file");
    }
    let parse = || -> Option<Vec<ElfSection<'_>>> {
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
        let header = |i: usize| shoff + i * shentsize;
        let bytes = |h: usize| -> Option<&[u8]> {
            let (off, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
            if u32_at(h + 4)? == 8 {
                return Some(&[]); // SHT_NOBITS
            }
            file.get(off..off.checked_add(size)?)
        };
        let names = bytes(header(shstrndx))?;
        (0..shnum)
            .map(|i| {
                let h = header(i);
                let name = names.get(u32_at(h)? as usize..)?;
                let name = &name[..name.iter().position(|&c| c == 0)?];
                Some(ElfSection {
                    name: String::from_utf8_lossy(name).into_owned(),
                    link: u32_at(h + 0x28)?,
                    bytes: bytes(h)?,
                })
            })
            .collect()
    };
    parse().context("malformed section headers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_executions() {
        let log = "#1024\tpulse  cov: 10 ft: 12 corp: 3/1Kb exec/s: 512 rss: 30Mb\n\
                   #2048\tDONE   cov: 12 ft: 15 corp: 4/1Kb exec/s: 1000 rss: 31Mb\n\
                   Done 2048 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 2050\n\
                   stat::average_exec_per_sec:     1000\n";
        assert_eq!(executions(log), Some(2050));
        let no_stats = log.split("stat::").next().unwrap();
        assert_eq!(executions(no_stats), Some(2048));
        assert_eq!(executions("Done 77 runs in 1 second(s)\n"), Some(77));
        assert_eq!(
            executions("==123== ERROR: libFuzzer: deadly signal\n"),
            None
        );
    }

    #[test]
    fn reads_elf_sections() {
        let exe = fs::read("/proc/self/exe").unwrap();
        let sections = elf_sections(&exe).unwrap();
        assert!(sections
            .iter()
            .any(|s| s.name == ".text" && !s.bytes.is_empty()));
        assert!(elf_sections(b"not an elf").is_err());
        assert!(elf_sections(&exe[..64]).is_err());
    }
}
