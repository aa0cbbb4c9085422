//! Application state shared by every request (storage, upstream clients, flights, config) and
//! the router with its layers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::StatusCode;
use wharf_storage::{Digest, Storage};

use crate::access::{AccessControl, Denied};
use crate::cache::Flights;
use crate::config::Config;
use crate::error::Error;
use crate::goproxy::{self, GoProxy, GoState};
use crate::registry;
use crate::registry::errors::{ErrorCode, RegistryError};
use crate::upstream::{EgressPolicy, UpstreamClient};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub storage: Storage,
    /// The registry front end: its upstream clients, flights and manifests in memory.
    pub registry: Arc<registry::Registry>,
    /// The Go module proxy, unless `go.enabled = false`.
    pub go: Option<Arc<GoProxy>>,
    pub access: AccessControl,
    /// The cache engine: hits, fills, access times (`cache::Engine`).
    pub engine: crate::cache::Engine,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What every `/admin/` request must carry: new for each state, written to the data
    /// directory (`admin.token`) as soon as the state holds sled's lock on it.
    pub admin_secret: crate::admin::secret::AdminSecret,
}

impl axum::extract::FromRef<AppState> for Arc<registry::Registry> {
    fn from_ref(app: &AppState) -> Self {
        app.registry.clone()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens storage (sweeping leftover temp files) and builds one client per upstream.
    pub fn new(config: Config) -> Result<AppState, Error> {
        config.validate()?;
        let egress = Arc::new(
            EgressPolicy::from_config(&config.egress)
                .map_err(|m| Error::Config(crate::config::ConfigError::Invalid(m)))?,
        );
        let mut upstreams = HashMap::new();
        for up in &config.registry.upstreams {
            let client = UpstreamClient::new(up, &config.egress, egress.clone(), config.offline)
                .map_err(|message| Error::Upstream {
                    name: up.name.clone(),
                    message,
                })?;
            upstreams.insert(up.name.clone(), Arc::new(client));
        }
        let go = if config.go.enabled {
            Some(
                GoState::new(&config, egress.clone()).map_err(|message| Error::Upstream {
                    name: "go".into(),
                    message,
                })?,
            )
        } else {
            None
        };
        let names: Vec<&str> = config
            .registry
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        let access = AccessControl::new(&config.access, &names, &config.registry.default_upstream)
            .map_err(|m| Error::Config(crate::config::ConfigError::Invalid(m)))?;
        let storage = Storage::open(&config.data_dir)?;
        registry::visibility::backfill(&storage, config.registry.max_manifest_size.0)?;
        let engine = crate::cache::Engine::new(
            storage.clone(),
            config.server.max_concurrent_fills,
            config.offline,
        );
        let hot = crate::registry::hot::HotManifests::new(config.cache.manifest_memory.0);
        // Published before anything can answer (tests and `serve` bind before serving), so a
        // command that finds the server finds its secret; sled's lock makes this the only
        // writer.
        let admin_secret = crate::admin::secret::AdminSecret::generate()
            .and_then(|s| s.publish(&storage.layout).map(|()| s))
            .map_err(|source| Error::Io {
                context: format!(
                    "writing the admin secret {}",
                    storage.layout.admin_token_path().display()
                ),
                source,
            })?;
        let config = Arc::new(config);
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        let registry = Arc::new(registry::Registry {
            config: config.clone(),
            storage: storage.clone(),
            engine: engine.clone(),
            upstreams,
            blob_flights: Flights::default(),
            hot,
            metrics: metrics.clone(),
        });
        let go = go.map(|go| {
            Arc::new(GoProxy {
                config: config.clone(),
                storage: storage.clone(),
                engine: engine.clone(),
                metrics: metrics.clone(),
                go,
            })
        });
        Ok(AppState(Arc::new(Inner {
            config,
            storage,
            registry,
            go,
            access,
            engine,
            admin_secret,
            metrics,
        })))
    }
}

impl AppState {
    /// Notes that `digest` was just served (batched; written by `flush_atimes`).
    pub fn touch(&self, digest: &Digest) {
        self.engine.touch(digest);
    }

    /// Writes the batched access times to the index in one sled batch.
    pub async fn flush_atimes(&self) {
        self.engine.flush_atimes().await;
    }

    /// Waits, at most `limit`, until no fill is running.
    pub async fn finish_fills(&self, limit: std::time::Duration) {
        self.engine.finish_fills(limit).await;
    }

