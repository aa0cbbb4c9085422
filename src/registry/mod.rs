//! The Docker Registry HTTP API v2 / OCI distribution, read side: the URL grammar (`routes`),
//! the spec's error envelope (`errors`), manifest checks (`manifest`) and the handlers, which
//! pick an upstream, answer from the cache or fill it.
//!
//! Upstream selection, in order: `?ns=<host>` (containerd), a first name component equal to a
//! configured upstream (podman/skopeo `registries.conf` mirrors), else the default upstream,
//! where single-component names get `library/` on Docker Hub.

pub mod errors;
mod fetch;
mod handlers;
pub mod hot;
pub mod manifest;
mod ranges;
pub mod referrers;
pub mod routes;
mod service;
pub mod visibility;

pub use handlers::{canonical_repo, handle};
pub use service::Registry;
