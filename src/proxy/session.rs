//! A client connection's state machine: read a request head, run the pipeline, exchange with a backend,
//! answer, and start over (keep-alive) or close. See `LIFECYCLE.md` beside this file.
//!
//! Data is never copied between buffers: request bytes are read into `in_buf` and written to the backend
//! straight from it (the rewritten head goes first from `req_out`, in the same `writev`); response bytes
//! are read into `up_buf` and written to the client the same way. Body framing is validated as bytes pass
//! (`*_pending` counts the validated bytes at the front of a buffer that may be sent), so a backend or a
//! client only ever receives bytes whose framing tether has checked.

use super::context::{Ctx, upstream_token};
use super::io::{ReadOutcome, Readiness, Transport, WriteOutcome};
use super::pipeline;
use super::upstream::{self, Upstream};
use crate::access_log::{AccessRecord, Field};
use crate::balance::{self, AttemptOutcome, BackendId, Cluster, PickContext};
use crate::config::{FailoverPolicy, SessionIdentity};
use crate::error::Termination;
use crate::http::canned::write_canned;
use crate::http::{
    BodyFraming, ChunkedDecoder, ForwardContext, HeadScanner, Method, ResponseFraming,
    ResponseOptions, Version, end_head, parse_request, parse_response, write_request_head,
    write_response_head,
};
use crate::qos::{Admission, Waiter};
use crate::runtime::buffer::Buffer;
use crate::runtime::timer::Deadline;
use crate::sticky::table::SessionKey;
use mio::Interest;
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request head: idle between requests, or part of a head received.
    ReadHead,
    /// Routed and balanced, waiting in the backend's QoS queue for a slot (no CPU is spent waiting).
    Queued,
    /// Routed and balanced; the backend connection is being established.
    Connect,
    /// Request and response flowing between client and backend.
    Exchange,
    /// Protocol switched (101): raw bytes both ways until both sides close.
    Tunnel,
    /// A final answer is being flushed; then the write side is shut and input drained until EOF.
    Closing,
    /// Done: the worker frees the session.
    Closed,
}

/// How much of a message body is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Fully received (or none).
    Done,
    /// This many bytes are still to be received.
    Length(u64),
    /// Chunked; the decoder knows where it ends.
    Chunked,
    /// Ends when the backend closes.
    UntilClose,
}

/// The response side of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseState {
    /// Waiting for the (final) response head; 1xx heads are forwarded on the way.
    Head,
    /// Receiving the body.
    Body,
    /// All body bytes received and validated (some may still be waiting to be written).
    Done,
}

/// What a secure request knows about its session.
#[derive(Debug, Clone, Copy)]
pub(super) struct StickyRequest {
    /// The session key; `None` until learned (a backend's cookie not seen yet).
    pub key: Option<SessionKey>,
    /// The backend the session is bound to, from the table or a cookie.
    pub preferred: Option<BackendId>,
    /// The SSL context (backend connection id) the session last used.
    pub ssl_context: u64,
    /// The table holds a binding for `key`.
    pub bound: bool,
    /// Insert mode: send a fresh sealed cookie with the response.
    pub issue_cookie: bool,
}

