//! `[store]`: with `backend = "redis"`, a node name, at least one server address, and no `[cluster]`
//! (a node's store is on one backend or the other).

use super::Validator;
use crate::config::schema::Config;

impl Validator {
    /// `[store]`.
    pub(super) fn store(&mut self, config: &Config) {
        let s = &config.store;
        if !s.is_redis() {
            return;
        }
        match &s.node {
            None => self.error(
                "store.backend",
                "\"redis\" needs store.node, this node's name (unique among the nodes sharing the prefix)",
            ),
            Some(n) if !crate::replication::frame::valid_name(n.as_bytes()) => self.error(
                "store.node",
                format!("{n:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"),
            ),
            Some(_) => {}
        }
        if s.addresses.is_empty() {
            self.error(
                "store.backend",
                "\"redis\" needs store.addresses (host:port of the server, or of a primary and its replicas)",
            );
        }
        for (i, a) in s.addresses.iter().enumerate() {
            if host_port(a).is_none() {
                self.error(
                    format!("store.addresses[{i}]"),
                    format!("{a:?} is not a host:port address"),
                );
            }
        }
        if s.prefix.is_empty() || s.prefix.contains(['{', '}']) || s.prefix.len() > 64 {
            self.error(
                "store.prefix",
                format!("{:?} must be 1-64 characters without braces", s.prefix),
            );
        }
        for (key, d) in [
            ("store.connect_timeout", s.connect_timeout),
            ("store.command_timeout", s.command_timeout),
            ("store.sync_timeout", s.sync_timeout),
            ("store.max_staleness", s.max_staleness),
        ] {
            if d.is_zero() {
                self.error(key, "must be more than 0");
            }
        }
        if s.stream_length < 1000 {
            self.error(
                "store.stream_length",
                format!("must be at least 1000, got {}", s.stream_length),
            );
        }
        if s.ca.as_deref().is_some_and(|c| !c.is_empty()) && !s.tls {
            self.error("store.ca", "needs store.tls = true");
        }
        if config.sessions.cookie_keys.is_empty() {
            // As with the mesh: learned session keys are digests keyed by the first cookie key, and
            // cookies are sealed with it; nodes with different keys would not find each other's.
            self.error(
                "store.backend",
                "\"redis\" needs sessions.cookie_keys, the same on every node (make one with \
                 `head -c 32 /dev/urandom | base64`)",
            );
        }
        if config.cluster.is_some() {
            self.error(
                "store.backend",
                "\"redis\" replaces [cluster]'s mesh: remove [cluster] (or use backend = \"mesh\")",
            );
        }
    }
}

/// `host:port` (a name or an address, and a port): what a server address must be.
pub(crate) fn host_port(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, errors, only};

    const KEYS: &str =
        "[sessions]\ncookie_keys = [\"kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE=\"]\n";

    #[test]
    fn redis_needs_a_node_an_address_and_cookie_keys() {
        let text = format!("[store]\nbackend = \"redis\"\n{BASE}");
        let errs = errors(&text);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs.iter().all(|e| e.1 == "store.backend" && e.0 == 2));
        let ok = format!(
            "{KEYS}[store]\nbackend = \"redis\"\nnode = \"a\"\naddresses = [\"127.0.0.1:6379\"]\n{BASE}"
        );
        assert!(errors(&ok).is_empty());
    }

    #[test]
    fn bad_addresses_and_prefixes_are_named() {
        let text = format!(
            "{KEYS}[store]\nbackend = \"redis\"\nnode = \"a\"\naddresses = [\"nowhere\"]\n{BASE}"
        );
        only(&text, 6, "store.addresses[0]");
        let text = format!(
            "{KEYS}[store]\nbackend = \"redis\"\nnode = \"a\"\naddresses = [\"r:6379\"]\nprefix = \"{{x}}\"\n{BASE}"
        );
        only(&text, 7, "store.prefix");
    }

    #[test]
    fn the_mesh_default_needs_nothing() {
        assert!(errors(&format!("[store]\nbackend = \"mesh\"\n{BASE}")).is_empty());
    }
}
