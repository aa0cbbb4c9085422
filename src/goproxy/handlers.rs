//! Request handlers for `/go/`. Parsing happens first (`path::parse`); errors are `text/plain`
//! of a few lines, because the go command prints such bodies to the user.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, Uri, header};
use wharf_storage::GoListRecord;

use super::fetch::ModuleFileFetch;
use super::path::{self, FileKind, GoRoute, ModulePath, PathError, SumdbPath, Version, escape};
use super::service::GoProxy;
use super::source::{Fetched, GoState};
use super::verify;
use crate::cache::{BlobBody, Cached, FillError, Outcome, Sendfile, revalidate};
use crate::upstream::UpstreamError;
use crate::upstream::client::read_limited;
use wharf_storage::unix_now as now_unix;

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
pub async fn handle(State(app): State<Arc<GoProxy>>, method: Method, uri: Uri) -> Response {
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

/// `/go/` when `go.enabled = false`: a 404 the go command passes over to its next proxy.
pub async fn disabled() -> Response {
    GoError::not_found("the Go module proxy is disabled on this wharf (go.enabled = false)")
        .into_response()
}

async fn dispatch(app: &Arc<GoProxy>, method: &Method, uri: &Uri) -> Result<Response> {
    if *method != Method::GET && *method != Method::HEAD {
        return Err(GoError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "wharf's Go proxy is read-only: only GET and HEAD are supported",
        ));
    }
    let go = &app.go;
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
    outcome: Outcome,
) -> Response {
    outcome.mark(&mut resp);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
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

/// Why a list could not be fetched: the upstream failed (a stale answer is better), or an
/// answer that must be passed on as it is (not found, bad content, a local failure).
enum ListError {
    Upstream(UpstreamError),
    Answer(GoError),
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListError::Upstream(e) => write!(f, "{e}"),
            ListError::Answer(e) => f.write_str(&e.message),
        }
    }
}

/// `@v/list` and `@latest`: fresh from the index, else upstream, else the stale answer.
async fn mutable(
    app: &Arc<GoProxy>,
    go: &GoState,
    m: &ModulePath,
    kind: &str,
    rest: &str,
    content_type: &str,
) -> Result<Response> {
    let index = &app.storage.index;
    let cached = index
        .get_go_list(m.as_str(), kind)
        .map_err(internal)?
        .map(|rec| Cached {
            value: rec.body,
            learned_unix: rec.fetched_unix,
        });
    let what = format!("{m}/{rest}");
    let fetch = async {
        if go.known_not_found(&what) {
            return Err(ListError::Answer(GoError::not_found(format!(
                "{m}: not found (cached answer)"
            ))));
        }
        let Some(body) = fetch_small(go, m, rest)
            .await
            .map_err(ListError::Upstream)?
        else {
            go.remember_not_found(&what);
            return Err(ListError::Answer(GoError::not_found(format!(
                "{m}: not found on any upstream"
            ))));
        };
        let body = String::from_utf8(body).map_err(|_| {
            ListError::Answer(GoError::bad_gateway(format!(
                "upstream sent a non-UTF-8 {what}"
            )))
        })?;
        if kind == "latest" {
            check_info(&body, None).map_err(|e| {
                ListError::Answer(GoError::bad_gateway(format!("upstream {what}: {e}")))
            })?;
        }
        let rec = GoListRecord {
            body: body.clone(),
            fetched_unix: now_unix(),
        };
        index
            .put_go_list(m.as_str(), kind, &rec)
            .map_err(|e| ListError::Answer(internal(e)))?;
        Ok((body, Outcome::Miss))
    };
    let ttl = Some(app.config.go.list_ttl);
    let stale_if = |e: &ListError| matches!(e, ListError::Upstream(_));
    let (body, outcome) = revalidate(&what, cached, ttl, now_unix(), fetch, stale_if)
        .await
        .map_err(|e| match e {
            ListError::Upstream(e) => upstream_failed(&what, &e),
            ListError::Answer(e) => e,
        })?;
    let len = body.len() as u64;
    Ok(with_headers(
        body.into_response(),
        content_type,
        Some(len),
        outcome,
    ))
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
                Outcome::Miss,
            ))
        }
        Ok(None) => Err(GoError::not_found(format!("{what}: unknown revision"))),
        Err(e) => Err(upstream_failed(&what, &e)),
    }
}

