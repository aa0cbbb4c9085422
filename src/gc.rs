//! `wharf gc` and `wharf stats`, and the loopback-only endpoints a running server answers them
//! with (sled admits one process, so a CLI next to a running server asks it instead).

use std::collections::HashMap;
use std::process::ExitCode;

use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use wharf_storage::{DiskEntry, GcReport, Storage, gc::human};

use crate::app::AppState;
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

fn loopback(peer: std::net::SocketAddr) -> bool {
    peer.ip().is_loopback()
}

/// `GET /admin/stats` (loopback only).
pub async fn stats_endpoint(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Response {
    if !loopback(peer) {
        return (
            StatusCode::FORBIDDEN,
            "admin endpoints answer on loopback only\n",
        )
            .into_response();
    }
    match server_stats(&app).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
pub struct GcQuery {
    #[serde(default)]
    dry_run: bool,
    target: Option<u64>,
}

/// `POST /admin/gc?dry_run=true&target=<bytes>` (loopback only): the report as text.
pub async fn gc_endpoint(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<GcQuery>,
) -> Response {
    if !loopback(peer) {
        return (
            StatusCode::FORBIDDEN,
            "admin endpoints answer on loopback only\n",
        )
            .into_response();
    }
    app.flush_atimes().await;
    let target = q.target.unwrap_or_else(|| default_target(&app.config));
    let storage = app.storage.clone();
    let r = tokio::task::spawn_blocking(move || {
        wharf_storage::collect(&storage, target, &HashMap::new(), q.dry_run)
    })
    .await;
    match r {
        Ok(Ok(report)) => {
            if !report.removed.is_empty() {
                app.hot.clear();
            }
            format!("{report}\n").into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// With a budget: its low watermark. Without one there is nothing to evict down to.
fn default_target(config: &Config) -> u64 {
    if config.cache.max_size.0 == 0 {
        u64::MAX
    } else {
        config.cache.low_watermark()
    }
}

fn server_url(config: &Config, path: &str) -> String {
    let addr = config.listen;
    let host = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}:{}{path}", addr.port())
}

/// Asks a running server; `None` when nothing answers (the CLI then works on the data dir).
async fn ask_server(
    config: &Config,
    method: http::Method,
    path: &str,
) -> Option<Result<String, String>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .ok()?;
    let resp = http
        .request(method, server_url(config, path))
        .send()
        .await
        .ok()?;
    let ok = resp.status().is_success();
    let body = resp.text().await.unwrap_or_default();
    Some(if ok { Ok(body) } else { Err(body) })
}

fn open_storage(config: &Config) -> Result<Storage, Error> {
    Storage::open(&config.data_dir).map_err(Error::Storage)
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
    if let Some(answer) = ask_server(config, http::Method::POST, &path).await {
        return match answer {
            Ok(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(text) => {
                eprintln!("wharf: the running server refused: {}", text.trim());
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let storage = open_storage(config)?;
    let report: GcReport = wharf_storage::collect(&storage, target, &HashMap::new(), dry_run)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// `wharf stats [--json]`.
pub async fn stats_command(config: &Config, json: bool) -> Result<ExitCode, Error> {
    let stats = match ask_server(config, http::Method::GET, "/admin/stats").await {
        Some(Ok(body)) => serde_json::from_str::<Stats>(&body).map_err(|e| Error::Io {
            context: "reading the server's stats".into(),
            source: std::io::Error::other(e),
        })?,
        Some(Err(text)) => {
            eprintln!("wharf: the running server refused: {}", text.trim());
            return Ok(ExitCode::FAILURE);
        }
        None => compute_stats(&open_storage(config)?, config.cache.max_size.0)?,
    };
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
