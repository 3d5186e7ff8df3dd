//! The Redis backend's feed thread (`store-feed`): loads every record at start (or after falling behind
//! the stream), then tails the change stream with `XREAD BLOCK` and applies other nodes' records as the
//! mesh applies a peer's; marks the store stale while it is cut off past `max_staleness`.

use super::{Conn, Loaded, MAX_BACKOFF, MIN_BACKOFF, RedisSetup, RedisStoreError, Status};
use crate::limits::counters::Counters;
use crate::snapshot::SharedSnapshot;
use crate::sticky::Stickiness;
use crate::store::{Kind, Record, Store};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long one `XREAD` blocks: the feed notices a stop, and counts itself fresh, at least this often.
const BLOCK: Duration = Duration::from_millis(200);
/// Stream entries per `XREAD`, and keys per `SCAN` step of a load.
const READ_COUNT: usize = 1000;

/// The feed thread: other nodes' writes from the server.
pub(super) struct Tail {
    pub(super) setup: Arc<RedisSetup>,
    pub(super) store: Arc<Store>,
    pub(super) hlc: Arc<crate::store::Hlc>,
    pub(super) sticky: Arc<Stickiness>,
    pub(super) shared: SharedSnapshot,
    pub(super) slot: usize,
    pub(super) counters: Arc<OnceLock<Arc<Counters>>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) loaded: Arc<Loaded>,
    /// Node ids seen writing (this one's included): the counters' peers are the others.
    pub(super) known: BTreeSet<u16>,
    pub(super) me: u16,
    /// The last stream entry applied (`None`: load everything first).
    pub(super) last_id: Option<String>,
    /// When the feed was last known current (a read returned, empty or not).
    pub(super) fresh_at: Instant,
    /// The counters were given their peers (they are set after the threads start).
    pub(super) peers_given: bool,
    pub(super) status: Arc<Status>,
}

impl Tail {
    pub(super) fn run(&mut self) {
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
