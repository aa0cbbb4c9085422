//! The engine: the one place that owns the life of an immutable object. A hit is a committed
//! file (`open`); a miss runs offline check -> single flight -> fill permit -> fill task ->
//! copy (hashed as written, bounded) -> whole-object checks -> verify -> persist -> index ->
//! commit, and every request, the first included, streams from the fill as bytes arrive
//! (`fill`). Access times of hits are batched here, so the hit path writes nothing to sled.
//!
//! A protocol supplies only a `Fetch`: how to open the transfer and check one object. The engine
//! knows storage, not HTTP: it must not depend on axum, reqwest, `registry` or `goproxy`.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use wharf_storage::{BlobStore, BlobWriter, Digest, Index, Storage, StorageError, unix_now};

use super::body::BlobBody;
use super::flight::{
    FillError, FillState, Flights, Incoming, Join, Leader, Reopen, Spill, Start, first_answer,
};
use super::outcome::Outcome;
use super::room::Room;
use super::spill::{StartAt, checked_stream};
use super::tier::{Peers, Tier};

/// Watchers are woken at most once per this many new bytes (and at the end), not per network
/// read: a wake-up costs more than the few kilobytes one read brings. The step grows with what
/// is written (a quarter of it) up to `PROGRESS_STEP_MAX`: small objects and the first bytes go
/// out promptly, and a large fill wakes each watcher (and each `sendfile`) once per MiB, not 16
/// times. Bytes written wait at most `PROGRESS_EVERY` to be announced, however slow or stalled
/// the source, so clients (and replicas with a read timeout) keep getting them.
const PROGRESS_STEP: u64 = 64 * 1024;
const PROGRESS_STEP_MAX: u64 = 1 << 20;
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// New bytes after which watchers of a fill that has announced `notified` bytes are woken.
fn progress_step(notified: u64) -> u64 {
    (notified / 4).clamp(PROGRESS_STEP, PROGRESS_STEP_MAX)
}

/// How a protocol fills one immutable object. Built only on a miss.
pub trait Fetch: Send + Clone + 'static {
    /// Starts the transfer. `Ok(None)`: every source says the object does not exist.
    fn open(&mut self) -> impl Future<Output = Result<Option<Incoming>, FillError>> + Send;

    /// The transfer from byte `offset` on, to continue one that was cut: `Incoming::len` is
    /// still the whole object's. By default the whole again, its first `offset` bytes skipped;
    /// a source that can ask for a range does.
    fn open_at(
        &mut self,
        offset: u64,
    ) -> impl Future<Output = Result<Option<Incoming>, FillError>> + Send {
        async move { Ok(self.open().await?.map(|i| skip_prefix(i, offset))) }
    }

    /// The digest the bytes must hash to, when known up front; `None`: named by content.
    fn expected(&self) -> Option<&Digest> {
        None
    }

    /// The digest the object had when a replica last stored it, if known: the shared tier is
    /// asked for it first. Defaults to `expected`.
    fn known(&self) -> Option<Digest> {
        self.expected().cloned()
    }

    /// The request path another replica answers this object at (`/v2/...`, `/go/...`), so the
    /// replica that owns it can fill it; `None`: never asked of a peer.
    fn peer_path(&self) -> Option<String> {
        None
    }

    /// The owner replica answered 200 for `peer_path`: what `open` records on a 200.
    fn found_at_peer(&mut self) {}

    /// Whether the object, when its source declares at most `wharf_storage::SMALL_MAX` bytes,
    /// is kept in the index rather than in a file of its own (many tiny objects: Go `.mod` and
    /// `.info` files).
    fn small(&self) -> bool {
        false
    }

    /// Most bytes accepted, and the error when a source sends more.
    fn limit(&self) -> u64 {
        u64::MAX
    }

    fn too_large(&self, limit: u64) -> FillError {
        FillError::Upstream(format!("larger than the {limit}-byte limit"))
    }

    /// Whole-object checks before anything is committed. Local I/O failures are `Local`.
    fn check(
        &mut self,
        _file: &Arc<File>,
        _size: u64,
    ) -> impl Future<Output = Result<(), FillError>> + Send {
        async { Ok(()) }
    }

    /// The index records to write once the object is durable.
    fn record(&self, index: &Index, digest: &Digest, size: u64) -> Result<(), StorageError>;

    /// Called once the object is committed (metrics, negative-cache upkeep); `shared`: its
    /// bytes came from the shared tier, not from this protocol's source.
    fn committed(&self, _size: u64, _shared: bool) {}

    /// Called when the bytes failed their digest (`kind`: `blob_digest`, or `tier_copy` for
    /// the shared tier's copy), for metrics.
    fn rejected(&self, _kind: &'static str) {}
}

/// Why fills failed, as `FillStats::failed` counts them.
pub const FAIL_REASONS: [&str; 7] = [
    "not_found",
    "upstream",
    "verification",
    "local",
    "no_room",
    "unavailable",
    "offline",
];

/// What fills did, for `/metrics`: started, completed, failed by reason (`FAIL_REASONS`), and
/// the duration, size and waiters of each completed fill.
pub struct FillStats {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    /// Transfers cut mid-body that were continued at the byte where they stopped.
    pub resumes: AtomicU64,
    pub failed: [AtomicU64; 7],
    pub seconds: Histogram,
    pub bytes: Histogram,
    pub waiters: Histogram,
}

impl Default for FillStats {
    fn default() -> Self {
        FillStats {
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            failed: Default::default(),
            // 1 ms to about 9 minutes.
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            // 1 KiB to 16 GiB.
            bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 13)),
            waiters: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        }
    }
}

