//! tether: a userspace HTTP load balancer that keeps each client tethered to the server holding its state.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests, benchmarks and fuzz targets use the
//! same modules. See `docs/ARCHITECTURE.md` for the threads and the life of a request.
//!
//! Layers, bottom up (a module imports only from layers below it): `base` (buffers, timers, socket
//! readiness) → `http`, `config`, `error`, `metrics` → `tls`, `qos`, `balance`, `health`, `sticky`,
//! `store`, `route`, `auth` (users files, password hashes, sealed tokens) → `snapshot` → `proxy` (sessions and the request
//! stages), `replication` (peer links) → `runtime` (workers, signals). Exceptions, kept where a check needs
//! the code that uses the value: config validation loads certificates and cookie keys, and the certificate
//! generator applies the protocol's rule for node names.

// One justified exception, allowed where it is: `config::validate` asks libc for the online CPU count.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod base;
pub mod config;
pub mod demo;
pub mod error;
pub mod fault_injection;
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod qos;
pub mod replication;
pub mod route;
pub mod runtime;
pub mod snapshot;
pub mod spool;
pub mod sticky;
pub mod store;
pub mod tls;
