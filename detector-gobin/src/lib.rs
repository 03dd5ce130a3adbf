//! detector-gobin: what is in a Go binary. Version and build settings, functions and
//! their bounds, source positions, inlined calls, and where to put uprobes
//! (linux/amd64 ELF, Go 1.19+). `detector` re-exports it as `detector::gobin`, the
//! way aya sits on aya-obj: the parser knows nothing of probes, processes or kernels.
//!
//! Pure analysis of the file's bytes: no privileges and no I/O beyond reading the file
//! ([`GoBinary::open`] maps it read-only; [`GoBinary::parse`] takes bytes in memory).
//! Every table is bounds-checked and every size read from the file is capped
//! ([`limits`]); hostile input gives an [`AnalysisError`], never a panic.
//!
//! Sources of truth, in order: `.go.buildinfo` (version, settings; kept by `-s -w`),
//! the pclntab (functions, names, file:line; kept by `-s -w`), moduledata (the text
//! base from Go 1.26, whose pcHeader no longer stores it), and `.symtab` only as a
//! cross-check when present. `inline.rs` reads the inline trees (where a function was
//! inlined, and where to probe that) and direct call targets.
//!
//! The `fuzzing` feature adds the hidden module `fuzzing`: the entry points of the
//! cargo-fuzz targets in `fuzz/` (see `docs/fuzzing.md`). Release builds leave it out.
use std::fmt;
use std::path::Path;

mod buildinfo;
mod elf;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod globals;
mod inline;
pub mod limits;
pub mod owner;
mod pclntab;
pub mod prologue;
pub mod version;

pub use globals::trace_multiplexer;
pub use inline::{InlinedCall, SourceFrame};
pub use limits::{Limit, MAX_FUNCTION_SIZE};
pub use pclntab::{MAGIC_GO118, MAGIC_GO120};
pub use version::GoVersion;

use limits::{check_limit, MAX_BINARY_SIZE};
use pclntab::{FuncRec, PclnError, Pclntab};

/// Offset of `moduledata.text` (amd64): after pcHeader, five slices, ftab,
/// findfunctab, minpc, maxpc. Unchanged from Go 1.16 to 1.27.
const MODULEDATA_TEXT: u64 = 176;
/// Offset of `moduledata.funcnametab` (the slice's data pointer).
const MODULEDATA_FUNCNAMETAB: u64 = 8;

/// Why a binary could not be analysed. Each message is one line naming the cause.
#[derive(thiserror::Error, Debug)]
pub enum AnalysisError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not an ELF file (detector analyses linux/amd64 executables)")]
    NotElf,
    #[error("binary is for {machine}, not linux/amd64; detector supports amd64 only")]
    NotAmd64 { machine: String },
    #[error("not a Go binary: no pclntab and no Go build info found")]
    NotGo,
    #[error("corrupt or unusual Go binary: {0}")]
    Corrupt(String),
    #[error("Go version {version} is not supported (detector needs Go 1.19 or newer); rebuild with a newer Go toolchain")]
    UnsupportedGoVersion { version: String },
    #[error("function {name} is {size} bytes, larger than the {max}-byte decoding limit")]
    FunctionTooLarge { name: String, size: u64, max: u64 },
    #[error("no function named {0} in the binary (inlined, renamed in this Go version, or not linked in)")]
    NoSuchFunction(String),
    #[error("function {name} at {entry:#x} is not in an executable segment of the file")]
    NotMapped { name: String, entry: u64 },
    #[error("corrupt or hostile binary: {0}")]
    LimitExceeded(Limit),
}

impl From<Limit> for AnalysisError {
    fn from(l: Limit) -> Self {
        AnalysisError::LimitExceeded(l)
    }
}

