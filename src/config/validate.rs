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
