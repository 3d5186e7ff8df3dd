//! The configuration file's shape: every section and key, with its default.
//!
//! These types mirror the TOML document one to one; `docs/CONFIG.md` documents each key. Semantic checks
//! (addresses parse, routes name existing clusters, …) live in `validate/`, one module per section, not here, so
//! serde's errors stay about syntax and types and ours can name the exact key.

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
    /// `[tls]`: settings shared by every TLS listener (session tickets, session cache).
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[sessions]`: the session table and issued cookies.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// `[qos]`: priority scheduling of waiting requests.
    #[serde(default)]
    pub qos: QosConfig,
    /// `[cluster]`: this node's place among tether nodes that mirror their state (absent: a lone node).
    #[serde(default)]
    pub cluster: Option<ClusterMembership>,
    /// `[auth]`: logins at the balancer (issue #14); absent with `[pools]` present means every default.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// User pools by name (`[pools.NAME]`): who may log in, and for which tenant.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// `[metering]`: usage per tenant (pools), and what a tenant over its quota gets.
    #[serde(default)]
    pub metering: MeteringConfig,
    /// `[[rate_limits]]`: named request-rate limits that routes opt in to (`rate_limits = ["NAME"]`).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// `[deny]`: addresses refused at accept (static, or banned by a rule), and addresses never limited.
    #[serde(default)]
    pub deny: DenyConfig,
    /// `[notifications]`: per-session notification queues fed by upstreams (needs `[pools]`).
    #[serde(default)]
    pub notifications: Option<NotificationsConfig>,
    /// `[uploads]`: the upload spool for `uploads = true` routes (docs/UPLOADS.md).
    #[serde(default)]
    pub uploads: Option<UploadsConfig>,
    /// `[admin]`: the admin listener (REST API, `/metrics`), bearer-authenticated (absent: none).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// `[store]`: where the replicated store lives — the mesh of `[cluster]` (the default) or a Redis
    /// or Valkey server shared by every node.
    #[serde(default)]
    pub store: StoreConfig,
    /// Directory relative file paths (certificates, keys, CA bundles) are resolved against: the config
    /// file's directory. Not a key of the file.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

impl Config {
    /// A path from the config, resolved against the config file's directory when relative.
    pub(crate) fn resolve_path(&self, path: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// `[tls]`: process-wide TLS settings. Ticket keys are one key set for every worker and listener, so a
/// client resumes whichever worker it lands on (and, with replication, whichever node).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Issue session tickets (stateless resumption; TLS 1.2 tickets and TLS 1.3 PSKs).
    pub session_tickets: bool,
    /// How often a new ticket key is made; tickets stay valid for two rotations.
    #[serde(with = "duration")]
    pub ticket_rotation: Duration,
    /// Sessions kept by the stateful session cache (TLS 1.2 session ids), shared by all workers; 0 = off.
    pub session_cache_size: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            session_tickets: true,
            ticket_rotation: Duration::from_secs(3600),
            session_cache_size: 20_480,
        }
    }
}

/// `[listeners.tls]`: TLS termination on a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains with their keys; each serves the names in its certificate (SANs) unless `names`
    /// says otherwise. The first is the default for clients that send no (or an unknown) SNI name.
    pub certificates: Vec<CertificateConfig>,
    /// Refuse handshakes whose SNI name matches no certificate (instead of serving the default).
    #[serde(default)]
    pub strict_sni: bool,
    /// Oldest protocol version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Newest protocol version offered: `"1.3"` or `"1.2"`.
    #[serde(default = "newest_tls")]
    pub max_version: TlsVersion,
    /// Key-exchange groups in preference order (`crate::tls::settings::DEFAULT_GROUPS` when absent).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Cipher suites in preference order, the server's deciding (`DEFAULT_SUITES` when absent).
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
    /// ALPN protocols offered, in preference order.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// What a plain-HTTP request on this TLS port gets: `"reject"` (400) or `"redirect"` (308 to https).
    #[serde(default)]
    pub plain_http: PlainHttpPolicy,
}

fn newest_tls() -> TlsVersion {
    TlsVersion::Tls13
}

impl ListenerTls {
    /// The versions, groups and suites chosen, for `tls::settings`.
    pub fn choice(&self) -> crate::tls::settings::Choice<'_> {
        crate::tls::settings::Choice {
            min_version: self.min_version,
            max_version: self.max_version,
            groups: self.groups.as_deref(),
            cipher_suites: self.cipher_suites.as_deref(),
        }
    }
}

fn default_alpn() -> Vec<String> {
    vec!["http/1.1".to_string()]
}

/// A certificate chain and its private key (PEM files).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file: the leaf certificate first, then intermediates.
    pub cert: String,
    /// PEM file: the private key (PKCS#8, RSA or SEC1 EC).
    pub key: String,
    /// Server names (exact or `*.suffix`) this certificate serves; default: its DNS SANs.
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

/// A TLS protocol version (a listener's or cluster's lowest or highest).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// What to do with plain HTTP on a TLS port.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlainHttpPolicy {
    #[default]
    Reject,
    Redirect,
}

/// `[clusters.NAME.tls]`: TLS from tether to the cluster's backends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM bundle of CAs that backend certificates must chain to. Required when `verify` is on.
    #[serde(default)]
    pub ca: Option<String>,
    /// Server name sent in SNI and verified against the certificate; default: the backend's IP address.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify backend certificates (default on). Off is for tests only and logged as a warning.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Client certificate (PEM chain) for mutual TLS; needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// Pre-established TLS connections kept ready per backend per worker (the warm SSL contexts).
    #[serde(default)]
    pub min_idle: usize,
    /// Versions, groups and suites offered to the backends, as on a listener.
    #[serde(default)]
    pub min_version: TlsVersion,
    #[serde(default = "newest_tls")]
    pub max_version: TlsVersion,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
}

impl ClusterTls {
    /// The versions, groups and suites chosen, for `tls::settings`.
    pub fn choice(&self) -> crate::tls::settings::Choice<'_> {
        crate::tls::settings::Choice {
            min_version: self.min_version,
            max_version: self.max_version,
            groups: self.groups.as_deref(),
            cipher_suites: self.cipher_suites.as_deref(),
        }
    }
}

fn default_true() -> bool {
    true
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
    /// Before sleeping, a worker keeps checking for events without blocking for up to this long (`"0s"`:
    /// off). Trades CPU on the worker's core for fewer wake-ups of it, which the processes sending it
    /// packets pay for; worth it on dedicated cores. Like HAProxy's `busy-polling`.
    #[serde(with = "duration")]
    pub busy_poll: Duration,
    /// Under load, a worker woken to fewer than `batch_target` ready connections keeps collecting
    /// readiness, without sleeping, for up to this long before serving them (`"0s"`: off). See
    /// `WorkerSettings::batch_window`.
    #[serde(with = "duration")]
    pub batch_window: Duration,
    /// Ready connections a worker gathers before serving when batching applies.
    pub batch_target: usize,
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
            busy_poll: Duration::ZERO,
            batch_window: Duration::from_micros(60),
            batch_target: 16,
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
    pub(crate) fn resolve(self) -> usize {
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
    /// Time for a client to complete the TLS handshake.
    #[serde(with = "duration")]
    pub tls_handshake: Duration,
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
            tls_handshake: Duration::from_secs(10),
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
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Plain listener only: answer every request with `308 Permanent Redirect` to the same URL on https.
    #[serde(default)]
    pub redirect_https: bool,
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
    /// What `consistent_hash` hashes: `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`. Required with
    /// `consistent_hash`, refused with the other algorithms.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Extra attempts on another backend for an idempotent request whose connection failed before any
    /// response byte.
    /// 0..=10.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A backend that comes back up gets a tenth of its weight, rising linearly to all of it over this
    /// time. `"0s"` (the default) turns slow start off.
    #[serde(default, with = "duration")]
    pub slow_start: Duration,
    /// `[clusters.NAME.health_check]`: active HTTP checks; absent means no active checks.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// `[clusters.NAME.passive_health]`: taking a backend out after consecutive failed requests.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    /// At least one; addresses unique within the cluster.
    pub backends: Vec<BackendConfig>,
    /// Speak TLS to the backends.
    #[serde(default)]
    pub tls: Option<ClusterTls>,
    /// Requests in flight per backend across all workers; beyond it requests wait in the backend's
    /// priority queue. 0: unlimited.
    #[serde(default)]
    pub max_inflight: u32,
    /// Requests waiting per backend; beyond it a request is answered 503 at once.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// How long a request may wait for a slot before it is answered 503.
    #[serde(default = "default_queue_timeout", with = "duration")]
    pub queue_timeout: Duration,
}

fn default_max_queue() -> u32 {
    1024
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retries() -> u32 {
    2
}

/// How a cluster picks a backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalanceAlgorithm {
    /// Backends in turn, one request each; weights are not used (validation refuses unequal weights).
    RoundRobin,
    /// Backends in turn, each as often as its weight, interleaved (nginx's smooth weighted round robin).
    #[default]
    WeightedRoundRobin,
    /// The backend with the fewest requests in flight (counted over all workers) relative to its weight.
    LeastOutstanding,
    /// Power of two choices: two random backends, the one with the lower latency EWMA × (in flight + 1).
    P2cEwma,
    /// Maglev consistent hashing of `hash_on`: a key always goes to the same backend while it is up.
    ConsistentHash,
}

impl BalanceAlgorithm {
    /// The name as written in the config.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BalanceAlgorithm::RoundRobin => "round_robin",
            BalanceAlgorithm::WeightedRoundRobin => "weighted_round_robin",
            BalanceAlgorithm::LeastOutstanding => "least_outstanding",
            BalanceAlgorithm::P2cEwma => "p2c_ewma",
            BalanceAlgorithm::ConsistentHash => "consistent_hash",
        }
    }
}

/// The request key that `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address (without the port).
    ClientIp,
    /// The value of the first header with this name (stored lowercase; matched case-insensitively).
    Header(String),
    /// The value of the cookie with this name (case-sensitive, as cookie names are).
    Cookie(String),
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HashOn::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl HashOn {
    /// Parses `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`.
    fn parse(s: &str) -> Result<HashOn, String> {
        const FORMS: &str = "expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"";
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("invalid hash_on \"{s}\": {FORMS}"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "invalid hash_on \"{s}\": the {kind} name is missing; {FORMS}"
            ));
        }
        // Header and cookie names are both RFC 9110 tokens.
        if let Some(c) = name.chars().find(|&c| !is_token_char(c)) {
            return Err(format!(
                "invalid hash_on \"{s}\": {c:?} cannot appear in a {kind} name"
            ));
        }
        match kind {
            "header" => Ok(HashOn::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(HashOn::Cookie(name.to_string())),
            _ => Err(format!("invalid hash_on \"{s}\": {FORMS}")),
        }
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// `[clusters.NAME.health_check]`: an HTTP request sent to every backend of the cluster at each interval,
/// by one prober thread for the whole process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `"GET"`, `"HEAD"` or `"OPTIONS"`.
    pub method: String,
    /// Request target of the check, starting with `/`.
    pub path: String,
    /// `Host` header of the check; empty means the backend's address.
    pub host: String,
    /// Statuses that pass: `"200-399"`, or one status such as `"204"`.
    pub expect_status: String,
    /// Time between two checks of a backend.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Time a check may take (connect, send, status line); at most `interval`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down backend up. 1..=100.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down. 1..=100.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            method: "GET".to_string(),
            path: "/".to_string(),
            host: String::new(),
            expect_status: "200-399".to_string(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Parses a status range, `"200-399"` or `"204"`, into its inclusive bounds.
pub(crate) fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let status = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(format!(
                "\"{s}\": {t:?} is not an HTTP status from 100 to 599; write a range such as \"200-399\" or one status such as \"200\""
            )),
        }
    };
    let (low, high) = match s.split_once('-') {
        Some((a, b)) => (status(a)?, status(b)?),
        None => {
            let n = status(s)?;
            (n, n)
        }
    };
    if low > high {
        return Err(format!(
            "\"{s}\": the range is empty (write the lower status first, e.g. \"{high}-{low}\")"
        ));
    }
    Ok((low, high))
}

