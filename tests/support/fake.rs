//! A fake upstream registry on port 0 that counts requests and can be told to misbehave (fail,
//! truncate, corrupt, be slow, demand tokens, redirect), and the digest and byte helpers the
//! tests build content with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes.
pub fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores `body` under its digest in `blobs`; returns the digest.
pub fn insert_blob(blobs: &Mutex<HashMap<String, Vec<u8>>>, body: &[u8]) -> String {
    let d = sha256(body);
    blobs.lock().unwrap().insert(d.clone(), body.to_vec());
    d
}

/// Serves `app` on `addr` (port 0 for any) until the task is aborted.
pub async fn serve_router(
    addr: &str,
    app: axum::Router,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum BlobMode {
    #[default]
    Normal,
    /// Send this many bytes, then end the body early (Content-Length still the full size).
    Truncate(usize),
    /// Same length, one byte flipped.
    Corrupt,
    /// Sleep between 64 KiB chunks.
    Slow(Duration),
    /// 307 to this base URL (the path is kept).
    Redirect(String),
    /// The blob (one byte flipped at `corrupt_at`, if any) in 64 KiB chunks without a
    /// `Content-Length`, as a chunked upstream sends it.
    Chunked { corrupt_at: Option<usize> },
    /// Junk without a Content-Length, 64 KiB at a time, until the client stops reading
    /// (counted in `FakeState::endless_sent`).
    Endless,
}

/// How blob GETs with a `Range` header are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RangeAnswer {
    /// As if there were no `Range` (a valid answer: 200 and the whole blob).
    #[default]
    Ignore,
    /// 206 with the slice, at once (whatever `BlobMode` slows down).
    Exact,
    /// 206 with the slice but a `Content-Range` naming a total one byte larger.
    WrongTotal,
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
}

/// Answers a blob GET that carries a `Range` header, given the blob and the range's first byte;
/// takes precedence over `RangeAnswer` (a hostile upstream's continuation).
pub type RangeHook =
    Arc<dyn Fn(Vec<u8>, usize) -> futures_util::future::BoxFuture<'static, Response> + Send + Sync>;

/// Referrers list bodies by (repo, subject digest).
pub type ReferrerLists = HashMap<(String, String), Vec<u8>>;

/// A stored manifest: body and media type.
pub type Stored = (Vec<u8>, String);

