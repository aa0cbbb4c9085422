//! How the registry fills one blob for the cache engine: a GET of `/v2/<name>/blobs/<digest>`
//! on the chosen upstream, bounded by the size a manifest declared (else
//! `registry.max_blob_size`), checked against the digest it is named by.

use std::sync::Arc;

use http::Method;
use wharf_storage::{BlobRecord, Digest, Index, Storage, StorageError, unix_now};

use super::routes::RepoName;
use crate::cache::{Fetch, FillError, Incoming};
use crate::metrics::Metrics;
use crate::upstream::client::into_incoming;
use crate::upstream::{UpstreamClient, UpstreamError};

#[derive(Clone)]
pub struct BlobFetch {
    pub up: Arc<UpstreamClient>,
    pub name: RepoName,
    pub digest: Digest,
    /// The size a manifest declared for it, if one was seen.
    pub declared: Option<u64>,
    pub max_blob_size: u64,
    pub storage: Storage,
    pub metrics: Arc<Metrics>,
}

impl BlobFetch {
    fn link(&self) {
        if let Err(e) = self
            .storage
            .index
            .put_link(&self.up.name, self.name.as_str(), &self.digest)
        {
            tracing::warn!(error = %e, "recording the repository link failed");
        }
    }
}

fn upstream_err(e: UpstreamError) -> FillError {
    if matches!(e, UpstreamError::Down(_)) {
        return FillError::Unavailable(e.summary());
    }
    tracing::warn!(error = %e, "upstream failed");
    FillError::Upstream(e.summary())
}

/// The total size in a `Content-Range: bytes <offset>-<last>/<total>` that continues a blob
/// from `offset` to its end; `None` for anything else.
fn rest_of(h: &http::HeaderMap, offset: u64) -> Option<u64> {
    let v = h.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total): (u64, u64, u64) =
        (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first == offset && last.checked_add(1) == Some(total)).then_some(total)
}

impl Fetch for BlobFetch {
    /// A range from `offset` to the end, when the upstream answers one exactly; else the whole
    /// blob again with its first `offset` bytes skipped.
    async fn open_at(&mut self, offset: u64) -> Result<Option<Incoming>, FillError> {
        if offset == 0 {
            return self.open().await;
        }
        let path = format!("/v2/{}/blobs/{}", self.name, self.digest);
        let scope = format!("repository:{}:pull", self.name);
        let mut headers = http::HeaderMap::new();
        let range = http::HeaderValue::from_str(&format!("bytes={offset}-"))
            .map_err(|_| FillError::Upstream("bad range".into()))?;
        headers.insert(http::header::RANGE, range);
        let resp = self
            .up
            .send_with(Method::GET, &path, headers, &scope)
            .await
            .map_err(upstream_err)?;
        match resp.status().as_u16() {
            206 => match rest_of(resp.headers(), offset) {
                Some(total) => {
                    let mut incoming = into_incoming(resp);
                    incoming.len = Some(total);
                    Ok(Some(incoming))
                }
                None => Err(FillError::Upstream(
                    "the upstream answered another range than asked".into(),
                )),
            },
            200 => Ok(Some(crate::cache::engine::skip_prefix(
                into_incoming(resp),
                offset,
            ))),
            404 => Ok(None),
            s => Err(upstream_err(UpstreamError::Status { status: s })),
        }
    }

