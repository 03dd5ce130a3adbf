//! The subcommands.
pub mod diagnose;
pub mod inspect;
pub mod rules;

use std::path::Path;

use crate::{
    exit::{self, Failure},
    rules::Thresholds,
};

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The thresholds in effect: defaults, then the TOML file, then each `KEY=VALUE`.
pub fn thresholds(config: Option<&Path>, sets: &[String]) -> Result<Thresholds, Failure> {
    let mut t = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Failure::new(
                    exit::Code::Usage,
                    format!("cannot read config {}: {e}", p.display()),
                )
            })?;
            Thresholds::from_toml(&text).map_err(|e| {
                Failure::new(exit::Code::Usage, format!("config {}: {e}", p.display()))
            })?
        }
        None => Thresholds::default(),
    };
    for s in sets {
        t.set(s)
            .map_err(|e| Failure::new(exit::Code::Usage, format!("--set {e}")))?;
    }
    Ok(t)
}

/// Writes a command's output to stdout. A failed write (a full disk, a closed pipe)
/// is an error naming the cause, with exit code OTHER, instead of `print!`'s panic.
pub fn write_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(exit::Code::Other, format!("cannot write to stdout: {e}")))
}

/// Parses "10s", "500ms", "2m", "1.5s" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("duration must be positive, got {s:?}"));
    }
    Ok(std::time::Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap().as_secs(), 10);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("3").unwrap().as_secs(), 3);
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
