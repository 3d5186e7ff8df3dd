//! The bottom layer: I/O buffers, the timer wheel, socket readiness with the read and write calls that
//! keep it true, and the bounded thread pool for blocking work off the workers. Imports nothing else of
//! tether, so every layer above may use it.

pub mod buffer;
pub mod pool;
pub mod socket;
pub mod timer;
