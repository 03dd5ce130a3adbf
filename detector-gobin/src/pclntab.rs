//! The Go 1.18+ pclntab (`runtime.pcHeader` and the tables after it): function
//! entries, names, and the pc-value tables for file and line.
//!
//! pcHeader (amd64): magic u32, pad1 u8, pad2 u8, minLC u8, ptrSize u8, nfunc int,
//! nfiles uint, textStart uintptr (zero from Go 1.26: the text base is moduledata.text),
//! then the offsets of funcnametab, cutab, filetab, pctab and the function table, all
//! relative to the header. The function table is `nfunc + 1` pairs of u32
//! (entry offset from the text base, `_func` offset into the function table); the
//! last entry offset is the end of text. `_func` begins entryOff u32, nameOff i32,
//! args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset (all u32).
use super::elf::ElfInfo;
use super::limits::{
    check_limit, Limit, MAX_FILE_NAME_LEN, MAX_FUNCS, MAX_NAME_LEN, MAX_PCLNTAB_CANDIDATES,
    MAX_PCVALUE_STEPS,
};

/// Go 1.2 to 1.15: not supported.
pub(crate) const MAGIC_GO12: u32 = 0xffff_fffb;
/// Go 1.16 and 1.17: not supported.
pub(crate) const MAGIC_GO116: u32 = 0xffff_fffa;
/// Go 1.18 and 1.19.
pub const MAGIC_GO118: u32 = 0xffff_fff0;
/// Go 1.20 and later.
pub const MAGIC_GO120: u32 = 0xffff_fff1;

const HEADER_LEN: usize = 72;
/// `_func` fields used here (byte offsets).
const FUNC_ENTRY_OFF: usize = 0;
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_NPCDATA: usize = 28;
const FUNC_CU_OFFSET: usize = 32;
/// Length of the fixed part of `_func`: Go 1.20 added startLine (i32) before funcID,
/// so nfuncdata, the last byte, is at 39 (1.18/1.19) or 43 (1.20+). The u32 arrays
/// `pcdata[npcdata]` and then `funcdata[nfuncdata]` follow.
const FUNC_HEADER_GO118: usize = 40;
const FUNC_HEADER_GO120: usize = 44;

/// Reads a little-endian u32 at `off`.
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// Reads a little-endian u64 at `off`.
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// Decodes an unsigned LEB128 varint (at most 10 bytes, no overflow). Returns the value
/// and the number of bytes used.
pub fn read_uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        let low = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return None; // more than 64 bits
        }
        v |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Looks up the value of a pc-value table at `target`: the table is a sequence of
/// (zig-zag value delta, pc delta) uvarint pairs starting at value -1 and pc `entry`,
/// ended by a zero value delta. Returns `None` when `target` is not covered.
pub fn pcvalue(table: &[u8], entry: u64, target: u64, quantum: u64) -> Option<i32> {
    let mut p = table;
    let mut pc = entry;
    let mut val: i32 = -1;
    for _ in 0..MAX_PCVALUE_STEPS {
        let (uv, n) = read_uvarint(p)?;
        if uv == 0 && pc != entry {
            return None;
        }
        let uv = u32::try_from(uv).ok()?;
        p = p.get(n..)?;
        let delta = if uv & 1 != 0 {
            !(uv >> 1) as i32
        } else {
            (uv >> 1) as i32
        };
        val = val.wrapping_add(delta);
        let (pcdelta, n) = read_uvarint(p)?;
        p = p.get(n..)?;
        pc = pc.checked_add(pcdelta.checked_mul(quantum)?)?;
        if target < pc {
            return Some(val);
        }
        if pcdelta == 0 && uv == 0 {
            return None; // cannot make progress
        }
    }
    None
}

