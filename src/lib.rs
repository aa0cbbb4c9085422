//! wharf: a pull-through mirror for container images (Docker Registry HTTP API v2 / OCI
//! distribution, read side) and Go modules (GOPROXY and the checksum-database proxy), on one port.
//!
//! # Layout
//! * `net`: address classes, CIDR ranges and egress host patterns, parsed (a leaf).
//! * `config`: the TOML config, its defaults and validation (a leaf over `net`).
//! * `cli`: the command line (clap), how flags override config, and what each command runs.
//! * `access`: client address allowlist, basic auth and tokens, per-prefix rules.
//! * `server`: the listener loop (HTTP or TLS), connection limits, graceful shutdown.
//! * `app`: the application state (the protocol services, engine, access, metrics).
//! * `web`: the router and the guard every protocol request passes first.
//! * `cache`: single-flight fills and the bodies that stream from them (protocol-agnostic).
//! * `upstream`: egress policy, the per-upstream HTTP client, token auth.
//! * `registry`: the `/v2/` routes, handlers and error format.
//! * `goproxy`: the `/go/` GOPROXY protocol, private modules, checksum-database proxy and checks.
//! * `metrics`: request counters; `ops`: `/metrics` and `/healthz` rendered from the state.
//! * `admin`: the `/admin/` API wharf's own commands use (loopback, plus the secret of `secret`
//!   in the data directory).
//! * `bundle`: the bundle format and its server side (plan an export, check and commit an import).
//! * `tools`: the client side of `wharf prefetch`, `wharf export` and `wharf import`, and the one
//!   CLI-to-server client (the running server, else the router in-process).
//! * `gateway`: the egress gateway, a forward proxy to the destinations the egress policy allows.
//! * `error`: start-up and command errors.
//!
//! Storage (blobs on disk, the sled index, fsck) is the `wharf-storage` crate.
//!
//! `serve(listener, state, shutdown)` runs the server on a listener the caller bound, so tests
//! bind port 0 and own shutdown.

pub mod access;
pub mod admin;
pub mod app;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod gc;
pub mod goproxy;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod registry;
pub mod secret;
pub mod server;
pub mod shared;
pub mod tools;
pub mod traces;
pub mod upstream;
pub mod web;

use std::future::Future;

pub use app::AppState;
pub use error::Error;
pub use web::router;

/// Serves plain HTTP until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, state, None, shutdown).await
}

/// Serves HTTPS with `tls` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: server::TlsReloader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, state, Some(tls), shutdown).await
}

type MakeSpan = fn(&http::Request<axum::body::Body>) -> tracing::Span;
type TraceLayer = tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    MakeSpan,
>;

/// The most of a request's path a span keeps: the span is made before the guard refuses a URL
/// longer than `server.max_url_length`, and `[traces]` buffers and exports every span.
const SPAN_PATH_MAX: usize = 1024;

/// One span per request, with the cache outcome recorded by the handler.
pub fn trace_layer() -> TraceLayer {
    fn make_span(req: &http::Request<axum::body::Body>) -> tracing::Span {
        let path = req.uri().path();
        // A URI path is ASCII: any byte is a boundary.
        let path = path.get(..path.len().min(SPAN_PATH_MAX)).unwrap_or("");
        tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %path,
            cache = tracing::field::Empty,
        )
    }
    tower_http::trace::TraceLayer::new_for_http().make_span_with(make_span as MakeSpan)
}
