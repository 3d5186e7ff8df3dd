//! tether: a userspace HTTP load balancer that keeps each client tethered to the server holding its state.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests, benchmarks and fuzz targets use the
//! same modules. See `docs/ARCHITECTURE.md` for the threads and the life of a request.

pub mod access_log;
pub mod balance;
pub mod config;
pub mod demo;
pub mod error;
pub mod fault_injection;
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod logging;
pub mod proxy;
pub mod qos;
pub mod route;
pub mod runtime;
pub mod sticky;
pub mod tls;
