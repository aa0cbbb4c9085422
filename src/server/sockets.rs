//! Open connections and the descriptor limit. Every accepted connection has a `Slot` (requests
//! in flight, idle since when, how to close it). Past `server.max_connections` (by default the
//! process's descriptor limit less a reserve for files, fills and upstream sockets), the
//! connection idle the longest (no request in flight: keep-alive between requests, HTTP/2
//! without streams, a client that never sent one) is closed to make room; with none idle, the new
//! connection is closed at once. An `accept` that fails (`EMFILE`) sheds idle connections too,
//! and is logged at most once a second with a count. Counts go to `Metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::task::AbortHandle;

use crate::metrics::Metrics;

/// Idle connections closed per failed `accept`.
const SHED_ON_ERROR: usize = 8;

pub(super) struct Sockets {
    max: usize,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// Accept failures not yet logged, and when the last line was written (ms since `epoch`).
    unlogged: AtomicU64,
    logged_ms: AtomicU64,
}

/// One connection: requests in flight, since when it has had none, and its task.
pub(super) struct Slot {
    busy: AtomicUsize,
    /// Closed by shedding (its task may not have ended yet).
    shed: std::sync::atomic::AtomicBool,
    idle_since_ms: AtomicU64,
    task: OnceLock<AbortHandle>,
    epoch: Instant,
}

/// Unregisters its connection when the connection's task ends (or is aborted).
pub(super) struct Registered {
    sockets: Arc<Sockets>,
    id: u64,
    pub slot: Arc<Slot>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.sockets.slots).remove(&self.id);
        self.sockets.metrics.connection_closed();
    }
}

/// A request in flight on a slot's connection, until dropped.
pub(super) struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn busy(self: &Arc<Slot>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// The task serving this connection, so shedding can close it.
    pub fn set_task(&self, task: AbortHandle) {
        let _ = self.task.set(task);
    }

    fn idle_since(&self) -> Option<u64> {
        let idle = self.busy.load(Ordering::Acquire) == 0 && !self.shed.load(Ordering::Relaxed);
        idle.then(|| self.idle_since_ms.load(Ordering::Acquire))
    }
}

impl Sockets {
    /// `max` connections (0: the descriptor limit less a reserve).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Sockets> {
        let max = if max == 0 { from_fd_limit() } else { max };
        tracing::debug!(max, "connections kept open at most");
        Arc::new(Sockets {
            max,
            slots: Mutex::default(),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
            unlogged: AtomicU64::new(0),
            logged_ms: AtomicU64::new(0),
        })
    }

    /// Registers a new connection; `None` when it must be closed at once (at the limit, and
    /// nothing idle to close instead).
    pub fn register(self: &Arc<Sockets>) -> Option<Registered> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            shed: std::sync::atomic::AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            task: OnceLock::new(),
            epoch: self.epoch,
        });
        slot.idle_since_ms.store(slot.now_ms(), Ordering::Relaxed);
        let open = {
            let mut slots = lock(&self.slots);
            slots.insert(id, slot.clone());
            slots.len()
        };
        self.metrics.connection_opened();
        let reg = Registered {
            sockets: self.clone(),
            id,
            slot,
        };
        if open > self.max && self.shed(1, Some(id)) == 0 {
            self.metrics.connection_refused();
            tracing::debug!(
                open,
                max = self.max,
                "at the connection limit with none idle; closing the new one"
            );
            return None;
        }
        Some(reg)
    }

    /// Closes up to `n` of the connections idle the longest (never `except`); returns how many.
    fn shed(&self, n: usize, except: Option<u64>) -> usize {
        let mut idle: Vec<(u64, u64, Arc<Slot>)> = lock(&self.slots)
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter_map(|(id, s)| s.idle_since().map(|t| (t, *id, s.clone())))
            .collect();
        idle.sort_unstable_by_key(|(t, id, _)| (*t, *id));
        let mut closed = 0;
        for (_, _, slot) in idle.into_iter().take(n) {
            if let Some(task) = slot.task.get() {
                slot.shed.store(true, Ordering::Relaxed);
                task.abort();
                closed += 1;
            }
        }
        if closed > 0 {
            self.metrics.connections_shed(closed as u64);
        }
        closed
    }

    /// An `accept` failed: sheds idle connections (the error is usually `EMFILE`), logs at most
    /// once a second.
    pub fn accept_failed(&self, e: &std::io::Error) {
        self.metrics.accept_failed();
        let shed = self.shed(SHED_ON_ERROR, None);
        let n = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.store(0, Ordering::Relaxed);
            tracing::warn!(error = %e, failures = n, shed, open = lock(&self.slots).len(),
                "accepting connections failed (raise LimitNOFILE or lower server.max_connections)");
        }
    }
}

/// The descriptor limit less a reserve for what else holds descriptors (files being sent, fills,
/// upstream and peer sockets, the index): an eighth of the limit, at least 32, at most half.
fn from_fd_limit() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(65536)
        .min(1 << 20);
    let soft = usize::try_from(soft).unwrap_or(1 << 20);
    let reserve = (soft / 8).max(32).min(soft / 2);
    soft - reserve
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves "connection" `r` forever (until aborted), as the accept loop does.
    fn serve(r: Registered) -> (Arc<Slot>, tokio::task::JoinHandle<()>) {
        let slot = r.slot.clone();
        let t = tokio::spawn(async move {
            let _r = r;
            std::future::pending::<()>().await
        });
        slot.set_task(t.abort_handle());
        (slot, t)
    }

    #[tokio::test]
    async fn past_the_limit_the_longest_idle_connection_is_closed_and_never_a_busy_one() {
        let sockets = Sockets::new(2, Arc::default());
        let (_a, ta) = serve(sockets.register().unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (b, tb) = serve(sockets.register().unwrap());
        let busy = b.busy();
        // A third: `a` is idle the longest; `b` is busy.
        let (_c, tc) = serve(sockets.register().expect("room made"));
        assert!(ta.await.unwrap_err().is_cancelled(), "a was shed");
        assert!(!tb.is_finished(), "b is busy");
        assert_eq!(lock(&sockets.slots).len(), 2, "a unregistered");
        // At the limit with b busy: c, idle, goes for d.
        let (_d, _td) = serve(sockets.register().expect("c shed"));
        assert!(tc.await.unwrap_err().is_cancelled(), "c was shed");
        drop(busy);
        assert_eq!(lock(&sockets.slots).len(), 2);
    }

    #[tokio::test]
    async fn at_the_limit_with_nothing_idle_the_new_connection_is_refused() {
        let sockets = Sockets::new(1, Arc::default());
        let a = sockets.register().unwrap();
        let _busy = a.slot.busy();
        assert!(sockets.register().is_none());
        assert_eq!(lock(&sockets.slots).len(), 1, "the refused one is gone");
    }

    #[test]
    fn the_default_leaves_a_reserve_below_the_descriptor_limit() {
        let max = from_fd_limit();
        assert!(max >= 32);
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(65536);
        assert!((max as u64) < soft.max(64));
    }
}
