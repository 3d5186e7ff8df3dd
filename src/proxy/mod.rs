//! The proxy: client sessions, the request stages, backend connections and their pool.

pub(crate) mod context;
pub(crate) mod io;
pub(crate) mod pool;
pub(crate) mod session;
pub(crate) mod stages;
pub(crate) mod upstream;
pub(crate) mod warm;
