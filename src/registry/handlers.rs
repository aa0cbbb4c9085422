//! Request handlers for `/v2/`. Parsing happens first (`routes::parse`), so nothing reaches
//! disk or an upstream before the name, reference and digest are known to be valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use wharf_storage::{BlobRecord, Digest, TagListRecord, TagRecord, unix_now};

use super::errors::{ErrorCode, RegistryError};
use super::fetch::BlobFetch;
use super::hot::HotManifest;
use super::manifest;
use super::routes::{self, Reference, RepoName, Route, Tag, query_param};
use super::service::Registry;
use super::visibility;

use super::{ranges, referrers};
use crate::cache::{
    BlobBody, BlobSource, ByteRange, Cached, FillError, Outcome, Sendfile, revalidate,
};
use crate::config::{ColdRanges, DOCKER_HUB_NAME, StaleOn, UpstreamConfig};
use crate::upstream::client::read_limited;
use crate::upstream::{UpstreamClient, UpstreamError};

const API_VERSION: &str = "registry/2.0";
/// Most tags returned by one tags/list page, whatever `n` asks for.
const MAX_PAGE: usize = 10_000;
/// Largest tags/list answer read from upstream.
const MAX_TAG_LIST_BYTES: usize = 16 << 20;

type Result<T> = std::result::Result<T, RegistryError>;

/// Entry point for every `/v2` request.
pub async fn handle(State(app): State<Arc<Registry>>, req: axum::extract::Request) -> Response {
    // HTTP/1.0 cannot tell a cut body of unknown length from a complete one.
    let framed = req.version() >= http::Version::HTTP_11;
    let mut resp = match dispatch(&app, req.method(), req.uri(), req.headers(), framed).await {
        Ok(r) => r,
        Err(e) => {
            tracing::Span::current().record("cache", "ERROR");
            e.into_response()
        }
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn dispatch(
    app: &Registry,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    framed: bool,
) -> Result<Response> {
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return Err(RegistryError::new(
                ErrorCode::Unsupported,
                "wharf is a read-only pull-through mirror: push and delete are not supported",
            ));
        }
    };
    let path = uri.path();
    let rest = path
        .strip_prefix("/v2/")
        .or_else(|| (path == "/v2").then_some(""))
        .unwrap_or("");
    let route = routes::parse(rest)?;
    let ns = query_param(uri.query(), "ns");
    match route {
        Route::Base => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()),
        Route::Catalog => Err(RegistryError::new(
            ErrorCode::NotFound,
            "this mirror does not serve a catalog",
        )),
        Route::Manifest { name, reference } => {
            let t = resolve(app, &name, ns)?;
            let (m, outcome) = match reference {
                Reference::Digest(d) => manifest_by_digest(app, &t, &d).await?,
                Reference::Tag(tag) => manifest_by_tag(app, &t, &tag).await?,
            };
            let (m, outcome) = negotiate(app, &t, m, outcome, headers).await?;
            Ok(t.annotate(manifest_response(&m, outcome, head)))
        }
        Route::Blob { name, digest } => {
            let t = resolve(app, &name, ns)?;
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            let asked = (head, range, framed);
            Ok(t.annotate(blob(app, &t, &digest, asked).await?))
        }
        Route::TagsList { name } => {
            let t = resolve(app, &name, ns)?;
            Ok(t.annotate(tags_list(app, &t, &name, uri.query()).await?))
        }
        Route::Referrers { name, digest } => {
            let t = resolve(app, &name, ns)?;
            let resp = referrers::referrers(app, &t, &digest, uri.query(), head).await?;
            Ok(t.annotate(resp))
        }
    }
}

/// `<upstream>/<repository>/` as the upstream knows it, for access rules: every spelling of a
/// repository (`?ns=`, host prefix, default upstream, `library/`) maps to the same string.
/// `None` when the path names no repository or does not parse (the handler refuses it).
pub fn canonical_repo(app: &Registry, rest: &str, query: Option<&str>) -> Option<String> {
    let name = match routes::parse(rest).ok()? {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::TagsList { name }
        | Route::Referrers { name, .. } => name,
        Route::Base | Route::Catalog => return None,
    };
    let t = resolve(app, &name, query_param(query, "ns")).ok()?;
    Some(format!("{}/{}/", t.up.name, t.name))
}

/// Where a request goes: the upstream, the name as the upstream knows it, and the `ns` used.
pub(super) struct Target {
    pub(super) up: Arc<UpstreamClient>,
    pub(super) name: RepoName,
    ns: Option<String>,
}

