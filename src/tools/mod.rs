//! The client side of the air-gap and maintenance commands: `wharf prefetch`, `wharf export`,
//! `wharf import` (their sources: bundles, OCI layouts, Go module caches, `docker save`
//! tarballs), progress display, and the one client that reaches the admin API of the running
//! server, else runs the router in-process on the data directory. Above `web`: nothing below
//! may import it.

pub mod client;
pub mod export;
pub mod import;
pub mod prefetch;
pub mod progress;
pub mod source;
