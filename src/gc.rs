//! `wharf gc` and `wharf stats`, and the admin endpoints that answer them (`/admin/gc`,
//! `/admin/stats`, mounted behind the admin guard by `admin::routes`). The commands go through
//! `bundle::client` like the air-gap commands: to the running server (sled admits one process),
//! else in-process on the data directory.

use std::collections::HashMap;
use std::process::ExitCode;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use wharf_storage::{DiskEntry, Storage, gc::human};

use crate::admin::AdminError;
use crate::app::AppState;
use crate::bundle::client::{Body, Client};
use crate::config::{ByteSize, Config};
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
    for (d, _) in storage.index.pins().filter_map(Result::ok) {
        if let Some(size) = sizes.get(&d) {
            s.pinned_objects += 1;
            s.pinned_bytes += size;
        }
    }
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
    let misses = s.requests.get("miss").copied().unwrap_or(0);
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
}

/// `POST /admin/gc?dry_run=true&target=<bytes>` (behind the admin guard): the report as text.
pub async fn gc_endpoint(
    State(app): State<AppState>,
    Query(q): Query<GcQuery>,
) -> Result<Response, AdminError> {
    app.flush_atimes().await;
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

/// With a budget: its low watermark. Without one there is nothing to evict down to.
fn default_target(config: &Config) -> u64 {
    if config.cache.max_size.0 == 0 {
        u64::MAX
    } else {
        config.cache.low_watermark()
    }
}

/// Largest answer read back (a gc report lists every object it removes).
const MAX_ANSWER: usize = 256 << 20;

/// One admin request through the commands' client (the running server, else the data directory
/// in-process); `None` once it has said on stderr why not.
async fn ask(config: &Config, method: http::Method, path: &str) -> Option<Vec<u8>> {
    let client = match Client::connect(config, None).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf: {e}");
            return None;
        }
    };
    let answer = match client.request(method, path, &[], Body::Empty).await {
        Ok(reply) if reply.status.is_success() => reply.bytes(MAX_ANSWER).await,
        Ok(reply) => Err(format!(
            "{} refused: {}",
            client.describe(),
            reply.error().await
        )),
        Err(e) => Err(e),
    };
    let finished = client.finish().await;
    match answer.and_then(|a| finished.map(|()| a)) {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("wharf: {e}");
            None
        }
    }
}

/// `wharf gc [--dry-run] [--target SIZE]`.
pub async fn command(
    config: &Config,
    dry_run: bool,
    target: Option<&str>,
) -> Result<ExitCode, Error> {
    let target = match target {
        Some(t) => {
            ByteSize::parse(t)
                .map_err(|m| {
                    Error::Config(crate::config::ConfigError::Invalid(format!(
                        "--target: {m}"
                    )))
                })?
                .0
        }
        None => default_target(config),
    };
    if target == u64::MAX {
        eprintln!(
            "wharf: cache.max_size is 0 (no limit): nothing to evict down to; give --target SIZE"
        );
    }
    let path = format!("/admin/gc?dry_run={dry_run}&target={target}");
    let Some(report) = ask(config, http::Method::POST, &path).await else {
        return Ok(ExitCode::FAILURE);
    };
    print!("{}", String::from_utf8_lossy(&report));
    Ok(ExitCode::SUCCESS)
}

/// `wharf stats [--json]`.
pub async fn stats_command(config: &Config, json: bool) -> Result<ExitCode, Error> {
    let Some(body) = ask(config, http::Method::GET, "/admin/stats").await else {
        return Ok(ExitCode::FAILURE);
    };
    let stats = serde_json::from_slice::<Stats>(&body).map_err(|e| Error::Io {
        context: "reading the server's stats".into(),
        source: std::io::Error::other(e),
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).unwrap_or_default()
        );
    } else {
        print!("{stats}");
    }
    Ok(ExitCode::SUCCESS)
}
