//! The deny list (`[deny]`): addresses refused at accept time, before a byte is parsed — statically
//! listed blocks, and addresses a rule banned for a while. A ban is a replicated record (`Kind::Deny`,
//! keyed by the address's 4 or 16 bytes, expiring when the ban lifts), so every node of the cluster
//! refuses the address within a replication delay of the node that banned it. Allowed addresses are
//! never limited: no rate limit, rule or deny entry applies to them.
//!
//! The accept-time check is one scan of the (short) configured blocks and one lock-free store lookup,
//! with no allocation.

use super::counters::CounterKey;
use super::rate::{Buckets, Decision};
use crate::config::DenyConfig;
use crate::store::{Kind, Store, StoreWriter};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address as 16 bytes (IPv4 as its mapped form), masked.
    net: u128,
    /// Prefix length over the 128 bits.
    bits: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().ok()?;
        let bits = match (ip, prefix) {
            (IpAddr::V4(_), Some(p)) if p <= 32 => 96 + p,
            (IpAddr::V6(_), Some(p)) if p <= 128 => p,
            (_, Some(_)) => return None,
            (_, None) => 128,
        };
        Some(Cidr {
            net: bits128(ip) & mask(bits),
            bits,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        bits128(ip) & mask(self.bits) == self.net
    }

    /// The IPv4 addresses the block covers, first and last (IPv4 is the IPv4-mapped part of the
    /// space: `::/0` covers it all, `2001:db8::/32` none of it).
    pub fn v4_range(&self) -> Option<(u32, u32)> {
        const MAPPED_FIRST: u128 = 0xffff << 32;
        const MAPPED_LAST: u128 = MAPPED_FIRST | 0xffff_ffff;
        let first = self.net.max(MAPPED_FIRST);
        let last = (self.net | !mask(self.bits)).min(MAPPED_LAST);
        (first <= last).then(|| ((first - MAPPED_FIRST) as u32, (last - MAPPED_FIRST) as u32))
    }
}

fn bits128(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(bits: u8) -> u128 {
    match bits {
        0 => 0,
        b => u128::MAX << (128 - u32::from(b.min(128))),
    }
}

/// A rule: more than `requests_per_sec` from one address on one node bans it for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyRule {
    pub requests_per_sec: u64,
    pub ban: Duration,
}

/// A rule: more than `per_min` requests refused as malformed from one address on one node within a
/// minute (a token bucket of `per_min` refilled at `per_min` per minute) bans it for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRequestRule {
    pub per_min: u64,
    pub ban: Duration,
}

/// `[deny]` compiled.
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    /// Compile the list into the listeners' kernel filter (`kernel_filter`).
    pub kernel_filter: bool,
    pub allow: Box<[Cidr]>,
    pub deny: Box<[Cidr]>,
    /// The `requests_per_sec` rules.
    pub rules: Box<[DenyRule]>,
    /// The `bad_requests_per_min` rules.
    pub bad_requests: Box<[BadRequestRule]>,
}

impl DenyList {
    /// Compiles a validated `[deny]` (entries that do not parse were refused by validation).
    pub fn build(c: &DenyConfig) -> DenyList {
        DenyList {
            kernel_filter: c.kernel_filter,
            allow: c.allow.iter().filter_map(|s| Cidr::parse(s)).collect(),
            deny: c.deny.iter().filter_map(|s| Cidr::parse(s)).collect(),
            rules: c
                .rules
                .iter()
                .filter_map(|r| {
                    Some(DenyRule {
                        requests_per_sec: r.requests_per_sec?,
                        ban: r.ban,
                    })
                })
                .collect(),
            bad_requests: c
                .rules
                .iter()
                .filter_map(|r| {
                    Some(BadRequestRule {
                        per_min: r.bad_requests_per_min?,
                        ban: r.ban,
                    })
                })
                .collect(),
        }
    }

