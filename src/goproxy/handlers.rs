//! Request handlers for `/go/`. Parsing happens first (`path::parse`); errors are `text/plain`
//! of a few lines, because the go command prints such bodies to the user.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, Uri, header};
use wharf_storage::{GoFileRecord, GoListRecord};

use super::path::{self, FileKind, GoRoute, ModulePath, PathError, SumdbPath, Version, escape};
use super::source::{Fetched, GoState, Source};
use super::verify;
use crate::app::{AppState, now_unix};
use crate::cache::fill::{CopyError, copy_body};
use crate::cache::{BlobBody, FillError, Join, Leader, Start, first_answer};
use crate::upstream::UpstreamError;
use crate::upstream::client::{read_limited, transport_error};

const CACHE_HEADER: &str = "x-cache";
/// Largest `@v/list` or `@latest` answer read.
const MAX_LIST: usize = 4 << 20;

/// A Go error answer: status and a short reason the go command shows to its user.
#[derive(Debug)]
pub struct GoError {
    pub status: StatusCode,
    pub message: String,
}

impl GoError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> GoError {
        GoError {
            status,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> GoError {
        GoError::new(StatusCode::NOT_FOUND, message)
    }

    fn bad_gateway(message: impl Into<String>) -> GoError {
        GoError::new(StatusCode::BAD_GATEWAY, message)
    }
}

impl IntoResponse for GoError {
    fn into_response(self) -> Response {
        // The go command shows up to 8 lines, stopping at the first blank one.
        let text: String = self
            .message
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(8)
            .map(|l| {
                let l: String = l.chars().filter(|c| !c.is_control()).take(200).collect();
                l + "\n"
            })
            .collect();
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response()
    }
}

impl From<PathError> for GoError {
    fn from(e: PathError) -> Self {
        GoError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.message,
        )
    }
}

type Result<T> = std::result::Result<T, GoError>;

/// Entry point for every `/go/` request.
pub async fn handle(State(app): State<AppState>, method: Method, uri: Uri) -> Response {
    let resp = match dispatch(&app, &method, &uri).await {
        Ok(r) => r,
        Err(e) => {
            tracing::Span::current().record("cache", "ERROR");
            e.into_response()
        }
    };
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    resp
}

async fn dispatch(app: &AppState, method: &Method, uri: &Uri) -> Result<Response> {
    if *method != Method::GET && *method != Method::HEAD {
        return Err(GoError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "wharf's Go proxy is read-only: only GET and HEAD are supported",
        ));
    }
    let Some(go) = app.go.as_ref() else {
        return Err(GoError::not_found(
            "the Go module proxy is disabled on this wharf (go.enabled = false)",
        ));
    };
    let rest = uri.path().strip_prefix("/go/").unwrap_or("");
    match path::parse(rest)? {
        GoRoute::List(m) => {
            mutable(app, go, &m, "list", "@v/list", "text/plain; charset=utf-8").await
        }
        GoRoute::Latest(m) => mutable(app, go, &m, "latest", "@latest", "application/json").await,
        GoRoute::File(m, Version::Query(q), FileKind::Info) => query_info(go, &m, &q).await,
        GoRoute::File(m, Version::Canonical(v), kind) => file(app, go, &m, &v, kind).await,
        GoRoute::File(_, Version::Query(_), _) => Err(GoError::new(
            StatusCode::BAD_REQUEST,
            "not a canonical version",
        )),
        GoRoute::SumdbSupported(name) => {
            if app.config.go.sumdbs.iter().any(|d| d.name == name) {
                Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "",
                )
                    .into_response())
            } else {
                Err(GoError::not_found(format!(
                    "checksum database {name} is not proxied here"
                )))
            }
        }
        GoRoute::SumdbPath(name, p) => sumdb(app, go, &name, &p).await,
    }
}

fn with_headers(
    mut resp: Response,
    content_type: &str,
    len: Option<u64>,
    outcome: &'static str,
) -> Response {
    tracing::Span::current().record("cache", outcome);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert(CACHE_HEADER, HeaderValue::from_static(outcome));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn upstream_failed(what: &str, e: &UpstreamError) -> GoError {
    match e {
        UpstreamError::Offline => {
            return GoError::not_found(format!(
                "{what}: not in this offline cache (wharf runs with offline = true)"
            ));
        }
        UpstreamError::Down(_) => {
            return GoError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} is not cached and {}", e.summary()),
            );
        }
        _ => {}
    }
    tracing::warn!(error = %e, "{what}: upstream failed");
    GoError::bad_gateway(format!(
        "wharf could not fetch {what}: {}\nNothing is cached for it; retry later or check the upstream (go.upstreams).",
        e.summary()
    ))
}

// ------------------------------------------------------------- list and @latest

