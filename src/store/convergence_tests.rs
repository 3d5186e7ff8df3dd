//! Property tests of convergence: random records over a small key space, applied to several stores in
//! different orders, with duplicates, delays and replays, end in the same contents and digest; staged
//! snapshots merge only when they check out. Seeded (SplitMix64), so a failure names its seed.

use super::snapshot::{Stage, StageError};
use super::{Kind, Record, Store, Version};
use std::collections::HashMap;
use std::sync::Arc;

/// The balancer's seeded generator, with the `u64` ranges these tests draw from and a shuffle.
struct SplitMix(crate::balance::SplitMix64);

impl SplitMix {
    fn new(seed: u64) -> SplitMix {
        SplitMix(crate::balance::SplitMix64(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n as usize) as u64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Records over 12 keys of two kinds from 3 writers whose clocks overlap (so versions tie on the clock and
/// the node id decides; now and then two records even share a version and the encoding decides). About a
/// fifth are tombstones; some expire.
fn random_records(rng: &mut SplitMix, n: usize) -> Vec<Record> {
    (0..n)
        .map(|_| {
            let kind = if rng.below(4) == 0 {
                Kind::TicketKeys
            } else {
                Kind::SessionBinding
            };
            let key = format!("key-{}", rng.below(12));
            let version = Version {
                hlc: rng.below(40) << 16 | rng.below(3),
                node_id: [0x1111, 0x2222, 0x3333][rng.below(3) as usize],
            };
            let value = (rng.below(5) != 0).then(|| {
                let len = rng.below(24) as usize;
                Arc::from(vec![rng.below(4) as u8; len])
            });
            let expires = if rng.below(3) == 0 {
                1_000 + rng.below(100) as u32
            } else {
                0
            };
            Record {
                kind,
                key: key.into_bytes().into(),
                version,
                expires,
                value,
            }
        })
        .collect()
}

/// The store's records, in a canonical order.
fn contents(s: &Store) -> Vec<Record> {
    let mut v: Vec<Record> = s.reader().iter(None).cloned().collect();
    v.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    v
}

/// The model: per key, the record no other record of that key is newer than.
fn model(records: &[Record]) -> Vec<Record> {
    let mut m: HashMap<(Kind, Arc<[u8]>), Record> = HashMap::new();
    for r in records {
        let k = (r.kind, r.key.clone());
        match m.get(&k) {
            Some(old) if !r.newer_than(old) => {}
            _ => {
                m.insert(k, r.clone());
            }
        }
    }
    let mut v: Vec<Record> = m.into_values().collect();
    v.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    v
}

fn store_of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Store {
    let s = Store::new();
    for r in records {
        s.apply(r.clone());
    }
    s
}

/// Delivery over a bad network: the records cut into batches, each batch delivered once, twice or
/// three times, after a random delay (so batches overtake each other).
fn delivered_over_a_bad_network(rng: &mut SplitMix, records: &[Record]) -> Vec<Record> {
    let mut deliveries: Vec<(u64, &[Record])> = Vec::new();
    for (i, batch) in records.chunks(1 + rng.below(8) as usize).enumerate() {
        for _ in 0..1 + rng.below(3) {
            deliveries.push((i as u64 + rng.below(20), batch));
        }
    }
    deliveries.sort_by_key(|(at, _)| *at);
    deliveries
        .into_iter()
        .flat_map(|(_, b)| b.iter().cloned())
        .collect()
}

#[test]
fn stores_converge_whatever_the_order_duplicates_delays_and_replays() {
    for seed in 0..200u64 {
        let mut rng = SplitMix::new(seed);
        let n = 1 + rng.below(300) as usize;
        let records = random_records(&mut rng, n);
        let expected = model(&records);

        let in_order = store_of(&records);
        let reversed = store_of(records.iter().rev());
        let mut shuffled = records.clone();
        rng.shuffle(&mut shuffled);
        let shuffled = store_of(&shuffled);
        let mut with_duplicates: Vec<&Record> = records.iter().chain(records.iter()).collect();
        rng.shuffle(&mut with_duplicates);
        let with_duplicates = store_of(with_duplicates);
        let networked = store_of(&delivered_over_a_bad_network(&mut rng, &records));

        for (name, s) in [
            ("in order", &in_order),
            ("reversed", &reversed),
            ("shuffled", &shuffled),
            ("with duplicates", &with_duplicates),
            ("over a bad network", &networked),
        ] {
            assert_eq!(contents(s), expected, "seed {seed}: {name}: contents");
            assert_eq!(s.digest(), in_order.digest(), "seed {seed}: {name}: digest");
            assert_eq!(s.digest(), s.digest_by_scan(), "seed {seed}: {name}: scan");
            assert_eq!(s.len(), expected.len());
        }

        // Replaying any batch (here: every prefix-aligned batch of 16, twice) changes nothing.
        let d = in_order.digest();
        for batch in records.chunks(16) {
            for _ in 0..2 {
                for r in batch {
                    assert!(!in_order.apply(r.clone()).changed(), "seed {seed}: replay");
                }
            }
        }
        assert_eq!(in_order.digest(), d);

        // Expiry, run at the same moment everywhere, keeps them equal.
        let now = 1_000 + rng.below(120) as u32;
        let removed = in_order.remove_expired(now);
        assert_eq!(networked.remove_expired(now), removed);
        assert_eq!(contents(&networked), contents(&in_order), "seed {seed}");
        assert_eq!(networked.digest(), in_order.digest(), "seed {seed}");
        assert_eq!(in_order.digest(), in_order.digest_by_scan(), "seed {seed}");
    }
}

#[test]
fn stores_converge_under_concurrent_writers() {
    for seed in 0..20u64 {
        let mut rng = SplitMix::new(1_000 + seed);
        let records = random_records(&mut rng, 2_000);
        let sequential = store_of(&records);
        let shared = Arc::new(Store::new());
        let records = Arc::new(records);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (s, r) = (shared.clone(), records.clone());
                std::thread::spawn(move || {
                    // Every thread applies everything, starting at a different place.
                    let n = r.len();
                    for i in 0..n {
                        s.apply(r[(i + t * n / 4) % n].clone());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(contents(&shared), contents(&sequential), "seed {seed}");
        assert_eq!(shared.digest(), sequential.digest(), "seed {seed}");
        assert_eq!(shared.digest(), shared.digest_by_scan(), "seed {seed}");
    }
}

#[test]
fn staged_snapshots_merge_only_when_count_and_digest_match() {
    for seed in 0..100u64 {
        let mut rng = SplitMix::new(2_000 + seed);
        let (n, m) = (1 + rng.below(200) as usize, rng.below(100) as usize);
        let sender = store_of(&random_records(&mut rng, n));
        let local = random_records(&mut rng, m);
        let receiver = store_of(&local);
        let (count, digest) = (sender.len() as u64, sender.digest());
        let stage = || {
            let mut st = Stage::begin(seed, 10);
            for r in sender.reader().iter(None) {
                st.add(r.clone());
            }
            st
        };
        let before = (contents(&receiver), receiver.digest());

        let wrong_count = count + 1 + rng.below(3);
        assert!(matches!(
            stage().finish(wrong_count, digest),
            Err(StageError::CountMismatch { .. })
        ));
        let mut wrong_digest = digest;
        wrong_digest[rng.below(32) as usize] ^= 1 << rng.below(8);
        assert!(matches!(
            stage().finish(count, wrong_digest),
            Err(StageError::DigestMismatch { .. })
        ));
        assert_eq!(
            (contents(&receiver), receiver.digest()),
            before,
            "seed {seed}"
        );

        receiver.merge(stage().finish(count, digest).unwrap());
        // The union, last writer wins: as if every record had been applied here directly.
        let all: Vec<Record> = local
            .iter()
            .cloned()
            .chain(sender.reader().iter(None).cloned())
            .collect();
        assert_eq!(contents(&receiver), model(&all), "seed {seed}");
        assert_eq!(receiver.digest(), store_of(&all).digest(), "seed {seed}");
    }
}
