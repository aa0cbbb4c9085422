//! The client side of the air-gap and maintenance commands: `wharf prefetch`, `wharf export`,
//! `wharf import` (their sources: bundles, OCI layouts, Go module caches, `docker save`
//! tarballs, plain or compressed), `wharf export --check` (`check`), the server's scheduled prefetch (`sync`), progress display, and the one client that reaches the admin API of the running
//! server, else runs the router in-process on the data directory. Also the commands for a
//! client machine: `wharf client-config` (`client_config`: each client's settings from wharf's
//! config) and `wharf doctor` (`doctor`: checks from the client's side); and `wharf stats
//! --watch` (`watch`: a running server's `/metrics` as a live screen). Above `web`: nothing
//! below may import it.

pub mod check;
pub mod client;
pub mod client_config;
pub mod doctor;
pub mod export;
pub mod import;
pub mod prefetch;
pub mod progress;
pub mod source;
pub mod sync;
pub mod watch;