/// Facts about a binary as a whole.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BinaryInfo {
    /// The version string from `.go.buildinfo`, e.g. "go1.21.13"; empty when there is
    /// no build info (then the pclntab magic tells 1.18/1.19 from 1.20+).
    pub go_version_string: String,
    /// Parsed `go_version_string` (None for "devel ..." builds or missing build info).
    pub go_version: Option<GoVersion>,
    /// The main module path (`path` line of the module info).
    pub main_module: Option<String>,
    /// `build` lines of the module info: -buildmode, -ldflags, CGO_ENABLED, GOARCH, ...
    pub build_settings: Vec<(String, String)>,
    /// Module paths of the build, the main module first (empty for GOPATH-mode
    /// builds, which record none): who owns a function ([`owner`]).
    pub modules: Vec<String>,
    /// No `.symtab` (built with `-ldflags=-s` or stripped afterwards).
    pub stripped: bool,
    /// Position-independent executable (ET_DYN): probe offsets are file offsets anyway.
    pub pie: bool,
    /// runtime/cgo is linked in (cgo code, or external linking which requires it).
    pub cgo: bool,
    /// Linked by the system linker: `.text` starts before runtime.text.
    pub external_link: bool,
    /// Has a program interpreter (dynamically linked).
    pub dynamic: bool,
    /// `DT_NEEDED` shared libraries (e.g. "libc.so.6" for cgo builds).
    pub needed_libraries: Vec<String>,
    /// The text base function entries are relative to (runtime.text).
    pub text_start: u64,
    /// Where the text base came from: "pcHeader", "moduledata", or "symtab".
    pub text_start_source: &'static str,
    /// 0xfffffff0 (Go 1.18/1.19) or 0xfffffff1 (Go 1.20+).
    pub pclntab_magic: u32,
    /// Virtual address of the pclntab header.
    pub pclntab_vaddr: u64,
    pub function_count: usize,
    pub has_dwarf: bool,
    /// `.symtab` function symbols whose address disagrees with the pclntab entry of the
    /// same name (at most 16 names kept). Empty when consistent or stripped.
    pub symtab_mismatches: Vec<String>,
}

/// A function of the binary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Func {
    /// The Go symbol name, e.g. "runtime.ReadMemStats".
    pub name: String,
    /// Virtual address of the first instruction.
    pub entry: u64,
    /// Virtual address just past the function (the next function's entry; includes
    /// alignment padding).
    pub end: u64,
}

/// Where to put uprobes for one function.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbePoint {
    /// Virtual address of the function entry.
    pub entry: u64,
    /// Where the entry probe goes, an instruction the kernel emulates where there is
    /// one: the first instruction after the stack-check prologue when it is emulated
    /// (`push rbp`, Go 1.21+); else the stack check's JBE (Go 1.19 builds the frame
    /// with `sub rsp`, which the kernel single-steps), see `on_stack_check_jump`;
    /// `entry` when the function has no stack check (nosplit functions such as
    /// runtime.LockOSThread).
    pub probe_vaddr: u64,
    /// File offset of `probe_vaddr` (what uprobe attach wants).
    pub probe_file_offset: u64,
    /// A stack-check prologue was found (an entry probe would fire twice on stack growth).
    pub stack_check: bool,
    /// The probe sits on the stack check's JBE: the registers are the entry's, and a
    /// hit whose jump will be taken (CF or ZF set: the function goes to morestack and
    /// is re-entered) is not a call of its own.
    pub on_stack_check_jump: bool,
    /// The kernel emulates the probed instruction (else it single-steps it out of
    /// line: a second trap on each hit, many times the cost).
    pub emulated: bool,
    /// Virtual address of every RET in the function.
    pub rets: Vec<u64>,
    /// File offsets of `rets`, same order.
    pub ret_file_offsets: Vec<u64>,
}

/// The bytes of the file.
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed Go binary. Owns its bytes (mapped or in memory) and the function index.
pub struct GoBinary {
    bytes: Bytes,
    elf: elf::ElfInfo,
    pcln: Pclntab,
    funcs: Vec<FuncRec>,
    /// Indices into `funcs`, sorted by name (then entry).
    by_name: Vec<u32>,
    info: BinaryInfo,
    /// `moduledata.gofunc`, found on first use (see `inline.rs`).
    gofunc: inline::GofuncCell,
    /// Who owns each package, from the build info (built on first use).
    ownership: std::sync::OnceLock<owner::Ownership>,
}

impl fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoBinary")
            .field("info", &self.info)
            .finish()
    }
}

