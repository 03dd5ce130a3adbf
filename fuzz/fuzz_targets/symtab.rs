//! A little-endian u32 length, that many bytes of `.symtab`, then `.strtab`, in a
//! minimal executable: ELF symbol parsing and the Go analysis that uses symbols.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detector_gobin::fuzzing::symtab(data, &detector_fuzz::detector));
