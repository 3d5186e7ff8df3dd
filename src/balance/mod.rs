//! Clusters and backends, and how a worker picks the backend for a request.
//!
//! The algorithms (`balance` in a cluster's config):
//!
//! - `round_robin`: backends in turn, one request each.
//! - `weighted_round_robin`: nginx's smooth weighted round robin.
//! - `least_outstanding`: the fewest attempts in flight (over all workers) per unit of weight; ties go
//!   by smooth weighted round robin, so idle backends share requests by weight.
//! - `p2c_ewma`: two distinct random backends, the one with the lower latency EWMA × (in flight + 1) /
//!   weight (Finagle's and Linkerd's power of two choices).
//! - `consistent_hash`: Maglev over `hash_on` (client IP, a header or a cookie).
//!
//! Picks read shared backend state with relaxed atomics, take no lock and allocate nothing; a worker's own
//! state (round robin positions, its random generator) lives in its [`Balancer`].

mod backend;
pub mod ewma;
pub mod maglev;

pub use backend::{
    AdminState, AttemptOutcome, BackendId, BackendState, clock_ms, clock_us, ramped_weight,
};

use crate::config::{BalanceAlgorithm, ClusterConfig, HashOn, HealthCheckConfig};
use crate::http::RequestHead;
use maglev::Maglev;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the balancer may know about a request when it picks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext {
    /// Key for hash-based algorithms (from the client address, a header or a cookie).
    pub hash_key: Option<u64>,
    /// A backend that just failed this request: avoided unless it is the only choice.
    pub avoid: Option<BackendId>,
}

/// The hash key of a request for `cluster`'s algorithm; `None` when the algorithm does not hash or the
/// request lacks the key (no such header or cookie: the request is then balanced by weighted round robin,
/// as HAProxy does for `balance hdr()`). Hashes the bytes in place: nothing is allocated.
pub fn hash_key(
    cluster: &Cluster,
    head: &RequestHead,
    bytes: &[u8],
    client: IpAddr,
) -> Option<u64> {
    match cluster.hash_on.as_ref()? {
        HashOn::ClientIp => Some(match client.to_canonical() {
            IpAddr::V4(ip) => maglev::hash_key(&ip.octets()),
            IpAddr::V6(ip) => maglev::hash_key(&ip.octets()),
        }),
        HashOn::Header(name) => head
            .header(bytes, name)
            .filter(|v| !v.is_empty())
            .map(maglev::hash_key),
        HashOn::Cookie(name) => {
            crate::http::cookie::request_cookie(&head.headers, bytes, name.as_bytes())
                .map(maglev::hash_key)
        }
    }
}

/// Hands out one `BackendState` per address, so a reload that keeps an address keeps its state.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    by_address: HashMap<SocketAddr, Arc<BackendState>>,
}

impl BackendRegistry {
    pub fn get_or_create(&mut self, address: SocketAddr) -> Arc<BackendState> {
        let next_id = self.by_address.len();
        self.by_address
            .entry(address)
            .or_insert_with(|| Arc::new(BackendState::new(next_id, address)))
            .clone()
    }

    /// One more than the highest id handed out.
    pub fn id_bound(&self) -> usize {
        self.by_address.len()
    }
}

/// A backend as one cluster sees it.
#[derive(Debug, Clone)]
pub struct ClusterBackend {
    pub state: Arc<BackendState>,
    pub weight: u32,
    /// Draining: no new requests, in-flight ones finish.
    pub drain: bool,
}

impl ClusterBackend {
    /// The weight picks use: the operator's (admin API), else the configured one. (The Maglev table of
    /// `consistent_hash` is built from the configured weights.)
    #[inline]
    pub fn weight(&self) -> u32 {
        self.state.weight_override().unwrap_or(self.weight)
    }

    /// May take a new request: up, not draining by config, and not drained or disabled by the operator.
    #[inline]
    pub fn eligible(&self) -> bool {
        !self.drain && self.state.is_up() && self.state.admitted()
    }
}

/// A pool of backends and how to pick among them.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub algorithm: BalanceAlgorithm,
    pub retries: u32,
    pub backends: Vec<ClusterBackend>,
    /// What `consistent_hash` hashes; `None` for the other algorithms.
    pub hash_on: Option<HashOn>,
    /// Slow start ramp in milliseconds; 0 is off.
    pub slow_start_ms: u64,
    /// Active checks, run by the health prober.
    pub health_check: Option<HealthCheckConfig>,
    /// The Maglev table (`consistent_hash` only), built once per snapshot and shared by every worker.
    maglev: Option<Maglev>,
    /// QoS: requests in flight per backend (0: unlimited), waiting requests per backend, wait bound.
    pub max_inflight: u32,
    pub max_queue: u32,
    pub queue_timeout: std::time::Duration,
}