impl GoBinary {
    /// Maps the file read-only and parses it.
    pub fn open(path: &Path) -> Result<GoBinary, AnalysisError> {
        let io = |source| AnalysisError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(AnalysisError::NotElf);
        }
        check_limit!("file size", len, MAX_BINARY_SIZE)?;
        // SAFETY: the map is read-only and private to this value; a file truncated by
        // someone else while mapped could fault, the same as for any ELF loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_bytes(Bytes::Mapped(map))
    }

    /// Drops the pages of the mapped file from this process's resident set (they stay
    /// in the page cache; the next read faults them back in). `watch` calls it once a
    /// binary is analysed: later lookups touch only a few pclntab pages.
    pub fn release_pages(&self) {
        if let Bytes::Mapped(m) = &self.bytes {
            // SAFETY: the mapping is a private read-only view of a file: MADV_DONTNEED
            // cannot lose data, later reads see the file's contents again.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Parses a binary held in memory (pure; for tests and fuzzing).
    pub fn parse(bytes: Vec<u8>) -> Result<GoBinary, AnalysisError> {
        Self::from_bytes(Bytes::Owned(bytes))
    }

    fn from_bytes(bytes: Bytes) -> Result<GoBinary, AnalysisError> {
        let data = bytes.as_slice();
        check_limit!("file size", data.len(), MAX_BINARY_SIZE)?;
        let elf = elf::parse(data)?;
        let build = buildinfo::locate(data, &elf).map(|b| buildinfo::parse(b, data, &elf));
        let build = match build {
            Some(Ok(b)) => Some(b),
            Some(Err(buildinfo::BuildInfoError::Bad(e))) => {
                return Err(AnalysisError::Corrupt(format!("bad .go.buildinfo: {e}")))
            }
            Some(Err(buildinfo::BuildInfoError::Limit(l))) => return Err(l.into()),
            None => None,
        };
        let go_version = build.as_ref().and_then(|b| GoVersion::parse(&b.version));
        if let (Some(v), Some(b)) = (go_version, &build) {
            if !v.is_supported() {
                return Err(AnalysisError::UnsupportedGoVersion {
                    version: b.version.clone(),
                });
            }
        }
        let pcln = match pclntab::locate(data, &elf) {
            Ok(Some(p)) => p,
            Ok(None) if build.is_some() => {
                return Err(AnalysisError::Corrupt(
                    "Go build info present but no pclntab found".into(),
                ))
            }
            Ok(None) => return Err(AnalysisError::NotGo),
            Err(PclnError::OldMagic(m)) => {
                return Err(AnalysisError::UnsupportedGoVersion {
                    version: match &build {
                        Some(b) => b.version.clone(),
                        None if m == pclntab::MAGIC_GO116 => "go1.16 or go1.17".into(),
                        None => "older than go1.16".into(),
                    },
                })
            }
            Err(PclnError::Bad(e)) => {
                return Err(AnalysisError::Corrupt(format!("bad pclntab: {e}")))
            }
            Err(PclnError::Limit(l)) => return Err(l.into()),
        };
        let tab = pcln.bytes(data);
        let (text_start, text_start_source) = text_base(data, &elf, &pcln)?;
        let funcs = pcln.functions(tab, text_start).map_err(|e| match e {
            PclnError::Limit(l) => AnalysisError::LimitExceeded(l),
            PclnError::Bad(e) => AnalysisError::Corrupt(format!("bad pclntab: {e}")),
            PclnError::OldMagic(m) => AnalysisError::Corrupt(format!("pclntab magic {m:#x}")),
        })?;
        // The first function must be code in the file, or the text base is wrong.
        let first = funcs.first().map(|f| f.entry).unwrap_or(text_start);
        if !elf.is_executable_addr(first) {
            return Err(AnalysisError::Corrupt(format!(
                "text base {text_start:#x} (from {text_start_source}) does not point into an executable segment"
            )));
        }
        let mut by_name: Vec<u32> = (0..funcs.len() as u32).collect();
        by_name.sort_by(|&a, &b| {
            let (fa, fb) = (&funcs[a as usize], &funcs[b as usize]);
            pcln.name(tab, fa)
                .cmp(pcln.name(tab, fb))
                .then(fa.entry.cmp(&fb.entry))
        });

        let settings = build
            .as_ref()
            .map(|b| b.settings.clone())
            .unwrap_or_default();
        let setting = |k: &str| {
            settings
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let text_section = elf.section(&[".text"]).map(|s| s.addr);
        let external_link = text_section.is_some_and(|a| a < text_start)
            || setting("-ldflags").is_some_and(|f| {
                f.contains("-linkmode=external") || f.contains("-linkmode external")
            });
        let mut bin = GoBinary {
            info: BinaryInfo {
                go_version_string: build
                    .as_ref()
                    .map(|b| b.version.clone())
                    .unwrap_or_default(),
                go_version,
                main_module: build.as_ref().and_then(|b| b.main_module.clone()),
                build_settings: settings.clone(),
                modules: build
                    .as_ref()
                    .map(|b| b.modules.clone())
                    .unwrap_or_default(),
                stripped: !elf.has_symtab,
                pie: elf.pie,
                cgo: false,
                external_link,
                dynamic: elf.has_interp,
                needed_libraries: elf.needed.clone(),
                text_start,
                text_start_source,
                pclntab_magic: pcln.magic,
                pclntab_vaddr: pcln.vaddr,
                function_count: funcs.len(),
                has_dwarf: elf.has_dwarf(),
                symtab_mismatches: Vec::new(),
            },
            bytes,
            elf,
            pcln,
            funcs,
            by_name,
            gofunc: inline::GofuncCell::new(),
            ownership: std::sync::OnceLock::new(),
        };
        bin.info.cgo = external_link || bin.has_name_prefix(b"runtime/cgo.");
        bin.info.symtab_mismatches = bin.symtab_mismatches();
        Ok(bin)
    }

    fn data(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    fn tab(&self) -> &[u8] {
        self.pcln.bytes(self.data())
    }

    /// Facts about the binary as a whole.
    pub fn info(&self) -> &BinaryInfo {
        &self.info
    }

    fn func(&self, rec: &FuncRec) -> Func {
        let name = self.pcln.name(self.tab(), rec);
        Func {
            name: String::from_utf8_lossy(name).into_owned(),
            entry: rec.entry,
            end: rec.end,
        }
    }

    /// Range of `by_name` positions whose name satisfies `cmp` == Equal.
    fn name_range(&self, cmp: impl Fn(&[u8]) -> std::cmp::Ordering) -> std::ops::Range<usize> {
        let tab = self.tab();
        let name = |i: &u32| self.pcln.name(tab, &self.funcs[*i as usize]);
        let lo = self.by_name.partition_point(|i| cmp(name(i)).is_lt());
        let hi = self.by_name.partition_point(|i| cmp(name(i)).is_le());
        lo..hi.max(lo)
    }

    fn has_name_prefix(&self, prefix: &[u8]) -> bool {
        let r = self.name_range(|n| n.get(..prefix.len()).unwrap_or(n).cmp(prefix));
        !r.is_empty()
    }

    /// The function with this exact Go symbol name, e.g. "runtime.ReadMemStats" or
    /// "runtime/trace.(*traceMultiplexer).subscribeTraceStartWriter".
    ///
    /// The pclntab names an ABI wrapper like the function it wraps (`.symtab` adds
    /// `.abi0` to the ABI0 one). Among such duplicates the `.symtab` symbol of that
    /// exact name decides; without symbols the ABIInternal one is chosen, as `go tool
    /// nm` names it: for assembly functions the wrapper (the assembly itself is ABI0),
    /// for Go functions the one that is not a wrapper; then the lowest address.
    pub fn func_by_name(&self, name: &str) -> Option<Func> {
        let range = self.name_range(|n| n.cmp(name.as_bytes()));
        let candidates = self.by_name.get(range)?;
        let rec = |i: &u32| &self.funcs[*i as usize];
        let pick = if candidates.len() > 1 {
            let sym = self
                .elf
                .func_symbols
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.value);
            let is_asm = |i: &&u32| rec(i).flag & pclntab::FUNC_FLAG_ASM != 0;
            let wrapper = self.info.go_version.map(pclntab::wrapper_func_id);
            let abi_internal = if candidates.iter().any(|i| is_asm(&i)) {
                candidates.iter().find(|i| !is_asm(i))
            } else {
                candidates
                    .iter()
                    .find(|i| wrapper.is_some() && Some(rec(i).func_id) != wrapper)
            };
            candidates
                .iter()
                .find(|i| sym.is_some() && Some(rec(i).entry) == sym)
                .or(abi_internal)
                .or(candidates.first())
        } else {
            candidates.first()
        };
        pick.map(|i| self.func(rec(i)))
    }

    fn rec_at(&self, vaddr: u64) -> Option<&FuncRec> {
        let i = self
            .funcs
            .partition_point(|f| f.entry <= vaddr)
            .checked_sub(1)?;
        let f = self.funcs.get(i)?;
        (vaddr < f.end).then_some(f)
    }

    /// Who owns the function named `function` (see [`owner`]).
    pub fn owner_of(&self, function: &str) -> owner::Owned<'_> {
        self.ownership
            .get_or_init(|| {
                owner::Ownership::new(&self.info.modules, self.info.main_module.as_deref())
            })
            .of(function)
    }

    /// The function whose range contains `vaddr`.
    pub fn func_at(&self, vaddr: u64) -> Option<Func> {
        self.rec_at(vaddr).map(|r| self.func(r))
    }

    /// Source file and line of `pc` from the pclntab (the innermost position when code
    /// was inlined).
    pub fn file_line(&self, pc: u64) -> Option<(String, u32)> {
        let rec = self.rec_at(pc)?;
        self.pcln.file_line(self.tab(), rec, pc)
    }

    /// File offset of `vaddr` through the PT_LOAD segment that maps it from the file:
    /// `vaddr - segment.vaddr + segment.offset`.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.elf.file_offset(vaddr)
    }

    /// `len` bytes of the file image at `vaddr` (e.g. a Go string constant such as a
    /// Go 1.19 stop-the-world reason), when they are all file-backed.
    pub fn read_bytes_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.elf.bytes_at(self.data(), vaddr, len)
    }

    /// Same as [`GoBinary::read_bytes_at`] (Go strings are not NUL-terminated; the
    /// length comes from the string header).
    pub fn read_cstring_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.read_bytes_at(vaddr, len)
    }

    /// Every function, by address.
    pub fn funcs(&self) -> impl Iterator<Item = Func> + '_ {
        self.funcs.iter().map(|r| self.func(r))
    }

    /// Decodes `f` and finds where to probe it: after the stack-check prologue, and at
    /// every RET.
    pub fn probe_point(&self, f: &Func) -> Result<ProbePoint, AnalysisError> {
        let size = f.end.saturating_sub(f.entry);
        if size > MAX_FUNCTION_SIZE {
            return Err(AnalysisError::FunctionTooLarge {
                name: f.name.clone(),
                size,
                max: MAX_FUNCTION_SIZE,
            });
        }
        let not_mapped = || AnalysisError::NotMapped {
            name: f.name.clone(),
            entry: f.entry,
        };
        if f.end <= f.entry || !self.elf.is_executable_addr(f.entry) {
            return Err(not_mapped());
        }
        let code = self
            .read_bytes_at(f.entry, size as usize)
            .ok_or_else(not_mapped)?;
        let facts = prologue::analyze(code, f.entry);
        let emulated_at = |v: u64| {
            code.get((v - f.entry) as usize..)
                .is_some_and(prologue::kernel_emulates)
        };
        let after = facts.after_stack_check.unwrap_or(f.entry);
        let (probe_vaddr, on_stack_check_jump) = match facts.stack_check_jbe {
            Some(jbe) if !emulated_at(after) => (jbe, true),
            _ => (after, false),
        };
        let offset = |v: u64| self.file_offset(v).ok_or_else(not_mapped);
        Ok(ProbePoint {
            entry: f.entry,
            probe_vaddr,
            probe_file_offset: offset(probe_vaddr)?,
            stack_check: facts.after_stack_check.is_some(),
            on_stack_check_jump,
            emulated: emulated_at(probe_vaddr),
            ret_file_offsets: facts
                .rets
                .iter()
                .map(|&r| offset(r))
                .collect::<Result<_, _>>()?,
            rets: facts.rets,
        })
    }

    /// Probe point of the function named `name`.
    pub fn probe_point_by_name(&self, name: &str) -> Result<ProbePoint, AnalysisError> {
        let f = self
            .func_by_name(name)
            .ok_or_else(|| AnalysisError::NoSuchFunction(name.to_owned()))?;
        self.probe_point(&f)
    }

    /// `.symtab` function symbols that name a pclntab function at another address.
    fn symtab_mismatches(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.elf.func_symbols {
            let range = self.name_range(|n| n.cmp(s.name.as_bytes()));
            let Some(candidates) = self.by_name.get(range) else {
                continue;
            };
            if candidates.is_empty() {
                continue;
            }
            if !candidates
                .iter()
                .any(|&i| self.funcs[i as usize].entry == s.value)
            {
                out.push(s.name.clone());
                if out.len() >= 16 {
                    break;
                }
            }
        }
        out
    }
}

