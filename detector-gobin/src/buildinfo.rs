//! `.go.buildinfo`: the Go version and the module/build settings written by the linker.
//!
//! Layout (Go 1.18+, see debug/buildinfo): 14-byte magic `\xff Go buildinf:`, ptr size,
//! flags (bit 0 big-endian, bit 1 inline strings), padding to byte 32, then two
//! uvarint-length-prefixed strings: the version and the module info. The module info is
//! wrapped in 16-byte sentinels and holds tab-separated lines (`path`, `mod`, `dep`,
//! `build KEY=VALUE`). Before 1.18 the header held pointers to the two strings instead.
use super::elf::ElfInfo;
use super::limits::{
    check_limit, Limit, MAX_BUILD_SETTINGS, MAX_MODINFO_LEN, MAX_MODULES, MAX_VERSION_LEN,
};
use super::pclntab::read_uvarint;

/// The buildinfo magic.
pub(crate) const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_INLINE: u8 = 0x2;

/// What `.go.buildinfo` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BuildInfo {
    pub version: String,
    pub main_module: Option<String>,
    pub settings: Vec<(String, String)>,
    /// Module paths: the main module (`mod` line) first, then each `dep` line's.
    /// Symbols name the module path as required, not a `=>` replacement's.
    pub modules: Vec<String>,
}

/// Why buildinfo bytes were rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BuildInfoError {
    Bad(String),
    Limit(Limit),
}

impl From<&str> for BuildInfoError {
    fn from(s: &str) -> Self {
        BuildInfoError::Bad(s.to_owned())
    }
}

impl From<Limit> for BuildInfoError {
    fn from(l: Limit) -> Self {
        BuildInfoError::Limit(l)
    }
}

/// The bytes of the buildinfo blob: the `.go.buildinfo` section, or else the first
/// 16-byte aligned magic found in a loadable segment.
pub(crate) fn locate<'d>(data: &'d [u8], elf: &ElfInfo) -> Option<&'d [u8]> {
    if let Some(s) = elf.section(&[".go.buildinfo"]) {
        let start = usize::try_from(s.offset).ok()?;
        let end = start.checked_add(usize::try_from(s.size).ok()?)?;
        if let Some(b) = data.get(start..end.min(data.len())) {
            if b.starts_with(MAGIC) {
                return Some(b);
            }
        }
    }
    // Writable segments first: that is where the linker puts it.
    let mut segs: Vec<_> = elf.segments.iter().collect();
    segs.sort_by_key(|s| !s.writable());
    for seg in segs {
        let start = usize::try_from(seg.offset).ok()?;
        let len = usize::try_from(seg.filesz).ok()?;
        let Some(bytes) = data.get(start..start.saturating_add(len).min(data.len())) else {
            continue;
        };
        // Offset of the first 16-byte aligned vaddr in the segment.
        let mut i = ((16 - (seg.vaddr % 16)) % 16) as usize;
        while i < bytes.len() {
            if bytes.get(i..).is_some_and(|b| b.starts_with(MAGIC)) {
                return bytes.get(i..);
            }
            i += 16;
        }
    }
    None
}

/// Parses a buildinfo blob. `data`/`elf` resolve the pointers of the pre-1.18 format.
pub(crate) fn parse(buf: &[u8], data: &[u8], elf: &ElfInfo) -> Result<BuildInfo, BuildInfoError> {
    if !buf.starts_with(MAGIC) {
        return Err("missing buildinfo magic".into());
    }
    let header = buf.get(..HEADER_LEN).ok_or("buildinfo header truncated")?;
    let ptr_size = header[14];
    let flags = header[15];
    let (version, modinfo) = if flags & FLAG_INLINE != 0 {
        let rest = &buf[HEADER_LEN..];
        let (version, rest) =
            read_string(rest, MAX_VERSION_LEN).ok_or("buildinfo version truncated")?;
        let (modinfo, _) =
            read_string(rest, MAX_MODINFO_LEN).ok_or("buildinfo module info truncated")?;
        (version.to_vec(), modinfo.to_vec())
    } else {
        if ptr_size != 8 || flags & FLAG_BIG_ENDIAN != 0 {
            return Err(BuildInfoError::Bad(format!(
                "buildinfo with pointer size {ptr_size} and flags {flags:#x} is not amd64"
            )));
        }
        let vptr = u64::from_le_bytes(header[16..24].try_into().map_err(|_| "short")?);
        let mptr = u64::from_le_bytes(header[24..32].try_into().map_err(|_| "short")?);
        let version = read_go_string(data, elf, vptr, MAX_VERSION_LEN)
            .ok_or("buildinfo version pointer does not resolve")?;
        let modinfo = read_go_string(data, elf, mptr, MAX_MODINFO_LEN).unwrap_or_default();
        (version, modinfo)
    };
    if version.is_empty() {
        return Err("buildinfo has an empty Go version".into());
    }
    let mut info = BuildInfo {
        version: String::from_utf8_lossy(&version).into_owned(),
        ..BuildInfo::default()
    };
    parse_modinfo(
        &String::from_utf8_lossy(strip_sentinels(&modinfo)),
        &mut info,
    )?;
    Ok(info)
}

