//! One metrics registry: per-worker counters and histograms, each worker writing only its own
//! cache-padded slot (no shared cache line, no atomic read-modify-write), and readers that sum the slots.
//!
//! Renderers: the SIGUSR1 report (log lines) and Prometheus' text format (for the admin API's `/metrics`).
//! Both read the same registry plus the process-wide state that already counts itself (backend state,
//! QoS queues, TLS counters, the session table), so every number has one source.
//!
//! Routes and clusters are counted by a *metric id* that stays with their name across reloads
//! ([`MetricNames`]), so a counter never jumps when a reload reorders the config.

use crate::error::Termination;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Routes or clusters counted by name, at most this many distinct names per process (more share the last
/// slot, reported as `"(other)"`).
pub const MAX_NAMED: usize = 512;

/// A counter written by one thread only: an increment is a plain load and store (no locked instruction);
/// other threads read it.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        // The `skip-metrics` build measures what this costs (bench/RESULTS.md).
        if cfg!(feature = "skip-metrics") {
            return;
        }
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds (microseconds) of the latency histogram buckets, as Prometheus `le` labels show them.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets, written by one thread.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, plus one for everything above the last.
    buckets: [Counter; LATENCY_BOUNDS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, us: u64) {
        if cfg!(feature = "skip-metrics") {
            return;
        }
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].inc();
        self.sum_us.add(us);
    }
}

/// Sums of several histograms (non-cumulative bucket counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramTotals {
    pub buckets: [u64; LATENCY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl HistogramTotals {
    fn add(&mut self, h: &Histogram) {
        for (t, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *t += b.get();
        }
        self.sum_us += h.sum_us.get();
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Kinds of termination counted (one counter each, by [`Termination::index`]).
const TERMINATIONS: usize = Termination::KINDS;

/// One worker's counters. Only that worker writes them.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Client connections accepted.
    pub accepted: Counter,
    /// Client connections closed at accept for being over `limits.max_connections_per_client`.
    pub rejected_per_client: Counter,
    /// Client connections closed at accept: the address is on the deny list.
    pub rejected_denied: Counter,
    /// Requests answered 429 by a rate limit.
    pub rate_limited: Counter,
    /// Addresses this worker put on the deny list (a `[deny]` rule fired).
    pub denied: Counter,
    /// Request heads parsed (every request, whatever its end).
    pub requests: Counter,
    /// Requests answered by tether itself (its own endpoints).
    pub answered: Counter,
    /// Backend connections opened, and idle ones reused.
    pub upstream_connects: Counter,
    pub upstream_reuses: Counter,
    /// Retries (attempts after a request's first).
    pub retries: Counter,
    /// Panics caught while handling a connection.
    pub panics: Counter,
    /// Sync writes served without a peer's acknowledgement (`on_sync_timeout = "degrade"`).
    pub degraded_writes: Counter,
    /// Requests by how they ended.
    pub terminations: [Counter; TERMINATIONS],
    /// Responses by status class: index 1–5 for 1xx–5xx, 0 for none.
    pub status: [Counter; 6],
    /// First request byte to the end of the request.
    pub request_us: Histogram,
    /// Time a request waited for a QoS slot (granted or timed out).
    pub queue_us: Histogram,
    /// Connections accepted per listener (config order; listeners do not change on reload).
    pub listener_accepted: Box<[Counter]>,
    /// Request heads parsed per listener (config order).
    pub listener_requests: Box<[Counter]>,
    /// Requests forwarded per route and per cluster, by metric id.
    pub route_requests: Box<[Counter]>,
    pub cluster_requests: Box<[Counter]>,
    /// Routed requests (forwarded or answered by tether after routing) by status class, per route and
    /// per cluster metric id; and per route, first request byte to the end of the request (so a route's
    /// p99 is derivable from `/metrics`).
    pub route_responses: Box<[[Counter; 6]]>,
    pub cluster_responses: Box<[[Counter; 6]]>,
    pub route_request_us: Box<[Histogram]>,
    /// Logins at the balancer by outcome ([`LoginOutcome`]).
    pub logins: [Counter; LoginOutcome::ALL.len()],
}

/// How a login attempt at the balancer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The password (or the upstream auth service) said yes; a login session was created.
    Succeeded,
    /// A wrong password or unknown user.
    Failed,
    /// Refused before the password was looked at: the account or the address is locked.
    Locked,
}

impl LoginOutcome {
    pub const ALL: [LoginOutcome; 3] = [Self::Succeeded, Self::Failed, Self::Locked];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Locked => "locked",
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            accepted: Counter::default(),
            rejected_per_client: Counter::default(),
            rejected_denied: Counter::default(),
            rate_limited: Counter::default(),
            denied: Counter::default(),
            requests: Counter::default(),
            answered: Counter::default(),
            upstream_connects: Counter::default(),
            upstream_reuses: Counter::default(),
            retries: Counter::default(),
            panics: Counter::default(),
            degraded_writes: Counter::default(),
            terminations: Default::default(),
            status: Default::default(),
            request_us: Histogram::default(),
            queue_us: Histogram::default(),
            listener_accepted: (0..MAX_NAMED).map(|_| Counter::default()).collect(),
            listener_requests: (0..MAX_NAMED).map(|_| Counter::default()).collect(),
            route_requests: (0..MAX_NAMED).map(|_| Counter::default()).collect(),
            cluster_requests: (0..MAX_NAMED).map(|_| Counter::default()).collect(),
            route_responses: (0..MAX_NAMED).map(|_| Default::default()).collect(),
            cluster_responses: (0..MAX_NAMED).map(|_| Default::default()).collect(),
            route_request_us: (0..MAX_NAMED).map(|_| Histogram::default()).collect(),
            logins: Default::default(),
        }
    }
}

