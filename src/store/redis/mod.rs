//! The replicated store on a Redis or Valkey server (`[store] backend = "redis"`): each node keeps its
//! local store as the workers' lock-free cache, and two threads of its own (never a worker) mirror it
//! with the server — the *writer* forwards every local write, and the *feed* applies other nodes'.
//!
//! - The writer drains the workers' write queues (the same [`WriteFeed`] the mesh's replication thread
//!   drains) and sends records in pipelines of [`BATCH`], each through a Lua script that keeps the newer
//!   of two versions (last writer wins exactly as the local store does, so the order in which nodes'
//!   writes reach the server does not matter) and appends the record to the change stream. A `sync`
//!   write's callback runs once the server acknowledged its pipeline (and `WAIT` saw `wait_replicas`
//!   replicas hold it). Records the server has not acknowledged stay in an outbox and are sent again
//!   after a reconnection: the script makes a second send harmless.
//! - The feed tails the change stream with `XREAD BLOCK` and applies each record like a peer's in the
//!   mesh (store, session table, watchers). A stream, not keyspace notifications: notifications are
//!   fire-and-forget pub/sub, so a feed that reconnects would silently miss what was written meanwhile,
//!   while a stream is read again from the last id seen. A feed whose last id was trimmed away (or a
//!   node starting) loads every record key with `SCAN` first, as a starting mesh node takes a snapshot.
//! - Counters stay per-node shares (`limits::counters`): each share has one writer, so the script's
//!   last-writer-wins never overwrites another node's count, and a share sent twice (a pipeline resent
//!   after a lost reply) is not counted twice, which an `INCRBY` would be.
//! - A server that comes back empty or different (another `run_id`: restarted without persistence, or a
//!   replica promoted that missed the last writes) is given back everything this node holds: the
//!   store's records go through the same script, so what any live node holds is not lost.

pub mod layout;
pub mod seal;

use crate::config::{Config, StoreConfig, SyncTimeoutPolicy};
use crate::limits::counters::Counters;
use crate::snapshot::SharedSnapshot;
use crate::sticky::Stickiness;
use crate::store::{Kind, OnAck, Record, Store, WriteFeed};
use layout::Layout;
use mio::{Events, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records per pipeline.
const BATCH: usize = 512;
/// Pipelines per turn of the writer, between two looks at the workers' queues.
const FLUSH_BATCHES: usize = 16;
/// Records waiting for the server beyond which the oldest asynchronous ones are dropped from the outbox
/// (they stay in the local store, and are written back with everything else once the server returns).
const MAX_OUTBOX: usize = 1 << 20;
/// Reconnection back-off: from this, doubling, up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one `XREAD` blocks: the feed notices a stop, and counts itself fresh, at least this often.
const BLOCK: Duration = Duration::from_millis(200);
/// An idle writer connection is checked this often.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Stream entries per `XREAD`, and keys per `SCAN` step of a load.
const READ_COUNT: usize = 1000;

/// Why the Redis backend could not do something.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("store.password_file {path:?}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error("store.ca {path:?}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("store.addresses {address:?}: {source}")]
    Client {
        address: String,
        source: redis::RedisError,
    },
    #[error("redis {address}: {source}")]
    Server {
        address: String,
        source: redis::RedisError,
    },
    #[error("no server of store.addresses answers as a primary ({tried})")]
    NoPrimary { tried: String },
    #[error("redis {address}: {what}")]
    Unexpected { address: String, what: String },
}

/// `[store]` with `backend = "redis"`, resolved: clients for each address, the key layout and the
/// policies.
pub struct RedisSetup {
    /// This node's name.
    pub node: String,
    clients: Vec<(String, redis::Client)>,
    /// How to reach an address not configured (a Redis Cluster node a redirection names).
    access: Access,
    layout: Layout,
    sealer: Arc<seal::Sealer>,
    connect_timeout: Duration,
    command_timeout: Duration,
    wait_replicas: u32,
    stream_length: u64,
    max_staleness: Duration,
    degrade: bool,
}

