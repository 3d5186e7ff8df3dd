//! Cluster-wide counters that add up exactly: each node counts its own share of a counter and replicates
//! that share under a key of its own (the counter's id and the node's id), so no node ever overwrites
//! another's count; a cluster-wide total is this node's share plus every other node's last replicated
//! share. (HAProxy's peers overwrite stick counters with the last writer's value; Envoy asks a Redis.)
//!
//! Workers add with one atomic instruction on a slot found by a lock-free map lookup (no allocation once
//! the counter exists). A flusher thread writes every share that changed to the replicated store every
//! [`FLUSH_EVERY`] — one record per counter and node per flush, however many requests counted — so a node
//! lost with `kill -9` loses at most the counts of its last flush interval. A node restarted under the same
//! name picks up its own share from the store (a peer's snapshot brought it back) before counting on.
//!
//! Accuracy under replication lag: a total read at one node misses the other nodes' counts of their last
//! flush interval plus the replication delay (a few milliseconds on a LAN): for a limit of R per second
//! over N nodes, at most about `R × (FLUSH_EVERY + delay)` extra requests get through cluster-wide.

use crate::store::{Kind, Record, Store, StoreWriter};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How often changed shares are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// A counter's id: 16 bytes, a hash of what it counts (see [`CounterKey::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey(pub [u8; 16]);

impl CounterKey {
    /// The id of the counter named by `parts` (e.g. `[b"meter", b"requests", tenant, b"hour", period]`):
    /// SHA-256 over the parts, each length-prefixed (so `["ab", "c"]` and `["a", "bc"]` differ), cut to
    /// 16 bytes. Every node computes the same id for the same parts.
    pub fn of(parts: &[&[u8]]) -> CounterKey {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update((p.len() as u32).to_be_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        CounterKey(id)
    }

    fn record_key(&self, node: u16) -> [u8; 18] {
        let mut k = [0u8; 18];
        k[..16].copy_from_slice(&self.0);
        k[16..].copy_from_slice(&node.to_be_bytes());
        k
    }
}

/// This node's share of one counter.
#[derive(Debug)]
struct Share {
    count: AtomicU64,
    /// The count last written to the store.
    flushed: AtomicU64,
    /// Seconds since the Unix epoch after which the counter is dropped (its window is over).
    expires: AtomicU32,
}

/// The counters of this node, shared by every worker (`Arc`).
#[derive(Debug)]
pub struct Counters {
    shares: papaya::HashMap<CounterKey, Arc<Share>>,
    /// This node's id (the store's node id of `[cluster] node`; 0 for a lone node).
    node: u16,
    /// The other nodes' ids (from `[cluster] peers`; replaced on reload).
    peers: ArcSwap<Vec<u16>>,
    store: Option<Arc<Store>>,
    /// Some share changed since the last flush.
    dirty: AtomicBool,
    /// When expired counters were last swept (seconds).
    swept: AtomicU32,
    /// The node-local token buckets of rate limits: node state shared by every worker, like the
    /// shares, and swept by the same flusher.
    buckets: super::rate::Buckets,
}

impl Counters {
    /// Counters of node `node` among `peers`, reading other nodes' shares from `store` (none: a lone
    /// node, whose totals are its own counts).
    pub fn new(node: u16, peers: Vec<u16>, store: Option<Arc<Store>>) -> Counters {
        Counters {
            shares: papaya::HashMap::new(),
            node,
            peers: ArcSwap::from_pointee(peers),
            store,
            dirty: AtomicBool::new(false),
            swept: AtomicU32::new(0),
            buckets: super::rate::Buckets::default(),
        }
    }

    /// The node's rate-limit token buckets.
    pub fn buckets(&self) -> &super::rate::Buckets {
        &self.buckets
    }

    /// The peers changed (a reload of `[cluster] peers`).
    pub fn set_peers(&self, peers: Vec<u16>) {
        self.peers.store(Arc::new(peers));
    }

    /// Adds `n` to this node's share of `key`, a counter that lives until `expires` (seconds since the
    /// Unix epoch; a later call may extend it). Lock-free; allocates only the first time this node
    /// counts `key`. Returns this node's share after the addition.
    pub fn add(&self, key: CounterKey, n: u64, expires: u32) -> u64 {
        self.update(key, expires, |count| {
            count.fetch_add(n, Ordering::Relaxed) + n
        })
    }

