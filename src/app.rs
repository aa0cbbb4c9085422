//! Application state shared by every request (storage, upstream clients, flights, config) and
//! the router with its layers.

mod checked;
pub use checked::Checked;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wharf_storage::{Digest, Storage};

use crate::cache::Flights;
use crate::config::Config;
use crate::error::Error;
use crate::goproxy::GoProxy;
use crate::registry;
use crate::shared::Shared;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub storage: Storage,
    /// The registry front end: its upstream clients, flights and manifests in memory.
    pub registry: Arc<registry::Registry>,
    /// The Go module proxy, unless `go.enabled = false`.
    pub go: Option<Arc<GoProxy>>,
    pub access: crate::access::AccessControl,
    /// The cache engine: hits, fills, access times (`cache::Engine`).
    pub engine: crate::cache::Engine,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The egress policy every upstream client checks (its refusals are counted).
    pub egress: Arc<crate::upstream::EgressPolicy>,
    /// What every `/admin/` request must carry: new for each state, written to the data
    /// directory (`admin.token`) as soon as the state holds sled's lock on it.
    pub admin_secret: crate::secret::AdminSecret,
    /// The shared tier (`[shared]`), if configured.
    pub shared: Option<Arc<Shared>>,
    /// The replicas that fill for each other (`[peers]`), if configured.
    pub peers: Option<Arc<crate::shared::PeerSet>>,
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
    /// Checks `config` and builds the state from it (`Checked::new`, then `from_checked`).
    pub fn new(config: Config) -> Result<AppState, Error> {
        AppState::from_checked(Checked::new(config)?)
    }

    /// Opens storage (sweeping leftover temp files) and assembles the services from the runtime
    /// objects `checked` built; no second validation. Refuses credentials it could not read.
    pub fn from_checked(checked: Checked) -> Result<AppState, Error> {
        let Checked {
            config,
            egress,
            store,
            peers,
            upstreams,
            go,
            access,
            unread,
        } = checked;
        if let Some(e) = unread.into_iter().next() {
            return Err(e);
        }
        let egress_policy = egress.clone();
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        let storage = Storage::open(&config.data_dir)?;
        storage.blobs.make_spares();
        registry::visibility::backfill(&storage, config.registry.max_manifest_size.0)?;
        // Weak: the engine holds the room, and the registry holds the engine.
        let registry_cell: Arc<std::sync::OnceLock<std::sync::Weak<registry::Registry>>> =
            Arc::default();
        let mut engine = crate::cache::Engine::new(
            storage.clone(),
            config.server.max_concurrent_fills,
            config.offline,
        )
        .with_fill_queue(config.server.fill_queue_timeout)
        .with_room(room(
            &config,
            &storage,
            registry_cell.clone(),
            metrics.clone(),
        ));
        let shared = match (&config.shared, store) {
            (Some(cfg), Some(store)) => {
                let shared = Shared::new(cfg, &config.egress, egress, store, storage.clone())
                    .map_err(|m| Error::Config(crate::config::ConfigError::Invalid(m)))?;
                engine = engine.with_tier(Arc::new(shared.clone()));
                Some(shared)
            }
            _ => None,
        };
        if let Some(p) = &peers {
            engine = engine.with_peers(Arc::new(p.clone()));
        }
        let hot = crate::registry::hot::HotManifests::new(config.cache.manifest_memory.0);
        // Published before anything can answer (tests and `serve` bind before serving), so a
        // command that finds the server finds its secret; sled's lock makes this the only
        // writer.
        let admin_secret = crate::secret::AdminSecret::generate()
            .and_then(|s| s.publish(&storage.layout).map(|()| s))
            .map_err(|source| Error::Io {
                context: format!(
                    "writing the admin secret {}",
                    storage.layout.admin_token_path().display()
                ),
                source,
            })?;
        let config = Arc::new(config);
        let registry = Arc::new(registry::Registry {
            config: config.clone(),
            storage: storage.clone(),
            engine: engine.clone(),
            upstreams,
            blob_flights: Flights::default(),
            hot,
            metrics: metrics.clone(),
        });
        let _ = registry_cell.set(Arc::downgrade(&registry));
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
            egress: egress_policy,
            shared,
            peers,
        })))
    }
}

