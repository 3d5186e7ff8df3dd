//! The order-independent digest of a set of records (docs/PROTOCOL.md, "Digest"): the sum modulo 2^256 of
//! SHA-256 of each record's canonical encoding, each hash read as a little-endian 256-bit number. A sum can
//! be kept up to date as records come and go (add the new record's hash, subtract the replaced one's), so a
//! store's digest costs nothing to read.

use super::record::{MAX_KEY, Record};
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A 256-bit sum of record hashes, as four little-endian 64-bit limbs (limb 0 least significant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DigestSum(pub [u64; 4]);

impl DigestSum {
    /// The hash of one record: SHA-256 of its canonical encoding ([`Record::encode`]), read as a
    /// little-endian number. Hashes the encoding piecewise, without building it in a buffer.
    pub fn of(record: &Record) -> DigestSum {
        let mut head = [0u8; 3 + MAX_KEY + 8 + 2 + 4 + 4];
        let key = &record.key[..record.key.len().min(MAX_KEY)];
        let mut n = 0;
        let mut put = |b: &[u8]| {
            head[n..n + b.len()].copy_from_slice(b);
            n += b.len();
        };
        put(&[
            record.kind as u8,
            u8::from(record.value.is_none()),
            key.len() as u8,
        ]);
        put(key);
        put(&record.version.hlc.to_be_bytes());
        put(&record.version.node_id.to_be_bytes());
        put(&record.expires.to_be_bytes());
        if let Some(v) = &record.value {
            put(&(v.len() as u32).to_be_bytes());
        }
        // RustCrypto's SHA-256 (SHA-NI when the CPU has it): for inputs this small, aws-lc's per-call
        // context set-up and clean-up cost several times the hashing itself.
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(&head[..n]);
        if let Some(v) = &record.value {
            h.update(v);
        }
        DigestSum::from_bytes(&h.finalize().into())
    }

    /// The sum of many records' hashes.
    pub fn of_all<'a>(records: impl IntoIterator<Item = &'a Record>) -> DigestSum {
        records
            .into_iter()
            .fold(DigestSum::default(), |s, r| s + DigestSum::of(r))
    }

    pub fn from_bytes(b: &[u8; 32]) -> DigestSum {
        let limb = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
        DigestSum([limb(0), limb(1), limb(2), limb(3)])
    }

    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, l) in self.0.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&l.to_le_bytes());
        }
        out
    }
}

/// Addition modulo 2^256.
impl std::ops::Add for DigestSum {
    type Output = DigestSum;
    fn add(self, other: DigestSum) -> DigestSum {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (s, c1) = self.0[i].overflowing_add(other.0[i]);
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *o = s;
            carry = c1 || c2;
        }
        DigestSum(out)
    }
}

/// Negation modulo 2^256 (the two's complement).
impl std::ops::Neg for DigestSum {
    type Output = DigestSum;
    fn neg(self) -> DigestSum {
        DigestSum(self.0.map(|l| !l)) + DigestSum([1, 0, 0, 0])
    }
}

/// Subtraction modulo 2^256.
impl std::ops::Sub for DigestSum {
    type Output = DigestSum;
    fn sub(self, other: DigestSum) -> DigestSum {
        self + -other
    }
}

/// Shards of the running sum, so writers on different threads rarely touch the same cache line. Any
/// change may go to any shard: the digest is the sum of them all.
const SHARDS: usize = 8;

/// A [`DigestSum`] many threads add to without a lock: each shard's limbs are added with `fetch_add`, a
/// limb that wraps carrying one into the next. After the last add has returned, the sum is exact; a read
/// that races an add may see its carry not yet propagated (an inexact value that no set of records has),
/// so digests of a store being written are compared only once the writes are known to be done.
#[derive(Debug, Default)]
pub struct AtomicSum {
    shards: [CachePadded<[AtomicU64; 4]>; SHARDS],
}

