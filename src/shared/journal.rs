//! The record journal: each replica writes the index records it makes (tags, lists, links,
//! pins, Go files, checksum-database records and trust) as batches named
//! `journal/<ms>-<replica>-<seq>`, and reads the others' batches in name order. Names start with
//! the writer's clock, so a reader re-lists a window of `SKEW_MS` before its cursor and skips the
//! batches it has applied: a batch written late by a replica whose clock lags is still seen.
//! Applying is idempotent (`Index::apply_shared` keeps the newer of two mutable records).
//!
//! The cursor is the newest batch name listed, this replica's own included: it says how far
//! this replica has read, which is what a journal snapshot (`snapshot.rs`) is compared with.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use wharf_storage::Index;

use super::Shared;

/// How far before its cursor a reader looks again for batches written late.
pub(super) const SKEW_MS: u64 = 5 * 60 * 1000;

pub(super) struct Journal {
    replica: String,
    seq: AtomicU64,
    /// Batches applied within the window before the cursor.
    seen: Mutex<BTreeSet<String>>,
}

#[derive(Serialize, Deserialize)]
struct Batch {
    replica: String,
    records: Vec<Rec>,
}

/// One record: tree name, then key and value (as stored in the index) in hex.
#[derive(Serialize, Deserialize)]
pub(super) struct Rec {
    tree: String,
    key: String,
    value: String,
}

impl Rec {
    pub(super) fn new(tree: &str, key: &[u8], value: &[u8]) -> Rec {
        Rec {
            tree: tree.to_string(),
            key: hex::encode(key),
            value: hex::encode(value),
        }
    }
}

impl Journal {
    pub(super) fn new(_prefix: &str, replica: &str) -> Journal {
        Journal {
            replica: replica.to_string(),
            seq: AtomicU64::new(0),
            seen: Mutex::default(),
        }
    }

    fn next_name(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{:015}-{}-{seq:08}", now_ms(), self.replica)
    }

    fn mine(&self, name: &str) -> bool {
        name.split('-').nth(1) == Some(self.replica.as_str())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The name `SKEW_MS` before `cursor`: where a reader starts listing.
pub(super) fn window_start(cursor: &str) -> String {
    let ms: u64 = cursor
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    format!("{:015}", ms.saturating_sub(SKEW_MS))
}

/// Writes one batch of this replica's records.
pub(super) async fn write(s: &Shared, records: Vec<Rec>) -> Result<(), object_store::Error> {
    let n = records.len() as u64;
    let batch = Batch {
        replica: s.replica.clone(),
        records,
    };
    let body = serde_json::to_vec(&batch).map_err(|e| object_store::Error::Generic {
        store: "journal",
        source: Box::new(e),
    })?;
    let path = s.path(&format!("journal/{}", s.journal.next_name()));
    s.record(s.store.put(&path, body.into()).await)?;
    s.stats.journal_written.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Applies the other replicas' batches written since the cursor. Returns records applied.
pub(super) async fn catch_up(s: &Shared) -> Result<usize, object_store::Error> {
    let index = &s.storage.index;
    let cursor = index
        .shared_meta("journal")
        .ok()
        .flatten()
        .unwrap_or_default();
    let start = window_start(&cursor);
    let prefix = s.path("journal");
    let listing = if cursor.is_empty() {
        s.store.list(Some(&prefix))
    } else {
        s.store
            .list_with_offset(Some(&prefix), &s.path(&format!("journal/{start}")))
    };
    let mut names: Vec<String> = listing
        .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
        .try_collect()
        .await?;
    names.sort();
    let mut applied = 0;
    let mut last = cursor.clone();
    for name in names {
        if name.is_empty() || s.journal.seen().contains(&name) {
            continue;
        }
        if s.journal.mine(&name) {
            // Nothing to apply, but read this far.
            if name > last {
                last = name;
            }
            continue;
        }
        let got = s.store.get(&s.path(&format!("journal/{name}"))).await;
        let bytes = match got {
            Ok(g) => g.bytes().await?,
            // Removed since listing (shared-tier gc): nothing to apply.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<Batch>(&bytes) {
            Ok(batch) => applied += apply(&s.storage.index, &name, batch.records),
            Err(e) => {
                tracing::warn!(batch = %name, error = %e, "a journal batch does not parse; skipped")
            }
        }
        s.journal.seen().insert(name.clone());
        if name > last {
            last = name;
        }
    }
    if last != cursor {
        if let Err(e) = index.set_shared_meta("journal", &last) {
            tracing::warn!(error = %e, "saving the journal cursor failed");
        }
        let keep = window_start(&last);
        s.journal.seen().retain(|n| *n >= keep);
    }
    s.stats
        .records_applied
        .fetch_add(applied as u64, Ordering::Relaxed);
    Ok(applied)
}

/// Applies records another replica wrote (from batch or snapshot `name`); bad ones are logged
/// and skipped. Returns how many were written.
pub(super) fn apply(index: &Index, name: &str, records: Vec<Rec>) -> usize {
    let mut applied = 0;
    for r in records {
        let (Ok(key), Ok(value)) = (hex::decode(&r.key), hex::decode(&r.value)) else {
            tracing::warn!(batch = %name, "a journal record is not hex; skipped");
            continue;
        };
        match index.apply_shared(&r.tree, &key, &value) {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(batch = %name, error = %e, "a journal record was refused"),
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_the_window_reaches_back() {
        let j = Journal::new("", "a1");
        let a = j.next_name();
        let b = j.next_name();
        assert!(a < b, "{a} then {b}");
        assert!(j.mine(&a));
        assert!(!j.mine("000000000000001-b2-00000000"));
        assert_eq!(
            window_start("000000000400000-x-00000001"),
            "000000000100000"
        );
        assert_eq!(window_start(""), "000000000000000");
    }
}
