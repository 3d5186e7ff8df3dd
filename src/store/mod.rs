//! The replicated store: tables of records by kind, last writer wins, that tether nodes mirror to each other.
pub mod record;
pub use record::{Kind, Record, Version};

pub mod digest;
pub mod hlc;
pub mod redis;
pub mod snapshot;
pub mod stream;
pub mod table;
pub mod writer;

pub use digest::DigestSum;
pub use hlc::{ClockError, Hlc, node_id};
pub use snapshot::{Stage, StageError, Verified};
pub use stream::{Batch, NeedSnapshot, OriginStream, PeerStream};
pub use table::{Applied, Store, StoreReader, UndoLog};
pub use writer::{Fetch, Full, OnAck, StoreWriter, WriteFeed};

#[cfg(test)]
mod convergence_tests;
