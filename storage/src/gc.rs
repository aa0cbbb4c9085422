//! Eviction: bring the store under a size target by removing least-recently-used, unpinned
//! content. Owns the choice of victims; must not decide *when* to run (the server does).
//!
//! 1. Every blob on disk is measured (the disk, not the index, is the source of truth).
//! 2. Manifests name their children in the `refs` tree. A blob with a parent on disk is not a
//!    candidate of its own: it goes when its last parent goes (a manifest together with the
//!    blobs only it references). Pins protect a blob and everything below it.
//! 3. Candidates are taken oldest access first until the target is met.
//!
//! Removing a file that a request is reading is safe: the reader keeps its open descriptor.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::error::StorageError;
use crate::{DiskEntry, Storage};

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub total_before: u64,
    pub target: u64,
    pub objects_before: usize,
    /// What was (or, in a dry run, would be) removed, with sizes, in removal order.
    pub removed: Vec<(Digest, u64)>,
    pub freed: u64,
    pub pinned_objects: usize,
    pub pinned_bytes: u64,
    pub dry_run: bool,
}

impl GcReport {
    pub fn total_after(&self) -> u64 {
        self.total_before - self.freed
    }
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        writeln!(
            f,
            "store: {} in {} objects; target {}; pinned {} in {} objects",
            human(self.total_before),
            self.objects_before,
            budget(self.target),
            human(self.pinned_bytes),
            self.pinned_objects
        )?;
        for (d, size) in &self.removed {
            writeln!(f, "  {verb} {d} ({})", human(*size))?;
        }
        write!(
            f,
            "{verb} {} objects, {}; store {} {}",
            self.removed.len(),
            human(self.freed),
            if self.dry_run { "would be" } else { "is now" },
            human(self.total_after())
        )
    }
}

/// A target size, or "no limit" for none (`u64::MAX`).
pub fn budget(target: u64) -> String {
    if target == u64::MAX {
        "no limit".into()
    } else {
        human(target)
    }
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parent links among blobs on disk (`sizes`): each manifest's children, each child's parents.
type Graph = (
    HashMap<Digest, Vec<Digest>>,
    HashMap<Digest, HashSet<Digest>>,
);

fn graph(storage: &Storage, sizes: &HashMap<Digest, u64>) -> Graph {
    let mut children: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut parents: HashMap<Digest, HashSet<Digest>> = HashMap::new();
    for item in storage.index.all_refs() {
        let Ok((m, refs)) = item else { continue };
        if !sizes.contains_key(&m) {
            continue;
        }
        for c in refs.children {
            if sizes.contains_key(&c) && c != m {
                parents.entry(c.clone()).or_default().insert(m.clone());
                children.entry(m.clone()).or_default().push(c);
            }
        }
    }
    (children, parents)
}

/// Pins protect their blob and everything reachable below it (a pinned manifest's layers).
fn protected(
    storage: &Storage,
    sizes: &HashMap<Digest, u64>,
    children: &HashMap<Digest, Vec<Digest>>,
) -> HashSet<Digest> {
    let mut protected: HashSet<Digest> = HashSet::new();
    let mut stack: Vec<Digest> = storage
        .index
        .pins()
        .filter_map(Result::ok)
        .map(|(d, _)| d)
        .filter(|d| sizes.contains_key(d))
        .collect();
    while let Some(d) = stack.pop() {
        if protected.insert(d.clone())
            && let Some(cs) = children.get(&d)
        {
            stack.extend(cs.iter().cloned());
        }
    }
    protected
}

/// Objects and bytes eviction keeps for pins, among blobs on disk (`sizes`): what `collect`
/// reports, for `wharf stats` too.
pub fn pinned_usage(storage: &Storage, sizes: &HashMap<Digest, u64>) -> (usize, u64) {
    let (children, _) = graph(storage, sizes);
    let p = protected(storage, sizes, &children);
    (p.len(), p.iter().filter_map(|d| sizes.get(d)).sum())
}

/// Evicts until the store is at most `target` bytes. `recent` holds access times not yet
/// written to the index (unix seconds). Nothing pinned, or below something pinned, is removed.
pub fn collect(
    storage: &Storage,
    target: u64,
    recent: &HashMap<Digest, u64>,
    dry_run: bool,
) -> Result<GcReport, StorageError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| StorageError::Io { context, source }
    };
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    for entry in storage.blobs.list().map_err(io("listing blobs"))? {
        if let DiskEntry::Blob(d, size) = entry {
            sizes.insert(d, size);
        }
    }
    let total: u64 = sizes.values().sum();
    let mut report = GcReport {
        total_before: total,
        target,
        objects_before: sizes.len(),
        dry_run,
        ..GcReport::default()
    };

    let (children, parents) = graph(storage, &sizes);
    let protected = protected(storage, &sizes, &children);
    report.pinned_objects = protected.len();
    report.pinned_bytes = protected.iter().filter_map(|d| sizes.get(d)).sum();
    if total <= target {
        return Ok(report);
    }

    let atime = |d: &Digest| -> u64 {
        let stored = storage
            .index
            .get_atime(d)
            .ok()
            .flatten()
            .map(|r| r.last_access_unix);
        let created = storage
            .index
            .get_blob(d)
            .ok()
            .flatten()
            .map(|r| r.created_unix);
        recent
            .get(d)
            .copied()
            .into_iter()
            .chain(stored)
            .chain(created)
            .max()
            .unwrap_or(0)
    };
    // Roots: blobs with no parent on disk. A root's age is the newest access in its subtree,
    // so pulling an image by digest keeps its manifest young even if only layers were read.
    let mut roots: Vec<(u64, Digest)> = sizes
        .keys()
        .filter(|d| !parents.contains_key(*d) && !protected.contains(*d))
        .map(|d| (subtree_atime(d, &children, &atime), d.clone()))
        .collect();
    roots.sort();

    let mut removed: HashSet<Digest> = HashSet::new();
    for (_, root) in roots {
        if total - report.freed <= target {
            break;
        }
        // Remove the root, then every child whose parents are all gone.
        let mut queue = vec![root];
        while let Some(d) = queue.pop() {
            if protected.contains(&d) || removed.contains(&d) {
                continue;
            }
            let orphaned = parents
                .get(&d)
                .is_none_or(|ps| ps.iter().all(|p| removed.contains(p)));
            if !orphaned {
                continue;
            }
            let size = sizes.get(&d).copied().unwrap_or(0);
            if !dry_run {
                remove(storage, &d)?;
            }
            removed.insert(d.clone());
            report.freed += size;
            report.removed.push((d.clone(), size));
            if let Some(cs) = children.get(&d) {
                queue.extend(cs.iter().cloned());
            }
        }
    }
    Ok(report)
}

