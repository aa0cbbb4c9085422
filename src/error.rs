//! Engine errors for start-up and commands: what failed, in words an operator can act on.
//! Request-time errors are rendered by each protocol (`registry::errors`).

use wharf_storage::StorageError;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("upstream {name}: {message}")]
    Upstream { name: String, message: String },
    /// A listening socket could not be set up (the message names it and what to do).
    #[error("{0}")]
    Listen(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}
