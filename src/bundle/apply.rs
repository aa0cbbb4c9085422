//! Server side of `wharf import`: everything named in the request must already be stored (the
//! uploads went through `BlobWriter::commit` with their digests). This checks what digests
//! cannot (manifests are manifests and refer only to stored blobs; module files pass the zip
//! rules and hash to the claimed `h1:`, proven by the checksum database when the bundle carries
//! its lookup), and only when all of it holds, indexes and pins. A refusal indexes nothing.
//!
//! The two halves are two types: `check` runs the numbered phases and is the only maker of a
//! `Checked`; `commit` takes one and is the only code here that writes to the index. The check
//! reads through `Content`, so `wharf export --check` runs it over a bundle file (`verify`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use wharf_storage::{
    BlobRecord, Digest, GoFileRecord, GoListRecord, PinRecord, RefsRecord, SumdbRecord,
    TagListRecord, TagRecord, unix_now,
};

use super::sumdb::{StoreSource, verifiers};
use super::{
    BundleError, BundleManifest, Content, ImportReply, ImportRequest, Mirror, ModuleEntry, Stored,
    children_of,
};
use crate::config::Config;
use crate::goproxy::path::{self, GoRoute, ModulePath, escape, is_canonical};
use crate::goproxy::sumdb::Verifier;
use crate::registry::manifest;
use crate::registry::routes::{RepoName, Tag};

/// What the check reads: the importing wharf's config and private rules, and the bytes.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// Whether a `[[go.private]]` rule covers a module.
    pub is_private: &'a (dyn Fn(&ModulePath) -> bool + Send + Sync),
    pub content: &'a Arc<dyn Content>,
}

impl Inputs<'_> {
    fn is_public(&self, module: &ModulePath) -> bool {
        !(self.is_private)(module)
    }

    fn max_manifest(&self) -> u64 {
        self.config.registry.max_manifest_size.0
    }
}

/// Checks everything the request names, then indexes and pins it.
pub async fn apply(app: Mirror<'_>, req: ImportRequest) -> Result<ImportReply, BundleError> {
    let content = Stored::shared(app.storage);
    let inputs = Inputs {
        config: app.config,
        is_private: app.is_private,
        content: &content,
    };
    let checked = check(inputs, &req.contents).await?;
    commit(app, &req.reason, checked).await
}

/// What a successful check found, without importing anything.
#[derive(Debug, Default)]
pub struct Verified {
    pub modules_sumdb_verified: usize,
    pub warnings: Vec<String>,
}

/// The check alone, as `apply` runs it, over any `Content`: what `wharf export --check` runs.
pub async fn verify(inputs: Inputs<'_>, c: &BundleManifest) -> Result<Verified, BundleError> {
    let checked = check(inputs, c).await?;
    Ok(Verified {
        modules_sumdb_verified: checked.modules.iter().filter(|m| m.sumdb_verified).count(),
        warnings: checked.warnings,
    })
}

/// An import whose every part passed its checks: made only by `check`, consumed by `commit`.
struct Checked<'r> {
    contents: &'r BundleManifest,
    /// Each manifest's children (child manifests, then config and layers), for `RefsRecord`.
    refs: BTreeMap<Digest, Vec<Digest>>,
    modules: Vec<CheckedModule<'r>>,
    /// Per configured checksum database (whose key parses), in config order.
    sumdb: Vec<CheckedSumdb>,
    warnings: Vec<String>,
}

/// A module version that passed its checks.
struct CheckedModule<'r> {
    entry: &'r ModuleEntry,
    sumdb_verified: bool,
}

/// The imported files of one checksum database, and which of them a proof authenticated.
struct CheckedSumdb {
    db: String,
    files: HashMap<String, Digest>,
    authenticated: BTreeSet<String>,
}

/// Imported checksum-database files: database, path, digest.
type SumdbFiles = BTreeMap<String, HashMap<String, Digest>>;

