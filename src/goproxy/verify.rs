//! Checksum-database access for wharf itself and for clients: cached lookups and tiles
//! (`sumdb_get`), and the check every public `.mod` / `.zip` passes before it is committed
//! (`check_module_file`): its `h1:` hash must equal the database's authenticated record.

use std::sync::Arc;

use http::Method;
use reqwest::Url;
use wharf_storage::SumdbRecord;

use super::path::{FileKind, ModulePath, SumdbPath};
use super::service::GoProxy;
use crate::cache::{Cached, Outcome, revalidate};
use crate::config::SumdbConfig;
use crate::upstream::UpstreamError;
use crate::upstream::client::{read_limited, send_following};
use wharf_storage::unix_now as now_unix;

/// Largest lookup or tile answer read.
const MAX_SUMDB_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SumdbFetchError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("local failure: {0}")]
    Internal(String),
}

/// A lookup or tile: from the index when immutable (lookups, full tiles) or fresh (partial
/// tiles), else from the database, else the stale copy.
pub async fn sumdb_get(
    app: &Arc<GoProxy>,
    db: &SumdbConfig,
    p: &SumdbPath,
) -> Result<(Vec<u8>, Outcome), SumdbFetchError> {
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
    app: &Arc<GoProxy>,
    db: &SumdbConfig,
    raw: &str,
    mutable: bool,
) -> Result<(Vec<u8>, Outcome), SumdbFetchError> {
    let index = &app.storage.index;
    let internal = |e: &dyn std::fmt::Display| SumdbFetchError::Internal(e.to_string());
    if let Some(body) = storing(app, db, raw) {
        return Ok((body.to_vec(), Outcome::Hit));
    }
    let cached = match index.get_sumdb(&db.name, raw).map_err(|e| internal(&e))? {
        Some(rec) => app
            .engine
            .read_small(&rec.digest, MAX_SUMDB_BODY as u64)
            .await
            .ok()
            .flatten()
            .map(|body| Cached {
                value: body,
                learned_unix: rec.fetched_unix,
            }),
        None => None,
    };
    let fetch = async {
        let body = match fetch(app, db, raw).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(SumdbFetchError::NotFound),
            Err(e) => return Err(SumdbFetchError::Upstream(e)),
        };
        let digest = app
            .engine
            .put_indexed(body.clone())
            .await
            .map_err(|e| internal(&e))?;
        let rec = SumdbRecord {
            digest,
            fetched_unix: now_unix(),
            verified: false,
        };
        index
            .put_sumdb(&db.name, raw, &rec)
            .map_err(|e| internal(&e))?;
        Ok((body, Outcome::Miss))
    };
    // Lookups and full tiles never change; partial tiles are kept for `go.sumdb_ttl`.
    let ttl = if mutable {
        Some(app.config.go.sumdb_ttl)
    } else {
        None
    };
    let what = format!("{}/{raw}", db.name);
    let stale_if = |e: &SumdbFetchError| matches!(e, SumdbFetchError::Upstream(_));
    let (body, outcome) = revalidate(&what, cached, ttl, now_unix(), fetch, stale_if).await?;
    Ok((body, outcome))
}

async fn fetch(
    app: &Arc<GoProxy>,
    db: &SumdbConfig,
    raw: &str,
) -> Result<Option<Vec<u8>>, UpstreamError> {
    let go = &app.go;
    if go.offline {
        return Err(UpstreamError::Offline);
    }
    let url = Url::parse(&format!("{}/{raw}", db.url()))
        .map_err(|e| UpstreamError::Protocol(format!("bad checksum database URL: {e}")))?;
    let call = send_following(
        &go.http,
        (&go.policy, None),
        go.max_redirects,
        Method::GET,
        url,
        http::HeaderMap::new(),
        None,
    );
    let resp = match go.sumdb_health.get(&db.name) {
        Some(h) => {
            let probe = format!("{}/", db.url());
            crate::upstream::health::guarded(h, &go.http, &go.policy, &probe, call).await?
        }
        None => call.await?,
    };
    match resp.status().as_u16() {
        200 => {
            let url = resp.url().clone();
            read_limited(resp, MAX_SUMDB_BODY, &url).await.map(Some)
        }
        404 | 410 => Ok(None),
        s => Err(UpstreamError::Status { status: s }),
    }
}

/// Why a downloaded module file was not accepted: who failed.
#[derive(Debug)]
pub enum CheckError {
    /// This machine failed (reading the download back, the index); logged, not shown.
    Local(String),
    /// The download or the checksum database is wrong or unreachable; safe to show a client.
    Upstream(String),
}

