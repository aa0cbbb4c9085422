//! Room on the data directory's file system: whether a fill may be stored, or must go to its
//! clients without being stored (pass-through, `X-Cache: BYPASS`). A fill of known size is let in
//! when `cache.min_free` stays free after it, evicting first if that makes room; of unknown size,
//! when the disk is above `min_free` and has not run full lately. `ENOSPC` seen by a fill marks
//! the disk full for a while. Reads the file system's counters (`statvfs`), never the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::config::MinFree;

/// How long an `ENOSPC` keeps fills of unknown size out and `/healthz` degraded.
const FULL_FOR: Duration = Duration::from_secs(60);

/// How often eviction may be tried for room (it walks the store).
const EVICT_EVERY: Duration = Duration::from_secs(10);

/// Frees at least the given bytes if it can (least recently used, unpinned content first).
pub type Evictor = Arc<dyn Fn(u64) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct Room {
    dir: PathBuf,
    min_free: MinFree,
    evictor: Option<Evictor>,
    /// Unix seconds of the last `ENOSPC` (0: never).
    full_at: AtomicU64,
    /// Unix seconds of the last eviction tried for room.
    evicted_at: AtomicU64,
    /// Fills that went to their clients without being stored.
    passed: AtomicU64,
}

/// The data directory's file system now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
    pub min_free: u64,
}

impl Room {
    pub fn new(dir: PathBuf, min_free: MinFree, evictor: Option<Evictor>) -> Room {
        Room {
            dir,
            min_free,
            evictor,
            full_at: AtomicU64::new(0),
            evicted_at: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        }
    }

    /// Free and total bytes (for unprivileged writers), `None` if the file system cannot say.
    pub fn space(&self) -> Option<Space> {
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        let unit = st.f_frsize.max(1);
        let total = st.f_blocks.saturating_mul(unit);
        Some(Space {
            free: st.f_bavail.saturating_mul(unit),
            total,
            min_free: self.min_free.bytes(total),
        })
    }

    /// Whether a fill of `len` bytes (unknown: `None`) may be stored. Evicts first when that
    /// would make room.
    pub async fn admit(&self, len: Option<u64>) -> bool {
        let Some(space) = self.space() else {
            return true;
        };
        if self.fits(space, len) {
            return true;
        }
        let need = len.unwrap_or(0).saturating_add(space.min_free);
        if let Some(evict) = &self.evictor
            && self.may_evict()
        {
            tracing::info!(
                free = space.free,
                need,
                "too little room on the data directory's file system; evicting"
            );
            evict(need - space.free.min(need)).await;
            if let Some(space) = self.space()
                && self.fits(space, len)
            {
                return true;
            }
        }
        false
    }

    fn fits(&self, s: Space, len: Option<u64>) -> bool {
        match len {
            Some(n) => s.free >= n.saturating_add(s.min_free),
            None => s.free >= s.min_free && !self.ran_full_lately(),
        }
    }

    fn may_evict(&self) -> bool {
        let now = wharf_storage::unix_now();
        let last = self.evicted_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= EVICT_EVERY.as_secs()
            && self
                .evicted_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// A write failed with `ENOSPC`.
    pub fn ran_full(&self) {
        self.full_at
            .store(wharf_storage::unix_now(), Ordering::Relaxed);
    }

    pub fn ran_full_lately(&self) -> bool {
        let at = self.full_at.load(Ordering::Relaxed);
        at != 0 && wharf_storage::unix_now().saturating_sub(at) < FULL_FOR.as_secs()
    }

    /// Why the disk is a problem now, for `/healthz`: `None` when it is fine.
    pub fn problem(&self) -> Option<&'static str> {
        if self.ran_full_lately() {
            return Some("disk full");
        }
        let s = self.space()?;
        (s.free < s.min_free).then_some("below min_free")
    }

    pub fn count_pass_through(&self) {
        self.passed.fetch_add(1, Ordering::Relaxed);
    }

    /// Fills that went to their clients without being stored, since start.
    pub fn passed_through(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

/// Whether an I/O error says the file system is full.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