/// The text base function entry offsets are relative to (runtime.text).
///
/// Go 1.18-1.25 store it in pcHeader.textStart (PIE: maybe as a relocation). Go 1.26+
/// leave that zero and only moduledata.text has it. Never the `.text` section address:
/// externally linked binaries put C code before runtime.text.
fn text_base(
    data: &[u8],
    elf: &elf::ElfInfo,
    pcln: &Pclntab,
) -> Result<(u64, &'static str), AnalysisError> {
    let field = pcln.text_start_field;
    if field != 0 {
        return Ok((field, "pcHeader"));
    }
    if let Some(&v) = elf.relative_relocs.get(&pcln.vaddr.saturating_add(24)) {
        if v != 0 {
            return Ok((v, "pcHeader"));
        }
    }
    if let Some(md) = find_moduledata(data, elf, pcln) {
        if let Some(text) = elf.read_ptr(data, md.saturating_add(MODULEDATA_TEXT)) {
            if text != 0 {
                return Ok((text, "moduledata"));
            }
        }
    }
    if let Some(&v) = elf.data_symbols.get("runtime.text") {
        return Ok((v, "symtab"));
    }
    Err(AnalysisError::Corrupt(
        "cannot find the text base: pcHeader.textStart is zero and no moduledata found".into(),
    ))
}

