//! The admin API under `/admin/`, for wharf's own commands (prefetch, export, import, gc, stats)
//! talking to a running server. Every route sits behind one guard, `guard`, which answers only
//! a request that
//!
//! 1. comes from a loopback peer, or over a Unix socket (`listen = "unix:..."`, whose file
//!    mode and group decide who may connect),
//! 2. is addressed to a loopback host (not a DNS name, so a page in a browser on this machine
//!    cannot reach it by rebinding; not asked of a Unix socket's peer, which no browser is),
//! 3. was not relayed by a proxy that says so (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`),
//! 4. carries the admin secret in `X-Wharf-Admin-Token` (see `secret`): a proxy that rewrites
//!    `Host` and adds no header passes 1 to 3, and a browser needs a CORS preflight (never
//!    granted) before it sends a custom header.
//!
//! `[access]` still applies (the router's guard runs first). Nothing else may mount a route
//! under `/admin/`: unknown paths there are answered here too, after the guard.
//!
//! | route                         | what                                                      |
//! |-------------------------------|-----------------------------------------------------------|
//! | `HEAD/GET /admin/blobs/<d>`   | whether a blob is stored (size), its bytes                |
//! | `PUT /admin/blobs/<d>?size=n` | store bytes that must hash to `<d>` (`BlobWriter::commit`) |
//! | `POST /admin/blobs`           | store bytes whose digest is not known yet; returns it     |
//! | `POST /admin/pins`            | pin digests and module versions (`PinRequest`)            |
//! | `POST /admin/export`          | what a selection contains (`ExportRequest` -> manifest)   |
//! | `POST /admin/import`          | verify, then index and pin uploaded content               |
//! | `GET /admin/stats`            | what the cache holds (`maintenance::Stats`)                        |
//! | `POST /admin/gc?dry_run&target&shared` | evict down to `target` bytes (the bucket with `shared`); the report as text |
//!
//! Blobs stored here are not indexed: only `/admin/import` indexes, after checking everything.

pub mod maintenance;
pub use crate::secret;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{StatusCode, header};
use wharf_storage::{Digest, PinRecord, StorageError};

use crate::app::{AppState, now_unix};
use crate::bundle::{
    AdminErrorBody, BundleError, ExportRequest, ImportRequest, Mirror, PinReply, PinRequest, apply,
    plan,
};
use crate::cache::{BlobBody, UploadError};
use crate::goproxy::path::ModulePath;

/// Largest JSON request (an import of many thousand objects).
const MAX_JSON: usize = 256 << 20;

/// Every route under `/admin/`, behind `guard`.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/blobs/{digest}",
            get(get_blob).head(get_blob).put(put_blob),
        )
        .route("/admin/blobs", post(post_blob))
        .route("/admin/pins", post(pins))
        .route("/admin/export", post(export))
        .route("/admin/import", post(import))
        .route("/admin/stats", get(maintenance::stats_endpoint))
        .route("/admin/gc", post(maintenance::gc_endpoint))
        .route("/admin", any(unknown))
        .route("/admin/", any(unknown))
        .route("/admin/{*rest}", any(unknown))
        .layer(DefaultBodyLimit::max(MAX_JSON))
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// An admin error: status and a message that names the object.
#[derive(Debug)]
pub struct AdminError {
    pub status: StatusCode,
    pub message: String,
}

impl AdminError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AdminError {
        AdminError {
            status,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// A failure inside wharf: logged in full, answered without details (paths, OS errors).
    pub fn internal(e: impl std::fmt::Display) -> AdminError {
        tracing::error!(error = %e, "admin request failed");
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the server's log has the details",
        )
    }
}

/// The bundle side says who failed; the status is decided here.
impl From<BundleError> for AdminError {
    fn from(e: BundleError) -> AdminError {
        match e {
            BundleError::Refused(message) => AdminError::bad(message),
            BundleError::Local(e) => AdminError::internal(e),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(AdminErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The one gate of the admin API (see the module comment); refusals say which rule failed
/// without echoing anything back.
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let peer = crate::net::Client::of(req.extensions());
    let unix = peer == Some(crate::net::Client::Unix);
    let relayed = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| req.headers().contains_key(*h));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let local = unix
        || (peer
            .and_then(crate::net::Client::ip)
            .is_some_and(|ip| ip.is_loopback())
            && crate::net::loopback_host(host));
    if !local || relayed {
        tracing::warn!(?peer, host, "admin request refused: not from this machine");
        return AdminError::new(
            StatusCode::FORBIDDEN,
            "the admin API answers only on this machine, at a loopback address (127.0.0.1, [::1], localhost) or a Unix socket",
        )
        .into_response();
    }
    let presented = req.headers().get(secret::HEADER).map(|v| v.as_bytes());
    if !presented.is_some_and(|p| app.admin_secret.matches(p)) {
        tracing::warn!(
            ?peer,
            path = req.uri().path(),
            present = presented.is_some(),
            "admin request refused: no valid admin secret"
        );
        return AdminError::new(
            StatusCode::FORBIDDEN,
            "admin requests must carry the admin secret (X-Wharf-Admin-Token, from admin.token in the data directory)",
        )
        .into_response();
    }
    next.run(req).await
}

async fn unknown() -> AdminError {
    AdminError::new(StatusCode::NOT_FOUND, "no such admin route")
}

fn parse_digest(s: &str) -> Result<Digest, AdminError> {
    Digest::parse(s).map_err(|e| AdminError::new(StatusCode::BAD_REQUEST, format!("{s:?}: {e}")))
}

async fn get_blob(
    State(app): State<AppState>,
    method: http::Method,
    Path(digest): Path<String>,
) -> Result<Response, AdminError> {
    let digest = parse_digest(&digest)?;
    let file = match app.storage.blobs.open_blob(&digest) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AdminError::new(
                StatusCode::NOT_FOUND,
                format!("{digest} is not stored"),
            ));
        }
        Err(e) => return Err(AdminError::internal(e)),
    };
    let size = file.metadata().map_err(AdminError::internal)?.len();
    touch(&app, &digest);
    let body = if method == http::Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(BlobBody::from_file(std::sync::Arc::new(file), 0, size).into_stream())
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct SizeQuery {
    size: Option<u64>,
}

