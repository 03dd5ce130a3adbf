//! The ELF facts the Go analysis needs: loadable segments, named sections, `.symtab`
//! function symbols and `R_X86_64_RELATIVE` relocations (PIE pointers that are zero in
//! the file). Everything is bounds-checked; the `object` crate parses the headers.
use std::collections::HashMap;

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, Rela, SectionHeader, Sym};
use object::Endianness;

use super::limits::{
    check_limit, Limit, MAX_LOAD_SEGMENTS, MAX_NAME_LEN, MAX_NEEDED, MAX_NEEDED_NAME_LEN,
    MAX_RELOCATIONS, MAX_SECTIONS, MAX_SECTION_NAME_LEN, MAX_SYMBOLS,
    SYMBOL_NAME_BYTES_PER_STRTAB_BYTE,
};
use super::AnalysisError;

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub flags: u32,
}

impl Segment {
    pub fn executable(&self) -> bool {
        self.flags & elf::PF_X != 0
    }
    pub fn writable(&self) -> bool {
        self.flags & elf::PF_W != 0
    }
    /// File offset of `vaddr` when it lies in the file-backed part of the segment.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let delta = vaddr.checked_sub(self.vaddr)?;
        if delta < self.filesz {
            self.offset.checked_add(delta)
        } else {
            None
        }
    }
}

/// A section header worth remembering.
#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    /// `SHT_NOBITS` sections have no bytes in the file.
    pub nobits: bool,
}

/// A `STT_FUNC` symbol of `.symtab`.
#[derive(Clone, Debug)]
pub(crate) struct FuncSymbol {
    pub name: String,
    pub value: u64,
}

