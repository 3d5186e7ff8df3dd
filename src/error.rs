//! Why a request ended, whose fault it was, and what the client is told.
//!
//! Every request ends with exactly one `Termination`. It drives the answer (status and one-line body when
//! nothing was sent yet), the access-log `termination` field and the health bookkeeping of the backend, so a
//! failure is classified once, where it happens, and every consumer agrees on it.

use crate::http::HttpError;

/// Whose fault a failure is (after Pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong, stalled or went away.
    Client,
    /// The backend failed, stalled or answered something wrong.
    Upstream,
    /// tether itself (shutdown, resource exhaustion, a bug).
    Internal,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        }
    }
}

/// How a request (or a connection that carried none) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The response was delivered in full.
    Completed,
    /// The request head was refused (400, 417, 431, 501).
    BadRequest(HttpError),
    /// The client did not send a complete head in time (408).
    HeadTimeout,
    /// No route matches the host and path (404).
    NoRoute,
    /// The route's cluster has no backend that can take the request (503).
    NoBackend,
    /// The client went away before the exchange ended.
    ClientClosed,
    /// The client stopped reading or sending mid-exchange.
    ClientTimeout,
    /// Every connection attempt to a backend failed (502).
    ConnectFailed,
    /// Connecting to a backend took too long on every attempt (502).
    ConnectTimeout,
    /// The backend closed or reset the connection before a complete response (502 if nothing was sent).
    UpstreamClosed,
    /// The backend's response head or body framing was invalid (502 if nothing was sent).
    BadResponse(&'static str),
    /// The backend did not answer in time (504 if nothing was sent).
    UpstreamTimeout,
    /// The balancer is shutting down and the grace period ended.
    Shutdown,
    /// The client's TLS handshake failed or timed out (no request; logged with the reason).
    TlsHandshake(&'static str),
    /// Plain HTTP arrived on a TLS port and the listener refuses it (400).
    PlainHttpOnTls,
    /// The request was answered with a redirect to https (308).
    RedirectHttps,
    /// TLS to the backend failed (handshake, certificate verification) (502).
    UpstreamTls(&'static str),
    /// The session's backend is down and the route says not to rebind (503).
    SessionBackendDown,
    /// The backend's QoS queue is full (503).
    QueueFull,
    /// The request waited in the backend's QoS queue past `queue_timeout` (503).
    QueueTimeout,
    /// No buffer or connection slot could be had.
    Internal(&'static str),
    /// tether answered the request itself (one of its own endpoints).
    Answered,
    /// A tunnel (after 101) saw no traffic either way for `timeouts.tunnel`.
    TunnelTimeout,
    /// A request body tether reads itself was larger than the endpoint takes (413).
    BodyTooLarge,
    /// A request body tether reads itself came without a length (411).
    LengthRequired,
    /// A request waited for another thread (a hash, a replica) past its deadline (503).
    WaitTimeout,
    /// The route needs the replicated store and this node's copy may be stale: the Redis backend's feed
    /// of other nodes' writes has been down past `[store] max_staleness` (503).
    StoreStale,
}

/// Whether a failed attempt may be tried again on another backend (after Pingora's `RetryType`): the
/// place that saw the failure decides, from what it knows of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: the backend may be working on the request (it timed out after receiving it).
    Never,
    /// When the request can be replayed: nothing of it reached the backend, or it is idempotent, has no
    /// body and no response byte came back.
    IfReplayable,
}

impl Termination {
    /// Short label for logs: `"completed"`, `"bad_request"`, …
    pub fn label(self) -> &'static str {
        match self {
            Termination::Completed => "completed",
            Termination::BadRequest(_) => "bad_request",
            Termination::HeadTimeout => "head_timeout",
            Termination::NoRoute => "no_route",
            Termination::NoBackend => "no_backend",
            Termination::ClientClosed => "client_closed",
            Termination::ClientTimeout => "client_timeout",
            Termination::ConnectFailed => "connect_failed",
            Termination::ConnectTimeout => "connect_timeout",
            Termination::UpstreamClosed => "upstream_closed",
            Termination::BadResponse(_) => "bad_response",
            Termination::UpstreamTimeout => "upstream_timeout",
            Termination::Shutdown => "shutdown",
            Termination::Internal(_) => "internal",
            Termination::TlsHandshake(_) => "tls_handshake",
            Termination::PlainHttpOnTls => "plain_http_on_tls",
            Termination::RedirectHttps => "redirect_https",
            Termination::UpstreamTls(_) => "upstream_tls",
            Termination::SessionBackendDown => "session_backend_down",
            Termination::QueueFull => "queue_full",
            Termination::QueueTimeout => "queue_timeout",
            Termination::Answered => "answered",
            Termination::TunnelTimeout => "tunnel_timeout",
            Termination::BodyTooLarge => "body_too_large",
            Termination::LengthRequired => "length_required",
            Termination::WaitTimeout => "wait_timeout",
            Termination::StoreStale => "store_stale",
        }
    }

    /// Number of kinds (labels), for per-kind counters.
    pub const KINDS: usize = Self::ALL_LABELS.len();

    /// Every label, in [`Termination::index`] order.
    pub const ALL_LABELS: [&'static str; 27] = [
        "completed",
        "bad_request",
        "head_timeout",
        "no_route",
        "no_backend",
        "client_closed",
        "client_timeout",
        "connect_failed",
        "connect_timeout",
        "upstream_closed",
        "bad_response",
        "upstream_timeout",
        "shutdown",
        "internal",
        "tls_handshake",
        "plain_http_on_tls",
        "redirect_https",
        "upstream_tls",
        "session_backend_down",
        "queue_full",
        "queue_timeout",
        "answered",
        "tunnel_timeout",
        "body_too_large",
        "length_required",
        "wait_timeout",
        "store_stale",
    ];

    /// A dense number per kind (the position of its label in [`Termination::ALL_LABELS`]).
    pub fn index(self) -> usize {
        match self {
            Termination::Completed => 0,
            Termination::BadRequest(_) => 1,
            Termination::HeadTimeout => 2,
            Termination::NoRoute => 3,
            Termination::NoBackend => 4,
            Termination::ClientClosed => 5,
            Termination::ClientTimeout => 6,
            Termination::ConnectFailed => 7,
            Termination::ConnectTimeout => 8,
            Termination::UpstreamClosed => 9,
            Termination::BadResponse(_) => 10,
            Termination::UpstreamTimeout => 11,
            Termination::Shutdown => 12,
            Termination::Internal(_) => 13,
            Termination::TlsHandshake(_) => 14,
            Termination::PlainHttpOnTls => 15,
            Termination::RedirectHttps => 16,
            Termination::UpstreamTls(_) => 17,
            Termination::SessionBackendDown => 18,
            Termination::QueueFull => 19,
            Termination::QueueTimeout => 20,
            Termination::Answered => 21,
            Termination::TunnelTimeout => 22,
            Termination::BodyTooLarge => 23,
            Termination::LengthRequired => 24,
            Termination::WaitTimeout => 25,
            Termination::StoreStale => 26,
        }
    }

    /// The detail behind the label, when there is one (`"obs-fold in header"`).
    pub fn reason(self) -> &'static str {
        match self {
            Termination::BadRequest(e) => e.reason,
            Termination::BadResponse(r)
            | Termination::Internal(r)
            | Termination::TlsHandshake(r)
            | Termination::UpstreamTls(r) => r,
            Termination::PlainHttpOnTls => "plain HTTP request sent to an HTTPS port",
            Termination::RedirectHttps => "redirected to https",
            Termination::SessionBackendDown => "the session's backend is down",
            Termination::QueueFull => "backend queue full",
            Termination::QueueTimeout => "waited too long for a backend slot",
            Termination::Completed => "",
            Termination::HeadTimeout => "request head not received in time",
            Termination::NoRoute => "no route for this host and path",
            Termination::NoBackend => "no backend available",
            Termination::ClientClosed => "client closed the connection",
            Termination::ClientTimeout => "client inactive too long",
            Termination::ConnectFailed => "could not connect to a backend",
            Termination::ConnectTimeout => "backend connect timed out",
            Termination::UpstreamClosed => "backend closed the connection early",
            Termination::UpstreamTimeout => "backend did not answer in time",
            Termination::Shutdown => "balancer shutting down",
            Termination::Answered => "",
            Termination::TunnelTimeout => "tunnel idle too long",
            Termination::BodyTooLarge => "request body too large for this endpoint",
            Termination::LengthRequired => "this endpoint needs a content-length",
            Termination::WaitTimeout => "timed out waiting for the answer",
            Termination::StoreStale => "the store's copy here may be stale",
        }
    }

    pub fn fault(self) -> Option<Fault> {
        match self {
            Termination::Completed
            | Termination::RedirectHttps
            | Termination::Answered
            | Termination::TunnelTimeout => None,
            Termination::BadRequest(_)
            | Termination::TlsHandshake(_)
            | Termination::PlainHttpOnTls
            | Termination::HeadTimeout
            | Termination::NoRoute
            | Termination::ClientClosed
            | Termination::ClientTimeout
            | Termination::BodyTooLarge
            | Termination::LengthRequired => Some(Fault::Client),
            Termination::NoBackend
            | Termination::ConnectFailed
            | Termination::ConnectTimeout
            | Termination::UpstreamClosed
            | Termination::BadResponse(_)
            | Termination::UpstreamTimeout
            | Termination::UpstreamTls(_)
            | Termination::SessionBackendDown
            | Termination::QueueFull
            | Termination::QueueTimeout => Some(Fault::Upstream),
            Termination::Shutdown
            | Termination::Internal(_)
            | Termination::WaitTimeout
            | Termination::StoreStale => Some(Fault::Internal),
        }
    }

    /// The status the client is answered when no response byte was sent yet; `None` means close silently.
    pub fn status(self) -> Option<u16> {
        match self {
            Termination::Completed
            | Termination::ClientClosed
            | Termination::TunnelTimeout
            | Termination::Answered
            | Termination::TlsHandshake(_) => None,
            // A client that stalls mid-request is told so (when nothing was answered yet).
            Termination::ClientTimeout => Some(408),
            Termination::BodyTooLarge => Some(413),
            Termination::LengthRequired => Some(411),
            Termination::WaitTimeout | Termination::StoreStale => Some(503),
            Termination::PlainHttpOnTls => Some(400),
            Termination::RedirectHttps => Some(308),
            Termination::BadRequest(e) => Some(e.status),
            Termination::HeadTimeout => Some(408),
            Termination::NoRoute => Some(404),
            Termination::NoBackend
            | Termination::Shutdown
            | Termination::SessionBackendDown
            | Termination::QueueFull
            | Termination::QueueTimeout => Some(503),
            Termination::ConnectFailed
            | Termination::ConnectTimeout
            | Termination::UpstreamClosed
            | Termination::BadResponse(_)
            | Termination::UpstreamTls(_) => Some(502),
            Termination::UpstreamTimeout => Some(504),
            Termination::Internal(_) => Some(500),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_failure_maps_to_a_5xx_and_upstream_fault() {
        for t in [
            Termination::NoBackend,
            Termination::ConnectFailed,
            Termination::ConnectTimeout,
            Termination::UpstreamClosed,
            Termination::BadResponse("x"),
            Termination::UpstreamTimeout,
        ] {
            assert_eq!(t.fault(), Some(Fault::Upstream), "{t:?}");
            let s = t.status().unwrap();
            assert!((500..600).contains(&s), "{t:?} -> {s}");
        }
    }

    #[test]
    fn labels_and_indices_agree() {
        let all = [
            Termination::Completed,
            Termination::BadRequest(HttpError::bad_request("x")),
            Termination::HeadTimeout,
            Termination::NoRoute,
            Termination::NoBackend,
            Termination::ClientClosed,
            Termination::ClientTimeout,
            Termination::ConnectFailed,
            Termination::ConnectTimeout,
            Termination::UpstreamClosed,
            Termination::BadResponse("x"),
            Termination::UpstreamTimeout,
            Termination::Shutdown,
            Termination::Internal("x"),
            Termination::TlsHandshake("x"),
            Termination::PlainHttpOnTls,
            Termination::RedirectHttps,
            Termination::UpstreamTls("x"),
            Termination::SessionBackendDown,
            Termination::QueueFull,
            Termination::QueueTimeout,
            Termination::Answered,
            Termination::TunnelTimeout,
            Termination::BodyTooLarge,
            Termination::LengthRequired,
            Termination::WaitTimeout,
            Termination::StoreStale,
        ];
        assert_eq!(all.len(), Termination::KINDS);
        for t in all {
            assert_eq!(Termination::ALL_LABELS[t.index()], t.label(), "{t:?}");
        }
    }

    #[test]
    fn bad_request_keeps_the_parser_status_and_reason() {
        let t = Termination::BadRequest(HttpError::too_large("too many headers"));
        assert_eq!(t.status(), Some(431));
        assert_eq!(t.reason(), "too many headers");
        assert_eq!(t.fault(), Some(Fault::Client));
    }
}
