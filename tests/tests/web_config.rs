//! `watch --web-config`, as root with real eBPF: TLS and basic auth on every endpoint,
//! from an exporter-toolkit web config, with certificates made by the openssl CLI and
//! bcrypt hashes made here, checked by real clients: curl, and Prometheus itself
//! scraping with `tls_config` and `basic_auth`. Also client certificates (mTLS), and
//! bad files refused at start with exit code 12. /findings served over TLS is checked
//! against schema/diagnosis.schema.json.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use detector_tests::{detector_bin, require_bpf_privileges, schema, version_dir};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("detector-web-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): `cargo xtask setup` installs it"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA (`NAME-ca.crt`) and a certificate signed by it (`NAME.crt`, `NAME.key`),
/// valid for 127.0.0.1 and localhost; P-256 keys, made by the openssl CLI.
fn make_certs(dir: &Dir, name: &str) {
    let p = |f: &str| dir.path(f).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-keyout", &p(&format!("{name}-ca.key"))])
        .args(["-out", &p(&format!("{name}-ca.crt"))])
        .args(["-days", "2", "-subj", &format!("/CN={name} test CA")]));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-keyout", &p(&format!("{name}.key"))])
        .args(["-out", &p(&format!("{name}.csr"))])
        .args(["-subj", "/CN=localhost"]));
    let ext = dir.write(
        &format!("{name}.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    run(Command::new("openssl")
        .args(["x509", "-req", "-in", &p(&format!("{name}.csr"))])
        .args(["-CA", &p(&format!("{name}-ca.crt"))])
        .args(["-CAkey", &p(&format!("{name}-ca.key"))])
        .args(["-CAcreateserial", "-days", "2"])
        .args(["-out", &p(&format!("{name}.crt"))])
        .args(["-extfile", ext.to_str().unwrap()]));
}

/// Starts `detector watch` with `web_config`; its address (host:port).
fn start_watch(web_config: &Path, exe_glob: &str) -> (Proc, String) {
    let args = [std::ffi::OsStr::new("--web-config"), web_config.as_os_str()];
    let (watch, addr) = detector_tests::start_watch(exe_glob, &args, "https");
    (Proc(watch), addr)
}

