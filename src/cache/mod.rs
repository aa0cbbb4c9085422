//! The cache engine (`engine`): the life of an immutable object from miss to committed file,
//! once however many clients ask, and the bodies that serve a committed file or a fill still in
//! progress (`body`), with the single flight (`flight`) and buffer pool (`pool`) under them.
//! Also the typed cache outcome (`outcome`) and the freshness rule for mutable keys
//! (`revalidate`), the shared tier as one more place a miss may be filled from (`tier`), room on
//! the disk (`room`) and bytes sent to clients unstored, checked on the way (`spill`). It knows storage, not HTTP: no axum, reqwest, registry or goproxy types.

pub mod body;
pub mod engine;
pub mod flight;
pub mod outcome;
pub mod pool;
pub mod revalidate;
pub mod room;
pub mod spill;
pub mod tier;

pub use body::{BlobBody, ByteRange, Sendfile, Span};
pub use engine::{BlobSource, Count, Engine, Fetch, Served, Tiers, UploadError};
pub use flight::{
    FillError, FillState, Flights, Incoming, Join, Leader, Spill, Start, first_answer,
};
pub use outcome::Outcome;
pub use pool::CHUNK;
pub use revalidate::{Cached, revalidate};
pub use tier::{FROM_PEER, Peers, Tier, from_peer};
