//! Journal snapshots, so the journal does not grow forever and a new replica does not read
//! every batch ever written.
//!
//! The gc replica (`shared.gc = true`) catches up with the journal, then writes
//! `snapshot/<ms>-<replica>`: every record of its shared trees (`Index::shared_records`) and
//! `covers`, its journal cursor then. It then deletes the journal batches named more than
//! `SKEW_MS` before both the snapshot's time and `covers` (a batch that old is in its index, as
//! a reader's window would have seen it), and older snapshots.
//!
//! A replica whose cursor is empty or older than the newest snapshot's `covers` applies the
//! snapshot (`apply_shared`, same rules as a batch) and moves its cursor to `covers`; the
//! journal after it follows as usual. A replica already past it only notes the snapshot as
//! seen (`meta shared/snapshot`), so each snapshot is considered once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

use super::Shared;
use super::journal::{self, Rec, now_ms, window_start};

/// How often a serving replica looks for a new snapshot (it needs one only after being away).
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// `meta` names: the newest snapshot considered here, and the cursor the last one written here
/// covered (nothing new since: no new snapshot).
const SEEN: &str = "snapshot";
const WRITTEN: &str = "snapshot_covers";

#[derive(Serialize, Deserialize)]
struct Snapshot {
    replica: String,
    /// The writer's journal cursor: every batch up to it is in `records`.
    covers: String,
    records: Vec<Rec>,
}

/// When this process last looked for a snapshot.
#[derive(Default)]
pub(super) struct Checked(Mutex<Option<Instant>>);

/// What writing a snapshot did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotReport {
    /// The snapshot written; `None` when nothing changed since the last one.
    pub name: Option<String>,
    pub records: usize,
    pub journal_deleted: usize,
    pub snapshots_deleted: usize,
}

fn store_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Names (file part) under `dir`, sorted.
async fn names(s: &Shared, dir: &str) -> Result<Vec<String>, object_store::Error> {
    let mut v: Vec<String> = s.record(
        s.store
            .list(Some(&s.path(dir)))
            .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
            .try_collect()
            .await,
    )?;
    v.retain(|n| !n.is_empty());
    v.sort();
    Ok(v)
}

/// Writes a snapshot (unless nothing changed since this replica's last), then truncates the
/// journal and removes older snapshots.
pub(super) async fn write(s: &Shared) -> Result<SnapshotReport, String> {
    s.record(journal::catch_up(s).await).map_err(store_err)?;
    let index = s.storage.index.clone();
    let covers = index
        .shared_meta("journal")
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut report = SnapshotReport::default();
    if index.shared_meta(WRITTEN).ok().flatten().as_deref() == Some(covers.as_str()) {
        return Ok(report);
    }
    let records = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for item in index.shared_records() {
            match item {
                Ok((tree, key, value)) => out.push(Rec::new(tree, &key, &value)),
                Err(e) => {
                    tracing::warn!(error = %e, "a shared record is unreadable; not in the snapshot")
                }
            }
        }
        out
    })
    .await
    .map_err(store_err)?;
    report.records = records.len();
    let t = now_ms();
    let name = format!("{t:015}-{}", s.replica);
    let body = serde_json::to_vec(&Snapshot {
        replica: s.replica.clone(),
        covers: covers.clone(),
        records,
    })
    .map_err(store_err)?;
    let path = s.path(&format!("snapshot/{name}"));
    s.record(s.store.put(&path, body.into()).await)
        .map_err(store_err)?;
    let index = &s.storage.index;
    for (k, v) in [(SEEN, name.as_str()), (WRITTEN, covers.as_str())] {
        if let Err(e) = index.set_shared_meta(k, v) {
            tracing::warn!(error = %e, "saving the snapshot state failed");
        }
    }
    s.stats
        .snapshots_written
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    report.name = Some(name.clone());

    let cutoff = truncation_cutoff(&name, &covers);
    for batch in names(s, "journal").await.map_err(store_err)? {
        if batch.as_str() < cutoff.as_str() && remove(s, &format!("journal/{batch}")).await {
            report.journal_deleted += 1;
        }
    }
    for old in names(s, "snapshot").await.map_err(store_err)? {
        if old < name && remove(s, &format!("snapshot/{old}")).await {
            report.snapshots_deleted += 1;
        }
    }
    tracing::info!(
        snapshot = %name,
        records = report.records,
        journal_deleted = report.journal_deleted,
        "wrote a journal snapshot"
    );
    Ok(report)
}