/// Every run of a pc-value table within `[entry, end)`: `(start, end, value)` with
/// `start < end`, in address order (same encoding as [`pcvalue`]). Stops at the table's
/// end marker, at `end`, at a malformed step (including a zero pc delta), or after a
/// bounded number of steps.
pub fn pcvalue_runs(table: &[u8], entry: u64, end: u64, quantum: u64) -> Vec<(u64, u64, i32)> {
    let mut out = Vec::new();
    let mut p = table;
    let mut pc = entry;
    let mut val: i32 = -1;
    for step in 0..MAX_PCVALUE_STEPS {
        if pc >= end {
            break;
        }
        let Some((uv, n)) = read_uvarint(p) else {
            break;
        };
        if uv == 0 && step > 0 {
            break;
        }
        let Ok(uv) = u32::try_from(uv) else {
            break;
        };
        let delta = if uv & 1 != 0 {
            !(uv >> 1) as i32
        } else {
            (uv >> 1) as i32
        };
        val = val.wrapping_add(delta);
        let Some((pcdelta, m)) = p.get(n..).and_then(read_uvarint) else {
            break;
        };
        p = p.get(n + m..).unwrap_or(&[]);
        // The linker emits a pair only at a real instruction boundary, so a zero pc
        // delta never occurs in a valid table.
        if pcdelta == 0 {
            break;
        }
        let Some(next) = pcdelta.checked_mul(quantum).and_then(|d| pc.checked_add(d)) else {
            break;
        };
        let next = next.min(end);
        out.push((pc, next, val));
        pc = next;
    }
    out
}

/// One function of the pclntab.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FuncRec {
    pub entry: u64,
    /// The next function's entry (or the end of text): includes alignment padding.
    pub end: u64,
    /// Offset of the `_func` within the pclntab bytes.
    pub func_off: usize,
    /// Offset and length of the name within the pclntab bytes.
    pub name_off: usize,
    pub name_len: usize,
    /// `_func.funcID` (version-dependent numbering; see `wrapper_func_id`).
    pub func_id: u8,
    /// `_func.flag` (bit 2: written in assembly).
    pub flag: u8,
}

/// A parsed pcHeader. Offsets are relative to the start of the pclntab bytes.
#[derive(Clone, Debug)]
pub(crate) struct Pclntab {
    /// File offset and length of the pclntab bytes.
    pub file_offset: usize,
    pub len: usize,
    pub vaddr: u64,
    pub magic: u32,
    pub quantum: u64,
    pub nfunc: usize,
    /// pcHeader.textStart as stored in the file (zero in Go 1.26+, or in PIE files
    /// where a relocation fills it in).
    pub text_start_field: u64,
    pub funcname: usize,
    pub cutab: usize,
    pub filetab: usize,
    pub pctab: usize,
    pub ftab: usize,
}

/// Why a candidate pclntab was rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PclnError {
    /// A pre-1.18 table (magic given).
    OldMagic(u32),
    Bad(String),
    Limit(Limit),
}

