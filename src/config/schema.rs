//! The configuration file's shape: every section and key, with its default.
//!
//! These types mirror the TOML document one to one; `docs/CONFIG.md` documents each key. Semantic checks
//! (addresses parse, routes name existing clusters, …) live in `validate.rs`, not here, so serde's errors stay
//! about syntax and types and ours can name the exact key.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Backend pools by name (`[clusters.NAME]`).
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Evaluated most specific first (exact host before wildcard, longer path prefix before shorter).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `[workers]`: per-core tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// `"auto"` (one per core) or a number.
    pub count: WorkerCount,
    /// Pin worker i to `pin_cpus[i % len]`; empty means no pinning.
    pub pin_cpus: Vec<usize>,
    /// Client connections per worker; at the limit a worker stops accepting and leaves connections in the
    /// kernel backlog.
    pub max_connections: usize,
    /// Size of each I/O buffer in bytes (one per direction per active connection; idle connections hold none).
    pub buffer_size: usize,
    /// Connections accepted per readiness event before the worker serves others.
    pub accept_batch: usize,
    /// Idle upstream connections kept per backend per worker.
    pub upstream_idle_pool: usize,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            count: WorkerCount::Auto,
            pin_cpus: Vec::new(),
            max_connections: 10_000,
            buffer_size: 16 * 1024,
            accept_batch: 64,
            upstream_idle_pool: 64,
        }
    }
}

/// Worker count: `"auto"` or an explicit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    Auto,
    Fixed(usize),
}

impl WorkerCount {
    /// The number of worker threads this resolves to on this machine.
    pub fn resolve(self) -> usize {
        match self {
            WorkerCount::Fixed(n) => n.max(1),
            WorkerCount::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

impl<'de> Deserialize<'de> for WorkerCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) if n >= 1 => Ok(WorkerCount::Fixed(n as usize)),
            Raw::Num(n) => Err(serde::de::Error::custom(format!(
                "worker count must be at least 1, got {n}"
            ))),
            Raw::Text(s) if s == "auto" => Ok(WorkerCount::Auto),
            Raw::Text(s) => Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a number, got \"{s}\""
            ))),
        }
    }
}

/// `[timeouts]`: every timeout is a duration string such as `"10s"`, `"500ms"` or `"1h"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time for a client to send a complete request head once it started one (→ 408).
    #[serde(with = "duration")]
    pub client_head: Duration,
    /// Time an idle keep-alive client connection is kept between requests (closed silently).
    #[serde(with = "duration")]
    pub client_idle: Duration,
    /// Inactivity while reading a request body from, or writing a response to, the client.
    #[serde(with = "duration")]
    pub client: Duration,
    /// Time to establish a backend connection (→ 502 after retries).
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Inactivity while waiting for or reading a backend response (→ 504 if nothing was sent yet).
    #[serde(with = "duration")]
    pub server: Duration,
    /// Inactivity of an upgraded (WebSocket) tunnel in either direction.
    #[serde(with = "duration")]
    pub tunnel: Duration,
    /// How long an idle pooled backend connection is kept.
    #[serde(with = "duration")]
    pub upstream_idle: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before they are cut.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_head: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            client: Duration::from_secs(30),
            connect: Duration::from_secs(5),
            server: Duration::from_secs(30),
            tunnel: Duration::from_secs(3600),
            upstream_idle: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `[limits]`: sizes past which a request is refused.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request or response head in bytes (request line/status line plus headers) (→ 431 / 502).
    pub max_head_size: usize,
    /// Most header fields in one head (→ 431 / 502).
    pub max_headers: usize,
    /// Most client connections one client address may hold open at once, per worker (0: no limit). A
    /// connection over it is closed as soon as it is accepted, without an answer.
    pub max_connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_size: 32 * 1024,
            max_headers: 100,
            max_connections_per_client: 0,
        }
    }
}

/// `[access_log]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write one line per request.
    pub enabled: bool,
    /// `"stdout"`, `"stderr"` or a file path (appended to).
    pub target: String,
    /// Line format.
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            target: "stdout".to_string(),
            format: AccessLogFormat::Combined,
        }
    }
}

/// Access log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Apache combined style plus tether's fields (backend, timings, termination).
    Combined,
    /// One JSON object per line.
    Json,
}

/// `[[listeners]]`: one address clients connect to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Used in logs; defaults to the address.
    #[serde(default)]
    pub name: Option<String>,
    /// `ip:port` or `[ipv6]:port` (validation refuses host names, even `localhost`); port 0 picks a free port
    /// (logged at start-up).
    pub address: String,
    /// Kernel accept queue length, 1..=65535.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Keep and extend the client's own `X-Forwarded-*` headers (only behind another trusted proxy).
    #[serde(default)]
    pub trust_forwarded: bool,
}

fn default_backlog() -> u32 {
    1024
}

/// `[clusters.NAME]`: a pool of backends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How a backend is picked.
    #[serde(default)]
    pub balance: BalanceAlgorithm,
    /// Extra attempts on another backend for an idempotent request whose connection failed before any
    /// response byte.
    /// 0..=10.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// At least one; addresses unique within the cluster.
    pub backends: Vec<BackendConfig>,
}

fn default_retries() -> u32 {
    2
}

/// How a cluster picks a backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalanceAlgorithm {
    /// Backends in turn, each as often as its weight.
    #[default]
    RoundRobin,
}

/// One backend server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `ip:port` or `[ipv6]:port`: validation refuses host names (even `localhost`, which may mean 127.0.0.1 or
    /// ::1), so the runtime can `parse::<SocketAddr>()` it without resolving anything.
    pub address: String,
    /// Share of requests relative to the cluster's other backends, 1..=256 (0 is refused: use `drain`).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Drained backends get no new requests; in-flight ones finish.
    #[serde(default)]
    pub drain: bool,
}

fn default_weight() -> u32 {
    1
}

/// `[[routes]]`: host and path prefix → cluster.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact name (`example.com`), wildcard (`*.example.com`, any depth of subdomain, not the bare suffix) or
    /// `*` for any host. Validation requires lowercase and no port.
    #[serde(default = "default_host")]
    pub host: String,
    /// Starts with `/`; matched as a plain byte prefix of the request path (no segment boundaries).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Name of an existing cluster.
    pub cluster: String,
}

fn default_host() -> String {
    "*".to_string()
}

fn default_path_prefix() -> String {
    "/".to_string()
}

/// Serde adapter for humantime duration strings (`"10s"`, `"250ms"`, `"1h 30m"`).
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration \"{s}\": {e} (examples: \"10s\", \"500ms\", \"1h\")"
            ))
        })
    }
}
