//! Single flight with fan-out. The first request for a key becomes the `Leader`: the caller
//! spawns the fill with it, so a client going away cannot cancel the fill for the others. Every
//! request, the first included, watches the fill's `FillState` and streams from the growing
//! temp file through a shared handle.
//!
//! Invariants:
//! 1. At most one fill per key is in flight (the map holds one receiver per key).
//! 2. The leader's entry is removed on Drop, after its final state is published; a fill that
//!    ends without publishing one is reported to every watcher as failed.
//! 3. `Verified` is published only after the bytes matched their digest (and any other check
//!    of the caller): from then on watchers may read the whole file. `Committed` follows once
//!    the blob is durable, renamed and indexed; a watcher cannot tell the two apart.

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tokio::sync::watch;
use wharf_storage::{Digest, Hasher};

/// Why a fill failed; cloned to every watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillError {
    /// Upstream says the object does not exist.
    NotFound,
    /// Upstream failed or sent bad bytes; the message is safe to show a client.
    Upstream(String),
    /// The upstream is marked down (`egress.failure_threshold`); nothing was asked of it.
    Unavailable(String),
    /// Local I/O or the index failed (disk full, ...); details are logged, not shown.
    Local,
    /// Too many fills are running (`server.max_concurrent_fills`); retry shortly.
    Busy,
    /// `offline = true`: nothing is fetched.
    Offline,
    /// The local disk cannot take it (`cache.min_free`, `ENOSPC`): a protocol that can verify
    /// the bytes on the way passes them through (`Engine::pass_through`).
    NoRoom,
}

/// The bytes of one object on their way in: a length if the source announced one, and the body.
pub struct Incoming {
    pub len: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, FillError>>,
}

impl Incoming {
    /// Bytes already in memory (a file of a directory source).
    pub fn from_bytes(data: Vec<u8>) -> Incoming {
        Incoming {
            len: Some(data.len() as u64),
            body: futures_util::stream::once(async move { Ok(Bytes::from(data)) }).boxed(),
        }
    }
}

/// Opens a spilled fill's object again at its source, from a byte on (`Fetch::open_at`).
pub trait Reopen: Send + Sync {
    fn open_at(&self, offset: u64) -> BoxFuture<'static, Result<Option<Incoming>, FillError>>;
}

/// A fill whose local disk ran full (`ENOSPC`) part way. `file` keeps its first `written`
/// bytes; every watcher sends those, then streams the rest from the source itself (`reopen`),
/// hashing it on from `hasher` (the state after `written` bytes): what it sends is checked
/// against `expected` as a fill's bytes are, and its last byte waits for that verdict.
pub struct Spill {
    pub file: Arc<File>,
    pub written: u64,
    /// What the fill announced (`None`: unknown): the rest must agree.
    pub size: Option<u64>,
    pub expected: Digest,
    pub hasher: Hasher,
    pub limit: u64,
    pub reopen: Arc<dyn Reopen>,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("written", &self.written)
            .field("size", &self.size)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for upstream response headers.
    Pending,
    /// Bytes are arriving: `written` of `size` (unknown when upstream sent no length).
    Streaming {
        file: Arc<File>,
        size: Option<u64>,
        written: u64,
    },
    /// All `size` bytes are in the file and verified; being made durable.
    Verified {
        file: Arc<File>,
        size: u64,
    },
    /// Verified, on disk, indexed.
    Committed {
        file: Arc<File>,
        size: u64,
    },
    Failed(FillError),
    /// The disk ran full: nothing is stored, and each watcher finishes from the source.
    Spilled(Arc<Spill>),
}

impl FillState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            FillState::Committed { .. } | FillState::Failed(_) | FillState::Spilled(_)
        )
    }
}

/// Per key: the fill's state, how many requests joined it after the first, and its span.
type Map<K> = Arc<Mutex<HashMap<K, (watch::Receiver<FillState>, Arc<AtomicU64>, FillSpan)>>>;

/// The span of a fill (set by the request that started it), for the requests that join it
/// to link to: one slow pull can be followed from any waiting client to the upstream.
#[derive(Clone, Default)]
pub struct FillSpan(Arc<OnceLock<tracing::Id>>);

