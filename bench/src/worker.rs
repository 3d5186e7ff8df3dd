//! One load-generating thread: a mio event loop driving a set of connections
//! (virtual users).
//!
//! Hot-path rules: sockets are registered once, edge-triggered, for READABLE |
//! WRITABLE and never re-registered; requests are pre-serialized templates
//! copied into a per-connection output buffer (reused); responses are read
//! into one large per-thread buffer and parsed in place; statistics are
//! thread-local and merged after the run. Nothing is locked or allocated per
//! request in steady state (TLS records are rustls' business).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

use crate::cookie::CookieJar;
use crate::parser::{Done, Parser};
use crate::request::Template;
use crate::sched::RateScheduler;
use crate::stats::{ErrorKind, Progress, Stats};

/// Everything the workers share (read-only).
pub struct Config {
    pub addr: SocketAddr,
    pub templates: Vec<Template>,
    /// Template indices in the order they are sent (weighted cycle).
    pub sequence: Vec<u16>,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// TLS session resumption is on: each virtual user keeps its own session tickets, as separate
    /// clients do (one shared store would cap resumption at rustls's 8 tickets per server name).
    pub tls_resume: bool,
    /// Requests in flight per connection (1 = no pipelining).
    pub pipeline: usize,
    pub new_conn: bool,
    /// Local address connections are made from (`--bind`).
    pub bind: Option<std::net::IpAddr>,
    pub sessions: bool,
    pub timeout_ns: u64,
    /// End of warm-up, relative to the run's start instant.
    pub warmup_end_ns: u64,
    /// End of the run, relative to the run's start instant.
    pub end_ns: u64,
    /// Total open-loop rate (requests/s over all threads); None = closed loop.
    pub rate: Option<f64>,
    pub threads: usize,
}

const READ_BUF: usize = 256 * 1024;

