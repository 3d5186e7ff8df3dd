//! Why a head or body was refused, and the status that says so.

/// A refusal of malformed or unsupported HTTP. `status` is what the peer is answered (for a request: 400,
/// 408, 431, 501…; a bad *response* is reported by the caller as 502), `reason` is one short lowercase phrase
/// used both in the one-line response body and in the access log (e.g. `"obs-fold in header"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct HttpError {
    pub status: u16,
    pub reason: &'static str,
}

impl HttpError {
    pub const fn bad_request(reason: &'static str) -> Self {
        HttpError {
            status: 400,
            reason,
        }
    }
    pub const fn too_large(reason: &'static str) -> Self {
        HttpError {
            status: 431,
            reason,
        }
    }
    pub const fn not_implemented(reason: &'static str) -> Self {
        HttpError {
            status: 501,
            reason,
        }
    }
}
