//! The exchange: request body to the backend, response heads and body to the client, completion.

use super::*;

impl Session {
    pub(super) fn step_exchange(&mut self, cx: &mut Ctx) -> bool {
        let mut progress = self.pump_request(cx);
        if self.phase != Phase::Exchange {
            return true;
        }
        progress |= self.pump_response(cx);
        if self.phase != Phase::Exchange {
            return true;
        }
        let flushed = self.resp_out_pending() == 0 && self.x.resp_pending == 0;
        if self.x.resp == ResponseState::Done && flushed {
            self.complete(cx);
            return true;
        }
        progress
    }

    pub(super) fn request_done(&self) -> bool {
        self.x.req_body == Body::Done
            && self.x.req_pending == 0
            && self
                .req_out
                .as_ref()
                .is_none_or(|o| self.x.head_sent == o.len())
    }

    /// Request side: frame newly arrived body bytes, write head and body to the backend, read more body.
    pub(super) fn pump_request(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            return false;
        };
        let mut progress = false;
        {
            let u = &mut cx.upstreams.slab[key];
            if u.stream.has_pending_output() && u.io.writable {
                if let Err(e) = u.stream.flush(&mut u.io) {
                    log::debug!("TLS write to backend failed: {e}");
                    self.upstream_failed(cx, Termination::UpstreamClosed, Retry::IfReplayable);
                    return true;
                }
            }
        }

        // Frame body bytes that arrived since the last turn.
        if let Some(buf) = &self.in_buf {
            let fresh = &buf.data()[self.x.req_pending..];
            if !fresh.is_empty() {
                match &mut self.x.req_body {
                    Body::Length(rest) => {
                        let n = (*rest).min(fresh.len() as u64);
                        self.x.req_pending += n as usize;
                        *rest -= n;
                        if *rest == 0 {
                            self.x.req_body = Body::Done;
                        }
                        self.x.bytes_in += n;
                    }
                    Body::Chunked => match self.x.req_chunks.advance(fresh) {
                        Ok((n, done)) => {
                            self.x.req_pending += n;
                            self.x.bytes_in += n as u64;
                            if done {
                                self.x.req_body = Body::Done;
                            }
                        }
                        Err(e) => {
                            // Nothing invalid was forwarded, but the backend holds half a request.
                            if let Some(k) = self.end_attempt(cx, AttemptOutcome::Abandoned) {
                                cx.upstreams.close(k);
                            }
                            self.respond_or_abort(cx, Termination::BadRequest(e));
                            return true;
                        }
                    },
                    Body::Done | Body::UntilClose => {}
                }
            }
        }

        // Write what is ready: the rest of the head, then validated body bytes, in one call.
        let u = &mut cx.upstreams.slab[key];
        let head: &[u8] = match &self.req_out {
            Some(o) => &o[self.x.head_sent..],
            None => &[],
        };
        let body: &[u8] = match &self.in_buf {
            Some(b) => &b.data()[..self.x.req_pending],
            None => &[],
        };
        if (!head.is_empty() || !body.is_empty()) && u.io.writable {
            let head_len = head.len();
            // More of this request's body already waits in the client socket: let the kernel merge.
            let more = self.x.req_body != Body::Done && self.io.readable;
            match u.stream.write_two(&mut u.io, head, body, more) {
                WriteOutcome::Wrote(n) => {
                    let h = n.min(head_len);
                    self.x.head_sent += h;
                    let b = n - h;
                    if b > 0 {
                        if let Some(buf) = &mut self.in_buf {
                            buf.consume(b);
                        }
                        self.x.req_pending -= b;
                    }
                    self.x.request_written = true;
                    self.last_upstream_io = cx.now;
                    progress = true;
                }
                WriteOutcome::Blocked => {}
                WriteOutcome::Error(e) => {
                    log::debug!("write to backend failed: {e}");
                    let term = if u.stream.is_handshaking() {
                        Termination::UpstreamTls(crate::tls::stream::describe(&e))
                    } else {
                        Termination::UpstreamClosed
                    };
                    self.upstream_failed(cx, term, Retry::IfReplayable);
                    return true;
                }
            }
        }

