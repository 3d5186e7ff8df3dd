//! The spool's side channel of the replication links (docs/PROTOCOL.md, "Upload bytes"): upload bytes
//! and their acknowledgements, fetches and claims, carried by the same TLS links as the store's stream
//! but queued apart from it, with a per-link window of unacknowledged bytes.
//!
//! [`SpoolSide`] is the meeting point: the spool (its threads, and workers asking for claims) sends
//! [`Command`]s through it and installs an [`Inbox`] for what peers send; the replication thread drains
//! the commands, keeps per peer a queue and a window ([`SideLinks`]), and hands spool data to a link
//! only when the link's buffer holds less than one spool frame — store frames always go first, so a
//! large upload delays a login's record by at most one frame plus the window. Nothing here touches the
//! disk: the thread only moves bytes between the spool and the links.

use super::frame::{Frame, MAX_SPOOL_BYTES, SpoolId, encode_spool_data, encode_spool_part};
use super::link::Link;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What `SideLinks::pump` needs of a link: how much waits in its buffer, and a way to add a frame.
pub trait Outbox {
    fn queued(&self) -> usize;
    fn send_with(&mut self, now: Instant, write: &mut dyn FnMut(&mut Vec<u8>));
}

impl Outbox for Link {
    fn queued(&self) -> usize {
        Link::queued(self)
    }

    fn send_with(&mut self, now: Instant, write: &mut dyn FnMut(&mut Vec<u8>)) {
        Link::send_with(self, now, write)
    }
}

/// A run of bytes shared with the append that holds them (no copy per piece).
#[derive(Clone)]
pub struct Bytes {
    pub data: Arc<[u8]>,
    pub start: usize,
    pub len: usize,
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }
}

/// One `SPOOL_DATA` frame's worth of an append.
#[derive(Clone)]
pub struct Piece {
    pub offset: u64,
    pub prev: u64,
    pub bytes: Bytes,
}

/// What became of an append pushed to the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// One peer wrote every piece.
    Replicated,
    /// No peer was up to send it to.
    NoPeer,
    /// Every peer it went to failed to write it, or its link closed first.
    Failed,
}

/// The answers to a claim: granted by every up peer (a peer whose link closed meanwhile does not
/// count), and the largest offset any of them knows for the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimAnswer {
    pub granted: bool,
    pub offset: u64,
}

type Done<T> = Box<dyn FnOnce(T) + Send>;

/// What the spool asks of the replication thread.
pub enum Command {
    /// Send an append's pieces to every up peer; `done` once one peer acknowledged all of them, or
    /// none can.
    Push {
        id: SpoolId,
        tag: u64,
        pieces: Vec<Piece>,
        done: Done<Pushed>,
    },
    /// Send one `SPOOL_PART` (an answer to a fetch) to `peer`; `done(true)` when it was written there.
    Part {
        peer: usize,
        id: SpoolId,
        offset: u64,
        bytes: Bytes,
        done: Done<bool>,
    },
    /// A small frame for `peer` (acks, fetches, missing), sent at once, outside the window.
    Control { peer: usize, frame: Frame },
    /// Ask every up peer whether `id` may be appended to.
    Claim {
        id: SpoolId,
        done: Done<ClaimAnswer>,
    },
}

/// What the spool does with spool frames from peers. Called on the replication thread: it must not
/// block (it hands work to the spool's threads).
pub trait Inbox: Send + Sync {
    fn data(&self, peer: usize, id: SpoolId, tag: u64, prev: u64, offset: u64, bytes: Vec<u8>);
    fn part(&self, peer: usize, id: SpoolId, offset: u64, bytes: Vec<u8>);
    fn missing(&self, peer: usize, id: SpoolId, from: u64);
    fn fetch(&self, peer: usize, id: SpoolId, from: u64, upto: u64);
    /// Whether an append to `id` may start elsewhere (none under way here), and the offset held here.
    fn claim(&self, id: SpoolId) -> (bool, u64);
}

