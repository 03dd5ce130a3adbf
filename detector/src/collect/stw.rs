//! Stop-the-world reasons: Go 1.21+ numbers them (`stwReason`), Go 1.19 passes a
//! string to `stopTheWorld`. Both are mapped onto one vocabulary here.

/// A reason as reported: Go's own wording, and the 1.21+ number when known.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Reason {
    pub code: Option<u8>,
    pub name: String,
    /// A collector pause inside `runtime.GC` (or `debug.FreeOSMemory`): forced by
    /// the program, not started by the pacer.
    pub forced: bool,
}

impl Reason {
    /// The same reason, as part of a forced collection.
    pub fn forced(self) -> Reason {
        Reason {
            name: format!("forced GC: {}", self.name),
            forced: true,
            ..self
        }
    }

    /// One of the collector's pauses (sweep or mark termination, or 1.19's unnamed).
    pub fn is_gc(&self) -> bool {
        match self.code {
            Some(c) => c == GC_MARK_TERMINATION || c == GC_SWEEP_TERMINATION,
            None => self.name.contains("GC"),
        }
    }
}

/// Go's `stwReason` strings, index = value (runtime/proc.go, 1.21 to 1.27).
const NAMES: &[&str] = &[
    "unknown",
    "GC mark termination",
    "GC sweep termination",
    "write heap dump",
    "goroutine profile",
    "goroutine profile cleanup",
    "all goroutines stack trace",
    "read mem stats",
    "AllThreadsSyscall",
    "GOMAXPROCS",
    "start trace",
    "stop trace",
];

pub use crate::apis::reason::*;

pub fn from_code(code: u8) -> Reason {
    Reason {
        code: Some(code),
        name: NAMES
            .get(code as usize)
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("reason {code}")),
        forced: false,
    }
}

/// Go 1.19's reason strings (prefixes: the string's bytes are read without a length),
/// longest first, mapped to the 1.21+ numbering.
const GO119: &[(&str, u8)] = &[
    ("doAllThreadsSyscall", 8),
    ("write heap dump", 3),
    ("read mem stats", 7),
    ("profile cleanup", 5),
    ("start tracing", 10),
    ("stop tracing", 11),
    ("stack trace", 6),
    ("GOMAXPROCS", 9),
    ("profile", 4),
];

/// Go 1.19: `bytes` starts with the reason string, or is None when the collector
/// stopped the world directly (sweep or mark termination, not told apart there).
pub fn from_go119(bytes: Option<&[u8]>) -> Reason {
    let Some(bytes) = bytes else {
        return Reason {
            code: None,
            name: "GC (sweep or mark termination)".into(),
            forced: false,
        };
    };
    for (prefix, code) in GO119 {
        if bytes.starts_with(prefix.as_bytes()) {
            return from_code(*code);
        }
    }
    let shown: String = String::from_utf8_lossy(bytes)
        .chars()
        .take_while(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    Reason {
        code: None,
        name: format!("other ({shown})"),
        forced: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_go119_strings_agree() {
        assert_eq!(from_code(7).name, "read mem stats");
        assert_eq!(from_code(200).name, "reason 200");
        assert_eq!(from_go119(Some(b"read mem statsGOMAXPROCS")), from_code(7));
        assert_eq!(from_go119(Some(b"profile cleanupxyz")), from_code(5));
        assert_eq!(from_go119(Some(b"profilexyz")), from_code(4));
        assert_eq!(from_go119(None).code, None);
    }
}
