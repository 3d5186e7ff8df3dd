//! The request pipeline's decision phases, run once per request head on the worker's own thread.
//!
//! accept → TLS → parse head → **route** → auth → limits → stickiness → **balance** → QoS → forward →
//! response hooks → access log. Each phase is a plain function of the parsed head and the worker's
//! snapshot; later stages (auth, limits, stickiness, QoS) slot in here between `route` and the balancer
//! call in `Session::attach_upstream`.

use crate::balance::Cluster;
use crate::config::{RouteClass, SessionIdentity};
use crate::error::Termination;
use crate::http::RequestHead;
use crate::route::Route;
use crate::runtime::snapshot::ConfigSnapshot;
use crate::sticky::Stickiness;
use crate::sticky::table::SessionReader;
use std::net::IpAddr;

/// Route phase: which route (and so cluster, class, session identity, priority) serves this request
/// (404 when none). Returns the route's index in the snapshot's table.
pub fn route(
    snapshot: &ConfigSnapshot,
    head: &RequestHead,
    bytes: &[u8],
) -> Result<usize, Termination> {
    crate::fault_injection::on_request_path(head.path.of(bytes));
    let authority = head.authority.map(|a| a.of(bytes));
    let method = head.method_span.of(bytes);
    snapshot
        .routes
        .lookup(authority, head.path.of(bytes), |r| {
            r.accepts(method, |name| head.header(bytes, name).is_some())
        })
        .ok_or(Termination::NoRoute)
}

/// QoS phase: the request's priority — the route's, or a trusted upstream's priority header (0–7).
pub fn priority(
    snapshot: &ConfigSnapshot,
    route: &Route,
    head: &RequestHead,
    bytes: &[u8],
    trusted_listener: bool,
) -> u8 {
    if trusted_listener {
        if let Some(name) = &snapshot.qos_priority_header {
            if let Some(v) = head.header(bytes, name) {
                if let [d @ b'0'..=b'7'] = v.trim_ascii() {
                    return d - b'0';
                }
            }
        }
    }
    route.priority
}

/// Stickiness phase: what a secure request says about its session, and where that session lives.
#[allow(clippy::too_many_arguments)]
pub(super) fn identify_session(
    sticky: &Stickiness,
    sessions: &SessionReader<'_>,
    route: &Route,
    head: &RequestHead,
    bytes: &[u8],
    client: IpAddr,
    worker: usize,
    now: u32,
    cluster: &Cluster,
) -> Option<super::session::StickyRequest> {
    if route.class != RouteClass::Secure {
        return None;
    }
    let identity = route.session.as_ref()?;
    match sticky.identify(identity, head, bytes, client, now) {
        Some(id) => {
            let binding = sessions.lookup(worker, id.key, now);
            // Known here; or a valid cookie from another node or before a restart names the backend.
            let preferred = binding.map(|b| b.backend).or_else(|| {
                id.cookie_backend
                    .and_then(|a| cluster.backend_at(a))
                    .map(|b| b.state.id)
            });
            Some(super::session::StickyRequest {
                key: Some(id.key),
                preferred,
                ssl_context: binding.map_or(0, |b| b.ssl_context),
                bound: binding.is_some(),
                issue_cookie: id.cookie_stale,
            })
        }
        // No session yet: tether issues one (insert) or waits for the backend's cookie (learn).
        None => match identity {
            SessionIdentity::Insert(_) => Some(super::session::StickyRequest {
                key: Some(sticky.sealer.new_session_id()),
                preferred: None,
                ssl_context: 0,
                bound: false,
                issue_cookie: true,
            }),
            SessionIdentity::Learn(_) => Some(super::session::StickyRequest {
                key: None,
                preferred: None,
                ssl_context: 0,
                bound: false,
                issue_cookie: false,
            }),
            SessionIdentity::Header(_) | SessionIdentity::ClientIp => None,
        },
    }
}
