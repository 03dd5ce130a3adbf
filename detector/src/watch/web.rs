//! `watch --web-config FILE`: TLS and basic authentication for every endpoint, from a
//! file in the Prometheus exporter-toolkit format (the one node_exporter and most
//! exporters take, so one file can serve them all):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths: from the file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional (mTLS)
//!   client_ca_file: clients-ca.crt                 # optional
//!   min_version: TLS12                             # optional: TLS12 (default) or TLS13
//!   max_version: TLS13                             # optional
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Everything is checked when `watch` starts: an unreadable or mismatched certificate
//! or key, a hash that is not bcrypt, an unknown or unsupported key all end it with
//! exit code 12 and a message naming the field. What the exporter-toolkit offers and
//! detector does not (`http_server_config`, cipher and curve lists, TLS 1.0/1.1, client
//! certificates accepted without verification) is refused by name, never ignored.
use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

use crate::exit::{self, Failure};

/// The parsed, checked web config.
#[derive(Clone)]
pub struct WebConfig {
    /// Serve HTTPS with this configuration (plain HTTP when `None`).
    pub tls: Option<Arc<ServerConfig>>,
    /// Basic-auth users and their bcrypt hashes (no authentication when empty).
    pub users: BTreeMap<String, String>,
}

/// The file, as the exporter-toolkit defines it. Keys detector does not implement
/// are declared so that their presence is refused by name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    client_auth_type: String,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    min_version: String,
    #[serde(default)]
    max_version: String,
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<serde_yaml_ng::Value>,
}

/// An error in the web config: exit code 12, naming the file.
fn bad(path: &Path, what: impl std::fmt::Display) -> Failure {
    Failure::new(
        exit::Code::WebConfig,
        format!(
            "--web-config {}: {what} (format: the Prometheus exporter-toolkit web config, see README \"watch\")",
            path.display()
        ),
    )
}

