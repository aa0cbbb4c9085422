//! The shared tier: an S3-compatible bucket several replicas use, so a fleet fetches each
//! object from upstream once and a new replica starts warm.
//!
//! | key (under `shared.prefix`) | what |
//! |---|---|
//! | `blobs/sha256/<hex>` | a committed object, by its digest |
//! | `journal/<ms>-<replica>-<seq>` | a batch of index records one replica wrote (`journal.rs`) |
//! | `atime/<replica>` | when that replica last served each object (`evict.rs`) |
//! | `snapshot/<ms>-<replica>` | every shared record, replacing the journal before it (`snapshot.rs`) |
//!
//! Each replica uploads what it commits in the background, in commit order, from the index's
//! outbox (`upload.rs`): objects first, then the journal batch of records that may name them,
//! so a record is never visible before its object. Each replica reads the others' journal every
//! `shared.sync_interval` and applies the records to its own sled index, which stays local.
//! Bytes read from the bucket are verified by the engine like an upstream fill; records are
//! trusted like the local disk (the bucket is the operator's).
//!
//! The replica with `shared.gc = true` keeps the bucket within `shared.max_size` (least recently
//! used objects first, pins kept) and snapshots the journal, every `shared.gc_interval`.
//!
//! A store that fails is marked down after `egress.failure_threshold` failures in a row and
//! skipped (upstream instead) until a background probe gets an answer.

mod evict;
mod journal;
pub mod peers;
mod snapshot;
mod store;
mod upload;

pub use evict::EvictReport;
pub use peers::{PEER_HEADER, PeerSet};
pub use snapshot::SnapshotReport;
pub use store::{Store, check_endpoint, connect};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use wharf_storage::{Digest, Storage};

use crate::cache::{FillError, Incoming, Tier};
use crate::config::{EgressConfig, SharedConfig};
use crate::upstream::health::{Health, spawn_probe};
use crate::upstream::{EgressPolicy, UpstreamError};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub bytes_read: AtomicU64,
    pub uploads: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub journal_written: AtomicU64,
    pub records_applied: AtomicU64,
    pub discarded: AtomicU64,
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// The bucket's `blobs/` size when last measured (by an eviction pass).
    pub bucket_bytes: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub snapshots_loaded: AtomicU64,
}

/// What `/healthz` shows of the tier.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedReport {
    pub up: bool,
    pub bucket: String,
    pub replica: String,
    /// Objects and records committed here and not yet in the bucket.
    pub pending: usize,
    pub last_error: Option<String>,
    /// The last journal batch applied here.
    pub journal_cursor: Option<String>,
    /// Whether this replica evicts and snapshots (`shared.gc`).
    pub gc: bool,
    /// The bucket's size when last measured here.
    pub bucket_bytes: Option<u64>,
}

pub struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    bucket: String,
    replica: String,
    storage: Storage,
    health: Arc<Health>,
    probe: (reqwest::Client, Arc<EgressPolicy>, reqwest::Url),
    sync_interval: Duration,
    pub stats: Stats,
    journal: journal::Journal,
    gc: Gc,
    snapshots: snapshot::Checked,
}

/// The `[shared]` eviction settings.
struct Gc {
    enabled: bool,
    interval: Duration,
    max_size: u64,
    low_watermark: u64,
}

impl Shared {
    /// The tier over `store` (from `connect`), for the data directory of `storage`. Contacts
    /// nothing yet.
    pub fn new(
        cfg: &SharedConfig,
        egress: &EgressConfig,
        policy: Arc<EgressPolicy>,
        store: Store,
        storage: Storage,
    ) -> Result<Arc<Shared>, String> {
        let replica = match &cfg.replica_id {
            Some(id) => id.clone(),
            None => replica_id(&storage)?,
        };
        let endpoint = reqwest::Url::parse(&cfg.endpoint).map_err(|e| e.to_string())?;
        let http = crate::upstream::client::build_http(egress, policy.clone())?;
        let prefix = cfg.prefix.trim_end_matches('/').to_string();
        let instance = crate::secret::AdminSecret::random_hex(16)
            .map_err(|e| format!("shared: no random source: {e}"))?;
        Ok(Arc::new(Shared {
            store,
            journal: journal::Journal::new(&replica, &instance),
            prefix,
            bucket: cfg.bucket.clone(),
            replica,
            storage,
            health: Arc::new(Health::new(
                "shared",
                egress.failure_threshold,
                egress.probe_interval,
            )),
            probe: (http, policy, endpoint),
            sync_interval: cfg.sync_interval,
            stats: Stats::default(),
            gc: Gc {
                enabled: cfg.gc,
                interval: cfg.gc_interval,
                max_size: cfg.max_size.0,
                low_watermark: cfg.low_watermark(),
            },
            snapshots: snapshot::Checked::default(),
        }))
    }

    /// Starts the uploader, the journal reader and housekeeping, each ending between rounds once
    /// `stop` turns true (`app::Background`). Call once, in a runtime.
    pub fn spawn(
        self: &Arc<Self>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let (s, stopped) = (self.clone(), stop.clone());
        let upload = tokio::spawn(async move { upload::run(s, stopped).await });
        let (s, mut stopped) = (self.clone(), stop.clone());
        let sync = tokio::spawn(async move {
            while pause(&mut stopped, s.sync_interval).await {
                s.sync().await;
            }
        });
        let (s, mut stopped) = (self.clone(), stop.clone());
        let housekeep = tokio::spawn(async move {
            while pause(&mut stopped, s.gc.interval).await {
                s.housekeep().await;
            }
        });
        vec![upload, sync, housekeep]
    }

