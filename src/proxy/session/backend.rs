//! An attempt: the attempt stages (balance, QoS), connecting to the chosen backend, and what a failed
//! attempt leads to (a retry elsewhere, or an answer).

use super::*;
use crate::proxy::stages::Verdict;

impl Session {
    /// Runs the attempt stages from the plan's next one, then attaches a backend connection.
    pub(super) fn run_attempt(&mut self, cx: &mut Ctx) {
        while self.plan.next_attempt_stage < stages::ATTEMPT_STAGES.len() {
            let (_, stage) = stages::ATTEMPT_STAGES[self.plan.next_attempt_stage];
            let wake = cx.wakers.target(self.key, self.id);
            let mut attempt = stages::Attempt {
                plan: &mut self.plan,
                cx: stages::AttemptCx {
                    balancer: &mut cx.balancer,
                    sticky: &cx.sticky,
                    store: cx.store.as_ref(),
                    wakers: &mut cx.wakers,
                    worker: cx.worker,
                    now: cx.now,
                    unix_now: cx.unix_now,
                    wake,
                },
            };
            match stage(&mut attempt) {
                Verdict::Continue => self.plan.next_attempt_stage += 1,
                Verdict::Answer(answer) => return self.answer(cx, answer),
                Verdict::Wait(wait) => return self.park(cx, wait),
            }
        }
        if self.plan.attempts > 0 {
            cx.metrics.retries.inc();
        }
        self.plan.attempts += 1;
        self.x.head_sent = 0;
        self.x.request_written = false;
        self.x.response_received = false;
        self.x.upstream_eof = false;
        self.x.connect_started = cx.now;
        self.last_upstream_io = cx.now;
        self.connect_backend(cx);
    }