impl WorkerMetrics {
    /// Counts a finished request: its termination, status class and duration; and, for a routed
    /// request, the same per route and cluster (metric ids). Indexes preallocated slots: no allocation,
    /// no lock, no atomic read-modify-write on the hot path.
    #[inline]
    pub fn request_finished(
        &self,
        term: Termination,
        status: u16,
        total_us: u64,
        routed: Option<(usize, usize)>,
    ) {
        self.terminations[term.index()].inc();
        let class = status_class(status);
        self.status[class].inc();
        self.request_us.observe(total_us);
        if let Some((route, cluster)) = routed {
            if let Some(c) = self.route_responses.get(route) {
                c[class].inc();
            }
            if let Some(h) = self.route_request_us.get(route) {
                h.observe(total_us);
            }
            if let Some(c) = self.cluster_responses.get(cluster) {
                c[class].inc();
            }
        }
    }

    /// Counts a login attempt's outcome.
    #[inline]
    pub fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].inc();
    }
}

/// A status code's class: 1–5 for 1xx–5xx, 0 for none (no response, or out of range).
#[inline]
pub fn status_class(status: u16) -> usize {
    if (100..600).contains(&status) {
        (status / 100) as usize
    } else {
        0
    }
}

/// The label values of the status classes, by [`status_class`].
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Stable metric ids for route and cluster names (assigned when a snapshot is built, never on a worker).
#[derive(Debug, Default)]
pub struct MetricNames {
    routes: Mutex<Vec<String>>,
    clusters: Mutex<Vec<String>>,
}

impl MetricNames {
    fn id(list: &Mutex<Vec<String>>, name: &str) -> usize {
        let mut list = list.lock();
        if let Some(i) = list.iter().position(|n| n == name) {
            return i;
        }
        if list.len() + 1 >= MAX_NAMED {
            return MAX_NAMED - 1;
        }
        list.push(name.to_string());
        list.len() - 1
    }

    /// The metric id of a route named `name` (`"host path_prefix"`).
    pub fn route(&self, name: &str) -> usize {
        Self::id(&self.routes, name)
    }

    /// The metric id of a cluster.
    pub fn cluster(&self, name: &str) -> usize {
        Self::id(&self.clusters, name)
    }

    fn names(list: &Mutex<Vec<String>>) -> Vec<String> {
        let mut names = list.lock().clone();
        if names.len() == MAX_NAMED - 1 {
            names.push("(other)".into());
        }
        names
    }
}

/// The registry: every worker's slot, and the names behind the ids.
#[derive(Debug, Default)]
pub struct Registry {
    pub workers: Vec<Arc<CachePadded<WorkerMetrics>>>,
    pub names: MetricNames,
    /// Listener names, in config order.
    pub listeners: Vec<String>,
    /// With `[cluster]`: the replication thread's live status, read whenever totals are taken (set once,
    /// when the thread starts).
    cluster: std::sync::OnceLock<Arc<dyn ClusterSource>>,
}

/// Where a cluster node's replication figures are read from: the replication thread's shared status
/// and the store themselves, at the moment of reading (this module sits below `replication`, so the
/// thread implements this rather than the registry importing it).
pub trait ClusterSource: Send + Sync + std::fmt::Debug {
    fn figures(&self) -> ClusterFigures;
}

/// A cluster node's store and its peers, as read from the replication thread's status.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub node: String,
    /// Records held (every kind), session bindings, ticket-key records; the store's digest.
    pub records: usize,
    pub bindings: usize,
    pub ticket_keys: usize,
    pub digest: [u8; 32],
    /// The last sequence of this node's stream.
    pub stream_last: u64,
    pub peers: Vec<PeerFigures>,
    /// With `[store] backend = "redis"`: the server link's figures (no peers then).
    pub redis: Option<RedisFigures>,
}

/// The Redis backend's figures (`store::redis`): its server, whether the writer reaches it, and counts
/// since start.
#[derive(Debug, Clone, Default)]
pub struct RedisFigures {
    /// The address last reached as the primary.
    pub server: String,
    pub up: bool,
    /// Records waiting to be written.
    pub outbox: u64,
    /// Records the server took (newer than what it held), and other nodes' records applied here.
    pub written: u64,
    pub applied: u64,
    /// Full loads of every record (start, or a feed that fell behind the stream), and write-backs of
    /// this node's whole copy to a new server.
    pub loads: u64,
    pub writebacks: u64,
    /// Sync writes answered without the server (`on_sync_timeout = "degrade"` while it was down).
    pub degraded: u64,
    /// The feed has been down past `max_staleness`.
    pub stale: bool,
}