impl AtomicSum {
    /// Adds `delta` (a negated sum to subtract).
    pub fn add(&self, delta: DigestSum) {
        if delta == DigestSum::default() {
            return;
        }
        // The delta is a hash difference, uniformly spread: its low bits pick the shard.
        let shard = &self.shards[delta.0[0] as usize % SHARDS];
        let mut carry = 0u64;
        for (i, limb) in shard.iter().enumerate() {
            // `delta + carry` overflows only when delta's limb is all ones and carry is 1: it adds 0
            // here and carries 1 on.
            let (x, over) = delta.0[i].overflowing_add(carry);
            carry = u64::from(over);
            if x != 0 {
                let old = limb.fetch_add(x, Relaxed);
                if old.checked_add(x).is_none() {
                    carry += 1;
                }
            }
        }
        // A carry out of the top limb is dropped: modulo 2^256.
    }

    pub fn load(&self) -> DigestSum {
        self.shards.iter().fold(DigestSum::default(), |s, shard| {
            s + DigestSum(std::array::from_fn(|i| shard[i].load(Relaxed)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Version};
    use std::sync::Arc;

    fn rec(key: &[u8], value: Option<&[u8]>) -> Record {
        Record {
            kind: Kind::SessionBinding,
            key: key.into(),
            version: Version {
                hlc: 0x0123_4567_89ab_cdef,
                node_id: 0xbeef,
            },
            expires: 1_800_000_000,
            value: value.map(Arc::from),
        }
    }

    #[test]
    fn record_hash_is_sha256_of_the_canonical_encoding() {
        let big = vec![7u8; 100_000];
        for r in [
            rec(b"k", Some(b"value")),
            rec(&[0xff; 64], Some(&big)),
            rec(b"gone", None),
            rec(b"empty", Some(b"")),
        ] {
            let mut enc = Vec::new();
            r.encode(&mut enc);
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &enc);
            assert_eq!(DigestSum::of(&r).to_bytes(), d.as_ref());
        }
    }

    #[test]
    fn arithmetic_modulo_2_256() {
        let max = DigestSum([u64::MAX; 4]);
        let one = DigestSum([1, 0, 0, 0]);
        assert_eq!(max + one, DigestSum::default());
        assert_eq!(DigestSum::default() - one, max);
        assert_eq!(
            DigestSum([u64::MAX, 0, 0, 0]) + one,
            DigestSum([0, 1, 0, 0])
        );
        let a = DigestSum::of(&rec(b"a", Some(b"1")));
        let b = DigestSum::of(&rec(b"b", None));
        assert_eq!(a + b - a, b);
        assert_eq!(a + b, b + a);
        assert_eq!(a + -a, DigestSum::default());
        assert_eq!(DigestSum::from_bytes(&a.to_bytes()), a);
    }

    #[test]
    fn atomic_sum_matches_the_plain_sum_across_threads() {
        let sum = Arc::new(AtomicSum::default());
        let hashes: Vec<DigestSum> = (0..4_000u32)
            .map(|i| DigestSum::of(&rec(&i.to_be_bytes(), Some(b"v"))))
            .collect();
        let expected = hashes
            .iter()
            .step_by(2)
            .fold(DigestSum::default(), |s, h| s + *h);
        let hashes = Arc::new(hashes);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (sum, hashes) = (sum.clone(), hashes.clone());
                std::thread::spawn(move || {
                    for (i, h) in hashes.iter().enumerate().skip(t).step_by(4) {
                        sum.add(*h);
                        if i % 2 == 1 {
                            sum.add(-*h);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sum.load(), expected);
        // Carries through every limb.
        let s = AtomicSum::default();
        s.add(DigestSum([u64::MAX, u64::MAX, u64::MAX, 0]));
        s.add(DigestSum([1, 0, 0, 0]));
        assert_eq!(s.load(), DigestSum([0, 0, 0, 1]));
    }
}
