//! TLS with rustls: termination on listeners (SNI, tickets, session cache, the operator's versions, groups
//! and suites), origination to backends, the
//! non-blocking stream glue for the worker loop, and development certificates.

pub mod certs;
pub mod client;
pub mod generate;
pub mod server;
pub mod session_cache;
pub mod settings;
pub mod sni;
pub mod stats;
pub mod stream;
pub mod tickets;

pub use stats::TlsStats;
pub use stream::TlsStream;
