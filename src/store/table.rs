//! The store's table: every record by `(kind, key)` in one lock-free map, last writer wins, with a running
//! digest kept up to date as records are applied and expire.
//!
//! Readers (workers) are lock-free, as in the session table: a lookup pins the map's reclamation epoch
//! and reads. Writers replace a record with papaya's compare-and-swap `compute`, so of two concurrent
//! writes of one key the newer wins whatever order they land in. Deleted keys stay as tombstones until
//! they expire, so a late write older than the delete cannot bring the key back.

use super::digest::{AtomicSum, DigestSum};
use super::record::{Kind, Record};
use papaya::{Compute, Equivalent, Operation};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A record's place in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoreKey {
    kind: Kind,
    key: Arc<[u8]>,
}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        KeyRef {
            kind: self.kind,
            key: &self.key,
        }
        .hash(h)
    }
}

/// A borrowed [`StoreKey`], for lookups without allocating.
struct KeyRef<'a> {
    kind: Kind,
    key: &'a [u8],
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u8(self.kind as u8);
        h.write(self.key);
    }
}

impl Equivalent<StoreKey> for KeyRef<'_> {
    fn equivalent(&self, k: &StoreKey) -> bool {
        self.kind == k.kind && *self.key == *k.key
    }
}

/// A record as the map holds it, with its hash (its term in the digest): kept so that removing or
/// replacing it, and sending it in a snapshot, sums hashes instead of hashing the record again (a
/// snapshot's sender would otherwise hash every record it holds, reading each key and value from memory
/// it has not touched: the larger part of its walk). 32 bytes per record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    record: Record,
    hash: DigestSum,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The key was not in the store; now it is.
    Inserted,
    /// The record replaced an older one of the same key.
    Replaced,
    /// The store holds this record or a newer one of its key: nothing changed.
    Stale,
}

impl Applied {
    /// Whether the store changed.
    pub fn changed(self) -> bool {
        self != Applied::Stale
    }
}

/// Whether `record` has expired at `now` (seconds since the Unix epoch): its expiry is set and not after
/// `now`.
pub fn expired(record: &Record, now: u32) -> bool {
    record.expires != 0 && record.expires <= now
}

/// Whether `record` reads as present at `now`: a value, not expired.
pub fn live(record: &Record, now: u32) -> bool {
    record.value.is_some() && !expired(record, now)
}

/// The replicated store: every record this node holds, by kind and key.
///
/// It holds the newest record of each key it has seen (last writer wins by [`Record::newer_than`]),
/// tombstones included, until [`remove_expired`](Store::remove_expired) drops them after their expiry.
/// Readers see expired records and tombstones as absent.
pub struct Store {
    map: papaya::HashMap<StoreKey, Held>,
    sum: AtomicSum,
    /// Records held per kind (indexed by the kind's byte), kept with inserts and removals so a report
    /// need not scan the store.
    by_kind: [std::sync::atomic::AtomicUsize; Kind::BOUND],
    /// Changes applied per kind (inserts, replacements, removals), so a watcher of one kind (the deny
    /// list's kernel filter) rescans only when that kind changed.
    changes: [std::sync::atomic::AtomicU64; Kind::BOUND],
    /// Told of every change to a record of a watched kind ([`Kind::watched`]), on the thread that
    /// applied it: set once, at start, by the notification queues.
    watch: std::sync::OnceLock<Watcher>,
    /// Set while this copy may miss other nodes' writes for longer than the backend allows (the Redis
    /// backend's feed down past `[store] max_staleness`): requests that rely on the store are refused
    /// rather than served from a stale copy. One relaxed load per check.
    stale: std::sync::atomic::AtomicBool,
}

/// Called with each record of a watched kind that changed the store (a worker's write, a peer's record
/// applied by the replication thread, a snapshot's). Runs on the applying thread: it must not block.
pub type Watcher = Arc<dyn Fn(&Record) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("len", &self.len()).finish()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::with_capacity(0)
    }
}

impl Store {
    pub fn new() -> Self {
        Store::default()
    }