#[derive(serde::Serialize)]
struct Stored {
    digest: Digest,
    size: u64,
    /// It was stored already; the body was not needed.
    present: bool,
}

async fn put_blob(
    State(app): State<AppState>,
    Path(digest): Path<String>,
    Query(q): Query<SizeQuery>,
    body: Body,
) -> Result<Response, AdminError> {
    let digest = parse_digest(&digest)?;
    if let Ok(Some(size)) = app.storage.blobs.size(&digest) {
        touch(&app, &digest);
        return Ok(Json(Stored {
            digest,
            size,
            present: true,
        })
        .into_response());
    }
    let stored = store(&app, body, Some(digest), q.size).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

async fn post_blob(
    State(app): State<AppState>,
    Query(q): Query<SizeQuery>,
    body: Body,
) -> Result<Response, AdminError> {
    let stored = store(&app, body, None, q.size).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// Stores a request body through the engine; with `expected`, it must hash to that digest.
async fn store(
    app: &AppState,
    body: Body,
    expected: Option<Digest>,
    size: Option<u64>,
) -> Result<Stored, AdminError> {
    let stream = body.into_data_stream();
    let named = expected.clone();
    match app.engine.store_upload(stream, expected, size).await {
        Ok((digest, size)) => {
            touch(app, &digest);
            Ok(Stored {
                digest,
                size,
                present: false,
            })
        }
        Err(UploadError::Cut(e)) => Err(AdminError::new(
            StatusCode::BAD_REQUEST,
            format!("upload cut short: {e}"),
        )),
        Err(UploadError::Storage(StorageError::DigestMismatch { expected, actual })) => {
            Err(AdminError::bad(format!(
                "content does not match its digest {expected} (it hashes to {actual})"
            )))
        }
        Err(UploadError::Storage(StorageError::SizeMismatch { expected, actual })) => {
            let what = named.map_or("the upload".to_string(), |d| d.to_string());
            Err(AdminError::bad(format!(
                "content of {what} is {actual} bytes, expected {expected}"
            )))
        }
        Err(UploadError::Storage(e)) => Err(AdminError::internal(e)),
    }
}

/// Marks a blob as just used, so eviction keeps what an import has stored (not yet indexed,
/// hence not yet pinned) until the import indexes it.
fn touch(app: &AppState, digest: &Digest) {
    if let Err(e) = app
        .storage
        .index
        .put_atimes(&[(digest.clone(), now_unix())])
    {
        tracing::warn!(%digest, error = %e, "cannot record an access time");
    }
}

async fn pins(
    State(app): State<AppState>,
    Json(req): Json<PinRequest>,
) -> Result<Json<PinReply>, AdminError> {
    let index = &app.storage.index;
    let mut digests = req.digests.clone();
    let mut reply = PinReply::default();
    for m in &req.modules {
        let mut any = false;
        for kind in ["info", "mod", "zip"] {
            if let Some(rec) = index
                .get_go_file(&m.path, &m.version, kind)
                .map_err(AdminError::internal)?
            {
                digests.push(rec.digest);
                any = true;
            }
        }
        if !any {
            reply.missing.push(format!("{}@{}", m.path, m.version));
        }
    }
    let record = PinRecord {
        reason: req.reason.clone(),
        pinned_unix: now_unix(),
    };
    for d in digests {
        if app.storage.blobs.contains(&d) {
            index.put_pin(&d, &record).map_err(AdminError::internal)?;
            reply.pinned += 1;
        } else {
            reply.missing.push(d.to_string());
        }
    }
    Ok(Json(reply))
}

async fn export(
    State(app): State<AppState>,
    Json(req): Json<ExportRequest>,
) -> Result<Response, AdminError> {
    let is_private = private_rules(&app);
    let manifest = plan::plan(mirror(&app, &is_private), &req).await?;
    Ok(Json(manifest).into_response())
}

async fn import(
    State(app): State<AppState>,
    Json(req): Json<ImportRequest>,
) -> Result<Response, AdminError> {
    let is_private = private_rules(&app);
    let reply = apply::apply(mirror(&app, &is_private), req).await?;
    Ok(Json(reply).into_response())
}

/// Whether a `[[go.private]]` rule covers a module (none does with the Go proxy disabled).
fn private_rules(app: &AppState) -> impl Fn(&ModulePath) -> bool + Send + Sync + '_ {
    let go = app.go.as_ref();
    move |m| go.is_some_and(|g| g.private_rule(m).is_some())
}

/// What `bundle::{plan, apply}` read and write.
fn mirror<'a>(
    app: &'a AppState,
    is_private: &'a (dyn Fn(&ModulePath) -> bool + Send + Sync),
) -> Mirror<'a> {
    Mirror {
        storage: &app.storage,
        config: &app.config,
        is_private,
    }
}
