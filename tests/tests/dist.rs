//! The release artifacts of `cargo xtask dist` (target/dist, or $DETECTOR_DIST; `cargo
//! xtask test` builds them once before the tests):
//! - the static binary runs from an empty root directory holding only itself and a Go
//!   program (`--version`, `inspect`, `rules`), then, with /proc and /sys mounted in
//!   that root, diagnoses the Go program started inside it;
//! - the .deb installs with `dpkg -i` (binary, unit, config, man pages, completions),
//!   and `dpkg -r` then `dpkg --purge` leave nothing behind;
//! - the OCI image's entrypoint, run from its unpacked root file system, is detector;
//!   the DaemonSet names the image;
//! - SHA256SUMS checks every artifact.
//!
//! All but the checksums need root (chroot, mount, dpkg): they fail, never skip,
//! without it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE: &str = "localhost/detector";
/// PATH for `chroot` itself, when the rest of the environment is cleared.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn dist_dir() -> PathBuf {
    let dir = std::env::var_os("DETECTOR_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist"));
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "no release artifacts in {}: run `cargo xtask dist` (`cargo xtask test` does)",
        dir.display()
    );
    dir
}

fn artifact(name: &str) -> PathBuf {
    let p = dist_dir().join(name);
    assert!(
        p.is_file(),
        "{} missing: run `cargo xtask dist`",
        p.display()
    );
    p
}

fn require_root(what: &str) {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Uid line");
    if euid != "0" {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        panic!(
            "this test needs root ({what}); euid is {euid} (CI={ci}): run `sudo cargo xtask test`"
        );
    }
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("could not start {shown}: {e}"))
}

/// Runs `cmd`, fails unless it exits 0, and returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory, removed when dropped, unless something is mounted under it
/// (then it is left, rather than deleting through the mount).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("detector-dist-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.0.to_string_lossy().into_owned();
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        {
            eprintln!("{}: still has mounts, left in place", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn checksums_cover_every_artifact() {
    let dir = dist_dir();
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    let mut named: Vec<&str> = sums
        .lines()
        .map(|l| l.split_whitespace().nth(1).expect("hash and name"))
        .collect();
    named.sort();
    let mut expected = vec![
        "detector".to_string(),
        format!("detector_{VERSION}_amd64.deb"),
        format!("detector_{VERSION}_oci.tar"),
    ];
    expected.sort();
    assert_eq!(named, expected, "SHA256SUMS:\n{sums}");
    let mut present: Vec<String> = fs::read_dir(&dir)
        .expect("dist dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    present.sort();
    assert_eq!(
        present, expected,
        "target/dist holds more than the artifacts"
    );
    let out = ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir));
    assert_eq!(out.matches(": OK").count(), 3, "{out}");
}

#[test]
fn binary_is_static_and_runs_from_an_empty_root() {
    require_root("chroot, mount");
    let bin = artifact("detector");
    let kind = ok(Command::new("file").arg("-b").arg(&bin));
    assert!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "file says: {kind}"
    );
    // ldd finds no shared library to load.
    let ldd = run(Command::new("ldd").arg(&bin));
    let ldd_text = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        ldd_text.contains("not a dynamic executable") || ldd_text.contains("statically linked"),
        "ldd says: {ldd_text}"
    );

    // The root holds the binary and a Go program, nothing else: no libc, no loader,
    // no /proc, no /etc.
    let scratch = Scratch::new("root");
    let root = scratch.0.join("root");
    fs::create_dir(&root).unwrap();
    fs::copy(&bin, root.join("detector")).unwrap();
    let service = detector_tests::version_dir("service", 27).join("default/service");
    fs::copy(&service, root.join("service")).unwrap();
    let entries: Vec<_> = fs::read_dir(&root).unwrap().collect();
    assert_eq!(entries.len(), 2);
    let chroot = |args: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(&root).args(args).env_clear().env("PATH", SYSTEM_PATH);
        c
    };
    let version = ok(&mut chroot(&["/detector", "--version"]));
    assert_eq!(version.trim(), format!("detector {VERSION}"));
    let inspect = ok(&mut chroot(&["/detector", "inspect", "/service"]));
    assert!(inspect.contains("go1.27"), "inspect /service:\n{inspect}");
    let rules = ok(&mut chroot(&["/detector", "rules"]));
    assert!(rules.contains("readmemstats-hot-path"), "{rules}");

    // diagnose needs the kernel's views (/proc for the target, /sys for the uprobe
    // PMU): mounted in a private mount namespace, so they go away with it. The target
    // is started inside the root too.
    let report = scratch.0.join("report.json");
    let script = r#"
