//! The read-mostly state every worker routes with, rebuilt on reload and published with arc-swap.

use crate::auth::settings::AuthSettings;
use crate::balance::{BackendRegistry, Cluster};
use crate::config::{Config, Timeouts};
use crate::http::HeadLimits;
use crate::metrics::MetricNames;
use crate::route::RouteTable;
use crate::tls::client::{UpstreamTls, upstream_tls};
use crate::tls::server::{TlsShared, server_config};
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
    /// Per listener (config order): its TLS server config, when it terminates TLS.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Per cluster (same order as `clusters`): how to speak TLS to its backends.
    pub cluster_tls: Vec<Option<UpstreamTls>>,
    /// Header a trusted upstream sets a request's QoS priority with (lowercase).
    pub qos_priority_header: Option<String>,
    /// Per route and per cluster (same order as `routes` and `clusters`): the metric id their requests
    /// are counted under (stable across reloads for the same name).
    pub route_metric: Vec<usize>,
    pub cluster_metric: Vec<usize>,
    /// `[cluster]`'s sync writes: how long one waits for a peer, and whether it then serves degraded.
    pub sync_timeout: std::time::Duration,
    pub sync_degrade: bool,
    /// `[auth]` and `[pools]` compiled (users files and the login page read at build); `None` without pools.
    pub auth: Option<Arc<AuthSettings>>,
    /// `[[rate_limits]]` compiled, in config order (routes hold indices into it).
    pub rate_limits: Vec<crate::limits::rate::RateLimit>,
    /// `[deny]` compiled.
    pub deny: crate::limits::deny::DenyList,
    /// `[notifications]` compiled (queue bounds, delivery, the publish secret).
    pub notifications: Option<Arc<crate::notify::Settings>>,
    /// `[uploads]` as configured (spool bounds, forwarding).
    pub uploads: Option<Arc<crate::config::UploadsConfig>>,
}

impl ConfigSnapshot {
    /// Builds a snapshot from a validated config; backend state comes from (and stays in) `registry`.
    /// Certificates and keys, users files and the login page are read here, so a reload picks up replaced
    /// files; an unreadable one fails the build (and a reload keeps the running snapshot).
    pub fn build(
        config: &Config,
        generation: u64,
        registry: &mut BackendRegistry,
        tls: &TlsShared,
        names: &MetricNames,
    ) -> Result<Self, String> {
        let mut listener_tls = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            listener_tls.push(match &l.tls {
                Some(t) => Some(
                    server_config(t, config, tls)
                        .map_err(|e| format!("listeners[{i}].tls: {e}"))?,
                ),
                None => None,
            });
        }
        // The publish and the admin listener follow the client listeners (the runtime binds them in this
        // order): the publish listener is plain; the admin listener speaks TLS with `[admin] cert`.
        if config
            .notifications
            .as_ref()
            .and_then(|n| n.publish_address.as_ref())
            .is_some()
        {
            listener_tls.push(None);
        }
        if let Some(a) = &config.admin {
            listener_tls.push(
                crate::tls::server::admin_server_config(a, config)
                    .map_err(|e| format!("admin: {e}"))?,
            );
        }
        let mut cluster_tls = Vec::with_capacity(config.clusters.len());
        for (name, c) in &config.clusters {
            cluster_tls.push(match &c.tls {
                Some(t) => {
                    Some(upstream_tls(t, config).map_err(|e| format!("clusters.{name}.tls: {e}"))?)
                }
                None => None,
            });
        }
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|(name, c)| Arc::new(Cluster::build(name, c, registry)))
            .collect();
        for c in &clusters {
            for b in &c.backends {
                b.state.set_aging(config.qos.aging);
            }
        }
        let auth = AuthSettings::build(config)?.map(Arc::new);
        let pool_names: Vec<&str> = auth
            .as_ref()
            .map(|a| a.pools.iter().map(|p| &*p.name).collect())
            .unwrap_or_default();
        let limit_names: Vec<&str> = config.rate_limits.iter().map(|l| &*l.name).collect();
        let routes = RouteTable::build(
            &config.routes,
            |name| clusters.iter().position(|c| c.name == name),
            &pool_names,
            &limit_names,
        )?;
        let route_metric = routes.iter().map(|r| names.route(&r.name)).collect();
        let cluster_metric = clusters.iter().map(|c| names.cluster(&c.name)).collect();
        Ok(ConfigSnapshot {
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
            listener_tls,
            cluster_tls,
            qos_priority_header: config
                .qos
                .priority_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
            route_metric,
            cluster_metric,
            // The store's backend sets how long a sync write waits: `[store]` on Redis, else `[cluster]`.
            sync_timeout: if config.store.is_redis() {
                config.store.sync_timeout
            } else {
                config
                    .cluster
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(1), |c| c.sync_timeout)
            },
            sync_degrade: if config.store.is_redis() {
                config.store.on_sync_timeout == crate::config::SyncTimeoutPolicy::Degrade
            } else {
                config
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.on_sync_timeout == crate::config::SyncTimeoutPolicy::Degrade)
            },
            auth,
            rate_limits: config
                .rate_limits
                .iter()
                .map(|l| crate::limits::rate::RateLimit::build(l, &config.pools))
                .collect(),
            deny: crate::limits::deny::DenyList::build(&config.deny),
            notifications: config
                .notifications
                .as_ref()
                .map(|n| Arc::new(crate::notify::Settings::build(n))),
            uploads: config.uploads.clone().map(Arc::new),
        })
    }
}