impl Target {
    pub(super) fn scope(&self) -> String {
        format!("repository:{}:pull", self.name)
    }

    fn annotate(&self, mut resp: Response) -> Response {
        resp.extensions_mut()
            .insert(crate::metrics::AnsweredBy(self.up.label.clone()));
        if let Some(ns) = self
            .ns
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            resp.headers_mut().insert("oci-namespace", ns);
        }
        resp
    }
}

fn resolve(app: &Registry, name: &RepoName, ns: Option<String>) -> Result<Target> {
    let find = |n: &str| -> Option<&UpstreamConfig> {
        app.config.upstream(n).or_else(|| {
            // containerd and older configs name Docker Hub by its API hosts.
            matches!(n, "index.docker.io" | "registry-1.docker.io")
                .then(|| app.config.upstream(DOCKER_HUB_NAME))
                .flatten()
        })
    };
    let (cfg, name, ns) = if let Some(ns) = ns {
        let cfg = find(&ns).ok_or_else(|| {
            RegistryError::new(
                ErrorCode::NameUnknown,
                format!(
                    "no upstream is configured for namespace {:?}; add a [[registry.upstream]] with that name",
                    ns.chars().take(255).collect::<String>()
                ),
            )
        })?;
        (cfg, name.clone(), Some(ns))
    } else if let (Some(cfg), Some(rest)) = (app.config.upstream(name.first()), name.strip_first())
    {
        (cfg, rest, None)
    } else {
        let cfg = app
            .config
            .upstream(&app.config.registry.default_upstream)
            .ok_or_else(|| RegistryError::new(ErrorCode::Unknown, "no default upstream"))?;
        (cfg, name.clone(), None)
    };
    let name = if cfg.library_prefix() && name.is_single_component() {
        name.with_library()
    } else {
        name
    };
    let up = app
        .upstreams
        .get(&cfg.name)
        .cloned()
        .ok_or_else(|| RegistryError::new(ErrorCode::Unknown, "upstream client missing"))?;
    Ok(Target { up, name, ns })
}

/// Why an upstream could not answer.
pub(super) enum Miss {
    /// It says the object does not exist.
    NotFound,
    /// It refused access (401/403): the repository may not exist or needs credentials.
    Denied(u16),
    /// It failed (unreachable, 429, 5xx, bad bytes): a stale answer is better than none.
    Failed(UpstreamError),
    /// This machine failed (disk, index); already logged. Never a reason to serve stale.
    Local(RegistryError),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::NotFound => f.write_str("not found"),
            Miss::Denied(s) => write!(f, "access refused ({s})"),
            Miss::Failed(e) => write!(f, "{e}"),
            Miss::Local(_) => f.write_str("local failure"),
        }
    }
}

impl From<UpstreamError> for Miss {
    fn from(e: UpstreamError) -> Self {
        Miss::Failed(e)
    }
}

pub(super) fn classify(status: StatusCode) -> std::result::Result<(), Miss> {
    match status.as_u16() {
        200..=299 => Ok(()),
        404 => Err(Miss::NotFound),
        401 | 403 => Err(Miss::Denied(status.as_u16())),
        s => Err(Miss::Failed(UpstreamError::Status { status: s })),
    }
}

impl Miss {
    /// Whether the last known answer is served instead: always when the upstream failed; for
    /// "not found" and "access refused" only when `registry.serve_stale_on` lists them.
    pub(super) fn serves_stale(&self, opt_in: &[StaleOn]) -> bool {
        match self {
            Miss::Failed(_) => true,
            Miss::NotFound => opt_in.contains(&StaleOn::NotFound),
            Miss::Denied(_) => opt_in.contains(&StaleOn::Auth),
            Miss::Local(_) => false,
        }
    }

    pub(super) fn into_error(self, t: &Target, what: &str, unknown: ErrorCode) -> RegistryError {
        match self {
            Miss::Local(e) => e,
            Miss::NotFound => RegistryError::new(
                unknown,
                format!("{what} not found in {} on upstream {}", t.name, t.up.name),
            ),
            Miss::Denied(s) => RegistryError::new(
                ErrorCode::NameUnknown,
                format!(
                    "upstream {} refused access to {} ({s}): it may not exist, or wharf needs credentials for it",
                    t.up.name, t.name
                ),
            ),
            Miss::Failed(UpstreamError::Offline) => RegistryError::new(
                unknown,
                format!(
                    "{what} of {} is not in this offline cache (offline = true)",
                    t.name
                ),
            ),
            Miss::Failed(e @ UpstreamError::Down(_)) => RegistryError::new(
                ErrorCode::Unavailable,
                format!("{what} is not cached and {}", e.summary()),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("10")),
            Miss::Failed(e) => {
                tracing::warn!(upstream = %t.up.name, repo = %t.name, error = %e, "upstream failed");
                let code = if e.is_rate_limited() {
                    ErrorCode::TooManyRequests
                } else {
                    ErrorCode::BadGateway
                };
                RegistryError::new(
                    code,
                    format!(
                        "upstream {} failed and {what} is not cached: {}",
                        t.up.name,
                        e.summary()
                    ),
                )
            }
        }
    }
}

