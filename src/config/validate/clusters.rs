//! `[clusters.NAME]`: at least one, with a valid name, retries in range, a balancing algorithm with the keys it
//! needs, and backends with unique addresses and weights in range. Health is checked in `health.rs`, TLS in
//! `tls.rs`, the queue limits in `qos.rs`.

use super::Validator;
use super::address::parse_socket_addr;
use crate::config::names::quote_key;
use crate::config::schema::{BalanceAlgorithm, ClusterConfig, Config};
use std::collections::BTreeMap;
use std::net::SocketAddr;

impl Validator {
    pub(super) fn clusters(&mut self, config: &Config) {
        if config.clusters.is_empty() {
            self.error(
                "clusters",
                "at least one cluster is required, e.g. [clusters.app] with backends = [{ address = \"127.0.0.1:9001\" }]",
            );
        }
        for (name, cluster) in &config.clusters {
            let key = format!("clusters.{}", quote_key(name));
            if name.is_empty() {
                self.error(
                    key.clone(),
                    "cluster name is empty; use letters, digits, `_` and `-`",
                );
            } else if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
                self.error(
                    key.clone(),
                    format!(
                        "cluster name `{name}` contains {c:?}; only letters, digits, `_` and `-` are allowed"
                    ),
                );
            }
            if cluster.retries > 10 {
                self.error(
                    format!("{key}.retries"),
                    format!("must be at most 10, got {}", cluster.retries),
                );
            }
            self.balancing(&key, cluster);
            if let Some(check) = &cluster.health_check {
                self.health_check(&key, check);
            }
            self.passive_health(&key, &cluster.passive_health);
            if cluster.backends.is_empty() {
                self.error(
                    format!("{key}.backends"),
                    "a cluster needs at least one backend, e.g. backends = [{ address = \"127.0.0.1:9001\" }]",
                );
            }
            let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
            for (i, b) in cluster.backends.iter().enumerate() {
                let bkey = format!("{key}.backends[{i}]");
                match parse_socket_addr(&b.address) {
                    Ok(addr) if addr.port() == 0 => {
                        self.error(format!("{bkey}.address"), "port 0 is not a backend port")
                    }
                    Ok(addr) if addr.ip().is_unspecified() => self.error(
                        format!("{bkey}.address"),
                        format!(
                            "{} means \"any address\" and cannot be connected to; write the backend's own IP",
                            addr.ip()
                        ),
                    ),
                    Ok(addr) => {
                        if let Some(&first) = seen.get(&addr) {
                            self.conflict(
                                format!("{bkey}.address"),
                                format!("duplicate backend address {addr} in cluster `{name}`"),
                                format!("{key}.backends[{first}].address"),
                            );
                        } else {
                            seen.insert(addr, i);
                        }
                    }
                    Err(e) => self.error(format!("{bkey}.address"), e),
                }
                if b.weight == 0 {
                    self.error(
                        format!("{bkey}.weight"),
                        "must be between 1 and 256, got 0; to stop sending new requests to this backend, keep its weight and set `drain = true`",
                    );
                } else if b.weight > 256 {
                    self.error(
                        format!("{bkey}.weight"),
                        format!("must be between 1 and 256, got {}", b.weight),
                    );
                }
            }
        }
    }

    /// The algorithm and the keys that go with it: `hash_on`, weights.
    fn balancing(&mut self, key: &str, cluster: &ClusterConfig) {
        match (cluster.balance, &cluster.hash_on) {
            (BalanceAlgorithm::ConsistentHash, None) => self.error(
                format!("{key}.balance"),
                "consistent_hash needs `hash_on`: \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
            ),
            (algorithm, Some(_)) if algorithm != BalanceAlgorithm::ConsistentHash => self.error(
                format!("{key}.hash_on"),
                format!(
                    "is used only by balance = \"consistent_hash\", and this cluster uses \"{}\"; remove it or change `balance`",
                    algorithm.as_str()
                ),
            ),
            _ => {}
        }
        if cluster.balance == BalanceAlgorithm::RoundRobin {
            let mut weights = cluster.backends.iter().map(|b| b.weight);
            if let Some(first) = weights.next() {
                if weights.any(|w| w != first) {
                    self.error(
                        format!("{key}.balance"),
                        "round_robin gives every backend the same share and ignores weights, but this cluster's weights differ; use balance = \"weighted_round_robin\" (or make the weights equal)",
                    );
                }
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    #[test]
    fn cluster_required() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[[routes]]\ncluster = \"app\"\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!((errs[0].0, errs[0].1.as_str()), (0, "clusters"));
        assert!(errs[0].2.contains("at least one cluster"));
        assert_eq!((errs[1].0, errs[1].1.as_str()), (4, "routes[0].cluster"));
        assert!(
            errs[1].2.contains("no clusters are defined"),
            "{}",
            errs[1].2
        );
    }

    #[test]
    fn cluster_needs_a_backend() {
        let m = only(
            &base_with("[{ address = \"127.0.0.1:9001\" }]", "[]"),
            5,
            "clusters.app.backends",
        );
        assert!(m.contains("at least one backend"), "{m}");
    }

    #[test]
    fn cluster_names_are_restricted() {
        let text = base_with("[clusters.app]", "[clusters.\"my app\"]")
            .replace("cluster = \"app\"", "cluster = \"my app\"");
        let m = only(&text, 4, "clusters.\"my app\"");
        assert!(m.contains("' '"), "{m}");
        let text = base_with("[clusters.app]", "[clusters.\"\"]")
            .replace("cluster = \"app\"", "cluster = \"\"");
        let m = only(&text, 4, "clusters.\"\"");
        assert!(m.contains("empty"), "{m}");
        let text =
            base_with("[clusters.app]", "[clusters.Web_2-x]").replace("\"app\"", "\"Web_2-x\"");
        assert_eq!(errors(&text), []);
    }

    #[test]
    fn cluster_retries_at_most_10() {
        let text = base_with("backends", "retries = 11\nbackends");
        let m = only(&text, 5, "clusters.app.retries");
        assert!(m.contains("at most 10"), "{m}");
        assert_eq!(errors(&base_with("backends", "retries = 10\nbackends")), []);
    }

    #[test]
    fn backend_address_must_be_ip_and_port() {
        let m = only(
            &base_with("127.0.0.1:9001", "localhost:9001"),
            5,
            "clusters.app.backends[0].address",
        );
        assert!(m.contains("\"127.0.0.1:9001\""), "{m}");
        let m = only(
            &base_with("127.0.0.1:9001", "127.0.0.1:0"),
            5,
            "clusters.app.backends[0].address",
        );
        assert!(m.contains("port 0"), "{m}");
        let m = only(
            &base_with("127.0.0.1:9001", "0.0.0.0:9001"),
            5,
            "clusters.app.backends[0].address",
        );
        assert!(m.contains("any address"), "{m}");
        assert_eq!(errors(&base_with("127.0.0.1:9001", "[fd00::5]:9001")), []);
    }

    #[test]
    fn backend_weight_range() {
        let m = only(
            &base_with("9001\" }", "9001\", weight = 0 }"),
            5,
            "clusters.app.backends[0].weight",
        );
        assert!(m.contains("drain = true"), "{m}");
        let m = only(
            &base_with("9001\" }", "9001\", weight = 257 }"),
            5,
            "clusters.app.backends[0].weight",
        );
        assert!(m.contains("between 1 and 256"), "{m}");
        assert_eq!(errors(&base_with("9001\" }", "9001\", weight = 256 }")), []);
    }

    #[test]
    fn backend_addresses_unique_within_a_cluster() {
        let text = base_with(
            "backends = [{ address = \"127.0.0.1:9001\" }]",
            "backends = [\n  { address = \"127.0.0.1:9001\" },\n  { address = \"127.0.0.1:9001\", weight = 2 },\n]",
        );
        let m = only(&text, 7, "clusters.app.backends[1].address");
        assert!(
            m.contains("duplicate backend address 127.0.0.1:9001"),
            "{m}"
        );
        assert!(
            m.contains("(see clusters.app.backends[0].address, line 6)"),
            "{m}"
        );
        // The same backend in two clusters is fine.
        let text =
            format!("{BASE}\n[clusters.other]\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n");
        assert_eq!(errors(&text), []);
    }

    #[test]
    fn consistent_hash_needs_hash_on_and_only_it_takes_it() {
        let m = only(
            &base_with("backends", "balance = \"consistent_hash\"\nbackends"),
            5,
            "clusters.app.balance",
        );
        assert!(m.contains("needs `hash_on`"), "{m}");
        let m = only(
            &base_with("backends", "hash_on = \"client_ip\"\nbackends"),
            5,
            "clusters.app.hash_on",
        );
        assert!(m.contains("\"weighted_round_robin\""), "{m}");
        for ok in ["client_ip", "header:X-User", "cookie:session"] {
            let text = base_with(
                "backends",
                &format!("balance = \"consistent_hash\"\nhash_on = \"{ok}\"\nbackends"),
            );
            assert_eq!(errors(&text), [], "{ok}");
        }
    }

    #[test]
    fn hash_on_forms() {
        for (bad, hint) in [
            (
                "ip",
                "expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
            ),
            ("header:", "name is missing"),
            ("header:X User", "' '"),
            ("cookie:a;b", "';'"),
            ("query:x", "expected \"client_ip\""),
        ] {
            let text = base_with(
                "backends",
                &format!("balance = \"consistent_hash\"\nhash_on = \"{bad}\"\nbackends"),
            );
            let m = only(&text, 6, "clusters.app.hash_on");
            assert!(m.contains(hint), "{bad}: {m}");
        }
    }

    #[test]
    fn round_robin_refuses_unequal_weights() {
        let text = base_with(
            "backends = [{ address = \"127.0.0.1:9001\" }]",
            "balance = \"round_robin\"\nbackends = [{ address = \"127.0.0.1:9001\" }, { address = \"127.0.0.1:9002\", weight = 2 }]",
        );
        let m = only(&text, 5, "clusters.app.balance");
        assert!(m.contains("weighted_round_robin"), "{m}");
        let text = base_with(
            "backends = [{ address = \"127.0.0.1:9001\" }]",
            "balance = \"round_robin\"\nbackends = [{ address = \"127.0.0.1:9001\", weight = 3 }, { address = \"127.0.0.1:9002\", weight = 3 }]",
        );
        assert_eq!(errors(&text), []);
    }

    #[test]
    fn every_algorithm_name_loads() {
        for name in [
            "round_robin",
            "weighted_round_robin",
            "least_outstanding",
            "p2c_ewma",
        ] {
            let text = base_with("backends", &format!("balance = \"{name}\"\nbackends"));
            assert_eq!(errors(&text), [], "{name}");
        }
        let m = only(
            &base_with("backends", "balance = \"leastconn\"\nbackends"),
            5,
            "clusters.app.balance",
        );
        assert!(m.contains("least_outstanding"), "{m}");
    }
}