    /// Some rule bans addresses (so a request checks whether its address was banned meanwhile).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty() || !self.bad_requests.is_empty()
    }

    /// Counts a request from `ip` that tether refused as malformed against the `bad_requests_per_min`
    /// rules (node-local buckets; allowed addresses are not counted). Returns the rule whose bucket
    /// overflowed: the caller bans the address. Allocates only for an address's first bad request.
    pub fn bad_request(
        &self,
        ip: IpAddr,
        buckets: &Buckets,
        now: Instant,
    ) -> Option<BadRequestRule> {
        if self.bad_requests.is_empty() || self.allows(ip) {
            return None;
        }
        let (addr, len) = address_key(ip);
        self.bad_requests.iter().enumerate().find_map(|(i, rule)| {
            let id =
                CounterKey::of(&[b"deny-bad-request", &(i as u32).to_be_bytes(), &addr[..len]]);
            let per_min = rule.per_min.max(1);
            let interval = (60_000_000_000 / u128::from(per_min)).max(1) as u64;
            match buckets.take(id, now, interval, per_min) {
                Decision::Deny { .. } => Some(*rule),
                Decision::Allow { .. } => None,
            }
        })
    }

    /// `ip` is on the allow list: never limited.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }

    /// Whether a connection from `ip` is refused at accept: listed, or banned (by any node) at `now`,
    /// and not allowed.
    pub fn refuses(&self, ip: IpAddr, store: Option<&Store>, now: u32) -> bool {
        if self.allows(ip) {
            return false;
        }
        self.deny.iter().any(|c| c.contains(ip)) || store.is_some_and(|s| banned(s, ip, now))
    }
}

/// The record key of an address: its 4 (IPv4) or 16 bytes.
pub fn address_key(ip: IpAddr) -> ([u8; 16], usize) {
    let mut k = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            k[..4].copy_from_slice(&v4.octets());
            (k, 4)
        }
        IpAddr::V6(v6) => {
            k.copy_from_slice(&v6.octets());
            (k, 16)
        }
    }
}

/// `ip` has a live ban in the store (lock-free, no allocation).
pub fn banned(store: &Store, ip: IpAddr, now: u32) -> bool {
    let (k, n) = address_key(ip);
    store.reader().get(Kind::Deny, &k[..n], now).is_some()
}

/// Bans `ip` until `until` (seconds since the Unix epoch) on every node, saying why.
pub fn ban(writer: &StoreWriter, ip: IpAddr, reason: &str, until: u32) {
    let (k, n) = address_key(ip);
    if writer
        .put(Kind::Deny, &k[..n], reason.as_bytes(), until)
        .is_err()
    {
        log::warn!("deny list: the replication queue is full; {ip} banned on this node only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_contain_their_addresses() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.2").unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.3".parse().unwrap()));
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn allowed_addresses_are_never_refused() {
        let list = DenyList::build(&DenyConfig {
            allow: vec!["127.0.0.1".into()],
            deny: vec!["127.0.0.0/8".into()],
            ..DenyConfig::default()
        });
        assert!(!list.refuses("127.0.0.1".parse().unwrap(), None, 0));
        assert!(list.refuses("127.0.0.5".parse().unwrap(), None, 0));
        assert!(!list.refuses("10.0.0.1".parse().unwrap(), None, 0));
    }

    #[test]
    fn the_bad_request_past_a_rule_bans() {
        let list = DenyList::build(&DenyConfig {
            kernel_filter: true,
            allow: vec!["127.0.0.1".into()],
            deny: vec![],
            rules: vec![
                crate::config::DenyRule {
                    requests_per_sec: Some(100),
                    bad_requests_per_min: None,
                    ban: Duration::from_secs(60),
                },
                crate::config::DenyRule {
                    requests_per_sec: None,
                    bad_requests_per_min: Some(3),
                    ban: Duration::from_secs(600),
                },
            ],
        });
        assert_eq!(list.rules.len(), 1);
        assert_eq!(list.bad_requests.len(), 1);
        let buckets = Buckets::default();
        let now = Instant::now();
        let count = |ip: &str| {
            (0..10)
                .position(|_| {
                    list.bad_request(ip.parse().unwrap(), &buckets, now)
                        .is_some()
                })
                .map(|i| i + 1)
        };
        // The fourth bad request within the minute is over 3 per minute.
        assert_eq!(count("10.0.0.1"), Some(4));
        assert_eq!(
            list.bad_request("10.0.0.2".parse().unwrap(), &buckets, now),
            None
        );
        // An allowed address is never counted.
        assert_eq!(count("127.0.0.1"), None);
        // A minute later, three more fit again.
        let later = now + Duration::from_secs(60);
        let again = (0..4)
            .filter(|_| {
                list.bad_request("10.0.0.1".parse().unwrap(), &buckets, later)
                    .is_none()
            })
            .count();
        assert_eq!(again, 3);
    }
}
