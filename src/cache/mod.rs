//! Protocol-agnostic cache machinery: the single flight that fills a blob once however many
//! clients ask (`flight`), and the body streams that serve a committed file or a fill still in
//! progress (`body`). It is handed a key and a fill; it knows nothing of registries or Go.

pub mod body;
pub mod flight;

pub use body::{BlobBody, ByteRange, CHUNK};
pub use flight::{FillError, FillState, Flights, Join, Leader};