impl From<CheckError> for crate::cache::FillError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Local(m) => {
                tracing::error!(error = %m, "checking a module file failed locally");
                crate::cache::FillError::Local
            }
            CheckError::Upstream(m) => crate::cache::FillError::Upstream(m),
        }
    }
}

/// A checksum-database lookup started once a public source answered with the file (`start_lookup`), so that
/// it runs while the file downloads; the verdict waits for it.
pub struct PendingLookup(tokio::task::JoinHandle<Result<super::sumdb::LookupResult, CheckError>>);

/// Starts the lookup that the check of a public `.mod` or `.zip` of `m@v` needs (when
/// `go.verify` is on and a database is configured). Its failure is reported by the check that
/// awaits it, so a fill that ends before its check (not found upstream) logs nothing for it.
pub fn start_lookup(app: &Arc<GoProxy>, m: &ModulePath, v: &str) -> Option<PendingLookup> {
    use tracing::Instrument as _;
    if !app.config.go.verify {
        return None;
    }
    let db = app.config.go.sumdbs.first()?.clone();
    let (app, m, v) = (app.clone(), m.clone(), v.to_string());
    let lookup = async move { lookup_hashes(&app, &db, &m, &v).await };
    Some(PendingLookup(tokio::spawn(
        lookup.instrument(tracing::Span::current()),
    )))
}

/// Verifies a downloaded `.mod` or `.zip` (in `file`) before it is committed. Zips always pass
/// the structural checks of golang.org/x/mod/zip; public modules are then checked against the
/// checksum database (unless `go.verify = false`): their `h1:` must equal the authenticated
/// record's, from `pending` when the fill started the lookup already. Errors are one-line texts
/// for the client; both hashes are logged.
pub async fn check_module_file(
    app: &Arc<GoProxy>,
    m: &ModulePath,
    v: &str,
    kind: FileKind,
    file: &Arc<std::fs::File>,
    public: bool,
    pending: Option<PendingLookup>,
) -> Result<(), CheckError> {
    let h1 = compute_h1(m, v, kind, file).await.inspect_err(|e| {
        if matches!(e, CheckError::Upstream(_)) {
            app.metrics.verification_failed("go_zip");
        }
    })?;
    if !public || !app.config.go.verify {
        return Ok(());
    }
    let Some(db) = app.config.go.sumdbs.first() else {
        tracing::warn!(module = %m, version = v, "go.verify is on but no [[go.sumdb]] is configured; not verified");
        return Ok(());
    };
    let expected = match pending {
        Some(PendingLookup(task)) => task
            .await
            .map_err(|e| CheckError::Local(format!("the checksum-database lookup failed: {e}")))?,
        None => lookup_hashes(app, db, m, v).await,
    }
    .inspect_err(|e| {
        if let CheckError::Upstream(why) = e {
            tracing::error!(db = %db.name, module = %m, version = v, error = %why,
                "checksum database verification failed");
        }
    })?;
    let want = match kind {
        FileKind::Zip => expected.zip_hash,
        _ => expected.mod_hash,
    };
    let Some(want) = want else {
        return Err(CheckError::Upstream(format!(
            "{} has no {} hash for {m}@{v}",
            db.name,
            kind.ext()
        )));
    };
    if want != h1 {
        app.metrics.verification_failed("go_checksum");
        tracing::error!(module = %m, version = v, kind = kind.ext(), downloaded = %h1, sumdb = %want,
            "checksum mismatch: refusing the download");
        // One line, the go command's words: it prints it as the server's reason.
        return Err(CheckError::Upstream(format!(
            "checksum mismatch: {} says {want}, upstream served {h1}",
            db.name
        )));
    }
    Ok(())
}

/// MiB of module zips under check at once, all fills together; a larger zip is checked alone.
const ZIP_CHECK_BUDGET: u32 = 256;
static ZIP_CHECKS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(ZIP_CHECK_BUDGET as usize);

/// A zip's share of `ZIP_CHECK_BUDGET`: its size in MiB, rounded up, at least 1 and at most all.
fn zip_check_weight(len: u64) -> u32 {
    u32::try_from(len.div_ceil(1 << 20))
        .unwrap_or(u32::MAX)
        .clamp(1, ZIP_CHECK_BUDGET)
}

