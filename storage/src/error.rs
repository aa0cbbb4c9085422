//! `StorageError`: every way the storage crate can fail, with messages that name the path, key or
//! digest involved. Must not decide HTTP status or wording for clients; the server maps these.

use std::io;

use crate::digest::Digest;
use crate::keys::KeyError;

/// An error from the blob store, the index or fsck.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A filesystem operation failed; `context` says what was being done to which path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// sled failed (I/O under the index).
    #[error("index database error: {0}")]
    Index(#[from] sled::Error),
    /// Another process (a running server) holds the index's lock.
    #[error(
        "the data directory {dir} is in use by another wharf process (a running server holds its \
         lock); stop it first, or use the commands that go through it (`wharf stats`, `wharf gc`)"
    )]
    InUse { dir: String },
    /// A stored index record (or its key) could not be decoded.
    #[error("corrupt index record {key}: {reason}")]
    CorruptRecord { key: String, reason: String },
    /// Written bytes hash to something other than the digest they were fetched under.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Written byte count differs from the announced size (truncated or overlong body).
    #[error("blob size mismatch: expected {expected} bytes, got {actual} bytes")]
    SizeMismatch { expected: u64, actual: u64 },
    /// An index key component cannot be encoded (it contains the NUL separator).
    #[error("invalid index key: {0}")]
    InvalidKey(#[from] KeyError),
}

impl StorageError {
    /// Wraps an `io::Error` with what was being done, for `map_err`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
        let context = context.into();
        move |source| StorageError::Io { context, source }
    }
}
