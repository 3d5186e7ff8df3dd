//! One replication link: a TLS connection to a peer node and the frames it carries, as an explicit state
//! machine driven by the replication thread's event loop (never a worker's).
//!
//! ```text
//!   connect / accept ──▶ Handshaking ── TLS done, HELLO sent ──▶ Greeting ── peer's HELLO checked, our
//!                            │                                      │        WELCOME sent, its WELCOME ok
//!                            │ TLS error                            │ refused (status, logged)
//!                            ▼                                      ▼                      ▼
//!                          Closed ◀──────────────────────────────── Closed                 Up ── silent 3
//!                                                                                          │   heartbeats,
//!                                                                                          │   bad frame,
//!                                                                                          ▼   EOF
//!                                                                                        Closed
//! ```
//!
//! Nothing received on a link is acted on before both hellos were checked: the peer's certificate (its
//! first DNS name, verified against the cluster CA), the node name in its `HELLO` and the configured peer
//! list must all agree, and the cluster name must match.

use super::frame::{self, Frame, Start, WelcomeStatus};
use crate::base::buffer::Buffer;
use crate::base::socket::{ReadOutcome, Readiness, WriteOutcome};
use crate::tls::TlsStream;
use mio::net::TcpStream;
use std::time::Instant;

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPhase {
    /// TCP connecting and the TLS handshake running; our `HELLO` is queued behind it.
    Handshaking,
    /// TLS is up; waiting for the peer's `HELLO` and `WELCOME`.
    Greeting,
    /// Both sides accepted each other: streams and heartbeats flow.
    Up,
    /// Done: the thread drops the link (and, if it dials this peer, dials again later).
    Closed,
}

/// What this node says about itself in a `HELLO`, and what it accepts from peers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster: String,
    pub node: String,
    pub epoch: u64,
    /// Configured peer names.
    pub peers: Vec<String>,
}

/// Something the thread should know about after driving a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The peer's `HELLO` passed every check: it is `peer` (index into `Identity::peers`), at `epoch`,
    /// holding `resume` of this node's stream. The thread answers with its own `HELLO` (on a link it
    /// accepted) and a `WELCOME` saying where the stream starts ([`Link::welcome`]).
    Greeted {
        peer: usize,
        epoch: u64,
        resume: Option<(u64, u64)>,
    },
    /// The peer welcomed this node: its stream starts as `start` says.
    Welcomed { start: Start },
    /// The link is up with `peer`, whose epoch is `epoch`.
    Up { peer: usize, epoch: u64 },
    /// The peer was refused (or refused us): logged with the reason; nothing of it was applied.
    Refused { reason: String },
    /// The link closed (EOF, error, bad frame, dead peer) with this reason.
    Closed { reason: String },
    /// A frame arrived on an up link (streams, acks, snapshots: the thread handles them).
    Frame(Frame),
}

/// One link.
pub struct Link {
    sock: TcpStream,
    tls: TlsStream,
    pub io: Readiness,
    pub phase: LinkPhase,
    /// The peer this link is with (index into `Identity::peers`): known from the start when we dialled,
    /// after the checks when we accepted.
    pub peer: Option<usize>,
    /// We dialled (the peer's certificate was checked against its name by TLS itself).
    pub outgoing: bool,
    /// The link reached `Up` at some point.
    pub was_up: bool,
    input: Buffer,
    output: Vec<u8>,
    output_sent: usize,
    /// Our `WELCOME` (accepting the peer) was queued.
    welcome_sent: bool,
    got_hello: bool,
    got_welcome: bool,
    /// The peer's epoch (from its `HELLO`).
    remote_epoch: u64,
    /// Last time a frame arrived, and last time one was queued.
    pub last_heard: Instant,
    pub last_sent: Instant,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A snapshot being sent, as its builder hands over encoded frames (see `snapshot_send`): while it
    /// is `Some`, no `UPDATES` go on this link (they follow the snapshot's end).
    pub snapshot: Option<crossbeam_channel::Receiver<Vec<u8>>>,
}

/// Largest buffered input: a whole frame of the largest size fits.
const MAX_INPUT: usize = 16 * 1024 * 1024 + 5;

impl Link {
    pub fn new(
        sock: TcpStream,
        tls: TlsStream,
        peer: Option<usize>,
        outgoing: bool,
        now: Instant,
    ) -> Link {
        Link {
            sock,
            tls,
            io: Readiness::default(),
            phase: LinkPhase::Handshaking,
            peer,
            outgoing,
            was_up: false,
            input: Buffer::new(64 * 1024),
            output: Vec::new(),
            output_sent: 0,
            welcome_sent: false,
            got_hello: false,
            got_welcome: false,
            remote_epoch: 0,
            last_heard: now,
            last_sent: now,
            bytes_in: 0,
            bytes_out: 0,
            snapshot: None,
        }
    }