/// A non-blocking connect to `addr`, from `bind` when given (socket2: bind before connect).
fn connect(addr: SocketAddr, bind: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = bind else {
        return TcpStream::connect(addr);
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.set_nonblocking(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        // EINPROGRESS: the connect completes later, as with mio's own connect.
        Err(e) if e.raw_os_error() == Some(115) || e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

#[derive(Clone, Copy, Debug)]
struct Req {
    /// Latency origin: intended send time (open loop) or queue time (closed loop).
    start_ns: u64,
    /// When the request was handed to the connection; the timeout runs from here.
    sent_ns: u64,
    tmpl: u16,
}

struct Conn {
    sock: Option<TcpStream>,
    tls: Option<Box<ClientConnection>>,
    connected: bool,
    handshake_seen: bool,
    opened_ns: u64,
    inflight: VecDeque<Req>,
    /// Plaintext bytes not yet written (plain TCP) or not yet given to rustls.
    out: Vec<u8>,
    out_pos: usize,
    /// An incomplete response head carried over to the next read.
    carry: Vec<u8>,
    parser: Parser,
    /// The virtual user's cookies; survives reconnects of this slot.
    jar: CookieJar,
    /// The virtual user's TLS config with its own session store (made on first connect).
    tls_cfg: Option<Arc<ClientConfig>>,
    in_idle: bool,
    in_restart: bool,
}

impl Conn {
    fn new(pipeline: usize) -> Conn {
        Conn {
            sock: None,
            tls: None,
            connected: false,
            handshake_seen: false,
            opened_ns: 0,
            inflight: VecDeque::with_capacity(pipeline),
            out: Vec::with_capacity(4096),
            out_pos: 0,
            carry: Vec::new(),
            parser: Parser::new(),
            jar: CookieJar::default(),
            tls_cfg: None,
            in_idle: false,
            in_restart: false,
        }
    }

    fn close(&mut self) {
        self.sock = None;
        self.tls = None;
        self.connected = false;
        self.inflight.clear();
        self.out.clear();
        self.out_pos = 0;
        self.carry.clear();
        self.parser.reset();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Continue,
    /// Orderly end of the connection (Connection: close, --new-conn, server
    /// closed an idle keep-alive connection).
    Close,
    Fail(ErrorKind),
}

struct Ctx {
    cfg: Arc<Config>,
    t0: Instant,
    stats: Stats,
    /// All completed requests / bytes including warm-up, for the progress line.
    all_requests: u64,
    all_bytes: u64,
    sched: Option<RateScheduler>,
    /// Open loop: connections that can take another request (stack).
    idle: Vec<usize>,
    /// Connections to re-arm (reconnect and/or queue requests) after the
    /// current batch of events.
    restart: Vec<usize>,
    seq_pos: usize,
    rbuf: Vec<u8>,
    pbuf: Vec<u8>,
}

impl Ctx {
    #[inline]
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn depth(&self) -> usize {
        if self.cfg.new_conn {
            1
        } else {
            self.cfg.pipeline
        }
    }

    #[inline]
    fn next_template(&mut self) -> u16 {
        let t = self.cfg.sequence[self.seq_pos];
        self.seq_pos += 1;
        if self.seq_pos == self.cfg.sequence.len() {
            self.seq_pos = 0;
        }
        t
    }

    fn open(&mut self, c: &mut Conn, idx: usize, registry: &Registry, now: u64) -> bool {
        debug_assert!(c.sock.is_none());
        let mut s = match connect(self.cfg.addr, self.cfg.bind) {
            Ok(s) => s,
            Err(_) => {
                self.stats.error(ErrorKind::Connect);
                return false;
            }
        };
        let _ = s.set_nodelay(true);
        if registry
            .register(&mut s, Token(idx), Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.stats.error(ErrorKind::Connect);
            return false;
        }
        if let Some((base, name)) = &self.cfg.tls {
            let resume = self.cfg.tls_resume;
            let cfg = c
                .tls_cfg
                .get_or_insert_with(|| {
                    if resume {
                        let mut own = (**base).clone();
                        own.resumption = rustls::client::Resumption::in_memory_sessions(16);
                        Arc::new(own)
                    } else {
                        base.clone()
                    }
                })
                .clone();
            match ClientConnection::new(cfg, name.clone()) {
                Ok(mut t) => {
                    t.set_buffer_limit(None);
                    c.tls = Some(Box::new(t));
                }
                Err(_) => {
                    self.stats.error(ErrorKind::Connect);
                    return false;
                }
            }
        }
        c.sock = Some(s);
        c.connected = false;
        c.handshake_seen = false;
        c.opened_ns = now;
        self.stats.connections += 1;
        true
    }

    /// Queue one request on `c` (bytes go to its output buffer).
    #[inline]
    fn start_request(&mut self, c: &mut Conn, start_ns: u64, now: u64) {
        let t = self.next_template();
        c.inflight.push_back(Req {
            start_ns,
            sent_ns: now,
            tmpl: t,
        });
        let cookie: &[u8] = if self.cfg.sessions {
            c.jar.header()
        } else {
            &[]
        };
        self.cfg.templates[t as usize].write_to(&mut c.out, cookie);
    }

    fn schedule_restart(&mut self, c: &mut Conn, idx: usize) {
        if !c.in_restart {
            c.in_restart = true;
            self.restart.push(idx);
        }
    }

    fn mark_idle(&mut self, c: &mut Conn, idx: usize) {
        if !c.in_idle && c.inflight.len() < self.depth() {
            c.in_idle = true;
            self.idle.push(idx);
        }
    }

    fn fail(&mut self, c: &mut Conn, idx: usize, kind: ErrorKind) {
        self.stats.error(kind);
        c.close();
        self.schedule_restart(c, idx);
    }

    /// Bring a slot back into service after a close or failure (or at start).
    fn rearm(&mut self, c: &mut Conn, idx: usize, registry: &Registry, now: u64) {
        c.in_restart = false;
        let open_loop = self.sched.is_some();
        if open_loop && self.cfg.new_conn {
            // Connects when a request is assigned.
            self.mark_idle(c, idx);
            return;
        }
        if c.sock.is_none() && !self.open(c, idx, registry, now) {
            self.schedule_restart(c, idx);
            return;
        }
        if open_loop {
            self.mark_idle(c, idx);
        } else {
            for _ in c.inflight.len()..self.depth() {
                self.start_request(c, now, now);
            }
        }
    }

    fn flush(&mut self, c: &mut Conn) -> Result<(), ErrorKind> {
        if !c.connected {
            return Ok(());
        }
        let Some(sock) = c.sock.as_mut() else {
            return Ok(());
        };
        if let Some(tls) = c.tls.as_mut() {
            if !c.out.is_empty() {
                tls.writer()
                    .write_all(&c.out)
                    .map_err(|_| ErrorKind::Write)?;
                c.out.clear();
            }
            while tls.wants_write() {
                match tls.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(ErrorKind::Write),
                }
            }
            return Ok(());
        }
        while c.out_pos < c.out.len() {
            match sock.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ErrorKind::Write),
            }
        }
        c.out.clear();
        c.out_pos = 0;
        Ok(())
    }

    fn on_event(&mut self, c: &mut Conn, idx: usize, ev: &Event) {
        let Some(sock) = c.sock.as_ref() else {
            return; // stale event for a socket closed earlier in this batch
        };
        if !c.connected {
            match sock.take_error() {
                Ok(None) => {}
                _ => return self.fail(c, idx, ErrorKind::Connect),
            }
            match sock.peer_addr() {
                Ok(_) => c.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !ev.is_error() => return,
                Err(_) => return self.fail(c, idx, ErrorKind::Connect),
            }
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            // If the peer also closed, keep reading to the end of stream: no
            // further edge will announce the EOF.
            let drain = ev.is_read_closed() || ev.is_error();
            let out = if c.tls.is_some() {
                self.read_tls(c, idx, drain)
            } else {
                self.read_plain(c, idx, drain)
            };
            match out {
                Outcome::Continue => {}
                Outcome::Close => {
                    c.close();
                    return self.schedule_restart(c, idx);
                }
                Outcome::Fail(kind) => return self.fail(c, idx, kind),
            }
        }
        if let Err(kind) = self.flush(c) {
            self.fail(c, idx, kind);
        }
    }

    fn read_plain(&mut self, c: &mut Conn, idx: usize, drain: bool) -> Outcome {
        let cap = self.rbuf.len();
        loop {
            let cl = c.carry.len();
            if cl > 0 {
                self.rbuf[..cl].copy_from_slice(&c.carry);
            }
            let Some(sock) = c.sock.as_mut() else {
                return Outcome::Continue;
            };
            match sock.read(&mut self.rbuf[cl..]) {
                Ok(0) => return self.eof(c, idx),
                Ok(n) => {
                    c.carry.clear();
                    let now = self.now();
                    self.count_bytes(n, now);
                    let rbuf = std::mem::take(&mut self.rbuf);
                    let out = self.process(c, idx, &rbuf[..cl + n], now);
                    self.rbuf = rbuf;
                    if out != Outcome::Continue {
                        return out;
                    }
                    // A short read means the socket is drained; with
                    // edge-triggered epoll, data arriving later raises a new
                    // event, so skip the read that would return EAGAIN.
                    if cl + n < cap && !drain {
                        return Outcome::Continue;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Fail(ErrorKind::Read),
            }
        }
    }

    fn read_tls(&mut self, c: &mut Conn, idx: usize, drain: bool) -> Outcome {
        let cap = self.rbuf.len();
        loop {
            let Some(sock) = c.sock.as_mut() else {
                return Outcome::Continue;
            };
            match sock.read(&mut self.rbuf) {
                Ok(0) => return self.eof(c, idx),
                Ok(n) => {
                    let rbuf = std::mem::take(&mut self.rbuf);
                    let out = self.feed_tls(c, idx, &rbuf[..n]);
                    self.rbuf = rbuf;
                    if out != Outcome::Continue {
                        return out;
                    }
                    if n < cap && !drain {
                        return Outcome::Continue;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Fail(ErrorKind::Read),
            }
        }
    }

    fn feed_tls(&mut self, c: &mut Conn, idx: usize, mut data: &[u8]) -> Outcome {
        let mut pbuf = std::mem::take(&mut self.pbuf);
        let out = 'outer: loop {
            if data.is_empty() {
                break Outcome::Continue;
            }
            let Some(tls) = c.tls.as_mut() else {
                break Outcome::Continue;
            };
            if tls.read_tls(&mut data).is_err() {
                break Outcome::Fail(ErrorKind::Read);
            }
            if tls.process_new_packets().is_err() {
                // Best effort: send the alert rustls queued.
                if let Some(sock) = c.sock.as_mut() {
                    let _ = tls.write_tls(sock);
                }
                break Outcome::Fail(if c.handshake_seen {
                    ErrorKind::Read
                } else {
                    ErrorKind::Connect
                });
            }
            if !c.handshake_seen && !tls.is_handshaking() {
                c.handshake_seen = true;
                self.stats.tls_handshakes += 1;
                if tls.handshake_kind() == Some(HandshakeKind::Resumed) {
                    self.stats.tls_resumed += 1;
                }
                // One string per handshake: the load generator's cost, small beside the handshake's.
                *self
                    .stats
                    .tls_negotiated
                    .entry(crate::tls::negotiated(tls))
                    .or_insert(0) += 1;
            }
            loop {
                let cl = c.carry.len();
                if cl > 0 {
                    pbuf[..cl].copy_from_slice(&c.carry);
                }
                let Some(tls) = c.tls.as_mut() else {
                    break 'outer Outcome::Continue;
                };
                match tls.reader().read(&mut pbuf[cl..]) {
                    Ok(0) => break 'outer self.eof(c, idx), // close_notify
                    Ok(m) => {
                        c.carry.clear();
                        let now = self.now();
                        self.count_bytes(m, now);
                        let out = self.process(c, idx, &pbuf[..cl + m], now);
                        if out != Outcome::Continue {
                            break 'outer out;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break 'outer Outcome::Fail(ErrorKind::Read),
                }
            }
        };
        self.pbuf = pbuf;
        out
    }

    #[inline]
    fn count_bytes(&mut self, n: usize, now: u64) {
        self.all_bytes += n as u64;
        if now >= self.cfg.warmup_end_ns && now < self.cfg.end_ns {
            self.stats.bytes += n as u64;
        }
    }

    /// Parse response bytes; completes requests and queues follow-ups.
    fn process(&mut self, c: &mut Conn, idx: usize, mut data: &[u8], now: u64) -> Outcome {
        while !data.is_empty() {
            let Some(front) = c.inflight.front() else {
                return Outcome::Fail(ErrorKind::Parse); // bytes nobody asked for
            };
            let head = self.cfg.templates[front.tmpl as usize].is_head;
            let jar = if self.cfg.sessions {
                Some(&mut c.jar)
            } else {
                None
            };
            match c.parser.feed(data, head, jar) {
                Err(_) => return Outcome::Fail(ErrorKind::Parse),
                Ok((n, done)) => {
                    data = &data[n..];
                    if let Some(d) = done {
                        if let Some(o) = self.complete(c, idx, d, now) {
                            return o;
                        }
                    } else if n == 0 {
                        c.carry.extend_from_slice(data);
                        break;
                    }
                }
            }
        }
        Outcome::Continue
    }

    /// A response completed. Returns `Some(Close)` if the connection ends here.
    #[inline]
    fn complete(&mut self, c: &mut Conn, idx: usize, d: Done, now: u64) -> Option<Outcome> {
        let req = c.inflight.pop_front().expect("in-flight request");
        self.all_requests += 1;
        // Counted when it completes inside the measurement window; its
        // latency still runs from its start (intended send time when open
        // loop), so a backlog built up during warm-up shows as latency.
        if now >= self.cfg.warmup_end_ns && now < self.cfg.end_ns {
            self.stats.requests += 1;
            self.stats.status(d.status);
            self.stats
                .hist
                .saturating_record((now - req.start_ns) / 1000);
        }
        if d.close || self.cfg.new_conn {
            return Some(Outcome::Close);
        }
        if self.sched.is_some() {
            self.mark_idle(c, idx);
        } else if now < self.cfg.end_ns && c.inflight.len() <= self.depth() / 2 {
            // Pipelining refills in batches once half the window is answered:
            // one write per batch instead of one per response.
            for _ in c.inflight.len()..self.depth() {
                self.start_request(c, now, now);
            }
        }
        None
    }

    fn eof(&mut self, c: &mut Conn, idx: usize) -> Outcome {
        match c.parser.eof() {
            Ok(Some(d)) => {
                if c.inflight.is_empty() {
                    return Outcome::Fail(ErrorKind::Parse);
                }
                self.complete(c, idx, d, self.now());
                Outcome::Close
            }
            Ok(None) if c.inflight.is_empty() && c.carry.is_empty() => Outcome::Close,
            _ => Outcome::Fail(ErrorKind::Read),
        }
    }

    /// Open loop: hand due requests to connections with spare capacity.
    fn dispatch(&mut self, conns: &mut [Conn], registry: &Registry) {
        let now = self.now();
        let mut last: Option<usize> = None;
        while let Some(&i) = self.idle.last() {
            let sched = self.sched.as_mut().expect("open loop");
            let Some(t) = sched.take_due(now) else { break };
            let c = &mut conns[i];
            if c.sock.is_none() && !self.open(c, i, registry, now) {
                // The request is lost with a connect error; retry the slot later.
                self.idle.pop();
                c.in_idle = false;
                self.schedule_restart(c, i);
                continue;
            }
            self.start_request(c, t, now);
            if c.inflight.len() >= self.depth() {
                self.idle.pop();
                c.in_idle = false;
                if let Err(k) = self.flush(c) {
                    self.fail(c, i, k);
                }
                last = None;
            } else {
                last = Some(i);
            }
        }
        if let Some(i) = last {
            let c = &mut conns[i];
            if let Err(k) = self.flush(c) {
                self.fail(c, i, k);
            }
        }
    }

    fn check_timeouts(&mut self, conns: &mut [Conn], now: u64) {
        let limit = self.cfg.timeout_ns;
        for (i, c) in conns.iter_mut().enumerate() {
            if c.sock.is_none() {
                continue;
            }
            let expired = match c.inflight.front() {
                Some(r) => now.saturating_sub(r.sent_ns) > limit,
                None => !c.connected && now.saturating_sub(c.opened_ns) > limit,
            };
            if expired {
                self.fail(c, i, ErrorKind::Timeout);
            }
        }
    }
}

/// Run one worker thread until `cfg.end_ns`; returns its statistics.
pub fn run(
    cfg: Arc<Config>,
    idx: usize,
    nconns: usize,
    t0: Instant,
    progress: Arc<Progress>,
) -> io::Result<Stats> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let pipeline = cfg.pipeline.max(1);
    let mut conns: Vec<Conn> = (0..nconns).map(|_| Conn::new(pipeline)).collect();
    let sched = cfg
        .rate
        .map(|r| RateScheduler::for_thread(idx, cfg.threads, r));
    let seq_len = cfg.sequence.len();
    let mut ctx = Ctx {
        t0,
        stats: Stats::default(),
        all_requests: 0,
        all_bytes: 0,
        sched,
        idle: Vec::with_capacity(nconns),
        restart: Vec::with_capacity(nconns * 2),
        seq_pos: (idx * 7919) % seq_len,
        rbuf: vec![0; READ_BUF],
        pbuf: if cfg.tls.is_some() {
            vec![0; READ_BUF]
        } else {
            Vec::new()
        },
        cfg,
    };
    let end = ctx.cfg.end_ns;
    let tick = (ctx.cfg.timeout_ns / 4).clamp(1_000_000, 100_000_000);
    let mut next_tick = ctx.now() + tick;
    for (i, c) in conns.iter_mut().enumerate() {
        ctx.schedule_restart(c, i);
    }
    loop {
        let mut now = ctx.now();
        if now >= end {
            break;
        }
        if !ctx.restart.is_empty() {
            let n = ctx.restart.len();
            for k in 0..n {
                let i = ctx.restart[k];
                ctx.rearm(&mut conns[i], i, poll.registry(), now);
                // Closed loop: requests queued on a connected socket (after a
                // Connection: close, for example) need a flush now.
                if let Err(kind) = ctx.flush(&mut conns[i]) {
                    ctx.fail(&mut conns[i], i, kind);
                }
            }
            ctx.restart.drain(..n);
        }
        if ctx.sched.is_some() {
            ctx.dispatch(&mut conns, poll.registry());
            now = ctx.now();
        }
        if now >= next_tick {
            ctx.check_timeouts(&mut conns, now);
            progress.publish(&ctx.stats, ctx.all_requests, ctx.all_bytes);
            next_tick = now + tick;
        }
        let mut deadline = end.min(next_tick);
        let mut precise = false;
        if !ctx.restart.is_empty() {
            deadline = now;
        }
        if let Some(s) = &ctx.sched
            && !ctx.idle.is_empty()
            && s.next_time() < deadline
        {
            deadline = s.next_time();
            precise = true;
        }
        let wait = deadline.saturating_sub(now);
        // epoll waits in whole milliseconds (mio rounds up). For an intended
        // send time closer than that, spin on a zero timeout instead of
        // sending late.
        let timeout = if wait >= 1_000_000 {
            Duration::from_millis(wait / 1_000_000)
        } else if precise {
            // Busy-poll, but let anything else runnable on this CPU (the
            // target, say) have it first.
            std::thread::yield_now();
            Duration::ZERO
        } else {
            Duration::from_nanos(wait)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        for ev in events.iter() {
            let i = ev.token().0;
            ctx.on_event(&mut conns[i], i, ev);
        }
    }
    progress.publish(&ctx.stats, ctx.all_requests, ctx.all_bytes);
    Ok(ctx.stats)
}