/// One peer of a cluster node (see `replication::node::PeerStatus`, which these are read from).
#[derive(Debug, Clone, Default)]
pub struct PeerFigures {
    pub name: String,
    pub address: String,
    /// `down`, `connecting`, `greeting` or `up`.
    pub state: &'static str,
    /// The peer's epoch while up.
    pub epoch: Option<u64>,
    pub links_up: u64,
    pub refused: u64,
    /// Of this node's stream: last sent to the peer, last it acknowledged; of the peer's: last applied here.
    pub sent: u64,
    pub acked: u64,
    pub applied: u64,
    /// Records of this node's stream the peer has not acknowledged, and how old the oldest of them is.
    pub lag_records: u64,
    pub lag_ms: u64,
    /// Snapshots merged from the peer, and sent to it.
    pub snapshots_in: u64,
    pub snapshots_out: u64,
    /// Over every link with the peer since start.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Replication delay of the peer's records applied here.
    pub delay_ms: DelayFigures,
    /// Why the last link ended or was refused.
    pub last_reason: String,
}

/// A delay distribution's summary, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayFigures {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub count: u64,
    pub sum: u64,
}

/// Sums over all workers.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub accepted: u64,
    pub rejected_per_client: u64,
    pub rejected_denied: u64,
    pub rate_limited: u64,
    pub denied: u64,
    pub requests: u64,
    pub answered: u64,
    pub upstream_connects: u64,
    pub upstream_reuses: u64,
    pub retries: u64,
    pub panics: u64,
    pub degraded_writes: u64,
    pub terminations: [u64; TERMINATIONS],
    pub status: [u64; 6],
    pub request_us: HistogramTotals,
    pub queue_us: HistogramTotals,
    /// (name, connections accepted) per listener.
    pub listeners: Vec<(String, u64)>,
    /// (name, requests) per listener.
    pub listener_requests: Vec<(String, u64)>,
    /// (name, requests forwarded) per route and per cluster that saw any.
    pub routes: Vec<(String, u64)>,
    pub clusters: Vec<(String, u64)>,
    /// Per route and cluster that finished any request: responses by status class; per route, latency.
    pub route_responses: Vec<(String, [u64; 6])>,
    pub cluster_responses: Vec<(String, [u64; 6])>,
    pub route_latency: Vec<(String, HistogramTotals)>,
    /// Login attempts by [`LoginOutcome`].
    pub logins: [u64; LoginOutcome::ALL.len()],
    /// With `[cluster]`: the replication figures, read live.
    pub cluster: Option<ClusterFigures>,
}