/// Per-request state, reset for each request on the connection.
#[derive(Debug)]
struct Exchange {
    /// The first byte of this request arrived.
    started: bool,
    started_at: Instant,
    method: Method,
    version: Version,
    keep_alive: bool,
    upgrade: bool,
    cluster: usize,
    /// Index of the matched route in the snapshot's route table.
    route: usize,
    /// Snapshot generation `cluster` and `route` index into.
    generation: u64,
    /// QoS priority of this request (0–7).
    priority: u8,
    /// Stickiness of a request on a secure route.
    sticky: Option<StickyRequest>,
    /// The QoS slot for the chosen backend is already held (admitted or granted).
    slot_held: bool,
    /// While queued: the ticket in the backend's queue.
    waiter: Option<Arc<Waiter>>,
    queued_at: Option<Instant>,
    queue_us: Option<u64>,
    /// Backend of the last attempt (to avoid it on retry) and attempts made.
    backend: Option<(BackendId, SocketAddr)>,
    attempts: u32,
    /// The backend's state was told an attempt started and not yet that it ended.
    attempt_open: bool,
    /// Hash key for hash-based balancing, computed once per request.
    hash_key: Option<u64>,
    /// Backend latency of the current attempt: assignment to response head.
    attempt_latency_us: Option<u64>,
    /// Bytes of `req_out` already written to the backend.
    head_sent: usize,
    /// Any request byte reached the backend on the current attempt.
    request_written: bool,
    req_body: Body,
    /// The request has a body (its bytes leave `in_buf` as they are sent, so it cannot be replayed).
    req_has_body: bool,
    req_chunks: ChunkedDecoder,
    /// Validated request body bytes at the front of `in_buf`, not yet written.
    req_pending: usize,
    resp: ResponseState,
    resp_body: Body,
    resp_chunks: ChunkedDecoder,
    /// Validated response bytes at the front of `up_buf`, not yet written.
    resp_pending: usize,
    /// Any byte came back from the backend on the current attempt.
    response_received: bool,
    /// A final response head was queued to the client: a canned error can no longer be sent.
    response_started: bool,
    upstream_eof: bool,
    upstream_reusable: bool,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    connect_started: Instant,
    connect_us: Option<u64>,
    response_us: Option<u64>,
    termination: Termination,
}

impl Exchange {
    fn new(now: Instant) -> Self {
        Exchange {
            started: false,
            started_at: now,
            method: Method::Get,
            version: Version::Http11,
            keep_alive: true,
            upgrade: false,
            cluster: 0,
            route: 0,
            generation: 0,
            priority: 0,
            sticky: None,
            slot_held: false,
            waiter: None,
            queued_at: None,
            queue_us: None,
            backend: None,
            attempts: 0,
            attempt_open: false,
            hash_key: None,
            attempt_latency_us: None,
            head_sent: 0,
            request_written: false,
            req_body: Body::Done,
            req_has_body: false,
            req_chunks: ChunkedDecoder::new(),
            req_pending: 0,
            resp: ResponseState::Head,
            resp_body: Body::Done,
            resp_chunks: ChunkedDecoder::new(),
            resp_pending: 0,
            response_received: false,
            response_started: false,
            upstream_eof: false,
            upstream_reusable: false,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            connect_started: now,
            connect_us: None,
            response_us: None,
            termination: Termination::Completed,
        }
    }

    /// Ready for the next request; the decoders keep their (allocation-free) state objects.
    fn reset(&mut self, now: Instant) {
        let mut req_chunks = std::mem::take(&mut self.req_chunks);
        let mut resp_chunks = std::mem::take(&mut self.resp_chunks);
        req_chunks.reset();
        resp_chunks.reset();
        *self = Exchange {
            req_chunks,
            resp_chunks,
            ..Exchange::new(now)
        };
    }

    fn micros_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started_at).as_micros() as u64
    }
}

/// One client connection.
pub struct Session {
    /// This session's slab key (upstreams point back to it).
    pub key: usize,
    pub id: u64,
    client: Transport,
    pub io: Readiness,
    peer: SocketAddr,
    /// The client address as forwarding headers write it, formatted once per connection.
    peer_text: crate::http::rewrite::IpText,
    listener: u16,
    pub phase: Phase,
    pub deadline: Deadline,
    /// Already in the worker's run queue.
    pub queued: bool,
    in_buf: Option<Buffer>,
    up_buf: Option<Buffer>,
    /// Rewritten request head for the backend (kept until the response starts, for retries).
    req_out: Option<Vec<u8>>,
    /// Bytes for the client that tether wrote itself (response heads, canned answers).
    resp_out: Option<Vec<u8>>,
    resp_out_sent: usize,
    scanner: HeadScanner,
    resp_scanner: HeadScanner,
    upstream: Option<usize>,
    x: Exchange,
    requests: u32,
    last_client_io: Instant,
    last_upstream_io: Instant,
    closing_since: Instant,
    /// Close the client connection once the current response is written.
    close_after: bool,
    shutdown_sent: bool,
    client_eof: bool,
    log: Option<Box<AccessRecord>>,
    accepted_at: Instant,
    /// TLS listener: the first bytes were checked for plain HTTP.
    tls_checked: bool,
    /// Plain HTTP arrived on a TLS listener: the request is parsed only to answer it (400 or redirect).
    plain_on_tls: bool,
}

