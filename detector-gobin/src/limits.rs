//! Size and count limits on everything read from a binary that drives an allocation,
//! a loop or a scan. Each is far above what real Go binaries need (a 127 MB one has
//! 138k functions, a 36 MB pclntab, 3 `PT_LOAD` segments and 16 sections; a PIE has
//! about 3k relocations per MB), and each exceeded limit is an
//! [`AnalysisError::LimitExceeded`](super::AnalysisError::LimitExceeded) naming it, or,
//! for best-effort queries that never fail, fewer results. `docs/fuzzing.md` lists them.
use std::fmt;

/// Largest file analysed: all of it is mapped and scanned, and pclntab offsets are
/// 32-bit anyway.
pub const MAX_BINARY_SIZE: u64 = 4 << 30;
/// `PT_LOAD` segments: every scan for a table (pclntab, build info, moduledata) walks
/// each one, so overlapping segments would multiply the work.
pub const MAX_LOAD_SEGMENTS: usize = 32;
/// Section headers (each keeps its name).
pub const MAX_SECTIONS: usize = 16_384;
/// A section name longer than this is not one detector looks for.
pub const MAX_SECTION_NAME_LEN: usize = 256;
/// `.symtab` entries.
pub const MAX_SYMBOLS: usize = 8_000_000;
/// A symbol or function name longer than this is garbage (generic instantiations
/// reach a few kB).
pub const MAX_NAME_LEN: usize = 1 << 20;
/// A source file name longer than this (PATH_MAX) is garbage.
pub const MAX_FILE_NAME_LEN: usize = 4096;
/// Bytes of symbol names read in all, as a multiple of the string table's size: real
/// names are distinct strings, but hostile symbols could all name one long string.
pub const SYMBOL_NAME_BYTES_PER_STRTAB_BYTE: usize = 2;
/// `R_X86_64_RELATIVE` relocations kept (each is a map entry).
pub const MAX_RELOCATIONS: usize = 16_000_000;
/// `DT_NEEDED` libraries (a cgo binary needs a handful).
pub const MAX_NEEDED: usize = 256;
/// A `DT_NEEDED` name longer than this (PATH_MAX) is garbage.
pub const MAX_NEEDED_NAME_LEN: usize = 4096;
/// Functions in the pclntab (each gets a record and a slot in the name index).
pub const MAX_FUNCS: usize = 4_000_000;
/// Candidate pclntab headers tried when scanning segments for one: each costs a walk
/// of its function table.
pub const MAX_PCLNTAB_CANDIDATES: usize = 64;
/// Steps decoded from one pc-value table.
pub const MAX_PCVALUE_STEPS: usize = 1 << 20;
/// Length of the Go version string in the build info.
pub const MAX_VERSION_LEN: u64 = 1024;
/// Length of the module info in the build info (one line per dependency).
pub const MAX_MODINFO_LEN: u64 = 64 << 20;
/// `build` lines of the module info (`go version -m` shows about 15).
pub const MAX_BUILD_SETTINGS: usize = 4096;
/// Modules in the build info (main and dependencies); large programs have a few
/// hundred.
pub const MAX_MODULES: usize = 16_384;
/// Functions larger than this are not decoded (no probe point, no inline search).
pub const MAX_FUNCTION_SIZE: u64 = 1 << 20;
/// Inline tree indices: the runtime views the tree as `*[1 << 20]inlinedCall`.
pub const MAX_INL_INDEX: i32 = 1 << 20;
/// Longest chain of nested inlined calls followed (the compiler's budget keeps real
/// ones far shorter; a cycle in a corrupt table stops here).
pub const MAX_INLINE_DEPTH: usize = 256;
/// Work allowed to one search for the inlined instances of a function over the
/// whole binary (pc-value runs decoded, tree entries visited, ranges recorded,
/// instructions examined): a 127 MB binary with 138k functions needs about 1M.
pub const MAX_INLINE_STEPS: usize = 1 << 26;

/// A size or count read from a binary above one of the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What was counted or measured, e.g. "pclntab function count".
    pub what: &'static str,
    pub value: u64,
    /// The constant's name, e.g. "MAX_FUNCS".
    pub limit: &'static str,
    pub max: u64,
}

/// `check_limit!("what", value, MAX_X)`: `Err(Limit)` naming `MAX_X` when `value`
/// (any unsigned integer) is above it.
macro_rules! check_limit {
    ($what:expr, $value:expr, $max:ident) => {{
        let (value, max) = (u64::try_from($value).unwrap_or(u64::MAX), $max as u64);
        if value > max {
            Err($crate::limits::Limit {
                what: $what,
                value,
                limit: stringify!($max),
                max,
            })
        } else {
            Ok(())
        }
    }};
}
pub(crate) use check_limit;

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}, above detector's limit {} = {}",
            self.what, self.value, self.limit, self.max
        )
    }
}