    /// Attaches a connection to the chosen backend: the session's own SSL context or any idle pooled
    /// connection, else a new one. The attempt takes over the QoS slot the plan holds (if any).
    pub(super) fn connect_backend(&mut self, cx: &mut Ctx) {
        let Some(backend) = self.plan.backend_state().cloned() else {
            return self.fail(cx, Termination::NoBackend);
        };
        let id = backend.id;
        // The session's SSL context first, when it is idle in this worker's pool.
        let ctx = self.plan.sticky.map_or(0, |st| st.ssl_context);
        let ups = &mut cx.upstreams;
        if ctx != 0 {
            let slab = &ups.slab;
            ups.pool
                .promote(id, |k| slab.get(k).is_some_and(|u| u.id == ctx));
        }
        while let Some(key) = ups.pool.take(id) {
            let u = &mut ups.slab[key];
            if u.io.readable || u.io.read_closed || u.io.error {
                // The backend closed it (or sent something unasked) while it was parked.
                ups.close(key);
                continue;
            }
            u.session = Some(self.key);
            u.deadline.clear();
            u.requests += 1;
            let uid = u.id;
            ups.attach();
            self.start_attempt(&backend);
            self.x.reused = true;
            cx.metrics.upstream_reuses.inc();
            self.upstream = Some(key);
            self.note_ssl_context(cx, uid);
            self.x.connect_us = Some(self.x.micros_since_start(cx.now));
            self.phase = Phase::Exchange;
            return;
        }

        let tls = self
            .plan
            .snapshot
            .as_ref()
            .and_then(|s| s.cluster_tls.get(self.plan.cluster))
            .and_then(Option::as_ref);
        let mut stream = match upstream::connect(backend.address, tls, &cx.upstreams.tls_stats) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("connect to {} failed at once: {e}", backend.address);
                // No attempt started: the slot goes back, and a failure counts against the backend.
                stages::release_slot(&mut self.plan, &mut cx.wakers, cx.now);
                backend.attempt_started();
                backend.attempt_finished(AttemptOutcome::ConnectFailed);
                return self.upstream_failed(cx, Termination::ConnectFailed, Retry::IfReplayable);
            }
        };
        let key = cx.upstreams.slab.vacant_entry().key();
        if let Err(e) = cx.io.registry.register(
            &mut stream.sock,
            upstream_token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register upstream socket: {e}");
            stages::release_slot(&mut self.plan, &mut cx.wakers, cx.now);
            return self.fail(cx, Termination::Internal("cannot register upstream socket"));
        }
        self.start_attempt(&backend);
        self.x.reused = false;
        let uid = cx.next_id();
        cx.upstreams.slab.insert(Upstream {
            stream,
            io: Readiness::default(),
            backend,
            session: Some(self.key),
            connected: false,
            requests: 1,
            id: uid,
            deadline: Deadline::default(),
            warming: false,
        });
        cx.upstreams.attach();
        cx.metrics.upstream_connects.inc();
        self.upstream = Some(key);
        self.note_ssl_context(cx, uid);
        self.phase = Phase::Connect;
    }

    /// The attempt starts on `backend`: it takes over the plan's QoS slot, or counts itself in flight.
    fn start_attempt(&mut self, backend: &crate::balance::BackendState) {
        match std::mem::take(&mut self.plan.slot) {
            Slot::Held => {}
            Slot::None => backend.attempt_started(),
            Slot::Queued(_) => {
                debug_assert!(false, "an attempt started while still queued");
                backend.attempt_started();
            }
        }
        self.x.attempt_open = true;
    }

    /// Remembers which backend connection (SSL context) a secure session's request rides.
    pub(super) fn note_ssl_context(&mut self, cx: &Ctx, connection: u64) {
        if let Some(st) = &mut self.plan.sticky {
            if let Some(key) = st.key {
                if st.ssl_context != connection {
                    st.ssl_context = connection;
                    cx.sticky.table.set_ssl_context(key, connection);
                }
            }
        }
    }

    pub(super) fn step_connect(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            self.upstream_failed(cx, Termination::ConnectFailed, Retry::IfReplayable);
            return true;
        };
        let u = &mut cx.upstreams.slab[key];
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
            self.upstream_failed(cx, Termination::ConnectFailed, Retry::IfReplayable);
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
            let grant = cx.upstreams.slab.get(key).and_then(|u| {
                u.backend.attempt_finished(outcome);
                // The freed slot goes straight to the best waiting request (one load when none wait).
                u.backend.queue.release(&u.backend.slots, cx.now)
            });
            if let Some(w) = grant {
                cx.wakers.deliver_grant(&w);
            }
        }
        Some(key)
    }

    /// The backend connection failed before the exchange could finish: retry on another backend when
    /// `retry` and the request's state allow it, else answer (502/504) if nothing was sent yet, else cut
    /// the client connection.
    pub(super) fn upstream_failed(&mut self, cx: &mut Ctx, term: Termination, retry: Retry) {
        if let Some(u) = self.upstream.and_then(|k| cx.upstreams.slab.get(k)) {
            if u.stream.tls.as_ref().is_some_and(|t| !t.is_established()) {
                // Everything written sat in rustls waiting for a handshake that never completed.
                self.x.request_written = false;
            }
        }
        if let Some(key) = self.end_attempt(cx, outcome_of(term)) {
            cx.upstreams.close(key);
        }
        if let Some(buf) = self.up_buf.take() {
            cx.io.buffers.put(buf);
        }
        self.x.resp_pending = 0;
        if retry == Retry::IfReplayable
            && self.replayable()
            && !self.x.response_started
            && self.plan.retries_left()
        {
            self.plan.avoid = self.plan.backend_state().map(|b| b.id);
            self.plan.backend = None;
            self.plan.next_attempt_stage = 0;
            self.run_attempt(cx);
            return;
        }
        self.respond_or_abort(cx, term);
    }

    /// Whether the request can be sent again: the backend received none of it, or it is idempotent,
    /// has no body (sent body bytes are gone from `in_buf`) and nothing came back.
    fn replayable(&self) -> bool {
        !self.x.request_written
            || (self.x.method.is_idempotent()
                && !self.x.req_has_body
                && !self.x.response_received
                && self.x.req_pending == 0)
    }
}
