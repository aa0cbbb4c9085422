//! Checksum-database proofs for bundles, from what is stored (never the network). Export runs
//! the verifier over the cache and keeps every lookup and tile it read: exactly what a verifier
//! (wharf's, or a go command reading through the importing wharf) needs. Import runs it over the
//! bundle's files, with the importing wharf's configured key, before trusting any `h1:`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use wharf_storage::{Digest, Index};

use super::Content;
use crate::config::Config;
use crate::goproxy::sumdb::{SourceError, SumdbSource, TrustedTree, Verifier};

/// Largest lookup or tile read.
const MAX_SUMDB_FILE: u64 = 1 << 20;

/// Lookups and tiles of one database: the given files first, then the cache. Records what it
/// served, what it was asked for and did not have, and which tiles the verifier authenticated.
pub struct StoreSource<'a> {
    content: &'a dyn Content,
    db: String,
    extra: HashMap<String, Digest>,
    seen: Mutex<BTreeMap<String, Digest>>,
    missing: Mutex<BTreeSet<String>>,
    authenticated: Mutex<BTreeSet<String>>,
}

impl<'a> StoreSource<'a> {
    pub fn new(
        content: &'a dyn Content,
        db: &str,
        extra: HashMap<String, Digest>,
    ) -> StoreSource<'a> {
        StoreSource {
            content,
            db: db.into(),
            extra,
            seen: Mutex::default(),
            missing: Mutex::default(),
            authenticated: Mutex::default(),
        }
    }

    /// Paths asked for that neither the given files nor the cache hold.
    pub fn missing(&self) -> BTreeSet<String> {
        self.missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let found = match self.extra.get(path) {
            Some(d) => Some(d.clone()),
            None => self
                .content
                .cached_sumdb(&self.db, path)
                .map_err(SourceError::Failed)?,
        };
        let body = match found {
            Some(digest) => self
                .content
                .read_small(&digest, MAX_SUMDB_FILE)
                .map_err(SourceError::Failed)?
                .map(|body| (digest, body)),
            None => None,
        };
        let Some((digest, body)) = body else {
            self.missing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.into());
            return Err(SourceError::NotFound);
        };
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.into(), digest);
        Ok(body)
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
