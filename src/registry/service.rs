//! The registry front end's state: what its handlers need, and nothing of the Go proxy, the
//! admin API or the router. Built once by the application state; handlers take it through
//! axum's `FromRef`, so they can be driven with nothing but a `Registry`.

use std::collections::HashMap;
use std::sync::Arc;

use wharf_storage::{Digest, Storage};

use super::hot::HotManifests;
use crate::cache::{Engine, Flights};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

pub struct Registry {
    pub config: Arc<Config>,
    pub storage: Storage,
    pub engine: Engine,
    /// One client per `[[registry.upstream]]`, by name.
    pub upstreams: HashMap<String, Arc<UpstreamClient>>,
    pub blob_flights: Flights<Digest>,
    /// Manifests and tag answers in memory (`cache.manifest_memory`).
    pub hot: HotManifests,
    pub metrics: Arc<Metrics>,
}
