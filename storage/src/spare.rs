//! `Spares`: empty files made ahead of time in `spare/` by a thread of their own, so that a fill
//! does not allocate an inode on its request path. Must not hold descriptors (a spare is a path)
//! and must not touch `tmp/`.
//!
//! Why: creating a file can cost far more than writing a small one. On ext4 without a journal,
//! the inode allocator skips every inode freed in the last minute, reading each one's table
//! block: right after many deletions (eviction, a cleared cache) a create took 1.2 ms here, the
//! largest single cost of a cold `.mod` fill. A fill takes a spare where it is (its path leaves
//! the ready list; no rename, which would wait for the directory lock the thread holds while it
//! creates the next one: 0.6 ms here) and creates its own file in `tmp/` only when none is
//! ready. The thread starts with the server (`BlobStore::make_spares`) or else with the first
//! fill, keeps `READY` spares, and after an error (a full disk) waits before trying again. When the store is dropped it removes
//! what it made; what a killed process left in `spare/` is swept at the next open, like `tmp/`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use crate::layout::Layout;

/// Spares kept ready: more than the fills a burst of requests starts at once.
const READY: usize = 8;

/// Wait after a failed create (a full disk, no inodes) before the next try.
const BACKOFF: Duration = Duration::from_secs(1);

/// The spares of one data directory; dropping the last handle stops its thread.
#[derive(Debug)]
pub(crate) struct Spares {
    shared: Arc<Shared>,
    started: Once,
}

#[derive(Debug)]
struct Shared {
    layout: Layout,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<PathBuf>,
    closed: bool,
}

impl Spares {
    pub(crate) fn new(layout: Layout) -> Spares {
        Spares {
            shared: Arc::new(Shared {
                layout,
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
            started: Once::new(),
        }
    }

    /// Starts the thread (once): a server does at start, so that neither the first fills nor
    /// the requests beside them wait for the first spares being made.
    pub(crate) fn start(&self) {
        self.started.call_once(|| {
            let shared = self.shared.clone();
            // No thread (a limit on threads): fills create their own files, as before.
            let _ = std::thread::Builder::new()
                .name("wharf-spares".into())
                .spawn(move || make_spares(&shared));
        });
    }

    /// A new, empty file in `spare/`, now the caller's, open for reading and writing, if a
    /// spare was ready (else `None`: the caller creates one). Starts the thread on first use.
    pub(crate) fn take(&self) -> Option<(PathBuf, File)> {
        self.start();
        let spare = {
            let mut state = self.shared.lock();
            let spare = state.ready.pop();
            self.shared.wake.notify_one();
            spare?
        };
        match OpenOptions::new().read(true).write(true).open(&spare) {
            Ok(file) => Some((spare, file)),
            Err(_) => {
                let _ = fs::remove_file(&spare);
                None
            }
        }
    }

    #[cfg(test)]
    fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The thread: tops the spares up to `READY` until the store is dropped, then removes them.
fn make_spares(shared: &Shared) {
    loop {
        {
            let mut state = shared.lock();
            while state.ready.len() >= READY && !state.closed {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.closed {
                for spare in state.ready.drain(..) {
                    let _ = fs::remove_file(spare);
                }
                return;
            }
        }
        match create(&shared.layout) {
            Ok(spare) => {
                let mut state = shared.lock();
                if state.closed {
                    let _ = fs::remove_file(spare);
                } else {
                    state.ready.push(spare);
                }
            }
            Err(_) => {
                let state = shared.lock();
                if !state.closed {
                    let _ = shared.wake.wait_timeout(state, BACKOFF);
                }
            }
        }
    }
}

fn create(layout: &Layout) -> std::io::Result<PathBuf> {
    let path = layout.new_spare_path();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}");
    }

    fn count(dir: PathBuf) -> usize {
        fs::read_dir(dir).map_or(0, |d| d.count())
    }

    #[test]
    fn spares_are_made_after_the_first_take_handed_out_once_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::create_dir_all(layout.tmp_dir()).unwrap();
        fs::create_dir_all(layout.spare_dir()).unwrap();
        let spares = Spares::new(layout.clone());
        // Nothing is made before a fill asks (or the server starts the thread).
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count(layout.spare_dir()), 0);
        // The first take starts the thread; it may already find a spare.
        let mut taken: Vec<PathBuf> = spares.take().into_iter().map(|(path, _)| path).collect();
        wait_for("spares", || spares.ready() == READY);
        assert_eq!(count(layout.spare_dir()), READY + taken.len());
        for _ in 0..READY {
            let Some((path, _file)) = spares.take() else {
                continue;
            };
            assert!(path.starts_with(layout.spare_dir()), "{}", path.display());
            assert_eq!(fs::metadata(&path).unwrap().len(), 0);
            taken.push(path);
        }
        assert!(!taken.is_empty());
        let mut unique = taken.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), taken.len(), "a spare is handed out once");
        wait_for("refill", || spares.ready() == READY);
        drop(spares);
        // The ready ones are removed; what fills took stays theirs.
        wait_for("removal", || count(layout.spare_dir()) == taken.len());
        assert!(taken.iter().all(|p| p.exists()));
    }

    #[test]
    fn without_a_spare_directory_fills_are_told_to_create_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("gone"));
        let spares = Spares::new(layout);
        for _ in 0..3 {
            assert!(spares.take().is_none());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