impl Cluster {
    /// The cluster's entry for backend `id`, if it lists it.
    pub fn backend(&self, id: BackendId) -> Option<&ClusterBackend> {
        self.backends.iter().find(|b| b.state.id == id)
    }

    /// The cluster's entry for the backend at `address`.
    pub fn backend_at(&self, address: SocketAddr) -> Option<&ClusterBackend> {
        self.backends.iter().find(|b| b.state.address == address)
    }
}

impl Cluster {
    /// Builds a cluster; backend addresses must already be validated. Applies the cluster's passive-health
    /// settings to its backends' shared state.
    pub fn build(name: &str, config: &ClusterConfig, registry: &mut BackendRegistry) -> Self {
        let backends: Vec<ClusterBackend> = config
            .backends
            .iter()
            .filter_map(|b| {
                let address = b.address.parse().ok()?;
                Some(ClusterBackend {
                    state: registry.get_or_create(address),
                    weight: b.weight.max(1),
                    drain: b.drain,
                })
            })
            .collect();
        for b in &backends {
            b.state.configure_passive(&config.passive_health);
        }
        let consistent = config.balance == BalanceAlgorithm::ConsistentHash;
        let maglev = consistent.then(|| {
            let members: Vec<(SocketAddr, u32)> = backends
                .iter()
                .map(|b| (b.state.address, b.weight))
                .collect();
            Maglev::build(&members)
        });
        Cluster {
            name: name.to_string(),
            algorithm: config.balance,
            retries: config.retries,
            hash_on: if consistent {
                config.hash_on.clone()
            } else {
                None
            },
            slow_start_ms: config.slow_start.as_millis() as u64,
            health_check: config.health_check.clone(),
            backends,
            maglev,
            max_inflight: config.max_inflight,
            max_queue: config.max_queue,
            queue_timeout: config.queue_timeout,
        }
    }

    /// A backend's share of traffic now (weight × 1000, less during slow start). `now_ms` is only read
    /// when slow start is on.
    #[inline]
    fn share(&self, b: &ClusterBackend, now_ms: u64) -> u64 {
        ramped_weight(
            b.weight(),
            b.state.up_since_ms(),
            self.slow_start_ms,
            now_ms,
        )
    }

    /// The clock for [`Cluster::share`]: read only when slow start is configured.
    #[inline]
    fn share_clock(&self) -> u64 {
        if self.slow_start_ms > 0 {
            clock_ms()
        } else {
            0
        }
    }
}

/// One cluster's per-worker balancing state.
#[derive(Debug, Default, Clone)]
struct ClusterState {
    /// Smooth weighted round robin current weights, per backend.
    current: Vec<i64>,
    /// Plain round robin position.
    next: usize,
}

/// A worker's own balancing state for every cluster of one config snapshot. Per-worker state needs no
/// synchronisation; with N workers each cycling through the same weights, the whole process does too.
#[derive(Debug)]
pub struct Balancer {
    /// The snapshot generation `clusters` was built for.
    generation: u64,
    clusters: Vec<ClusterState>,
    rng: SplitMix64,
}

impl Default for Balancer {
    /// A balancer with its own random sequence (each worker's differs).
    fn default() -> Self {
        static SEEDS: AtomicU64 = AtomicU64::new(0x7465_7468_6572_0001);
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Balancer::with_seed(SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ time)
    }
}

