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

/// How far before its cursor a reader looks again for batches written late; also how far
/// ahead of this clock a batch name may be and still move the cursor.
pub(super) const SKEW_MS: u64 = 5 * 60 * 1000;

/// Batches are at most a few hundred records; anything much larger is not one of ours.
const MAX_BATCH: u64 = 8 << 20;

pub(super) struct Journal {
    replica: String,
    /// This process's random name: a batch under our replica name from another process means
    /// two replicas share a `replica_id`.
    instance: String,
    /// When this process started: batches of our name from before are an earlier run's.
    started_ms: u64,
    seq: AtomicU64,
    /// Names this process wrote (bounded: only the skew window matters).
    written: Mutex<BTreeSet<String>>,
    /// Batches applied within the window before the cursor.
    seen: Mutex<BTreeSet<String>>,
}

#[derive(Serialize, Deserialize)]
struct Batch {
    replica: String,
    #[serde(default)]
    instance: String,
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
    pub(super) fn new(replica: &str, instance: &str) -> Journal {
        Journal {
            replica: replica.to_string(),
            instance: instance.to_string(),
            started_ms: now_ms(),
            seq: AtomicU64::new(0),
            written: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    fn next_name(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{:015}-{}-{seq:08}", now_ms(), self.replica);
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let keep = window_start(&name);
        w.retain(|n| *n >= keep);
        w.insert(name.clone());
        name
    }

    fn mine(&self, name: &str) -> bool {
        name.split('-').nth(1) == Some(self.replica.as_str()) && self.written(name)
    }

    /// Whether this process wrote `name` (its sequence numbers are below the counter). A batch
    /// under our replica name written by another process is not ours.
    fn written(&self, name: &str) -> bool {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.contains(name)
    }

    /// `<15 digits>-<replica id>-<8 digits>`, and the time it names.
    fn parse(name: &str) -> Option<u64> {
        let mut parts = name.split('-');
        let (ms, replica, seq) = (parts.next()?, parts.next()?, parts.next()?);
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let id_ok = !replica.is_empty()
            && replica
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        (parts.next().is_none() && digits(ms, 15) && digits(seq, 8) && id_ok)
            .then(|| ms.parse().ok())
            .flatten()
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
        instance: s.journal.instance.clone(),
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
    let mut names: Vec<(String, u64)> = listing
        .map_ok(|m| {
            (
                m.location.filename().unwrap_or_default().to_string(),
                m.size,
            )
        })
        .try_collect()
        .await?;
    names.sort();
    let mut applied = 0;
    let mut last = cursor.clone();
    // A name from a clock far ahead is applied but does not move the cursor past this clock.
    let horizon = now_ms().saturating_add(SKEW_MS);
    for (name, size) in names {
        let Some(ms) = Journal::parse(&name) else {
            tracing::debug!(batch = %name, "not a journal batch name; skipped");
            continue;
        };
        if s.journal.seen().contains(&name) {
            continue;
        }
        if s.journal.mine(&name) {
            // Nothing to apply, but read this far.
            if name > last && ms <= horizon {
                last = name;
            }
            continue;
        }
        if size > MAX_BATCH {
            tracing::warn!(batch = %name, size, "a journal batch is too large to be one; skipped");
            s.journal.seen().insert(name);
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
            Ok(batch) => {
                if batch.replica == s.replica
                    && batch.instance != s.journal.instance
                    && ms >= s.journal.started_ms
                {
                    tracing::warn!(replica = %s.replica, "another replica writes under this replica_id; give each its own");
                }
                applied += apply(&s.storage.index, &name, batch.records);
            }
            Err(e) => {
                tracing::warn!(batch = %name, error = %e, "a journal batch does not parse; skipped")
            }
        }
        s.journal.seen().insert(name.clone());
        if name > last && ms <= horizon {
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
        let j = Journal::new("a1", "i1");
        let a = j.next_name();
        let b = j.next_name();
        assert!(a < b, "{a} then {b}");
        assert!(j.mine(&a));
        assert!(!j.mine("000000000000001-b2-00000000"));
        // Same replica name, not written by this process: an earlier run's or a twin's.
        assert!(!j.mine("000000000000001-a1-00000000"));
        assert_eq!(Journal::parse("000000000000001-a1-00000007"), Some(1));
        for bad in [
            "999999999999999-evil",
            "1796195309850-evil-00000000",
            "000000000000001-a-b-00000000",
            "000000000000001--00000000",
            "00000000000000x-a-00000000",
            "",
        ] {
            assert_eq!(Journal::parse(bad), None, "{bad}");
        }
        assert_eq!(
            window_start("000000000400000-x-00000001"),
            "000000000100000"
        );
        assert_eq!(window_start(""), "000000000000000");
    }

    fn replica(
        id: &str,
        store: &super::super::Store,
    ) -> (std::sync::Arc<Shared>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = wharf_storage::Storage::open(dir.path()).unwrap();
        let cfg: crate::config::SharedConfig = toml::from_str(&format!(
            "endpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\nreplica_id = \"{id}\""
        ))
        .unwrap();
        let egress = crate::config::EgressConfig::default();
        let policy =
            std::sync::Arc::new(crate::upstream::EgressPolicy::from_config(&egress).unwrap());
        let s = Shared::new(&cfg, &egress, policy, store.clone(), storage).unwrap();
        (s, dir)
    }

    /// A tag record as replica `s` would queue it.
    fn tag_record(s: &Shared, tag: &str) -> Rec {
        let index = &s.storage.index;
        index.set_sharing(true);
        let rec = wharf_storage::TagRecord {
            digest: wharf_storage::Digest::of(tag.as_bytes()),
            media_type: "m".into(),
            learned_unix: 1,
        };
        index.put_tag("up", "r", tag, &rec).unwrap();
        let batch = index.outbox_batch(100).unwrap();
        let (id, Some(wharf_storage::Pending::Record { tree, key, value })) =
            batch.into_iter().last().unwrap()
        else {
            panic!("a record");
        };
        index.outbox_done(&[id]).unwrap();
        Rec::new(&tree, &key, &value)
    }

    #[tokio::test]
    async fn a_batch_named_in_the_future_or_oddly_does_not_stop_the_journal() {
        use object_store::ObjectStoreExt as _;
        let store: super::super::Store = std::sync::Arc::new(object_store::memory::InMemory::new());
        let (a, _da) = replica("a1", &store);
        let (b, _db) = replica("b1", &store);
        for odd in [
            "999999999999999-evil-00000000",
            "1796195309850-evil-00000000",
        ] {
            let empty = br#"{"replica":"evil","records":[]}"#.to_vec();
            store
                .put(
                    &object_store::path::Path::from(format!("journal/{odd}")),
                    empty.into(),
                )
                .await
                .unwrap();
        }
        write(&a, vec![tag_record(&a, "one")]).await.unwrap();
        assert_eq!(catch_up(&b).await.unwrap(), 1);
        write(&a, vec![tag_record(&a, "two")]).await.unwrap();
        assert_eq!(
            catch_up(&b).await.unwrap(),
            1,
            "the next batch is still read"
        );
        assert!(b.storage.index.get_tag("up", "r", "two").unwrap().is_some());
        let cursor = b.storage.index.shared_meta("journal").unwrap().unwrap();
        assert!(cursor.contains("-a1-"), "{cursor}");
    }
}
