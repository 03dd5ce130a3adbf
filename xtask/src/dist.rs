//! `cargo xtask dist`: the release artifacts, in `target/dist/`.
//!
//! - `detector`: one statically linked x86-64 binary (musl), the eBPF object embedded;
//!   it needs no Rust, LLVM, Go or shared library on the host.
//! - `detector_<version>_amd64.deb`: that binary as /usr/bin/detector, the systemd unit
//!   of deploy/systemd, a default config (/etc/default/detector-watch and
//!   /etc/detector/detector.toml, both conffiles), man pages and bash/zsh/fish
//!   completions generated from the clap definition (`detector __generate`), and the
//!   Grafana dashboard and Prometheus rules under /usr/share/detector.
//! - `detector_<version>_oci.tar`: an OCI image layout archive built with umoci (no
//!   daemon), entrypoint /usr/bin/detector, named [`IMAGE`]:<version> as the DaemonSet
//!   in deploy/kubernetes names it.
//! - `SHA256SUMS`: `sha256sum -c SHA256SUMS` checks all three.
//!
//! Timestamps inside the artifacts are the last commit's time (or SOURCE_DATE_EPOCH),
//! and owners are root, so that a rebuild of the same commit gives the same files.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{run_cmd, setup, workspace_root};

/// The Rust target of the static binary.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The workspace version: the package version, the image tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The image's name (without the tag). `localhost/` is what podman calls a locally
/// built image; containerd keeps the name on `ctr images import`, so a node that
/// imported the archive runs the DaemonSet without a registry.
pub const IMAGE: &str = "localhost/detector";
const MAINTAINER: &str = "detector maintainers <maintainers@users.noreply.r-seed-3d58e4bd.example>";
const SUMMARY: &str = "finds misuse of the Go runtime in live processes, with eBPF uprobes";
const DESCRIPTION: &str = "\
detector attaches eBPF uprobes to Go runtime functions in running linux/amd64 Go
programs (no restart, no code change), counts calls by call site, times every
stop-the-world pause, and reports misuse with the evidence, the cost and the fix.
`detector diagnose --pid N` watches one process; the detector-watch service
(`detector watch`) watches every Go process of the host and serves Prometheus
metrics on 127.0.0.1:9464.";

pub fn dir() -> PathBuf {
    workspace_root().join("target/dist")
}

/// Scratch space (staging trees, the OCI layout) beside `target/dist`, so that
/// `target/dist` holds the artifacts only.
fn work_dir() -> PathBuf {
    workspace_root().join("target/dist-work")
}

/// Builds every artifact; returns `target/dist`.
pub fn run() -> Result<PathBuf> {
    let t0 = std::time::Instant::now();
    setup::rust_src()?;
    let bpf_linker = setup::bpf_linker()?;
    musl_target()?;
    // musl-gcc: crates with C code (ring, for TLS) compile it against musl's headers.
    debian_package(
        "musl-tools",
        "C compiler for musl",
        &["musl-gcc", "--version"],
    )?;
    debian_package(
        "umoci",
        "OCI images without a daemon",
        &["umoci", "--version"],
    )?;
    debian_package(
        "file",
        "to check that the binary is static",
        &["file", "--version"],
    )?;
    let dist = dir();
    let work = work_dir();
    for d in [&dist, &work] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d)?;
    }
    let epoch = source_date_epoch()?;

    let binary = build_binary(&bpf_linker, &dist)?;
    let deb = build_deb(&binary, &work, &dist, epoch)?;
    let image = build_image(&binary, &work, &dist, epoch)?;
    let sums = dist.join("SHA256SUMS");
    let names: Vec<&str> = [&binary, &deb, &image]
        .iter()
        .map(|p| p.file_name().and_then(|n| n.to_str()).expect("UTF-8 names"))
        .collect();
    let listing = output(Command::new("sha256sum").args(&names).current_dir(&dist))?;
    fs::write(&sums, listing)?;
    eprintln!(
        "xtask dist: {} in {:.0} s:",
        dist.display(),
        t0.elapsed().as_secs_f64()
    );
    for p in [&binary, &deb, &image, &sums] {
        let size = fs::metadata(p)?.len();
        eprintln!("  {:>12} bytes  {}", size, p.display());
    }
    Ok(dist)
}