impl WebConfig {
    /// Reads and checks `path`; every problem is an error naming the field.
    pub fn load(path: &Path) -> Result<WebConfig, Failure> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_yaml_ng::from_str(&text)
                .map_err(|e| bad(path, format!("not a valid web config: {e}")))?
        };
        if file.http_server_config.is_some() {
            return Err(bad(
                path,
                "http_server_config is not supported by detector (remove it: detector serves HTTP/1.1 with fixed headers)",
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(t) => Some(Arc::new(tls_config(path, dir, t)?)),
            None => None,
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.is_empty() || user.contains(':') {
                return Err(bad(
                    path,
                    format!(
                        "basic_auth_users: {user:?} is not a valid user name (not empty, no ':')"
                    ),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(bad(
                    path,
                    format!(
                        "basic_auth_users.{user}: not a bcrypt hash (expected $2y$10$ and 53 more characters, e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                    ),
                ));
            }
        }
        Ok(WebConfig { tls, users })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

fn tls_config(path: &Path, dir: &Path, t: TlsFile) -> Result<ServerConfig, Failure> {
    for (set, key) in [
        (t.cert.is_some(), "cert"),
        (t.key.is_some(), "key"),
        (t.client_allowed_sans.is_some(), "client_allowed_sans"),
        (t.cipher_suites.is_some(), "cipher_suites"),
        (t.curve_preferences.is_some(), "curve_preferences"),
        (
            t.prefer_server_cipher_suites.is_some(),
            "prefer_server_cipher_suites",
        ),
    ] {
        if set {
            return Err(bad(
                path,
                format!(
                    "tls_server_config.{key} is not supported by detector (remove it; certificates and keys come from cert_file and key_file, ciphers and curves are rustls' safe defaults)"
                ),
            ));
        }
    }
    if t.cert_file.is_empty() || t.key_file.is_empty() {
        return Err(bad(
            path,
            "tls_server_config needs both cert_file and key_file",
        ));
    }
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let cert_path = resolve(&t.cert_file);
    let key_path = resolve(&t.key_file);

    let version = |field: &str, v: &str| -> Result<Option<u8>, Failure> {
        match v {
            "" => Ok(None),
            "TLS12" => Ok(Some(12)),
            "TLS13" => Ok(Some(13)),
            "TLS10" | "TLS11" => Err(bad(
                path,
                format!("tls_server_config.{field}: {v} is not supported (rustls implements TLS12 and TLS13 only)"),
            )),
            other => Err(bad(
                path,
                format!("tls_server_config.{field}: unknown version {other:?} (TLS12 or TLS13)"),
            )),
        }
    };
    let min = version("min_version", &t.min_version)?.unwrap_or(12);
    let max = version("max_version", &t.max_version)?.unwrap_or(13);
    if min > max {
        return Err(bad(
            path,
            "tls_server_config: min_version is above max_version",
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();

    // ring, not aws-lc-rs: no cmake or assembler to build, and it links into the static
    // binary. rustls 0.23.48 deprecates it for lacking post-quantum key exchange, which
    // a metrics endpoint does not need (X25519 and the NIST curves remain).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = load_pair(&cert_path, &key_path, &provider).map_err(|m| bad(path, m))?;
    // The exporter-toolkit's default: a client CA alone means verified client certs.
    let auth_type = match (t.client_auth_type.as_str(), t.client_ca_file.is_empty()) {
        ("", false) => "RequireAndVerifyClientCert",
        ("", true) => "NoClientCert",
        (a, _) => a,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| bad(path, format!("tls_server_config: {e}")))?;
    let builder = match auth_type {
        "NoClientCert" => {
            if !t.client_ca_file.is_empty() {
                return Err(bad(
                    path,
                    "tls_server_config.client_ca_file is set but client_auth_type is NoClientCert (remove one)",
                ));
            }
            builder.with_no_client_auth()
        }
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            if t.client_ca_file.is_empty() {
                return Err(bad(
                    path,
                    format!("tls_server_config.client_auth_type {auth_type} needs client_ca_file"),
                ));
            }
            let ca_path = resolve(&t.client_ca_file);
            let mut roots = RootCertStore::empty();
            let ca = read_field("client_ca_file", &ca_path)
                .and_then(|pem| pem_certs("client_ca_file", &ca_path, &pem))
                .map_err(|m| bad(path, m))?;
            for c in ca {
                roots.add(c).map_err(|e| {
                    bad(
                        path,
                        format!(
                            "tls_server_config.client_ca_file {}: not a usable CA certificate ({e})",
                            ca_path.display()
                        ),
                    )
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let v = if auth_type == "VerifyClientCertIfGiven" {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| {
                bad(path, format!("tls_server_config.client_ca_file: {e}"))
            })?)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(bad(
                path,
                format!(
                    "tls_server_config.client_auth_type {auth_type} (client certificates accepted unverified) is not supported: use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
                ),
            ))
        }
        other => {
            return Err(bad(
                path,
                format!(
                    "tls_server_config.client_auth_type: unknown value {other:?} (NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
                ),
            ))
        }
    };
    // Read again when the files change (a renewed certificate), as the exporter-toolkit
    // does: no restart needed.
    let mut config = builder.with_cert_resolver(Arc::new(CertFiles {
        stamp: Mutex::new(stamps(&cert_path, &key_path)),
        current: Mutex::new(Arc::new(certified)),
        cert: cert_path,
        key: key_path,
        provider,
    }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The bytes of `file`, for the web config's `field`; the message names both.
fn read_field(field: &str, file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| {
        format!(
            "tls_server_config.{field} {}: cannot read it: {e}",
            file.display()
        )
    })
}

fn pem_certs(field: &str, file: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "tls_server_config.{field} {}: bad PEM ({e})",
                file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.{field} {}: no PEM certificate in it",
            file.display()
        ));
    }
    Ok(certs)
}

/// The server's certificate chain and its key, checked to go together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let certs = pem_certs("cert_file", cert, &read_field("cert_file", cert)?)?;
    let der = PrivateKeyDer::from_pem_slice(&read_field("key_file", key)?).map_err(|e| {
        format!(
            "tls_server_config.key_file {}: no PEM private key in it ({e})",
            key.display()
        )
    })?;
    CertifiedKey::from_der(certs, der, provider).map_err(|e| {
        format!(
            "tls_server_config: the key in {} does not go with the certificate in {} ({e})",
            key.display(),
            cert.display()
        )
    })
}

/// What tells a file changed: inode (a replaced file, a swapped symlink as in a
/// Kubernetes secret), modification time and size, of the certificate and the key.
type Stamp = Option<[(u64, i64, i64, u64); 2]>;

fn stamps(cert: &Path, key: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

/// The certificate and key files, read again at a handshake after they changed. A
/// pair that does not load (a half-written renewal: the certificate is new, the key
/// not yet) keeps the previous one in service, with a warning, until the next change.
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    stamp: Mutex<Stamp>,
    current: Mutex<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = stamps(&self.cert, &self.key);
        let mut stamp = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != *stamp {
            *stamp = now;
            match load_pair(&self.cert, &self.key, &self.provider) {
                Ok(k) => {
                    log::info!("TLS certificate {} loaded again", self.cert.display());
                    *current = Arc::new(k);
                }
                Err(e) => log::warn!("{e}; the previous certificate stays in service"),
            }
        }
        Some(current.clone())
    }
}

/// A TLS listener for `axum::serve`: connections are accepted and their handshakes
/// run in tasks of their own (a slow or broken client holds up nobody), bounded by a
/// timeout; only finished handshakes reach the server.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once, at most: connections beyond wait to be accepted
/// (in the kernel's backlog), so a flood of idle connections costs bounded memory.
const MAX_HANDSHAKES: usize = 128;

impl TlsListener {
    /// Must run inside the tokio runtime.
    pub fn new(tcp: tokio::net::TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, as axum does.
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => log::info!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::info!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Basic authentication against bcrypt hashes. A bcrypt check takes tens of
/// milliseconds by design, so credentials that passed are remembered (as the
/// exporter-toolkit does); a scrape every few seconds costs one check.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    no_user: String,
    passed: Mutex<HashSet<(String, String)>>,
}

/// At most this many remembered credentials (forgotten all at once beyond).
const REMEMBERED: usize = 256;

/// A bcrypt hash (of the configured users' cost) that no password sent can match:
/// unknown users cost a check too, so the answer's timing does not tell which user
/// names exist.
fn no_user_hash(users: &BTreeMap<String, String>) -> String {
    let cost = users
        .values()
        .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
        .map(|p| p.get_cost())
        .max()
        .unwrap_or(bcrypt::DEFAULT_COST);
    // A password longer than any request carries (72 bytes are hashed: all used).
    let secret: String = (0..72)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    bcrypt::hash(secret, cost).unwrap_or_default()
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Arc<BasicAuth> {
        Arc::new(BasicAuth {
            no_user: no_user_hash(&users),
            users,
            passed: Mutex::new(HashSet::new()),
        })
    }

    async fn check(&self, header: Option<&str>) -> bool {
        use base64::Engine;
        let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        let key = (user.to_string(), password.to_string());
        if self
            .passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return true;
        }
        let (known, hash) = match self.users.get(user) {
            Some(h) => (true, h.clone()),
            None => (false, self.no_user.clone()),
        };
        let password = key.1.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known;
        if ok {
            let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
            if passed.len() >= REMEMBERED {
                passed.clear();
            }
            passed.insert(key);
        }
        ok
    }
}

/// The middleware: 401 with a Basic challenge unless the request carries the
/// credentials of a configured user.
pub async fn require_auth(
    State(auth): State<Arc<BasicAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth.check(header).await {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"detector\"")],
            "Unauthorized\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_no_user_hash_is_a_bcrypt_hash_of_the_users_cost() {
        let users = [("a".to_string(), bcrypt::hash("pw", 5).unwrap())].into();
        let h = no_user_hash(&users);
        assert_eq!(h.parse::<bcrypt::HashParts>().unwrap().get_cost(), 5);
        assert!(!bcrypt::verify("", &h).unwrap());
    }

    fn load(yaml: &str) -> Result<WebConfig, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("detector-web-unit-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("web.yml");
        std::fs::write(&f, yaml).unwrap();
        let r = WebConfig::load(&f).map_err(|e| {
            assert_eq!(e.code, exit::Code::WebConfig);
            e.message
        });
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn refused_by_name() {
        let e = load("basic_auth_users:\n  alice: notahash\n")
            .err()
            .unwrap();
        assert!(
            e.contains("basic_auth_users.alice: not a bcrypt hash"),
            "{e}"
        );
        let e = load("tls_server_config:\n  cert_file: a\n  key_file: b\n  foo: 1\n")
            .err()
            .unwrap();
        assert!(e.contains("unknown field `foo`"), "{e}");
        let e = load("tls_server_config:\n  cert_file: nothere.crt\n  key_file: b\n")
            .err()
            .unwrap();
        assert!(e.contains("cert_file") && e.contains("cannot read"), "{e}");
        let e = load("tls_server_config:\n  cert_file: a\n").err().unwrap();
        assert!(e.contains("needs both cert_file and key_file"), "{e}");
        let e = load("http_server_config:\n  http2: false\n").err().unwrap();
        assert!(e.contains("http_server_config is not supported"), "{e}");
        let e = load("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n")
            .err()
            .unwrap();
        assert!(e.contains("cipher_suites is not supported"), "{e}");
        let e = load("bogus: 1\n").err().unwrap();
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        let c = load("").ok().unwrap();
        assert!(c.tls.is_none() && c.users.is_empty());
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = load(&format!("basic_auth_users:\n  alice: {hash}\n")).ok();
        assert!(c.is_some_and(|c| c.users.len() == 1));
    }
}
