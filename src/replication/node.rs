//! The replication thread of a cluster node: it accepts and dials the links of `[cluster]` (the node whose
//! name sorts first in a pair dials), greets peers, keeps links alive with heartbeats, redials lost links
//! with a back-off, and reports each peer's state. It runs its own mio event loop: replication I/O never
//! runs on a worker. The streams of store updates, acks and snapshots ride these links
//! (docs/PROTOCOL.md); what is built today is the link layer. A reload hands the thread a new peer list
//! ([`Replication::reconfigure`]): links with peers that stay are kept as they are.

use super::frame::{Frame, Start};
use super::link::{Identity, Link, LinkEvent, LinkPhase};
use super::link_tls::LinkTls;
use super::snapshot_recv::{self, Gate, Incoming};
use crate::config::Config;
use crate::snapshot::SharedSnapshot;
use crate::sticky::Stickiness;
use crate::store::{Batch, Hlc, Kind, OriginStream, PeerStream, Record, Store, WriteFeed};
use crate::tls::{TlsStats, TlsStream};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use slab::Slab;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// Redial back-off: from this, doubling, up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After a link that was up closes, its peer is redialled every `FAST_REDIAL_EVERY` for this long: a peer
/// killed and restarted by its supervisor is back within seconds, and it serves no client until it has
/// its snapshot, so the back-off would be its start-up time. (A refused connect on a LAN costs a packet
/// each way; a dial still in progress is not repeated.)
const FAST_REDIAL: Duration = Duration::from_secs(10);
const FAST_REDIAL_EVERY: Duration = Duration::from_millis(20);
/// Heartbeats missed before a link is declared dead.
const MISSED_HEARTBEATS: u32 = 3;

/// One peer as the thread keeps it up to date, and as the metrics registry reads it (SIGUSR1, the
/// Prometheus rendering; see [`ClusterView`]).
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub name: String,
    pub address: SocketAddr,
    /// `down`, `connecting`, `greeting` or `up`.
    pub state: &'static str,
    /// The peer's epoch while up (a new one after every restart of the peer).
    pub epoch: Option<u64>,
    /// Times a link with this peer came up, and times one was refused (either way).
    pub links_up: u64,
    pub refused: u64,
    /// Why the last link ended or was refused.
    pub last_reason: String,
    /// Of this node's stream: the last sequence sent to the peer, and the last it acknowledged.
    pub sent: u64,
    pub acked: u64,
    /// Of the peer's stream: the last sequence applied here.
    pub applied: u64,
    /// Snapshots received from this peer and merged (a restarted node, or one that fell behind), and
    /// snapshots sent to it.
    pub snapshots_in: u64,
    pub snapshots_out: u64,
    /// Over every link with the peer since this process started.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How old the oldest record of this node's stream the peer has not acknowledged is (0: none).
    pub lag_ms: u64,
    /// Replication delay of the peer's records streamed here, in milliseconds: from the write on the
    /// peer (its version's clock reading) to the apply here (clocks of one machine or NTP-synchronised
    /// ones; 1 ms resolution); and the sum of the delays recorded.
    pub delay_ms: hdrhistogram::Histogram<u64>,
    pub delay_ms_sum: u64,
}

impl PeerStatus {
    /// A peer not heard from yet.
    fn new(name: &str, address: SocketAddr) -> PeerStatus {
        PeerStatus {
            name: name.to_string(),
            address,
            state: "down",
            epoch: None,
            links_up: 0,
            refused: 0,
            last_reason: String::new(),
            sent: 0,
            acked: 0,
            applied: 0,
            snapshots_in: 0,
            snapshots_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            lag_ms: 0,
            delay_ms: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 2)
                .expect("valid bounds"),
            delay_ms_sum: 0,
        }
    }

    /// The figures the metrics registry renders; `stream_last` is this node's stream's last sequence.
    fn figures(&self, stream_last: u64) -> crate::metrics::PeerFigures {
        crate::metrics::PeerFigures {
            name: self.name.clone(),
            address: self.address.to_string(),
            state: self.state,
            epoch: self.epoch,
            links_up: self.links_up,
            refused: self.refused,
            sent: self.sent,
            acked: self.acked,
            applied: self.applied,
            // Everything written since what the peer acknowledged: in flight, or not sent yet (while
            // the link is down this grows with every write).
            lag_records: stream_last.saturating_sub(self.acked),
            lag_ms: self.lag_ms,
            snapshots_in: self.snapshots_in,
            snapshots_out: self.snapshots_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            delay_ms: crate::metrics::DelayFigures {
                p50: self.delay_ms.value_at_quantile(0.5),
                p99: self.delay_ms.value_at_quantile(0.99),
                max: self.delay_ms.max(),
                count: self.delay_ms.len(),
                sum: self.delay_ms_sum,
            },
            last_reason: self.last_reason.clone(),
        }
    }
}

/// What a reload may change in a running node's `[cluster]` (the rest is fixed at start): the peers and
/// the heartbeat. `sync_timeout` and `on_sync_timeout` reload through the config snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUpdate {
    /// `(name, replication address)` of every peer, in config order.
    pub peers: Vec<(String, SocketAddr)>,
    pub heartbeat: Duration,
}

/// A peer's address in `[cluster]` that is not an `ip:port` (validation refuses it first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster peer {name:?}: {address:?} is not an ip:port address")]
pub struct BadPeerAddress {
    pub name: String,
    pub address: String,
}

impl ClusterUpdate {
    /// The reloadable part of `[cluster]`.
    pub fn from_config(c: &crate::config::ClusterMembership) -> Result<Self, BadPeerAddress> {
        let mut peers = Vec::with_capacity(c.peers.len());
        for p in &c.peers {
            let address = p.address.parse().map_err(|_| BadPeerAddress {
                name: p.name.clone(),
                address: p.address.clone(),
            })?;
            peers.push((p.name.clone(), address));
        }
        Ok(ClusterUpdate {
            peers,
            heartbeat: c.heartbeat,
        })
    }
}

/// Everything the thread needs, prepared (and the listener bound) before any worker starts.
pub struct Setup {
    identity: Identity,
    listener: std::net::TcpListener,
    peers: Vec<SocketAddr>,
    tls: LinkTls,
    heartbeat: Duration,
}

impl Setup {
    /// Reads `[cluster]`: binds the replication listener and loads the link certificates. `Ok(None)`:
    /// no `[cluster]`, a lone node.
    pub fn from_config(config: &Config) -> Result<Option<Setup>, String> {
        let Some(c) = &config.cluster else {
            return Ok(None);
        };
        let listen: SocketAddr = c
            .listen
            .parse()
            .map_err(|_| format!("cluster.listen {:?} is not an ip:port address", c.listen))?;
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cluster.listen {listen}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cluster.listen {listen}: {e}"))?;
        let peers = ClusterUpdate::from_config(c)
            .map_err(|e| e.to_string())?
            .peers
            .into_iter()
            .map(|(_, address)| address)
            .collect();
        let tls = LinkTls::load(
            &config.resolve_path(&c.tls.ca),
            &config.resolve_path(&c.tls.cert),
            &config.resolve_path(&c.tls.key),
        )
        .map_err(|e| format!("cluster.tls: {e}"))?;
        Ok(Some(Setup {
            identity: Identity {
                cluster: c.name.clone(),
                node: c.node.clone(),
                epoch: new_epoch(),
                peers: c.peers.iter().map(|p| p.name.clone()).collect(),
            },
            listener,
            peers,
            tls,
            heartbeat: c.heartbeat,
        }))
    }

    /// The replication address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.identity.node
    }
}

