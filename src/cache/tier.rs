//! The shared tier as the engine sees it: objects by digest that another replica committed.
//! Nothing read from it is trusted: the engine hashes what it streams exactly as it does an
//! upstream fill, and a mismatch discards the object there. The tier itself (S3, its health,
//! the uploads and the record journal) is `crate::shared`; the engine only reads and discards.

use futures_util::future::BoxFuture;
use wharf_storage::Digest;

use super::engine::Incoming;

pub trait Tier: Send + Sync + 'static {
    /// The object's bytes; `None` when the tier lacks it or cannot be reached now (the engine
    /// then asks the protocol's own source).
    fn get(&self, digest: &Digest) -> BoxFuture<'static, Option<Incoming>>;

    /// Removes an object whose bytes did not verify (in the background).
    fn discard(&self, digest: &Digest);
}
