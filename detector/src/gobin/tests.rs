//! Unit tests of the whole parser on garbage and damaged input.
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

/// A real Go binary when the fixtures were built, else this test executable (not Go).
fn sample_binary() -> Vec<u8> {
    let root = std::env::var("DETECTOR_FIXTURES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/fixtures").to_string());
    let candidates = ["go1.22.10/default/allapis", "go1.26.6/pie/allapis"];
    for c in candidates {
        if let Ok(b) = std::fs::read(Path::new(&root).join(c)) {
            return b;
        }
    }
    eprintln!("note: no Go fixture under {root}; fuzzing this test binary instead");
    std::fs::read("/proc/self/exe").expect("read /proc/self/exe")
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
fn truncated_binaries_fail_cleanly() {
    let full = sample_binary();
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

#[test]
fn mutated_binaries_never_panic() {
    let full = sample_binary();
    let Ok(bin) = GoBinary::parse(full.clone()) else {
        return; // not a Go binary: nothing deep to mutate
    };
    // Mutate mostly inside the pclntab and the build info, where the parser goes deep.
    let tab_start = bin.pcln.file_offset;
    let tab_len = bin.pcln.len;
    drop(bin);
    let mut rng = Rng(0xdead_beef);
    for round in 0..150 {
        let mut v = full.clone();
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
        }
    }
}