/// State-machine steps one session may take per event-loop turn. A step moves at most a buffer (16 KiB
/// by default) each way, so a bulk transfer yields after about a megabyte and small requests on the same
/// worker are not held up behind it.
const STEPS_PER_TURN: u32 = 64;

/// Longest a closing connection lingers to drain client input after the answer (avoids an RST that
/// would destroy the answer in flight).
const LINGER: Duration = Duration::from_secs(2);

impl Session {
    pub fn new(
        key: usize,
        id: u64,
        client: Transport,
        peer: SocketAddr,
        listener: u16,
        now: Instant,
    ) -> Self {
        Session {
            key,
            id,
            client,
            // Clients usually send their request right behind the handshake: try reading at once.
            io: Readiness {
                readable: true,
                writable: true,
                ..Readiness::default()
            },
            peer,
            peer_text: crate::http::rewrite::IpText::new(peer.ip()),
            listener,
            phase: Phase::ReadHead,
            deadline: Deadline::default(),
            queued: false,
            in_buf: None,
            up_buf: None,
            req_out: None,
            resp_out: None,
            resp_out_sent: 0,
            scanner: HeadScanner::default(),
            resp_scanner: HeadScanner::default(),
            upstream: None,
            x: Exchange::new(now),
            requests: 0,
            last_client_io: now,
            last_upstream_io: now,
            closing_since: now,
            close_after: false,
            shutdown_sent: false,
            client_eof: false,
            log: None,
            accepted_at: now,
            tls_checked: false,
            plain_on_tls: false,
        }
    }

