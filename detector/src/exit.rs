//! Exit codes: designed, documented (README "Exit codes"), one per cause. A leaf: it
//! knows no other module; each error type says which code it ends with, next to the
//! error (`target`, `probes::attach`).
use std::process::ExitCode;

/// Why detector exits, as its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Code {
    NoFindings = 0,
    /// `diagnose` made findings.
    Findings = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    NoSuchProcess = 3,
    NotGo = 4,
    /// Not ELF, not amd64, or a corrupt binary.
    UnsupportedBinary = 5,
    UnsupportedGoVersion = 6,
    NoPrivileges = 7,
    TargetExited = 8,
    /// The kernel refused to load or attach the probes.
    BpfFailed = 9,
    /// Anything else (I/O errors writing output, ...).
    Other = 10,
    /// `watch` could not listen on its address (in use, or not allowed).
    ListenFailed = 11,
    /// `watch --web-config`: the file is unreadable, malformed, or names a missing or
    /// unusable certificate, key or hash.
    WebConfig = 12,
}

impl Code {
    /// Every code, in order (the README's table).
    pub const ALL: [Code; 13] = [
        Code::NoFindings,
        Code::Findings,
        Code::Usage,
        Code::NoSuchProcess,
        Code::NotGo,
        Code::UnsupportedBinary,
        Code::UnsupportedGoVersion,
        Code::NoPrivileges,
        Code::TargetExited,
        Code::BpfFailed,
        Code::Other,
        Code::ListenFailed,
        Code::WebConfig,
    ];
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// An error that ends the program: a one-line message and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn exit(&self) -> ExitCode {
        // Not eprintln!: it panics when stderr cannot be written (a full disk).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "detector: error: {}", self.message);
        self.code.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_in_order() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