/// What the thread mirrors: the store, its clock, the workers' write queues, and where records of peers
/// are applied besides the store (the session table, by backend address in the current snapshot).
pub struct Feed {
    pub store: Arc<Store>,
    pub hlc: Arc<Hlc>,
    pub feed: WriteFeed,
    pub sticky: Arc<Stickiness>,
    pub shared: SharedSnapshot,
    /// The session table's counter slot for bindings applied by this thread.
    pub slot: usize,
    /// The process's TLS ticket keyring: in a cluster its keys are the replicated ones (this thread
    /// rotates them, and installs every node's).
    pub tickets: Arc<crate::tls::tickets::TicketKeyring>,
    pub ticket_rotation: Duration,
    /// How long a starting node waits for a peer before it makes keys of its own.
    pub ready_timeout: Duration,
    /// The upload spool's side channel (with `[uploads]`): upload bytes, fetches and claims ride the
    /// links beside the store's stream.
    pub spool: Option<Arc<super::side::SpoolSide>>,
    /// The notification queues (with `[notifications]`): this thread sends their id clock's promise to
    /// every peer, after the records it covers, and tells them the peers' smallest promise.
    pub notify: Option<Arc<crate::notify::Hub>>,
}

/// Records per `UPDATES` frame, and per `SNAPSHOT_RECORDS` frame.
const BATCH: usize = 4096;
/// Origin-stream backlog bounds: what a peer that reconnects can resume from without a snapshot.
const BACKLOG_BYTES: usize = 64 * 1024 * 1024;
const BACKLOG_AGE: Duration = Duration::from_secs(60);

/// A random, non-zero epoch for this process.
fn new_epoch() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    u64::from_be_bytes(b).max(1)
}

/// The running replication thread.
pub struct Replication {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// Reloaded peer lists for the thread (it looks after every wake-up).
    updates: crossbeam_channel::Sender<ClusterUpdate>,
    /// This process's epoch.
    pub epoch: u64,
    pub node: String,
    /// The thread's shared status and the store, as reports and the metrics registry read them.
    view: Arc<ClusterView>,
    /// Set once the store holds a peer's snapshot (see [`Replication::wait_ready`]).
    synced: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

/// What the replication thread shows outside: its per-peer status (which it updates as links change)
/// and the store. Readers take their figures from it at the moment they read.
pub struct ClusterView {
    node: String,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    store: Arc<Store>,
    origin_last: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl crate::metrics::ClusterSource for ClusterView {
    fn figures(&self) -> crate::metrics::ClusterFigures {
        let stream_last = self.origin_last.load(Ordering::Relaxed);
        crate::metrics::ClusterFigures {
            node: self.node.clone(),
            records: self.store.len(),
            bindings: self.store.len_of(Kind::SessionBinding),
            ticket_keys: self.store.len_of(Kind::TicketKeys),
            digest: self.store.digest(),
            stream_last,
            peers: self
                .status
                .lock()
                .iter()
                .map(|p| p.figures(stream_last))
                .collect(),
            redis: None,
        }
    }
}

/// How a node's start went: synced from a peer, or alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyState {
    /// A peer's snapshot was merged: the node holds what the cluster holds.
    Synced,
    /// No peer answered within the ready timeout: the node serves with what it has (an empty store).
    Alone,
}

impl Replication {
    /// Waits until the store holds a snapshot from a peer, or `timeout` passes; the caller starts
    /// serving clients after it. A node with no peers is alone at once.
    pub fn wait_ready(&self, timeout: Duration, has_peers: bool) -> ReadyState {
        if !has_peers {
            self.gate.serve();
            return ReadyState::Alone;
        }
        let status = self.view.status.clone();
        let engaged = move || status.lock().iter().any(|p| p.links_up > 0);
        if self.gate.wait_ready(&self.synced, timeout, engaged) {
            ReadyState::Synced
        } else {
            ReadyState::Alone
        }
    }

