//! How workers write to the store without locks: a worker applies its record to the store at once (its own
//! next lookup sees it), then hands it to the replication thread over a bounded lock-free queue of its
//! own. A full queue never blocks the worker: the record stays applied locally, the loss is counted, and
//! the replication thread treats a growing count as a resync trigger (the lost records are in the store,
//! so sending peers a snapshot carries them).
//!
//! The replication thread drains the queues on its own schedule (no wakeup from the worker: it polls at
//! least as often as it acks, every 2 ms), numbers the records in its [`OriginStream`](super::OriginStream)
//! and sends them.

use super::hlc::Hlc;
use super::record::{Kind, Record, Version};
use super::table::{Applied, Store};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A write applied locally but not queued for replication: the worker's queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replication queue full: write applied locally only, peers need a resync")]
pub struct Full;

/// Called by the replication thread once a peer acknowledged a `sync` write (it applied the record).
pub type OnAck = Arc<dyn Fn() + Send + Sync>;

/// Asks a backend that keeps the store elsewhere (Redis) for one record this node does not hold: the
/// record is applied to the store if the backend has it, and `done` is called either way. `false`: not
/// asked (no such backend, or too many asks in flight).
pub type Fetch = Arc<dyn Fn(Kind, &[u8], OnAck) -> bool + Send + Sync>;

/// Where the writers find the [`Fetch`] once a backend set it.
#[derive(Default)]
struct FetchSlot(std::sync::OnceLock<Fetch>);

impl std::fmt::Debug for FetchSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "FetchSlot(set)"
        } else {
            "FetchSlot(none)"
        })
    }
}

/// A queued write: the record, and for a `sync` write who to tell when a peer has it.
pub(crate) struct Queued {
    record: Record,
    on_ack: Option<OnAck>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("record", &self.record)
            .field("sync", &self.on_ack.is_some())
            .finish()
    }
}

/// One worker's handle for writing to the store (not shared: each worker owns its own).
#[derive(Debug)]
pub struct StoreWriter {
    store: Arc<Store>,
    hlc: Arc<Hlc>,
    node_id: u16,
    queue: Sender<Queued>,
    dropped: Arc<[CachePadded<AtomicU64>]>,
    worker: usize,
    /// Wakes the replication thread: set once it runs. A `sync` write rings it (someone waits for the
    /// peer's ack; the thread's millisecond poll would add up to a millisecond to every one); an async
    /// write does not (one system call per write would cost more than the poll).
    wake: Arc<std::sync::OnceLock<Arc<mio::Waker>>>,
    /// Set once by a backend that can fetch a record this node lacks (see [`StoreWriter::fetch`]).
    fetch: Arc<FetchSlot>,
}

impl StoreWriter {
    /// Asks the backend for a record this node does not hold at all (no value, no tombstone): with the
    /// Redis backend a write acknowledged by the server may not have reached this node's feed yet. The
    /// record is applied when found, then `done` is called (on the backend's thread). `false` when no
    /// backend fetches (the mesh: a sync write is at every peer before it is answered) or the backend is
    /// busy: nothing will be called.
    pub fn fetch(&self, kind: Kind, key: &[u8], done: OnAck) -> bool {
        self.fetch.0.get().is_some_and(|f| f(kind, key, done))
    }

    /// Whether a backend fetches records on a miss (the Redis backend; never the mesh).
    pub fn fetches(&self) -> bool {
        self.fetch.0.get().is_some()
    }

    /// Applies `record` to the store, then queues it for replication if it changed the store (a stale
    /// write, older than what the store holds, is not sent: the newer record is someone's to send). With
    /// no replication thread (the feed dropped), writes are local only.
    pub fn write(&self, record: Record) -> Result<Applied, Full> {
        self.enqueue(record, None)
    }

    /// A `sync` write: applied and queued like [`write`](Self::write), and `on_ack` is called (from the
    /// replication thread) once a peer acknowledged it. A stale write is already superseded: `on_ack`
    /// is called at once. With no replication thread (a lone node's store), it is called at once too: the
    /// write is applied, and there is no peer to wait for.
    pub fn write_sync(&self, record: Record, on_ack: OnAck) -> Result<Applied, Full> {
        let r = self.enqueue(record, Some(on_ack));
        if let Some(w) = self.wake.get() {
            // A failed wake only costs the wait until the thread's next poll.
            let _ = w.wake();
        }
        r
    }

