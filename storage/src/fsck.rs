//! `fsck`: checks the index against the blobs on disk, which are the source of truth, and with
//! `repair` makes the index agree with them. Must not delete anything that is not provably bad:
//! stray files are reported, never removed, and a blob is deleted only when its content does not
//! hash to its name.
//!
//! Blocking, and it reads every blob in full. Run it while nothing else writes to the data
//! directory (the `wharf fsck` command opens the storage itself, and sled's lock keeps a running
//! server out); a fill committing during fsck would look like an orphan.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use crate::Storage;
use crate::blob::{BlobCheck, DiskEntry};
use crate::digest::Digest;
use crate::error::StorageError;
use crate::index::{BlobRecord, unix_now};

/// What fsck found, and with `repair`, what it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blob records checked.
    pub checked: u64,
    /// Blob records whose file is present, of the recorded size, and hashes to its digest.
    pub ok: u64,
    /// Blob records with no file.
    pub missing: Vec<Digest>,
    /// Files whose size differs from their record (truncated, or a wrong record).
    pub size_mismatch: Vec<(Digest, String)>,
    /// Files whose content does not hash to their name.
    pub corrupt: Vec<(Digest, String)>,
    /// Intact blob files with no record.
    pub orphans: Vec<Digest>,
    /// Files under `blobs/sha256` that are not at a valid blob path.
    pub stray: Vec<PathBuf>,
    /// Tags (upstream, repo, tag) whose manifest blob is gone or corrupt.
    pub dangling_tags: Vec<(String, String, String)>,
    /// Index entries that do not decode: `key: reason`.
    pub bad_records: Vec<String>,
    /// What `repair` changed, one line each.
    pub repaired: Vec<String>,
}

impl FsckReport {
    /// True if nothing is wrong (repairs made in this run do not count as clean: run again).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.size_mismatch.is_empty()
            && self.corrupt.is_empty()
            && self.orphans.is_empty()
            && self.stray.is_empty()
            && self.dangling_tags.is_empty()
            && self.bad_records.is_empty()
    }
}

