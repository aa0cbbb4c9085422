//! Who may read what. Content is stored once by digest, but it is served for an (upstream,
//! repository) pair only when that pair is known to hold it: the bytes were fetched there, a
//! manifest fetched there lists them, or the upstream confirmed them (a HEAD in that
//! repository). Each is remembered as a link in the index, so a warm hit costs one lookup.
//!
//! This module owns the links: recording one (and, for a stored manifest, everything it lists)
//! and the one-time backfill for stores written before every upstream had links. It must not
//! contact an upstream; confirming a missing link is the handler's job.

use wharf_storage::{Digest, Storage, StorageError};

use super::manifest;

/// Deepest nesting followed when linking what a manifest lists (index -> manifest -> blobs).
const MAX_DEPTH: usize = 4;
/// The one-time backfill of links from tag records.
const BACKFILL: &str = "links-from-tags";

/// Records that `upstream/repo` holds `digest` and, when it is a manifest stored here, the
/// config, layers and child manifests it lists, recursively. A manifest vouches for its contents:
/// registries refuse a manifest whose blobs the repository does not hold. Its `subject` is not
/// followed (a referrer may point at a manifest of another repository).
pub fn link(
    storage: &Storage,
    upstream: &str,
    repo: &str,
    digest: &Digest,
    max_manifest: u64,
) -> Result<(), StorageError> {
    link_at(storage, upstream, repo, digest, max_manifest, 0)
}

fn link_at(
    storage: &Storage,
    upstream: &str,
    repo: &str,
    digest: &Digest,
    max_manifest: u64,
    depth: usize,
) -> Result<(), StorageError> {
    let index = &storage.index;
    if !index.has_link(upstream, repo, digest)? {
        index.put_link(upstream, repo, digest)?;
    }
    // Only manifests have refs records; a layer ends the walk with one lookup.
    if depth >= MAX_DEPTH || index.get_refs(digest)?.is_none() {
        return Ok(());
    }
    let Some(body) = storage
        .blobs
        .read_small(digest, max_manifest)
        .map_err(StorageError::io(format!("reading manifest {digest}")))?
    else {
        return Ok(());
    };
    for (child, _) in manifest::contents(&body) {
        link_at(storage, upstream, repo, &child, max_manifest, depth + 1)?;
    }
    Ok(())
}

/// Stores written before links were kept for every upstream have them only for upstreams with
/// credentials. Once per index: every tagged manifest links itself and what it lists to the
/// repository of its tag. Content cached by digest alone is confirmed upstream on its next hit.
pub fn backfill(storage: &Storage, max_manifest: u64) -> Result<(), StorageError> {
    if storage.index.done(BACKFILL)? {
        return Ok(());
    }
    let mut linked = 0u64;
    for entry in storage.index.tags() {
        let ((upstream, repo, _tag), rec) = entry?;
        link(storage, &upstream, &repo, &rec.digest, max_manifest)?;
        linked += 1;
    }
    storage.index.mark_done(BACKFILL)?;
    if linked > 0 {
        tracing::info!(
            tags = linked,
            "linked cached images to their repositories (one-time upgrade)"
        );
    }
    Ok(())
}
