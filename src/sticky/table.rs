//! The session table: session key → (backend, SSL context, created, last seen), one lock-free map shared
//! by every worker. It is both the stickiness table and the SSL-context table of the source document: a
//! secure session's requests go to its backend, preferably over the same pooled (TLS) connection.
//!
//! Keys are 128-bit values that are either random (sessions tether issues) or secret-keyed SipHash-1-3
//! digests of what identifies a session (an application cookie, a header, the client address), so they
//! are uniformly spread and unpredictable: the map can use a pass-through hasher without HashDoS risk.
//! Entries change through atomics (last seen, rebinding), so a hit writes nothing to the map itself.
//! Expiry and the size bound are enforced by a sweeper thread, never by a worker.

use crossbeam_utils::CachePadded;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A session's key in the table.
pub type SessionKey = u128;

/// Passes the (already uniform) key through: keys are random or secret-keyed digests.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 keys; fold the bytes.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// One session's binding.
#[derive(Debug)]
pub struct SessionEntry {
    /// The backend the session is bound to (process-local backend id).
    backend: AtomicUsize,
    /// Id of the backend connection (SSL context) its last request used; 0 when none.
    ssl_context: AtomicU64,
    /// Seconds since the Unix epoch.
    created: u32,
    last_seen: AtomicU32,
    /// When the replicated store's record of this binding was last written (with `[cluster]`): the
    /// record expires a TTL after that, however busy the session is here, so a lookup asks for a
    /// refresh once half of it has passed (see [`Binding::refresh`]).
    replicated: AtomicU32,
}

/// A session as it is exported for replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: SessionKey,
    pub backend: SocketAddr,
    pub ssl_context: u64,
    pub created: u32,
    pub last_seen: u32,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub backend: usize,
    pub ssl_context: u64,
    /// The store's record of this binding is half-way to its expiry: write it again (one lookup per
    /// half-TTL gets this, the others do not).
    pub refresh: bool,
}

/// Counters, one cache line per worker so no two workers write the same line. A worker's slot has one
/// writer (that worker), so its counters are bumped with a plain load and store rather than a locked
/// read-modify-write, which would also stall the CPU between lookups.
#[derive(Debug, Default)]
pub struct SessionCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub binds: AtomicU64,
    pub rebinds: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
}

/// Totals over all counter slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTotals {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    pub binds: u64,
    pub rebinds: u64,
    pub evictions: u64,
    pub expirations: u64,
}

/// The table shared by all workers.
pub struct SessionTable {
    map: papaya::HashMap<SessionKey, SessionEntry, BuildHasherDefault<KeyHasher>>,
    len: AtomicUsize,
    max_entries: usize,
    ttl_secs: u32,
    /// Slot `i` for worker `i`; the last one for the sweeper and other threads.
    counters: Box<[CachePadded<SessionCounters>]>,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("len", &self.len())
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl SessionTable {
    /// A table for `workers` workers, holding at most `max_entries` sessions idle for at most `ttl_secs`.
    pub fn new(workers: usize, max_entries: usize, ttl_secs: u32) -> Self {
        SessionTable {
            map: papaya::HashMap::builder()
                .hasher(BuildHasherDefault::default())
                .capacity(max_entries.min(1 << 20))
                .build(),
            len: AtomicUsize::new(0),
            max_entries,
            ttl_secs: ttl_secs.max(1),
            counters: (0..=workers).map(|_| CachePadded::default()).collect(),
        }
    }

    /// The counter slot of `worker`. Callers other than workers (tests, tools) share the last slot with
    /// the sweeper, which is why that slot's own counters use read-modify-writes.
    fn counters(&self, worker: usize) -> &SessionCounters {
        let last = self.counters.len() - 1;
        &self.counters[worker.min(last)]
    }

    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ttl_secs(&self) -> u32 {
        self.ttl_secs
    }

    /// The session's binding, if it is known and not expired; marks it seen at `now`.
    #[inline]
    pub fn lookup(&self, worker: usize, key: SessionKey, now: u32) -> Option<Binding> {
        self.reader().lookup(worker, key, now)
    }

    /// A reader that keeps the table pinned: lookups through it skip entering and leaving the
    /// reclamation epoch each time. Hold it for a batch of lookups (an event-loop turn), not longer:
    /// memory retired meanwhile is freed only after it is dropped.
    #[inline]
    pub fn reader(&self) -> SessionReader<'_> {
        SessionReader {
            map: self.map.pin(),
            table: self,
        }
    }

    /// Binds a session (new, or replacing an expired entry) to `backend`.
    pub fn bind(&self, worker: usize, key: SessionKey, backend: usize, now: u32) {
        self.bind_replicated(worker, key, backend, now, now);
    }