/// `.info` must be JSON with a `Version`; for a canonical request, that very version.
pub(super) fn check_info(body: &str, requested: Option<&str>) -> std::result::Result<(), String> {
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

/// A verified module file, from its file (`sendfile` on the fast path).
fn file_response(
    file: Arc<std::fs::File>,
    size: u64,
    kind: FileKind,
    outcome: Outcome,
) -> Response {
    let body = BlobBody::from_file(file, 0, size);
    let sendable = Sendfile(body.clone());
    let mut resp = Body::from_stream(body.into_stream()).into_response();
    resp.extensions_mut().insert(sendable);
    with_headers(resp, kind.content_type(), Some(size), outcome)
}

async fn file(
    app: &Arc<GoProxy>,
    go: &GoState,
    m: &ModulePath,
    v: &str,
    kind: FileKind,
) -> Result<Response> {
    let known = app
        .storage
        .index
        .get_go_file(m.as_str(), v, kind.ext())
        .map_err(internal)?
        .map(|rec| rec.digest);
    let stored = match &known {
        Some(d) => app.engine.open(d).map_err(|e| match e {
            FillError::Busy => GoError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("wharf: {m}@{v}: out of file descriptors; retry shortly"),
            ),
            _ => GoError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "wharf: local storage error; see the server log",
            ),
        })?,
        None => None,
    };
    if let Some((file, size)) = stored {
        return Ok(file_response(file, size, kind, Outcome::Hit));
    }
    let key = ModuleFileFetch::key(m, v, kind);
    if !app.engine.offline() && go.known_not_found(&key) {
        return Err(GoError::not_found(format!(
            "{m}@{v}: not found (cached answer)"
        )));
    }
    let fetch =
        || ModuleFileFetch::new(app.clone(), m.clone(), v.to_string(), kind).known_as(known);
    let span = || tracing::info_span!("go_fill", module = %m, version = %v, kind = kind.ext());
    // Module files are small enough to check whole before the first byte goes out: every
    // request (one fill however many ask) waits for the fill's verdict, so a refused file is a
    // status with a reason the go command prints, never a 200 cut short.
    let filled = match app.engine.fill(&go.flights, &key, fetch, span).await {
        Ok(served) => {
            let outcome = served.outcome;
            served.complete().await.map(|(f, size)| (f, size, outcome))
        }
        Err(e) => Err(e),
    };
    match filled {
        Ok((file, size, outcome)) => Ok(file_response(file, size, kind, outcome)),
        Err(FillError::NotFound) => {
            go.remember_not_found(&key);
            Err(GoError::not_found(format!(
                "{m}@{v}: not found on any upstream"
            )))
        }
        Err(FillError::Offline) => Err(upstream_failed(
            &format!("{m}@{v}"),
            &UpstreamError::Offline,
        )),
        // One line: the go command prints it after "server response:".
        Err(FillError::Upstream(msg)) => Err(GoError::bad_gateway(format!(
            "wharf: {key}: {}",
            msg.lines().map(str::trim).collect::<Vec<_>>().join(" ")
        ))),
        Err(FillError::Unavailable(msg)) => Err(GoError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("wharf: {key} is not cached and {msg}"),
        )),
        Err(FillError::Busy) => Err(GoError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "wharf is busy fetching other modules (server.max_concurrent_fills); retry shortly",
        )),
        Err(FillError::Local) => Err(GoError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "wharf: local storage error; see the server log",
        )),
        // Module files are checked whole before they are served, which needs the disk.
        Err(FillError::NoRoom) => Err(GoError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "wharf: the local disk is full (cache.min_free); retry later",
        )),
    }
}

// ------------------------------------------------------------- sumdb

async fn sumdb(app: &Arc<GoProxy>, go: &GoState, name: &str, p: &SumdbPath) -> Result<Response> {
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
                "{module} is a private module: wharf does not send its name to {name}.\nSet GONOSUMDB for it \
                 (GOPRIVATE alone also bypasses wharf; with it, set GONOPROXY=none)."
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
