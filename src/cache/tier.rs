//! Other replicas as the engine sees them: the shared tier (objects by digest that a replica
//! committed) and peers (the replica that owns a cold object fills it; the others stream from
//! it). Nothing read from either is trusted: the engine hashes what it streams exactly as it
//! does an upstream fill; a tier object that fails is discarded there, and a peer that fails
//! mid-transfer is replaced by the protocol's own source. The implementations (S3, HTTP between
//! replicas, their health) are `crate::shared`.

use futures_util::future::BoxFuture;
use wharf_storage::Digest;

use super::flight::Incoming;

pub trait Tier: Send + Sync + 'static {
    /// The object's bytes; `None` when the tier lacks it or cannot be reached now (the engine
    /// then asks the protocol's own source).
    fn get(&self, digest: &Digest) -> BoxFuture<'static, Option<Incoming>>;

    /// Removes an object whose bytes did not verify (in the background).
    fn discard(&self, digest: &Digest);
}

/// The replicas that fill for each other.
pub trait Peers: Send + Sync + 'static {
    /// The base URL of the live replica that owns `key`, unless it is this one.
    fn owner(&self, key: &str) -> Option<String>;

    /// Streams `path` (a protocol request path) from the replica at `owner`; `None` when it
    /// cannot be reached or does not answer 200 (the engine then asks the protocol's source).
    fn get(&self, owner: &str, path: &str) -> BoxFuture<'static, Option<Incoming>>;

    /// Counts a fill a peer began and the protocol's source finished.
    fn failed_over(&self) {}

    /// `owner`'s copy of `key` failed its checks: fetch it elsewhere for a while.
    fn bad(&self, _owner: &str, _key: &str) {}
}

tokio::task_local! {
    /// Set while a request another replica sent as owner is handled: its fill must not be
    /// forwarded again.
    pub static FROM_PEER: bool;
}

/// Whether the current request came from another replica (see `FROM_PEER`).
pub fn from_peer() -> bool {
    FROM_PEER.try_with(|v| *v).unwrap_or(false)
}