/// A uvarint-prefixed string at the start of `b`, and what follows it.
fn read_string(b: &[u8], max: u64) -> Option<(&[u8], &[u8])> {
    let (len, n) = read_uvarint(b)?;
    if len > max {
        return None;
    }
    let rest = b.get(n..)?;
    let len = usize::try_from(len).ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// A Go string header (pointer, length) at `vaddr`, then its bytes.
fn read_go_string(data: &[u8], elf: &ElfInfo, vaddr: u64, max: u64) -> Option<Vec<u8>> {
    let ptr = elf.read_ptr(data, vaddr)?;
    let len = u64::from_le_bytes(
        elf.bytes_at(data, vaddr.checked_add(8)?, 8)?
            .try_into()
            .ok()?,
    );
    if len > max {
        return None;
    }
    Some(
        elf.bytes_at(data, ptr, usize::try_from(len).ok()?)?
            .to_vec(),
    )
}

/// Module info is wrapped in two 16-byte sentinels, the last preceded by a newline.
fn strip_sentinels(m: &[u8]) -> &[u8] {
    if m.len() >= 33 && m.get(m.len() - 17) == Some(&b'\n') {
        &m[16..m.len() - 16]
    } else {
        m
    }
}

fn parse_modinfo(text: &str, info: &mut BuildInfo) -> Result<(), BuildInfoError> {
    for line in text.lines() {
        let mut parts = line.splitn(2, '\t');
        let (Some(kind), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "path" => info.main_module = Some(rest.to_owned()),
            "mod" | "dep" => {
                check_limit!("number of modules", info.modules.len() + 1, MAX_MODULES)?;
                let path = rest.split('\t').next().unwrap_or(rest);
                if kind == "mod" {
                    info.modules.insert(0, path.to_owned());
                } else {
                    info.modules.push(path.to_owned());
                }
            }
            "build" => {
                check_limit!(
                    "number of build settings",
                    info.settings.len() + 1,
                    MAX_BUILD_SETTINGS
                )?;
                let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
                info.settings.push((unquote(key), unquote(value)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Go quotes keys and values that contain spaces, quotes or `=` (strconv.Quote).
fn unquote(s: &str) -> String {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return s.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uvarint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(8);
        b.push(FLAG_INLINE);
        b.resize(HEADER_LEN, 0);
        uvarint(version.len() as u64, &mut b);
        b.extend_from_slice(version.as_bytes());
        let mut m = vec![0x30u8; 16];
        m.extend_from_slice(modinfo.as_bytes());
        m.extend_from_slice(&[0x31u8; 16]);
        uvarint(m.len() as u64, &mut b);
        b.extend_from_slice(&m);
        b
    }

    #[test]
    fn parses_inline_buildinfo() {
        let modinfo = "path\texample.com/svc\nmod\texample.com/svc\t(devel)\t\n\
             build\t-buildmode=exe\nbuild\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=0\n\
             build\tGOARCH=amd64\n";
        let b = blob("go1.21.13", modinfo);
        let info = parse(&b, &b, &ElfInfo::default()).unwrap();
        assert_eq!(info.version, "go1.21.13");
        assert_eq!(info.main_module.as_deref(), Some("example.com/svc"));
        assert_eq!(info.modules, ["example.com/svc"]);
        assert!(info
            .settings
            .contains(&("-ldflags".to_string(), "-s -w".to_string())));
        assert!(info
            .settings
            .contains(&("CGO_ENABLED".to_string(), "0".to_string())));
        assert_eq!(info.settings.len(), 4);
    }

    #[test]
    fn rejects_truncated_and_bad_buildinfo() {
        let b = blob("go1.22.10", "path\tx\n");
        for n in 0..b.len() {
            // Truncations must never panic; the version needs its full length.
            let r = parse(&b[..n], &b, &ElfInfo::default());
            if n < HEADER_LEN + 1 + "go1.22.10".len() {
                assert!(r.is_err(), "truncated at {n} accepted");
            }
        }
        let mut bad = b.clone();
        bad[HEADER_LEN] = 0xff; // huge uvarint length
        bad[HEADER_LEN + 1] = 0xff;
        assert!(parse(&bad, &bad, &ElfInfo::default()).is_err());
        // Pointer format without any segment to resolve the pointers.
        let mut ptrs = b.clone();
        ptrs[15] = 0;
        assert!(parse(&ptrs, &ptrs, &ElfInfo::default()).is_err());
    }

    #[test]
    fn build_settings_are_limited() {
        let many = "build\tk=v\n".repeat(MAX_BUILD_SETTINGS);
        let b = blob("go1.22.10", &many);
        let info = parse(&b, &b, &ElfInfo::default()).unwrap();
        assert_eq!(info.settings.len(), MAX_BUILD_SETTINGS);
        let b = blob("go1.22.10", &format!("{many}build\tone=more\n"));
        match parse(&b, &b, &ElfInfo::default()) {
            Err(BuildInfoError::Limit(l)) => assert_eq!(l.limit, "MAX_BUILD_SETTINGS"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lists_modules_main_first() {
        let modinfo = "path\texample.com/svc/cmd/d\n\
             dep\tgolang.org/x/sys\tv0.1.0\th1:abc=\n\
             mod\texample.com/svc\tv1.2.3\th1:def=\n\
             dep\tgithub.com/a/b\tv0.0.1\n=>\t../b\t\n";
        let b = blob("go1.19.8", modinfo);
        let info = parse(&b, &b, &ElfInfo::default()).unwrap();
        assert_eq!(
            info.modules,
            ["example.com/svc", "golang.org/x/sys", "github.com/a/b"]
        );
    }

    #[test]
    fn unquotes_values() {
        assert_eq!(unquote("\"-s -w\""), "-s -w");
        assert_eq!(unquote("\"a\\\"b\""), "a\"b");
        assert_eq!(unquote("plain"), "plain");
        assert_eq!(strip_sentinels(b"short"), b"short");
    }
}