/// The side channel's shared half.
pub struct SpoolSide {
    tx: crossbeam_channel::Sender<Command>,
    rx: crossbeam_channel::Receiver<Command>,
    waker: OnceLock<Arc<mio::Waker>>,
    inbox: OnceLock<Arc<dyn Inbox>>,
    /// Peers (by index) whose link is up, as the thread last saw them.
    up: Mutex<Vec<usize>>,
    /// Spool bytes a link may have sent and not had acknowledged.
    pub window: usize,
}

impl std::fmt::Debug for SpoolSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolSide")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl SpoolSide {
    pub fn new(window: usize) -> Arc<SpoolSide> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(SpoolSide {
            tx,
            rx,
            waker: OnceLock::new(),
            inbox: OnceLock::new(),
            up: Mutex::new(Vec::new()),
            // At least one frame's worth, or nothing would ever be sent.
            window: window.max(MAX_SPOOL_BYTES),
        })
    }

    /// Hands `command` to the replication thread and wakes it.
    pub fn send(&self, command: Command) {
        if self.tx.send(command).is_ok() {
            if let Some(w) = self.waker.get() {
                let _ = w.wake();
            }
        }
    }

    /// The peers whose link is up.
    pub fn up_peers(&self) -> Vec<usize> {
        self.up.lock().clone()
    }

    /// Installs what handles peers' spool frames (once).
    pub fn set_inbox(&self, inbox: Arc<dyn Inbox>) {
        let _ = self.inbox.set(inbox);
    }

    pub(crate) fn set_waker(&self, waker: Arc<mio::Waker>) {
        let _ = self.waker.set(waker);
    }

    pub(crate) fn inbox(&self) -> Option<&Arc<dyn Inbox>> {
        self.inbox.get()
    }
}

/// An append pushed to several peers: done when one acknowledged every piece, or all failed.
struct Group {
    pieces: usize,
    acked: HashMap<usize, usize>,
    failed: Vec<usize>,
    targets: usize,
    done: Option<Done<Pushed>>,
}

impl Group {
    fn piece(&mut self, peer: usize, written: bool) {
        if written && !self.failed.contains(&peer) {
            let n = self.acked.entry(peer).or_insert(0);
            *n += 1;
            if *n == self.pieces {
                self.finish(Pushed::Replicated);
            }
        } else {
            self.fail(peer);
        }
    }

    fn fail(&mut self, peer: usize) {
        if !self.failed.contains(&peer) {
            self.failed.push(peer);
            if self.failed.len() == self.targets {
                self.finish(Pushed::Failed);
            }
        }
    }

    fn finish(&mut self, how: Pushed) {
        if let Some(done) = self.done.take() {
            done(how);
        }
    }
}

/// Who is told when a frame's bytes are acknowledged.
enum Owner {
    Group(Arc<Mutex<Group>>),
    Part(Done<bool>),
}

impl Owner {
    fn tell(self, peer: usize, written: bool) {
        match self {
            Owner::Group(g) => g.lock().piece(peer, written),
            Owner::Part(done) => done(written),
        }
    }
}

/// A spool frame waiting for the window.
struct Out {
    id: SpoolId,
    /// `Some((tag, prev))` for `SPOOL_DATA`, `None` for `SPOOL_PART`.
    append: Option<(u64, u64)>,
    offset: u64,
    bytes: Bytes,
    owner: Owner,
}

/// Sent, waiting for its `SPOOL_ACK`.
struct InFlight {
    id: SpoolId,
    offset: u64,
    len: u32,
    owner: Owner,
}

#[derive(Default)]
struct PeerSide {
    queue: VecDeque<Out>,
    inflight: VecDeque<InFlight>,
    inflight_bytes: usize,
}

/// A claim waiting for its answers.
struct ClaimWait {
    waiting: Vec<usize>,
    answer: ClaimAnswer,
    done: Option<Done<ClaimAnswer>>,
}

