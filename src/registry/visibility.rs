//! Who may read what. Content is stored once by digest, but cached bytes are served for an
//! (upstream, repository) pair only when that pair is known to hold them: they were fetched
//! there, or the upstream confirmed them (a HEAD in that repository; a tag's digest). Each is
//! remembered as a link in the index, so a warm hit costs one lookup. What a manifest lists is
//! linked as *listed only*: registries accept manifests naming blobs the repository does not
//! hold (foreign layers, unchecked references), so a listing is a reason to fetch from that
//! repository, never to serve bytes cached from another without the upstream's yes.
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

/// How far to trust what a manifest lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Listed content is linked as listed only: before cached bytes are served under it, the
    /// upstream must confirm this repository holds them (registries accept manifests naming
    /// blobs the repository does not hold: foreign layers, unchecked references).
    Unconfirmed,
    /// Listed content is held too (a bundle the operator imported: it carried every byte).
    Held,
}

/// Records that `upstream/repo` holds `digest` and, when it is a manifest stored here, links
/// what it lists (config, layers, child manifests; recursively; not its `subject`) as `listed`
/// says.
pub fn link(
    storage: &Storage,
    upstream: &str,
    repo: &str,
    digest: &Digest,
    max_manifest: u64,
    listed: Listed,
) -> Result<(), StorageError> {
    link_at(storage, (upstream, repo), digest, max_manifest, listed, 0)
}

fn link_at(
    storage: &Storage,
    (upstream, repo): (&str, &str),
    digest: &Digest,
    max_manifest: u64,
    listed: Listed,
    depth: usize,
) -> Result<(), StorageError> {
    let index = &storage.index;
    if depth == 0 || listed == Listed::Held {
        index.put_link(upstream, repo, digest)?;
    } else {
        index.put_listed_link(upstream, repo, digest)?;
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
        link_at(
            storage,
            (upstream, repo),
            &child,
            max_manifest,
            listed,
            depth + 1,
        )?;
    }
    Ok(())
}

/// Whether cached `digest` may be served for `upstream/repo` without asking the upstream: a
/// link that is more than a listing.
pub fn held(
    storage: &Storage,
    upstream: &str,
    repo: &str,
    digest: &Digest,
) -> Result<bool, StorageError> {
    Ok(storage
        .index
        .get_link(upstream, repo, digest)?
        .is_some_and(|l| !l.listed_only))
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
        link(
            storage,
            &upstream,
            &repo,
            &rec.digest,
            max_manifest,
            Listed::Unconfirmed,
        )?;
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
