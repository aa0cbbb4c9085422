//! `Index`: the sled database of what wharf knows about its blobs and names. Owns the record
//! encoding (one version byte, then JSON), decoded in one place (`decode_record`), and the trees:
//!
//! | tree       | key                         | value           |
//! |------------|-----------------------------|-----------------|
//! | `blobs`    | `sha256:<hex>`              | `BlobRecord`    |
//! | `tags`     | upstream, repo, tag         | `TagRecord`     |
//! | `taglists` | upstream, repo              | `TagListRecord` |
//! | `referrers` | upstream, repo, subject digest | `ReferrersRecord` |
//! | `gofiles`  | module, version, kind       | `GoFileRecord`  |
//! | `golists`  | module, kind (list, latest) | `GoListRecord`  |
//! | `sumdb`    | database, path              | `SumdbRecord`   |
//! | `gotrust`  | database                    | `TrustRecord`   |
//! | `pins`     | `sha256:<hex>`              | `PinRecord`     |
//! | `refs`     | `sha256:<hex>` (a manifest) | `RefsRecord`    |
//! | `atime`    | `sha256:<hex>`              | `AtimeRecord`   |
//! | `links`    | upstream, repo, digest      | `LinkRecord`    |
//! | `meta`     | `format`, `done/<step>`, `shared/<name>` | index format, one-time steps run, shared-tier cursor |
//! | `outbox`   | sequence number             | `Pending` (`outbox.rs`): what the shared tier still lacks |
//!
//! The trees in `SHARED_TREES` queue every write in the outbox while sharing is on; another
//! replica applies them with `apply_shared`.
//!
//! Composite keys come from `keys.rs`. A new key space is one more `Space` field opened in
//! `Index::open`, a record struct, typed methods, a `pub(crate)` `*_entries` iterator, and a phase
//! in `fsck.rs` (the `small` tree is not a key space: it holds `BlobStore`'s small objects and
//! fsck sees them through `BlobStore::list`): fsck must see every tree, or its records are never checked to decode, and blobs
//! its records name are reported as orphans. If the records name blobs, that phase says whether
//! they own them (a blob with no `BlobRecord` is then not an orphan) and reports references to
//! blobs that are gone. Must not touch blob files: blobs on disk are the source of truth and the
//! index can be rebuilt from them (`fsck`). Every method blocks briefly on sled; none does file
//! I/O of its own.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::StorageError;
use crate::keys;
use crate::outbox::{Outbox, Pending};

/// Version byte in front of every record. Bump it (and teach `decode_record` the old one) when a
/// record changes incompatibly.
const RECORD_VERSION: u8 = 1;

/// Layout of the trees themselves, stored under `meta/format`.
const INDEX_FORMAT: u8 = 1;
const FORMAT_KEY: &[u8] = b"format";
/// Prefix of the `meta` keys that mark a one-time step as run; the value is the Unix time, 8 bytes
/// big-endian.
const DONE_PREFIX: &str = "done/";

/// Prefix of the `meta` keys the shared tier keeps (its journal cursor); values are UTF-8.
const SHARED_PREFIX: &str = "shared/";

/// Memory sled may keep of the index (its default, 1 GiB, grew wharf's heap by about 10 KiB
/// per stored object in a soak run; the hot records fit in far less).
const INDEX_CACHE: u64 = 32 << 20;

/// The trees another replica may read, through the shared tier's journal.
pub const SHARED_TREES: [&str; 10] = [
    "tags",
    "taglists",
    "referrers",
    "gofiles",
    "golists",
    "sumdb",
    "gotrust",
    "pins",
    "refs",
    "links",
];

/// A committed blob wharf knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// The media type it was served with (manifests), if known.
    pub media_type: Option<String>,
    pub created_unix: u64,
}

/// What a tag pointed at when last asked upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub learned_unix: u64,
}

/// A repository's tag list as last fetched upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagListRecord {
    pub tags: Vec<String>,
    pub fetched_unix: u64,
}

/// The OCI 1.1 referrers of a manifest in one repository, as last fetched upstream: the
/// descriptors of the artifacts (signatures, SBOMs, attestations) whose `subject` it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrersRecord {
    pub referrers: Vec<Referrer>,
    pub fetched_unix: u64,
}

/// One entry of a referrers list: an OCI descriptor, with the fields clients filter on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// An immutable Go module file (`.info`, `.mod`, `.zip` of a canonical version), stored as a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoFileRecord {
    pub digest: Digest,
    pub size: u64,
    pub fetched_unix: u64,
}

/// A mutable Go answer (`@v/list`, `@latest`) as last fetched, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoListRecord {
    pub body: String,
    pub fetched_unix: u64,
}

/// A checksum-database response (lookup or tile) kept as a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumdbRecord {
    pub digest: Digest,
    pub fetched_unix: u64,
    /// Authenticated by wharf against a signed tree head (not just proxied for a client).
    #[serde(default)]
    pub verified: bool,
}

