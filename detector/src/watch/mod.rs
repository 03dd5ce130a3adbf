//! `detector watch`: the production daemon. Watches every Go process on the host
//! (containers included), keeps up as processes come and go, and serves:
//! - `/metrics`: Prometheus (OpenMetrics text) — calls, pause histograms, active
//!   findings, process info, and the agent's own cost;
//! - `/findings`: JSON, one `diagnose --format json` report per watched process;
//! - `/healthz`: 200 while the collection loop keeps ticking.
//!
//! The collection loop runs on its own thread (map reads are blocking syscalls); the
//! HTTP side only reads the state the loop published at its last tick.
pub mod agent;
pub mod discover;
pub mod events;
pub mod metrics;
pub mod web;

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;

use crate::{
    exit::{self, Failure},
    probes::attach::{self, Probes},
};
use agent::{Agent, Config, Exported};

pub struct Options {
    pub listen: SocketAddr,
    pub config: Config,
    /// `--web-config`: TLS and basic auth for every endpoint (plain HTTP when `None`).
    pub web: Option<web::WebConfig>,
}

#[derive(Clone)]
struct Http {
    state: Arc<Mutex<Exported>>,
    registry: Arc<Registry>,
    interval: Duration,
}

pub fn run(o: Options) -> Result<crate::exit::Code, Failure> {
    attach::check_privileges()?;
    if let Some(w) = attach::watch_privilege_warning() {
        // Not eprintln!: it panics when stderr cannot be written (a full disk).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "detector watch: warning: {w}");
    }
    let probes = Probes::load()?;
    // Bind before anything runs in the background: a busy port is a clean error.
    let listener = std::net::TcpListener::bind(o.listen).map_err(|e| {
        Failure::new(
            exit::Code::ListenFailed,
            format!(
                "cannot listen on {}: {e}; pick another address with --listen (another detector watch may be running)",
                o.listen
            ),
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Failure::new(exit::Code::ListenFailed, e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(exit::Code::Other, e.to_string()))?;
    // Not eprintln!: it panics when stderr cannot be written (a full disk).
    use std::io::Write;
    let web = o.web.unwrap_or(web::WebConfig {
        tls: None,
        users: Default::default(),
    });
    let _ = writeln!(
        std::io::stderr(),
        "detector watch: serving {}://{addr}/metrics, /findings and /healthz{}",
        web.scheme(),
        if web.users.is_empty() {
            ""
        } else {
            " (basic auth)"
        }
    );
    if web.tls.is_none() && !web.users.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "detector watch: warning: basic auth without tls_server_config sends passwords in clear text"
        );
    }

    let state = Arc::new(Mutex::new(Exported::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let interval = o.config.interval;
    let agent = Agent::new(o.config, probes, state.clone());
    let loop_stop = stop.clone();
    let collector = std::thread::Builder::new()
        .name("collect".into())
        .spawn(move || agent.run(&loop_stop))
        .map_err(|e| Failure::new(exit::Code::Other, e.to_string()))?;

    let http = Http {
        registry: Arc::new(metrics::registry(state.clone())),
        state,
        interval,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::Code::Other, e.to_string()))?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut app = Router::new()
            .route("/metrics", get(serve_metrics))
            .route("/findings", get(serve_findings))
            .route("/healthz", get(serve_health))
            .with_state(http);
        // Every endpoint, /healthz included (as the exporter-toolkit does).
        if !web.users.is_empty() {
            app = app.layer(axum::middleware::from_fn_with_state(
                web::BasicAuth::new(web.users.clone()),
                web::require_auth,
            ));
        }
        match web.tls {
            Some(tls) => {
                axum::serve(web::TlsListener::new(listener, tls)?, app)
                    .with_graceful_shutdown(shutdown_signal())
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown_signal())
                    .await
            }
        }
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // The loop detaches every probe when it returns.
    let _ = collector.join();
    let _ = writeln!(
        std::io::stderr(),
        "detector watch: stopped, probes detached"
    );
    served.map_err(|e| Failure::new(exit::Code::Other, format!("HTTP server: {e}")))?;
    Ok(exit::Code::NoFindings)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, the default action (exit) still frees the probes.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text
/// format 0.0.4 otherwise (curl, promtool, older scrapers).
async fn serve_metrics(State(h): State<Http>, headers: HeaderMap) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &h.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::to_prometheus_text(&body),
        )
            .into_response()
    }
}

async fn serve_findings(State(h): State<Http>) -> Response {
    let reports: Vec<_> = {
        let s = h.state.lock().unwrap_or_else(|e| e.into_inner());
        s.processes.iter().map(|p| p.diagnosis.clone()).collect()
    };
    axum::Json(reports).into_response()
}

/// Healthy while the loop has ticked within three intervals.
async fn serve_health(State(h): State<Http>) -> Response {
    let last = h.state.lock().unwrap_or_else(|e| e.into_inner()).last_tick;
    match last {
        Some(t) if t.elapsed() <= h.interval * 3 + Duration::from_secs(2) => {
            (StatusCode::OK, "ok\n").into_response()
        }
        Some(t) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "collection loop stalled {:.1} s ago\n",
                t.elapsed().as_secs_f64()
            ),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}