    /// Raises this node's share of `key` to `value` if it is lower: a high-water mark (a time, say),
    /// whose cluster-wide value is [`Counters::highest`]. Shares still only grow, so replication never
    /// overwrites a higher mark with a lower one. Lock-free, as [`Counters::add`]. Returns this node's
    /// share after the raise.
    pub fn raise(&self, key: CounterKey, value: u64, expires: u32) -> u64 {
        self.update(key, expires, |count| {
            count.fetch_max(value, Ordering::Relaxed).max(value)
        })
    }

    fn update(&self, key: CounterKey, expires: u32, change: impl FnOnce(&AtomicU64) -> u64) -> u64 {
        let map = self.shares.pin();
        let share = match map.get(&key) {
            Some(s) => s,
            None => {
                // A node restarted under its name finds its own earlier share in the store.
                let start = self.stored(&key, self.node, 0);
                map.get_or_insert_with(key, || {
                    Arc::new(Share {
                        count: AtomicU64::new(start),
                        flushed: AtomicU64::new(start),
                        expires: AtomicU32::new(expires),
                    })
                })
            }
        };
        if share.expires.load(Ordering::Relaxed) < expires {
            share.expires.store(expires, Ordering::Relaxed);
        }
        let after = change(&share.count);
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        }
        after
    }

    /// The highest share of `key` at `now` across this node and its peers (see [`Counters::raise`]).
    /// Lock-free, no allocation.
    pub fn highest(&self, key: &CounterKey, now: u32) -> u64 {
        let own = match self.shares.pin().get(key) {
            Some(s) => s.count.load(Ordering::Relaxed),
            None => self.stored(key, self.node, now),
        };
        let peers = self.peers.load();
        peers
            .iter()
            .map(|&p| self.stored(key, p, now))
            .fold(own, u64::max)
    }

    /// This node's share of `key`.
    pub fn local(&self, key: &CounterKey) -> u64 {
        self.shares
            .pin()
            .get(key)
            .map_or(0, |s| s.count.load(Ordering::Relaxed))
    }

    /// The cluster-wide total of `key` at `now`: this node's share (or, when it has not counted `key`
    /// since it started, its replicated one) plus every peer's last replicated share. Lock-free, no
    /// allocation.
    pub fn total(&self, key: &CounterKey, now: u32) -> u64 {
        let own = match self.shares.pin().get(key) {
            Some(s) => s.count.load(Ordering::Relaxed),
            None => self.stored(key, self.node, now),
        };
        let peers = self.peers.load();
        own + peers.iter().map(|&p| self.stored(key, p, now)).sum::<u64>()
    }

    /// The share of `node` as the store holds it (0 when absent or expired at `now`; `now` 0: whatever
    /// it holds).
    fn stored(&self, key: &CounterKey, node: u16, now: u32) -> u64 {
        let Some(store) = &self.store else {
            return 0;
        };
        // Through a reader: the record is read in place, not cloned (no allocation per request).
        store
            .reader()
            .get(Kind::Counter, &key.record_key(node), now)
            .and_then(|r| {
                let v: [u8; 8] = r.value.as_deref()?.try_into().ok()?;
                Some(u64::from_be_bytes(v))
            })
            .unwrap_or(0)
    }

    /// Writes every share that changed since the last flush to the store through `writer` (applied
    /// locally at once, replicated to peers), and forgets counters past their expiry. Returns how many
    /// shares were written. Run by the flusher thread.
    pub fn flush(&self, writer: &StoreWriter, now: u32) -> usize {
        // Idle: nothing to write, and expired counters are swept every 10 s at most.
        let sweep = now >= self.swept.load(Ordering::Relaxed).saturating_add(10);
        if !self.dirty.swap(false, Ordering::Relaxed) && !sweep {
            return 0;
        }
        if sweep {
            self.swept.store(now, Ordering::Relaxed);
            self.buckets.sweep(std::time::Instant::now());
        }
        let map = self.shares.pin();
        let mut written = 0;
        let mut gone = Vec::new();
        for (key, share) in map.iter() {
            let count = share.count.load(Ordering::Relaxed);
            let expires = share.expires.load(Ordering::Relaxed);
            if count != share.flushed.load(Ordering::Relaxed) {
                let record = Record {
                    kind: Kind::Counter,
                    key: key.record_key(self.node).as_slice().into(),
                    version: writer.version(),
                    expires,
                    value: Some(count.to_be_bytes().as_slice().into()),
                };
                let _ = writer.write(record);
                share.flushed.store(count, Ordering::Relaxed);
                written += 1;
            }
            if expires != 0 && expires < now {
                gone.push(*key);
            }
        }
        for key in gone {
            map.remove(&key);
        }
        written
    }
}

