//! The HTTP surface: the router (registry, Go proxy, admin API, `/metrics`, `/healthz`) and the
//! guard every protocol request passes first (URL length, `[access]`, metrics by typed cache
//! outcome). Refusals use each protocol's own error format.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::StatusCode;

use crate::access::Denied;
use crate::app::AppState;
use crate::goproxy;
use crate::registry;
use crate::registry::errors::{ErrorCode, RegistryError};

pub mod log;

/// The whole HTTP surface.
/// Writes the request lines still buffered (at shutdown).
pub fn flush_log() {
    log::flush();
}

pub fn router(state: AppState) -> Router {
    log::init(state.config.log.format == crate::config::LogFormat::Json);
    // The Go handlers exist only when the Go proxy does.
    let go_routes = match &state.go {
        Some(go) => any(goproxy::handle).with_state(go.clone()),
        None => any(goproxy::disabled),
    };
    Router::new()
        .route("/v2", any(registry::handle))
        .route("/v2/", any(registry::handle))
        .route("/v2/{*rest}", any(registry::handle))
        // Path-prefixed mirrors (`/<upstream>/v2/...`): the guard rewrites them to the `?ns=`
        // form before anything else looks at them.
        .route("/{prefix}/v2", any(registry::handle))
        .route("/{prefix}/v2/", any(registry::handle))
        .route("/{prefix}/v2/{*rest}", any(registry::handle))
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
    let started = std::time::Instant::now();
    let (protocol, kind) = kind_of(req.uri().path());
    // The line names the request as the client sent it (before any rewrite).
    let line = log::enabled().then(|| log::Line {
        method: req.method().clone(),
        uri: req.uri().clone(),
        client: crate::net::Client::of(req.extensions()),
    });
    let metrics = app.metrics.clone();
    let resp = checked(app, req, next).await;
    let outcome = crate::cache::Outcome::of(&resp);
    let labels = crate::metrics::RequestLabels {
        protocol,
        kind,
        outcome: match outcome {
            Some(o) => o.label(),
            None if resp.status().is_success() || resp.status().is_redirection() => "none",
            None => "error",
        },
    };
    if matches!(
        outcome,
        Some(crate::cache::Outcome::Miss | crate::cache::Outcome::Bypass)
    ) {
        let f = &metrics.families.first_byte_seconds;
        f.get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
    let answer = log::Answer {
        started,
        labels,
        metrics,
    };
    log::attach(line, answer, resp, outcome.map(|o| o.as_str()))
}

/// A request's protocol and kind, from its path (as sent, prefixed mirror paths included).
/// Scrapes and the admin API are neither protocol's (`other`).
fn kind_of(path: &str) -> (&'static str, &'static str) {
    if path == "/metrics" {
        return ("other", "metrics");
    }
    if path.starts_with("/admin/") {
        return ("other", "admin");
    }
    if let Some(rest) = path.strip_prefix("/go/") {
        let kind = if rest.starts_with("sumdb/") {
            "sumdb"
        } else if rest.ends_with("/@v/list") {
            "list"
        } else if rest.ends_with("/@latest") {
            "latest"
        } else if rest.ends_with(".info") {
            "info"
        } else if rest.ends_with(".mod") {
            "mod"
        } else if rest.ends_with(".zip") {
            "zip"
        } else {
            "other"
        };
        return ("go", kind);
    }
    let kind = if path.contains("/manifests/") {
        "manifest"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.ends_with("/tags/list") {
        "tags"
    } else if path.contains("/referrers/") {
        "referrers"
    } else if path.ends_with("/v2/") || path.ends_with("/v2") {
        "ping"
    } else {
        "other"
    };
    ("registry", kind)
}

/// A path-prefixed mirror request (`/<upstream>/v2/...`) rewritten to the `?ns=` form, before
/// anything else looks at it; a refusal in the registry's format when the prefix names no
/// upstream or contradicts `?ns=`.
fn unprefix(app: &AppState, req: &mut axum::extract::Request) -> Result<(), Box<Response>> {
    let path = req.uri().path();
    if !(path == "/v2" || path.starts_with("/v2/") || path.starts_with("/go/"))
        && let Some(rewritten) =
            registry::routes::unprefix(req.uri().path(), req.uri().query(), |name| {
                app.config.registry.upstreams.iter().any(|u| u.name == name)
            })
    {
        match rewritten.map(|p| p.parse::<http::Uri>()) {
            Ok(Ok(uri)) => *req.uri_mut() = uri,
            Ok(Err(_)) => {
                return Err(Box::new(refuse(
                    false,
                    StatusCode::BAD_REQUEST,
                    ErrorCode::NameInvalid,
                    "invalid request path".into(),
                    None,
                )));
            }
            Err(msg) => {
                return Err(Box::new(refuse(
                    false,
                    StatusCode::NOT_FOUND,
                    ErrorCode::NameUnknown,
                    msg,
                    None,
                )));
            }
        }
    }
    Ok(())
}

/// The guard's checks and the handler.
async fn checked(
    app: AppState,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(refused) = unprefix(&app, &mut req) {
        return *refused;
    }
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
    // Another replica asking this one, as owner, to fill: the fleet's secret stands in for
    // `[access]`, and the fill is not forwarded again.
    if let Some(presented) = req.headers().get(crate::shared::PEER_HEADER) {
        let Some(peers) = app
            .peers
            .as_ref()
            .filter(|p| p.admits(presented.as_bytes()))
        else {
            let client = crate::net::Client::of(req.extensions());
            app.metrics.client_refused("bad_peer_secret");
            tracing::warn!(%path, ?client, "refused a request with a wrong X-Wharf-Peer secret");
            return refuse(
                go,
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                "not a replica of this fleet".into(),
                None,
            );
        };
        let asker = req.headers().get(crate::shared::peers::INSTANCE_HEADER);
        if asker.is_some_and(|a| a.as_bytes() == peers.instance.as_bytes()) {
            return (StatusCode::LOOP_DETECTED, "this replica asked itself").into_response();
        }
        peers
            .stats
            .served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return crate::cache::FROM_PEER.scope(true, next.run(req)).await;
    }
    if !app.access.is_open() {
        let peer = crate::net::Client::of(req.extensions());
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
        match app
            .access
            .check_client(peer, &rule_path, req.headers())
            .await
        {
            Ok(()) => {}
            Err(Denied::Address) => {
                app.metrics.client_refused("client_address");
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
                app.metrics.client_refused(if why.contains("required") {
                    "no_credentials"
                } else if why.contains("token") {
                    "bad_token"
                } else {
                    "bad_credentials"
                });
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
                app.metrics.client_refused("busy");
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
    // Cache answers carry their outcome (`Outcome::of`); errors count as such; other answers (the `/v2/`
    // ping, `sumdb/.../supported`) are not cache answers and are not counted.
    let outcome = match crate::cache::Outcome::of(&resp) {
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
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
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
