//! The runtime: worker threads, listening sockets, and the main thread that handles signals (reload,
//! stop, report) and publishes config snapshots.

mod cluster_reload;
pub mod listener;
pub mod worker;

use crate::access_log::AccessLog;
use crate::balance::BackendRegistry;
use crate::config::{self, Config, StoreConfig};
use crate::proxy::context::{Command, Ctx, CtxParts, ListenerInfo, Peer};
use crate::snapshot::{ConfigSnapshot, SharedSnapshot};
use crate::sticky::Stickiness;
use crate::tls::server::TlsShared;
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, select, unbounded};
use mio::{Poll, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use worker::{Worker, WorkerSettings};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {name}: cannot listen on {address}: {source}")]
    Listen {
        name: String,
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    /// `[cluster]` could not be set up (replication listener, link certificates).
    #[error("{0}")]
    Cluster(String),
    /// `[store] backend = "redis"` could not be set up (its password or CA file, an address).
    #[error("{0}")]
    Store(#[from] crate::store::redis::RedisStoreError),
    /// `[admin]` could not be set up (its token).
    #[error("admin: {0}")]
    Admin(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How the balancer was started, for reloads and logs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Config file to re-read on SIGHUP (`None`: embedded config, nothing to reload).
    pub config_path: Option<PathBuf>,
    /// Overrides `[workers] count`.
    pub workers: Option<usize>,
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// A running balancer: its workers, the published snapshot and the state reloads need.
pub struct Server {
    workers: Vec<WorkerHandle>,
    shared: SharedSnapshot,
    registry: BackendRegistry,
    config: Config,
    options: RunOptions,
    generation: u64,
    /// Where each listener ended up (port 0 resolved), in config order.
    pub addresses: Vec<SocketAddr>,
    exits: Receiver<usize>,
    access_log: Option<(AccessLog, JoinHandle<()>)>,
    tls: TlsShared,
    sticky: Arc<Stickiness>,
    /// Every worker's counters and histograms.
    metrics: Arc<crate::metrics::Registry>,
    /// The replication thread and its peer links (`[cluster]`).
    replication: Option<crate::replication::node::Replication>,
    /// The Redis backend's writer and feed threads (`[store] backend = "redis"`).
    redis: Option<crate::store::redis::RedisStore>,
    /// Active health checks and passive cool-downs, one thread for the process.
    prober: Option<crate::health::Prober>,
    /// Signal handling, set up before the workers accept anything: it needs descriptors, and a flood of
    /// clients must not be able to take the last ones first.
    signals: Option<signal_hook::iterator::Signals>,
    /// The auth key keeper's thread (with pools), and its stop flag.
    auth_keeper: Option<JoinHandle<()>>,
    auth_stop: Arc<std::sync::atomic::AtomicBool>,
    /// The counters' flusher thread (with a store), stopped with the same flag; and the counters.
    counters_flusher: Option<JoinHandle<()>>,
    counters: Arc<crate::limits::counters::Counters>,
    /// Writes `[metering] file` at the end of every minute.
    metering_reporter: Option<JoinHandle<()>>,
    /// Compiles the deny list into the listeners' kernel filter.
    deny_filter: Option<JoinHandle<()>>,
    /// The notification queues (`[notifications]`), and the thread subscribed to upstream feeds.
    notify: Option<Arc<crate::notify::Hub>>,
    notify_feeds: Option<JoinHandle<()>>,
    /// Where the publish listener ended up (port 0 resolved).
    pub publish_address: Option<SocketAddr>,
    /// The admin API (`[admin]`), the jobs its calls hand the main thread, and where it listens.
    admin: Option<Arc<crate::admin::Admin>>,
    admin_jobs: Option<Receiver<crate::admin::Job>>,
    pub admin_address: Option<SocketAddr>,
    /// The store (with `[cluster]` or logins), for the admin API's scans on the main thread.
    store: Option<Arc<crate::store::Store>>,
}

/// Store writers beyond the workers' own.
const EXTRA_WRITERS: usize = 4;
/// A store mirrored with other nodes (by either backend): sized for the session table up front (growing
/// a large lock-free map stalls whoever triggers the copy), watched by the notification queues from its
/// first record on, its clock, and the writers of `count` workers and the extra threads.
#[allow(clippy::type_complexity)]
fn replicated_store(
    config: &Config,
    notify: Option<&Arc<crate::notify::Hub>>,
    node_id: u16,
    count: usize,
) -> (
    Arc<crate::store::Store>,
    Arc<crate::store::Hlc>,
    crate::store::WriteFeed,
    Vec<Option<crate::store::StoreWriter>>,
    ExtraWriters,
) {
    let store = Arc::new(crate::store::Store::with_capacity(
        config.sessions.max_entries.min(1 << 20),
    ));
    if let Some(hub) = notify {
        hub.watch(&store);
    }
    let hlc = Arc::new(crate::store::Hlc::default());
    let (f, w) = crate::store::WriteFeed::new(
        store.clone(),
        hlc.clone(),
        node_id,
        count + EXTRA_WRITERS,
        65_536,
    );
    let (w, e) = ExtraWriters::split(store.clone(), w);
    (store, hlc, f, w, e)
}

/// How long a node with the Redis backend waits at start for the server's records before it serves
/// with an empty store (and says so); it loads them when the server answers.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The store and the writers of the threads that write to it besides the workers.
struct ExtraWriters {
    store: Arc<crate::store::Store>,
    keys: Option<crate::store::StoreWriter>,
    relay: Option<crate::store::StoreWriter>,
    counters: Option<crate::store::StoreWriter>,
    /// The notification feeds' thread's.
    feeds: Option<crate::store::StoreWriter>,
}

impl ExtraWriters {
    /// Splits `count + EXTRA_WRITERS` writers into the workers' (first) and the threads'.
    fn split(
        store: Arc<crate::store::Store>,
        mut w: Vec<crate::store::StoreWriter>,
    ) -> (Vec<Option<crate::store::StoreWriter>>, ExtraWriters) {
        let feeds = w.pop();
        let counters = w.pop();
        let relay = w.pop();
        let keys = w.pop();
        (
            w.into_iter().map(Some).collect(),
            ExtraWriters {
                store,
                keys,
                relay,
                counters,
                feeds,
            },
        )
    }
}

/// The signals the main thread handles: stop (twice: at once), reload, report.
const STOP_RELOAD_REPORT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGUSR1];

/// Sends the worker's index when its thread ends, however it ends (a panic included).
struct ExitNotice(usize, Sender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!("worker {} panicked; stopping the balancer", self.0);
        }
        let _ = self.1.send(self.0);
    }
}

impl Server {
    /// Binds every listener and starts the workers.
    pub fn start(config: Config, options: RunOptions) -> Result<Server, StartError> {
        raise_open_file_limit();
        let signals = Some(signal_hook::iterator::Signals::new(STOP_RELOAD_REPORT)?);
        let count = options
            .workers
            .unwrap_or_else(|| config.workers.count.resolve())
            .max(1);
        let mut registry = BackendRegistry::default();
        let tls = TlsShared::new(&config);
        let listener_names = config
            .listeners
            .iter()
            .map(|l| l.name.clone().unwrap_or_else(|| l.address.clone()))
            .collect();
        let metrics = Arc::new(crate::metrics::Registry::new(count, listener_names));
        let snapshot = Arc::new(
            ConfigSnapshot::build(&config, 1, &mut registry, &tls, &metrics.names)
                .map_err(StartError::Tls)?,
        );
        let shared: SharedSnapshot = Arc::new(ArcSwap::new(Arc::clone(&snapshot)));

        // Bind everything before starting anything, so a busy port fails the start cleanly.
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..count).map(|_| Vec::new()).collect();
        let mut addresses = Vec::new();
        let mut infos = Vec::new();
        for l in &config.listeners {
            let name = l.name.clone().unwrap_or_else(|| l.address.clone());
            let address: SocketAddr = l.address.parse().map_err(|_| StartError::Listen {
                name: name.clone(),
                address: l.address.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an ip:port"),
            })?;
            let (bound, sockets) =
                listener::bind_all(address, l.backlog, count).map_err(|e| StartError::Listen {
                    name: name.clone(),
                    address: l.address.clone(),
                    source: e,
                })?;
            for (w, s) in sockets.into_iter().enumerate() {
                per_worker[w].push(s);
            }
            addresses.push(bound);
            infos.push(ListenerInfo {
                name,
                trust_forwarded: l.trust_forwarded,
                proto: if l.tls.is_some() { "https" } else { "http" },
                redirect_https: l.redirect_https,
                plain_http: l.tls.as_ref().map(|t| t.plain_http).unwrap_or_default(),
                publish: false,
                admin: false,
            });
        }
        // The notifications' publish listener: one more listener on the workers (same parser, same
        // keep-alive), whose every request is a publish; it comes after the client listeners.
        let mut publish_address = None;
        if let Some(a) = config
            .notifications
            .as_ref()
            .and_then(|n| n.publish_address.as_ref())
        {
            let name = "publish".to_string();
            let address: SocketAddr = a.parse().map_err(|_| StartError::Listen {
                name: name.clone(),
                address: a.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an ip:port"),
            })?;
            let (bound, sockets) =
                listener::bind_all(address, 1024, count).map_err(|e| StartError::Listen {
                    name: name.clone(),
                    address: a.clone(),
                    source: e,
                })?;
            for (w, s) in sockets.into_iter().enumerate() {
                per_worker[w].push(s);
            }
            publish_address = Some(bound);
            infos.push(ListenerInfo {
                name,
                trust_forwarded: false,
                proto: "http",
                redirect_https: false,
                plain_http: Default::default(),
                publish: true,
                admin: false,
            });
        }
        // The admin listener: one more listener on the workers, whose every request is an admin call
        // (answered by the `admin` stage before anything else); it comes after the others.
        let mut admin_address = None;
        if let Some(a) = &config.admin {
            let name = "admin".to_string();
            let address: SocketAddr = a.address.parse().map_err(|_| StartError::Listen {
                name: name.clone(),
                address: a.address.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an ip:port"),
            })?;
            let (bound, sockets) =
                listener::bind_all(address, 128, count).map_err(|e| StartError::Listen {
                    name: name.clone(),
                    address: a.address.clone(),
                    source: e,
                })?;
            for (w, s) in sockets.into_iter().enumerate() {
                per_worker[w].push(s);
            }
            admin_address = Some(bound);
            infos.push(ListenerInfo {
                name,
                trust_forwarded: false,
                proto: if a.tls_files().0.is_some() {
                    "https"
                } else {
                    "http"
                },
                redirect_https: false,
                plain_http: Default::default(),
                publish: false,
                admin: true,
            });
        }
        // `[store] backend = "redis"`: the node registers with the server first — its slot among the
        // nodes sharing the prefix keeps its notification ids apart from theirs.
        let redis_setup = crate::store::redis::RedisSetup::from_config(&config)?;
        let registered = redis_setup.as_ref().map(|r| match r.register() {
            Ok((slot, nodes)) => {
                if slot.is_none() {
                    log::warn!(
                        "store: more than 16 nodes share store.prefix: notification ids of two nodes may collide"
                    );
                }
                (slot.unwrap_or((r.node_id() % 16) as u8), nodes)
            }
            Err(e) => {
                log::warn!("store: cannot register node {} with redis: {e}", r.node);
                ((r.node_id() % 16) as u8, Vec::new())
            }
        });
        // The notification queues' indexes watch the store from its first record on.
        let notify = config.notifications.as_ref().map(|_| {
            let slot = match &registered {
                Some((slot, _)) => *slot,
                None => config.cluster.as_ref().map_or(0, |c| {
                    let peers: Vec<&str> = c.peers.iter().map(|p| p.name.as_str()).collect();
                    crate::notify::queue::IdClock::slot_of(&c.node, &peers)
                }),
            };
            crate::notify::Hub::new(slot)
        });

        // The replication listener is bound with the others, before anything starts.
        let replication =
            crate::replication::node::Setup::from_config(&config).map_err(StartError::Cluster)?;
        if let Some(addr) = replication.as_ref().and_then(|r| r.local_addr()) {
            log::info!("replication listening on {addr}");
        }

        let access_log = if config.access_log.enabled {
            Some(AccessLog::start(&config.access_log)?)
        } else {
            None
        };

        let prober = crate::health::Prober::start(Arc::clone(&shared))?;

        let (exit_tx, exits) = unbounded();
        let mut workers = Vec::with_capacity(count);
        let kernel_filter = Arc::new(crate::limits::kernel_filter::KernelFilter::default());
        let settings = WorkerSettings {
            max_connections: config.workers.max_connections,
            accept_batch: config.workers.accept_batch,
            busy_poll: config.workers.busy_poll,
            batch_window: config.workers.batch_window,
            batch_target: config.workers.batch_target,
            kernel_filter: kernel_filter.clone(),
        };
        // Every worker's channel and waker exist before any worker starts: QoS grants cross workers.
        let mut polls = Vec::with_capacity(count);
        let mut peers = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
        for _ in 0..count {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
            let (tx, rx) = unbounded();
            peers.push(Peer {
                commands: tx,
                waker,
            });
            receivers.push(rx);
            polls.push(poll);
        }
        let peers = Arc::new(peers);
        // One counter slot per worker, and one for the replication thread (bindings from peers).
        let sticky =
            Arc::new(Stickiness::new(&config.sessions, count + 1).map_err(StartError::Tls)?);
        // With `[cluster]`: the replicated store, its clock, and each worker's writer into it.
        let mut writers: Vec<Option<crate::store::StoreWriter>> =
            (0..count).map(|_| None).collect();
        let mut feed = None;
        // With `[cluster]` and `[uploads]`: the side channel upload bytes take to the peers.
        let spool_side = match (&replication, &config.uploads) {
            (Some(_), Some(u)) => Some(crate::replication::side::SpoolSide::new(u.window)),
            _ => None,
        };
        // Three more writers than workers: the auth key keeper's, the auth relay's and the counters'
        // flusher's threads.
        let auth_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut auth_keeper = None;
        let mut extra: Option<ExtraWriters> = None;
        if let Some(setup) = &replication {
            // Sized for the session table up front: growing a large lock-free map stalls whoever
            // triggers the copy.
            let (store, hlc, f, w, e) = replicated_store(
                &config,
                notify.as_ref(),
                crate::store::node_id(setup.node()),
                count,
            );
            extra = Some(e);
            writers = w;
            feed = Some(crate::replication::node::Feed {
                store,
                hlc,
                feed: f,
                sticky: sticky.clone(),
                shared: Arc::clone(&shared),
                slot: count,
                tickets: tls.tickets.clone(),
                ticket_rotation: config.tls.ticket_rotation,
                ready_timeout: config
                    .cluster
                    .as_ref()
                    .map_or(Duration::ZERO, |c| c.ready_timeout),
                spool: spool_side.clone(),
                notify: notify.clone(),
            });
        }
        // With `[store] backend = "redis"`: the same store and writers, mirrored with the server by the
        // Redis backend's threads instead of the replication thread.
        let mut redis_feed = None;
        if let (Some(setup), Some((_, nodes))) = (&redis_setup, &registered) {
            let (store, hlc, f, w, e) =
                replicated_store(&config, notify.as_ref(), setup.node_id(), count);
            extra = Some(e);
            writers = w;
            redis_feed = Some(crate::store::redis::RedisFeed {
                store,
                hlc,
                feed: f,
                sticky: sticky.clone(),
                shared: Arc::clone(&shared),
                slot: count,
                nodes: nodes.clone(),
            });
        }
        let redis = match (redis_setup, redis_feed) {
            (Some(setup), Some(feed)) => {
                let r = crate::store::redis::RedisStore::start(setup, feed)?;
                // Served only once the server's records are in (a starting mesh node waits for a
                // peer's snapshot alike); meanwhile connections wait in the listen backlog.
                if r.wait_loaded(REDIS_READY_TIMEOUT) {
                    log::info!(
                        "store: node {} loaded {} record(s) from redis before serving",
                        r.node,
                        r.records()
                    );
                } else {
                    log::warn!(
                        "store: node {} could not load from redis within {}: serving with an empty store",
                        r.node,
                        humantime::format_duration(REDIS_READY_TIMEOUT)
                    );
                }
                // SIGUSR1 and the Prometheus rendering read the server link's figures and the store's.
                metrics.set_cluster(r.view());
                Some(r)
            }
            _ => None,
        };
        if config.sessions.cookie_keys.is_empty()
            && config
                .routes
                .iter()
                .any(|r| matches!(r.session, Some(crate::config::SessionIdentity::Insert(_))))
        {
            log::warn!(
                "sessions.cookie_keys is empty: session cookies are sealed with a key made at start-up and \
                 will not be honoured after a restart or by another node"
            );
        }
        // With `[cluster]`: the replication thread starts first, and clients are served only once a
        // peer's snapshot is in (or no peer answered within `ready_timeout`); meanwhile connections wait
        // in the listeners' kernel backlog.
        let replication = match replication {
            Some(setup) => {
                let has_peers = config.cluster.as_ref().is_some_and(|c| !c.peers.is_empty());
                let timeout = config
                    .cluster
                    .as_ref()
                    .map_or(Duration::ZERO, |c| c.ready_timeout);
                let r = crate::replication::node::Replication::start(
                    setup,
                    feed.ok_or_else(|| StartError::Cluster("no store for the cluster".into()))?,
                )?;
                let waited = std::time::Instant::now();
                match r.wait_ready(timeout, has_peers) {
                    crate::replication::node::ReadyState::Synced => log::info!(
                        "cluster: node {} synced from a peer ({} record(s)) before serving",
                        r.node,
                        r.store_summary().0
                    ),
                    crate::replication::node::ReadyState::Alone => log::warn!(
                        "cluster: node {} has no peer's snapshot after {} ms: serving alone, with an empty store",
                        r.node,
                        waited.elapsed().as_millis()
                    ),
                }
                // SIGUSR1 and the Prometheus rendering read the peers' figures from the thread's status.
                metrics.set_cluster(r.view());
                Some(r)
            }
            None => None,
        };
        // Logins (with pools): a lone node keeps its sessions in a store of its own, which nothing
        // replicates (its sync writes are acknowledged at once).
        // Rate limits and deny rules keep their node-local buckets beside the counters (swept by the
        // counters' flusher, which runs with a store) and their bans in the store.
        let limits = !config.rate_limits.is_empty() || !config.deny.rules.is_empty();
        if extra.is_none() && (snapshot.auth.is_some() || limits || config.uploads.is_some()) {
            let store = Arc::new(crate::store::Store::new());
            if let Some(hub) = &notify {
                hub.watch(&store);
            }
            let (_feed, w) = crate::store::WriteFeed::new(
                store.clone(),
                Arc::new(crate::store::Hlc::default()),
                0,
                count + EXTRA_WRITERS,
                1,
            );
            let (w, e) = ExtraWriters::split(store, w);
            extra = Some(e);
            writers = w;
        }
        // Cluster-wide counters: this node's shares, flushed to the store (when there is one) by a
        // thread of their own; a lone node without a store counts alone.
        let node_id = match (&replication, &redis) {
            (Some(r), _) => crate::store::node_id(&r.node),
            (None, Some(r)) => crate::store::node_id(&r.node),
            (None, None) => 0,
        };
        let peer_ids = config.cluster.as_ref().map_or_else(Vec::new, |c| {
            c.peers
                .iter()
                .map(|p| crate::store::node_id(&p.name))
                .collect()
        });
        let counters = Arc::new(crate::limits::counters::Counters::new(
            node_id,
            peer_ids,
            extra.as_ref().map(|e| e.store.clone()),
        ));
        // With Redis the peers are the nodes registered with the server, and any that writes a share.
        if let Some(r) = &redis {
            r.set_counters(counters.clone());
        }
        // The upload spool: its directory, threads and sweeper, over the store its records live in.
        let spool = match (&config.uploads, extra.as_ref()) {
            (Some(u), Some(e)) => Some(
                crate::spool::Spool::start(
                    config.resolve_path(&u.dir),
                    u.threads,
                    e.store.clone(),
                    spool_side.clone(),
                    auth_stop.clone(),
                )
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("uploads.dir {:?}: {e}", u.dir))
                })?,
            ),
            _ => None,
        };
        let mut counters_flusher = None;
        if let Some(e) = extra.as_mut() {
            if let Some(w) = e.counters.take() {
                counters_flusher = Some(crate::limits::counters::start_flusher(
                    counters.clone(),
                    w,
                    auth_stop.clone(),
                )?);
            }
        }
        let mut metering_reporter = None;
        if let (Some(file), Some(_)) = (&config.metering.file, snapshot.auth.as_deref()) {
            metering_reporter = Some(crate::limits::metering::start_reporter(
                config.resolve_path(file),
                counters.clone(),
                Arc::clone(&shared),
                auth_stop.clone(),
            )?);
        }
        // The deny list's kernel filter follows the config and the store's bans on a thread of its own.
        let deny_filter = Some(crate::limits::kernel_filter::start(
            kernel_filter,
            Arc::clone(&shared),
            extra.as_ref().map(|e| e.store.clone()),
            auth_stop.clone(),
        )?);
        let auth = match snapshot.auth.as_deref() {
            Some(settings) => {
                let Some((store, keys_writer, relay_writer)) = extra
                    .as_mut()
                    .and_then(|e| Some((e.store.clone(), e.keys.take()?, e.relay.take()?)))
                else {
                    return Err(StartError::Cluster("no store for logins".into()));
                };
                let auth_config = config.auth.clone().unwrap_or_default();
                let keeper = crate::auth::keys::KeyKeeper::new(crate::auth::keys::KeyTimes::new(
                    auth_config.key_rotation,
                    auth_config.max_lifetime,
                    auth_config.identity_token_ttl,
                ));
                let keys = keeper.keys();
                auth_keeper = Some(crate::auth::keys::start_keeper(
                    keeper,
                    store,
                    keys_writer,
                    auth_stop.clone(),
                )?);
                let cookie_key = config
                    .sessions
                    .cookie_keys
                    .first()
                    .and_then(|k| crate::sticky::cookie::CookieSealer::decode_key(k).ok());
                Some(Arc::new(crate::auth::runtime::Auth::start(
                    keys,
                    settings.hash_threads,
                    settings.hash_queue,
                    cookie_key.as_ref().map(|k| k.as_slice()),
                    relay_writer,
                    settings.identity_ttl,
                )?))
            }
            None => None,
        };
        let (admin, admin_jobs) = match &config.admin {
            Some(a) => {
                let token = a.read_token(&config).map_err(StartError::Admin)?;
                let config_text = options
                    .config_path
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok());
                let (admin, jobs) = crate::admin::Admin::new(crate::admin::AdminParts {
                    token,
                    registry: Arc::clone(&metrics),
                    counters: counters.clone(),
                    notify: notify.clone(),
                    sticky: sticky.clone(),
                    tls: tls.stats.clone(),
                    config_text,
                });
                (Some(admin), Some(jobs))
            }
            None => (None, None),
        };
        let store = extra.as_ref().map(|e| e.store.clone());
        for (index, (((listeners, poll), rx), store)) in per_worker
            .into_iter()
            .zip(polls)
            .zip(receivers)
            .zip(writers)
            .enumerate()
        {
            let parts = CtxParts {
                worker: index,
                registry: poll.registry().try_clone()?,
                snapshot: Arc::clone(&snapshot),
                buffer_size: config.workers.buffer_size,
                max_connections: config.workers.max_connections,
                upstream_idle_pool: config.workers.upstream_idle_pool,
                access_log: access_log.as_ref().map(|(log, _)| log.clone()),
                listeners: infos.clone(),
                tls_stats: tls.stats.clone(),
                sticky: sticky.clone(),
                peers: peers.clone(),
                metrics: Arc::clone(&metrics.workers[index]),
                store,
                auth: auth.clone(),
                counters: counters.clone(),
                notify: notify.clone(),
                spool: spool.clone(),
                admin: admin.clone(),
            };
            let settings = settings.clone();
            let shared = Arc::clone(&shared);
            let pin = (!config.workers.pin_cpus.is_empty())
                .then(|| config.workers.pin_cpus[index % config.workers.pin_cpus.len()]);
            let notice_tx = exit_tx.clone();
            // The worker is built on its own thread (its snapshot pin is thread-local); whether that
            // worked comes back before the next one starts, so a failure still fails the start.
            let (built_tx, built) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    let _notice = ExitNotice(index, notice_tx);
                    if let Some(cpu) = pin {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                            log::warn!("worker {index}: could not pin to CPU {cpu}");
                        }
                    }
                    let cx = Ctx::new(parts);
                    match Worker::new(poll, listeners, cx, settings, rx, shared) {
                        Ok(w) => {
                            let _ = built_tx.send(Ok(()));
                            w.run();
                        }
                        Err(e) => {
                            let _ = built_tx.send(Err(e));
                        }
                    }
                })?;
            match built.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(
                        std::io::Error::other(format!("worker {index} did not start")).into(),
                    );
                }
            }
            workers.push(WorkerHandle {
                commands: peers[index].commands.clone(),
                waker: peers[index].waker.clone(),
                thread: Some(thread),
            });
        }
        for (addr, info) in addresses.iter().zip(&infos) {
            log::info!(
                "listening on {}://{addr} (listener {}, {count} worker{})",
                info.proto,
                info.name,
                if count == 1 { "" } else { "s" }
            );
        }
        if let Some(addr) = publish_address {
            log::info!("notifications: publish listener on {addr} (POST /publish)");
        }
        if let (Some(addr), Some(a)) = (admin_address, &admin) {
            let (scheme, mutual) = match config.admin.as_ref().map(|c| c.tls_files()) {
                Some((Some(_), _, Some(_))) => ("https", ", client certificates required"),
                Some((Some(_), _, None)) => ("https", ""),
                _ => ("http", ""),
            };
            // The token's fingerprint, never the token: audit lines name it the same way.
            log::info!(
                "admin API on {scheme}://{addr} (token {}; /api/, /metrics{mutual})",
                a.fingerprint
            );
        }
        let mut notify_feeds = None;
        if let (Some(hub), Some(n)) = (&notify, &config.notifications) {
            if let Some(writer) = extra.as_mut().and_then(|e| e.feeds.take()) {
                notify_feeds = crate::notify::feed::start(
                    n.feeds.clone(),
                    hub.clone(),
                    writer,
                    Arc::clone(&shared),
                    auth_stop.clone(),
                )?;
            }
        }
        Ok(Server {
            workers,
            shared,
            registry,
            config,
            options,
            generation: 1,
            addresses,
            exits,
            access_log,
            tls,
            sticky,
            metrics,
            replication,
            redis,
            prober: Some(prober),
            signals,
            auth_keeper,
            auth_stop,
            counters_flusher,
            counters,
            metering_reporter,
            deny_filter,
            notify,
            notify_feeds,
            publish_address,
            admin,
            admin_jobs,
            admin_address,
            store,
        })
    }

    /// Re-reads the config file and publishes it; a file with errors is refused and the running config
    /// stays (SIGHUP).
    pub fn reload(&mut self) {
        let _ = self.try_reload();
    }

    /// [`Server::reload`], saying how it went: the new generation, or every error (each logged too).
    pub fn try_reload(&mut self) -> Result<u64, Vec<config::ConfigError>> {
        let Some(path) = self.options.config_path.clone() else {
            log::warn!("reload: running on an embedded config, nothing to re-read");
            return Err(vec![config::ConfigError {
                file: String::new(),
                line: 0,
                key: String::new(),
                message: "running on an embedded config, nothing to re-read".into(),
            }]);
        };
        let file = path.display().to_string();
        let refused = |key: &str, message: String| {
            log::error!("reload: {message}");
            log::error!("reload refused (1 error); the running configuration stays");
            Err(vec![config::ConfigError {
                file: file.clone(),
                line: 0,
                key: key.to_string(),
                message,
            }])
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return refused("", format!("cannot read the configuration file: {e}")),
        };
        let new = match config::load_str(&text, &file) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("reload: {e}");
                }
                log::error!(
                    "reload refused ({} error{}); the running configuration stays",
                    errors.0.len(),
                    if errors.0.len() == 1 { "" } else { "s" }
                );
                return Err(errors.0);
            }
        };
        // Listener TLS settings (certificates, SNI) reload; addresses and the rest need a restart.
        let without_tls = |ls: &[config::ListenerConfig]| -> Vec<config::ListenerConfig> {
            ls.iter()
                .map(|l| config::ListenerConfig {
                    tls: None,
                    ..l.clone()
                })
                .collect()
        };
        let listeners_changed = without_tls(&new.listeners) != without_tls(&self.config.listeners);
        let tls_presence_changed = new
            .listeners
            .iter()
            .zip(&self.config.listeners)
            .any(|(a, b)| a.tls.is_some() != b.tls.is_some());
        for (section, changed) in [
            ("[workers]", new.workers != self.config.workers),
            ("[[listeners]]", listeners_changed || tls_presence_changed),
            ("[access_log]", new.access_log != self.config.access_log),
            ("[tls]", new.tls != self.config.tls),
            ("[sessions]", new.sessions != self.config.sessions),
            (
                "notifications.publish_address, notifications.feeds",
                new.notifications
                    .as_ref()
                    .map(|n| (&n.publish_address, &n.feeds))
                    != self
                        .config
                        .notifications
                        .as_ref()
                        .map(|n| (&n.publish_address, &n.feeds)),
            ),
        ] {
            if changed {
                log::warn!("reload: changes to {section} need a restart and are ignored");
            }
        }
        if new.admin != self.config.admin {
            log::warn!("reload: changes to [admin] need a restart and are ignored");
        }
        // Logins: the checker's threads and the key keeper were set up at start; pools and routes reload.
        if self.auth_keeper.is_none() && !new.pools.is_empty() {
            return refused(
                "pools",
                "[pools] added to a balancer started without any: logins need a restart".into(),
            );
        }
        let (old_auth, new_auth) = (
            self.config.auth.clone().unwrap_or_default(),
            new.auth.clone().unwrap_or_default(),
        );
        for (key, changed) in [
            (
                "auth.hash_threads",
                old_auth.hash_threads != new_auth.hash_threads,
            ),
            (
                "auth.hash_queue",
                old_auth.hash_queue != new_auth.hash_queue,
            ),
            (
                "auth.key_rotation",
                old_auth.key_rotation != new_auth.key_rotation,
            ),
            (
                "auth.max_lifetime (for key retirement; sessions use the new value)",
                old_auth.max_lifetime != new_auth.max_lifetime,
            ),
            (
                "auth.identity_token_ttl (until then identity tokens live at most the start value)",
                old_auth.identity_token_ttl != new_auth.identity_token_ttl,
            ),
        ] {
            if changed && self.auth_keeper.is_some() {
                log::warn!("reload: changes to {key} need a restart");
            }
        }
        let cluster = match cluster_reload::merge(&self.config.cluster, new.cluster.clone()) {
            Ok(c) => c,
            Err(e) => return refused("cluster", e.to_string()),
        };
        match cluster.restart.as_slice() {
            [] => {}
            ["[cluster]"] => log::warn!(
                "reload: adding or removing [cluster] needs a restart; the running [cluster] stays"
            ),
            keys => log::warn!(
                "reload: changes to {} need a restart and are ignored (the rest of [cluster] is applied)",
                keys.join(", ")
            ),
        }
        // `[store]`: the backend's threads, connections and keys are set at start; only the sync-write
        // settings (read through the snapshot) reload.
        let store = StoreConfig {
            sync_timeout: new.store.sync_timeout,
            on_sync_timeout: new.store.on_sync_timeout,
            ..self.config.store.clone()
        };
        if store != new.store {
            log::warn!(
                "reload: changes to [store] other than sync_timeout and on_sync_timeout need a restart and are ignored"
            );
        }
        let keep_listeners = listeners_changed || tls_presence_changed;
        let new = Config {
            store,
            workers: self.config.workers.clone(),
            listeners: if keep_listeners {
                self.config.listeners.clone()
            } else {
                new.listeners
            },
            access_log: self.config.access_log.clone(),
            tls: self.config.tls.clone(),
            sessions: self.config.sessions.clone(),
            cluster: cluster.cluster,
            admin: self.config.admin.clone(),
            ..new
        };
        let snapshot = match ConfigSnapshot::build(
            &new,
            self.generation + 1,
            &mut self.registry,
            &self.tls,
            &self.metrics.names,
        ) {
            Ok(s) => s,
            Err(e) => return refused("", e.to_string()),
        };
        self.generation += 1;
        let backends: usize = snapshot.clusters.iter().map(|c| c.backends.len()).sum();
        let clusters = snapshot.clusters.len();
        // Publish first, then announce: once the line is out, every new connection sees the new config
        // (sync writes their new timeout); the replication thread applies its part as it wakes.
        self.shared.store(Arc::new(snapshot));
        if let (Some(r), Some(update)) = (&self.replication, cluster.update) {
            r.reconfigure(update);
        }
        log::info!(
            "reloaded {} (generation {}): {} cluster(s), {} backend(s), {} route(s)",
            path.display(),
            self.generation,
            clusters,
            backends,
            new.routes.len()
        );
        self.config = new;
        // Cluster-wide counters sum the shares of the peers now configured.
        if let Some(c) = &self.config.cluster {
            self.counters.set_peers(
                c.peers
                    .iter()
                    .map(|p| crate::store::node_id(&p.name))
                    .collect(),
            );
        }
        if let Some(admin) = &self.admin {
            admin.set_config_text(Some(&text));
        }
        Ok(self.generation)
    }

    /// Does what an admin call handed the main thread, and wakes the call.
    fn admin_job(&mut self, job: crate::admin::Job) {
        use crate::admin::{JobKind, Outcome};
        let outcome = match &job.kind {
            JobKind::Reload => match self.try_reload() {
                Ok(generation) => Outcome::Reloaded { generation },
                Err(errors) => Outcome::Refused(errors),
            },
            JobKind::Logins { tenant, user } => {
                Outcome::Logins(self.logins_of(tenant, user, crate::sticky::unix_now()))
            }
            JobKind::Uploads => Outcome::Uploads(self.store.as_ref().map_or_else(Vec::new, |s| {
                crate::admin::inventory::uploads(s, crate::sticky::unix_now())
            })),
            JobKind::Certificates => Outcome::Certificates(crate::admin::inventory::certificates(
                &self.config,
                i64::from(crate::sticky::unix_now()),
            )),
        };
        job.slot.finish(outcome);
    }

    /// The live login sessions of `user` of `tenant`: a scan of the store's sessions (here, never on
    /// a worker). (id, created, last seen, expires).
    fn logins_of(&self, tenant: &str, user: &str, now: u32) -> Vec<([u8; 16], u32, u32, u32)> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let reader = store.reader();
        reader
            .iter(Some(crate::store::Kind::LoginSession))
            .filter(|r| r.expires == 0 || r.expires > now)
            .filter_map(|r| {
                let s = crate::auth::session::LoginSession::decode(r.value.as_deref()?).ok()?;
                let id: [u8; 16] = r.key.as_ref().try_into().ok()?;
                (s.user == user && s.tenant == tenant)
                    .then(|| (id, s.created, s.last_seen, s.expires()))
            })
            .collect()
    }

    /// Asks every worker to stop accepting and finish within `grace`.
    pub fn shutdown(&self, grace: Duration) {
        for w in &self.workers {
            let _ = w.commands.send(Command::Shutdown { grace });
            let _ = w.waker.wake();
        }
    }

    /// The session table's size and counters.
    pub fn session_totals(&self) -> crate::sticky::table::SessionTotals {
        self.sticky.table.totals()
    }

    /// Sums of every worker's counters and histograms.
    pub fn metrics(&self) -> crate::metrics::Totals {
        self.metrics.totals()
    }

    /// Logs the metrics registry's request counters (and with `[cluster]`, the store and each peer), then
    /// backends, TLS, sessions and QoS (SIGUSR1).
    pub fn report(&self) {
        for line in crate::metrics::report_lines(&self.metrics.totals()) {
            log::info!("{line}");
        }
        if let Some(hub) = &self.notify {
            log::info!("{} waiting={}", hub.stats.report_line(), hub.waiting());
        }
        let snapshot = self.shared.load();
        if let (Some(file), Some(settings)) = (&self.config.metering.file, snapshot.auth.as_deref())
        {
            let path = self.config.resolve_path(file);
            match crate::limits::metering::write_report(
                &path,
                &self.counters,
                &settings.tenants,
                crate::sticky::unix_now(),
            ) {
                Ok(()) => log::info!("stats: tenant usage written to {}", path.display()),
                Err(e) => log::warn!("metering: cannot write {}: {e}", path.display()),
            }
        }
        for c in &snapshot.clusters {
            for b in &c.backends {
                log::info!(
                    "stats: cluster {} backend {} {}{} inflight={} requests={}",
                    c.name,
                    b.state.address,
                    if b.state.is_up() { "up" } else { "down" },
                    if b.drain { " draining" } else { "" },
                    b.state.inflight(),
                    b.state.requests.load(Ordering::Relaxed)
                );
            }
        }
        if let Some((log, _)) = &self.access_log {
            log::info!("stats: access log lines dropped={}", log.dropped());
        }
        log::info!("stats: tls handshakes {}", self.tls.stats.summary());
        let t = self.sticky.table.totals();
        log::info!(
            "stats: sessions entries={} hits={} misses={} binds={} rebinds={} evictions={} expirations={}",
            t.entries,
            t.hits,
            t.misses,
            t.binds,
            t.rebinds,
            t.evictions,
            t.expirations
        );
        for c in snapshot.clusters.iter().filter(|c| c.max_inflight > 0) {
            for b in &c.backends {
                let q = b.state.queue.report();
                log::info!(
                    "stats: qos cluster {} backend {} inflight={}/{} waiting_by_class={:?} granted={} \
                     wait_p50_us={} wait_p99_us={} wait_max_us={}",
                    c.name,
                    b.state.address,
                    b.state.inflight(),
                    c.max_inflight,
                    q.waiting,
                    q.granted,
                    q.wait_p50_us,
                    q.wait_p99_us,
                    q.wait_max_us
                );
            }
        }
    }

    /// Handles signals until every worker has stopped. Returns `false` if a worker died unexpectedly.
    pub fn serve(mut self) -> Result<bool, StartError> {
        let (sig_tx, signals) = unbounded();
        let mut source = match self.signals.take() {
            Some(s) => s,
            None => signal_hook::iterator::Signals::new(STOP_RELOAD_REPORT)?,
        };
        let handle = source.handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in source.forever() {
                    if sig_tx.send(sig).is_err() {
                        break;
                    }
                }
            })?;
        let grace = self.config.timeouts.shutdown_grace;
        let rotation = crossbeam_channel::tick(self.config.tls.ticket_rotation);
        // Session expiry and the table's size bound are enforced here, off the workers.
        let sweep = crossbeam_channel::tick(Duration::from_secs(1));
        let mut stopping = false;
        let mut healthy = true;
        let mut running = self.workers.len();
        let jobs = self
            .admin_jobs
            .take()
            .unwrap_or_else(crossbeam_channel::never);
        while running > 0 {
            select! {
                recv(signals) -> sig => match sig {
                    Ok(SIGHUP) => self.reload(),
                    Ok(SIGUSR1) => self.report(),
                    Ok(SIGINT | SIGTERM) => {
                        if stopping {
                            log::warn!("second stop signal: cutting in-flight requests now");
                            self.shutdown(Duration::ZERO);
                        } else {
                            log::info!(
                                "stopping: no new connections, in-flight requests get {}",
                                humantime::format_duration(grace)
                            );
                            stopping = true;
                            self.shutdown(grace);
                        }
                    }
                    _ => {}
                },
                recv(sweep) -> _ => self.sticky.table.sweep(crate::sticky::unix_now()),
                recv(jobs) -> job => {
                    if let Ok(job) = job {
                        self.admin_job(job);
                    }
                }
                recv(rotation) -> _ => {
                    // In a cluster the replication thread rotates them (every node seals alike).
                    if self.replication.is_none() {
                        self.tls.tickets.rotate();
                        log::info!("rotated TLS session ticket keys");
                    }
                }
                recv(self.exits) -> index => {
                    running -= 1;
                    if !stopping {
                        log::error!("worker {} exited unexpectedly; stopping", index.unwrap_or(usize::MAX));
                        healthy = false;
                        stopping = true;
                        self.shutdown(Duration::ZERO);
                    }
                }
            }
        }
        handle.close();
        self.join();
        log::info!("stopped");
        Ok(healthy)
    }

    /// Waits for the workers and then the access-log thread (which writes out what is queued).
    pub fn join(&mut self) {
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if let Some((log, thread)) = self.access_log.take() {
            drop(log);
            let _ = thread.join();
        }
        if let Some(prober) = self.prober.take() {
            prober.stop();
        }
        if let Some(mut replication) = self.replication.take() {
            replication.stop();
        }
        self.auth_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(keeper) = self.auth_keeper.take() {
            let _ = keeper.join();
        }
        if let Some(flusher) = self.counters_flusher.take() {
            let _ = flusher.join();
        }
        if let Some(reporter) = self.metering_reporter.take() {
            let _ = reporter.join();
        }
        if let Some(filter) = self.deny_filter.take() {
            let _ = filter.join();
        }
        if let Some(feeds) = self.notify_feeds.take() {
            let _ = feeds.join();
        }
        // Last: the threads above may have written on their way out, and the writer sends what it
        // holds before it stops.
        if let Some(mut redis) = self.redis.take() {
            redis.stop();
        }
    }

    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.shared.load_full()
    }
}

/// Lifts the soft open-file limit to the hard limit: every connection is a descriptor, two when proxied.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => log::info!("open file limit: {n}"),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
}
