//! The bytes as a `.go.buildinfo` section, and as a Go version string.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detector_gobin::fuzzing::buildinfo(data));
