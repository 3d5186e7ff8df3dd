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
    /// Requests per route and per cluster, by metric id.
    pub route_requests: Box<[Counter]>,
    pub cluster_requests: Box<[Counter]>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            accepted: Counter::default(),
            rejected_per_client: Counter::default(),
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
            route_requests: (0..MAX_NAMED).map(|_| Counter::default()).collect(),
            cluster_requests: (0..MAX_NAMED).map(|_| Counter::default()).collect(),
        }
    }
}

impl WorkerMetrics {
    /// Counts a finished request: its termination, status class and duration.
    #[inline]
    pub fn request_finished(&self, term: Termination, status: u16, total_us: u64) {
        self.terminations[term.index()].inc();
        let class = if (100..600).contains(&status) {
            (status / 100) as usize
        } else {
            0
        };
        self.status[class].inc();
        self.request_us.observe(total_us);
    }
}

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
}

/// Sums over all workers.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub accepted: u64,
    pub rejected_per_client: u64,
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
    /// (name, requests) per route and per cluster that saw any.
    pub routes: Vec<(String, u64)>,
    pub clusters: Vec<(String, u64)>,
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
        }
    }

    /// Sums every worker's slot.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut routes = vec![0u64; MAX_NAMED];
        let mut clusters = vec![0u64; MAX_NAMED];
        let mut listeners = vec![0u64; self.listeners.len().min(MAX_NAMED)];
        for w in &self.workers {
            for (a, c) in listeners.iter_mut().zip(w.listener_accepted.iter()) {
                *a += c.get();
            }
            t.accepted += w.accepted.get();
            t.rejected_per_client += w.rejected_per_client.get();
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
        t.routes = named(MetricNames::names(&self.names.routes), routes);
        t.clusters = named(MetricNames::names(&self.names.clusters), clusters);
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
         upstream_connects={} upstream_reuses={} panics={} degraded_writes={}",
        t.requests,
        t.answered,
        t.retries,
        t.accepted,
        t.rejected_per_client,
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
    lines
}

/// Appends a Prometheus histogram (cumulative buckets in seconds).
fn prometheus_histogram(out: &mut String, name: &str, help: &str, h: &HistogramTotals) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BOUNDS_US.iter().zip(&h.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.count());
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
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
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
    let plain: [(&str, &str, u64); 9] = [
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
        ["none", "1xx", "2xx", "3xx", "4xx", "5xx"]
            .into_iter()
            .zip(t.status),
    );
    for (name, help, label_name, list) in [
        (
            "tether_listener_connections_total",
            "Connections accepted per listener.",
            "listener",
            &t.listeners,
        ),
        (
            "tether_cluster_requests_total",
            "Requests routed to a cluster.",
            "cluster",
            &t.clusters,
        ),
        (
            "tether_route_requests_total",
            "Requests matched by a route.",
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
    prometheus_histogram(
        &mut out,
        "tether_qos_queue_wait_seconds",
        "Time requests waited for a QoS slot.",
        &t.queue_us,
    );
    out
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
        r.workers[0].request_finished(Termination::Completed, 200, 150);
        r.workers[1].request_finished(Termination::NoRoute, 404, 20_000_000);
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
}
