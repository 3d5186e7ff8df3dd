//! The replicated store: records every node of a cluster mirrors (docs/PROTOCOL.md).

pub mod record;

pub use record::{Kind, Record, Version};
