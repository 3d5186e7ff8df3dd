//! Reading a request head (TLS first bytes, parsing, https redirects), running the request stages,
//! parking a request that waits, and writing tether's own replies.

use super::*;
use crate::proxy::stages::{Answer, Verdict};

impl Session {
    pub(super) fn step_read_head(&mut self, cx: &mut Ctx, sessions: &SessionReader<'_>) -> bool {
        if self.in_buf.as_ref().is_some_and(|b| !b.is_empty()) && !self.x.started {
            self.begin_request(cx);
        }
        if let Some(buf) = &mut self.in_buf {
            if !buf.is_empty() {
                let limits = cx.snapshot.limits;
                match self.scanner.scan(buf.data(), &limits) {
                    Err(e) => {
                        self.fail(cx, Termination::BadRequest(e));
                        return true;
                    }
                    Ok(Some(len)) => {
                        self.on_request_head(cx, len, sessions);
                        return true;
                    }
                    Ok(None) => {
                        // A head bigger than a buffer but within the limit: grow once (rare path).
                        if buf.free() == 0 && buf.capacity() < limits.max_head_size + 1 {
                            buf.grow(limits.max_head_size + 1);
                        }
                    }
                }
            }
        }
        if cx.draining && !self.x.started {
            self.phase = Phase::Closed;
            return true;
        }
        if !self.io.readable {
            return false;
        }
        if self.client.tls.is_some() && !self.tls_checked && !self.check_plain_http(cx) {
            return false;
        }
        let buf = self.in_buf.get_or_insert_with(|| cx.io.buffers.get());
        match self.client.read_into(&mut self.io, buf) {
            ReadOutcome::Data(_) => {
                self.last_client_io = cx.now;
                true
            }
            ReadOutcome::Blocked => false,
            ReadOutcome::Eof => {
                if self.x.started {
                    // Gone mid-head: nothing to answer, but the attempt is logged.
                    self.x.termination = Termination::ClientClosed;
                } else if self.client.is_handshaking() {
                    self.tls_handshake_failed(cx, "client closed during the TLS handshake");
                }
                self.phase = Phase::Closed;
                true
            }
            ReadOutcome::Error(e) => {
                if self.x.started {
                    self.x.termination = Termination::ClientClosed;
                } else if self.client.tls.is_some() {
                    self.tls_handshake_failed(cx, crate::tls::stream::describe(&e));
                }
                self.phase = Phase::Closed;
                true
            }
        }
    }