    pub fn client_mut(&mut self) -> &mut TcpStream {
        &mut self.client.sock
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Runs the state machine until nothing more can happen without new readiness or time.
    /// Returns `true` when the session stopped with work left (its turn's budget was used up): the
    /// worker runs it again on its next loop turn, after every other ready socket had its chance.
    pub fn drive(&mut self, cx: &mut Ctx) -> bool {
        let mut budget = STEPS_PER_TURN;
        let mut yielded = false;
        loop {
            if budget == 0 {
                yielded = true;
                break;
            }
            budget -= 1;
            // TLS records sealed earlier go out as soon as the socket takes them.
            if self.client.has_pending_output() && self.io.writable {
                if let Err(e) = self.client.flush(&mut self.io) {
                    log::debug!("client {}: TLS write failed: {e}", self.peer);
                    self.abort(cx, Termination::ClientClosed);
                }
            }
            let progress = match self.phase {
                Phase::ReadHead => self.step_read_head(cx),
                Phase::Queued => self.step_queued(cx),
                Phase::Connect => self.step_connect(cx),
                Phase::Exchange => self.step_exchange(cx),
                Phase::Tunnel => self.step_tunnel(cx),
                Phase::Closing => self.step_closing(cx),
                Phase::Closed => false,
            };
            if !progress {
                break;
            }
        }
        if self.phase != Phase::Closed {
            self.release_idle_buffers(cx);
            self.arm_deadline(cx);
        }
        yielded && self.phase != Phase::Closed
    }

    // ----- reading a request head -------------------------------------------------------------------

    fn step_read_head(&mut self, cx: &mut Ctx) -> bool {
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
                        self.on_request_head(cx, len);
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
    fn check_plain_http(&mut self, cx: &mut Ctx) -> bool {
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
    fn tls_handshake_failed(&mut self, cx: &mut Ctx, reason: &'static str) {
        if let Some(tls) = &mut self.client.tls {
            tls.abandon();
        }
        log::debug!("client {}: TLS handshake failed: {reason}", self.peer);
        self.begin_request(cx);
        self.x.termination = Termination::TlsHandshake(reason);
    }

    /// The first byte of a request arrived: start its clock and its log record.
    fn begin_request(&mut self, cx: &mut Ctx) {
        self.x.started = true;
        self.x.started_at = cx.now;
        if let Some(log) = &cx.access_log {
            let mut record = self.log.take().unwrap_or_else(|| log.record());
            record.reset(SystemTime::now(), self.peer, self.listener);
            self.log = Some(record);
        }
    }

    fn on_request_head(&mut self, cx: &mut Ctx, head_len: usize) {
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
    fn redirect_to_https(&mut self, cx: &mut Ctx, head_len: usize) {
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

    // ----- choosing and connecting to a backend ------------------------------------------------------

    /// Chooses the backend — the session's own for a secure request, else the balancer's pick, avoiding
    /// `avoid` (which just failed) — takes a QoS slot on it (or queues), and attaches a connection.
    fn attach_upstream(&mut self, cx: &mut Ctx, avoid: Option<BackendId>) {
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
    fn step_queued(&mut self, cx: &mut Ctx) -> bool {
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
    fn leave_queue(&mut self, cx: &mut Ctx) {
        let Some(waiter) = self.x.waiter.take() else {
            return;
        };
        let Some((id, _)) = self.x.backend else {
            return;
        };
        let Some(b) = cx
            .snapshot
            .clusters
            .get(self.x.cluster)
            .and_then(|c| c.backend(id))
            .map(|b| b.state.clone())
        else {
            return;
        };
        if !b.queue.cancel(&waiter) {
            b.release_slot();
            if let Some(w) = b.queue.release(&b, cx.now) {
                cx.deliver_grant(&w);
            }
        }
    }

    /// Attaches a connection to the chosen backend (`x.backend`): the session's own SSL context or any
    /// idle pooled connection, else a new one.
    fn connect_backend(&mut self, cx: &mut Ctx) {
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
        cx.stats.upstream_connects += 1;
        self.upstream = Some(key);
        self.note_ssl_context(cx, id);
        self.phase = Phase::Connect;
    }

    /// Remembers which backend connection (SSL context) a secure session's request rides.
    fn note_ssl_context(&mut self, cx: &Ctx, connection: u64) {
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
    fn give_back_slot(&mut self, cx: &mut Ctx, id: BackendId) {
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

    fn step_connect(&mut self, cx: &mut Ctx) -> bool {
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
    fn end_attempt(&mut self, cx: &mut Ctx, outcome: AttemptOutcome) -> Option<usize> {
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
    fn upstream_failed(&mut self, cx: &mut Ctx, term: Termination) {
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

    // ----- the exchange -----------------------------------------------------------------------------

    fn step_exchange(&mut self, cx: &mut Ctx) -> bool {
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

    fn request_done(&self) -> bool {
        self.x.req_body == Body::Done
            && self.x.req_pending == 0
            && self
                .req_out
                .as_ref()
                .is_none_or(|o| self.x.head_sent == o.len())
    }

    /// Request side: frame newly arrived body bytes, write head and body to the backend, read more body.
    fn pump_request(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            return false;
        };
        let mut progress = false;
        {
            let u = &mut cx.upstreams[key];
            if u.stream.has_pending_output() && u.io.writable {
                if let Err(e) = u.stream.flush(&mut u.io) {
                    log::debug!("TLS write to backend failed: {e}");
                    self.upstream_failed(cx, Termination::UpstreamClosed);
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
                                cx.close_upstream(k);
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
        let u = &mut cx.upstreams[key];
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
                    self.upstream_failed(cx, term);
                    return true;
                }
            }
        }

        // Read more of the body from the client.
        if self.x.req_body != Body::Done && self.io.readable {
            let buf = self.in_buf.get_or_insert_with(|| cx.buffers.get());
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
    fn pump_response(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            return false;
        };
        let mut progress = false;

        // Read.
        let u = &mut cx.upstreams[key];
        if u.io.readable && !self.x.upstream_eof {
            let buf = self.up_buf.get_or_insert_with(|| cx.buffers.get());
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
                            self.upstream_failed(cx, Termination::UpstreamTls(reason));
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
            self.resp_out = Some(cx.take_vec());
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
                    self.upstream_failed(cx, Termination::BadResponse(reason));
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
                self.upstream_failed(cx, Termination::BadResponse(e.reason));
                return true;
            }
            self.resp_scanner.reset();
            progress = true;
            let out = self.resp_out.get_or_insert_with(Vec::new);
            debug_assert!(self.resp_out_sent <= out.len());
            if head.status < 200 {
                if head.status == 101 {
                    if !self.x.upgrade {
                        self.upstream_failed(cx, Termination::BadResponse("101 without upgrade"));
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
            if let Some(st) = &mut self.x.sticky {
                let route = cx.snapshot.routes.get(self.x.route);
                let identity = route
                    .filter(|_| cx.snapshot.generation == self.x.generation)
                    .and_then(|r| r.session.as_ref());
                let backend = self.x.backend;
                match (identity, backend) {
                    (Some(SessionIdentity::Insert(name)), Some((_, address)))
                        if st.issue_cookie =>
                    {
                        if let Some(key) = st.key {
                            let secure = cx.listeners[self.listener as usize].proto == "https";
                            cx.sticky.write_set_cookie(
                                out,
                                name,
                                key,
                                address,
                                cx.unix_now,
                                secure,
                            );
                            st.issue_cookie = false;
                        }
                    }
                    (Some(SessionIdentity::Learn(name)), Some((id, _))) => {
                        // The backend set (or changed) its session cookie: bind that session here.
                        if let Some(value) = crate::http::cookie::response_set_cookie(
                            &head.headers,
                            bytes,
                            name.as_bytes(),
                        ) {
                            let key = cx.sticky.learned_key(value);
                            if st.key != Some(key) || !st.bound {
                                cx.sticky.table.bind(cx.worker, key, id, cx.unix_now);
                                st.key = Some(key);
                                st.bound = true;
                                st.preferred = Some(id);
                            }
                        }
                    }
                    _ => {}
                }
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
                cx.put_vec(o);
                self.x.head_sent = 0;
            }
        }

        if self.x.resp == ResponseState::Head && self.x.upstream_eof {
            // Closed (or reset) before a complete head.
            self.upstream_failed(cx, Termination::UpstreamClosed);
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
                            self.abort(cx, Termination::BadResponse("invalid chunked body"));
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
                self.abort(cx, Termination::UpstreamClosed);
                return true;
            }
        }

        // Write to the client: our head bytes first, then validated body bytes, in one call. The rest
        // of the response may already wait in the backend socket (our last read filled the buffer):
        // then let the kernel send both parts as one, as HAProxy does with MSG_MORE.
        let more = self.x.resp == ResponseState::Body
            && !self.x.upstream_eof
            && cx.upstreams.get(key).is_some_and(|u| u.io.readable);
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
    fn write_client(
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

    fn resp_out_pending(&self) -> usize {
        self.resp_out
            .as_ref()
            .map_or(0, |o| o.len() - self.resp_out_sent)
    }

    fn recycle_resp_out(&mut self, cx: &mut Ctx) {
        if let Some(o) = self.resp_out.take() {
            cx.put_vec(o);
        }
        self.resp_out_sent = 0;
    }

    /// The response was delivered: log, park or close the backend connection, and go on to the next
    /// request (or close).
    fn complete(&mut self, cx: &mut Ctx) {
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
            cx.buffers.put(buf);
        }
        if let Some(o) = self.req_out.take() {
            cx.put_vec(o);
        }
        self.finish_request(cx);
        if self.close_after || !request_done || cx.draining {
            self.begin_closing(cx);
        } else {
            self.x.reset(cx.now);
            self.phase = Phase::ReadHead;
        }
    }

    fn release_upstream(&mut self, cx: &mut Ctx, key: usize, reusable: bool) {
        let backend = cx.upstreams[key].backend.id;
        if reusable && cx.pool.put(backend, key) {
            let idle = cx.snapshot.timeouts.upstream_idle;
            let u = &mut cx.upstreams[key];
            u.session = None;
            let token = upstream_token(key).0;
            u.deadline.set(&mut cx.timers, token, u.id, cx.now + idle);
        } else {
            cx.close_upstream(key);
        }
    }

    // ----- tunnel (after 101) ----------------------------------------------------------------------

    fn enter_tunnel(&mut self, cx: &mut Ctx) {
        if let Some(o) = self.req_out.take() {
            cx.put_vec(o);
        }
        self.x.head_sent = 0;
        self.x.req_pending = self.in_buf.as_ref().map_or(0, Buffer::len);
        self.x.resp_pending = self.up_buf.as_ref().map_or(0, Buffer::len);
        self.phase = Phase::Tunnel;
    }

    fn step_tunnel(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            self.phase = Phase::Closed;
            return true;
        };
        let mut progress = false;
        let u = &mut cx.upstreams[key];

        // Client → backend.
        if let Some(buf) = &mut self.in_buf {
            if !buf.is_empty() && u.io.writable {
                match u.stream.write_two(&mut u.io, buf.data(), &[], false) {
                    WriteOutcome::Wrote(n) => {
                        buf.consume(n);
                        self.x.bytes_in += n as u64;
                        self.last_upstream_io = cx.now;
                        progress = true;
                    }
                    WriteOutcome::Blocked => {}
                    WriteOutcome::Error(_) => {
                        self.abort(cx, Termination::UpstreamClosed);
                        return true;
                    }
                }
            }
        }
        if !self.client_eof && self.io.readable {
            let buf = self.in_buf.get_or_insert_with(|| cx.buffers.get());
            if buf.free() > 0 {
                match self.client.read_into(&mut self.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_client_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        self.client_eof = true;
                        progress = true;
                    }
                }
            }
        }
        if self.client_eof
            && self.in_buf.as_ref().is_none_or(Buffer::is_empty)
            && !self.x.request_written
        {
            // Pass the half-close on once everything before it was delivered.
            u.stream.shutdown_write(&mut u.io);
            self.x.request_written = true;
        }

        // Backend → client: the 101 head first, then raw bytes.
        let pending = self.up_buf.as_ref().map_or(0, Buffer::len);
        match self.write_client(cx, pending, false) {
            Err(()) => return true,
            Ok(Some(_)) => progress = true,
            Ok(None) => {}
        }
        let u = &mut cx.upstreams[key];
        if !self.x.upstream_eof && u.io.readable {
            let buf = self.up_buf.get_or_insert_with(|| cx.buffers.get());
            if buf.free() > 0 {
                match u.stream.read_into(&mut u.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_upstream_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        self.x.upstream_eof = true;
                        progress = true;
                    }
                }
            }
        }
        let up_flushed =
            self.resp_out_pending() == 0 && self.up_buf.as_ref().is_none_or(Buffer::is_empty);
        if self.x.upstream_eof && up_flushed && !self.shutdown_sent {
            self.client.shutdown_write(&mut self.io);
            self.shutdown_sent = true;
        }
        if self.client_eof && self.x.request_written && self.x.upstream_eof && self.shutdown_sent {
            self.x.termination = Termination::Completed;
            self.phase = Phase::Closed;
            return true;
        }
        progress
    }

    // ----- endings ---------------------------------------------------------------------------------

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

    fn respond_or_abort(&mut self, cx: &mut Ctx, term: Termination) {
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

    fn begin_closing(&mut self, cx: &mut Ctx) {
        self.phase = Phase::Closing;
        self.closing_since = cx.now;
        // Pipelined requests behind a closing response are dropped with the connection.
        self.x.req_pending = 0;
    }

    fn step_closing(&mut self, cx: &mut Ctx) -> bool {
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
    fn finish_request(&mut self, cx: &mut Ctx) {
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
    fn next_deadline(&self, cx: &Ctx) -> Option<Instant> {
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

    fn arm_deadline(&mut self, cx: &mut Ctx) {
        match self.next_deadline(cx) {
            Some(at) => {
                let token = super::context::session_token(self.key).0;
                self.deadline.set(&mut cx.timers, token, self.id, at);
            }
            None => self.deadline.clear(),
        }
    }

    /// The session's deadline passed.
    pub fn on_timeout(&mut self, cx: &mut Ctx) {
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
        if self.phase != Phase::Closed && self.drive(cx) {
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
    fn release_idle_buffers(&mut self, cx: &mut Ctx) {
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

/// How a termination counts against the backend that was serving the attempt.
fn outcome_of(term: Termination) -> AttemptOutcome {
    match term {
        Termination::ConnectFailed | Termination::ConnectTimeout => AttemptOutcome::ConnectFailed,
        Termination::UpstreamClosed
        | Termination::BadResponse(_)
        | Termination::UpstreamTimeout => AttemptOutcome::Failed,
        _ => AttemptOutcome::Abandoned,
    }
}

/// What `choose_backend` needs to admit a request to a backend's QoS queue.
struct Admit {
    worker: usize,
    session: usize,
    session_id: u64,
    now: Instant,
    unix_now: u32,
}

/// Chooses the backend for an attempt — the session's own for a secure request (unless it is down or
/// just failed), else the balancer's pick — binds or rebinds the session, and, when the cluster limits
/// requests in flight, takes a slot or a place in the queue (`None`: no limit).
fn choose_backend(
    x: &mut Exchange,
    cluster: &Cluster,
    balancer: &mut balance::Balancer,
    sticky: &crate::sticky::Stickiness,
    failover: FailoverPolicy,
    avoid: Option<BackendId>,
    admit: Admit,
) -> Result<(BackendId, SocketAddr, Option<Admission>), Termination> {
    let mut chosen = None;
    if let Some(pref) = x.sticky.as_ref().and_then(|st| st.preferred) {
        match cluster.backend(pref) {
            Some(b) if b.eligible() && Some(pref) != avoid => chosen = Some(b),
            _ if failover == FailoverPolicy::Fail => return Err(Termination::SessionBackendDown),
            _ => {}
        }
    }
    let backend = match chosen {
        Some(b) => b,
        None => {
            let pick = PickContext {
                hash_key: x.hash_key,
                avoid,
            };
            balancer
                .pick(x.cluster, cluster, &pick)
                .ok_or(Termination::NoBackend)?
        }
    };
    let (id, address) = (backend.state.id, backend.state.address);

    // Bind a new session, rebind one whose backend was down or failed (logged), and decide whether
    // the response carries a fresh cookie.
    if let Some(st) = &mut x.sticky {
        if let Some(key) = st.key {
            if !st.bound {
                sticky.table.bind(admit.worker, key, id, admit.unix_now);
                st.bound = true;
                if st.preferred.is_some_and(|p| p != id) {
                    st.issue_cookie = true;
                }
            } else if st.preferred != Some(id) {
                sticky.table.rebind(admit.worker, key, id, admit.unix_now);
                let from = st.preferred.and_then(|p| cluster.backend(p)).map_or_else(
                    || "a removed backend".to_string(),
                    |b| b.state.address.to_string(),
                );
                log::info!(
                    "session rebound from {from} to {address} (cluster {}): its backend is down or failed",
                    cluster.name
                );
                st.issue_cookie = true;
                st.ssl_context = 0;
            }
            st.preferred = Some(id);
        }
    }

    let admission = (cluster.max_inflight > 0).then(|| {
        backend.state.queue.admit(
            &backend.state,
            cluster.max_inflight,
            cluster.max_queue,
            x.priority,
            admit.worker,
            admit.session,
            admit.session_id,
            admit.now,
        )
    });
    Ok((id, address, admission))
}