/// What the rest of `gobin` needs from the ELF headers.
#[derive(Debug, Default)]
pub(crate) struct ElfInfo {
    pub pie: bool,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
    pub has_symtab: bool,
    pub func_symbols: Vec<FuncSymbol>,
    /// Object (data) symbols we look up by name (`runtime.firstmoduledata`, ...).
    pub data_symbols: HashMap<String, u64>,
    pub has_interp: bool,
    pub needed: Vec<String>,
    /// `R_X86_64_RELATIVE` relocations: place vaddr → addend.
    pub relative_relocs: HashMap<u64, u64>,
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Symbols whose value we may need even when they are not functions.
const INTERESTING_DATA_SYMBOLS: &[&str] = &[
    "runtime.firstmoduledata",
    "runtime.pclntab",
    "runtime.epclntab",
    "runtime.text",
    "runtime.etext",
    "runtime.buildVersion",
];

fn machine_name(m: u16) -> String {
    match m {
        elf::EM_386 => "x86 (32-bit)".into(),
        elf::EM_ARM => "arm".into(),
        elf::EM_AARCH64 => "arm64".into(),
        elf::EM_PPC64 => "ppc64".into(),
        elf::EM_S390 => "s390x".into(),
        elf::EM_MIPS => "mips".into(),
        elf::EM_RISCV => "riscv64".into(),
        elf::EM_LOONGARCH => "loong64".into(),
        elf::EM_X86_64 => "amd64".into(),
        other => format!("ELF machine {other}"),
    }
}

fn corrupt(what: &str, e: object::read::Error) -> AnalysisError {
    AnalysisError::Corrupt(format!("{what}: {e}"))
}

/// Parses the ELF headers of `data`; only little-endian 64-bit x86-64 is accepted.
pub(crate) fn parse(data: &[u8]) -> Result<ElfInfo, AnalysisError> {
    if data.get(..4) != Some(&ELF_MAGIC[..]) {
        return Err(AnalysisError::NotElf);
    }
    let class = data.get(4).copied().unwrap_or(0);
    if class != elf::ELFCLASS64 {
        // Report the machine of 32-bit files for a useful message.
        let be = data.get(5).copied() == Some(elf::ELFDATA2MSB);
        let machine = data.get(18..20).map(|b| {
            let b = [b[0], b[1]];
            if be {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        });
        return Err(AnalysisError::NotAmd64 {
            machine: machine.map_or_else(|| "unknown (32-bit ELF)".into(), machine_name),
        });
    }
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|_| AnalysisError::NotElf)?;
    let endian = header.endian().map_err(|_| AnalysisError::NotElf)?;
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 || endian != Endianness::Little {
        return Err(AnalysisError::NotAmd64 {
            machine: machine_name(machine),
        });
    }
    let mut info = ElfInfo {
        pie: header.e_type(endian) == elf::ET_DYN,
        ..ElfInfo::default()
    };

    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| corrupt("bad program headers", e))?;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_LOAD => {
                check_limit!(
                    "number of PT_LOAD segments",
                    info.segments.len() + 1,
                    MAX_LOAD_SEGMENTS
                )?;
                info.segments.push(Segment {
                    vaddr: ph.p_vaddr(endian),
                    offset: ph.p_offset(endian),
                    // Never trust filesz beyond the end of the file.
                    filesz: ph
                        .p_filesz(endian)
                        .min((data.len() as u64).saturating_sub(ph.p_offset(endian))),
                    flags: ph.p_flags(endian),
                })
            }
            elf::PT_INTERP => info.has_interp = true,
            _ => {}
        }
    }
    // Relocations and needed libraries through PT_DYNAMIC, which (unlike section
    // headers) every dynamically linked executable must keep.
    if let Some(dynamic) = phdrs.iter().find(|ph| ph.p_type(endian) == elf::PT_DYNAMIC) {
        info.read_dynamic(
            endian,
            data,
            dynamic.p_offset(endian),
            dynamic.p_filesz(endian),
        )?;
    }

    let sections = header
        .sections(endian, data)
        .map_err(|e| corrupt("bad section headers", e))?;
    check_limit!("number of sections", sections.len(), MAX_SECTIONS)?;
    // Names are read here, not through `object` (which scans the rest of the table
    // for each NUL): a long name is an error, not a long scan.
    let shstrtab = header
        .shstrndx(endian, data)
        .ok()
        .and_then(|i| sections.section(object::SectionIndex(i as usize)).ok())
        .and_then(|s| s.data(endian, data).ok())
        .unwrap_or_default();
    for sh in sections.iter() {
        let name = usize::try_from(sh.sh_name(endian))
            .ok()
            .and_then(|off| shstrtab.get(off..))
            .unwrap_or_default();
        let window = name.get(..name.len().min(MAX_SECTION_NAME_LEN + 1));
        let window = window.unwrap_or_default();
        let name = match window.iter().position(|&c| c == 0) {
            Some(end) => window.get(..end).unwrap_or_default(),
            None => {
                check_limit!(
                    "length of a section name",
                    window.len(),
                    MAX_SECTION_NAME_LEN
                )?;
                &[] // not terminated: no name
            }
        };
        let nobits = sh.sh_type(endian) == elf::SHT_NOBITS;
        info.sections.push(Section {
            name: String::from_utf8_lossy(name).into_owned(),
            addr: sh.sh_addr(endian),
            offset: sh.sh_offset(endian),
            size: sh.sh_size(endian),
            nobits,
        });
        if sh.sh_type(endian) == elf::SHT_RELA {
            if let Ok(relas) = sh.data_as_array::<elf::Rela64<Endianness>, _>(endian, data) {
                info.add_relocs(endian, relas)?;
            }
        }
    }

    if let Ok(symtab) = sections.symbols(endian, data, elf::SHT_SYMTAB) {
        info.has_symtab = !symtab.is_empty();
        check_limit!("number of .symtab symbols", symtab.len(), MAX_SYMBOLS)?;
        // Names are read from the string table here (not through `object`, which
        // scans the whole rest of the table for each name's NUL), within a budget.
        let strings = sections
            .section(symtab.string_section())
            .ok()
            .and_then(|s| s.data(endian, data).ok())
            .unwrap_or_default();
        let budget = strings
            .len()
            .saturating_mul(SYMBOL_NAME_BYTES_PER_STRTAB_BYTE);
        let mut name_bytes = 0usize;
        for sym in symtab.iter() {
            let Some(name) = usize::try_from(sym.st_name(endian))
                .ok()
                .and_then(|off| cstr_at(strings, off, MAX_NAME_LEN))
            else {
                continue;
            };
            name_bytes = name_bytes.saturating_add(name.len());
            if name_bytes > budget {
                return Err(Limit {
                    what: "bytes of .symtab names",
                    value: name_bytes as u64,
                    limit: "SYMBOL_NAME_BYTES_PER_STRTAB_BYTE x .strtab size",
                    max: budget as u64,
                }
                .into());
            }
            if sym.st_type() == elf::STT_FUNC && sym.st_shndx(endian) != elf::SHN_UNDEF {
                info.func_symbols.push(FuncSymbol {
                    name: String::from_utf8_lossy(name).into_owned(),
                    value: sym.st_value(endian),
                });
            } else if let Ok(name) = std::str::from_utf8(name) {
                if INTERESTING_DATA_SYMBOLS.contains(&name) {
                    info.data_symbols
                        .insert(name.to_owned(), sym.st_value(endian));
                }
            }
        }
    }
    Ok(info)
}

/// The NUL-terminated string at `off` in `b`, if it ends within `max` bytes.
fn cstr_at(b: &[u8], off: usize, max: usize) -> Option<&[u8]> {
    let rest = b.get(off..)?;
    let window = rest.get(..max.min(rest.len()))?;
    let end = window.iter().position(|&c| c == 0)?;
    window.get(..end)
}