    /// Starts the thread.
    pub fn start(setup: Setup, feed: Feed) -> std::io::Result<Replication> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        feed.feed.set_waker(waker.clone());
        if let Some(side) = &feed.spool {
            side.set_waker(waker.clone());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(
            setup
                .identity
                .peers
                .iter()
                .zip(&setup.peers)
                .map(|(name, address)| PeerStatus::new(name, *address))
                .collect(),
        ));
        let epoch = setup.identity.epoch;
        let node = setup.identity.node.clone();
        let view = Arc::new(ClusterView {
            node: node.clone(),
            status: status.clone(),
            store: feed.store.clone(),
            origin_last: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        });
        let synced = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let (updates, updates_rx) = crossbeam_channel::unbounded();
        let shared = Shared {
            stop: stop.clone(),
            status,
            origin_last: view.origin_last.clone(),
            synced: synced.clone(),
            gate: gate.clone(),
            updates: updates_rx,
        };
        let mut state = Thread::new(poll, setup, feed, shared)?;
        let thread = std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || state.run())?;
        Ok(Replication {
            thread: Some(thread),
            stop,
            waker,
            updates,
            epoch,
            node,
            view,
            synced,
            gate,
        })
    }

    /// Records held, the store's digest, and the last sequence of this node's stream.
    pub fn store_summary(&self) -> (usize, [u8; 32], u64) {
        (
            self.view.store.len(),
            self.view.store.digest(),
            self.view.origin_last.load(Ordering::Relaxed),
        )
    }

    /// The live status, for the metrics registry (SIGUSR1 and the Prometheus rendering read it).
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.clone()
    }

    /// Hands a reloaded peer list and heartbeat to the thread, which applies them at once (the waker
    /// ends its wait, linked or not). Links with peers that keep their address are not touched.
    pub fn reconfigure(&self, update: ClusterUpdate) {
        if self.updates.send(update).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Stops the thread (links closed with close_notify) and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the thread shares with its handle (`Replication`).
struct Shared {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    origin_last: Arc<std::sync::atomic::AtomicU64>,
    synced: Arc<AtomicBool>,
    gate: Arc<Gate>,
    updates: crossbeam_channel::Receiver<ClusterUpdate>,
}

/// Per configured peer: the link serving it and when to dial next.
struct Dial {
    address: SocketAddr,
    /// This node dials the peer (its name sorts first); else it waits for the peer to dial.
    dials: bool,
    link: Option<usize>,
    next_dial: Instant,
    backoff: Duration,
    /// Until when failed dials do not double the back-off (see [`FAST_REDIAL`]).
    fast_until: Instant,
}

impl Dial {
    /// A peer not linked yet, dialled at once (if this node dials it).
    fn new(me: &str, peer: &str, address: SocketAddr, now: Instant) -> Dial {
        Dial {
            address,
            dials: me < peer,
            link: None,
            next_dial: now,
            backoff: MIN_BACKOFF,
            // Peers started together (or added to the config together) come up within seconds of each
            // other.
            fast_until: now + FAST_REDIAL,
        }
    }
}

/// The thread's state.
struct Thread {
    poll: Poll,
    listener: TcpListener,
    me: Identity,
    tls: LinkTls,
    tls_stats: Arc<TlsStats>,
    heartbeat: Duration,
    links: Slab<Link>,
    dials: Vec<Dial>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    events: Vec<LinkEvent>,
    /// Addresses links were accepted from (for logs about peers not yet identified).
    remotes: std::collections::HashMap<usize, SocketAddr>,
    feed: Feed,
    /// This node's stream.
    origin: OriginStream,
    origin_last: Arc<std::sync::atomic::AtomicU64>,
    /// Per peer: what this node holds of the peer's stream; the last of ours sent on its link (`None`:
    /// not streaming to it); an ack owed; a snapshot being received.
    streams: Vec<PeerStream>,
    synced: Arc<AtomicBool>,
    /// Whether a snapshot may be applied in place (before this node serves; see `snapshot_recv`).
    gate: Arc<Gate>,
    sent: Vec<Option<u64>>,
    ack_due: Vec<bool>,
    /// Per peer: its link is up and it has acknowledged this node's stream since (not still taking a
    /// snapshot). A sync write waits for every such peer.
    streaming: Vec<bool>,
    incoming: Vec<Option<Incoming>>,
    /// Writes dropped by full worker queues, as last seen; per peer, a snapshot is owed (those writes are
    /// in the store but not in the stream, so only a snapshot carries them).
    dropped_seen: u64,
    resync: Vec<bool>,
    /// Sync writes waiting for a peer's acknowledgement, by sequence (in order).
    pending_sync: std::collections::VecDeque<(u64, crate::store::writer::OnAck)>,
    /// Every node's TLS ticket keys by id (a copy of the store's `TicketKeys` records, small).
    ticket_keys: std::collections::BTreeMap<[u8; 16], crate::tls::tickets::TicketKey>,
    /// The ticket keys changed since they were last installed, or their maturity may have.
    tickets_due: Instant,
    started: Instant,
    /// Per peer: bytes (in, out) of its links that are gone (the status shows these plus the current
    /// link's, so the figures only grow).
    bytes_done: Vec<(u64, u64)>,
    /// Reloaded peer lists and heartbeats (see [`Thread::reconfigure`]).
    updates: crossbeam_channel::Receiver<ClusterUpdate>,
    /// The spool's side channel: per peer, upload bytes queued behind the store's frames.
    side: Option<super::side::SideLinks>,
    /// Links that got a spool reply while their frames were being handled: driven by `spool_side` in
    /// the same turn (else the reply would wait for the link's next event, a heartbeat at worst).
    spool_flush: Vec<usize>,
    /// Notification promises (docs/PROTOCOL.md, `PROMISE`): this node's, with the stream sequence each
    /// follows (sent to a peer once its updates reach that sequence); the id clock's version when last
    /// read; per peer, the last one sent on its current link and the largest received on it (0: none).
    promises: std::collections::VecDeque<(u64, u64)>,
    promise_version: Option<u64>,
    promise_sent: Vec<u64>,
    promise_in: Vec<u64>,
    /// Per peer joining (acknowledging, not yet counted for sync writes): the stream position its
    /// acknowledgements must reach before it is (see [`Thread::on_ack`]).
    join_target: Vec<Option<u64>>,
    /// Per peer, on its current link: the `SYNC_POINT` it sent (this node serves, when starting, once
    /// it applied that far of the peer's stream).
    sync_point: Vec<Option<u64>>,
    /// Per peer, while starting: linked since the start, and caught up with (its `SYNC_POINT` applied).
    /// Kept across a dropped link: a peer that was linked is alive, and must be caught up with before
    /// this node serves, even if the link dropped meanwhile.
    start_linked: Vec<bool>,
    start_done: Vec<bool>,
}

impl Thread {
    fn new(poll: Poll, setup: Setup, feed: Feed, shared: Shared) -> std::io::Result<Thread> {
        let Shared {
            stop,
            status,
            origin_last,
            synced,
            gate,
            updates,
        } = shared;
        let n = setup.identity.peers.len();
        let mut listener = TcpListener::from_std(setup.listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let setup_epoch = setup.identity.epoch;
        let side = feed
            .spool
            .clone()
            .map(|s| super::side::SideLinks::new(s, n));
        let dials = setup
            .identity
            .peers
            .iter()
            .zip(&setup.peers)
            .map(|(name, address)| Dial::new(&setup.identity.node, name, *address, now))
            .collect();
        Ok(Thread {
            poll,
            listener,
            me: setup.identity,
            tls: setup.tls,
            tls_stats: Arc::new(TlsStats::default()),
            heartbeat: setup.heartbeat,
            links: Slab::new(),
            dials,
            stop,
            status,
            events: Vec::new(),
            remotes: std::collections::HashMap::new(),
            origin: OriginStream::new(setup_epoch, BACKLOG_BYTES, BACKLOG_AGE),
            origin_last,
            feed,
            streams: vec![PeerStream::new(); n],
            synced,
            gate,
            sent: vec![None; n],
            streaming: vec![false; n],
            ack_due: vec![false; n],
            incoming: (0..n).map(|_| None).collect(),
            dropped_seen: 0,
            resync: vec![false; n],
            pending_sync: std::collections::VecDeque::new(),
            ticket_keys: std::collections::BTreeMap::new(),
            tickets_due: now,
            started: now,
            bytes_done: vec![(0, 0); n],
            updates,
            side,
            spool_flush: Vec::new(),
            promises: std::collections::VecDeque::new(),
            promise_version: None,
            promise_sent: vec![0; n],
            promise_in: vec![0; n],
            join_target: vec![None; n],
            sync_point: vec![None; n],
            start_linked: vec![false; n],
            start_done: vec![false; n],
        })
    }

    fn run(&mut self) {
        log::info!(
            "cluster {}: node {} (epoch {:016x}) replicating with {} peer(s)",
            self.me.cluster,
            self.me.node,
            self.me.epoch,
            self.me.peers.len()
        );
        let mut events = Events::with_capacity(256);
        loop {
            // Workers do not wake this thread: with a peer linked it looks at their queues (and sends
            // what they hold) every millisecond; otherwise at the heartbeat's pace (which a reload may
            // change). A reload wakes it through the waker.
            let linked = self.dials.iter().any(|d| d.link.is_some());
            let mut tick = if linked {
                Duration::from_millis(1)
            } else {
                (self.heartbeat / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
            };
            // A redial due sooner than the tick is not kept waiting for it.
            let now = Instant::now();
            if let Some(due) = self
                .dials
                .iter()
                .filter(|d| d.dials && d.link.is_none())
                .map(|d| d.next_dial)
                .min()
            {
                tick = tick.min(due.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(tick)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("replication: poll failed: {e}");
                    return;
                }
            }
            if self.stop.load(Ordering::Acquire) {
                self.close_all();
                return;
            }
            let now = Instant::now();
            let mut ready = Vec::new();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(now),
                    Token(key) => {
                        if let Some(link) = self.links.get_mut(key) {
                            link.io.update(event);
                            ready.push(key);
                        }
                    }
                }
            }
            while let Ok(update) = self.updates.try_recv() {
                self.reconfigure(update, now);
            }
            self.dial(now);
            self.keep_alive(now, &mut ready);
            for key in ready {
                self.drive(key, now);
            }
            self.ticket_keys(now);
            self.pump_snapshots(now);
            self.stream(now);
            self.spool_side(now);
            self.reap();
            self.publish(now);
        }
    }

    /// Accepts links peers open; who they are is known only after TLS and their hello.
    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((sock, from)) => {
                    let conn = match self.tls.accept() {
                        Ok(c) => c,
                        Err(e) => {
                            log::warn!("replication: cannot start TLS for {from}: {e}");
                            continue;
                        }
                    };
                    let tls =
                        TlsStream::new(rustls::Connection::Server(conn), self.tls_stats.clone());
                    let _ = sock.set_nodelay(true);
                    if let Some(key) = self.add_link(Link::new(sock, tls, None, false, now)) {
                        self.remotes.insert(key, from);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("replication: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_link(&mut self, mut link: Link) -> Option<usize> {
        let entry = self.links.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            link.socket(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("replication: cannot register a link: {e}");
            return None;
        }
        entry.insert(link);
        Some(key)
    }

    /// Dials the peers this node dials that have no link, when their back-off allows.
    fn dial(&mut self, now: Instant) {
        for i in 0..self.dials.len() {
            let d = &self.dials[i];
            if !d.dials || d.link.is_some() || now < d.next_dial {
                continue;
            }
            let address = d.address;
            let name = self.me.peers[i].clone();
            let link = TcpStream::connect(address).and_then(|sock| {
                sock.set_nodelay(true)?;
                let conn = self.tls.connect(&name).map_err(std::io::Error::other)?;
                let tls = TlsStream::new(rustls::Connection::Client(conn), self.tls_stats.clone());
                Ok(Link::new(sock, tls, Some(i), true, now))
            });
            let d = &mut self.dials[i];
            if now < d.fast_until {
                d.next_dial = now + FAST_REDIAL_EVERY;
            } else {
                d.next_dial = now + d.backoff;
                d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
            }
            match link {
                Ok(mut link) => {
                    // The dialler greets first (rustls holds the plaintext until the handshake is done).
                    link.send(&self.hello(i), now);
                    let key = self.add_link(link);
                    self.dials[i].link = key;
                    self.set_state(i, "connecting");
                }
                Err(e) => log::debug!("replication: cannot dial {name} at {address}: {e}"),
            }
        }
    }

    /// A heartbeat on every up link now, sent out at once.
    fn heartbeat_all(&mut self, now: Instant) {
        let hlc = self.feed.hlc.now();
        let keys: Vec<usize> = self
            .links
            .iter()
            .filter(|(_, l)| l.phase == LinkPhase::Up)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            if let Some(link) = self.links.get_mut(key) {
                link.send(&Frame::Heartbeat { hlc, sent: 0 }, now);
            }
            self.drive(key, now);
        }
    }

    /// Heartbeats on idle up links; links silent for three heartbeats are closed.
    fn keep_alive(&mut self, now: Instant, ready: &mut Vec<usize>) {
        let dead_after = self.heartbeat * MISSED_HEARTBEATS;
        let hlc = self.feed.hlc.now();
        let mut dead = Vec::new();
        for (key, link) in self.links.iter_mut() {
            if link.phase == LinkPhase::Closed {
                continue;
            }
            // A link with bytes waiting to be read this turn is not silent: this thread was (a long
            // snapshot merge), and reading them comes after this check.
            if now.saturating_duration_since(link.last_heard) >= dead_after && !ready.contains(&key)
            {
                dead.push(key);
                continue;
            }
            if link.phase == LinkPhase::Up
                && now.saturating_duration_since(link.last_sent) >= self.heartbeat
            {
                link.send(&super::frame::Frame::Heartbeat { hlc, sent: 0 }, now);
                ready.push(key);
            }
        }
        for key in dead {
            let reason = format!(
                "no frame for {} ({MISSED_HEARTBEATS} heartbeats)",
                humantime::format_duration(dead_after)
            );
            let mut events = std::mem::take(&mut self.events);
            if let Some(link) = self.links.get_mut(key) {
                link.close(&reason, &mut events);
            }
            self.on_events(key, events);
        }
    }

    /// This node's `HELLO` to `peer`, with what it holds of that peer's stream.
    fn hello(&self, peer: usize) -> Frame {
        Frame::Hello {
            cluster: self.me.cluster.clone(),
            node: self.me.node.clone(),
            epoch: self.me.epoch,
            hlc: self.feed.hlc.now(),
            resume: self.streams[peer].held(),
        }
    }

    /// Where this node's stream starts for `peer`, which holds `resume` of it: from the backlog when it
    /// can, else with a snapshot of the whole store (queued on the link now, before any update).
    fn start_stream(&mut self, key: usize, peer: usize, resume: Option<(u64, u64)>) -> Start {
        let owed = std::mem::take(&mut self.resync[peer]);
        if let (Some((epoch, applied)), false) = (resume, owed) {
            if self.origin.since(epoch, applied).is_ok() {
                self.sent[peer] = Some(applied);
                return Start::Resume { from: applied + 1 };
            }
        }
        let at = self.origin.last();
        self.sent[peer] = Some(at);
        let Some(link) = self.links.get_mut(key) else {
            return Start::Snapshot { from: at + 1 };
        };
        // The snapshot frames go out after the WELCOME the caller queues next: built on a thread of
        // their own, handed to the link chunk by chunk (see `pump_snapshots`).
        let label = format!("cluster {}: to {}", self.me.cluster, self.me.peers[peer]);
        match super::snapshot_send::spawn(self.feed.store.clone(), self.me.epoch, at, label) {
            Ok(chunks) => link.snapshot = Some(chunks),
            Err(e) => {
                log::warn!("replication: cannot start a snapshot builder: {e}");
                self.resync[peer] = true;
                self.close_link(key, "cannot build a snapshot");
                return Start::Snapshot { from: at + 1 };
            }
        }
        log::info!(
            "cluster {}: sending {} a snapshot of about {} record(s) at sequence {at}",
            self.me.cluster,
            self.me.peers[peer],
            self.feed.store.len()
        );
        Start::Snapshot { from: at + 1 }
    }

    /// Applies a peer's record: to the store, and what it means elsewhere (a session binding goes into
    /// the session table, by the backend's address in the current config).
    fn apply(&mut self, record: &Record) {
        self.feed.store.apply(record.clone());
        apply_elsewhere(&self.feed, record);
        self.note_ticket_key(record);
    }

    /// Keeps the copy of ticket keys current (a key arrived from a peer, or this node made one).
    fn note_ticket_key(&mut self, record: &Record) {
        if record.kind != Kind::TicketKeys {
            return;
        }
        let Some(key) = record
            .value
            .as_ref()
            .and_then(|v| crate::tls::tickets::TicketKey::from_record(&record.key, v))
        else {
            return;
        };
        self.ticket_keys.insert(key.id, key);
        self.tickets_due = Instant::now();
    }

    /// Ticket keys in a cluster: every node can open every node's tickets (all keys are installed for
    /// opening), and all seal with the same key — the newest one that is *mature*, made long enough ago
    /// that every peer has it (the newest at all while none is). A node makes a new key when the newest
    /// is a rotation old (or none exists once it is synced or alone), publishes it, and starts sealing
    /// with it only when it matures: a key is distributed before any ticket depends on it.
    fn ticket_keys(&mut self, now: Instant) {
        let rotation = self.feed.ticket_rotation;
        let unix = crate::sticky::unix_now() as u64;
        let may_make = self.synced.load(Ordering::Acquire)
            || self.me.peers.is_empty()
            || now.saturating_duration_since(self.started) >= self.feed.ready_timeout;
        let newest = self.ticket_keys.values().map(|k| k.created).max();
        if may_make && newest.is_none_or(|c| unix.saturating_sub(c) >= rotation.as_secs().max(1)) {
            if let Some(key) = self.feed.tickets.new_key() {
                let record = Record {
                    kind: Kind::TicketKeys,
                    key: key.id.as_slice().into(),
                    version: crate::store::Version {
                        hlc: self.feed.hlc.now(),
                        node_id: crate::store::node_id(&self.me.node),
                    },
                    // Kept for opening for three rotations, as a lone node keeps its keys.
                    expires: (key.created + 3 * rotation.as_secs().max(1)).min(u32::MAX as u64)
                        as u32,
                    value: Some(key.to_value().as_slice().into()),
                };
                self.feed.store.apply(record.clone());
                self.origin.push(record.clone(), now);
                self.note_ticket_key(&record);
                log::info!("cluster {}: new TLS ticket key published", self.me.cluster);
            }
        }
        if now < self.tickets_due || self.ticket_keys.is_empty() {
            return;
        }
        // Forget expired keys; order newest first; the sealing key goes first.
        let keep = 3 * rotation.as_secs().max(1);
        self.ticket_keys
            .retain(|_, k| unix.saturating_sub(k.created) < keep);
        let mut keys: Vec<_> = self.ticket_keys.values().cloned().collect();
        keys.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        let grace = (2 * self.heartbeat).max(Duration::from_secs(2)).as_secs();
        if let Some(i) = keys
            .iter()
            .position(|k| unix.saturating_sub(k.created) >= grace)
        {
            let sealing = keys.remove(i);
            keys.insert(0, sealing);
        }
        self.feed
            .tickets
            .install(crate::tls::tickets::TicketKeySet { keys });
        // Maturity changes with time: look again in a second.
        self.tickets_due = now + Duration::from_secs(1);
    }

    /// Handles a frame from an up link with `peer`.
    fn on_frame(&mut self, key: usize, peer: usize, frame: Frame, now: Instant) {
        match frame {
            Frame::Updates {
                epoch,
                first,
                records,
            } => match self.streams[peer].accept(epoch, first, records.len() as u32) {
                Batch::Apply { skip } => {
                    let fresh = &records[skip.min(records.len())..];
                    for r in fresh {
                        self.apply(r);
                    }
                    self.ack_due[peer] = true;
                    self.check_synced();
                    let now_ms = crate::store::hlc::wall_ms();
                    let mut st = self.status.lock();
                    for r in fresh {
                        let delay = now_ms.saturating_sub(r.version.hlc >> 16).max(1);
                        let _ = st[peer].delay_ms.record(delay);
                        st[peer].delay_ms_sum += delay;
                    }
                }
                Batch::Duplicate => {}
                Batch::Resume { from } => {
                    if let Some(link) = self.links.get_mut(key) {
                        link.send(&Frame::Resume { epoch, seq: from }, now);
                    }
                }
                Batch::OtherEpoch { .. } => self.close_link(key, "updates of another epoch"),
            },
            Frame::Ack { epoch, seq } if epoch == self.me.epoch => self.on_ack(key, peer, seq, now),
            Frame::SyncPoint { epoch, seq } => {
                if self.streams[peer].held().is_some_and(|(e, _)| e == epoch) {
                    self.sync_point[peer] = Some(seq);
                    self.check_synced();
                }
            }
            Frame::Resume { epoch, seq } if epoch == self.me.epoch => {
                // Sent again from the backlog, or by a snapshot on the next link if it is gone.
                self.sent[peer] = Some(seq.saturating_sub(1));
            }
            Frame::SnapshotBegin { epoch, at } => {
                self.abandon_incoming(peer);
                self.incoming[peer] = Some(Incoming::begin(&self.feed, &self.gate, epoch, at));
            }
            Frame::SnapshotRecords { records } => match &mut self.incoming[peer] {
                Some(incoming) => {
                    for r in records {
                        incoming.add(&self.feed, r);
                    }
                }
                None => self.close_link(key, "snapshot records without a beginning"),
            },
            Frame::SnapshotEnd { count, digest } => {
                let Some(incoming) = self.incoming[peer].take() else {
                    return self.close_link(key, "snapshot end without a beginning");
                };
                // Merging can hold this thread for seconds: every peer hears from it first, so that a
                // merge shorter than the dead-link limit does not cost the links.
                self.heartbeat_all(now);
                match incoming.finish(&self.feed, &self.gate, count, digest) {
                    Ok(done) => {
                        for r in &done.ticket_keys {
                            self.note_ticket_key(r);
                        }
                        self.streams[peer].reset(done.epoch, done.at);
                        self.ack_due[peer] = true;
                        self.status.lock()[peer].snapshots_in += 1;
                        self.check_synced();
                        log::info!(
                            "cluster {}: snapshot of {count} record(s) from {} merged (its stream at {}; {} in {} ms, then {} ms to finish)",
                            self.me.cluster,
                            self.me.peers[peer],
                            done.at,
                            if done.in_place {
                                "applied in place as received"
                            } else {
                                "received and staged"
                            },
                            done.received_in.as_millis(),
                            done.finished_in.as_millis()
                        );
                    }
                    Err(e) => {
                        // Staged records dropped, or applied ones undone: the store keeps its old state.
                        let reason = format!("snapshot refused: {e}");
                        self.close_link(key, &reason);
                    }
                }
            }
            Frame::Promise { below } => {
                if self.dials[peer].link == Some(key) {
                    self.promise_in[peer] = self.promise_in[peer].max(below);
                    self.update_peers_promise();
                }
            }
            Frame::SpoolAck {
                id,
                offset,
                len,
                written,
            } => {
                if let Some(side) = &mut self.side {
                    side.on_ack(peer, id, offset, len, written);
                }
            }
            Frame::SpoolClaimed {
                nonce,
                granted,
                offset,
                ..
            } => {
                if let Some(side) = &mut self.side {
                    side.on_claimed(peer, nonce, granted, offset);
                }
            }
            Frame::SpoolClaim { id, nonce } => {
                // No spool here: nothing is appended here, so the claim is granted.
                let (granted, offset) = self
                    .side
                    .as_ref()
                    .and_then(|s| s.side.inbox())
                    .map_or((true, 0), |inbox| inbox.claim(id));
                if let Some(link) = self.links.get_mut(key) {
                    link.send(
                        &Frame::SpoolClaimed {
                            id,
                            nonce,
                            granted,
                            offset,
                        },
                        now,
                    );
                    self.spool_flush.push(key);
                }
            }
            Frame::SpoolData {
                id,
                tag,
                prev,
                offset,
                bytes,
            } => match self.side.as_ref().and_then(|s| s.side.inbox()) {
                Some(inbox) => inbox.data(peer, id, tag, prev, offset, bytes),
                None => self.spool_refused(key, id, offset, bytes.len(), now),
            },
            Frame::SpoolPart { id, offset, bytes } => {
                match self.side.as_ref().and_then(|s| s.side.inbox()) {
                    Some(inbox) => inbox.part(peer, id, offset, bytes),
                    None => self.spool_refused(key, id, offset, bytes.len(), now),
                }
            }
            Frame::SpoolFetch { id, from, upto } => {
                match self.side.as_ref().and_then(|s| s.side.inbox()) {
                    Some(inbox) => inbox.fetch(peer, id, from, upto),
                    None => {
                        if let Some(link) = self.links.get_mut(key) {
                            link.send(&Frame::SpoolMissing { id, from }, now);
                            self.spool_flush.push(key);
                        }
                    }
                }
            }
            Frame::SpoolMissing { id, from } => {
                if let Some(inbox) = self.side.as_ref().and_then(|s| s.side.inbox()) {
                    inbox.missing(peer, id, from);
                }
            }
            other => log::debug!(
                "replication: {}: frame 0x{:02x} ignored",
                self.me.peers[peer],
                other.frame_type()
            ),
        }
    }

    /// Upload bytes this node has no spool for: acknowledged as not written, so they leave the
    /// sender's window (and its append counts on other peers only).
    fn spool_refused(&mut self, key: usize, id: [u8; 16], offset: u64, len: usize, now: Instant) {
        if let Some(link) = self.links.get_mut(key) {
            link.send(
                &Frame::SpoolAck {
                    id,
                    offset,
                    len: len as u32,
                    written: false,
                },
                now,
            );
            self.spool_flush.push(key);
        }
    }

    /// The spool's side channel: which peers are up, the spool's commands (control frames out at
    /// once), and spool data onto each up link behind the store frames `stream` queued.
    fn spool_side(&mut self, now: Instant) {
        let Some(mut side) = self.side.take() else {
            return;
        };
        let up: Vec<usize> = (0..self.dials.len())
            .filter(|&p| {
                self.dials[p]
                    .link
                    .and_then(|k| self.links.get(k))
                    .is_some_and(|l| l.phase == LinkPhase::Up)
            })
            .collect();
        let claimers = up.iter().copied().filter(|&p| self.streaming[p]).collect();
        side.set_up(up.clone(), claimers);
        let mut control = Vec::new();
        side.take_commands(&mut control);
        let mut touched = std::mem::take(&mut self.spool_flush);
        for (peer, frame) in control {
            if let Some(key) = self.dials.get(peer).and_then(|d| d.link) {
                if let Some(link) = self.links.get_mut(key) {
                    link.send(&frame, now);
                    touched.push(key);
                }
            }
        }
        for peer in up {
            if !side.pending(peer) {
                continue;
            }
            if let Some(key) = self.dials[peer].link {
                if let Some(link) = self.links.get_mut(key) {
                    side.pump(peer, link, now);
                    touched.push(key);
                }
            }
        }
        self.side = Some(side);
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            self.drive(key, now);
        }
    }

    /// Drops a snapshot being received from `peer` (undoing what was applied in place).
    fn abandon_incoming(&mut self, peer: usize) {
        if let Some(incoming) = self.incoming[peer].take() {
            incoming.abandon(&self.gate);
        }
    }

    /// A peer acknowledged this node's stream up to `seq`. A peer that was not streaming (its link is new:
    /// it took a snapshot, or resumed) joins in two steps: its acknowledgements must first reach the
    /// stream position this node had at its first one, so that a restarted peer catching up under load
    /// is not waited for by every sync write meanwhile (each would time out: 504s); then it counts for
    /// sync writes, and gets a `SYNC_POINT` naming this node's stream head — every write acknowledged
    /// without it is at or below that, and it serves only once it has applied that far.
    fn on_ack(&mut self, key: usize, peer: usize, seq: u64, now: Instant) {
        self.status.lock()[peer].acked = seq;
        if !self.streaming[peer] {
            let target = *self.join_target[peer].get_or_insert(self.origin.last());
            if seq >= target {
                self.streaming[peer] = true;
                self.join_target[peer] = None;
                let point = Frame::SyncPoint {
                    epoch: self.me.epoch,
                    seq: self.origin.last(),
                };
                if let Some(link) = self.links.get_mut(key) {
                    link.send(&point, now);
                }
                self.drive(key, now);
            }
        }
        self.release_syncs();
    }

    /// A starting node serves once, from **every** peer whose link is up (at least one), it merged a
    /// snapshot and applied the stream that followed up to the peer's `SYNC_POINT`: not from the first
    /// peer only, and not at the snapshot's end — until then what the peers acknowledged to clients
    /// without this node may be missing here, under load for seconds, and a client that fails over to it
    /// would be answered from stale state (found by the failover benchmark: uploads answered 404,
    /// notifications delivered again after their acknowledgement). A peer linked since the start whose
    /// link drops is still waited for (it was alive; under overload this node's own stall can drop the
    /// links, and serving then, with half a store, answered logins with 401); a peer never linked is not.
    fn check_synced(&mut self) {
        if self.synced.load(Ordering::Acquire) {
            return;
        }
        let st = self.status.lock();
        for (i, p) in st.iter().enumerate() {
            if p.state == "up"
                && p.snapshots_in > 0
                && self.sync_point[i].is_some_and(|point| {
                    self.streams[i]
                        .held()
                        .is_some_and(|(_, applied)| applied >= point)
                })
            {
                self.start_done[i] = true;
            }
        }
        // Every peer linked since the start is caught up with (its link may have dropped since: it was
        // alive, so it is waited for until it is back — `ready_timeout` bounds the wait); one never
        // linked and not up now is taken for down.
        let ready = self.start_done.iter().any(|d| *d)
            && st
                .iter()
                .enumerate()
                .all(|(i, p)| self.start_done[i] || (!self.start_linked[i] && p.state != "up"));
        drop(st);
        if ready {
            self.synced.store(true, Ordering::Release);
        }
    }

    /// Acknowledges the sync writes that every streaming peer has applied (at least one peer: with none,
    /// they wait, and the request's `sync_timeout` decides). Every peer, not any: with a third node, a
    /// write acknowledged by one peer only could be missing on the other when this node dies — origins'
    /// streams are not relayed — and a client that fails over there would find its login, offset or
    /// notification gone. A peer still taking a snapshot is not waited for: the write reaches it in the
    /// stream that follows.
    fn release_syncs(&mut self) {
        let upto = {
            let st = self.status.lock();
            self.streaming
                .iter()
                .enumerate()
                .filter(|(_, streaming)| **streaming)
                .map(|(i, _)| st[i].acked)
                .min()
        };
        let Some(upto) = upto else {
            return;
        };
        while self.pending_sync.front().is_some_and(|(s, _)| *s <= upto) {
            if let Some((_, f)) = self.pending_sync.pop_front() {
                f();
            }
        }
    }

    fn close_link(&mut self, key: usize, reason: &str) {
        let mut events = Vec::new();
        if let Some(link) = self.links.get_mut(key) {
            link.close(reason, &mut events);
        }
        self.on_events(key, events);
    }

    /// Moves snapshot chunks from their builders onto their links, keeping a few MiB queued on each (a
    /// slow peer holds its builder back, not this thread's memory). A finished snapshot lets the link's
    /// updates flow.
    fn pump_snapshots(&mut self, now: Instant) {
        const QUEUED: usize = 4 << 20;
        let mut moved = Vec::new();
        for (key, link) in self.links.iter_mut() {
            let Some(chunks) = link.snapshot.take() else {
                continue;
            };
            let mut done = false;
            while link.queued() < QUEUED {
                match chunks.try_recv() {
                    Ok(chunk) => link.send_encoded(&chunk, now),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        done = true;
                        break;
                    }
                }
            }
            if !done {
                link.snapshot = Some(chunks);
            }
            moved.push(key);
        }
        for key in moved {
            self.drive(key, now);
        }
    }

    /// Moves the workers' writes into this node's stream and sends what each up peer has not had yet;
    /// owed acks go out.
    fn stream(&mut self, now: Instant) {
        // Read before the drain: every id below it is in a worker's queue by now, so in the stream
        // after the drain (docs/PROTOCOL.md, `PROMISE`).
        let promise = match &self.feed.notify {
            Some(h) => (Some(h.ids.version()), h.ids.promise()),
            None => (None, u64::MAX),
        };
        let origin = &mut self.origin;
        let pending = &mut self.pending_sync;
        self.feed.feed.drain_with_acks(65_536, |r, on_ack| {
            let seq = origin.push(r, now);
            if let Some(f) = on_ack {
                pending.push_back((seq, f));
            }
        });
        // A worker's queue was full: its writes are in the store but not in the stream. Every peer gets
        // a snapshot (its link is closed; the next greeting sends one instead of resuming).
        let dropped = self.feed.feed.dropped();
        if dropped > self.dropped_seen {
            log::warn!(
                "cluster {}: {} write(s) missed the replication queue; resyncing every peer",
                self.me.cluster,
                dropped - self.dropped_seen
            );
            self.dropped_seen = dropped;
            self.resync.iter_mut().for_each(|r| *r = true);
            let keys: Vec<usize> = self.dials.iter().filter_map(|d| d.link).collect();
            for key in keys {
                self.close_link(key, "resync after missed writes");
            }
        }
        self.origin.evict(now);
        self.origin_last
            .store(self.origin.last(), Ordering::Relaxed);
        self.note_promise(promise);
        let epoch = self.me.epoch;
        for peer in 0..self.dials.len() {
            let Some(key) = self.dials[peer].link else {
                continue;
            };
            let Some((up, snapshot_sending)) = self
                .links
                .get(key)
                .map(|l| (l.phase == LinkPhase::Up, l.snapshot.is_some()))
            else {
                continue;
            };
            if !up {
                continue;
            }
            if self.ack_due[peer] {
                if let Some((e, applied)) = self.streams[peer].held() {
                    if let Some(link) = self.links.get_mut(key) {
                        link.send(
                            &Frame::Ack {
                                epoch: e,
                                seq: applied,
                            },
                            now,
                        );
                    }
                    self.status.lock()[peer].applied = applied;
                }
                self.ack_due[peer] = false;
                // Out now, not with the link's next event: the origin's lag and its sync writes wait
                // on this.
                self.drive(key, now);
            }
            let Some(sent) = self.sent[peer] else {
                continue;
            };
            // Updates follow the snapshot being sent on this link.
            if snapshot_sending || sent >= self.origin.last() {
                continue;
            }
            let batch: Result<Vec<Record>, String> = match self.origin.since(epoch, sent) {
                Ok(it) => Ok(it.take(BATCH).map(|(_, r)| r.clone()).collect()),
                Err(e) => Err(format!("the peer fell behind this node's backlog ({e:?})")),
            };
            let batch = match batch {
                Ok(b) => b,
                Err(reason) => {
                    self.close_link(key, &reason);
                    continue;
                }
            };
            let n = batch.len() as u64;
            if let Some(link) = self.links.get_mut(key) {
                link.send(
                    &Frame::Updates {
                        epoch,
                        first: sent + 1,
                        records: batch,
                    },
                    now,
                );
            }
            self.sent[peer] = Some(sent + n);
            self.status.lock()[peer].sent = sent + n;
            self.drive(key, now);
        }
        self.send_promises(now);
    }

    /// Records this node's notification promise (`(clock version, promise)`, read before the drain
    /// that just ran) against the stream position it follows, when the clock moved. Without
    /// notifications the promise is `u64::MAX`, recorded once. Kept increasing: a smaller one (a
    /// reservation taken meanwhile) is implied by the last.
    fn note_promise(&mut self, (version, promise): (Option<u64>, u64)) {
        if self.promise_version.is_some() && self.promise_version == version {
            return;
        }
        self.promise_version = version.or(Some(0));
        let at = self.origin.last();
        match self.promises.back_mut() {
            Some((_, p)) if *p >= promise => {}
            Some((a, p)) if *a == at => *p = promise,
            _ => self.promises.push_back((at, promise)),
        }
    }

    /// Sends each up peer, not taking a snapshot from this node, the largest promise whose stream
    /// position its updates have reached, if larger than the last it got; forgets promises every
    /// linked peer is past.
    fn send_promises(&mut self, now: Instant) {
        let mut slowest = u64::MAX;
        for peer in 0..self.dials.len() {
            let (Some(key), Some(sent)) = (self.dials[peer].link, self.sent[peer]) else {
                continue;
            };
            slowest = slowest.min(sent);
            let Some(link) = self.links.get_mut(key) else {
                continue;
            };
            if link.phase != LinkPhase::Up || link.snapshot.is_some() {
                continue;
            }
            let Some(&(_, below)) = self.promises.iter().rev().find(|(at, _)| *at <= sent) else {
                continue;
            };
            if below > self.promise_sent[peer] {
                link.send(&Frame::Promise { below }, now);
                self.promise_sent[peer] = below;
                self.drive(key, now);
            }
        }
        while self.promises.len() > 1 && self.promises[1].0 <= slowest {
            self.promises.pop_front();
        }
    }

    /// Tells the notification hub the smallest promise of the linked peers (0 for one linked and not
    /// heard from yet: what it still has to send may hold smaller ids).
    fn update_peers_promise(&self) {
        if let Some(h) = &self.feed.notify {
            let min = (0..self.dials.len())
                .filter(|&p| self.dials[p].link.is_some())
                .map(|p| self.promise_in[p])
                .min()
                .unwrap_or(u64::MAX);
            h.set_peers_promise(min);
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        link.drive(&self.me, now, &mut events);
        self.on_events(key, events);
    }

    fn on_events(&mut self, key: usize, mut events: Vec<LinkEvent>) {
        for event in events.drain(..) {
            let peer = self.links.get(key).and_then(|l| l.peer);
            let name = match (peer, self.remotes.get(&key)) {
                (Some(p), _) => self.me.peers[p].clone(),
                (None, Some(from)) => format!("a peer at {from}"),
                (None, None) => "(unknown peer)".to_string(),
            };
            match event {
                LinkEvent::Greeted { peer, resume, .. } => {
                    let hello = self.hello(peer);
                    let now = Instant::now();
                    if let Some(link) = self.links.get_mut(key) {
                        if !link.outgoing {
                            link.send(&hello, now);
                        }
                    }
                    let start = self.start_stream(key, peer, resume);
                    if matches!(start, Start::Snapshot { .. }) {
                        self.status.lock()[peer].snapshots_out += 1;
                    }
                    let mut more = Vec::new();
                    if let Some(link) = self.links.get_mut(key) {
                        link.welcome(start, now, &mut more);
                    }
                    self.on_events(key, more);
                    self.drive(key, now);
                }
                LinkEvent::Welcomed { start } => {
                    let Some((peer, epoch)) = self
                        .links
                        .get(key)
                        .and_then(|l| Some((l.peer?, l.remote_epoch())))
                    else {
                        continue;
                    };
                    match start {
                        Start::Resume { from } => {
                            self.streams[peer].reset(epoch, from.saturating_sub(1));
                            self.abandon_incoming(peer);
                        }
                        // The snapshot frames follow; the stream position comes with their end.
                        Start::Snapshot { .. } => {}
                    }
                }
                LinkEvent::Up { peer, epoch } => {
                    // One link per peer: a second one (both sides dialled across a restart) is closed.
                    if let Some(other) = self.dials[peer].link.filter(|&k| k != key) {
                        if self
                            .links
                            .get(other)
                            .is_some_and(|l| l.phase == LinkPhase::Up)
                        {
                            if let Some(l) = self.links.get_mut(key) {
                                l.close("a link with this peer is already up", &mut Vec::new());
                            }
                            continue;
                        }
                    }
                    self.dials[peer].link = Some(key);
                    self.dials[peer].backoff = MIN_BACKOFF;
                    // Promises are per link: until this one brings the peer's, nothing above what
                    // is here may be delivered.
                    self.promise_in[peer] = 0;
                    self.promise_sent[peer] = 0;
                    self.update_peers_promise();
                    self.join_target[peer] = None;
                    self.sync_point[peer] = None;
                    self.start_linked[peer] = true;
                    log::info!(
                        "cluster {}: link with {name} up (peer epoch {epoch:016x})",
                        self.me.cluster
                    );
                    let mut st = self.status.lock();
                    let s = &mut st[peer];
                    s.state = "up";
                    s.epoch = Some(epoch);
                    s.links_up += 1;
                }
                LinkEvent::Refused { reason } => {
                    log::warn!(
                        "cluster {}: link with {name} refused: {reason}",
                        self.me.cluster
                    );
                    if let Some(p) = peer {
                        let mut st = self.status.lock();
                        st[p].refused += 1;
                        st[p].last_reason = reason;
                    }
                }
                LinkEvent::Closed { reason } => {
                    let was_up = self.links.get(key).is_some_and(|l| l.was_up);
                    if was_up {
                        log::warn!(
                            "cluster {}: link with {name} closed: {reason}",
                            self.me.cluster
                        );
                    } else {
                        // A dial that failed (the peer is down) or a link that never got up: retried.
                        log::debug!("cluster {}: no link with {name}: {reason}", self.me.cluster);
                    }
                    if let Some(p) = peer {
                        self.status.lock()[p].last_reason = reason;
                        if was_up {
                            let now = Instant::now();
                            let d = &mut self.dials[p];
                            d.next_dial = now;
                            d.backoff = MIN_BACKOFF;
                            d.fast_until = now + FAST_REDIAL;
                        }
                    }
                }
                LinkEvent::Frame(f) => {
                    if let Some(p) = peer {
                        self.on_frame(key, p, f, Instant::now());
                    }
                }
            }
        }
        self.events = events;
    }

    /// Drops closed links; their peers become `down` (and are dialled again, if this node dials them).
    fn reap(&mut self) {
        let closed: Vec<usize> = self
            .links
            .iter()
            .filter(|(_, l)| l.phase == LinkPhase::Closed)
            .map(|(k, _)| k)
            .collect();
        for key in closed {
            let mut link = self.links.remove(key);
            self.remotes.remove(&key);
            let _ = self.poll.registry().deregister(link.socket());
            if let Some(done) = link.peer.and_then(|p| self.bytes_done.get_mut(p)) {
                done.0 += link.bytes_in;
                done.1 += link.bytes_out;
            }
            for (i, d) in self.dials.iter_mut().enumerate() {
                if d.link == Some(key) {
                    d.link = None;
                    // What the peer holds is asked again in the next greeting; a snapshot cut off
                    // midway is dropped (the store keeps its old state).
                    self.sent[i] = None;
                    self.streaming[i] = false;
                    self.promise_in[i] = 0;
                    self.join_target[i] = None;
                    self.sync_point[i] = None;
                    if let Some(side) = &mut self.side {
                        side.peer_down(i);
                    }
                    if let Some(incoming) = self.incoming[i].take() {
                        incoming.abandon(&self.gate);
                    }
                    let mut st = self.status.lock();
                    st[i].state = "down";
                    st[i].epoch = None;
                }
            }
        }
        // The peers left may hold what the one gone was waited for.
        self.release_syncs();
        self.check_synced();
        self.update_peers_promise();
    }

    /// Copies link counters and phases into the shared status, and each peer's lag: how long ago the
    /// first record it has not acknowledged was written.
    fn publish(&mut self, now: Instant) {
        let mut st = self.status.lock();
        for (i, d) in self.dials.iter().enumerate() {
            let link = d.link.and_then(|k| self.links.get(k));
            let (done_in, done_out) = self.bytes_done[i];
            st[i].bytes_in = done_in + link.map_or(0, |l| l.bytes_in);
            st[i].bytes_out = done_out + link.map_or(0, |l| l.bytes_out);
            if link.is_some_and(|l| l.phase == LinkPhase::Greeting) {
                st[i].state = "greeting";
            }
            st[i].lag_ms = self
                .origin
                .age(st[i].acked + 1, now)
                .map_or(0, |a| a.as_millis() as u64);
        }
    }

    fn set_state(&mut self, peer: usize, state: &'static str) {
        self.status.lock()[peer].state = state;
    }

    fn close_all(&mut self) {
        for (_, link) in self.links.iter_mut() {
            link.close("this node is stopping", &mut Vec::new());
        }
    }

    /// Applies a reloaded `[cluster]`. Links with peers that keep their name and address stay as they
    /// are (same link, same epoch, no resync); a removed peer's links close (its hellos are refused from
    /// now on, as any unknown node's); a peer with a new address is closed and dialled there; new peers
    /// are dialled or awaited like the others. The store keeps every record.
    fn reconfigure(&mut self, update: ClusterUpdate, now: Instant) {
        self.heartbeat = update.heartbeat;
        let names: Vec<String> = update.peers.iter().map(|(n, _)| n.clone()).collect();
        let from = old_positions(&self.me.peers, &names);
        let to = new_positions(&from, self.me.peers.len());
        // Closed while the per-peer state is in the old order: each close is logged and counted under
        // the peer it was with.
        let mut removed = Vec::new();
        let mut moved = Vec::new();
        for (old, new) in to.iter().enumerate() {
            let reason = match new {
                None => "removed from the config".to_string(),
                Some(i) if update.peers[*i].1 != self.dials[old].address => {
                    format!("its address changed to {}", update.peers[*i].1)
                }
                Some(_) => continue,
            };
            let name = &self.me.peers[old];
            match new {
                None => removed.push(name.clone()),
                Some(_) => moved.push(name.clone()),
            }
            self.close_peer_links(old, &reason);
        }
        self.remap_peers(&from, &to, &update.peers, now);
        for (i, (_, address)) in update.peers.iter().enumerate() {
            if self.dials[i].address != *address {
                let me = self.me.node.clone();
                self.dials[i] = Dial {
                    link: self.dials[i].link,
                    ..Dial::new(&me, &names[i], *address, now)
                };
                self.status.lock()[i].address = *address;
            }
        }
        let added: Vec<&str> = (0..names.len())
            .filter(|&i| from[i].is_none())
            .map(|i| names[i].as_str())
            .collect();
        log::info!(
            "cluster {}: reloaded: {} peer(s); added [{}], removed [{}], new address [{}]; heartbeat {}",
            self.me.cluster,
            names.len(),
            added.join(", "),
            removed.join(", "),
            moved.join(", "),
            humantime::format_duration(self.heartbeat)
        );
    }

    /// Closes every link with `peer` (by its current position) for `reason`.
    fn close_peer_links(&mut self, peer: usize, reason: &str) {
        let keys: Vec<usize> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer == Some(peer) && l.phase != LinkPhase::Closed)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.close_link(key, reason);
        }
    }

    /// Re-orders every per-peer entry from the old peer list to the new one (`from[i]`: where new peer
    /// `i` was; `to[j]`: where old peer `j` went): kept peers keep their state — streams, positions,
    /// counters, the link — removed peers' state goes, new peers start fresh. Links name their peer by
    /// position, so they are renumbered too. Every per-peer `Vec` of the thread is listed here.
    fn remap_peers(
        &mut self,
        from: &[Option<usize>],
        to: &[Option<usize>],
        peers: &[(String, SocketAddr)],
        now: Instant,
    ) {
        let me = self.me.node.clone();
        // Spool frames queued or in flight are failed (their appends are tried again by clients) rather
        // than moved with the peers' new positions.
        if let Some(side) = &mut self.side {
            for p in 0..from.len().max(to.len()) {
                side.peer_down(p);
            }
            side.resize(peers.len());
        }
        // A snapshot from a removed peer will not finish: undo what it applied in place.
        for (old, new) in to.iter().enumerate() {
            if new.is_none() {
                self.abandon_incoming(old);
            }
        }
        remap(&mut self.dials, from, |i| {
            Dial::new(&me, &peers[i].0, peers[i].1, now)
        });
        remap(&mut self.streams, from, |_| PeerStream::new());
        remap(&mut self.sent, from, |_| None);
        remap(&mut self.ack_due, from, |_| false);
        remap(&mut self.streaming, from, |_| false);
        remap(&mut self.promise_sent, from, |_| 0);
        remap(&mut self.promise_in, from, |_| 0);
        remap(&mut self.join_target, from, |_| None);
        remap(&mut self.sync_point, from, |_| None);
        remap(&mut self.start_linked, from, |_| false);
        remap(&mut self.start_done, from, |_| false);
        remap(&mut self.incoming, from, |_| None);
        remap(&mut self.resync, from, |_| false);
        remap(&mut self.bytes_done, from, |_| (0, 0));
        remap(&mut self.status.lock(), from, |i| {
            PeerStatus::new(&peers[i].0, peers[i].1)
        });
        for (_, link) in self.links.iter_mut() {
            link.peer = link.peer.and_then(|old| to.get(old).copied().flatten());
        }
        self.me.peers = peers.iter().map(|(n, _)| n.clone()).collect();
        self.update_peers_promise();
    }
}

