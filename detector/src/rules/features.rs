//! The Go features a fix text recommends, and the first Go release that has each: the
//! one place rules learn what the target's Go version offers. Each entry names the
//! source file (and a line in it) that introduced the feature, so the table is checked
//! against the Go sources of every installed toolchain by the test below, not trusted.
//!
//! The target's version is the one read from its binary (`Collected::go_version`).
//! When it is unknown, a rule gives the advice that holds on the oldest supported
//! release.
use crate::collect::Collected;
use crate::gobin::GoVersion;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `runtime.AddCleanup`: a cleanup that does not resurrect its object.
    AddCleanup,
    /// `runtime/trace.FlightRecorder`: the last seconds of trace, kept in memory.
    FlightRecorder,
    /// A GOMAXPROCS default that follows the cgroup CPU limit and updates itself, and
    /// `runtime.SetDefaultGOMAXPROCS` to return to it.
    CgroupGomaxprocs,
    /// `log/slog` (and its `AddSource` option).
    Slog,
    /// The runtime/metrics `/gc/gogc:percent` and `/gc/gomemlimit:bytes`.
    GcSettingMetrics,
    /// `debug.SetMemoryLimit` / GOMEMLIMIT (older than every supported release).
    MemoryLimit,
    /// runtime/metrics itself (older than every supported release).
    RuntimeMetrics,
}

/// Where a feature comes from: its first release, and the file (under the Go tree's
/// `src/`) holding `marker`, which releases before `since` do not have.
pub struct Origin {
    pub since: (u32, u32),
    pub file: &'static str,
    pub marker: &'static str,
}

impl Feature {
    pub const ALL: &'static [Feature] = &[
        Feature::AddCleanup,
        Feature::FlightRecorder,
        Feature::CgroupGomaxprocs,
        Feature::Slog,
        Feature::GcSettingMetrics,
        Feature::MemoryLimit,
        Feature::RuntimeMetrics,
    ];

    pub const fn origin(self) -> Origin {
        let (since, file, marker) = match self {
            Feature::AddCleanup => ((1, 24), "runtime/mcleanup.go", "func AddCleanup["),
            Feature::FlightRecorder => (
                (1, 25),
                "runtime/trace/flightrecorder.go",
                "func NewFlightRecorder(",
            ),
            // The cgroup-aware default lives in runtime/cgroup_linux.go (1.25), and
            // SetDefaultGOMAXPROCS in runtime/debug.go.
            Feature::CgroupGomaxprocs => {
                ((1, 25), "runtime/debug.go", "func SetDefaultGOMAXPROCS(")
            }
            Feature::Slog => ((1, 21), "log/slog/handler.go", "AddSource bool"),
            // 1.20 is not a supported target; its metrics lack both (they arrived with
            // 1.21's description.go, as its release notes say).
            Feature::GcSettingMetrics => (
                (1, 21),
                "runtime/metrics/description.go",
                "\"/gc/gogc:percent\"",
            ),
            Feature::MemoryLimit => ((1, 19), "runtime/debug/garbage.go", "func SetMemoryLimit("),
            Feature::RuntimeMetrics => ((1, 16), "runtime/metrics/sample.go", "func Read("),
        };
        Origin {
            since,
            file,
            marker,
        }
    }

    /// Whether Go `v` has it.
    pub const fn in_version(self, v: GoVersion) -> bool {
        let (major, minor) = self.origin().since;
        v.at_least(major, minor)
    }
}

/// Whether the target's Go release (read from its binary) has `f`; false when the
/// version is unknown (advice then holds for the oldest supported release).
pub fn has(c: &Collected, f: Feature) -> bool {
    c.go_version.is_some_and(|v| f.in_version(v))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The Go trees to check the table against: the toolchains `cargo xtask setup`
    /// installs (~/.cache/detector/go/<version>/go) and Debian's Go 1.19.
    fn go_trees() -> Vec<(GoVersion, PathBuf)> {
        let mut out = vec![];
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        if let Ok(dir) = std::fs::read_dir(home.join(".cache/detector/go")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = GoVersion::parse(&format!("go{name}")) {
                    out.push((v, e.path().join("go/src")));
                }
            }
        }
        out.push((
            GoVersion::new(1, 19, 0),
            PathBuf::from("/usr/lib/go-1.19/src"),
        ));
        out.retain(|(_, src)| src.is_dir());
        out.sort_by_key(|(v, _)| *v);
        out
    }

    #[test]
    fn each_feature_is_in_the_go_sources_exactly_from_its_first_release() {
        let trees = go_trees();
        if trees.is_empty() {
            // CI installs the toolchains (cargo xtask setup): there, never skip.
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "no Go source tree under ~/.cache/detector/go: run `cargo xtask setup`"
            );
            eprintln!("no Go source tree installed (cargo xtask setup): table not checked");
            return;
        }
        // The table's versions are each checked on both sides when installed.
        assert!(trees.len() >= 2, "{trees:?}");
        let mut wrong = vec![];
        for f in Feature::ALL {
            let o = f.origin();
            for (v, src) in &trees {
                let text = std::fs::read_to_string(src.join(o.file)).unwrap_or_default();
                let found = text.contains(o.marker);
                if found != f.in_version(*v) {
                    wrong.push(format!(
                        "{f:?}: {v} {} `{}` in {}",
                        if found { "has" } else { "lacks" },
                        o.marker,
                        o.file
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "the feature table disagrees with the Go sources:\n  {}",
            wrong.join("\n  ")
        );
    }

    #[test]
    fn features_older_than_every_supported_release_are_always_there() {
        let oldest = crate::gobin::version::OLDEST_SUPPORTED;
        assert!(Feature::MemoryLimit.in_version(oldest));
        assert!(Feature::RuntimeMetrics.in_version(oldest));
        assert!(!Feature::Slog.in_version(oldest));
        assert!(Feature::AddCleanup.in_version(GoVersion::new(1, 24, 0)));
        assert!(!Feature::AddCleanup.in_version(GoVersion::new(1, 23, 9)));
        assert!(Feature::FlightRecorder.in_version(GoVersion::new(1, 25, 0)));
        assert!(!Feature::FlightRecorder.in_version(GoVersion::new(1, 24, 11)));
    }
}