set -e
mkdir "$R/proc" "$R/sys"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
chroot "$R" /service -rate 300 >/dev/null &
svc=$!
sleep 1
code=0
chroot "$R" /detector diagnose --pid "$svc" --duration 3s --format json >"$OUT" || code=$?
kill "$svc"
wait "$svc" || true
exit "$code"
"#;
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("R", &root)
        .env("OUT", &report));
    let text = fs::read_to_string(&report).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(1),
        "diagnose in the chroot should exit 1 (findings): {}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    let rules: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["rule"].as_str())
        .collect();
    assert!(rules.contains(&"readmemstats-hot-path"), "{report}");
}

/// Removes the package if a test installed it, whatever the test's outcome.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "detector"]).output();
    }
}

fn dpkg_status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "detector"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deb_installs_and_removes_cleanly() {
    require_root("dpkg -i");
    let deb = artifact(&format!("detector_{VERSION}_amd64.deb"));
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "a detector package is already on this machine ({status}); remove it first"
    );
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains(&format!("Version: {VERSION}")), "{info}");

    // Every path in the package, and which of its directories were there before.
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let paths: Vec<PathBuf> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| PathBuf::from(p.trim_start_matches('.').trim_end_matches('/')))
        .filter(|p| p.as_os_str().len() > 1)
        .collect();
    let preexisting: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    for p in &preexisting {
        assert!(p.is_dir(), "{} exists before the install", p.display());
    }
    for needed in [
        "/usr/bin/detector",
        "/usr/lib/systemd/system/detector-watch.service",
        "/etc/default/detector-watch",
        "/etc/detector/detector.toml",
        "/usr/share/man/man1/detector.1.gz",
        "/usr/share/man/man1/detector-diagnose.1.gz",
        "/usr/share/man/man1/detector-watch.1.gz",
        "/usr/share/bash-completion/completions/detector",
        "/usr/share/zsh/vendor-completions/_detector",
        "/usr/share/fish/vendor_completions.d/detector.fish",
        "/usr/share/detector/prometheus/detector-rules.yml",
        "/usr/share/detector/grafana/detector-dashboard.json",
    ] {
        assert!(
            paths.iter().any(|p| p == Path::new(needed)),
            "the .deb lacks {needed}:\n{contents}"
        );
    }

    let _installed = Installed;
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(dpkg_status().contains("install ok installed"));
    // The files are as dpkg recorded them.
    let verify = ok(Command::new("dpkg").args(["--verify", "detector"]));
    assert!(verify.trim().is_empty(), "dpkg --verify: {verify}");
    let version = ok(Command::new("/usr/bin/detector").arg("--version"));
    assert_eq!(version.trim(), format!("detector {VERSION}"));

    let unit = fs::read_to_string("/usr/lib/systemd/system/detector-watch.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/detector watch ")
            && unit.contains("EnvironmentFile=-/etc/default/detector-watch"),
        "{unit}"
    );
    // systemd accepts the unit as installed (directives, the ExecStart binary).
    ok(Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/detector-watch.service"]));
    // The default config is what the unit passes, and detector accepts it: as shipped
    // (all commented out) and with every threshold uncommented, both at the defaults.
    let default = fs::read_to_string("/etc/default/detector-watch").unwrap();
    assert!(
        default
            .lines()
            .any(|l| l == "DETECTOR_ARGS=--config /etc/detector/detector.toml"),
        "{default}"
    );
    let builtin = ok(Command::new("/usr/bin/detector").args(["rules", "--format", "json"]));
    let shipped = ok(Command::new("/usr/bin/detector").args([
        "rules",
        "--format",
        "json",
        "--config",
        "/etc/detector/detector.toml",
    ]));
    assert_eq!(shipped, builtin);
    let config = fs::read_to_string("/etc/detector/detector.toml").unwrap();
    let keys = config
        .lines()
        .filter(|l| l.starts_with('#') && l.contains(" = "))
        .count();
    assert!(
        keys >= 10,
        "only {keys} thresholds in the config:\n{config}"
    );
    let scratch = Scratch::new("config");
    let uncommented: String = config
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(kv) if kv.contains(" = ") => format!("{kv}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    fs::write(scratch.0.join("all.toml"), uncommented).unwrap();
    let all = ok(Command::new("/usr/bin/detector")
        .args(["rules", "--format", "json", "--config"])
        .arg(scratch.0.join("all.toml")));
    assert_eq!(all, builtin, "the config's values are not the defaults");

    // Man pages (from the clap definition) render; the completions load.
    let page =
        ok(Command::new("sh").args(["-c", "gzip -dc /usr/share/man/man1/detector-diagnose.1.gz"]));
    assert!(
        page.contains(".TH detector-diagnose 1") && page.contains("\\-\\-pid"),
        "{page}"
    );
    let complete = ok(Command::new("bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/detector && complete -p detector",
    ]));
    assert!(complete.contains("detector"), "{complete}");
    for f in [
        "/usr/share/zsh/vendor-completions/_detector",
        "/usr/share/fish/vendor_completions.d/detector.fish",
    ] {
        let text = fs::read_to_string(f).unwrap();
        assert!(
            text.contains("diagnose") && text.contains("overhead-budget"),
            "{f}:\n{text}"
        );
    }

    // Enabled by the administrator (symlinks only; works without a running systemd),
    // then removed: the package's prerm disables it.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/detector-watch.service");
    ok(Command::new("systemctl").args(["--no-reload", "enable", "detector-watch.service"]));
    assert!(
        wants.is_symlink(),
        "systemctl enable made no {}",
        wants.display()
    );

    ok(Command::new("dpkg").args(["-r", "detector"]));
    assert!(
        dpkg_status().contains("deinstall ok config-files"),
        "{}",
        dpkg_status()
    );
    assert!(
        !wants.is_symlink(),
        "{} is left after dpkg -r",
        wants.display()
    );
    let conffiles = ["/etc/default/detector-watch", "/etc/detector/detector.toml"];
    for p in &paths {
        let conffile = conffiles.iter().any(|c| Path::new(c) == p.as_path());
        if conffile {
            assert!(p.is_file(), "dpkg -r removed the conffile {}", p.display());
        } else if !p.is_dir() {
            assert!(
                !p.exists() && !p.is_symlink(),
                "{} is left after dpkg -r",
                p.display()
            );
        }
    }

    ok(Command::new("dpkg").args(["--purge", "detector"]));
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "after --purge: {status}"
    );
    for p in &paths {
        if preexisting.contains(&p) {
            continue;
        }
        assert!(
            !p.exists() && !p.is_symlink(),
            "{} is left after dpkg --purge",
            p.display()
        );
    }
    assert!(!Path::new("/etc/detector").exists());
}