fn subtree_atime(
    d: &Digest,
    children: &HashMap<Digest, Vec<Digest>>,
    atime: &impl Fn(&Digest) -> u64,
) -> u64 {
    let mut newest = atime(d);
    let mut stack: Vec<&Digest> = children
        .get(d)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let mut seen: HashSet<&Digest> = HashSet::new();
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        newest = newest.max(atime(c));
        if let Some(cs) = children.get(c) {
            stack.extend(cs.iter());
        }
    }
    newest
}

/// Removes one blob and its index records. The file goes first: a crash in between leaves a
/// record without a file, which readers treat as a miss and fsck repairs.
fn remove(storage: &Storage, d: &Digest) -> Result<(), StorageError> {
    storage.blobs.remove(d).map_err(|source| StorageError::Io {
        context: format!("removing blob {d}"),
        source,
    })?;
    storage.index.remove_blob(d)?;
    storage.index.remove_refs(d)?;
    storage.index.remove_atime(d)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_manifest_keeps_what_it_lists_in_the_pinned_usage_stats_and_gc_share() {
        use crate::{PinRecord, RefsRecord};
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let put = |b: &[u8]| {
            let d = Digest::of(b);
            storage.blobs.put_bytes(&d, b).unwrap();
            d
        };
        let (layer, manifest, loose) = (put(&[1u8; 3000]), put(b"manifest"), put(b"loose"));
        let refs = RefsRecord {
            children: vec![layer.clone()],
        };
        storage.index.put_refs(&manifest, &refs).unwrap();
        let pin = PinRecord {
            reason: "test".into(),
            pinned_unix: 1,
        };
        storage.index.put_pin(&manifest, &pin).unwrap();
        let sizes: HashMap<Digest, u64> = [(layer, 3000), (manifest, 8), (loose, 5)].into();
        assert_eq!(pinned_usage(&storage, &sizes), (2, 3008));
        let report = collect(&storage, u64::MAX, &HashMap::new(), true).unwrap();
        assert_eq!((report.pinned_objects, report.pinned_bytes), (2, 3008));
    }

    #[test]
    fn no_budget_reads_as_no_limit() {
        assert_eq!(budget(u64::MAX), "no limit");
        assert_eq!(budget(16 << 20), "16.0 MiB");
        let r = GcReport {
            dry_run: true,
            target: u64::MAX,
            ..GcReport::default()
        };
        assert!(r.to_string().contains("target no limit"), "{r}");
    }
}
