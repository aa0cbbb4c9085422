//! Eviction of the bucket: least recently used objects under `blobs/` go first until the bucket
//! is at `shared.low_watermark_percent` of `shared.max_size`.
//!
//! Every replica publishes the access times of its index (`atime/<replica>`, JSON); the replica
//! with `shared.gc = true` merges them with its own and, for an object no replica noted, uses
//! its upload time (S3 `last_modified`). Pins (replicated through the journal into every index)
//! are never removed, and only `blobs/` is touched: journal, atime and snapshot objects are not.
//! A bad atime object is logged and skipped. Deleting is idempotent, so two replicas evicting
//! at once remove nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures_util::TryStreamExt as _;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};
use wharf_storage::Digest;

use super::Shared;

/// `atime/<replica>`: when this replica last served each object (Unix seconds).
#[derive(Serialize, Deserialize)]
struct Atimes {
    replica: String,
    written_unix: u64,
    /// Digest hex (no `sha256:`) to time.
    atimes: BTreeMap<String, u64>,
}

/// An object in the bucket, as eviction sees it.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub digest: Digest,
    pub size: u64,
    /// The object's `last_modified`, Unix seconds.
    pub modified: u64,
    /// The latest access any replica noted.
    pub accessed: Option<u64>,
}

impl Candidate {
    /// When it was last used: served, or (for one nobody noted) uploaded.
    fn used(&self) -> u64 {
        self.accessed.unwrap_or(0).max(self.modified)
    }
}

/// Which objects to remove so that what stays is at most `target` bytes: unpinned ones, least
/// recently used first (ties by digest, so a dry run and the real one agree).
pub(super) fn select<'a>(
    objects: &'a [Candidate],
    pinned: &HashSet<Digest>,
    target: u64,
) -> Vec<&'a Candidate> {
    let mut total: u64 = objects.iter().map(|c| c.size).sum();
    let mut order: Vec<&Candidate> = objects
        .iter()
        .filter(|c| !pinned.contains(&c.digest))
        .collect();
    order.sort_by(|a, b| (a.used(), &a.digest).cmp(&(b.used(), &b.digest)));
    let mut out = Vec::new();
    for c in order {
        if total <= target {
            break;
        }
        total -= c.size;
        out.push(c);
    }
    out
}

/// What one eviction pass found and did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvictReport {
    pub dry_run: bool,
    /// Bytes the pass evicts down to.
    pub target: u64,
    pub objects_before: usize,
    pub bytes_before: u64,
    pub pinned_objects: usize,
    /// Removed (or, in a dry run, to remove): digest and size, least recently used first.
    pub removed: Vec<(String, u64)>,
    pub removed_bytes: u64,
    /// Deletes the store refused (left for the next pass).
    pub failed: usize,
    pub bytes_after: u64,
}

impl std::fmt::Display for EvictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use wharf_storage::gc::human;
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        writeln!(
            f,
            "shared tier: {} in {} objects ({} pinned), target {}",
            human(self.bytes_before),
            self.objects_before,
            self.pinned_objects,
            wharf_storage::gc::budget(self.target)
        )?;
        for (d, size) in &self.removed {
            writeln!(f, "{verb} {d} ({})", human(*size))?;
        }
        writeln!(
            f,
            "{verb} {} objects, {}; bucket {} -> {}",
            self.removed.len(),
            human(self.removed_bytes),
            human(self.bytes_before),
            human(self.bytes_after)
        )?;
        if self.failed > 0 {
            writeln!(f, "{} deletes failed; the next pass retries", self.failed)?;
        }
        Ok(())
    }
}