// ---------------------------------------------------------------- manifests

/// A manifest and how it was answered.
pub(super) type Answer = (Arc<HotManifest>, Outcome);

async fn manifest_by_digest(app: &Registry, t: &Target, digest: &Digest) -> Result<Answer> {
    if let Some(m) = load_manifest(app, digest).await? {
        let (up, repo) = (t.up.name.as_str(), t.name.as_str());
        if !m.held_by(up, repo) {
            ensure_linked(app, t, digest, "manifests").await?;
            m.mark_held_by(up, repo);
        }
        app.engine.touch(digest);
        return Ok((m, Outcome::Hit));
    }
    match fetch_manifest(app, t, digest.as_str(), Some(digest)).await {
        Ok(m) => Ok((m, Outcome::Miss)),
        Err(m) => Err(m.into_error(t, &format!("manifest {digest}"), ErrorCode::ManifestUnknown)),
    }
}

/// What the client can read of `m`, as the reference registry decides: `m` itself when its type
/// is accepted (or anything is); for an index the client cannot read, the manifest of
/// `registry.default_platform` it lists; otherwise `MANIFEST_UNKNOWN` naming the types asked for.
async fn negotiate(
    app: &Registry,
    t: &Target,
    m: Arc<HotManifest>,
    outcome: Outcome,
    headers: &HeaderMap,
) -> Result<Answer> {
    let values = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(accepted) = manifest::accepted(values) else {
        return Ok((m, outcome));
    };
    let takes = |m: &HotManifest| {
        let media = m.media_type.to_str().unwrap_or_default();
        accepted.iter().any(|a| a == media)
    };
    if takes(&m) {
        return Ok((m, outcome));
    }
    let media = m.media_type.to_str().unwrap_or_default().to_string();
    let refuse = |media: &str, extra: &str| {
        RegistryError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "the manifest is {media}{extra}, and the request accepts only {}",
                accepted.join(", ")
            ),
        )
    };
    if !manifest::is_index(&media) {
        return Err(refuse(&media, ""));
    }
    let platform = &app.config.registry.default_platform;
    let Some(child) = manifest::platform_child(&m.body, platform) else {
        return Err(refuse(&media, &format!(" with no {platform} entry")));
    };
    let (c, child_outcome) = manifest_by_digest(app, t, &child).await?;
    if !takes(&c) {
        let child_media = c.media_type.to_str().unwrap_or_default().to_string();
        return Err(refuse(
            &media,
            &format!(" whose {platform} entry is {child_media}"),
        ));
    }
    // A hit only if both the index and its entry were.
    let outcome = if outcome == Outcome::Hit {
        child_outcome
    } else {
        outcome
    };
    Ok((c, outcome))
}

pub(super) async fn manifest_by_tag(app: &Registry, t: &Target, tag: &Tag) -> Result<Answer> {
    let (up, repo) = (t.up.name.as_str(), t.name.as_str());
    let now = unix_now();
    let ttl = tag_ttl(app, t);
    // The warm path: a fresh answer in memory, no index read.
    let fresh_since = (now + 1).saturating_sub(ttl.as_secs());
    if let Some(m) = app.hot.tag(up, repo, tag.as_str(), fresh_since) {
        app.engine.touch(&m.digest);
        return Ok((m, Outcome::Hit));
    }
    let index = &app.storage.index;
    let known = index.get_tag(up, repo, tag.as_str()).map_err(internal)?;
    let cached = match known {
        Some(rec) => load_manifest(app, &rec.digest).await?.map(|m| Cached {
            value: m,
            learned_unix: rec.learned_unix,
        }),
        None => None,
    };
    let learned = AtomicU64::new(cached.as_ref().map_or(now, |c| c.learned_unix));
    let fetch = async {
        let (m, outcome) = resolve_tag(app, t, tag).await?;
        let rec = TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.to_str().unwrap_or_default().to_string(),
            learned_unix: now,
        };
        index
            .put_tag(up, repo, tag.as_str(), &rec)
            .map_err(|e| Miss::Local(internal(e)))?;
        learned.store(now, Ordering::Relaxed);
        Ok((m, outcome))
    };
    let key = format!("{up}/{repo}:{}", tag.as_str());
    let stale_if = |e: &Miss| e.serves_stale(&app.config.registry.serve_stale_on);
    let (m, outcome) = revalidate(&key, cached, Some(ttl), now, fetch, stale_if)
        .await
        .map_err(|m| {
            m.into_error(
                t,
                &format!("tag {}", tag.as_str()),
                ErrorCode::ManifestUnknown,
            )
        })?;
    if outcome != Outcome::Stale {
        app.hot.put_tag(
            up,
            repo,
            tag.as_str(),
            &m.digest,
            learned.load(Ordering::Relaxed),
        );
    }
    app.engine.touch(&m.digest);
    Ok((m, outcome))
}

