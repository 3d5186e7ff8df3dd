//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a prime size M in which every
//! backend owns about M / N entries, in proportion to its weight. A key's entry is `hash % M`.
//!
//! Why Maglev: a lookup is one array read (no ring search), the load is even to within a fraction of a
//! percent, and adding or removing one of N backends moves about 1/N of the keys.
//!
//! The table depends only on the set of backend addresses and weights: backends are placed in address
//! order, and their permutations come from SipHash-1-3 of the address under fixed keys. So every worker,
//! every reload and every tether process with the same backends builds the same table and sends a key to
//! the same backend.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::net::SocketAddr;

/// Fixed SipHash keys for request keys (`hash_on`). Changing them moves every key: don't.
const KEY_HASH: (u64, u64) = (0x7465_7468_6572_2d6b, 0x6579_2d68_6173_6831);
/// Fixed SipHash keys for the two permutation hashes of a backend address.
const OFFSET_HASH: (u64, u64) = (0x6d61_676c_6576_2d6f, 0x6666_7365_742d_3031);
const SKIP_HASH: (u64, u64) = (0x6d61_676c_6576_2d73, 0x6b69_702d_3032_3033);

/// Smallest table size; 65537 is the paper's choice for production.
pub const MIN_TABLE_SIZE: usize = 65_537;

fn sip(keys: (u64, u64), bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(keys.0, keys.1);
    h.write(bytes);
    h.finish()
}

/// The hash of a request key (client address bytes, a header or cookie value). Deterministic: the same
/// bytes give the same number in every worker and every process.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    sip(KEY_HASH, bytes)
}

/// A built lookup table: entry → index of a backend in the cluster's list.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Builds the table for `backends` (address, weight ≥ 1), indexed as given. The order of `backends`
    /// does not change which address an entry names.
    pub fn build(backends: &[(SocketAddr, u32)]) -> Maglev {
        let n = backends.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let m = next_prime(MIN_TABLE_SIZE.max(100 * n));
        // Place backends in address order so the table does not depend on the order in the config.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| backends[i].0);
        let perms: Vec<(usize, usize)> = order
            .iter()
            .map(|&i| {
                let name = backends[i].0.to_string();
                let offset = (sip(OFFSET_HASH, name.as_bytes()) % m as u64) as usize;
                let skip = (sip(SKIP_HASH, name.as_bytes()) % (m as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m];
        let mut next = vec![0usize; n];
        let mut filled = 0;
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                // A backend of weight w takes w entries per round.
                for _ in 0..backends[i].1.max(1) {
                    let (offset, skip) = perms[k];
                    let mut c = (offset + next[k] * skip) % m;
                    while table[c] != EMPTY {
                        next[k] += 1;
                        c = (offset + next[k] * skip) % m;
                    }
                    table[c] = i as u32;
                    next[k] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Backend indices for `key`: its own entry first, then entries at rehashed positions (deterministic
    /// per key), then every entry in turn. The caller takes the first that can serve, so a down backend's
    /// keys spread over the others in proportion to their shares, while every other key stays where it
    /// was. (The entry right after a key's own would not do: Maglev fills entries in rounds, so
    /// neighbouring entries are correlated and one backend would inherit most of a down one's keys.)
    #[inline]
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        const REHASHES: u64 = 32;
        let m = self.table.len() as u64;
        let slot = move |k: u64| -> usize {
            if k == 0 {
                (key % m) as usize
            } else if k <= REHASHES {
                (mix(key ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % m) as usize
            } else {
                ((key + k - REHASHES - 1) % m) as usize
            }
        };
        let probes = if m == 0 { 0 } else { REHASHES + 1 + m };
        (0..probes).map(move |k| self.table[slot(k)] as usize)
    }
}

/// SplitMix64's finalizer: a well-mixed 64-bit function of a 64-bit value.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| {
                (
                    format!("10.0.{}.{}:8080", i / 200, i % 200 + 1)
                        .parse()
                        .unwrap(),
                    1,
                )
            })
            .collect()
    }

    fn owner(t: &Maglev, backends: &[(SocketAddr, u32)], key: u64) -> SocketAddr {
        backends[t.candidates(key).next().unwrap()].0
    }

    #[test]
    fn table_size_is_a_prime_of_at_least_100_entries_per_backend() {
        assert_eq!(Maglev::build(&addrs(3)).len(), 65_537);
        let big = Maglev::build(&addrs(700));
        assert!(big.len() >= 70_000 && is_prime(big.len()));
        assert!(Maglev::build(&[]).is_empty());
    }

    #[test]
    fn entries_are_shared_evenly_and_by_weight() {
        let t = Maglev::build(&addrs(7));
        let mut counts = [0usize; 7];
        for &e in &t.table {
            counts[e as usize] += 1;
        }
        let ideal = t.len() as f64 / 7.0;
        println!(
            "maglev entries per backend (7 backends, M={}): {counts:?}",
            t.len()
        );
        for c in counts {
            assert!((c as f64 - ideal).abs() / ideal < 0.02, "{counts:?}");
        }
        let mut weighted = addrs(3);
        weighted[0].1 = 3;
        let t = Maglev::build(&weighted);
        let mut counts = [0usize; 3];
        for &e in &t.table {
            counts[e as usize] += 1;
        }
        println!("maglev entries, weights 3:1:1: {counts:?}");
        let share = counts[0] as f64 / t.len() as f64;
        assert!((share - 0.6).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let a = addrs(5);
        let mut b = a.clone();
        b.reverse();
        let (ta, tb) = (Maglev::build(&a), Maglev::build(&b));
        for key in 0..10_000u64 {
            let key = hash_key(&key.to_le_bytes());
            assert_eq!(owner(&ta, &a, key), owner(&tb, &b, key));
        }
    }

    #[test]
    fn key_hash_is_fixed() {
        // Pinned: a different value would send every client to another backend after an upgrade.
        assert_eq!(hash_key(b"tether"), 0x7a28_d9a2_bb17_b95d);
        assert_ne!(hash_key(b"10.1.2.3"), hash_key(b"10.1.2.4"));
        assert_eq!(hash_key(b""), sip(KEY_HASH, b""));
    }
}
