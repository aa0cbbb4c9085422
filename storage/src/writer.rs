//! `BlobWriter`: the only way into `blobs/`. Bytes go to a temp file (a spare in `spare/`, or a
//! new file in `tmp/`) and are hashed and counted as they are written; `verify` checks digest and
//! size (`Verified`), then `persist` makes the blob durable and visible with one rename (`commit`
//! does both). Dropping the writer or a `Verified` without persisting deletes the temp file. Must
//! not re-read what it wrote to hash it, and must not touch the index (callers index after
//! persisting) except the `small` tree a small object is persisted into.
//!
//! Why two steps: a fill may release its verified bytes to clients at once and leave the fsync
//! (which for a large blob waits for the disk) to run behind them.
//!
//! A small object (`BlobStore::small_writer`) is written to an anonymous in-memory file
//! (`memfd`) instead, and `persist` puts its bytes into the index's `small` tree: no inode on the
//! data directory's file system, no fsync (sled persists it with the records written after it).
//!
//! Writes are blocking file I/O and `persist` fsyncs: from async code call them through
//! `tokio::task::spawn_blocking` (or `block_in_place`). `verify` only finishes the hash.
//!
//! Past `BACKGROUND_AFTER` bytes, chunks given as `Bytes` (`write_bytes`) are hashed on a thread
//! of the writer's own while the caller goes on, so a large fill hashes on one core and copies on
//! another. The hash still covers exactly the bytes that reached the file, in order. A writer
//! whose thread may only run on one CPU (`taskset`, a cpuset) hashes inline: there the thread
//! would only add context switches (a tier hit on one CPU: 8% more throughput inline).

use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::digest::{Digest, Hasher};
use crate::error::StorageError;
use crate::layout::Layout;

/// Mode of committed blobs: nobody, not even wharf, writes a blob after commit.
const BLOB_MODE: u32 = 0o444;

/// Objects up to this size are hashed inline; past it, `write_bytes` hashes on another thread.
const BACKGROUND_AFTER: u64 = 4 << 20;

/// Bytes handed to the hashing thread at once: one wake-up per batch, not per network read.
const BATCH: usize = 1 << 20;

/// Batches queued for the hashing thread before `write_bytes` waits for it.
const BACKGROUND_QUEUE: usize = 8;

/// The running hash: here, or on a thread fed in order, in batches, through a bounded queue.
enum Hashing {
    Inline(Hasher),
    Background {
        queue: SyncSender<Vec<Bytes>>,
        thread: JoinHandle<Hasher>,
        batch: Vec<Bytes>,
        batched: usize,
    },
}

/// A blob that is now in `blobs/` under its digest (a small object: in the index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// Its path in `blobs/` (for a small object, where it would be).
    pub path: PathBuf,
}

/// A fill in progress: a temp file being written, hashed and counted.
pub struct BlobWriter {
    layout: Layout,
    temp_path: PathBuf,
    file: Arc<File>,
    hashing: Hashing,
    written: u64,
    /// Set once the temp file is gone (renamed, or removed); Drop then has nothing to do.
    finished: bool,
    /// Past `BACKGROUND_AFTER`, the writing thread could run on one CPU only: hash inline.
    stay_inline: bool,
    /// A small object: `file` is a memfd (`temp_path` names nothing) and `persist` stores the
    /// bytes in this tree.
    small: Option<sled::Tree>,
}