/// `registry.tag_ttl`, stretched while `t`'s upstream reports little pull quota left.
pub(super) fn tag_ttl(app: &Registry, t: &Target) -> Duration {
    let cfg = &app.config.registry;
    t.up.rate.stretch(cfg.tag_ttl, cfg.rate_limit_headroom)
}

/// HEAD upstream (free on Docker Hub), then GET by digest only if that digest is not cached.
async fn resolve_tag(
    app: &Registry,
    t: &Target,
    tag: &Tag,
) -> std::result::Result<(Arc<HotManifest>, Outcome), Miss> {
    let path = format!("/v2/{}/manifests/{}", t.name, tag.as_str());
    let resp =
        t.up.send(Method::HEAD, &path, manifest::ACCEPT, &t.scope())
            .await?;
    classify(resp.status())?;
    let advertised = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v.trim()).ok());
    if let Some(d) = &advertised {
        // Cached and held by this repository: nothing to fetch. Cached from elsewhere only: a
        // header is no proof (an upstream could name any digest), so this repository must
        // hand over the bytes themselves, which then hash to `d`.
        let held = visibility::held(&app.storage, &t.up.name, t.name.as_str(), d)
            .map_err(|e| Miss::Local(internal(e)))?;
        if held && let Some(m) = load_manifest(app, d).await.map_err(Miss::Local)? {
            return Ok((m, Outcome::Hit));
        }
        let m = fetch_manifest(app, t, d.as_str(), Some(d)).await?;
        return Ok((m, Outcome::Miss));
    }
    // No digest header: fetch by tag and hash what arrives.
    let m = fetch_manifest(app, t, tag.as_str(), None).await?;
    Ok((m, Outcome::Miss))
}

/// GETs a manifest, verifies it (digest, size, media type) and stores it.
async fn fetch_manifest(
    app: &Registry,
    t: &Target,
    reference: &str,
    expected: Option<&Digest>,
) -> std::result::Result<Arc<HotManifest>, Miss> {
    let path = format!("/v2/{}/manifests/{reference}", t.name);
    let resp =
        t.up.send(Method::GET, &path, manifest::ACCEPT, &t.scope())
            .await?;
    classify(resp.status())?;
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let url = resp.url().clone();
    let limit = app.config.registry.max_manifest_size.0 as usize;
    let body = read_limited(resp, limit, &url).await?;
    let actual = Digest::of(&body);
    if let Some(exp) = expected
        && *exp != actual
    {
        app.metrics.verification_failed("manifest_digest");
        tracing::error!(upstream = %t.up.name, repo = %t.name, expected = %exp, actual = %actual,
            "upstream manifest does not match its digest; not cached");
        return Err(Miss::Failed(UpstreamError::DigestMismatch {
            expected: exp.to_string(),
            actual: actual.to_string(),
        }));
    }
    let media = manifest::check(&body, content_type.as_deref())
        .map_err(|m| Miss::Failed(UpstreamError::Protocol(m)))?;
    app.metrics
        .add_upstream_bytes(&t.up.name, body.len() as u64);
    store_manifest(app, &actual, &body, &media)
        .await
        .map_err(Miss::Local)?;
    // Fetched from this repository: it and what it lists may be served from it.
    link(app, t, &actual);
    declare_sizes(app, t, &body);
    let m = hot_manifest(actual, body, &media);
    app.hot.put_manifest(m.clone());
    Ok(m)
}

