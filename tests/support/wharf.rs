//! wharf served in-process on a loopback port, the way a test owns it: config from TOML text, a
//! private data directory, and a shutdown signal it sends itself.
//!
//! Owns: building the config for a set of upstreams, starting and stopping `wharf::serve`, and a
//! plain HTTP client for asserting on wharf's own headers (`X-Cache`, `Docker-Content-Digest`).
//! Must not: reach into wharf's internals; only the public `config` / `app` / `serve` API.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::HeaderMap;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every manifest type a client may ask for; wharf must answer with the stored type unchanged.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Wharf {
    pub addr: SocketAddr,
    upstreams: Vec<(String, String)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    data: TempDir,
    http: reqwest::Client,
}

/// One HTTP answer from wharf, fully read.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Cache` outcome, or a panic that shows the answer.
    pub fn cache(&self) -> &str {
        self.header("x-cache")
            .unwrap_or_else(|| panic!("no X-Cache header in {}", self.describe()))
    }

    /// Status, headers and the start of the body, for assertion messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(512)]).into_owned();
        format!("{} {:?} body: {body}", self.status, self.headers)
    }
}

impl Wharf {
    /// Serves wharf with `upstreams` (`name`, `url`); the first is the default upstream and egress
    /// is allowed to 127.0.0.1 only.
    pub async fn start(upstreams: &[(&str, String)]) -> Wharf {
        let data = tempfile::Builder::new()
            .prefix("wharf-data-")
            .tempdir()
            .expect("create wharf data dir");
        let upstreams = upstreams
            .iter()
            .map(|(name, url)| ((*name).to_owned(), url.clone()))
            .collect();
        Self::start_in(data, upstreams).await
    }

    /// Stops this server (checking that it stops cleanly) and serves a new one, on a new port,
    /// from the same data directory: what survives is what wharf put on disk.
    pub async fn restart(self) -> Wharf {
        self.restart_with(false).await
    }

    /// Like `restart`, with `offline = true`: the new server never contacts an upstream.
    pub async fn restart_offline(self) -> Wharf {
        self.restart_with(true).await
    }

    async fn restart_with(mut self, offline: bool) -> Wharf {
        let data = tempfile::Builder::new()
            .prefix("wharf-data-placeholder-")
            .tempdir()
            .expect("create placeholder dir");
        let data = std::mem::replace(&mut self.data, data);
        let upstreams = std::mem::take(&mut self.upstreams);
        self.stop().await;
        Self::start_in_mode(data, upstreams, offline).await
    }

    async fn start_in(data: TempDir, upstreams: Vec<(String, String)>) -> Wharf {
        Self::start_in_mode(data, upstreams, false).await
    }

    async fn start_in_mode(
        data: TempDir,
        upstreams: Vec<(String, String)>,
        offline: bool,
    ) -> Wharf {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut text = format!(
            "data_dir = {}\noffline = {offline}\n[registry]\ndefault_upstream = {}\n",
            quote(&data.path().to_string_lossy()),
            quote(&upstreams[0].0),
        );
        for (name, url) in &upstreams {
            text += &format!(
                "[[registry.upstream]]\nname = {}\nurl = {}\n",
                quote(name),
                quote(url)
            );
        }
        text += "[egress]\nallow = [\"127.0.0.1\"]\n";

        let config = wharf::config::Config::from_toml_str(&text)
            .unwrap_or_else(|err| panic!("config rejected: {err:?}\n{text}"));
        let state = wharf::app::AppState::new(config)
            .unwrap_or_else(|err| panic!("AppState::new failed: {err:?}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind wharf listener");
        let addr = listener.local_addr().expect("wharf listener address");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(wharf::serve(listener, state, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("build test HTTP client");
        Wharf {
            addr,
            upstreams,
            shutdown: Some(tx),
            server: Some(server),
            data,
            http,
        }
    }

    /// `127.0.0.1:<port>`, as image references spell the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// `GET http://<wharf><path>`, with `accept` if given.
    pub async fn get(&self, path: &str, accept: Option<&str>) -> Answer {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|err| panic!("GET {path}: reading the body: {err}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Signals shutdown and checks that `serve` returns `Ok` within ten seconds.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.server.take().expect("server handle");
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("wharf::serve returned an error: {err}"),
            Ok(Err(join)) => panic!("wharf::serve panicked: {join}"),
            Err(_) => panic!("wharf::serve did not return within 10 s of the shutdown signal"),
        }
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
