//! Go release versions as read from `.go.buildinfo` ("go1.21.13", "go1.27rc1", "devel ...").
use std::fmt;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// The oldest release whose runtime layout detector knows.
pub const OLDEST_SUPPORTED: GoVersion = GoVersion::new(1, 19, 0);
/// The newest minor release tested; newer ones are tried, with a warning.
pub const NEWEST_TESTED: GoVersion = GoVersion::new(1, 27, 0);

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        GoVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses "go1.21.13", "go1.22", "go1.27rc1", "go1.23.9 X:nocoverageredesign".
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.trim().strip_prefix("go")?;
        let s = s.split(|c: char| c.is_whitespace()).next()?;
        let mut parts = s.splitn(3, '.');
        let major = leading_number(parts.next()?)?;
        let minor = leading_number(parts.next()?)?;
        let patch = parts.next().and_then(leading_number).unwrap_or(0);
        Some(GoVersion::new(major, minor, patch))
    }

    /// True when this is `major.minor` or newer.
    pub const fn at_least(&self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    pub fn is_supported(&self) -> bool {
        *self >= OLDEST_SUPPORTED
    }
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(
            GoVersion::parse("go1.21.13"),
            Some(GoVersion::new(1, 21, 13))
        );
        assert_eq!(GoVersion::parse("go1.22"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(
            GoVersion::parse("go1.27rc1"),
            Some(GoVersion::new(1, 27, 0))
        );
        assert_eq!(
            GoVersion::parse("go1.23.9 X:nocoverageredesign"),
            Some(GoVersion::new(1, 23, 9))
        );
        assert_eq!(GoVersion::parse("devel +abc"), None);
        assert!(GoVersion::new(1, 19, 8).is_supported());
        assert!(!GoVersion::new(1, 18, 10).is_supported());
        assert!(GoVersion::new(1, 25, 5).at_least(1, 22));
    }
}