async fn store_manifest(app: &Registry, digest: &Digest, body: &[u8], media: &str) -> Result<()> {
    app.engine
        .put_small(body.to_vec())
        .await
        .map_err(internal)?;
    let rec = BlobRecord {
        size: body.len() as u64,
        media_type: Some(media.to_string()),
        created_unix: unix_now(),
    };
    app.storage.index.put_blob(digest, &rec).map_err(internal)?;
    let children = manifest::children(body);
    if !children.is_empty() {
        let refs = wharf_storage::RefsRecord { children };
        app.storage
            .index
            .put_refs(digest, &refs)
            .map_err(internal)?;
    }
    Ok(())
}

/// Records that `t`'s repository holds `digest` (and what it lists, for a stored manifest).
fn link(app: &Registry, t: &Target, digest: &Digest) {
    let max = app.config.registry.max_manifest_size.0;
    if let Err(e) = visibility::link(
        &app.storage,
        &t.up.name,
        t.name.as_str(),
        digest,
        max,
        visibility::Listed::Unconfirmed,
    ) {
        tracing::warn!(error = %e, "recording the repository link failed");
    }
}

/// Content is served for `t`'s (upstream, repository) only when that pair is known to hold it
/// (see `visibility`). Without a link, the upstream is asked (HEAD) in this repository; a yes
/// is remembered, so the question is asked once.
async fn ensure_linked(app: &Registry, t: &Target, digest: &Digest, kind: &str) -> Result<()> {
    let (up, repo) = (t.up.name.as_str(), t.name.as_str());
    if app.hot.is_held(up, repo, digest) {
        return Ok(());
    }
    match visibility::held(&app.storage, up, repo, digest) {
        Ok(true) => {
            app.hot.mark_held(up, repo, digest);
            return Ok(());
        }
        Ok(false) => {}
        Err(e) => return Err(internal(e)),
    }
    let (unknown, what, accept) = if kind == "blobs" {
        (ErrorCode::BlobUnknown, format!("blob {digest}"), &[][..])
    } else {
        (
            ErrorCode::ManifestUnknown,
            format!("manifest {digest}"),
            manifest::ACCEPT,
        )
    };
    let path = format!("/v2/{}/{kind}/{digest}", t.name);
    let resp =
        t.up.send(Method::HEAD, &path, accept, &t.scope())
            .await
            .map_err(|e| Miss::Failed(e).into_error(t, &what, unknown))?;
    classify(resp.status()).map_err(|m| m.into_error(t, &what, unknown))?;
    link(app, t, digest);
    Ok(())
}

/// A cached manifest, from memory or else from disk (then kept in memory).
async fn load_manifest(app: &Registry, digest: &Digest) -> Result<Option<Arc<HotManifest>>> {
    if let Some(m) = app.hot.manifest(digest) {
        return Ok(Some(m));
    }
    let max = app.config.registry.max_manifest_size.0;
    let Some(body) = app.engine.read_small(digest, max).await.map_err(internal)? else {
        return Ok(None);
    };
    let media = app
        .storage
        .index
        .get_blob(digest)
        .ok()
        .flatten()
        .and_then(|r| r.media_type)
        .unwrap_or_else(|| manifest::media_type_of_stored(&body));
    let m = hot_manifest(digest.clone(), body, &media);
    app.hot.put_manifest(m.clone());
    Ok(Some(m))
}

/// Remembers the blob sizes a manifest fetched from `t`'s repository declares, so fills of
/// them for that repository stop there (another repository's manifest cannot lower them).
fn declare_sizes(app: &Registry, t: &Target, body: &[u8]) {
    let sizes = manifest::contents(body)
        .into_iter()
        .filter_map(|(d, size)| Some((d, size?)));
    app.hot.declare(&t.up.name, t.name.as_str(), sizes);
}

fn hot_manifest(digest: Digest, body: Vec<u8>, media: &str) -> Arc<HotManifest> {
    // Media types were checked to be header-safe when stored; an odd one is served as JSON.
    let media_type =
        HeaderValue::from_str(media).unwrap_or(HeaderValue::from_static("application/json"));
    Arc::new(HotManifest::new(digest, body.into(), media_type))
}

fn manifest_response(m: &HotManifest, outcome: Outcome, head: bool) -> Response {
    let len = m.body.len();
    let mut resp = if head {
        Body::empty()
    } else {
        Body::from(m.body.clone())
    }
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, m.media_type.clone());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("docker-content-digest", m.digest_header.clone());
    h.insert(header::ETAG, m.etag.clone());
    outcome.mark(&mut resp);
    resp
}

// ---------------------------------------------------------------- blobs

