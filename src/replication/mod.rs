//! Replication: the thread that mirrors the store to the cluster's other nodes, its peer links (TLS 1.3,
//! mutual authentication), and the frames those links carry (docs/PROTOCOL.md).

pub mod frame;
pub mod link;
pub mod link_tls;
pub mod node;
pub mod side;
pub(crate) mod snapshot_recv;
mod snapshot_send;

pub use frame::{Frame, FrameError, Start, WelcomeStatus, decode, encode};