/// Address of runtime.firstmoduledata: the `.go.module` section (Go 1.26+), the
/// symbol, or a search for a word pointing at the pclntab followed by one pointing at
/// its funcnametab.
fn find_moduledata(data: &[u8], elf: &elf::ElfInfo, pcln: &Pclntab) -> Option<u64> {
    let funcnametab = pcln.vaddr.checked_add(pcln.funcname as u64)?;
    let is_md = |addr: u64| {
        elf.read_ptr(data, addr) == Some(pcln.vaddr)
            && elf.read_ptr(data, addr.wrapping_add(MODULEDATA_FUNCNAMETAB)) == Some(funcnametab)
    };
    if let Some(s) = elf.section(&[".go.module"]) {
        if is_md(s.addr) {
            return Some(s.addr);
        }
    }
    if let Some(&a) = elf.data_symbols.get("runtime.firstmoduledata") {
        if is_md(a) {
            return Some(a);
        }
    }
    // PIE: the pointer is a relocation.
    let mut from_relocs: Vec<u64> = elf
        .relative_relocs
        .iter()
        .filter(|(_, &addend)| addend == pcln.vaddr)
        .map(|(&place, _)| place)
        .filter(|&place| is_md(place))
        .collect();
    from_relocs.sort_unstable();
    if let Some(&a) = from_relocs.first() {
        return Some(a);
    }
    // Static: scan writable segments for the pointer, 8-byte aligned.
    let needle = pcln.vaddr.to_le_bytes();
    for seg in elf.segments.iter().filter(|s| s.writable()) {
        let start = usize::try_from(seg.offset).ok()?;
        let bytes = data.get(start..start.saturating_add(seg.filesz as usize).min(data.len()))?;
        let mut i = ((8 - (seg.vaddr % 8)) % 8) as usize;
        while i + 16 <= bytes.len() {
            if bytes[i..i + 8] == needle {
                let addr = seg.vaddr.wrapping_add(i as u64);
                if is_md(addr) {
                    return Some(addr);
                }
            }
            i += 8;
        }
    }
    None
}

#[cfg(test)]
mod tests;
