//! Replication: the thread that mirrors the store to the cluster's other nodes, its peer links, and the
//! frames those links carry (docs/PROTOCOL.md). Today only the frames exist (`frame`).

pub mod frame;

pub use frame::{Frame, FrameError, Start, WelcomeStatus, decode, encode};
