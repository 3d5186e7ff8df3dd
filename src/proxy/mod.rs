//! The proxy: client sessions, backend connections and their pool, and the request pipeline.

pub mod context;
pub mod io;
pub mod pipeline;
pub mod pool;
pub mod session;
pub mod upstream;
pub mod warm;