        // Read more of the body from the client.
        if self.x.req_body != Body::Done && self.io.readable {
            let buf = self.in_buf.get_or_insert_with(|| cx.io.buffers.get());
            if buf.free() > 0 {
                match self.client.read_into(&mut self.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_client_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        self.abort(cx, Termination::ClientClosed);
                        return true;
                    }
                }
            }
        }
        progress
    }

    /// Response side: read from the backend, parse heads, frame the body, write to the client.
    pub(super) fn pump_response(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            return false;
        };
        let mut progress = false;

        // Read.
        let u = &mut cx.upstreams.slab[key];
        if u.io.readable && !self.x.upstream_eof {
            let buf = self.up_buf.get_or_insert_with(|| cx.io.buffers.get());
            if buf.free() > 0 {
                match u.stream.read_into(&mut u.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.x.response_received = true;
                        self.last_upstream_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof => {
                        self.x.upstream_eof = true;
                        progress = true;
                    }
                    ReadOutcome::Error(e) => {
                        log::debug!("read from backend failed: {e}");
                        if u.stream.tls.is_some() && !self.x.response_received {
                            let reason = crate::tls::stream::describe(&e);
                            self.upstream_failed(
                                cx,
                                Termination::UpstreamTls(reason),
                                Retry::IfReplayable,
                            );
                            return true;
                        }
                        self.x.upstream_eof = true;
                        progress = true;
                    }
                }
            }
        }

        // Heads: 1xx are forwarded and skipped; the final head is rewritten for the client.
        let request_done = self.request_done();
        if self.x.resp == ResponseState::Head && self.resp_out.is_none() {
            self.resp_out = Some(cx.io.take_vec());
        }
        while self.x.resp == ResponseState::Head {
            // Interim heads the client has not taken yet bound what is queued for it: further ones wait
            // in `up_buf` (and the backend in its socket), else a 1xx flood grows `resp_out` without end.
            if self.resp_out_pending() > cx.snapshot.limits.max_head_size {
                break;
            }
            let Some(buf) = &mut self.up_buf else { break };
            if buf.is_empty() {
                break;
            }
            let limits = cx.snapshot.limits;
            let len = match self.resp_scanner.scan(buf.data(), &limits) {
                Err(e) => {
                    let reason = if e.status == 431 {
                        "response head too large"
                    } else {
                        e.reason
                    };
                    self.upstream_failed(cx, Termination::BadResponse(reason), Retry::IfReplayable);
                    return true;
                }
                Ok(None) => {
                    if buf.free() == 0 && buf.capacity() < limits.max_head_size + 1 {
                        buf.grow(limits.max_head_size + 1);
                    }
                    break;
                }
                Ok(Some(len)) => len,
            };
            let bytes = &buf.data()[..len];
            let head = &mut cx.resp_head;
            if let Err(e) = parse_response(bytes, &limits, self.x.method, head) {
                self.upstream_failed(cx, Termination::BadResponse(e.reason), Retry::IfReplayable);
                return true;
            }
            self.resp_scanner.reset();
            progress = true;
            let out = self.resp_out.get_or_insert_with(Vec::new);
            debug_assert!(self.resp_out_sent <= out.len());
            if head.status < 200 {
                if head.status == 101 {
                    if !self.x.upgrade {
                        self.upstream_failed(
                            cx,
                            Termination::BadResponse("101 without upgrade"),
                            Retry::IfReplayable,
                        );
                        return true;
                    }
                    let opts = ResponseOptions {
                        upgrade: true,
                        ..ResponseOptions::default()
                    };
                    write_response_head(out, bytes, head, &opts);
                    end_head(out);
                    self.x.status = 101;
                    self.x.response_started = true;
                    self.x.response_us = Some(self.x.micros_since_start(cx.now));
                    buf.consume(len);
                    self.enter_tunnel(cx);
                    return true;
                }
                // Other interim responses reach HTTP/1.1 clients only (RFC 9110 §15.2).
                if self.x.version == Version::Http11 {
                    write_response_head(out, bytes, head, &ResponseOptions::default());
                    end_head(out);
                }
                buf.consume(len);
                continue;
            }

            let close = !self.x.keep_alive
                || cx.draining
                || !request_done
                || head.framing == ResponseFraming::UntilClose;
            let opts = ResponseOptions {
                close,
                keep_alive_http10: !close && self.x.version == Version::Http10,
                upgrade: false,
            };
            write_response_head(out, bytes, head, &opts);
            // Response hooks: headers tether adds to the final response head.
            let mut response = stages::Response {
                store: cx.store.as_ref(),
                out,
                head,
                bytes,
                plan: &mut self.plan,
                sticky: &cx.sticky,
                worker: cx.worker,
                unix_now: cx.unix_now,
                secure: cx.listeners[self.listener as usize].proto == "https",
                notify: cx.notify.as_deref(),
            };
            for (_, hook) in stages::RESPONSE_HOOKS {
                hook(&mut response);
            }
            end_head(out);
            self.close_after = close;
            self.x.status = head.status;
            self.x.response_started = true;
            self.x.response_us = Some(self.x.micros_since_start(cx.now));
            self.x.attempt_latency_us = Some(
                cx.now
                    .saturating_duration_since(self.x.connect_started)
                    .as_micros() as u64,
            );
            // Backends are spoken to in the client's version; only 1.1 connections are kept.
            self.x.upstream_reusable = head.reusable() && self.x.version == Version::Http11;
            self.x.resp_body = match head.framing {
                ResponseFraming::None | ResponseFraming::Length(0) => Body::Done,
                ResponseFraming::Length(n) => Body::Length(n),
                ResponseFraming::Chunked => Body::Chunked,
                ResponseFraming::UntilClose => Body::UntilClose,
            };
            self.x.resp = if self.x.resp_body == Body::Done {
                ResponseState::Done
            } else {
                ResponseState::Body
            };
            buf.consume(len);
            // The response has started: the request can no longer be replayed.
            if let Some(o) = self.req_out.take() {
                if self.x.head_sent < o.len() {
                    self.x.upstream_reusable = false;
                    self.close_after = true;
                }
                cx.io.put_vec(o);
                self.x.head_sent = 0;
            }
        }

        if self.x.resp == ResponseState::Head && self.x.upstream_eof {
            // Closed (or reset) before a complete head.
            self.upstream_failed(cx, Termination::UpstreamClosed, Retry::IfReplayable);
            return true;
        }

        // Frame body bytes.
        if self.x.resp == ResponseState::Body {
            if let Some(buf) = &self.up_buf {
                let fresh = &buf.data()[self.x.resp_pending..];
                match &mut self.x.resp_body {
                    Body::Length(rest) => {
                        let n = (*rest).min(fresh.len() as u64);
                        self.x.resp_pending += n as usize;
                        *rest -= n;
                        if *rest == 0 {
                            self.x.resp_body = Body::Done;
                        }
                    }
                    Body::Chunked if !fresh.is_empty() => match self.x.resp_chunks.advance(fresh) {
                        Ok((n, done)) => {
                            self.x.resp_pending += n;
                            if done {
                                self.x.resp_body = Body::Done;
                            }
                        }
                        Err(_) => {
                            self.bad_response_body(
                                cx,
                                Termination::BadResponse("invalid chunked body"),
                            );
                            return true;
                        }
                    },
                    Body::UntilClose => {
                        self.x.resp_pending += fresh.len();
                        if self.x.upstream_eof {
                            self.x.resp_body = Body::Done;
                        }
                    }
                    Body::Chunked | Body::Done => {}
                }
            }
            if self.x.resp_body == Body::Done {
                self.x.resp = ResponseState::Done;
            } else if self.x.upstream_eof && self.x.resp_pending == 0 {
                // The backend closed mid-body; what it sent was forwarded, the client sees the cut.
                self.bad_response_body(cx, Termination::UpstreamClosed);
                return true;
            }
        }

        // Write to the client: our head bytes first, then validated body bytes, in one call. The rest
        // of the response may already wait in the backend socket (our last read filled the buffer):
        // then let the kernel send both parts as one, as HAProxy does with MSG_MORE.
        let more = self.x.resp == ResponseState::Body
            && !self.x.upstream_eof
            && cx.upstreams.slab.get(key).is_some_and(|u| u.io.readable);
        match self.write_client(cx, self.x.resp_pending, more) {
            Err(()) => return true,
            Ok(Some(body)) => {
                self.x.resp_pending -= body;
                progress = true;
            }
            Ok(None) => {}
        }
        progress
    }

    /// Writes our pending head bytes, then the first `body_len` bytes of `up_buf`, to the client in one
    /// call. `Ok(Some(n))`: progress, `n` of them body bytes (consumed from `up_buf`); `Ok(None)`: nothing
    /// to write or the socket is full; `Err`: the client is gone and the session was aborted.
    pub(super) fn write_client(
        &mut self,
        cx: &mut Ctx,
        body_len: usize,
        more: bool,
    ) -> Result<Option<usize>, ()> {
        let head: &[u8] = match &self.resp_out {
            Some(o) => &o[self.resp_out_sent..],
            None => &[],
        };
        let body: &[u8] = match &self.up_buf {
            Some(b) => &b.data()[..body_len],
            None => &[],
        };
        if (head.is_empty() && body.is_empty()) || !self.io.writable {
            return Ok(None);
        }
        let head_len = head.len();
        match self.client.write_two(&mut self.io, head, body, more) {
            WriteOutcome::Wrote(n) => {
                let h = n.min(head_len);
                self.resp_out_sent += h;
                let b = n - h;
                if b > 0 {
                    if let Some(buf) = &mut self.up_buf {
                        buf.consume(b);
                    }
                }
                self.x.bytes_out += n as u64;
                self.last_client_io = cx.now;
                if self.resp_out_pending() == 0 {
                    self.recycle_resp_out(cx);
                }
                Ok(Some(b))
            }
            WriteOutcome::Blocked => Ok(None),
            WriteOutcome::Error(_) => {
                self.abort(cx, Termination::ClientClosed);
                Err(())
            }
        }
    }

    pub(super) fn resp_out_pending(&self) -> usize {
        self.resp_out
            .as_ref()
            .map_or(0, |o| o.len() - self.resp_out_sent)
    }

    pub(super) fn recycle_resp_out(&mut self, cx: &mut Ctx) {
        if let Some(o) = self.resp_out.take() {
            cx.io.put_vec(o);
        }
        self.resp_out_sent = 0;
    }

    /// The response was delivered: log, park or close the backend connection, and go on to the next
    /// request (or close).
    pub(super) fn complete(&mut self, cx: &mut Ctx) {
        let request_done = self.request_done();
        let leftover = self.up_buf.as_ref().is_some_and(|b| !b.is_empty());
        let outcome = AttemptOutcome::Response {
            status: self.x.status,
            latency_us: self.x.attempt_latency_us.unwrap_or(0),
        };
        if let Some(key) = self.end_attempt(cx, outcome) {
            let reusable = self.x.upstream_reusable
                && request_done
                && !self.x.upstream_eof
                && !leftover
                && !cx.draining;
            self.release_upstream(cx, key, reusable);
        }
        if let Some(buf) = self.up_buf.take() {
            cx.io.buffers.put(buf);
        }
        if let Some(o) = self.req_out.take() {
            cx.io.put_vec(o);
        }
        self.finish_request(cx);
        if self.close_after || !request_done || cx.draining {
            self.begin_closing(cx);
        } else {
            self.next_request(cx);
        }
    }

    /// Ready for the next request on this connection.
    pub(super) fn next_request(&mut self, cx: &mut Ctx) {
        self.plan.reset();
        self.x.reset(cx.now);
        self.phase = Phase::ReadHead;
    }

    /// The response body's framing is broken (or the backend closed mid-body). If nothing of the response
    /// reached the client yet (its head is still queued), the client gets a 502 instead of a cut: the
    /// queued head and body bytes are dropped. Otherwise the connection is cut.
    fn bad_response_body(&mut self, cx: &mut Ctx, term: Termination) {
        if self.resp_out_sent == 0 && self.x.bytes_out == 0 && !self.client.has_pending_output() {
            self.recycle_resp_out(cx);
            self.x.resp_pending = 0;
            self.x.response_started = false;
            self.x.status = 0;
            self.upstream_failed(cx, term, Retry::Never);
        } else {
            self.abort(cx, term);
        }
    }

    pub(super) fn release_upstream(&mut self, cx: &mut Ctx, key: usize, reusable: bool) {
        let ups = &mut cx.upstreams;
        let backend = ups.slab[key].backend.id;
        if reusable && ups.pool.put(backend, key) {
            let idle = cx.snapshot.timeouts.upstream_idle;
            ups.detach();
            let u = &mut ups.slab[key];
            u.session = None;
            let token = upstream_token(key).0;
            u.deadline
                .set(&mut cx.io.timers, token, u.id, cx.now + idle);
        } else {
            ups.close(key);
        }
    }
}
