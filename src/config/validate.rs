//! Semantic checks on a parsed config: addresses, names, references, ranges.
//!
//! Each check names the offending key by its dotted path (`clusters.app.backends[1].weight`); `load.rs` turns
//! the path into a line. Every problem is collected, so one run reports them all.

use super::load::{closest, quote_key};
use super::schema::{Config, ListenerConfig, RouteConfig};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Upper bound for `limits.max_headers`: the HTTP parser's fixed header array size,
/// `crate::http::head::MAX_HEADERS_CAP`. Hardcoded because that module is written in parallel; keep the two equal.
pub(crate) const MAX_HEADERS_CAP: usize = 512;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// One semantic problem: the key it is about, what is wrong, and optionally another key it conflicts with
/// (e.g. the first of two duplicates), which `load.rs` points to by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub key: String,
    pub message: String,
    pub related: Option<String>,
}

/// Facts about the machine that validation depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine {
    /// CPUs online; `workers.pin_cpus` entries must be below it.
    pub cpus: usize,
}

impl Machine {
    pub fn detect() -> Self {
        Machine {
            cpus: online_cpus(),
        }
    }
}

/// The number of CPUs online on the machine (not the ones this process may use: a CPU quota or affinity mask,
/// e.g. after a thread was pinned, must not make a valid `pin_cpus` fail on reload).
fn online_cpus() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system setting.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n > 0 {
            return n as usize;
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Checks everything `serde` cannot: returns the config unchanged, or every problem found.
pub(crate) fn validate(config: Config, machine: &Machine) -> Result<Config, Vec<Issue>> {
    let mut v = Validator { issues: Vec::new() };
    v.workers(&config, machine);
    v.limits(&config);
    v.timeouts(&config);
    v.access_log(&config);
    v.listeners(&config.listeners);
    v.clusters(&config);
    v.routes(&config);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(v.issues)
    }
}

struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            key: key.into(),
            message: message.into(),
            related: None,
        });
    }

    fn conflict(&mut self, key: String, message: String, related: String) {
        self.issues.push(Issue {
            key,
            message,
            related: Some(related),
        });
    }

    /// `value` must be in `min..=max`; `unit` follows the numbers in the message (e.g. " bytes").
    fn range(&mut self, key: &str, value: usize, min: usize, max: usize, unit: &str) {
        if value < min || value > max {
            self.error(
                key,
                format!("must be between {min} and {max}{unit}, got {value}"),
            );
        }
    }

    fn workers(&mut self, config: &Config, machine: &Machine) {
        let w = &config.workers;
        if w.max_connections == 0 {
            self.error(
                "workers.max_connections",
                "must be at least 1 (it is the number of client connections each worker accepts)",
            );
        }
        if w.buffer_size < KIB || w.buffer_size > MIB {
            self.error(
                "workers.buffer_size",
                format!(
                    "must be between 1024 (1 KiB) and 1048576 (1 MiB) bytes, got {}",
                    w.buffer_size
                ),
            );
        }
        self.range("workers.accept_batch", w.accept_batch, 1, 4096, "");
        if w.upstream_idle_pool > 65536 {
            self.error(
                "workers.upstream_idle_pool",
                format!(
                    "must be at most 65536, got {} (0 disables pooling)",
                    w.upstream_idle_pool
                ),
            );
        }
        for (i, &cpu) in w.pin_cpus.iter().enumerate() {
            if cpu >= machine.cpus {
                let max = machine.cpus.saturating_sub(1);
                let plural = if machine.cpus == 1 { "" } else { "s" };
                self.error(
                    format!("workers.pin_cpus[{i}]"),
                    format!(
                        "CPU {cpu} does not exist: this machine has {} CPU{plural}, numbered 0 to {max}",
                        machine.cpus
                    ),
                );
            }
        }
    }

    fn limits(&mut self, config: &Config) {
        let l = &config.limits;
        if l.max_head_size < KIB || l.max_head_size > MIB {
            self.error(
                "limits.max_head_size",
                format!(
                    "must be between 1024 (1 KiB) and 1048576 (1 MiB) bytes, got {}",
                    l.max_head_size
                ),
            );
        }
        self.range("limits.max_headers", l.max_headers, 1, MAX_HEADERS_CAP, "");
        let per_client = l.max_connections_per_client;
        if per_client > config.workers.max_connections {
            self.error(
                "limits.max_connections_per_client",
                format!(
                    "must be at most workers.max_connections ({}) or 0 for no limit, got {per_client}",
                    config.workers.max_connections
                ),
            );
        }
    }

    fn timeouts(&mut self, config: &Config) {
        let t = &config.timeouts;
        let all: [(&str, Duration); 8] = [
            ("client_head", t.client_head),
            ("client_idle", t.client_idle),
            ("client", t.client),
            ("connect", t.connect),
            ("server", t.server),
            ("tunnel", t.tunnel),
            ("upstream_idle", t.upstream_idle),
            ("shutdown_grace", t.shutdown_grace),
        ];
        for (name, value) in all {
            if value.is_zero() {
                self.error(
                    format!("timeouts.{name}"),
                    "must be greater than zero (e.g. \"10s\" or \"500ms\")",
                );
            }
        }
    }

    fn access_log(&mut self, config: &Config) {
        if config.access_log.target.trim().is_empty() {
            self.error(
                "access_log.target",
                "must not be empty: use \"stdout\", \"stderr\" or a file path (or set enabled = false)",
            );
        }
    }

    fn listeners(&mut self, listeners: &[ListenerConfig]) {
        if listeners.is_empty() {
            self.error(
                "listeners",
                "at least one listener is required, e.g. [[listeners]] with address = \"0.0.0.0:80\"",
            );
        }
        let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, l) in listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if l.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                self.error(
                    format!("{key}.name"),
                    "must not be empty (leave it out to use the address)",
                );
            }
            match parse_socket_addr(&l.address) {
                Ok(addr) => {
                    // Port 0 asks the kernel for a free port, so two such listeners do not collide.
                    if addr.port() != 0 {
                        if let Some(&first) = seen.get(&addr) {
                            self.conflict(
                                format!("{key}.address"),
                                format!("duplicate listener address {addr}"),
                                format!("listeners[{first}].address"),
                            );
                        } else {
                            seen.insert(addr, i);
                        }
                    }
                }
                Err(e) => self.error(format!("{key}.address"), e),
            }
            if l.backlog == 0 || l.backlog > 65535 {
                self.error(
                    format!("{key}.backlog"),
                    format!("must be between 1 and 65535, got {}", l.backlog),
                );
            }
        }
    }

    fn clusters(&mut self, config: &Config) {
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

    fn routes(&mut self, config: &Config) {
        if config.routes.is_empty() {
            self.error(
                "routes",
                "at least one route is required, e.g. [[routes]] with cluster = \"app\" (host \"*\" and path_prefix \"/\" match everything)",
            );
        }
        let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, r) in config.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
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
                let pair = (r.host.as_str(), r.path_prefix.as_str());
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
}

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

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Parses `ip:port` or `[ipv6]:port`; host names (even `localhost`, which may mean 127.0.0.1 or ::1) are
/// refused with a hint, since tether never resolves names.
pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    const FORM: &str = "expected ip:port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"";
    if s.trim().is_empty() {
        return Err(format!("address is empty; {FORM}"));
    }
    if s.trim() != s {
        return Err(format!("address \"{s}\" has surrounding spaces; {FORM}"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(_) => format!("address \"{s}\" has no port; write e.g. \"{s}:8080\""),
            IpAddr::V6(_) => format!(
                "address \"{s}\" has no port; IPv6 addresses go in brackets before the port, e.g. \"[{s}]:8080\""
            ),
        });
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("address \"{s}\" has no port; {FORM}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "address \"{s}\": port \"{port}\" is not a number from 0 to 65535"
        ));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<Ipv6Addr>().is_ok() && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "address \"{s}\": IPv6 addresses go in brackets before the port, e.g. \"[{bare}]:{port}\""
        ));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Err(format!(
            "host names are not resolved, and localhost may mean 127.0.0.1 or ::1: write \"127.0.0.1:{port}\" or \"[::1]:{port}\""
        ));
    }
    if !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && host.chars().any(|c| c.is_ascii_alphabetic())
    {
        return Err(format!(
            "\"{host}\" is a host name; host names are not resolved: write the IP address, e.g. \"10.0.0.5:{port}\""
        ));
    }
    Err(format!("\"{host}\" is not an IP address; {FORM}"))
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
    use super::*;
    use crate::config::load::load_str_on;

    const MACHINE: Machine = Machine { cpus: 2 };

    /// A valid config; tests put extra sections before it or edit it.
    const BASE: &str = r#"[[listeners]]
address = "127.0.0.1:8080"