/// The replication thread's half: per peer, spool frames queued and in flight; claims being asked.
pub struct SideLinks {
    pub side: Arc<SpoolSide>,
    peers: Vec<PeerSide>,
    claims: HashMap<u64, (SpoolId, ClaimWait)>,
    next_nonce: u64,
    up: Vec<usize>,
    /// The up peers a claim asks: those that count for sync writes. A peer just linked and still
    /// taking its snapshots serves no client (so appends nothing), and its replication thread, busy
    /// applying them, answered claims late enough that appends elsewhere timed out (503s after a
    /// restart in the failover benchmark).
    claimers: Vec<usize>,
}

impl SideLinks {
    pub fn new(side: Arc<SpoolSide>, peers: usize) -> SideLinks {
        SideLinks {
            side,
            peers: (0..peers).map(|_| PeerSide::default()).collect(),
            claims: HashMap::new(),
            next_nonce: 1,
            up: Vec::new(),
            claimers: Vec::new(),
        }
    }

    /// The peer list changed size (a reload): peers past the end fail what they held.
    pub fn resize(&mut self, peers: usize) {
        for p in peers..self.peers.len() {
            self.peer_down(p);
        }
        self.peers.resize_with(peers, PeerSide::default);
    }

    /// Publishes which peers are up (when it changed), and which of them claims ask.
    pub fn set_up(&mut self, up: Vec<usize>, claimers: Vec<usize>) {
        if up != self.up {
            *self.side.up.lock() = up.clone();
            self.up = up;
        }
        self.claimers = claimers;
    }

    /// Takes the spool's commands: control frames go to `control` (peer, frame) to be sent at once.
    pub fn take_commands(&mut self, control: &mut Vec<(usize, Frame)>) {
        while let Ok(command) = self.side.rx.try_recv() {
            match command {
                Command::Push {
                    id,
                    tag,
                    pieces,
                    done,
                } => {
                    if self.up.is_empty() || pieces.is_empty() {
                        done(if pieces.is_empty() {
                            Pushed::Replicated
                        } else {
                            Pushed::NoPeer
                        });
                        continue;
                    }
                    let group = Arc::new(Mutex::new(Group {
                        pieces: pieces.len(),
                        acked: HashMap::new(),
                        failed: Vec::new(),
                        targets: self.up.len(),
                        done: Some(done),
                    }));
                    for &peer in &self.up {
                        for p in &pieces {
                            self.peers[peer].queue.push_back(Out {
                                id,
                                append: Some((tag, p.prev)),
                                offset: p.offset,
                                bytes: p.bytes.clone(),
                                owner: Owner::Group(group.clone()),
                            });
                        }
                    }
                }
                Command::Part {
                    peer,
                    id,
                    offset,
                    bytes,
                    done,
                } => {
                    if !self.up.contains(&peer) {
                        done(false);
                        continue;
                    }
                    self.peers[peer].queue.push_back(Out {
                        id,
                        append: None,
                        offset,
                        bytes,
                        owner: Owner::Part(done),
                    });
                }
                Command::Control { peer, frame } => {
                    if self.up.contains(&peer) {
                        control.push((peer, frame));
                    }
                }
                Command::Claim { id, done } => {
                    if self.claimers.is_empty() {
                        done(ClaimAnswer {
                            granted: true,
                            offset: 0,
                        });
                        continue;
                    }
                    let nonce = self.next_nonce;
                    self.next_nonce += 1;
                    for &peer in &self.claimers {
                        control.push((peer, Frame::SpoolClaim { id, nonce }));
                    }
                    self.claims.insert(
                        nonce,
                        (
                            id,
                            ClaimWait {
                                waiting: self.claimers.clone(),
                                answer: ClaimAnswer {
                                    granted: true,
                                    offset: 0,
                                },
                                done: Some(done),
                            },
                        ),
                    );
                }
            }
        }
    }

