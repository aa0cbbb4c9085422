//! `BundleError`: how the server side of the bundle format (`plan`, `apply`) fails. It says who
//! failed and nothing about HTTP: `crate::admin` maps it to a status and a body at its edge.

use wharf_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The request, or the content it names, is refused; the message names the object and is
    /// meant for the person running the command.
    #[error("{0}")]
    Refused(String),
    /// This wharf's own storage failed. Logged in full; never shown to a client.
    #[error(transparent)]
    Local(#[from] StorageError),
}

impl BundleError {
    pub fn refused(message: impl Into<String>) -> BundleError {
        BundleError::Refused(message.into())
    }
}