impl ConfigSnapshot {
    /// Indexed by backend id: whether some cluster of this snapshot may send the backend new requests
    /// (listed and not draining). Computed on reload, to close idle connections to the others.
    pub fn serving_backends(&self) -> Vec<bool> {
        let mut serving = vec![false; self.backend_id_bound];
        for b in self.clusters.iter().flat_map(|c| &c.backends) {
            if !b.drain {
                if let Some(s) = serving.get_mut(b.state.id) {
                    *s = true;
                }
            }
        }
        serving
    }
}

/// Where the current snapshot is published.
pub type SharedSnapshot = Arc<ArcSwap<ConfigSnapshot>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn build(config: &Config) -> Result<ConfigSnapshot, String> {
        ConfigSnapshot::build(
            config,
            1,
            &mut BackendRegistry::default(),
            &TlsShared::new(config),
            &MetricNames::default(),
        )
    }

    /// The full example compiles: its pools in config order, and its login route resolved to its pool.
    #[test]
    fn full_example_compiles_logins_and_login_routes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/full.toml");
        let config = crate::config::load_file(&path).unwrap();
        let snapshot = build(&config).unwrap();
        let auth = snapshot.auth.as_ref().unwrap();
        let pools: Vec<&str> = auth.pools.iter().map(|p| &*p.name).collect();
        assert_eq!(pools, ["mail", "partners"]);
        assert!(auth.login_template.is_some());
        assert_eq!(auth.pool_for_host(b"partners.example.com"), Some(1));
        let login: Vec<_> = snapshot
            .routes
            .iter()
            .filter_map(|r| r.auth.as_ref())
            .collect();
        assert_eq!(login.len(), 1);
        assert_eq!(login[0].pool, 0);
        assert_eq!(&*login[0].roles, [Box::from("user"), Box::from("admin")]);
        assert_eq!(&*login[0].groups, [Box::from("staff")]);
        assert!(login[0].identity);
    }

    /// A users file broken after validation refuses the build (so a reload keeps the running snapshot),
    /// naming the key.
    #[test]
    fn a_broken_users_file_fails_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.toml");
        std::fs::write(&users, "").unwrap();
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[clusters.app]\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n\
             [[routes]]\ncluster = \"app\"\nauth = \"login\"\n[pools.mail]\nusers = {:?}\n",
            users.display().to_string()
        );
        let config = crate::config::load_str(&text, "t.toml").unwrap();
        std::fs::write(&users, "[[users]]\n").unwrap();
        let e = build(&config).unwrap_err();
        assert!(e.starts_with("pools.mail.users: "), "{e}");
    }
}