/// `rustup target add` for the musl target, once.
fn musl_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == TARGET) {
        eprintln!("setup: adding the Rust target {TARGET} (static binaries)");
        run_cmd(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    Ok(())
}

/// A Debian package, installed unless `probe` runs and succeeds.
fn debian_package(package: &str, what: &str, probe: &[&str]) -> Result<()> {
    let found = Command::new(probe[0])
        .args(&probe[1..])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    eprintln!("setup: installing Debian's {package} ({what})");
    crate::setup::apt_install(&[package], package)
}

/// The time recorded in the artifacts: SOURCE_DATE_EPOCH, else the last commit's.
fn source_date_epoch() -> Result<u64> {
    if let Some(e) = std::env::var_os("SOURCE_DATE_EPOCH") {
        return e
            .to_str()
            .and_then(|s| s.parse().ok())
            .context("SOURCE_DATE_EPOCH is not a number of seconds");
    }
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .output();
    Ok(out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0))
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

/// Builds the static binary and copies it to `dist/detector`.
fn build_binary(bpf_linker: &Path, dist: &Path) -> Result<PathBuf> {
    eprintln!("xtask dist: cargo build --release --target {TARGET}");
    let tools = setup::Tools {
        bpf_linker_dir: bpf_linker.to_path_buf(),
        go: vec![],
    };
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .env("PATH", tools.path_env())
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
            .args(["build", "--release", "--locked", "--package", "detector"])
            .args(["--target", TARGET]),
    )?;
    let built = workspace_root().join(format!("target/{TARGET}/release/detector"));
    let binary = dist.join("detector");
    fs::copy(&built, &binary).with_context(|| format!("copying {}", built.display()))?;
    // No program interpreter, no shared library: what `file` calls static(-pie).
    let kind = output(Command::new("file").arg("-b").arg(&binary))?;
    ensure!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "{} is not statically linked: {kind}",
        binary.display()
    );
    Ok(binary)
}

/// Sets every mtime under `root` to `epoch`.
fn touch_tree(root: &Path, epoch: u64) -> Result<()> {
    run_cmd(
        Command::new("find")
            .arg(root)
            .args(["-exec", "touch", "--no-dereference", "--date"])
            .arg(format!("@{epoch}"))
            .args(["{}", "+"]),
    )
}

/// Copies `from` to `to` (creating its directory) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().expect("a file path"))?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().expect("a file path"))?;
    fs::write(to, text)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// /etc/detector/detector.toml: every threshold of `detector rules`, once, commented
/// out at its default, after the rules that read it. detector reads the file (through
/// /etc/default/detector-watch), so uncommenting a line changes that threshold.
fn default_config(binary: &Path) -> Result<String> {
    let json = output(Command::new(binary).args(["rules", "--format", "json"]))?;
    let book: serde_json::Value = serde_json::from_str(&json).context("detector rules JSON")?;
    // (key, default, rules reading it), in the rule book's order.
    let mut keys: Vec<(String, serde_json::Value, Vec<String>)> = vec![];
    let rules = book["rules"]
        .as_array()
        .context("no rules in detector rules")?;
    for r in rules {
        let id = r["id"].as_str().context("rule id")?;
        for p in r["thresholds"]
            .as_array()
            .context("rule without thresholds")?
        {
            let key = p[0].as_str().context("threshold key")?;
            match keys.iter_mut().find(|(k, _, _)| k == key) {
                Some((_, _, ids)) => ids.push(id.to_string()),
                None => keys.push((key.to_string(), p[1].clone(), vec![id.to_string()])),
            }
        }
    }
    ensure!(
        keys.len() >= 5,
        "only {} thresholds in detector rules",
        keys.len()
    );
    let mut out = String::from(
        "# detector's rule thresholds (`detector rules` shows each rule, what it observes\n\
         # and the thresholds in effect). Every key is commented out at its default:\n\
         # uncomment one to change it. The detector-watch service reads this file through\n\
         # DETECTOR_ARGS in /etc/default/detector-watch; for diagnose, pass\n\
         # --config /etc/detector/detector.toml.\n\n[thresholds]\n",
    );
    for (key, value, ids) in keys {
        out.push_str(&format!(
            "\n# read by {}\n#{key} = {value}\n",
            ids.join(", ")
        ));
    }
    Ok(out)
}