/// `@v/list` and `@latest`: fresh from the index, else upstream, else the stale answer.
async fn mutable(
    app: &AppState,
    go: &GoState,
    m: &ModulePath,
    kind: &str,
    rest: &str,
    content_type: &str,
) -> Result<Response> {
    let index = &app.storage.index;
    let cached = index.get_go_list(m.as_str(), kind).map_err(internal)?;
    let ttl = app.config.go.list_ttl.as_secs();
    if let Some(rec) = &cached
        && now_unix().saturating_sub(rec.fetched_unix) < ttl
    {
        let len = rec.body.len() as u64;
        return Ok(with_headers(
            rec.body.clone().into_response(),
            content_type,
            Some(len),
            "HIT",
        ));
    }
    let neg_key = format!("{m}/{rest}");
    if go.known_not_found(&neg_key) {
        return Err(GoError::not_found(format!(
            "{m}: not found (cached answer)"
        )));
    }
    let what = format!("{m}/{rest}");
    match fetch_small(go, m, rest).await {
        Ok(Some(body)) => {
            let body = String::from_utf8(body)
                .map_err(|_| GoError::bad_gateway(format!("upstream sent a non-UTF-8 {what}")))?;
            if kind == "latest" {
                check_info(&body, None)
                    .map_err(|e| GoError::bad_gateway(format!("upstream {what}: {e}")))?;
            }
            let rec = GoListRecord {
                body: body.clone(),
                fetched_unix: now_unix(),
            };
            index
                .put_go_list(m.as_str(), kind, &rec)
                .map_err(internal)?;
            let len = body.len() as u64;
            Ok(with_headers(
                body.into_response(),
                content_type,
                Some(len),
                "MISS",
            ))
        }
        Ok(None) => {
            go.remember_not_found(&neg_key);
            Err(GoError::not_found(format!(
                "{m}: not found on any upstream"
            )))
        }
        Err(e) => match cached {
            Some(rec) => {
                tracing::warn!(error = %e, module = %m, "upstream failed; serving the cached {kind}");
                let len = rec.body.len() as u64;
                Ok(with_headers(
                    rec.body.into_response(),
                    content_type,
                    Some(len),
                    "STALE",
                ))
            }
            None => Err(upstream_failed(&what, &e)),
        },
    }
}

/// Tries the module's sources in order; `None` when every one says "not found".
async fn fetch_small(
    go: &GoState,
    m: &ModulePath,
    rest: &str,
) -> std::result::Result<Option<Vec<u8>>, UpstreamError> {
    for src in go.sources(m) {
        match go.fetch(src, m, rest).await? {
            Fetched::NotFound => continue,
            Fetched::File(p) => {
                let bytes = tokio::fs::read(&p)
                    .await
                    .map_err(|e| UpstreamError::Transport {
                        target: src.label.clone(),
                        detail: e.to_string(),
                    })?;
                if bytes.len() > MAX_LIST {
                    return Err(UpstreamError::TooLarge {
                        limit: MAX_LIST as u64,
                    });
                }
                return Ok(Some(bytes));
            }
            Fetched::Found(resp) => {
                let url = resp.url().clone();
                return read_limited(resp, MAX_LIST, &url).await.map(Some);
            }
        }
    }
    Ok(None)
}

/// `.info` for a branch, tag or commit: always asked upstream, never stored.
async fn query_info(go: &GoState, m: &ModulePath, q: &str) -> Result<Response> {
    let rest = format!("@v/{}.info", escape(q));
    let what = format!("{m}@{q}");
    match fetch_small(go, m, &rest).await {
        Ok(Some(body)) => {
            check_info(std::str::from_utf8(&body).unwrap_or(""), None)
                .map_err(|e| GoError::bad_gateway(format!("upstream .info for {what}: {e}")))?;
            let len = body.len() as u64;
            Ok(with_headers(
                body.into_response(),
                "application/json",
                Some(len),
                "MISS",
            ))
        }
        Ok(None) => Err(GoError::not_found(format!("{what}: unknown revision"))),
        Err(e) => Err(upstream_failed(&what, &e)),
    }
}

/// `.info` must be JSON with a `Version`; for a canonical request, that very version.
fn check_info(body: &str, requested: Option<&str>) -> std::result::Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "Version")]
        version: String,
    }
    let info: Info = serde_json::from_str(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !path::is_canonical(&info.version) {
        return Err(format!("Version {:?} is not canonical", info.version));
    }
    if let Some(r) = requested
        && r != info.version
    {
        return Err(format!(
            "info is for version {} instead of requested {r}",
            info.version
        ));
    }
    Ok(())
}

// ------------------------------------------------------------- .info/.mod/.zip

