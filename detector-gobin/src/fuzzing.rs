//! Entry points of the cargo-fuzz targets (`fuzz/`, see `docs/fuzzing.md`): each takes
//! arbitrary bytes as one part of a Go binary, parses them with the real parsers and
//! runs every query on whatever was accepted. Not an API: hidden from the docs and
//! only kept stable for the fuzz targets and the unit tests that replay their finds.
//! Compiled only with the `fuzzing` feature (and in this crate's unit tests).
//!
//! The parser knows nothing of its users: an entry point that accepts a whole binary
//! then runs the caller's [`Hook`] on it, and the fuzz targets pass one that plans
//! detector's probes, so the code that consumes the analysis is fuzzed too.
//!
//! A parser may return an error for any input; it must never panic, overflow, hang or
//! allocate without bound.
use super::elf::{ElfInfo, Segment};
use super::{buildinfo, elf, pclntab, GoBinary, GoVersion};

/// What the caller runs on every [`GoBinary`] an entry point accepted, after the
/// parser's own queries ([`binary`]); e.g. `&|bin| { detector::probes::plan::plan(bin,
/// version); }`. Pass [`no_hook`] for the parser alone.
pub type Hook<'a> = &'a dyn Fn(&GoBinary);

/// A [`Hook`] that does nothing: only the parser's own queries run.
pub fn no_hook(_: &GoBinary) {}

/// Where the `buildinfo` and `pclntab` targets map their input (for pointers).
pub const INPUT_VADDR: u64 = 0x10_0000;
/// Text base used by the `pclntab` target when the header has none (Go 1.26+).
pub const DEFAULT_TEXT: u64 = 0x40_1000;
/// The queries over all functions stop after this many (keeps each run short).
const FUNCS_VISITED: usize = 20_000;
/// Functions decoded (probe point, calls) per run.
const FUNCS_DECODED: usize = 64;

/// A whole file: `GoBinary::parse`, then every query (as `detector inspect` and
/// `diagnose` run them), then `also`.
pub fn elf(data: &[u8], also: Hook<'_>) {
    if let Ok(bin) = GoBinary::parse(data.to_vec()) {
        binary(&bin);
        also(&bin);
    }
}

/// The bytes as a `.go.buildinfo` section (mapped at [`INPUT_VADDR`], so the
/// pre-1.18 pointer format resolves into them), and as the Go version string.
pub fn buildinfo(data: &[u8]) {
    let elf = one_segment(data, INPUT_VADDR, object::elf::PF_R | object::elf::PF_W);
    if let Ok(info) = buildinfo::parse(data, data, &elf) {
        version(&info.version);
        for (k, v) in &info.settings {
            let _ = (k.len(), v.len());
        }
    }
    if let Some(found) = buildinfo::locate(data, &elf) {
        let _ = buildinfo::parse(found, data, &elf);
    }
    version(&String::from_utf8_lossy(data.get(..64).unwrap_or(data)));
}

/// The table `data` (parsed as `tab`) in a minimal executable: `.gopclntab` and a
/// `.text` mapped at the text base (the default one written into the header when it
/// has none). The unit tests build small Go-like binaries with it.
pub(crate) fn pclntab_executable(data: &[u8], tab: &pclntab::Pclntab) -> Vec<u8> {
    let mut patched = data.to_vec();
    let text = match tab.text_start_field {
        0 => {
            if let Some(field) = patched.get_mut(24..32) {
                field.copy_from_slice(&DEFAULT_TEXT.to_le_bytes());
            }
            DEFAULT_TEXT
        }
        t => t,
    };
    build_elf(&[
        Part::section(".gopclntab", &patched, INPUT_VADDR, object::elf::PF_R),
        Part::section(
            ".text",
            &patched,
            text,
            object::elf::PF_R | object::elf::PF_X,
        ),
    ])
}