impl FillStats {
    fn failed(&self, e: &FillError, rejected: bool) {
        let i = match e {
            FillError::NotFound => 0,
            FillError::Upstream(_) if rejected => 2,
            FillError::Upstream(_) | FillError::Busy => 1,
            FillError::Local => 3,
            FillError::NoRoom => 4,
            FillError::Unavailable(_) => 5,
            FillError::Offline => 6,
        };
        self.failed[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// What a fill learnt on the way that its error does not say: the disk ran full part way
/// (`spilled`), or the bytes failed their checks (`rejected`).
#[derive(Default)]
struct Notes {
    spilled: Option<Spilled>,
    rejected: AtomicBool,
}

/// Objects and bytes served from one tier. Counted on the hit path by every worker thread, so
/// each thread adds to its own cache line (no line bouncing between cores); reads sum them.
#[derive(Debug, Default)]
pub struct Count {
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    objects: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// This thread's shard, assigned round-robin on first use.
fn shard() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static MINE: usize = NEXT.fetch_add(1, Relaxed) % SHARDS);
    MINE.with(|m| *m)
}

impl Count {
    pub fn add(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.shards[shard()];
        s.objects.fetch_add(1, Relaxed);
        s.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn objects(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards.iter().map(|s| s.objects.load(Relaxed)).sum()
    }

    pub fn bytes(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards.iter().map(|s| s.bytes.load(Relaxed)).sum()
    }
}

/// Where served objects came from: hits on local disk, and fills by their source.
#[derive(Debug, Default)]
pub struct Tiers {
    pub disk: Count,
    pub shared: Count,
    pub peer: Count,
    pub upstream: Count,
}

/// Where an answer's bytes come from.
pub enum BlobSource {
    File(Arc<File>),
    Fill(tokio::sync::watch::Receiver<FillState>),
    /// Not stored (no room on the local disk): the source's bytes, checked on the way; the
    /// last chunk is held back until the whole hashes to its digest, else the body fails.
    Pass(BoxStream<'static, std::io::Result<Bytes>>),
}

/// A request's answer from the engine.
pub struct Served {
    pub source: BlobSource,
    pub size: Option<u64>,
    pub outcome: Outcome,
}

impl Served {
    /// How many bytes the fill behind this answer has written so far; `None` once the object
    /// is whole and verified (a hit, or a fill that got there).
    pub fn fill_written(&self) -> Option<u64> {
        match &self.source {
            BlobSource::File(_) | BlobSource::Pass(_) => None,
            BlobSource::Fill(rx) => match &*rx.borrow() {
                FillState::Pending => Some(0),
                FillState::Streaming { written, .. } => Some(*written),
                FillState::Spilled(spill) => Some(spill.written),
                FillState::Verified { .. } | FillState::Committed { .. } | FillState::Failed(_) => {
                    None
                }
            },
        }
    }

    /// The whole object as a stream of its bytes (the body of a whole-object answer).
    pub fn into_stream(self) -> BoxStream<'static, std::io::Result<Bytes>> {
        match self.source {
            BlobSource::File(f) => BlobBody::from_file(f, 0, self.size.unwrap_or(0))
                .into_stream()
                .boxed(),
            BlobSource::Fill(rx) => BlobBody::from_fill(rx, 0, self.size).into_stream().boxed(),
            BlobSource::Pass(s) => s,
        }
    }

    /// The whole object, verified, before anything is answered: waits for the fill's verdict
    /// (`flight::verdict`) and hands back the file and its size to serve like a hit, or why the
    /// fill failed. Gives up streaming during the fill; for objects small enough to check whole.
    pub async fn complete(self) -> Result<(Arc<File>, u64), FillError> {
        match self.source {
            BlobSource::Fill(rx) => super::flight::verdict(rx).await,
            BlobSource::Pass(_) => Err(FillError::NoRoom),
            BlobSource::File(file) => match self.size {
                Some(size) => Ok((file, size)),
                None => {
                    let size = file
                        .metadata()
                        .map_err(local("reading a committed object's size"))?
                        .len();
                    Ok((file, size))
                }
            },
        }
    }
}

#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    storage: Storage,
    permits: Arc<Semaphore>,
    max_fills: usize,
    offline: bool,
    /// The shared tier, asked before a protocol's source when the digest is known.
    tier: Option<Arc<dyn Tier>>,
    /// The replicas that fill for each other, asked after the tier.
    peers: Option<Arc<dyn Peers>>,
    /// Objects served per tier.
    tiers: Tiers,
    /// Access times of hits since the last flush.
    atimes: Mutex<HashMap<Digest, u64>>,
    /// How long a new fill waits for a permit when all are taken, before `Busy`.
    queue_limit: std::time::Duration,
    queue: QueueStats,
    /// Room on the local disk; `None`: every fill is stored.
    room: Option<Arc<Room>>,
    fills: FillStats,
}

/// Fills that waited for a permit: waiting now, ever queued, and given up on (`Busy`).
#[derive(Default)]
pub struct QueueStats {
    pub waiting: std::sync::atomic::AtomicU64,
    pub queued: std::sync::atomic::AtomicU64,
    pub timed_out: std::sync::atomic::AtomicU64,
}

impl Engine {
    pub fn new(storage: Storage, max_fills: usize, offline: bool) -> Engine {
        Engine(Arc::new(Inner {
            storage,
            permits: Arc::new(Semaphore::new(max_fills)),
            max_fills,
            offline,
            tier: None,
            peers: None,
            tiers: Tiers::default(),
            atimes: Mutex::default(),
            queue_limit: std::time::Duration::ZERO,
            queue: QueueStats::default(),
            fills: FillStats::default(),
            room: None,
        }))
    }

    /// The same engine, storing a fill only when `room` says the disk can take it. Call before
    /// the engine is cloned.
    pub fn with_room(mut self, room: Arc<Room>) -> Engine {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.room = Some(room);
        }
        self
    }

    pub fn room(&self) -> Option<&Arc<Room>> {
        self.0.room.as_ref()
    }

    /// Serves `fetch`'s object without storing it (after `FillError::NoRoom`): from the first
    /// source that has it, hashed on the way; the body fails instead of ending if the bytes do
    /// not match the digest. Not shared with other requests. Only for objects named by digest.
    pub async fn pass_through<F: Fetch>(&self, mut fetch: F) -> Result<Served, FillError> {
        if self.0.offline && self.0.tier.is_none() {
            return Err(FillError::Offline);
        }
        let Some(expected) = fetch.expected().cloned() else {
            return Err(FillError::NoRoom);
        };
        // A pass-through is a fill that stores nothing: it takes a permit like one.
        let Some(permit) = self.permit().await else {
            return Err(FillError::Busy);
        };
        let (incoming, _) = self
            .open_source(&mut fetch, super::tier::from_peer())
            .await?;
        let limit = fetch.limit();
        if incoming.len.is_some_and(|n| n > limit) {
            return Err(fetch.too_large(limit));
        }
        if let Some(room) = &self.0.room {
            room.count_pass_through();
        }
        tracing::warn!(digest = %expected, size = incoming.len, "no room on the local disk; passing the object through unstored");
        Ok(Served {
            size: incoming.len,
            source: BlobSource::Pass(checked_stream(
                incoming,
                expected,
                limit,
                Some(permit),
                StartAt::object(),
            )),
            outcome: Outcome::Bypass,
        })
    }

    /// The same engine, with a new fill waiting up to `limit` for a permit when every one is
    /// taken (then `Busy`). Call before the engine is cloned.
    pub fn with_fill_queue(mut self, limit: std::time::Duration) -> Engine {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.queue_limit = limit;
        }
        self
    }

