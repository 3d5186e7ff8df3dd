//! The request pipeline's decision phases, run once per request head on the worker's own thread.
//!
//! accept → TLS → parse head → **route** → auth → limits → stickiness → **balance** → QoS → forward →
//! response hooks → access log. Each phase is a plain function of the parsed head and the worker's
//! snapshot; later stages (auth, limits, stickiness, QoS) slot in here between `route` and the balancer
//! call in `Session::attach_upstream`.

use crate::error::Termination;
use crate::http::RequestHead;
use crate::route::Route;
use crate::runtime::snapshot::ConfigSnapshot;

/// Route phase: which cluster serves this request (404 when none).
pub fn route<'s>(
    snapshot: &'s ConfigSnapshot,
    head: &RequestHead,
    bytes: &[u8],
) -> Result<&'s Route, Termination> {
    crate::fault_injection::on_request_path(head.path.of(bytes));
    let authority = head.authority.map(|a| a.of(bytes));
    snapshot
        .routes
        .lookup(authority, head.path.of(bytes))
        .ok_or(Termination::NoRoute)
}
