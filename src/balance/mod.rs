//! Clusters and backends, and how a worker picks the backend for a request.

use crate::config::{BalanceAlgorithm, ClusterConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Dense, stable number of a backend address for the life of the process (survives reloads), used to
/// index per-worker tables such as the upstream connection pool.
pub type BackendId = usize;

/// A backend's shared, live state: one per address for the whole process, kept across reloads so counters
/// and health survive them. Workers touch it only with relaxed atomics.
#[derive(Debug)]
pub struct BackendState {
    pub id: BackendId,
    pub address: SocketAddr,
    /// Whether the backend may receive new requests (health; issue #3 adds checks).
    pub up: AtomicBool,
    /// Requests answered (any status), for observability.
    pub requests: AtomicU64,
}

impl BackendState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A request was assigned to this backend (one attempt; a retry is a new attempt).
    pub fn attempt_started(&self) {}

    /// The attempt ended; feeds load and health bookkeeping.
    pub fn attempt_finished(&self, outcome: AttemptOutcome) {
        if let AttemptOutcome::Response { .. } = outcome {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How one attempt on a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A complete response head arrived (any status); `latency_us` from assignment to that head.
    Response { status: u16, latency_us: u64 },
    /// The connection could not be established (refused, unreachable, timed out).
    ConnectFailed,
    /// The backend reset or closed the connection, timed out, or sent an invalid response.
    Failed,
    /// Ended for reasons that are not the backend's (the client left, a bad request, shutdown).
    Abandoned,
}

/// What the balancer may know about a request when it picks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext {
    /// Key for hash-based algorithms (from the client address, a header or a cookie).
    pub hash_key: Option<u64>,
    /// A backend that just failed this request: avoided unless it is the only choice.
    pub avoid: Option<BackendId>,
}

/// The hash key of a request for `cluster`'s algorithm; `None` when the algorithm does not hash.
pub fn hash_key(
    _cluster: &Cluster,
    _head: &crate::http::RequestHead,
    _bytes: &[u8],
    _client: std::net::IpAddr,
) -> Option<u64> {
    None
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
            .or_insert_with(|| {
                Arc::new(BackendState {
                    id: next_id,
                    address,
                    up: AtomicBool::new(true),
                    requests: AtomicU64::new(0),
                })
            })
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
    fn eligible(&self) -> bool {
        !self.drain && self.state.is_up()
    }
}

/// A pool of backends and how to pick among them.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub algorithm: BalanceAlgorithm,
    pub retries: u32,
    pub backends: Vec<ClusterBackend>,
}

impl Cluster {
    /// Builds a cluster; backend addresses must already be validated.
    pub fn build(name: &str, config: &ClusterConfig, registry: &mut BackendRegistry) -> Self {
        let backends = config
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
        Cluster {
            name: name.to_string(),
            algorithm: config.balance,
            retries: config.retries,
            backends,
        }
    }
}

/// A worker's own balancing state for every cluster of one config snapshot. Per-worker state needs no
/// synchronisation; with N workers each cycling through the same weights, the whole process does too.
#[derive(Debug, Default)]
pub struct Balancer {
    /// Smooth weighted round robin current weights, per cluster, per backend.
    current: Vec<Vec<i64>>,
}

impl Balancer {
    /// Resets the state for a new snapshot's clusters.
    pub fn reset(&mut self, clusters: &[Arc<Cluster>]) {
        self.current = clusters.iter().map(|c| vec![0; c.backends.len()]).collect();
    }

    /// Picks a backend of cluster `index` that can take a request, avoiding `ctx.avoid` (a backend that
    /// just failed) unless it is the only choice. `None` when no backend is eligible.
    pub fn pick<'c>(
        &mut self,
        index: usize,
        cluster: &'c Cluster,
        ctx: &PickContext,
    ) -> Option<&'c ClusterBackend> {
        let avoid = ctx.avoid;
        let current = self.current.get_mut(index)?;
        match cluster.algorithm {
            BalanceAlgorithm::RoundRobin => smooth_weighted(current, &cluster.backends, avoid)
                .or_else(|| smooth_weighted(current, &cluster.backends, None)),
        }
    }
}