/// Journal batches named before this are in a snapshot named `name` covering `covers`.
fn truncation_cutoff(name: &str, covers: &str) -> String {
    let earlier = if covers < name { covers } else { name };
    if earlier.is_empty() {
        return String::new();
    }
    window_start(earlier)
}

async fn remove(s: &Shared, rest: &str) -> bool {
    match s.store.delete(&s.path(rest)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
        Err(e) => {
            tracing::warn!(object = %rest, error = %e, "removing from the shared tier failed");
            false
        }
    }
}

/// `load` at most every `CHECK_EVERY` (always the first time in a process).
pub(super) async fn load_if_due(s: &Shared) -> Result<bool, object_store::Error> {
    {
        let last = s.snapshots.0.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return Ok(false);
        }
    }
    let loaded = load(s).await?;
    *s.snapshots.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    Ok(loaded)
}

/// Applies the newest snapshot if this replica's cursor is empty or older than what it covers.
pub(super) async fn load(s: &Shared) -> Result<bool, object_store::Error> {
    let Some(newest) = names(s, "snapshot").await?.pop() else {
        return Ok(false);
    };
    let index = s.storage.index.clone();
    let seen = index.shared_meta(SEEN).ok().flatten().unwrap_or_default();
    if seen.as_str() >= newest.as_str() {
        return Ok(false);
    }
    let mark_seen = || {
        if let Err(e) = s.storage.index.set_shared_meta(SEEN, &newest) {
            tracing::warn!(error = %e, "saving the snapshot state failed");
        }
    };
    let cursor = index
        .shared_meta("journal")
        .ok()
        .flatten()
        .unwrap_or_default();
    // Read past the snapshot's time: it holds nothing this replica lacks.
    let time = newest.split('-').next().unwrap_or_default();
    if !cursor.is_empty() && cursor.as_str() >= time {
        mark_seen();
        return Ok(false);
    }
    let bytes = match s.store.get(&s.path(&format!("snapshot/{newest}"))).await {
        Ok(g) => g.bytes().await?,
        // Replaced since listing: the next check finds the new one.
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return s.record(Err(e)),
    };
    let snap = match serde_json::from_slice::<Snapshot>(&bytes) {
        Ok(snap) => snap,
        Err(e) => {
            tracing::warn!(snapshot = %newest, error = %e, "a journal snapshot does not parse; skipped");
            mark_seen();
            return Ok(false);
        }
    };
    if !cursor.is_empty() && cursor >= snap.covers {
        mark_seen();
        return Ok(false);
    }
    let name = newest.clone();
    let covers = snap.covers.clone();
    let applied = tokio::task::spawn_blocking(move || journal::apply(&index, &name, snap.records))
        .await
        .unwrap_or(0);
    if covers > cursor
        && let Err(e) = s.storage.index.set_shared_meta("journal", &covers)
    {
        tracing::warn!(error = %e, "saving the journal cursor failed");
    }
    mark_seen();
    s.stats
        .snapshots_loaded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.stats
        .records_applied
        .fetch_add(applied as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(snapshot = %newest, records = applied, "applied a journal snapshot");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_cut_a_skew_window_before_the_snapshot_and_what_it_covers() {
        let skew = journal::SKEW_MS;
        let name = format!("{:015}-g", 10 * skew);
        // Covers a batch later than the snapshot's time (a clock ahead): cut by the time.
        let ahead = format!("{:015}-x-00000001", 11 * skew);
        assert_eq!(
            truncation_cutoff(&name, &ahead),
            format!("{:015}", 9 * skew)
        );
        // Covers an older batch (a quiet journal): cut by it.
        let behind = format!("{:015}-x-00000001", 3 * skew);
        assert_eq!(
            truncation_cutoff(&name, &behind),
            format!("{:015}", 2 * skew)
        );
        // An empty journal: nothing is cut.
        assert_eq!(truncation_cutoff(&name, ""), "");
        let batch_in_window = format!("{:015}-x-00000000", 9 * skew + 1);
        assert!(batch_in_window.as_str() >= truncation_cutoff(&name, &ahead).as_str());
    }
}