impl std::fmt::Debug for RedisSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSetup")
            .field("node", &self.node)
            .field(
                "addresses",
                &self.clients.iter().map(|c| &c.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What every connection shares: the scheme (TLS or not), the credentials and the CA.
struct Access {
    scheme: &'static str,
    /// `user:password@`, percent-encoded, or empty.
    auth: String,
    ca: Option<Vec<u8>>,
}

impl Access {
    fn client(&self, address: &str) -> Result<redis::Client, RedisStoreError> {
        let url = format!("{}://{}{address}/", self.scheme, self.auth);
        match &self.ca {
            Some(pem) => redis::Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(url.as_str()),
        }
        .map_err(|source| RedisStoreError::Client {
            address: address.to_string(),
            source,
        })
    }
}

/// An empty optional string in the config is none (configs/full.toml writes every key).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl RedisSetup {
    /// Reads `[store]`; `Ok(None)` unless its backend is `"redis"`. Reads the password and CA files;
    /// connects to nothing yet.
    pub fn from_config(config: &Config) -> Result<Option<RedisSetup>, RedisStoreError> {
        let s: &StoreConfig = &config.store;
        if !s.is_redis() {
            return Ok(None);
        }
        let password = match set(&s.password_file) {
            Some(path) => Some(
                std::fs::read_to_string(config.resolve_path(path))
                    .map_err(|source| RedisStoreError::Password {
                        path: path.to_string(),
                        source,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let ca = match set(&s.ca) {
            Some(path) => Some(std::fs::read(config.resolve_path(path)).map_err(|source| {
                RedisStoreError::Ca {
                    path: path.to_string(),
                    source,
                }
            })?),
            None => None,
        };
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let auth = match (set(&s.username), &password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (None, Some(p)) => format!(":{}@", enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            (None, None) => String::new(),
        };
        let access = Access {
            scheme: if s.tls { "rediss" } else { "redis" },
            auth,
            ca,
        };
        let mut clients = Vec::with_capacity(s.addresses.len());
        for address in &s.addresses {
            clients.push((address.clone(), access.client(address)?));
        }
        // Validation checked every cookie key; one that does not decode seals nothing here.
        let cookie_keys: Vec<[u8; 32]> = config
            .sessions
            .cookie_keys
            .iter()
            .filter_map(|k| crate::sticky::cookie::CookieSealer::decode_key(k).ok())
            .collect();
        Ok(Some(RedisSetup {
            node: s.node.clone().unwrap_or_default(),
            clients,
            access,
            layout: Layout::new(&s.prefix),
            sealer: seal::Sealer::new(&cookie_keys, &s.prefix),
            connect_timeout: s.connect_timeout,
            command_timeout: s.command_timeout,
            wait_replicas: s.wait_replicas,
            stream_length: s.stream_length,
            max_staleness: s.max_staleness,
            degrade: s.on_sync_timeout == SyncTimeoutPolicy::Degrade,
        }))
    }

    /// This node's id in record versions.
    pub fn node_id(&self) -> u16 {
        crate::store::node_id(&self.node)
    }

    /// Registers this node among the nodes sharing the prefix: its slot (0–15, the same on every start;
    /// `None` past 16 nodes) and every node name registered.
    pub fn register(&self) -> Result<(Option<u8>, Vec<String>), RedisStoreError> {
        let mut conn = self.connect()?;
        let nodes = self.layout.nodes();
        let slot: i64 = redis::Script::new(layout::CLAIM_SLOT)
            .key(&nodes)
            .arg(&self.node)
            .invoke(&mut conn.con)
            .map_err(|source| conn.error(source))?;
        let names: Vec<String> = redis::cmd("HKEYS")
            .arg(&nodes)
            .query(&mut conn.con)
            .map_err(|source| conn.error(source))?;
        Ok((u8::try_from(slot).ok().filter(|s| *s < 16), names))
    }

    /// A connection to the first address that answers as a primary (`ROLE`), with the command timeout
    /// on reads and writes; and the server's `run_id`.
    fn connect(&self) -> Result<Conn, RedisStoreError> {
        let mut tried = Vec::new();
        for (address, client) in &self.clients {
            match self.connect_to(address, client) {
                Ok(Some(c)) => return self.slot_owner(c),
                Ok(None) => tried.push(format!("{address}: a replica")),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(RedisStoreError::NoPrimary {
            tried: tried.join("; "),
        })
    }

    /// On a Redis Cluster, the node that serves the prefix's slot (every key of the layout is in it):
    /// a `MOVED` answer to a look at the stream key names it, and the connection goes there instead. On
    /// a standalone server the look is an `EXISTS` answered at once.
    fn slot_owner(&self, mut conn: Conn) -> Result<Conn, RedisStoreError> {
        // Two hops at most: a slot being moved answers `MOVED` from its old owner once.
        for _ in 0..2 {
            let probe = redis::cmd("EXISTS")
                .arg(self.layout.stream())
                .query::<i64>(&mut conn.con);
            let Err(e) = probe else {
                return Ok(conn);
            };
            // `MOVED slot host:port`: the address as the cluster announces it.
            let Some((address, _slot)) = e.redirect_node() else {
                return Err(conn.error(e));
            };
            let address = address.to_string();
            let client = self.access.client(&address)?;
            conn =
                self.connect_to(&address, &client)?
                    .ok_or_else(|| RedisStoreError::Unexpected {
                        address: address.clone(),
                        what: "named by a redirection but not a primary".into(),
                    })?;
        }
        Ok(conn)
    }

    fn connect_to(
        &self,
        address: &str,
        client: &redis::Client,
    ) -> Result<Option<Conn>, RedisStoreError> {
        let err = |source| RedisStoreError::Server {
            address: address.to_string(),
            source,
        };
        let con = client
            .get_connection_with_timeout(self.connect_timeout)
            .map_err(err)?;
        con.set_read_timeout(Some(self.command_timeout))
            .map_err(err)?;
        con.set_write_timeout(Some(self.command_timeout))
            .map_err(err)?;
        let mut conn = Conn {
            con,
            address: address.to_string(),
            run_id: String::new(),
        };
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut conn.con)
            .map_err(|source| conn.error(source))?;
        let primary = matches!(role.first(),
            Some(redis::Value::BulkString(b)) if b == b"master" || b == b"primary");
        if !primary {
            return Ok(None);
        }
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut conn.con)
            .map_err(|source| conn.error(source))?;
        conn.run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or("")
            .trim()
            .to_string();
        Ok(Some(conn))
    }
}

/// A connection to the primary.
struct Conn {
    con: redis::Connection,
    address: String,
    /// The server process's id: another one after a restart or a failover.
    run_id: String,
}

impl Conn {
    fn error(&self, source: redis::RedisError) -> RedisStoreError {
        RedisStoreError::Server {
            address: self.address.clone(),
            source,
        }
    }
}

/// What the threads mirror: the store and its write queues, and where other nodes' records are
/// applied besides the store (the session table, by backend address in the current config).
pub struct RedisFeed {
    pub store: Arc<Store>,
    /// The clock this node's writes are versioned with: it merges every version read from the server,
    /// so a write made after reading another node's is newer than it (causality across nodes, whatever
    /// their wall clocks say, within the clock's allowed skew).
    pub hlc: Arc<crate::store::Hlc>,
    pub feed: WriteFeed,
    pub sticky: Arc<Stickiness>,
    pub shared: SharedSnapshot,
    /// The session table's counter slot for bindings applied by the feed.
    pub slot: usize,
    /// Every node name registered at start (this one's included): the counters' peers.
    pub nodes: Vec<String>,
}

/// What the threads report (SIGUSR1, `/metrics`): updated as they go, read when a report is made.
#[derive(Debug, Default)]
struct Status {
    server: Mutex<String>,
    up: AtomicBool,
    outbox: AtomicU64,
    written: AtomicU64,
    applied: AtomicU64,
    loads: AtomicU64,
    writebacks: AtomicU64,
    degraded: AtomicU64,
}

/// The Redis backend as the metrics registry reads it.
#[derive(Debug)]
pub struct RedisView {
    node: String,
    store: Arc<Store>,
    status: Arc<Status>,
}

impl crate::metrics::ClusterSource for RedisView {
    fn figures(&self) -> crate::metrics::ClusterFigures {
        let s = &self.status;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::metrics::ClusterFigures {
            node: self.node.clone(),
            records: self.store.len(),
            bindings: self.store.len_of(Kind::SessionBinding),
            ticket_keys: self.store.len_of(Kind::TicketKeys),
            digest: self.store.digest(),
            stream_last: 0,
            peers: Vec::new(),
            redis: Some(crate::metrics::RedisFigures {
                server: s.server.lock().clone(),
                up: s.up.load(Ordering::Relaxed),
                outbox: n(&s.outbox),
                written: n(&s.written),
                applied: n(&s.applied),
                loads: n(&s.loads),
                writebacks: n(&s.writebacks),
                degraded: n(&s.degraded),
                stale: self.store.is_stale(),
            }),
        }
    }
}

/// Whether the first load from the server is done (a node serves only after it, or a timeout).
#[derive(Default)]
struct Loaded {
    done: Mutex<bool>,
    cv: Condvar,
}

/// The running Redis backend: its writer and feed threads.
pub struct RedisStore {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    loaded: Arc<Loaded>,
    counters: Arc<OnceLock<Arc<Counters>>>,
    pub node: String,
    store: Arc<Store>,
    status: Arc<Status>,
}

impl RedisStore {
    /// Starts the writer and the feed; the feed loads the server's records first.
    pub fn start(setup: RedisSetup, feed: RedisFeed) -> std::io::Result<RedisStore> {
        let setup = Arc::new(setup);
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(0))?);
        feed.feed.set_waker(waker.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let loaded = Arc::new(Loaded::default());
        let counters = Arc::new(OnceLock::new());
        let status = Arc::new(Status::default());
        let me = setup.node_id();
        let mut known: BTreeSet<u16> = feed
            .nodes
            .iter()
            .map(|n| crate::store::node_id(n))
            .collect();
        known.insert(me);
        let mut tail = Tail {
            setup: setup.clone(),
            store: feed.store.clone(),
            hlc: feed.hlc.clone(),
            sticky: feed.sticky,
            shared: feed.shared,
            slot: feed.slot,
            counters: counters.clone(),
            stop: stop.clone(),
            loaded: loaded.clone(),
            known,
            me,
            last_id: None,
            fresh_at: Instant::now(),
            peers_given: false,
            status: status.clone(),
        };
        let mut writer = Writer {
            setup: setup.clone(),
            feed: feed.feed,
            store: feed.store.clone(),
            poll,
            stop: stop.clone(),
            conn: None,
            sha: String::new(),
            run_id: None,
            next_try: Instant::now(),
            backoff: MIN_BACKOFF,
            outbox: VecDeque::new(),
            down_logged: false,
            dropped: 0,
            used_at: Instant::now(),
            tried_at: Instant::now(),
            status: status.clone(),
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("store-redis".into())
                .spawn(move || writer.run())?,
            std::thread::Builder::new()
                .name("store-feed".into())
                .spawn(move || tail.run())?,
        ];
        Ok(RedisStore {
            threads,
            stop,
            waker,
            loaded,
            counters,
            node: setup.node.clone(),
            store: feed.store,
            status,
        })
    }

    /// What SIGUSR1 and the Prometheus rendering read.
    pub fn view(&self) -> Arc<RedisView> {
        Arc::new(RedisView {
            node: self.node.clone(),
            store: self.store.clone(),
            status: self.status.clone(),
        })
    }

    /// Waits until the store holds what the server held when the node started, or `timeout` passes;
    /// the caller serves clients after it. `true` when loaded.
    pub fn wait_loaded(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = self.loaded.done.lock();
        while !*done {
            if self.loaded.cv.wait_until(&mut done, deadline).timed_out() {
                break;
            }
        }
        *done
    }

    /// Records held in the local copy.
    pub fn records(&self) -> usize {
        self.store.len()
    }

    /// The node's counters, whose peers the feed extends when a node it has not seen writes a share.
    pub fn set_counters(&self, counters: Arc<Counters>) {
        let _ = self.counters.set(counters);
    }

    /// Stops both threads (the writer sends what it holds first, when the server is reachable).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A record on its way to the server, and for a `sync` write who to tell when it is there.
struct Pending {
    record: Record,
    on_ack: Option<OnAck>,
}

/// The writer thread: local writes to the server.
struct Writer {
    setup: Arc<RedisSetup>,
    feed: WriteFeed,
    store: Arc<Store>,
    poll: Poll,
    stop: Arc<AtomicBool>,
    conn: Option<Conn>,
    /// The `PUT` script's SHA-1 on the connected server.
    sha: String,
    /// The server's `run_id` when last connected.
    run_id: Option<String>,
    next_try: Instant,
    backoff: Duration,
    outbox: VecDeque<Pending>,
    /// The loss of the server was logged (once per outage).
    down_logged: bool,
    /// Asynchronous records dropped from a full outbox since the server was last reachable.
    dropped: u64,
    /// When the connection was last used: an idle one is checked with `PING` every [`HEARTBEAT`], so a
    /// restarted server is noticed (and given back its records) without waiting for a write.
    used_at: Instant,
    /// When a connection was last tried.
    tried_at: Instant,
    status: Arc<Status>,
}

impl Writer {
    fn run(&mut self) {
        let mut events = Events::with_capacity(4);
        let mut swept = Instant::now();
        loop {
            let now = Instant::now();
            // Workers do not wake this thread for asynchronous writes (a system call per write would
            // cost more): it looks at their queues every 2 ms; a sync write rings the waker.
            let tick = if self.conn.is_some() && !self.outbox.is_empty() {
                // More to send than one turn sends: look at the queues and go on.
                Duration::ZERO
            } else if self.conn.is_some() || self.outbox.is_empty() {
                Duration::from_millis(2)
            } else {
                self.next_try
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            };
            if let Err(e) = self.poll.poll(&mut events, Some(tick)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("store: redis writer: poll failed: {e}");
                    return;
                }
            }
            let stopping = self.stop.load(Ordering::Acquire);
            let outbox = &mut self.outbox;
            let mut sync = false;
            self.feed.drain_with_acks(usize::MAX, |record, on_ack| {
                // A sync write goes first: someone waits for it, and the order in which records
                // reach the server does not matter (the script keeps the newer of two versions).
                if on_ack.is_some() {
                    sync = true;
                    outbox.push_front(Pending { record, on_ack });
                } else {
                    outbox.push_back(Pending { record, on_ack });
                }
            });
            self.bound_outbox();
            let now = Instant::now();
            // A sync write waits for an answer within `sync_timeout`, which the back-off may exceed:
            // it tries at once (a refused connection costs little), at most every `MIN_BACKOFF`.
            let due = now >= self.next_try
                || (sync && now.saturating_duration_since(self.tried_at) >= MIN_BACKOFF);
            if self.conn.is_none() && due {
                self.connect(now);
            }
            if self.conn.is_some() {
                self.flush(now);
            }
            if now.saturating_duration_since(self.used_at) >= HEARTBEAT {
                self.heartbeat(now);
            }
            if self.conn.is_none() && self.setup.degrade {
                // `on_sync_timeout = "degrade"` with the server known down: serve at once rather than
                // make every sync write wait out `sync_timeout` (Envoy's limiter waits per request).
                // The records stay in the outbox and are written when the server is back.
                for p in self.outbox.iter_mut() {
                    if let Some(f) = p.on_ack.take() {
                        f();
                        self.status.degraded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if now.saturating_duration_since(swept) >= Duration::from_secs(1) {
                self.store.remove_expired(crate::sticky::unix_now());
                swept = now;
            }
            self.status
                .outbox
                .store(self.outbox.len() as u64, Ordering::Relaxed);
            self.status.up.store(self.conn.is_some(), Ordering::Relaxed);
            if stopping {
                return;
            }
        }
    }

    /// Keeps the outbox within [`MAX_OUTBOX`] by dropping the oldest asynchronous records (a sync
    /// write is kept: someone waits for it, or was told it is coming).
    fn bound_outbox(&mut self) {
        while self.outbox.len() > MAX_OUTBOX {
            let Some(i) = self.outbox.iter().position(|p| p.on_ack.is_none()) else {
                return;
            };
            self.outbox.remove(i);
            self.dropped += 1;
        }
    }

    fn connect(&mut self, now: Instant) {
        self.tried_at = now;
        let result = self.setup.connect().and_then(|mut conn| {
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(layout::PUT)
                .query(&mut conn.con)
                .map_err(|source| conn.error(source))?;
            Ok((conn, sha))
        });
        match result {
            Ok((conn, sha)) => {
                let other = self.run_id.as_ref().is_some_and(|r| *r != conn.run_id);
                log::info!(
                    "store: redis {} reached as the primary (run_id {})",
                    conn.address,
                    conn.run_id
                );
                if other || self.dropped > 0 {
                    // Restarted (without its data, perhaps) or failed over to a replica that may
                    // have missed the last writes, or records were dropped here meanwhile: give it
                    // back everything this node holds. The script keeps whatever it has that is newer.
                    self.republish();
                }
                self.run_id = Some(conn.run_id.clone());
                *self.status.server.lock() = conn.address.clone();
                self.conn = Some(conn);
                self.sha = sha;
                self.backoff = MIN_BACKOFF;
                self.down_logged = false;
                self.dropped = 0;
            }
            Err(e) => {
                if !self.down_logged {
                    log::warn!(
                        "store: redis unreachable, {} record(s) wait to be written: {e}",
                        self.outbox.len()
                    );
                    self.down_logged = true;
                }
                self.next_try = now + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Checks an idle connection; a failed check reconnects (and a new server gets this node's records).
    fn heartbeat(&mut self, now: Instant) {
        self.used_at = now;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = redis::cmd("PING").query::<String>(&mut conn.con) {
            log::warn!("store: redis {}: {e}; reconnecting", conn.address);
            self.conn = None;
            self.next_try = now;
        }
    }

    /// Queues every record of the local store (expired ones aside) to be written again.
    fn republish(&mut self) {
        self.status.writebacks.fetch_add(1, Ordering::Relaxed);
        let now = crate::sticky::unix_now();
        let before = self.outbox.len();
        let reader = self.store.reader();
        for r in reader.iter(None) {
            if !crate::store::table::expired(r, now) {
                self.outbox.push_back(Pending {
                    record: r.clone(),
                    on_ack: None,
                });
            }
        }
        log::warn!(
            "store: redis server is new (restarted or failed over): writing back {} record(s) held here",
            self.outbox.len() - before
        );
    }

    /// Sends the outbox in pipelines until it is empty, the connection fails, or [`FLUSH_BATCHES`]
    /// went out (a write-back of a whole store then leaves room for new sync writes between batches).
    fn flush(&mut self, now: Instant) {
        let stream = self.setup.layout.stream();
        let mut enc = Vec::new();
        for _ in 0..FLUSH_BATCHES {
            if self.outbox.is_empty() {
                return;
            }
            let n = self.outbox.len().min(BATCH);
            let mut pipe = redis::pipe();
            let mut sync = false;
            for p in self.outbox.iter().take(n) {
                let r = &p.record;
                enc.clear();
                self.setup.sealer.seal(r, &mut enc);
                pipe.cmd("EVALSHA")
                    .arg(&self.sha)
                    .arg(2)
                    .arg(self.setup.layout.record(r.kind, &r.key))
                    .arg(&stream)
                    .arg(&enc[..])
                    .arg(layout::version_offset(r))
                    .arg(r.expires)
                    .arg(self.setup.stream_length);
                sync |= p.on_ack.is_some();
            }
            let wait = sync && self.setup.wait_replicas > 0;
            if wait {
                // Within the connection's read timeout.
                let ms = (self.setup.command_timeout / 2).as_millis().max(1) as u64;
                pipe.cmd("WAIT").arg(self.setup.wait_replicas).arg(ms);
            }
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            self.used_at = now;
            match pipe.query::<Vec<i64>>(&mut conn.con) {
                Ok(replies) => {
                    // One reply per record (1: taken, 0: the server held it or newer), then WAIT's.
                    let taken: i64 = replies.iter().take(n).sum();
                    self.status
                        .written
                        .fetch_add(taken.max(0) as u64, Ordering::Relaxed);
                    let replicas = replies.get(n).copied().unwrap_or(0);
                    let held = !wait || replicas >= i64::from(self.setup.wait_replicas);
                    if !held {
                        log::warn!(
                            "store: redis: {replicas} of {} replica(s) hold a sync write: not acknowledged",
                            self.setup.wait_replicas
                        );
                    }
                    for p in self.outbox.drain(..n) {
                        if let Some(f) = p.on_ack {
                            // Not held by enough replicas: the request times out into its policy.
                            if held || self.setup.degrade {
                                f();
                            }
                        }
                    }
                }
                Err(e) => {
                    // The connection, or the server (READONLY after a failover, NOSCRIPT after a
                    // restart): connect again, to whichever address is the primary now.
                    log::warn!(
                        "store: redis {}: {e}; reconnecting ({} record(s) wait)",
                        conn.address,
                        self.outbox.len()
                    );
                    self.conn = None;
                    self.down_logged = true;
                    self.next_try = now + self.backoff;
                    return;
                }
            }
        }
    }
}

/// The feed thread: other nodes' writes from the server.
struct Tail {
    setup: Arc<RedisSetup>,
    store: Arc<Store>,
    hlc: Arc<crate::store::Hlc>,
    sticky: Arc<Stickiness>,
    shared: SharedSnapshot,
    slot: usize,
    counters: Arc<OnceLock<Arc<Counters>>>,
    stop: Arc<AtomicBool>,
    loaded: Arc<Loaded>,
    /// Node ids seen writing (this one's included): the counters' peers are the others.
    known: BTreeSet<u16>,
    me: u16,
    /// The last stream entry applied (`None`: load everything first).
    last_id: Option<String>,
    /// When the feed was last known current (a read returned, empty or not).
    fresh_at: Instant,
    /// The counters were given their peers (they are set after the threads start).
    peers_given: bool,
    status: Arc<Status>,
}

impl Tail {
    fn run(&mut self) {
        let mut conn: Option<Conn> = None;
        let mut backoff = MIN_BACKOFF;
        let mut down_logged = false;
        self.set_peers();
        while !self.stop.load(Ordering::Acquire) {
            self.check_staleness();
            if !self.peers_given {
                self.set_peers();
            }
            let Some(c) = conn.as_mut() else {
                match self.setup.connect().and_then(|mut c| {
                    c.con
                        .set_read_timeout(Some(self.setup.command_timeout + BLOCK))
                        .map_err(|e| c.error(e))?;
                    self.catch_up(&mut c)?;
                    Ok(c)
                }) {
                    Ok(c) => {
                        conn = Some(c);
                        backoff = MIN_BACKOFF;
                        down_logged = false;
                        self.fresh();
                        self.mark_loaded();
                    }
                    Err(e) => {
                        if !down_logged {
                            log::warn!("store: redis feed: {e}");
                            down_logged = true;
                        }
                        self.sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            match self.read(c) {
                Ok(()) => self.fresh(),
                Err(e) => {
                    log::warn!("store: redis feed: {e}; reconnecting");
                    conn = None;
                    down_logged = true;
                }
            }
        }
    }

    /// Sleeps `d` in short steps, so a stop is not kept waiting.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10).min(d));
        }
    }

    fn fresh(&mut self) {
        self.fresh_at = Instant::now();
        if self.store.is_stale() {
            self.store.set_stale(false);
            log::info!("store: redis feed current again: logins are honoured again");
        }
    }

    fn check_staleness(&self) {
        if !self.store.is_stale() && self.fresh_at.elapsed() > self.setup.max_staleness {
            self.store.set_stale(true);
            log::warn!(
                "store: redis feed down for more than store.max_staleness ({}): routes with logins answer 503",
                humantime::format_duration(self.setup.max_staleness)
            );
        }
    }

    fn mark_loaded(&self) {
        let mut done = self.loaded.done.lock();
        if !*done {
            *done = true;
            self.loaded.cv.notify_all();
        }
    }

    /// After a (re)connection: load everything when nothing was loaded yet or when entries after the
    /// last one applied were trimmed from the stream; else the stream resumes where it was.
    fn catch_up(&mut self, c: &mut Conn) -> Result<(), RedisStoreError> {
        let stream = self.setup.layout.stream();
        if let Some(last) = &self.last_id {
            let first: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query(&mut c.con)
                .map_err(|e| c.error(e))?;
            let gap = first
                .first()
                .is_some_and(|(id, _)| stream_id(id) > stream_id(last));
            if !gap {
                return Ok(());
            }
            log::warn!(
                "store: redis feed fell behind the stream's trimmed length: loading every record"
            );
        }
        self.load(c)
    }

    /// Loads every record the server holds: notes the stream's last entry first, so what is written
    /// during the scan is read from the stream afterwards (applying a record twice changes nothing).
    fn load(&mut self, c: &mut Conn) -> Result<(), RedisStoreError> {
        let stream = self.setup.layout.stream();
        let top: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut c.con)
            .map_err(|e| c.error(e))?;
        let top = top
            .first()
            .map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        let pattern = self.setup.layout.records_pattern();
        let mut cursor: u64 = 0;
        let mut count = 0usize;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(READ_COUNT)
                .query(&mut c.con)
                .map_err(|e| c.error(e))?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("GET").arg(k);
                }
                let values: Vec<Option<Vec<u8>>> =
                    pipe.query(&mut c.con).map_err(|e| c.error(e))?;
                for (k, v) in keys.iter().zip(values) {
                    // Expired or deleted between the scan and the read.
                    let Some(v) = v else { continue };
                    match self.setup.sealer.open(&v) {
                        Ok(r) => {
                            self.apply(r);
                            count += 1;
                        }
                        Err(e) => log::warn!("store: redis key {k}: not a record ({e}): skipped"),
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        log::info!(
            "store: loaded {count} record(s) from redis {} (stream at {top})",
            c.address
        );
        self.last_id = Some(top);
        self.set_peers();
        self.status.loads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One `XREAD BLOCK`: applies what arrived after the last entry applied.
    fn read(&mut self, c: &mut Conn) -> Result<(), RedisStoreError> {
        let last = self.last_id.clone().unwrap_or_else(|| "0-0".to_string());
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.setup.layout.stream())
            .arg(&last)
            .query(&mut c.con)
            .map_err(|e| c.error(e))?;
        let Some(reply) = reply else {
            return Ok(());
        };
        let mut new_peer = false;
        for key in reply.keys {
            for entry in key.ids {
                let bytes = match entry.map.get("r") {
                    Some(redis::Value::BulkString(b)) => Some(b),
                    _ => None,
                };
                match bytes.map(|b| self.setup.sealer.open(b)) {
                    Some(Ok(r)) => new_peer |= self.apply(r),
                    Some(Err(e)) => {
                        log::warn!("store: redis stream entry {}: ({e}): skipped", entry.id)
                    }
                    None => log::warn!("store: redis stream entry {}: no record", entry.id),
                }
                self.last_id = Some(entry.id);
            }
        }
        if new_peer {
            self.set_peers();
        }
        Ok(())
    }

    /// Applies another node's record (or this node's own, read back: then stale, a no-op) as the mesh
    /// applies a peer's. Returns whether it showed a node not seen before.
    fn apply(&mut self, record: Record) -> bool {
        if let Err(e) = self.hlc.observe(record.version.hlc) {
            log::debug!("store: a record from redis not merged into the clock: {e}");
        }
        let mut new_peer = false;
        if record.kind == Kind::Counter && record.key.len() >= 2 {
            let k = &record.key[record.key.len() - 2..];
            new_peer = self.known.insert(u16::from_be_bytes([k[0], k[1]]));
        }
        let op = crate::replication::snapshot_recv::binding_in(&self.shared, &record, &mut None);
        if self.store.apply(record).changed() {
            self.status.applied.fetch_add(1, Ordering::Relaxed);
            if let Some(op) = op {
                crate::replication::snapshot_recv::apply_bindings_to(
                    &self.sticky,
                    self.slot,
                    &[op],
                );
            }
        }
        new_peer
    }

    /// The counters' peers: every node seen but this one.
    fn set_peers(&mut self) {
        if let Some(c) = self.counters.get() {
            c.set_peers(
                self.known
                    .iter()
                    .copied()
                    .filter(|n| *n != self.me)
                    .collect(),
            );
            self.peers_given = true;
        }
    }
}

/// A stream entry id (`ms-seq`) as numbers, for ordering.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        assert!(stream_id("1700000000000-5") > stream_id("1700000000000-4"));
        assert!(stream_id("1700000000001-0") > stream_id("1700000000000-99"));
        assert_eq!(stream_id("0-0"), (0, 0));
    }
}