/// The .deb, staged in `work/deb` and built with dpkg-deb.
fn build_deb(binary: &Path, work: &Path, dist: &Path, epoch: u64) -> Result<PathBuf> {
    eprintln!("xtask dist: .deb");
    let deploy = workspace_root().join("deploy");
    let root = work.join("deb");
    install(binary, &root.join("usr/bin/detector"), 0o755)?;

    // The unit as deploy/systemd has it, but for the packaged binary's path.
    let unit = fs::read_to_string(deploy.join("systemd/detector-watch.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/local/bin/detector "),
        "deploy/systemd/detector-watch.service: ExecStart no longer runs /usr/local/bin/detector"
    );
    let unit = unit.replace("/usr/local/bin/detector", "/usr/bin/detector");
    write(
        &root.join("usr/lib/systemd/system/detector-watch.service"),
        &unit,
        0o644,
    )?;
    install(
        &deploy.join("debian/detector-watch.default"),
        &root.join("etc/default/detector-watch"),
        0o644,
    )?;
    write(
        &root.join("etc/detector/detector.toml"),
        &default_config(binary)?,
        0o644,
    )?;

    // Man pages and completions from the clap definition.
    let generated = work.join("generated");
    run_cmd(Command::new(binary).arg("__generate").arg(&generated))?;
    let man = root.join("usr/share/man/man1");
    fs::create_dir_all(&man)?;
    let mut pages = 0;
    for e in fs::read_dir(&generated)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "1") {
            let to = man.join(path.file_name().expect("a file"));
            install(&path, &to, 0o644)?;
            run_cmd(Command::new("gzip").args(["-9", "-n"]).arg(&to))?;
            pages += 1;
        }
    }
    ensure!(pages >= 5, "only {pages} man pages generated");
    for (file, to) in [
        (
            "detector.bash",
            "usr/share/bash-completion/completions/detector",
        ),
        ("_detector", "usr/share/zsh/vendor-completions/_detector"),
        (
            "detector.fish",
            "usr/share/fish/vendor_completions.d/detector.fish",
        ),
    ] {
        install(&generated.join(file), &root.join(to), 0o644)?;
    }

    // The dashboard and the Prometheus rules, for the monitoring side.
    install(
        &deploy.join("grafana/detector-dashboard.json"),
        &root.join("usr/share/detector/grafana/detector-dashboard.json"),
        0o644,
    )?;
    for e in fs::read_dir(deploy.join("prometheus"))? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".yml") && !name.ends_with(".test.yml") {
            install(
                &path,
                &root.join("usr/share/detector/prometheus").join(name),
                0o644,
            )?;
        }
    }
    write(
        &root.join("usr/share/doc/detector/copyright"),
        &format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: detector\n\nFiles: *\nCopyright: {MAINTAINER}\nLicense: {}\n",
            env!("CARGO_PKG_LICENSE")
        ),
        0o644,
    )?;

    // DEBIAN/: control, conffiles, md5sums and the maintainer scripts of deploy/debian.
    let installed_kib: u64 = walk(&root)?
        .iter()
        .map(|p| fs::symlink_metadata(p).map(|m| m.len().div_ceil(1024)))
        .sum::<std::io::Result<u64>>()?;
    let md5 = output(
        Command::new("md5sum")
            .args(
                walk(&root)?
                    .iter()
                    .map(|p| p.strip_prefix(&root).expect("under root").to_owned()),
            )
            .current_dir(&root),
    )?;
    let control = root.join("DEBIAN");
    let mut description = String::new();
    for line in DESCRIPTION.lines() {
        description.push_str(&format!(" {line}\n"));
    }
    write(
        &control.join("control"),
        &format!(
            "Package: detector\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: {MAINTAINER}\n\
             Installed-Size: {installed_kib}\nSection: admin\nPriority: optional\n\
             Description: {SUMMARY}\n{description}"
        ),
        0o644,
    )?;
    write(
        &control.join("conffiles"),
        "/etc/default/detector-watch\n/etc/detector/detector.toml\n",
        0o644,
    )?;
    write(&control.join("md5sums"), &md5, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &deploy.join("debian").join(script),
            &control.join(script),
            0o755,
        )?;
    }
    touch_tree(&root, epoch)?;
    let deb = dist.join(format!("detector_{VERSION}_amd64.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    Ok(deb)
}

/// Every regular file and symlink under `root`, except DEBIAN/, sorted.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                if path != root.join("DEBIAN") {
                    dirs.push(path);
                }
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// RFC 3339 UTC time of a Unix time, for the image's timestamps.
fn rfc3339(epoch: u64) -> Result<String> {
    Ok(output(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ", "-d"])
            .arg(format!("@{epoch}")),
    )?
    .trim()
    .to_string())
}

