//! The Go module proxy under `/go/`: the GOPROXY protocol (`path` parses it), immutable module
//! files stored in the shared content-addressed store, mutable lists with a TTL, private module
//! sources, and the checksum-database proxy with verification before anything is stored.
//!
//! Status semantics the go command relies on: 200 only for real content; 404 only when every
//! source says the thing does not exist (so `GOPROXY=wharf,next` falls through); 5xx with a short
//! `text/plain` reason for everything else.

mod fetch;
mod handlers;
pub mod hash;
pub mod path;
mod service;
mod source;
pub use source::is_private;
pub mod sumdb;
pub mod unzip;
pub mod verify;
mod zipdir;

pub use handlers::{GoError, disabled, handle};
pub use service::GoProxy;
pub use source::GoState;
