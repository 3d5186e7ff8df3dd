//! Endings: canned answers, aborts, closing and lingering, the access-log record, timers, teardown.

use super::*;

impl Session {
    /// Answers the client with a canned response for `term` (when nothing of a response was sent yet)
    /// and closes; the connection is never reused after an error.
    pub fn fail(&mut self, cx: &mut Ctx, term: Termination) {
        self.x.termination = term;
        if let Some(key) = self.end_attempt(cx, outcome_of(term)) {
            cx.close_upstream(key);
        }
        if !self.x.response_started {
            if let Some(status) = term.status() {
                let out = self.resp_out.get_or_insert_with(|| cx.take_vec());
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
    pub fn abort(&mut self, cx: &mut Ctx, term: Termination) {
        self.x.termination = term;
        if let Some(key) = self.end_attempt(cx, outcome_of(term)) {
            cx.close_upstream(key);
        }
        self.phase = Phase::Closed;
    }

    pub(super) fn begin_closing(&mut self, cx: &mut Ctx) {
        self.phase = Phase::Closing;
        self.closing_since = cx.now;
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

    /// Writes the access-log record of the current request, once.
    pub(super) fn finish_request(&mut self, cx: &mut Ctx) {
        if !self.x.started {
            return;
        }
        self.x.started = false;
        self.requests += 1;
        let Some(log) = &cx.access_log else {
            return;
        };
        let Some(mut record) = self.log.take() else {
            return;
        };
        record.status = self.x.status;
        record.bytes_in = self.x.bytes_in;
        record.bytes_out = self.x.bytes_out;
        record.backend = self.x.backend.map(|(_, a)| a);
        record.queue_us = self.x.queue_us.or_else(|| self.x.backend.map(|_| 0));
        record.connect_us = self.x.connect_us;
        record.response_us = self.x.response_us;
        record.total_us = self.x.micros_since_start(cx.now);
        record.termination = self.x.termination;
        record.retries = self.x.attempts.saturating_sub(1);
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
            Phase::Queued => {
                let wait = cx
                    .snapshot
                    .clusters
                    .get(self.x.cluster)
                    .map_or(Duration::from_secs(10), |c| c.queue_timeout);
                Some(self.x.queued_at.unwrap_or(cx.now) + wait)
            }
            Phase::Connect => Some(self.x.connect_started + t.connect),
            Phase::Exchange => {
                let upstream =
                    (self.x.resp != ResponseState::Done).then(|| self.last_upstream_io + t.server);
                let client_owes = self.x.req_body != Body::Done
                    || self.resp_out_pending() > 0
                    || self.x.resp_pending > 0;
                let client = client_owes.then(|| self.last_client_io + t.client);
                match (upstream, client) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Tunnel => Some(self.last_client_io.max(self.last_upstream_io) + t.tunnel),
            Phase::Closing => Some(self.closing_since + t.client.min(LINGER)),
            Phase::Closed => None,
        }
    }

    pub(super) fn arm_deadline(&mut self, cx: &mut Ctx) {
        match self.next_deadline(cx) {
            Some(at) => {
                let token = crate::proxy::context::session_token(self.key).0;
                self.deadline.set(&mut cx.timers, token, self.id, at);
            }
            None => self.deadline.clear(),
        }
    }

    /// The session's deadline passed.
    pub fn on_timeout(&mut self, cx: &mut Ctx, sessions: &SessionReader<'_>) {
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
            Phase::Queued => {
                if self.x.waiter.as_ref().is_some_and(|w| w.is_granted()) {
                    // Granted just as time ran out: use the slot.
                    self.step_queued(cx);
                } else {
                    self.leave_queue(cx);
                    self.fail(cx, Termination::QueueTimeout);
                }
            }
            Phase::Connect => self.upstream_failed(cx, Termination::ConnectTimeout),
            Phase::Exchange => {
                let upstream_late = self.x.resp != ResponseState::Done
                    && cx.now >= self.last_upstream_io + t.server;
                if upstream_late {
                    // Never replayed: the backend may be working on it.
                    self.x.attempts = u32::MAX;
                    self.upstream_failed(cx, Termination::UpstreamTimeout);
                } else {
                    self.abort(cx, Termination::ClientTimeout);
                }
            }
            Phase::Tunnel => self.abort(cx, Termination::Completed),
            Phase::Closing | Phase::Closed => self.phase = Phase::Closed,
        }
        if self.phase != Phase::Closed && self.drive(cx, sessions) {
            cx.deferred.push(self.key);
        }
    }

    /// Frees everything the session holds; called once, when it leaves the worker.
    pub fn close(&mut self, cx: &mut Ctx) {
        self.leave_queue(cx);
        if let Some(key) = self.end_attempt(cx, AttemptOutcome::Abandoned) {
            cx.close_upstream(key);
        }
        self.finish_request(cx);
        for buf in [self.in_buf.take(), self.up_buf.take()]
            .into_iter()
            .flatten()
        {
            cx.buffers.put(buf);
        }
        for v in [self.req_out.take(), self.resp_out.take()]
            .into_iter()
            .flatten()
        {
            cx.put_vec(v);
        }
        // A record begun for a request that never came is simply dropped.
        self.log = None;
        self.phase = Phase::Closed;
    }

    /// Idle connections hold no buffers: that is what keeps memory per idle connection small.
    pub(super) fn release_idle_buffers(&mut self, cx: &mut Ctx) {
        if self.in_buf.as_ref().is_some_and(Buffer::is_empty) && self.x.req_pending == 0 {
            if let Some(b) = self.in_buf.take() {
                cx.buffers.put(b);
            }
        }
        if self.phase == Phase::ReadHead {
            if let Some(b) = self.up_buf.take() {
                cx.buffers.put(b);
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        self.phase == Phase::ReadHead && !self.x.started
    }
}
