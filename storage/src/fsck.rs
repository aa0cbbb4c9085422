//! `fsck`: checks the index against the blobs on disk, which are the source of truth, and with
//! `repair` makes the index agree with them. Must not delete anything that is not provably bad:
//! stray files are reported, never removed, and a blob is deleted only when its content does not
//! hash to its name.
//!
//! It knows every tree of the index (`index.rs`), one function per phase:
//!
//! 1. `blobs`: each record is checked against its file (present, recorded size, hash).
//! 2. Owners: `gofiles` and `sumdb` records name blobs that have no blob record (the Go side keeps
//!    none). Those blobs are not orphans; `golists` hold their answers inline and own none.
//! 3. The disk: every file not checked in 1 is hashed. Intact ones that nothing owns are orphans
//!    (repair indexes them); corrupt ones are deleted by repair.
//! 4. References must name an intact blob: a tag, Go file record, checksum-database record, pin,
//!    or refs record (keyed by its manifest) whose blob is gone or corrupt is dangling, and repair
//!    drops it. A Go file record whose size disagrees with its intact blob is a size mismatch that
//!    repair corrects. The children a refs record lists are not looked for: layers are fetched
//!    only when a client asks for them.
//! 5. `atime` and `links` entries of blobs not on disk are harmless and only counted, never
//!    errors. An access time is only eviction's hint, so repair prunes it (gc removes it with its
//!    blob anyway). A link records what an upstream said about a repository, which stays true
//!    while the local copy is gone (links to layers never pulled are normal), so it is kept.
//! 6. Every entry of every tree decodes (`taglists`, `referrers`, `golists`, `gotrust` and
//!    `meta` are checked for nothing else); repair drops one that does not, naming its key. A dropped `meta`
//!    `done/<step>` marker makes its one-time step run again, which such steps must tolerate.
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
use crate::index::{BlobRecord, GoFileKey, GoFileRecord, RawEntry, SumdbKey, unix_now};

/// What fsck found, and with `repair`, what it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blob records checked.
    pub checked: u64,
    /// Blob records whose file is present, of the recorded size, and hashes to its digest.
    pub ok: u64,
    /// Intact blob files with no blob record that Go file or checksum-database records own.
    pub go_owned: u64,
    /// Blob records with no file.
    pub missing: Vec<Digest>,
    /// Files whose size differs from their blob or Go file record (truncated, or a wrong record).
    pub size_mismatch: Vec<(Digest, String)>,
    /// Files whose content does not hash to their name.
    pub corrupt: Vec<(Digest, String)>,
    /// Intact blob files that no record owns.
    pub orphans: Vec<Digest>,
    /// Files under `blobs/sha256` that are not at a valid blob path.
    pub stray: Vec<PathBuf>,
    /// Tags (upstream, repo, tag) whose manifest blob is gone or corrupt.
    pub dangling_tags: Vec<(String, String, String)>,
    /// Go file records (module, version, kind) whose blob is gone or corrupt.
    pub dangling_go_files: Vec<GoFileKey>,
    /// Checksum-database records (database, path) whose blob is gone or corrupt.
    pub dangling_sumdb: Vec<SumdbKey>,
    /// Pins of blobs that are gone or corrupt.
    pub dangling_pins: Vec<Digest>,
    /// Refs records of manifests that are gone or corrupt.
    pub dangling_refs: Vec<Digest>,
    /// Access times of blobs not on disk: harmless, not a problem (repair prunes them).
    pub atimes_without_blob: u64,
    /// Links to blobs not on disk: harmless, not a problem (kept by repair).
    pub links_without_blob: u64,
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
            && self.dangling_go_files.is_empty()
            && self.dangling_sumdb.is_empty()
            && self.dangling_pins.is_empty()
            && self.dangling_refs.is_empty()
            && self.bad_records.is_empty()
    }
}

/// Checks every blob record against its file, every blob file (owned or not), every record that
/// names a blob (its blob still intact), and that every entry of every index tree decodes. With
/// `repair`: deletes corrupt blob files; drops records of missing or corrupt blobs, dangling
/// references, undecodable entries and access times of blobs not on disk; fixes the size of
/// records whose file verifies; indexes intact orphans. The phases are in the module doc.
pub fn fsck(storage: &Storage, repair: bool) -> Result<FsckReport, StorageError> {
    let mut run = Run {
        storage,
        repair,
        report: FsckReport::default(),
        live: BTreeMap::new(),
    };
    let index = &storage.index;
    let records = run.blob_records()?;
    for (digest, record) in &records {
        run.check_blob_record(digest, record)?;
    }
    let owned = go_owned_blobs(storage)?;
    run.walk_disk(&records, &owned)?;
    run.check_tags()?;
    run.check_go_files()?;
    run.check_sumdb()?;
    run.check_pins()?;
    run.check_refs()?;
    run.count_atimes()?;
    run.count_links()?;
    run.check_decodes(index.tag_list_entries())?;
    run.check_decodes(index.referrers_entries())?;
    run.check_decodes(index.go_list_entries())?;
    run.check_decodes(index.trust_entries())?;
    run.check_decodes(index.meta_entries())?;
    run.check_decodes(index.outbox_entries())?;
    if repair {
        index.flush()?;
    }
    Ok(run.report)
}

