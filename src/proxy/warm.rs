//! Warm SSL contexts: pre-established TLS connections to each backend of a TLS cluster, kept ready in the
//! worker's idle pool so a request rarely waits for a backend handshake.
//!
//! A warming connection belongs to no session. The worker drives it (connect, then handshake) from its
//! readiness events; once established it joins the idle pool like any connection a request left behind.
//! Idle TLS connections also read what the backend sends unasked after the handshake (TLS 1.3 session
//! tickets, key updates) instead of treating it as a reason to close.

use super::context::{Ctx, upstream_token};
use super::upstream::{self, Upstream};
use crate::base::socket::{ReadOutcome, Readiness};
use crate::base::timer::Deadline;
use mio::Interest;

/// Opens connections until every eligible backend of every TLS cluster with `min_idle` has that many idle
/// or warming connections on this worker.
pub(crate) fn top_up(cx: &mut Ctx) {
    if cx.draining {
        return;
    }
    let snapshot = cx.snapshot.clone();
    for (cluster, tls) in snapshot.clusters.iter().zip(&snapshot.cluster_tls) {
        let Some(tls) = tls else { continue };
        if tls.min_idle == 0 {
            continue;
        }
        for b in cluster.backends.iter().filter(|b| b.eligible()) {
            let id = b.state.id;
            while cx.upstreams.pool.idle_count(id) + cx.upstreams.pool.warming_count(id)
                < tls.min_idle
            {
                let mut transport =
                    match upstream::connect(b.state.address, Some(tls), &cx.upstreams.tls_stats) {
                        Ok(t) => t,
                        Err(e) => {
                            log::debug!("warm connection to {}: {e}", b.state.address);
                            break;
                        }
                    };
                let entry = cx.upstreams.slab.vacant_entry();
                let key = entry.key();
                if cx
                    .io
                    .registry
                    .register(
                        &mut transport.sock,
                        upstream_token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    break;
                }
                let uid = cx.next_id();
                let mut deadline = Deadline::default();
                let connect = snapshot.timeouts.connect + snapshot.timeouts.tls_handshake;
                deadline.set(
                    &mut cx.io.timers,
                    upstream_token(key).0,
                    uid,
                    cx.now + connect,
                );
                cx.upstreams.slab.insert(Upstream {
                    stream: transport,
                    io: Readiness::default(),
                    backend: b.state.clone(),
                    session: None,
                    connected: false,
                    requests: 0,
                    id: uid,
                    deadline,
                    warming: true,
                });
                cx.upstreams.pool.warming_started(id);
            }
        }
    }
}

/// Handles readiness on a connection that belongs to no session: a warming one advances its handshake;
/// an idle one reads post-handshake TLS messages. Anything else (EOF, errors, unasked plaintext) closes it.
pub(crate) fn on_event(cx: &mut Ctx, key: usize) {
    let Some(u) = cx.upstreams.slab.get_mut(key) else {
        return;
    };
    let mut keep = true;
    if u.warming && !u.connected {
        if u.io.error || u.io.read_closed {
            keep = false;
        } else if u.io.writable {
            match (u.stream.sock.take_error(), u.stream.sock.peer_addr()) {
                (Ok(None), Ok(_)) => u.connected = true,
                (Ok(None), Err(e)) if e.kind() == std::io::ErrorKind::NotConnected => {
                    u.io.writable = false;
                }
                _ => keep = false,
            }
        }
    }
    if keep && u.connected {
        if u.stream.has_pending_output() && u.io.writable && u.stream.flush(&mut u.io).is_err() {
            keep = false;
        }
        if keep && (u.io.readable || u.io.read_closed || u.io.error) {
            if u.stream.tls.is_none() {
                // A plain idle connection never expects bytes.
                keep = false;
            } else {
                // Post-handshake messages are consumed inside the read; only plaintext, EOF or an
                // error come back, and each means the connection cannot be reused.
                let mut scratch = cx.io.buffers.get();
                keep = matches!(
                    u.stream.read_into(&mut u.io, &mut scratch),
                    ReadOutcome::Blocked
                );
                cx.io.buffers.put(scratch);
            }
        }
    }
    if !keep {
        cx.upstreams.close(key);
        return;
    }
    let established = u.stream.tls.as_ref().is_some_and(|t| t.is_established());
    if u.warming && established {
        u.warming = false;
        let backend = u.backend.id;
        let uid = u.id;
        cx.upstreams.pool.warming_done(backend);
        if cx.upstreams.pool.put(backend, key) {
            let idle = cx.snapshot.timeouts.upstream_idle;
            let u = &mut cx.upstreams.slab[key];
            u.deadline
                .set(&mut cx.io.timers, upstream_token(key).0, uid, cx.now + idle);
        } else {
            cx.upstreams.close(key);
        }
    }
}
