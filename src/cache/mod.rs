//! Protocol-agnostic cache machinery: the single flight that fills a blob once however many
//! clients ask (`flight`), and the body streams that serve a committed file or a fill still in
//! progress (`body`). It is handed a key and a fill; it knows nothing of registries or Go.

pub mod body;
pub mod fill;
pub mod flight;
pub mod pool;

pub use body::{BlobBody, ByteRange};
pub use flight::{FillError, FillState, Flights, Join, Leader, Start, first_answer};
pub use pool::CHUNK;
