//! Staged snapshots (docs/PROTOCOL.md, "Snapshots"): a peer's full copy of its store is gathered apart
//! from the live store, checked against the count and digest the peer announced at its end, and only then
//! merged in, last writer wins. A snapshot that does not check out, or is cut off, leaves the store as it
//! was.
//!
//! What this module does not do: while a snapshot taken at sequence `at` of the sender's stream is being
//! received, the sender keeps streaming `UPDATES` after `at`. Those are buffered by the replication thread
//! (not applied to the stage, not to the store) and applied after the merge, whereupon the stream
//! continues from the last buffered sequence + 1. If the stage is discarded, so are they.

use super::digest::DigestSum;
use super::record::Record;
use super::table::{Applied, Store};

/// Why a finished snapshot was refused; the stage is discarded and the store keeps its old state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("snapshot count mismatch: {announced} announced, {staged} received")]
    CountMismatch { announced: u64, staged: u64 },
    #[error("snapshot digest mismatch: {announced} announced, {staged} computed")]
    DigestMismatch { announced: String, staged: String },
}

/// A snapshot being received: its records, kept apart from the store, with their count and running
/// digest.
#[derive(Debug)]
pub struct Stage {
    epoch: u64,
    at: u64,
    /// Each record with its hash, which the merge reuses.
    records: Vec<(Record, DigestSum)>,
    sum: DigestSum,
    /// Records counted by [`note`](Stage::note) rather than kept.
    noted: u64,
    started: std::time::Instant,
}

impl Stage {
    /// A snapshot of the stream of epoch `epoch`, taken at its sequence `at` (`SNAPSHOT_BEGIN`).
    pub fn begin(epoch: u64, at: u64) -> Stage {
        Stage {
            epoch,
            at,
            records: Vec::new(),
            sum: DigestSum::default(),
            noted: 0,
            started: std::time::Instant::now(),
        }
    }

    /// When `SNAPSHOT_BEGIN` arrived.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn at(&self) -> u64 {
        self.at
    }

    /// Records staged (or noted) so far.
    pub fn count(&self) -> u64 {
        self.records.len() as u64 + self.noted
    }

    /// Stages one record (from `SNAPSHOT_RECORDS`).
    pub fn add(&mut self, record: Record) {
        let hash = DigestSum::of(&record);
        self.sum = self.sum + hash;
        self.records.push((record, hash));
    }

    /// Counts `count` records that were not kept here (applied in place), whose hashes sum to `sum`:
    /// they take part in the count and digest check all the same.
    pub fn note(&mut self, sum: DigestSum, count: u64) {
        self.sum = self.sum + sum;
        self.noted += count;
    }

    /// Checks what was staged and noted against `SNAPSHOT_END`'s count and digest.
    pub fn check(&self, count: u64, digest: [u8; 32]) -> Result<(), StageError> {
        if self.count() != count {
            return Err(StageError::CountMismatch {
                announced: count,
                staged: self.count(),
            });
        }
        let staged = self.sum.to_bytes();
        if staged != digest {
            return Err(StageError::DigestMismatch {
                announced: hex(&digest),
                staged: hex(&staged),
            });
        }
        Ok(())
    }

    /// Checks the staged records against `SNAPSHOT_END`'s count and digest (the digest of exactly the
    /// records the sender put in the snapshot, computed as a store's digest is). Only a snapshot that
    /// matches comes back, as [`Verified`], the one thing [`Store::merge`] takes.
    pub fn finish(self, count: u64, digest: [u8; 32]) -> Result<Verified, StageError> {
        self.check(count, digest)?;
        Ok(Verified {
            epoch: self.epoch,
            at: self.at,
            records: self.records,
        })
    }
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A snapshot whose count and digest checked out.
#[derive(Debug)]
pub struct Verified {
    epoch: u64,
    at: u64,
    records: Vec<(Record, DigestSum)>,
}

impl Verified {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sender's stream sequence the snapshot was taken at: the stream continues from `at + 1`.
    pub fn at(&self) -> u64 {
        self.at
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> impl ExactSizeIterator<Item = &Record> + '_ {
        self.records.iter().map(|(r, _)| r)
    }
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    pub inserted: usize,
    pub replaced: usize,
    /// Records the store already had, or had something newer for.
    pub stale: usize,
}