impl Balancer {
    /// A balancer whose random choices (p2c) follow `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Balancer {
            generation: 0,
            clusters: Vec::new(),
            rng: SplitMix64(seed),
        }
    }

    /// Resets the state for a new snapshot's clusters.
    pub fn reset(&mut self, generation: u64, clusters: &[Arc<Cluster>]) {
        self.generation = generation;
        self.clusters = clusters
            .iter()
            .map(|c| ClusterState {
                current: vec![0; c.backends.len()],
                next: 0,
            })
            .collect();
    }

    /// Picks a backend of cluster `index` of snapshot `generation` that can take a request, avoiding
    /// `ctx.avoid` (a backend that just failed) unless it is the only choice; returns its index in
    /// `cluster.backends`. `None` when no backend is eligible.
    ///
    /// A request pinned to an older snapshot than the worker's (a retry after a reload) is balanced with
    /// fresh per-cluster state: the worker's state is for the new snapshot's clusters, whose order and
    /// sizes may differ.
    pub fn pick(
        &mut self,
        generation: u64,
        index: usize,
        cluster: &Cluster,
        ctx: &PickContext,
    ) -> Option<usize> {
        let mut scratch;
        let state = match self.clusters.get_mut(index) {
            Some(s) if generation == self.generation => s,
            _ => {
                // Rare path (allocates): a request from before a reload.
                scratch = ClusterState {
                    current: vec![0; cluster.backends.len()],
                    next: 0,
                };
                &mut scratch
            }
        };
        debug_assert_eq!(state.current.len(), cluster.backends.len());
        let rng = &mut self.rng;
        let mut pick = |avoid: Option<BackendId>| {
            let ok = |b: &ClusterBackend| b.eligible() && Some(b.state.id) != avoid;
            match cluster.algorithm {
                BalanceAlgorithm::RoundRobin => round_robin(state, cluster, ok),
                BalanceAlgorithm::WeightedRoundRobin => smooth_weighted(state, cluster, ok),
                BalanceAlgorithm::LeastOutstanding => least_outstanding(state, cluster, ok),
                BalanceAlgorithm::P2cEwma => p2c_ewma(rng, cluster, ok),
                BalanceAlgorithm::ConsistentHash => match (ctx.hash_key, &cluster.maglev) {
                    (Some(key), Some(table)) => consistent(table, key, cluster, ok),
                    _ => smooth_weighted(state, cluster, ok),
                },
            }
        };
        pick(ctx.avoid).or_else(|| ctx.avoid.and_then(|_| pick(None)))
    }
}

/// Backends in turn, one request each, from where the last pick stopped.
fn round_robin(
    state: &mut ClusterState,
    cluster: &Cluster,
    ok: impl Fn(&ClusterBackend) -> bool,
) -> Option<usize> {
    let n = cluster.backends.len();
    for step in 0..n {
        let i = (state.next + step) % n;
        if ok(&cluster.backends[i]) {
            state.next = (i + 1) % n;
            return Some(i);
        }
    }
    None
}

/// nginx's smooth weighted round robin over the backends `ok` accepts: every pick adds each one's weight
/// to its current weight, takes the largest, and subtracts the total from it. Picks interleave (weights
/// 2:1 give a,b,a) instead of bursting. Weights ramp during slow start.
fn smooth_weighted(
    state: &mut ClusterState,
    cluster: &Cluster,
    ok: impl Fn(&ClusterBackend) -> bool,
) -> Option<usize> {
    let now = cluster.share_clock();
    let current = &mut state.current;
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, b) in cluster.backends.iter().enumerate() {
        if !ok(b) {
            continue;
        }
        let w = cluster.share(b, now) as i64;
        current[i] += w;
        total += w;
        if best.is_none_or(|j| current[i] > current[j]) {
            best = Some(i);
        }
    }
    let i = best?;
    current[i] -= total;
    Some(i)
}

/// The backend with the fewest attempts in flight per unit of (slow-start ramped) weight; among equals,
/// smooth weighted round robin, so idle backends share requests by weight and equal ones take turns.
fn least_outstanding(
    state: &mut ClusterState,
    cluster: &Cluster,
    ok: impl Fn(&ClusterBackend) -> bool,
) -> Option<usize> {
    let now = cluster.share_clock();
    // inflight / share, compared without division: a/x < b/y ⇔ a·y < b·x.
    let mut best: Option<(u64, u64)> = None;
    for b in &cluster.backends {
        if !ok(b) {
            continue;
        }
        let load = (b.state.inflight() as u64, cluster.share(b, now));
        if best.is_none_or(|(n, w)| load.0 * w < n * load.1) {
            best = Some(load);
        }
    }
    let (n, w) = best?;
    // Loads read again may have moved since (other workers): a backend that is no longer among the least
    // loaded just drops out of this pick.
    smooth_weighted(state, cluster, |b| {
        ok(b) && b.state.inflight() as u64 * w <= n * cluster.share(b, now)
    })
    .or_else(|| smooth_weighted(state, cluster, &ok))
}

