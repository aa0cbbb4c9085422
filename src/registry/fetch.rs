//! How the registry fills one blob for the cache engine: a GET of `/v2/<name>/blobs/<digest>`
//! on the chosen upstream, bounded by the size a manifest declared (else
//! `registry.max_blob_size`), checked against the digest it is named by.

use std::sync::Arc;

use http::Method;
use wharf_storage::{BlobRecord, Digest, Index, Storage, StorageError, unix_now};

use super::routes::RepoName;
use crate::cache::{Fetch, FillError, Incoming};
use crate::metrics::Metrics;
use crate::upstream::client::into_incoming;
use crate::upstream::{UpstreamClient, UpstreamError};

pub struct BlobFetch {
    pub up: Arc<UpstreamClient>,
    pub name: RepoName,
    pub digest: Digest,
    /// The size a manifest declared for it, if one was seen.
    pub declared: Option<u64>,
    pub max_blob_size: u64,
    pub storage: Storage,
    pub metrics: Arc<Metrics>,
}

impl Fetch for BlobFetch {
    async fn open(&mut self) -> Result<Option<Incoming>, FillError> {
        let upstream_err = |e: UpstreamError| {
            tracing::warn!(error = %e, "upstream failed");
            FillError::Upstream(e.summary())
        };
        let path = format!("/v2/{}/blobs/{}", self.name, self.digest);
        let scope = format!("repository:{}:pull", self.name);
        let resp = self
            .up
            .send(Method::GET, &path, &[], &scope)
            .await
            .map_err(upstream_err)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => return Err(upstream_err(UpstreamError::Status { status: s })),
        }
        // The repository has the blob: requests for it may join this fill (`ensure_linked`).
        if let Err(e) = self
            .storage
            .index
            .put_link(&self.up.name, self.name.as_str(), &self.digest)
        {
            tracing::warn!(error = %e, "recording the repository link failed");
        }
        Ok(Some(into_incoming(resp)))
    }

    fn expected(&self) -> Option<&Digest> {
        Some(&self.digest)
    }

    fn limit(&self) -> u64 {
        // A manifest may declare anything: it can lower the bound, never lift it.
        self.declared
            .map_or(self.max_blob_size, |d| d.min(self.max_blob_size))
    }

    fn too_large(&self, limit: u64) -> FillError {
        let bound = if self.declared.is_some_and(|d| d <= self.max_blob_size) {
            "its manifest declares"
        } else {
            "registry.max_blob_size"
        };
        tracing::error!(
            limit,
            "upstream sent more than {bound}; fill stopped, nothing stored"
        );
        FillError::Upstream(format!("blob larger than {bound} ({limit} bytes)"))
    }

    fn record(&self, index: &Index, digest: &Digest, size: u64) -> Result<(), StorageError> {
        let rec = BlobRecord {
            size,
            media_type: None,
            created_unix: unix_now(),
        };
        index.put_blob(digest, &rec)
    }

    fn committed(&self, size: u64, shared: bool) {
        if !shared {
            self.metrics.add_upstream_bytes(&self.up.name, size);
        }
    }
}