impl From<Limit> for PclnError {
    fn from(l: Limit) -> Self {
        PclnError::Limit(l)
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, PclnError> {
    Err(PclnError::Bad(msg.into()))
}

impl Pclntab {
    /// Parses the header at the start of `tab` (the pclntab bytes, file offset
    /// `file_offset`, mapped at `vaddr`).
    pub fn parse(tab: &[u8], file_offset: usize, vaddr: u64) -> Result<Pclntab, PclnError> {
        let magic = u32_at(tab, 0).ok_or_else(|| PclnError::Bad("pclntab truncated".into()))?;
        match magic {
            MAGIC_GO118 | MAGIC_GO120 => {}
            MAGIC_GO12 | MAGIC_GO116 => return Err(PclnError::OldMagic(magic)),
            m => return bad(format!("unknown pclntab magic {m:#x}")),
        }
        if tab.len() < HEADER_LEN {
            return bad("pclntab header truncated");
        }
        let (pad1, pad2, min_lc, ptr_size) = (tab[4], tab[5], tab[6], tab[7]);
        if pad1 != 0 || pad2 != 0 || min_lc != 1 || ptr_size != 8 {
            return bad(format!(
                "pclntab header is not amd64 (quantum {min_lc}, pointer size {ptr_size})"
            ));
        }
        let field = |i: usize| u64_at(tab, 8 + 8 * i).unwrap_or(u64::MAX);
        let to_off = |v: u64, what: &str| -> Result<usize, PclnError> {
            match usize::try_from(v) {
                Ok(o) if o < tab.len() => Ok(o),
                _ => bad(format!("pclntab {what} offset {v:#x} out of range")),
            }
        };
        let nfunc = field(0);
        let ftab = to_off(field(7), "function table")?;
        // nfunc + 1 functab entries of 8 bytes must fit.
        let need = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(ftab as u64));
        if nfunc == 0 || need.is_none_or(|n| n > tab.len() as u64) {
            return bad(format!("pclntab function count {nfunc} does not fit"));
        }
        check_limit!("pclntab function count", nfunc, MAX_FUNCS)?;
        Ok(Pclntab {
            file_offset,
            len: tab.len(),
            vaddr,
            magic,
            quantum: u64::from(min_lc),
            nfunc: nfunc as usize,
            text_start_field: field(2),
            funcname: to_off(field(3), "function name")?,
            cutab: to_off(field(4), "compilation unit")?,
            filetab: to_off(field(5), "file")?,
            pctab: to_off(field(6), "pc table")?,
            ftab,
        })
    }

    /// Offset of `_func.funcID`: after cuOffset, and after startLine from Go 1.20.
    fn func_id_offset(&self) -> usize {
        if self.magic == MAGIC_GO118 {
            36
        } else {
            40
        }
    }

    /// Length of the fixed part of `_func` in this table's format.
    fn func_header_len(&self) -> usize {
        if self.magic == MAGIC_GO118 {
            FUNC_HEADER_GO118
        } else {
            FUNC_HEADER_GO120
        }
    }

    /// `_func.pcdata[i]`: the pc-value table `i` (`PCDATA_*` index) of `f`, or `None`
    /// when the function has fewer tables or this one is absent (offset 0).
    pub fn pcdata_table<'t>(&self, tab: &'t [u8], f: &FuncRec, i: usize) -> Option<&'t [u8]> {
        let npcdata = u32_at(tab, f.func_off.checked_add(FUNC_NPCDATA)?)?;
        if i >= npcdata as usize {
            return None;
        }
        let at = f
            .func_off
            .checked_add(self.func_header_len())?
            .checked_add(i.checked_mul(4)?)?;
        let off = u32_at(tab, at)?;
        if off == 0 {
            return None;
        }
        tab.get(self.pctab.checked_add(off as usize)?..)
    }

    /// `_func.funcdata[i]` (`FUNCDATA_*` index) of `f`: an offset from
    /// `moduledata.gofunc` (the `go:func.*` symbol), or `None` when the function has
    /// fewer funcdata or this one is absent (^0).
    pub fn funcdata_off(&self, tab: &[u8], f: &FuncRec, i: usize) -> Option<u32> {
        let header = self.func_header_len();
        let nfuncdata = *tab.get(f.func_off.checked_add(header - 1)?)?;
        if i >= usize::from(nfuncdata) {
            return None;
        }
        let npcdata = u32_at(tab, f.func_off.checked_add(FUNC_NPCDATA)?)? as usize;
        let at = f
            .func_off
            .checked_add(header)?
            .checked_add(npcdata.checked_mul(4)?)?
            .checked_add(i.checked_mul(4)?)?;
        match u32_at(tab, at)? {
            u32::MAX => None,
            off => Some(off),
        }
    }

    /// The NUL-terminated function name at `name_off` in the function name table
    /// (what `_func.nameOff` and inline tree entries hold).
    pub fn name_at<'t>(&self, tab: &'t [u8], name_off: u32) -> Option<&'t [u8]> {
        let start = self.funcname.checked_add(name_off as usize)?;
        let len = cstr_len(tab, start, MAX_NAME_LEN)?;
        tab.get(start..start.checked_add(len)?)
    }

    /// Whether the name at `name_off` (as for [`Pclntab::name_at`]) is `name`, reading
    /// no more than its length.
    pub fn name_is(&self, tab: &[u8], name_off: u32, name: &[u8]) -> bool {
        let Some(start) = self.funcname.checked_add(name_off as usize) else {
            return false;
        };
        let end = start.saturating_add(name.len());
        tab.get(start..end) == Some(name) && tab.get(end) == Some(&0)
    }

    /// `_func.cuOffset`: where the function's compilation unit starts in cutab.
    pub fn cu_offset(&self, tab: &[u8], f: &FuncRec) -> Option<u32> {
        u32_at(tab, f.func_off.checked_add(FUNC_CU_OFFSET)?)
    }

    /// Name of file number `fileno` of the compilation unit at cutab index `cu`.
    pub fn file_name(&self, tab: &[u8], cu: u32, fileno: i32) -> Option<String> {
        let idx = (cu as usize).checked_add(usize::try_from(fileno).ok()?)?;
        let file_off = u32_at(tab, self.cutab.checked_add(idx.checked_mul(4)?)?)?;
        if file_off == u32::MAX {
            return None;
        }
        let start = self.filetab.checked_add(file_off as usize)?;
        let len = cstr_len(tab, start, MAX_FILE_NAME_LEN)?;
        let name = tab.get(start..start.checked_add(len)?)?;
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// The pclntab bytes within the file.
    pub fn bytes<'d>(&self, data: &'d [u8]) -> &'d [u8] {
        let end = self.file_offset.saturating_add(self.len);
        data.get(self.file_offset..end).unwrap_or(&[])
    }

    /// Functab entry `i`: (entry offset, `_func` offset).
    fn functab(&self, tab: &[u8], i: usize) -> Option<(u32, u32)> {
        let off = self.ftab.checked_add(i.checked_mul(8)?)?;
        Some((u32_at(tab, off)?, u32_at(tab, off.checked_add(4)?)?))
    }

    /// Every function, sorted by entry, given the text base.
    pub fn functions(&self, tab: &[u8], text_start: u64) -> Result<Vec<FuncRec>, PclnError> {
        let mut out = Vec::with_capacity(self.nfunc.min(1 << 20));
        let corrupt = |i: usize, what: &str| PclnError::Bad(format!("function {i}: {what}"));
        let mut next = self
            .functab(tab, 0)
            .ok_or_else(|| corrupt(0, "truncated"))?;
        // Real names are distinct strings of the name table; hostile `_func`s could
        // all name one long string, and each name is scanned for its NUL.
        let name_budget = tab.len().saturating_mul(2);
        let mut name_bytes = 0usize;
        for i in 0..self.nfunc {
            let (entry_off, func_off) = next;
            next = self
                .functab(tab, i + 1)
                .ok_or_else(|| corrupt(i + 1, "truncated"))?;
            if next.0 < entry_off {
                return Err(corrupt(i, "function table is not sorted"));
            }
            let func_off = self
                .ftab
                .checked_add(func_off as usize)
                .ok_or_else(|| corrupt(i, "bad _func offset"))?;
            if u32_at(tab, func_off + FUNC_ENTRY_OFF) != Some(entry_off) {
                return Err(corrupt(i, "_func entry does not match the function table"));
            }
            let name_rel = u32_at(tab, func_off + FUNC_NAME_OFF)
                .ok_or_else(|| corrupt(i, "truncated _func"))?;
            let name_off = self
                .funcname
                .checked_add(name_rel as usize)
                .ok_or_else(|| corrupt(i, "bad name offset"))?;
            let name_len =
                cstr_len(tab, name_off, MAX_NAME_LEN).ok_or_else(|| corrupt(i, "bad name"))?;
            name_bytes = name_bytes.saturating_add(name_len);
            if name_bytes > name_budget {
                return Err(PclnError::Limit(Limit {
                    what: "bytes of function names",
                    value: name_bytes as u64,
                    limit: "2 x pclntab size",
                    max: name_budget as u64,
                }));
            }
            let entry = text_start
                .checked_add(u64::from(entry_off))
                .ok_or_else(|| corrupt(i, "entry overflows"))?;
            let end = text_start
                .checked_add(u64::from(next.0))
                .ok_or_else(|| corrupt(i, "end overflows"))?;
            let id_at = func_off.saturating_add(self.func_id_offset());
            let (func_id, flag) = match tab.get(id_at..id_at.saturating_add(2)) {
                Some(&[id, flag]) => (id, flag),
                _ => return Err(corrupt(i, "truncated _func")),
            };
            out.push(FuncRec {
                entry,
                end,
                func_off,
                name_off,
                name_len,
                func_id,
                flag,
            });
        }
        Ok(out)
    }

    /// The name bytes of `f`.
    pub fn name<'t>(&self, tab: &'t [u8], f: &FuncRec) -> &'t [u8] {
        tab.get(f.name_off..f.name_off.saturating_add(f.name_len))
            .unwrap_or(&[])
    }

    /// The pc-value table at `_func` field `field` (None when absent).
    fn func_table<'t>(&self, tab: &'t [u8], f: &FuncRec, field: usize) -> Option<&'t [u8]> {
        let off = u32_at(tab, f.func_off.checked_add(field)?)?;
        if off == 0 {
            return None;
        }
        tab.get(self.pctab.checked_add(off as usize)?..)
    }

    /// Value of the pc-value table at `_func` field `field` for `pc`.
    fn func_pcvalue(&self, tab: &[u8], f: &FuncRec, field: usize, pc: u64) -> Option<i32> {
        pcvalue(self.func_table(tab, f, field)?, f.entry, pc, self.quantum)
    }

    /// The file number and line tables of `f` (`pcfile`, `pcln`).
    pub fn file_line_tables<'t>(
        &self,
        tab: &'t [u8],
        f: &FuncRec,
    ) -> (Option<&'t [u8]>, Option<&'t [u8]>) {
        (
            self.func_table(tab, f, FUNC_PCFILE),
            self.func_table(tab, f, FUNC_PCLN),
        )
    }

    /// Source file and line of `pc` within `f` (the innermost, possibly inlined, position).
    pub fn file_line(&self, tab: &[u8], f: &FuncRec, pc: u64) -> Option<(String, u32)> {
        let fileno = self.func_pcvalue(tab, f, FUNC_PCFILE, pc)?;
        let line = self.func_pcvalue(tab, f, FUNC_PCLN, pc)?;
        let file = self.file_name(tab, self.cu_offset(tab, f)?, fileno)?;
        Some((file, u32::try_from(line).ok()?))
    }
}

