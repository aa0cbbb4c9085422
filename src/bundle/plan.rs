//! Server side of `wharf export`: turns a selection (images, module versions, `all`, `pinned`)
//! into the `BundleManifest` of what the bundle will hold, reading only the cache. Walks each
//! manifest to its children, computes every module's `h1:` hashes, and collects the
//! checksum-database lookups and tiles that prove them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use wharf_storage::{Digest, unix_now};

use super::sumdb::{StoreSource, trusted, verifiers};
use super::{
    BlobEntry, BundleError, BundleManifest, ExportRequest, FileEntry, ImageEntry, ImageRef, Mirror,
    ModuleEntry, Stored, SumdbEntry, children_of,
};
use crate::goproxy::path::{ModulePath, escape, is_canonical};
use crate::registry::manifest;

/// One manifest to export, with the name it is known by.
struct Root {
    entry: ImageEntry,
    /// Named explicitly: a missing piece is an error, not a warning.
    explicit: bool,
}

/// What the selection contains: images with every cached manifest and blob they refer to, then
/// module versions with their `h1:` hashes, then the checksum-database files that prove them.
pub async fn plan(app: Mirror<'_>, req: &ExportRequest) -> Result<BundleManifest, BundleError> {
    let mut out = BundleManifest::new(unix_now());
    let pinned: HashSet<Digest> = if req.pinned {
        app.storage
            .index
            .pins()
            .filter_map(|p| p.ok().map(|(d, _)| d))
            .collect()
    } else {
        HashSet::new()
    };
    plan_images(app, req, &pinned, &mut out)?;
    plan_modules(app, req, &pinned, &mut out).await?;
    (out.sumdb, out.missing_sumdb) = proofs(app, &out.modules).await;
    Ok(out)
}

/// Images named, tagged (`all`) or pinned, and pinned manifests no exported tag reaches.
fn plan_images(
    app: Mirror<'_>,
    req: &ExportRequest,
    pinned: &HashSet<Digest>,
    out: &mut BundleManifest,
) -> Result<(), BundleError> {
    let mut roots = Vec::new();
    for s in &req.images {
        roots.push(named_root(app, s)?);
    }
    if req.all || req.pinned {
        for t in app.storage.index.tags() {
            let ((up, repo, tag), rec) = t?;
            if req.all || pinned.contains(&rec.digest) {
                roots.push(Root {
                    entry: image_entry(&up, &repo, Some(tag), rec.digest),
                    explicit: false,
                });
            }
        }
    }
    let mut blobs: BTreeMap<Digest, BlobEntry> = BTreeMap::new();
    let mut exported = Vec::new();
    walk_roots(app, roots, &mut blobs, &mut exported, &mut out.warnings)?;
    // Pinned manifests that no exported image reaches (prefetched by digest).
    if req.pinned {
        let mut extra = Vec::new();
        for d in pinned {
            let is_manifest = app
                .storage
                .index
                .get_blob(d)
                .ok()
                .flatten()
                .is_some_and(|b| b.media_type.is_some());
            if is_manifest && !blobs.contains_key(d) {
                extra.push(Root {
                    entry: image_entry("", "", None, d.clone()),
                    explicit: false,
                });
            }
        }
        walk_roots(app, extra, &mut blobs, &mut exported, &mut out.warnings)?;
    }
    let extra = plan_referrers(app, &blobs, &exported, out)?;
    walk_roots(app, extra, &mut blobs, &mut exported, &mut out.warnings)?;
    // The same tag named twice (explicitly and by --all) is exported once.
    let mut seen = HashSet::new();
    exported.retain(|e| seen.insert((e.reference.clone(), e.digest.clone())));
    out.images = exported;
    out.blobs = blobs.into_values().collect();
    Ok(())
}