/// The OCI image: one layer holding /usr/bin/detector, built with umoci in
/// `work/oci`, then archived (`oci-layout`, `index.json`, `blobs/`) as one tar.
fn build_image(binary: &Path, work: &Path, dist: &Path, epoch: u64) -> Result<PathBuf> {
    eprintln!("xtask dist: OCI image {IMAGE}:{VERSION}");
    let created = rfc3339(epoch)?;
    let rootfs = work.join("rootfs");
    install(binary, &rootfs.join("usr/bin/detector"), 0o755)?;
    touch_tree(&rootfs, epoch)?;
    let layer = work.join("layer.tar");
    let tar = |cmd: &mut Command| {
        cmd.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .arg("--mode=go+rX")
            .arg(format!("--mtime=@{epoch}"));
    };
    let mut t = Command::new("tar");
    tar(&mut t);
    run_cmd(t.arg("-C").arg(&rootfs).arg("-cf").arg(&layer).arg("usr"))?;

    let layout = work.join("oci");
    let image = format!("{}:{VERSION}", layout.display());
    run_cmd(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    run_cmd(Command::new("umoci").args(["new", "--image", &image]))?;
    run_cmd(
        Command::new("umoci")
            .args(["raw", "add-layer", "--image", &image])
            .args(["--history.created", &created])
            .args(["--history.created_by", "cargo xtask dist"])
            .arg(&layer),
    )?;
    run_cmd(
        Command::new("umoci")
            .args(["config", "--image", &image])
            .args([
                "--config.entrypoint",
                "/usr/bin/detector",
                "--config.cmd",
                "--help",
                "--config.exposedports",
                "9464/tcp",
                "--config.user",
                "0:0",
                "--config.label",
                "org.opencontainers.image.title=detector",
                "--config.label",
                &format!("org.opencontainers.image.version={VERSION}"),
                "--config.label",
                &format!("org.opencontainers.image.description={SUMMARY}"),
                "--config.label",
                &format!(
                    "org.opencontainers.image.licenses={}",
                    env!("CARGO_PKG_LICENSE")
                ),
                "--architecture",
                "amd64",
                "--os",
                "linux",
                "--created",
                &created,
                "--history.created",
                &created,
                "--history.created_by",
                "cargo xtask dist",
            ]),
    )?;
    run_cmd(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;

    // The full name beside umoci's tag: containerd's import and podman load take it.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path)?)?;
    let manifests = index["manifests"]
        .as_array_mut()
        .context("index.json has no manifests")?;
    ensure!(
        manifests.len() == 1,
        "index.json: {} manifests",
        manifests.len()
    );
    manifests[0]["annotations"]["io.containerd.image.name"] =
        serde_json::Value::from(format!("{IMAGE}:{VERSION}"));
    fs::write(&index_path, serde_json::to_vec(&index)?)?;

    touch_tree(&layout, epoch)?;
    let archive = dist.join(format!("detector_{VERSION}_oci.tar"));
    let mut t = Command::new("tar");
    tar(&mut t);
    run_cmd(t.arg("-C").arg(&layout).arg("-cf").arg(&archive).args([
        "oci-layout",
        "index.json",
        "blobs",
    ]))?;
    Ok(archive)
}
