//! `BlobStore`: committed blobs on disk, addressed by digest: open, stat, list, verify, remove.
//! Must not write into `blobs/` except through `BlobWriter::commit`, and must not touch the index
//! except its own `small` tree: objects of at most `SMALL_MAX` bytes that a caller chose to keep
//! there (`small_writer`, `put_small`), so that thousands of tiny ones (Go `.mod` and `.info`
//! files, checksum-database records) cost no file, directory entry or fsync each. They are
//! opened as in-memory files, so readers see one kind of object.
//!
//! Everything here is blocking file I/O; from async code use `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{Digest, Hasher};
use crate::error::StorageError;
use crate::layout::Layout;
use crate::spare::Spares;
use crate::writer::{BlobWriter, Committed, create_dir_if_missing, sync_dir};

/// Buffer size for hashing whole files in `verify`.
const VERIFY_BUF: usize = 1 << 20;

/// Largest object kept in the index's `small` tree.
pub const SMALL_MAX: u64 = 16 << 10;

/// The blob directory of one data directory. Cheap to clone (a path and a handle).
#[derive(Clone, Debug)]
pub struct BlobStore {
    layout: Layout,
    spares: Arc<Spares>,
    /// Small objects (digest hex -> bytes); `None` for a store opened without an index.
    small: Option<sled::Tree>,
}

/// One file found under `blobs/sha256` by `BlobStore::list`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskEntry {
    /// A regular file at the path its name says: digest and size in bytes (not yet verified).
    Blob(Digest, u64),
    /// Anything else: a misnamed or misplaced file, a symlink, a nested directory.
    Stray(PathBuf),
}

/// Result of hashing a blob file against its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    Ok { size: u64 },
    Missing,
    Corrupt { actual: Digest, size: u64 },
}

impl BlobStore {
    /// Creates `blobs/sha256` with its 256 fan-out directories (so no fill makes one: on a
    /// file system with many recently freed inodes a `mkdir` can take milliseconds), `tmp/`
    /// and `spare/`, then deletes everything in `tmp/` and `spare/`: a fill left there by an
    /// earlier process can never be completed. Only call this while holding the data directory
    /// exclusively (`Storage::open` takes the index lock first), or a live fill of another
    /// process would be swept away.
    pub fn open(layout: Layout) -> Result<BlobStore, StorageError> {
        for dir in [layout.blobs_dir(), layout.tmp_dir(), layout.spare_dir()] {
            fs::create_dir_all(&dir).map_err(StorageError::io(format!(
                "create directory {}",
                dir.display()
            )))?;
        }
        make_fanouts(&layout)?;
        sweep(&layout.tmp_dir())?;
        sweep(&layout.spare_dir())?;
        let spares = Arc::new(Spares::new(layout.clone()));
        Ok(BlobStore {
            layout,
            spares,
            small: None,
        })
    }

    /// The same store, keeping small objects in `tree` (`Storage::open` passes the index's).
    pub(crate) fn with_small(mut self, tree: sled::Tree) -> BlobStore {
        self.small = Some(tree);
        self
    }

