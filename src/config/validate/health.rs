//! `[clusters.NAME.health_check]` and `[clusters.NAME.passive_health]`, and the rule that clusters sharing a
//! backend judge its health the same way.

use super::Validator;
use super::address::parse_socket_addr;
use crate::config::names::quote_key;
use crate::config::schema::{Config, HealthCheckConfig, PassiveHealthConfig, parse_status_range};
use std::collections::BTreeMap;
use std::net::SocketAddr;

impl Validator {
    /// `[clusters.NAME.health_check]`; `key` is the cluster's.
    pub(super) fn health_check(&mut self, key: &str, check: &HealthCheckConfig) {
        let key = format!("{key}.health_check");
        if !matches!(check.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
            self.error(
                format!("{key}.method"),
                format!(
                    "must be \"GET\", \"HEAD\" or \"OPTIONS\" (uppercase), got \"{}\"",
                    check.method
                ),
            );
        }
        if !check.path.starts_with('/') {
            self.error(
                format!("{key}.path"),
                format!(
                    "must start with \"/\", e.g. \"/{}\"",
                    check.path.trim_start_matches('/')
                ),
            );
        } else if let Some(c) = check
            .path
            .chars()
            .find(|&c| !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control() || c == '#')
        {
            self.error(
                format!("{key}.path"),
                format!(
                    "contains {c:?}, which cannot appear in a request target (percent-encode it)"
                ),
            );
        }
        if let Some(c) = check
            .host
            .chars()
            .find(|&c| !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control())
        {
            self.error(
                format!("{key}.host"),
                format!("contains {c:?}, which cannot appear in a Host header"),
            );
        }
        if let Err(e) = parse_status_range(&check.expect_status) {
            self.error(format!("{key}.expect_status"), e);
        }
        for (name, value) in [("interval", check.interval), ("timeout", check.timeout)] {
            if value.is_zero() {
                self.error(
                    format!("{key}.{name}"),
                    "must be greater than zero (e.g. \"2s\" or \"500ms\")",
                );
            }
        }
        if !check.interval.is_zero() && check.timeout > check.interval {
            self.error(
                format!("{key}.timeout"),
                format!(
                    "must not be longer than interval ({}), so a backend has at most one check in flight",
                    humantime::format_duration(check.interval)
                ),
            );
        }
        self.range(&format!("{key}.rise"), check.rise as usize, 1, 100, "");
        self.range(&format!("{key}.fall"), check.fall as usize, 1, 100, "");
    }

    /// `[clusters.NAME.passive_health]`: the ranges of its keys.
    pub(super) fn passive_health(&mut self, key: &str, passive: &PassiveHealthConfig) {
        if passive.consecutive_failures > 1000 {
            self.error(
                format!("{key}.passive_health.consecutive_failures"),
                format!(
                    "must be at most 1000, got {} (0 turns passive health off)",
                    passive.consecutive_failures
                ),
            );
        }
        if passive.cool_down.is_zero() {
            self.error(
                format!("{key}.passive_health.cool_down"),
                "must be greater than zero (e.g. \"10s\"); to turn passive health off set consecutive_failures = 0",
            );
        }
    }

