//! What a session sees of its worker, in parts: the clock, I/O resources (buffers, head vectors, timers,
//! the poll registry), the config snapshot, routing state (balancer, stickiness), backend connections,
//! and the wake-up channels to every worker. Stages borrow only the parts they need.

use super::pool::UpstreamPool;
use super::upstream::Upstream;
use crate::access_log::AccessLog;
use crate::balance::Balancer;
use crate::base::buffer::BufferPool;
use crate::base::timer::TimerWheel;
use crate::config::PlainHttpPolicy;
use crate::http::{RequestHead, ResponseHead};
use crate::metrics::WorkerMetrics;
use crate::qos::Waiter;
use crate::snapshot::ConfigSnapshot;
use crate::sticky::Stickiness;
use crate::tls::TlsStats;
use crossbeam_utils::CachePadded;
use mio::{Registry, Token};
use slab::Slab;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker's handle on a config snapshot. Requests pin the snapshot they were routed with by cloning
/// this: a worker-local, non-atomic count, so pinning costs no cache line shared between cores (an `Arc`
/// clone per request would bounce the snapshot's counter between every worker).
pub(crate) type SnapshotPin = Rc<Arc<ConfigSnapshot>>;

/// Token of a session's client socket.
pub(crate) fn session_token(key: usize) -> Token {
    Token(key << 1)
}

/// Token of an upstream socket.
pub(crate) fn upstream_token(key: usize) -> Token {
    Token((key << 1) | 1)
}

/// A listener's settings that sessions need.
#[derive(Debug, Clone)]
pub(crate) struct ListenerInfo {
    pub name: String,
    pub trust_forwarded: bool,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
    /// Plain listener answering every request with a redirect to https.
    pub redirect_https: bool,
    /// TLS listener: what plain HTTP gets.
    pub plain_http: PlainHttpPolicy,
    /// The notifications' publish listener: every request is a publish (or refused).
    pub publish: bool,
    /// The admin listener: every request is an admin call (or refused).
    pub admin: bool,
}

/// Messages to a worker from other threads.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// Stop accepting, finish in-flight requests within `grace`, then exit.
    Shutdown { grace: Duration },
    /// A parked request of this worker may go on (a QoS grant, a completed ticket): drive it again.
    Wake { session: usize, id: u64 },
}

/// How to reach a worker from another thread.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub commands: crossbeam_channel::Sender<Command>,
    pub waker: Arc<mio::Waker>,
}

/// Where a parked request lives: its worker, its slot in the worker's session slab, and the session's
/// id (a slot reused by a later connection has another id, so a late wake-up reaches no one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WakeTarget {
    pub worker: usize,
    pub session: usize,
    pub id: u64,
}

impl Peer {
    /// Tells the worker to drive `target`'s session again. Callable from any thread.
    pub(crate) fn wake(&self, target: WakeTarget) {
        let _ = self.commands.send(Command::Wake {
            session: target.session,
            id: target.id,
        });
        let _ = self.waker.wake();
    }
}

/// Wake-ups for parked requests: to this worker's own sessions directly, to other workers' through their
/// channel and waker.
#[derive(Debug)]
pub(crate) struct Wakers {
    pub worker: usize,
    /// Every worker's command channel and waker.
    pub peers: Arc<Vec<Peer>>,
    /// Sessions of this worker woken during this turn: (slab key, session id).
    pub woken: Vec<(usize, u64)>,
}

impl Wakers {
    /// Hands a QoS grant to the worker holding the waiting request.
    pub(crate) fn deliver_grant(&mut self, waiter: &Waiter) {
        self.wake(waiter.worker, waiter.session, waiter.session_id);
    }

    /// Wakes session `session` (id `id`) of worker `worker`.
    pub(crate) fn wake(&mut self, worker: usize, session: usize, id: u64) {
        if worker == self.worker {
            self.woken.push((session, id));
        } else if let Some(peer) = self.peers.get(worker) {
            let _ = peer.commands.send(Command::Wake { session, id });
            let _ = peer.waker.wake();
        }
    }