/// The bytes as a `.gopclntab` section: the header, the function table, names, file
/// and line tables, pc-value tables and the inline tree indices; then the scan that
/// finds a table without section headers; then a whole binary built around it, given
/// to [`elf()`] with `also`.
pub fn pclntab(data: &[u8], also: Hook<'_>) {
    let segment = one_segment(data, INPUT_VADDR, object::elf::PF_R);
    let _ = pclntab::locate(data, &segment);
    let Ok(tab) = pclntab::Pclntab::parse(data, 0, INPUT_VADDR) else {
        return;
    };
    let text = match tab.text_start_field {
        0 => DEFAULT_TEXT,
        t => t,
    };
    let Ok(funcs) = tab.functions(data, text) else {
        return;
    };
    for f in funcs.iter().take(FUNCS_VISITED) {
        let _ = tab.name(data, f);
        let mid = f.entry + (f.end - f.entry) / 2;
        for pc in [f.entry, mid, f.end.saturating_sub(1)] {
            let _ = tab.file_line(data, f, pc);
        }
        for i in 0..4 {
            if let Some(t) = tab.pcdata_table(data, f, i) {
                let _ = pclntab::pcvalue(t, f.entry, mid, tab.quantum);
                let _ = pclntab::pcvalue_runs(t, f.entry, f.end, tab.quantum);
            }
            let _ = tab.funcdata_off(data, f, i);
        }
        if let Some(cu) = tab.cu_offset(data, f) {
            let _ = tab.file_name(data, cu, 0);
        }
        if let Some(rel) = f.name_off.checked_sub(tab.funcname) {
            let _ = tab.name_at(data, u32::try_from(rel).unwrap_or(u32::MAX));
        }
    }
    elf(&pclntab_executable(data, &tab), also);
}

/// `.symtab` and `.strtab` (the input is a little-endian u32 length, that many bytes
/// of `.symtab`, then `.strtab`) in a minimal executable whose one segment maps the
/// string table at 0x400000: ELF symbol parsing, then the Go analysis that uses
/// symbols (the pclntab, text base and moduledata found through them), given to
/// [`elf()`] with `also`.
pub fn symtab(data: &[u8], also: Hook<'_>) {
    let (symtab, strtab) = split_symtab_input(data);
    let file = build_elf(&[
        Part::symtab(symtab),
        Part {
            sh_type: object::elf::SHT_STRTAB,
            ..Part::section(
                ".strtab",
                strtab,
                0x40_0000,
                object::elf::PF_R | object::elf::PF_X,
            )
        },
    ]);
    if let Ok(info) = elf::parse(&file) {
        for s in &info.func_symbols {
            let _ = info.file_offset(s.value);
        }
        for v in info.data_symbols.values() {
            let _ = info.read_ptr(&file, *v);
        }
    }
    elf(&file, also);
}

/// Splits a `symtab` target input into its `.symtab` and `.strtab` bytes.
pub fn split_symtab_input(data: &[u8]) -> (&[u8], &[u8]) {
    let len = data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let rest = data.get(4..).unwrap_or_default();
    rest.split_at(len.min(rest.len()))
}

/// Every query of a parsed binary, as `inspect` and `diagnose` use them.
pub fn binary(bin: &GoBinary) {
    let info = bin.info();
    let funcs: Vec<_> = bin.funcs().take(FUNCS_VISITED).collect();
    // A sample: the `pclntab` target covers every function of small tables.
    let step = (funcs.len() / FUNCS_DECODED).max(1);
    for f in funcs.iter().step_by(step) {
        let _ = bin.file_line(f.entry);
        let _ = bin.func_at(f.end.saturating_sub(1));
        let _ = bin.probe_point(f);
        let _ = bin.call_targets(f);
        let _ = bin.call_sites(f, f.entry);
        let _ = bin.func_by_name(&f.name);
        let _ = bin.file_offset(f.entry);
    }
    let _ = bin.funcdata_base();
    let _ = bin.inlined_calls("runtime.NumGoroutine");
    let _ = bin.cpu_profile_hz_addr();
    let _ = bin.called_functions("runtime.GC");
    let _ = bin.probe_point_by_name("runtime.ReadMemStats");
    let _ = bin.read_bytes_at(u64::MAX - 2, 10);
    let _ = bin.read_cstring_at(info.text_start, 64);
    if let Some(code) = bin.read_bytes_at(info.text_start, 15) {
        let _ = super::prologue::kernel_emulates(code);
    }
}

