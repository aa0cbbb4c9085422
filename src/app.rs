//! Application state shared by every request (storage, upstream clients, flights, config) and
//! the router with its layers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::any;
use wharf_storage::{Digest, Storage};

use crate::cache::Flights;
use crate::config::Config;
use crate::error::Error;
use crate::goproxy::{self, GoState};
use crate::registry;
use crate::upstream::{EgressPolicy, UpstreamClient};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub storage: Storage,
    pub egress: Arc<EgressPolicy>,
    pub upstreams: HashMap<String, Arc<UpstreamClient>>,
    pub blob_flights: Flights<Digest>,
    /// The Go module proxy, unless `go.enabled = false`.
    pub go: Option<GoState>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens storage (sweeping leftover temp files) and builds one client per upstream.
    pub fn new(config: Config) -> Result<AppState, Error> {
        config.validate()?;
        let egress = Arc::new(
            EgressPolicy::from_config(&config.egress)
                .map_err(|m| Error::Config(crate::config::ConfigError::Invalid(m)))?,
        );
        let mut upstreams = HashMap::new();
        for up in &config.registry.upstreams {
            let client =
                UpstreamClient::new(up, &config.egress, egress.clone()).map_err(|message| {
                    Error::Upstream {
                        name: up.name.clone(),
                        message,
                    }
                })?;
            upstreams.insert(up.name.clone(), Arc::new(client));
        }
        let go = if config.go.enabled {
            Some(
                GoState::new(&config, egress.clone()).map_err(|message| Error::Upstream {
                    name: "go".into(),
                    message,
                })?,
            )
        } else {
            None
        };
        let storage = Storage::open(&config.data_dir)?;
        Ok(AppState(Arc::new(Inner {
            config,
            storage,
            egress,
            upstreams,
            blob_flights: Flights::default(),
            go,
        })))
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(registry::handle))
        .route("/v2/", any(registry::handle))
        .route("/v2/{*rest}", any(registry::handle))
        .route("/go/{*rest}", any(goproxy::handle))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .with_state(state)
        .layer(crate::trace_layer())
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
