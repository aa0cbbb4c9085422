//! Checksum-database proofs for bundles, from what is stored (never the network). Export runs
//! the verifier over the cache and keeps every lookup and tile it read: exactly what a verifier
//! (wharf's, or a go command reading through the importing wharf) needs. Import runs it over the
//! bundle's files, with the importing wharf's configured key, before trusting any `h1:`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use wharf_storage::{Digest, Index, Storage};

use crate::config::Config;
use crate::goproxy::sumdb::{SourceError, SumdbSource, TrustedTree, Verifier};

/// Largest lookup or tile read.
const MAX_SUMDB_FILE: u64 = 1 << 20;

/// Lookups and tiles of one database: the given files first, then the cache. Records what it
/// served and which tiles the verifier authenticated.
pub struct StoreSource<'a> {
    storage: &'a Storage,
    db: String,
    extra: HashMap<String, Digest>,
    seen: Mutex<BTreeMap<String, Digest>>,
    authenticated: Mutex<BTreeSet<String>>,
}

impl<'a> StoreSource<'a> {
    pub fn new(storage: &'a Storage, db: &str, extra: HashMap<String, Digest>) -> StoreSource<'a> {
        StoreSource {
            storage,
            db: db.into(),
            extra,
            seen: Mutex::default(),
            authenticated: Mutex::default(),
        }
    }

    /// Every path read so far, with the digest of what was served.
    pub fn seen(&self) -> BTreeMap<String, Digest> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tiles (and, after a successful lookup, lookups) proven part of the log.
    pub fn authenticated(&self) -> BTreeSet<String> {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn mark_authenticated(&self, path: &str) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.into());
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SourceError> {
        let digest = match self.extra.get(path) {
            Some(d) => d.clone(),
            None => match self.storage.index.get_sumdb(&self.db, path) {
                Ok(Some(rec)) => rec.digest,
                Ok(None) => return Err(SourceError::NotFound),
                Err(e) => return Err(SourceError::Failed(e.to_string())),
            },
        };
        match self.storage.blobs.read_small(&digest, MAX_SUMDB_FILE) {
            Ok(Some(body)) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.into(), digest);
                Ok(body)
            }
            Ok(None) => Err(SourceError::NotFound),
            Err(e) => Err(SourceError::Failed(e.to_string())),
        }
    }
}

impl SumdbSource for StoreSource<'_> {
    async fn lookup(&self, key: &str) -> Result<Vec<u8>, SourceError> {
        self.get(&format!("lookup/{key}"))
    }

    async fn tile(&self, path: &str) -> Result<Vec<u8>, SourceError> {
        self.get(path)
    }

    fn authenticated_tile(&self, path: &str, _data: &[u8]) {
        self.mark_authenticated(path);
    }
}

/// The database's trusted head as the cache records it.
pub fn trusted(index: &Index, db: &str) -> Option<TrustedTree> {
    let r = index.get_trust(db).ok()??;
    let hash: [u8; 32] = hex::decode(&r.hash).ok()?.try_into().ok()?;
    Some(TrustedTree {
        n: r.size,
        hash,
        note: r.note.into_bytes(),
    })
}

/// A verifier for each configured database whose key parses.
pub fn verifiers(config: &Config) -> Vec<(String, Verifier)> {
    config
        .go
        .sumdbs
        .iter()
        .filter_map(|db| Verifier::new(&db.key).ok().map(|v| (db.name.clone(), v)))
        .collect()
}