/// `asked`: a HEAD, the `Range` header, and whether the client's protocol frames bodies (from
/// HTTP/1.1 on; an HTTP/1.0 client gets a blob of unknown size only verified whole).
async fn blob(
    app: &Registry,
    t: &Target,
    digest: &Digest,
    (head, range, framed): (bool, Option<&str>, bool),
) -> Result<Response> {
    let stored = app
        .engine
        .open(digest)
        .map_err(|e| blob_fill_error(t, digest, e))?;
    if let Some((file, size)) = stored {
        ensure_linked(app, t, digest, "blobs").await?;
        return blob_response(
            digest,
            BlobSource::File(file),
            (Some(size), range),
            head,
            Outcome::Hit,
            false,
        );
    }
    if head {
        return blob_head_upstream(app, t, digest).await;
    }
    let fetch = || BlobFetch {
        up: t.up.clone(),
        name: t.name.clone(),
        digest: digest.clone(),
        declared: app.hot.declared_size(&t.up.name, t.name.as_str(), digest),
        max_blob_size: app.config.registry.max_blob_size.0,
        storage: app.storage.clone(),
        metrics: app.metrics.clone(),
    };
    let span =
        || tracing::info_span!("fill", upstream = %t.up.name, repo = %t.name, digest = %digest);
    let filled = match app
        .engine
        .fill(&app.blob_flights, digest, fetch, span)
        .await
    {
        // No room on the local disk: this request gets the blob anyway, checked on the way.
        Err(FillError::NoRoom) => app.engine.pass_through(fetch()).await,
        other => other,
    };
    let mut served = filled.map_err(|e| blob_fill_error(t, digest, e))?;
    // The fill may be for another repository or upstream (a request that joined it, or a fill
    // that found the blob committed just before it started). Asked once it has started: a fill
    // from this repository has linked it by then, so no HEAD is needed.
    ensure_linked(app, t, digest, "blobs").await?;
    let mode = app.config.registry.cold_ranges;
    // Passed through unstored: a range is asked of the upstream (unverified; `upstream` mode
    // only), else the verified whole is sent. The whole's stream (and its fill permit) is let
    // go first, and opened again only if the upstream does not answer the range.
    let passing = matches!(served.source, BlobSource::Pass(_));
    if let (true, Some(size)) = (passing, served.size)
        && let Some(r) = ranges::of_pass_through(mode, range, size)
    {
        drop(served);
        let forwarded = ranges::forward(
            &app.engine,
            &t.up,
            &t.name,
            digest,
            (r, size),
            Outcome::Bypass,
            &app.metrics,
        )
        .await;
        if let Some(resp) = forwarded {
            return Ok(resp);
        }
        served = app
            .engine
            .pass_through(fetch())
            .await
            .map_err(|e| blob_fill_error(t, digest, e))?;
    }
    let range = if passing { None } else { range };
    let mut unverified_tail = false;
    if range.is_some() && served.fill_written().is_some() {
        if let (Some(r), Some(size)) = (ranges::ahead_of_fill(mode, &served, range), served.size)
            && let Some(resp) = ranges::forward(
                &app.engine,
                &t.up,
                &t.name,
                digest,
                (r, size),
                Outcome::Miss,
                &app.metrics,
            )
            .await
        {
            return Ok(resp);
        }
        app.metrics.count_cold_range(false);
        // From the fill: in `upstream` mode a range does not wait for the whole blob's digest.
        unverified_tail = mode == ColdRanges::Upstream;
    }
    if !framed && served.size.is_none() {
        let outcome = served.outcome;
        let (file, size) = served
            .complete()
            .await
            .map_err(|e| blob_fill_error(t, digest, e))?;
        let source = BlobSource::File(file);
        return blob_response(digest, source, (Some(size), range), false, outcome, false);
    }
    blob_response(
        digest,
        served.source,
        (served.size, range),
        false,
        served.outcome,
        unverified_tail,
    )
}