    /// [`bind`](Self::bind) for a binding whose replicated record was written at `replicated` (found in
    /// the store, written by another node, possibly a while ago).
    pub fn bind_replicated(
        &self,
        worker: usize,
        key: SessionKey,
        backend: usize,
        now: u32,
        replicated: u32,
    ) {
        let entry = SessionEntry {
            backend: AtomicUsize::new(backend),
            ssl_context: AtomicU64::new(0),
            created: now,
            last_seen: AtomicU32::new(now),
            replicated: AtomicU32::new(replicated),
        };
        if self.map.pin().insert(key, entry).is_none() {
            self.len.fetch_add(1, Relaxed);
        }
        bump(&self.counters(worker).binds);
    }

    /// Moves a live session to another backend (its backend failed). Returns `false` if it is gone.
    pub fn rebind(&self, worker: usize, key: SessionKey, backend: usize, now: u32) -> bool {
        let map = self.map.pin();
        let Some(e) = map.get(&key) else {
            return false;
        };
        e.backend.store(backend, Relaxed);
        e.ssl_context.store(0, Relaxed);
        e.last_seen.store(now, Relaxed);
        bump(&self.counters(worker).rebinds);
        true
    }

    /// Records the backend connection (SSL context) the session's last request used.
    pub fn set_ssl_context(&self, key: SessionKey, ssl_context: u64) {
        if let Some(e) = self.map.pin().get(&key) {
            if e.ssl_context.load(Relaxed) != ssl_context {
                e.ssl_context.store(ssl_context, Relaxed);
            }
        }
    }

    /// Forgets a session.
    pub fn remove(&self, key: SessionKey) -> bool {
        let removed = self.map.pin().remove(&key).is_some();
        if removed {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Removes expired sessions, then the stalest ones while over the size bound. Runs on the sweeper
    /// thread; workers keep reading and writing meanwhile.
    pub fn sweep(&self, now: u32) {
        let sweeper = self.counters.len() - 1;
        let map = self.map.pin();
        let mut expired = Vec::new();
        for (k, e) in map.iter() {
            if now.saturating_sub(e.last_seen.load(Relaxed)) >= self.ttl_secs {
                expired.push(*k);
            }
        }
        for k in &expired {
            if map.remove(k).is_some() {
                self.len.fetch_sub(1, Relaxed);
                self.counters[sweeper].expirations.fetch_add(1, Relaxed);
            }
        }
        let len = self.len();
        if len <= self.max_entries {
            return;
        }
        // Over the bound: find the last-seen time below which the excess lies, and evict up to it.
        let excess = len - self.max_entries;
        let mut seen: Vec<(u32, SessionKey)> = map
            .iter()
            .map(|(k, e)| (e.last_seen.load(Relaxed), *k))
            .collect();
        if excess < seen.len() {
            seen.select_nth_unstable_by_key(excess, |(t, _)| *t);
        }
        for (_, k) in seen.iter().take(excess) {
            if map.remove(k).is_some() {
                self.len.fetch_sub(1, Relaxed);
                self.counters[sweeper].evictions.fetch_add(1, Relaxed);
            }
        }
    }

    /// Every live session, with backends named by address (for replication and inspection).
    pub fn export(&self, address_of: impl Fn(usize) -> Option<SocketAddr>) -> Vec<SessionRecord> {
        self.map
            .pin()
            .iter()
            .filter_map(|(k, e)| {
                Some(SessionRecord {
                    key: *k,
                    backend: address_of(e.backend.load(Relaxed))?,
                    ssl_context: e.ssl_context.load(Relaxed),
                    created: e.created,
                    last_seen: e.last_seen.load(Relaxed),
                })
            })
            .collect()
    }

    /// Installs sessions exported by another node (backends resolved to local ids by address).
    pub fn import(&self, records: &[SessionRecord], id_of: impl Fn(SocketAddr) -> Option<usize>) {
        let map = self.map.pin();
        for r in records {
            let Some(backend) = id_of(r.backend) else {
                continue;
            };
            let entry = SessionEntry {
                backend: AtomicUsize::new(backend),
                ssl_context: AtomicU64::new(0),
                created: r.created,
                last_seen: AtomicU32::new(r.last_seen),
                replicated: AtomicU32::new(r.last_seen),
            };
            if map.insert(r.key, entry).is_none() {
                self.len.fetch_add(1, Relaxed);
            }
        }
    }

    /// Sums every counter slot.
    pub fn totals(&self) -> SessionTotals {
        let mut t = SessionTotals {
            entries: self.len(),
            ..SessionTotals::default()
        };
        for c in self.counters.iter() {
            t.hits += c.hits.load(Relaxed);
            t.misses += c.misses.load(Relaxed);
            t.binds += c.binds.load(Relaxed);
            t.rebinds += c.rebinds.load(Relaxed);
            t.evictions += c.evictions.load(Relaxed);
            t.expirations += c.expirations.load(Relaxed);
        }
        t
    }
}

/// Lookups under one held reclamation guard; see [`SessionTable::reader`].
pub struct SessionReader<'a> {
    map: papaya::HashMapRef<
        'a,
        SessionKey,
        SessionEntry,
        BuildHasherDefault<KeyHasher>,
        papaya::LocalGuard<'a>,
    >,
    table: &'a SessionTable,
}

impl SessionReader<'_> {
    /// The session's binding, if it is known and not expired; marks it seen at `now`.
    #[inline]
    pub fn lookup(&self, worker: usize, key: SessionKey, now: u32) -> Option<Binding> {
        let table = self.table;
        let found = self.map.get(&key).and_then(|e| {
            let seen = e.last_seen.load(Relaxed);
            if now.saturating_sub(seen) >= table.ttl_secs {
                return None;
            }
            if seen != now {
                // At most one store per session per second: a hit is otherwise a pure read.
                e.last_seen.store(now, Relaxed);
            }
            let replicated = e.replicated.load(Relaxed);
            let refresh = now.saturating_sub(replicated) >= (table.ttl_secs / 2).max(1);
            if refresh {
                // Racing workers may both see it due: a second write of the same binding is harmless.
                e.replicated.store(now, Relaxed);
            }
            Some(Binding {
                backend: e.backend.load(Relaxed),
                ssl_context: e.ssl_context.load(Relaxed),
                refresh,
            })
        });
        let c = table.counters(worker);
        match found {
            Some(_) => bump(&c.hits),
            None => bump(&c.misses),
        }
        found
    }
}

