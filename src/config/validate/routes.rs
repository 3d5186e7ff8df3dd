//! `[[routes]]`: at least one, each with a valid host and path prefix, conditions, class and session that fit
//! together, an existing cluster, and no two that are indistinguishable.

use super::{Validator, is_header_char};
use crate::config::names::closest;
use crate::config::schema::{Config, RouteClass, RouteConfig};
use std::collections::BTreeMap;
use std::net::Ipv6Addr;

impl Validator {
    pub(super) fn routes(&mut self, config: &Config) {
        if config.routes.is_empty() {
            self.error(
                "routes",
                "at least one route is required, e.g. [[routes]] with cluster = \"app\" (host \"*\" and path_prefix \"/\" match everything)",
            );
        }
        // Two routes with the same host, prefix and conditions: the second could never match.
        let mut seen: BTreeMap<RouteIdentity<'_>, usize> = BTreeMap::new();
        for (i, r) in config.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            self.route_conditions(&key, r);
            let host_ok = match check_route_host(&r.host) {
                Ok(()) => true,
                Err(e) => {
                    self.error(format!("{key}.host"), e);
                    false
                }
            };
            let path_ok = match check_path_prefix(&r.path_prefix) {
                Ok(()) => true,
                Err(e) => {
                    self.error(format!("{key}.path_prefix"), e);
                    false
                }
            };
            if !config.clusters.contains_key(&r.cluster) {
                self.error(format!("{key}.cluster"), unknown_cluster(r, config));
            }
            if host_ok && path_ok {
                let mut methods: Vec<&str> = r.methods.iter().map(String::as_str).collect();
                methods.sort_unstable();
                let header = r.header.as_ref().map(|h| h.to_ascii_lowercase());
                let pair = (r.host.as_str(), r.path_prefix.as_str(), methods, header);
                if let Some(&first) = seen.get(&pair) {
                    self.conflict(
                        key,
                        format!(
                            "duplicate route for host \"{}\" and path_prefix \"{}\"; only the first would ever match",
                            r.host, r.path_prefix
                        ),
                        format!("routes[{first}]"),
                    );
                } else {
                    seen.insert(pair, i);
                }
            }
        }
    }

    /// A route's method and header conditions, class, session identity and priority.
    fn route_conditions(&mut self, key: &str, r: &RouteConfig) {
        for (j, m) in r.methods.iter().enumerate() {
            if m.is_empty()
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                self.error(
                    format!("{key}.methods[{j}]"),
                    format!("{m:?} is not a method name; write it uppercase, e.g. \"POST\""),
                );
            }
        }
        if let Some(h) = &r.header {
            if h.is_empty() || !h.chars().all(is_header_char) {
                self.error(
                    format!("{key}.header"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
        if let Some(p) = r.priority {
            if p > 7 {
                self.error(
                    format!("{key}.priority"),
                    format!("must be 0 (lowest) to 7, got {p}"),
                );
            }
        }
        match (r.class, &r.session) {
            (RouteClass::Secure, None) => self.error(
                format!("{key}.session"),
                "a secure route needs a session identity: \"insert:COOKIE\", \"learn:COOKIE\", \"header:NAME\" or \"client_ip\"",
            ),
            (RouteClass::Stateless, Some(_)) => self.error(
                format!("{key}.session"),
                "only secure routes keep sessions; add class = \"secure\" or remove session",
            ),
            _ => {}
        }
    }
}

/// What makes two routes indistinguishable: host, path prefix, methods (sorted) and header condition.
type RouteIdentity<'a> = (&'a str, &'a str, Vec<&'a str>, Option<String>);

fn unknown_cluster(route: &RouteConfig, config: &Config) -> String {
    let mut message = if route.cluster.is_empty() {
        "must name a cluster".to_string()
    } else {
        format!("unknown cluster `{}`", route.cluster)
    };
    if let Some(best) = closest(&route.cluster, config.clusters.keys().map(String::as_str)) {
        message.push_str(&format!(" (did you mean `{best}`?)"));
    }
    if config.clusters.is_empty() {
        message.push_str("; no clusters are defined");
    } else {
        let known: Vec<String> = config.clusters.keys().map(|k| format!("`{k}`")).collect();
        message.push_str(&format!("; defined clusters: {}", known.join(", ")));
    }
    message
}

/// A route host: `*`, an exact lowercase name, `*.suffix`, or a bracketed IPv6 literal; never a port.
fn check_route_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty; use \"*\" to match any host".to_string());
    }
    if host == "*" {
        return Ok(());
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((ip, "")) if ip.parse::<Ipv6Addr>().is_ok() => Ok(()),
            Some((ip, rest)) if ip.parse::<Ipv6Addr>().is_ok() && rest.starts_with(':') => {
                Err(format!(
                    "remove the port (\"[{ip}]\"): a route matches its host on every listener's port"
                ))
            }
            _ => Err(format!(
                "\"{host}\" is not a host name or a bracketed IPv6 address"
            )),
        };
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "remove the port (\"{name}\"): a route matches its host on every listener's port"
            ));
        }
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "host names match case-insensitively; write them in lowercase: \"{}\"",
            host.to_ascii_lowercase()
        ));
    }
    let name = match host.strip_prefix("*.") {
        Some(suffix) => suffix,
        None => host,
    };
    if name.contains('*') {
        return Err(format!(
            "\"{host}\": `*` is allowed only alone (\"*\", any host) or as the whole first label (\"*.example.com\")"
        ));
    }
    check_host_labels(host, name)
}