/// Room on the data directory's file system (`cache.min_free`), evicting least-recently-used
/// content to make it; the registry's in-memory manifests are dropped after an eviction.
fn room(
    config: &Config,
    storage: &Storage,
    registry: Arc<std::sync::OnceLock<std::sync::Weak<registry::Registry>>>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Arc<crate::cache::room::Room> {
    let store = storage.clone();
    let evictor: crate::cache::room::Evictor = Arc::new(move |need: u64| {
        let (storage, registry, metrics) = (store.clone(), registry.clone(), metrics.clone());
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || {
                let none = HashMap::new();
                let probe = wharf_storage::collect(&storage, u64::MAX, &none, true)?;
                // Only when it can make the room: evicting everything for an object that would
                // not fit anyway (or whose announced size is a lie) only empties the cache.
                let evictable = probe.total_before.saturating_sub(probe.pinned_bytes);
                if evictable < need {
                    return Ok(None);
                }
                let target = probe.total_before.saturating_sub(need);
                wharf_storage::collect(&storage, target, &none, false).map(Some)
            })
            .await;
            match r {
                Ok(Ok(None)) => tracing::warn!(
                    need,
                    "eviction cannot make that much room (pinned content, other files); not evicting"
                ),
                Ok(Ok(Some(report))) if !report.removed.is_empty() => {
                    metrics
                        .store
                        .evicted(report.removed.len() as u64, report.freed);
                    if let Some(r) = registry.get().and_then(std::sync::Weak::upgrade) {
                        r.hot.clear();
                    }
                    tracing::info!(
                        freed = report.freed,
                        objects = report.removed.len(),
                        "evicted least-recently-used content to make room"
                    );
                }
                Ok(Ok(Some(_))) => tracing::warn!("nothing could be evicted to make room"),
                Ok(Err(e)) => tracing::error!(error = %e, "eviction for room failed"),
                Err(_) => {}
            }
        })
    });
    Arc::new(crate::cache::room::Room::new(
        storage.layout.root().to_path_buf(),
        config.cache.min_free,
        Some(evictor),
    ))
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
    /// Measures the store for `/metrics` either way.
    pub async fn evict_if_needed(&self) -> Option<wharf_storage::GcReport> {
        let max = self.config.cache.max_size.0;
        self.flush_atimes().await;
        let storage = self.storage.clone();
        let target = self.config.cache.low_watermark();
        let r = tokio::task::spawn_blocking(move || {
            // Measure first (a dry run with no target); evict only when over budget.
            let probe = wharf_storage::collect(&storage, u64::MAX, &HashMap::new(), true)?;
            if max == 0 || probe.total_before <= max {
                return Ok(probe);
            }
            wharf_storage::collect(&storage, target, &HashMap::new(), false)
        })
        .await;
        match r {
            Ok(Ok(report)) => {
                self.record_store(&report);
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

    /// The store's size, pins and evictions from a collection's report, for `/metrics`.
    fn record_store(&self, report: &wharf_storage::GcReport) {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &self.metrics.store;
        let removed = if report.dry_run {
            (0, 0)
        } else {
            (report.removed.len(), report.freed)
        };
        st.bytes.store(report.total_before - removed.1, Relaxed);
        st.objects.store(
            report.objects_before.saturating_sub(removed.0) as u64,
            Relaxed,
        );
        st.pinned_bytes.store(report.pinned_bytes, Relaxed);
        st.pinned_objects
            .store(report.pinned_objects as u64, Relaxed);
        st.index_bytes
            .store(self.storage.index.size_on_disk(), Relaxed);
        st.evicted(removed.0 as u64, removed.1);
    }

    /// Joins the shared tier: reads the records other replicas wrote (for at most `limit`, so a
    /// store that is down does not keep the server from starting); copying and reading go on
    /// in `spawn_background`.
    pub async fn start_shared(&self, limit: std::time::Duration) {
        let Some(shared) = &self.shared else { return };
        match tokio::time::timeout(limit, shared.sync()).await {
            Ok(n) => tracing::info!(records = n, "joined the shared tier"),
            Err(_) => tracing::warn!("the shared tier did not answer in time; serving meanwhile"),
        }
    }

    /// Background work of a serving process: access-time flushes and eviction (whose first
    /// round, measuring the store on the blocking pool, starts at once), the shared tier's
    /// copying, reading and housekeeping, and the peers' DNS refresh.
    pub fn spawn_background(&self) -> Background {
        let app = self.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut tasks = match &self.shared {
            Some(shared) => shared.spawn(&stopped),
            None => Vec::new(),
        };
        if let Some(peers) = &self.peers {
            tasks.extend(peers.spawn(&stopped));
        }
        tasks.push(tokio::spawn(async move {
            let mut flush = tokio::time::interval(app.config.cache.atime_flush_interval);
            let mut gc = tokio::time::interval(app.config.cache.gc_interval);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // A round, once started, runs to its end: `stop` is seen between rounds.
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = flush.tick() => app.flush_atimes().await,
                    _ = gc.tick() => {
                        app.evict_if_needed().await;
                    }
                }
            }
        }));
        Background { stop, tasks }
    }
}

/// The background loops of a serving process (`AppState::spawn_background`).
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Ends the loops after the rounds in progress, waiting for them at most `grace` (then they
    /// are abandoned). Aborting them outright would leave a round's blocking work (eviction
    /// walks the store) holding the store after the server returns, so a server started next in
    /// the same process could find the index still locked.
    pub async fn stop(mut self, grace: std::time::Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("background work did not end in time; abandoning it");
            for t in &self.tasks {
                t.abort();
            }
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