    /// A wake-up target for one of this worker's sessions.
    pub(crate) fn target(&self, session: usize, id: u64) -> WakeTarget {
        WakeTarget {
            worker: self.worker,
            session,
            id,
        }
    }

    /// This worker's channel and waker, for a thread that will wake one of its sessions.
    pub(crate) fn own_peer(&self) -> Option<Peer> {
        self.peers.get(self.worker).cloned()
    }
}

/// I/O resources of a worker: the poll registry, pooled buffers and head vectors, the timer wheel.
pub(crate) struct IoParts {
    pub registry: Registry,
    pub buffers: BufferPool,
    /// Reusable head vectors (rewritten heads, canned answers), so writing a head allocates nothing.
    vecs: Vec<Vec<u8>>,
    pub timers: TimerWheel,
}

const MAX_POOLED_VEC: usize = 64 * 1024;

impl IoParts {
    /// An empty head vector.
    pub(crate) fn take_vec(&mut self) -> Vec<u8> {
        self.vecs.pop().unwrap_or_else(|| Vec::with_capacity(1024))
    }

    /// Returns a head vector for reuse.
    pub(crate) fn put_vec(&mut self, mut v: Vec<u8>) {
        if v.capacity() <= MAX_POOLED_VEC && self.vecs.len() < 4096 {
            v.clear();
            self.vecs.push(v);
        }
    }
}

/// The worker's backend connections: the slab, the idle pool, and how many serve a request now.
pub(crate) struct Upstreams {
    pub slab: Slab<Upstream>,
    pub pool: UpstreamPool,
    /// Backend connections serving a request now (requests in flight at backends): the worker's load,
    /// as batching reads it. Kept by `attach` and `detach`.
    pub attached: usize,
    pub tls_stats: Arc<TlsStats>,
}

impl Upstreams {
    /// Counts a backend connection that starts serving a request.
    pub(crate) fn attach(&mut self) {
        self.attached += 1;
    }

    /// Counts a backend connection that stops serving a request (parked or closed).
    pub(crate) fn detach(&mut self) {
        self.attached = self.attached.saturating_sub(1);
    }

