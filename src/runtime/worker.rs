//! One worker: a thread with its own mio event loop, listening sockets, sessions, upstream pool and
//! timer wheel. Workers share nothing mutable but the config snapshot (arc-swap) and backend counters.

use crate::base::timer::TimerEntry;
use crate::error::Termination;
use crate::proxy::context::{Command, Ctx, session_token};
use crate::proxy::io::Transport;
use crate::proxy::session::{Phase, Session};
use crate::snapshot::{ConfigSnapshot, SharedSnapshot};
use crate::sticky::table::SessionReader;
use crate::tls::TlsStream;
use arc_swap::cache::Cache;
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token of the cross-thread waker.
pub const WAKER: Token = Token(usize::MAX);
/// Tokens of listeners count down from here.
const LISTENER_BASE: usize = usize::MAX - 1;
/// Listener tokens occupy `LISTENER_BASE - MAX_LISTENERS + 1 ..= LISTENER_BASE`.
pub const MAX_LISTENERS: usize = 1024;

/// More panics than this within `PANIC_WINDOW` and the worker gives up: the process exits non-zero so its
/// supervisor restarts it (a bug that fires on every request is not worth limping on with).
const PANIC_BUDGET: u32 = 10;
const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// Tuning that does not change on reload.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_connections: usize,
    pub accept_batch: usize,
    /// Poll without sleeping for this long before blocking (0: off).
    pub busy_poll: Duration,
    /// Under load (the worker's last wait for events was shorter than this, and at least `batch_target`
    /// of its requests are in flight at backends), a turn that finds fewer than `batch_target` ready
    /// connections keeps polling without sleeping for up to this long to gather more before serving
    /// them (0: off). Answers then leave in groups, so the processes on the other end (clients,
    /// backends) are woken once per group rather than once per message; an idle or lightly loaded
    /// worker serves at once.
    pub batch_window: Duration,
    /// Ready connections that end a batch window early; also the requests in flight that count as load.
    pub batch_target: usize,
    /// The deny list's kernel filter, attached to this worker's IPv4 listeners when it changes.
    pub kernel_filter: Arc<crate::limits::kernel_filter::KernelFilter>,
}

/// A listening socket of this worker.
struct WorkerListener {
    socket: Option<TcpListener>,
    /// An IPv4 socket: the deny list's kernel filter applies to it.
    ipv4: bool,
    /// Accepting may have more to give (edge-triggered: we must come back without a new event).
    pending: bool,
}

/// The worker's event loop state.
pub struct Worker {
    poll: Poll,
    events: Events,
    listeners: Vec<WorkerListener>,
    sessions: Slab<Session>,
    /// Sessions to drive this turn.
    ready: Vec<usize>,
    cx: Ctx,
    settings: WorkerSettings,
    commands: Receiver<Command>,
    shared: Cache<SharedSnapshot, Arc<ConfigSnapshot>>,
    /// At the connection limit: stop accepting until a session ends.
    accept_paused: bool,
    /// Accept failed for lack of resources (EMFILE…): try again at this time.
    accept_retry_at: Option<Instant>,
    drain_deadline: Option<Instant>,
    due: Vec<TimerEntry>,
    /// When to top up warm TLS connections next.
    next_warm_check: Instant,
    /// Open client connections of this worker by client address, for `limits.max_connections_per_client`.
    /// Per worker and lock-free: with N workers a client may hold N times the cap (see docs/CONFIG.md).
    per_client: HashMap<IpAddr, u32>,
    /// Panics caught within the current window (all of them are counted in the metrics registry).
    panics_in_window: u32,
    panic_window_start: Instant,
    /// The kernel filter generation attached to the listeners.
    filter_generation: u64,
}