    /// The peer's epoch, from its `HELLO`.
    pub fn remote_epoch(&self) -> u64 {
        self.remote_epoch
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Queues a frame for the peer.
    pub fn send(&mut self, frame: &Frame, now: Instant) {
        frame::encode(frame, &mut self.output);
        self.last_sent = now;
    }

    /// Queues a frame encoded by `write` straight into the link's buffer (spool data, from a borrowed
    /// slice).
    pub fn send_with(&mut self, now: Instant, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.output);
        self.last_sent = now;
    }

    /// Queues frames already encoded (a snapshot's chunk).
    pub fn send_encoded(&mut self, bytes: &[u8], now: Instant) {
        self.output.extend_from_slice(bytes);
        self.last_sent = now;
    }

    /// Bytes queued and not yet handed to TLS.
    pub fn queued(&self) -> usize {
        self.output.len() - self.output_sent
    }

    /// Advances the link as far as readiness allows; returns what happened, in order.
    pub fn drive(&mut self, me: &Identity, now: Instant, events: &mut Vec<LinkEvent>) {
        if self.phase == LinkPhase::Closed {
            return;
        }
        loop {
            let mut progress = self.flush(events);
            if self.phase == LinkPhase::Closed {
                return;
            }
            match self
                .tls
                .read_into(&mut self.sock, &mut self.io, &mut self.input)
            {
                ReadOutcome::Data(n) => {
                    self.bytes_in += n as u64;
                    progress = true;
                }
                ReadOutcome::Blocked => {}
                ReadOutcome::Eof => return self.close("the peer closed the link", events),
                // TLS itself refused (rustls reports protocol and certificate errors as invalid data);
                // a reset or refused connection is a peer that is down, not a refusal.
                ReadOutcome::Error(e)
                    if self.phase == LinkPhase::Handshaking
                        && e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    // Authentication failed (a certificate from another CA, for another name) or
                    // the peer does not speak the protocol: refused, nothing of it was read.
                    self.phase = LinkPhase::Closed;
                    events.push(LinkEvent::Refused {
                        reason: format!("TLS handshake failed: {e}"),
                    });
                    return;
                }
                ReadOutcome::Error(e) => {
                    let reason = format!("TLS: {e}");
                    return self.close(&reason, events);
                }
            }
            if self.phase == LinkPhase::Handshaking && self.tls.is_established() {
                self.phase = LinkPhase::Greeting;
                progress = true;
            }
            while self.phase != LinkPhase::Closed {
                match frame::decode(self.input.data()) {
                    Ok(None) => break,
                    Ok(Some((f, used))) => {
                        self.input.consume(used);
                        self.last_heard = now;
                        self.on_frame(f, me, now, events);
                        progress = true;
                    }
                    Err(e) => {
                        let reason = format!("bad frame: {e}");
                        return self.close(&reason, events);
                    }
                }
            }
            if self.phase == LinkPhase::Closed {
                return;
            }
            if self.input.free() == 0 {
                if self.input.capacity() >= MAX_INPUT {
                    return self.close("frame larger than the input buffer", events);
                }
                self.input.grow((self.input.capacity() * 2).min(MAX_INPUT));
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    /// Writes queued bytes; `true` if any went out.
    fn flush(&mut self, events: &mut Vec<LinkEvent>) -> bool {
        if self.tls.has_pending_output() && self.io.writable {
            if let Err(e) = self.tls.flush(&mut self.sock, &mut self.io) {
                let reason = format!("write failed: {e}");
                self.close(&reason, events);
                return false;
            }
        }
        let mut progress = false;
        while self.output_sent < self.output.len() && self.io.writable {
            let rest = &self.output[self.output_sent..];
            match self
                .tls
                .write_two(&mut self.sock, &mut self.io, rest, &[], false)
            {
                WriteOutcome::Wrote(n) => {
                    self.output_sent += n;
                    self.bytes_out += n as u64;
                    progress = true;
                }
                WriteOutcome::Blocked => break,
                WriteOutcome::Error(e) => {
                    let reason = format!("write failed: {e}");
                    self.close(&reason, events);
                    return false;
                }
            }
        }
        if self.output_sent == self.output.len() {
            self.output.clear();
            self.output_sent = 0;
        }
        progress
    }

    fn on_frame(&mut self, f: Frame, me: &Identity, now: Instant, events: &mut Vec<LinkEvent>) {
        match (self.phase, f) {
            (
                LinkPhase::Greeting,
                Frame::Hello {
                    cluster,
                    node,
                    epoch,
                    resume,
                    ..
                },
            ) if !self.got_hello => {
                self.got_hello = true;
                let refusal = self.check_hello(me, &cluster, &node);
                match refusal {
                    Some((status, reason)) => {
                        self.send(
                            &Frame::Welcome {
                                status,
                                reason: reason.clone(),
                                start: None,
                            },
                            now,
                        );
                        // The refusal goes out before the link closes.
                        let _ = self.flush(events);
                        self.tls.close_notify(&mut self.sock, &mut self.io);
                        events.push(LinkEvent::Refused {
                            reason: format!("refused {node:?}: {reason}"),
                        });
                        self.phase = LinkPhase::Closed;
                    }
                    None => {
                        self.peer = me.peers.iter().position(|p| *p == node);
                        self.remote_epoch = epoch;
                        if let Some(peer) = self.peer {
                            events.push(LinkEvent::Greeted {
                                peer,
                                epoch,
                                resume,
                            });
                        }
                    }
                }
            }
            (
                LinkPhase::Greeting,
                Frame::Welcome {
                    status,
                    reason,
                    start,
                },
            ) if !self.got_welcome => {
                self.got_welcome = true;
                match (status, start) {
                    (WelcomeStatus::Ok, Some(start)) if self.got_hello => {
                        events.push(LinkEvent::Welcomed { start });
                        self.maybe_up(events);
                    }
                    (WelcomeStatus::Ok, _) => {
                        self.close("welcomed before the peer's hello", events);
                    }
                    _ => {
                        let reason = format!("the peer refused this node ({status:?}): {reason}");
                        events.push(LinkEvent::Refused { reason });
                        self.phase = LinkPhase::Closed;
                    }
                }
            }
            // Stream frames (a snapshot first) may follow the peer's WELCOME before this side's own
            // WELCOME went out: the thread handles them in order, after the greeting.
            (LinkPhase::Greeting, other)
                if self.got_hello
                    && self.got_welcome
                    && !matches!(other, Frame::Hello { .. } | Frame::Welcome { .. }) =>
            {
                events.push(LinkEvent::Frame(other));
            }
            (LinkPhase::Up, Frame::Hello { .. } | Frame::Welcome { .. })
            | (LinkPhase::Greeting, _) => {
                self.close("frame out of order during the greeting", events);
            }
            (LinkPhase::Up, Frame::Heartbeat { .. }) => {}
            (LinkPhase::Up, other) => events.push(LinkEvent::Frame(other)),
            (LinkPhase::Handshaking | LinkPhase::Closed, _) => {}
        }
    }

    /// Why a peer's hello is refused (status and reason), or `None` when it is accepted.
    fn check_hello(
        &self,
        me: &Identity,
        cluster: &str,
        node: &str,
    ) -> Option<(WelcomeStatus, String)> {
        if cluster != me.cluster {
            return Some((
                WelcomeStatus::OtherCluster,
                format!("cluster {cluster:?}, this node is in {:?}", me.cluster),
            ));
        }
        if !me.peers.iter().any(|p| p == node) {
            return Some((
                WelcomeStatus::UnknownNode,
                format!("node {node:?} is not among this node's [cluster] peers"),
            ));
        }
        let certified = self
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::certs::dns_names(c).ok())
            .and_then(|n| n.into_iter().next());
        if certified.as_deref() != Some(node) {
            return Some((
                WelcomeStatus::NameTaken,
                format!(
                    "announces {node:?} but its certificate is for {:?}",
                    certified.unwrap_or_default()
                ),
            ));
        }
        if self.outgoing && self.peer.map(|i| me.peers[i].as_str()) != Some(node) {
            return Some((
                WelcomeStatus::UnknownNode,
                format!(
                    "dialled {:?} but {node:?} answered",
                    self.peer.map(|i| &me.peers[i])
                ),
            ));
        }
        None
    }

    /// Queues this node's `WELCOME` accepting the peer, with where its stream starts.
    pub fn welcome(&mut self, start: Start, now: Instant, events: &mut Vec<LinkEvent>) {
        self.send(
            &Frame::Welcome {
                status: WelcomeStatus::Ok,
                reason: String::new(),
                start: Some(start),
            },
            now,
        );
        self.welcome_sent = true;
        self.maybe_up(events);
    }

    fn maybe_up(&mut self, events: &mut Vec<LinkEvent>) {
        if self.got_hello
            && self.got_welcome
            && self.welcome_sent
            && self.phase == LinkPhase::Greeting
        {
            if let Some(peer) = self.peer {
                self.phase = LinkPhase::Up;
                self.was_up = true;
                events.push(LinkEvent::Up {
                    peer,
                    epoch: self.remote_epoch,
                });
            }
        }
    }

    /// Closes the link with a reason (reported once).
    pub fn close(&mut self, reason: &str, events: &mut Vec<LinkEvent>) {
        if self.phase == LinkPhase::Closed {
            return;
        }
        self.phase = LinkPhase::Closed;
        self.tls.close_notify(&mut self.sock, &mut self.io);
        events.push(LinkEvent::Closed {
            reason: reason.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::link_tls::LinkTls;
    use crate::tls::TlsStats;
    use std::sync::Arc;

    fn identity(cluster: &str, node: &str, peers: &[&str]) -> Identity {
        Identity {
            cluster: cluster.into(),
            node: node.into(),
            epoch: 7,
            peers: peers.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn hello(me: &Identity) -> Frame {
        Frame::Hello {
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            epoch: me.epoch,
            hlc: 1,
            resume: None,
        }
    }

    /// A dialled link (as `dialler`, certificate `cert_of`) and an accepted one over real loopback
    /// sockets, driven until neither moves; returns the events of each side.
    fn greet(
        dir: &std::path::Path,
        dialler: Identity,
        cert_of: &str,
        acceptor: Identity,
    ) -> (Vec<LinkEvent>, Vec<LinkEvent>) {
        let tls = |name: &str| {
            LinkTls::load(
                &dir.join("ca.crt"),
                &dir.join(format!("{name}.crt")),
                &dir.join(format!("{name}.key")),
            )
            .unwrap()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_nonblocking(true).unwrap();
        }
        let stats = Arc::new(TlsStats::default());
        let now = Instant::now();
        let peer_index = dialler.peers.iter().position(|p| *p == acceptor.node);
        let mut out = Link::new(
            TcpStream::from_std(client),
            TlsStream::new(
                rustls::Connection::Client(tls(cert_of).connect(&acceptor.node).unwrap()),
                stats.clone(),
            ),
            peer_index,
            true,
            now,
        );
        let mut inc = Link::new(
            TcpStream::from_std(server),
            TlsStream::new(
                rustls::Connection::Server(tls(&acceptor.node).accept().unwrap()),
                stats,
            ),
            None,
            false,
            now,
        );
        out.send(&hello(&dialler), now);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            for (link, me, events) in [(&mut out, &dialler, &mut a), (&mut inc, &acceptor, &mut b)]
            {
                link.io = Readiness {
                    readable: true,
                    writable: true,
                    ..Readiness::default()
                };
                let before = events.len();
                link.drive(me, now, events);
                // Play the thread's part: answer a greeting.
                if events[before..]
                    .iter()
                    .any(|e| matches!(e, LinkEvent::Greeted { .. }))
                {
                    if !link.outgoing {
                        link.send(&hello(me), now);
                    }
                    link.welcome(Start::Resume { from: 1 }, now, events);
                    link.drive(me, now, events);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            let both = |p: LinkPhase| out.phase == p && inc.phase == p;
            if both(LinkPhase::Closed) || both(LinkPhase::Up) {
                break;
            }
        }
        (a, b)
    }

    fn certs(names: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = names.split(',').map(String::from).collect();
        crate::tls::generate::write_cluster_certs(dir.path(), &names).unwrap();
        dir
    }

    #[test]
    fn two_nodes_greet_each_other_and_come_up() {
        let dir = certs("a,b");
        let (a, b) = greet(
            dir.path(),
            identity("demo", "a", &["b"]),
            "a",
            identity("demo", "b", &["a"]),
        );
        assert!(a.contains(&LinkEvent::Up { peer: 0, epoch: 7 }), "{a:?}");
        assert!(b.contains(&LinkEvent::Up { peer: 0, epoch: 7 }), "{b:?}");
    }

    #[test]
    fn a_peer_of_another_cluster_is_refused_with_the_reason() {
        let dir = certs("a,b");
        let (a, b) = greet(
            dir.path(),
            identity("other", "a", &["b"]),
            "a",
            identity("demo", "b", &["a"]),
        );
        let refused = |events: &[LinkEvent], needle: &str| {
            events
                .iter()
                .any(|e| matches!(e, LinkEvent::Refused { reason } if reason.contains(needle)))
        };
        assert!(refused(&b, "cluster \"other\""), "{b:?} / {a:?}");
        assert!(refused(&a, "OtherCluster"), "{a:?}");
        assert!(
            !a.iter()
                .chain(&b)
                .any(|e| matches!(e, LinkEvent::Up { .. }))
        );
    }

    #[test]
    fn a_peer_announcing_a_name_its_certificate_does_not_carry_is_refused() {
        let dir = certs("a,b,c");
        // c's certificate, announcing itself as a (which b does know).
        let (_, b) = greet(
            dir.path(),
            identity("demo", "a", &["b"]),
            "c",
            identity("demo", "b", &["a", "c"]),
        );
        assert!(
            b.iter().any(|e| matches!(e, LinkEvent::Refused { reason }
                if reason.contains("certificate is for \"c\""))),
            "{b:?}"
        );
        assert!(!b.iter().any(|e| matches!(e, LinkEvent::Up { .. })));
    }
}
