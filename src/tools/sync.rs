//! Scheduled prefetch (`[[prefetch]]` in the config): the server refreshes its list in a
//! background task with `wharf prefetch`'s own logic (`prefetch::fetch_item`), through its own
//! router in-process, so every fetch takes the client pull path (egress policy, verification,
//! single flight) and what it fetched is pinned. A moving tag or `@latest` past its TTL is asked
//! upstream again, so new digests and module versions arrive before anyone asks. Each entry runs
//! at start, then every `every` (else `prefetch_interval`); `/metrics` shows the runs. Not
//! started with an empty list or `offline = true`; stops, mid-run too, at shutdown.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::AppState;
use crate::bundle::{Item, Platform, parse_item};
use crate::config::{Config, PrefetchConfig};
use crate::tools::client::Client;
use crate::tools::prefetch::{Options, fetch_item};

/// Starts the task, unless there is nothing to do; it ends when `shutdown` turns true.
pub fn spawn(
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let config = state.config.clone();
    if config.prefetch.is_empty() {
        return None;
    }
    if config.offline {
        tracing::info!("[[prefetch]] is not run: offline = true");
        return None;
    }
    Some(tokio::spawn(run(state, config, shutdown)))
}

async fn run(state: AppState, config: std::sync::Arc<Config>, mut shutdown: watch::Receiver<bool>) {
    let metrics = state.metrics.clone();
    let client = Client::in_process(state);
    let entries = &config.prefetch;
    let interval = |e: &PrefetchConfig| e.every.unwrap_or(config.prefetch_interval);
    let mut next: Vec<Instant> = vec![Instant::now(); entries.len()];
    loop {
        let now = Instant::now();
        let due: Vec<usize> = (0..entries.len()).filter(|&i| next[i] <= now).collect();
        if !due.is_empty() {
            let work = async {
                let (mut items, mut failures) = (0u64, 0u64);
                for &i in &due {
                    let (n, f) = run_entry(&client, &config, &entries[i]).await;
                    items += n;
                    failures += f;
                    next[i] = Instant::now() + interval(&entries[i]);
                }
                (items, failures)
            };
            tokio::select! {
                (items, failures) = work => {
                    metrics.prefetch.record(wharf_storage::unix_now(), items, failures);
                    tracing::info!(items, failures, "scheduled prefetch done");
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let wake = next
            .iter()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One entry, every item for every platform: items tried, and how many failed.
async fn run_entry(client: &Client, config: &Config, entry: &PrefetchConfig) -> (u64, u64) {
    let platforms: Vec<Option<Platform>> = if entry.platforms.is_empty() {
        vec![None]
    } else {
        entry
            .platforms
            .iter()
            .filter_map(|p| p.parse().ok())
            .map(Some)
            .collect()
    };
    let (mut items, mut failures) = (0, 0);
    for text in &entry.items {
        let Ok(item) = parse_item(text) else { continue };
        // A module has no platform: fetched once.
        let platforms: &[Option<Platform>] = match item {
            Item::Module { .. } => &[None],
            Item::Image(_) => &platforms,
        };
        for platform in platforms {
            items += 1;
            let with = Options {
                platform: platform.as_ref(),
                referrers: entry.referrers,
            };
            let (label, result, fetched) = fetch_item(client, config, &item, with).await;
            match result {
                Ok(pinned) => tracing::debug!(item = %label, pinned, fetched, "prefetched"),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(item = %label, error = %e, "scheduled prefetch failed");
                }
            }
        }
    }
    (items, failures)
}