    /// Writes `record` only if the key still holds the version `expected` (see
    /// [`Store::apply_if_current`]); queued for replication when it went in.
    pub fn write_if_current(&self, record: Record, expected: Version) -> Result<Applied, Full> {
        let applied = self.store.apply_if_current(record.clone(), expected);
        if applied.changed() {
            self.queue_applied(record, None)?;
        }
        Ok(applied)
    }

    fn enqueue(&self, record: Record, on_ack: Option<OnAck>) -> Result<Applied, Full> {
        let applied = self.store.apply(record.clone());
        if !applied.changed() {
            if let Some(f) = on_ack {
                f();
            }
            return Ok(applied);
        }
        self.queue_applied(record, on_ack).map(|()| applied)
    }

    /// Hands a record already applied to the store to the replication thread.
    fn queue_applied(&self, record: Record, on_ack: Option<OnAck>) -> Result<(), Full> {
        match self.queue.try_send(Queued { record, on_ack }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(q)) => {
                // No replication thread: a lone node's store, where the write is as durable as it gets
                // once applied. A sync write is acknowledged at once.
                if let Some(f) = q.on_ack {
                    f();
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                // This worker is the slot's only writer: a plain load and store.
                let c = &self.dropped[self.worker];
                c.store(c.load(Relaxed) + 1, Relaxed);
                Err(Full)
            }
        }
    }

    /// The live record of `key` (see [`Store::get`]): lock-free, no allocation.
    pub fn get(&self, kind: Kind, key: &[u8], now: u32) -> Option<Record> {
        self.store.get(kind, key, now)
    }

    /// The store this writer writes to (for lock-free reads in place, without a clone).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A fresh version of this node: the clock's next reading and the node's id.
    pub fn version(&self) -> Version {
        Version {
            hlc: self.hlc.now(),
            node_id: self.node_id,
        }
    }

    /// Writes `value` for `key`, versioned now.
    pub fn put(&self, kind: Kind, key: &[u8], value: &[u8], expires: u32) -> Result<Applied, Full> {
        self.write(Record {
            kind,
            key: key.into(),
            version: self.version(),
            expires,
            value: Some(value.into()),
        })
    }

    /// Deletes `key`, versioned now. The tombstone is kept until `expires`, which must be no earlier than
    /// the expiry of any value of the key it deletes (else an older write arriving late could bring the
    /// key back once the tombstone is gone). 0 keeps it forever.
    pub fn delete(&self, kind: Kind, key: &[u8], expires: u32) -> Result<Applied, Full> {
        self.write(Record {
            kind,
            key: key.into(),
            version: self.version(),
            expires,
            value: None,
        })
    }
}

/// The replication thread's end: one queue per worker, and the per-worker counts of writes that found
/// their queue full.
#[derive(Debug)]
pub struct WriteFeed {
    queues: Vec<Receiver<Queued>>,
    dropped: Arc<[CachePadded<AtomicU64>]>,
    next: usize,
    wake: Arc<std::sync::OnceLock<Arc<mio::Waker>>>,
    fetch: Arc<FetchSlot>,
}

impl WriteFeed {
    /// Queues of `capacity` records for `workers` workers, writing to `store` with versions from `hlc`
    /// and this node's `node_id`. Writer `i` is worker `i`'s.
    pub fn new(
        store: Arc<Store>,
        hlc: Arc<Hlc>,
        node_id: u16,
        workers: usize,
        capacity: usize,
    ) -> (WriteFeed, Vec<StoreWriter>) {
        let dropped: Arc<[CachePadded<AtomicU64>]> =
            (0..workers).map(|_| CachePadded::default()).collect();
        let mut queues = Vec::with_capacity(workers);
        let mut writers = Vec::with_capacity(workers);
        let wake = Arc::new(std::sync::OnceLock::new());
        let fetch = Arc::new(FetchSlot::default());
        for worker in 0..workers {
            let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
            queues.push(rx);
            writers.push(StoreWriter {
                store: store.clone(),
                hlc: hlc.clone(),
                node_id,
                queue: tx,
                dropped: dropped.clone(),
                worker,
                wake: wake.clone(),
                fetch: fetch.clone(),
            });
        }
        (
            WriteFeed {
                queues,
                dropped,
                next: 0,
                wake,
                fetch,
            },
            writers,
        )
    }

    /// How every writer fetches a record it lacks (set once, by the Redis backend).
    pub fn set_fetch(&self, fetch: Fetch) {
        let _ = self.fetch.0.set(fetch);
    }

    /// The replication thread's waker, for `sync` writes to ring (see [`StoreWriter::write_sync`]).
    pub fn set_waker(&self, waker: Arc<mio::Waker>) {
        let _ = self.wake.set(waker);
    }