fn version(s: &str) {
    if let Some(v) = GoVersion::parse(s) {
        let _ = (v.is_supported(), v.at_least(1, 22), v.to_string());
        let _ = pclntab::wrapper_func_id(v);
    }
}

fn one_segment(data: &[u8], vaddr: u64, flags: u32) -> ElfInfo {
    ElfInfo {
        segments: vec![Segment {
            vaddr,
            offset: 0,
            filesz: data.len() as u64,
            flags,
        }],
        ..ElfInfo::default()
    }
}

/// A section of [`build_elf`]'s output, mapped by its own `PT_LOAD` when `flags` is set.
struct Part<'a> {
    name: &'a str,
    sh_type: u32,
    data: &'a [u8],
    vaddr: u64,
    flags: Option<u32>,
    /// `sh_link` to the next part (a symbol table's string table).
    link_next: bool,
    entsize: u64,
}

impl<'a> Part<'a> {
    fn section(name: &'a str, data: &'a [u8], vaddr: u64, flags: u32) -> Self {
        Part {
            name,
            sh_type: object::elf::SHT_PROGBITS,
            data,
            vaddr,
            flags: Some(flags),
            link_next: false,
            entsize: 0,
        }
    }

    fn symtab(data: &'a [u8]) -> Self {
        Part {
            name: ".symtab",
            sh_type: object::elf::SHT_SYMTAB,
            data,
            vaddr: 0,
            flags: None,
            link_next: true,
            entsize: 24,
        }
    }
}