#[test]
fn image_entrypoint_runs_detector_and_the_daemonset_uses_it() {
    require_root("umoci unpack, chroot");
    let archive = artifact(&format!("detector_{VERSION}_oci.tar"));
    let scratch = Scratch::new("image");
    let layout = scratch.0.join("layout");
    fs::create_dir(&layout).unwrap();
    ok(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let blob = |digest: &serde_json::Value| {
        let d = digest.as_str().expect("digest");
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").expect("sha256"))
    };

    // The name: umoci's tag, and the full name the DaemonSet pulls.
    let index = json(layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let ann = &manifests[0]["annotations"];
    assert_eq!(ann["org.opencontainers.image.ref.name"], VERSION);
    let name = format!("{IMAGE}:{VERSION}");
    assert_eq!(ann["io.containerd.image.name"], name.as_str());
    let daemonset = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    let images: Vec<&str> = daemonset
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(images, [name.as_str()], "the DaemonSet's image");

    // The config: linux/amd64, entrypoint /usr/bin/detector.
    let manifest = json(blob(&manifests[0]["digest"]));
    let config = json(blob(&manifest["config"]["digest"]));
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let entrypoint: Vec<String> = config["config"]["Entrypoint"]
        .as_array()
        .expect("Entrypoint")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    assert_eq!(entrypoint, ["/usr/bin/detector"]);

    // Unpacked as a runtime would, the entrypoint runs from the image's own root.
    let bundle = scratch.0.join("bundle");
    ok(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{VERSION}", layout.display()))
        .arg(&bundle));
    let runtime = json(bundle.join("config.json"));
    assert_eq!(runtime["process"]["args"][0], entrypoint[0].as_str());
    let rootfs = bundle.join("rootfs");
    let version = ok(Command::new("chroot")
        .arg(&rootfs)
        .args(&entrypoint)
        .arg("--version")
        .env_clear()
        .env("PATH", SYSTEM_PATH));
    assert_eq!(version.trim(), format!("detector {VERSION}"));
    // The image holds the dist binary itself.
    assert_eq!(
        fs::read(rootfs.join("usr/bin/detector")).unwrap(),
        fs::read(artifact("detector")).unwrap()
    );
}