impl Worker {
    pub(crate) fn new(
        poll: Poll,
        listeners: Vec<std::net::TcpListener>,
        cx: Ctx,
        settings: WorkerSettings,
        commands: Receiver<Command>,
        shared: SharedSnapshot,
    ) -> io::Result<Self> {
        let mut out = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let ipv4 = l.local_addr()?.is_ipv4();
            let mut socket = TcpListener::from_std(l);
            poll.registry()
                .register(&mut socket, Token(LISTENER_BASE - i), Interest::READABLE)?;
            out.push(WorkerListener {
                socket: Some(socket),
                ipv4,
                pending: true,
            });
        }
        let max = settings.max_connections;
        let mut worker = Worker {
            poll,
            events: Events::with_capacity(1024),
            listeners: out,
            sessions: Slab::with_capacity(max.min(65_536)),
            ready: Vec::with_capacity(1024),
            cx,
            settings,
            commands,
            shared: Cache::new(shared),
            accept_paused: false,
            accept_retry_at: None,
            drain_deadline: None,
            due: Vec::with_capacity(256),
            next_warm_check: Instant::now(),
            per_client: HashMap::new(),
            panics_in_window: 0,
            panic_window_start: Instant::now(),
            filter_generation: 0,
        };
        // Denied addresses are dropped from the first SYN the worker could accept.
        worker.attach_kernel_filter();
        Ok(worker)
    }

    /// Runs until shut down and drained.
    pub fn run(mut self) {
        let sticky = Arc::clone(&self.cx.sticky);
        loop {
            let waiting_since = Instant::now();
            if let Err(e) = self.wait_for_events() {
                log::error!("worker {}: poll failed: {e}", self.cx.worker);
                return;
            }
            // The session table stays pinned for the turn (one reclamation-epoch entry per turn instead
            // of one per lookup) and is unpinned before the worker sleeps again.
            let sessions = sticky.table.reader();
            self.cx.now = Instant::now();
            self.cx.unix_now = crate::sticky::unix_now();
            self.refresh_snapshot();
            self.resume_deferred();
            self.dispatch_events();
            self.gather(self.cx.now.saturating_duration_since(waiting_since));
            if self.accept_retry_at.is_some_and(|t| t <= self.cx.now) {
                self.accept_retry_at = None;
                for l in &mut self.listeners {
                    l.pending = true;
                }
            }
            self.attach_kernel_filter();
            self.accept();
            self.run_ready(&sessions);
            self.fire_timers(&sessions);
            if self.cx.now >= self.next_warm_check {
                self.next_warm_check = self.cx.now + Duration::from_secs(1);
                crate::proxy::warm::top_up(&mut self.cx);
            }
            self.run_ready(&sessions);
            self.flush_meter(false);
            drop(sessions);
            if self.cx.draining && self.finish_drain() {
                break;
            }
            if self.panics_in_window > PANIC_BUDGET {
                log::error!(
                    "worker {}: {} panics within {}; stopping so the supervisor restarts tether",
                    self.cx.worker,
                    self.panics_in_window,
                    humantime::format_duration(PANIC_WINDOW)
                );
                // Returning ends the thread: `Server::serve` stops the other workers and exits non-zero.
                return;
            }
        }
        log::debug!("worker {} stopped", self.cx.worker);
    }

    /// Waits for readiness. With `busy_poll` set, the worker first checks for events without sleeping
    /// for up to that long (bounded by the next timer): a worker that sleeps must be woken by whoever
    /// sends it the next packet, which costs that sender an inter-processor interrupt. Then it sleeps.
    fn wait_for_events(&mut self) -> io::Result<()> {
        let timeout = self.poll_timeout();
        let spin = self.settings.busy_poll;
        if !spin.is_zero() && timeout != Some(Duration::ZERO) {
            let start = Instant::now();
            let limit = timeout.map_or(spin, |t| t.min(spin));
            loop {
                match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                    Ok(()) if !self.events.is_empty() => return Ok(()),
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                if start.elapsed() >= limit {
                    break;
                }
                std::hint::spin_loop();
            }
            let remaining = timeout.map(|t| t.saturating_sub(start.elapsed()));
            return match self.poll.poll(&mut self.events, remaining) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
                _ => Ok(()),
            };
        }
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
            _ => Ok(()),
        }
    }

    /// Under load, collects more ready connections before serving (see `WorkerSettings::batch_window`).
    /// `waited`: how long the worker waited for this turn's events.
    fn gather(&mut self, waited: Duration) {
        let (window, target) = (self.settings.batch_window, self.settings.batch_target);
        if window.is_zero()
            || waited >= window
            || self.ready.len() >= target
            || self.cx.upstreams.attached < target
            || self.cx.draining
        {
            return;
        }
        let start = Instant::now();
        loop {
            std::hint::spin_loop();
            match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) if !self.events.is_empty() => self.dispatch_events(),
                _ => {}
            }
            self.cx.now = Instant::now();
            if self.ready.len() >= target || self.cx.now.saturating_duration_since(start) >= window
            {
                break;
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let accept_now = !self.accept_paused
            && self.accept_retry_at.is_none()
            && self
                .listeners
                .iter()
                .any(|l| l.pending && l.socket.is_some());
        if accept_now
            || !self.ready.is_empty()
            || !self.cx.wakers.woken.is_empty()
            || !self.cx.deferred.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut t = self.cx.io.timers.next_timeout(self.cx.now);
        for at in [
            self.accept_retry_at,
            self.drain_deadline,
            self.cx.meter.due(),
        ]
        .into_iter()
        .flatten()
        {
            let d = at.saturating_duration_since(self.cx.now);
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        t
    }

    /// Picks up a reloaded config (one pointer comparison when nothing changed).
    /// Hands the worker's usage sums to the cluster-wide counters when due (`force`: now, under the
    /// current snapshot's tenants — before a reload may renumber the pools).
    fn flush_meter(&mut self, force: bool) {
        let Some(settings) = self.cx.snapshot.auth.as_deref() else {
            return;
        };
        self.cx.meter.flush_if_due(
            &self.cx.counters,
            &settings.tenants,
            if force { None } else { Some(self.cx.now) },
            self.cx.unix_now,
        );
    }

    fn refresh_snapshot(&mut self) {
        if self.shared.load().generation != self.cx.snapshot.generation {
            self.flush_meter(true);
            let snapshot = Arc::clone(self.shared.load());
            self.cx
                .balancer
                .reset(snapshot.generation, &snapshot.clusters);
            self.cx.upstreams.pool.ensure(snapshot.backend_id_bound);
            // Idle connections to backends removed or drained by the reload: close them now.
            let serving = snapshot.serving_backends();
            for key in self
                .cx
                .upstreams
                .pool
                .drain_unless(|id| serving.get(id) == Some(&true))
            {
                self.cx.upstreams.close(key);
            }
            // Requests in flight keep the snapshot they pinned; new ones get this one.
            self.cx.snapshot = std::rc::Rc::new(snapshot);
        }
    }

    fn dispatch_events(&mut self) {
        for event in self.events.iter() {
            let token = event.token().0;
            if token == WAKER.0 {
                continue; // commands are read below
            }
            if token > LISTENER_BASE - MAX_LISTENERS {
                let i = LISTENER_BASE - token;
                if let Some(l) = self.listeners.get_mut(i) {
                    l.pending = true;
                }
                continue;
            }
            let key = token >> 1;
            if token & 1 == 0 {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.io.update(event);
                    if !s.queued {
                        s.queued = true;
                        self.ready.push(key);
                    }
                }
            } else if let Some(u) = self.cx.upstreams.slab.get_mut(key) {
                u.io.update(event);
                match u.session {
                    Some(s) => {
                        if let Some(sess) = self.sessions.get_mut(s) {
                            if !sess.queued {
                                sess.queued = true;
                                self.ready.push(s);
                            }
                        }
                    }
                    // A parked or warming connection: advance its handshake, read post-handshake TLS
                    // messages, or close it if the backend closed it or sent something unasked.
                    None => crate::proxy::warm::on_event(&mut self.cx, key),
                }
            }
        }
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Shutdown { grace } => self.start_drain(grace),
                Command::Wake { session, id } => self.cx.wakers.woken.push((session, id)),
            }
        }
    }

    fn accept(&mut self) {
        if self.cx.draining || self.accept_paused || self.accept_retry_at.is_some() {
            return;
        }
        for i in 0..self.listeners.len() {
            if !self.listeners[i].pending {
                continue;
            }
            let mut accepted = 0;
            let mut drained = false;
            while accepted < self.settings.accept_batch {
                if self.sessions.len() >= self.settings.max_connections {
                    // Leave further connections in the kernel backlog rather than accept and drop them.
                    self.accept_paused = true;
                    return;
                }
                let Some(socket) = &self.listeners[i].socket else {
                    drained = true;
                    break;
                };
                match socket.accept() {
                    Ok((stream, peer)) => {
                        accepted += 1;
                        if self.over_client_limit(peer) {
                            // Closed at once, unanswered: the client already holds its share.
                            drop(stream);
                            continue;
                        }
                        if self.on_deny_list(peer) {
                            // Closed before a byte is read: denied on this node or by a peer's rule.
                            drop(stream);
                            continue;
                        }
                        self.add_session(stream, peer, i as u16);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                    Err(e) => {
                        // Out of descriptors or memory: back off briefly instead of spinning.
                        log::warn!("worker {}: accept failed: {e}", self.cx.worker);
                        self.accept_retry_at = Some(self.cx.now + Duration::from_millis(100));
                        return;
                    }
                }
            }
            self.listeners[i].pending = !drained;
        }
    }

    /// Attaches the deny list's newest kernel filter to this worker's IPv4 listeners (one atomic load
    /// when it did not change; the program was compiled on the `deny-filter` thread).
    fn attach_kernel_filter(&mut self) {
        let generation = self.settings.kernel_filter.generation();
        if generation == self.filter_generation {
            return;
        }
        self.filter_generation = generation;
        let program = self.settings.kernel_filter.program();
        for l in &self.listeners {
            let (Some(socket), true) = (&l.socket, l.ipv4) else {
                continue;
            };
            if let Err(e) =
                crate::limits::kernel_filter::attach(socket2::SockRef::from(socket), &program)
            {
                // The accept-time check still refuses the addresses.
                log::warn!(
                    "worker {}: could not attach the deny list's kernel filter: {e}",
                    self.cx.worker
                );
            }
        }
    }

    /// Whether `peer`'s address already holds `limits.max_connections_per_client` connections here.
    fn over_client_limit(&mut self, peer: SocketAddr) -> bool {
        let cap = self.cx.snapshot.max_connections_per_client;
        if cap == 0 {
            return false;
        }
        let ip = peer.ip().to_canonical();
        let open = self.per_client.get(&ip).copied().unwrap_or(0) as usize;
        if open < cap {
            return false;
        }
        self.cx.metrics.rejected_per_client.inc();
        log::debug!(
            "worker {}: {ip} holds {open} connection(s), the per-client limit; new connection closed ({} so far)",
            self.cx.worker,
            self.cx.metrics.rejected_per_client.get()
        );
        true
    }

    /// Whether `peer`'s address is refused at accept (`[deny]`: listed, or banned by a rule on any node).
    /// One short scan and one lock-free store lookup; nothing allocated.
    fn on_deny_list(&mut self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        let store = self.cx.store.as_ref().map(|w| w.store());
        if !self
            .cx
            .snapshot
            .deny
            .refuses(ip, store, crate::sticky::unix_now())
        {
            return false;
        }
        self.cx.metrics.rejected_denied.inc();
        log::debug!(
            "worker {}: {ip} is on the deny list; connection closed",
            self.cx.worker
        );
        true
    }

    fn add_session(
        &mut self,
        mut stream: mio::net::TcpStream,
        peer: std::net::SocketAddr,
        listener: u16,
    ) {
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.cx.io.registry.register(
            &mut stream,
            session_token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!(
                "worker {}: cannot register client socket: {e}",
                self.cx.worker
            );
            return;
        }
        let tls = self
            .cx
            .snapshot
            .listener_tls
            .get(listener as usize)
            .and_then(Option::as_ref);
        let transport = match tls {
            None => Transport::plain(stream),
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(conn) => Transport::with_tls(
                    stream,
                    TlsStream::new(
                        rustls::Connection::Server(conn),
                        self.cx.upstreams.tls_stats.clone(),
                    ),
                ),
                Err(e) => {
                    log::warn!("worker {}: cannot start TLS: {e}", self.cx.worker);
                    return;
                }
            },
        };
        let id = self.cx.next_id();
        let mut session = Session::new(key, id, transport, peer, listener, self.cx.now);
        session.queued = true;
        entry.insert(session);
        self.ready.push(key);
        self.cx.metrics.accepted.inc();
        if let Some(c) = self.cx.metrics.listener_accepted.get(listener as usize) {
            c.inc();
        }
        *self.per_client.entry(peer.ip().to_canonical()).or_insert(0) += 1;
    }

    fn run_ready(&mut self, sessions: &SessionReader<'_>) {
        // Parked requests woken (a QoS grant, a completed ticket; by this worker or another) move on.
        while let Some((key, id)) = self.cx.wakers.woken.pop() {
            if let Some(s) = self.sessions.get_mut(key) {
                if s.id == id && !s.queued {
                    s.queued = true;
                    self.ready.push(key);
                }
            }
        }
        while let Some(key) = self.ready.pop() {
            let Some(session) = self.sessions.get_mut(key) else {
                continue;
            };
            session.queued = false;
            let cx = &mut self.cx;
            match catch_unwind(AssertUnwindSafe(|| session.drive(cx, sessions))) {
                Ok(_) if session.phase == Phase::Closed => self.remove_session(key),
                Ok(true) => self.cx.deferred.push(key),
                Ok(false) => {}
                Err(payload) => self.session_panicked(key, payload.as_ref(), "driving"),
            }
        }
    }

    /// Sessions that yielded last turn go first in this one (their readiness flags are still set, so
    /// they carry on without a new event).
    fn resume_deferred(&mut self) {
        for key in self.cx.deferred.drain(..) {
            if let Some(s) = self.sessions.get_mut(key) {
                if !s.queued {
                    s.queued = true;
                    self.ready.push(key);
                }
            }
        }
    }

    /// A bug panicked while this worker handled one session. The panic is logged with the connection's
    /// context, that session and its backend connection are dropped (its state cannot be trusted), and the
    /// worker goes on serving every other connection. See docs/HARDENING.md, "Panics".
    fn session_panicked(&mut self, key: usize, payload: &(dyn std::any::Any + Send), during: &str) {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        self.cx.metrics.panics.inc();
        if self
            .cx
            .now
            .saturating_duration_since(self.panic_window_start)
            > PANIC_WINDOW
        {
            self.panic_window_start = self.cx.now;
            self.panics_in_window = 0;
        }
        self.panics_in_window += 1;
        if let Some(s) = self.sessions.get(key) {
            log::error!(
                "worker {}: panic while {during} connection {} from {} (phase {:?}): {message}; \
                 connection dropped ({} panic(s) in this worker)",
                self.cx.worker,
                s.id,
                s.peer(),
                s.phase,
                self.cx.metrics.panics.get()
            );
        }
        let cx = &mut self.cx;
        if let Some(mut session) = self.sessions.try_remove(key) {
            let cleanup = catch_unwind(AssertUnwindSafe(|| {
                session.abort(cx, Termination::Internal("panic"));
                session.close(cx);
            }));
            if cleanup.is_err() {
                log::error!(
                    "worker {}: cleaning up after the panic panicked too",
                    cx.worker
                );
            }
            self.client_closed(session.peer());
            // Dropping the session closes the client socket.
        }
        // A backend connection still pointing at the dropped slot belongs to no one now.
        let orphans: Vec<usize> = self
            .cx
            .upstreams
            .slab
            .iter()
            .filter(|(_, u)| u.session == Some(key))
            .map(|(k, _)| k)
            .collect();
        for k in orphans {
            self.cx.upstreams.close(k);
        }
        self.slot_freed();
    }

    /// One connection of `peer`'s address less, for the per-client cap.
    fn client_closed(&mut self, peer: SocketAddr) {
        let ip = peer.ip().to_canonical();
        if let Some(n) = self.per_client.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
    }

    /// A session slot became free: accepting resumes if the connection limit had paused it.
    fn slot_freed(&mut self) {
        if self.accept_paused {
            self.accept_paused = false;
            for l in &mut self.listeners {
                l.pending = true;
            }
        }
    }

    fn remove_session(&mut self, key: usize) {
        let mut session = self.sessions.remove(key);
        self.client_closed(session.peer());
        session.close(&mut self.cx);
        drop(session);
        self.slot_freed();
    }

    fn fire_timers(&mut self, sessions: &SessionReader<'_>) {
        self.due.clear();
        self.cx.io.timers.expire(self.cx.now, &mut self.due);
        for i in 0..self.due.len() {
            let entry = self.due[i];
            let key = entry.token >> 1;
            if entry.token & 1 == 0 {
                let Some(session) = self.sessions.get_mut(key) else {
                    continue;
                };
                if session.id != entry.id {
                    continue;
                }
                if session
                    .deadline
                    .fire(&mut self.cx.io.timers, &entry, self.cx.now)
                {
                    let cx = &mut self.cx;
                    match catch_unwind(AssertUnwindSafe(|| session.on_timeout(cx, sessions))) {
                        Ok(()) if session.phase == Phase::Closed => self.remove_session(key),
                        Ok(()) => {}
                        Err(payload) => self.session_panicked(key, payload.as_ref(), "timing out"),
                    }
                }
            } else if let Some(u) = self.cx.upstreams.slab.get_mut(key) {
                // Idle too long in the pool, or a warm connection that could not finish its handshake.
                if u.id == entry.id
                    && u.session.is_none()
                    && u.deadline.fire(&mut self.cx.io.timers, &entry, self.cx.now)
                {
                    self.cx.upstreams.close(key);
                }
            }
        }
    }

    /// Stop accepting, close what is idle, and let in-flight requests finish within `grace`.
    fn start_drain(&mut self, grace: Duration) {
        if self.cx.draining {
            // A second request to stop shortens the grace period.
            self.drain_deadline = Some(self.cx.now.min(self.drain_deadline.unwrap_or(self.cx.now)));
            return;
        }
        self.cx.draining = true;
        self.drain_deadline = Some(self.cx.now + grace);
        for l in &mut self.listeners {
            if let Some(mut socket) = l.socket.take() {
                let _ = self.cx.io.registry.deregister(&mut socket);
            }
        }
        for key in self.cx.upstreams.pool.drain_all() {
            self.cx.upstreams.close(key);
        }
        // Every session looks at the new situation once: idle ones close now.
        for (key, s) in self.sessions.iter_mut() {
            if !s.queued {
                s.queued = true;
                self.ready.push(key);
            }
        }
    }

    /// `true` when the worker may exit.
    fn finish_drain(&mut self) -> bool {
        if self.sessions.is_empty() {
            return true;
        }
        if self.drain_deadline.is_some_and(|d| d <= self.cx.now) {
            let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
            log::warn!(
                "worker {}: grace period over, cutting {} connection(s)",
                self.cx.worker,
                keys.len()
            );
            for key in keys {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.abort(&mut self.cx, Termination::Shutdown);
                }
                self.remove_session(key);
            }
            return true;
        }
        false
    }

    /// The registry handle the main thread uses to wake this worker.
    pub fn waker(&self) -> io::Result<Waker> {
        Waker::new(self.poll.registry(), WAKER)
    }
}