async fn file(
    app: &AppState,
    go: &GoState,
    m: &ModulePath,
    v: &str,
    kind: FileKind,
) -> Result<Response> {
    let index = &app.storage.index;
    if let Some(rec) = index
        .get_go_file(m.as_str(), v, kind.ext())
        .map_err(internal)?
        && let Ok(f) = app.storage.blobs.open_blob(&rec.digest)
    {
        app.touch(&rec.digest);
        let size = f.metadata().map_err(internal)?.len();
        let body = BlobBody::from_file(Arc::new(f), 0, size).into_stream();
        return Ok(with_headers(
            Body::from_stream(body).into_response(),
            kind.content_type(),
            Some(size),
            "HIT",
        ));
    }
    let key = format!("{m}@{v}.{}", kind.ext());
    if app.config.offline {
        return Err(upstream_failed(
            &format!("{m}@{v}"),
            &UpstreamError::Offline,
        ));
    }
    if go.known_not_found(&key) {
        return Err(GoError::not_found(format!(
            "{m}@{v}: not found (cached answer)"
        )));
    }
    let (rx, follower) = match go.flights.join(&key) {
        Join::Leader(leader, rx) => {
            let Ok(permit) = app.fill_permits.clone().try_acquire_owned() else {
                leader.fail(FillError::Busy);
                return Err(GoError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "wharf is busy fetching other modules (server.max_concurrent_fills); retry shortly",
                ));
            };
            let (app2, m2, v2) = (app.clone(), m.clone(), v.to_string());
            let span = tracing::info_span!("go_fill", module = %m, version = %v, kind = kind.ext());
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    fill(app2, m2, v2, kind, leader).await;
                    drop(permit);
                },
                span,
            ));
            (rx, false)
        }
        Join::Follower(rx) => (rx, true),
    };
    match first_answer(rx, follower).await {
        Start::Streaming { rx, size } => {
            let body = BlobBody::from_fill(rx, 0, size).into_stream();
            Ok(with_headers(
                Body::from_stream(body).into_response(),
                kind.content_type(),
                size,
                "MISS",
            ))
        }
        Start::Complete { file, size, hit } => {
            let body = BlobBody::from_file(file, 0, size).into_stream();
            Ok(with_headers(
                Body::from_stream(body).into_response(),
                kind.content_type(),
                Some(size),
                if hit { "HIT" } else { "MISS" },
            ))
        }
        Start::Failed(FillError::NotFound) => {
            go.remember_not_found(&key);
            Err(GoError::not_found(format!(
                "{m}@{v}: not found on any upstream"
            )))
        }
        Start::Failed(FillError::Upstream(msg)) => Err(GoError::bad_gateway(format!(
            "wharf could not fetch {m}@{v} .{}: {msg}",
            kind.ext()
        ))),
        Start::Failed(FillError::Busy) => Err(GoError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "wharf is busy fetching other modules (server.max_concurrent_fills); retry shortly",
        )),
        Start::Failed(FillError::Internal) => Err(GoError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "wharf: local storage error; see the server log",
        )),
    }
}

/// Fetches one immutable file, checks it (size limit, `.info` shape, zip rules, checksum
/// database), and only then commits it. Runs in its own task.
async fn fill(app: AppState, m: ModulePath, v: String, kind: FileKind, leader: Leader<String>) {
    match run_fill(&app, &m, &v, kind, &leader).await {
        Ok((file, size)) => {
            tracing::info!(size, "module file verified and cached");
            app.metrics.add_upstream_bytes("go", size);
            leader.commit(file, size)
        }
        Err(e) => {
            match &e {
                FillError::NotFound => tracing::debug!("not found upstream"),
                FillError::Upstream(msg) => {
                    tracing::warn!(error = %msg, "module fill failed; nothing cached")
                }
                FillError::Internal => tracing::error!("module fill failed on local storage"),
                FillError::Busy => tracing::warn!("too many concurrent fills"),
            }
            leader.fail(e)
        }
    }
}