/// The referrers lists this cache holds for the exported manifests, in each exported
/// repository; returns the referrer manifests it also holds, to export with their blobs.
fn plan_referrers(
    app: Mirror<'_>,
    blobs: &BTreeMap<Digest, BlobEntry>,
    exported: &[ImageEntry],
    out: &mut BundleManifest,
) -> Result<Vec<Root>, BundleError> {
    let index = &app.storage.index;
    let repos: BTreeSet<(&str, &str)> = exported
        .iter()
        .filter(|e| !e.upstream.is_empty())
        .map(|e| (e.upstream.as_str(), e.repository.as_str()))
        .collect();
    let manifests: Vec<&Digest> = blobs
        .values()
        .filter(|b| b.media_type.is_some())
        .map(|b| &b.digest)
        .collect();
    let mut extra = Vec::new();
    for (up, repo) in repos {
        for subject in &manifests {
            let Some(rec) = index.get_referrers(up, repo, subject)? else {
                continue;
            };
            for r in &rec.referrers {
                // Named with its repository even when a pin already brought its bytes, so the
                // importer links it there.
                if index.get_blob(&r.digest)?.is_some() {
                    extra.push(Root {
                        entry: image_entry(up, repo, None, r.digest.clone()),
                        explicit: false,
                    });
                }
            }
            out.referrers.push(super::ReferrersEntry {
                upstream: up.to_string(),
                repository: repo.to_string(),
                subject: (*subject).clone(),
                referrers: rec.referrers,
            });
        }
    }
    Ok(extra)
}

/// An image the request names, resolved to a digest through the cached tag.
fn named_root(app: Mirror<'_>, s: &str) -> Result<Root, BundleError> {
    let r = ImageRef::parse(app.config, s).map_err(BundleError::Refused)?;
    let (digest, tag) = match (&r.digest, &r.tag) {
        (Some(d), _) => (d.clone(), None),
        (None, Some(t)) => {
            let rec = app
                .storage
                .index
                .get_tag(&r.upstream, r.repository.as_str(), t.as_str())?
                .ok_or_else(|| {
                    BundleError::refused(format!(
                        "{s}: not in this cache; prefetch it first (wharf prefetch {s})"
                    ))
                })?;
            (rec.digest, Some(t.as_str().to_string()))
        }
        (None, None) => return Err(BundleError::refused(format!("{s}: no tag or digest"))),
    };
    Ok(Root {
        entry: image_entry(&r.upstream, r.repository.as_str(), tag, digest),
        explicit: true,
    })
}

/// Module versions named, cached (`all`) or pinned. One named but not cached is an error; one
/// selected otherwise is skipped with a warning.
async fn plan_modules(
    app: Mirror<'_>,
    req: &ExportRequest,
    pinned: &HashSet<Digest>,
    out: &mut BundleManifest,
) -> Result<(), BundleError> {
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for m in &req.modules {
        if !is_canonical(&m.version) {
            return Err(BundleError::refused(format!(
                "{}@{}: export needs a canonical version such as v1.2.3",
                m.path, m.version
            )));
        }
        wanted.insert((m.path.clone(), m.version.clone()));
    }
    if req.all || req.pinned {
        for f in app.storage.index.go_files() {
            let ((module, version, _kind), rec) = f?;
            if req.all || pinned.contains(&rec.digest) {
                wanted.insert((module, version));
            }
        }
    }
    let explicit: HashSet<(String, String)> = req
        .modules
        .iter()
        .map(|m| (m.path.clone(), m.version.clone()))
        .collect();
    for (path, version) in wanted {
        match module_entry(app, &path, &version).await {
            Ok(e) => out.modules.push(e),
            Err(e) if explicit.contains(&(path.clone(), version.clone())) => {
                return Err(BundleError::refused(format!("{path}@{version}: {e}")));
            }
            Err(e) => out.warnings.push(format!("{path}@{version}: skipped: {e}")),
        }
    }
    Ok(())
}