/// The `h1:` hashes of a module version's .mod and .zip (when the bundle carries them).
type Hashes = (Option<String>, Option<String>);

/// A verifier and the lookups and tiles it may read, per configured checksum database.
type Sources<'a> = Vec<(String, Verifier, StoreSource<'a>)>;

/// Runs the phases in order; the first refusal ends the import before anything is written.
async fn check<'r>(app: Inputs<'_>, c: &'r BundleManifest) -> Result<Checked<'r>, BundleError> {
    let mut warnings = Vec::new();
    check_blobs(app, c)?;
    let refs = check_manifests(app, c, &mut warnings)?;
    check_images(app, c, &mut warnings)?;
    let files = check_sumdb_files(app, c, &mut warnings)?;
    warnings.sort();
    warnings.dedup();
    let (modules, sumdb) = check_modules(app, c, files, &mut warnings).await?;
    Ok(Checked {
        contents: c,
        refs,
        modules,
        sumdb,
        warnings,
    })
}

/// Phase 1: every blob is stored, at its size.
fn check_blobs(app: Inputs<'_>, c: &BundleManifest) -> Result<(), BundleError> {
    for b in &c.blobs {
        match app.content.size(&b.digest)? {
            Some(n) if n == b.size => {}
            Some(n) => {
                return Err(BundleError::refused(format!(
                    "blob {} is {n} bytes, the bundle says {}",
                    b.digest, b.size
                )));
            }
            None => {
                return Err(BundleError::refused(format!(
                    "blob {} is not stored: upload it before importing",
                    b.digest
                )));
            }
        }
    }
    Ok(())
}

