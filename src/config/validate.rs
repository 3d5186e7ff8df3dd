//! Semantic checks on a parsed config: addresses, names, references, ranges.
//!
//! Each check names the offending key by its dotted path (`clusters.app.backends[1].weight`); `load.rs` turns
//! the path into a line. Every problem is collected, so one run reports them all.

use super::names::{closest, quote_key};
use super::schema::{
    BalanceAlgorithm, ClusterConfig, Config, HealthCheckConfig, ListenerConfig, RouteConfig,
    parse_status_range,
};
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
    v.shared_backend_health(&config);
    v.routes(&config);
    v.tls(&config);
    v.sessions_and_qos(&config);
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
        if w.busy_poll > Duration::from_millis(10) {
            self.error(
                "workers.busy_poll",
                "must be at most \"10ms\" (e.g. \"200us\"); a longer spin only burns CPU",
            );
        }
        if w.batch_window > Duration::from_millis(1) {
            self.error(
                "workers.batch_window",
                "must be at most \"1ms\" (e.g. \"60us\"); it is latency added to requests under load",
            );
        }
        self.range("workers.batch_target", w.batch_target, 1, 1024, "");
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
        let all: [(&str, Duration); 9] = [
            ("client_head", t.client_head),
            ("client_idle", t.client_idle),
            ("client", t.client),
            ("connect", t.connect),
            ("server", t.server),
            ("tunnel", t.tunnel),
            ("upstream_idle", t.upstream_idle),
            ("shutdown_grace", t.shutdown_grace),
            ("tls_handshake", t.tls_handshake),
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

    /// TLS on listeners and toward clusters: files are read now, so `tether check` catches a missing or
    /// mismatched certificate before a start or reload does.
    fn tls(&mut self, config: &Config) {
        use crate::tls::certs::{load_certified_key, load_chain, load_key};
        if config.tls.ticket_rotation < Duration::from_secs(1) {
            self.error(
                "tls.ticket_rotation",
                "must be at least 1s (e.g. \"1h\"); tickets stay valid for two rotations",
            );
        }
        for (i, l) in config.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            let Some(tls) = &l.tls else {
                continue;
            };
            if l.redirect_https {
                self.error(
                    format!("{key}.redirect_https"),
                    "only for plain listeners; a TLS listener redirects plain HTTP with tls.plain_http = \"redirect\"",
                );
            }
            if tls.certificates.is_empty() {
                self.error(
                    format!("{key}.tls.certificates"),
                    "at least one certificate is required, e.g. [{ cert = \"certs/site.crt\", key = \"certs/site.key\" }]",
                );
            }
            for (j, c) in tls.certificates.iter().enumerate() {
                let ckey = format!("{key}.tls.certificates[{j}]");
                let (cert_path, key_path) =
                    (config.resolve_path(&c.cert), config.resolve_path(&c.key));
                let chain_ok = match load_chain(&cert_path) {
                    Ok(_) => true,
                    Err(e) => {
                        self.error(format!("{ckey}.cert"), e.to_string());
                        false
                    }
                };
                let key_ok = match load_key(&key_path) {
                    Ok(_) => true,
                    Err(e) => {
                        self.error(format!("{ckey}.key"), e.to_string());
                        false
                    }
                };
                if chain_ok && key_ok {
                    // Both parse: do they belong together, and is the key type usable?
                    if let Err(e) = load_certified_key(&cert_path, &key_path) {
                        self.error(format!("{ckey}.key"), e.to_string());
                    }
                }
                if let Some(names) = &c.names {
                    if names.is_empty() {
                        self.error(
                            format!("{ckey}.names"),
                            "must list at least one name, or be left out to use the certificate's own names",
                        );
                    }
                    for (k, n) in names.iter().enumerate() {
                        if !valid_server_name(n) {
                            self.error(
                                format!("{ckey}.names[{k}]"),
                                format!("{n:?} is not a host name or *.wildcard"),
                            );
                        }
                    }
                }
            }
            if tls.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
                self.error(
                    format!("{key}.tls.alpn"),
                    "protocol names must be 1 to 255 bytes, e.g. [\"http/1.1\"]",
                );
            }
        }
        for (name, cluster) in &config.clusters {
            let Some(tls) = &cluster.tls else {
                continue;
            };
            let key = format!("clusters.{}.tls", quote_key(name));
            match (&tls.ca, tls.verify) {
                (None, true) => self.error(
                    format!("{key}.ca"),
                    "a CA bundle is required to verify backend certificates (or verify = false, for tests only)",
                ),
                (Some(ca), _) => {
                    if let Err(e) = load_chain(&config.resolve_path(ca)) {
                        self.error(format!("{key}.ca"), e.to_string());
                    }
                }
                (None, false) => {}
            }
            match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(k)) => {
                    if let Err(e) = load_chain(&config.resolve_path(cert)) {
                        self.error(format!("{key}.client_cert"), e.to_string());
                    }
                    if let Err(e) = load_key(&config.resolve_path(k)) {
                        self.error(format!("{key}.client_key"), e.to_string());
                    }
                }
                (Some(_), None) => {
                    self.error(format!("{key}.client_key"), "client_cert needs client_key")
                }
                (None, Some(_)) => {
                    self.error(format!("{key}.client_cert"), "client_key needs client_cert")
                }
                (None, None) => {}
            }
            if let Some(sni) = &tls.sni {
                if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                    self.error(
                        format!("{key}.sni"),
                        format!("{sni:?} is not a valid server name"),
                    );
                }
            }
            if tls.min_idle > config.workers.upstream_idle_pool {
                self.error(
                    format!("{key}.min_idle"),
                    format!(
                        "must not exceed workers.upstream_idle_pool ({})",
                        config.workers.upstream_idle_pool
                    ),
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
            self.balancing(&key, cluster);
            if let Some(check) = &cluster.health_check {
                self.health_check(&key, check);
            }
            let passive = &cluster.passive_health;
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

    fn health_check(&mut self, key: &str, check: &HealthCheckConfig) {
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

    /// A backend's health is kept per address, so clusters that share an address must agree on how it is
    /// judged.
    fn shared_backend_health(&mut self, config: &Config) {
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

    fn routes(&mut self, config: &Config) {
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
}

impl Validator {
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
            (super::schema::RouteClass::Secure, None) => self.error(
                format!("{key}.session"),
                "a secure route needs a session identity: \"insert:COOKIE\", \"learn:COOKIE\", \"header:NAME\" or \"client_ip\"",
            ),
            (super::schema::RouteClass::Stateless, Some(_)) => self.error(
                format!("{key}.session"),
                "only secure routes keep sessions; add class = \"secure\" or remove session",
            ),
            _ => {}
        }
    }

    /// `[sessions]`, `[qos]` and the clusters' QoS limits.
    fn sessions_and_qos(&mut self, config: &Config) {
        let s = &config.sessions;
        if s.max_entries == 0 {
            self.error("sessions.max_entries", "must be at least 1");
        }
        if s.ttl < Duration::from_secs(1) {
            self.error("sessions.ttl", "must be at least 1s (e.g. \"30m\")");
        }
        for (i, k) in s.cookie_keys.iter().enumerate() {
            if let Err(e) = crate::sticky::cookie::CookieSealer::decode_key(k) {
                self.error(
                    format!("sessions.cookie_keys[{i}]"),
                    format!("{e}; make one with: head -c 32 /dev/urandom | base64"),
                );
            }
        }
        if !s.cookie_path.starts_with('/')
            || s.cookie_path
                .bytes()
                .any(|b| b == b';' || b.is_ascii_control())
        {
            self.error(
                "sessions.cookie_path",
                "must start with / and contain no ; or control characters",
            );
        }
        if config.qos.aging.is_zero() {
            self.error("qos.aging", "must be greater than zero (e.g. \"1s\")");
        }
        if let Some(h) = &config.qos.priority_header {
            if h.is_empty() || !h.chars().all(is_header_char) {
                self.error("qos.priority_header", format!("{h:?} is not a header name"));
            }
        }
        for (name, c) in &config.clusters {
            let key = format!("clusters.{}", quote_key(name));
            if c.max_inflight > 0 && c.queue_timeout.is_zero() {
                self.error(
                    format!("{key}.queue_timeout"),
                    "must be greater than zero (e.g. \"10s\")",
                );
            }
        }
    }
}

/// What makes two routes indistinguishable: host, path prefix, methods (sorted) and header condition.
type RouteIdentity<'a> = (&'a str, &'a str, Vec<&'a str>, Option<String>);

fn is_header_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
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

/// A DNS name or a `*.suffix` wildcard as TLS certificates and SNI use them.
fn valid_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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
    fn workers_batching_bounds() {
        only(
            &before("[workers]\nbatch_window = \"2ms\""),
            2,
            "workers.batch_window",
        );
        for bad in [0, 1025] {
            only(
                &before(&format!("[workers]\nbatch_target = {bad}")),
                2,
                "workers.batch_target",
            );
        }
        assert_eq!(
            errors(&before(
                "[workers]\nbatch_window = \"1ms\"\nbatch_target = 1024"
            )),
            []
        );
        assert_eq!(errors(&before("[workers]\nbatch_window = \"0s\"")), []);
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