    /// Before the first TLS byte reaches rustls, peeks whether the client speaks plain HTTP instead (a
    /// request line starts with an uppercase method; a TLS record with 0x16). Returns `false` when nothing
    /// has arrived yet.
    pub(super) fn check_plain_http(&mut self, cx: &mut Ctx) -> bool {
        let mut first = [0u8; 1];
        match self.client.sock.peek(&mut first) {
            Ok(0) => true, // EOF: the read below reports it
            Ok(_) => {
                self.tls_checked = true;
                if first[0].is_ascii_uppercase() {
                    crate::tls::TlsStats::count(&cx.upstreams.tls_stats.plain_http);
                    // Answer in plain text: parse the request (for Host and path), then refuse or redirect.
                    self.client.tls = None;
                    self.plain_on_tls = true;
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.io.readable = false;
                false
            }
            Err(_) => true,
        }
    }

    /// Logs a failed client handshake (an access-log line with the reason; no request was made).
    pub(super) fn tls_handshake_failed(&mut self, cx: &mut Ctx, reason: &'static str) {
        if let Some(tls) = &mut self.client.tls {
            tls.abandon();
        }
        log::debug!("client {}: TLS handshake failed: {reason}", self.peer);
        self.begin_request(cx);
        self.x.termination = Termination::TlsHandshake(reason);
    }

    /// The first byte of a request arrived: start its clock and its log record.
    pub(super) fn begin_request(&mut self, cx: &mut Ctx) {
        self.x.started = true;
        self.x.started_at = cx.now;
        if let Some(log) = &cx.access_log {
            let mut record = self.log.take().unwrap_or_else(|| log.record());
            record.reset(SystemTime::now(), self.peer, self.listener);
            self.log = Some(record);
        }
    }

    /// A complete head of `head_len` bytes is at the front of `in_buf`: parse it, log what it says, and
    /// run the request stages.
    pub(super) fn on_request_head(
        &mut self,
        cx: &mut Ctx,
        head_len: usize,
        sessions: &SessionReader<'_>,
    ) {
        let limits = cx.snapshot.limits;
        let Some(buf) = self.in_buf.as_ref() else {
            return;
        };
        let bytes = &buf.data()[..head_len];
        let head = &mut cx.req_head;
        let parsed = parse_request(bytes, &limits, head);
        // The head was read whatever its verdict: the log says how big it was and what it asked for.
        self.x.bytes_in = head_len as u64;
        cx.metrics.requests.inc();
        if let Some(c) = cx.metrics.listener_requests.get(usize::from(self.listener)) {
            c.inc();
        }
        if let Some(log) = &mut self.log {
            let method = head.method_span.of(bytes);
            if parsed.is_ok() || !method.is_empty() {
                log.version = head.version;
                log.set(Field::Method, method);
                log.set(Field::Target, head.target.of(bytes));
            } else {
                // Refused before the request line was understood: the raw first line tells an operator
                // what was refused.
                let line = bytes.split(|&b| b == b'\n').find(|l| l.len() > 1);
                log.set(Field::Target, line.unwrap_or(b"").trim_ascii_end());
            }
            if let Some(a) = head.authority {
                log.set(Field::Host, a.of(bytes));
            }
            if let Some(ua) = head.header(bytes, "user-agent") {
                log.set(Field::UserAgent, ua);
            }
        }
        if let Err(e) = parsed {
            self.fail(cx, Termination::BadRequest(e));
            return;
        }
        self.x.method = head.method;
        self.x.version = head.version;
        self.x.keep_alive = head.keep_alive();
        self.x.upgrade = head.upgrade;
        self.x.expect_continue = head.expect_continue;
        self.x.head_len = head_len;
        self.x.req_body = match head.framing {
            BodyFraming::None | BodyFraming::Length(0) => Body::Done,
            BodyFraming::Length(n) => Body::Length(n),
            BodyFraming::Chunked => Body::Chunked,
        };
        self.x.req_has_body = self.x.req_body != Body::Done;
        self.scanner.reset();

        // Plain HTTP on a TLS port, or a plain listener that only redirects: answer without a backend.
        let info = &cx.listeners[self.listener as usize];
        let redirect = info.redirect_https
            || (self.plain_on_tls && info.plain_http == crate::config::PlainHttpPolicy::Redirect);
        if redirect {
            self.redirect_to_https(cx, head_len);
            return;
        }
        if self.plain_on_tls {
            self.fail(cx, Termination::PlainHttpOnTls);
            return;
        }
        self.run_request_stages(cx, sessions, None);
    }

    /// Runs the request stages from the plan's next one. `body`: the span of the body a stage asked
    /// for, in `in_buf` after the head. The head must be parsed in `cx.req_head`.
    pub(super) fn run_request_stages(
        &mut self,
        cx: &mut Ctx,
        sessions: &SessionReader<'_>,
        body: Option<(usize, usize)>,
    ) {
        while self.plan.next_stage < stages::REQUEST_STAGES.len() {
            let (_, stage) = stages::REQUEST_STAGES[self.plan.next_stage];
            let Some(buf) = self.in_buf.as_ref() else {
                return self.fail(cx, Termination::Internal("request head lost"));
            };
            let data = buf.data();
            let wake = cx.wakers.target(self.key, self.id);
            let mut request = stages::Request {
                head: &mut cx.req_head,
                bytes: &data[..self.x.head_len],
                body: body.map(|(from, to)| &data[from..to]),
                plan: &mut self.plan,
                cx: stages::RequestCx {
                    snapshot: &cx.snapshot,
                    sticky: &cx.sticky,
                    sessions,
                    worker: cx.worker,
                    now: cx.now,
                    unix_now: cx.unix_now,
                    client: self.peer.ip(),
                    trusted: cx.listeners[self.listener as usize].trust_forwarded,
                    wake,
                    wakers: &cx.wakers,
                    store: cx.store.as_ref(),
                    metrics: &cx.metrics,
                    auth: cx.auth.as_deref(),
                    auth_cache: &mut cx.auth_cache,
                    opened_cookies: &mut cx.opened_cookies,
                    tls: cx.listeners[self.listener as usize].proto == "https",
                    counters: &cx.counters,
                    notify: cx.notify.as_deref(),
                    publish: cx.listeners[self.listener as usize].publish,
                    spool: cx.spool.as_deref(),
                    admin_listener: cx.listeners[self.listener as usize].admin,
                    admin: cx.admin.as_deref(),
                },
            };
            match stage(&mut request) {
                Verdict::Continue => self.plan.next_stage += 1,
                Verdict::Answer(answer) => return self.answer(cx, answer),
                Verdict::Wait(wait) => return self.park(cx, wait),
            }
        }
        self.forward_head(cx);
    }

    /// The request stages are done: count the request for its route and cluster, rewrite the head for
    /// the backend, and run the attempt stages.
    fn forward_head(&mut self, cx: &mut Ctx) {
        if let Some(snapshot) = &self.plan.snapshot {
            let m = &cx.metrics;
            if let Some(&id) = snapshot.route_metric.get(self.plan.route) {
                m.route_requests[id].inc();
            }
            if let Some(&id) = snapshot.cluster_metric.get(self.plan.cluster) {
                m.cluster_requests[id].inc();
            }
            if let (Some(log), Some(cluster)) = (&mut self.log, self.plan.cluster()) {
                log.set(Field::Cluster, cluster.name.as_bytes());
            }
        }
        let head_len = self.x.head_len;
        let Some(buf) = &mut self.in_buf else {
            return self.fail(cx, Termination::Internal("request head lost"));
        };
        let bytes = &buf.data()[..head_len];
        let pinned = self.plan.snapshot.as_deref().unwrap_or(&cx.snapshot);
        stages::strip_tether_headers(pinned, &self.plan, &mut cx.req_head, bytes);
        let mut out = cx.io.take_vec();
        let info = &cx.listeners[self.listener as usize];
        let fwd = ForwardContext {
            client_ip: self.peer_text,
            proto: info.proto,
            trust_forwarded: info.trust_forwarded,
            // The login session's cookie is a credential for tether, never for a backend.
            drop_cookie: pinned.auth.as_deref().map(|a| &*a.cookie),
        };
        write_request_head(&mut out, bytes, &cx.req_head, &fwd);
        // Who the user is, as tether vouches for it (the auth stage's blocks, written once per session).
        for block in [&self.plan.identity, &self.plan.upstream_token]
            .into_iter()
            .flatten()
        {
            out.extend_from_slice(block);
        }
        end_head(&mut out);
        self.req_out = Some(out);
        buf.consume(head_len);
        self.x.head_len = 0;
        self.run_attempt(cx);
    }

    /// Parks the request: it waits (no CPU spent) until it is woken or its deadline passes.
    pub(super) fn park(&mut self, cx: &mut Ctx, wait: Wait) {
        self.queue_interim(cx);
        if let Wait::Body { limit } = wait {
            let framing = match self.x.req_body {
                Body::Done => 0,
                Body::Length(n) => n,
                Body::Chunked | Body::UntilClose => {
                    return self.fail(cx, Termination::LengthRequired);
                }
            };
            if framing > limit as u64 {
                return self.fail(cx, Termination::BodyTooLarge);
            }
            self.x.body_len = framing as usize;
            if self.x.expect_continue && framing > 0 {
                // The client waits for our go-ahead before it sends the body.
                let out = self.resp_out.get_or_insert_with(|| cx.io.take_vec());
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                self.x.expect_continue = false;
            }
        }
        self.wait = Some(wait);
        self.phase = Phase::Waiting;
    }

    /// A parked request: see whether what it waits for has come, and run the waiting stage again.
    pub(super) fn step_waiting(&mut self, cx: &mut Ctx, sessions: &SessionReader<'_>) -> bool {
        let Some(wait) = &self.wait else {
            self.phase = Phase::Closed;
            return true;
        };
        if !matches!(wait, Wait::Body { .. }) && (self.io.read_closed || self.io.error) {
            // The client hung up while its request waited: give the place up now (HAProxy's
            // `abortonclose`), rather than hold a queue entry or a slot for no one.
            self.abort(cx, Termination::ClientClosed);
            return true;
        }
        match wait {
            Wait::Qos => {
                let granted = matches!(&self.plan.slot, Slot::Queued(w) if w.is_granted());
                if !granted {
                    return false;
                }
                self.wait = None;
                self.run_attempt(cx);
                true
            }
            Wait::Ticket { ticket, .. } => {
                if !ticket.is_done() {
                    return false;
                }
                self.wait = None;
                self.resume_request_stages(cx, sessions, None);
                true
            }
            Wait::Body { .. } => {
                // A 100 Continue goes out first.
                match self.write_client(cx, 0, false) {
                    Err(()) => return true,
                    Ok(Some(_)) => return true,
                    Ok(None) => {}
                }
                let (from, to) = (self.x.head_len, self.x.head_len + self.x.body_len);
                let buf = self.in_buf.get_or_insert_with(|| cx.io.buffers.get());
                if buf.len() >= to {
                    self.wait = None;
                    self.x.bytes_in += self.x.body_len as u64;
                    self.x.req_body = Body::Done;
                    self.resume_request_stages(cx, sessions, Some((from, to)));
                    return true;
                }
                if buf.free() == 0 && buf.capacity() < to {
                    // Rare path: an endpoint's body bigger than a buffer, within its limit.
                    buf.grow(to);
                }
                if !self.io.readable {
                    return false;
                }
                match self.client.read_into(&mut self.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_client_io = cx.now;
                        true
                    }
                    ReadOutcome::Blocked => false,
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        self.abort(cx, Termination::ClientClosed);
                        true
                    }
                }
            }
        }
    }

    /// Parses the head again (the worker's scratch head served other requests meanwhile) and goes on
    /// with the request stages.
    pub(super) fn resume_request_stages(
        &mut self,
        cx: &mut Ctx,
        sessions: &SessionReader<'_>,
        body: Option<(usize, usize)>,
    ) {
        let limits = cx.snapshot.limits;
        let Some(buf) = self.in_buf.as_ref() else {
            return self.fail(cx, Termination::Internal("request head lost"));
        };
        if let Err(e) = parse_request(&buf.data()[..self.x.head_len], &limits, &mut cx.req_head) {
            // It parsed before; only a changed limit (a reload) can refuse it now.
            return self.fail(cx, Termination::BadRequest(e));
        }
        self.run_request_stages(cx, sessions, body);
    }

    /// tether answers the request itself: a refusal closes the connection; a reply of its own is written
    /// and the connection goes on to the next request when the request allows it.
    pub(super) fn answer(&mut self, cx: &mut Ctx, answer: Answer) {
        self.queue_interim(cx);
        let reply = match answer {
            Answer::Refuse(term) => return self.fail(cx, term),
            Answer::Reply(reply) => reply,
            Answer::Stream(start) => return self.start_stream(cx, &start),
        };
        cx.metrics.answered.inc();
        // Whatever of the request is still in `in_buf` (its head, the body a stage read) is done with; a
        // body no stage read cannot be told from the next request, so the connection closes after.
        let consumed = self.x.head_len + self.x.body_len;
        if let Some(buf) = &mut self.in_buf {
            buf.consume(consumed.min(buf.len()));
        }
        self.x.head_len = 0;
        self.x.body_len = 0;
        let close = !self.x.keep_alive || cx.draining || self.x.req_body != Body::Done;
        let out = self.resp_out.get_or_insert_with(|| cx.io.take_vec());
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        crate::http::canned::write_head(
            out,
            reply.status,
            reply.content_type,
            reply.body.len(),
            close,
            &headers,
        );
        // A HEAD request gets the head only.
        if self.x.method != Method::Head {
            out.extend_from_slice(&reply.body);
        }
        self.close_after = close;
        self.x.status = reply.status;
        self.x.termination = Termination::Answered;
        self.x.response_started = true;
        self.x.response_us = Some(self.x.micros_since_start(cx.now));
        self.phase = Phase::Reply;
    }

    /// Queues the interim head a stage left in the plan (`104 Upload Resumption Supported`) ahead of
    /// whatever comes next: written with a body wait's `100 Continue`, or with the final answer. An
    /// HTTP/1.0 client gets none (RFC 9110 §15.2: it might take it for the answer).
    fn queue_interim(&mut self, cx: &mut Ctx) {
        let Some(interim) = self.plan.interim.take() else {
            return;
        };
        if self.x.version != Version::Http11 || self.x.response_started {
            return;
        }
        let out = self.resp_out.get_or_insert_with(|| cx.io.take_vec());
        let headers: Vec<(&str, &str)> = interim
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        crate::http::canned::write_interim(out, interim.status, &headers);
    }

    /// Writes tether's own reply; then the next request (or closing).
    pub(super) fn step_reply(&mut self, cx: &mut Ctx) -> bool {
        match self.write_client(cx, 0, false) {
            Err(()) => true,
            Ok(Some(_)) => true,
            Ok(None) if self.resp_out_pending() > 0 => false,
            Ok(None) => {
                if self.client.has_pending_output() {
                    return false;
                }
                self.finish_request(cx);
                if self.close_after {
                    self.begin_closing(cx);
                } else {
                    self.next_request(cx);
                }
                true
            }
        }
    }

    /// Answers `308 Permanent Redirect` to the same host and target on https (400 without a host).
    pub(super) fn redirect_to_https(&mut self, cx: &mut Ctx, head_len: usize) {
        let Some(buf) = self.in_buf.as_ref() else {
            return;
        };
        let bytes = &buf.data()[..head_len];
        let head = &cx.req_head;
        let Some(authority) = head
            .authority
            .map(|a| a.of(bytes))
            .filter(|a| !a.is_empty())
        else {
            self.fail(
                cx,
                Termination::BadRequest(crate::http::HttpError::bad_request(
                    "no host to redirect to",
                )),
            );
            return;
        };
        // Rare path: the Location value is built with one allocation. The port is dropped: https is
        // assumed on its default port.
        let host = if authority.first() == Some(&b'[') {
            // IPv6 literal: through the closing bracket.
            let end = authority
                .iter()
                .position(|&b| b == b']')
                .map_or(authority.len(), |i| i + 1);
            &authority[..end]
        } else {
            let end = authority
                .iter()
                .position(|&b| b == b':')
                .unwrap_or(authority.len());
            &authority[..end]
        };
        let mut location = String::from("https://");
        location.push_str(&String::from_utf8_lossy(host));
        if head.target_empty_path {
            location.push('/');
        }
        location.push_str(&String::from_utf8_lossy(head.target.of(bytes)));
        self.x.termination = Termination::RedirectHttps;
        let out = self.resp_out.get_or_insert_with(|| cx.io.take_vec());
        write_canned(
            out,
            308,
            &format!("moved to {location}"),
            true,
            &[("Location", location.as_str())],
        );
        self.x.status = 308;
        self.x.response_started = true;
        self.begin_closing(cx);
    }
}