/// A little-endian x86-64 ELF executable with these sections (plus `.shstrtab`).
fn build_elf(parts: &[Part<'_>]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const SHDR: usize = 64;
    let nload = parts.iter().filter(|p| p.flags.is_some()).count();
    let mut out = vec![0u8; EHDR + nload * PHDR];
    let mut offsets = Vec::new();
    for p in parts {
        out.resize(out.len().next_multiple_of(16), 0);
        offsets.push(out.len());
        out.extend_from_slice(p.data);
    }
    let mut shstrtab = vec![0u8];
    let mut names = Vec::new();
    for name in parts.iter().map(|p| p.name).chain([".shstrtab"]) {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let shstrtab_off = out.len();
    out.extend_from_slice(&shstrtab);
    out.resize(out.len().next_multiple_of(8), 0);
    let shoff = out.len();
    let shnum = parts.len() + 2;

    let put = |out: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // ELF header.
    put(&mut out, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(&mut out, 16, &object::elf::ET_EXEC.to_le_bytes());
    put(&mut out, 18, &object::elf::EM_X86_64.to_le_bytes());
    put(&mut out, 20, &1u32.to_le_bytes());
    put(&mut out, 32, &(EHDR as u64).to_le_bytes());
    put(&mut out, 40, &(shoff as u64).to_le_bytes());
    put(&mut out, 52, &(EHDR as u16).to_le_bytes());
    put(&mut out, 54, &(PHDR as u16).to_le_bytes());
    put(&mut out, 56, &(nload as u16).to_le_bytes());
    put(&mut out, 58, &(SHDR as u16).to_le_bytes());
    put(&mut out, 60, &(shnum as u16).to_le_bytes());
    put(&mut out, 62, &((shnum - 1) as u16).to_le_bytes());
    // Program headers.
    let mut ph = EHDR;
    for (p, &off) in parts.iter().zip(&offsets) {
        let Some(flags) = p.flags else { continue };
        let len = p.data.len() as u64;
        put(&mut out, ph, &object::elf::PT_LOAD.to_le_bytes());
        put(&mut out, ph + 4, &flags.to_le_bytes());
        put(&mut out, ph + 8, &(off as u64).to_le_bytes());
        put(&mut out, ph + 16, &p.vaddr.to_le_bytes());
        put(&mut out, ph + 24, &p.vaddr.to_le_bytes());
        put(&mut out, ph + 32, &len.to_le_bytes());
        put(&mut out, ph + 40, &len.to_le_bytes());
        put(&mut out, ph + 48, &1u64.to_le_bytes());
        ph += PHDR;
    }
    // Section headers: the null one, the parts, .shstrtab.
    out.resize(shoff + shnum * SHDR, 0);
    let mut sh = shoff + SHDR;
    for (i, (p, &off)) in parts.iter().zip(&offsets).enumerate() {
        put(&mut out, sh, &names[i].to_le_bytes());
        put(&mut out, sh + 4, &p.sh_type.to_le_bytes());
        let alloc = if p.flags.is_some() {
            object::elf::SHF_ALLOC
        } else {
            0
        };
        put(&mut out, sh + 8, &u64::from(alloc).to_le_bytes());
        put(&mut out, sh + 16, &p.vaddr.to_le_bytes());
        put(&mut out, sh + 24, &(off as u64).to_le_bytes());
        put(&mut out, sh + 32, &(p.data.len() as u64).to_le_bytes());
        if p.link_next {
            put(&mut out, sh + 40, &((i + 2) as u32).to_le_bytes());
            put(&mut out, sh + 44, &1u32.to_le_bytes());
        }
        put(&mut out, sh + 48, &1u64.to_le_bytes());
        put(&mut out, sh + 56, &p.entsize.to_le_bytes());
        sh += SHDR;
    }
    put(&mut out, sh, &names[parts.len()].to_le_bytes());
    put(&mut out, sh + 4, &object::elf::SHT_STRTAB.to_le_bytes());
    put(&mut out, sh + 24, &(shstrtab_off as u64).to_le_bytes());
    put(&mut out, sh + 32, &(shstrtab.len() as u64).to_le_bytes());
    put(&mut out, sh + 48, &1u64.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_elf_parses() {
        let strtab = b"\0runtime.text\0main.main\0";
        let mut sym = vec![0u8; 24]; // the null symbol
        let mut text = vec![0u8; 24];
        text[..4].copy_from_slice(&1u32.to_le_bytes());
        text[4] = object::elf::STT_OBJECT;
        text[6..8].copy_from_slice(&1u16.to_le_bytes());
        text[8..16].copy_from_slice(&0x40_1000u64.to_le_bytes());
        sym.extend_from_slice(&text);
        let mut main = vec![0u8; 24];
        main[..4].copy_from_slice(&14u32.to_le_bytes());
        main[4] = object::elf::STT_FUNC;
        main[6..8].copy_from_slice(&1u16.to_le_bytes());
        main[8..16].copy_from_slice(&0x40_2000u64.to_le_bytes());
        sym.extend_from_slice(&main);
        let mut input = (sym.len() as u32).to_le_bytes().to_vec();
        input.extend_from_slice(&sym);
        input.extend_from_slice(strtab);
        let (s, t) = split_symtab_input(&input);
        assert_eq!((s.len(), t), (72, &strtab[..]));
        let file = build_elf(&[
            Part::symtab(s),
            Part {
                sh_type: object::elf::SHT_STRTAB,
                ..Part::section(".strtab", t, 0x40_0000, object::elf::PF_R)
            },
        ]);
        let info = elf::parse(&file).expect("the built ELF parses");
        assert!(info.has_symtab);
        assert_eq!(info.data_symbols.get("runtime.text"), Some(&0x40_1000));
        assert_eq!(info.func_symbols.len(), 1);
        assert_eq!(info.func_symbols[0].name, "main.main");
        assert_eq!(info.segments.len(), 1);
        assert!(info.section(&[".strtab"]).is_some());
        // Short and empty inputs split without panicking.
        assert_eq!(split_symtab_input(&[1, 2]), (&[][..], &[][..]));
        symtab(&[], &no_hook);
        symtab(&input, &no_hook);
    }

    #[test]
    fn symbol_names_are_limited() {
        // 1000 symbols all naming one 2000-byte string.
        let mut strtab = vec![0u8];
        strtab.extend_from_slice(&[b'f'; 2000]);
        strtab.push(0);
        let mut sym = vec![0u8; 24];
        for _ in 0..1000 {
            let mut s = vec![0u8; 24];
            s[..4].copy_from_slice(&1u32.to_le_bytes());
            s[4] = object::elf::STT_FUNC;
            s[6] = 1;
            sym.extend_from_slice(&s);
        }
        let strtab_part = Part {
            sh_type: object::elf::SHT_STRTAB,
            ..Part::section(".strtab", &strtab, 0x40_0000, object::elf::PF_R)
        };
        let file = build_elf(&[Part::symtab(&sym), strtab_part]);
        match elf::parse(&file) {
            Err(super::super::AnalysisError::LimitExceeded(l)) => {
                assert_eq!(l.what, "bytes of .symtab names")
            }
            other => panic!("{other:?}"),
        }
        // Two of them are fine.
        let strtab_part = Part {
            sh_type: object::elf::SHT_STRTAB,
            ..Part::section(".strtab", &strtab, 0x40_0000, object::elf::PF_R)
        };
        let file = build_elf(&[Part::symtab(&sym[..72]), strtab_part]);
        assert_eq!(elf::parse(&file).unwrap().func_symbols.len(), 2);
    }

    #[test]
    fn section_names_are_limited() {
        let long = "s".repeat(super::super::limits::MAX_SECTION_NAME_LEN + 1);
        let file = build_elf(&[Part::section(&long, b"x", 0x1000, object::elf::PF_R)]);
        match elf::parse(&file) {
            Err(super::super::AnalysisError::LimitExceeded(l)) => {
                assert_eq!(l.limit, "MAX_SECTION_NAME_LEN")
            }
            other => panic!("{other:?}"),
        }
        let file = build_elf(&[Part::section(&long[1..], b"x", 0x1000, object::elf::PF_R)]);
        assert_eq!(elf::parse(&file).unwrap().sections[1].name, long[1..]);
    }

    /// The `pclntab` seeds (real tables cut down by `cargo xtask fuzz --seed`) are
    /// whole tables: the fuzzer starts from inputs that go deep.
    #[test]
    fn pclntab_seeds_are_valid_tables() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/pclntab");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut checked = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let tab = pclntab::Pclntab::parse(&data, 0, INPUT_VADDR).unwrap();
            let funcs = tab.functions(&data, DEFAULT_TEXT).unwrap();
            assert!(funcs.len() >= 32, "{}", path.display());
            let with_lines = funcs
                .iter()
                .filter(|f| !tab.name(&data, f).is_empty())
                .filter(|f| tab.file_line(&data, f, f.entry).is_some())
                .count();
            assert!(with_lines * 10 >= funcs.len() * 9, "{}", path.display());
            let bin = GoBinary::parse(pclntab_executable(&data, &tab)).unwrap();
            assert_eq!(bin.funcs().count(), funcs.len());
            checked += 1;
        }
        assert!(checked > 0, "no seed-* file in {}", dir.display());
    }

    /// The committed corpus (seeds and the reproducers of fixed crashes) replays
    /// cleanly; the large seeds are left to `cargo xtask fuzz`.
    #[test]
    fn corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("buildinfo", buildinfo),
            ("pclntab", |d| pclntab(d, &no_hook)),
            ("symtab", |d| symtab(d, &no_hook)),
            ("elf", |d| elf(d, &no_hook)),
        ];
        for (target, run) in targets {
            let dir = root.join(target);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let seed = path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-");
                if !seed || data.len() < 64 << 10 {
                    run(&data);
                }
            }
        }
    }
}