/// Why a blob could not be filled, as the client is told.
fn blob_fill_error(t: &Target, digest: &Digest, e: FillError) -> RegistryError {
    let what = format!("blob {digest}");
    match e {
        FillError::NoRoom => RegistryError::new(
            ErrorCode::Unavailable,
            "the local disk is full (cache.min_free); retry later",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("30")),
        FillError::NotFound => Miss::NotFound.into_error(t, &what, ErrorCode::BlobUnknown),
        FillError::Offline => {
            Miss::Failed(UpstreamError::Offline).into_error(t, &what, ErrorCode::BlobUnknown)
        }
        FillError::Upstream(m) => RegistryError::new(
            ErrorCode::BadGateway,
            format!(
                "fetching blob {digest} from upstream {} failed: {m}",
                t.up.name
            ),
        ),
        FillError::Unavailable(m) => RegistryError::new(
            ErrorCode::Unavailable,
            format!("blob {digest} is not cached and {m}"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("10")),
        FillError::Busy => busy(),
        FillError::Local => RegistryError::new(
            ErrorCode::Unknown,
            "local storage error; see the server log",
        ),
    }
}

/// A blob answer: the whole of `source` or the requested range of it. `unverified_tail`: a
/// range from a fill goes out whole as soon as it is written, not after the blob's digest.
fn blob_response(
    digest: &Digest,
    source: BlobSource,
    (size, range): (Option<u64>, Option<&str>),
    head: bool,
    outcome: Outcome,
    unverified_tail: bool,
) -> Result<Response> {
    let window = match size {
        Some(size) => match ByteRange::parse(range, size) {
            Ok(r) => r,
            Err(()) => {
                return Err(RegistryError::new(
                    ErrorCode::RangeInvalid,
                    format!("range not satisfiable for a blob of {size} bytes"),
                )
                .with_header(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).map_err(internal)?,
                ));
            }
        },
        None => None,
    };
    let (start, end) = match (window, size) {
        (Some(r), _) => (r.start, Some(r.end)),
        (None, s) => (0, s),
    };
    let mut sendable = None;
    let body = if head {
        Body::empty()
    } else {
        let stream = match source {
            BlobSource::File(f) => BlobBody::from_file(f, start, end.unwrap_or(start)),
            BlobSource::Fill(rx) if unverified_tail && window.is_some() => {
                BlobBody::from_fill(rx, start, end).without_holding_back()
            }
            BlobSource::Fill(rx) => BlobBody::from_fill(rx, start, end),
            BlobSource::Pass(stream) => {
                let mut resp = Body::from_stream(stream).into_response();
                blob_headers(&mut resp, digest, end.map(|e| e - start), outcome);
                return Ok(resp);
            }
        };
        sendable = Some(Sendfile(stream.clone()));
        Body::from_stream(stream.into_stream())
    };
    let mut resp = body.into_response();
    if let Some(s) = sendable {
        resp.extensions_mut().insert(s);
    }
    if let (Some(r), Some(size)) = (window, size) {
        if unverified_tail {
            set(resp.headers_mut(), ranges::UNVERIFIED, "fill-range");
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        set(
            resp.headers_mut(),
            header::CONTENT_RANGE,
            &format!("bytes {}-{}/{size}", r.start, r.end - 1),
        );
    }
    blob_headers(&mut resp, digest, end.map(|e| e - start), outcome);
    Ok(resp)
}

fn blob_headers(resp: &mut Response, digest: &Digest, len: Option<u64>, outcome: Outcome) {
    let h = resp.headers_mut();
    if let Some(len) = len {
        set(h, header::CONTENT_LENGTH, &len.to_string());
    }
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    set(h, "docker-content-digest", digest.as_str());
    set(h, header::ETAG, &format!("\"{digest}\""));
    outcome.mark(resp);
}

/// HEAD of a blob not in cache: ask upstream, fetch nothing.
async fn blob_head_upstream(app: &Registry, t: &Target, digest: &Digest) -> Result<Response> {
    let path = format!("/v2/{}/blobs/{digest}", t.name);
    let what = format!("blob {digest}");
    let resp =
        t.up.send(Method::HEAD, &path, &[], &t.scope())
            .await
            .map_err(|e| Miss::Failed(e).into_error(t, &what, ErrorCode::BlobUnknown))?;
    classify(resp.status()).map_err(|m| m.into_error(t, &what, ErrorCode::BlobUnknown))?;
    link(app, t, digest);
    let mut out = Body::empty().into_response();
    let h = out.headers_mut();
    if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, len.clone());
    }
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    set(h, "docker-content-digest", digest.as_str());
    Outcome::Miss.mark(&mut out);
    Ok(out)
}

// ---------------------------------------------------------------- tags/list