    /// A backend's health is kept per address, so clusters that share an address must agree on how it is
    /// judged.
    pub(super) fn shared_backend_health(&mut self, config: &Config) {
        let mut first: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (name, cluster) in &config.clusters {
            for b in &cluster.backends {
                let Ok(addr) = parse_socket_addr(&b.address) else {
                    continue;
                };
                let Some(&other) = first.get(&addr) else {
                    first.insert(addr, name);
                    continue;
                };
                if other == name {
                    continue;
                }
                let theirs = &config.clusters[other];
                let (key, other_key) = (
                    format!("clusters.{}", quote_key(name)),
                    format!("clusters.{}", quote_key(other)),
                );
                if let (Some(a), Some(b)) = (&theirs.health_check, &cluster.health_check) {
                    if a != b {
                        self.conflict(
                            format!("{key}.health_check"),
                            format!(
                                "backend {addr} is also in cluster `{other}`, whose health_check differs; a backend's health is shared by every cluster that lists it, so their checks must be the same"
                            ),
                            format!("{other_key}.health_check"),
                        );
                    }
                }
                if theirs.passive_health != cluster.passive_health {
                    self.conflict(
                        format!("{key}.passive_health"),
                        format!(
                            "backend {addr} is also in cluster `{other}`, whose passive_health differs; a backend's health is shared by every cluster that lists it, so their settings must be the same"
                        ),
                        format!("{other_key}.passive_health"),
                    );
                }
                // One report per pair of clusters is enough.
                first.insert(addr, name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    /// `BASE` plus a `[clusters.app.health_check]` with `body`: its first key is on line 11.
    fn with_check(body: &str) -> String {
        format!("{BASE}\n[clusters.app.health_check]\n{body}\n")
    }

    #[test]
    fn health_check_defaults_are_valid() {
        assert_eq!(errors(&with_check("")), []);
        assert_eq!(
            errors(&with_check(
                "method = \"HEAD\"\npath = \"/healthz?full=1\"\nhost = \"app.internal\"\nexpect_status = \"204\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 100"
            )),
            []
        );
    }

    #[test]
    fn health_check_keys_are_checked() {
        for (body, key, hint) in [
            ("method = \"get\"", "method", "uppercase"),
            (
                "method = \"POST\"",
                "method",
                "\"GET\", \"HEAD\" or \"OPTIONS\"",
            ),
            ("path = \"health\"", "path", "\"/health\""),
            ("path = \"/a b\"", "path", "' '"),
            ("host = \"a b\"", "host", "' '"),
            (
                "expect_status = \"399-200\"",
                "expect_status",
                "\"200-399\"",
            ),
            ("expect_status = \"600\"", "expect_status", "100 to 599"),
            ("expect_status = \"2xx\"", "expect_status", "100 to 599"),
            ("interval = \"0s\"", "interval", "greater than zero"),
            ("timeout = \"0s\"", "timeout", "greater than zero"),
            ("timeout = \"3s\"", "timeout", "at most one check in flight"),
            ("rise = 0", "rise", "between 1 and 100"),
            ("fall = 101", "fall", "between 1 and 100"),
        ] {
            let m = only(
                &with_check(body),
                11,
                &format!("clusters.app.health_check.{key}"),
            );
            assert!(m.contains(hint), "{body}: {m}");
        }
    }

    #[test]
    fn health_check_durations_are_strings() {
        let m = only(
            &with_check("interval = 2"),
            11,
            "clusters.app.health_check.interval",
        );
        assert!(m.contains("\"10s\""), "{m}");
        let m = only(
            &base_with("backends", "slow_start = 30\nbackends"),
            5,
            "clusters.app.slow_start",
        );
        assert!(m.contains("duration"), "{m}");
    }

    #[test]
    fn passive_health_ranges() {
        let text = format!("{BASE}\n[clusters.app.passive_health]\nconsecutive_failures = 1001\n");
        let m = only(
            &text,
            11,
            "clusters.app.passive_health.consecutive_failures",
        );
        assert!(m.contains("at most 1000"), "{m}");
        let text = format!("{BASE}\n[clusters.app.passive_health]\ncool_down = \"0s\"\n");
        let m = only(&text, 11, "clusters.app.passive_health.cool_down");
        assert!(m.contains("consecutive_failures = 0"), "{m}");
        let text = format!(
            "{BASE}\n[clusters.app.passive_health]\nconsecutive_failures = 0\ncount_5xx = false\n"
        );
        assert_eq!(errors(&text), []);
    }

    #[test]
    fn a_backend_in_two_clusters_is_judged_the_same_way_by_both() {
        let two = format!(
            "{BASE}\n[clusters.web]\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n\n[clusters.web.health_check]\npath = \"/a\"\n\n[clusters.app.health_check]\npath = \"/b\"\n"
        );
        let m = only(&two, 13, "clusters.web.health_check");
        assert!(
            m.contains(
                "backend 127.0.0.1:9001 is also in cluster `app`, whose health_check differs"
            ),
            "{m}"
        );
        assert!(
            m.contains("(see clusters.app.health_check, line 16)"),
            "{m}"
        );
        // Only one of them checks: fine, the check covers both.
        let one = format!(
            "{BASE}\n[clusters.web]\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n\n[clusters.web.health_check]\npath = \"/a\"\n"
        );
        assert_eq!(errors(&one), []);
        let passive = format!(
            "{BASE}\n[clusters.web]\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\npassive_health = {{ consecutive_failures = 2 }}\n"
        );
        let m = only(&passive, 12, "clusters.web.passive_health");
        assert!(m.contains("whose passive_health differs"), "{m}");
    }
}
