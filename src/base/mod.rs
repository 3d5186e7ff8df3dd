//! The bottom layer: I/O buffers, the timer wheel, and socket readiness with the read and write calls
//! that keep it true. Imports nothing else of tether, so every layer above may use it.

pub mod buffer;
pub mod socket;
pub mod timer;
