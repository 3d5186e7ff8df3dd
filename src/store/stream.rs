//! Origin streams (docs/PROTOCOL.md, "Concepts", "UPDATES"): the sending side numbers this node's own
//! records densely per epoch and keeps a backlog to resume reconnecting peers from; the receiving side
//! tracks how far it applied each origin's stream and never applies past a gap.

use super::record::Record;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why a peer cannot be resumed from the backlog and needs a snapshot instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeedSnapshot {
    #[error("peer holds stream epoch {held:#x}, ours is {current:#x}")]
    OtherEpoch { held: u64, current: u64 },
    #[error("sequence {wanted} is no longer in the backlog (oldest {oldest})")]
    Evicted { wanted: u64, oldest: u64 },
    #[error("peer claims sequence {applied} applied, we are at {last}")]
    Ahead { applied: u64, last: u64 },
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    record: Record,
    size: usize,
    at: Instant,
}

/// This node's own stream for the current epoch: sequence numbers 1, 2, 3, … and a backlog bounded by
/// bytes (the records' encoded size) and age. The newest record always stays in the backlog, so the byte
/// bound may be exceeded by one record. Owned by the replication thread.
#[derive(Debug)]
pub struct OriginStream {
    epoch: u64,
    last: u64,
    backlog: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl OriginStream {
    pub fn new(epoch: u64, max_bytes: usize, max_age: Duration) -> Self {
        OriginStream {
            epoch,
            last: 0,
            backlog: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last sequence assigned (0 before the first record).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Records and encoded bytes in the backlog.
    pub fn backlog(&self) -> (usize, usize) {
        (self.backlog.len(), self.bytes)
    }

    /// Appends one of this node's records at `now`; returns its sequence. Evicts what is over the bounds.
    pub fn push(&mut self, record: Record, now: Instant) -> u64 {
        self.last += 1;
        let size = record.encoded_len();
        self.bytes += size;
        self.backlog.push_back(Entry {
            seq: self.last,
            record,
            size,
            at: now,
        });
        self.evict(now);
        self.last
    }

    /// Drops records older than the age bound, then the oldest while over the byte bound.
    pub fn evict(&mut self, now: Instant) {
        while self.backlog.len() > 1 {
            let front = &self.backlog[0];
            if self.bytes <= self.max_bytes
                && now.saturating_duration_since(front.at) <= self.max_age
            {
                break;
            }
            self.bytes -= front.size;
            self.backlog.pop_front();
        }
    }

    /// How long ago record `seq` entered the stream — a peer's lag when `seq` is the first record it has
    /// not acknowledged. A record already evicted is at least as old as the oldest one kept, which is
    /// what is returned then. `None` when `seq` is past the last record (nothing is pending).
    pub fn age(&self, seq: u64, now: Instant) -> Option<Duration> {
        if seq == 0 || seq > self.last {
            return None;
        }
        let oldest = self.backlog.front()?.seq;
        let entry = self.backlog.get(seq.saturating_sub(oldest) as usize)?;
        Some(now.saturating_duration_since(entry.at))
    }

    /// What a peer that holds this stream up to `applied` of epoch `epoch` is missing, as
    /// `(sequence, record)` in order — or why it needs a snapshot: another epoch, or `applied + 1` evicted.
    pub fn since(
        &self,
        epoch: u64,
        applied: u64,
    ) -> Result<impl Iterator<Item = (u64, &Record)> + '_, NeedSnapshot> {
        if epoch != self.epoch {
            return Err(NeedSnapshot::OtherEpoch {
                held: epoch,
                current: self.epoch,
            });
        }
        if applied > self.last {
            return Err(NeedSnapshot::Ahead {
                applied,
                last: self.last,
            });
        }
        // Sequences are dense, so the backlog holds oldest..=last.
        let oldest = self.backlog.front().map_or(self.last + 1, |e| e.seq);
        if applied + 1 < oldest {
            return Err(NeedSnapshot::Evicted {
                wanted: applied + 1,
                oldest,
            });
        }
        let skip = (applied + 1 - oldest) as usize;
        Ok(self.backlog.range(skip..).map(|e| (e.seq, &e.record)))
    }
}

/// What to do with an incoming `UPDATES` batch (see [`PeerStream::accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Apply the batch's records from index `skip` on (the ones before were applied already); the
    /// stream is now applied through the batch's last sequence.
    Apply { skip: usize },
    /// Everything in it was applied already: ignore it.
    Duplicate,
    /// A gap before it: apply nothing, answer `RESUME { from }`.
    Resume { from: u64 },
    /// Not the epoch this stream is at (or none is held yet): apply nothing. The origin restarted, or the
    /// link's handshake did not set this stream up; the link is closed and the next hello decides
    /// between resume and snapshot.
    OtherEpoch { held: Option<u64> },
}

/// The receiving side of one origin's stream: which epoch of it this node holds, and the last sequence
/// applied. Owned by the replication thread, one per peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerStream {
    held: Option<(u64, u64)>,
}

