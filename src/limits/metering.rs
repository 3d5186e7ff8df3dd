//! Usage metering per tenant (issue #15, point 4): requests, bytes in and out, backend time and logins, by
//! tenant and by period (minute, hour, day, month), exact across nodes — each node's counts are its shares
//! of cluster-wide counters (`limits::counters`), replicated and summed, never overwritten — and so
//! surviving a node's loss up to its last flush. Quotas per tenant and period refuse requests over them.
//!
//! A tenant is a user pool (`[pools.NAME]`, its `tenant`). A request is metered for the pool of its route
//! (`auth = "login"`), else for the pool that serves its host (`pools.NAME.hosts`, or the only pool);
//! other requests are not metered.
//!
//! The hot path stays cheap: a worker adds a request's figures to a small array of its own (no atomics, no
//! hashing) and hands the sums to the counters every [`WORKER_FLUSH`] — 20 counter additions per tenant
//! per flush (5 figures × 4 periods), however many requests it served. What a node counted but did not
//! flush yet (at most `WORKER_FLUSH` plus the counters' own flush interval) is lost with it on `kill -9`.

use super::counters::{CounterKey, Counters};
use std::time::{Duration, Instant};

/// How often a worker hands its sums to the counters.
pub const WORKER_FLUSH: Duration = Duration::from_millis(10);

/// What is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests = 0,
    BytesIn = 1,
    BytesOut = 2,
    /// Microseconds from a request's head to the end of its response, for requests a backend served.
    BackendMicros = 3,
    Logins = 4,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Requests,
        Metric::BytesIn,
        Metric::BytesOut,
        Metric::BackendMicros,
        Metric::Logins,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::BytesIn => "bytes_in",
            Metric::BytesOut => "bytes_out",
            Metric::BackendMicros => "backend_us",
            Metric::Logins => "logins",
        }
    }

    /// The metric of a name as the config writes it.
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A metering period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Minute,
    Hour,
    Day,
    /// A calendar month (UTC).
    Month,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Minute, Period::Hour, Period::Day, Period::Month];

    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn parse(name: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The period `unix` (seconds) falls in, as a number, and when that period ends.
    pub fn at(self, unix: u32) -> (u32, u32) {
        match self {
            Period::Minute => (unix / 60, (unix / 60 + 1) * 60),
            Period::Hour => (unix / 3600, (unix / 3600 + 1) * 3600),
            Period::Day => (unix / 86_400, (unix / 86_400 + 1) * 86_400),
            Period::Month => {
                let (y, m) = year_month(unix / 86_400);
                let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    y * 12 + (m - 1),
                    days_from_civil(next.0, next.1, 1) * 86_400,
                )
            }
        }
    }

    /// How long a period's counter is kept after it ends (for reports of the last periods).
    fn retention(self) -> u32 {
        match self {
            Period::Minute => 3600,
            Period::Hour => 2 * 86_400,
            Period::Day => 40 * 86_400,
            Period::Month => 400 * 86_400,
        }
    }

    /// The period's start as text (UTC): `2026-12-02T03:41`, `2026-12-02T03`, `2026-12-02`, `2026-12`.
    pub fn label(self, unix: u32) -> String {
        let days = unix / 86_400;
        let (y, m) = year_month(days);
        let d = days - days_from_civil(y, m, 1) + 1;
        let (h, min) = ((unix % 86_400) / 3600, (unix % 3600) / 60);
        match self {
            Period::Minute => format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}"),
            Period::Hour => format!("{y:04}-{m:02}-{d:02}T{h:02}"),
            Period::Day => format!("{y:04}-{m:02}-{d:02}"),
            Period::Month => format!("{y:04}-{m:02}"),
        }
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: u32, m: u32, d: u32) -> u32 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u32
}

/// Year and month of a day count since 1970-01-01.
fn year_month(days: u32) -> (u32, u32) {
    let z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u32, m as u32)
}

/// The counter of `metric` for `tenant` in the period numbered `index`.
pub fn key(tenant: &str, metric: Metric, period: Period, index: u32) -> CounterKey {
    CounterKey::of(&[
        b"meter",
        tenant.as_bytes(),
        metric.name().as_bytes(),
        period.name().as_bytes(),
        &index.to_be_bytes(),
    ])
}

/// Adds `n` of `metric` for `tenant` at `unix` to every period's counter (logins, and worker flushes).
pub fn add(counters: &Counters, tenant: &str, metric: Metric, n: u64, unix: u32) {
    if n == 0 {
        return;
    }
    for period in Period::ALL {
        let (index, ends) = period.at(unix);
        counters.add(
            key(tenant, metric, period, index),
            n,
            ends.saturating_add(period.retention()),
        );
    }
}

/// The cluster-wide figure of `metric` for `tenant` in the period that holds `unix`.
pub fn total(counters: &Counters, tenant: &str, metric: Metric, period: Period, unix: u32) -> u64 {
    counters.total(&key(tenant, metric, period, period.at(unix).0), unix)
}