/// The `h1:` of a `.mod`, or of a `.zip` after its structural checks.
async fn compute_h1(
    m: &ModulePath,
    v: &str,
    kind: FileKind,
    file: &Arc<std::fs::File>,
) -> Result<String, CheckError> {
    let local = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| CheckError::Local(format!("{what}: {e}"))
    };
    // A `.mod` or `.info` of a few KiB (in memory, `Fetch::small`): hashed here, no hand-off.
    if kind != FileKind::Zip
        && let Ok(meta) = file.metadata()
        && meta.len() <= wharf_storage::SMALL_MAX
    {
        use std::os::unix::fs::FileExt as _;
        let mut bytes = vec![0; usize::try_from(meta.len()).unwrap_or(0)];
        file.read_exact_at(&mut bytes, 0)
            .map_err(local("cannot reread the download"))?;
        return Ok(super::hash::h1_of_gomod(&bytes));
    }
    // A zip's check holds its directory in memory (a few hundred bytes per entry, so up to a
    // few times the zip's size for one of tiny files): weighed by size, so that concurrent
    // checks of hostile zips cannot take more than a bounded amount between them.
    let _permit = match kind {
        FileKind::Zip => {
            let len = file.metadata().map_or(0, |m| m.len());
            Some(
                ZIP_CHECKS
                    .acquire_many(zip_check_weight(len))
                    .await
                    .map_err(|e| CheckError::Local(format!("zip check: {e}")))?,
            )
        }
        _ => None,
    };
    let file = file.clone();
    let (m, v) = (m.to_string(), v.to_string());
    tokio::task::spawn_blocking(move || -> Result<String, CheckError> {
        match kind {
            FileKind::Zip => super::hash::check_and_hash_zip(&*file, &m, &v)
                .map_err(|e| CheckError::Upstream(format!("invalid module zip: {e}"))),
            _ => {
                use std::os::unix::fs::FileExt as _;
                let len = file
                    .metadata()
                    .map_err(local("cannot reread the download"))?
                    .len();
                let mut bytes = vec![0; usize::try_from(len).unwrap_or(0)];
                file.read_exact_at(&mut bytes, 0)
                    .map_err(local("cannot reread the download"))?;
                Ok(super::hash::h1_of_gomod(&bytes))
            }
        }
    })
    .await
    .map_err(|e| CheckError::Local(format!("hashing failed: {e}")))?
}

/// The checksum database's hashes for `m@v`, verified, with the trusted head persisted.
async fn lookup_hashes(
    app: &Arc<GoProxy>,
    db: &SumdbConfig,
    m: &ModulePath,
    v: &str,
) -> Result<super::sumdb::LookupResult, CheckError> {
    use super::sumdb::{TrustedTree, Verifier};
    let go = &app.go;
    let verifier = Verifier::new(&db.key)
        .map_err(|e| CheckError::Local(format!("go.sumdb key for {}: {e}", db.name)))?;
    let serial = go.sumdb_lock.lock().await;
    let index = &app.storage.index;
    let known = index
        .get_trust(&db.name)
        .map_err(|e| CheckError::Local(e.to_string()))?
        .and_then(|r| {
            let hash: [u8; 32] = hex::decode(&r.hash).ok()?.try_into().ok()?;
            Some(TrustedTree {
                n: r.size,
                hash,
                note: r.note.into_bytes(),
            })
        });
    let src = CachedSource {
        app,
        db,
        authenticated: Default::default(),
        cached: Default::default(),
    };
    let result = verifier
        .lookup(&src, m.as_str(), v, known.as_ref())
        .await
        .map_err(|e| {
            CheckError::Upstream(format!("cannot verify {m}@{v} with {}: {e}", db.name))
        })?;
    // Persist the head first: it is what keeps the database from rolling back or forking.
    if known.as_ref().is_none_or(|k| k.n < result.tree.n) {
        let rec = wharf_storage::TrustRecord {
            size: result.tree.n,
            hash: hex::encode(result.tree.hash),
            note: String::from_utf8_lossy(&result.tree.note).into_owned(),
            learned_unix: now_unix(),
        };
        index
            .put_trust(&db.name, &rec)
            .map_err(|e| CheckError::Local(e.to_string()))?;
    }
    // The head is persisted: other lookups may go on while this one caches what it proved.
    drop(serial);
    let lookup_path = format!(
        "lookup/{}@{}",
        super::path::escape(m.as_str()),
        super::path::escape(v)
    );
    let mut verified =
        std::mem::take(&mut *src.authenticated.lock().unwrap_or_else(|p| p.into_inner()));
    verified.push((lookup_path, result.response.clone()));
    // Only what came from the database this time: a response read from the verified cache is
    // stored already, and storing it again costs an fsync'd commit per path and lookup.
    let cached = std::mem::take(&mut *src.cached.lock().unwrap_or_else(|p| p.into_inner()));
    let mut fresh: Vec<(String, Arc<Vec<u8>>)> = Vec::new();
    for (path, data) in verified {
        if !cached.contains(&path) && !fresh.iter().any(|(p, _)| *p == path) {
            fresh.push((path, Arc::new(data)));
        }
    }
    store_in_background(app, db, fresh);
    Ok(result)
}