impl PeerStream {
    /// Nothing of the origin's stream held (`HELLO` with `resume = 0`).
    pub fn new() -> Self {
        PeerStream::default()
    }

    /// `(epoch, applied)` of the stream held, for `HELLO`'s resume fields and `ACK`.
    pub fn held(&self) -> Option<(u64, u64)> {
        self.held
    }

    /// Sets the stream's position: after `WELCOME` with `start = 0` (`applied = from - 1`), or after a
    /// snapshot taken at `at` was merged and the buffered updates after it applied.
    pub fn reset(&mut self, epoch: u64, applied: u64) {
        self.held = Some((epoch, applied));
    }

    /// Decides on a batch of `count` records starting at sequence `first` of stream `epoch`, and on
    /// [`Batch::Apply`] advances the stream past it (the caller then applies the records; applying to the
    /// store cannot fail). Never applies past a gap: a batch is applied only if it starts at or before
    /// `applied + 1` and reaches past `applied`.
    pub fn accept(&mut self, epoch: u64, first: u64, count: u32) -> Batch {
        let Some((held, applied)) = self.held else {
            return Batch::OtherEpoch { held: None };
        };
        if epoch != held {
            return Batch::OtherEpoch { held: Some(held) };
        }
        if count == 0 || first == 0 {
            return Batch::Duplicate;
        }
        let last = first.saturating_add(u64::from(count) - 1);
        if last <= applied {
            return Batch::Duplicate;
        }
        if first > applied + 1 {
            return Batch::Resume { from: applied + 1 };
        }
        self.held = Some((epoch, last));
        Batch::Apply {
            skip: (applied + 1 - first) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Version};

    fn rec(i: u64, len: usize) -> Record {
        Record {
            kind: Kind::SessionBinding,
            key: i.to_be_bytes().as_slice().into(),
            version: Version { hlc: i, node_id: 1 },
            expires: 0,
            value: Some(vec![0u8; len].into()),
        }
    }

    fn seqs<'a>(it: impl Iterator<Item = (u64, &'a Record)>) -> Vec<u64> {
        it.map(|(s, r)| {
            assert_eq!(r.version.hlc, s);
            s
        })
        .collect()
    }

    #[test]
    fn dense_sequences_and_resume_from_the_backlog() {
        let t = Instant::now();
        let mut o = OriginStream::new(9, 1 << 20, Duration::from_secs(60));
        assert_eq!(seqs(o.since(9, 0).unwrap()), Vec::<u64>::new());
        for i in 1..=5 {
            assert_eq!(o.push(rec(i, 8), t), i);
        }
        assert_eq!(o.last(), 5);
        assert_eq!(seqs(o.since(9, 0).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(o.since(9, 3).unwrap()), [4, 5]);
        assert_eq!(seqs(o.since(9, 5).unwrap()), Vec::<u64>::new());
        assert_eq!(
            o.since(8, 3).err(),
            Some(NeedSnapshot::OtherEpoch {
                held: 8,
                current: 9
            })
        );
        assert_eq!(
            o.since(9, 6).err(),
            Some(NeedSnapshot::Ahead {
                applied: 6,
                last: 5
            })
        );
    }

    #[test]
    fn age_of_a_pending_record_or_of_the_oldest_kept() {
        let t = Instant::now();
        let size = rec(1, 100).encoded_len();
        let mut o = OriginStream::new(1, 2 * size, Duration::from_secs(60));
        assert_eq!(o.age(1, t), None, "nothing written");
        o.push(rec(1, 100), t);
        o.push(rec(2, 100), t + Duration::from_secs(1));
        o.push(rec(3, 100), t + Duration::from_secs(2));
        let now = t + Duration::from_secs(5);
        assert_eq!(o.age(3, now), Some(Duration::from_secs(3)));
        assert_eq!(o.age(2, now), Some(Duration::from_secs(4)));
        assert_eq!(
            o.age(1, now),
            Some(Duration::from_secs(4)),
            "evicted: the oldest kept"
        );
        assert_eq!(o.age(4, now), None, "acknowledged through the last");
    }

    #[test]
    fn backlog_is_bounded_by_bytes_and_age() {
        let t = Instant::now();
        let size = rec(1, 100).encoded_len();
        let mut o = OriginStream::new(1, 3 * size, Duration::from_secs(10));
        for i in 1..=5 {
            o.push(rec(i, 100), t);
        }
        assert_eq!(o.backlog(), (3, 3 * size));
        assert_eq!(seqs(o.since(1, 2).unwrap()), [3, 4, 5]);
        assert_eq!(
            o.since(1, 1).err(),
            Some(NeedSnapshot::Evicted {
                wanted: 2,
                oldest: 3
            })
        );
        // Age: the old ones go, the newest stays even when everything is old.
        o.push(rec(6, 100), t + Duration::from_secs(5));
        o.evict(t + Duration::from_secs(11));
        assert_eq!(seqs(o.since(1, 5).unwrap()), [6]);
        o.evict(t + Duration::from_secs(100));
        assert_eq!(o.backlog().0, 1);
        // A record larger than the bound stays alone.
        o.push(rec(7, 10_000), t + Duration::from_secs(100));
        assert_eq!(seqs(o.since(1, 6).unwrap()), [7]);
        assert!(o.since(1, 5).is_err());
    }

    #[test]
    fn peer_stream_applies_in_order_and_never_past_a_gap() {
        let mut p = PeerStream::new();
        assert_eq!(p.accept(5, 1, 3), Batch::OtherEpoch { held: None });
        p.reset(5, 0);
        assert_eq!(p.accept(5, 1, 3), Batch::Apply { skip: 0 });
        assert_eq!(p.held(), Some((5, 3)));
        // Replayed: ignored.
        assert_eq!(p.accept(5, 1, 3), Batch::Duplicate);
        assert_eq!(p.accept(5, 2, 2), Batch::Duplicate);
        // A gap: nothing applied, resume from 4.
        assert_eq!(p.accept(5, 6, 2), Batch::Resume { from: 4 });
        assert_eq!(p.held(), Some((5, 3)));
        // Overlapping: only the new tail.
        assert_eq!(p.accept(5, 2, 4), Batch::Apply { skip: 2 });
        assert_eq!(p.held(), Some((5, 5)));
        assert_eq!(p.accept(5, 6, 1), Batch::Apply { skip: 0 });
        // The origin restarted: another epoch is not applied.
        assert_eq!(p.accept(6, 1, 1), Batch::OtherEpoch { held: Some(5) });
        assert_eq!(p.held(), Some((5, 6)));
        assert_eq!(p.accept(5, 7, 0), Batch::Duplicate);
        assert_eq!(p.accept(5, u64::MAX, u32::MAX), Batch::Resume { from: 7 });
    }

    #[test]
    fn origin_and_peer_together_over_a_lossy_link() {
        // The origin sends batches of 3; some are lost, some arrive twice; the peer asks to resume.
        let t = Instant::now();
        let mut o = OriginStream::new(1, 1 << 20, Duration::from_secs(60));
        for i in 1..=30 {
            o.push(rec(i, 4), t);
        }
        let mut p = PeerStream::new();
        p.reset(1, 0);
        let mut got = Vec::new();
        let mut from = 1u64;
        let mut round = 0;
        while p.held() != Some((1, 30)) {
            round += 1;
            assert!(round < 100);
            let mut batch: Vec<_> = o.since(1, from - 1).unwrap().take(3).collect();
            if batch.is_empty() {
                // The origin sent everything but the tail was lost: the next hello resumes from what
                // the peer holds.
                let (_, applied) = p.held().unwrap();
                batch = o.since(1, applied).unwrap().take(3).collect();
            }
            let first = batch[0].0;
            from = first + batch.len() as u64;
            if round % 4 == 0 {
                continue; // lost
            }
            let deliveries = if round % 5 == 0 { 2 } else { 1 };
            for _ in 0..deliveries {
                match p.accept(1, first, batch.len() as u32) {
                    Batch::Apply { skip } => got.extend(batch[skip..].iter().map(|(s, _)| *s)),
                    Batch::Duplicate => {}
                    Batch::Resume { from: f } => from = f,
                    Batch::OtherEpoch { .. } => unreachable!(),
                }
            }
        }
        assert_eq!(got, (1..=30).collect::<Vec<_>>());
    }
}