    /// Fill permit counters, for metrics.
    pub fn fill_stats(&self) -> &FillStats {
        &self.0.fills
    }

    pub fn fill_queue(&self) -> &QueueStats {
        &self.0.queue
    }

    /// A fill permit if one is free now (for upstream work that may be skipped when busy).
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.permits.clone().try_acquire_owned().ok()
    }

    /// A fill permit: at once, or within the queue limit.
    async fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Ok(p) = self.0.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.0.queue_limit.is_zero() {
            return None;
        }
        let q = &self.0.queue;
        q.queued.fetch_add(1, Relaxed);
        q.waiting.fetch_add(1, Relaxed);
        let got = tokio::time::timeout(self.0.queue_limit, self.0.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        q.waiting.fetch_sub(1, Relaxed);
        if got.is_none() {
            q.timed_out.fetch_add(1, Relaxed);
        }
        got
    }

    /// The same engine with a shared tier: misses ask it first, and every commit is queued
    /// for it in the index's outbox. Call before the engine is cloned.
    pub fn with_tier(mut self, tier: Arc<dyn Tier>) -> Engine {
        self.0.storage.index.set_sharing(true);
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.tier = Some(tier);
        }
        self
    }

    /// The same engine filling cold objects through their owner replica. Call before the
    /// engine is cloned.
    pub fn with_peers(mut self, peers: Arc<dyn Peers>) -> Engine {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.peers = Some(peers);
        }
        self
    }

    /// Objects served per tier (local-disk hits, fills by source).
    pub fn tiers(&self) -> &Tiers {
        &self.0.tiers
    }

    pub fn has_tier(&self) -> bool {
        self.0.tier.is_some()
    }

    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    pub fn offline(&self) -> bool {
        self.0.offline
    }

    /// A committed object for a hit: the open file and its size, access time noted; `None`
    /// when it is not on disk. Out of descriptors is `Busy` (not a miss: a fill would fail the
    /// same way), any other failure `Local`.
    pub fn open(&self, digest: &Digest) -> Result<Option<(Arc<File>, u64)>, FillError> {
        let file = match self.0.storage.blobs.open_blob(digest) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                tracing::warn!(error = %e, "out of file descriptors opening a stored object");
                return Err(FillError::Busy);
            }
            Err(e) => return Err(local("opening a stored object failed")(e)),
        };
        let size = file
            .metadata()
            .map_err(local("reading a stored object's size"))?
            .len();
        self.0.tiers.disk.add(size);
        self.touch(digest);
        Ok(Some((Arc::new(file), size)))
    }

    /// Fills `key` with what `fetch` brings, once however many requests ask; every request
    /// streams from the fill. `fetch` and `span` (the fill task's span; a request that joins links to it)
    /// are called only by the request that starts the fill.
    pub async fn fill<K, F>(
        &self,
        flights: &Flights<K>,
        key: &K,
        fetch: impl FnOnce() -> F,
        span: impl FnOnce() -> tracing::Span,
    ) -> Result<Served, FillError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        F: Fetch,
    {
        // Offline, only the shared tier may fill a miss.
        if self.0.offline && self.0.tier.is_none() {
            return Err(FillError::Offline);
        }
        let mut handed = None;
        let (rx, joined) = match flights.join(key) {
            Join::Leader(leader, rx) => {
                let (pass_tx, pass_rx) = tokio::sync::oneshot::channel();
                handed = Some(pass_rx);
                let Some(permit) = self.permit().await else {
                    leader.fail(FillError::Busy);
                    return Err(FillError::Busy);
                };
                let (engine, fetch) = (self.clone(), fetch());
                let from_peer = super::tier::from_peer();
                let span = span();
                leader.trace(&span);
                tokio::spawn(
                    async move {
                        engine
                            .run(fetch, leader, from_peer, (pass_tx, permit))
                            .await;
                    }
                    .instrument(span),
                );
                (rx, false)
            }
            Join::Follower(rx, span) => {
                span.link_current();
                (rx, true)
            }
        };
        match first_answer(rx, joined).await {
            Start::Streaming { rx, size } => Ok(Served {
                source: BlobSource::Fill(rx),
                size,
                outcome: Outcome::Miss,
            }),
            Start::Complete { file, size, hit } => Ok(Served {
                source: BlobSource::File(file),
                size: Some(size),
                outcome: if hit { Outcome::Hit } else { Outcome::Miss },
            }),
            // No room to store it: the request that started the fill takes over the source's
            // bytes the fill already opened; the others open their own (`pass_through`).
            Start::Failed(FillError::NoRoom) => match handed.map(|mut rx| rx.try_recv()) {
                Some(Ok(pass)) => Ok(pass),
                _ => Err(FillError::NoRoom),
            },
            Start::Failed(e) => Err(e),
        }
    }

    /// The fill task: runs to the end even if every client leaves.
    async fn run<K: Hash + Eq + Clone, F: Fetch>(
        &self,
        mut fetch: F,
        leader: Leader<K>,
        from_peer: bool,
        pass: Handover,
    ) {
        // A fill of the same digest that finished just before this one started.
        if let Some(d) = fetch.known()
            && let Ok(file) = self.0.storage.blobs.open_blob(&d)
            && let Ok(meta) = file.metadata()
        {
            return leader.commit(Arc::new(file), meta.len());
        }
        let mut pass = Some(pass);
        let mut notes = Notes::default();
        let stats = &self.0.fills;
        stats.started.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        // Held (in `pass`) until this fill ends, unless a pass-through takes it along.
        let result = self
            .fill_once(&mut fetch, &leader, from_peer, &mut pass, &mut notes)
            .await;
        if let Err(e) = &result {
            stats.failed(e, notes.rejected.load(Ordering::Relaxed));
        }
        match result {
            Ok((file, size, shared)) => {
                tracing::info!(size, shared, "verified and cached");
                stats.completed.fetch_add(1, Ordering::Relaxed);
                stats.seconds.observe(started.elapsed().as_secs_f64());
                stats.bytes.observe(size as f64);
                stats.waiters.observe(leader.waiters() as f64);
                fetch.committed(size, shared);
                leader.commit(file, size)
            }
            Err(FillError::NoRoom) if notes.spilled.is_some() => {
                let Some(s) = notes.spilled else { return };
                tracing::warn!(
                    written = s.written,
                    "the local disk ran full during the fill; its clients get the rest from the source, unstored"
                );
                if let Some(room) = &self.0.room {
                    room.count_pass_through();
                }
                leader.spill(Spill {
                    file: s.file,
                    written: s.written,
                    size: s.size,
                    expected: s.expected,
                    hasher: s.hasher,
                    limit: s.limit,
                    reopen: Arc::new(Reopener {
                        fetch: std::sync::Mutex::new(fetch),
                        permits: self.0.permits.clone(),
                    }),
                })
            }
            Err(e) => {
                match &e {
                    FillError::NotFound => tracing::debug!("not found upstream"),
                    FillError::Upstream(m) => {
                        tracing::warn!(error = %m, "fill failed; nothing cached")
                    }
                    FillError::Local => tracing::error!("fill failed on local storage"),
                    FillError::NoRoom => tracing::warn!("no room on the local disk for it"),
                    FillError::Unavailable(m) => tracing::debug!(error = %m, "upstream down"),
                    FillError::Busy | FillError::Offline => {}
                }
                leader.fail(e)
            }
        }
    }

    /// Where a miss is filled from, in tier order: the shared tier (when the digest is known),
    /// the replica that owns the object (unless this request came from one), the protocol's
    /// source. Offline, only the shared tier.
    async fn open_source<F: Fetch>(
        &self,
        fetch: &mut F,
        from_peer: bool,
    ) -> Result<(Incoming, Origin), FillError> {
        if let (Some(tier), Some(d)) = (&self.0.tier, fetch.known())
            && let Some(incoming) = tier.get(&d).await
        {
            return Ok((incoming, Origin::Tier(d)));
        }
        if self.0.offline {
            return Err(FillError::Offline);
        }
        if let Some(peers) = self.0.peers.as_ref().filter(|_| !from_peer)
            && let Some(path) = fetch.peer_path()
        {
            let key = fetch
                .known()
                .map_or_else(|| path.clone(), |d| d.to_string());
            if let Some(owner) = peers.owner(&key)
                && let Some(incoming) = peers.get(&owner, &path).await
            {
                fetch.found_at_peer();
                return Ok((incoming, Origin::Peer { owner, key }));
            }
        }
        let incoming = fetch.open().await?.ok_or(FillError::NotFound)?;
        Ok((incoming, Origin::Source))
    }

    async fn fill_once<K: Hash + Eq + Clone, F: Fetch>(
        &self,
        fetch: &mut F,
        leader: &Leader<K>,
        from_peer: bool,
        pass: &mut Option<Handover>,
        notes: &mut Notes,
    ) -> Result<(Arc<File>, u64, bool), FillError> {
        let Notes { spilled, rejected } = notes;
        let (incoming, origin) = self.open_source(fetch, from_peer).await?;
        let limit = fetch.limit();
        if incoming.len.is_some_and(|n| n > limit) {
            return Err(fetch.too_large(limit));
        }
        // Room first: the disk must keep `cache.min_free` after this object.
        if let Some(room) = &self.0.room
            && !room.admit(incoming.len).await
        {
            return Err(self.hand_over(fetch, incoming, pass));
        }
        // What the bytes must hash to when the source is another replica's copy.
        let known = match &origin {
            Origin::Tier(d) => Some(d.clone()),
            Origin::Peer { .. } => fetch.known(),
            Origin::Source => None,
        };
        let bad_copy = |e: FillError| self.bad_copy(&origin, rejected, e);
        let (mut writer, in_memory) = self.writer_for(fetch, incoming.len)?;
        let file = writer.file();
        let mut incoming = incoming;
        // Reserved up front, a full disk says so before any byte goes out, not halfway.
        if let Some(len) = incoming.len.filter(|&n| n <= limit && !in_memory) {
            let reserved;
            (writer, reserved) = reserve(writer, len, &mut incoming).await?;
            if let Err(e) = reserved {
                if super::room::is_full(&e) {
                    if let Some(room) = &self.0.room {
                        room.ran_full();
                    }
                    drop(writer);
                    return Err(self.hand_over(fetch, incoming, pass));
                }
                return Err(local("reserving disk space failed")(e));
            }
        }
        // What the clients were told the size is: every continuation must agree.
        let announced = incoming.len;
        let mut copied = copy(incoming, &mut writer, leader, limit, true).await;
        // A transfer cut mid-body (the tier, the owner replica, or the source itself after some
        // bytes) continues from the protocol's source at the byte where it stopped; the digest
        // covers the whole. A few times at most.
        let mut resumes = 0;
        while matches!(copied, Err(Copied::Failed(FillError::Upstream(_))))
            && !self.0.offline
            && resumes < MAX_RESUMES
            && (!matches!(origin, Origin::Source) || writer.written() > 0)
        {
            resumes += 1;
            self.fill_stats().resumes.fetch_add(1, Ordering::Relaxed);
            let skip = writer.written();
            if let Err(Copied::Failed(FillError::Upstream(why))) = &copied {
                tracing::warn!(skip, error = %why, "the transfer was cut; continuing from the source");
            }
            if let (Some(peers), Origin::Peer { .. }, 1) = (&self.0.peers, &origin, resumes) {
                peers.failed_over();
            }
            let incoming = fetch.open_at(skip).await?.ok_or(FillError::NotFound)?;
            if announced.is_some() && incoming.len != announced {
                return Err(bad_copy(FillError::Upstream(format!(
                    "the continued transfer names {:?} bytes, the first {announced:?}",
                    incoming.len
                ))));
            }
            copied = copy(incoming, &mut writer, leader, limit, false).await;
        }
        let size = match copied {
            Ok(size) => size,
            Err(Copied::TooLarge) => return Err(fetch.too_large(limit)),
            Err(Copied::Failed(e)) => return Err(e),
            Err(Copied::Full(e)) => {
                let expected = fetch.expected().or(known.as_ref()).cloned();
                return Err(self.ran_full(e, expected, &mut writer, announced, limit, spilled));
            }
        };
        // Checks before commit: nothing unverified is ever stored or served in full.
        fetch.check(&file, size).await.map_err(bad_copy)?;
        let digest = match fetch.expected().or(known.as_ref()) {
            Some(d) => d.clone(),
            None => writer.digest().map_err(local("hashing failed"))?,
        };
        let verified = match writer.verify(&digest, Some(size)) {
            Ok(v) => v,
            Err(StorageError::DigestMismatch { expected, actual }) => {
                fetch.rejected(match origin {
                    Origin::Tier(_) => "tier_copy",
                    _ => "blob_digest",
                });
                tracing::error!(%expected, %actual, "content does not match its digest; discarded");
                return Err(bad_copy(FillError::Upstream(format!(
                    "content does not match its digest {expected} (it hashes to {actual})"
                ))));
            }
            Err(e) => return Err(local("verifying the temp file failed")(e)),
        };
        // Clients get their last bytes now; the fsync runs behind them.
        leader.verified(file.clone(), size);
        // A small object's commit is one index insert: no thread hand-off for it.
        if in_memory {
            verified.persist()
        } else {
            tokio::task::spawn_blocking(move || verified.persist())
                .await
                .map_err(local("the commit task failed"))?
        }
        .map_err(local("committing failed"))?;
        // Queued for the shared tier before the records that name it (a no-op without one).
        // What another replica holds is its to upload.
        if matches!(origin, Origin::Source) {
            self.queue(&digest);
        }
        // The object is verified and durable (a small object in the index: with the records
        // written after it, which sled persists in order). A lost record costs a refetch (Go
        // files) or is rebuilt by `fsck --repair` (blobs); the clients already have their bytes.
        if let Err(e) = fetch.record(&self.0.storage.index, &digest, size) {
            tracing::error!(error = %e, "indexing failed; the content stays on disk");
        }
        self.tier_of(&origin).add(size);
        Ok((file, size, !matches!(origin, Origin::Source)))
    }

    /// Another replica's copy whose content fails (digest, protocol checks; not transport
    /// errors or this request's size bound) is removed from the tier, or not asked of that
    /// owner again for a while. Returns `e`.
    fn bad_copy(&self, origin: &Origin, rejected: &AtomicBool, e: FillError) -> FillError {
        if matches!(e, FillError::Upstream(_)) {
            rejected.store(true, Ordering::Relaxed);
            match origin {
                Origin::Tier(d) => {
                    if let Some(tier) = &self.0.tier {
                        tracing::error!(digest = %d, "the shared tier's copy failed its checks; removing it");
                        tier.discard(d);
                    }
                }
                Origin::Peer { owner, key } => {
                    if let Some(peers) = &self.0.peers {
                        tracing::error!(%owner, "the owner replica's copy failed its checks");
                        peers.bad(owner, key);
                    }
                }
                Origin::Source => {}
            }
        }
        e
    }

    /// The writer a fill of `len` bytes starts on: in memory (true) for a small object whose
    /// `Fetch` asks for it, else a file.
    fn writer_for<F: Fetch>(
        &self,
        fetch: &F,
        len: Option<u64>,
    ) -> Result<(BlobWriter, bool), FillError> {
        let blobs = &self.0.storage.blobs;
        let (writer, in_memory) = match len
            .filter(|_| fetch.small())
            .and_then(|n| blobs.small_writer(n))
        {
            Some(w) => (w, true),
            None => (blobs.writer(), false),
        };
        Ok((
            writer.map_err(local("cannot create a temp file"))?,
            in_memory,
        ))
    }

    /// Where the objects filled from `origin` are counted.
    fn tier_of(&self, origin: &Origin) -> &Count {
        match origin {
            Origin::Tier(_) => &self.0.tiers.shared,
            Origin::Peer { .. } => &self.0.tiers.peer,
            Origin::Source => &self.0.tiers.upstream,
        }
    }

    /// `ENOSPC` during a fill: an object named by its digest is finished from the source,
    /// unstored, by every watcher (`spilled`, `FillError::NoRoom`); anything else fails locally.
    fn ran_full(
        &self,
        e: std::io::Error,
        expected: Option<Digest>,
        writer: &mut BlobWriter,
        size: Option<u64>,
        limit: u64,
        spilled: &mut Option<Spilled>,
    ) -> FillError {
        if let Some(room) = &self.0.room {
            room.ran_full();
        }
        match (expected, writer.hash_so_far()) {
            (Some(expected), Ok(hasher)) if !self.0.offline => {
                *spilled = Some(Spilled {
                    file: writer.file(),
                    written: writer.written(),
                    size,
                    expected,
                    hasher,
                    limit,
                });
                FillError::NoRoom
            }
            _ => local("the disk ran full during a fill")(e),
        }
    }

    /// No room for `incoming`: hands it, checked on the way, to the request that started the
    /// fill (when the object is named by its digest). Returns the error every watcher gets.
    fn hand_over<F: Fetch>(
        &self,
        fetch: &F,
        incoming: Incoming,
        pass: &mut Option<Handover>,
    ) -> FillError {
        if let (Some(expected), Some((tx, permit))) = (fetch.expected().cloned(), pass.take()) {
            if let Some(room) = &self.0.room {
                room.count_pass_through();
            }
            tracing::warn!(digest = %expected, size = incoming.len, "no room on the local disk; passing the object through unstored");
            // The stream keeps the fill's permit: a pass-through counts as a fill while it runs.
            let incoming_len = incoming.len;
            let stream = checked_stream(
                incoming,
                expected,
                fetch.limit(),
                Some(permit),
                StartAt::object(),
            );
            let _ = tx.send(Served {
                size: incoming_len,
                source: BlobSource::Pass(stream),
                outcome: Outcome::Bypass,
            });
        }
        FillError::NoRoom
    }

    /// Queues a committed object for the shared tier, if there is one.
    fn queue(&self, digest: &Digest) {
        if self.0.tier.is_some()
            && let Err(e) = self.0.storage.index.queue_blob(digest)
        {
            tracing::warn!(error = %e, "queueing an object for the shared tier failed");
        }
    }

    /// A small object (manifest, checksum-database record) by digest, read whole: from local
    /// disk, else from the shared tier (verified, then stored here). `None` if neither has it
    /// or it is larger than `max`.
    pub async fn read_small(
        &self,
        digest: &Digest,
        max: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let local = self.0.storage.blobs.read_small(digest, max);
        if let Some(body) = local.map_err(StorageError::io("reading a small object"))? {
            return Ok(Some(body));
        }
        let Some(tier) = &self.0.tier else {
            return Ok(None);
        };
        let Some(Incoming { len, mut body }) = tier.get(digest).await else {
            return Ok(None);
        };
        if len.is_some_and(|n| n > max) {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { return Ok(None) };
            if bytes.len() as u64 + chunk.len() as u64 > max {
                return Ok(None);
            }
            bytes.extend_from_slice(&chunk);
        }
        if Digest::of(&bytes) != *digest {
            tracing::error!(%digest, "the shared tier's copy does not match its digest; removing it");
            tier.discard(digest);
            return Ok(None);
        }
        let (blobs, d, b) = (self.0.storage.blobs.clone(), digest.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || blobs.put_bytes(&d, &b))
            .await
            .map_err(|e| StorageError::Io {
                context: "storing a small object".into(),
                source: std::io::Error::other(e),
            })??;
        Ok(Some(bytes))
    }

    /// Stores a small object (manifest, list) in a file, by its digest.
    pub async fn put_small(&self, bytes: Vec<u8>) -> Result<Digest, StorageError> {
        self.put_with(bytes, |blobs, b| {
            blobs.put_bytes(&Digest::of(b), b).map(|c| c.digest)
        })
        .await
    }

    /// Stores a small object (a checksum-database record) in the index rather than in a file
    /// of its own (a file if it is larger than `wharf_storage::SMALL_MAX`).
    pub async fn put_indexed(&self, bytes: Vec<u8>) -> Result<Digest, StorageError> {
        self.put_with(bytes, BlobStore::put_small).await
    }

    /// `store` on the blocking pool, then the object queued for the shared tier.
    async fn put_with(
        &self,
        bytes: Vec<u8>,
        store: fn(&BlobStore, &[u8]) -> Result<Digest, StorageError>,
    ) -> Result<Digest, StorageError> {
        let blobs = self.0.storage.blobs.clone();
        let digest = tokio::task::spawn_blocking(move || store(&blobs, &bytes))
            .await
            .map_err(|e| StorageError::Io {
                context: "storing a small object".into(),
                source: std::io::Error::other(e),
            })??;
        self.queue(&digest);
        Ok(digest)
    }

    /// Stores an uploaded object (an import), hashed as written; with `expected`, it must hash
    /// to that digest (and have `size` bytes, if given) or nothing is stored.
    pub async fn store_upload<E: std::fmt::Display>(
        &self,
        body: impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        expected: Option<Digest>,
        size: Option<u64>,
    ) -> Result<(Digest, u64), UploadError> {
        let mut body = body;
        let mut writer = self.0.storage.blobs.writer()?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Cut(e.to_string()))?;
            writer
                .write_bytes(chunk)
                .map_err(StorageError::io("writing an upload"))?;
        }
        let target = match expected {
            Some(d) => d,
            None => writer.digest()?,
        };
        let t = target.clone();
        let committed = tokio::task::spawn_blocking(move || writer.commit(&t, size))
            .await
            .map_err(|e| StorageError::Io {
                context: "the commit task failed".into(),
                source: std::io::Error::other(e),
            })??;
        self.queue(&target);
        Ok((target, committed.size))
    }

    /// Notes that `digest` was just served (batched; written by `flush_atimes`).
    pub fn touch(&self, digest: &Digest) {
        let now = unix_now();
        let mut a = self.0.atimes.lock().unwrap_or_else(|p| p.into_inner());
        match a.get_mut(digest) {
            Some(t) => *t = now,
            None => {
                a.insert(digest.clone(), now);
            }
        }
    }

    /// Writes the batched access times to the index in one sled batch.
    pub async fn flush_atimes(&self) {
        let batch: Vec<(Digest, u64)> = {
            let mut a = self.0.atimes.lock().unwrap_or_else(|p| p.into_inner());
            a.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        let index = self.0.storage.index.clone();
        let r = tokio::task::spawn_blocking(move || index.put_atimes(&batch)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "writing access times failed");
        }
    }

    /// Fills running now.
    pub fn fills_running(&self) -> usize {
        self.0.max_fills - self.0.permits.available_permits().min(self.0.max_fills)
    }

    /// Waits, at most `limit`, until no fill is running (each holds a fill permit).
    pub async fn finish_fills(&self, limit: std::time::Duration) {
        let running = self.fills_running();
        if running == 0 {
            return;
        }
        let all = u32::try_from(self.0.max_fills).unwrap_or(u32::MAX);
        tracing::info!(running, "waiting for fills to finish");
        if tokio::time::timeout(limit, self.0.permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("fills still running at shutdown were abandoned");
        }
    }
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The client's body ended in an error.
    #[error("upload cut short: {0}")]
    Cut(String),
    /// Digest or size mismatch (the client's fault), or local storage (ours).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A local failure: logged in full with what was being done, reported as `Local`.