/// Writes `atime/<replica>` from this replica's index. Returns how many times it holds.
pub(super) async fn publish_atimes(s: &Shared) -> Result<usize, String> {
    let index = s.storage.index.clone();
    let atimes = tokio::task::spawn_blocking(move || {
        let mut out = BTreeMap::new();
        for item in index.atimes() {
            match item {
                Ok((d, rec)) => {
                    out.insert(d.hex().to_string(), rec.last_access_unix);
                }
                Err(e) => tracing::warn!(error = %e, "an access time does not decode; skipped"),
            }
        }
        out
    })
    .await
    .map_err(|e| e.to_string())?;
    let n = atimes.len();
    let body = serde_json::to_vec(&Atimes {
        replica: s.replica.clone(),
        written_unix: wharf_storage::unix_now(),
        atimes,
    })
    .map_err(|e| e.to_string())?;
    let path = s.path(&format!("atime/{}", s.replica));
    s.record(s.store.put(&path, body.into()).await)
        .map_err(|e| e.to_string())?;
    Ok(n)
}

/// Every replica's access times, merged (latest wins), with this replica's index on top.
async fn merged_atimes(s: &Shared) -> Result<HashMap<Digest, u64>, object_store::Error> {
    let mut out: HashMap<Digest, u64> = HashMap::new();
    let mut note = |d: Digest, t: u64| {
        let e = out.entry(d).or_insert(t);
        *e = (*e).max(t);
    };
    let metas: Vec<_> = s.record(s.store.list(Some(&s.path("atime"))).try_collect().await)?;
    for meta in metas {
        let name = meta.location.to_string();
        let bytes = match s.store.get(&meta.location).await {
            Ok(g) => g.bytes().await,
            Err(e) => Err(e),
        };
        let parsed = match bytes {
            Ok(b) => serde_json::from_slice::<Atimes>(&b).map_err(|e| e.to_string()),
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => Err(e.to_string()),
        };
        let atimes = match parsed {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "an access-time object is unreadable; skipped");
                continue;
            }
        };
        for (hex, t) in atimes.atimes {
            match Digest::parse(&format!("sha256:{hex}")) {
                Ok(d) => note(d, t),
                Err(_) => tracing::debug!(object = %name, "a bad digest in access times; skipped"),
            }
        }
    }
    let index = s.storage.index.clone();
    let local: Vec<(Digest, u64)> = tokio::task::spawn_blocking(move || {
        index
            .atimes()
            .filter_map(Result::ok)
            .map(|(d, r)| (d, r.last_access_unix))
            .collect()
    })
    .await
    .unwrap_or_default();
    for (d, t) in local {
        note(d, t);
    }
    Ok(out)
}

/// The objects under `blobs/`; keys that are not a digest are logged and left alone.
async fn list_blobs(s: &Shared) -> Result<Vec<Candidate>, object_store::Error> {
    let metas: Vec<_> = s.record(
        s.store
            .list(Some(&s.path("blobs/sha256")))
            .try_collect()
            .await,
    )?;
    let mut out = Vec::with_capacity(metas.len());
    for m in metas {
        let hex = m.location.filename().unwrap_or_default();
        match Digest::parse(&format!("sha256:{hex}")) {
            Ok(digest) => out.push(Candidate {
                digest,
                size: m.size,
                modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
                accessed: None,
            }),
            Err(_) => tracing::warn!(object = %m.location, "not a blob key; left alone"),
        }
    }
    Ok(out)
}