/// For each name of `new`, its position in `old` (`None`: a name not there).
fn old_positions(old: &[String], new: &[String]) -> Vec<Option<usize>> {
    new.iter()
        .map(|n| old.iter().position(|o| o == n))
        .collect()
}

/// The inverse of [`old_positions`]: for each of `old_len` old positions, the new one (`None`: gone).
fn new_positions(from: &[Option<usize>], old_len: usize) -> Vec<Option<usize>> {
    let mut to = vec![None; old_len];
    for (new, old) in from.iter().enumerate() {
        if let Some(slot) = old.and_then(|o| to.get_mut(o)) {
            *slot = Some(new);
        }
    }
    to
}

/// Rebuilds a per-peer `Vec` in a new peer order: `from[i]` says which old entry becomes entry `i`;
/// an entry with no old one (a new peer) is `fresh(i)`; old entries not taken (removed peers) are dropped.
fn remap<T>(v: &mut Vec<T>, from: &[Option<usize>], mut fresh: impl FnMut(usize) -> T) {
    let mut old: Vec<Option<T>> = std::mem::take(v).into_iter().map(Some).collect();
    *v = from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.and_then(|o| old.get_mut(o).and_then(Option::take))
                .unwrap_or_else(|| fresh(i))
        })
        .collect();
}