fn local<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> FillError {
    move |e| {
        tracing::error!(error = %e, "{what}");
        FillError::Local
    }
}

/// How a fill hands a passed-through object to the request that started it: the channel, and
/// the fill's permit, which the stream keeps.
type Handover = (tokio::sync::oneshot::Sender<Served>, OwnedSemaphorePermit);

/// What a fill whose disk ran full part way leaves its watchers (`run` adds the source).
struct Spilled {
    file: Arc<File>,
    written: u64,
    size: Option<u64>,
    expected: Digest,
    hasher: wharf_storage::Hasher,
    limit: u64,
}

/// A spilled fill's source, shared by its watchers: each opens the rest of the object from
/// where the file stops, holding a fill permit while it streams (waiting for one: its client
/// already has its answer's head), so the rests of one fill count against
/// `server.max_concurrent_fills` like any other transfer.
struct Reopener<F> {
    /// Cloned for each rest, so the rests of one spilled fill wait for their answers side by side.
    fetch: std::sync::Mutex<F>,
    permits: Arc<Semaphore>,
}

impl<F: Fetch> Reopen for Reopener<F> {
    fn open_at(
        &self,
        offset: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Incoming>, FillError>> {
        let mut fetch = self
            .fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let permits = self.permits.clone();
        Box::pin(async move {
            let permit = permits.acquire_owned().await.map_err(|_| FillError::Busy)?;
            let Some(incoming) = fetch.open_at(offset).await? else {
                return Ok(None);
            };
            let body = incoming
                .body
                .map(move |chunk| {
                    let _held = &permit;
                    chunk
                })
                .boxed();
            Ok(Some(Incoming {
                len: incoming.len,
                body,
            }))
        })
    }
}

/// Where a fill's bytes came from.
enum Origin {
    Tier(Digest),
    Peer { owner: String, key: String },
    Source,
}

/// Times a fill cut mid-body continues from its source.
const MAX_RESUMES: u32 = 3;

/// Objects from this size up are reserved on the blocking pool: `fallocate` of a few hundred
/// MiB takes up to a millisecond (ext4), not to be spent on an event loop or before the source's
/// first bytes.
const RESERVE_ASIDE: u64 = 4 << 20;

/// Reserves `len` bytes of disk for `writer`'s object (`BlobWriter::reserve`). A large one
/// runs while the first bytes are on their way from the source; that first chunk stays at the
/// head of `incoming`, so nothing is written, or sent, before the reservation answers.
async fn reserve(
    writer: BlobWriter,
    len: u64,
    incoming: &mut Incoming,
) -> Result<(BlobWriter, std::io::Result<bool>), FillError> {
    if len < RESERVE_ASIDE {
        let reserved = writer.reserve(len);
        return Ok((writer, reserved));
    }
    let reserving = tokio::task::spawn_blocking(move || {
        let reserved = writer.reserve(len);
        (writer, reserved)
    });
    let (reserved, first) = tokio::join!(reserving, incoming.body.next());
    if let Some(first) = first {
        let rest = std::mem::replace(&mut incoming.body, futures_util::stream::empty().boxed());
        incoming.body = futures_util::stream::once(std::future::ready(first))
            .chain(rest)
            .boxed();
    }
    reserved.map_err(|_| FillError::Local)
}

/// `incoming` without its first `n` bytes (already written from another source).
pub fn skip_prefix(incoming: Incoming, n: u64) -> Incoming {
    let mut left = n;
    let body = incoming
        .body
        .filter_map(move |chunk| {
            let out = match chunk {
                Ok(mut b) if left > 0 => {
                    let cut = left.min(b.len() as u64);
                    left -= cut;
                    let rest = b.split_off(cut as usize);
                    (!rest.is_empty()).then_some(Ok(rest))
                }
                other => Some(other),
            };
            std::future::ready(out)
        })
        .boxed();
    Incoming {
        len: incoming.len,
        body,
    }
}

enum Copied {
    TooLarge,
    Failed(FillError),
    /// The file system is full (`ENOSPC`).
    Full(std::io::Error),
}

/// Copies `incoming` into `writer`, at most `limit` bytes and never more than its announced
/// length. Publishes `Streaming` first, then progress. Returns the bytes written.
async fn copy<K: Hash + Eq + Clone>(
    incoming: Incoming,
    writer: &mut BlobWriter,
    leader: &Leader<K>,
    limit: u64,
    first: bool,
) -> Result<u64, Copied> {
    let Incoming { len, mut body } = incoming;
    if len.is_some_and(|n| n > limit) {
        return Err(Copied::TooLarge);
    }
    if first {
        leader.streaming(writer.file(), len);
    }
    let mut notified = writer.written();
    let mut notified_at = std::time::Instant::now();
    loop {
        // Bytes written but not announced wait at most `PROGRESS_EVERY`, also when the source
        // stalls.
        let next = if writer.written() > notified {
            let wait = PROGRESS_EVERY.saturating_sub(notified_at.elapsed());
            match tokio::time::timeout(wait, body.next()).await {
                Ok(next) => next,
                Err(_) => {
                    notified = writer.written();
                    notified_at = std::time::Instant::now();
                    leader.progress(notified);
                    continue;
                }
            }
        } else {
            body.next().await
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(Copied::Failed)?;
        let after = writer.written() + chunk.len() as u64;
        match len {
            Some(n) if after > n => {
                return Err(Copied::Failed(FillError::Upstream(format!(
                    "upstream sent more than its Content-Length of {n}"
                ))));
            }
            None if after > limit => return Err(Copied::TooLarge),
            _ => {}
        }
        writer.write_bytes(chunk).map_err(|e| {
            if super::room::is_full(&e) {
                Copied::Full(e)
            } else {
                Copied::Failed(local("writing the temp file failed")(e))
            }
        })?;
        // The first bytes go out at once (time to first byte); then in steps.
        if notified == 0
            || writer.written() - notified >= progress_step(notified)
            || notified_at.elapsed() >= PROGRESS_EVERY
        {
            notified = writer.written();
            notified_at = std::time::Instant::now();
            leader.progress(notified);
        }
    }
    let written = writer.written();
    leader.progress(written);
    if let Some(expected) = len.filter(|&n| n != written) {
        return Err(Copied::Failed(FillError::Upstream(format!(
            "upstream body ended after {written} of {expected} bytes"
        ))));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn watchers_are_woken_in_steps_that_grow_with_the_fill_up_to_a_mib() {
        assert_eq!(progress_step(0), PROGRESS_STEP);
        assert_eq!(progress_step(100 << 10), PROGRESS_STEP);
        assert_eq!(progress_step(1 << 20), 256 << 10);
        assert_eq!(progress_step(256 << 20), PROGRESS_STEP_MAX);
    }

    /// An in-memory source: `data` in two chunks, optionally failing its check locally.
    #[derive(Clone)]
    struct Mem {
        data: Vec<u8>,
        expected: Option<Digest>,
        opened: Arc<AtomicUsize>,
        check_fails_locally: bool,
        gate: Option<Arc<tokio::sync::Notify>>,
        /// Asked of the owner replica first (a `peer_path`).
        peer: bool,
    }

    impl Mem {
        fn new(data: &[u8], opened: &Arc<AtomicUsize>) -> Mem {
            Mem {
                data: data.to_vec(),
                expected: Some(Digest::of(data)),
                opened: opened.clone(),
                check_fails_locally: false,
                gate: None,
                peer: false,
            }
        }
    }

    impl Fetch for Mem {
        async fn open(&mut self) -> Result<Option<Incoming>, FillError> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            if let Some(g) = &self.gate {
                g.notified().await;
            }
            let (a, b) = self.data.split_at(self.data.len() / 2);
            let chunks = vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
            Ok(Some(Incoming {
                len: Some(self.data.len() as u64),
                body: futures_util::stream::iter(chunks).boxed(),
            }))
        }

        fn expected(&self) -> Option<&Digest> {
            self.expected.as_ref()
        }

        fn peer_path(&self) -> Option<String> {
            self.peer.then(|| "/v2/r/blobs/x".to_string())
        }

        async fn check(&mut self, _f: &Arc<File>, _s: u64) -> Result<(), FillError> {
            if self.check_fails_locally {
                Err(FillError::Local)
            } else {
                Ok(())
            }
        }

        fn record(&self, _i: &Index, _d: &Digest, _s: u64) -> Result<(), StorageError> {
            Ok(())
        }
    }

    /// A source that sends 1 KiB and then 10 KiB of a 1 MiB object, and then nothing.
    #[derive(Clone)]
    struct Stalling(Digest);

    impl Fetch for Stalling {
        async fn open(&mut self) -> Result<Option<Incoming>, FillError> {
            let chunks = vec![
                Ok(Bytes::from(vec![5u8; 1 << 10])),
                Ok(Bytes::from(vec![5u8; 10 << 10])),
            ];
            Ok(Some(Incoming {
                len: Some(1 << 20),
                body: futures_util::stream::iter(chunks)
                    .chain(futures_util::stream::pending())
                    .boxed(),
            }))
        }

        fn expected(&self) -> Option<&Digest> {
            Some(&self.0)
        }

        fn record(&self, _i: &Index, _d: &Digest, _s: u64) -> Result<(), StorageError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn bytes_written_before_a_source_stalls_reach_the_clients() {
        let (e, _d) = engine(false);
        let flights = Arc::new(Flights::default());
        let key = Digest::of(&vec![5u8; 1 << 20]);
        let stalling = || Stalling(key.clone());
        let served = e.fill(&flights, &key, stalling, tracing::Span::none).await;
        let mut body = served.expect("served").into_stream();
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while got < 11 << 10 {
            match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(Ok(chunk))) => got += chunk.len(),
                _ => panic!("{got} of the 11 KiB written reached the client"),
            }
        }
        assert_eq!(got, 11 << 10);
    }

    fn engine(offline: bool) -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        (Engine::new(storage, 4, offline), dir)
    }