/// Checks every indexed blob (present, right size, right hash), every blob file (indexed or not),
/// every tag (its manifest still there) and that every index entry decodes. With `repair`:
/// deletes corrupt blob files; drops records of missing or corrupt blobs, dangling tags and
/// undecodable entries; fixes the size of records whose file verifies; indexes intact orphans.
pub fn fsck(storage: &Storage, repair: bool) -> Result<FsckReport, StorageError> {
    let mut report = FsckReport::default();
    let blobs = &storage.blobs;
    let index = &storage.index;
    // Digests with an intact file on disk once repairs are done; tags must point into this set.
    let mut live = BTreeSet::new();

    // 1. Read every blob record; set aside the ones that do not decode.
    let mut records = BTreeMap::new();
    for entry in index.blob_entries() {
        let entry = entry?;
        match &entry.decoded {
            Ok((digest, record)) => {
                records.insert(digest.clone(), record.clone());
            }
            Err(e) => {
                report.bad_records.push(e.to_string());
                if repair {
                    entry.remove()?;
                    report
                        .repaired
                        .push(format!("dropped undecodable record {}", entry.key_name));
                }
            }
        }
    }

    // 2. Check each record against its file.
    for (digest, record) in &records {
        report.checked += 1;
        let path = blobs.path(digest);
        let check = blobs
            .verify(digest)
            .map_err(StorageError::io(format!("verify blob {}", path.display())))?;
        match check {
            BlobCheck::Ok { size } if size == record.size => {
                report.ok += 1;
                live.insert(digest.clone());
            }
            BlobCheck::Ok { size } => {
                report.size_mismatch.push((
                    digest.clone(),
                    format!(
                        "index says {} bytes, file has {size} bytes and verifies",
                        record.size
                    ),
                ));
                live.insert(digest.clone());
                if repair {
                    let fixed = BlobRecord {
                        size,
                        ..record.clone()
                    };
                    index.put_blob(digest, &fixed)?;
                    report.repaired.push(format!(
                        "corrected size of {digest} from {} to {size} bytes",
                        record.size
                    ));
                }
            }
            BlobCheck::Missing => {
                report.missing.push(digest.clone());
                if repair {
                    index.remove_blob(digest)?;
                    report
                        .repaired
                        .push(format!("dropped record of missing blob {digest}"));
                }
            }
            BlobCheck::Corrupt { actual, size } => {
                let reason = format!("content hashes to {actual}");
                if size == record.size {
                    report.corrupt.push((digest.clone(), reason));
                } else {
                    report.size_mismatch.push((
                        digest.clone(),
                        format!(
                            "index says {} bytes, file has {size} bytes; {reason}",
                            record.size
                        ),
                    ));
                }
                if repair {
                    remove_blob_file(storage, digest)?;
                    index.remove_blob(digest)?;
                    report.repaired.push(format!(
                        "deleted corrupt blob {} and its record",
                        path.display()
                    ));
                }
            }
        }
    }

    // 3. Walk the disk for files the index does not know.
    let entries = blobs.list().map_err(StorageError::io(format!(
        "list blobs in {}",
        storage.layout.blobs_dir().display()
    )))?;
    for entry in entries {
        let digest = match entry {
            DiskEntry::Stray(path) => {
                report.stray.push(path);
                continue;
            }
            DiskEntry::Blob(digest, _) if records.contains_key(&digest) => continue,
            DiskEntry::Blob(digest, _) => digest,
        };
        let path = blobs.path(&digest);
        let check = blobs
            .verify(&digest)
            .map_err(StorageError::io(format!("verify blob {}", path.display())))?;
        match check {
            BlobCheck::Ok { size } => {
                report.orphans.push(digest.clone());
                if repair {
                    let record = BlobRecord {
                        size,
                        media_type: None,
                        created_unix: mtime_unix(&path),
                    };
                    index.put_blob(&digest, &record)?;
                    report
                        .repaired
                        .push(format!("indexed orphan blob {digest} ({size} bytes)"));
                }
                live.insert(digest);
            }
            BlobCheck::Corrupt { actual, .. } => {
                report.corrupt.push((
                    digest.clone(),
                    format!("not indexed; content hashes to {actual}"),
                ));
                if repair {
                    remove_blob_file(storage, &digest)?;
                    report
                        .repaired
                        .push(format!("deleted corrupt blob {}", path.display()));
                }
            }
            // Removed since the listing; nothing to check.
            BlobCheck::Missing => {}
        }
    }

    // 4. Tags must point at a live blob.
    for entry in index.tag_entries() {
        let entry = entry?;
        match &entry.decoded {
            Ok(((upstream, repo, tag), record)) => {
                if live.contains(&record.digest) {
                    continue;
                }
                report
                    .dangling_tags
                    .push((upstream.clone(), repo.clone(), tag.clone()));
                if repair {
                    entry.remove()?;
                    report.repaired.push(format!(
                        "dropped tag {upstream} {repo}:{tag} (its manifest {} is gone)",
                        record.digest
                    ));
                }
            }
            Err(e) => {
                report.bad_records.push(e.to_string());
                if repair {
                    entry.remove()?;
                    report
                        .repaired
                        .push(format!("dropped undecodable record {}", entry.key_name));
                }
            }
        }
    }

    // 5. Tag lists only need to decode.
    for entry in index.tag_list_entries() {
        let entry = entry?;
        if let Err(e) = &entry.decoded {
            report.bad_records.push(e.to_string());
            if repair {
                entry.remove()?;
                report
                    .repaired
                    .push(format!("dropped undecodable record {}", entry.key_name));
            }
        }
    }

    if repair {
        index.flush()?;
    }
    Ok(report)
}

fn remove_blob_file(storage: &Storage, digest: &Digest) -> Result<(), StorageError> {
    storage
        .blobs
        .remove(digest)
        .map(drop)
        .map_err(StorageError::io(format!(
            "delete corrupt blob {}",
            storage.blobs.path(digest).display()
        )))
}

/// The file's modification time in Unix seconds, or now if it cannot be read.
fn mtime_unix(path: &std::path::Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(unix_now, |d| d.as_secs())
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checked {} indexed blobs: {} ok", self.checked, self.ok)?;
        section(f, "missing blobs", &self.missing, |d| d.to_string())?;
        section(f, "size mismatches", &self.size_mismatch, |(d, why)| {
            format!("{d}: {why}")
        })?;
        section(f, "corrupt blobs", &self.corrupt, |(d, why)| {
            format!("{d}: {why}")
        })?;
        section(f, "orphan blobs (no record)", &self.orphans, |d| {
            d.to_string()
        })?;
        section(f, "stray files (left in place)", &self.stray, |p| {
            p.display().to_string()
        })?;
        section(f, "dangling tags", &self.dangling_tags, |(u, r, t)| {
            format!("{u} {r}:{t}")
        })?;
        section(f, "undecodable index records", &self.bad_records, |s| {
            s.clone()
        })?;
        section(f, "repaired", &self.repaired, |s| s.clone())?;
        if self.is_clean() {
            write!(f, "clean")
        } else if self.repaired.is_empty() {
            write!(f, "problems found; run with repair to fix the index")
        } else {
            write!(f, "problems found and repaired; run again to confirm")
        }
    }
}

fn section<T>(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    items: &[T],
    line: impl Fn(&T) -> String,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "{title}: {}", items.len())?;
    for item in items {
        writeln!(f, "  {}", line(item))?;
    }
    Ok(())
}
