//! Choosing a backend (stickiness, balancing, QoS admission) and connecting to it; retries.

use super::*;

impl Session {
    /// Chooses the backend — the session's own for a secure request, else the balancer's pick, avoiding
    /// `avoid` (which just failed) — takes a QoS slot on it (or queues), and attaches a connection.
    pub(super) fn attach_upstream(&mut self, cx: &mut Ctx, avoid: Option<BackendId>) {
        if cx.snapshot.generation != self.x.generation {
            // Reloaded mid-request: the cluster index may point elsewhere now.
            self.fail(cx, Termination::NoBackend);
            return;
        }
        // Choose, bind and admit while borrowing the snapshot beside the other context fields.
        let decision = {
            let snapshot = &*cx.snapshot;
            let Some(cluster) = snapshot.clusters.get(self.x.cluster) else {
                return self.fail(cx, Termination::NoBackend);
            };
            let failover = snapshot
                .routes
                .get(self.x.route)
                .map_or(FailoverPolicy::Rebind, |r| r.on_backend_down);
            choose_backend(
                &mut self.x,
                cluster,
                &mut cx.balancer,
                &cx.sticky,
                failover,
                avoid,
                Admit {
                    worker: cx.worker,
                    session: self.key,
                    session_id: self.id,
                    now: cx.now,
                    unix_now: cx.unix_now,
                },
            )
        };
        let (id, address, admission) = match decision {
            Ok(d) => d,
            Err(t) => return self.fail(cx, t),
        };
        self.x.backend = Some((id, address));
        self.x.attempts += 1;
        self.x.head_sent = 0;
        self.x.request_written = false;
        self.x.response_received = false;
        self.x.upstream_eof = false;
        self.x.connect_started = cx.now;
        self.last_upstream_io = cx.now;

        // QoS: a slot on the backend, or a place in its queue.
        self.x.slot_held = false;
        match admission {
            None => {}
            Some(Admission::Go { wake }) => {
                self.x.slot_held = true;
                if let Some(w) = wake {
                    cx.deliver_grant(&w);
                }
            }
            Some(Admission::Wait(waiter)) => {
                self.x.waiter = Some(waiter);
                self.x.queued_at = Some(cx.now);
                self.phase = Phase::Queued;
                return;
            }
            Some(Admission::Full) => return self.fail(cx, Termination::QueueFull),
        }
        self.connect_backend(cx);
    }

    /// A QoS grant arrived (or the slot was free): continue with the chosen backend.
    pub(super) fn step_queued(&mut self, cx: &mut Ctx) -> bool {
        let Some(waiter) = &self.x.waiter else {
            return false;
        };
        if !waiter.is_granted() {
            return false;
        }
        self.x.waiter = None;
        self.x.slot_held = true;
        if let Some(at) = self.x.queued_at {
            self.x.queue_us = Some(cx.now.saturating_duration_since(at).as_micros() as u64);
        }
        self.x.connect_started = cx.now;
        self.last_upstream_io = cx.now;
        self.connect_backend(cx);
        true
    }

    /// Leaves the QoS queue (timeout, client gone). If a grant raced the withdrawal, the slot it
    /// brought is passed on.
    pub(super) fn leave_queue(&mut self, cx: &mut Ctx) {
        let Some(waiter) = self.x.waiter.take() else {
            return;
        };
        let Some((id, _)) = self.x.backend else {
            return;
        };
        let granted = cx
            .snapshot
            .clusters
            .get(self.x.cluster)
            .and_then(|c| c.backend(id))
            .is_some_and(|b| !b.state.queue.cancel(&waiter));
        if granted {
            self.give_back_slot(cx, id);
        }
    }

