//! What a session sees of its worker: clock, buffers, timers, config snapshot, balancer, upstreams.

use super::pool::UpstreamPool;
use super::upstream::Upstream;
use crate::access_log::AccessLog;
use crate::balance::Balancer;
use crate::config::PlainHttpPolicy;
use crate::http::{RequestHead, ResponseHead};
use crate::qos::Waiter;
use crate::runtime::buffer::BufferPool;
use crate::runtime::snapshot::ConfigSnapshot;
use crate::runtime::timer::TimerWheel;
use crate::runtime::worker::Command;
use crate::sticky::Stickiness;
use crate::tls::TlsStats;
use mio::{Registry, Token};
use slab::Slab;
use std::sync::Arc;
use std::time::Instant;

/// Token of a session's client socket.
pub fn session_token(key: usize) -> Token {
    Token(key << 1)
}

/// Token of an upstream socket.
pub fn upstream_token(key: usize) -> Token {
    Token((key << 1) | 1)
}

/// A listener's settings that sessions need.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub name: String,
    pub trust_forwarded: bool,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
    /// Plain listener answering every request with a redirect to https.
    pub redirect_https: bool,
    /// TLS listener: what plain HTTP gets.
    pub plain_http: PlainHttpPolicy,
}

/// How to reach a worker from another thread.
#[derive(Debug)]
pub struct Peer {
    pub commands: crossbeam_channel::Sender<Command>,
    pub waker: Arc<mio::Waker>,
}

/// Per-worker counters (plain integers: only this worker writes them).
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    pub accepted: u64,
    pub requests: u64,
    pub upstream_connects: u64,
    pub upstream_reuses: u64,
}

/// Per-worker state shared by all of the worker's sessions. Owned by one thread: no locks.
pub struct Ctx {
    pub worker: usize,
    /// Time of the current event-loop turn (one clock read per turn).
    pub now: Instant,
    pub registry: Registry,
    pub buffers: BufferPool,
    /// Reusable head vectors (rewritten heads, canned answers), so writing a head allocates nothing.
    vecs: Vec<Vec<u8>>,
    /// A vector always at hand while a scratch head is borrowed (swapped out, then replaced).
    pub scratch_vec: Vec<u8>,
    pub timers: TimerWheel,
    pub snapshot: Arc<ConfigSnapshot>,
    /// Scratch heads: a head is parsed, acted on and rewritten in one go, so one per worker suffices.
    pub req_head: RequestHead,
    pub resp_head: ResponseHead,
    pub balancer: Balancer,
    pub upstreams: Slab<Upstream>,
    pub pool: UpstreamPool,
    pub access_log: Option<AccessLog>,
    pub listeners: Vec<ListenerInfo>,
    pub tls_stats: Arc<TlsStats>,
    /// The session table and cookie keys, shared by all workers.
    pub sticky: Arc<Stickiness>,
    /// Wall-clock seconds of the current loop turn (session and cookie clocks).
    pub unix_now: u32,
    /// Every worker's command channel and waker, to deliver QoS grants across workers.
    pub peers: Arc<Vec<Peer>>,
    /// QoS grants for sessions of this worker, to drive this turn: (session key, session id).
    pub granted: Vec<(usize, u64)>,
    /// Sessions that used up their turn's budget with work left: driven again next turn.
    pub deferred: Vec<usize>,
    /// Shutting down: finish in-flight requests, keep no connection alive.
    pub draining: bool,
    /// Backend connections serving a request now (requests in flight at backends): the worker's load,
    /// as batching reads it. Kept by `attach` and `detach`.
    pub attached: usize,
    next_id: u64,
    pub stats: WorkerStats,
}

const MAX_POOLED_VEC: usize = 64 * 1024;

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        worker: usize,
        registry: Registry,
        snapshot: Arc<ConfigSnapshot>,
        buffer_size: usize,
        max_connections: usize,
        upstream_idle_pool: usize,
        access_log: Option<AccessLog>,
        listeners: Vec<ListenerInfo>,
        tls_stats: Arc<TlsStats>,
        sticky: Arc<Stickiness>,
        peers: Arc<Vec<Peer>>,
    ) -> Self {
        let now = Instant::now();
        let max_headers = snapshot.limits.max_headers;
        let mut balancer = Balancer::default();
        balancer.reset(&snapshot.clusters);
        let mut pool = UpstreamPool::new(upstream_idle_pool);
        pool.ensure(snapshot.backend_id_bound);
        Ctx {
            worker,
            now,
            registry,
            // Keep enough free buffers for a burst on every connection slot, but not unbounded.
            buffers: BufferPool::new(buffer_size, max_connections.min(4096)),
            vecs: Vec::new(),
            scratch_vec: Vec::with_capacity(1024),
            timers: TimerWheel::new(now),
            snapshot,
            req_head: RequestHead::with_capacity(max_headers),
            resp_head: ResponseHead::with_capacity(max_headers),
            balancer,
            upstreams: Slab::new(),
            pool,
            access_log,
            listeners,
            tls_stats,
            sticky,
            unix_now: crate::sticky::unix_now(),
            peers,
            granted: Vec::with_capacity(64),
            deferred: Vec::with_capacity(64),
            draining: false,
            attached: 0,
            next_id: 1,
            stats: WorkerStats::default(),
        }
    }

    /// A fresh id for a connection (guards timer entries against slab slot reuse).
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// An empty head vector.
    pub fn take_vec(&mut self) -> Vec<u8> {
        self.vecs.pop().unwrap_or_else(|| Vec::with_capacity(1024))
    }

    /// Returns a head vector for reuse.
    pub fn put_vec(&mut self, mut v: Vec<u8>) {
        if v.capacity() <= MAX_POOLED_VEC && self.vecs.len() < 4096 {
            v.clear();
            self.vecs.push(v);
        }
    }

    /// Hands a QoS grant to the worker holding the waiting request: this one directly, another through its
    /// command channel and waker.
    pub fn deliver_grant(&mut self, waiter: &Waiter) {
        if waiter.worker == self.worker {
            self.granted.push((waiter.session, waiter.session_id));
        } else if let Some(peer) = self.peers.get(waiter.worker) {
            let _ = peer.commands.send(Command::Grant {
                session: waiter.session,
                id: waiter.session_id,
            });
            let _ = peer.waker.wake();
        }
    }

    /// Counts a backend connection that starts serving a request.
    pub fn attach(&mut self) {
        self.attached += 1;
    }

    /// Counts a backend connection that stops serving a request (parked or closed).
    pub fn detach(&mut self) {
        self.attached = self.attached.saturating_sub(1);
    }

    /// Closes an upstream connection for good.
    pub fn close_upstream(&mut self, key: usize) {
        if let Some(u) = self.upstreams.try_remove(key) {
            if u.session.is_some() {
                self.detach();
            }
            if u.warming {
                self.pool.warming_done(u.backend.id);
            } else if u.session.is_none() {
                self.pool.remove(u.backend.id, key);
            }
            drop(u);
        }
    }
}