async fn run_fill(
    app: &AppState,
    m: &ModulePath,
    v: &str,
    kind: FileKind,
    leader: &Leader<String>,
) -> std::result::Result<(Arc<std::fs::File>, u64), FillError> {
    let Some(go) = app.go.as_ref() else {
        return Err(FillError::Internal);
    };
    let rest = format!("@v/{}.{}", escape(v), kind.ext());
    let limit = kind.max_size();
    let too_big = || {
        FillError::Upstream(format!(
            "the .{} is larger than the {limit}-byte limit",
            kind.ext()
        ))
    };
    let up = |e: UpstreamError| {
        tracing::warn!(error = %e, "upstream failed");
        FillError::Upstream(e.summary())
    };
    let io_err = |e: std::io::Error| {
        tracing::error!(error = %e, "temp file write failed");
        FillError::Internal
    };
    let mut found: Option<(&Source, Fetched)> = None;
    for src in go.sources(m) {
        match go.fetch(src, m, &rest).await.map_err(up)? {
            Fetched::NotFound => continue,
            other => {
                found = Some((src, other));
                break;
            }
        }
    }
    let Some((src, fetched)) = found else {
        return Err(FillError::NotFound);
    };
    let mut writer = app.storage.blobs.writer().map_err(|e| {
        tracing::error!(error = %e, "cannot create a temp file");
        FillError::Internal
    })?;
    let file = writer.file();
    match fetched {
        Fetched::NotFound => return Err(FillError::NotFound),
        Fetched::File(p) => {
            let size = std::fs::metadata(&p).map_err(io_err)?.len();
            if size > limit {
                return Err(too_big());
            }
            leader.streaming(file.clone(), Some(size));
            let data = tokio::fs::read(&p).await.map_err(io_err)?;
            writer.write_all(&data).map_err(io_err)?;
            leader.progress(writer.written());
        }
        Fetched::Found(resp) => {
            let url = resp.url().clone();
            copy_body(resp, &mut writer, leader, limit)
                .await
                .map_err(|e| match e {
                    CopyError::Transport(e) => up(transport_error(e, &url)),
                    CopyError::Overlong { .. } => up(UpstreamError::Protocol(
                        "upstream sent more than its Content-Length".into(),
                    )),
                    CopyError::TooLarge { .. } => too_big(),
                    CopyError::Truncated { expected, got } => {
                        up(UpstreamError::Truncated { expected, got })
                    }
                    CopyError::Write(e) => io_err(e),
                })?;
        }
    }
    let size = writer.written();
    // Checks before commit: nothing unverified is ever stored or served in full.
    match kind {
        FileKind::Info => {
            let text = read_back(&file, size).map_err(io_err)?;
            check_info(&String::from_utf8_lossy(&text), Some(v))
                .map_err(|e| FillError::Upstream(format!("bad .info from {}: {e}", src.label)))?;
        }
        FileKind::Mod | FileKind::Zip => {
            verify::check_module_file(app, m, v, kind, &file, src.public)
                .await
                .map_err(FillError::Upstream)?;
        }
    }
    let digest = writer.digest();
    let verified = writer.verify(&digest, Some(size)).map_err(|e| {
        tracing::error!(error = %e, "verifying the temp file failed");
        FillError::Internal
    })?;
    // Verified: clients may have the last bytes while the fsync runs.
    leader.verified(file.clone(), size);
    let committed = tokio::task::spawn_blocking(move || verified.persist())
        .await
        .map_err(|_| FillError::Internal)?;
    if let Err(e) = committed {
        tracing::error!(error = %e, "commit failed");
        return Err(FillError::Internal);
    }
    let rec = GoFileRecord {
        digest,
        size,
        fetched_unix: now_unix(),
    };
    if let Err(e) = app
        .storage
        .index
        .put_go_file(m.as_str(), v, kind.ext(), &rec)
    {
        tracing::error!(error = %e, "indexing the module file failed");
        return Err(FillError::Internal);
    }
    go.forget_not_found(&format!("{m}@{v}.{}", kind.ext()));
    Ok((file, size))
}

fn read_back(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; size as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

// ------------------------------------------------------------- sumdb

async fn sumdb(app: &AppState, go: &GoState, name: &str, p: &SumdbPath) -> Result<Response> {
    let Some(db) = app.config.go.sumdbs.iter().find(|d| d.name == name) else {
        return Err(GoError::not_found(format!(
            "checksum database {name} is not proxied here"
        )));
    };
    if let SumdbPath::Lookup { module, .. } = p
        && go.private_rule(module).is_some()
    {
        return Err(GoError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{module} is a private module: wharf does not send its name to {name}.\nSet GONOSUMDB or GOPRIVATE for it."
            ),
        ));
    }
    match verify::sumdb_get(app, db, p).await {
        Ok((body, outcome)) => {
            let ct = match p {
                SumdbPath::Lookup { .. } => "text/plain; charset=utf-8",
                SumdbPath::Tile { raw, .. } if raw.contains("/data/") => {
                    "text/plain; charset=utf-8"
                }
                SumdbPath::Tile { .. } => "application/octet-stream",
            };
            let len = body.len() as u64;
            Ok(with_headers(body.into_response(), ct, Some(len), outcome))
        }
        Err(verify::SumdbFetchError::NotFound) => {
            Err(GoError::not_found(format!("{name}: {} not found", p.raw())))
        }
        Err(verify::SumdbFetchError::Upstream(e)) => {
            Err(upstream_failed(&format!("{name}/{}", p.raw()), &e))
        }
        Err(verify::SumdbFetchError::Internal(e)) => Err(internal(e)),
    }
}

fn internal(e: impl std::fmt::Display) -> GoError {
    tracing::error!(error = %e, "internal error");
    GoError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "wharf: internal error; see the server log",
    )
}