/// `[clusters.NAME.passive_health]`: what requests tell about a backend's health.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failed requests (connect errors, resets, timeouts, invalid responses, and 5xx answers
    /// when `count_5xx`) that take a backend down; 0 turns passive health off. 0..=1000.
    pub consecutive_failures: u32,
    /// How long a backend taken down by failed requests stays down before it is tried again (after a passed
    /// active check when the cluster has `health_check`).
    #[serde(with = "duration")]
    pub cool_down: Duration,
    /// Count 5xx responses as failures.
    pub count_5xx: bool,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            consecutive_failures: 5,
            cool_down: Duration::from_secs(10),
            count_5xx: true,
        }
    }
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
    /// Only requests with one of these methods (uppercase, e.g. `["POST", "PUT"]`); empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only requests that carry this header (any value).
    #[serde(default)]
    pub header: Option<String>,
    /// `"secure"`: state-bearing requests that stick to their session's backend (bound on the first
    /// request); `"stateless"`: the best backend for each request.
    #[serde(default)]
    pub class: RouteClass,
    /// How a secure route recognises a session: `"insert:NAME"` (a sealed cookie tether issues),
    /// `"learn:NAME"` (the backend's own cookie), `"header:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub session: Option<SessionIdentity>,
    /// QoS priority 0 (lowest) to 7; default 5 for secure routes, 2 for stateless ones.
    #[serde(default)]
    pub priority: Option<u8>,
    /// When a session's backend is down: `"rebind"` to the best healthy backend, or `"fail"` (503).
    #[serde(default)]
    pub on_backend_down: FailoverPolicy,
    /// `"login"`: only logged-in users of `pool` reach the backend; `"none"`: anyone.
    #[serde(default)]
    pub auth: RouteAuthMode,
    /// The pool whose users may log in here; default: the only pool. Only with `auth = "login"`.
    #[serde(default)]
    pub pool: Option<String>,
    /// The user needs at least one of these roles; empty: any logged-in user. Only with `auth = "login"`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The user needs at least one of these groups; empty: no group needed. Only with `auth = "login"`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// With `auth = "login"`: pass the identity headers and the identity JWT to the backend.
    #[serde(default = "default_true")]
    pub identity: bool,
    /// Names of `[[rate_limits]]` checked for this route's requests, in order (the first one over its
    /// limit answers 429).
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// With `[notifications]` and `auth = "login"`: responses carry the session's pending notifications
    /// in the `Tether-Notifications` header (within `notifications.piggyback_bytes`).
    #[serde(default)]
    pub notifications: bool,
    /// With `[uploads]`: the route accepts resumable uploads (tus 1.0 and the IETF draft) created on its
    /// own path; a completed upload is forwarded to the route's cluster as one ordinary request.
    #[serde(default)]
    pub uploads: bool,
}