    /// Every `shared.gc_interval`: publish access times; on the gc replica, evict when over
    /// budget and snapshot the journal. Failures are logged; the next round retries.
    async fn housekeep(&self) {
        if self.health.check().is_err() {
            return;
        }
        if let Err(e) = self.publish_atimes().await {
            tracing::warn!(error = %e, "publishing access times to the shared tier failed");
        }
        if !self.gc.enabled {
            return;
        }
        if self.gc.max_size > 0
            && let Err(e) =
                evict::pass(self, self.gc.low_watermark, Some(self.gc.max_size), false).await
        {
            tracing::warn!(error = %e, "shared tier eviction failed");
        }
        if let Err(e) = self.snapshot().await {
            tracing::warn!(error = %e, "writing a journal snapshot failed");
        }
    }

    /// Writes `atime/<replica>` from the index's access times now.
    pub async fn publish_atimes(&self) -> Result<usize, String> {
        evict::publish_atimes(self).await
    }

    /// One eviction pass down to `target` (default: the low watermark of `shared.max_size`;
    /// no limit when it is 0). `dry_run` removes nothing.
    pub async fn evict(&self, dry_run: bool, target: Option<u64>) -> Result<EvictReport, String> {
        let target = target.unwrap_or(if self.gc.max_size == 0 {
            u64::MAX
        } else {
            self.gc.low_watermark
        });
        evict::pass(self, target, None, dry_run).await
    }

    /// Writes a journal snapshot now, then truncates the journal (`snapshot.rs`).
    pub async fn snapshot(&self) -> Result<SnapshotReport, String> {
        snapshot::write(self).await
    }

    /// Applies the newest snapshot if this replica is behind it; whether it did.
    pub async fn load_snapshot(&self) -> Result<bool, String> {
        self.record(snapshot::load(self).await)
            .map_err(|e| e.to_string())
    }

    /// Reads the other replicas' new journal batches once; failures are logged and counted
    /// against the store's health.
    pub async fn sync(&self) -> usize {
        if self.health.check().is_err() {
            return 0;
        }
        if let Err(e) = self.record(snapshot::load_if_due(self).await) {
            tracing::warn!(error = %e, "reading the shared journal's snapshot failed");
        }
        let r = journal::catch_up(self).await;
        match self.record(r) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the shared journal failed");
                0
            }
        }
    }

    /// Copies what is pending to the bucket once (the uploader does this on its own).
    pub async fn flush(&self) -> Result<usize, String> {
        upload::drain(self).await
    }

    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    pub fn report(&self) -> SharedReport {
        let h = self.health.report();
        SharedReport {
            up: h.up,
            bucket: self.bucket.clone(),
            replica: self.replica.clone(),
            pending: self.storage.index.outbox_len(),
            last_error: h.last_error,
            journal_cursor: self.storage.index.shared_meta("journal").ok().flatten(),
            gc: self.gc.enabled,
            bucket_bytes: Some(self.stats.bucket_bytes.load(Ordering::Relaxed)).filter(|b| *b > 0),
        }
    }

    fn path(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn blob_path(&self, d: &Digest) -> Path {
        self.path(&format!("blobs/sha256/{}", d.hex()))
    }

    /// Records a store call's outcome in the tier's health; a failure that marks it down
    /// starts the probe. `NotFound` is an answer, not a failure.
    fn record<T>(&self, r: Result<T, object_store::Error>) -> Result<T, object_store::Error> {
        let as_upstream = match &r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(UpstreamError::Connect {
                target: "shared tier".into(),
                detail: e.to_string(),
            }),
        };
        if self.health.record(&as_upstream) {
            let (http, policy, url) = self.probe.clone();
            spawn_probe(self.health.clone(), http, policy, url);
        }
        r
    }
}

/// The engine's view: `Arc<Shared>`, so a read's future owns what it needs.
impl Tier for Arc<Shared> {
    fn get(&self, digest: &Digest) -> BoxFuture<'static, Option<Incoming>> {
        if self.health.check().is_err() {
            return async { None }.boxed();
        }
        let (me, path) = (self.clone(), self.blob_path(digest));
        async move {
            match me.record(me.store.get(&path).await) {
                Ok(got) => {
                    let len = got.meta.size;
                    me.stats.hits.fetch_add(1, Ordering::Relaxed);
                    me.stats.bytes_read.fetch_add(len, Ordering::Relaxed);
                    let body = got
                        .into_stream()
                        .map_err(|e| FillError::Upstream(format!("shared tier read failed: {e}")))
                        .boxed();
                    Some(Incoming {
                        len: Some(len),
                        body,
                    })
                }
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "shared tier read failed; asking upstream");
                    None
                }
            }
        }
        .boxed()
    }

    fn discard(&self, digest: &Digest) {
        self.stats.discarded.fetch_add(1, Ordering::Relaxed);
        let (me, path) = (self.clone(), self.blob_path(digest));
        tokio::spawn(async move {
            if let Err(e) = me.store.delete(&path).await {
                tracing::warn!(error = %e, "removing a corrupt object from the shared tier failed");
            }
        });
    }
}

/// This replica's name in the journal: kept in the data directory, made once.
fn replica_id(storage: &Storage) -> Result<String, String> {
    let path = storage.layout.root().join("replica-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let random = crate::secret::AdminSecret::random_hex(12)
        .map_err(|e| format!("cannot make a replica id: {e}"))?;
    let id = format!("r{random}");
    std::fs::write(&path, &id).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// Waits `d`, or less when the loop is told to stop: `false` then (the stop signal, or its
/// sender gone), so a loop ends between rounds, never in one.
async fn pause(stopped: &mut tokio::sync::watch::Receiver<bool>, d: Duration) -> bool {
    if *stopped.borrow() {
        return false;
    }
    tokio::select! {
        r = stopped.changed() => r.is_ok() && !*stopped.borrow(),
        () = tokio::time::sleep(d) => true,
    }
}