/// The last verified tree head of a checksum database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRecord {
    pub size: u64,
    /// Root hash, lower-case hex.
    pub hash: String,
    /// The signed note it came from.
    pub note: String,
    pub learned_unix: u64,
}

/// A blob that eviction must keep (prefetched or imported content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Why: e.g. `prefetch docker.io/library/alpine:3.20`.
    pub reason: String,
    pub pinned_unix: u64,
}

/// The blobs a manifest or index refers to (config, layers, child manifests), so eviction can
/// remove a manifest together with the blobs only it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefsRecord {
    pub children: Vec<Digest>,
}

/// When a blob was last served, batched in memory and written now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtimeRecord {
    pub last_access_unix: u64,
}

/// That a repository of an upstream is known to hold a blob or manifest: content is served for
/// an (upstream, repository) only with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub linked_unix: u64,
    /// Only listed by a manifest fetched from the repository, not fetched or confirmed there:
    /// such a link does not by itself let cached content be served (the upstream is asked).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listed_only: bool,
}

/// `(module, version, kind)`, the key of a `GoFileRecord`.
pub type GoFileKey = (String, String, String);

/// `(upstream, repo, tag)`, the key of a `TagRecord`.
pub type TagKey = (String, String, String);

/// `(upstream, repo)`, the key of a `TagListRecord`.
pub type TagListKey = (String, String);

/// `(upstream, repo, subject)`, the key of a `ReferrersRecord`.
pub type ReferrersKey = (String, String, Digest);

/// `(module, kind)`, the key of a `GoListRecord`.
pub type GoListKey = (String, String);

/// `(database, path)`, the key of a `SumdbRecord`.
pub type SumdbKey = (String, String);

/// `(upstream, repo, digest)`, the key of a `LinkRecord`.
pub type LinkKey = (String, String, Digest);

/// Seconds since the Unix epoch (0 if the clock is before it), for record timestamps.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The sled index. Cheap to clone (handles to one database).
#[derive(Clone, Debug)]
pub struct Index {
    db: sled::Db,
    blobs: Space,
    tags: Space,
    taglists: Space,
    referrers: Space,
    gofiles: Space,
    golists: Space,
    sumdb: Space,
    gotrust: Space,
    pins: Space,
    refs: Space,
    atime: Space,
    links: Space,
    meta: Space,
    outbox: Outbox,
}

impl Index {
    /// Bytes the index takes on disk (sled's own estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The tree `BlobStore` keeps small objects in (digest hex -> bytes); not a record space.
    pub(crate) fn small_tree(&self) -> Result<sled::Tree, StorageError> {
        Ok(self.db.open_tree("small")?)
    }

