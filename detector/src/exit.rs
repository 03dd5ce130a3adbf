//! Exit codes: designed, documented (README "Exit codes"), one per cause.
use std::process::ExitCode;

use crate::{gobin::AnalysisError, probes::attach::ProbeError, target::TargetError};

pub const NO_FINDINGS: u8 = 0;
pub const FINDINGS: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
pub const NO_SUCH_PROCESS: u8 = 3;
pub const NOT_GO: u8 = 4;
/// Not ELF, not amd64, or a corrupt binary.
pub const UNSUPPORTED_BINARY: u8 = 5;
pub const UNSUPPORTED_GO_VERSION: u8 = 6;
pub const NO_PRIVILEGES: u8 = 7;
pub const TARGET_EXITED: u8 = 8;
/// The kernel refused to load or attach the probes.
pub const BPF_FAILED: u8 = 9;
/// Anything else (I/O errors writing output, ...).
pub const OTHER: u8 = 10;
/// `watch` could not listen on its address (in use, or not allowed).
pub const LISTEN_FAILED: u8 = 11;

/// An error that ends the program: a one-line message and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn exit(&self) -> ExitCode {
        // Not eprintln!: it panics when stderr cannot be written (a full disk).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "detector: error: {}", self.message);
        ExitCode::from(self.code)
    }
}

pub fn analysis_code(e: &AnalysisError) -> u8 {
    match e {
        AnalysisError::NotGo => NOT_GO,
        AnalysisError::UnsupportedGoVersion { .. } => UNSUPPORTED_GO_VERSION,
        AnalysisError::Io { .. } => OTHER,
        _ => UNSUPPORTED_BINARY,
    }
}

impl From<AnalysisError> for Failure {
    fn from(e: AnalysisError) -> Self {
        Failure::new(analysis_code(&e), e.to_string())
    }
}

impl From<TargetError> for Failure {
    fn from(e: TargetError) -> Self {
        let code = match &e {
            TargetError::NoSuchProcess(_) => NO_SUCH_PROCESS,
            TargetError::Exe { .. } => NO_PRIVILEGES,
            TargetError::Analysis { source, .. } => analysis_code(source),
        };
        Failure::new(code, e.to_string())
    }
}

impl From<ProbeError> for Failure {
    fn from(e: ProbeError) -> Self {
        let code = match &e {
            ProbeError::Privileges { .. } => NO_PRIVILEGES,
            _ => BPF_FAILED,
        };
        Failure::new(code, e.to_string())
    }
}