impl Store {
    /// Merges a verified snapshot: each record is applied, last writer wins, so nothing newer the store
    /// holds is lost, and records the snapshot lacks stay (a merge is a union, not a replacement: the
    /// store's digest afterwards is the snapshot's only if it held nothing else).
    pub fn merge(&self, snapshot: Verified) -> Merged {
        let mut m = Merged::default();
        // Room for all of it when the store is (nearly) empty, the full-resync case; otherwise most
        // records are likely known already.
        if self.len() < snapshot.len() / 2 {
            self.reserve(snapshot.len() - self.len());
        }
        for (r, hash) in snapshot.records {
            match self.apply_hashed(r, Some(hash)) {
                Applied::Inserted => m.inserted += 1,
                Applied::Replaced => m.replaced += 1,
                Applied::Stale => m.stale += 1,
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Version};

    fn rec(key: &str, hlc: u64, value: Option<&str>) -> Record {
        Record {
            kind: Kind::SessionBinding,
            key: key.as_bytes().into(),
            version: Version { hlc, node_id: 1 },
            expires: 0,
            value: value.map(|v| v.as_bytes().into()),
        }
    }

    /// A sender's store and the `SNAPSHOT_END` it would send.
    fn sender() -> (Store, u64, [u8; 32]) {
        let s = Store::new();
        for i in 0..50 {
            s.apply(rec(&format!("k{i}"), 100 + i, Some("remote")));
        }
        s.apply(rec("gone", 500, None));
        let n = s.len() as u64;
        let d = s.digest();
        (s, n, d)
    }

    fn stage_of(s: &Store) -> Stage {
        let mut st = Stage::begin(7, 42);
        for r in s.reader().iter(None) {
            st.add(r.clone());
        }
        st
    }

    fn receiver() -> Store {
        let r = Store::new();
        r.apply(rec("k1", 999, Some("newer here")));
        r.apply(rec("k2", 1, Some("older here")));
        r.apply(rec("mine", 1, Some("only here")));
        r
    }

    #[test]
    fn a_wrong_count_or_digest_leaves_the_store_untouched() {
        let (s, n, d) = sender();
        let r = receiver();
        let before = (r.digest(), r.len());
        let err = stage_of(&s).finish(n + 1, d).unwrap_err();
        assert!(
            matches!(err, StageError::CountMismatch { announced, staged } if announced == n + 1 && staged == n)
        );
        let mut bad = d;
        bad[0] ^= 1;
        assert!(matches!(
            stage_of(&s).finish(n, bad),
            Err(StageError::DigestMismatch { .. })
        ));
        // A record missing (cut off) and one too many.
        let mut short = Stage::begin(7, 42);
        for r in s.reader().iter(None).skip(1) {
            short.add(r.clone());
        }
        assert!(short.finish(n, d).is_err());
        let mut altered = Stage::begin(7, 42);
        for r in s.reader().iter(None) {
            let mut r = r.clone();
            if r.key.as_ref() == b"k3" {
                r.expires = 1;
            }
            altered.add(r);
        }
        assert!(matches!(
            altered.finish(n, d),
            Err(StageError::DigestMismatch { .. })
        ));
        assert_eq!((r.digest(), r.len()), before);
    }

    #[test]
    fn a_right_snapshot_merges_last_writer_wins() {
        let (s, n, d) = sender();
        let r = receiver();
        let v = stage_of(&s).finish(n, d).unwrap();
        assert_eq!((v.epoch(), v.at(), v.len()), (7, 42, 51));
        let m = r.merge(v);
        assert_eq!(
            m,
            Merged {
                inserted: 49,
                replaced: 1,
                stale: 1
            }
        );
        let get = |k: &str| r.get(Kind::SessionBinding, k.as_bytes(), 0);
        assert_eq!(
            get("k1").unwrap().value.as_deref(),
            Some(&b"newer here"[..])
        );
        assert_eq!(get("k2").unwrap().value.as_deref(), Some(&b"remote"[..]));
        assert!(get("mine").is_some());
        assert!(get("gone").is_none());
        assert_eq!(r.len(), 52);
        assert_eq!(r.digest(), r.digest_by_scan());
    }

    #[test]
    fn an_empty_snapshot_checks_against_zero() {
        let v = Stage::begin(1, 0).finish(0, [0; 32]).unwrap();
        assert!(v.is_empty());
        assert_eq!(Store::new().merge(v), Merged::default());
    }

    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    /// The "full resync of 1,000,000 bindings" path, timed: build a sender's store, stage its records
    /// as a receiver would, verify count and digest, merge into an empty store; with memory per record
    /// (RSS delta) and bytes per record on the wire. Run alone, in release:
    /// `cargo test --release --lib store::snapshot -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing run: 1,000,000 records"]
    fn full_resync_of_a_million_bindings() {
        use std::time::Instant;
        const N: u64 = 1_000_000;
        let binding = |i: u64| Record {
            kind: Kind::SessionBinding,
            key: (i as u128)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                .to_be_bytes()
                .as_slice()
                .into(),
            version: Version {
                hlc: (1_750_000_000_000 << 16) + i,
                node_id: 0x1234,
            },
            expires: 1_900_000_000,
            value: Some((i % 64).to_be_bytes().as_slice().into()),
        };
        let rss0 = rss_bytes();
        let t = Instant::now();
        let sender = Store::new();
        for i in 0..N {
            sender.apply(binding(i));
        }
        let build = t.elapsed();
        let rss1 = rss_bytes();
        let t = Instant::now();
        let digest = sender.digest();
        let digest_o1 = t.elapsed();
        let t = Instant::now();
        assert_eq!(sender.digest_by_scan(), digest);
        let scan = t.elapsed();
        let t = Instant::now();
        let mut stage = Stage::begin(1, 0);
        for r in sender.reader().iter(None) {
            stage.add(r.clone());
        }
        let staged = t.elapsed();
        let t = Instant::now();
        let verified = stage.finish(N, digest).unwrap();
        let finish = t.elapsed();
        let receiver = Store::new();
        let t = Instant::now();
        receiver.merge(verified);
        let merge = t.elapsed();
        assert_eq!(receiver.digest(), digest);
        assert_eq!(receiver.len() as u64, N);
        let wire = binding(0).encoded_len();
        eprintln!(
            "1M bindings: build (make and apply each) {build:?}; digest() {digest_o1:?}; digest by scan {scan:?}; \
             resync: stage (with running digest) {staged:?} + finish {finish:?} + merge {merge:?} = {:?}; \
             memory: {} bytes/record (RSS delta of the store: map, records, keys, values); \
             wire: {wire} bytes/record ({} MB of snapshot records)",
            staged + finish + merge,
            rss1.saturating_sub(rss0) / N as usize,
            wire as u64 * N / 1_000_000,
        );
    }
}