    /// Opens (or creates) the database at `path`. sled locks it: a second open of the same
    /// directory, from this process or another, fails while the first is alive (`InUse`).
    pub fn open(path: impl AsRef<Path>) -> Result<Index, StorageError> {
        let db = sled::Config::new()
            .path(path.as_ref())
            .cache_capacity(INDEX_CACHE)
            .open()
            .map_err(|e| match e {
                // sled reports its file lock as an I/O error with this text.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StorageError::InUse {
                        dir: path
                            .as_ref()
                            .parent()
                            .unwrap_or(path.as_ref())
                            .display()
                            .to_string(),
                    }
                }
                e => StorageError::Index(e),
            })?;
        let meta = Space::open(&db, "meta")?;
        match meta.tree.get(FORMAT_KEY)? {
            None => {
                meta.tree.insert(FORMAT_KEY, &[INDEX_FORMAT])?;
            }
            Some(v) if v.as_ref() == [INDEX_FORMAT] => {}
            Some(v) => {
                return Err(StorageError::CorruptRecord {
                    key: meta.key_name(FORMAT_KEY),
                    reason: format!(
                        "index format {v:?} is not the one this build understands ({INDEX_FORMAT})"
                    ),
                });
            }
        }
        let outbox = Outbox::open(&db)?;
        let shared = |name| Space::open(&db, name).map(|s| s.replicated(&outbox));
        Ok(Index {
            blobs: Space::open(&db, "blobs")?,
            tags: shared("tags")?,
            taglists: shared("taglists")?,
            referrers: shared("referrers")?,
            gofiles: shared("gofiles")?,
            golists: shared("golists")?,
            sumdb: shared("sumdb")?,
            gotrust: shared("gotrust")?,
            pins: shared("pins")?,
            refs: shared("refs")?,
            atime: Space::open(&db, "atime")?,
            links: shared("links")?,
            meta,
            outbox,
            db,
        })
    }

    pub fn put_blob(&self, digest: &Digest, record: &BlobRecord) -> Result<(), StorageError> {
        self.blobs.put(digest.as_str().as_bytes(), record)
    }

    pub fn get_blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, StorageError> {
        self.blobs.get(digest.as_str().as_bytes())
    }

    /// Drops the record; false if there was none. The blob file is not touched.
    pub fn remove_blob(&self, digest: &Digest) -> Result<bool, StorageError> {
        self.blobs.remove(digest.as_str().as_bytes())
    }

    /// Every blob record, in digest order. A record that does not decode is an `Err` item naming
    /// its key; iteration goes on past it. Does not borrow `self`.
    pub fn blobs(
        &self,
    ) -> impl Iterator<Item = Result<(Digest, BlobRecord), StorageError>> + use<> {
        self.blob_entries()
            .map(|entry| entry.and_then(|entry| entry.decoded))
    }

    pub fn put_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        record: &TagRecord,
    ) -> Result<(), StorageError> {
        self.tags
            .put(&keys::encode(&[upstream, repo, tag])?, record)
    }

    pub fn get_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, StorageError> {
        self.tags.get(&keys::encode(&[upstream, repo, tag])?)
    }

    pub fn remove_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<bool, StorageError> {
        self.tags.remove(&keys::encode(&[upstream, repo, tag])?)
    }

    /// Every tag record, ordered by (upstream, repo, tag). Undecodable entries are `Err` items.
    pub fn tags(&self) -> impl Iterator<Item = Result<(TagKey, TagRecord), StorageError>> + use<> {
        self.tag_entries()
            .map(|entry| entry.and_then(|entry| entry.decoded))
    }

    /// The tags recorded for one repository, ordered by tag.
    pub fn tags_in_repo(
        &self,
        upstream: &str,
        repo: &str,
    ) -> Result<impl Iterator<Item = Result<(String, TagRecord), StorageError>> + use<>, StorageError>
    {
        let prefix = keys::prefix(&[upstream, repo])?;
        let entries = self
            .tags
            .entries(self.tags.tree.scan_prefix(prefix), decode_tag_key);
        Ok(entries.map(|entry| {
            entry
                .and_then(|entry| entry.decoded)
                .map(|((_, _, tag), record)| (tag, record))
        }))
    }

    pub fn put_tag_list(
        &self,
        upstream: &str,
        repo: &str,
        record: &TagListRecord,
    ) -> Result<(), StorageError> {
        self.taglists.put(&keys::encode(&[upstream, repo])?, record)
    }

    pub fn get_tag_list(
        &self,
        upstream: &str,
        repo: &str,
    ) -> Result<Option<TagListRecord>, StorageError> {
        self.taglists.get(&keys::encode(&[upstream, repo])?)
    }

    pub fn remove_tag_list(&self, upstream: &str, repo: &str) -> Result<bool, StorageError> {
        self.taglists.remove(&keys::encode(&[upstream, repo])?)
    }

    pub fn put_referrers(
        &self,
        upstream: &str,
        repo: &str,
        subject: &Digest,
        record: &ReferrersRecord,
    ) -> Result<(), StorageError> {
        self.referrers
            .put(&keys::encode(&[upstream, repo, subject.as_str()])?, record)
    }

    pub fn get_referrers(
        &self,
        upstream: &str,
        repo: &str,
        subject: &Digest,
    ) -> Result<Option<ReferrersRecord>, StorageError> {
        self.referrers
            .get(&keys::encode(&[upstream, repo, subject.as_str()])?)
    }

    pub fn put_go_file(
        &self,
        module: &str,
        version: &str,
        kind: &str,
        record: &GoFileRecord,
    ) -> Result<(), StorageError> {
        self.gofiles
            .put(&keys::encode(&[module, version, kind])?, record)
    }

    pub fn get_go_file(
        &self,
        module: &str,
        version: &str,
        kind: &str,
    ) -> Result<Option<GoFileRecord>, StorageError> {
        self.gofiles.get(&keys::encode(&[module, version, kind])?)
    }

    pub fn remove_go_file(
        &self,
        module: &str,
        version: &str,
        kind: &str,
    ) -> Result<bool, StorageError> {
        self.gofiles
            .remove(&keys::encode(&[module, version, kind])?)
    }

    /// Every Go file record, ordered by (module, version, kind).
    pub fn go_files(
        &self,
    ) -> impl Iterator<Item = Result<(GoFileKey, GoFileRecord), StorageError>> + use<> {
        self.go_file_entries()
            .map(|entry| entry.and_then(|entry| entry.decoded))
    }

    pub(crate) fn go_file_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(GoFileKey, GoFileRecord)>, StorageError>> + use<>
    {
        self.gofiles.entries(self.gofiles.tree.iter(), |key| {
            keys::decode::<3>(key).map(|[m, v, k]| (m, v, k))
        })
    }

    pub fn put_go_list(
        &self,
        module: &str,
        kind: &str,
        record: &GoListRecord,
    ) -> Result<(), StorageError> {
        self.golists.put(&keys::encode(&[module, kind])?, record)
    }

    pub fn get_go_list(
        &self,
        module: &str,
        kind: &str,
    ) -> Result<Option<GoListRecord>, StorageError> {
        self.golists.get(&keys::encode(&[module, kind])?)
    }

    pub fn remove_go_list(&self, module: &str, kind: &str) -> Result<bool, StorageError> {
        self.golists.remove(&keys::encode(&[module, kind])?)
    }

    pub fn put_sumdb(
        &self,
        db: &str,
        path: &str,
        record: &SumdbRecord,
    ) -> Result<(), StorageError> {
        self.sumdb.put(&keys::encode(&[db, path])?, record)
    }

    pub fn get_sumdb(&self, db: &str, path: &str) -> Result<Option<SumdbRecord>, StorageError> {
        self.sumdb.get(&keys::encode(&[db, path])?)
    }

    pub fn remove_sumdb(&self, db: &str, path: &str) -> Result<bool, StorageError> {
        self.sumdb.remove(&keys::encode(&[db, path])?)
    }

    pub fn put_trust(&self, db: &str, record: &TrustRecord) -> Result<(), StorageError> {
        self.gotrust.put(&keys::encode(&[db])?, record)
    }

    pub fn get_trust(&self, db: &str) -> Result<Option<TrustRecord>, StorageError> {
        self.gotrust.get(&keys::encode(&[db])?)
    }

    pub fn remove_trust(&self, db: &str) -> Result<bool, StorageError> {
        self.gotrust.remove(&keys::encode(&[db])?)
    }

    pub fn put_pin(&self, digest: &Digest, record: &PinRecord) -> Result<(), StorageError> {
        self.pins.put(digest.as_str().as_bytes(), record)
    }

    pub fn get_pin(&self, digest: &Digest) -> Result<Option<PinRecord>, StorageError> {
        self.pins.get(digest.as_str().as_bytes())
    }

    pub fn remove_pin(&self, digest: &Digest) -> Result<bool, StorageError> {
        self.pins.remove(digest.as_str().as_bytes())
    }

    /// Every pin, in digest order; undecodable entries are `Err` items.
    pub fn pins(&self) -> impl Iterator<Item = Result<(Digest, PinRecord), StorageError>> + use<> {
        self.pin_entries()
            .map(|entry| entry.and_then(|entry| entry.decoded))
    }

    pub fn put_refs(&self, manifest: &Digest, record: &RefsRecord) -> Result<(), StorageError> {
        self.refs.put(manifest.as_str().as_bytes(), record)
    }

    pub fn get_refs(&self, manifest: &Digest) -> Result<Option<RefsRecord>, StorageError> {
        self.refs.get(manifest.as_str().as_bytes())
    }

    pub fn remove_refs(&self, manifest: &Digest) -> Result<bool, StorageError> {
        self.refs.remove(manifest.as_str().as_bytes())
    }

    /// Every refs record: (manifest, children).
    pub fn all_refs(
        &self,
    ) -> impl Iterator<Item = Result<(Digest, RefsRecord), StorageError>> + use<> {
        self.refs_entries()
            .map(|entry| entry.and_then(|entry| entry.decoded))
    }

    pub fn put_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), StorageError> {
        let rec = LinkRecord {
            linked_unix: unix_now(),
            listed_only: false,
        };
        self.links
            .put(&keys::encode(&[upstream, repo, digest.as_str()])?, &rec)
    }

    /// Records that a manifest of `upstream/repo` lists `digest`, unless a link exists already
    /// (a confirmed link is never downgraded).
    pub fn put_listed_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), StorageError> {
        let key = keys::encode(&[upstream, repo, digest.as_str()])?;
        if self.links.tree.contains_key(&key)? {
            return Ok(());
        }
        let rec = LinkRecord {
            linked_unix: unix_now(),
            listed_only: true,
        };
        self.links.put(&key, &rec)
    }

    pub fn get_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<LinkRecord>, StorageError> {
        self.links
            .get(&keys::encode(&[upstream, repo, digest.as_str()])?)
    }

    pub fn has_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        Ok(self
            .links
            .tree
            .contains_key(keys::encode(&[upstream, repo, digest.as_str()])?)?)
    }

    pub fn remove_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        self.links
            .remove(&keys::encode(&[upstream, repo, digest.as_str()])?)
    }

    /// Whether a one-time step named `name` (a migration) has run on this index.
    pub fn done(&self, name: &str) -> Result<bool, StorageError> {
        Ok(self
            .meta
            .tree
            .contains_key(format!("{DONE_PREFIX}{name}"))?)
    }

    /// Records that the one-time step `name` has run.
    pub fn mark_done(&self, name: &str) -> Result<(), StorageError> {
        self.meta
            .tree
            .insert(format!("{DONE_PREFIX}{name}"), &unix_now().to_be_bytes())?;
        Ok(())
    }

    /// Turns the outbox on (a shared tier is configured) or off. Off by default: nothing is
    /// queued and the outbox is not read.
    pub fn set_sharing(&self, on: bool) {
        self.outbox.set_on(on);
    }

    /// Queues a committed blob for the shared tier (before the records that name it).
    pub fn queue_blob(&self, digest: &Digest) -> Result<(), StorageError> {
        self.outbox.push(&Pending::Blob(digest.clone()))
    }

    /// The oldest `max` outbox entries with their ids; `None` for one that does not decode.
    pub fn outbox_batch(&self, max: usize) -> Result<Vec<(u64, Option<Pending>)>, StorageError> {
        self.outbox.batch(max)
    }

    /// Drops outbox entries once they are in the shared tier.
    pub fn outbox_done(&self, ids: &[u64]) -> Result<(), StorageError> {
        self.outbox.done(ids)
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Applies a record another replica wrote (read from the shared tier's journal), without
    /// queueing it again. Mutable records keep the newer of the two (tags, lists: the later
    /// fetch; trust: the larger tree; links: held over listed; checksum-database records:
    /// verified over not); immutable ones keep what is here. Returns whether it was written.
    pub fn apply_shared(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<bool, StorageError> {
        let space = match tree {
            "tags" => &self.tags,
            "taglists" => &self.taglists,
            "referrers" => &self.referrers,
            "gofiles" => &self.gofiles,
            "golists" => &self.golists,
            "sumdb" => &self.sumdb,
            "gotrust" => &self.gotrust,
            "pins" => &self.pins,
            "refs" => &self.refs,
            "links" => &self.links,
            _ => {
                return Err(StorageError::CorruptRecord {
                    key: format!("{tree}:{:?}", String::from_utf8_lossy(key)),
                    reason: "not a shared tree".into(),
                });
            }
        };
        shared_record_is_valid(tree, key, value).map_err(|reason| StorageError::CorruptRecord {
            key: space.key_name(key),
            reason,
        })?;
        let remote: serde_json::Value = space.decode(key, value)?;
        if let Some(local) = space.tree.get(key)? {
            let local: serde_json::Value = space.decode(key, &local).unwrap_or_default();
            if !supersedes(tree, &remote, &local) {
                return Ok(false);
            }
        }
        space.tree.insert(key, value)?;
        Ok(true)
    }

    /// A value the shared tier keeps in `meta` (its journal cursor).
    pub fn shared_meta(&self, name: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .meta
            .tree
            .get(format!("{SHARED_PREFIX}{name}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_shared_meta(&self, name: &str, value: &str) -> Result<(), StorageError> {
        self.meta
            .tree
            .insert(format!("{SHARED_PREFIX}{name}"), value.as_bytes())?;
        Ok(())
    }

    /// Writes a batch of access times in one sled batch.
    pub fn put_atimes(&self, batch: &[(Digest, u64)]) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (d, t) in batch {
            let rec = AtimeRecord {
                last_access_unix: *t,
            };
            let value = encode_record(&rec).map_err(|reason| StorageError::CorruptRecord {
                key: self.atime.key_name(d.as_str().as_bytes()),
                reason,
            })?;
            b.insert(d.as_str().as_bytes(), value);
        }
        self.atime.tree.apply_batch(b)?;
        Ok(())
    }

    pub fn get_atime(&self, digest: &Digest) -> Result<Option<AtimeRecord>, StorageError> {
        self.atime.get(digest.as_str().as_bytes())
    }

    pub fn remove_atime(&self, digest: &Digest) -> Result<bool, StorageError> {
        self.atime.remove(digest.as_str().as_bytes())
    }

    /// Every access time, in digest order; undecodable entries are `Err` items.
    pub fn atimes(
        &self,
    ) -> impl Iterator<Item = Result<(Digest, AtimeRecord), StorageError>> + use<> {
        self.atime_entries()
            .map(|entry| entry.and_then(|entry| entry.decoded))
    }

    /// Every record of the `SHARED_TREES`, raw: (tree, key, value as stored), tree by tree, for
    /// the shared tier's snapshots (`apply_shared` takes them back).
    pub fn shared_records(
        &self,
    ) -> impl Iterator<Item = Result<(&'static str, Vec<u8>, Vec<u8>), StorageError>> + use<> {
        let spaces = [
            &self.tags,
            &self.taglists,
            &self.referrers,
            &self.gofiles,
            &self.golists,
            &self.sumdb,
            &self.gotrust,
            &self.pins,
            &self.refs,
            &self.links,
        ]
        .map(|s| (s.name, s.tree.clone()));
        spaces.into_iter().flat_map(|(name, tree)| {
            tree.iter().map(move |item| {
                let (k, v) = item?;
                Ok((name, k.to_vec(), v.to_vec()))
            })
        })
    }

    /// Writes everything to disk (sled otherwise flushes on a timer). Blocking.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    /// `flush` without blocking the async runtime.
    pub async fn flush_async(&self) -> Result<(), StorageError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub(crate) fn blob_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(Digest, BlobRecord)>, StorageError>> + use<> {
        self.blobs.entries(self.blobs.tree.iter(), decode_blob_key)
    }

    pub(crate) fn tag_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(TagKey, TagRecord)>, StorageError>> + use<> {
        self.tags.entries(self.tags.tree.iter(), decode_tag_key)
    }

    pub(crate) fn tag_list_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(TagListKey, TagListRecord)>, StorageError>> + use<>
    {
        self.taglists
            .entries(self.taglists.tree.iter(), decode_pair_key)
    }

    pub(crate) fn referrers_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(ReferrersKey, ReferrersRecord)>, StorageError>> + use<>
    {
        self.referrers
            .entries(self.referrers.tree.iter(), decode_link_key)
    }

    pub(crate) fn go_list_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(GoListKey, GoListRecord)>, StorageError>> + use<>
    {
        self.golists
            .entries(self.golists.tree.iter(), decode_pair_key)
    }

    pub(crate) fn sumdb_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(SumdbKey, SumdbRecord)>, StorageError>> + use<> {
        self.sumdb.entries(self.sumdb.tree.iter(), decode_pair_key)
    }

    pub(crate) fn trust_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(String, TrustRecord)>, StorageError>> + use<> {
        self.gotrust.entries(self.gotrust.tree.iter(), |key| {
            keys::decode::<1>(key).map(|[db]| db)
        })
    }

    pub(crate) fn pin_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(Digest, PinRecord)>, StorageError>> + use<> {
        self.pins.entries(self.pins.tree.iter(), decode_blob_key)
    }

    pub(crate) fn refs_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(Digest, RefsRecord)>, StorageError>> + use<> {
        self.refs.entries(self.refs.tree.iter(), decode_blob_key)
    }

    pub(crate) fn atime_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(Digest, AtimeRecord)>, StorageError>> + use<> {
        self.atime.entries(self.atime.tree.iter(), decode_blob_key)
    }

    pub(crate) fn link_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<(LinkKey, LinkRecord)>, StorageError>> + use<> {
        self.links.entries(self.links.tree.iter(), decode_link_key)
    }

    /// Every outbox entry; one that does not decode is an error naming its key.
    pub(crate) fn outbox_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<()>, StorageError>> + use<> {
        let tree = self.outbox.tree().clone();
        tree.clone().iter().map(move |item| {
            let (key, value) = item?;
            let key_name = format!("outbox:{key:?}");
            let decoded = crate::outbox::decode(&value).map(|_| ()).ok_or_else(|| {
                StorageError::CorruptRecord {
                    key: key_name.clone(),
                    reason: "not an outbox entry".into(),
                }
            });
            Ok(RawEntry {
                key,
                key_name,
                decoded,
                tree: tree.clone(),
            })
        })
    }

    /// Every `meta` entry. These are not versioned records: `format` holds the index format
    /// byte, `done/<step>` an 8-byte time; anything else does not decode.
    pub(crate) fn meta_entries(
        &self,
    ) -> impl Iterator<Item = Result<RawEntry<()>, StorageError>> + use<> {
        let space = self.meta.clone();
        self.meta.tree.iter().map(move |item| {
            let (key, value) = item?;
            let key_name = space.key_name(&key);
            let decoded = check_meta(&key, &value).map_err(|reason| StorageError::CorruptRecord {
                key: key_name.clone(),
                reason,
            });
            Ok(RawEntry {
                key,
                key_name,
                decoded,
                tree: space.tree.clone(),
            })
        })
    }
}

fn check_meta(key: &[u8], value: &[u8]) -> Result<(), String> {
    if key == FORMAT_KEY {
        return match value {
            [INDEX_FORMAT] => Ok(()),
            _ => Err(format!("index format {value:?} is not {INDEX_FORMAT}")),
        };
    }
    if key.starts_with(DONE_PREFIX.as_bytes()) {
        return match value.len() {
            8 => Ok(()),
            n => Err(format!("a done marker holds an 8-byte time, not {n} bytes")),
        };
    }
    if key.starts_with(SHARED_PREFIX.as_bytes()) {
        return std::str::from_utf8(value)
            .map(|_| ())
            .map_err(|_| "a shared-tier value is not UTF-8".to_owned());
    }
    Err("unknown meta key".to_owned())
}

/// How far ahead of this clock a record from another replica may be dated.
const MAX_FUTURE_SECS: u64 = 3600;

/// Whether a record from another replica has its tree's key and record shape, and is not dated
/// in the future (a tag learned "tomorrow" would never be revalidated).
fn shared_record_is_valid(tree: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    fn when(t: u64) -> Result<(), String> {
        if t > unix_now() + MAX_FUTURE_SECS {
            return Err(format!("dated {t}, in the future"));
        }
        Ok(())
    }
    let k = |r: Result<(), keys::KeyError>| r.map_err(|e| e.to_string());
    match tree {
        "tags" => {
            k(decode_tag_key(key).map(drop))?;
            when(decode_record::<TagRecord>(value)?.learned_unix)
        }
        "taglists" => {
            k(decode_pair_key(key).map(drop))?;
            when(decode_record::<TagListRecord>(value)?.fetched_unix)
        }
        "referrers" => {
            decode_link_key(key)?;
            when(decode_record::<ReferrersRecord>(value)?.fetched_unix)
        }
        "gofiles" => {
            k(keys::decode::<3>(key).map(drop))?;
            decode_record::<GoFileRecord>(value).map(drop)
        }
        "golists" => {
            k(decode_pair_key(key).map(drop))?;
            when(decode_record::<GoListRecord>(value)?.fetched_unix)
        }
        "sumdb" => {
            k(decode_pair_key(key).map(drop))?;
            decode_record::<SumdbRecord>(value).map(drop)
        }
        "gotrust" => {
            k(keys::decode::<1>(key).map(drop))?;
            decode_record::<TrustRecord>(value).map(drop)
        }
        "pins" => {
            decode_blob_key(key)?;
            decode_record::<PinRecord>(value).map(drop)
        }
        "refs" => {
            decode_blob_key(key)?;
            decode_record::<RefsRecord>(value).map(drop)
        }
        "links" => {
            decode_link_key(key)?;
            decode_record::<LinkRecord>(value).map(drop)
        }
        _ => Err("not a shared tree".into()),
    }
}

/// Whether a record from another replica replaces the one here (see `Index::apply_shared`).
fn supersedes(tree: &str, remote: &serde_json::Value, local: &serde_json::Value) -> bool {
    let num = |v: &serde_json::Value, f: &str| v.get(f).and_then(serde_json::Value::as_u64);
    let flag = |v: &serde_json::Value, f: &str| v.get(f).and_then(serde_json::Value::as_bool);
    match tree {
        "tags" => num(remote, "learned_unix") > num(local, "learned_unix"),
        "taglists" | "golists" | "referrers" => {
            num(remote, "fetched_unix") > num(local, "fetched_unix")
        }
        "gotrust" => num(remote, "size") > num(local, "size"),
        "links" => {
            flag(local, "listed_only") == Some(true) && flag(remote, "listed_only") != Some(true)
        }
        "sumdb" => flag(remote, "verified") == Some(true) && flag(local, "verified") != Some(true),
        _ => false,
    }
}

fn decode_pair_key(key: &[u8]) -> Result<(String, String), keys::KeyError> {
    keys::decode::<2>(key).map(|[a, b]| (a, b))
}

fn decode_link_key(key: &[u8]) -> Result<LinkKey, String> {
    let [upstream, repo, digest] = keys::decode::<3>(key).map_err(|e| e.to_string())?;
    let digest = Digest::parse(&digest).map_err(|e| e.to_string())?;
    Ok((upstream, repo, digest))
}

fn decode_blob_key(key: &[u8]) -> Result<Digest, String> {
    let text = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    Digest::parse(text).map_err(|e| e.to_string())
}

fn decode_tag_key(key: &[u8]) -> Result<TagKey, keys::KeyError> {
    keys::decode::<3>(key).map(|[upstream, repo, tag]| (upstream, repo, tag))
}

/// One stored entry, with the raw key kept so a caller (fsck) can delete an undecodable one.
pub(crate) struct RawEntry<T> {
    pub key: sled::IVec,
    pub key_name: String,
    pub decoded: Result<T, StorageError>,
    tree: sled::Tree,
}

impl<T> RawEntry<T> {
    pub fn remove(&self) -> Result<(), StorageError> {
        self.tree.remove(&self.key)?;
        Ok(())
    }
}

/// One sled tree with its name, for messages. All record encoding and decoding goes through here.
#[derive(Clone, Debug)]
struct Space {
    name: &'static str,
    tree: sled::Tree,
    /// Set on the trees another replica may read (`Index::apply_shared`): writes are queued.
    outbox: Option<Outbox>,
}

impl Space {
    fn open(db: &sled::Db, name: &'static str) -> Result<Space, StorageError> {
        Ok(Space {
            name,
            tree: db.open_tree(name)?,
            outbox: None,
        })
    }

    fn replicated(mut self, outbox: &Outbox) -> Space {
        self.outbox = Some(outbox.clone());
        self
    }

    /// `tree:"key"`, with NUL separators shown as `\0`.
    fn key_name(&self, key: &[u8]) -> String {
        format!("{}:{:?}", self.name, String::from_utf8_lossy(key))
    }

    fn put<T: Serialize>(&self, key: &[u8], record: &T) -> Result<(), StorageError> {
        let value = encode_record(record).map_err(|reason| StorageError::CorruptRecord {
            key: self.key_name(key),
            reason,
        })?;
        if let Some(o) = self.outbox.as_ref().filter(|o| o.is_on()) {
            o.push(&Pending::Record {
                tree: self.name.to_owned(),
                key: key.to_vec(),
                value: value.clone(),
            })?;
        }
        self.tree.insert(key, value)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        self.tree
            .get(key)?
            .map(|value| self.decode(key, &value))
            .transpose()
    }

    fn remove(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.tree.remove(key)?.is_some())
    }

    fn decode<T: DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Result<T, StorageError> {
        decode_record(value).map_err(|reason| StorageError::CorruptRecord {
            key: self.key_name(key),
            reason,
        })
    }

    /// Decodes key and value of every item of `iter` (an iterator over this tree).
    fn entries<K, V, E>(
        &self,
        iter: sled::Iter,
        decode_key: fn(&[u8]) -> Result<K, E>,
    ) -> impl Iterator<Item = Result<RawEntry<(K, V)>, StorageError>> + use<K, V, E>
    where
        V: DeserializeOwned,
        E: ToString,
    {
        let space = self.clone();
        iter.map(move |item| {
            let (key, value) = item?;
            let key_name = space.key_name(&key);
            let decoded = match decode_key(&key) {
                Ok(k) => space.decode(&key, &value).map(|v| (k, v)),
                Err(e) => Err(StorageError::CorruptRecord {
                    key: key_name.clone(),
                    reason: format!("bad key: {}", e.to_string()),
                }),
            };
            Ok(RawEntry {
                key,
                key_name,
                decoded,
                tree: space.tree.clone(),
            })
        })
    }
}

/// The one encoder of index records: version byte, then JSON.
fn encode_record<T: Serialize>(record: &T) -> Result<Vec<u8>, String> {
    let mut value = vec![RECORD_VERSION];
    serde_json::to_writer(&mut value, record).map_err(|e| format!("cannot encode: {e}"))?;
    Ok(value)
}

/// The one decoder of index records. Errors are the reason, for `CorruptRecord`.
fn decode_record<T: DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    match value.split_first() {
        None => Err("empty value".to_owned()),
        Some((&RECORD_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| format!("bad version-1 JSON: {e}"))
        }
        Some((version, _)) => Err(format!(
            "unknown record version {version} (this build reads version {RECORD_VERSION})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_encode_as_version_byte_then_json() {
        let record = TagListRecord {
            tags: vec!["latest".into()],
            fetched_unix: 7,
        };
        let bytes = encode_record(&record).unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..], br#"{"tags":["latest"],"fetched_unix":7}"#);
        assert_eq!(decode_record::<TagListRecord>(&bytes).unwrap(), record);
    }

    #[test]
    fn undecodable_records_give_a_reason() {
        let unknown = decode_record::<BlobRecord>(b"\x02{}").unwrap_err();
        assert!(unknown.contains("unknown record version 2"), "{unknown}");
        let bad_json = decode_record::<BlobRecord>(b"\x01{not json").unwrap_err();
        assert!(bad_json.contains("JSON"), "{bad_json}");
        assert_eq!(decode_record::<BlobRecord>(b"").unwrap_err(), "empty value");
    }

    #[test]
    fn shared_records_keep_the_newer_and_never_queue_again() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.set_sharing(true);
        let tag = |d: &[u8], t| TagRecord {
            digest: Digest::of(d),
            media_type: "m".into(),
            learned_unix: t,
        };
        index
            .put_tag("up", "r", "latest", &tag(b"new", 200))
            .unwrap();
        index.put_link("up", "r", &Digest::of(b"l")).unwrap();
        let queued = index.outbox_batch(10).unwrap();
        assert_eq!(queued.len(), 2, "both writes are queued");
        let Some(Pending::Record { tree, key, .. }) = &queued[0].1 else {
            panic!("a record first: {queued:?}");
        };
        assert_eq!(tree, "tags");
        let older = encode_record(&tag(b"old", 100)).unwrap();
        assert!(!index.apply_shared("tags", key, &older).unwrap());
        assert_eq!(
            index.get_tag("up", "r", "latest").unwrap().unwrap().digest,
            Digest::of(b"new")
        );
        let newer = encode_record(&tag(b"newer", 300)).unwrap();
        assert!(index.apply_shared("tags", key, &newer).unwrap());
        assert_eq!(
            index.get_tag("up", "r", "latest").unwrap().unwrap().digest,
            Digest::of(b"newer")
        );
        assert_eq!(
            index.outbox_len(),
            2,
            "applied records are not queued again"
        );
        assert!(index.apply_shared("blobs", key, &newer).is_err());
        let raw: Vec<_> = index.shared_records().map(Result::unwrap).collect();
        let trees: Vec<&str> = raw.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(
            trees,
            ["tags", "links"],
            "every shared record, tree by tree"
        );
        assert!(raw.iter().all(|(t, _, _)| SHARED_TREES.contains(t)));
        let (_, k, v) = &raw[0];
        assert!(
            !index.apply_shared("tags", k, v).unwrap(),
            "a snapshot applies as is"
        );
        assert!(index.apply_shared("tags", key, b"\x01not json").is_err());
        assert!(
            index.apply_shared("tags", key, b"\x01{\"x\":1}").is_err(),
            "JSON of another shape"
        );
        let tomorrow = encode_record(&tag(b"future", unix_now() + 86_400)).unwrap();
        assert!(index.apply_shared("tags", key, &tomorrow).is_err());
        assert!(
            index
                .apply_shared("tags", b"no separators", &newer)
                .is_err()
        );
    }
}
