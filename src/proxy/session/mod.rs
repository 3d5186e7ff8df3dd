//! A client connection's state machine: read a request head, run the stages (`super::stages`), exchange
//! with a backend or answer, and start over (keep-alive) or close. See `LIFECYCLE.md` in this directory.
//!
//! What the stages decided about a request lives in its [`Plan`] (which pins the config snapshot); how
//! far its bytes have moved lives in its [`Transfer`]; a protocol switch (101) moves the connection into a
//! [`tunnel::Tunnel`] of its own.
//!
//! Data is never copied between buffers: request bytes are read into `in_buf` and written to the backend
//! straight from it (the rewritten head goes first from `req_out`, in the same `writev`); response bytes
//! are read into `up_buf` and written to the client the same way. Body framing is validated as bytes pass
//! (`*_pending` counts the validated bytes at the front of a buffer that may be sent), so a backend or a
//! client only ever receives bytes whose framing tether has checked.

use super::context::{Ctx, upstream_token};
use super::io::Transport;
use super::stages::{self, Plan, Slot, Wait};
use super::upstream::{self, Upstream};
use crate::access_log::{AccessRecord, Field};
use crate::balance::AttemptOutcome;
use crate::base::buffer::Buffer;
use crate::base::socket::{ReadOutcome, Readiness, WriteOutcome};
use crate::base::timer::Deadline;
use crate::error::{Retry, Termination};
use crate::http::canned::write_canned;
use crate::http::{
    BodyFraming, ChunkedDecoder, ForwardContext, HeadScanner, Method, ResponseFraming,
    ResponseOptions, Version, end_head, parse_request, parse_response, write_request_head,
    write_response_head,
};
use crate::sticky::table::SessionReader;
use mio::Interest;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

mod backend;
mod ending;
mod exchange;
mod head;
mod stream;
mod tunnel;

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a request head: idle between requests, or part of a head received.
    ReadHead,
    /// A stage parked the request (`Session::wait` says why); no CPU is spent until it is woken.
    Waiting,
    /// Routed and balanced; the backend connection is being established.
    Connect,
    /// Request and response flowing between client and backend.
    Exchange,
    /// tether's own reply (a stage's answer) is being written; then the next request.
    Reply,
    /// Protocol switched (101): raw bytes both ways until both sides close.
    Tunnel,
    /// tether's own event stream (SSE notifications): events written as they land, until the client
    /// leaves (`Session::stream` holds its state).
    Stream,
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

/// How far one request's bytes have moved (I/O progress and counters), reset for each request. What was
/// decided about the request is in its [`Plan`].
#[derive(Debug)]
struct Transfer {
    /// The first byte of this request arrived.
    started: bool,
    started_at: Instant,
    method: Method,
    version: Version,
    keep_alive: bool,
    upgrade: bool,
    /// The client sent `Expect: 100-continue`.
    expect_continue: bool,
    /// Bytes at the front of `in_buf` that are the request head, kept until the head is forwarded (so a
    /// stage that ran after a wait can read the head again).
    head_len: usize,
    /// The request body a stage asked for (`Wait::Body`): its length, once known to fit.
    body_len: usize,
    /// The current attempt told its backend it started and not yet that it ended.
    attempt_open: bool,
    /// The current attempt rides a pooled (reused) connection.
    reused: bool,
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

impl Transfer {
    fn new(now: Instant) -> Self {
        Transfer {
            started: false,
            started_at: now,
            method: Method::Get,
            version: Version::Http11,
            keep_alive: true,
            upgrade: false,
            expect_continue: false,
            head_len: 0,
            body_len: 0,
            attempt_open: false,
            reused: false,
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
        *self = Transfer {
            req_chunks,
            resp_chunks,
            ..Transfer::new(now)
        };
    }

    fn micros_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started_at).as_micros() as u64
    }
}

/// One client connection.
pub(crate) struct Session {
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
    /// Bytes for the client that tether wrote itself (response heads, canned answers, replies).
    resp_out: Option<Vec<u8>>,
    resp_out_sent: usize,
    scanner: HeadScanner,
    resp_scanner: HeadScanner,
    upstream: Option<usize>,
    /// What the stages decided about the current request.
    plan: Plan,
    /// How far the current request's bytes have moved.
    x: Transfer,
    /// Why the request is parked (`Phase::Waiting`).
    wait: Option<Wait>,
    /// The tunnel after a protocol switch (`Phase::Tunnel`).
    tunnel: Option<tunnel::Tunnel>,
    /// The event stream (`Phase::Stream`).
    stream: Option<Box<crate::notify::stream::Stream>>,
    requests: u32,
    last_client_io: Instant,
    last_upstream_io: Instant,
    closing_since: Instant,
    /// Close the client connection once the current response is written.
    close_after: bool,
    shutdown_sent: bool,
    /// The client asked to close, and sent nothing past its request: the answer is followed by a plain
    /// close, with no half-close and no lingering for the client's end (nginx's way too; see
    /// `step_closing`).
    quick_close: bool,
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
    pub(crate) fn new(
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
            plan: Plan::default(),
            x: Transfer::new(now),
            wait: None,
            tunnel: None,
            stream: None,
            requests: 0,
            last_client_io: now,
            last_upstream_io: now,
            closing_since: now,
            close_after: false,
            shutdown_sent: false,
            quick_close: false,
            log: None,
            accepted_at: now,
            tls_checked: false,
            plain_on_tls: false,
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Runs the state machine until nothing more can happen without new readiness or time.
    /// Returns `true` when the session stopped with work left (its turn's budget was used up): the
    /// worker runs it again on its next loop turn, after every other ready socket had its chance.
    /// `sessions` is the session table pinned for the worker's current turn.
    pub(crate) fn drive(&mut self, cx: &mut Ctx, sessions: &SessionReader<'_>) -> bool {
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
                Phase::ReadHead => self.step_read_head(cx, sessions),
                Phase::Waiting => self.step_waiting(cx, sessions),
                Phase::Connect => self.step_connect(cx),
                Phase::Exchange => self.step_exchange(cx),
                Phase::Reply => self.step_reply(cx),
                Phase::Tunnel => self.step_tunnel(cx),
                Phase::Stream => self.step_stream(cx),
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
}

/// How a termination counts against the backend that was serving the attempt. Only the backend's own
/// failures count; a client that stalls or leaves never takes a backend out of service.
fn outcome_of(term: Termination) -> AttemptOutcome {
    match term {
        Termination::ConnectFailed | Termination::ConnectTimeout => AttemptOutcome::ConnectFailed,
        Termination::UpstreamClosed
        | Termination::BadResponse(_)
        | Termination::UpstreamTimeout => AttemptOutcome::Failed,
        _ => AttemptOutcome::Abandoned,
    }
}