    /// A small object's bytes, if it is one.
    fn small(&self, digest: &Digest) -> io::Result<Option<sled::IVec>> {
        match &self.small {
            Some(tree) => tree.get(digest.hex()).map_err(io::Error::other),
            None => Ok(None),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Starts making the spare files fills start on, now rather than at the first fill (which
    /// would then share its CPU with making them). For a server; tools need not.
    pub fn make_spares(&self) {
        self.spares.start();
    }

    /// Starts a fill: a new temp file in `tmp/` (a spare made ahead when one is ready).
    pub fn writer(&self) -> Result<BlobWriter, StorageError> {
        BlobWriter::create(self.layout.clone(), self.spares.take())
    }

    /// Starts a fill of an object of `len` bytes to be kept in the index: in memory, no file.
    /// `None` when it is larger than `SMALL_MAX` or the store has no index (use `writer`).
    pub fn small_writer(&self, len: u64) -> Option<Result<BlobWriter, StorageError>> {
        let tree = self.small.as_ref().filter(|_| len <= SMALL_MAX)?;
        Some(BlobWriter::create_small(self.layout.clone(), tree.clone()))
    }

    /// Keeps `bytes` (at most `SMALL_MAX`) in the index under their digest; larger ones, or
    /// without an index, go to a file as `put_bytes` does. Blocking.
    pub fn put_small(&self, bytes: &[u8]) -> Result<Digest, StorageError> {
        let digest = Digest::of(bytes);
        match self
            .small
            .as_ref()
            .filter(|_| bytes.len() as u64 <= SMALL_MAX)
        {
            Some(tree) => {
                tree.insert(digest.hex(), bytes)?;
            }
            None => {
                self.put_bytes(&digest, bytes)?;
            }
        }
        Ok(digest)
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob_path(digest)
    }

    /// Whether `digest` is stored, as a file or a small object (not whether it is intact: see
    /// `verify`).
    pub fn contains(&self, digest: &Digest) -> bool {
        matches!(self.small(digest), Ok(Some(_)))
            || fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Opens the blob for reading (a small object as an in-memory copy); `NotFound` if absent.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<File> {
        if let Some(bytes) = self.small(digest)? {
            let file = crate::writer::memfd("wharf-small")?;
            std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 0)?;
            return Ok(file);
        }
        File::open(self.path(digest))
    }

    /// The blob's size in bytes, or `None` if absent.
    pub fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        if let Some(bytes) = self.small(digest)? {
            return Ok(Some(bytes.len() as u64));
        }
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the blob, file and small copy alike (a byte-identical `.mod` may arrive once with
    /// a length and once without); false if neither was there. Touches no index record.
    pub fn remove(&self, digest: &Digest) -> io::Result<bool> {
        let small = match &self.small {
            Some(tree) => tree
                .remove(digest.hex())
                .map_err(io::Error::other)?
                .is_some(),
            None => false,
        };
        match fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(small),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole blob (a manifest, a .mod file) into memory; `None` if absent. A blob larger
    /// than `max` bytes is an `InvalidData` error rather than a large allocation.
    pub fn read_small(&self, digest: &Digest, max: u64) -> io::Result<Option<Vec<u8>>> {
        let too_large = |len: u64| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {digest} is {len} bytes, more than the {max}-byte limit"),
            )
        };
        if let Some(bytes) = self.small(digest)? {
            if bytes.len() as u64 > max {
                return Err(too_large(bytes.len() as u64));
            }
            return Ok(Some(bytes.to_vec()));
        }
        let file = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len > max {
            return Err(too_large(len));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(Some(bytes))
    }

    /// Stores `bytes` under `digest` (writer + commit); fails with `DigestMismatch` if they do
    /// not hash to it. Blocking.
    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<Committed, StorageError> {
        let mut writer = self.writer()?;
        writer.write_all(bytes).map_err(StorageError::io(format!(
            "write temp file {}",
            writer.temp_path().display()
        )))?;
        writer.commit(digest, Some(bytes.len() as u64))
    }

    /// Every file under `blobs/sha256` and every small object, sorted: blobs by digest, then
    /// strays by path. Files that vanish while listing are skipped; other errors name the path.
    pub fn list(&self) -> io::Result<Vec<DiskEntry>> {
        let mut entries = Vec::new();
        for item in self.small.iter().flat_map(|t| t.iter()) {
            let (key, bytes) = item.map_err(io::Error::other)?;
            match std::str::from_utf8(&key)
                .ok()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            {
                Some(d) => entries.push(DiskEntry::Blob(d, bytes.len() as u64)),
                // A key that is no digest: named as if it were a path under the index.
                None => entries.push(DiskEntry::Stray(
                    self.layout
                        .index_dir()
                        .join(format!("small/{}", hex::encode(&key))),
                )),
            }
        }
        for fanout in read_dir_sorted(&self.layout.blobs_dir())? {
            let Some(meta) = stat(&fanout)? else { continue };
            if !meta.is_dir() {
                entries.push(DiskEntry::Stray(fanout));
                continue;
            }
            for path in read_dir_sorted(&fanout)? {
                let Some(meta) = stat(&path)? else { continue };
                match self.layout.digest_of_blob_path(&path) {
                    Some(digest) if meta.is_file() => {
                        entries.push(DiskEntry::Blob(digest, meta.len()))
                    }
                    _ => entries.push(DiskEntry::Stray(path)),
                }
            }
        }
        entries.sort();
        // A digest kept both ways is one object.
        entries.dedup_by(
            |b, a| matches!((a, b), (DiskEntry::Blob(x, _), DiskEntry::Blob(y, _)) if x == y),
        );
        Ok(entries)
    }

    /// Hashes the whole object and compares with its name. Errors name the path.
    /// A digest kept both as a small object and as a file is checked both ways; either copy
    /// corrupt is `Corrupt`.
    pub fn verify(&self, digest: &Digest) -> io::Result<BlobCheck> {
        let small = match self.small(digest)? {
            Some(bytes) => {
                let actual = Digest::of(&bytes);
                let size = bytes.len() as u64;
                if actual != *digest {
                    return Ok(BlobCheck::Corrupt { actual, size });
                }
                Some(BlobCheck::Ok { size })
            }
            None => None,
        };
        match (self.verify_file(digest)?, small) {
            (BlobCheck::Missing, Some(ok)) => Ok(ok),
            (file, _) => Ok(file),
        }
    }

    /// `verify` of the file alone.
    fn verify_file(&self, digest: &Digest) -> io::Result<BlobCheck> {
        let path = self.path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BlobCheck::Missing),
            Err(e) => return Err(naming(&path, e)),
        };
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; VERIFY_BUF];
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(naming(&path, e)),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let actual = hasher.finish();
        Ok(if actual == *digest {
            BlobCheck::Ok { size }
        } else {
            BlobCheck::Corrupt { actual, size }
        })
    }
}

/// Creates the fan-out directories `00`..`ff` that are missing, then makes them durable.
fn make_fanouts(layout: &Layout) -> Result<(), StorageError> {
    let blobs = layout.blobs_dir();
    let mut created = false;
    for byte in 0..=255u8 {
        created |= create_dir_if_missing(&blobs.join(hex::encode([byte])))?;
    }
    if created {
        sync_dir(&blobs)?;
    }
    Ok(())
}

/// Deletes every entry of `dir` (files and whole subdirectories).
fn sweep(dir: &Path) -> Result<(), StorageError> {
    let entries = read_dir_sorted(dir).map_err(StorageError::io(format!(
        "list temp directory {}",
        dir.display()
    )))?;
    for path in entries {
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let removed = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::Io {
                    context: format!("remove stale temp file {}", path.display()),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// The entries of `dir`, sorted; errors name `dir`.
fn read_dir_sorted(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::read_dir(dir)
        .and_then(|entries| {
            let mut paths = entries
                .map(|entry| entry.map(|e| e.path()))
                .collect::<io::Result<Vec<_>>>()?;
            paths.sort();
            Ok(paths)
        })
        .map_err(|e| naming(dir, e))
}

/// `lstat`, with `None` for a path that no longer exists; errors name the path.
fn stat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(naming(path, e)),
    }
}

/// Puts `path` into an `io::Error`'s message, keeping its kind.
fn naming(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