fn walk_roots(
    app: Mirror<'_>,
    roots: Vec<Root>,
    blobs: &mut BTreeMap<Digest, BlobEntry>,
    exported: &mut Vec<ImageEntry>,
    warnings: &mut Vec<String>,
) -> Result<(), BundleError> {
    for mut root in roots {
        match walk(app, &root.entry.digest, blobs) {
            Ok((media, w)) => {
                root.entry.media_type = media;
                warnings.extend(
                    w.into_iter()
                        .map(|w| format!("{}: {w}", root.entry.reference)),
                );
                exported.push(root.entry);
            }
            Err(e) if root.explicit => {
                return Err(BundleError::refused(format!(
                    "{}: {e}",
                    root.entry.reference
                )));
            }
            Err(e) => warnings.push(format!("{}: skipped: {e}", root.entry.reference)),
        }
    }
    Ok(())
}

fn image_entry(upstream: &str, repo: &str, tag: Option<String>, digest: Digest) -> ImageEntry {
    let reference = match (&tag, upstream.is_empty()) {
        (_, true) => digest.to_string(),
        (Some(t), false) => format!("{upstream}/{repo}:{t}"),
        (None, false) => format!("{upstream}/{repo}@{digest}"),
    };
    ImageEntry {
        reference,
        upstream: upstream.into(),
        repository: repo.into(),
        tag,
        digest,
        media_type: String::new(),
    }
}

/// Adds a manifest and everything it refers to; returns its media type and what was left out
/// (children of an index that are not cached, e.g. other platforms).
fn walk(
    app: Mirror<'_>,
    root: &Digest,
    blobs: &mut BTreeMap<Digest, BlobEntry>,
) -> Result<(String, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut added: Vec<(Digest, BlobEntry)> = Vec::new();
    let root_media = read_manifest(app, root, &mut added, true)?;
    let mut queue = vec![root.clone()];
    while let Some(d) = queue.pop() {
        let body = app
            .storage
            .blobs
            .read_small(&d, app.max_manifest())
            .map_err(|e| format!("manifest {d}: {e}"))?
            .ok_or_else(|| format!("manifest {d} is not cached"))?;
        let children = children_of(&body).map_err(|e| format!("manifest {d}: {e}"))?;
        for (cd, _media, _size, platform) in children.manifests {
            if !app.storage.blobs.contains(&cd) {
                let p = format!(
                    "{}/{}",
                    platform["os"].as_str().unwrap_or("?"),
                    platform["architecture"].as_str().unwrap_or("?")
                );
                warnings.push(format!("manifest {cd} ({p}) is not cached; left out"));
                continue;
            }
            read_manifest(app, &cd, &mut added, false)?;
            queue.push(cd);
        }
        for (bd, size) in children.blobs {
            let actual = app
                .storage
                .blobs
                .size(&bd)
                .map_err(|e| format!("blob {bd}: {e}"))?
                .ok_or_else(|| format!("blob {bd} of manifest {d} is not cached"))?;
            if size > 0 && actual != size {
                return Err(format!(
                    "blob {bd} is {actual} bytes on disk, manifest {d} says {size}"
                ));
            }
            added.push((
                bd.clone(),
                BlobEntry {
                    digest: bd,
                    size: actual,
                    media_type: None,
                },
            ));
        }
    }
    for (d, e) in added {
        // A manifest's entry (with its media type) wins over a plain one.
        match blobs.get(&d) {
            Some(old) if old.media_type.is_some() => {}
            _ => {
                blobs.insert(d, e);
            }
        }
    }
    Ok((root_media, warnings))
}

/// Records a manifest blob with its media type.
fn read_manifest(
    app: Mirror<'_>,
    d: &Digest,
    added: &mut Vec<(Digest, BlobEntry)>,
    root: bool,
) -> Result<String, String> {
    let body = app
        .storage
        .blobs
        .read_small(d, app.max_manifest())
        .map_err(|e| format!("manifest {d}: {e}"))?
        .ok_or_else(|| {
            if root {
                format!("manifest {d} is not cached")
            } else {
                format!("child manifest {d} is not cached")
            }
        })?;
    let media = app
        .storage
        .index
        .get_blob(d)
        .ok()
        .flatten()
        .and_then(|r| r.media_type)
        .unwrap_or_else(|| manifest::media_type_of_stored(&body));
    added.push((
        d.clone(),
        BlobEntry {
            digest: d.clone(),
            size: body.len() as u64,
            media_type: Some(media.clone()),
        },
    ));
    Ok(media)
}