/// Power of two choices: two distinct random eligible backends, the cheaper one by latency EWMA × (in
/// flight + 1) / weight. One eligible backend is taken as is.
fn p2c_ewma(
    rng: &mut SplitMix64,
    cluster: &Cluster,
    ok: impl Fn(&ClusterBackend) -> bool,
) -> Option<usize> {
    let eligible = cluster.backends.iter().filter(|b| ok(b)).count();
    let nth = |k: usize| {
        cluster
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| ok(b))
            .nth(k)
            .map(|(i, _)| i)
    };
    match eligible {
        0 => None,
        1 => nth(0),
        n => {
            let a = rng.below(n);
            let mut b = rng.below(n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            let now = cluster.share_clock();
            let cost = |i: usize| {
                let be = &cluster.backends[i];
                // +1µs so a backend without samples yet still weighs its requests in flight.
                (be.state.latency_us() + 1.0) * (be.state.inflight() as f64 + 1.0)
                    / cluster.share(be, now) as f64
            };
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

/// The key's Maglev entry, or the next entry whose backend can serve when its own cannot.
fn consistent(
    table: &Maglev,
    key: u64,
    cluster: &Cluster,
    ok: impl Fn(&ClusterBackend) -> bool,
) -> Option<usize> {
    // Without an eligible backend the walk would visit every entry: look first (N, not M, steps).
    if !cluster.backends.iter().any(&ok) {
        return None;
    }
    table.candidates(key).find(|&i| ok(&cluster.backends[i]))
}

/// A small, fast generator for random choices (SplitMix64; not for anything secret).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias below 2^-32 for small n).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, PassiveHealthConfig};
    use std::time::Duration;

    fn config(algorithm: BalanceAlgorithm, weights: &[u32]) -> ClusterConfig {
        ClusterConfig {
            balance: algorithm,
            hash_on: (algorithm == BalanceAlgorithm::ConsistentHash).then_some(HashOn::ClientIp),
            retries: 2,
            tls: None,
            max_inflight: 0,
            max_queue: 1024,
            queue_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
            health_check: None,
            passive_health: PassiveHealthConfig::default(),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| BackendConfig {
                    address: format!("127.0.0.1:{}", 9000 + i),
                    weight: *w,
                    drain: false,
                })
                .collect(),
        }
    }

    fn cluster(algorithm: BalanceAlgorithm, weights: &[u32]) -> Arc<Cluster> {
        let mut reg = BackendRegistry::default();
        Arc::new(Cluster::build("c", &config(algorithm, weights), &mut reg))
    }

    fn balancer(c: &Arc<Cluster>) -> Balancer {
        let mut b = Balancer::with_seed(42);
        b.reset(1, std::slice::from_ref(c));
        b
    }

    fn pick(b: &mut Balancer, c: &Cluster) -> usize {
        c.backends[b.pick(1, 0, c, &PickContext::default()).unwrap()]
            .state
            .id
    }

    /// Picks `n` times, each request finishing at once; counts per backend.
    fn counts(b: &mut Balancer, c: &Cluster, n: usize) -> Vec<usize> {
        let mut counts = vec![0; c.backends.len()];
        for _ in 0..n {
            counts[pick(b, c)] += 1;
        }
        counts
    }

    /// Picks `n` times with `window` requests kept in flight (the oldest finishes as each new one
    /// starts), the way a loaded balancer sees backends; counts per backend.
    fn counts_loaded(b: &mut Balancer, c: &Cluster, n: usize, window: usize) -> Vec<usize> {
        let mut counts = vec![0; c.backends.len()];
        let mut inflight = std::collections::VecDeque::new();
        for _ in 0..n {
            let i = pick(b, c);
            c.backends[i].state.attempt_started();
            inflight.push_back(i);
            counts[i] += 1;
            if inflight.len() > window {
                let done = inflight.pop_front().unwrap();
                c.backends[done]
                    .state
                    .attempt_finished(AttemptOutcome::Abandoned);
            }
        }
        for i in inflight {
            c.backends[i]
                .state
                .attempt_finished(AttemptOutcome::Abandoned);
        }
        counts
    }

    /// Asserts each backend's share is within `tolerance` (absolute, of the total) of its weight's share,
    /// and prints the figures.
    #[track_caller]
    fn assert_shares(label: &str, counts: &[usize], weights: &[u32], tolerance: f64) {
        let total: usize = counts.iter().sum();
        let wsum: u32 = weights.iter().sum();
        let shares: Vec<String> = counts
            .iter()
            .map(|&c| format!("{:.2}%", 100.0 * c as f64 / total as f64))
            .collect();
        println!("{label}: weights {weights:?} -> picks {counts:?} = {shares:?} of {total}");
        for (c, w) in counts.iter().zip(weights) {
            let got = *c as f64 / total as f64;
            let want = *w as f64 / wsum as f64;
            assert!(
                (got - want).abs() <= tolerance,
                "{label}: share {got:.4} vs weight share {want:.4} (counts {counts:?})"
            );
        }
    }

    const N: usize = 100_000;

    // ----- round robin and smooth weighted round robin ------------------------------------------------

    #[test]
    fn weighted_round_robin_alternates_equal_weights_exactly() {
        let c = cluster(BalanceAlgorithm::WeightedRoundRobin, &[1, 1, 1]);
        let mut b = balancer(&c);
        let order: Vec<_> = (0..6).map(|_| pick(&mut b, &c)).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_exact() {
        let c = cluster(BalanceAlgorithm::WeightedRoundRobin, &[5, 1, 1]);
        let mut b = balancer(&c);
        let order: Vec<_> = (0..7).map(|_| pick(&mut b, &c)).collect();
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&mut b, &c, 7000), vec![5000, 1000, 1000]);
        let weights = [5, 3, 1, 1];
        let c = cluster(BalanceAlgorithm::WeightedRoundRobin, &weights);
        let mut b = balancer(&c);
        let got = counts(&mut b, &c, N);
        assert_eq!(got, vec![50_000, 30_000, 10_000, 10_000]);
        assert_shares("weighted_round_robin", &got, &weights, 0.0);
    }

    #[test]
    fn round_robin_rotates_and_ignores_weights() {
        let c = cluster(BalanceAlgorithm::RoundRobin, &[1, 1, 1, 1]);
        let mut b = balancer(&c);
        let order: Vec<_> = (0..8).map(|_| pick(&mut b, &c)).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        let got = counts(&mut b, &c, N);
        assert_shares("round_robin", &got, &[1, 1, 1, 1], 0.0);
        // A down backend is skipped; the rotation goes on from the next one.
        c.backends[1].state.set_up_for_test(false);
        let order: Vec<_> = (0..6).map(|_| pick(&mut b, &c)).collect();
        assert_eq!(order, vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn drained_and_down_backends_get_nothing() {
        for algorithm in [
            BalanceAlgorithm::RoundRobin,
            BalanceAlgorithm::WeightedRoundRobin,
            BalanceAlgorithm::LeastOutstanding,
            BalanceAlgorithm::P2cEwma,
            BalanceAlgorithm::ConsistentHash,
        ] {
            let mut reg = BackendRegistry::default();
            let mut c = Cluster::build("c", &config(algorithm, &[1, 1, 1]), &mut reg);
            c.backends[0].drain = true;
            c.backends[1].state.set_up_for_test(false);
            let c = Arc::new(c);
            let mut b = balancer(&c);
            let mut got = vec![0; 3];
            for key in 0..300u64 {
                let ctx = PickContext {
                    hash_key: Some(maglev::hash_key(&key.to_le_bytes())),
                    avoid: None,
                };
                got[c.backends[b.pick(1, 0, &c, &ctx).unwrap()].state.id] += 1;
            }
            assert_eq!(got, vec![0, 0, 300], "{algorithm:?}");
            c.backends[2].state.set_up_for_test(false);
            assert!(
                b.pick(1, 0, &c, &PickContext::default()).is_none(),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn avoid_skips_a_failed_backend_unless_it_is_the_only_one() {
        for algorithm in [
            BalanceAlgorithm::RoundRobin,
            BalanceAlgorithm::WeightedRoundRobin,
            BalanceAlgorithm::LeastOutstanding,
            BalanceAlgorithm::P2cEwma,
            BalanceAlgorithm::ConsistentHash,
        ] {
            let c = cluster(algorithm, &[1, 1]);
            let mut b = balancer(&c);
            for key in 0..20u64 {
                let ctx = PickContext {
                    hash_key: Some(key),
                    avoid: Some(0),
                };
                assert_eq!(
                    c.backends[b.pick(1, 0, &c, &ctx).unwrap()].state.id,
                    1,
                    "{algorithm:?}"
                );
            }
            let single = cluster(algorithm, &[1]);
            let mut b = balancer(&single);
            let ctx = PickContext {
                hash_key: Some(7),
                avoid: Some(0),
            };
            assert_eq!(
                single.backends[b.pick(1, 0, &single, &ctx).unwrap()]
                    .state
                    .id,
                0,
                "{algorithm:?}"
            );
        }
    }

    // ----- least outstanding -------------------------------------------------------------------------

    #[test]
    fn least_outstanding_sends_new_requests_away_from_busy_backends() {
        let c = cluster(BalanceAlgorithm::LeastOutstanding, &[1, 1, 1]);
        let mut b = balancer(&c);
        // Backend 0 holds five slow requests (from any worker: the count is shared).
        for _ in 0..5 {
            c.backends[0].state.attempt_started();
        }
        let got = counts(&mut b, &c, 1000);
        println!("least_outstanding, backend 0 holding 5 requests: {got:?}");
        assert_eq!(got[0], 0);
        assert_eq!((got[1], got[2]), (500, 500), "equal backends take turns");
        // Requests that stay in flight fill the idle backends up to the busy one's level first.
        let mut order = Vec::new();
        for _ in 0..10 {
            let i = pick(&mut b, &c);
            c.backends[i].state.attempt_started();
            order.push(i);
        }
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 0, "{order:?}");
        let i = pick(&mut b, &c);
        assert_eq!(c.backends[i].state.inflight(), 5, "all at 5 now: {order:?}");
    }

    #[test]
    fn least_outstanding_respects_weights() {
        let weights = [3, 2, 1];
        let c = cluster(BalanceAlgorithm::LeastOutstanding, &weights);
        let mut b = balancer(&c);
        // Idle backends: ties, shared by weight.
        let got = counts(&mut b, &c, N);
        assert_shares("least_outstanding (idle)", &got, &weights, 0.01);
        // Loaded: 60 requests in flight at all times.
        let got = counts_loaded(&mut b, &c, N, 60);
        assert_shares("least_outstanding (60 in flight)", &got, &weights, 0.01);
        assert!(c.backends.iter().all(|b| b.state.inflight() == 0));
    }

    // ----- power of two choices ----------------------------------------------------------------------

    #[test]
    fn p2c_spreads_evenly_over_equal_backends() {
        let weights = [1, 1, 1, 1, 1];
        let c = cluster(BalanceAlgorithm::P2cEwma, &weights);
        for b in &c.backends {
            b.state.observe_latency_at(1000, 1);
        }
        let mut b = balancer(&c);
        let got = counts(&mut b, &c, N);
        assert_shares("p2c_ewma (equal latency, idle)", &got, &weights, 0.01);
        let got = counts_loaded(&mut b, &c, N, 50);
        assert_shares(
            "p2c_ewma (equal latency, 50 in flight)",
            &got,
            &weights,
            0.01,
        );
    }

    #[test]
    fn p2c_prefers_the_faster_backend() {
        let c = cluster(BalanceAlgorithm::P2cEwma, &[1, 1, 1]);
        // Backend 2 answers in 10 ms, the others in 1 ms.
        for (b, lat) in c.backends.iter().zip([1000, 1000, 10_000]) {
            b.state.observe_latency_at(lat, 1);
        }
        let mut b = balancer(&c);
        let got = counts_loaded(&mut b, &c, N, 30);
        let slow_share = got[2] as f64 / N as f64;
        println!(
            "p2c_ewma (latency 1ms,1ms,10ms; 30 in flight): {got:?} (slow backend {:.2}%)",
            100.0 * slow_share
        );
        assert!(slow_share < 0.10, "{got:?}");
        assert!(got[2] > 0, "still probed now and then: {got:?}");
        // Weights bias the cost: with equal latency the heavier backend takes more.
        let c = cluster(BalanceAlgorithm::P2cEwma, &[2, 1, 1]);
        let mut b = balancer(&c);
        let got = counts_loaded(&mut b, &c, N, 40);
        assert_shares(
            "p2c_ewma (equal latency, 40 in flight)",
            &got,
            &[2, 1, 1],
            0.02,
        );
    }

    #[test]
    fn random_choice_is_uniform() {
        let mut r = SplitMix64(1);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[r.below(7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    // ----- consistent hashing ------------------------------------------------------------------------

    fn keys(n: usize) -> impl Iterator<Item = u64> {
        (0..n as u64).map(|k| maglev::hash_key(format!("user-{k}").as_bytes()))
    }

    fn hash_cluster(addresses: &[String]) -> Arc<Cluster> {
        hash_cluster_in(addresses, &mut BackendRegistry::default())
    }

    fn hash_cluster_in(addresses: &[String], reg: &mut BackendRegistry) -> Arc<Cluster> {
        let mut cfg = config(BalanceAlgorithm::ConsistentHash, &[]);
        cfg.backends = addresses
            .iter()
            .map(|a| BackendConfig {
                address: a.clone(),
                weight: 1,
                drain: false,
            })
            .collect();
        Arc::new(Cluster::build("c", &cfg, reg))
    }

    fn owners(c: &Arc<Cluster>, n: usize) -> Vec<SocketAddr> {
        let mut b = balancer(c);
        keys(n)
            .map(|key| {
                let ctx = PickContext {
                    hash_key: Some(key),
                    avoid: None,
                };
                c.backends[b.pick(1, 0, c, &ctx).unwrap()].state.address
            })
            .collect()
    }

    fn addresses(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn consistent_hash_spreads_keys_evenly() {
        let c = hash_cluster(&addresses(5));
        let mut got = vec![0; 5];
        for a in owners(&c, N) {
            got[c
                .backends
                .iter()
                .position(|b| b.state.address == a)
                .unwrap()] += 1;
        }
        assert_shares("consistent_hash (Maglev, 5 backends)", &got, &[1; 5], 0.01);
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys() {
        let n = 10;
        let all = addresses(n);
        let before = owners(&hash_cluster(&all), N);
        // Remove one backend.
        let fewer: Vec<String> = all[..n - 1].to_vec();
        let after = owners(&hash_cluster(&fewer), N);
        let removed: SocketAddr = all[n - 1].parse().unwrap();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let moved_innocent = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b && **a != removed)
            .count();
        let frac = moved as f64 / N as f64;
        println!(
            "consistent_hash: removing 1 of {n} backends moved {moved} of {N} keys ({:.2}%, ideal {:.2}%); keys of remaining backends moved: {moved_innocent}",
            100.0 * frac,
            100.0 / n as f64
        );
        assert!(frac < 1.5 / n as f64, "{frac}");
        assert!(
            (moved_innocent as f64) < 0.01 * N as f64,
            "{moved_innocent}"
        );
        // Add one backend.
        let more = addresses(n + 1);
        let after = owners(&hash_cluster(&more), N);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let frac = moved as f64 / N as f64;
        println!(
            "consistent_hash: adding an 11th backend moved {moved} of {N} keys ({:.2}%, ideal {:.2}%)",
            100.0 * frac,
            100.0 / (n + 1) as f64
        );
        assert!(frac < 1.5 / (n + 1) as f64, "{frac}");
    }

    #[test]
    fn consistent_hash_sends_a_key_to_the_same_backend_on_every_worker() {
        // Two "workers" with their own balancers, and clusters built separately from configs that list
        // the backends in different orders, with different registries (different backend ids).
        let all = addresses(6);
        let mut reversed = all.clone();
        reversed.reverse();
        let mut reg = BackendRegistry::default();
        reg.get_or_create("192.0.2.1:1".parse().unwrap()); // shifts the ids
        let c2 = hash_cluster_in(&reversed, &mut reg);
        let c1 = hash_cluster(&all);
        let (o1, o2) = (owners(&c1, 20_000), owners(&c2, 20_000));
        assert_eq!(o1, o2);
        // And the same worker asked twice.
        assert_eq!(o1, owners(&c1, 20_000));
    }

    #[test]
    fn consistent_hash_moves_only_a_down_backends_keys_and_spreads_them() {
        let c = hash_cluster(&addresses(5));
        let before = owners(&c, N);
        c.backends[0].state.set_up_for_test(false);
        let after = owners(&c, N);
        let down = c.backends[0].state.address;
        let mut spread = vec![0; 5];
        for (a, b) in before.iter().zip(&after) {
            if *a == down {
                spread[c
                    .backends
                    .iter()
                    .position(|x| x.state.address == *b)
                    .unwrap()] += 1;
            } else {
                assert_eq!(a, b, "a key of an up backend moved");
            }
        }
        println!("consistent_hash: keys of a down backend went to {spread:?}");
        assert_eq!(spread[0], 0);
        let total: usize = spread.iter().sum();
        for &s in &spread[1..] {
            assert!((s as f64 / total as f64 - 0.25).abs() < 0.05, "{spread:?}");
        }
        c.backends[0].state.set_up_for_test(true);
        assert_eq!(owners(&c, N), before, "back where they were once it is up");
    }

    #[test]
    fn consistent_hash_without_a_key_falls_back_to_weighted_round_robin() {
        let c = cluster(BalanceAlgorithm::ConsistentHash, &[1, 1]);
        let mut b = balancer(&c);
        assert_eq!(counts(&mut b, &c, 10), vec![5, 5]);
    }

    // ----- hash keys from requests -------------------------------------------------------------------

    fn parsed(raw: &[u8]) -> RequestHead {
        let limits = crate::http::HeadLimits {
            max_head_size: 8192,
            max_headers: 64,
        };
        let mut head = RequestHead::with_capacity(64);
        crate::http::parse_request(raw, &limits, &mut head).unwrap();
        head
    }

    fn hash_on(on: HashOn) -> Cluster {
        let mut reg = BackendRegistry::default();
        let mut cfg = config(BalanceAlgorithm::ConsistentHash, &[1]);
        cfg.hash_on = Some(on);
        Cluster::build("c", &cfg, &mut reg)
    }

    #[test]
    fn hash_key_from_client_ip_header_and_cookie() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-User: alice\r\nCookie: theme=dark; session=\"s1\"\r\nCookie: other=1\r\n\r\n";
        let head = parsed(raw);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let c = hash_on(HashOn::ClientIp);
        let k = hash_key(&c, &head, raw, ip);
        assert_eq!(k, Some(maglev::hash_key(&[10, 1, 2, 3])));
        assert_eq!(
            k,
            hash_key(&c, &head, raw, mapped),
            "v4-mapped v6 is the same client"
        );
        let c = hash_on(HashOn::Header("x-user".into()));
        assert_eq!(
            hash_key(&c, &head, raw, ip),
            Some(maglev::hash_key(b"alice"))
        );
        let c = hash_on(HashOn::Cookie("session".into()));
        assert_eq!(hash_key(&c, &head, raw, ip), Some(maglev::hash_key(b"s1")));
        let c = hash_on(HashOn::Cookie("other".into()));
        assert_eq!(hash_key(&c, &head, raw, ip), Some(maglev::hash_key(b"1")));
        // Absent keys, and names that only look alike.
        for on in [
            HashOn::Header("x-none".into()),
            HashOn::Cookie("Session".into()),
            HashOn::Cookie("sess".into()),
        ] {
            assert_eq!(
                hash_key(&hash_on(on.clone()), &head, raw, ip),
                None,
                "{on:?}"
            );
        }
        // Other algorithms do not hash.
        let rr = cluster(BalanceAlgorithm::WeightedRoundRobin, &[1]);
        assert_eq!(hash_key(&rr, &head, raw, ip), None);
    }

    #[test]
    fn cookie_parsing_tolerates_odd_spacing_and_empty_values() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=;b ; c = 3 ;;d=\"\"\r\n\r\n";
        let head = parsed(raw);
        let v =
            |name: &str| crate::http::cookie::request_cookie(&head.headers, raw, name.as_bytes());
        assert_eq!(v("a"), None);
        assert_eq!(v("b"), None);
        assert_eq!(v("c"), Some(&b"3"[..]));
        assert_eq!(v("d"), None);
    }

    // ----- slow start --------------------------------------------------------------------------------

    #[test]
    fn slow_start_gives_a_recovered_backend_a_tenth_of_its_share_at_first() {
        let mut reg = BackendRegistry::default();
        let mut cfg = config(BalanceAlgorithm::WeightedRoundRobin, &[1, 1]);
        cfg.slow_start = Duration::from_secs(3600);
        let c = Arc::new(Cluster::build("c", &cfg, &mut reg));
        c.backends[1].state.set_up_for_test(false);
        assert!(c.backends[1].state.mark_up());
        let mut b = balancer(&c);
        let got = counts(&mut b, &c, 11_000);
        println!("slow start, just recovered backend vs a steady one: {got:?}");
        assert!((900..=1100).contains(&got[1]), "{got:?}");
        // The same for least outstanding (idle: ties by ramped weight).
        let mut cfg = cfg.clone();
        cfg.balance = BalanceAlgorithm::LeastOutstanding;
        let c = Arc::new(Cluster::build("c", &cfg, &mut reg));
        let mut b = balancer(&c);
        let got = counts(&mut b, &c, 11_000);
        assert!((900..=1100).contains(&got[1]), "{got:?}");
    }

    #[test]
    fn registry_keeps_state_per_address_across_rebuilds() {
        let mut reg = BackendRegistry::default();
        let a = reg.get_or_create("127.0.0.1:1".parse().unwrap());
        let b = reg.get_or_create("127.0.0.1:2".parse().unwrap());
        let a2 = reg.get_or_create("127.0.0.1:1".parse().unwrap());
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!((a.id, b.id), (0, 1));
        assert_eq!(reg.id_bound(), 2);
    }
}
