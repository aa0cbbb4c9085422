//! wharf served in-process on a loopback port, the way a test owns it: config from a
//! [`WharfConfig`] (or TOML text), a data directory, and a shutdown signal it sends itself.
//!
//! Must not: reach into wharf's internals beyond the public `config` / `app` / `serve` API (and
//! `state`, for the tests that look at pins and the index).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::config::WharfConfig;
use super::http::{Answer, client};

/// Every manifest type a client may ask for; wharf must answer with the stored type unchanged.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Wharf {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The server's state, for tests that look inside (pins, index).
    pub state: wharf::AppState,
    /// The config it was started from, when it came from the builder (for `restart`).
    config: Option<WharfConfig>,
    /// The data directory, when this server owns it.
    owned: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Wharf {
    /// Starts wharf with `fake.test` (at `upstream_url`) as the default upstream, egress open
    /// to 127.0.0.1; `registry_keys` are extra `[registry]` keys such as `tag_ttl = "0s"`.
    pub async fn start(upstream_url: &str, data_dir: &Path, registry_keys: &str) -> Wharf {
        Self::serve(WharfConfig::fake(upstream_url, data_dir).registry(registry_keys)).await
    }

    /// Starts wharf from a built config.
    pub async fn serve(config: WharfConfig) -> Wharf {
        let mut w = Self::start_with_config(&config.toml(), config.data_dir()).await;
        w.config = Some(config);
        w
    }

    /// Starts wharf in a fresh data directory that it owns; `config` builds the config for it.
    pub async fn in_temp_dir(config: impl FnOnce(&Path) -> WharfConfig) -> Wharf {
        let data = tempfile::Builder::new()
            .prefix("wharf-data-")
            .tempdir()
            .expect("create wharf data dir");
        let mut w = Self::serve(config(data.path())).await;
        w.owned = Some(data);
        w
    }

    /// Starts wharf from TOML text (for the configs the builder cannot spell).
    pub async fn start_with_config(toml: &str, data_dir: &Path) -> Wharf {
        let config = wharf::config::Config::from_toml_str(toml)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
        let state = wharf::AppState::new(config).unwrap();
        let kept = state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wharf::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Wharf {
            addr,
            state: kept,
            data_dir: data_dir.to_path_buf(),
            config: None,
            owned: None,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops this server (checking that it stops cleanly) and serves a new one, on a new port,
    /// from the same data directory and config: what survives is what wharf put on disk.
    pub async fn restart(self) -> Wharf {
        self.restart_as(|c| c).await
    }

    /// Like `restart`, with `offline = true`: the new server never contacts an upstream.
    pub async fn restart_offline(self) -> Wharf {
        self.restart_as(WharfConfig::into_offline).await
    }

    async fn restart_as(mut self, change: impl FnOnce(WharfConfig) -> WharfConfig) -> Wharf {
        let config = self.config.take().expect("restart needs a built config");
        let owned = self.owned.take();
        self.stop_cleanly().await;
        let mut w = Self::serve(change(config)).await;
        w.owned = owned;
        w
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `127.0.0.1:<port>`, as image references spell the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The admin secret this wharf published in its data directory (what `/admin/` requires in
    /// `X-Wharf-Admin-Token`).
    pub fn admin_secret(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("the admin secret is published at start")
            .trim_end()
            .to_string()
    }

    /// `GET <path>`, with `accept` if given, fully read.
    pub async fn get(&self, path: &str, accept: Option<&str>) -> Answer {
        let mut request = client().get(self.url(path));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        Answer::read(request).await
    }

    /// `GET <path>` of a manifest (every manifest type accepted), asserted to be 200.
    pub async fn manifest(&self, path: &str) -> Answer {
        let m = self.get(path, Some(MANIFEST_ACCEPT)).await;
        assert_eq!(m.status, 200, "{}", m.describe());
        m
    }

    /// Signals shutdown and waits (at most ten seconds) for the server to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Signals shutdown and checks that `serve` returns `Ok` within ten seconds.
    pub async fn stop_cleanly(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.task.take().expect("server handle");
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