impl Registry {
    /// A registry with a slot for each of `workers` workers, counting connections for `listeners`.
    pub fn new(workers: usize, listeners: Vec<String>) -> Self {
        Registry {
            workers: (0..workers)
                .map(|_| Arc::new(CachePadded::new(WorkerMetrics::default())))
                .collect(),
            names: MetricNames::default(),
            listeners,
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Reads the replication figures from `source` from now on (once: a process has one replication
    /// thread).
    pub fn set_cluster(&self, source: Arc<dyn ClusterSource>) {
        let _ = self.cluster.set(source);
    }

    /// The replication figures, read live (`None` without `[cluster]`).
    pub fn cluster_figures(&self) -> Option<ClusterFigures> {
        self.cluster.get().map(|c| c.figures())
    }

    /// Sums every worker's slot.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut routes = vec![0u64; MAX_NAMED];
        let mut clusters = vec![0u64; MAX_NAMED];
        let mut listeners = vec![0u64; self.listeners.len().min(MAX_NAMED)];
        let mut listener_requests = listeners.clone();
        let mut route_responses = vec![[0u64; 6]; MAX_NAMED];
        let mut cluster_responses = vec![[0u64; 6]; MAX_NAMED];
        let mut route_latency = vec![HistogramTotals::default(); MAX_NAMED];
        for w in &self.workers {
            for (a, c) in listeners.iter_mut().zip(w.listener_accepted.iter()) {
                *a += c.get();
            }
            for (a, c) in listener_requests.iter_mut().zip(w.listener_requests.iter()) {
                *a += c.get();
            }
            for (sums, slot) in [
                (&mut route_responses, &w.route_responses),
                (&mut cluster_responses, &w.cluster_responses),
            ] {
                for (a, c) in sums.iter_mut().zip(slot.iter()) {
                    for (a, c) in a.iter_mut().zip(c) {
                        *a += c.get();
                    }
                }
            }
            for (a, h) in route_latency.iter_mut().zip(w.route_request_us.iter()) {
                a.add(h);
            }
            for (a, c) in t.logins.iter_mut().zip(&w.logins) {
                *a += c.get();
            }
            t.accepted += w.accepted.get();
            t.rejected_per_client += w.rejected_per_client.get();
            t.rejected_denied += w.rejected_denied.get();
            t.rate_limited += w.rate_limited.get();
            t.denied += w.denied.get();
            t.requests += w.requests.get();
            t.answered += w.answered.get();
            t.upstream_connects += w.upstream_connects.get();
            t.upstream_reuses += w.upstream_reuses.get();
            t.retries += w.retries.get();
            t.panics += w.panics.get();
            t.degraded_writes += w.degraded_writes.get();
            for (a, c) in t.terminations.iter_mut().zip(&w.terminations) {
                *a += c.get();
            }
            for (a, c) in t.status.iter_mut().zip(&w.status) {
                *a += c.get();
            }
            t.request_us.add(&w.request_us);
            t.queue_us.add(&w.queue_us);
            for (a, c) in routes.iter_mut().zip(w.route_requests.iter()) {
                *a += c.get();
            }
            for (a, c) in clusters.iter_mut().zip(w.cluster_requests.iter()) {
                *a += c.get();
            }
        }
        let named = |names: Vec<String>, counts: Vec<u64>| {
            names
                .into_iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .collect::<Vec<_>>()
        };
        t.listeners = self.listeners.iter().cloned().zip(listeners).collect();
        t.listener_requests = self
            .listeners
            .iter()
            .cloned()
            .zip(listener_requests)
            .collect();
        let route_names = MetricNames::names(&self.names.routes);
        let cluster_names = MetricNames::names(&self.names.clusters);
        let seen = |names: &[String], counts: Vec<[u64; 6]>| {
            names
                .iter()
                .cloned()
                .zip(counts)
                .filter(|(_, n)| n.iter().any(|&n| n > 0))
                .collect::<Vec<_>>()
        };
        t.route_responses = seen(&route_names, route_responses);
        t.cluster_responses = seen(&cluster_names, cluster_responses);
        t.route_latency = route_names
            .iter()
            .cloned()
            .zip(route_latency)
            .filter(|(_, h)| h.count() > 0)
            .collect();
        t.routes = named(route_names, routes);
        t.clusters = named(cluster_names, clusters);
        t.cluster = self.cluster.get().map(|c| c.figures());
        t
    }
}

/// The SIGUSR1 report's lines about requests (the other lines come from the state that counts itself).
pub fn report_lines(t: &Totals) -> Vec<String> {
    let mut lines = Vec::new();
    let mut ends = String::new();
    for kind in Termination::ALL_LABELS.iter().enumerate() {
        let n = t.terminations[kind.0];
        if n > 0 {
            let _ = write!(ends, " {}={n}", kind.1);
        }
    }
    lines.push(format!(
        "stats: requests total={} answered_by_tether={} retries={} accepted={} rejected_per_client={} \
         rejected_denied={} rate_limited={} denied={} upstream_connects={} upstream_reuses={} panics={} degraded_writes={}",
        t.requests,
        t.answered,
        t.retries,
        t.accepted,
        t.rejected_per_client,
        t.rejected_denied,
        t.rate_limited,
        t.denied,
        t.upstream_connects,
        t.upstream_reuses,
        t.panics,
        t.degraded_writes
    ));
    lines.push(format!(
        "stats: responses 1xx={} 2xx={} 3xx={} 4xx={} 5xx={} none={}",
        t.status[1], t.status[2], t.status[3], t.status[4], t.status[5], t.status[0]
    ));
    lines.push(format!("stats: terminations{ends}"));
    for (name, n) in &t.listeners {
        lines.push(format!("stats: listener {name} accepted={n}"));
    }
    for (name, n) in &t.clusters {
        lines.push(format!("stats: cluster {name} requests={n}"));
    }
    for (name, n) in &t.routes {
        lines.push(format!("stats: route {name} requests={n}"));
    }
    if let Some(c) = &t.cluster {
        cluster_report_lines(c, &mut lines);
    }
    lines
}

/// The SIGUSR1 lines of a cluster node: its store, then each peer.
fn cluster_report_lines(c: &ClusterFigures, lines: &mut Vec<String>) {
    let hex: String = c.digest.iter().map(|b| format!("{b:02x}")).collect();
    lines.push(format!(
        "stats: cluster node {} store records={} bindings={} ticket_keys={} digest={hex} stream_last={}",
        c.node, c.records, c.bindings, c.ticket_keys, c.stream_last
    ));
    if let Some(r) = &c.redis {
        lines.push(format!(
            "stats: store redis node {} server={} state={} outbox={} written={} applied={} loads={} \
             writebacks={} degraded={} stale={}",
            c.node,
            r.server,
            if r.up { "up" } else { "down" },
            r.outbox,
            r.written,
            r.applied,
            r.loads,
            r.writebacks,
            r.degraded,
            u8::from(r.stale)
        ));
    }
    for p in &c.peers {
        lines.push(format!(
            "stats: cluster node {} peer {} at {} state={} epoch={} links_up={} refused={} sent={} \
             acked={} applied={} lag_records={} lag_ms={} snapshots_in={} snapshots_out={} \
             delay_ms_p50={} delay_ms_p99={} delay_ms_max={} bytes_in={} bytes_out={} last={:?}",
            c.node,
            p.name,
            p.address,
            p.state,
            p.epoch.map_or("-".into(), |e| format!("{e:016x}")),
            p.links_up,
            p.refused,
            p.sent,
            p.acked,
            p.applied,
            p.lag_records,
            p.lag_ms,
            p.snapshots_in,
            p.snapshots_out,
            p.delay_ms.p50,
            p.delay_ms.p99,
            p.delay_ms.max,
            p.bytes_in,
            p.bytes_out,
            p.last_reason
        ));
    }
}

/// Appends a Prometheus histogram (cumulative buckets in seconds).
fn prometheus_histogram(out: &mut String, name: &str, help: &str, h: &HistogramTotals) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    histogram_series(out, name, "", h);
}

/// One histogram's samples; `labels` (`route="x",`) go before `le` in every bucket.
fn histogram_series(out: &mut String, name: &str, labels: &str, h: &HistogramTotals) {
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BOUNDS_US.iter().zip(&h.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", h.count());
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count());
}

/// Appends a counter family by a name label and status class.
fn prometheus_by_class(
    out: &mut String,
    name: &str,
    help: &str,
    label_name: &str,
    list: &[(String, [u64; 6])],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, classes) in list {
        for (class, n) in STATUS_CLASSES.iter().zip(classes) {
            let _ = writeln!(
                out,
                "{name}{{{label_name}=\"{}\",class=\"{class}\"}} {n}",
                label(value)
            );
        }
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends one counter family: its help and type lines, then one sample per `(label value, count)`, or
/// a single unlabelled sample when `label_name` is empty.
fn prometheus_counter<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label_name: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    prometheus_family(out, name, help, "counter", label_name, samples);
}

/// Appends one gauge family, like [`prometheus_counter`].
fn prometheus_gauge<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label_name: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    prometheus_family(out, name, help, "gauge", label_name, samples);
}