impl RouteConfig {
    /// A route for `host` and `path_prefix` to `cluster` with every other key at its default (stateless,
    /// any method, no session, default priority, rebind on failure, no login).
    pub fn new(host: &str, path_prefix: &str, cluster: &str) -> Self {
        RouteConfig {
            host: host.to_string(),
            path_prefix: path_prefix.to_string(),
            cluster: cluster.to_string(),
            methods: Vec::new(),
            header: None,
            class: RouteClass::default(),
            session: None,
            priority: None,
            on_backend_down: FailoverPolicy::default(),
            auth: RouteAuthMode::default(),
            pool: None,
            roles: Vec::new(),
            groups: Vec::new(),
            identity: true,
            rate_limits: Vec::new(),
            notifications: false,
            uploads: false,
        }
    }
}

/// Whether a route's requests carry session state.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouteClass {
    Secure,
    #[default]
    Stateless,
}

impl RouteClass {
    /// The QoS priority a route of this class gets unless it says otherwise.
    pub(crate) fn default_priority(self) -> u8 {
        match self {
            RouteClass::Secure => 5,
            RouteClass::Stateless => 2,
        }
    }
}

/// Whether a route asks for a login.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuthMode {
    /// Anyone reaches the backend (tether's login plays no part).
    #[default]
    None,
    /// Only users logged in to the route's pool (with the route's roles and groups) reach the backend.
    Login,
}

