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
    records: Vec<Record>,
    sum: DigestSum,
}

impl Stage {
    /// A snapshot of the stream of epoch `epoch`, taken at its sequence `at` (`SNAPSHOT_BEGIN`).
    pub fn begin(epoch: u64, at: u64) -> Stage {
        Stage {
            epoch,
            at,
            records: Vec::new(),
            sum: DigestSum::default(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn at(&self) -> u64 {
        self.at
    }

    /// Records staged so far.
    pub fn count(&self) -> u64 {
        self.records.len() as u64
    }

    /// Stages one record (from `SNAPSHOT_RECORDS`).
    pub fn add(&mut self, record: Record) {
        self.sum = self.sum + DigestSum::of(&record);
        self.records.push(record);
    }

    /// Checks the staged records against `SNAPSHOT_END`'s count and digest (the digest of exactly the
    /// records the sender put in the snapshot, computed as a store's digest is). Only a snapshot that
    /// matches comes back, as [`Verified`], the one thing [`Store::merge`] takes.
    pub fn finish(self, count: u64, digest: [u8; 32]) -> Result<Verified, StageError> {
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
    records: Vec<Record>,
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

    pub fn records(&self) -> &[Record] {
        &self.records
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
        for r in snapshot.records {
            match self.apply(r) {
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
        assert!(matches!(err, StageError::CountMismatch { announced, staged } if announced == n + 1 && staged == n));
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
        assert_eq!(get("k1").unwrap().value.as_deref(), Some(&b"newer here"[..]));
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
}