fn prometheus_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label_name: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value, n) in samples {
        if label_name.is_empty() {
            let _ = writeln!(out, "{name} {n}");
        } else {
            let _ = writeln!(out, "{name}{{{label_name}=\"{}\"}} {n}", label(value));
        }
    }
}

/// The request metrics in Prometheus' text exposition format.
pub fn prometheus(t: &Totals) -> String {
    let mut out = String::new();
    let plain: [(&str, &str, u64); 12] = [
        (
            "tether_connections_accepted_total",
            "Client connections accepted.",
            t.accepted,
        ),
        (
            "tether_connections_rejected_per_client_total",
            "Connections closed at accept: over the per-client limit.",
            t.rejected_per_client,
        ),
        (
            "tether_connections_rejected_denied_total",
            "Connections closed at accept: the address is on the deny list.",
            t.rejected_denied,
        ),
        (
            "tether_requests_rate_limited_total",
            "Requests answered 429 by a rate limit.",
            t.rate_limited,
        ),
        (
            "tether_deny_bans_total",
            "Addresses put on the deny list by a rule.",
            t.denied,
        ),
        ("tether_requests_total", "Request heads parsed.", t.requests),
        (
            "tether_requests_answered_by_tether_total",
            "Requests answered by tether's own endpoints.",
            t.answered,
        ),
        (
            "tether_retries_total",
            "Attempts after a request's first.",
            t.retries,
        ),
        (
            "tether_upstream_connects_total",
            "Backend connections opened.",
            t.upstream_connects,
        ),
        (
            "tether_upstream_reuses_total",
            "Idle backend connections reused.",
            t.upstream_reuses,
        ),
        ("tether_panics_total", "Panics caught on workers.", t.panics),
        (
            "tether_degraded_sync_writes_total",
            "Sync writes served without a peer's acknowledgement.",
            t.degraded_writes,
        ),
    ];
    for (name, help, v) in plain {
        prometheus_counter(&mut out, name, help, "", [("", v)]);
    }
    prometheus_counter(
        &mut out,
        "tether_terminations_total",
        "Requests by how they ended.",
        "reason",
        Termination::ALL_LABELS.iter().copied().zip(t.terminations),
    );
    prometheus_counter(
        &mut out,
        "tether_responses_total",
        "Responses by status class.",
        "class",
        STATUS_CLASSES.into_iter().zip(t.status),
    );
    prometheus_counter(
        &mut out,
        "tether_logins_total",
        "Login attempts at the balancer by outcome (locked: refused before the password was checked).",
        "outcome",
        LoginOutcome::ALL.iter().map(|o| o.label()).zip(t.logins),
    );
    prometheus_by_class(
        &mut out,
        "tether_route_responses_total",
        "Routed requests by route and status class (forwarded, or answered by tether after routing).",
        "route",
        &t.route_responses,
    );
    prometheus_by_class(
        &mut out,
        "tether_cluster_responses_total",
        "Routed requests by cluster and status class.",
        "cluster",
        &t.cluster_responses,
    );
    for (name, help, label_name, list) in [
        (
            "tether_listener_connections_total",
            "Connections accepted per listener.",
            "listener",
            &t.listeners,
        ),
        (
            "tether_listener_requests_total",
            "Request heads parsed per listener.",
            "listener",
            &t.listener_requests,
        ),
        (
            "tether_cluster_requests_total",
            "Requests routed to a cluster.",
            "cluster",
            &t.clusters,
        ),
        (
            "tether_route_requests_total",
            "Requests matched by a route and forwarded to its cluster.",
            "route",
            &t.routes,
        ),
    ] {
        prometheus_counter(
            &mut out,
            name,
            help,
            label_name,
            list.iter().map(|(n, v)| (n.as_str(), *v)),
        );
    }
    prometheus_histogram(
        &mut out,
        "tether_request_duration_seconds",
        "First request byte to the end of the request.",
        &t.request_us,
    );
    let name = "tether_route_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} First request byte to the end of the request, per route.\n# TYPE {name} histogram"
    );
    for (route, h) in &t.route_latency {
        histogram_series(&mut out, name, &format!("route=\"{}\",", label(route)), h);
    }
    prometheus_histogram(
        &mut out,
        "tether_qos_queue_wait_seconds",
        "Time requests waited for a QoS slot.",
        &t.queue_us,
    );
    if let Some(c) = &t.cluster {
        prometheus_cluster(&mut out, c);
    }
    out
}