/// What a session's backend failing means for the session.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    #[default]
    Rebind,
    Fail,
}

/// How a request names its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionIdentity {
    /// A cookie tether issues: sealed, carrying the session id and its backend.
    Insert(String),
    /// A cookie the backend sets (e.g. `JSESSIONID`), bound to the backend that set it.
    Learn(String),
    /// A request header's value (e.g. a bearer token); stored lowercase.
    Header(String),
    /// The client's IP address.
    ClientIp,
}

impl<'de> Deserialize<'de> for SessionIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SessionIdentity::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl SessionIdentity {
    /// Parses `"insert:NAME"`, `"learn:NAME"`, `"header:NAME"` or `"client_ip"`.
    fn parse(s: &str) -> Result<SessionIdentity, String> {
        const FORMS: &str =
            "expected \"insert:COOKIE\", \"learn:COOKIE\", \"header:NAME\" or \"client_ip\"";
        if s == "client_ip" {
            return Ok(SessionIdentity::ClientIp);
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("invalid session \"{s}\": {FORMS}"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "invalid session \"{s}\": the name is missing; {FORMS}"
            ));
        }
        if let Some(c) = name.chars().find(|&c| !is_token_char(c)) {
            return Err(format!(
                "invalid session \"{s}\": {c:?} cannot appear in a {kind} name"
            ));
        }
        match kind {
            "insert" => Ok(SessionIdentity::Insert(name.to_string())),
            "learn" => Ok(SessionIdentity::Learn(name.to_string())),
            "header" => Ok(SessionIdentity::Header(name.to_ascii_lowercase())),
            _ => Err(format!("invalid session \"{s}\": {FORMS}")),
        }
    }
}

/// `[sessions]`: the session table and the cookies tether issues.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Most sessions kept; past it the least recently seen are evicted.
    pub max_entries: usize,
    /// A session not seen for this long expires (and so does its cookie's binding).
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Keys (base64, 32 bytes each) that seal session cookies, newest first: the first seals, all open.
    /// Empty: a random key per start (cookies then do not survive a restart or another node).
    pub cookie_keys: Vec<String>,
    /// `SameSite` attribute of issued cookies: `"lax"`, `"strict"` or `"none"`.
    pub same_site: SameSite,
    /// `Path` attribute of issued cookies.
    pub cookie_path: String,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_entries: 1_000_000,
            ttl: Duration::from_secs(30 * 60),
            cookie_keys: Vec::new(),
            same_site: SameSite::Lax,
            cookie_path: "/".to_string(),
        }
    }
}

/// Cookie `SameSite` attribute.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

/// `[[rate_limits]]`: one named limit on request rate, as a token bucket (or, cluster-wide, a fixed
/// window counted on every node).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// How routes and the `RateLimit-Policy` header name the limit.
    pub name: String,
    /// What a bucket is kept for: `"address"` (the client's), `"user"` or `"tenant"` (of a logged-in
    /// request; others pass), `"route"` (one bucket for the route), or `"header:NAME"` (its value;
    /// requests without it pass).
    pub key: String,
    /// Requests allowed per `per`.
    pub rate: u64,
    /// The period `rate` counts over (e.g. `"1s"`, `"1m"`).
    #[serde(with = "duration")]
    pub per: Duration,
    /// Requests a full bucket lets through at once; default `rate`. Node-local limits only.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Count across every node of `[cluster]`: a fixed window of `per` holding at most `rate`
    /// requests cluster-wide (each node counts its own share and replicates it).
    #[serde(default)]
    pub cluster_wide: bool,
    /// Per tenant tier: the rate (per `per`) of requests whose tenant's pool has that `tier`, instead of
    /// `rate`; the burst scales alike (`burst × tier rate / rate`). Other requests get `rate`.
    #[serde(default)]
    pub tiers: BTreeMap<String, u64>,
}

/// `[deny]`: refusal at accept time, before any parsing.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DenyConfig {
    /// IPv4 listeners drop denied addresses' SYNs in the kernel (a socket filter) instead of accepting
    /// and closing their connections.
    pub kernel_filter: bool,
    /// Addresses or CIDR blocks never limited: no rate limit, no deny rule, no deny entry applies.
    pub allow: Vec<String>,
    /// Addresses or CIDR blocks always refused at accept.
    pub deny: Vec<String>,
    /// Rules that put an address on the replicated deny list for a while.
    pub rules: Vec<DenyRule>,
}