    async fn open(&mut self) -> Result<Option<Incoming>, FillError> {
        let path = format!("/v2/{}/blobs/{}", self.name, self.digest);
        let scope = format!("repository:{}:pull", self.name);
        let resp = self
            .up
            .send(Method::GET, &path, &[], &scope)
            .await
            .map_err(upstream_err)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => return Err(upstream_err(UpstreamError::Status { status: s })),
        }
        // The repository has the blob: requests for it may join this fill (`ensure_linked`).
        self.link();
        Ok(Some(into_incoming(resp)))
    }

    fn expected(&self) -> Option<&Digest> {
        Some(&self.digest)
    }

    fn peer_path(&self) -> Option<String> {
        Some(format!(
            "/v2/{}/blobs/{}?ns={}",
            self.name, self.digest, self.up.name
        ))
    }

    /// The owner replica answered for this repository: it checked that the pair holds it.
    fn found_at_peer(&mut self) {
        self.link();
    }

    fn limit(&self) -> u64 {
        // A manifest may declare anything: it can lower the bound, never lift it.
        self.declared
            .map_or(self.max_blob_size, |d| d.min(self.max_blob_size))
    }

    fn too_large(&self, limit: u64) -> FillError {
        let bound = if self.declared.is_some_and(|d| d <= self.max_blob_size) {
            "its manifest declares"
        } else {
            "registry.max_blob_size"
        };
        tracing::error!(
            limit,
            "upstream sent more than {bound}; fill stopped, nothing stored"
        );
        FillError::Upstream(format!("blob larger than {bound} ({limit} bytes)"))
    }

    fn record(&self, index: &Index, digest: &Digest, size: u64) -> Result<(), StorageError> {
        let rec = BlobRecord {
            size,
            media_type: None,
            created_unix: unix_now(),
        };
        index.put_blob(digest, &rec)
    }

    fn committed(&self, size: u64, shared: bool) {
        if !shared {
            self.metrics.add_upstream_bytes(&self.up.name, size);
        }
    }

    fn rejected(&self, kind: &'static str) {
        self.metrics.verification_failed(kind);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;
    use crate::cache::{Engine, Flights};
    use crate::config::Config;
    use crate::upstream::EgressPolicy;

    const BODY: &[u8] = b"layer bytes, twenty-nine long";

    /// A fetch of `BODY` from `team/app` on `url`, with its own store.
    fn fetch(url: &str, declared: Option<u64>, max: u64) -> (BlobFetch, tempfile::TempDir) {
        fetch_with(url, declared, max, false)
    }

    fn fetch_with(
        url: &str,
        declared: Option<u64>,
        max: u64,
        offline: bool,
    ) -> (BlobFetch, tempfile::TempDir) {
        let config: Config = toml::from_str(&format!(
            "[registry]\ndefault_upstream = \"up.test\"\n[[registry.upstream]]\n\
             name = \"up.test\"\nurl = \"{url}\"\n[egress]\nallow = [\"127.0.0.1\"]\n"
        ))
        .expect("test config");
        let policy = Arc::new(EgressPolicy::from_config(&config.egress).expect("policy"));
        let up = UpstreamClient::new(
            &config.registry.upstreams[0],
            None,
            &config.egress,
            policy,
            offline,
        )
        .expect("client");
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let f = BlobFetch {
            up: Arc::new(up),
            name: RepoName::parse("team/app").expect("name"),
            digest: Digest::of(BODY),
            declared,
            max_blob_size: max,
            storage,
            metrics: Arc::default(),
        };
        (f, dir)
    }

    /// A registry on 127.0.0.1:0: `team/app` has `BODY`, `team/broken` answers 500, everything
    /// else is 404. Returns its base URL and a count of blob requests.
    async fn fake() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = hits.clone();
        let good = format!("/v2/team/app/blobs/{}", Digest::of(BODY));
        let app = axum::Router::new().fallback(move |uri: http::Uri| {
            let (good, seen) = (good.clone(), seen.clone());
            async move {
                if uri.path().contains("/blobs/") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                match uri.path() {
                    "/v2/" => (http::StatusCode::OK, Vec::new()),
                    p if p == good => (http::StatusCode::OK, BODY.to_vec()),
                    p if p.starts_with("/v2/team/broken/") => {
                        (http::StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
                    }
                    _ => (http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    async fn read(incoming: Incoming) -> Vec<u8> {
        let mut body = incoming.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    fn linked(f: &BlobFetch) -> bool {
        f.storage
            .index
            .has_link("up.test", f.name.as_str(), &f.digest)
            .expect("index")
    }

    fn message(e: FillError) -> String {
        match e {
            FillError::Upstream(m) => m,
            other => panic!("not an upstream failure: {other:?}"),
        }
    }

    #[test]
    fn a_declared_size_lowers_the_limit_never_lifts_it() {
        let url = "http://127.0.0.1:9";
        assert_eq!(fetch(url, None, 1000).0.limit(), 1000);
        assert_eq!(fetch(url, Some(29), 1000).0.limit(), 29);
        assert_eq!(fetch(url, Some(5000), 1000).0.limit(), 1000);
        assert_eq!(fetch(url, None, 1000).0.expected(), Some(&Digest::of(BODY)));
    }

    #[test]
    fn too_large_names_the_bound_that_stopped_it() {
        let url = "http://127.0.0.1:9";
        let (f, _d) = fetch(url, Some(29), 1000);
        assert_eq!(
            message(f.too_large(29)),
            "blob larger than its manifest declares (29 bytes)"
        );
        for declared in [None, Some(5000)] {
            let (f, _d) = fetch(url, declared, 1000);
            assert_eq!(
                message(f.too_large(1000)),
                "blob larger than registry.max_blob_size (1000 bytes)"
            );
        }
    }

    #[test]
    fn record_writes_the_blob_record_and_committed_counts_the_bytes() {
        let (f, _d) = fetch("http://127.0.0.1:9", None, 1000);
        let before = unix_now();
        f.record(&f.storage.index, &f.digest, 29).expect("record");
        let rec = f
            .storage
            .index
            .get_blob(&f.digest)
            .expect("index")
            .expect("a blob record");
        assert_eq!((rec.size, rec.media_type), (29, None));
        assert!(rec.created_unix >= before);
        // The link is the fetch's (written on a 200), not the record's.
        assert!(!linked(&f));
        f.committed(29, false);
        f.committed(1, false);
        // Bytes from the shared tier are not the upstream's.
        f.committed(1000, true);
        assert_eq!(f.metrics.upstream_bytes().get("up.test"), Some(&30));
    }

    #[tokio::test]
    async fn open_links_the_repository_on_200_only() {
        let (url, _hits) = fake().await;
        let (mut f, _d) = fetch(&url, None, 1000);
        let incoming = f.open().await.expect("opened").expect("found");
        assert!(linked(&f), "a 200 records the repository link");
        assert_eq!(read(incoming).await, BODY);

        let (mut f, _d) = fetch(&url, None, 1000);
        f.digest = Digest::of(b"not there");
        assert!(f.open().await.expect("an answer").is_none(), "404 is None");
        assert!(!linked(&f));

        let (mut f, _d) = fetch(&url, None, 1000);
        f.name = RepoName::parse("team/broken").expect("name");
        let e = message(f.open().await.err().expect("500 is a failure"));
        assert!(e.contains("500"), "{e}");
        assert!(!linked(&f));
    }

    #[tokio::test]
    async fn offline_or_refused_egress_fails_without_a_request() {
        let (url, hits) = fake().await;
        let (mut f, _d) = fetch_with(&url, None, 1000, true);
        let e = message(f.open().await.err().expect("offline fails"));
        assert!(e.contains("offline"), "{e}");
        // Port 9 on localhost: egress allows 127.0.0.1 only, so this name is refused.
        let (mut f, _d) = fetch("http://localhost:9", None, 1000);
        let e = message(f.open().await.err().expect("refused"));
        assert!(e.contains("egress"), "{e}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!linked(&f));
    }

    async fn fill(f: BlobFetch) -> Result<Vec<u8>, String> {
        let engine = Engine::new(f.storage.clone(), 2, false);
        let key = f.digest.clone();
        let served = engine
            .fill(&Flights::default(), &key, || f, tracing::Span::none)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut s = served.into_stream();
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        // Clients get their last bytes before the commit; wait for it.
        engine
            .finish_fills(std::time::Duration::from_secs(10))
            .await;
        Ok(out)
    }

    #[tokio::test]
    async fn through_the_engine_a_blob_is_stored_recorded_and_linked() {
        let (url, _hits) = fake().await;
        let (f, _d) = fetch(&url, Some(BODY.len() as u64), 1000);
        let (storage, digest) = (f.storage.clone(), f.digest.clone());
        assert_eq!(fill(f).await.expect("filled"), BODY);
        assert!(storage.blobs.open_blob(&digest).is_ok());
        let rec = storage.index.get_blob(&digest).expect("index");
        assert_eq!(rec.map(|r| r.size), Some(BODY.len() as u64));
        assert!(
            storage
                .index
                .has_link("up.test", "team/app", &digest)
                .expect("index")
        );
    }

    #[tokio::test]
    async fn through_the_engine_more_than_declared_is_refused_and_nothing_stored() {
        let (url, _hits) = fake().await;
        let (f, _d) = fetch(&url, Some(10), 1000);
        let (storage, digest) = (f.storage.clone(), f.digest.clone());
        let e = fill(f)
            .await
            .expect_err("a short manifest size stops the fill");
        assert!(
            e.contains("blob larger than its manifest declares (10 bytes)"),
            "{e}"
        );
        assert!(storage.blobs.open_blob(&digest).is_err());
        assert!(storage.index.get_blob(&digest).expect("index").is_none());
    }
}
