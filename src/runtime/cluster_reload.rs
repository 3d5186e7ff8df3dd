//! What a reload may change in `[cluster]`. The peers, the heartbeat and the sync-write settings take
//! effect; the cluster's and the node's names, the replication listener and the link certificates were
//! fixed when the node started (its identity, its bound socket, the TLS config its links were made with),
//! so changes to them keep the running values until a restart. `ready_timeout` is read at start only.

use crate::config::ClusterMembership;
use crate::replication::node::{BadPeerAddress, ClusterUpdate};

/// A reloaded `[cluster]` that cannot be applied beside the running node's fixed keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ClusterReloadError {
    #[error(
        "cluster.peers names {0:?}, the running node's own name (cluster.node needs a restart)"
    )]
    PeerIsThisNode(String),
    #[error(
        "cluster.peers gives {0:?} the running node's own cluster.listen (cluster.listen needs a restart)"
    )]
    PeerAtOwnListen(String),
    #[error(transparent)]
    BadPeer(#[from] BadPeerAddress),
}

/// The `[cluster]` to run with after a reload, the keys whose changes wait for a restart, and what the
/// replication thread is to apply (`None`: its peers and heartbeat did not change).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClusterReload {
    pub cluster: Option<ClusterMembership>,
    /// e.g. `["cluster.node", "cluster.tls"]`; `["[cluster]"]` when the section was added or removed.
    pub restart: Vec<&'static str>,
    pub update: Option<ClusterUpdate>,
}

/// Merges a reloaded `[cluster]` into the running one: the new peers, heartbeat, sync timeout and policy
/// (and ready timeout) with the running name, node, listen address and TLS files. A config that adds or
/// removes the whole section keeps the running one: a replication thread is started (or not) with the
/// process.
pub(super) fn merge(
    running: &Option<ClusterMembership>,
    new: Option<ClusterMembership>,
) -> Result<ClusterReload, ClusterReloadError> {
    let (running, new) = match (running, new) {
        (Some(r), Some(n)) => (r, n),
        (None, None) => {
            return Ok(ClusterReload {
                cluster: None,
                restart: Vec::new(),
                update: None,
            });
        }
        (running, _) => {
            return Ok(ClusterReload {
                cluster: running.clone(),
                restart: vec!["[cluster]"],
                update: None,
            });
        }
    };
    let restart: Vec<&'static str> = [
        ("cluster.name", running.name != new.name),
        ("cluster.node", running.node != new.node),
        ("cluster.listen", running.listen != new.listen),
        ("cluster.tls", running.tls != new.tls),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    let merged = ClusterMembership {
        name: running.name.clone(),
        node: running.node.clone(),
        listen: running.listen.clone(),
        tls: running.tls.clone(),
        ..new
    };
    // Validation checked the peers against the new node name and listen address; with the running ones
    // back in place, a peer must not be this node.
    for p in &merged.peers {
        if p.name == merged.node {
            return Err(ClusterReloadError::PeerIsThisNode(p.name.clone()));
        }
        if p.address.parse::<std::net::SocketAddr>().ok() == merged.listen.parse().ok() {
            return Err(ClusterReloadError::PeerAtOwnListen(p.name.clone()));
        }
    }
    let update = ClusterUpdate::from_config(&merged)?;
    Ok(ClusterReload {
        update: (ClusterUpdate::from_config(running)? != update).then_some(update),
        cluster: Some(merged),
        restart,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LinkTlsConfig, PeerConfig};
    use std::time::Duration;

    fn membership(node: &str, peers: &[(&str, &str)]) -> ClusterMembership {
        ClusterMembership {
            name: "demo".into(),
            node: node.into(),
            listen: "127.0.0.1:7181".into(),
            peers: peers
                .iter()
                .map(|(n, a)| PeerConfig {
                    name: n.to_string(),
                    address: a.to_string(),
                })
                .collect(),
            tls: LinkTlsConfig {
                ca: "ca.crt".into(),
                cert: format!("{node}.crt"),
                key: format!("{node}.key"),
            },
            heartbeat: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(1),
            on_sync_timeout: Default::default(),
        }
    }

    #[test]
    fn peers_and_timers_reload_and_the_identity_waits_for_a_restart() {
        let running = Some(membership("a", &[("b", "127.0.0.1:7182")]));
        let mut new = membership("x", &[("b", "127.0.0.1:7182"), ("c", "127.0.0.1:7183")]);
        new.listen = "127.0.0.1:7190".into();
        new.heartbeat = Duration::from_millis(200);
        new.sync_timeout = Duration::from_secs(3);
        let r = merge(&running, Some(new)).unwrap();
        assert_eq!(r.restart, ["cluster.node", "cluster.listen", "cluster.tls"]);
        let c = r.cluster.unwrap();
        assert_eq!(
            (c.node.as_str(), c.listen.as_str()),
            ("a", "127.0.0.1:7181")
        );
        assert_eq!(c.tls.cert, "a.crt");
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.heartbeat, Duration::from_millis(200));
        assert_eq!(c.sync_timeout, Duration::from_secs(3));
        let update = r.update.expect("new peers and heartbeat for the thread");
        assert_eq!(update.peers.len(), 2);
        assert_eq!(update.heartbeat, Duration::from_millis(200));
    }

    #[test]
    fn the_same_section_changes_nothing() {
        let running = Some(membership("a", &[("b", "127.0.0.1:7182")]));
        let r = merge(&running, running.clone()).unwrap();
        assert!(r.restart.is_empty());
        assert_eq!(r.cluster, running);
        assert_eq!(r.update, None, "nothing for the replication thread");
        let mut slower = running.clone().unwrap();
        slower.sync_timeout = Duration::from_secs(5);
        let r = merge(&running, Some(slower)).unwrap();
        assert_eq!(
            r.update, None,
            "the sync timeout reloads through the snapshot"
        );
    }

    #[test]
    fn adding_or_removing_the_section_keeps_the_running_one() {
        let running = Some(membership("a", &[("b", "127.0.0.1:7182")]));
        let r = merge(&running, None).unwrap();
        assert_eq!((r.cluster, r.restart), (running.clone(), vec!["[cluster]"]));
        let r = merge(&None, running).unwrap();
        assert_eq!((r.cluster, r.restart), (None, vec!["[cluster]"]));
    }

    #[test]
    fn a_renamed_node_cannot_list_its_running_self_as_a_peer() {
        let running = Some(membership("a", &[("b", "127.0.0.1:7182")]));
        let new = membership("x", &[("a", "127.0.0.1:7182")]);
        assert_eq!(
            merge(&running, Some(new)),
            Err(ClusterReloadError::PeerIsThisNode("a".into()))
        );
        let mut new = membership("a", &[("b", "127.0.0.1:7181")]);
        new.listen = "127.0.0.1:7190".into();
        assert_eq!(
            merge(&running, Some(new)),
            Err(ClusterReloadError::PeerAtOwnListen("b".into()))
        );
    }
}
