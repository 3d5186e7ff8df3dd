//! Reading a request head: TLS first bytes, parsing, the pipeline's request phases, https redirects.

use super::*;

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
        let buf = self.in_buf.get_or_insert_with(|| cx.buffers.get());
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
                    crate::tls::TlsStats::count(&cx.tls_stats.plain_http);
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
        if let Err(e) = parse_request(bytes, &limits, head) {
            if let Some(log) = &mut self.log {
                // The raw first line tells an operator what was refused.
                let line = bytes.split(|&b| b == b'\n').find(|l| l.len() > 1);
                log.set(Field::Target, line.unwrap_or(b"").trim_ascii_end());
            }
            self.fail(cx, Termination::BadRequest(e));
            return;
        }
        self.x.method = head.method;
        self.x.version = head.version;
        self.x.keep_alive = head.keep_alive();
        self.x.upgrade = head.upgrade;
        self.x.bytes_in = head_len as u64;
        if let Some(log) = &mut self.log {
            log.version = head.version;
            log.set(Field::Method, head.method_span.of(bytes));
            log.set(Field::Target, head.target.of(bytes));
            if let Some(a) = head.authority {
                log.set(Field::Host, a.of(bytes));
            }
            if let Some(ua) = head.header(bytes, "user-agent") {
                log.set(Field::UserAgent, ua);
            }
        }

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

        // The pipeline's request phases: route, then (later stages) auth and limits, then stickiness.
        let route_index = match pipeline::route(&cx.snapshot, head, bytes) {
            Ok(r) => r,
            Err(t) => {
                self.fail(cx, t);
                return;
            }
        };
        {
            // Borrow the snapshot and the other context fields side by side: no reference count is
            // touched per request.
            let snapshot = &*cx.snapshot;
            let Some(route) = snapshot.routes.get(route_index) else {
                return self.fail(cx, Termination::NoRoute);
            };
            let cluster = &snapshot.clusters[route.cluster];
            let head = &mut cx.req_head;
            self.x.route = route_index;
            self.x.cluster = route.cluster;
            self.x.generation = snapshot.generation;
            let trusted = cx.listeners[self.listener as usize].trust_forwarded;
            self.x.priority = pipeline::priority(snapshot, route, head, bytes, trusted);
            self.x.hash_key = balance::hash_key(cluster, head, bytes, self.peer.ip());
            self.x.sticky = pipeline::identify_session(
                &cx.sticky,
                sessions,
                route,
                head,
                bytes,
                self.peer.ip(),
                cx.worker,
                cx.unix_now,
                cluster,
            );
            if let Some(log) = &mut self.log {
                log.set(Field::Cluster, cluster.name.as_bytes());
            }
            // A trusted upstream's priority header is for tether, not the backend.
            if let Some(name) = &snapshot.qos_priority_header {
                for h in head.headers.iter_mut() {
                    if h.name.of(bytes).eq_ignore_ascii_case(name.as_bytes()) {
                        h.hop_by_hop = true;
                    }
                }
            }
        }
        let head = &cx.req_head;

        let mut out = std::mem::take(&mut cx.scratch_vec);
        let info = &cx.listeners[self.listener as usize];
        let fwd = ForwardContext {
            client_ip: self.peer_text,
            proto: info.proto,
            trust_forwarded: info.trust_forwarded,
        };
        write_request_head(&mut out, bytes, head, &fwd);
        end_head(&mut out);
        self.req_out = Some(out);
        self.x.req_body = match head.framing {
            BodyFraming::None | BodyFraming::Length(0) => Body::Done,
            BodyFraming::Length(n) => Body::Length(n),
            BodyFraming::Chunked => Body::Chunked,
        };
        self.x.req_has_body = self.x.req_body != Body::Done;
        cx.scratch_vec = cx.take_vec();
        if let Some(buf) = &mut self.in_buf {
            buf.consume(head_len);
        }
        self.scanner.reset();
        cx.stats.requests += 1;
        self.attach_upstream(cx, None);
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
        let out = self.resp_out.get_or_insert_with(|| cx.take_vec());
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