/// The labels of `name` (part of `host`, which messages quote): letters, digits, `-` and `_`, none empty.
pub(super) fn check_host_labels(host: &str, name: &str) -> Result<(), String> {
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "\"{host}\" has an empty label (a leading, trailing or doubled dot)"
            ));
        }
        if !label.is_ascii() {
            return Err(format!(
                "\"{host}\" is not ASCII: write an internationalized name in its punycode (xn--) form, as it appears in the Host header"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!(
                "\"{host}\" contains {c:?}; a host name has only letters, digits, `-`, `_` and dots"
            ));
        }
    }
    Ok(())
}

fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!(
            "must start with \"/\", e.g. \"/{}\"",
            prefix.trim_start_matches('/')
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "contains {c:?}, which cannot appear in a request path (routes match the path only, not the query)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    #[test]
    fn route_required() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[clusters.app]\nbackends = [{ address = \"127.0.0.1:9001\" }]\n";
        let m = only(text, 0, "routes");
        assert!(m.contains("at least one route"), "{m}");
    }

    #[test]
    fn route_cluster_must_exist() {
        let text =
            format!("{BASE}[clusters.api]\nbackends = [{{ address = \"127.0.0.1:9002\" }}]\n")
                .replace("cluster = \"app\"", "cluster = \"appp\"");
        let m = only(&text, 8, "routes[0].cluster");
        assert!(m.contains("unknown cluster `appp`"), "{m}");
        assert!(m.contains("did you mean `app`?"), "{m}");
        assert!(m.contains("defined clusters: `api`, `app`"), "{m}");
    }

    #[test]
    fn route_host_forms() {
        for ok in [
            "*",
            "example.com",
            "*.example.com",
            "a-b_c.example",
            "localhost",
            "10.0.0.1",
            "[::1]",
        ] {
            let text = base_with("[[routes]]\n", &format!("[[routes]]\nhost = \"{ok}\"\n"));
            assert_eq!(errors(&text), [], "{ok}");
        }
        for (bad, hint) in [
            ("", "use \"*\""),
            ("*example.com", "`*` is allowed only"),
            ("www.*.com", "`*` is allowed only"),
            ("*.*.com", "`*` is allowed only"),
            ("example.*", "`*` is allowed only"),
            ("**", "`*` is allowed only"),
            ("example.com:8080", "remove the port (\"example.com\")"),
            ("*.example.com:443", "remove the port"),
            ("[::1]:80", "remove the port"),
            ("Example.COM", "lowercase: \"example.com\""),
            ("example..com", "empty label"),
            ("example.com.", "empty label"),
            ("exa mple.com", "' '"),
            ("http://example.com", "':'"),
            ("bücher.example", "punycode"),
        ] {
            let text = base_with("[[routes]]\n", &format!("[[routes]]\nhost = \"{bad}\"\n"));
            let m = only(&text, 8, "routes[0].host");
            assert!(m.contains(hint), "{bad}: {m}");
        }
    }

    #[test]
    fn route_path_prefix_starts_with_slash() {
        for (bad, hint) in [
            ("api", "must start with \"/\", e.g. \"/api\""),
            ("", "must start with \"/\""),
            ("/api?x=1", "'?'"),
            ("/a b", "' '"),
        ] {
            let text = base_with(
                "[[routes]]\n",
                &format!("[[routes]]\npath_prefix = \"{bad}\"\n"),
            );
            let m = only(&text, 8, "routes[0].path_prefix");
            assert!(m.contains(hint), "{bad:?}: {m}");
        }
    }

    #[test]
    fn routes_unique_by_host_and_prefix() {
        let text = format!(
            "{BASE}\n[[routes]]\nhost = \"a.example\"\ncluster = \"app\"\n\n[[routes]]\nhost = \"*\"\npath_prefix = \"/\"\ncluster = \"app\"\n"
        );
        let m = only(&text, 14, "routes[2]");
        assert!(
            m.contains("duplicate route for host \"*\" and path_prefix \"/\""),
            "{m}"
        );
        assert!(m.contains("(see routes[0], line 7)"), "{m}");
        // Same host with another prefix, or another host with the same prefix: fine.
        let text = format!(
            "{BASE}[[routes]]\npath_prefix = \"/api\"\ncluster = \"app\"\n[[routes]]\nhost = \"x.example\"\ncluster = \"app\"\n"
        );
        assert_eq!(errors(&text), []);
    }
}