/// Phase 2: manifests are valid documents whose config and layers are stored. Returns each
/// one's children; a child manifest that is missing (another platform) is a warning.
fn check_manifests(
    app: Inputs<'_>,
    c: &BundleManifest,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<Digest, Vec<Digest>>, BundleError> {
    let blobs = app.content;
    let mut refs = BTreeMap::new();
    for b in c.blobs.iter().filter(|b| b.media_type.is_some()) {
        let media = b.media_type.as_deref().unwrap_or_default();
        let body = blobs
            .read_small(&b.digest, app.max_manifest())
            .map_err(|e| BundleError::refused(format!("manifest {}: {e}", b.digest)))?
            .ok_or_else(|| BundleError::refused(format!("manifest {} is not stored", b.digest)))?;
        manifest::check(&body, Some(media))
            .map_err(|e| BundleError::refused(format!("manifest {}: {e}", b.digest)))?;
        let children = children_of(&body)
            .map_err(|e| BundleError::refused(format!("manifest {}: {e}", b.digest)))?;
        let mut all = Vec::new();
        for (d, _, _, platform) in &children.manifests {
            if !blobs.contains(d) {
                warnings.push(format!(
                    "manifest {d} ({}/{}) of index {} is not in the bundle; that platform cannot be pulled",
                    platform["os"].as_str().unwrap_or("?"),
                    platform["architecture"].as_str().unwrap_or("?"),
                    b.digest
                ));
            }
            all.push(d.clone());
        }
        for (d, _) in &children.blobs {
            if !blobs.contains(d) {
                return Err(BundleError::refused(format!(
                    "manifest {} refers to blob {d}, which the bundle does not hold",
                    b.digest
                )));
            }
            all.push(d.clone());
        }
        refs.insert(b.digest.clone(), all);
    }
    Ok(refs)
}

/// Phase 3: tags name stored manifests under valid names.
fn check_images(
    app: Inputs<'_>,
    c: &BundleManifest,
    warnings: &mut Vec<String>,
) -> Result<(), BundleError> {
    for i in &c.images {
        if !app.content.contains(&i.digest) {
            return Err(BundleError::refused(format!(
                "{}: manifest {} is not in the bundle",
                i.reference, i.digest
            )));
        }
        if let Some(t) = &i.tag {
            Tag::parse(t).map_err(|e| BundleError::refused(format!("{}: {e}", i.reference)))?;
            RepoName::parse(&i.repository)
                .map_err(|e| BundleError::refused(format!("{}: {e}", i.reference)))?;
            if app.config.upstream(&i.upstream).is_none() {
                warnings.push(format!(
                    "{}: no [[registry.upstream]] is named {:?} here, so clients cannot ask for it by that name",
                    i.reference, i.upstream
                ));
            }
        }
    }
    Ok(())
}

/// Phase 4: checksum-database files have valid paths of configured databases (files of other
/// databases are left out, with a warning).
fn check_sumdb_files(
    app: Inputs<'_>,
    c: &BundleManifest,
    warnings: &mut Vec<String>,
) -> Result<SumdbFiles, BundleError> {
    let mut files = SumdbFiles::new();
    for s in &c.sumdb {
        if !app.config.go.sumdbs.iter().any(|d| d.name == s.db) {
            warnings.push(format!(
                "checksum database {} is not configured here ([[go.sumdb]]); its files were not imported",
                s.db
            ));
            continue;
        }
        match path::parse(&format!("sumdb/{}/{}", s.db, s.path)) {
            Ok(GoRoute::SumdbPath(..)) => {}
            _ => {
                return Err(BundleError::refused(format!(
                    "sumdb/{}/{} is not a checksum-database path",
                    s.db, s.path
                )));
            }
        }
        if !app.content.contains(&s.digest) {
            return Err(BundleError::refused(format!(
                "sumdb/{}/{} is not stored",
                s.db, s.path
            )));
        }
        files
            .entry(s.db.clone())
            .or_default()
            .insert(s.path.clone(), s.digest.clone());
    }
    Ok(files)
}

/// Phase 5: module versions (.info, zip rules, h1: hashes, checksum-database proofs). Returns
/// the checked versions and, per database, the files and what the proofs authenticated.
async fn check_modules<'r>(
    app: Inputs<'_>,
    c: &'r BundleManifest,
    files: SumdbFiles,
    warnings: &mut Vec<String>,
) -> Result<(Vec<CheckedModule<'r>>, Vec<CheckedSumdb>), BundleError> {
    let sources: Sources = verifiers(app.config)
        .into_iter()
        .map(|(name, v)| {
            let extra = files.get(&name).cloned().unwrap_or_default();
            let src = StoreSource::new(app.content.as_ref(), &name, extra);
            (name, v, src)
        })
        .collect();
    let mut checked = Vec::new();
    let mut unproven = 0usize;
    for m in &c.modules {
        let (module, hashes) = check_module(app, m).await?;
        let public = app.is_public(&module);
        let proven = public && prove(app, m, &hashes, &sources, &files).await?;
        if public && !proven {
            unproven += 1;
        }
        checked.push(CheckedModule {
            entry: m,
            sumdb_verified: proven,
        });
    }
    if unproven > 0 && app.config.go.verify {
        warnings.push(format!(
            "{unproven} module version(s) were checked against the bundle's h1: hashes only: it carries no checksum-database lookup for them"
        ));
    }
    let sumdb = sources
        .into_iter()
        .map(|(db, _, src)| CheckedSumdb {
            files: files.get(&db).cloned().unwrap_or_default(),
            authenticated: src.authenticated(),
            db,
        })
        .collect();
    Ok((checked, sumdb))
}

/// One module version on its own: a valid path, a canonical version, and stored files that pass
/// the zip rules and hash to the `h1:` the bundle claims.
async fn check_module(
    app: Inputs<'_>,
    m: &ModuleEntry,
) -> Result<(ModulePath, Hashes), BundleError> {
    let name = m.name();
    let module =
        ModulePath::parse(&m.path).map_err(|e| BundleError::refused(format!("{name}: {e}")))?;
    if !is_canonical(&m.version) {
        return Err(BundleError::refused(format!(
            "{name}: not a canonical version"
        )));
    }
    let (mod_h1, zip_h1) = hashes(app, m)
        .await
        .map_err(|e| BundleError::refused(format!("{name}: {e}")))?;
    for (what, claimed, actual) in [(".mod", &m.mod_h1, &mod_h1), (".zip", &m.zip_h1, &zip_h1)] {
        if let (Some(c), Some(a)) = (claimed, actual)
            && c != a
        {
            return Err(BundleError::refused(format!(
                "{name} {what}: its h1: hash is {a}, the bundle says {c}"
            )));
        }
    }
    Ok((module, (mod_h1, zip_h1)))
}

