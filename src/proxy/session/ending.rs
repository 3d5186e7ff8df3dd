//! Endings: canned answers, aborts, closing and lingering, the access-log record, timers, teardown.

use super::*;

impl Session {
    /// Answers the client with a canned response for `term` (when nothing of a response was sent yet)
    /// and closes; the connection is never reused after an error.
    pub(crate) fn fail(&mut self, cx: &mut Ctx, term: Termination) {
        self.count_bad_request(cx, term);
        self.x.termination = term;
        if let Some(key) = self.end_attempt(cx, outcome_of(term)) {
            cx.upstreams.close(key);
        }
        stages::release_slot(&mut self.plan, &mut cx.wakers, cx.now);
        self.wait = None;
        if !self.x.response_started {
            if let Some(status) = term.status() {
                let out = self.resp_out.get_or_insert_with(|| cx.io.take_vec());
                let extra: &[(&str, &str)] = if status == 503 {
                    &[("Retry-After", "1")]
                } else {
                    &[]
                };
                write_canned(out, status, term.reason(), true, extra);
                self.x.status = status;
                self.x.response_started = true;
            }
        }
        self.begin_closing(cx);
    }

    pub(super) fn respond_or_abort(&mut self, cx: &mut Ctx, term: Termination) {
        if self.x.response_started {
            self.abort(cx, term);
        } else {
            self.fail(cx, term);
        }
    }

    /// Cuts the client connection without an answer (one was already under way, or the client left).
    pub(crate) fn abort(&mut self, cx: &mut Ctx, term: Termination) {
        self.count_bad_request(cx, term);
        self.x.termination = term;
        if let Some(key) = self.end_attempt(cx, outcome_of(term)) {
            cx.upstreams.close(key);
        }
        stages::release_slot(&mut self.plan, &mut cx.wakers, cx.now);
        self.wait = None;
        self.phase = Phase::Closed;
    }

    /// A request refused as malformed (`Termination::BadRequest`: tether's own 4xx for bad input)
    /// counts against `[deny]`'s `bad_requests_per_min` rules, in node-local buckets like the
    /// `requests_per_sec` rules; the one past a rule bans the address on every node (a replicated deny
    /// record), so its next connections are refused at accept.
    fn count_bad_request(&self, cx: &mut Ctx, term: Termination) {
        if !matches!(term, Termination::BadRequest(_)) {
            return;
        }
        let ip = self.peer.ip().to_canonical();
        let Some(rule) = cx
            .snapshot
            .deny
            .bad_request(ip, cx.counters.buckets(), cx.now)
        else {
            return;
        };
        let Some(store) = &cx.store else {
            return;
        };
        let ban = rule.ban.as_secs().min(u64::from(u32::MAX));
        log::info!(
            "deny list: {ip} exceeded {} bad requests/min; refused by every node for {ban}s",
            rule.per_min
        );
        crate::limits::deny::ban(
            store,
            ip,
            "bad_requests_per_min",
            cx.unix_now.saturating_add(ban as u32),
        );
        cx.metrics.denied.inc();
    }

    pub(super) fn begin_closing(&mut self, cx: &mut Ctx) {
        self.phase = Phase::Closing;
        self.closing_since = cx.now;
        // The client asked to close and nothing of its is unread (its body read, no byte buffered past
        // the request): a plain close loses nothing to a reset, so no half-close and no lingering.
        self.quick_close = !self.x.keep_alive
            && self.x.req_body == Body::Done
            && self.x.req_pending == 0
            && self.in_buf.as_ref().is_none_or(Buffer::is_empty);
        // Pipelined requests behind a closing response are dropped with the connection.
        self.x.req_pending = 0;
    }

    pub(super) fn step_closing(&mut self, cx: &mut Ctx) -> bool {
        let pending = self.resp_out_pending();
        if pending > 0 {
            if !self.io.writable {
                return false;
            }
            let out =
                &self.resp_out.as_ref().expect("pending implies present")[self.resp_out_sent..];
            match self.client.write_two(&mut self.io, out, &[], false) {
                WriteOutcome::Wrote(n) => {
                    self.resp_out_sent += n;
                    self.x.bytes_out += n as u64;
                    self.last_client_io = cx.now;
                    return true;
                }
                WriteOutcome::Blocked => return false,
                WriteOutcome::Error(_) => {
                    self.phase = Phase::Closed;
                    return true;
                }
            }
        }
        if self.client.has_pending_output() {
            // Sealed TLS records are still waiting for the socket (flushed at the top of `drive`).
            return false;
        }
        if self.quick_close {
            // The client asked to close and sent nothing more: close now (the kernel sends what is
            // queued, then FIN). A half-close and a wait for the client's end cost a shutdown call and
            // a turn of the event loop per connection (measured: new connections per request).
            self.recycle_resp_out(cx);
            self.finish_request(cx);
            self.client.close_notify(&mut self.io);
            self.phase = Phase::Closed;
            return true;
        }
        if !self.shutdown_sent {
            self.recycle_resp_out(cx);
            self.finish_request(cx);
            self.client.shutdown_write(&mut self.io);
            self.shutdown_sent = true;
            self.closing_since = cx.now;
        }
        // Drain what the client still sends until it closes, so our answer is not lost to a reset.
        if !self.io.readable {
            return false;
        }
        match self.client.read_discard(&mut self.io) {
            ReadOutcome::Data(_) => true,
            ReadOutcome::Blocked => false,
            ReadOutcome::Eof | ReadOutcome::Error(_) => {
                self.phase = Phase::Closed;
                true
            }
        }
    }