/// `_func.flag` bit of functions written in assembly (same 1.18 to 1.27).
pub(crate) const FUNC_FLAG_ASM: u8 = 1 << 2;

/// `funcID` of autogenerated wrappers (ABI wrappers, method wrappers) in Go `v`:
/// the enum in internal/abi/symtab.go grew by one in 1.22 and again in 1.25.
pub(crate) fn wrapper_func_id(v: super::GoVersion) -> u8 {
    if v.at_least(1, 25) {
        23
    } else if v.at_least(1, 22) {
        22
    } else {
        21
    }
}

/// Length of the NUL-terminated string at `off`.
fn cstr_len(b: &[u8], off: usize, max: usize) -> Option<usize> {
    let rest = b.get(off..)?;
    let window = rest.get(..max.min(rest.len()))?;
    window.iter().position(|&c| c == 0)
}

/// Where the pclntab is: the `.gopclntab` / `.data.rel.ro.gopclntab` section, the
/// `runtime.pclntab` symbol, or a scan of the loadable segments for a valid header.
pub(crate) fn locate(data: &[u8], elf: &ElfInfo) -> Result<Option<Pclntab>, PclnError> {
    if let Some(s) = elf.section(&[".gopclntab", ".data.rel.ro.gopclntab"]) {
        if let (Ok(off), Ok(size)) = (usize::try_from(s.offset), usize::try_from(s.size)) {
            let end = off.saturating_add(size).min(data.len());
            if let Some(tab) = data.get(off..end) {
                return Pclntab::parse(tab, off, s.addr).map(Some);
            }
        }
    }
    if let Some(&start) = elf.data_symbols.get("runtime.pclntab") {
        if let (Some(seg), Some(off)) = (elf.segment_for(start), elf.file_offset(start)) {
            let seg_end = seg.offset.saturating_add(seg.filesz);
            let end = match elf.data_symbols.get("runtime.epclntab") {
                Some(&e) if e > start => off.saturating_add(e - start).min(seg_end),
                _ => seg_end,
            };
            if let (Ok(o), Ok(e)) = (usize::try_from(off), usize::try_from(end)) {
                if let Some(tab) = data.get(o..e.min(data.len())) {
                    if let Ok(p) = Pclntab::parse(tab, o, start) {
                        return Ok(Some(p));
                    }
                }
            }
        }
    }
    // Scan, read-only segments first; the header is at least 8-byte aligned.
    let mut segs: Vec<_> = elf.segments.iter().collect();
    segs.sort_by_key(|s| (s.executable(), s.writable()));
    let mut old = None;
    let mut candidates = 0usize;
    for seg in segs {
        let (Ok(start), Ok(len)) = (usize::try_from(seg.offset), usize::try_from(seg.filesz))
        else {
            continue;
        };
        let Some(bytes) = data.get(start..start.saturating_add(len).min(data.len())) else {
            continue;
        };
        let mut i = ((8 - (seg.vaddr % 8)) % 8) as usize;
        while i + HEADER_LEN <= bytes.len() {
            let m = u32_at(bytes, i).unwrap_or(0);
            if m & 0xffff_fff0 == 0xffff_fff0 && bytes.get(i + 4..i + 8) == Some(&[0, 0, 1, 8]) {
                let vaddr = seg.vaddr.saturating_add(i as u64);
                match Pclntab::parse(&bytes[i..], start + i, vaddr) {
                    Ok(p) => {
                        candidates += 1;
                        check_limit!(
                            "candidate pclntab headers",
                            candidates,
                            MAX_PCLNTAB_CANDIDATES
                        )?;
                        // A real table has a sorted, consistent function table.
                        if p.functions(&bytes[i..], 0).is_ok() {
                            return Ok(Some(p));
                        }
                    }
                    Err(PclnError::OldMagic(m)) => old = Some(m),
                    Err(PclnError::Bad(_) | PclnError::Limit(_)) => {}
                }
            }
            i += 8;
        }
    }
    match old {
        Some(m) => Err(PclnError::OldMagic(m)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_decoding() {
        assert_eq!(read_uvarint(&[0]), Some((0, 1)));
        assert_eq!(read_uvarint(&[0x7f]), Some((127, 1)));
        assert_eq!(read_uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_uvarint(&[0xe5, 0x8e, 0x26, 0xff]), Some((624_485, 3)));
        assert_eq!(read_uvarint(&[0x80]), None); // truncated
        assert_eq!(read_uvarint(&[]), None);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_uvarint(&max), Some((u64::MAX, 10)));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(read_uvarint(&over), None);
        assert_eq!(read_uvarint(&[0x80; 11]), None);
    }

    #[test]
    fn pcvalue_decoding() {
        // value -1 → 10 (delta +11 → zigzag 22) for pc [0x1000, 0x1008),
        // then -2 (delta -12 → zigzag 23) for [0x1008, 0x1018), then end.
        let table = [22, 8, 23, 16, 0];
        assert_eq!(pcvalue(&table, 0x1000, 0x1000, 1), Some(10));
        assert_eq!(pcvalue(&table, 0x1000, 0x1007, 1), Some(10));
        assert_eq!(pcvalue(&table, 0x1000, 0x1008, 1), Some(-2));
        assert_eq!(pcvalue(&table, 0x1000, 0x1017, 1), Some(-2));
        assert_eq!(pcvalue(&table, 0x1000, 0x1018, 1), None);
        // Truncated tables and empty ones end the lookup without panicking.
        for n in 0..4 {
            assert!(pcvalue(&table[..n], 0x1000, 0x1017, 1).is_none());
        }
        assert_eq!(pcvalue(&table[..4], 0x1000, 0x1018, 1), None);
        // A multi-byte pc delta (300 = 0xac 0x02).
        let table = [2, 0xac, 0x02, 0];
        assert_eq!(pcvalue(&table, 0, 299, 1), Some(0));
        assert_eq!(pcvalue(&table, 0, 300, 1), None);
        // Overflowing pc.
        assert_eq!(
            pcvalue(
                &[2, 0x80, 0x80, 0x80, 0x80, 0x10],
                u64::MAX - 1,
                u64::MAX,
                1
            ),
            None
        );
    }

    #[test]
    fn pcvalue_run_decoding() {
        // -1 → 10 for [0x1000, 0x1008), → -2 for [0x1008, 0x1018), then end.
        let table = [22, 8, 23, 16, 0];
        assert_eq!(
            pcvalue_runs(&table, 0x1000, 0x2000, 1),
            vec![(0x1000, 0x1008, 10), (0x1008, 0x1018, -2)]
        );
        // Clipped to the function end.
        assert_eq!(
            pcvalue_runs(&table, 0x1000, 0x100a, 1),
            vec![(0x1000, 0x1008, 10), (0x1008, 0x100a, -2)]
        );
        // A first step with no value change keeps -1 (code outside any inlined body).
        assert_eq!(
            pcvalue_runs(&[0, 4, 2, 4, 0], 0, 100, 1),
            vec![(0, 4, -1), (4, 8, 0)]
        );
        // Truncated, empty, overflowing and zero-length steps end cleanly.
        for n in 0..table.len() {
            assert!(pcvalue_runs(&table[..n], 0x1000, 0x2000, 1).len() <= 2);
        }
        assert!(pcvalue_runs(&[], 0, 10, 1).is_empty());
        assert_eq!(pcvalue_runs(&table, 5, 5, 1), vec![]);
        let over = [
            2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 2, 1, 0,
        ];
        assert_eq!(pcvalue_runs(&over, 1, u64::MAX, 1), vec![]);
        let stuck = [2, 0, 2, 0, 2, 0, 2, 0];
        assert!(pcvalue_runs(&stuck, 0, 10, 1).is_empty());
    }

    fn header(magic: u32, nfunc: u64) -> Vec<u8> {
        let mut h = magic.to_le_bytes().to_vec();
        h.extend_from_slice(&[0, 0, 1, 8]);
        for v in [nfunc, 1, 0x401000, 72, 72, 72, 72, 72] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    #[test]
    fn header_validation() {
        let mut h = header(MAGIC_GO120, 1);
        assert!(matches!(Pclntab::parse(&h, 0, 0), Err(PclnError::Bad(_)))); // no room for ftab
                                                                             // ftab: (0, 16), (0x20, 0); _func at ftab+16: entryOff 0, nameOff 0.
        h.extend_from_slice(&[0, 0, 0, 0, 16, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&[0; 40]);
        let p = Pclntab::parse(&h, 0, 0).unwrap();
        assert_eq!(p.text_start_field, 0x401000);
        assert_eq!(p.nfunc, 1);
        assert!(matches!(
            Pclntab::parse(&header(MAGIC_GO116, 1), 0, 0),
            Err(PclnError::OldMagic(MAGIC_GO116))
        ));
        assert!(Pclntab::parse(&header(0x1234, 1), 0, 0).is_err());
        assert!(Pclntab::parse(&h[..10], 0, 0).is_err());
        let mut huge = header(MAGIC_GO120, u64::MAX);
        huge.extend_from_slice(&[0; 64]);
        assert!(Pclntab::parse(&huge, 0, 0).is_err());
    }

    #[test]
    fn function_count_and_name_limits() {
        // More functions than MAX_FUNCS, though their table would fit.
        let mut h = header(MAGIC_GO120, MAX_FUNCS as u64 + 1);
        h.resize(HEADER_LEN + (MAX_FUNCS + 2) * 8, 0);
        match Pclntab::parse(&h, 0, 0) {
            Err(PclnError::Limit(l)) => assert_eq!((l.limit, l.max), ("MAX_FUNCS", 4_000_000)),
            other => panic!("{other:?}"),
        }
        // 64 functions whose `_func`s all name one 4 kB string: more name bytes than
        // a table of this size can hold.
        let n = 64usize;
        let func_rel = (n + 1) * 8;
        let name_off = HEADER_LEN + func_rel + FUNC_HEADER_GO120;
        let mut t = MAGIC_GO120.to_le_bytes().to_vec();
        t.extend_from_slice(&[0, 0, 1, 8]);
        for v in [n, 1, 0x401000, name_off, 72, 72, 72, 72] {
            t.extend_from_slice(&(v as u64).to_le_bytes());
        }
        for _ in 0..n {
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&(func_rel as u32).to_le_bytes());
        }
        t.extend_from_slice(&[0; 8]); // end of text
        t.extend_from_slice(&[0; FUNC_HEADER_GO120]); // entryOff 0, nameOff 0
        t.extend_from_slice(&[b'a'; 4096]);
        t.push(0);
        let p = Pclntab::parse(&t, 0, 0).unwrap();
        match p.functions(&t, 0) {
            Err(PclnError::Limit(l)) => assert_eq!(l.what, "bytes of function names"),
            other => panic!("{other:?}"),
        }
        // One such function is fine.
        t[8..16].copy_from_slice(&1u64.to_le_bytes());
        let p = Pclntab::parse(&t, 0, 0).unwrap();
        assert_eq!(p.functions(&t, 0).unwrap()[0].name_len, 4096);
    }
}