/// A worker's sums since its last flush, per pool (index in the snapshot's pools).
#[derive(Debug, Default)]
pub struct WorkerMeter {
    sums: Vec<[u64; 5]>,
    dirty: bool,
    next_flush: Option<Instant>,
}

impl WorkerMeter {
    /// Counts one finished request for pool `pool`.
    pub fn request(&mut self, pool: usize, bytes_in: u64, bytes_out: u64, backend_us: Option<u64>) {
        if self.sums.len() <= pool {
            self.sums.resize(pool + 1, [0; 5]);
        }
        let s = &mut self.sums[pool];
        s[Metric::Requests as usize] += 1;
        s[Metric::BytesIn as usize] += bytes_in;
        s[Metric::BytesOut as usize] += bytes_out;
        s[Metric::BackendMicros as usize] += backend_us.unwrap_or(0);
        self.dirty = true;
    }

    /// When the worker must wake to flush (its poll timeout), if it holds sums.
    pub fn due(&self) -> Option<Instant> {
        if self.dirty { self.next_flush } else { None }
    }

    /// Hands the sums to the counters once [`WORKER_FLUSH`] has passed since the first unflushed count
    /// (`now`), or at once (`None`): `tenants` names each pool's tenant (the snapshot's pools, in order).
    pub fn flush_if_due(
        &mut self,
        counters: &Counters,
        tenants: &[Box<str>],
        now: Option<Instant>,
        unix: u32,
    ) {
        if !self.dirty {
            return;
        }
        if let Some(now) = now {
            match self.next_flush {
                None => {
                    self.next_flush = Some(now + WORKER_FLUSH);
                    return;
                }
                Some(at) if now < at => return,
                Some(_) => {}
            }
        }
        for (pool, sums) in self.sums.iter_mut().enumerate() {
            if let Some(tenant) = tenants.get(pool) {
                for m in Metric::ALL {
                    add(counters, tenant, m, sums[m as usize], unix);
                }
            }
            *sums = [0; 5];
        }
        self.dirty = false;
        self.next_flush = None;
    }
}

/// One line of the usage report per tenant, metric and period (the current periods), as CSV with a
/// header: `period,start,tenant,metric,value`.
pub fn report_csv(counters: &Counters, tenants: &[Box<str>], unix: u32) -> String {
    let mut out = String::from("period,start,tenant,metric,value\n");
    for period in Period::ALL {
        let label = period.label(unix);
        for tenant in tenants {
            for m in Metric::ALL {
                let v = total(counters, tenant, m, period, unix);
                out.push_str(&format!(
                    "{},{label},{tenant},{},{v}\n",
                    period.name(),
                    m.name()
                ));
            }
        }
    }
    out
}

/// The same report as JSON: `{"at": UNIX, "tenants": {TENANT: {PERIOD: {"start": …, METRIC: value}}}}`.
pub fn report_json(counters: &Counters, tenants: &[Box<str>], unix: u32) -> String {
    let mut root = serde_json::Map::new();
    for tenant in tenants {
        let mut periods = serde_json::Map::new();
        for period in Period::ALL {
            let mut figures = serde_json::Map::new();
            figures.insert("start".into(), period.label(unix).into());
            for m in Metric::ALL {
                figures.insert(
                    m.name().into(),
                    total(counters, tenant, m, period, unix).into(),
                );
            }
            periods.insert(period.name().into(), figures.into());
        }
        root.insert(tenant.to_string(), periods.into());
    }
    serde_json::json!({ "at": unix, "tenants": root }).to_string()
}

/// The usage as Prometheus text: one gauge family per metric in base units (`tether_tenant_requests`,
/// `_received_bytes`, `_sent_bytes`, `_backend_seconds`, `_logins`), by tenant and current period.
pub fn prometheus(counters: &Counters, tenants: &[Box<str>], unix: u32) -> String {
    let mut out = String::new();
    for m in Metric::ALL {
        // One family per metric, in base units (Prometheus conventions): seconds, not microseconds.
        let (family, help, scale) = match m {
            Metric::Requests => ("tether_tenant_requests", "Requests", 1.0),
            Metric::BytesIn => (
                "tether_tenant_received_bytes",
                "Bytes received from clients",
                1.0,
            ),
            Metric::BytesOut => ("tether_tenant_sent_bytes", "Bytes sent to clients", 1.0),
            Metric::BackendMicros => (
                "tether_tenant_backend_seconds",
                "Time spent at backends",
                1e-6,
            ),
            Metric::Logins => ("tether_tenant_logins", "Logins", 1.0),
        };
        out.push_str(&format!(
            "# HELP {family} {help} per tenant in the current period (minute, hour, day, month), cluster-wide.\n\
             # TYPE {family} gauge\n"
        ));
        for tenant in tenants {
            for period in Period::ALL {
                let v = total(counters, tenant, m, period, unix);
                let value = if scale == 1.0 {
                    v.to_string()
                } else {
                    (v as f64 * scale).to_string()
                };
                out.push_str(&format!(
                    "{family}{{tenant=\"{tenant}\",period=\"{}\"}} {value}\n",
                    period.name(),
                ));
            }
        }
    }
    out
}

