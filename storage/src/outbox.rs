//! The outbox: what this replica must still copy to the shared tier, in commit order. An entry
//! is a committed blob (`Blob`) or a record written to a replicated tree (`Record`: the tree's
//! name, the key and the encoded value as stored). Only written while sharing is on
//! (`Index::set_sharing`); the uploader reads a batch, copies it, then drops it (`done`), so a
//! restart resumes where it stopped. Blobs come before the records that name them, because the
//! engine queues a blob before its records are written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Digest, StorageError};

const BLOB: u8 = b'b';
const RECORD: u8 = b'r';

/// One thing to copy to the shared tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Blob(Digest),
    Record {
        tree: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

/// A handle to the `outbox` tree, shared by every replicated tree of an index.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    on: Arc<AtomicBool>,
}

impl Outbox {
    pub(crate) fn open(db: &sled::Db) -> Result<Outbox, StorageError> {
        Ok(Outbox {
            db: db.clone(),
            tree: db.open_tree("outbox")?,
            on: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub(crate) fn push(&self, p: &Pending) -> Result<(), StorageError> {
        if !self.is_on() {
            return Ok(());
        }
        let id = self.db.generate_id()?;
        self.tree.insert(id.to_be_bytes(), encode(p))?;
        Ok(())
    }

    /// At most `max` entries, oldest first, with their ids. An entry that does not decode is
    /// dropped with a warning in the caller's log (its id comes back with `None`).
    pub(crate) fn batch(&self, max: usize) -> Result<Vec<(u64, Option<Pending>)>, StorageError> {
        let mut out = Vec::new();
        for item in self.tree.iter().take(max) {
            let (k, v) = item?;
            let id = <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes);
            out.push((id, decode(&v)));
        }
        Ok(out)
    }

    pub(crate) fn done(&self, ids: &[u64]) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for id in ids {
            b.remove(&id.to_be_bytes());
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.tree.len()
    }

    /// Every entry's key with whether it decodes, for fsck.
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }
}

fn encode(p: &Pending) -> Vec<u8> {
    match p {
        Pending::Blob(d) => {
            let mut v = vec![BLOB];
            v.extend_from_slice(d.as_str().as_bytes());
            v
        }
        Pending::Record { tree, key, value } => {
            let mut v = Vec::with_capacity(1 + 1 + tree.len() + 4 + key.len() + value.len());
            v.push(RECORD);
            v.push(u8::try_from(tree.len()).unwrap_or(u8::MAX));
            v.extend_from_slice(&tree.as_bytes()[..tree.len().min(255)]);
            v.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
            v.extend_from_slice(key);
            v.extend_from_slice(value);
            v
        }
    }
}

pub(crate) fn decode(v: &[u8]) -> Option<Pending> {
    let (&kind, rest) = v.split_first()?;
    match kind {
        BLOB => Digest::parse(std::str::from_utf8(rest).ok()?)
            .ok()
            .map(Pending::Blob),
        RECORD => {
            let (&n, rest) = rest.split_first()?;
            let (tree, rest) = rest.split_at_checked(n as usize)?;
            let (len, rest) = rest.split_at_checked(4)?;
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            let (key, value) = rest.split_at_checked(len)?;
            Some(Pending::Record {
                tree: std::str::from_utf8(tree).ok()?.to_owned(),
                key: key.to_vec(),
                value: value.to_vec(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_does_not_decode() {
        let r = Pending::Record {
            tree: "tags".into(),
            key: b"a\0b\0c".to_vec(),
            value: b"\x01{}".to_vec(),
        };
        assert_eq!(decode(&encode(&r)), Some(r));
        let b = Pending::Blob(Digest::of(b"x"));
        assert_eq!(decode(&encode(&b)), Some(b));
        assert_eq!(decode(b"r\x09tags"), None);
        assert_eq!(decode(b"bsha256:nothex"), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn nothing_is_queued_while_sharing_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let o = Outbox::open(&db).unwrap();
        o.push(&Pending::Blob(Digest::of(b"x"))).unwrap();
        assert_eq!(o.len(), 0);
        o.set_on(true);
        o.push(&Pending::Blob(Digest::of(b"x"))).unwrap();
        o.push(&Pending::Blob(Digest::of(b"y"))).unwrap();
        let batch = o.batch(10).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].1, Some(Pending::Blob(Digest::of(b"x"))));
        o.done(&[batch[0].0]).unwrap();
        assert_eq!(
            o.batch(10).unwrap()[0].1,
            Some(Pending::Blob(Digest::of(b"y")))
        );
    }
}