/// Bytes of the file at `[offset, offset + len)`, if all present.
fn file_range(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

impl ElfInfo {
    /// Keeps the `R_X86_64_RELATIVE` relocations of `relas`.
    fn add_relocs(
        &mut self,
        endian: Endianness,
        relas: &[elf::Rela64<Endianness>],
    ) -> Result<(), Limit> {
        for r in relas {
            if r.r_type(endian, false) == elf::R_X86_64_RELATIVE {
                self.relative_relocs
                    .insert(r.r_offset(endian), r.r_addend(endian) as u64);
                check_limit!(
                    "number of R_X86_64_RELATIVE relocations",
                    self.relative_relocs.len(),
                    MAX_RELOCATIONS
                )?;
            }
        }
        Ok(())
    }

    /// Reads the dynamic table at file `offset`: `DT_RELA` relocations and `DT_NEEDED`.
    fn read_dynamic(
        &mut self,
        endian: Endianness,
        data: &[u8],
        offset: u64,
        size: u64,
    ) -> Result<(), Limit> {
        let Some(bytes) = file_range(data, offset, size) else {
            return Ok(());
        };
        let whole = bytes.get(..bytes.len() / 16 * 16).unwrap_or(&[]);
        let Ok(dyns) = object::slice_from_all_bytes::<elf::Dyn64<Endianness>>(whole) else {
            return Ok(());
        };
        let (mut rela, mut relasz, mut strtab, mut strsz) = (None, None, None, None);
        let mut needed = Vec::new();
        for d in dyns {
            let (tag, val) = (d.d_tag(endian), d.d_val(endian));
            match u32::try_from(tag).unwrap_or(u32::MAX) {
                elf::DT_NULL => break,
                elf::DT_RELA => rela = Some(val),
                elf::DT_RELASZ => relasz = Some(val),
                elf::DT_STRTAB => strtab = Some(val),
                elf::DT_STRSZ => strsz = Some(val),
                elf::DT_NEEDED => {
                    needed.push(val);
                    check_limit!("number of DT_NEEDED entries", needed.len(), MAX_NEEDED)?;
                }
                _ => {}
            }
        }
        if let (Some(addr), Some(size)) = (rela, relasz) {
            let relas = self
                .file_offset(addr)
                .and_then(|off| file_range(data, off, size))
                .and_then(|b| {
                    object::slice_from_all_bytes::<elf::Rela64<Endianness>>(
                        b.get(..b.len() / 24 * 24).unwrap_or(&[]),
                    )
                    .ok()
                });
            self.add_relocs(endian, relas.unwrap_or(&[]))?;
        }
        if let (Some(addr), Some(size)) = (strtab, strsz) {
            if let Some(strings) = self
                .file_offset(addr)
                .and_then(|o| file_range(data, o, size))
            {
                for off in needed {
                    let Some(rest) = usize::try_from(off).ok().and_then(|o| strings.get(o..))
                    else {
                        continue;
                    };
                    let window = rest.get(..rest.len().min(MAX_NEEDED_NAME_LEN + 1));
                    let window = window.unwrap_or_default();
                    let end = window.iter().position(|&c| c == 0).unwrap_or(window.len());
                    check_limit!("length of a DT_NEEDED name", end, MAX_NEEDED_NAME_LEN)?;
                    let name = String::from_utf8_lossy(rest.get(..end).unwrap_or_default());
                    if !self.needed.iter().any(|n| *n == name) {
                        self.needed.push(name.into_owned());
                    }
                }
            }
        }
        Ok(())
    }

    /// The first section with one of these names that has bytes in the file.
    pub fn section(&self, names: &[&str]) -> Option<&Section> {
        names.iter().find_map(|n| {
            self.sections
                .iter()
                .find(|s| s.name == *n && !s.nobits && s.size > 0)
        })
    }

    pub fn segment_for(&self, vaddr: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.file_offset(vaddr).is_some())
    }

    /// File offset of `vaddr` through the `PT_LOAD` segment that maps it from the file.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segment_for(vaddr).and_then(|s| s.file_offset(vaddr))
    }

    /// `len` file bytes at `vaddr`, when they all lie in one segment's file image.
    pub fn bytes_at<'d>(&self, data: &'d [u8], vaddr: u64, len: usize) -> Option<&'d [u8]> {
        let seg = self.segment_for(vaddr)?;
        let last = vaddr.checked_add(len as u64)?;
        // The whole range must be file-backed in the same segment.
        if last > seg.vaddr.checked_add(seg.filesz)? {
            return None;
        }
        let start = usize::try_from(seg.file_offset(vaddr)?).ok()?;
        data.get(start..start.checked_add(len)?)
    }

    /// A pointer-sized word at `vaddr`; when it is zero in the file, the addend of the
    /// `R_X86_64_RELATIVE` relocation at that place (PIE binaries).
    pub fn read_ptr(&self, data: &[u8], vaddr: u64) -> Option<u64> {
        let b = self.bytes_at(data, vaddr, 8)?;
        let v = u64::from_le_bytes(b.try_into().ok()?);
        if v != 0 {
            return Some(v);
        }
        Some(self.relative_relocs.get(&vaddr).copied().unwrap_or(0))
    }

    pub fn is_executable_addr(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.executable() && s.file_offset(vaddr).is_some())
    }

    pub fn has_dwarf(&self) -> bool {
        self.sections
            .iter()
            .any(|s| s.name.starts_with(".debug_") || s.name.starts_with(".zdebug_"))
    }
}
