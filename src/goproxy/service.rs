//! The Go proxy front end's state: what its handlers need, and nothing of the registry, the
//! admin API or the router. Exists only when `go.enabled`; its routes are mounted only then.

use std::sync::Arc;

use wharf_storage::Storage;

use super::source::GoState;
use crate::cache::Engine;
use crate::config::Config;
use crate::metrics::Metrics;

pub struct GoProxy {
    pub config: Arc<Config>,
    pub storage: Storage,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Sources, private rules, negative cache, flights and the checksum-database lock.
    pub go: GoState,
}

/// The Go state's sources and rules read as the service's own (`go.private_rule(..)`).
impl std::ops::Deref for GoProxy {
    type Target = GoState;
    fn deref(&self) -> &GoState {
        &self.go
    }
}