impl Default for DenyConfig {
    fn default() -> Self {
        DenyConfig {
            kernel_filter: true,
            allow: Vec::new(),
            deny: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One rule of `[deny] rules` (one of `requests_per_sec` and `bad_requests_per_min`): an address that
/// exceeds it on one node is refused at accept by every node for `ban`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    /// Requests per second (a token bucket of that size refilled at that rate).
    #[serde(default)]
    pub requests_per_sec: Option<u64>,
    /// Requests refused as malformed (tether's own 4xx for bad input) per minute.
    #[serde(default)]
    pub bad_requests_per_min: Option<u64>,
    #[serde(with = "duration")]
    pub ban: Duration,
}

/// `[uploads]`: the upload spool (docs/UPLOADS.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Directory the spool files live in (created at start; relative: to the config file's directory).
    pub dir: String,
    /// Largest upload (bytes); also what an upload of unknown length may reach.
    pub max_size: u64,
    /// Largest body one request may append (bytes); more is refused with 413 (`Upload-Limit`).
    pub max_chunk: usize,
    /// How long an upload may stay unfinished after its creation.
    #[serde(with = "duration")]
    pub expiry: Duration,
    /// Bytes of unfinished uploads one user may hold at once (0: no limit).
    pub user_quota: u64,
    /// Bytes of unfinished uploads the users of one tenant (a pool's `tenant`) may hold at once, for
    /// every tenant not in `tenant_quotas` (0: no limit).
    pub tenant_quota: u64,
    /// Tenants whose cap differs from `tenant_quota`, by tenant name (0: no limit for that tenant).
    pub tenant_quotas: BTreeMap<String, u64>,
    /// Threads writing spool files and forwarding completed uploads.
    pub threads: usize,
    /// Attempts at forwarding a completed upload to the route's backends before answering 502.
    pub forward_attempts: u32,
    /// How long a forward waits for the backend's answer.
    #[serde(with = "duration")]
    pub forward_timeout: Duration,
    /// Per replication link, upload bytes sent to the peer and not yet acknowledged (flow control of
    /// the spool's side channel; at least 256 KiB is used).
    pub window: usize,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            dir: "spool".into(),
            max_size: 1 << 30,
            max_chunk: 8 << 20,
            expiry: Duration::from_secs(24 * 3600),
            user_quota: 0,
            tenant_quota: 0,
            tenant_quotas: BTreeMap::new(),
            threads: 2,
            forward_attempts: 3,
            forward_timeout: Duration::from_secs(60),
            window: 1 << 20,
        }
    }
}

/// `[admin]`: the admin listener (docs/ADMIN.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener. Default: loopback, `127.0.0.1:9180`.
    pub address: String,
    /// The bearer token every admin call presents (at least 16 bytes); or `token_file`.
    pub token: Option<String>,
    /// A file holding the token (its first line), so the token stays out of the config file; empty: none.
    pub token_file: Option<String>,
    /// PEM certificate chain and key: the admin listener speaks TLS (HTTPS); empty: plain HTTP.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// PEM bundle of CAs: with it, a client must present a certificate chaining to one of them (mutual
    /// TLS) before any call, and still the token. Needs `cert` and `key`; empty: none.
    pub client_ca: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:9180".into(),
            token: None,
            token_file: None,
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

impl AdminConfig {
    /// The TLS files set (an empty value is none, as configs/full.toml writes every key): (cert, key,
    /// client CA).
    pub fn tls_files(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        fn set(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|v| !v.is_empty())
        }
        (set(&self.cert), set(&self.key), set(&self.client_ca))
    }

    /// The token: `token`, or the first line of `token_file` (resolved against the config's directory).
    pub fn read_token(&self, config: &Config) -> Result<String, String> {
        // An empty `token_file` is none (configs/full.toml writes every key).
        let file = self.token_file.as_ref().filter(|f| !f.is_empty());
        match (&self.token, file) {
            (Some(t), None) => Ok(t.clone()),
            (None, Some(f)) => {
                let path = config.resolve_path(f);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok(text.lines().next().unwrap_or("").trim().to_string())
            }
            (Some(_), Some(_)) => Err("set token or token_file, not both".into()),
            (None, None) => Err("the admin listener needs a token (or token_file)".into()),
        }
    }
}

/// `[notifications]`: per-session notification queues (docs/NOTIFICATIONS.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// Address of the publish listener (`POST /publish`, bearer-authenticated); none: no publishing.
    pub publish_address: Option<String>,
    /// The publish listener's bearer secret (at least 16 bytes).
    pub publish_secret: Option<String>,
    /// Most notifications a session's queue holds.
    pub max_count: usize,
    /// Most bytes of notification data a session's queue holds.
    pub max_bytes: usize,
    /// What a publish to a full queue does: `"drop_oldest"` (with a marker) or `"refuse"` (507).
    pub when_full: WhenFull,
    /// How long an unacknowledged notification is kept.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Bytes of `Tether-Notifications` header a response of a `notifications = true` route may carry.
    pub piggyback_bytes: usize,
    /// When published notifications are deleted: `"ack"` or `"delivery"`.
    pub delete_on: DeleteOn,
    /// Interval of the keep-alive comment on an idle SSE stream.
    #[serde(with = "duration")]
    pub keepalive: Duration,
    /// Longest long poll (`wait=`) a client may ask for.
    #[serde(with = "duration")]
    pub max_wait: Duration,
    /// Upstream SSE feeds tether subscribes to.
    pub feeds: Vec<FeedConfig>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            publish_address: None,
            publish_secret: None,
            max_count: 1000,
            max_bytes: 1 << 20,
            when_full: WhenFull::DropOldest,
            ttl: Duration::from_secs(24 * 3600),
            piggyback_bytes: 4096,
            delete_on: DeleteOn::Ack,
            keepalive: Duration::from_secs(15),
            max_wait: Duration::from_secs(60),
            feeds: Vec::new(),
        }
    }
}