/// Verifies a public module version with every database whose lookup for it is imported or
/// cached; a hash a database contradicts is refused. Whether any database proved it.
async fn prove(
    app: Inputs<'_>,
    m: &ModuleEntry,
    (mod_h1, zip_h1): &Hashes,
    sources: &Sources<'_>,
    files: &SumdbFiles,
) -> Result<bool, BundleError> {
    let name = m.name();
    let key = format!("lookup/{}@{}", escape(&m.path), escape(&m.version));
    let mut proven = false;
    for (db, verifier, src) in sources {
        if !src_has(app, db, files, &key)? {
            continue;
        }
        let r = verifier
            .lookup(src, &m.path, &m.version, None)
            .await
            .map_err(|e| BundleError::refused(format!("{name}: cannot verify with {db}: {e}")))?;
        for (what, proof, actual) in [(".mod", &r.mod_hash, mod_h1), (".zip", &r.zip_hash, zip_h1)]
        {
            if let (Some(p), Some(a)) = (proof, actual)
                && p != a
            {
                return Err(BundleError::refused(format!(
                    "{name} {what}: its h1: hash is {a}, but {db} records {p}"
                )));
            }
        }
        src.mark_authenticated(&key);
        proven = true;
    }
    Ok(proven)
}

/// Everything holds: index, then pin, then flush.
async fn commit(
    app: Mirror<'_>,
    reason: &str,
    checked: Checked<'_>,
) -> Result<ImportReply, BundleError> {
    let Checked {
        contents: c,
        refs,
        modules,
        sumdb,
        warnings,
    } = checked;
    let now = unix_now();
    let mut reply = ImportReply {
        warnings,
        ..ImportReply::default()
    };
    let mut pinned: BTreeSet<Digest> = BTreeSet::new();
    index_blobs(app, c, now, &mut pinned, &mut reply)?;
    index_images(app, c, refs, &mut reply)?;
    index_modules(app, &modules, now, &mut pinned, &mut reply)?;
    index_sumdb(app, &sumdb, now, &mut pinned, &mut reply)?;
    let pin = PinRecord {
        reason: reason.to_string(),
        pinned_unix: now,
    };
    for d in &pinned {
        app.storage.index.put_pin(d, &pin)?;
    }
    reply.pinned = pinned.len();
    app.storage.index.flush_async().await?;
    tracing::info!(
        reason = %reason,
        tags = reply.tags,
        manifests = reply.manifests,
        blobs = reply.blobs,
        modules = reply.modules,
        "import indexed"
    );
    Ok(reply)
}

/// Blob records (a manifest's keeps its media type), counted as manifests or blobs.
fn index_blobs(
    app: Mirror<'_>,
    c: &BundleManifest,
    now: u64,
    pinned: &mut BTreeSet<Digest>,
    reply: &mut ImportReply,
) -> Result<(), BundleError> {
    let index = &app.storage.index;
    for b in &c.blobs {
        let keep = index
            .get_blob(&b.digest)?
            .is_some_and(|r| r.media_type == b.media_type);
        if !keep {
            let rec = BlobRecord {
                size: b.size,
                media_type: b.media_type.clone(),
                created_unix: now,
            };
            index.put_blob(&b.digest, &rec)?;
        }
        pinned.insert(b.digest.clone());
        if b.media_type.is_some() {
            reply.manifests += 1;
        } else {
            reply.blobs += 1;
        }
    }
    Ok(())
}