/// Starts the flusher thread: flushes every [`FLUSH_EVERY`] until `stop`, and once more when stopping.
pub fn start_flusher(
    counters: Arc<Counters>,
    writer: StoreWriter,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("counters".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(FLUSH_EVERY);
                counters.flush(&writer, crate::sticky::unix_now());
            }
            counters.flush(&writer, crate::sticky::unix_now());
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(store: &Arc<Store>, node: u16) -> StoreWriter {
        let (_feed, mut w) = crate::store::WriteFeed::new(
            store.clone(),
            Arc::new(crate::store::Hlc::default()),
            node,
            1,
            1024,
        );
        w.remove(0)
    }

    #[test]
    fn shares_add_up_across_nodes_and_never_overwrite_each_other() {
        // Three nodes sharing one store, as replication makes them.
        let store = Arc::new(Store::new());
        let ids = [1u16, 2, 3];
        let nodes: Vec<(Counters, StoreWriter)> = ids
            .iter()
            .map(|&me| {
                let peers = ids.iter().copied().filter(|&p| p != me).collect();
                (
                    Counters::new(me, peers, Some(store.clone())),
                    writer(&store, me),
                )
            })
            .collect();
        let key = CounterKey::of(&[b"meter", b"requests", b"acme"]);
        for (i, (c, _)) in nodes.iter().enumerate() {
            for _ in 0..=i {
                c.add(key, 10, 0);
            }
        }
        // Before a flush each node sees its own share only.
        assert_eq!(nodes[0].0.total(&key, 0), 10);
        for (c, w) in &nodes {
            assert_eq!(c.flush(w, 0), 1);
        }
        for (c, _) in &nodes {
            assert_eq!(c.total(&key, 0), 10 + 20 + 30);
        }
        // Nothing changed: nothing written.
        assert_eq!(nodes[1].0.flush(&nodes[1].1, 1), 0);
    }

    #[test]
    fn a_restarted_node_continues_from_its_replicated_share() {
        let store = Arc::new(Store::new());
        let key = CounterKey::of(&[b"x"]);
        let a = Counters::new(1, vec![2], Some(store.clone()));
        let w = writer(&store, 1);
        a.add(key, 5, 0);
        a.flush(&w, 0);
        drop(a);
        // Same node id, fresh memory: its old share is in the store.
        let again = Counters::new(1, vec![2], Some(store.clone()));
        assert_eq!(again.total(&key, 0), 5);
        assert_eq!(again.add(key, 1, 0), 6);
        again.flush(&w, 0);
        assert_eq!(Counters::new(2, vec![1], Some(store)).total(&key, 0), 6);
    }

    #[test]
    fn expired_counters_are_forgotten() {
        let store = Arc::new(Store::new());
        let w = writer(&store, 1);
        let c = Counters::new(1, vec![], Some(store));
        let key = CounterKey::of(&[b"minute", b"7"]);
        c.add(key, 1, 100);
        c.flush(&w, 50);
        assert_eq!(c.local(&key), 1);
        c.flush(&w, 112);
        assert_eq!(c.local(&key), 0, "dropped past its expiry");
        assert_eq!(c.total(&key, 112), 0, "and its record expired too");
    }

    #[test]
    fn high_water_marks_take_the_highest_share() {
        let store = Arc::new(Store::new());
        let a = Counters::new(1, vec![2], Some(store.clone()));
        let b = Counters::new(2, vec![1], Some(store.clone()));
        let key = CounterKey::of(&[b"last"]);
        assert_eq!(a.raise(key, 50, 0), 50);
        assert_eq!(a.raise(key, 40, 0), 50, "never lowered");
        b.raise(key, 70, 0);
        a.flush(&writer(&store, 1), 0);
        b.flush(&writer(&store, 2), 0);
        assert_eq!(a.highest(&key, 0), 70);
        assert_eq!(b.highest(&key, 0), 70);
        assert_eq!(a.total(&key, 0), 120, "a sum would mix them up");
    }

    #[test]
    fn keys_are_length_prefixed() {
        assert_ne!(
            CounterKey::of(&[b"ab", b"c"]),
            CounterKey::of(&[b"a", b"bc"])
        );
    }
}
