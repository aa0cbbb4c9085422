//! wharf-storage: content-addressed blobs on disk plus a sled index of what they are. The server
//! (`cache`, `registry`, `goproxy`) builds on this crate; it knows nothing of HTTP, upstreams or
//! protocols, and must never depend on axum or reqwest.
//!
//! | module      | owns                                                                 |
//! |-------------|----------------------------------------------------------------------|
//! | `digest`    | `Digest` (`sha256:<64 lowercase hex>`), incremental `Hasher`          |
//! | `layout`    | every path under the data directory                                  |
//! | `writer`    | `BlobWriter`: temp file, hash while writing, fsync, rename; Drop aborts |
//! | `spare`     | empty files made ahead on a thread, so fills create no inode inline   |
//! | `blob`      | `BlobStore`: committed blobs: open, stat, list, verify, remove; small |
//! |             | objects (<= 16 KiB, when the caller asks) in the index's `small` tree |
//! | `keys`      | composite index keys (NUL-separated components)                      |
//! | `index`     | sled trees and versioned records                                     |
//! | `outbox`    | what is still to be copied to the shared tier, in commit order       |
//! | `fsck`      | index vs. disk check and repair (blobs on disk are the truth)         |
//! | `error`     | `StorageError`                                                       |
//!
//! A miss on local disk is filled through a `BlobWriter` from wherever the bytes come from (an
//! upstream today, a shared object store later); only `commit` puts a blob into `blobs/`.

mod blob;
mod digest;
mod error;
mod fsck;
pub mod gc;
mod index;
mod keys;
mod layout;
mod outbox;
mod spare;
mod writer;

use std::path::PathBuf;

pub use blob::{BlobCheck, BlobStore, DiskEntry, SMALL_MAX};
pub use digest::{Digest, DigestError, Hasher};
pub use error::StorageError;
pub use fsck::{FsckReport, fsck};
pub use gc::{GcReport, collect};
pub use index::{
    AtimeRecord, BlobRecord, GoFileKey, GoFileRecord, GoListKey, GoListRecord, Index, LinkKey,
    LinkRecord, PinRecord, Referrer, ReferrersKey, ReferrersRecord, RefsRecord, SHARED_TREES,
    SumdbKey, SumdbRecord, TagKey, TagListKey, TagListRecord, TagRecord, TrustRecord, unix_now,
};
pub use keys::KeyError;
pub use layout::Layout;
pub use outbox::Pending;
pub use writer::{BlobWriter, Committed, Verified};

/// One data directory: its layout, blobs and index.
#[derive(Clone, Debug)]
pub struct Storage {
    pub layout: Layout,
    pub blobs: BlobStore,
    pub index: Index,
}

impl Storage {
    /// Opens `data_dir`, creating it if needed. The index is opened first: sled's lock makes a
    /// second process (or a second open in this one) fail here, before the blob store sweeps
    /// `tmp/` of fills that may belong to the first. Blocking.
    pub fn open(data_dir: impl Into<PathBuf>) -> Result<Storage, StorageError> {
        let layout = Layout::new(data_dir);
        std::fs::create_dir_all(layout.root()).map_err(StorageError::io(format!(
            "create data directory {}",
            layout.root().display()
        )))?;
        let index = Index::open(layout.index_dir())?;
        let blobs = BlobStore::open(layout.clone())?.with_small(index.small_tree()?);
        Ok(Storage {
            layout,
            blobs,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn storage_handles_can_be_shared_across_tasks() {
        assert_send_sync::<Storage>();
        assert_send_sync::<BlobWriter>();
        assert_send_sync::<StorageError>();
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        assert_send(&storage.index.flush_async());
    }
}