async fn tags_list(
    app: &Registry,
    t: &Target,
    client_name: &RepoName,
    query: Option<&str>,
) -> Result<Response> {
    let n = match query_param(query, "n") {
        None => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            RegistryError::new(ErrorCode::SizeInvalid, format!("n={s:?} is not a number"))
        })?),
    };
    let last = query_param(query, "last").filter(|l| !l.is_empty());
    let n_eff = n.map(|n| n.min(MAX_PAGE));
    let mut path = format!("/v2/{}/tags/list", t.name);
    let mut q = Vec::new();
    if let Some(n) = n_eff {
        q.push(format!("n={n}"));
    }
    if let Some(l) = &last {
        q.push(format!("last={}", encode_query(l)));
    }
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let what = "the tag list";
    let whole = n.is_none() && last.is_none();
    // A tag list is always asked upstream (TTL zero); the kept full list answers when it fails.
    let cached = app
        .storage
        .index
        .get_tag_list(&t.up.name, t.name.as_str())
        .map_err(internal)?
        .map(|rec| Cached {
            value: (rec.tags, true),
            learned_unix: rec.fetched_unix,
        });
    let fetch = async {
        let (tags, more) = fetch_tags(t, &path).await?;
        if whole {
            let rec = TagListRecord {
                tags: tags.clone(),
                fetched_unix: unix_now(),
            };
            app.storage
                .index
                .put_tag_list(&t.up.name, t.name.as_str(), &rec)
                .map_err(|e| Miss::Local(internal(e)))?;
        }
        Ok(((tags, more), Outcome::Miss))
    };
    let key = format!("{}/{} tags", t.up.name, t.name);
    let stale_if = |e: &Miss| e.serves_stale(&app.config.registry.serve_stale_on);
    // The kept whole list answers within the tag TTL, and when upstream fails.
    let ((tags, more), outcome) = revalidate(
        &key,
        cached,
        Some(tag_ttl(app, t)),
        unix_now(),
        fetch,
        stale_if,
    )
    .await
    .map_err(|m| m.into_error(t, what, ErrorCode::NameUnknown))?;
    // A kept list is the whole list: paginated here.
    let (tags, more) = if outcome == Outcome::Miss {
        (tags, more)
    } else {
        paginate(tags, last.as_deref(), n_eff)
    };
    let body = serde_json::json!({ "name": client_name.as_str(), "tags": tags }).to_string();
    let mut resp = (StatusCode::OK, body).into_response();
    outcome.mark(&mut resp);
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/json");
    if let (true, Some(n), Some(last_tag)) = (more, n_eff, tags.last()) {
        let mut link = format!(
            "</v2/{client_name}/tags/list?n={n}&last={}",
            encode_query(last_tag)
        );
        if let Some(ns) = &t.ns {
            link.push_str(&format!("&ns={}", encode_query(ns)));
        }
        link.push_str(">; rel=\"next\"");
        set(h, header::LINK, &link);
    }
    Ok(resp)
}

/// Tags from upstream and whether it announced a next page.
async fn fetch_tags(t: &Target, path: &str) -> std::result::Result<(Vec<String>, bool), Miss> {
    let resp =
        t.up.send(Method::GET, path, &["application/json"], &t.scope())
            .await?;
    classify(resp.status())?;
    let more = resp.headers().contains_key(header::LINK);
    let url = resp.url().clone();
    let body = read_limited(resp, MAX_TAG_LIST_BYTES, &url).await?;
    #[derive(serde::Deserialize)]
    struct TagList {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let list: TagList = serde_json::from_slice(&body).map_err(|e| {
        Miss::Failed(UpstreamError::Protocol(format!(
            "tag list is not valid JSON: {e}"
        )))
    })?;
    let tags: Vec<String> = list
        .tags
        .unwrap_or_default()
        .into_iter()
        .filter(|t| Tag::parse(t).is_ok())
        .collect();
    Ok((tags, more))
}

/// Lexically ordered tags after `last`, at most `n`, and whether more remain.
fn paginate(mut tags: Vec<String>, last: Option<&str>, n: Option<usize>) -> (Vec<String>, bool) {
    tags.sort();
    tags.dedup();
    if let Some(l) = last {
        tags.retain(|t| t.as_str() > l);
    }
    match n {
        Some(n) if tags.len() > n => {
            tags.truncate(n);
            (tags, true)
        }
        _ => (tags, false),
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------- helpers

fn set(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn busy() -> RegistryError {
    RegistryError::new(
        ErrorCode::Unavailable,
        "wharf is busy fetching other blobs (server.max_concurrent_fills); retry shortly",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
}

/// A local failure: logged in full, answered without detail.
pub(super) fn internal(e: impl std::fmt::Display) -> RegistryError {
    tracing::error!(error = %e, "internal error");
    RegistryError::new(ErrorCode::Unknown, "internal error; see the server log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_is_lexical_and_bounded() {
        let tags = ["b", "a", "c", "d"].map(String::from).to_vec();
        assert_eq!(
            paginate(tags.clone(), None, Some(2)),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(tags.clone(), Some("b"), Some(5)),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(tags, Some("b"), Some(0)), (vec![], true));
    }
}