    /// Moves queued spool frames for `peer` onto its link while its window has room and less than one
    /// spool frame waits in the link's buffer (store frames, queued before this, go first).
    pub fn pump(&mut self, peer: usize, link: &mut impl Outbox, now: Instant) {
        let window = self.side.window;
        let Some(ps) = self.peers.get_mut(peer) else {
            return;
        };
        while link.queued() < MAX_SPOOL_BYTES {
            let Some(front) = ps.queue.front() else {
                break;
            };
            if ps.inflight_bytes > 0 && ps.inflight_bytes + front.bytes.len > window {
                break;
            }
            let Some(out) = ps.queue.pop_front() else {
                break;
            };
            link.send_with(now, &mut |buf| match out.append {
                Some((tag, prev)) => {
                    encode_spool_data(&out.id, tag, prev, out.offset, out.bytes.as_slice(), buf)
                }
                None => encode_spool_part(&out.id, out.offset, out.bytes.as_slice(), buf),
            });
            ps.inflight_bytes += out.bytes.len;
            ps.inflight.push_back(InFlight {
                id: out.id,
                offset: out.offset,
                len: out.bytes.len as u32,
                owner: out.owner,
            });
        }
    }

    /// Whether `peer` has spool frames waiting for the window or the link.
    pub fn pending(&self, peer: usize) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.queue.is_empty())
    }

    /// A `SPOOL_ACK` from `peer`: the frame leaves the window and its owner is told.
    pub fn on_ack(&mut self, peer: usize, id: SpoolId, offset: u64, len: u32, written: bool) {
        let Some(ps) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(i) = ps
            .inflight
            .iter()
            .position(|f| f.id == id && f.offset == offset && f.len == len)
        else {
            log::debug!("replication: a spool acknowledgement for nothing in flight, ignored");
            return;
        };
        if let Some(f) = ps.inflight.remove(i) {
            ps.inflight_bytes -= f.len as usize;
            f.owner.tell(peer, written);
        }
    }

    /// A `SPOOL_CLAIMED` from `peer`.
    pub fn on_claimed(&mut self, peer: usize, nonce: u64, granted: bool, offset: u64) {
        let Some((_, wait)) = self.claims.get_mut(&nonce) else {
            return;
        };
        wait.waiting.retain(|&p| p != peer);
        wait.answer.granted &= granted;
        wait.answer.offset = wait.answer.offset.max(offset);
        self.finish_claim(nonce);
    }

    fn finish_claim(&mut self, nonce: u64) {
        let ready = self
            .claims
            .get(&nonce)
            .is_some_and(|(_, w)| w.waiting.is_empty());
        if ready {
            if let Some((_, mut wait)) = self.claims.remove(&nonce) {
                if let Some(done) = wait.done.take() {
                    done(wait.answer);
                }
            }
        }
    }

    /// `peer`'s link is gone: what was queued or in flight to it failed; claims stop waiting for it
    /// (a peer that cannot be reached is not asked — docs/UPLOADS.md says what that means).
    pub fn peer_down(&mut self, peer: usize) {
        if let Some(ps) = self.peers.get_mut(peer) {
            let queued: Vec<Out> = ps.queue.drain(..).collect();
            let inflight: Vec<InFlight> = ps.inflight.drain(..).collect();
            ps.inflight_bytes = 0;
            for o in queued {
                o.owner.tell(peer, false);
            }
            for f in inflight {
                f.owner.tell(peer, false);
            }
        }
        let nonces: Vec<u64> = self
            .claims
            .iter()
            .filter(|(_, (_, w))| w.waiting.contains(&peer))
            .map(|(n, _)| *n)
            .collect();
        for n in nonces {
            if let Some((_, w)) = self.claims.get_mut(&n) {
                w.waiting.retain(|&p| p != peer);
            }
            self.finish_claim(n);
        }
        self.up.retain(|&p| p != peer);
        *self.side.up.lock() = self.up.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A link's buffer that the test drains by hand: `queued` is what was sent and not yet taken.
    #[derive(Default)]
    struct Buffer {
        bytes: Vec<u8>,
    }

    impl Outbox for Buffer {
        fn queued(&self) -> usize {
            self.bytes.len()
        }
        fn send_with(&mut self, _now: Instant, write: &mut dyn FnMut(&mut Vec<u8>)) {
            write(&mut self.bytes)
        }
    }

    /// The frames in `buf` (taken out of it): (id, offset, len) of each spool frame.
    fn take_frames(buf: &mut Buffer) -> Vec<(SpoolId, u64, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(Some((f, n))) = super::super::frame::decode(&buf.bytes[at..]) {
            match f {
                Frame::SpoolData {
                    id, offset, bytes, ..
                }
                | Frame::SpoolPart { id, offset, bytes } => {
                    out.push((id, offset, bytes.len() as u32))
                }
                other => panic!("{other:?}"),
            }
            at += n;
        }
        buf.bytes.clear();
        out
    }

    fn pieces(n: usize) -> Vec<Piece> {
        let data: Arc<[u8]> = Arc::from(vec![7u8; n * MAX_SPOOL_BYTES]);
        (0..n)
            .map(|i| Piece {
                offset: (i * MAX_SPOOL_BYTES) as u64,
                prev: 0,
                bytes: Bytes {
                    data: data.clone(),
                    start: i * MAX_SPOOL_BYTES,
                    len: MAX_SPOOL_BYTES,
                },
            })
            .collect()
    }

    #[test]
    fn a_link_never_has_more_than_a_window_unacknowledged_and_one_peer_is_enough() {
        let side = SpoolSide::new(1 << 20);
        let mut links = SideLinks::new(side.clone(), 2);
        links.set_up(vec![0, 1], vec![0, 1]);
        let outcome = Arc::new(Mutex::new(None));
        let o = outcome.clone();
        side.send(Command::Push {
            id: [1; 16],
            tag: 9,
            pieces: pieces(10),
            done: Box::new(move |how| *o.lock() = Some(how)),
        });
        links.take_commands(&mut Vec::new());
        let now = Instant::now();
        let (mut to_a, mut to_b) = (Buffer::default(), Buffer::default());
        let mut sent_to_a = 0;
        loop {
            links.pump(0, &mut to_a, now);
            links.pump(1, &mut to_b, now);
            // b never answers; a answers everything it got.
            let frames = take_frames(&mut to_a);
            let _ = take_frames(&mut to_b);
            if frames.is_empty() {
                break;
            }
            // Never more than the window in flight (4 frames of 256 KiB).
            assert!(frames.len() <= 4, "{} frames at once", frames.len());
            for (id, offset, len) in frames {
                sent_to_a += 1;
                links.on_ack(0, id, offset, len, true);
            }
        }
        assert_eq!(sent_to_a, 10);
        assert_eq!(*outcome.lock(), Some(Pushed::Replicated));
        // b's window is full and stays full: nothing more goes to it until it answers.
        links.pump(1, &mut to_b, now);
        assert!(take_frames(&mut to_b).is_empty());
        assert!(links.pending(1));
    }

    #[test]
    fn a_push_fails_when_every_peer_fails_and_a_link_with_a_full_buffer_gets_nothing() {
        let side = SpoolSide::new(0);
        assert_eq!(side.window, MAX_SPOOL_BYTES, "at least one frame");
        let mut links = SideLinks::new(side.clone(), 2);
        let outcome = Arc::new(Mutex::new(Vec::new()));
        for up in [vec![], vec![0, 1]] {
            links.set_up(up.clone(), up);
            let o = outcome.clone();
            side.send(Command::Push {
                id: [2; 16],
                tag: 3,
                pieces: pieces(2),
                done: Box::new(move |how| o.lock().push(how)),
            });
            links.take_commands(&mut Vec::new());
        }
        assert_eq!(*outcome.lock(), vec![Pushed::NoPeer]);
        // Store frames waiting in the link's buffer: spool data waits behind them.
        let mut busy = Buffer {
            bytes: vec![0; MAX_SPOOL_BYTES],
        };
        links.pump(0, &mut busy, Instant::now());
        assert_eq!(busy.bytes.len(), MAX_SPOOL_BYTES);
        let mut to_b = Buffer::default();
        links.pump(1, &mut to_b, Instant::now());
        let frames = take_frames(&mut to_b);
        assert_eq!(frames.len(), 1);
        let (id, offset, len) = frames[0];
        links.on_ack(1, id, offset, len, false);
        assert_eq!(outcome.lock().len(), 1, "a still may write it");
        links.peer_down(0);
        assert_eq!(*outcome.lock(), vec![Pushed::NoPeer, Pushed::Failed]);
    }

    #[test]
    fn a_claim_is_granted_only_if_every_up_peer_grants_it() {
        let side = SpoolSide::new(1 << 20);
        let mut links = SideLinks::new(side.clone(), 3);
        links.set_up(vec![0, 1, 2], vec![0, 1, 2]);
        let answers = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let (a, c) = (answers.clone(), calls.clone());
            side.send(Command::Claim {
                id: [4; 16],
                done: Box::new(move |answer| {
                    c.fetch_add(1, Ordering::Relaxed);
                    a.lock().push(answer);
                }),
            });
        }
        let mut control = Vec::new();
        links.take_commands(&mut control);
        assert_eq!(control.len(), 6, "each claim asks every up peer");
        // (A peer up but not yet counted for sync writes is not asked: below.)
        let nonce = |i: usize| match control[i].1 {
            Frame::SpoolClaim { nonce, .. } => nonce,
            _ => unreachable!(),
        };
        let (first, second) = (nonce(0), nonce(3));
        links.on_claimed(0, first, true, 10);
        links.on_claimed(1, first, false, 0);
        assert_eq!(calls.load(Ordering::Relaxed), 0, "peer 2 has not answered");
        links.on_claimed(2, first, true, 12);
        links.on_claimed(0, second, true, 0);
        links.on_claimed(1, second, true, 0);
        // Peer 2 goes down before answering the second claim: it is not waited for.
        links.peer_down(2);
        assert_eq!(
            *answers.lock(),
            vec![
                ClaimAnswer {
                    granted: false,
                    offset: 12
                },
                ClaimAnswer {
                    granted: true,
                    offset: 0
                }
            ]
        );
    }

    #[test]
    fn a_claim_asks_only_the_peers_that_count_for_sync_writes() {
        let side = SpoolSide::new(1 << 20);
        let mut links = SideLinks::new(side.clone(), 2);
        // Peer 1 is linked but still taking its snapshots: not asked, not waited for.
        links.set_up(vec![0, 1], vec![0]);
        let answers = Arc::new(Mutex::new(Vec::new()));
        let a = answers.clone();
        side.send(Command::Claim {
            id: [5; 16],
            done: Box::new(move |answer| a.lock().push(answer)),
        });
        let mut control = Vec::new();
        links.take_commands(&mut control);
        assert_eq!(control.len(), 1);
        assert_eq!(control[0].0, 0);
        let Frame::SpoolClaim { nonce, .. } = control[0].1 else {
            unreachable!()
        };
        links.on_claimed(0, nonce, true, 7);
        assert_eq!(
            *answers.lock(),
            vec![ClaimAnswer {
                granted: true,
                offset: 7
            }]
        );
        // With no peer counted yet, a claim is granted at once (as with no peer up).
        links.set_up(vec![0, 1], vec![]);
        let a = answers.clone();
        side.send(Command::Claim {
            id: [6; 16],
            done: Box::new(move |answer| a.lock().push(answer)),
        });
        links.take_commands(&mut control);
        assert_eq!(answers.lock().len(), 2);
    }
}
