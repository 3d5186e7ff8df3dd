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

mod feed;
mod fetch;
pub mod layout;
pub mod seal;
mod writer;

use crate::config::{Config, StoreConfig, SyncTimeoutPolicy};
use crate::limits::counters::Counters;
use crate::snapshot::SharedSnapshot;
use crate::sticky::Stickiness;
use crate::store::{Kind, Store, WriteFeed};
use layout::Layout;
use mio::{Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Reconnection back-off: from this, doubling, up to `MAX_BACKOFF`.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
        let (asks, asked) = crossbeam_channel::bounded::<fetch::Ask>(fetch::QUEUE);
        feed.feed.set_fetch(Arc::new(move |kind, key, done| {
            asks.try_send((kind, key.to_vec(), done)).is_ok()
        }));
        let mut fetcher = fetch::Fetcher {
            setup: setup.clone(),
            store: feed.store.clone(),
            hlc: feed.hlc.clone(),
            sticky: feed.sticky.clone(),
            shared: feed.shared.clone(),
            slot: feed.slot,
            asks: asked,
            stop: stop.clone(),
        };
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
        let mut tail = feed::Tail {
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
        let mut writer = writer::Writer {
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
                .name("store-fetch".into())
                .spawn(move || fetcher.run())?,
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