    /// A store with room for `capacity` records before its map grows.
    pub fn with_capacity(capacity: usize) -> Self {
        Store {
            map: papaya::HashMap::builder().capacity(capacity).build(),
            sum: AtomicSum::default(),
            by_kind: Default::default(),
            changes: Default::default(),
            watch: std::sync::OnceLock::new(),
            stale: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks this copy stale (or fresh again): see [`is_stale`](Store::is_stale).
    pub fn set_stale(&self, stale: bool) {
        self.stale
            .store(stale, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this copy may miss other nodes' writes beyond the configured bound. Never set with the
    /// mesh backend (a node there serves only once synced, and peers stream to it).
    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the watcher told of changes to watched kinds (once; a second call is ignored).
    pub fn watch(&self, watcher: Watcher) {
        let _ = self.watch.set(watcher);
    }

    /// Tells the watcher about `record` when its kind is watched: one comparison otherwise.
    fn notify_watcher(&self, record: &Record) {
        if record.kind.watched() {
            if let Some(w) = self.watch.get() {
                w(record);
            }
        }
    }

    /// Applies a record, last writer wins: it goes in if its key is absent or holds an older record (a
    /// tombstone counts as a record). Idempotent and commutative: applying the same records in any
    /// order, any number of times, leaves the same store. Safe from any thread, lock-free.
    pub fn apply(&self, record: Record) -> Applied {
        self.apply_hashed(record, None)
    }

    /// Applies `record` only if the key still holds the record at version `expected` (and `record` is
    /// newer): a read-modify-write that loses to any write in between instead of undoing it (a session
    /// touched while another thread refreshed or revoked it). `Stale` when it lost.
    pub fn apply_if_current(&self, record: Record, expected: super::record::Version) -> Applied {
        let hash = DigestSum::of(&record);
        let kind = record.kind;
        let key = StoreKey {
            kind: record.kind,
            key: record.key.clone(),
        };
        let held = Held { record, hash };
        let map = self.map.pin();
        let outcome = map.compute(key, |current| match current {
            Some((_, h)) if h.record.version == expected && held.record.newer_than(&h.record) => {
                Operation::Insert(held.clone())
            }
            _ => Operation::Abort(()),
        });
        match outcome {
            Compute::Updated {
                old: (_, old),
                new: (_, _),
            } => {
                self.sum.add(hash - old.hash);
                self.changed(kind);
                self.notify_watcher(&held.record);
                Applied::Replaced
            }
            _ => Applied::Stale,
        }
    }

    /// [`apply`](Store::apply) with the record's hash when the caller has it already (a staged
    /// snapshot hashed each record to check its digest).
    pub(super) fn apply_hashed(&self, record: Record, hash: Option<DigestSum>) -> Applied {
        let kind = record.kind;
        let watched = kind.watched().then(|| record.clone());
        let (applied, _, delta) = apply_pinned(&self.map.pin(), record, hash, false);
        self.sum.add(delta);
        if applied == Applied::Inserted {
            self.count(kind, true);
        }
        if applied != Applied::Stale {
            self.changed(kind);
        }
        if let (true, Some(r)) = (applied.changed(), watched) {
            self.notify_watcher(&r);
        }
        applied
    }

    /// Applies a batch of a snapshot applied in place (see `snapshot_recv` in the replication layer):
    /// hashes each record, applies it, and notes in `log` what undoes each record that changed the store.
    /// Returns the sum of the batch's record hashes (applied or not: the snapshot's digest covers every
    /// record sent). One pin of the map and one update of the running digest and counts per batch.
    pub fn apply_undoable_batch(&self, batch: Vec<Record>, log: &mut UndoLog) -> DigestSum {
        let map = self.map.pin();
        let mut sum = DigestSum::default();
        let mut hashes = DigestSum::default();
        let mut inserted = [0usize; Kind::BOUND];
        for record in batch {
            let hash = DigestSum::of(&record);
            hashes = hashes + hash;
            let (kind, version) = (record.kind, record.version);
            let key = record.key.clone();
            let watched = kind.watched().then(|| record.clone());
            let (applied, replaced, delta) = apply_pinned(&map, record, Some(hash), true);
            sum = sum + delta;
            if applied != Applied::Stale {
                self.changed(kind);
            }
            // An undone snapshot leaves stale entries in the watcher's indexes: they are hints, checked
            // against the store wherever they are read.
            if let (true, Some(r)) = (applied.changed(), watched) {
                self.notify_watcher(&r);
            }
            match (applied, replaced) {
                (Applied::Inserted, _) => {
                    if let Some(n) = inserted.get_mut(kind as usize) {
                        *n += 1;
                    }
                    log.inserted(kind, &key, version);
                }
                (Applied::Replaced, Some(old)) => log.replaced.push((old, version)),
                _ => {}
            }
        }
        self.sum.add(sum);
        for (c, n) in self.by_kind.iter().zip(inserted) {
            if n > 0 {
                c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        hashes
    }

    /// Undoes what [`apply_undoable_batch`](Store::apply_undoable_batch) noted in `log`: keys it inserted
    /// are removed, records it replaced are put back. Used only while the applied records are not yet in
    /// use (a starting node's snapshot).
    pub fn undo(&self, log: UndoLog) {
        // Only what the snapshot wrote is undone: a key written again since (by another peer's stream,
        // say) keeps that newer record.
        let map = self.map.pin();
        let mut rest = &log.inserted[..];
        while let [kind, len, tail @ ..] = rest {
            let len = usize::from(*len);
            if tail.len() < len + 10 {
                break;
            }
            let (key, tail) = tail.split_at(len);
            let (v, next) = tail.split_at(10);
            rest = next;
            let version = super::Version {
                hlc: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                node_id: u16::from_be_bytes(v[8..].try_into().expect("2 bytes")),
            };
            let Some(kind) = Kind::from_u8(*kind) else {
                continue;
            };
            if let Ok(Some((_, gone))) =
                map.remove_if(&KeyRef { kind, key }, |_, h| h.record.version == version)
            {
                self.count(gone.record.kind, false);
                self.sum.add(-gone.hash);
            }
        }
        for (old, applied) in log.replaced {
            let k = StoreKey {
                kind: old.kind,
                key: old.key.clone(),
            };
            let back = Held {
                hash: DigestSum::of(&old),
                record: old,
            };
            let outcome = map.compute(k, |current| match current {
                Some((_, h)) if h.record.version == applied => Operation::Insert(back.clone()),
                _ => Operation::Abort(()),
            });
            match outcome {
                Compute::Updated {
                    old: (_, newer),
                    new: (_, back),
                } => self.sum.add(back.hash - newer.hash),
                Compute::Inserted(_, back) => {
                    self.count(back.record.kind, true);
                    self.sum.add(back.hash);
                }
                _ => {}
            }
        }
    }

    /// The record of `key`, if it is live at `now` (seconds since the Unix epoch): tombstones and expired
    /// records read as absent. Clones the record (its key and value are shared, not copied).
    pub fn get(&self, kind: Kind, key: &[u8], now: u32) -> Option<Record> {
        self.reader().get(kind, key, now).cloned()
    }

    /// A reader that keeps the map pinned, for a batch of lookups or a scan. Hold it briefly: memory
    /// retired meanwhile is freed only after it is dropped.
    pub fn reader(&self) -> StoreReader<'_> {
        StoreReader {
            map: self.map.pin(),
        }
    }

    /// Drops every record (tombstones included) expired at `now`, and returns how many. A scan of the
    /// whole store: it runs on the replication thread, never on a worker.
    pub fn remove_expired(&self, now: u32) -> usize {
        let map = self.map.pin();
        let mut removed = 0;
        for (k, h) in map.iter() {
            if !expired(&h.record, now) {
                continue;
            }
            // Only if it is still expired: a newer record may have replaced it meanwhile.
            if let Ok(Some((_, gone))) = map.remove_if(k, |_, h| expired(&h.record, now)) {
                self.count(gone.record.kind, false);
                self.sum.add(-gone.hash);
                removed += 1;
            }
        }
        removed
    }

    /// Changes applied to records of `kind` so far (a generation: compare two readings).
    pub fn changes_of(&self, kind: Kind) -> u64 {
        self.changes
            .get(kind as usize)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Acquire))
    }

    fn changed(&self, kind: Kind) {
        if let Some(c) = self.changes.get(kind as usize) {
            c.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    fn count(&self, kind: Kind, up: bool) {
        self.changed(kind);
        if let Some(c) = self.by_kind.get(kind as usize) {
            if up {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                c.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Records held of `kind` (tombstones and expired ones not yet removed included), without a scan.
    pub fn len_of(&self, kind: Kind) -> usize {
        self.by_kind
            .get(kind as usize)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Records held: live ones, tombstones, and expired ones not yet removed (exactly the records the
    /// digest covers).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for `additional` more records at once (before a bulk load such as a snapshot merge),
    /// sparing the map its step-by-step growth.
    pub fn reserve(&self, additional: usize) {
        self.map.pin().reserve(additional);
    }

    /// The store's digest (docs/PROTOCOL.md, "Digest"): the sum modulo 2^256 of SHA-256 of the canonical
    /// encoding of **every record the store holds** — live records, tombstones, and records past their
    /// expiry that [`remove_expired`](Store::remove_expired) has not dropped yet — each hash read as a
    /// little-endian 256-bit number, the sum written back the same way. The expiry is part of each
    /// record's encoding. An empty store's digest is all zeros.
    ///
    /// O(1): the sum is kept up to date by every apply and removal (adding the new record's hash,
    /// subtracting the replaced or removed one's). It is exact when no apply or removal is in flight;
    /// read while other threads write, it may be off by a write in progress.
    pub fn digest(&self) -> [u8; 32] {
        self.sum.load().to_bytes()
    }

    /// The digest computed by hashing every record (a scan): the check of [`digest`](Store::digest).
    pub fn digest_by_scan(&self) -> [u8; 32] {
        // Hashes every record again (not the kept hashes): this is the check of the running sum.
        DigestSum::of_all(self.map.pin().values().map(|h| &h.record)).to_bytes()
    }
}

/// What undoes records applied in place: the keys they inserted, copied into one buffer (kind, length,
/// bytes: nothing to drop one by one when the log is thrown away, the common case), and the records they
/// replaced.
#[derive(Debug, Default)]
pub struct UndoLog {
    /// Per inserted record: kind, key length, key, and the version applied (hlc, node id).
    inserted: Vec<u8>,
    /// Per replaced record: the old one, and the version that replaced it.
    replaced: Vec<(Record, super::Version)>,
}

impl UndoLog {
    fn inserted(&mut self, kind: Kind, key: &[u8], version: super::Version) {
        self.inserted.push(kind as u8);
        self.inserted.push(key.len() as u8);
        self.inserted.extend_from_slice(key);
        self.inserted.extend_from_slice(&version.hlc.to_be_bytes());
        self.inserted
            .extend_from_slice(&version.node_id.to_be_bytes());
    }
}

type PinnedMap<'a> =
    papaya::HashMapRef<'a, StoreKey, Held, std::hash::RandomState, papaya::LocalGuard<'a>>;

/// Applies `record` to a pinned map, last writer wins; returns what happened, the record replaced (when
/// `keep_old`), and the change to the store's digest sum (the caller adds it, and counts an insert).
fn apply_pinned(
    map: &PinnedMap<'_>,
    record: Record,
    hash: Option<DigestSum>,
    keep_old: bool,
) -> (Applied, Option<Record>, DigestSum) {
    debug_assert!(!record.key.is_empty() && record.key.len() <= super::record::MAX_KEY);
    let hash = hash.unwrap_or_else(|| DigestSum::of(&record));
    let none = DigestSum::default();
    let key = StoreKey {
        kind: record.kind,
        key: record.key.clone(),
    };
    // Most records are of keys the store lacks (new sessions, a resync into an empty store): try the
    // insert first, which hands back what the key holds when it is taken — one probe of the map, not a
    // lookup and then an insert. A new key goes in with `try_insert`, not `compute`: papaya 0.2.5's
    // `compute` does not help an incremental resize along, so a map grown by it alone keeps a chain of
    // old tables that every lookup walks (20x slower lookups at a million records).
    let (record, old) = match map.try_insert(key, Held { record, hash }) {
        Ok(_) => return (Applied::Inserted, None, hash),
        Err(e) => (e.not_inserted.record, &e.current.record),
    };
    // The same record again (a replay, equal without encoding both), or an older one.
    if *old == record || !record.newer_than(old) {
        return (Applied::Stale, None, none);
    }
    let key = StoreKey {
        kind: record.kind,
        key: record.key.clone(),
    };
    let held = Held { record, hash };
    let outcome = map.compute(key, |current| match current {
        Some((_, h)) if h.record == held.record || !held.record.newer_than(&h.record) => {
            Operation::Abort(())
        }
        _ => Operation::Insert(held.clone()),
    });
    match outcome {
        // Removed (expired) meanwhile.
        Compute::Inserted(_, _) => (Applied::Inserted, None, hash),
        Compute::Updated {
            old: (_, old),
            new: (_, _),
        } => (
            Applied::Replaced,
            keep_old.then(|| old.record.clone()),
            hash - old.hash,
        ),
        Compute::Aborted(()) => (Applied::Stale, None, none),
        Compute::Removed(..) => unreachable!("apply never removes"),
    }
}

/// A pinned view of the store (see [`Store::reader`]).
pub struct StoreReader<'a> {
    map: PinnedMap<'a>,
}

impl StoreReader<'_> {
    /// The record of `key` if it is live at `now` (see [`Store::get`]).
    pub fn get(&self, kind: Kind, key: &[u8], now: u32) -> Option<&Record> {
        self.map
            .get(&KeyRef { kind, key })
            .map(|h| &h.record)
            .filter(|r| live(r, now))
    }

    /// The record held for `key` whatever it is (tombstone, expired): what the replication layer
    /// compares against.
    pub fn get_raw(&self, kind: Kind, key: &[u8]) -> Option<&Record> {
        self.map.get(&KeyRef { kind, key }).map(|h| &h.record)
    }

    /// Every record held of one kind, or of all kinds (`None`), tombstones and expired ones included, in
    /// no particular order. Weakly consistent under concurrent writes (a record applied meanwhile may
    /// or may not be seen); a scan of the whole map either way.
    pub fn iter(&self, kind: Option<Kind>) -> impl Iterator<Item = &Record> + '_ {
        self.map
            .values()
            .map(|h| &h.record)
            .filter(move |r| kind.is_none_or(|k| r.kind == k))
    }

    /// Every record held, each with its hash (its term in the store's digest): what a snapshot sends
    /// and sums. Weakly consistent, as [`iter`](Self::iter).
    pub fn iter_hashed(&self) -> impl Iterator<Item = (&Record, DigestSum)> + '_ {
        self.map.values().map(|h| (&h.record, h.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::Version;

    fn rec(key: &str, hlc: u64, node: u16, value: Option<&str>, expires: u32) -> Record {
        Record {
            kind: Kind::SessionBinding,
            key: key.as_bytes().into(),
            version: Version { hlc, node_id: node },
            expires,
            value: value.map(|v| v.as_bytes().into()),
        }
    }

    #[test]
    fn apply_if_current_loses_to_any_write_in_between() {
        let s = Store::new();
        let v = |hlc| Version { hlc, node_id: 1 };
        s.apply(rec("k", 1, 1, Some("a"), 0));
        assert_eq!(
            s.apply_if_current(rec("k", 2, 1, Some("b"), 0), v(1)),
            Applied::Replaced
        );
        // Read at 1, but 2 is there now: the write loses.
        assert_eq!(
            s.apply_if_current(rec("k", 3, 1, Some("c"), 0), v(1)),
            Applied::Stale
        );
        // A tombstone in between is never undone.
        s.apply(rec("k", 4, 1, None, 0));
        assert_eq!(
            s.apply_if_current(rec("k", 5, 1, Some("d"), 0), v(2)),
            Applied::Stale
        );
        assert!(s.get(Kind::SessionBinding, b"k", 0).is_none());
        // An absent key is not created.
        assert_eq!(
            s.apply_if_current(rec("new", 6, 1, Some("e"), 0), v(1)),
            Applied::Stale
        );
        assert!(s.get(Kind::SessionBinding, b"new", 0).is_none());
        assert_eq!(s.digest(), s.digest_by_scan());
    }

    fn binding(key: &str, hlc: u64, value: &str) -> Record {
        Record {
            kind: Kind::SessionBinding,
            key: key.as_bytes().into(),
            version: Version { hlc, node_id: 1 },
            expires: 0,
            value: Some(value.as_bytes().into()),
        }
    }

    #[test]
    fn undoing_an_undoable_batch_restores_the_store_and_its_digest() {
        let s = Store::new();
        s.apply(binding("kept", 5, "old"));
        let before = (s.len(), s.digest(), s.len_of(Kind::SessionBinding));
        let batch = vec![
            binding("kept", 9, "new"),
            binding("fresh", 1, "x"),
            binding("kept", 2, "stale"),
        ];
        let expected = DigestSum::of_all(&batch);
        let mut log = UndoLog::default();
        assert_eq!(s.apply_undoable_batch(batch, &mut log), expected);
        assert_eq!(
            s.get(Kind::SessionBinding, b"kept", 0).unwrap().version.hlc,
            9
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.digest(), s.digest_by_scan());
        s.undo(log);
        assert_eq!(
            (s.len(), s.digest(), s.len_of(Kind::SessionBinding)),
            before
        );
        assert_eq!(s.digest(), s.digest_by_scan());
        assert_eq!(
            s.get(Kind::SessionBinding, b"kept", 0).unwrap().version.hlc,
            5
        );
        assert!(s.get(Kind::SessionBinding, b"fresh", 0).is_none());
    }

    #[test]
    fn an_undo_leaves_keys_written_again_since() {
        let s = Store::new();
        s.apply(binding("kept", 5, "old"));
        let mut log = UndoLog::default();
        s.apply_undoable_batch(
            vec![binding("kept", 9, "new"), binding("fresh", 1, "x")],
            &mut log,
        );
        // Another peer's stream writes both keys again meanwhile.
        s.apply(binding("kept", 12, "newest"));
        s.apply(binding("fresh", 7, "newer"));
        let before = (s.len(), s.digest());
        s.undo(log);
        assert_eq!(
            (s.len(), s.digest()),
            before,
            "nothing of the snapshot is left to undo"
        );
        assert_eq!(
            s.get(Kind::SessionBinding, b"kept", 0).unwrap().version.hlc,
            12
        );
        assert_eq!(
            s.get(Kind::SessionBinding, b"fresh", 0)
                .unwrap()
                .version
                .hlc,
            7
        );
        assert_eq!(s.digest(), s.digest_by_scan());
    }

    #[test]
    fn last_writer_wins_whatever_the_order() {
        let s = Store::new();
        assert_eq!(s.apply(rec("k", 10, 1, Some("a"), 0)), Applied::Inserted);
        assert_eq!(s.apply(rec("k", 20, 1, Some("b"), 0)), Applied::Replaced);
        assert_eq!(s.apply(rec("k", 15, 9, Some("c"), 0)), Applied::Stale);
        // Same clock: the node id breaks the tie.
        assert_eq!(s.apply(rec("k", 20, 2, Some("d"), 0)), Applied::Replaced);
        assert_eq!(s.apply(rec("k", 20, 2, Some("d"), 0)), Applied::Stale);
        assert_eq!(
            s.get(Kind::SessionBinding, b"k", 100)
                .unwrap()
                .value
                .as_deref(),
            Some(&b"d"[..])
        );
        assert_eq!(s.get(Kind::TicketKeys, b"k", 100), None);
        assert_eq!(s.len(), 1);
        assert!(!s.apply(rec("k", 1, 1, None, 0)).changed());
    }

    #[test]
    fn tombstones_hide_the_key_and_stop_older_writes() {
        let s = Store::new();
        s.apply(rec("k", 10, 1, Some("a"), 0));
        assert_eq!(s.apply(rec("k", 20, 1, None, 500)), Applied::Replaced);
        assert_eq!(s.get(Kind::SessionBinding, b"k", 100), None);
        assert_eq!(s.len(), 1, "the tombstone is held");
        // A late write from before the delete does not bring the key back.
        assert_eq!(s.apply(rec("k", 15, 7, Some("late"), 0)), Applied::Stale);
        assert_eq!(s.get(Kind::SessionBinding, b"k", 100), None);
        // A write after the delete does.
        assert_eq!(s.apply(rec("k", 30, 1, Some("new"), 0)), Applied::Replaced);
        assert!(s.get(Kind::SessionBinding, b"k", 100).is_some());
    }

    #[test]
    fn expired_records_read_absent_and_are_removed() {
        let s = Store::new();
        s.apply(rec("a", 1, 1, Some("x"), 100));
        s.apply(rec("b", 1, 1, None, 100));
        s.apply(rec("c", 1, 1, Some("x"), 0));
        s.apply(rec("d", 1, 1, Some("x"), 200));
        assert!(s.get(Kind::SessionBinding, b"a", 99).is_some());
        assert!(s.get(Kind::SessionBinding, b"a", 100).is_none());
        let before = s.digest();
        assert_eq!(s.remove_expired(99), 0);
        assert_eq!(s.digest(), before);
        assert_eq!(s.remove_expired(100), 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.digest(), s.digest_by_scan());
        assert_eq!(s.remove_expired(1_000), 1);
        assert_eq!(s.reader().iter(None).count(), 1);
        assert_eq!(s.digest(), s.digest_by_scan());
    }

    #[test]
    fn digest_is_kept_incrementally_and_matches_a_scan() {
        let s = Store::new();
        assert_eq!(s.digest(), [0; 32]);
        for i in 0..500u64 {
            s.apply(rec(
                &format!("k{}", i % 97),
                i,
                (i % 3) as u16,
                Some("v"),
                0,
            ));
            if i % 7 == 0 {
                s.apply(rec(&format!("k{}", i % 13), i, 5, None, 1_000));
            }
        }
        assert_eq!(s.digest(), s.digest_by_scan());
        let other = Store::new();
        for r in s.reader().iter(None) {
            other.apply(r.clone());
        }
        assert_eq!(other.digest(), s.digest());
    }

    #[test]
    fn iter_by_kind() {
        let s = Store::new();
        s.apply(rec("a", 1, 1, Some("x"), 0));
        let mut t = rec("a", 1, 1, Some("keys"), 0);
        t.kind = Kind::TicketKeys;
        s.apply(t);
        assert_eq!(s.len(), 2);
        let r = s.reader();
        assert_eq!(r.iter(Some(Kind::TicketKeys)).count(), 1);
        assert_eq!(r.iter(Some(Kind::SessionBinding)).count(), 1);
        assert_eq!(r.iter(None).count(), 2);
    }

    #[test]
    fn concurrent_writers_converge_to_the_newest_and_an_exact_digest() {
        let s = Arc::new(Store::new());
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let v = if i % 5 == 0 { None } else { Some("v") };
                        s.apply(rec(&format!("k{}", i % 300), i, t, v, 0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.digest(), s.digest_by_scan());
        let r = s.reader();
        for rec in r.iter(None) {
            // The newest write of each key: the highest i for that key, from node 3.
            assert_eq!(rec.version.node_id, 3);
            assert!(rec.version.hlc >= 5_000 - 300);
        }
    }

    #[test]
    fn counts_by_kind_follow_inserts_and_removals() {
        let store = Store::new();
        let rec = |kind, key: &[u8], hlc, expires| Record {
            kind,
            key: key.into(),
            version: Version { hlc, node_id: 1 },
            expires,
            value: Some(b"v".as_slice().into()),
        };
        store.apply(rec(Kind::SessionBinding, b"a", 1, 10));
        store.apply(rec(Kind::SessionBinding, b"a", 2, 10)); // replaces: no new record
        store.apply(rec(Kind::SessionBinding, b"b", 1, 0));
        store.apply(rec(Kind::TicketKeys, b"k", 1, 0));
        assert_eq!(store.len_of(Kind::SessionBinding), 2);
        assert_eq!(store.len_of(Kind::TicketKeys), 1);
        assert_eq!(store.remove_expired(20), 1);
        assert_eq!(store.len_of(Kind::SessionBinding), 1);
        assert_eq!(
            store.len_of(Kind::SessionBinding),
            store.reader().iter(Some(Kind::SessionBinding)).count()
        );
    }
}
