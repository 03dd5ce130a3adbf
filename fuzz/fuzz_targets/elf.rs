//! A whole file: `GoBinary::parse`, then what `detector inspect` and `diagnose` ask
//! of it (functions, file:line, probe points, inlined calls, the probe plan).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detector_gobin::fuzzing::elf(data, &detector_fuzz::detector));
