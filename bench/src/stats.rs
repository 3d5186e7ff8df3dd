//! Per-thread statistics, merging, and the text / JSON / .hgrm reports.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histogram bounds: 1 µs .. 60 s, 3 significant digits.
pub const HIST_LOW_US: u64 = 1;
pub const HIST_HIGH_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG).expect("histogram bounds")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub parse: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.parse
    }
    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.parse += o.parse;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Read,
    Write,
    Timeout,
    Parse,
}

/// Counters one worker thread keeps without any sharing.
pub struct Stats {
    pub hist: Histogram<u64>,
    /// Completed requests inside the measurement window.
    pub requests: u64,
    /// Response bytes read inside the measurement window.
    pub bytes: u64,
    /// Index = status code (100..=599); index 0 counts anything else.
    pub status: Vec<u64>,
    pub errors: Errors,
    pub connections: u64,
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    /// Handshakes by what they negotiated (`TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519`): a comparison
    /// whose peers negotiate different things is not one (bench/compare.sh checks).
    pub tls_negotiated: std::collections::BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_histogram(),
            requests: 0,
            bytes: 0,
            status: vec![0; 600],
            errors: Errors::default(),
            connections: 0,
            tls_handshakes: 0,
            tls_resumed: 0,
            tls_negotiated: std::collections::BTreeMap::new(),
        }
    }
}

impl Stats {
    #[inline]
    pub fn error(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.errors.connect += 1,
            ErrorKind::Read => self.errors.read += 1,
            ErrorKind::Write => self.errors.write += 1,
            ErrorKind::Timeout => self.errors.timeout += 1,
            ErrorKind::Parse => self.errors.parse += 1,
        }
    }

    #[inline]
    pub fn status(&mut self, code: u16) {
        let i = if (100..600).contains(&code) {
            code as usize
        } else {
            0
        };
        self.status[i] += 1;
    }

    pub fn merge(&mut self, o: &Stats) {
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.requests += o.requests;
        self.bytes += o.bytes;
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        self.errors.add(&o.errors);
        self.connections += o.connections;
        self.tls_handshakes += o.tls_handshakes;
        self.tls_resumed += o.tls_resumed;
        for (k, n) in &o.tls_negotiated {
            *self.tls_negotiated.entry(k.clone()).or_insert(0) += n;
        }
    }
}

/// What a worker publishes for the live progress line (relaxed atomics,
/// written a few times per second).
#[derive(Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    pub fn publish(&self, s: &Stats, all_requests: u64, all_bytes: u64) {
        self.requests.store(all_requests, Ordering::Relaxed);
        self.bytes.store(all_bytes, Ordering::Relaxed);
        self.errors.store(s.errors.total(), Ordering::Relaxed);
    }
}

/// Description of the run, echoed in the reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub url: String,
    pub mode: &'static str,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub new_conn: bool,
    pub sessions: bool,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Serialize)]
pub struct TlsReport {
    pub handshakes: u64,
    pub resumed: u64,
    pub negotiated: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct ErrorReport {
    #[serde(flatten)]
    pub kinds: Errors,
    pub total: u64,
}

/// The `--json` object. Field names are documented in README.md.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub info: RunInfo,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    pub latency_us: LatencyReport,
    pub status: std::collections::BTreeMap<String, u64>,
    pub errors: ErrorReport,
    pub connections_opened: u64,
    pub tls: Option<TlsReport>,
}

pub fn build_report(info: RunInfo, s: &Stats, tls: bool) -> Report {
    let h = &s.hist;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    let latency_us = LatencyReport {
        min: if h.is_empty() { 0 } else { h.min() },
        mean: if h.is_empty() { 0.0 } else { h.mean() },
        stdev: if h.is_empty() { 0.0 } else { h.stdev() },
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if h.is_empty() { 0 } else { h.max() },
    };
    let mut status = std::collections::BTreeMap::new();
    for (code, &n) in s.status.iter().enumerate() {
        if n > 0 {
            let key = if code == 0 {
                "other".to_string()
            } else {
                code.to_string()
            };
            status.insert(key, n);
        }
    }
    let secs = info.duration_s.max(1e-9);
    Report {
        requests: s.requests,
        requests_per_sec: s.requests as f64 / secs,
        bytes: s.bytes,
        bytes_per_sec: s.bytes as f64 / secs,
        latency_us,
        status,
        errors: ErrorReport {
            kinds: s.errors,
            total: s.errors.total(),
        },
        connections_opened: s.connections,
        tls: tls.then_some(TlsReport {
            handshakes: s.tls_handshakes,
            resumed: s.tls_resumed,
            negotiated: s.tls_negotiated.clone(),
        }),
        info,
    }
}

pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

pub fn text_report(r: &Report) -> String {
    let i = &r.info;
    let mut o = String::new();
    let mode = match i.rate {
        Some(rate) => format!("open loop at {rate} req/s"),
        None => "closed loop".to_string(),
    };
    let _ = writeln!(
        o,
        "{} for {}s (after {}s warm-up)",
        i.url, i.duration_s, i.warmup_s
    );
    let _ = writeln!(
        o,
        "  {} threads, {} connections, {mode}, pipeline {}{}{}",
        i.threads,
        i.connections,
        i.pipeline,
        if i.new_conn {
            ", new connection per request"
        } else {
            ", keep-alive"
        },
        if i.sessions { ", sessions" } else { "" },
    );
    let l = &r.latency_us;
    let _ = writeln!(
        o,
        "  Latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, stdev {})",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        ms(l.mean as u64),
        ms(l.stdev as u64)
    );
    let _ = writeln!(
        o,
        "  Requests    {} total, {:.2} req/s",
        r.requests, r.requests_per_sec
    );
    let _ = writeln!(
        o,
        "  Transfer    {} read, {}/s",
        human_bytes(r.bytes as f64),
        human_bytes(r.bytes_per_sec)
    );
    let codes: Vec<String> = r.status.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(
        o,
        "  Status      {}",
        if codes.is_empty() {
            "-".to_string()
        } else {
            codes.join(", ")
        }
    );
    let e = &r.errors.kinds;
    let _ = writeln!(
        o,
        "  Errors      {} (connect {}, read {}, write {}, timeout {}, parse {})",
        r.errors.total, e.connect, e.read, e.write, e.timeout, e.parse
    );
    let _ = write!(o, "  Connections {} opened", r.connections_opened);
    if let Some(t) = &r.tls {
        let _ = write!(
            o,
            ", TLS handshakes {} ({} resumed)",
            t.handshakes, t.resumed
        );
        for (what, n) in &t.negotiated {
            let _ = write!(o, "; {what}: {n}");
        }
    }
    o.push('\n');
    o
}

/// The percentile distribution in HdrHistogram's text format (as printed by
/// `outputPercentileDistribution` and wrk2): values in milliseconds, 5 ticks
/// per half distance.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / 1000.0;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    o,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(o, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / 1000.0,
            h.stdev() / 1000.0,
            h.max() as f64 / 1000.0,
        )
    };
    let _ = writeln!(
        o,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        o,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        o,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two()
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for v in 1..=1000 {
            a.hist.record(v).unwrap();
        }
        b.hist.record(100_000).unwrap();
        a.requests = 1000;
        b.requests = 1;
        a.status(200);
        b.status(503);
        b.status(999);
        b.error(ErrorKind::Timeout);
        a.merge(&b);
        let info = RunInfo {
            url: "http://x/".into(),
            mode: "closed",
            threads: 1,
            connections: 1,
            pipeline: 1,
            new_conn: false,
            sessions: false,
            rate: None,
            duration_s: 2.0,
            warmup_s: 0.0,
            timeout_s: 5.0,
        };
        let r = build_report(info, &a, false);
        assert_eq!(r.requests, 1001);
        assert_eq!(r.requests_per_sec, 500.5);
        assert_eq!(r.latency_us.max, 100_031); // highest equivalent value, 3 digits
        assert_eq!(r.latency_us.p50, 501);
        assert_eq!(r.status.get("503"), Some(&1));
        assert_eq!(r.status.get("other"), Some(&1));
        assert_eq!(r.errors.total, 1);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["errors"]["timeout"], 1);
        assert_eq!(j["mode"], "closed");
        assert!(j["tls"].is_null());
        assert!(text_report(&r).contains("timeout 1"));
    }

    #[test]
    fn hgrm_format() {
        let mut h = new_histogram();
        for v in [100u64, 200, 300, 400, 5000] {
            h.record(v).unwrap();
        }
        let out = hgrm(&h);
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(first, vec!["0.100", "0.000000000000", "1", "1.00"]);
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last, vec!["5.003", "1.000000000000", "5"]);
        assert!(out.contains("#[Max     =        5.003, Total count    =            5]"));
    }
}