    /// Ends the current request's bookkeeping, once: any QoS slot it still holds goes back, its
    /// counters are recorded and its access-log record written (the finish hooks).
    pub(super) fn finish_request(&mut self, cx: &mut Ctx) {
        stages::release_slot(&mut self.plan, &mut cx.wakers, cx.now);
        self.wait = None;
        if !self.x.started {
            return;
        }
        self.x.started = false;
        self.requests += 1;
        let total_us = self.x.micros_since_start(cx.now);
        // Routed (the route stage pinned a snapshot): counted per route and cluster too.
        let routed = self.plan.snapshot.as_ref().and_then(|s| {
            Some((
                *s.route_metric.get(self.plan.route)?,
                *s.cluster_metric.get(self.plan.cluster)?,
            ))
        });
        cx.metrics
            .request_finished(self.x.termination, self.x.status, total_us, routed);
        if let Some(q) = self.plan.queue_us {
            cx.metrics.queue_us.observe(q);
        }
        if let Some(tenant) = self.plan.tenant {
            let backend_us = self.plan.backend.is_some().then_some(total_us);
            cx.meter
                .request(tenant, self.x.bytes_in, self.x.bytes_out, backend_us);
        }
        let Some(log) = &cx.access_log else {
            return;
        };
        let Some(mut record) = self.log.take() else {
            return;
        };
        record.status = self.x.status;
        record.bytes_in = self.x.bytes_in;
        record.bytes_out = self.x.bytes_out;
        let backend = self.plan.backend_state().map(|b| b.address);
        record.backend = backend;
        // Requests that reached the balancer waited 0 us when they never queued.
        record.queue_us = self.plan.queue_us.or(backend.map(|_| 0));
        record.connect_us = self.x.connect_us;
        record.response_us = self.x.response_us;
        record.total_us = total_us;
        record.termination = self.x.termination;
        record.retries = self.plan.attempts.saturating_sub(1);
        log.submit(record);
    }

    // ----- timers and teardown ----------------------------------------------------------------------

