//! `Mirror`: the pieces of a wharf that the server side of the bundle format (`plan`, `apply`,
//! `sumdb`) reads and writes. `crate::admin` builds it from the application state, so that side
//! of `bundle` depends on neither the state nor the admin API.

use wharf_storage::Storage;

use crate::config::Config;
use crate::goproxy::path::ModulePath;

/// The data directory, the config, and which modules are private.
#[derive(Clone, Copy)]
pub struct Mirror<'a> {
    pub storage: &'a Storage,
    pub config: &'a Config,
    /// Whether a `[[go.private]]` rule covers a module (with the Go proxy disabled, none does).
    pub is_private: &'a (dyn Fn(&ModulePath) -> bool + Send + Sync),
}

impl Mirror<'_> {
    /// Whether a public checksum database may prove the module's hashes.
    pub fn is_public(&self, module: &ModulePath) -> bool {
        !(self.is_private)(module)
    }

    /// `registry.max_manifest_size`: the largest manifest read.
    pub fn max_manifest(&self) -> u64 {
        self.config.registry.max_manifest_size.0
    }
}