    /// Closes an upstream connection for good.
    pub(crate) fn close(&mut self, key: usize) {
        if let Some(u) = self.slab.try_remove(key) {
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

/// Per-worker state shared by all of the worker's sessions. Owned by one thread: no locks.
pub(crate) struct Ctx {
    pub worker: usize,
    /// Time of the current event-loop turn (one clock read per turn).
    pub now: Instant,
    /// Wall-clock seconds of the current loop turn (session and cookie clocks).
    pub unix_now: u32,
    pub io: IoParts,
    /// The current config snapshot; requests pin it (see [`SnapshotPin`]).
    pub snapshot: SnapshotPin,
    /// Scratch heads: a head is parsed, acted on and rewritten in one go, so one per worker suffices.
    pub req_head: RequestHead,
    pub resp_head: ResponseHead,
    pub balancer: Balancer,
    pub upstreams: Upstreams,
    pub access_log: Option<AccessLog>,
    pub listeners: Vec<ListenerInfo>,
    /// The session table and cookie keys, shared by all workers.
    pub sticky: Arc<Stickiness>,
    pub wakers: Wakers,
    /// Sessions that used up their turn's budget with work left: driven again next turn.
    pub deferred: Vec<usize>,
    /// Shutting down: finish in-flight requests, keep no connection alive.
    pub draining: bool,
    /// This worker's counters and histograms in the process-wide registry.
    pub metrics: Arc<CachePadded<WorkerMetrics>>,
    /// Writes to the replicated store (with `[cluster]`): applied at once, mirrored by the replication
    /// thread.
    pub store: Option<crate::store::StoreWriter>,
    /// Logins, with pools configured; and this worker's verified tokens.
    pub auth: Option<Arc<crate::auth::runtime::Auth>>,
    pub auth_cache: crate::auth::gate::AuthCache,
    /// Sticky cookies this worker opened lately (a keep-alive client repeats its cookie).
    pub opened_cookies: crate::sticky::cookie::OpenedCookies,
    /// Cluster-wide counters (limits, lockout, metering): this node's shares.
    pub counters: Arc<crate::limits::counters::Counters>,
    /// This worker's usage sums not yet handed to the counters.
    pub meter: crate::limits::metering::WorkerMeter,
    /// The notification queues (with `[notifications]`).
    pub notify: Option<Arc<crate::notify::Hub>>,
    /// The upload spool (with `[uploads]`).
    pub spool: Option<Arc<crate::spool::Spool>>,
    /// The admin API (with `[admin]`).
    pub admin: Option<Arc<crate::admin::Admin>>,
    next_id: u64,
}

/// What a worker is built with (everything `Send`, so the worker can be built on its own thread).
pub(crate) struct CtxParts {
    pub worker: usize,
    pub registry: Registry,
    pub snapshot: Arc<ConfigSnapshot>,
    pub buffer_size: usize,
    pub max_connections: usize,
    pub upstream_idle_pool: usize,
    pub access_log: Option<AccessLog>,
    pub listeners: Vec<ListenerInfo>,
    pub tls_stats: Arc<TlsStats>,
    pub sticky: Arc<Stickiness>,
    pub peers: Arc<Vec<Peer>>,
    pub metrics: Arc<CachePadded<WorkerMetrics>>,
    pub store: Option<crate::store::StoreWriter>,
    pub auth: Option<Arc<crate::auth::runtime::Auth>>,
    pub counters: Arc<crate::limits::counters::Counters>,
    pub notify: Option<Arc<crate::notify::Hub>>,
    pub spool: Option<Arc<crate::spool::Spool>>,
    pub admin: Option<Arc<crate::admin::Admin>>,
}

impl Ctx {
    /// Builds a worker's context; must run on the worker's own thread (the snapshot pin is thread-local).
    pub(crate) fn new(p: CtxParts) -> Self {
        let now = Instant::now();
        let max_headers = p.snapshot.limits.max_headers;
        let mut balancer = Balancer::default();
        balancer.reset(p.snapshot.generation, &p.snapshot.clusters);
        let mut pool = UpstreamPool::new(p.upstream_idle_pool);
        pool.ensure(p.snapshot.backend_id_bound);
        Ctx {
            worker: p.worker,
            now,
            unix_now: crate::sticky::unix_now(),
            io: IoParts {
                registry: p.registry,
                // Keep enough free buffers for a burst on every connection slot, but not unbounded.
                buffers: BufferPool::new(p.buffer_size, p.max_connections.min(4096)),
                vecs: Vec::new(),
                timers: TimerWheel::new(now),
            },
            snapshot: Rc::new(p.snapshot),
            req_head: RequestHead::with_capacity(max_headers),
            resp_head: ResponseHead::with_capacity(max_headers),
            balancer,
            upstreams: Upstreams {
                slab: Slab::new(),
                pool,
                attached: 0,
                tls_stats: p.tls_stats,
            },
            access_log: p.access_log,
            listeners: p.listeners,
            sticky: p.sticky,
            wakers: Wakers {
                worker: p.worker,
                peers: p.peers,
                woken: Vec::with_capacity(64),
            },
            deferred: Vec::with_capacity(64),
            draining: false,
            metrics: p.metrics,
            store: p.store,
            auth: p.auth,
            auth_cache: crate::auth::gate::AuthCache::default(),
            opened_cookies: crate::sticky::cookie::OpenedCookies::default(),
            counters: p.counters,
            meter: crate::limits::metering::WorkerMeter::default(),
            notify: p.notify,
            spool: p.spool,
            admin: p.admin,
            next_id: 1,
        }
    }

    /// A fresh id for a connection (guards timer entries against slab slot reuse).
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}