/// nginx's smooth weighted round robin: every pick adds each eligible backend's weight to its current
/// weight, takes the largest, and subtracts the total from it. Picks interleave (a,a,b with 2:1 gives
/// a,b,a) instead of bursting.
fn smooth_weighted<'c>(
    current: &mut [i64],
    backends: &'c [ClusterBackend],
    avoid: Option<BackendId>,
) -> Option<&'c ClusterBackend> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, b) in backends.iter().enumerate() {
        if !b.eligible() || Some(b.state.id) == avoid {
            continue;
        }
        let w = b.weight as i64;
        current[i] += w;
        total += w;
        if best.is_none_or(|j| current[i] > current[j]) {
            best = Some(i);
        }
    }
    let i = best?;
    current[i] -= total;
    Some(&backends[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn cluster(weights: &[u32]) -> (Cluster, BackendRegistry) {
        let mut reg = BackendRegistry::default();
        let config = ClusterConfig {
            balance: BalanceAlgorithm::RoundRobin,
            retries: 2,
            tls: None,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| BackendConfig {
                    address: format!("127.0.0.1:{}", 9000 + i),
                    weight: *w,
                    drain: false,
                })
                .collect(),
        };
        (Cluster::build("c", &config, &mut reg), reg)
    }

    fn counts(b: &mut Balancer, c: &Cluster, n: usize) -> Vec<usize> {
        let mut counts = vec![0; c.backends.len()];
        for _ in 0..n {
            let picked = b.pick(0, c, &PickContext::default()).unwrap();
            counts[picked.state.id] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_alternate_exactly() {
        let (c, _) = cluster(&[1, 1, 1]);
        let c = Arc::new(c);
        let mut b = Balancer::default();
        b.reset(std::slice::from_ref(&c));
        let order: Vec<_> = (0..6)
            .map(|_| b.pick(0, &c, &PickContext::default()).unwrap().state.id)
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_respected_and_smooth() {
        let (c, _) = cluster(&[5, 1, 1]);
        let c = Arc::new(c);
        let mut b = Balancer::default();
        b.reset(std::slice::from_ref(&c));
        let order: Vec<_> = (0..7)
            .map(|_| b.pick(0, &c, &PickContext::default()).unwrap().state.id)
            .collect();
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&mut b, &c, 7000), vec![5000, 1000, 1000]);
    }

    #[test]
    fn drained_and_down_backends_get_nothing() {
        let (mut c, _) = cluster(&[1, 1, 1]);
        c.backends[0].drain = true;
        c.backends[1].state.up.store(false, Ordering::Relaxed);
        let c = Arc::new(c);
        let mut b = Balancer::default();
        b.reset(std::slice::from_ref(&c));
        assert_eq!(counts(&mut b, &c, 30), vec![0, 0, 30]);
        c.backends[2].state.up.store(false, Ordering::Relaxed);
        assert!(b.pick(0, &c, &PickContext::default()).is_none());
    }

    #[test]
    fn avoid_skips_a_failed_backend_unless_it_is_the_only_one() {
        let (c, _) = cluster(&[1, 1]);
        let c = Arc::new(c);
        let mut b = Balancer::default();
        b.reset(std::slice::from_ref(&c));
        let avoid0 = PickContext {
            avoid: Some(0),
            ..PickContext::default()
        };
        for _ in 0..10 {
            assert_eq!(b.pick(0, &c, &avoid0).unwrap().state.id, 1);
        }
        let (single, _) = cluster(&[1]);
        let single = Arc::new(single);
        b.reset(std::slice::from_ref(&single));
        assert_eq!(b.pick(0, &single, &avoid0).unwrap().state.id, 0);
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