[clusters.app]
backends = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "app"
"#;

    /// `(line, key, message)` of every error, in the order reported.
    fn errors(text: &str) -> Vec<(usize, String, String)> {
        match load_str_on(text, "t.toml", &MACHINE) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.into_iter()
                    .map(|e| (e.line, e.key, e.message))
                    .collect()
            }
        }
    }

    /// Asserts there is exactly one error, at `line` and `key`; returns its message.
    #[track_caller]
    fn only(text: &str, line: usize, key: &str) -> String {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].0, errs[0].1.as_str()), (line, key), "{errs:#?}");
        errs.into_iter().next().unwrap().2
    }

    /// `section` (two lines: header and one key) before `BASE`, so its key is on line 2.
    fn before(section: &str) -> String {
        format!("{section}\n{BASE}")
    }

    fn base_with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from));
        BASE.replacen(from, to, 1)
    }

    #[test]
    fn base_is_valid() {
        assert_eq!(errors(BASE), []);
    }

    // --- Listeners ----------------------------------------------------------------------------------------

    #[test]
    fn listener_required() {
        let text = "[clusters.app]\nbackends = [{ address = \"127.0.0.1:9001\" }]\n[[routes]]\ncluster = \"app\"\n";
        let m = only(text, 0, "listeners");
        assert!(m.contains("at least one listener"), "{m}");
        let m = only(&format!("listeners = []\n{text}"), 1, "listeners");
        assert!(m.contains("at least one listener"), "{m}");
    }

    #[test]
    fn listener_address_must_be_ip_and_port() {
        for (address, hint) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:http", "not a number"),
            ("127.0.0.1:70000", "not a number"),
            ("localhost:8080", "\"127.0.0.1:8080\""),
            ("lb.example.com:80", "host name"),
            ("::1", "\"[::1]:8080\""),
            ("fe80::1:80", "brackets"),
            ("300.1.2.3:80", "not an IP address"),
            ("", "empty"),
            (" 127.0.0.1:80", "spaces"),
        ] {
            let m = only(
                &base_with("127.0.0.1:8080", address),
                2,
                "listeners[0].address",
            );
            assert!(m.contains(hint), "{address}: {m}");
        }
        for ok in ["0.0.0.0:80", "[::]:443", "[::1]:8080", "127.0.0.1:0"] {
            assert_eq!(errors(&base_with("127.0.0.1:8080", ok)), [], "{ok}");
        }
    }

    #[test]
    fn listener_addresses_are_unique() {
        let text =
            format!("{BASE}\n[[listeners]]\nname = \"again\"\naddress = \"127.0.0.1:8080\"\n");
        let m = only(&text, 12, "listeners[1].address");
        assert!(
            m.contains("duplicate listener address 127.0.0.1:8080"),
            "{m}"
        );
        assert!(m.contains("(see listeners[0].address, line 2)"), "{m}");
        // Port 0 means "any free port": two of them do not collide.
        let text = format!(
            "{BASE}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n"
        );
        assert_eq!(errors(&text), []);
    }

    #[test]
    fn listener_backlog_range() {
        for backlog in ["0", "65536"] {
            let text = base_with("\n\n", &format!("\nbacklog = {backlog}\n\n"));
            let m = only(&text, 3, "listeners[0].backlog");
            assert!(m.contains("between 1 and 65535"), "{m}");
        }
        assert_eq!(errors(&base_with("\n\n", "\nbacklog = 65535\n\n")), []);
    }

    #[test]
    fn listener_name_not_empty() {
        only(
            &base_with("\n\n", "\nname = \" \"\n\n"),
            3,
            "listeners[0].name",
        );
    }

    // --- Clusters -----------------------------------------------------------------------------------------

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

    // --- Routes -------------------------------------------------------------------------------------------

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

    // --- Workers, limits, timeouts, access log ------------------------------------------------------------

    #[test]
    fn workers_max_connections_at_least_1() {
        only(
            &before("[workers]\nmax_connections = 0"),
            2,
            "workers.max_connections",
        );
    }

    #[test]
    fn workers_buffer_size_range() {
        for bad in [1023, 1024 * 1024 + 1] {
            let m = only(
                &before(&format!("[workers]\nbuffer_size = {bad}")),
                2,
                "workers.buffer_size",
            );
            assert!(m.contains("between 1024"), "{m}");
        }
        for ok in [1024, 1024 * 1024] {
            assert_eq!(
                errors(&before(&format!("[workers]\nbuffer_size = {ok}"))),
                []
            );
        }
    }

    #[test]
    fn workers_accept_batch_range() {
        for bad in [0, 4097] {
            only(
                &before(&format!("[workers]\naccept_batch = {bad}")),
                2,
                "workers.accept_batch",
            );
        }
        assert_eq!(errors(&before("[workers]\naccept_batch = 4096")), []);
    }

    #[test]
    fn workers_upstream_idle_pool_at_most_65536() {
        only(
            &before("[workers]\nupstream_idle_pool = 65537"),
            2,
            "workers.upstream_idle_pool",
        );
        assert_eq!(errors(&before("[workers]\nupstream_idle_pool = 0")), []);
    }

    #[test]
    fn workers_pin_cpus_exist() {
        let m = only(
            &before("[workers]\npin_cpus = [\n  1,\n  2,\n]"),
            4,
            "workers.pin_cpus[1]",
        );
        assert_eq!(
            m,
            "CPU 2 does not exist: this machine has 2 CPUs, numbered 0 to 1"
        );
        assert_eq!(errors(&before("[workers]\npin_cpus = [0, 1, 0]")), []);
    }

    #[test]
    fn detected_machine_has_a_cpu() {
        assert!(Machine::detect().cpus >= 1);
    }

    #[test]
    fn limits_ranges() {
        for bad in [1023, 1024 * 1024 + 1] {
            only(
                &before(&format!("[limits]\nmax_head_size = {bad}")),
                2,
                "limits.max_head_size",
            );
        }
        for bad in [0, MAX_HEADERS_CAP + 1] {
            let m = only(
                &before(&format!("[limits]\nmax_headers = {bad}")),
                2,
                "limits.max_headers",
            );
            assert!(m.contains("between 1 and 512"), "{m}");
        }
        assert_eq!(
            errors(&before(
                "[limits]\nmax_head_size = 1048576\nmax_headers = 512"
            )),
            []
        );
        let m = only(
            &before("[limits]\nmax_connections_per_client = 10001"),
            2,
            "limits.max_connections_per_client",
        );
        assert!(m.contains("at most workers.max_connections (10000)"), "{m}");
        assert_eq!(
            errors(&before("[limits]\nmax_connections_per_client = 10000")),
            []
        );
    }

    #[test]
    fn timeouts_non_zero() {
        let names = [
            "client_head",
            "client_idle",
            "client",
            "connect",
            "server",
            "tunnel",
            "upstream_idle",
            "shutdown_grace",
        ];
        // Written in reverse order: errors still come in file order.
        let mut text = String::from("[timeouts]\n");
        for name in names.iter().rev() {
            text.push_str(&format!("{name} = \"0s\"\n"));
        }
        let errs = errors(&format!("{text}{BASE}"));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.0, e.1.as_str())).collect();
        let want: Vec<(usize, String)> = names
            .iter()
            .rev()
            .enumerate()
            .map(|(i, n)| (i + 2, format!("timeouts.{n}")))
            .collect();
        let want: Vec<(usize, &str)> = want.iter().map(|(l, k)| (*l, k.as_str())).collect();
        assert_eq!(got, want);
        assert!(errs.iter().all(|e| e.2.contains("greater than zero")));
        assert_eq!(errors(&before("[timeouts]\nconnect = \"1ms\"")), []);
    }

    #[test]
    fn access_log_target_not_empty() {
        let m = only(
            &before("[access_log]\ntarget = \"\""),
            2,
            "access_log.target",
        );
        assert!(m.contains("\"stdout\""), "{m}");
    }

    // --- All at once --------------------------------------------------------------------------------------

    #[test]
    fn all_errors_reported_in_file_order() {
        let text = r#"[[routes]]
host = "a.*"
cluster = "nope"

[[listeners]]
address = "localhost:80"
backlog = 0

[clusters.app]
retries = 99
backends = [{ address = "127.0.0.1:1", weight = 0 }]

[workers]
buffer_size = 1

[timeouts]
connect = "0s"
"#;
        let errs = errors(text);
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (2, "routes[0].host"),
                (3, "routes[0].cluster"),
                (6, "listeners[0].address"),
                (7, "listeners[0].backlog"),
                (10, "clusters.app.retries"),
                (11, "clusters.app.backends[0].weight"),
                (14, "workers.buffer_size"),
                (17, "timeouts.connect"),
            ]
        );
        let shown = load_str_on(text, "lb.toml", &MACHINE)
            .unwrap_err()
            .to_string();
        assert_eq!(shown.lines().count(), 8);
        assert!(shown.starts_with("lb.toml:2: routes[0].host: "), "{shown}");
    }

    #[test]
    fn fixture_errors() {
        let text = include_str!("../../tests/fixtures/config/errors.toml");
        let got: Vec<(usize, String)> = errors(text).into_iter().map(|e| (e.0, e.1)).collect();
        let got: Vec<(usize, &str)> = got.iter().map(|(l, k)| (*l, k.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "workers.buffer_size"),
                (6, "listeners[0].address"),
                (9, "clusters.app.backends[0].weight"),
                (12, "routes[0].host"),
                (13, "routes[0].cluster"),
            ]
        );
    }
}