impl BlobWriter {
    /// Starts on `spare` (a path in `layout.spare_dir()` and its empty file, open), or else on a
    /// new temp file in `layout.tmp_dir()`. Called by `BlobStore::writer`.
    pub(crate) fn create(
        layout: Layout,
        spare: Option<(PathBuf, File)>,
    ) -> Result<BlobWriter, StorageError> {
        let (temp_path, file) = match spare {
            Some(spare) => spare,
            None => {
                let temp_path = layout.new_temp_path();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp_path)
                    .map_err(StorageError::io(format!(
                        "create temp file {}",
                        temp_path.display()
                    )))?;
                (temp_path, file)
            }
        };
        Ok(BlobWriter {
            layout,
            temp_path,
            file: Arc::new(file),
            hashing: Hashing::Inline(Hasher::new()),
            written: 0,
            finished: false,
            stay_inline: false,
            small: None,
        })
    }

    /// Starts a small object in memory, to be kept in `tree` (`BlobStore::small_writer`).
    pub(crate) fn create_small(
        layout: Layout,
        tree: sled::Tree,
    ) -> Result<BlobWriter, StorageError> {
        let file = memfd("wharf-small").map_err(StorageError::io("create an in-memory file"))?;
        Ok(BlobWriter {
            temp_path: layout.tmp_dir().join("(in memory)"),
            layout,
            file: Arc::new(file),
            hashing: Hashing::Inline(Hasher::new()),
            written: 0,
            finished: false,
            stay_inline: false,
            small: Some(tree),
        })
    }

    /// Reserves `len` bytes of disk for this object before anything is written, so a full
    /// file system says so now (`ENOSPC`) and not halfway through. `Ok(false)`: the file system
    /// cannot reserve (no `fallocate`); writes may then still run out of space.
    pub fn reserve(&self, len: u64) -> io::Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        match rustix::fs::fallocate(&*self.file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends `buf`. Writes are positional (`pwrite` at `written()`), so readers sharing
    /// `file()` may use `read_at` freely. Only bytes that reached the file are hashed and counted,
    /// so after an error the writer still describes the file exactly (callers normally abort).
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.hashing {
            Hashing::Inline(_) => self.write_hashed(buf, |h, b| {
                if let Hashing::Inline(h) = h {
                    h.update(b)
                }
            }),
            Hashing::Background { .. } => self.write_bytes(Bytes::copy_from_slice(buf)),
        }
    }

    /// Appends `chunk` like `write_all`; a large object's chunks are hashed on another thread.
    pub fn write_bytes(&mut self, chunk: Bytes) -> io::Result<()> {
        if matches!(self.hashing, Hashing::Inline(_))
            && !self.stay_inline
            && self.written + chunk.len() as u64 > BACKGROUND_AFTER
        {
            if on_one_cpu() {
                self.stay_inline = true;
            } else {
                self.hash_in_background()?;
            }
        }
        if matches!(self.hashing, Hashing::Inline(_)) {
            return self.write_all(&chunk);
        }
        let start = self.written;
        let result = self.write_hashed(&chunk, |_, _| {});
        let reached = (self.written - start) as usize;
        if reached > 0
            && let Hashing::Background {
                queue,
                batch,
                batched,
                ..
            } = &mut self.hashing
        {
            batch.push(chunk.slice(..reached));
            *batched += reached;
            if *batched >= BATCH {
                *batched = 0;
                if queue.send(std::mem::take(batch)).is_err() {
                    return Err(io::Error::other("the hashing thread stopped"));
                }
            }
        }
        result
    }

    /// Writes `buf` at the end of the file, handing each part that reached it to `hash`.
    fn write_hashed(
        &mut self,
        mut buf: &[u8],
        hash: impl Fn(&mut Hashing, &[u8]),
    ) -> io::Result<()> {
        while !buf.is_empty() {
            match self.file.write_at(buf, self.written) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    hash(&mut self.hashing, &buf[..n]);
                    self.written += n as u64;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves the running hash to a thread of its own.
    fn hash_in_background(&mut self) -> io::Result<()> {
        let Hashing::Inline(hasher) =
            std::mem::replace(&mut self.hashing, Hashing::Inline(Hasher::new()))
        else {
            return Ok(());
        };
        let (queue, batches) = sync_channel::<Vec<Bytes>>(BACKGROUND_QUEUE);
        let mut moved = hasher.clone();
        let spawned = std::thread::Builder::new()
            .name("wharf-hash".into())
            .spawn(move || {
                for chunk in batches.iter().flatten() {
                    moved.update(&chunk);
                }
                moved
            });
        self.hashing = match spawned {
            Ok(thread) => Hashing::Background {
                queue,
                thread,
                batch: Vec::new(),
                batched: 0,
            },
            // No thread to be had: go on hashing inline.
            Err(_) => Hashing::Inline(hasher),
        };
        Ok(())
    }

    /// The hash of everything written so far, waiting for the hashing thread if there is one.
    fn hasher(&mut self) -> io::Result<Hasher> {
        let hashing = std::mem::replace(&mut self.hashing, Hashing::Inline(Hasher::new()));
        let hasher = match hashing {
            Hashing::Inline(h) => h,
            Hashing::Background {
                queue,
                thread,
                batch,
                ..
            } => {
                if !batch.is_empty() && queue.send(batch).is_err() {
                    return Err(io::Error::other("the hashing thread stopped"));
                }
                drop(queue);
                thread
                    .join()
                    .map_err(|_| io::Error::other("the hashing thread failed"))?
            }
        };
        self.hashing = Hashing::Inline(hasher.clone());
        Ok(hasher)
    }

    /// The running hash of everything written so far, to be continued elsewhere (a fill whose
    /// disk ran full hashes the rest of the object as it streams it from the source).
    pub fn hash_so_far(&mut self) -> Result<Hasher, StorageError> {
        self.hasher()
            .map_err(StorageError::io("hash the temp file".to_string()))
    }

    /// The digest of everything written so far (the content's own name, for content whose digest
    /// is not known in advance, such as Go module files).
    pub fn digest(&mut self) -> Result<Digest, StorageError> {
        self.hasher()
            .map(Hasher::finish)
            .map_err(StorageError::io("hash the temp file".to_string()))
    }

    /// Bytes written so far; readers of `file()` may read this many.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A shared handle to the growing file, for concurrent readers. Read it only with positional
    /// reads (`FileExt::read_at`); it stays valid after commit (same inode, now under `blobs/`)
    /// and after abort (the inode lives until the last handle closes).
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Where the temp file is, for log lines.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Verifies and publishes the blob: `verify`, then `persist`. Blocking (fsync).
    pub fn commit(
        self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<Committed, StorageError> {
        self.verify(expected, expected_size)?.persist()
    }

    /// Checks size (if given) and digest. On a mismatch the temp file is removed and the mismatch
    /// returned; nothing reaches `blobs/`. Does no I/O on success.
    pub fn verify(
        mut self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<Verified, StorageError> {
        let actual = self
            .hasher()
            .map_err(StorageError::io(format!(
                "hash {}",
                self.temp_path.display()
            )))?
            .finish();
        let size = self.written;
        if let Some(expected_size) = expected_size.filter(|&n| n != size) {
            self.discard();
            return Err(StorageError::SizeMismatch {
                expected: expected_size,
                actual: size,
            });
        }
        if actual != *expected {
            self.discard();
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(Verified {
            writer: self,
            digest: actual,
        })
    }

    /// Gives up on this fill and deletes the temp file (same as dropping the writer).
    pub fn abort(self) {}

    fn discard(&mut self) {
        if !self.finished {
            self.finished = true;
            if self.small.is_some() {
                return;
            }
            // Best effort: a leftover temp file is swept at the next start.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// A temp file whose content matched its digest, not yet durable nor visible in `blobs/`.
/// Dropping it deletes the temp file.
#[derive(Debug)]
pub struct Verified {
    writer: BlobWriter,
    digest: Digest,
}

impl Verified {
    pub fn size(&self) -> u64 {
        self.writer.written
    }

    /// Publishes the blob. Blocking (fsync), so call it from `spawn_blocking`.
    ///
    /// 1. The file is made read-only and fsynced.
    /// 2. If `blob_path` already holds a file of the same size (a concurrent fill of the same
    ///    digest won), that file is kept and the temp file dropped. A file of another size there is
    ///    damaged and is replaced.
    /// 3. Otherwise rename into place, then fsync the fan-out directory, and `blobs/sha256` too
    ///    if the fan-out directory was just created, so the name survives a crash.
    pub fn persist(mut self) -> Result<Committed, StorageError> {
        let w = &mut self.writer;
        let size = w.written;
        if let Some(tree) = w.small.take() {
            w.finished = true;
            let mut bytes = vec![0; usize::try_from(size).unwrap_or(0)];
            w.file
                .read_exact_at(&mut bytes, 0)
                .map_err(StorageError::io("read back a small object"))?;
            tree.insert(self.digest.hex(), bytes)?;
            return Ok(Committed {
                path: w.layout.blob_path(&self.digest),
                digest: self.digest,
                size,
            });
        }
        let temp = w.temp_path.display().to_string();
        w.file
            .set_permissions(Permissions::from_mode(BLOB_MODE))
            .map_err(StorageError::io(format!("make {temp} read-only")))?;
        w.file
            .sync_all()
            .map_err(StorageError::io(format!("fsync {temp}")))?;

        let path = w.layout.blob_path(&self.digest);
        let fanout = w.layout.fanout_dir(&self.digest);
        let fanout_created = create_dir_if_missing(&fanout)?;

        match fs::symlink_metadata(&path) {
            Ok(existing) if existing.is_file() && existing.len() == size => {
                w.discard();
                return Ok(Committed {
                    digest: self.digest,
                    size,
                    path,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::Io {
                    context: format!("stat {}", path.display()),
                    source: e,
                });
            }
        }

        fs::rename(&w.temp_path, &path).map_err(StorageError::io(format!(
            "rename {temp} to {}",
            path.display()
        )))?;
        w.finished = true;
        sync_dir(&fanout)?;
        if fanout_created {
            sync_dir(&w.layout.blobs_dir())?;
        }
        Ok(Committed {
            digest: self.digest,
            size,
            path,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("temp_path", &self.temp_path)
            .field("written", &self.written)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// An anonymous file in memory (close-on-exec), for objects kept in the index.
pub(crate) fn memfd(name: &str) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(File::from(fd))
}

/// Whether the calling thread may run on one CPU only (an unknown answer: no).
fn on_one_cpu() -> bool {
    rustix::thread::sched_getaffinity(None).is_ok_and(|cpus| cpus.count() == 1)
}

/// Creates `dir` (its parent must exist); true if this call created it. When two fills race to
/// create the same fan-out directory, the creator fsyncs the parent; the other may return first.
/// That window exists once per fan-out directory, and a blob lost in it shows up in fsck as missing.
pub(crate) fn create_dir_if_missing(dir: &Path) -> Result<bool, StorageError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StorageError::Io {
            context: format!("create directory {}", dir.display()),
            source: e,
        }),
    }
}

/// fsync a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(format!(
            "fsync directory {}",
            dir.display()
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes past `BACKGROUND_AFTER` on a new thread with `cpus` as its affinity (`None`: as
    /// inherited); whether the writer hashed in the background, and whether the digest held.
    fn fill_on(cpus: Option<rustix::thread::CpuSet>) -> (bool, bool) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::create_dir_all(layout.tmp_dir()).unwrap();
        fs::create_dir_all(layout.blobs_dir()).unwrap();
        std::thread::spawn(move || {
            if let Some(cpus) = cpus {
                rustix::thread::sched_setaffinity(None, &cpus).unwrap();
            }
            let body: Vec<u8> = (0..(BACKGROUND_AFTER as usize + (3 << 20)))
                .map(|i| (i % 251) as u8)
                .collect();
            let mut w = BlobWriter::create(layout, None).unwrap();
            for part in body.chunks(256 << 10) {
                w.write_bytes(Bytes::copy_from_slice(part)).unwrap();
            }
            let background = matches!(w.hashing, Hashing::Background { .. });
            (background, w.commit(&Digest::of(&body), None).is_ok())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_writer_that_may_run_on_one_cpu_hashes_inline() {
        let mine = rustix::thread::sched_getaffinity(None).unwrap();
        let first = (0..rustix::thread::CpuSet::MAX_CPU)
            .find(|&c| mine.is_set(c))
            .unwrap();
        let mut one = rustix::thread::CpuSet::new();
        one.set(first);
        assert_eq!(fill_on(Some(one)), (false, true));
        if mine.count() > 1 {
            assert_eq!(fill_on(None), (true, true), "more CPUs: a hashing thread");
        }
    }
}