/// One pass: measures the bucket and, when it is over `over` (if given), removes the least
/// recently used unpinned objects down to `target`. `dry_run` deletes nothing.
pub(super) async fn pass(
    s: &Shared,
    target: u64,
    over: Option<u64>,
    dry_run: bool,
) -> Result<EvictReport, String> {
    let mut objects = list_blobs(s).await.map_err(|e| e.to_string())?;
    let bytes_before: u64 = objects.iter().map(|c| c.size).sum();
    let mut report = EvictReport {
        dry_run,
        target,
        objects_before: objects.len(),
        bytes_before,
        bytes_after: bytes_before,
        ..EvictReport::default()
    };
    let index = s.storage.index.clone();
    let pinned: HashSet<Digest> = tokio::task::spawn_blocking(move || {
        index
            .pins()
            .filter_map(Result::ok)
            .map(|(d, _)| d)
            .collect()
    })
    .await
    .map_err(|e| e.to_string())?;
    report.pinned_objects = objects
        .iter()
        .filter(|c| pinned.contains(&c.digest))
        .count();
    if over.is_some_and(|max| bytes_before <= max) || bytes_before <= target {
        if !dry_run {
            s.stats.bucket_bytes.store(bytes_before, Ordering::Relaxed);
        }
        return Ok(report);
    }
    let atimes = merged_atimes(s).await.map_err(|e| e.to_string())?;
    for c in &mut objects {
        c.accessed = atimes.get(&c.digest).copied();
    }
    for c in select(&objects, &pinned, target) {
        if !dry_run {
            match s.store.delete(&s.blob_path(&c.digest)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(digest = %c.digest, error = %e, "removing an object from the shared tier failed");
                    report.failed += 1;
                    continue;
                }
            }
            s.stats.evictions.fetch_add(1, Ordering::Relaxed);
            s.stats.evicted_bytes.fetch_add(c.size, Ordering::Relaxed);
        }
        report.removed.push((c.digest.to_string(), c.size));
        report.removed_bytes += c.size;
    }
    report.bytes_after = bytes_before - report.removed_bytes;
    if !dry_run {
        s.stats
            .bucket_bytes
            .store(report.bytes_after, Ordering::Relaxed);
        if !report.removed.is_empty() {
            tracing::info!(
                objects = report.removed.len(),
                freed = report.removed_bytes,
                now = report.bytes_after,
                "evicted least-recently-used objects from the shared tier"
            );
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, size: u64, modified: u64, accessed: Option<u64>) -> Candidate {
        Candidate {
            digest: Digest::of(name.as_bytes()),
            size,
            modified,
            accessed,
        }
    }

    fn picked(v: &[&Candidate]) -> Vec<Digest> {
        v.iter().map(|c| c.digest.clone()).collect()
    }

    #[test]
    fn least_recently_used_go_first_down_to_the_target() {
        let objects = [
            obj("new", 100, 10, Some(900)),
            obj("old", 100, 10, Some(100)),
            obj("mid", 100, 10, Some(500)),
            obj("recent-upload", 100, 800, None),
        ];
        // 400 bytes, target 250: two go, the two least recently used.
        let out = select(&objects, &HashSet::new(), 250);
        assert_eq!(
            picked(&out),
            [Digest::of(b"old"), Digest::of(b"mid")],
            "oldest access first"
        );
        // At or under the target: nothing.
        assert!(select(&objects, &HashSet::new(), 400).is_empty());
        // Exactly at the watermark after one removal: stops there.
        assert_eq!(select(&objects, &HashSet::new(), 300).len(), 1);
    }

    #[test]
    fn pinned_objects_are_never_selected_even_when_the_target_cannot_be_met() {
        let objects = [
            obj("pinned-old", 100, 1, Some(1)),
            obj("a", 100, 10, Some(50)),
            obj("b", 100, 10, Some(60)),
        ];
        let pins: HashSet<Digest> = [Digest::of(b"pinned-old")].into();
        let out = select(&objects, &pins, 0);
        assert_eq!(picked(&out), [Digest::of(b"a"), Digest::of(b"b")]);
    }

    #[test]
    fn objects_nobody_served_are_ordered_by_upload_time() {
        let objects = [
            obj("uploaded-late", 10, 300, None),
            obj("uploaded-early", 10, 100, None),
            obj("served-between", 10, 50, Some(200)),
        ];
        let out = select(&objects, &HashSet::new(), 0);
        assert_eq!(
            picked(&out),
            [
                Digest::of(b"uploaded-early"),
                Digest::of(b"served-between"),
                Digest::of(b"uploaded-late")
            ]
        );
        // An access older than the upload counts as the upload (a re-upload is a use).
        let reuploaded = [obj("x", 10, 500, Some(100)), obj("y", 10, 10, Some(400))];
        assert_eq!(
            picked(&select(&reuploaded, &HashSet::new(), 10)),
            [Digest::of(b"y")]
        );
    }
}