/// Per-peer figures that are one number each: (name, help, type, value).
type PeerSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerFigures) -> u64,
);

const PEER_SERIES: [PeerSeries; 9] = [
    (
        "tether_cluster_peer_up",
        "1 while the link with the peer is up.",
        "gauge",
        |p| u64::from(p.state == "up"),
    ),
    (
        "tether_cluster_peer_links_up_total",
        "Links with the peer that came up.",
        "counter",
        |p| p.links_up,
    ),
    (
        "tether_cluster_peer_refused_total",
        "Links with the peer refused, by either side.",
        "counter",
        |p| p.refused,
    ),
    (
        "tether_cluster_peer_sent_sequence",
        "Last sequence of this node's stream sent to the peer.",
        "gauge",
        |p| p.sent,
    ),
    (
        "tether_cluster_peer_acked_sequence",
        "Last sequence of this node's stream the peer acknowledged.",
        "gauge",
        |p| p.acked,
    ),
    (
        "tether_cluster_peer_applied_sequence",
        "Last sequence of the peer's stream applied here.",
        "gauge",
        |p| p.applied,
    ),
    (
        "tether_cluster_peer_lag_records",
        "Records of this node's stream the peer has not acknowledged.",
        "gauge",
        |p| p.lag_records,
    ),
    (
        "tether_cluster_peer_bytes_received_total",
        "Bytes received from the peer, over every link.",
        "counter",
        |p| p.bytes_in,
    ),
    (
        "tether_cluster_peer_bytes_sent_total",
        "Bytes sent to the peer, over every link.",
        "counter",
        |p| p.bytes_out,
    ),
];

