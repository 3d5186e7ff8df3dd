//! Rate limits (`[[rate_limits]]`): what a limit counts per (`key`), and the node-local token buckets
//! that enforce it. A cluster-wide limit is a fixed window counted with [`Counters`] instead.
//!
//! A bucket is kept as GCRA state (the "theoretical arrival time" of the next request, one `AtomicU64`
//! in nanoseconds): exactly a token bucket of `burst` tokens refilled at `rate / per`, updated with one
//! compare-and-swap and no lock. Buckets live in a lock-free map keyed by a hash of the limit's name and
//! the key's bytes; a request allocates only when its key has no bucket yet (a new client, user, …).
//! A bucket that refilled completely is forgotten by the sweep (it holds nothing a fresh one would not).

use super::counters::{CounterKey, Counters};
use crate::config::{PoolConfig, RateLimitConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a limit keeps a bucket for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address.
    Address,
    /// The logged-in user (requests without a login pass).
    User,
    /// The logged-in user's tenant (requests without a login pass).
    Tenant,
    /// One bucket for the whole route.
    Route,
    /// A request header's value (lowercase name; requests without it pass).
    Header(Box<str>),
}

impl LimitKey {
    /// Parses `address`, `user`, `tenant`, `route` or `header:NAME`.
    pub fn parse(s: &str) -> Option<LimitKey> {
        Some(match s {
            "address" => LimitKey::Address,
            "user" => LimitKey::User,
            "tenant" => LimitKey::Tenant,
            "route" => LimitKey::Route,
            _ => {
                let name = s.strip_prefix("header:")?;
                if name.is_empty() || !name.chars().all(crate::config::is_header_char) {
                    return None;
                }
                LimitKey::Header(name.to_ascii_lowercase().into())
            }
        })
    }
}

/// One compiled `[[rate_limits]]` entry.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub name: Box<str>,
    pub key: LimitKey,
    pub rate: u64,
    pub per: Duration,
    pub burst: u64,
    pub cluster_wide: bool,
    /// The `RateLimit-Policy` field value (`"api";q=100;w=60`), written once here.
    pub policy: Box<str>,
    /// The tenant tiers with a rate of their own (`tiers`), by name.
    pub tiers: Box<[Tier]>,
    /// Indexed by pool (config order, as `AuthSettings::pools`): the index in `tiers` of the pool's
    /// tier, when this limit lists it.
    pub pool_tiers: Box<[Option<usize>]>,
}

/// A tier's own rate in one limit (`tiers = { gold = 1000 }`).
#[derive(Debug, Clone)]
pub struct Tier {
    pub name: Box<str>,
    pub rate: u64,
    /// The limit's burst scaled by `rate / limit rate` (at least 1).
    pub burst: u64,
    /// The `RateLimit-Policy` field value with this tier's quota.
    pub policy: Box<str>,
}

impl RateLimit {
    /// Compiles a validated entry (an unknown key falls back to the address); `pools` resolves each
    /// pool's `tier` once, so a request finds its tier by index.
    pub fn build(c: &RateLimitConfig, pools: &BTreeMap<String, PoolConfig>) -> RateLimit {
        let w = c.per.as_secs().max(1);
        let rate = c.rate.max(1);
        let burst = c.burst.unwrap_or(c.rate).max(1);
        let tiers: Box<[Tier]> = c
            .tiers
            .iter()
            .map(|(name, &tier_rate)| {
                let tier_rate = tier_rate.max(1);
                let scaled = u128::from(burst) * u128::from(tier_rate) / u128::from(rate);
                Tier {
                    name: name.as_str().into(),
                    rate: tier_rate,
                    burst: scaled.clamp(1, u128::from(u64::MAX)) as u64,
                    policy: format!("{:?};q={tier_rate};w={w}", c.name).into(),
                }
            })
            .collect();
        let pool_tiers = pools
            .values()
            .map(|p| {
                let tier = p.tier.as_deref()?;
                tiers.iter().position(|t| &*t.name == tier)
            })
            .collect();
        RateLimit {
            name: c.name.as_str().into(),
            key: LimitKey::parse(&c.key).unwrap_or(LimitKey::Address),
            rate,
            per: c.per,
            burst,
            cluster_wide: c.cluster_wide,
            policy: format!("{:?};q={};w={w}", c.name, c.rate).into(),
            tiers,
            pool_tiers,
        }
    }

