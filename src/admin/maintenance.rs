//! What `wharf gc` and `wharf stats` ask the running server: `/admin/gc` and `/admin/stats`,
//! mounted behind the admin guard by `admin::routes`, and the store statistics they report.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use wharf_storage::{DiskEntry, Storage, gc::human};

use super::AdminError;
use crate::app::AppState;
use crate::config::Config;
use crate::error::Error;

/// What the cache holds.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Stats {
    pub bytes: u64,
    pub objects: usize,
    pub pinned_objects: usize,
    pub pinned_bytes: u64,
    pub max_size: u64,
    pub images: usize,
    pub tags: usize,
    pub go_files: usize,
    /// Requests by outcome since the server started (empty when computed offline).
    pub requests: HashMap<String, u64>,
    pub hit_ratio: Option<f64>,
    /// Bytes fetched from each upstream since the server started.
    pub upstream_bytes: HashMap<String, u64>,
    /// Repositories with the most cached tags, and modules with the most cached files.
    pub top_repositories: Vec<(String, usize)>,
    pub top_modules: Vec<(String, usize)>,
}

pub fn compute_stats(storage: &Storage, max_size: u64) -> Result<Stats, Error> {
    let mut s = Stats {
        max_size,
        ..Stats::default()
    };
    let list = storage.blobs.list().map_err(|source| Error::Io {
        context: "listing blobs".into(),
        source,
    })?;
    let mut sizes = HashMap::new();
    for e in list {
        if let DiskEntry::Blob(d, size) = e {
            s.bytes += size;
            s.objects += 1;
            sizes.insert(d, size);
        }
    }
    // The same computation eviction uses: pins and what they reach.
    (s.pinned_objects, s.pinned_bytes) = wharf_storage::gc::pinned_usage(storage, &sizes);
    let mut repos: HashMap<String, usize> = HashMap::new();
    for ((up, repo, _), _) in storage.index.tags().filter_map(Result::ok) {
        s.tags += 1;
        *repos.entry(format!("{up}/{repo}")).or_default() += 1;
    }
    s.images = repos.len();
    let mut modules: HashMap<String, usize> = HashMap::new();
    for ((m, _, _), _) in storage.index.go_files().filter_map(Result::ok) {
        s.go_files += 1;
        *modules.entry(m).or_default() += 1;
    }
    s.top_repositories = top(repos);
    s.top_modules = top(modules);
    Ok(s)
}

fn top(m: HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(10);
    v
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = if self.max_size == 0 {
            "no limit".to_string()
        } else {
            human(self.max_size)
        };
        writeln!(
            f,
            "on disk     {} in {} objects (budget: {budget})",
            human(self.bytes),
            self.objects
        )?;
        writeln!(
            f,
            "pinned      {} in {} objects",
            human(self.pinned_bytes),
            self.pinned_objects
        )?;
        writeln!(
            f,
            "registry    {} tags in {} repositories",
            self.tags, self.images
        )?;
        writeln!(f, "go          {} module files", self.go_files)?;
        if let Some(r) = self.hit_ratio {
            writeln!(f, "hit ratio   {:.1}% since start", r * 100.0)?;
        }
        let mut ups: Vec<_> = self.upstream_bytes.iter().collect();
        ups.sort();
        for (u, b) in ups {
            writeln!(f, "fetched     {} from {u}", human(*b))?;
        }
        for (r, n) in &self.top_repositories {
            writeln!(f, "repository  {r} ({n} tags)")?;
        }
        for (m, n) in &self.top_modules {
            writeln!(f, "module      {m} ({n} files)")?;
        }
        Ok(())
    }
}

/// The running server's view: storage stats plus request counters.
pub async fn server_stats(app: &AppState) -> Result<Stats, Error> {
    app.flush_atimes().await;
    let storage = app.storage.clone();
    let max = app.config.cache.max_size.0;
    let mut s = tokio::task::spawn_blocking(move || compute_stats(&storage, max))
        .await
        .map_err(|e| Error::Io {
            context: "stats".into(),
            source: std::io::Error::other(e),
        })??;
    s.requests = app.metrics.outcome_totals();
    let hits =
        s.requests.get("hit").copied().unwrap_or(0) + s.requests.get("stale").copied().unwrap_or(0);
    // Passed through unstored (no room on disk): fetched upstream like a miss.
    let misses = s.requests.get("miss").copied().unwrap_or(0)
        + s.requests.get("bypass").copied().unwrap_or(0);
    if hits + misses > 0 {
        s.hit_ratio = Some(hits as f64 / (hits + misses) as f64);
    }
    s.upstream_bytes = app.metrics.upstream_bytes();
    Ok(s)
}

/// `GET /admin/stats` (behind the admin guard).
pub async fn stats_endpoint(State(app): State<AppState>) -> Result<Json<Stats>, AdminError> {
    server_stats(&app)
        .await
        .map(Json)
        .map_err(AdminError::internal)
}

#[derive(Deserialize)]
pub struct GcQuery {
    #[serde(default)]
    dry_run: bool,
    target: Option<u64>,
    /// Evict from the shared tier's bucket instead of this data directory.
    #[serde(default)]
    shared: bool,
}

/// `POST /admin/gc?dry_run=true&target=<bytes>[&shared=true]` (behind the admin guard): the
/// report as text.
pub async fn gc_endpoint(
    State(app): State<AppState>,
    Query(q): Query<GcQuery>,
) -> Result<Response, AdminError> {
    app.flush_atimes().await;
    if q.shared {
        return shared_gc(&app, q).await;
    }
    let target = q.target.unwrap_or_else(|| default_target(&app.config));
    let storage = app.storage.clone();
    let report = tokio::task::spawn_blocking(move || {
        wharf_storage::collect(&storage, target, &HashMap::new(), q.dry_run)
    })
    .await
    .map_err(AdminError::internal)?
    .map_err(AdminError::internal)?;
    if !report.removed.is_empty() {
        app.registry.hot.clear();
    }
    Ok(format!("{report}\n").into_response())
}

/// One eviction pass over the shared tier's bucket, with this replica's access times published
/// first so they count.
async fn shared_gc(app: &AppState, q: GcQuery) -> Result<Response, AdminError> {
    let Some(shared) = &app.shared else {
        return Err(AdminError::bad(
            "no [shared] is configured: there is no shared tier to collect",
        ));
    };
    if let Err(e) = shared.publish_atimes().await {
        tracing::warn!(error = %e, "publishing access times before shared gc failed");
    }
    let report = shared
        .evict(q.dry_run, q.target)
        .await
        .map_err(|e| AdminError::new(http::StatusCode::BAD_GATEWAY, format!("shared tier: {e}")))?;
    Ok(format!("{report}").into_response())
}

/// With a budget: its low watermark. Without one there is nothing to evict down to.
pub fn default_target(config: &Config) -> u64 {
    if config.cache.max_size.0 == 0 {
        u64::MAX
    } else {
        config.cache.low_watermark()
    }
}