/// Adds one to a counter that only the calling thread writes.
#[inline]
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_asks_once_per_half_ttl_for_the_replicated_record_to_be_refreshed() {
        let t = SessionTable::new(1, 100, 60);
        t.bind(0, 7, 3, 1000);
        assert!(!t.lookup(0, 7, 1029).unwrap().refresh, "under half the TTL");
        assert!(
            t.lookup(0, 7, 1030).unwrap().refresh,
            "half the TTL since the write"
        );
        assert!(!t.lookup(0, 7, 1031).unwrap().refresh, "asked once");
        assert!(
            t.lookup(0, 7, 1060).unwrap().refresh,
            "and again half a TTL later"
        );
        // Found in the store, written by another node 50 s ago: due at once.
        t.bind_replicated(0, 8, 3, 1000, 950);
        assert!(t.lookup(0, 8, 1001).unwrap().refresh);
    }

    #[test]
    fn bind_lookup_rebind_and_counters() {
        let t = SessionTable::new(2, 100, 60);
        assert_eq!(t.lookup(0, 7, 1000), None);
        t.bind(0, 7, 3, 1000);
        assert_eq!(
            t.lookup(1, 7, 1001),
            Some(Binding {
                backend: 3,
                ssl_context: 0,
                refresh: false,
            })
        );
        t.set_ssl_context(7, 42);
        assert!(t.rebind(1, 7, 4, 1002));
        assert_eq!(t.lookup(0, 7, 1003).unwrap().backend, 4);
        assert_eq!(
            t.lookup(0, 7, 1003).unwrap().ssl_context,
            0,
            "a rebind drops the old context"
        );
        assert!(!t.rebind(0, 8, 1, 1003));
        let totals = t.totals();
        assert_eq!(
            (
                totals.entries,
                totals.hits,
                totals.misses,
                totals.binds,
                totals.rebinds
            ),
            (1, 3, 1, 1, 1)
        );
    }

    #[test]
    fn idle_sessions_expire_on_lookup_and_are_swept() {
        let t = SessionTable::new(1, 100, 10);
        t.bind(0, 1, 0, 1000);
        t.bind(0, 2, 0, 1000);
        assert!(t.lookup(0, 1, 1009).is_some(), "seen at 1009: stays");
        assert!(t.lookup(0, 2, 1010).is_none(), "idle 10 s: expired");
        t.sweep(1015);
        assert_eq!(t.len(), 1);
        assert!(t.lookup(0, 1, 1015).is_some());
        assert_eq!(t.totals().expirations, 1);
    }

    #[test]
    fn over_the_bound_the_stalest_are_evicted() {
        let t = SessionTable::new(1, 3, 3600);
        for k in 0..6u128 {
            t.bind(0, k, 0, 1000 + k as u32);
        }
        t.sweep(1010);
        assert_eq!(t.len(), 3);
        for k in 0..3u128 {
            assert!(t.lookup(0, k, 1010).is_none(), "{k} was among the stalest");
        }
        for k in 3..6u128 {
            assert!(t.lookup(0, k, 1010).is_some(), "{k} kept");
        }
        assert_eq!(t.totals().evictions, 3);
    }

    #[test]
    fn export_and_import_carry_bindings_by_address() {
        let a = SessionTable::new(1, 100, 60);
        a.bind(0, 99, 1, 1000);
        let addrs: Vec<SocketAddr> = vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        let records = a.export(|id| addrs.get(id).copied());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].backend, addrs[1]);
        // The other node numbers its backends differently.
        let b = SessionTable::new(1, 100, 60);
        b.import(
            &records,
            |addr| if addr == addrs[1] { Some(5) } else { None },
        );
        assert_eq!(b.lookup(0, 99, 1001).unwrap().backend, 5);
    }
}