    /// The tier (index in `tiers`) of a request whose tenant is pool `pool`: `None` when it has no
    /// tenant, or its pool's tier is not listed by this limit (then `rate` applies).
    pub fn tier_of(&self, pool: Option<usize>) -> Option<usize> {
        self.pool_tiers.get(pool?).copied().flatten()
    }

    /// The `RateLimit-Policy` value for a request of `tier`.
    pub fn policy(&self, tier: Option<usize>) -> &str {
        match tier.and_then(|t| self.tiers.get(t)) {
            Some(t) => &t.policy,
            None => &self.policy,
        }
    }

    /// Takes one request from the bucket or window of `key` (the key's bytes) at the rate of `tier`
    /// (see [`RateLimit::tier_of`]), at `now` (monotonic) and `unix_now` (seconds, for cluster-wide
    /// windows every node numbers alike). A tier's requests have buckets and windows of their own.
    pub fn check(
        &self,
        key: &[u8],
        tier: Option<usize>,
        counters: &Counters,
        now: Instant,
        unix_now: u32,
    ) -> Decision {
        let tier = tier.and_then(|t| self.tiers.get(t));
        let (rate, burst) = tier.map_or((self.rate, self.burst), |t| (t.rate, t.burst));
        if self.cluster_wide {
            self.check_window(
                key,
                tier.map(|t| t.name.as_bytes()),
                rate,
                counters,
                unix_now,
            )
        } else {
            let name = self.name.as_bytes();
            let id = match tier {
                None => CounterKey::of(&[b"rate", name, key]),
                Some(t) => CounterKey::of(&[b"rate-tier", name, t.name.as_bytes(), key]),
            };
            let interval = (self.per.as_nanos() / u128::from(rate)).max(1) as u64;
            counters.buckets().take(id, now, interval, burst)
        }
    }

    /// A fixed window of `per` seconds numbered from the Unix epoch: admitted while the cluster-wide
    /// total (own share + peers' replicated shares) is under `rate`. A refused request is not counted,
    /// so a client that keeps trying does not push its window further out.
    fn check_window(
        &self,
        key: &[u8],
        tier: Option<&[u8]>,
        rate: u64,
        counters: &Counters,
        unix_now: u32,
    ) -> Decision {
        let per = self.per.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        let window = unix_now / per;
        let end = (window + 1).saturating_mul(per);
        let reset = u64::from(end - unix_now);
        // One new counter per key and window: one allocation per client (or user, …) per window.
        let name = self.name.as_bytes();
        let w = window.to_be_bytes();
        let id = match tier {
            None => CounterKey::of(&[b"rate-window", name, key, &w]),
            Some(t) => CounterKey::of(&[b"rate-window-tier", name, t, key, &w]),
        };
        let total = counters.total(&id, unix_now);
        if total >= rate {
            return Decision::Deny { retry_after: reset };
        }
        counters.add(id, 1, end.saturating_add(per));
        Decision::Allow {
            remaining: rate - total - 1,
            reset,
        }
    }
}

/// What a limit said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `remaining` more fit now, and the quota is whole again in `reset` seconds.
    Allow { remaining: u64, reset: u64 },
    /// Over the limit: one more request fits in `retry_after` seconds (at least 1).
    Deny { retry_after: u64 },
}

/// The node's token buckets, shared by every worker.
#[derive(Debug)]
pub struct Buckets {
    /// GCRA state per bucket: nanoseconds since `epoch` at which the bucket is full again.
    map: papaya::HashMap<CounterKey, AtomicU64>,
    epoch: Instant,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            map: papaya::HashMap::new(),
            epoch: Instant::now(),
        }
    }
}

