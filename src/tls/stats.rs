//! Handshake counters shared by every worker (relaxed atomics: handshakes are not the per-request path).

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide TLS counters.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Completed full handshakes (client side = tether's listeners).
    pub full: AtomicU64,
    /// Completed resumed handshakes (ticket or session id).
    pub resumed: AtomicU64,
    /// Handshakes that failed (bad client hello, unknown SNI in strict mode, protocol errors, timeouts).
    pub failed: AtomicU64,
    /// Plain HTTP received on a TLS port.
    pub plain_http: AtomicU64,
    /// TLS connections to backends established, and reused from the pool.
    pub upstream_handshakes: AtomicU64,
}

impl TlsStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for logs: `full=… resumed=… failed=… plain_http=… upstream_handshakes=…`.
    pub fn summary(&self) -> String {
        format!(
            "full={} resumed={} failed={} plain_http={} upstream_handshakes={}",
            self.full.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.plain_http.load(Ordering::Relaxed),
            self.upstream_handshakes.load(Ordering::Relaxed),
        )
    }
}