/// Manifest refs, what each repository holds, tags (unless this wharf learned a newer one) and
/// tag lists.
fn index_images(
    app: Mirror<'_>,
    c: &BundleManifest,
    refs: BTreeMap<Digest, Vec<Digest>>,
    reply: &mut ImportReply,
) -> Result<(), BundleError> {
    let index = &app.storage.index;
    for (d, children) in refs {
        index.put_refs(&d, &RefsRecord { children })?;
    }
    // What the bundle says each repository holds is what it may serve (see `visibility`).
    let max_manifest = app.max_manifest();
    for i in &c.images {
        // The bundle carried every byte it lists: held, not merely listed.
        crate::registry::visibility::link(
            app.storage,
            &i.upstream,
            &i.repository,
            &i.digest,
            max_manifest,
            crate::registry::visibility::Listed::Held,
        )?;
    }
    for i in &c.images {
        let Some(tag) = &i.tag else { continue };
        let newer = index
            .get_tag(&i.upstream, &i.repository, tag)?
            .is_some_and(|t| t.learned_unix > c.created_unix);
        if !newer {
            let rec = TagRecord {
                digest: i.digest.clone(),
                media_type: i.media_type.clone(),
                learned_unix: c.created_unix,
            };
            index.put_tag(&i.upstream, &i.repository, tag, &rec)?;
        }
        reply.tags += 1;
    }
    index_tag_lists(app, c)?;
    index_referrers(app, c)
}

/// Tag lists: what `skopeo inspect` and `tags/list` show when the upstream cannot be asked.
/// The referrers lists the bundle carries, for upstreams this wharf knows, unless this wharf
/// learned a newer list.
fn index_referrers(app: Mirror<'_>, c: &BundleManifest) -> Result<(), BundleError> {
    let index = &app.storage.index;
    for r in &c.referrers {
        if app.config.upstream(&r.upstream).is_none() {
            continue;
        }
        let newer = index
            .get_referrers(&r.upstream, &r.repository, &r.subject)?
            .is_some_and(|old| old.fetched_unix > c.created_unix);
        if !newer {
            let rec = wharf_storage::ReferrersRecord {
                referrers: r.referrers.clone(),
                fetched_unix: c.created_unix,
            };
            index.put_referrers(&r.upstream, &r.repository, &r.subject, &rec)?;
        }
    }
    Ok(())
}

fn index_tag_lists(app: Mirror<'_>, c: &BundleManifest) -> Result<(), BundleError> {
    let index = &app.storage.index;
    let mut repos: BTreeMap<(&str, &str), BTreeSet<String>> = BTreeMap::new();
    for i in &c.images {
        if let Some(tag) = &i.tag {
            repos
                .entry((i.upstream.as_str(), i.repository.as_str()))
                .or_default()
                .insert(tag.clone());
        }
    }
    for ((up, repo), tags) in repos {
        let old = index.get_tag_list(up, repo)?;
        let fetched_unix = old.as_ref().map_or(0, |r| r.fetched_unix);
        let mut all: BTreeSet<String> = old
            .map(|r| r.tags.into_iter().collect())
            .unwrap_or_default();
        all.extend(tags);
        let rec = TagListRecord {
            tags: all.into_iter().collect(),
            fetched_unix,
        };
        index.put_tag_list(up, repo, &rec)?;
    }
    Ok(())
}