/// curl's answer: Ok((status, body)), or Err(curl's exit code and message) when no
/// HTTP response came (TLS refused, ...).
fn curl(args: &[&str], url: &str) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (`cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

fn status(r: Result<(u16, String), String>) -> u16 {
    r.unwrap_or_else(|e| panic!("no HTTP answer: {e}")).0
}

#[test]
fn tls_and_basic_auth_refuse_wrong_credentials() {
    require_bpf_privileges();
    let dir = Dir::new("auth");
    make_certs(&dir, "server");
    let ca = dir.path("server-ca.crt");
    let ca = ca.to_str().unwrap();
    // Real bcrypt hashes: cost 10 (the usual) and 4, the second in htpasswd's $2y$
    // spelling (the same algorithm as $2b$).
    let alice = bcrypt::hash("alice-password", 10).unwrap();
    let bob = bcrypt::hash("bob-password", 4)
        .unwrap()
        .replacen("$2b$", "$2y$", 1);
    assert!(bob.starts_with("$2y$04$"), "{bob}");
    // Relative paths: from the config file's directory (as the exporter-toolkit).
    let config = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\nbasic_auth_users:\n  alice: {alice}\n  bob: '{bob}'\n"
        ),
    );
    // A process for /findings to report on: a copy only this test runs.
    let app = dir.path("web-target");
    std::fs::copy(version_dir("service", 27).join("default/service"), &app).unwrap();
    let service = Proc(
        detector_tests::spawn_fresh_copy(
            Command::new(&app)
                .args(["-misuse", "readmemstats", "-rate", "200"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("start the service copy"),
    );
    let (watch, addr) = start_watch(&config, app.to_str().unwrap());
    let url = |path: &str| format!("https://{addr}{path}");
    let tls = ["--cacert", ca];

    // Every endpoint: the right password → 200; wrong, unknown user or none → 401.
    for path in ["/metrics", "/findings", "/healthz"] {
        let wait = Instant::now();
        loop {
            let s = status(curl(
                &[&tls[..], &["-u", "alice:alice-password"]].concat(),
                &url(path),
            ));
            // /healthz is 503 until the first tick.
            if s == 200 || wait.elapsed() > Duration::from_secs(10) {
                assert_eq!(s, 200, "{path} with alice's password");
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            status(curl(
                &[&tls[..], &["-u", "bob:bob-password"]].concat(),
                &url(path)
            )),
            200,
            "{path} with bob's password"
        );
        for creds in [
            &["-u", "alice:wrong"][..],
            &["-u", "alice:bob-password"],
            &["-u", "mallory:alice-password"],
            &[],
        ] {
            let (s, body) = curl(&[&tls[..], creds].concat(), &url(path)).expect("an HTTP answer");
            assert_eq!(s, 401, "{path} with {creds:?}: {body}");
            assert!(!body.contains("detector_"), "{path} leaked with {creds:?}");
        }
    }
    let head = curl(
        &[&tls[..], &["-sS", "-D", "-", "-o", "/dev/null"]].concat(),
        &url("/metrics"),
    )
    .expect("an HTTP answer")
    .1;
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "401 without a Basic challenge: {head}"
    );

    // Plain HTTP to the TLS port gets no HTTP answer, and an unknown CA is refused.
    let plain = curl(
        &["-u", "alice:alice-password"],
        &format!("http://{addr}/metrics"),
    );
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP answered: {plain:?}"
    );
    let untrusted = curl(&["-u", "alice:alice-password"], &url("/metrics"));
    assert!(
        untrusted.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    // TLS 1.3 and 1.2 both served (min_version TLS12).
    for v in ["--tlsv1.2", "--tlsv1.3"] {
        assert_eq!(
            status(curl(
                &[&tls[..], &[v, "-u", "bob:bob-password"]].concat(),
                &url("/metrics")
            )),
            200,
            "{v}"
        );
    }

    // /findings over TLS: the service's report, valid against the schema.
    let t0 = Instant::now();
    let reports = loop {
        let (_, body) = curl(
            &[&tls[..], &["-u", "bob:bob-password"]].concat(),
            &url("/findings"),
        )
        .expect("an HTTP answer");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let found = v.as_array().is_some_and(|a| {
            a.iter().any(|r| {
                r["target"]["pid"].as_u64() == Some(service.0.id() as u64)
                    && r["findings"].as_array().is_some_and(|f| !f.is_empty())
            })
        });
        if found {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no finding in /findings: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    schema::check("watch /findings", &reports);

    // Prometheus scraping with tls_config and basic_auth: the right password is up,
    // a wrong one is down with a 401.
    prometheus_scrapes(&dir, &addr, ca);

    drop(watch);
    drop(service);
}

/// Runs Prometheus with two scrape jobs on `addr` (right and wrong password) until
/// both have been scraped; checks their health.
fn prometheus_scrapes(dir: &Dir, addr: &str, ca: &str) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    scrape_interval: 1s\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: alice\n      password: {password}\n    static_configs:\n      - targets: ['{addr}']\n"
        )
    };
    let config = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
            job("right", "alice-password"),
            job("wrong", "not-the-password")
        ),
    );
    let prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)"),
    );
    let t0 = Instant::now();
    loop {
        let targets = curl(&[], &format!("http://127.0.0.1:{port}/api/v1/targets"))
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
        let health = |job: &str| -> Option<(String, String)> {
            targets.as_ref()?["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|t| t["labels"]["job"] == job)
                .map(|t| {
                    (
                        t["health"].as_str().unwrap_or("").to_string(),
                        t["lastError"].as_str().unwrap_or("").to_string(),
                    )
                })
        };
        if let (Some(right), Some(wrong)) = (health("right"), health("wrong")) {
            if right.0 != "unknown" && wrong.0 != "unknown" {
                assert_eq!(right.0, "up", "Prometheus could not scrape: {}", right.1);
                assert_eq!(wrong.0, "down", "a wrong password was scraped");
                assert!(wrong.1.contains("401"), "wrong password: {}", wrong.1);
                println!(
                    "Prometheus: right password up, wrong one down ({}), after {:.1} s",
                    wrong.1,
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Prometheus scraped nothing in 30 s: {targets:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(prom);
}

/// Client certificates: RequireAndVerifyClientCert lets in a client with a certificate
/// from client_ca_file, and no other.
#[test]
fn client_certificates_are_verified() {
    require_bpf_privileges();
    let dir = Dir::new("mtls");
    make_certs(&dir, "server");
    make_certs(&dir, "client");
    make_certs(&dir, "stranger");
    let config = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n  min_version: TLS13\n",
            dir.path("server.crt").display(),
            dir.path("server.key").display()
        ),
    );
    let (watch, addr) = start_watch(&config, "/nonexistent/*");
    let url = format!("https://{addr}/metrics");
    let ca = dir.path("server-ca.crt");
    let with = |name: &str| {
        let crt = dir.path(&format!("{name}.crt"));
        let key = dir.path(&format!("{name}.key"));
        curl(
            &[
                "--cacert",
                ca.to_str().unwrap(),
                "--cert",
                crt.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
            &url,
        )
    };
    assert_eq!(status(with("client")), 200);
    let stranger = with("stranger");
    assert!(
        !matches!(stranger, Ok((200, _))),
        "a stranger's certificate was accepted: {stranger:?}"
    );
    let none = curl(&["--cacert", ca.to_str().unwrap()], &url);
    assert!(
        !matches!(none, Ok((200, _))),
        "no client certificate was accepted: {none:?}"
    );
    // min_version TLS13: a TLS 1.2-only client is refused.
    let old = curl(
        &["--cacert", ca.to_str().unwrap(), "--tls-max", "1.2"],
        &url,
    );
    assert!(
        old.is_err(),
        "TLS 1.2 accepted with min_version TLS13: {old:?}"
    );

    // A renewed certificate (from another CA here, to tell them apart) written over
    // the files: served from the next handshake on, no restart.
    make_certs(&dir, "renewed");
    std::fs::copy(dir.path("renewed.key"), dir.path("server.key")).unwrap();
    std::fs::copy(dir.path("renewed.crt"), dir.path("server.crt")).unwrap();
    let renewed_ca = dir.path("renewed-ca.crt");
    let crt = dir.path("client.crt");
    let key = dir.path("client.key");
    let client = |ca: &Path| {
        curl(
            &[
                "--cacert",
                ca.to_str().unwrap(),
                "--cert",
                crt.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
            &url,
        )
    };
    assert_eq!(status(client(&renewed_ca)), 200, "the renewed certificate");
    assert!(
        client(&ca).is_err(),
        "the old certificate is still served after renewal"
    );
    drop(watch);
}

/// Bad files: refused at start, exit code 12, one line naming the field. No root
/// needed: the file is checked before anything else.
#[test]
fn bad_web_configs_are_refused_at_start() {
    let dir = Dir::new("bad");
    make_certs(&dir, "server");
    make_certs(&dir, "other");
    let good_hash = bcrypt::hash("pw", 4).unwrap();
    let cases: &[(&str, String, &str)] = &[
        (
            "missing certificate",
            "tls_server_config:\n  cert_file: nothere.crt\n  key_file: server.key\n".into(),
            "nothere.crt: cannot read it",
        ),
        (
            "key of another certificate",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n".into(),
            "does not go with the certificate",
        ),
        (
            "certificate file without a certificate",
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            "no PEM certificate",
        ),
        (
            "not a bcrypt hash",
            "basic_auth_users:\n  alice: plaintext-password\n".into(),
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "unknown key",
            format!("basic_auth_users:\n  alice: {good_hash}\nbasic_auth_user: {{}}\n"),
            "unknown field `basic_auth_user`",
        ),
        (
            "unknown TLS key",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  certfile: x\n".into(),
            "unknown field `certfile`",
        ),
        (
            "TLS 1.0",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n".into(),
            "TLS10 is not supported",
        ),
        (
            "client auth without a CA",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n".into(),
            "needs client_ca_file",
        ),
        (
            "not YAML",
            "tls_server_config: [\n".into(),
            "not a valid web config",
        ),
    ];
    for (what, yaml, words) in cases {
        let config = dir.write("web.yml", yaml);
        let out = Command::new(detector_bin())
            .args(["watch", "--listen", "127.0.0.1:0", "--web-config"])
            .arg(&config)
            .output()
            .expect("run detector");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(12), "{what}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        assert!(
            stderr.contains(words),
            "{what}: expected {words:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    let out = Command::new(detector_bin())
        .args(["watch", "--web-config", "/nonexistent/web.yml"])
        .output()
        .expect("run detector");
    assert_eq!(out.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read it"));
}