/// Writes the usage report to `path` (JSON when it ends in `.json`, else CSV), by a temporary file and a
/// rename, so a reader never sees half a report.
pub fn write_report(
    path: &std::path::Path,
    counters: &Counters,
    tenants: &[Box<str>],
    unix: u32,
) -> std::io::Result<()> {
    let json = path.extension().is_some_and(|e| e == "json");
    let text = if json {
        report_json(counters, tenants, unix)
    } else {
        report_csv(counters, tenants, unix)
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Starts the thread that writes the usage report at the end of every minute (just after it, so the
/// report covers the minute that ended and the longer periods so far) until `stop`.
pub fn start_reporter(
    path: std::path::PathBuf,
    counters: std::sync::Arc<Counters>,
    snapshot: crate::snapshot::SharedSnapshot,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("metering".into())
        .spawn(move || {
            let mut last_minute = crate::sticky::unix_now() / 60;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = crate::sticky::unix_now();
                if now / 60 == last_minute {
                    continue;
                }
                last_minute = now / 60;
                // Reported for the last second of the minute that ended, after the workers' and the
                // counters' flushes had time to land.
                std::thread::sleep(WORKER_FLUSH * 5);
                let snap = snapshot.load();
                if let Some(settings) = snap.auth.as_deref() {
                    if let Err(e) = write_report(&path, &counters, &settings.tenants, now - 1) {
                        log::warn!("metering: cannot write {}: {e}", path.display());
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_labels() {
        // 2026-12-02T03:41:05Z
        let t = 1_796_182_865;
        assert_eq!(Period::Minute.label(t), "2026-12-02T03:41");
        assert_eq!(Period::Hour.label(t), "2026-12-02T03");
        assert_eq!(Period::Day.label(t), "2026-12-02");
        assert_eq!(Period::Month.label(t), "2026-12");
        let (_, month_end) = Period::Month.at(t);
        assert_eq!(Period::Day.label(month_end), "2027-01-01");
        assert_eq!(Period::Month.label(month_end - 1), "2026-12");
        // Leap day.
        let feb29 = days_from_civil(2028, 2, 29) * 86_400;
        assert_eq!(Period::Day.label(feb29), "2028-02-29");
        assert_eq!(
            Period::Month.at(feb29).1,
            days_from_civil(2028, 3, 1) * 86_400
        );
    }

    #[test]
    fn workers_flush_sums_to_every_period() {
        let counters = Counters::new(1, vec![], None);
        let tenants: Vec<Box<str>> = vec!["acme".into(), "globex".into()];
        let mut meter = WorkerMeter::default();
        let t0 = Instant::now();
        let unix = 1_796_182_865;
        meter.request(0, 100, 2000, Some(50));
        meter.request(0, 10, 20, None);
        meter.request(1, 1, 1, Some(1));
        meter.flush_if_due(&counters, &tenants, Some(t0), unix);
        assert_eq!(
            total(&counters, "acme", Metric::Requests, Period::Day, unix),
            0,
            "not due yet"
        );
        meter.flush_if_due(&counters, &tenants, Some(t0 + WORKER_FLUSH), unix);
        for p in Period::ALL {
            assert_eq!(total(&counters, "acme", Metric::Requests, p, unix), 2);
            assert_eq!(total(&counters, "acme", Metric::BytesOut, p, unix), 2020);
            assert_eq!(total(&counters, "acme", Metric::BackendMicros, p, unix), 50);
            assert_eq!(total(&counters, "globex", Metric::Requests, p, unix), 1);
        }
        // The next minute starts from zero; the hour goes on.
        assert_eq!(
            total(
                &counters,
                "acme",
                Metric::Requests,
                Period::Minute,
                unix + 60
            ),
            0
        );
        assert_eq!(
            total(&counters, "acme", Metric::Requests, Period::Hour, unix + 60),
            2
        );
        let csv = report_csv(&counters, &tenants, unix);
        assert!(csv.contains("day,2026-12-02,acme,requests,2\n"), "{csv}");
        let json: serde_json::Value =
            serde_json::from_str(&report_json(&counters, &tenants, unix)).unwrap();
        assert_eq!(json["tenants"]["globex"]["month"]["requests"], 1);
        let text = prometheus(&counters, &tenants, unix);
        assert!(
            text.contains("tether_tenant_received_bytes{tenant=\"acme\",period=\"hour\"} 110"),
            "{text}"
        );
        assert!(text.contains("# TYPE tether_tenant_backend_seconds gauge\n"));
    }
}
