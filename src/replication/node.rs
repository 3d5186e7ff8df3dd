//! The replication thread of a cluster node: it accepts and dials the links of `[cluster]` (the node whose
//! name sorts first in a pair dials), greets peers, keeps links alive with heartbeats, redials lost links
//! with a back-off, and reports each peer's state. It runs its own mio event loop: replication I/O never
//! runs on a worker. The streams of store updates, acks and snapshots ride these links
//! (docs/PROTOCOL.md); what is built today is the link layer.

use super::link::{Identity, Link, LinkEvent, LinkPhase};
use super::link_tls::LinkTls;
use crate::config::Config;
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
/// Heartbeats missed before a link is declared dead.
const MISSED_HEARTBEATS: u32 = 3;

/// One peer as the SIGUSR1 report (and later the admin API) shows it.
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
    pub bytes_in: u64,
    pub bytes_out: u64,
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
        let mut peers = Vec::with_capacity(c.peers.len());
        for p in &c.peers {
            peers.push(p.address.parse().map_err(|_| {
                format!(
                    "cluster peer {:?}: {:?} is not an ip:port address",
                    p.name, p.address
                )
            })?);
        }
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
}

/// A random, non-zero epoch for this process.
fn new_epoch() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    u64::from_be_bytes(b).max(1)
}

/// A clock reading for hellos and heartbeats: milliseconds since the Unix epoch << 16.
fn clock() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ms << 16
}

/// The running replication thread.
pub struct Replication {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    /// This process's epoch.
    pub epoch: u64,
    pub node: String,
}

impl Replication {
    /// Starts the thread.
    pub fn start(setup: Setup) -> std::io::Result<Replication> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(
            setup
                .identity
                .peers
                .iter()
                .zip(&setup.peers)
                .map(|(name, address)| PeerStatus {
                    name: name.clone(),
                    address: *address,
                    state: "down",
                    epoch: None,
                    links_up: 0,
                    refused: 0,
                    last_reason: String::new(),
                    bytes_in: 0,
                    bytes_out: 0,
                })
                .collect(),
        ));
        let epoch = setup.identity.epoch;
        let node = setup.identity.node.clone();
        let mut state = Thread::new(poll, setup, stop.clone(), status.clone())?;
        let thread = std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || state.run())?;
        Ok(Replication {
            thread: Some(thread),
            stop,
            waker,
            status,
            epoch,
            node,
        })
    }

    /// Every peer's state now.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.status.lock().clone()
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

/// Per configured peer: the link serving it and when to dial next.
struct Dial {
    address: SocketAddr,
    /// This node dials the peer (its name sorts first); else it waits for the peer to dial.
    dials: bool,
    link: Option<usize>,
    next_dial: Instant,
    backoff: Duration,
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
}

impl Thread {
    fn new(
        poll: Poll,
        setup: Setup,
        stop: Arc<AtomicBool>,
        status: Arc<Mutex<Vec<PeerStatus>>>,
    ) -> std::io::Result<Thread> {
        let mut listener = TcpListener::from_std(setup.listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let dials = setup
            .identity
            .peers
            .iter()
            .zip(&setup.peers)
            .map(|(name, address)| Dial {
                address: *address,
                dials: setup.identity.node < *name,
                link: None,
                next_dial: now,
                backoff: MIN_BACKOFF,
            })
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
        let tick =
            (self.heartbeat / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
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
            self.dial(now);
            self.keep_alive(now, &mut ready);
            for key in ready {
                self.drive(key, now);
            }
            self.reap();
            self.publish();
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
            d.next_dial = now + d.backoff;
            d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
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

    /// Heartbeats on idle up links; links silent for three heartbeats are closed.
    fn keep_alive(&mut self, now: Instant, ready: &mut Vec<usize>) {
        let dead_after = self.heartbeat * MISSED_HEARTBEATS;
        let hlc = clock();
        let mut dead = Vec::new();
        for (key, link) in self.links.iter_mut() {
            if link.phase == LinkPhase::Closed {
                continue;
            }
            if now.saturating_duration_since(link.last_heard) >= dead_after {
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
    fn hello(&self, _peer: usize) -> super::frame::Frame {
        super::frame::Frame::Hello {
            cluster: self.me.cluster.clone(),
            node: self.me.node.clone(),
            epoch: self.me.epoch,
            hlc: clock(),
            // No stream is held yet: the record streams come with the store.
            resume: None,
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        link.drive(&self.me, clock(), now, &mut events);
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
                LinkEvent::Greeted { peer, .. } => {
                    let hello = self.hello(peer);
                    let now = Instant::now();
                    let mut more = Vec::new();
                    if let Some(link) = self.links.get_mut(key) {
                        if !link.outgoing {
                            link.send(&hello, now);
                        }
                        // Until the record streams exist every stream starts at its beginning.
                        link.welcome(super::frame::Start::Resume { from: 1 }, now, &mut more);
                    }
                    self.on_events(key, more);
                    self.drive(key, now);
                }
                LinkEvent::Welcomed { .. } => {}
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
                    }
                }
                LinkEvent::Frame(f) => {
                    log::debug!(
                        "replication: {name}: frame 0x{:02x} (streams not built yet)",
                        f.frame_type()
                    );
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
            for (i, d) in self.dials.iter_mut().enumerate() {
                if d.link == Some(key) {
                    d.link = None;
                    let mut st = self.status.lock();
                    st[i].state = "down";
                    st[i].epoch = None;
                }
            }
        }
    }

    /// Copies link counters and phases into the shared status.
    fn publish(&mut self) {
        let mut st = self.status.lock();
        for (i, d) in self.dials.iter().enumerate() {
            if let Some(l) = d.link.and_then(|k| self.links.get(k)) {
                st[i].bytes_in = l.bytes_in;
                st[i].bytes_out = l.bytes_out;
                if l.phase == LinkPhase::Greeting {
                    st[i].state = "greeting";
                }
            }
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
}
