//! `[cluster]`: names, the replication address, peers (distinct, not this node) and link TLS files.

use super::Validator;
use super::address::parse_socket_addr;
use crate::config::schema::Config;

/// What a node name may be (docs/PROTOCOL.md, "Concepts"): 1–64 bytes of `[A-Za-z0-9._-]`.
fn valid_name(name: &str) -> bool {
    crate::replication::frame::valid_name(name.as_bytes())
}

impl Validator {
    /// `[cluster]`, when present.
    pub(super) fn cluster(&mut self, config: &Config) {
        let Some(c) = &config.cluster else {
            return;
        };
        const NAME: &str = "must be 1-64 characters of letters, digits, '.', '_' or '-'";
        if !valid_name(&c.name) {
            self.error("cluster.name", format!("{:?} {NAME}", c.name));
        }
        if !valid_name(&c.node) {
            self.error("cluster.node", format!("{:?} {NAME}", c.node));
        }
        let listen = parse_socket_addr(&c.listen);
        if let Err(e) = &listen {
            self.error("cluster.listen", e.clone());
        }
        if let Ok(addr) = listen {
            for (i, l) in config.listeners.iter().enumerate() {
                if l.address.parse().ok() == Some(addr) {
                    self.conflict(
                        "cluster.listen".into(),
                        format!("{addr} is also listener {i}'s address"),
                        format!("listeners[{i}].address"),
                    );
                }
            }
        }
        if c.peers.len() > 7 {
            self.error(
                "cluster.peers",
                format!(
                    "{} peers: a full mesh of links serves 2-8 nodes; larger fleets need an external store",
                    c.peers.len()
                ),
            );
        }
        for (i, p) in c.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}]");
            if !valid_name(&p.name) {
                self.error(format!("{key}.name"), format!("{:?} {NAME}", p.name));
            } else if p.name == c.node {
                self.error(
                    format!("{key}.name"),
                    format!("{:?} is this node's own name", p.name),
                );
            }
            match parse_socket_addr(&p.address) {
                Err(e) => self.error(format!("{key}.address"), e),
                Ok(addr) if Ok(addr) == parse_socket_addr(&c.listen) => self.error(
                    format!("{key}.address"),
                    format!("{addr} is this node's own cluster.listen"),
                ),
                Ok(_) => {}
            }
            if let Some(j) = c.peers[..i].iter().position(|q| q.name == p.name) {
                self.conflict(
                    format!("{key}.name"),
                    format!("peer {:?} is listed twice", p.name),
                    format!("cluster.peers[{j}].name"),
                );
            }
            if let Some(j) = c.peers[..i].iter().position(|q| q.address == p.address) {
                self.conflict(
                    format!("{key}.address"),
                    format!("{} is also peer {j}'s address", p.address),
                    format!("cluster.peers[{j}].address"),
                );
            }
        }
        for (k, path) in [
            ("ca", &c.tls.ca),
            ("cert", &c.tls.cert),
            ("key", &c.tls.key),
        ] {
            let resolved = config.resolve_path(path);
            if !resolved.is_file() {
                self.error(
                    format!("cluster.tls.{k}"),
                    format!("{} is not a readable file", resolved.display()),
                );
            }
        }
        if config.sessions.cookie_keys.is_empty() {
            // Learned, header and address session keys are digests keyed by the first cookie key:
            // nodes with different keys would never find each other's sessions.
            self.error(
                "cluster",
                "needs sessions.cookie_keys, the same on every node: session keys are derived from \
                 the first one (make one with `head -c 32 /dev/urandom | base64`)",
            );
        }
        if c.sync_timeout.is_zero() {
            self.error(
                "cluster.sync_timeout",
                "must be greater than zero (e.g. \"1s\")",
            );
        }
        if c.heartbeat.is_zero() {
            self.error(
                "cluster.heartbeat",
                "must be greater than zero (e.g. \"1s\")",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn cluster_names_peers_and_files_are_checked() {
        let cfg = format!(
            "{BASE}\n[cluster]\nname = \"demo\"\nnode = \"a b\"\nlisten = \"127.0.0.1:7181\"\n\
             peers = [{{ name = \"b\", address = \"127.0.0.1:7182\" }}, {{ name = \"b\", address = \"127.0.0.1:7181\" }}]\n\
             [cluster.tls]\nca = \"/nonexistent/ca.crt\"\ncert = \"/nonexistent/a.crt\"\nkey = \"/nonexistent/a.key\"\n"
        );
        let e: String = errors(&cfg)
            .into_iter()
            .map(|(line, key, msg)| format!("{line} {key}: {msg}\n"))
            .collect();
        for needle in [
            "cluster.node",
            "cluster.peers[1].name: peer \"b\" is listed twice",
            "cluster.peers[1].address: 127.0.0.1:7181 is this node's own cluster.listen",
            "cluster.tls.ca",
            "cluster.tls.key",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
    }
}