    /// Evicts down to the low watermark when the store is over `cache.max_size`. Runs off the
    /// async runtime; requests keep being served meanwhile.
    pub async fn evict_if_needed(&self) -> Option<wharf_storage::GcReport> {
        let max = self.config.cache.max_size.0;
        if max == 0 {
            return None;
        }
        self.flush_atimes().await;
        let storage = self.storage.clone();
        let target = self.config.cache.low_watermark();
        let r = tokio::task::spawn_blocking(move || {
            // Measure first (a dry run with no target); evict only when over budget.
            let probe = wharf_storage::collect(&storage, u64::MAX, &HashMap::new(), true)?;
            if probe.total_before <= max {
                return Ok(probe);
            }
            wharf_storage::collect(&storage, target, &HashMap::new(), false)
        })
        .await;
        match r {
            Ok(Ok(report)) => {
                if !report.removed.is_empty() {
                    self.registry.hot.clear();
                    tracing::info!(
                        freed = report.freed,
                        objects = report.removed.len(),
                        now = report.total_after(),
                        "evicted least-recently-used content"
                    );
                }
                Some(report)
            }
            Ok(Err(e)) => {
                let e: wharf_storage::StorageError = e;
                tracing::error!(error = %e, "eviction failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Background work of a serving process: access-time flushes and eviction.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(app.config.cache.atime_flush_interval);
            let mut gc = tokio::time::interval(app.config.cache.gc_interval);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = flush.tick() => app.flush_atimes().await,
                    _ = gc.tick() => {
                        app.evict_if_needed().await;
                    }
                }
            }
        })
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    // The Go handlers exist only when the Go proxy does.
    let go_routes = match &state.go {
        Some(go) => any(goproxy::handle).with_state(go.clone()),
        None => any(goproxy::disabled),
    };
    Router::new()
        .route("/v2", any(registry::handle))
        .route("/v2/", any(registry::handle))
        .route("/v2/{*rest}", any(registry::handle))
        .route("/go/{*rest}", go_routes)
        .merge(crate::admin::routes(state.clone()))
        .route("/metrics", axum::routing::get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .route("/healthz", axum::routing::get(healthz))
        .with_state(state)
        .layer(crate::trace_layer())
}

/// Checks every protocol request before its handler: URL length, then access control. Refusals
/// use the protocol's own error format.
async fn guard(
    State(app): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let path = req.uri().path().to_string();
    let go = path.starts_with("/go/");
    if uri_len > app.config.server.max_url_length {
        let msg = format!(
            "request URL longer than {} bytes (server.max_url_length)",
            app.config.server.max_url_length
        );
        return refuse(
            go,
            StatusCode::URI_TOO_LONG,
            ErrorCode::NameInvalid,
            msg,
            None,
        );
    }
    if !app.access.is_open() {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        // Rules see one spelling per resource: Go paths decoded as the handler decodes them,
        // registry repositories as `<upstream>/<repository>/` whatever form the client used.
        let rule_path = if let Some(rest) = path.strip_prefix("/go/") {
            match crate::goproxy::path::percent_decode_once(rest) {
                Some(d) => format!("/go/{d}"),
                None => path.clone(),
            }
        } else if let Some(rest) = path.strip_prefix("/v2/") {
            match crate::registry::canonical_repo(&app.registry, rest, req.uri().query()) {
                Some(c) => format!("/v2/{c}"),
                None => path.clone(),
            }
        } else {
            path.clone()
        };
        match app.access.check(peer, &rule_path, req.headers()).await {
            Ok(()) => {}
            Err(Denied::Address) => {
                tracing::info!(?peer, %path, "client address not in access.allow_clients");
                return refuse(
                    go,
                    StatusCode::FORBIDDEN,
                    ErrorCode::Denied,
                    "this client address may not use this mirror".into(),
                    None,
                );
            }
            Err(Denied::Unauthorized(why)) => {
                let challenge = format!("Basic realm=\"{}\"", app.access.realm.replace('"', ""));
                return refuse(
                    go,
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    format!("{why}: log in with a wharf user or token"),
                    Some(challenge),
                );
            }
            Err(Denied::Busy) => {
                let mut resp = refuse(
                    go,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "too many password checks at once; retry shortly".into(),
                    None,
                );
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return resp;
            }
        }
    }
    let resp = next.run(req).await;
    // Cache answers carry their typed outcome; errors count as such; other answers (the `/v2/`
    // ping, `sumdb/.../supported`) are not cache answers and are not counted.
    let outcome = match resp.extensions().get::<crate::cache::Outcome>() {
        Some(o) => Some(o.as_str()),
        None if !resp.status().is_success() => Some("ERROR"),
        None => None,
    };
    if let Some(outcome) = outcome
        && (path.starts_with("/v2/") || go)
    {
        app.metrics.count(go, outcome);
    }
    resp
}

async fn healthz(State(app): State<AppState>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        crate::ops::health_json(&app),
    )
        .into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::ops::render(&app),
    )
        .into_response()
}

fn refuse(
    go: bool,
    status: StatusCode,
    code: ErrorCode,
    msg: String,
    challenge: Option<String>,
) -> Response {
    let mut resp = if go {
        goproxy::GoError::new(status, msg).into_response()
    } else {
        let mut r = RegistryError::new(code, msg).into_response();
        *r.status_mut() = status;
        r.headers_mut().insert(
            "docker-distribution-api-version",
            http::HeaderValue::from_static("registry/2.0"),
        );
        r
    };
    if let Some(c) = challenge.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, c);
    }
    resp
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