/// What a peer's record means beyond the store: a session the session table holds is moved to the backend
/// at the recorded address (when the current config lists it), or forgotten on a tombstone; one it does
/// not hold is found in the store by the first worker that needs it.
fn apply_elsewhere(feed: &Feed, record: &Record) {
    if let Some(op) = snapshot_recv::binding_of(feed, record, &mut None) {
        snapshot_recv::apply_bindings(feed, &[op]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn per_peer_entries_follow_their_peer_by_name() {
        let old = names(&["b", "c", "d"]);
        let new = names(&["d", "e", "b"]);
        let from = old_positions(&old, &new);
        assert_eq!(from, [Some(2), None, Some(0)]);
        assert_eq!(new_positions(&from, old.len()), [Some(2), None, Some(0)]);
        let mut sent = vec![Some(10), Some(20), Some(30)];
        remap(&mut sent, &from, |_| None);
        assert_eq!(
            sent,
            [Some(30), None, Some(10)],
            "c's entry is gone, e's fresh"
        );
        let mut status: Vec<String> = old.clone();
        remap(&mut status, &from, |i| format!("fresh {}", new[i]));
        assert_eq!(status, ["d", "fresh e", "b"]);
    }

    #[test]
    fn an_unchanged_peer_list_keeps_every_entry_in_place() {
        let list = names(&["b", "c"]);
        let from = old_positions(&list, &list);
        let mut v = vec![1, 2];
        remap(&mut v, &from, |_| unreachable!("no new peer"));
        assert_eq!(v, [1, 2]);
        assert_eq!(new_positions(&from, 2), [Some(0), Some(1)]);
    }
}