/// Module files and `@v/list`s.
fn index_modules(
    app: Mirror<'_>,
    modules: &[CheckedModule<'_>],
    now: u64,
    pinned: &mut BTreeSet<Digest>,
    reply: &mut ImportReply,
) -> Result<(), BundleError> {
    let mut lists: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for m in modules {
        for (kind, f) in m.entry.files() {
            let rec = GoFileRecord {
                digest: f.digest.clone(),
                size: f.size,
                fetched_unix: now,
            };
            app.storage
                .index
                .put_go_file(&m.entry.path, &m.entry.version, kind, &rec)?;
            pinned.insert(f.digest.clone());
        }
        lists
            .entry(m.entry.path.as_str())
            .or_default()
            .insert(m.entry.version.as_str());
        reply.modules += 1;
        reply.modules_sumdb_verified += usize::from(m.sumdb_verified);
    }
    for (module, versions) in lists {
        merge_list(app, module, &versions)?;
    }
    Ok(())
}

/// Checksum-database files; one already recorded as verified is not replaced by an unverified
/// copy.
fn index_sumdb(
    app: Mirror<'_>,
    sumdb: &[CheckedSumdb],
    now: u64,
    pinned: &mut BTreeSet<Digest>,
    reply: &mut ImportReply,
) -> Result<(), BundleError> {
    let index = &app.storage.index;
    for s in sumdb {
        for (p, digest) in &s.files {
            let verified = s.authenticated.contains(p);
            let existing = index.get_sumdb(&s.db, p)?;
            if existing.is_some_and(|e| e.verified && !verified) {
                continue;
            }
            let rec = SumdbRecord {
                digest: digest.clone(),
                fetched_unix: now,
                verified,
            };
            index.put_sumdb(&s.db, p, &rec)?;
            pinned.insert(digest.clone());
            reply.sumdb_files += 1;
        }
    }
    Ok(())
}

/// Whether a lookup is among the imported files or already cached.
fn src_has(app: Inputs<'_>, db: &str, files: &SumdbFiles, key: &str) -> Result<bool, BundleError> {
    if files.get(db).is_some_and(|f| f.contains_key(key)) {
        return Ok(true);
    }
    let cached = app
        .content
        .cached_sumdb(db, key)
        .map_err(|e| BundleError::refused(format!("sumdb/{db}/{key}: {e}")))?;
    Ok(cached.is_some())
}

/// Checks a module version's stored files and returns the `h1:` of its .mod and .zip.
async fn hashes(
    app: Inputs<'_>,
    m: &ModuleEntry,
) -> Result<(Option<String>, Option<String>), String> {
    let blobs = app.content.clone();
    let m = m.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(info) = &m.info {
            let body = blobs
                .read_small(&info.digest, 1 << 20)
                .map_err(|e| format!(".info: {e}"))?
                .ok_or(".info is not stored")?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!(".info is not JSON: {e}"))?;
            if v["Version"].as_str() != Some(m.version.as_str()) {
                return Err(format!(".info is not for version {}", m.version));
            }
        }
        let mod_h1 = match &m.go_mod {
            Some(f) => {
                let body = blobs
                    .read_small(&f.digest, crate::goproxy::hash::MAX_GO_MOD)
                    .map_err(|e| format!(".mod: {e}"))?
                    .ok_or(".mod is not stored")?;
                Some(crate::goproxy::hash::h1_of_gomod(&body))
            }
            None => None,
        };
        let zip_h1 = match &m.zip {
            Some(f) => Some(
                blobs
                    .zip_h1(&f.digest, &m.path, &m.version)
                    .map_err(|e| format!(".zip: {e}"))?,
            ),
            None => None,
        };
        Ok((mod_h1, zip_h1))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Adds versions to a module's `@v/list`. A list wharf did not have is recorded as old, so a
/// wharf that is online asks upstream for the full one.
fn merge_list(app: Mirror<'_>, module: &str, versions: &BTreeSet<&str>) -> Result<(), BundleError> {
    let index = &app.storage.index;
    let old = index.get_go_list(module, "list")?;
    let mut all: BTreeSet<String> = old
        .as_ref()
        .map(|r| r.body.lines().map(str::to_string).collect())
        .unwrap_or_default();
    all.extend(versions.iter().map(|v| v.to_string()));
    all.retain(|v| !v.trim().is_empty());
    let body: String = all.into_iter().map(|v| v + "\n").collect();
    let rec = GoListRecord {
        body,
        fetched_unix: old.map_or(0, |r| r.fetched_unix),
    };
    index.put_go_list(module, "list", &rec)?;
    Ok(())
}