/// What a publish to a full queue does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The oldest notifications make room; the next one delivered says how many were dropped.
    #[default]
    DropOldest,
    /// The publish is refused with 507.
    Refuse,
}

/// When a notification is deleted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeleteOn {
    /// When the client acknowledges it (`POST /.tether/notifications/ack`).
    #[default]
    Ack,
    /// As soon as it is delivered once (in a header, a poll answer or a stream).
    Delivery,
}

/// `[[notifications.feeds]]`: one upstream `text/event-stream` tether keeps a connection to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Used in logs.
    pub name: String,
    /// `http://host:port/path` of the upstream's event stream.
    pub url: String,
    /// When this feed's notifications are deleted (default: `notifications.delete_on`).
    #[serde(default)]
    pub delete_on: Option<DeleteOn>,
    /// Longest pause between reconnections (the back-off doubles from 100 ms up to it).
    #[serde(default = "default_feed_backoff", with = "duration")]
    pub max_backoff: Duration,
}

fn default_feed_backoff() -> Duration {
    Duration::from_secs(5)
}

/// `[qos]`: how waiting requests are ordered.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QosConfig {
    /// A waiting request gains one priority level per `aging` waited, so a low class is never starved
    /// beyond about `7 × aging`.
    #[serde(with = "duration")]
    pub aging: Duration,
    /// Header carrying a priority (0–7) set by a trusted upstream; honoured only on listeners with
    /// `trust_forwarded = true`, and removed before the request reaches a backend.
    pub priority_header: Option<String>,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            aging: Duration::from_secs(1),
            priority_header: None,
        }
    }
}

/// `[cluster]`: the tether nodes this one mirrors its replicated state with, over mutually
/// authenticated TLS links (docs/PROTOCOL.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterMembership {
    /// The cluster's name; a peer announcing another one is refused.
    pub name: String,
    /// This node's name (its certificate must carry it).
    pub node: String,
    /// Where this node accepts replication links (`ip:port`).
    pub listen: String,
    /// Every other node of the cluster (full mesh, 1–7 peers).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Link security: the cluster CA and this node's certificate and key.
    pub tls: LinkTlsConfig,
    /// A heartbeat goes out on a link idle this long; three missed ones close the link.
    #[serde(with = "duration", default = "default_heartbeat")]
    pub heartbeat: Duration,
    /// At start, how long to wait for a snapshot from a peer before serving clients; past it the node
    /// serves alone with an empty store (and says so).
    #[serde(with = "duration", default = "default_ready_timeout")]
    pub ready_timeout: Duration,
    /// How long a `sync` write (a login, a revocation) waits for a peer's acknowledgement.
    #[serde(with = "duration", default = "default_sync_timeout")]
    pub sync_timeout: Duration,
    /// Past `sync_timeout`: `"fail"` answers 503; `"degrade"` serves anyway and counts a degraded write.
    #[serde(default)]
    pub on_sync_timeout: SyncTimeoutPolicy,
}

/// What a `sync` write does when no peer acknowledged it in time.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncTimeoutPolicy {
    /// Answer 503: nothing is acknowledged to a client that a second node does not hold.
    #[default]
    Fail,
    /// Serve anyway and count the write as degraded (it replicates when a peer comes back).
    Degrade,
}