/// Stores verified responses on a task of their own, so the fill that proved them commits
/// without waiting for their fsyncs; until each is on disk, `storing` answers for it (the go
/// command asks for the same lookup as soon as it has the file).
fn store_in_background(app: &Arc<GoProxy>, db: &SumdbConfig, fresh: Vec<(String, Arc<Vec<u8>>)>) {
    if fresh.is_empty() {
        return;
    }
    {
        let mut pending = app
            .go
            .sumdb_storing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (path, data) in &fresh {
            pending.insert((db.name.clone(), path.clone()), data.clone());
        }
    }
    let (app, db) = (app.clone(), db.clone());
    tokio::spawn(async move {
        for (path, data) in fresh {
            if let Err(e) = store_verified(&app, &db, &path, data.to_vec()).await {
                tracing::warn!(path, error = %e, "cannot cache a verified sumdb response");
            }
            let key = (db.name.clone(), path);
            let mut pending = app
                .go
                .sumdb_storing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // A later lookup may have put the same response again; either copy is the same.
            if pending.get(&key).is_some_and(|d| Arc::ptr_eq(d, &data)) {
                pending.remove(&key);
            }
        }
    });
}

/// A verified response of `db` at `path` that is still being stored.
fn storing(app: &GoProxy, db: &SumdbConfig, path: &str) -> Option<Arc<Vec<u8>>> {
    app.go
        .sumdb_storing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(db.name.clone(), path.to_string()))
        .cloned()
}

async fn store_verified(
    app: &Arc<GoProxy>,
    db: &SumdbConfig,
    path: &str,
    data: Vec<u8>,
) -> Result<(), String> {
    let digest = app
        .engine
        .put_indexed(data)
        .await
        .map_err(|e| e.to_string())?;
    let rec = SumdbRecord {
        digest,
        fetched_unix: now_unix(),
        verified: true,
    };
    app.storage
        .index
        .put_sumdb(&db.name, path, &rec)
        .map_err(|e| e.to_string())
}

/// Lookups and tiles for wharf's own verification: authenticated cache entries first, else the
/// database. Nothing fetched here is stored until the verifier has authenticated it.
struct CachedSource<'a> {
    app: &'a Arc<GoProxy>,
    db: &'a SumdbConfig,
    authenticated: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    /// Paths answered from the verified cache (nothing to store again).
    cached: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl CachedSource<'_> {
    async fn get(&self, path: &str) -> Result<Vec<u8>, super::sumdb::SourceError> {
        use super::sumdb::SourceError;
        if let Some(body) = storing(self.app, self.db, path) {
            self.cached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.to_string());
            return Ok(body.to_vec());
        }
        if let Ok(Some(rec)) = self.app.storage.index.get_sumdb(&self.db.name, path)
            && rec.verified
            && let Ok(Some(body)) = self
                .app
                .storage
                .blobs
                .read_small(&rec.digest, MAX_SUMDB_BODY as u64)
        {
            self.cached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.to_string());
            return Ok(body);
        }
        match fetch(self.app, self.db, path).await {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(SourceError::NotFound),
            Err(e) => Err(SourceError::Failed(e.summary())),
        }
    }
}

impl super::sumdb::SumdbSource for CachedSource<'_> {
    async fn lookup(&self, key: &str) -> Result<Vec<u8>, super::sumdb::SourceError> {
        self.get(&format!("lookup/{key}")).await
    }

    async fn tile(&self, path: &str) -> Result<Vec<u8>, super::sumdb::SourceError> {
        self.get(path).await
    }

    fn authenticated_tile(&self, path: &str, data: &[u8]) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path.to_string(), data.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_checks_are_weighed_by_size_within_the_budget() {
        assert_eq!(zip_check_weight(0), 1);
        assert_eq!(zip_check_weight(1), 1);
        assert_eq!(zip_check_weight(1 << 20), 1);
        assert_eq!(zip_check_weight((1 << 20) + 1), 2);
        // Larger than the budget (a module zip may be 500 MiB): alone, not never.
        assert_eq!(zip_check_weight(500 << 20), ZIP_CHECK_BUDGET);
        assert_eq!(zip_check_weight(u64::MAX), ZIP_CHECK_BUDGET);
    }
}