impl FillSpan {
    pub fn set(&self, span: &tracing::Span) {
        if let Some(id) = span.id() {
            let _ = self.0.set(id);
        }
    }

    /// Links the current span (a request that joined the fill) to the fill's.
    pub fn link_current(&self) {
        if let Some(id) = self.0.get() {
            tracing::Span::current().follows_from(id.clone());
        }
    }
}

pub struct Flights<K> {
    map: Map<K>,
    coalesced: AtomicU64,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Flights {
            map: Arc::default(),
            coalesced: AtomicU64::new(0),
        }
    }
}

pub enum Join<K: Hash + Eq + Clone> {
    /// Start the fill with this leader (in a spawned task), then watch like everyone else.
    Leader(Leader<K>, watch::Receiver<FillState>),
    /// A fill is already running: watch it (and link to its span).
    Follower(watch::Receiver<FillState>, FillSpan),
}

impl<K: Hash + Eq + Clone> Flights<K> {
    pub fn join(&self, key: &K) -> Join<K> {
        let mut map = lock(&self.map);
        if let Some((rx, joined, span)) = map.get(key) {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            joined.fetch_add(1, Ordering::Relaxed);
            return Join::Follower(rx.clone(), span.clone());
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        let joined = Arc::new(AtomicU64::new(0));
        let span = FillSpan::default();
        map.insert(key.clone(), (rx.clone(), joined.clone(), span.clone()));
        Join::Leader(
            Leader {
                key: key.clone(),
                map: self.map.clone(),
                tx,
                joined,
                span,
            },
            rx,
        )
    }

    /// Requests that joined a fill already in flight, since start.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.map).len()
    }
}

/// The right and duty to fill one key. Dropping it ends the flight.
pub struct Leader<K: Hash + Eq + Clone> {
    key: K,
    map: Map<K>,
    tx: watch::Sender<FillState>,
    joined: Arc<AtomicU64>,
    span: FillSpan,
}

impl<K: Hash + Eq + Clone> Leader<K> {
    /// The fill runs in `span`: the requests that join it link to it.
    pub fn trace(&self, span: &tracing::Span) {
        self.span.set(span);
    }

    /// Requests waiting on this fill so far, the first included.
    pub fn waiters(&self) -> u64 {
        self.joined.load(Ordering::Relaxed) + 1
    }

    pub fn streaming(&self, file: Arc<File>, size: Option<u64>) {
        self.tx.send_replace(FillState::Streaming {
            file,
            size,
            written: 0,
        });
    }

    pub fn progress(&self, now_written: u64) {
        self.tx.send_modify(|s| {
            if let FillState::Streaming { written, .. } = s {
                *written = now_written;
            }
        });
    }

    /// The bytes are complete and verified: watchers may read them all.
    pub fn verified(&self, file: Arc<File>, size: u64) {
        self.tx.send_replace(FillState::Verified { file, size });
    }

    pub fn commit(self, file: Arc<File>, size: u64) {
        self.tx.send_replace(FillState::Committed { file, size });
    }

    pub fn fail(self, err: FillError) {
        self.tx.send_replace(FillState::Failed(err));
    }

    /// The disk ran full part way: the watchers finish from the source (`Spill`).
    pub fn spill(self, spill: Spill) {
        self.tx.send_replace(FillState::Spilled(Arc::new(spill)));
    }
}

impl<K: Hash + Eq + Clone> Drop for Leader<K> {
    fn drop(&mut self) {
        // Publish a final state first, then leave the map, so no watcher waits forever.
        if !self.tx.borrow().is_terminal() {
            self.tx.send_replace(FillState::Failed(FillError::Upstream(
                "the fill was abandoned".into(),
            )));
        }
        lock(&self.map).remove(&self.key);
    }
}

/// How a fill first answers a request that watches it.
pub enum Start {
    /// Bytes are arriving: stream them from the fill.
    Streaming {
        rx: watch::Receiver<FillState>,
        size: Option<u64>,
    },
    /// Complete and verified. `hit`: it already was when the request joined, so the request
    /// waited on no upstream.
    Complete {
        file: Arc<File>,
        size: u64,
        hit: bool,
    },
    Failed(FillError),
}

