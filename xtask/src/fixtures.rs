//! Builds the Go fixture programs under `tests/fixtures/` with every Go toolchain and
//! build kind into `target/fixtures/go<version>/<kind>/<name>`, next to `go tool nm`'s
//! listing of each binary that keeps its symbols. Up-to-date outputs are skipped.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{bail, Context, Result};

use crate::{
    setup::{GoTool, Tools},
    workspace_root,
};

/// Fixture programs (directories under tests/fixtures).
const FIXTURES: &[&str] = &[
    "allapis", "service", "cases", "hitbench", "stdlib", "oddball",
];

/// Build kinds: name, extra `go build` arguments, CGO_ENABLED, keeps symbols.
const KINDS: &[(&str, &[&str], &str, bool)] = &[
    ("default", &[], "0", true),
    ("stripped", &["-ldflags=-s -w"], "0", false),
    ("pie", &["-buildmode=pie"], "0", true),
    // Externally linked: `.text` starts before `runtime.text`, as in cgo binaries.
    ("cgo", &["-ldflags=-linkmode=external"], "1", true),
];
/// Not part of the matrix: only built once, to test the refusal of foreign binaries.
const ARM64: (&str, &[&str], &str, bool) = ("arm64", &[], "0", false);

pub fn root() -> PathBuf {
    std::env::var_os("DETECTOR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/fixtures"))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn newest_source(dir: &Path) -> Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        if let Some(t) = mtime(&e?.path()) {
            newest = newest.max(t);
        }
    }
    Ok(newest)
}

fn go_cmd(tool: &GoTool) -> Command {
    let mut cmd = Command::new(&tool.go);
    // Stdlib-only fixtures, no module proxy: never let go fetch a toolchain or module.
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env_remove("GOROOT");
    cmd
}

/// Builds one fixture for one toolchain and kind; returns the binary's path.
fn build_one(tool: &GoTool, fixture: &str, kind: &str) -> Result<PathBuf> {
    let &(_, args, cgo, symbols) = KINDS
        .iter()
        .chain([&ARM64])
        .find(|k| k.0 == kind)
        .with_context(|| format!("unknown build kind {kind}"))?;
    let src = workspace_root().join("tests/fixtures").join(fixture);
    let out_dir = root().join(format!("go{}", tool.version)).join(kind);
    let out = out_dir.join(fixture);
    let nm = out_dir.join(format!("{fixture}.nm"));
    let src_time = newest_source(&src)?;
    let fresh = |p: &Path| mtime(p).is_some_and(|t| t >= src_time);
    if fresh(&out) && (!symbols || fresh(&nm)) {
        return Ok(out);
    }
    fs::create_dir_all(&out_dir)?;
    let status = go_cmd(tool)
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("CGO_ENABLED", cgo)
        .env("GOARCH", if kind == ARM64.0 { "arm64" } else { "amd64" })
        .status()
        .context("could not run go build")?;
    if !status.success() {
        bail!("go {} build of {fixture} ({kind}) failed", tool.version);
    }
    if symbols {
        let listing = go_cmd(tool)
            .args(["tool", "nm"])
            .arg(&out)
            .output()
            .context("could not run go tool nm")?;
        if !listing.status.success() {
            bail!("go tool nm {} failed", out.display());
        }
        fs::write(&nm, listing.stdout)?;
    }
    Ok(out)
}

/// Builds every fixture × kind for the selected Go versions (all when `only` is empty).
pub fn build_all(tools: &Tools, only: &[String]) -> Result<()> {
    let selected: Vec<&GoTool> = tools
        .go
        .iter()
        .filter(|t| {
            only.is_empty()
                || only
                    .iter()
                    .any(|o| t.version == *o || t.version.starts_with(&format!("{o}.")))
        })
        .collect();
    if selected.is_empty() {
        bail!("no installed Go toolchain matches {only:?}");
    }
    for tool in &selected {
        eprintln!("fixtures: Go {}", tool.version);
        for fixture in FIXTURES {
            for (kind, ..) in KINDS {
                build_one(tool, fixture, kind)?;
            }
        }
    }
    // A Go binary for another architecture, for the bad-input tests.
    if let Some(newest) = selected.last() {
        build_one(newest, "allapis", "arm64")?;
    }
    Ok(())
}

/// The demo service, built with the newest Go.
pub fn build_demo(tool: &GoTool) -> Result<PathBuf> {
    build_one(tool, "service", "default")
}