fn default_sync_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One peer of `[cluster]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// Its replication address (`ip:port`).
    pub address: String,
}

/// `[cluster.tls]`: PEM files (relative paths: from the config file's directory).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkTlsConfig {
    /// The cluster CA that issued every node's certificate.
    pub ca: String,
    /// This node's certificate (its first DNS name is the node name) and key.
    pub cert: String,
    pub key: String,
}

/// `[auth]`: logins at the balancer (issue #14): the login session, API tokens, identity to backends, and
/// the threads that check passwords. Every key has a default, so `[auth]` alone (or `[pools]` without it)
/// is enough.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Name of the sealed login-session cookie.
    pub cookie: String,
    /// A login session not used for this long ends.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A login session ends this long after the login, used or not.
    #[serde(with = "duration")]
    pub max_lifetime: Duration,
    /// Lifetime of an API access token.
    #[serde(with = "duration")]
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (never beyond the session's `max_lifetime`).
    #[serde(with = "duration")]
    pub refresh_token_ttl: Duration,
    /// How often a new token-sealing and identity-signing key is made.
    #[serde(with = "duration")]
    pub key_rotation: Duration,
    /// The identity JWT's `iss`.
    pub issuer: String,
    /// The identity JWT's `aud`.
    pub audience: String,
    /// Lifetime of an identity JWT.
    #[serde(with = "duration")]
    pub identity_token_ttl: Duration,
    /// Header carrying the identity JWT to backends.
    pub identity_token_header: String,
    /// Header naming the user to backends.
    pub user_header: String,
    /// Header naming the tenant to backends.
    pub tenant_header: String,
    /// Header listing the user's roles (comma-separated) to backends.
    pub roles_header: String,
    /// Threads that check passwords (argon2); 0: half the CPUs, at least 1.
    pub hash_threads: usize,
    /// Password checks waiting at most; beyond it a login is answered 503.
    pub hash_queue: usize,
    /// HTML template of the login page (relative paths: from the config file's directory); none: the
    /// built-in page.
    pub login_page: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cookie: "tether_session".to_string(),
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(12 * 3600),
            access_token_ttl: Duration::from_secs(5 * 60),
            refresh_token_ttl: Duration::from_secs(24 * 3600),
            key_rotation: Duration::from_secs(24 * 3600),
            issuer: "tether".to_string(),
            audience: "backends".to_string(),
            identity_token_ttl: Duration::from_secs(5 * 60),
            identity_token_header: "X-Tether-Identity".to_string(),
            user_header: "X-Tether-User".to_string(),
            tenant_header: "X-Tether-Tenant".to_string(),
            roles_header: "X-Tether-Roles".to_string(),
            hash_threads: 0,
            hash_queue: 256,
            login_page: None,
        }
    }
}

/// `[pools.NAME]`: a pool of users who log in, for one tenant: from a users file, or relayed to an upstream
/// auth endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Tenant named to backends; default: the pool's name.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Users file (relative paths: from the config file's directory); required unless `upstream` is set.
    #[serde(default)]
    pub users: Option<String>,
    /// Host names whose `/.tether/*` endpoints use this pool.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Fewest characters a new password may have.
    #[serde(default = "default_min_password_length")]
    pub min_password_length: usize,
    /// Refuse the most common passwords as new passwords.
    #[serde(default = "default_true")]
    pub refuse_common_passwords: bool,
    /// Users may create their own account.
    #[serde(default)]
    pub self_registration: bool,
    /// Relay logins to an upstream auth endpoint instead of checking local users.
    #[serde(default)]
    pub upstream: Option<UpstreamAuthConfig>,
    /// Usage quotas of the pool's tenant (`[[pools.NAME.quotas]]`).
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
    /// Lock accounts and client addresses after failed logins.
    #[serde(default)]
    pub lockout: LockoutConfig,
    /// The tenant's tier, which `[[rate_limits]] tiers` may give its own rate.
    #[serde(default)]
    pub tier: Option<String>,
    /// Applications that use the pool as their OAuth 2.0 / OpenID Connect provider
    /// (`[[pools.NAME.clients]]`, issue #22).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

/// `[[pools.NAME.clients]]`: a registered client application (OAuth 2.0 / OpenID Connect, issue #22).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The `client_id` the application sends; unique across pools.
    pub client_id: String,
    /// The argon2id PHC hash of the client secret (`tether clients secret` makes both); none: a public
    /// client, which must use PKCE.
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// Where codes may be sent: compared exactly, character for character.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser afterwards: compared exactly.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Scopes the application may ask for.
    #[serde(default = "default_client_scopes")]
    pub scopes: Vec<String>,
    /// How long an authorization code may wait for its exchange.
    #[serde(default = "default_code_ttl", with = "duration")]
    pub code_ttl: Duration,
    /// How long the application's access tokens live.
    #[serde(default = "default_client_access_ttl", with = "duration")]
    pub access_token_ttl: Duration,
    /// How long its refresh tokens live (capped by the login session's end).
    #[serde(default = "default_client_refresh_ttl", with = "duration")]
    pub refresh_token_ttl: Duration,
}

fn default_client_scopes() -> Vec<String> {
    ["openid", "profile", "offline_access"]
        .map(String::from)
        .to_vec()
}

fn default_code_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_client_access_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_client_refresh_ttl() -> Duration {
    Duration::from_secs(86_400)
}

/// `[[pools.NAME.quotas]]`: at most `limit` of `metric` per `period`, cluster-wide.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// `"requests"`, `"bytes_in"`, `"bytes_out"`, `"backend_us"` or `"logins"`.
    pub metric: String,
    /// `"minute"`, `"hour"`, `"day"` or `"month"` (calendar month, UTC).
    pub period: String,
    pub limit: u64,
}

/// `[metering]`: usage per tenant.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    /// Count usage per tenant (only meaningful with pools).
    pub enabled: bool,
    /// File the usage report is written to on `SIGUSR1` and at the end of every minute: CSV, or JSON
    /// when the name ends in `.json`. Relative paths: from the config file's directory.
    pub file: Option<String>,
    /// Status of a request over a quota: 429 or 403.
    pub over_quota: u16,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            enabled: true,
            file: None,
            over_quota: 429,
        }
    }
}

/// `[pools.NAME.lockout]`: when failed logins lock an account (and a client address); Keycloak's
/// brute-force settings, counted cluster-wide.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockoutConfig {
    /// Lock at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Failures of an account before its first lock (the failure factor).
    #[serde(default = "default_lockout_failures")]
    pub failures: u32,
    /// The wait per `failures` failures.
    #[serde(default = "default_wait_increment", with = "duration")]
    pub wait_increment: Duration,
    /// The longest temporary wait.
    #[serde(default = "default_max_wait", with = "duration")]
    pub max_wait: Duration,
    /// Failures closer together than this lock at once (0: no quick check).
    #[serde(default = "default_quick_login_check", with = "duration")]
    pub quick_login_check: Duration,
    /// The wait of a quick lock.
    #[serde(default = "default_min_quick_wait", with = "duration")]
    pub min_quick_wait: Duration,
    /// A failure this long after the previous one starts counting afresh.
    #[serde(default = "default_reset_after", with = "duration")]
    pub reset_after: Duration,
    /// Temporary lockouts before a permanent one (0: never).
    #[serde(default)]
    pub permanent_after: u32,
    /// Also lock a client address that fails too often, whatever the accounts it tries.
    #[serde(default = "default_true")]
    pub per_address: bool,
    /// Failures from one address before its first lock.
    #[serde(default = "default_address_failures")]
    pub address_failures: u32,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            enabled: true,
            failures: default_lockout_failures(),
            wait_increment: default_wait_increment(),
            max_wait: default_max_wait(),
            quick_login_check: default_quick_login_check(),
            min_quick_wait: default_min_quick_wait(),
            reset_after: default_reset_after(),
            permanent_after: 0,
            per_address: true,
            address_failures: default_address_failures(),
        }
    }
}

fn default_lockout_failures() -> u32 {
    5
}

fn default_wait_increment() -> Duration {
    Duration::from_secs(60)
}

fn default_max_wait() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_quick_login_check() -> Duration {
    Duration::from_secs(1)
}

fn default_min_quick_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_reset_after() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_address_failures() -> u32 {
    20
}

fn default_min_password_length() -> usize {
    8
}

/// `[pools.NAME.upstream]`: where an upstream pool's logins (and refreshes) are relayed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthConfig {
    /// `http://host:port/path` receiving logins.
    pub login_url: String,
    /// `http://host:port/path` receiving refreshes (same host and port as `login_url`); none: refreshes
    /// are not relayed.
    #[serde(default)]
    pub refresh_url: Option<String>,
    /// Response header carrying the upstream's credential.
    #[serde(default = "default_upstream_header")]
    pub header: String,
    /// Time the upstream has to answer.
    #[serde(default = "default_upstream_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_upstream_header() -> String {
    "Authorization".to_string()
}

fn default_upstream_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

fn default_host() -> String {
    "*".to_string()
}

fn default_path_prefix() -> String {
    "/".to_string()
}

/// `[store]`: the replicated store's backend (docs/ARCHITECTURE.md, "The replicated store").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `"mesh"`: nodes mirror each other over `[cluster]`'s links; `"redis"`: every node reads and
    /// writes one Redis or Valkey server, and keeps a local copy as its cache.
    pub backend: StoreBackend,
    /// With `"redis"`: this node's name, unique among the nodes sharing `prefix`.
    pub node: Option<String>,
    /// With `"redis"`: `host:port` of the server, or of a primary and its replicas; the first that
    /// answers as a primary (`ROLE`) is used, so a promoted replica is found after a failover.
    pub addresses: Vec<String>,
    /// Connect with TLS (`rediss`).
    pub tls: bool,
    /// PEM CA bundle to verify the server's certificate with (default: the system's roots).
    pub ca: Option<String>,
    /// ACL user (`AUTH username password`); without it, `AUTH password` (the `default` user).
    pub username: Option<String>,
    /// File holding the password (one line; trailing newline ignored).
    pub password_file: Option<String>,
    /// Every key tether writes starts with `{prefix}:` (a hash tag: one slot), so several tether
    /// clusters share one server.
    pub prefix: String,
    /// Connecting to the server (TCP, TLS and `AUTH`).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// One round trip (a pipeline of writes, a read of the load at start).
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// How long a `sync` write (a login, a revocation) waits for the server's acknowledgement.
    #[serde(with = "duration")]
    pub sync_timeout: Duration,
    /// Past `sync_timeout`, or at once while the server is known unreachable: `"fail"` answers 503,
    /// `"degrade"` serves and writes the record when the server is back.
    pub on_sync_timeout: SyncTimeoutPolicy,
    /// Replicas that must hold a `sync` write before it is acknowledged (`WAIT`); 0: the primary's
    /// acknowledgement is enough.
    pub wait_replicas: u32,
    /// Entries kept in the change stream (`XADD MAXLEN ~`): how far a node that lost its feed can
    /// catch up without loading everything again.
    pub stream_length: u64,
    /// Reads are served from the local copy; once the feed of other nodes' writes has been down this
    /// long, the node stops answering requests that need the store (503) until it is back.
    #[serde(with = "duration")]
    pub max_staleness: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Mesh,
            node: None,
            addresses: Vec::new(),
            tls: false,
            ca: None,
            username: None,
            password_file: None,
            prefix: "tether".to_string(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(1),
            on_sync_timeout: SyncTimeoutPolicy::Fail,
            wait_replicas: 0,
            stream_length: 100_000,
            max_staleness: Duration::from_secs(10),
        }
    }
}

impl StoreConfig {
    /// Whether the store lives on a Redis or Valkey server.
    pub fn is_redis(&self) -> bool {
        self.backend == StoreBackend::Redis
    }
}

/// `[store] backend`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// Full mesh of tether nodes (`[cluster]`), 2–8 nodes.
    #[default]
    Mesh,
    /// One Redis or Valkey server (standalone, or a primary with replicas).
    Redis,
}

/// Serde adapter for humantime duration strings (`"10s"`, `"250ms"`, `"1h 30m"`).
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration \"{s}\": {e} (examples: \"10s\", \"500ms\", \"1h\")"
            ))
        })
    }
}