/// A module version's cached files and their `h1:` hashes.
async fn module_entry(app: Mirror<'_>, path: &str, version: &str) -> Result<ModuleEntry, String> {
    let index = &app.storage.index;
    let mut e = ModuleEntry {
        path: path.into(),
        version: version.into(),
        ..Default::default()
    };
    for kind in ["info", "mod", "zip"] {
        let Some(rec) = index
            .get_go_file(path, version, kind)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let Some(size) = app
            .storage
            .blobs
            .size(&rec.digest)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let f = FileEntry {
            digest: rec.digest,
            size,
        };
        match kind {
            "info" => e.info = Some(f),
            "mod" => e.go_mod = Some(f),
            _ => e.zip = Some(f),
        }
    }
    let Some(m) = e.go_mod.clone() else {
        return Err("its .mod is not cached".into());
    };
    let blobs = app.storage.blobs.clone();
    let zip = e.zip.clone();
    let (p, v) = (path.to_string(), version.to_string());
    let (mod_h1, zip_h1) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let bytes = blobs
            .read_small(&m.digest, crate::goproxy::hash::MAX_GO_MOD)
            .map_err(|e| format!(".mod: {e}"))?
            .ok_or(".mod vanished")?;
        let mod_h1 = crate::goproxy::hash::h1_of_gomod(&bytes);
        let zip_h1 = match zip {
            Some(z) => {
                let f = blobs
                    .open_blob(&z.digest)
                    .map_err(|e| format!(".zip: {e}"))?;
                Some(
                    crate::goproxy::hash::check_and_hash_zip(&f, &p, &v)
                        .map_err(|e| format!(".zip: {e}"))?,
                )
            }
            None => None,
        };
        Ok((mod_h1, zip_h1))
    })
    .await
    .map_err(|e| e.to_string())??;
    e.mod_h1 = Some(mod_h1);
    e.zip_h1 = zip_h1;
    Ok(e)
}

/// The cached lookups and tiles that prove the modules' hashes, for every configured database,
/// and the files a proof needed that the cache lacks (`<db>/<path>`: the exporter fetches them
/// and asks again). A module without a cached lookup (private, or `go.verify = false`) gets none.
async fn proofs(app: Mirror<'_>, modules: &[ModuleEntry]) -> (Vec<SumdbEntry>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let content = Stored(app.storage.clone());
    for (db, verifier) in verifiers(app.config) {
        let src = StoreSource::new(&content, &db, HashMap::new());
        let known = trusted(&app.storage.index, &db);
        for m in modules {
            let public = ModulePath::parse(&m.path)
                .ok()
                .is_some_and(|p| app.is_public(&p));
            let key = format!("lookup/{}@{}", escape(&m.path), escape(&m.version));
            let cached = app
                .storage
                .index
                .get_sumdb(&db, &key)
                .ok()
                .flatten()
                .is_some();
            if !public || !cached {
                continue;
            }
            // Proven in the lookup's own tree (a fresh client) and in the newest tree wharf
            // trusts (a client that has seen it): both sets of tiles travel.
            let own = verifier.lookup(&src, &m.path, &m.version, None).await;
            if let Err(e) = own {
                tracing::info!(module = %m.name(), error = %e, "cannot prove a cached lookup from the cache alone");
            }
            if known.is_some() {
                let _ = verifier
                    .lookup(&src, &m.path, &m.version, known.as_ref())
                    .await;
            }
        }
        missing.extend(src.missing().into_iter().map(|p| format!("{db}/{p}")));
        for (path, digest) in src.seen() {
            if let Ok(Some(size)) = app.storage.blobs.size(&digest) {
                out.push(SumdbEntry {
                    db: db.clone(),
                    path,
                    digest,
                    size,
                });
            }
        }
    }
    (out, missing)
}