    /// Attaches a connection to the chosen backend (`x.backend`): the session's own SSL context or any
    /// idle pooled connection, else a new one.
    pub(super) fn connect_backend(&mut self, cx: &mut Ctx) {
        let Some((id, address)) = self.x.backend else {
            self.fail(cx, Termination::NoBackend);
            return;
        };
        let slot_held = self.x.slot_held;
        self.x.slot_held = false;
        // The session's SSL context first, when it is idle in this worker's pool.
        let ctx = self.x.sticky.map_or(0, |st| st.ssl_context);
        if ctx != 0 {
            let upstreams = &cx.upstreams;
            cx.pool
                .promote(id, |k| upstreams.get(k).is_some_and(|u| u.id == ctx));
        }
        while let Some(key) = cx.pool.take(id) {
            let u = &mut cx.upstreams[key];
            if u.io.readable || u.io.read_closed || u.io.error {
                // The backend closed it (or sent something unasked) while it was parked.
                cx.close_upstream(key);
                continue;
            }
            u.session = Some(self.key);
            u.deadline.clear();
            u.requests += 1;
            if !slot_held {
                u.backend.attempt_started();
            }
            let uid = u.id;
            cx.attach();
            self.x.attempt_open = true;
            cx.stats.upstream_reuses += 1;
            self.upstream = Some(key);
            self.note_ssl_context(cx, uid);
            self.x.connect_us = Some(self.x.micros_since_start(cx.now));
            self.phase = Phase::Exchange;
            return;
        }

        let tls = cx
            .snapshot
            .cluster_tls
            .get(self.x.cluster)
            .and_then(Option::as_ref);
        let stream = match upstream::connect(address, tls, &cx.tls_stats) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("connect to {address} failed at once: {e}");
                if slot_held {
                    self.give_back_slot(cx, id);
                }
                self.upstream_failed(cx, Termination::ConnectFailed);
                return;
            }
        };
        let entry = cx.upstreams.vacant_entry();
        let key = entry.key();
        let mut stream = stream;
        if let Err(e) = cx.registry.register(
            &mut stream.sock,
            upstream_token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register upstream socket: {e}");
            if slot_held {
                self.give_back_slot(cx, id);
            }
            self.fail(cx, Termination::Internal("cannot register upstream socket"));
            return;
        }
        let Some(backend_state) = cx.snapshot.clusters[self.x.cluster]
            .backend(id)
            .map(|b| b.state.clone())
        else {
            self.fail(cx, Termination::NoBackend);
            return;
        };
        if !slot_held {
            backend_state.attempt_started();
        }
        self.x.attempt_open = true;
        let id = cx.next_id();
        cx.upstreams.insert(Upstream {
            stream,
            io: Readiness::default(),
            backend: backend_state,
            session: Some(self.key),
            connected: false,
            requests: 1,
            id,
            deadline: Deadline::default(),
            warming: false,
        });
        cx.attach();
        cx.stats.upstream_connects += 1;
        self.upstream = Some(key);
        self.note_ssl_context(cx, id);
        self.phase = Phase::Connect;
    }

    /// Remembers which backend connection (SSL context) a secure session's request rides.
    pub(super) fn note_ssl_context(&mut self, cx: &Ctx, connection: u64) {
        if let Some(st) = &mut self.x.sticky {
            if let Some(key) = st.key {
                if st.ssl_context != connection {
                    st.ssl_context = connection;
                    cx.sticky.table.set_ssl_context(key, connection);
                }
            }
        }
    }

    /// Returns a QoS slot taken for an attempt that never started, and hands it on.
    pub(super) fn give_back_slot(&mut self, cx: &mut Ctx, id: BackendId) {
        let Some(b) = cx
            .snapshot
            .clusters
            .get(self.x.cluster)
            .and_then(|c| c.backend(id))
            .map(|b| b.state.clone())
        else {
            return;
        };
        b.release_slot();
        if let Some(w) = b.queue.release(&b, cx.now) {
            cx.deliver_grant(&w);
        }
    }

    pub(super) fn step_connect(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            self.upstream_failed(cx, Termination::ConnectFailed);
            return true;
        };
        let u = &mut cx.upstreams[key];
        if !u.io.writable && !u.io.error && !u.io.read_closed {
            return false;
        }
        let failed = match u.stream.sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match u.stream.sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
                    // Spurious wake-up: still connecting.
                    u.io.writable = false;
                    return false;
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            log::debug!("connect to {} failed: {e}", u.backend.address);
            self.upstream_failed(cx, Termination::ConnectFailed);
            return true;
        }
        u.connected = true;
        self.x.connect_us = Some(self.x.micros_since_start(cx.now));
        self.last_upstream_io = cx.now;
        self.phase = Phase::Exchange;
        true
    }

    /// Detaches the backend connection from this request and tells its backend how the attempt ended.
    /// Every detach goes through here, so in-flight counts and health see each attempt exactly once.
    pub(super) fn end_attempt(&mut self, cx: &mut Ctx, outcome: AttemptOutcome) -> Option<usize> {
        let key = self.upstream.take()?;
        if self.x.attempt_open {
            self.x.attempt_open = false;
            let grant = cx.upstreams.get(key).and_then(|u| {
                u.backend.attempt_finished(outcome);
                // The freed slot goes straight to the best waiting request (one load when none wait).
                u.backend.queue.release(&u.backend, cx.now)
            });
            if let Some(w) = grant {
                cx.deliver_grant(&w);
            }
        }
        Some(key)
    }

    /// The backend connection failed before the exchange could finish: retry on another backend when
    /// that is safe, else answer (502/504) if nothing was sent yet, else cut the client connection.
    pub(super) fn upstream_failed(&mut self, cx: &mut Ctx, term: Termination) {
        if let Some(u) = self.upstream.and_then(|k| cx.upstreams.get(k)) {
            if u.stream.tls.as_ref().is_some_and(|t| !t.is_established()) {
                // Everything written sat in rustls waiting for a handshake that never completed.
                self.x.request_written = false;
            }
        }
        if let Some(key) = self.end_attempt(cx, outcome_of(term)) {
            cx.close_upstream(key);
        }
        if let Some(buf) = self.up_buf.take() {
            cx.buffers.put(buf);
        }
        self.x.resp_pending = 0;
        let retries = cx
            .snapshot
            .clusters
            .get(self.x.cluster)
            .map_or(0, |c| c.retries);
        // Safe to replay: the backend received nothing, or the request is idempotent, has no body (sent
        // body bytes are gone from `in_buf`) and nothing came back.
        let replayable = !self.x.request_written
            || (self.x.method.is_idempotent()
                && !self.x.req_has_body
                && !self.x.response_received
                && self.x.req_pending == 0);
        let body_untouched = !self.x.request_written || self.x.req_body == Body::Done;
        if self.x.attempts <= retries
            && replayable
            && body_untouched
            && !self.x.response_started
            && self.x.generation == cx.snapshot.generation
        {
            let avoid = self.x.backend.map(|(id, _)| id);
            self.attach_upstream(cx, avoid);
            return;
        }
        if self.x.response_started {
            self.abort(cx, term);
        } else {
            self.fail(cx, term);
        }
    }
}
