//! The read-mostly state every worker routes with, rebuilt on reload and published with arc-swap.

use crate::balance::{BackendRegistry, Cluster};
use crate::config::{Config, Timeouts};
use crate::http::HeadLimits;
use crate::route::RouteTable;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One immutable view of routes, clusters, timeouts and limits. Workers hold an `Arc` to the current one
/// and look again only when the published generation changes, so the hot path reads it without atomics.
#[derive(Debug)]
pub struct ConfigSnapshot {
    /// Increases with every successful reload.
    pub generation: u64,
    pub routes: RouteTable,
    pub clusters: Vec<Arc<Cluster>>,
    pub timeouts: Timeouts,
    pub limits: HeadLimits,
    /// `limits.max_connections_per_client` (0: no limit), checked by each worker at accept.
    pub max_connections_per_client: usize,
    /// One more than the highest backend id in use (sizes per-worker tables).
    pub backend_id_bound: usize,
}

impl ConfigSnapshot {
    /// Builds a snapshot from a validated config; backend state comes from (and stays in) `registry`.
    pub fn build(config: &Config, generation: u64, registry: &mut BackendRegistry) -> Self {
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|(name, c)| Arc::new(Cluster::build(name, c, registry)))
            .collect();
        let routes = RouteTable::build(&config.routes, |name| {
            clusters.iter().position(|c| c.name == name)
        });
        ConfigSnapshot {
            generation,
            routes,
            clusters,
            timeouts: config.timeouts.clone(),
            limits: HeadLimits {
                max_head_size: config.limits.max_head_size,
                max_headers: config.limits.max_headers,
            },
            max_connections_per_client: config.limits.max_connections_per_client,
            backend_id_bound: registry.id_bound(),
        }
    }
}

/// Where the current snapshot is published.
pub type SharedSnapshot = Arc<ArcSwap<ConfigSnapshot>>;