#[derive(Default)]
pub struct FakeState {
    /// (repo, reference) -> (body, media type); references are tags and digests.
    pub manifests: Mutex<HashMap<(String, String), Stored>>,
    pub blobs: Mutex<HashMap<String, Vec<u8>>>,
    pub tags: Mutex<HashMap<String, Vec<String>>>,
    pub seen: Mutex<Vec<Seen>>,
    pub blob_mode: Mutex<BlobMode>,
    /// Answer every /v2 request with this status.
    pub fail_with: Mutex<Option<u16>>,
    /// Demand `Authorization: Bearer good-token` on /v2 requests.
    pub require_token: Mutex<bool>,
    /// Token realm to advertise (default: this server's /token).
    pub realm: Mutex<Option<String>>,
    /// Omit Docker-Content-Digest from manifest HEAD answers.
    pub omit_digest_header: Mutex<bool>,
    /// Override the Content-Type served with manifests.
    pub manifest_content_type: Mutex<Option<String>>,
    /// Repositories this upstream says do not exist (404 for everything under them).
    pub hidden_repos: Mutex<Vec<String>>,
    /// Never answer (a black-holed upstream): requests hang until the client gives up.
    pub hang: std::sync::atomic::AtomicBool,
    pub token_requests: AtomicUsize,
    pub connections: AtomicUsize,
    /// Bytes of `BlobMode::Endless` bodies handed to the connection.
    pub endless_sent: std::sync::atomic::AtomicU64,
    /// `(limit, remaining)` sent as Docker Hub's `RateLimit-*` headers on every answer.
    pub rate_limit: Mutex<Option<(u64, u64)>>,
    pub range_answer: Mutex<RangeAnswer>,
    /// A `Content-Length` to claim for whole blobs instead of the real one (a lying upstream).
    pub claimed_len: Mutex<Option<usize>>,
    /// The OCI referrers API: `None`, none (404, as docker-registry 2.8); else the list body per
    /// (repo, subject digest), an empty index for others.
    pub referrers: Mutex<Option<ReferrerLists>>,
    /// Blob GETs that carried a `Range` header.
    pub range_requests: AtomicUsize,
    /// When set, answers every blob GET with a `Range` header.
    pub range_hook: Mutex<Option<RangeHook>>,
    /// A pause before each chunk of a `BlobMode::Chunked` body.
    pub chunk_delay: Mutex<Option<Duration>>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        // Stop accepting and cut every open connection: the upstream is gone.
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> FakeRegistry {
        let state = Arc::new(FakeState::default());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(fake_handler)
            .with_state(state.clone());
        let st = state.clone();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            // Count TCP connections, so tests can prove nothing connected.
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let svc = app.clone();
                let handle = tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper_util::service::TowerToHyperService::new(svc);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                });
                conns2.lock().unwrap().push(handle);
            }
        });
        FakeRegistry {
            addr,
            state,
            task,
            conns,
        }
    }

    /// The same fake on a Unix socket at `path` (`addr` is unspecified): an upstream that
    /// listens only on a socket, `url = "unix://<path>"`.
    pub async fn start_unix(path: &std::path::Path) -> FakeRegistry {
        let state = Arc::new(FakeState::default());
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let app = axum::Router::new()
            .fallback(fake_handler)
            .with_state(state.clone());
        let st = state.clone();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let svc = app.clone();
                let handle = tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper_util::service::TowerToHyperService::new(svc);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                });
                conns2.lock().unwrap().push(handle);
            }
        });
        FakeRegistry {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            state,
            task,
            conns,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a manifest under its digest and (optionally) a tag; returns the digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, body: &[u8], media: &str) -> String {
        let d = sha256(body);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert((repo.into(), d.clone()), (body.to_vec(), media.into()));
        if let Some(t) = tag {
            m.insert((repo.into(), t.into()), (body.to_vec(), media.into()));
            self.state
                .tags
                .lock()
                .unwrap()
                .entry(repo.into())
                .or_default()
                .push(t.into());
        }
        d
    }

    /// An artifact manifest (a signature, an SBOM) whose subject is `subject`, stored by digest;
    /// returns its descriptor as a referrers list names it.
    pub fn put_referrer(&self, repo: &str, subject: &str, artifact_type: &str) -> String {
        let blob = self.put_blob(artifact_type.as_bytes());
        self.put_blob(b"{}");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{blob}","size":{}}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":1}}}}"#,
            artifact_type.len()
        );
        let d = self.put_manifest(
            repo,
            None,
            body.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{},"artifactType":"{artifact_type}"}}"#,
            body.len()
        )
    }

    pub fn put_blob(&self, body: &[u8]) -> String {
        insert_blob(&self.state.blobs, body)
    }

    /// A minimal image: config + layers; returns (manifest digest, manifest body).
    pub fn put_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> (String, Vec<u8>) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cd = self.put_blob(config);
        let layer_json: Vec<String> = layers
            .iter()
            .map(|l| {
                let d = self.put_blob(l);
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                    l.len()
                )
            })
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layer_json.join(",")
        );
        let d = self.put_manifest(
            repo,
            Some(tag),
            body.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        (d, body.into_bytes())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose method and path match.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method.as_str() == method && s.path.contains(path_contains))
            .count()
    }

    pub fn total(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn set_blob_mode(&self, m: BlobMode) {
        *self.state.blob_mode.lock().unwrap() = m;
    }

    /// Blobs answer 307 to `http://<authority>` (the path kept).
    pub fn redirect_to(&self, authority: impl std::fmt::Display) {
        self.set_blob_mode(BlobMode::Redirect(format!("http://{authority}")));
    }

    pub fn fail_with(&self, status: Option<u16>) {
        *self.state.fail_with.lock().unwrap() = status;
    }
}