    /// Takes up to `max` queued records, one per worker in turn so no worker's writes starve the others',
    /// and returns how many. A worker's records come in the order it wrote them.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Record)) -> usize {
        self.drain_with_acks(max, |r, _| f(r))
    }

    /// [`drain`](Self::drain), with each `sync` write's acknowledgement callback.
    pub fn drain_with_acks(
        &mut self,
        max: usize,
        mut f: impl FnMut(Record, Option<OnAck>),
    ) -> usize {
        let n = self.queues.len();
        let mut taken = 0;
        let mut idle = 0;
        while taken < max && idle < n && n > 0 {
            let q = &self.queues[self.next];
            self.next = (self.next + 1) % n;
            match q.try_recv() {
                Ok(q) => {
                    f(q.record, q.on_ack);
                    taken += 1;
                    idle = 0;
                }
                Err(_) => idle += 1,
            }
        }
        taken
    }

    /// Records waiting in the queues.
    pub fn pending(&self) -> usize {
        self.queues.iter().map(Receiver::len).sum()
    }

    /// Writes that found their queue full since the start, over all workers. When it grows, peers are
    /// missing records of this node's stream: resync them.
    pub fn dropped(&self) -> u64 {
        self.dropped.iter().map(|c| c.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(workers: usize, capacity: usize) -> (Arc<Store>, WriteFeed, Vec<StoreWriter>) {
        let store = Arc::new(Store::new());
        let (feed, writers) = WriteFeed::new(
            store.clone(),
            Arc::new(Hlc::default()),
            7,
            workers,
            capacity,
        );
        (store, feed, writers)
    }

    #[test]
    fn writes_apply_locally_then_queue() {
        let (store, mut feed, w) = setup(2, 8);
        assert_eq!(
            w[0].put(Kind::SessionBinding, b"a", b"1", 0),
            Ok(Applied::Inserted)
        );
        assert_eq!(
            w[1].put(Kind::SessionBinding, b"b", b"2", 0),
            Ok(Applied::Inserted)
        );
        assert_eq!(
            w[0].delete(Kind::SessionBinding, b"a", 100),
            Ok(Applied::Replaced)
        );
        assert!(store.get(Kind::SessionBinding, b"a", 0).is_none());
        assert!(store.get(Kind::SessionBinding, b"b", 0).is_some());
        assert_eq!(feed.pending(), 3);
        let mut got = Vec::new();
        assert_eq!(feed.drain(10, |r| got.push(r)), 3);
        // Round robin: worker 0, worker 1, worker 0 again — and each worker's in order.
        let keys: Vec<_> = got
            .iter()
            .map(|r| (r.key.to_vec(), r.value.is_some()))
            .collect();
        assert_eq!(
            keys,
            [
                (b"a".to_vec(), true),
                (b"b".to_vec(), true),
                (b"a".to_vec(), false)
            ]
        );
        assert!(got[0].version < got[2].version);
        assert!(got.iter().all(|r| r.version.node_id == 7));
        // Another store fed from the queue converges.
        let peer = Store::new();
        for r in got {
            peer.apply(r);
        }
        assert_eq!(peer.digest(), store.digest());
    }

    #[test]
    fn stale_writes_are_not_queued() {
        let (_store, feed, w) = setup(1, 8);
        let r = Record {
            kind: Kind::SessionBinding,
            key: b"k"[..].into(),
            version: w[0].version(),
            expires: 0,
            value: Some(b"v"[..].into()),
        };
        assert_eq!(w[0].write(r.clone()), Ok(Applied::Inserted));
        assert_eq!(w[0].write(r), Ok(Applied::Stale));
        assert_eq!(feed.pending(), 1);
    }

    #[test]
    fn a_full_queue_never_blocks_and_is_counted() {
        let (store, mut feed, w) = setup(1, 2);
        for i in 0..5u8 {
            let res = w[0].put(Kind::SessionBinding, &[i], b"v", 0);
            assert_eq!(res.is_err(), i >= 2);
        }
        assert_eq!(store.len(), 5, "applied locally all the same");
        assert_eq!(feed.dropped(), 3);
        assert_eq!(feed.drain(usize::MAX, drop), 2);
        assert_eq!(feed.drain(usize::MAX, drop), 0);
    }

    #[test]
    fn without_a_feed_writes_are_local() {
        let (store, feed, w) = setup(1, 1);
        drop(feed);
        for i in 0..3u8 {
            assert!(w[0].put(Kind::SessionBinding, &[i], b"v", 0).is_ok());
        }
        assert_eq!(store.len(), 3);
    }
}