impl Buckets {
    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Takes a token from bucket `id` (one token per `interval` ns, `burst` at most). Lock-free; allocates
    /// only for a bucket not seen before.
    pub fn take(&self, id: CounterKey, now: Instant, interval: u64, burst: u64) -> Decision {
        let now = self.nanos(now);
        // A rate above one per nanosecond (a deny rule of 2e9 requests/s) is one per nanosecond.
        let interval = interval.max(1);
        let tolerance = interval.saturating_mul(burst);
        let map = self.map.pin();
        let tat = match map.get(&id) {
            Some(t) => t,
            None => map.get_or_insert_with(id, || AtomicU64::new(0)),
        };
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let next = current.max(now).saturating_add(interval);
            let ahead = next - now;
            if ahead > tolerance {
                let wait = ahead - tolerance;
                return Decision::Deny {
                    retry_after: wait.div_ceil(1_000_000_000).max(1),
                };
            }
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return Decision::Allow {
                        remaining: (tolerance - ahead) / interval,
                        reset: ahead.div_ceil(1_000_000_000),
                    };
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Forgets every bucket that is full again at `now`. Returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        let map = self.map.pin();
        map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_burst_through_then_one_per_interval() {
        let b = Buckets::default();
        let t0 = Instant::now();
        let id = CounterKey::of(&[b"a"]);
        let second = 1_000_000_000;
        let allowed = (0..30)
            .filter(|_| matches!(b.take(id, t0, second, 10), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 10);
        assert_eq!(
            b.take(id, t0, second, 10),
            Decision::Deny { retry_after: 1 }
        );
        // Two intervals later: two more.
        let t2 = t0 + Duration::from_secs(2);
        let allowed = (0..5)
            .filter(|_| matches!(b.take(id, t2, second, 10), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 2);
        // Another key has its own bucket.
        assert!(matches!(
            b.take(CounterKey::of(&[b"b"]), t0, second, 10),
            Decision::Allow { remaining: 9, .. }
        ));
        // Full again long after: swept.
        assert_eq!(b.sweep(t0 + Duration::from_secs(60)), 0);
    }

    #[test]
    fn a_cluster_wide_window_counts_to_rate() {
        let counters = Counters::new(0, vec![], None);
        let limit = RateLimit::build(
            &RateLimitConfig {
                name: "api".into(),
                key: "address".into(),
                rate: 5,
                per: Duration::from_secs(60),
                burst: None,
                cluster_wide: true,
                tiers: BTreeMap::new(),
            },
            &BTreeMap::new(),
        );
        assert_eq!(&*limit.policy, "\"api\";q=5;w=60");
        let now = Instant::now();
        let allowed = (0..12)
            .filter(|_| {
                matches!(
                    limit.check(b"k", None, &counters, now, 120),
                    Decision::Allow { .. }
                )
            })
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(
            limit.check(b"k", None, &counters, now, 150),
            Decision::Deny { retry_after: 30 }
        );
        // The next window starts afresh.
        assert!(matches!(
            limit.check(b"k", None, &counters, now, 180),
            Decision::Allow { remaining: 4, .. }
        ));
    }

    #[test]
    fn a_tier_has_its_own_rate_burst_and_buckets() {
        let counters = Counters::new(0, vec![], None);
        let pool = |tier: Option<&str>| PoolConfig {
            tier: tier.map(String::from),
            ..toml::from_str("").unwrap()
        };
        let pools: BTreeMap<String, PoolConfig> = [
            ("a".to_string(), pool(Some("gold"))),
            ("b".to_string(), pool(Some("free"))),
            ("c".to_string(), pool(None)),
            ("d".to_string(), pool(Some("silver"))),
        ]
        .into();
        let limit = RateLimit::build(
            &RateLimitConfig {
                name: "t".into(),
                key: "tenant".into(),
                rate: 10,
                per: Duration::from_secs(60),
                burst: Some(20),
                cluster_wide: false,
                tiers: [("gold".to_string(), 30), ("free".to_string(), 2)].into(),
            },
            &pools,
        );
        // Pools in config order; a pool without a tier, or with one the limit does not list: `rate`.
        let tiers: Vec<Option<usize>> = (0..5).map(|p| limit.tier_of(Some(p))).collect();
        assert_eq!(tiers, [Some(1), Some(0), None, None, None]);
        assert_eq!(limit.tier_of(None), None);
        assert_eq!(limit.tiers[1].burst, 60);
        assert_eq!(limit.tiers[0].burst, 4);
        assert_eq!(limit.policy(Some(1)), "\"t\";q=30;w=60");
        assert_eq!(limit.policy(None), "\"t\";q=10;w=60");
        let now = Instant::now();
        let admitted = |tier: Option<usize>| {
            (0..100)
                .filter(|_| {
                    matches!(
                        limit.check(b"k", tier, &counters, now, 0),
                        Decision::Allow { .. }
                    )
                })
                .count()
        };
        // Same key, separate buckets: gold 60, free 4, untiered 20.
        assert_eq!(admitted(Some(1)), 60);
        assert_eq!(admitted(Some(0)), 4);
        assert_eq!(admitted(None), 20);
    }

    #[test]
    fn keys_parse() {
        assert_eq!(LimitKey::parse("tenant"), Some(LimitKey::Tenant));
        assert_eq!(
            LimitKey::parse("header:X-Api-Key"),
            Some(LimitKey::Header("x-api-key".into()))
        );
        assert_eq!(LimitKey::parse("header:"), None);
        assert_eq!(LimitKey::parse("cookie"), None);
    }
}