async fn fake_handler(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let rate = *st.rate_limit.lock().unwrap();
    let mut resp = fake_answer(st, req).await;
    if let Some((limit, remaining)) = rate {
        let h = resp.headers_mut();
        h.insert(
            "ratelimit-limit",
            format!("{limit};w=21600").parse().unwrap(),
        );
        h.insert(
            "ratelimit-remaining",
            format!("{remaining};w=21600").parse().unwrap(),
        );
    }
    resp
}

async fn fake_answer(st: Arc<FakeState>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: HeaderMap = req.headers().clone();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if st.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    st.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        },
        authorization: authorization.clone(),
    });
    if path == "/token" {
        st.token_requests.fetch_add(1, Ordering::SeqCst);
        return (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"token":"good-token","expires_in":300}"#,
        )
            .into_response();
    }
    // `/final/<path>`: the end of a redirect chain, served whatever the blob mode,
    // without auth (like a CDN).
    if let Some(fin) = path.strip_prefix("/final/")
        && let Some((_repo, digest)) = fin.rsplit_once("/blobs/")
    {
        return match st.blobs.lock().unwrap().get(digest).cloned() {
            Some(b) => b.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if let Some(code) = *st.fail_with.lock().unwrap() {
        let mut r = (StatusCode::from_u16(code).unwrap(), "upstream says no").into_response();
        if code == 429 {
            r.headers_mut().insert("retry-after", "60".parse().unwrap());
        }
        return r;
    }
    if *st.require_token.lock().unwrap() && authorization.as_deref() != Some("Bearer good-token") {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let realm = st
            .realm
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| format!("http://{host}/token"));
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{realm}",service="fake",scope="repository:x:pull""#),
            )],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}"#,
        )
            .into_response();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if rest.is_empty() {
        return "{}".into_response();
    }
    if st
        .hidden_repos
        .lock()
        .unwrap()
        .iter()
        .any(|r| rest.starts_with(&format!("{r}/")))
    {
        return (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#,
        )
            .into_response();
    }
    if let Some((repo, subject)) = rest.rsplit_once("/referrers/") {
        let Some(lists) = st.referrers.lock().unwrap().clone() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let body = lists
            .get(&(repo.to_string(), subject.to_string()))
            .cloned()
            .unwrap_or_else(|| {
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec()
            });
        return (
            [(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.index.v1+json",
            )],
            body,
        )
            .into_response();
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let found = st
            .manifests
            .lock()
            .unwrap()
            .get(&(repo.to_string(), reference.to_string()))
            .cloned();
        let Some((body, media)) = found else {
            return (
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
            )
                .into_response();
        };
        let media = st
            .manifest_content_type
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(media);
        let mut resp = if method == Method::HEAD {
            Response::new(Body::empty())
        } else {
            Response::new(Body::from(body.clone()))
        };
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, media.parse().unwrap());
        h.insert(header::CONTENT_LENGTH, body.len().into());
        if !*st.omit_digest_header.lock().unwrap() {
            h.insert("docker-content-digest", sha256(&body).parse().unwrap());
        }
        return resp;
    }
    if let Some((_repo, digest)) = rest.rsplit_once("/blobs/") {
        let Some(body) = st.blobs.lock().unwrap().get(digest).cloned() else {
            return (
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#,
            )
                .into_response();
        };
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| {
                let last = if b.is_empty() {
                    usize::MAX
                } else {
                    b.parse::<usize>().ok()?
                };
                Some((a.parse::<usize>().ok()?, last))
            });
        if method == Method::GET && headers.contains_key(header::RANGE) {
            st.range_requests.fetch_add(1, Ordering::SeqCst);
        }
        let hook = st.range_hook.lock().unwrap().clone();
        if let (Some(hook), Some((a, _)), true) = (hook, range, method == Method::GET) {
            return hook(body, a).await;
        }
        let answer = *st.range_answer.lock().unwrap();
        if let (Some((a, b)), true) = (
            range,
            answer != RangeAnswer::Ignore && method == Method::GET,
        ) {
            let b = b.min(body.len().saturating_sub(1));
            let total = body.len() + usize::from(answer == RangeAnswer::WrongTotal);
            let slice = body.get(a..=b).unwrap_or_default().to_vec();
            let mut resp = Response::new(Body::from(slice));
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{total}").parse().unwrap(),
            );
            return resp;
        }
        let mode = st.blob_mode.lock().unwrap().clone();
        let len = body.len();
        let endless = matches!(mode, BlobMode::Endless | BlobMode::Chunked { .. });
        let body_out: Body = match mode {
            BlobMode::Redirect(base) => {
                return (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("{base}{path}?sig=secret"))],
                )
                    .into_response();
            }
            _ if method == Method::HEAD => Body::empty(),
            BlobMode::Normal => Body::from(body),
            BlobMode::Corrupt => {
                let mut b = body;
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                Body::from(b)
            }
            BlobMode::Truncate(n) => {
                let part = Bytes::from(body[..n.min(len)].to_vec());
                // Let the headers and the first part go out, then cut the body.
                let s = futures_util::stream::unfold(0u8, move |step| {
                    let part = part.clone();
                    async move {
                        match step {
                            0 => Some((Ok::<_, std::io::Error>(part), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                Some((Err(std::io::Error::other("cut")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Body::from_stream(s)
            }
            BlobMode::Endless => {
                let st = st.clone();
                let s = futures_util::stream::repeat_with(move || {
                    st.endless_sent.fetch_add(64 * 1024, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Bytes::from(vec![0x5a; 64 * 1024]))
                });
                Body::from_stream(s)
            }
            BlobMode::Chunked { corrupt_at } => {
                let mut b = body;
                if let Some(at) = corrupt_at.filter(|&at| at < b.len()) {
                    b[at] ^= 0xff;
                }
                let chunks: Vec<Result<Bytes, std::io::Error>> = b
                    .chunks(64 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let delay = *st.chunk_delay.lock().unwrap();
                match delay {
                    None => Body::from_stream(futures_util::stream::iter(chunks)),
                    Some(delay) => Body::from_stream(futures_util::stream::unfold(
                        chunks.into_iter(),
                        move |mut it| async move {
                            let c = it.next()?;
                            tokio::time::sleep(delay).await;
                            Some((c, it))
                        },
                    )),
                }
            }
            BlobMode::Slow(delay) => {
                let chunks: Vec<Bytes> =
                    body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
                let s =
                    futures_util::stream::unfold(chunks.into_iter(), move |mut it| async move {
                        let c = it.next()?;
                        tokio::time::sleep(delay).await;
                        Some((Ok::<_, std::io::Error>(c), it))
                    });
                Body::from_stream(s)
            }
        };
        let mut resp = Response::new(body_out);
        if !endless {
            let claimed = st.claimed_len.lock().unwrap().unwrap_or(len);
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, claimed.into());
        }
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
        return resp;
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let Some(mut tags) = st.tags.lock().unwrap().get(repo).cloned() else {
            return (
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#,
            )
                .into_response();
        };
        tags.sort();
        let mut n = None;
        let mut last = None;
        for p in query.split('&') {
            if let Some(v) = p.strip_prefix("n=") {
                n = v.parse::<usize>().ok();
            }
            if let Some(v) = p.strip_prefix("last=") {
                last = Some(v.to_string());
            }
        }
        if let Some(l) = &last {
            tags.retain(|t| t > l);
        }
        let mut more = false;
        if let Some(n) = n
            && tags.len() > n
        {
            tags.truncate(n);
            more = true;
        }
        let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
        let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        if more {
            resp.headers_mut().insert(
                header::LINK,
                format!(
                    "</v2/{repo}/tags/list?n={}&last={}>; rel=\"next\"",
                    n.unwrap(),
                    tags.last().unwrap()
                )
                .parse()
                .unwrap(),
            );
        }
        return resp;
    }
    StatusCode::NOT_FOUND.into_response()
}