    async fn read_all(served: Served) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = served.into_stream();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn many_requests_cost_one_fetch_and_all_get_the_bytes() {
        let (e, _d) = engine(false);
        let flights = Arc::new(Flights::default());
        let data = vec![7u8; 300_000];
        let key = Digest::of(&data);
        let opened = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let (e, flights, key) = (e.clone(), flights.clone(), key.clone());
                let (data, opened, gate) = (data.clone(), opened.clone(), gate.clone());
                tokio::spawn(async move {
                    let mk = || Mem {
                        gate: Some(gate),
                        ..Mem::new(&data, &opened)
                    };
                    let served = e.fill(&flights, &key, mk, tracing::Span::none).await;
                    read_all(served.expect("served"))
                        .await
                        .expect("complete body")
                })
            })
            .collect();
        // Every request has joined before the source answers.
        while flights.coalesced() < 7 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for r in requests {
            assert_eq!(r.await.unwrap(), data);
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            1,
            "one fetch for eight requests"
        );
    }

    #[tokio::test]
    async fn a_digest_mismatch_is_an_upstream_failure_and_nothing_is_stored() {
        let (e, _d) = engine(false);
        let flights = Flights::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let wrong = Digest::of(b"something else");
        let mk = || Mem {
            expected: Some(wrong.clone()),
            ..Mem::new(b"the real bytes", &opened)
        };
        let served = e.fill(&flights, &wrong, mk, tracing::Span::none).await;
        let result = match served {
            Ok(s) => read_all(s).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:?}")),
        };
        assert!(result.is_err(), "a mismatching body was served complete");
        assert!(e.open(&wrong).unwrap().is_none());
        assert!(e.open(&Digest::of(b"the real bytes")).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_local_failure_in_the_checks_is_local_not_upstream() {
        let (e, _d) = engine(false);
        let flights = Flights::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let data = b"module bytes".to_vec();
        let key = Digest::of(&data);
        let mk = || Mem {
            check_fails_locally: true,
            ..Mem::new(&data, &opened)
        };
        let served = e.fill(&flights, &key, mk, tracing::Span::none).await;
        let err = match served {
            Ok(s) => {
                let _ = read_all(s).await;
                // Watch the final state through a second request on the same key.
                e.fill(&flights, &key, mk, tracing::Span::none).await.err()
            }
            Err(e) => Some(e),
        };
        assert_eq!(err, Some(FillError::Local));
        assert!(e.open(&key).unwrap().is_none());
    }

    #[tokio::test]
    async fn offline_never_opens_a_source() {
        let (e, _d) = engine(true);
        let flights = Flights::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let key = Digest::of(b"x");
        let r = e
            .fill(
                &flights,
                &key,
                || Mem::new(b"x", &opened),
                tracing::Span::none,
            )
            .await;
        assert_eq!(r.err(), Some(FillError::Offline));
        assert_eq!(opened.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_committed_fill_is_a_hit_afterwards() {
        let (e, _d) = engine(false);
        let flights = Flights::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let data = vec![3u8; 200_000];
        let key = Digest::of(&data);
        let served = e
            .fill(
                &flights,
                &key,
                || Mem::new(&data, &opened),
                tracing::Span::none,
            )
            .await
            .unwrap();
        assert_eq!(read_all(served).await.unwrap(), data);
        // The fill task commits in the background; wait for the flight to end.
        for _ in 0..100 {
            if flights.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (f, size) = e.open(&key).unwrap().expect("committed");
        assert_eq!(size, data.len() as u64);
        drop(f);
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    /// An owner replica that sends the first half of `data`, then fails.
    struct HalfPeer {
        data: Vec<u8>,
        failovers: Arc<AtomicUsize>,
    }

    impl Peers for HalfPeer {
        fn owner(&self, _key: &str) -> Option<String> {
            Some("http://owner".into())
        }

        fn get(
            &self,
            _owner: &str,
            _path: &str,
        ) -> futures_util::future::BoxFuture<'static, Option<Incoming>> {
            let half = Bytes::copy_from_slice(&self.data[..self.data.len() / 2]);
            let len = self.data.len() as u64;
            Box::pin(async move {
                let chunks = vec![Ok(half), Err(FillError::Upstream("owner died".into()))];
                Some(Incoming {
                    len: Some(len),
                    body: futures_util::stream::iter(chunks).boxed(),
                })
            })
        }

        fn failed_over(&self) {
            self.failovers.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Mem {
        fn peered(data: &[u8], opened: &Arc<AtomicUsize>) -> Mem {
            Mem {
                peer: true,
                ..Mem::new(data, opened)
            }
        }
    }

    #[tokio::test]
    async fn an_owner_that_dies_mid_body_is_finished_from_the_source() {
        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        let failovers = Arc::new(AtomicUsize::new(0));
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::new(Storage::open(dir.path()).unwrap(), 4, false).with_peers(Arc::new(
            HalfPeer {
                data: data.clone(),
                failovers: failovers.clone(),
            },
        ));
        let flights = Flights::default();
        let key = Digest::of(&data);
        let opened = Arc::new(AtomicUsize::new(0));
        let served = e
            .fill(
                &flights,
                &key,
                || Mem::peered(&data, &opened),
                tracing::Span::none,
            )
            .await
            .expect("served");
        assert_eq!(read_all(served).await.expect("complete body"), data);
        assert_eq!(failovers.load(Ordering::SeqCst), 1);
        assert_eq!(
            opened.load(Ordering::SeqCst),
            1,
            "the source finished the fill"
        );
    }

    #[tokio::test]
    async fn rests_of_one_spilled_fill_wait_for_their_sources_side_by_side() {
        let opened = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut mem = Mem::new(b"0123456789", &opened);
        mem.gate = Some(gate.clone());
        let reopen = Reopener {
            fetch: std::sync::Mutex::new(mem),
            permits: Arc::new(Semaphore::new(4)),
        };
        let (a, b) = (reopen.open_at(4), reopen.open_at(4));
        let (a, b) = (tokio::spawn(a), tokio::spawn(b));
        // Both ask their source before either has an answer: no rest waits behind another.
        for _ in 0..100 {
            if opened.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        gate.notify_waiters();
        for rest in [a, b] {
            let incoming = rest.await.unwrap().unwrap().unwrap();
            let body: Vec<Bytes> = incoming.body.map(|c| c.unwrap()).collect().await;
            assert_eq!(body.concat(), b"456789");
        }
    }
}
