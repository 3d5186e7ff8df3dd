//! Deliberate faults for tests of tether's own failure handling. Everything here is off unless the
//! process was started with the matching environment variable; nothing a client sends can turn it on.
//!
//! - `TETHER_TEST_PANIC_ON_PATH=/some/path`: a request for exactly that path panics the worker while it
//!   handles the connection, to exercise the panic policy (docs/HARDENING.md). Read once at start-up.

use std::sync::OnceLock;

static PANIC_PATH: OnceLock<Option<Box<[u8]>>> = OnceLock::new();

/// Reads the fault-injection variables once; later calls change nothing. Logs a warning when one is set.
pub fn init_from_env() {
    PANIC_PATH.get_or_init(|| {
        let path = std::env::var("TETHER_TEST_PANIC_ON_PATH").ok()?;
        if path.is_empty() {
            return None;
        }
        log::warn!(
            "TETHER_TEST_PANIC_ON_PATH is set: a request for {path} panics its worker (for tests only)"
        );
        Some(path.into_bytes().into_boxed_slice())
    });
}

/// Panics if `path` is the configured panic path. One atomic load when fault injection is off.
#[inline]
pub fn on_request_path(path: &[u8]) {
    if let Some(Some(p)) = PANIC_PATH.get() {
        if **p == *path {
            panic!(
                "deliberate panic for {} (TETHER_TEST_PANIC_ON_PATH)",
                String::from_utf8_lossy(path)
            );
        }
    }
}