/// One fsck run: what it found so far.
struct Run<'a> {
    storage: &'a Storage,
    repair: bool,
    report: FsckReport,
    /// Digests with an intact file on disk once repairs are done, with their sizes. Every
    /// reference must point into this map.
    live: BTreeMap<Digest, u64>,
}

impl Run<'_> {
    /// The value of `entry`, or `None` after reporting it as undecodable (and with repair,
    /// dropping it).
    fn decoded<'e, T>(&mut self, entry: &'e RawEntry<T>) -> Result<Option<&'e T>, StorageError> {
        match &entry.decoded {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                self.report.bad_records.push(e.to_string());
                let what = format!("dropped undecodable record {}", entry.key_name);
                self.drop_entry(entry, what)?;
                Ok(None)
            }
        }
    }

    /// With repair, removes `entry` and notes `what` was done.
    fn drop_entry<T>(&mut self, entry: &RawEntry<T>, what: String) -> Result<(), StorageError> {
        if self.repair {
            entry.remove()?;
            self.report.repaired.push(what);
        }
        Ok(())
    }

    /// Trees that name no blob only need to decode.
    fn check_decodes<T>(
        &mut self,
        entries: impl Iterator<Item = Result<RawEntry<T>, StorageError>>,
    ) -> Result<(), StorageError> {
        for entry in entries {
            self.decoded(&entry?)?;
        }
        Ok(())
    }

    fn verify(&self, digest: &Digest) -> Result<BlobCheck, StorageError> {
        let blobs = &self.storage.blobs;
        blobs.verify(digest).map_err(StorageError::io(format!(
            "verify blob {}",
            blobs.path(digest).display()
        )))
    }

    /// Phase 1a: every blob record that decodes.
    fn blob_records(&mut self) -> Result<BTreeMap<Digest, BlobRecord>, StorageError> {
        let mut records = BTreeMap::new();
        for entry in self.storage.index.blob_entries() {
            let entry = entry?;
            if let Some((digest, record)) = self.decoded(&entry)? {
                records.insert(digest.clone(), record.clone());
            }
        }
        Ok(records)
    }

    /// Phase 1b: one blob record against its file.
    fn check_blob_record(
        &mut self,
        digest: &Digest,
        record: &BlobRecord,
    ) -> Result<(), StorageError> {
        self.report.checked += 1;
        match self.verify(digest)? {
            BlobCheck::Ok { size } if size == record.size => {
                self.report.ok += 1;
                self.live.insert(digest.clone(), size);
            }
            BlobCheck::Ok { size } => {
                self.live.insert(digest.clone(), size);
                self.wrong_blob_size(digest, record, size)?;
            }
            BlobCheck::Missing => {
                self.report.missing.push(digest.clone());
                if self.repair {
                    self.storage.index.remove_blob(digest)?;
                    self.report
                        .repaired
                        .push(format!("dropped record of missing blob {digest}"));
                }
            }
            BlobCheck::Corrupt { actual, size } => {
                let reason = format!("content hashes to {actual}");
                if size == record.size {
                    self.report.corrupt.push((digest.clone(), reason));
                } else {
                    self.report.size_mismatch.push((
                        digest.clone(),
                        format!(
                            "index says {} bytes, file has {size} bytes; {reason}",
                            record.size
                        ),
                    ));
                }
                if self.repair {
                    remove_blob_file(self.storage, digest)?;
                    self.storage.index.remove_blob(digest)?;
                    self.report.repaired.push(format!(
                        "deleted corrupt blob {} and its record",
                        self.storage.blobs.path(digest).display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// A blob record whose file verifies but is not of the recorded size: the record is wrong.
    fn wrong_blob_size(
        &mut self,
        digest: &Digest,
        record: &BlobRecord,
        size: u64,
    ) -> Result<(), StorageError> {
        self.report.size_mismatch.push((
            digest.clone(),
            format!(
                "index says {} bytes, file has {size} bytes and verifies",
                record.size
            ),
        ));
        if self.repair {
            let fixed = BlobRecord {
                size,
                ..record.clone()
            };
            self.storage.index.put_blob(digest, &fixed)?;
            self.report.repaired.push(format!(
                "corrected size of {digest} from {} to {size} bytes",
                record.size
            ));
        }
        Ok(())
    }

    /// Phase 3: the files on disk that phase 1 did not check.
    fn walk_disk(
        &mut self,
        records: &BTreeMap<Digest, BlobRecord>,
        owned: &BTreeSet<Digest>,
    ) -> Result<(), StorageError> {
        let entries = self.storage.blobs.list().map_err(StorageError::io(format!(
            "list blobs in {}",
            self.storage.layout.blobs_dir().display()
        )))?;
        for entry in entries {
            match entry {
                DiskEntry::Stray(path) => self.report.stray.push(path),
                DiskEntry::Blob(digest, _) if records.contains_key(&digest) => {}
                DiskEntry::Blob(digest, _) => {
                    let is_owned = owned.contains(&digest);
                    self.check_unindexed(digest, is_owned)?;
                }
            }
        }
        Ok(())
    }

    /// A blob file with no blob record: owned by a Go record, an orphan, or corrupt.
    fn check_unindexed(&mut self, digest: Digest, owned: bool) -> Result<(), StorageError> {
        let path = self.storage.blobs.path(&digest);
        match self.verify(&digest)? {
            BlobCheck::Ok { size } if owned => {
                self.report.go_owned += 1;
                self.live.insert(digest, size);
            }
            BlobCheck::Ok { size } => {
                self.report.orphans.push(digest.clone());
                if self.repair {
                    let record = BlobRecord {
                        size,
                        media_type: None,
                        created_unix: mtime_unix(&path),
                    };
                    self.storage.index.put_blob(&digest, &record)?;
                    self.report
                        .repaired
                        .push(format!("indexed orphan blob {digest} ({size} bytes)"));
                }
                self.live.insert(digest, size);
            }
            BlobCheck::Corrupt { actual, .. } => {
                self.report.corrupt.push((
                    digest.clone(),
                    format!("not indexed; content hashes to {actual}"),
                ));
                if self.repair {
                    remove_blob_file(self.storage, &digest)?;
                    self.report
                        .repaired
                        .push(format!("deleted corrupt blob {}", path.display()));
                }
            }
            // Removed since the listing; nothing to check.
            BlobCheck::Missing => {}
        }
        Ok(())
    }

    /// Phase 4: tags must point at a live manifest.
    fn check_tags(&mut self) -> Result<(), StorageError> {
        for entry in self.storage.index.tag_entries() {
            let entry = entry?;
            let Some(((upstream, repo, tag), record)) = self.decoded(&entry)? else {
                continue;
            };
            if self.live.contains_key(&record.digest) {
                continue;
            }
            self.report
                .dangling_tags
                .push((upstream.clone(), repo.clone(), tag.clone()));
            let what = format!(
                "dropped tag {upstream} {repo}:{tag} (its manifest {} is gone)",
                record.digest
            );
            self.drop_entry(&entry, what)?;
        }
        Ok(())
    }

    /// Phase 4: Go file records must point at a live blob of their recorded size.
    fn check_go_files(&mut self) -> Result<(), StorageError> {
        for entry in self.storage.index.go_file_entries() {
            let entry = entry?;
            let Some((key, record)) = self.decoded(&entry)? else {
                continue;
            };
            let (module, version, kind) = key;
            match self.live.get(&record.digest) {
                Some(&size) if size == record.size => {}
                Some(&size) => self.wrong_go_file_size(key, record, size)?,
                None => {
                    self.report.dangling_go_files.push(key.clone());
                    let what = format!(
                        "dropped Go file record {module}@{version}.{kind} (its blob {} is gone)",
                        record.digest
                    );
                    self.drop_entry(&entry, what)?;
                }
            }
        }
        Ok(())
    }

    /// A Go file record whose blob verifies but is not of the recorded size: the record is wrong.
    fn wrong_go_file_size(
        &mut self,
        (module, version, kind): &GoFileKey,
        record: &GoFileRecord,
        size: u64,
    ) -> Result<(), StorageError> {
        self.report.size_mismatch.push((
            record.digest.clone(),
            format!(
                "Go file {module}@{version}.{kind} says {} bytes, its blob has {size} bytes and verifies",
                record.size
            ),
        ));
        if self.repair {
            let fixed = GoFileRecord {
                size,
                ..record.clone()
            };
            self.storage
                .index
                .put_go_file(module, version, kind, &fixed)?;
            self.report.repaired.push(format!(
                "corrected size of Go file {module}@{version}.{kind} from {} to {size} bytes",
                record.size
            ));
        }
        Ok(())
    }

    /// Phase 4: checksum-database records must point at a live blob.
    fn check_sumdb(&mut self) -> Result<(), StorageError> {
        for entry in self.storage.index.sumdb_entries() {
            let entry = entry?;
            let Some(((db, path), record)) = self.decoded(&entry)? else {
                continue;
            };
            if self.live.contains_key(&record.digest) {
                continue;
            }
            self.report.dangling_sumdb.push((db.clone(), path.clone()));
            let what = format!(
                "dropped checksum-database record {db} {path} (its blob {} is gone)",
                record.digest
            );
            self.drop_entry(&entry, what)?;
        }
        Ok(())
    }

    /// Phase 4: a pin of a blob that is gone protects nothing.
    fn check_pins(&mut self) -> Result<(), StorageError> {
        for entry in self.storage.index.pin_entries() {
            let entry = entry?;
            let Some((digest, _)) = self.decoded(&entry)? else {
                continue;
            };
            if !self.live.contains_key(digest) {
                self.report.dangling_pins.push(digest.clone());
                let what = format!("dropped pin of {digest} (the blob is gone)");
                self.drop_entry(&entry, what)?;
            }
        }
        Ok(())
    }

    /// Phase 4: refs records belong to a live manifest (its children may not be fetched yet).
    fn check_refs(&mut self) -> Result<(), StorageError> {
        for entry in self.storage.index.refs_entries() {
            let entry = entry?;
            let Some((manifest, _)) = self.decoded(&entry)? else {
                continue;
            };
            if !self.live.contains_key(manifest) {
                self.report.dangling_refs.push(manifest.clone());
                let what = format!("dropped refs of manifest {manifest} (the manifest is gone)");
                self.drop_entry(&entry, what)?;
            }
        }
        Ok(())
    }

    /// Phase 5: access times of blobs not on disk are counted, and pruned by repair.
    fn count_atimes(&mut self) -> Result<(), StorageError> {
        let mut pruned = 0u64;
        for entry in self.storage.index.atime_entries() {
            let entry = entry?;
            let Some((digest, _)) = self.decoded(&entry)? else {
                continue;
            };
            if !self.live.contains_key(digest) {
                self.report.atimes_without_blob += 1;
                if self.repair {
                    entry.remove()?;
                    pruned += 1;
                }
            }
        }
        if pruned > 0 {
            self.report
                .repaired
                .push(format!("pruned {pruned} access times of blobs not on disk"));
        }
        Ok(())
    }

    /// Phase 5: links to blobs not on disk are counted and kept.
    fn count_links(&mut self) -> Result<(), StorageError> {
        for entry in self.storage.index.link_entries() {
            let entry = entry?;
            let Some(((_, _, digest), _)) = self.decoded(&entry)? else {
                continue;
            };
            if !self.live.contains_key(digest) {
                self.report.links_without_blob += 1;
            }
        }
        Ok(())
    }
}

/// Phase 2: the blobs that Go file and checksum-database records name. Undecodable records are
/// skipped here and reported in phase 4.
fn go_owned_blobs(storage: &Storage) -> Result<BTreeSet<Digest>, StorageError> {
    let index = &storage.index;
    let mut owned = BTreeSet::new();
    for entry in index.go_file_entries() {
        if let Ok((_, record)) = entry?.decoded {
            owned.insert(record.digest);
        }
    }
    for entry in index.sumdb_entries() {
        if let Ok((_, record)) = entry?.decoded {
            owned.insert(record.digest);
        }
    }
    Ok(owned)
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
        if self.go_owned > 0 {
            writeln!(
                f,
                "{} more blobs of Go files and checksum-database records: ok",
                self.go_owned
            )?;
        }
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
        section(
            f,
            "dangling Go file records",
            &self.dangling_go_files,
            |(m, v, k)| format!("{m}@{v}.{k}"),
        )?;
        section(
            f,
            "dangling checksum-database records",
            &self.dangling_sumdb,
            |(db, path)| format!("{db} {path}"),
        )?;
        section(f, "dangling pins", &self.dangling_pins, |d| d.to_string())?;
        section(
            f,
            "dangling refs (manifest gone)",
            &self.dangling_refs,
            |d| d.to_string(),
        )?;
        section(f, "undecodable index records", &self.bad_records, |s| {
            s.clone()
        })?;
        if self.atimes_without_blob + self.links_without_blob > 0 {
            writeln!(
                f,
                "harmless: {} access times and {} links name blobs not on disk",
                self.atimes_without_blob, self.links_without_blob
            )?;
        }
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
