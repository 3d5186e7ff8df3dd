//! The Redis backend's writer thread (`store-redis`): drains the workers' write queues, sends the records
//! in pipelines through the last-writer-wins script, wakes sync writes once the server acknowledged them,
//! and gives a new server (restarted, failed over) everything this node holds.

use super::{Conn, MAX_BACKOFF, MIN_BACKOFF, RedisSetup, Status, layout};
use crate::store::{OnAck, Record, Store, WriteFeed};
use mio::{Events, Poll};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Records per pipeline.
const BATCH: usize = 512;
/// Pipelines per turn of the writer, between two looks at the workers' queues.
const FLUSH_BATCHES: usize = 16;
/// Records waiting for the server beyond which the oldest asynchronous ones are dropped from the outbox
/// (they stay in the local store, and are written back with everything else once the server returns).
const MAX_OUTBOX: usize = 1 << 20;
/// An idle writer connection is checked this often.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A record on its way to the server, and for a `sync` write who to tell when it is there.
pub(super) struct Pending {
    pub(super) record: Record,
    pub(super) on_ack: Option<OnAck>,
}

/// The writer thread: local writes to the server.
pub(super) struct Writer {
    pub(super) setup: Arc<RedisSetup>,
    pub(super) feed: WriteFeed,
    pub(super) store: Arc<Store>,
    pub(super) poll: Poll,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) conn: Option<Conn>,
    /// The `PUT` script's SHA-1 on the connected server.
    pub(super) sha: String,
    /// The server's `run_id` when last connected.
    pub(super) run_id: Option<String>,
    pub(super) next_try: Instant,
    pub(super) backoff: Duration,
    pub(super) outbox: VecDeque<Pending>,
    /// The loss of the server was logged (once per outage).
    pub(super) down_logged: bool,
    /// Asynchronous records dropped from a full outbox since the server was last reachable.
    pub(super) dropped: u64,
    /// When the connection was last used: an idle one is checked with `PING` every [`HEARTBEAT`], so a
    /// restarted server is noticed (and given back its records) without waiting for a write.
    pub(super) used_at: Instant,
    /// When a connection was last tried.
    pub(super) tried_at: Instant,
    pub(super) status: Arc<Status>,
}

impl Writer {
    pub(super) fn run(&mut self) {
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