/// The replication figures: store gauges, then one labelled series per peer and figure.
fn prometheus_cluster(out: &mut String, c: &ClusterFigures) {
    for (name, help, v) in [
        (
            "tether_store_records",
            "Records in the replicated store (every kind, tombstones included).",
            c.records as u64,
        ),
        (
            "tether_store_bindings",
            "Session bindings in the replicated store.",
            c.bindings as u64,
        ),
        (
            "tether_store_ticket_keys",
            "TLS ticket-key records in the replicated store.",
            c.ticket_keys as u64,
        ),
        (
            "tether_cluster_stream_sequence",
            "Last sequence of this node's stream.",
            c.stream_last,
        ),
    ] {
        prometheus_gauge(out, name, help, "", [("", v)]);
    }
    if let Some(r) = &c.redis {
        for (name, help, v) in [
            (
                "tether_store_redis_up",
                "Whether the Redis backend's writer reaches the primary.",
                u64::from(r.up),
            ),
            (
                "tether_store_redis_outbox_records",
                "Records waiting to be written to the Redis server.",
                r.outbox,
            ),
            (
                "tether_store_stale",
                "Whether the feed of other nodes' writes is down past store.max_staleness.",
                u64::from(r.stale),
            ),
        ] {
            prometheus_gauge(out, name, help, "", [("", v)]);
        }
        for (name, help, v) in [
            (
                "tether_store_redis_written_total",
                "Records the Redis server took from this node (newer than what it held).",
                r.written,
            ),
            (
                "tether_store_redis_applied_total",
                "Other nodes' records applied here from the Redis server.",
                r.applied,
            ),
            (
                "tether_store_redis_loads_total",
                "Loads of every record from the Redis server (at start, or after falling behind).",
                r.loads,
            ),
            (
                "tether_store_redis_writebacks_total",
                "Write-backs of this node's whole copy to a new Redis server (restarted, failed over).",
                r.writebacks,
            ),
            (
                "tether_store_redis_degraded_total",
                "Sync writes answered without the Redis server (on_sync_timeout = \"degrade\").",
                r.degraded,
            ),
        ] {
            prometheus_counter(out, name, help, "", [("", v)]);
        }
    }
    let peers: Vec<String> = c.peers.iter().map(|p| label(&p.name)).collect();
    let _ = writeln!(
        out,
        "# HELP tether_cluster_peer_info The peer's address, state and epoch (0: not up).\n\
         # TYPE tether_cluster_peer_info gauge"
    );
    for (p, peer) in c.peers.iter().zip(&peers) {
        let _ = writeln!(
            out,
            "tether_cluster_peer_info{{peer=\"{peer}\",address=\"{}\",state=\"{}\",epoch=\"{:016x}\"}} 1",
            label(&p.address),
            p.state,
            p.epoch.unwrap_or(0)
        );
    }
    for (name, help, kind, value) in &PEER_SERIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (p, peer) in c.peers.iter().zip(&peers) {
            let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {}", value(p));
        }
    }
    let _ = writeln!(
        out,
        "# HELP tether_cluster_peer_lag_seconds Age of the oldest record of this node's stream the peer \
         has not acknowledged.\n# TYPE tether_cluster_peer_lag_seconds gauge"
    );
    for (p, peer) in c.peers.iter().zip(&peers) {
        let _ = writeln!(
            out,
            "tether_cluster_peer_lag_seconds{{peer=\"{peer}\"}} {}",
            p.lag_ms as f64 / 1e3
        );
    }
    let _ = writeln!(
        out,
        "# HELP tether_cluster_peer_resyncs_total Snapshots exchanged with the peer: in, merged here; \
         out, sent to it.\n# TYPE tether_cluster_peer_resyncs_total counter"
    );
    for (p, peer) in c.peers.iter().zip(&peers) {
        for (direction, n) in [("in", p.snapshots_in), ("out", p.snapshots_out)] {
            let _ = writeln!(
                out,
                "tether_cluster_peer_resyncs_total{{peer=\"{peer}\",direction=\"{direction}\"}} {n}"
            );
        }
    }
    let name = "tether_cluster_peer_delay_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Replication delay of the peer's records, from their write there to their \
         apply here.\n# TYPE {name} summary"
    );
    for (p, peer) in c.peers.iter().zip(&peers) {
        let d = &p.delay_ms;
        for (q, ms) in [("0.5", d.p50), ("0.99", d.p99), ("1", d.max)] {
            let _ = writeln!(
                out,
                "{name}{{peer=\"{peer}\",quantile=\"{q}\"}} {}",
                ms as f64 / 1e3
            );
        }
        let _ = writeln!(out, "{name}_sum{{peer=\"{peer}\"}} {}", d.sum as f64 / 1e3);
        let _ = writeln!(out, "{name}_count{{peer=\"{peer}\"}} {}", d.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_sum_and_names_keep_their_ids() {
        let r = Registry::new(2, vec!["web".into()]);
        r.workers[1].listener_accepted[0].add(4);
        let a = r.names.cluster("app");
        let b = r.names.cluster("api");
        assert_eq!(r.names.cluster("app"), a, "same name, same id");
        r.workers[0].cluster_requests[a].add(3);
        r.workers[1].cluster_requests[a].add(2);
        r.workers[1].cluster_requests[b].inc();
        r.workers[0].request_finished(Termination::Completed, 200, 150, Some((0, a)));
        r.workers[1].request_finished(Termination::NoRoute, 404, 20_000_000, None);
        let t = r.totals();
        assert_eq!(t.clusters, vec![("app".into(), 5), ("api".into(), 1)]);
        assert_eq!((t.status[2], t.status[4]), (1, 1));
        assert_eq!(t.terminations[Termination::NoRoute.index()], 1);
        assert_eq!(
            t.request_us.buckets[1], 1,
            "150 us falls in the 250 us bucket"
        );
        assert_eq!(
            t.request_us.buckets[LATENCY_BOUNDS_US.len()],
            1,
            "above 10 s"
        );
        let text = prometheus(&t);
        assert!(text.contains("tether_cluster_requests_total{cluster=\"app\"} 5"));
        assert!(text.contains("tether_listener_connections_total{listener=\"web\"} 4"));
        assert!(text.contains("tether_terminations_total{reason=\"no_route\"} 1"));
        assert!(text.contains("tether_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
    }

    /// A replication status stand-in: the registry reads it at every `totals()`.
    #[derive(Debug, Default)]
    struct LiveCluster(Mutex<ClusterFigures>);

    impl ClusterSource for LiveCluster {
        fn figures(&self) -> ClusterFigures {
            self.0.lock().clone()
        }
    }

    fn peer(name: &str) -> PeerFigures {
        PeerFigures {
            name: name.into(),
            address: "127.0.0.1:7182".into(),
            state: "up",
            epoch: Some(0xabc),
            links_up: 1,
            sent: 10,
            acked: 7,
            applied: 4,
            lag_records: 3,
            lag_ms: 1500,
            snapshots_in: 1,
            snapshots_out: 2,
            bytes_in: 100,
            bytes_out: 200,
            delay_ms: DelayFigures {
                p50: 2,
                p99: 9,
                max: 12,
                count: 4,
                sum: 20,
            },
            ..PeerFigures::default()
        }
    }

    #[test]
    fn the_redis_backend_reports_its_server_link() {
        let r = Registry::new(1, vec![]);
        let live = Arc::new(LiveCluster::default());
        *live.0.lock() = ClusterFigures {
            node: "a".into(),
            records: 3,
            redis: Some(RedisFigures {
                server: "10.0.0.5:6379".into(),
                up: true,
                outbox: 2,
                written: 7,
                applied: 5,
                loads: 1,
                writebacks: 0,
                degraded: 0,
                stale: false,
            }),
            ..ClusterFigures::default()
        };
        r.set_cluster(live);
        let text = prometheus(&r.totals());
        for line in [
            "tether_store_records 3",
            "tether_store_redis_up 1",
            "tether_store_redis_outbox_records 2",
            "tether_store_stale 0",
            "tether_store_redis_written_total 7",
            "tether_store_redis_applied_total 5",
            "tether_store_redis_loads_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
        let lines = report_lines(&r.totals());
        assert!(
            lines.iter().any(|l| l.starts_with(
                "stats: store redis node a server=10.0.0.5:6379 state=up outbox=2 written=7 applied=5"
            )),
            "{lines:?}"
        );
    }

    #[test]
    fn cluster_figures_are_read_live_and_rendered_per_peer() {
        let r = Registry::new(1, vec![]);
        assert!(r.totals().cluster.is_none(), "a lone node has none");
        assert!(!prometheus(&r.totals()).contains("tether_store_records"));
        let live = Arc::new(LiveCluster::default());
        *live.0.lock() = ClusterFigures {
            node: "a".into(),
            records: 5,
            bindings: 4,
            ticket_keys: 1,
            stream_last: 10,
            peers: vec![
                peer("b"),
                PeerFigures {
                    state: "down",
                    epoch: None,
                    ..peer("c\"x")
                },
            ],
            ..ClusterFigures::default()
        };
        r.set_cluster(live.clone());
        let text = prometheus(&r.totals());
        for line in [
            "tether_store_records 5",
            "tether_store_bindings 4",
            "tether_cluster_stream_sequence 10",
            "tether_cluster_peer_up{peer=\"b\"} 1",
            "tether_cluster_peer_up{peer=\"c\\\"x\"} 0",
            "tether_cluster_peer_info{peer=\"b\",address=\"127.0.0.1:7182\",state=\"up\",epoch=\"0000000000000abc\"} 1",
            "tether_cluster_peer_links_up_total{peer=\"b\"} 1",
            "tether_cluster_peer_sent_sequence{peer=\"b\"} 10",
            "tether_cluster_peer_acked_sequence{peer=\"b\"} 7",
            "tether_cluster_peer_applied_sequence{peer=\"b\"} 4",
            "tether_cluster_peer_lag_records{peer=\"b\"} 3",
            "tether_cluster_peer_lag_seconds{peer=\"b\"} 1.5",
            "tether_cluster_peer_resyncs_total{peer=\"b\",direction=\"in\"} 1",
            "tether_cluster_peer_resyncs_total{peer=\"b\",direction=\"out\"} 2",
            "tether_cluster_peer_bytes_received_total{peer=\"b\"} 100",
            "tether_cluster_peer_bytes_sent_total{peer=\"b\"} 200",
            "tether_cluster_peer_delay_seconds{peer=\"b\",quantile=\"0.99\"} 0.009",
            "tether_cluster_peer_delay_seconds_sum{peer=\"b\"} 0.02",
            "tether_cluster_peer_delay_seconds_count{peer=\"b\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        // Every family is announced once, before its samples.
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap();
            let declared = format!("# TYPE {name} ");
            assert_eq!(text.matches(&declared).count(), 1, "{name}");
        }
        // The same figures make the SIGUSR1 lines.
        let report = report_lines(&r.totals());
        assert!(
            report
                .iter()
                .any(|l| l.contains("store records=5 bindings=4"))
        );
        assert!(
            report
                .iter()
                .any(|l| l.contains(" peer b at 127.0.0.1:7182 state=up ")
                    && l.contains(" lag_records=3 lag_ms=1500 "))
        );
        // Nothing is copied at registration: the next reading sees the thread's new state.
        live.0.lock().peers[0].acked = 10;
        let text = prometheus(&r.totals());
        assert!(text.contains("tether_cluster_peer_acked_sequence{peer=\"b\"} 10\n"));
    }
}
