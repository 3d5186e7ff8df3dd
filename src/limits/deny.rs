//! The deny list (`[deny]`): addresses refused at accept time, before a byte is parsed — statically
//! listed blocks, and addresses a rule banned for a while. A ban is a replicated record (`Kind::Deny`,
//! keyed by the address's 4 or 16 bytes, expiring when the ban lifts), so every node of the cluster
//! refuses the address within a replication delay of the node that banned it. Allowed addresses are
//! never limited: no rate limit, rule or deny entry applies to them.
//!
//! The accept-time check is one scan of the (short) configured blocks and one lock-free store lookup,
//! with no allocation.

use crate::config::DenyConfig;
use crate::store::{Kind, Store, StoreWriter};
use std::net::IpAddr;
use std::time::Duration;

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

/// `[deny]` compiled.
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    pub allow: Box<[Cidr]>,
    pub deny: Box<[Cidr]>,
    pub rules: Box<[DenyRule]>,
}

impl DenyList {
    /// Compiles a validated `[deny]` (entries that do not parse were refused by validation).
    pub fn build(c: &DenyConfig) -> DenyList {
        DenyList {
            allow: c.allow.iter().filter_map(|s| Cidr::parse(s)).collect(),
            deny: c.deny.iter().filter_map(|s| Cidr::parse(s)).collect(),
            rules: c
                .rules
                .iter()
                .map(|r| DenyRule {
                    requests_per_sec: r.requests_per_sec,
                    ban: r.ban,
                })
                .collect(),
        }
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
            rules: vec![],
        });
        assert!(!list.refuses("127.0.0.1".parse().unwrap(), None, 0));
        assert!(list.refuses("127.0.0.5".parse().unwrap(), None, 0));
        assert!(!list.refuses("10.0.0.1".parse().unwrap(), None, 0));
    }
}
