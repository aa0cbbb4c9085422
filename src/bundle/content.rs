//! `Content`: where the bytes that the bundle check (`apply::check`) reads are. An import checks
//! what it uploaded into this wharf's storage (`Stored`); `wharf export --check` checks a bundle
//! file in place (`tools::check`), so both run the one check. Nothing here writes.

use std::sync::Arc;

use wharf_storage::{Digest, Storage, StorageError};

use super::BundleError;

/// What the check reads, by digest.
pub trait Content: Send + Sync {
    /// An object's size, if it is present.
    fn size(&self, digest: &Digest) -> Result<Option<u64>, BundleError>;
    /// An object of at most `max` bytes, whole.
    fn read_small(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, String>;
    /// A module zip's `h1:` once it passed the zip rules. Blocking.
    fn zip_h1(&self, digest: &Digest, path: &str, version: &str) -> Result<String, String>;
    /// A checksum-database file held outside the bundle (by this wharf's cache): an import may
    /// lean on it; a bundle checked on its own has none.
    fn cached_sumdb(&self, db: &str, path: &str) -> Result<Option<Digest>, String>;

    fn contains(&self, digest: &Digest) -> bool {
        matches!(self.size(digest), Ok(Some(_)))
    }
}

/// This wharf's storage: blobs, and the checksum-database files its index records.
pub struct Stored(pub Storage);

impl Stored {
    pub fn shared(storage: &Storage) -> Arc<dyn Content> {
        Arc::new(Stored(storage.clone()))
    }
}

impl Content for Stored {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, BundleError> {
        Ok(self.0.blobs.size(digest).map_err(StorageError::io(format!(
            "cannot read the size of blob {digest}"
        )))?)
    }

    fn read_small(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, String> {
        self.0
            .blobs
            .read_small(digest, max)
            .map_err(|e| e.to_string())
    }

    fn zip_h1(&self, digest: &Digest, path: &str, version: &str) -> Result<String, String> {
        let file = self.0.blobs.open_blob(digest).map_err(|e| e.to_string())?;
        crate::goproxy::hash::check_and_hash_zip(&file, path, version).map_err(|e| e.to_string())
    }

    fn cached_sumdb(&self, db: &str, path: &str) -> Result<Option<Digest>, String> {
        self.0
            .index
            .get_sumdb(db, path)
            .map(|r| r.map(|r| r.digest))
            .map_err(|e| e.to_string())
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.0.blobs.contains(digest)
    }
}