/// Waits until the fill has bytes to stream, is complete, or failed: a response can then be
/// started (clients give up after ~30 s without headers). `follower`: the request joined a
/// fill someone else started.
pub async fn first_answer(mut rx: watch::Receiver<FillState>, follower: bool) -> Start {
    let mut on_arrival = follower;
    loop {
        let state = rx.borrow_and_update().clone();
        match state {
            FillState::Pending => {}
            FillState::Streaming { size, .. } => return Start::Streaming { rx, size },
            FillState::Spilled(spill) => {
                let size = spill.size;
                return Start::Streaming { rx, size };
            }
            FillState::Verified { file, size } | FillState::Committed { file, size } => {
                return Start::Complete {
                    file,
                    size,
                    hit: on_arrival,
                };
            }
            FillState::Failed(e) => return Start::Failed(e),
        }
        on_arrival = false;
        if rx.changed().await.is_err() && !rx.borrow().is_terminal() {
            return Start::Failed(FillError::Upstream(
                "the fill ended without a result".into(),
            ));
        }
    }
}

/// Waits for the fill's verdict: the whole object verified (from then on the file may be read
/// to its end, like a hit), or why it failed. For objects small enough to be checked completely
/// before the first byte of an answer goes out, so a refusal is a status, not a cut body.
pub async fn verdict(mut rx: watch::Receiver<FillState>) -> Result<(Arc<File>, u64), FillError> {
    loop {
        let state = rx.borrow_and_update().clone();
        match state {
            FillState::Verified { file, size } | FillState::Committed { file, size } => {
                return Ok((file, size));
            }
            FillState::Failed(e) => return Err(e),
            // Not stored, so not checked whole before an answer: pass it through.
            FillState::Spilled(_) => return Err(FillError::NoRoom),
            FillState::Pending | FillState::Streaming { .. } => {}
        }
        if rx.changed().await.is_err() && !rx.borrow().is_terminal() {
            return Err(FillError::Upstream(
                "the fill ended without a result".into(),
            ));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_join_follows_and_drop_frees_the_key() {
        let f: Flights<&str> = Flights::default();
        let Join::Leader(leader, rx1) = f.join(&"k") else {
            panic!("first join must lead")
        };
        let Join::Follower(rx2, _) = f.join(&"k") else {
            panic!("second join must follow")
        };
        assert_eq!(f.coalesced(), 1);
        drop(leader);
        assert!(matches!(*rx1.borrow(), FillState::Failed(_)));
        assert!(matches!(*rx2.borrow(), FillState::Failed(_)));
        assert_eq!(f.in_flight(), 0);
        assert!(matches!(f.join(&"k"), Join::Leader(..)));
    }

    #[tokio::test]
    async fn a_verdict_waits_past_streaming_for_verified_or_failed() {
        let f: Flights<&str> = Flights::default();
        let file = Arc::new(tempfile::tempfile().unwrap());
        let Join::Leader(leader, rx) = f.join(&"ok") else {
            panic!("first join must lead")
        };
        let waiting = tokio::spawn(verdict(rx));
        leader.streaming(file.clone(), Some(3));
        leader.progress(3);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "streaming is no verdict");
        leader.verified(file.clone(), 3);
        let (_, size) = waiting.await.unwrap().expect("verified");
        assert_eq!(size, 3);
        leader.commit(file.clone(), 3);

        let Join::Leader(leader, rx) = f.join(&"bad") else {
            panic!("first join must lead")
        };
        let waiting = tokio::spawn(verdict(rx));
        leader.streaming(file, None);
        leader.fail(FillError::Upstream("checksum mismatch".into()));
        assert_eq!(
            waiting.await.unwrap().err(),
            Some(FillError::Upstream("checksum mismatch".into()))
        );

        let Join::Leader(leader, rx) = f.join(&"dropped") else {
            panic!("first join must lead")
        };
        drop(leader);
        assert!(matches!(verdict(rx).await, Err(FillError::Upstream(_))));
    }
}