    /// The deadline that applies to the current phase.
    pub(super) fn next_deadline(&self, cx: &Ctx) -> Option<Instant> {
        let t = &cx.snapshot.timeouts;
        match self.phase {
            Phase::ReadHead => Some(if self.client.is_handshaking() {
                self.accepted_at + t.tls_handshake
            } else if self.x.started {
                self.x.started_at + t.client_head
            } else if self.requests == 0 {
                self.last_client_io + t.client_head
            } else {
                self.last_client_io + t.client_idle
            }),
            Phase::Waiting => match self.wait.as_ref()? {
                Wait::Qos => {
                    let wait = self.plan.cluster().map_or(t.server, |c| c.queue_timeout);
                    Some(self.plan.queued_at.unwrap_or(cx.now) + wait)
                }
                Wait::Body { .. } => Some(self.last_client_io + t.client),
                Wait::Ticket { until, .. } => Some(*until),
            },
            Phase::Connect => Some(self.x.connect_started + t.connect),
            Phase::Exchange => {
                let (backend, client) = self.exchange_clocks();
                let upstream = backend.then(|| self.last_upstream_io + t.server);
                let client = client.then(|| self.last_client_io + t.client);
                match (upstream, client) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Reply => Some(self.last_client_io + t.client),
            Phase::Tunnel => Some(self.last_client_io.max(self.last_upstream_io) + t.tunnel),
            // Bytes the client does not take within `client` end the stream; otherwise the next
            // keep-alive comment is due.
            Phase::Stream if self.resp_out_pending() > 0 => Some(self.last_client_io + t.client),
            Phase::Stream => self.stream.as_ref().map(|s| s.keepalive_at),
            Phase::Closing => Some(self.closing_since + t.client.min(LINGER)),
            Phase::Closed => None,
        }
    }

    /// Whose silence an exchange is waiting on now: `(backend, client)`. The backend's clock runs only
    /// while tether waits for the backend — to take request bytes it has queued, or to answer a request
    /// it has whole — and not while the response waits for the client to read it. The client's clock runs
    /// while the client owes request body bytes or is not reading the response. So a client that stalls
    /// mid-body is timed out as the client's fault, never counted against the backend's health.
    fn exchange_clocks(&self) -> (bool, bool) {
        let to_backend = self.x.req_pending > 0
            || self
                .req_out
                .as_ref()
                .is_some_and(|o| self.x.head_sent < o.len());
        let to_client = self.resp_out_pending() > 0 || self.x.resp_pending > 0;
        let client_owes = self.x.req_body != Body::Done && !to_backend;
        // A backend that stops reading while the client is not reading either is most likely blocked
        // writing a response tether is not reading (the client's backpressure): the client's clock.
        let backend = !to_client
            && (to_backend
                || (self.x.resp != ResponseState::Done && self.x.req_body == Body::Done));
        (backend, client_owes || to_client)
    }

    pub(super) fn arm_deadline(&mut self, cx: &mut Ctx) {
        match self.next_deadline(cx) {
            Some(at) => {
                let token = crate::proxy::context::session_token(self.key).0;
                self.deadline.set(&mut cx.io.timers, token, self.id, at);
            }
            None => self.deadline.clear(),
        }
    }

    /// The session's deadline passed.
    pub(crate) fn on_timeout(&mut self, cx: &mut Ctx, sessions: &SessionReader<'_>) {
        let t = cx.snapshot.timeouts.clone();
        match self.phase {
            Phase::ReadHead => {
                if self.client.is_handshaking() {
                    self.tls_handshake_failed(cx, "TLS handshake timed out");
                    self.phase = Phase::Closed;
                } else if self.x.started {
                    self.fail(cx, Termination::HeadTimeout);
                } else {
                    self.phase = Phase::Closed;
                }
            }
            Phase::Waiting => match self.wait.take() {
                Some(Wait::Qos) => {
                    if matches!(&self.plan.slot, Slot::Queued(w) if w.is_granted()) {
                        // Granted just as time ran out: use the slot.
                        self.run_attempt(cx);
                    } else {
                        // `finish_request` gives the place in the queue back and notes the wait.
                        self.fail(cx, Termination::QueueTimeout);
                    }
                }
                Some(Wait::Body { .. }) => self.fail(cx, Termination::ClientTimeout),
                Some(Wait::Ticket {
                    on_timeout: Some(t),
                    ..
                }) => self.fail(cx, t),
                // The stage decides what a timed-out wait means.
                Some(Wait::Ticket {
                    on_timeout: None, ..
                }) => self.resume_request_stages(cx, sessions, None),
                None => self.phase = Phase::Closed,
            },
            Phase::Connect => {
                self.upstream_failed(cx, Termination::ConnectTimeout, Retry::IfReplayable)
            }
            Phase::Exchange => {
                let (backend, _) = self.exchange_clocks();
                if backend && cx.now >= self.last_upstream_io + t.server {
                    // Never replayed: the backend may be working on it.
                    self.upstream_failed(cx, Termination::UpstreamTimeout, Retry::Never);
                } else {
                    // The client stalled: 408 if nothing was answered yet, else the connection is cut.
                    // The backend's attempt is abandoned, which its health does not count.
                    self.respond_or_abort(cx, Termination::ClientTimeout);
                }
            }
            Phase::Reply => self.abort(cx, Termination::ClientTimeout),
            Phase::Tunnel => self.abort(cx, Termination::TunnelTimeout),
            Phase::Stream => {
                if self.resp_out_pending() > 0 && cx.now >= self.last_client_io + t.client {
                    self.abort(cx, Termination::ClientTimeout);
                }
                // Otherwise the keep-alive is due: the drive below writes it.
            }
            Phase::Closing | Phase::Closed => self.phase = Phase::Closed,
        }
        if self.phase != Phase::Closed && self.drive(cx, sessions) {
            cx.deferred.push(self.key);
        }
    }

    /// Frees everything the session holds; called once, when it leaves the worker.
    pub(crate) fn close(&mut self, cx: &mut Ctx) {
        if let Some(key) = self.end_attempt(cx, AttemptOutcome::Abandoned) {
            cx.upstreams.close(key);
        }
        self.finish_request(cx);
        for buf in [self.in_buf.take(), self.up_buf.take()]
            .into_iter()
            .flatten()
        {
            cx.io.buffers.put(buf);
        }
        for v in [self.req_out.take(), self.resp_out.take()]
            .into_iter()
            .flatten()
        {
            cx.io.put_vec(v);
        }
        // A record begun for a request that never came is simply dropped.
        self.log = None;
        self.tunnel = None;
        self.stream = None;
        self.phase = Phase::Closed;
    }

    /// Idle connections hold no buffers: that is what keeps memory per idle connection small.
    pub(super) fn release_idle_buffers(&mut self, cx: &mut Ctx) {
        if self.in_buf.as_ref().is_some_and(Buffer::is_empty) && self.x.req_pending == 0 {
            if let Some(b) = self.in_buf.take() {
                cx.io.buffers.put(b);
            }
        }
        if self.phase == Phase::ReadHead {
            if let Some(b) = self.up_buf.take() {
                cx.io.buffers.put(b);
            }
        }
    }
}
