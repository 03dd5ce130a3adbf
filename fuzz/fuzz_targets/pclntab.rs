//! The bytes as a `.gopclntab` section: header, functions, names, file:line, pc-value
//! tables; then inside a minimal executable, with every query of `elf`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detector_gobin::fuzzing::pclntab(data, &detector_fuzz::detector));
