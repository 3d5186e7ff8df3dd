//! sse-fanout: holds thousands of Server-Sent Events streams open against one server, measures the
//! server's memory per idle stream (RSS of the given processes before and after), then publishes at a
//! fixed open-loop rate and records publish-to-delivery latency per event in an HDR histogram.
//!
//! Built for issue #16 (bench/notify.sh): the same run drives tether (`--target tether`: `POST /publish`
//! with `{"session":KEY,"data":{"t":…}}`) and Pushpin (`--target pushpin`: `POST /publish/` with an
//! `http-stream` item on channel KEY). Each published event carries its *intended* send time `t`
//! (microseconds on this process's monotonic clock), so a publisher that falls behind its schedule is
//! counted in the latency (no coordinated omission) and sender and receivers share one clock.
//!
//! The plan file says which streams to open, one group per line, tab-separated:
//! `COUNT<TAB>KEY<TAB>PATH[<TAB>Header: value]…`. KEY is what a publish addresses (a tether session id, a
//! Pushpin channel) or `-` for streams that are only held open. Publishes go round-robin over the
//! distinct keys; one publish to KEY is expected to reach every stream of the lines with that KEY.
//!
//! One thread holds the streams (mio, nonblocking), another publishes over `--publish-conns` keep-alive
//! connections (one request in flight each). Every socket is a file descriptor: the soft `RLIMIT_NOFILE`
//! is raised to the hard limit at start; the hard limit must exceed the stream count (`ulimit -Hn`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "sse-fanout",
    about = "Hold many SSE streams, measure server RSS per stream and publish-to-delivery latency"
)]
struct Args {
    /// `tether` or `pushpin`: the publish body format.
    #[arg(long)]
    target: String,
    /// Address the streams connect to (ip:port).
    #[arg(long)]
    connect: String,
    /// The plan file (COUNT, KEY, PATH, headers; tab-separated lines).
    #[arg(long)]
    plan: String,
    /// The publish listener (ip:port).
    #[arg(long)]
    publish: String,
    /// The publish path.
    #[arg(long, default_value = "/publish")]
    publish_path: String,
    /// A header sent with every publish (repeatable), e.g. `Authorization: Bearer SECRET`.
    #[arg(long = "publish-header")]
    publish_headers: Vec<String>,
    /// Publishes per second (open loop); 0 publishes nothing.
    #[arg(long, default_value_t = 10000)]
    rate: u64,
    /// Keep-alive connections the publisher uses (one request in flight on each).
    #[arg(long, default_value_t = 32)]
    publish_conns: usize,
    /// Publishing before the measured period (events are not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// The measured publishing period.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    duration: Duration,
    /// Idle time between the last stream opened and the RSS reading.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// Processes whose VmRSS is summed (comma-separated pids).
    #[arg(long, default_value = "")]
    pids: String,
    /// Streams being opened at once (connect to response head).
    #[arg(long, default_value_t = 256)]
    open_batch: usize,
    /// Give up opening streams after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    open_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// The process's clock origin: `t` values are microseconds since it.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn micros_since_origin(at: Instant) -> u64 {
    at.saturating_duration_since(origin()).as_micros() as u64
}

struct Group {
    count: usize,
    key: Option<String>,
    request: Vec<u8>,
}

fn read_plan(path: &str, host: &str) -> Result<Vec<Group>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut groups = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split('\t');
        let (Some(count), Some(key), Some(path)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("{path}:{}: want COUNT, KEY, PATH", n + 1));
        };
        let count: usize = count
            .parse()
            .map_err(|_| format!("plan line {}: bad count", n + 1))?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for h in f {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        groups.push(Group {
            count,
            key: (key != "-").then(|| key.to_string()),
            request: req.into_bytes(),
        });
    }
    Ok(groups)
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            return lim.rlim_cur;
        }
    }
    0
}

#[derive(PartialEq)]
enum State {
    Connecting,
    Head,
    Streaming,
    Dead,
}

struct Sub {
    stream: TcpStream,
    state: State,
    group: usize,
    sent: usize,
    /// The response head so far, then an incomplete line of the stream.
    buf: Vec<u8>,
}

#[derive(Default, Serialize)]
struct SubErrors {
    connect: u64,
    status: u64,
    closed: u64,
    read: u64,
}

#[derive(Default, Serialize)]
struct PublishReport {
    sent: u64,
    answered: u64,
    status: BTreeMap<u16, u64>,
    /// Answered with 2xx and intended inside the measured period.
    accepted_measured: u64,
    errors: u64,
    reconnects: u64,
    /// Publishes not yet sent when the period ended (the publisher fell behind).
    backlog_at_end: u64,
    /// Largest lag of a send behind its intended time, microseconds.
    max_send_lag_us: u64,
    expected_deliveries: u64,
}

#[derive(Serialize)]
struct Report {
    target: String,
    streams_wanted: usize,
    streams_open: usize,
    open_secs: f64,
    sub_errors: SubErrors,
    rss_before_kib: u64,
    rss_open_kib: u64,
    rss_after_publish_kib: u64,
    bytes_per_stream: f64,
    rate: u64,
    duration_secs: f64,
    publish: PublishReport,
    delivered_measured: u64,
    delivered_total: u64,
    latency_us: BTreeMap<String, u64>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("sse-fanout: {e}");
        std::process::exit(2);
    }
}

fn resolve(a: &str) -> Result<SocketAddr, String> {
    a.to_socket_addrs()
        .map_err(|e| format!("{a}: {e}"))?
        .next()
        .ok_or_else(|| format!("{a}: no address"))
}

fn run(args: Args) -> Result<(), String> {
    origin();
    if args.target != "tether" && args.target != "pushpin" {
        return Err("--target is tether or pushpin".into());
    }
    let nofile = raise_nofile();
    let addr = resolve(&args.connect)?;
    let groups = read_plan(&args.plan, &args.connect)?;
    let wanted: usize = groups.iter().map(|g| g.count).sum();
    if nofile != 0 && (wanted as u64) + 64 > nofile {
        return Err(format!(
            "{wanted} streams need more descriptors than RLIMIT_NOFILE allows ({nofile}); raise `ulimit -Hn`"
        ));
    }
    let pids: Vec<u32> = args
        .pids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad pid {s}")))
        .collect::<Result<_, _>>()?;
    // Deliveries per publish, by key; the keys publishes go to, in order.
    let mut fanout: HashMap<String, u64> = HashMap::new();
    let mut keys: Vec<String> = Vec::new();
    for g in &groups {
        if let Some(k) = &g.key {
            if !fanout.contains_key(k) {
                keys.push(k.clone());
            }
            *fanout.entry(k.clone()).or_default() += g.count as u64;
        }
    }

    let rss_before = rss_kib(&pids);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(4096);
    let mut subs: Vec<Sub> = Vec::with_capacity(wanted);
    let mut errors = SubErrors::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut delivered_total = 0u64;
    let mut delivered_measured = 0u64;
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let mut rbuf = vec![0u8; 64 * 1024];

    // Open every stream, at most open_batch waiting for their response head at once.
    let open_start = Instant::now();
    let mut next_group = 0usize;
    let mut left_in_group = groups.first().map_or(0, |g| g.count);
    let mut pending = 0usize;
    let mut open = 0usize;
    let mut ctx = Ctx {
        errors: &mut errors,
        hist: &mut hist,
        delivered_total: &mut delivered_total,
        delivered_measured: &mut delivered_measured,
        measure_from: &measure_from,
    };
    loop {
        while pending < args.open_batch && next_group < groups.len() {
            if left_in_group == 0 {
                next_group += 1;
                left_in_group = groups.get(next_group).map_or(0, |g| g.count);
                continue;
            }
            left_in_group -= 1;
            let idx = subs.len();
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    poll.registry()
                        .register(&mut s, Token(idx), Interest::READABLE | Interest::WRITABLE)
                        .map_err(|e| e.to_string())?;
                    subs.push(Sub {
                        stream: s,
                        state: State::Connecting,
                        group: next_group,
                        sent: 0,
                        buf: Vec::new(),
                    });
                    pending += 1;
                }
                Err(_) => {
                    ctx.errors.connect += 1;
                }
            }
        }
        if pending == 0 && next_group >= groups.len() {
            break;
        }
        if open_start.elapsed() > args.open_timeout {
            eprintln!("sse-fanout: gave up opening after {:?}", args.open_timeout);
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            let was_pending = matches!(subs[i].state, State::Connecting | State::Head);
            drive(&mut subs[i], &groups, &mut rbuf, &mut ctx);
            let now_pending = matches!(subs[i].state, State::Connecting | State::Head);
            if was_pending && !now_pending {
                pending -= 1;
                if subs[i].state == State::Streaming {
                    open += 1;
                }
            }
        }
    }
    let open_secs = open_start.elapsed().as_secs_f64();
    eprintln!(
        "sse-fanout: {open}/{wanted} streams open in {open_secs:.1}s; settling {:?}",
        args.settle
    );
    let settle_end = Instant::now() + args.settle;
    while Instant::now() < settle_end {
        pump(
            &mut poll,
            &mut events,
            &mut subs,
            &groups,
            &mut rbuf,
            &mut ctx,
            50,
        )?;
    }
    let rss_open = rss_kib(&pids);
    let open_now = subs.iter().filter(|s| s.state == State::Streaming).count();

    // Publish.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = if args.rate > 0 && !keys.is_empty() {
        let cfg = PubConfig {
            target: args.target.clone(),
            addr: resolve(&args.publish)?,
            host: args.publish.clone(),
            path: args.publish_path.clone(),
            headers: args.publish_headers.clone(),
            rate: args.rate,
            conns: args.publish_conns.max(1),
            warmup: args.warmup,
            duration: args.duration,
            keys: keys.clone(),
            fanout: fanout.clone(),
        };
        let mf = measure_from.clone();
        let st = stop.clone();
        Some(std::thread::spawn(move || publish(cfg, mf, st)))
    } else {
        None
    };
    let report_pub = if let Some(h) = publisher {
        while !h.is_finished() {
            pump(
                &mut poll,
                &mut events,
                &mut subs,
                &groups,
                &mut rbuf,
                &mut ctx,
                5,
            )?;
        }
        let r = h.join().map_err(|_| "publisher panicked")??;
        // Late deliveries of the last publishes.
        let drain_end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < drain_end {
            pump(
                &mut poll,
                &mut events,
                &mut subs,
                &groups,
                &mut rbuf,
                &mut ctx,
                20,
            )?;
        }
        r
    } else {
        PublishReport::default()
    };
    stop.store(true, Ordering::Relaxed);
    let rss_after = rss_kib(&pids);

    let mut lat = BTreeMap::new();
    if !hist.is_empty() {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            lat.insert(name.to_string(), hist.value_at_quantile(q));
        }
        lat.insert("max".into(), hist.max());
        lat.insert("mean".into(), hist.mean() as u64);
    }
    let report = Report {
        target: args.target.clone(),
        streams_wanted: wanted,
        streams_open: open_now,
        open_secs,
        sub_errors: errors,
        rss_before_kib: rss_before,
        rss_open_kib: rss_open,
        rss_after_publish_kib: rss_after,
        bytes_per_stream: if open_now > 0 {
            (rss_open as f64 - rss_before as f64) * 1024.0 / open_now as f64
        } else {
            0.0
        },
        rate: args.rate,
        duration_secs: args.duration.as_secs_f64(),
        publish: report_pub,
        delivered_measured,
        delivered_total,
        latency_us: lat,
    };
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

struct Ctx<'a> {
    errors: &'a mut SubErrors,
    hist: &'a mut Histogram<u64>,
    delivered_total: &'a mut u64,
    delivered_measured: &'a mut u64,
    measure_from: &'a AtomicU64,
}

fn pump(
    poll: &mut Poll,
    events: &mut Events,
    subs: &mut [Sub],
    groups: &[Group],
    rbuf: &mut [u8],
    ctx: &mut Ctx,
    ms: u64,
) -> Result<(), String> {
    match poll.poll(events, Some(Duration::from_millis(ms))) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
        Err(e) => return Err(e.to_string()),
    }
    for ev in events.iter() {
        drive(&mut subs[ev.token().0], groups, rbuf, ctx);
    }
    Ok(())
}

/// Advances one stream as far as its socket allows.
fn drive(sub: &mut Sub, groups: &[Group], rbuf: &mut [u8], ctx: &mut Ctx) {
    if sub.state == State::Connecting {
        let req = &groups[sub.group].request;
        loop {
            match sub.stream.write(&req[sub.sent..]) {
                Ok(n) => {
                    sub.sent += n;
                    if sub.sent == req.len() {
                        sub.state = State::Head;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    ctx.errors.connect += 1;
                    sub.state = State::Dead;
                    return;
                }
            }
        }
    }
    loop {
        if sub.state == State::Dead {
            return;
        }
        match sub.stream.read(rbuf) {
            Ok(0) => {
                if sub.state == State::Head {
                    ctx.errors.connect += 1;
                } else {
                    ctx.errors.closed += 1;
                }
                sub.state = State::Dead;
                return;
            }
            Ok(n) => {
                let now = micros_since_origin(Instant::now());
                let data = &rbuf[..n];
                if sub.state == State::Head {
                    sub.buf.extend_from_slice(data);
                    let Some(end) = memfind(&sub.buf, b"\r\n\r\n") else {
                        if sub.buf.len() > 16384 {
                            ctx.errors.status += 1;
                            sub.state = State::Dead;
                        }
                        continue;
                    };
                    let ok = sub.buf.starts_with(b"HTTP/1.1 200")
                        || sub.buf.starts_with(b"HTTP/1.0 200");
                    if !ok {
                        if ctx.errors.status == 0 {
                            eprintln!(
                                "sse-fanout: stream answered {:?}",
                                String::from_utf8_lossy(&sub.buf[..sub.buf.len().min(300)])
                            );
                        }
                        ctx.errors.status += 1;
                        sub.state = State::Dead;
                        return;
                    }
                    let rest = sub.buf.split_off(end + 4);
                    sub.buf.clear();
                    sub.state = State::Streaming;
                    lines(sub, &rest, now, ctx);
                } else {
                    lines(sub, data, now, ctx);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                ctx.errors.read += 1;
                sub.state = State::Dead;
                return;
            }
        }
    }
}

/// Scans stream bytes for `data:` lines carrying `"t":N` and records their latency.
fn lines(sub: &mut Sub, mut data: &[u8], now: u64, ctx: &mut Ctx) {
    while let Some(nl) = data.iter().position(|&b| b == b'\n') {
        if sub.buf.is_empty() {
            event_line(&data[..nl], now, ctx);
        } else {
            sub.buf.extend_from_slice(&data[..nl]);
            let line = std::mem::take(&mut sub.buf);
            event_line(&line, now, ctx);
        }
        data = &data[nl + 1..];
    }
    sub.buf.extend_from_slice(data);
}

fn event_line(line: &[u8], now: u64, ctx: &mut Ctx) {
    if !line.starts_with(b"data:") {
        return;
    }
    let Some(at) = memfind(line, b"\"t\":") else {
        return;
    };
    let mut t = 0u64;
    let mut any = false;
    for &b in &line[at + 4..] {
        if b.is_ascii_digit() {
            t = t * 10 + u64::from(b - b'0');
            any = true;
        } else {
            break;
        }
    }
    if !any {
        return;
    }
    *ctx.delivered_total += 1;
    if t >= ctx.measure_from.load(Ordering::Relaxed) {
        *ctx.delivered_measured += 1;
        let _ = ctx.hist.record(now.saturating_sub(t).max(1));
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct PubConfig {
    target: String,
    addr: SocketAddr,
    host: String,
    path: String,
    headers: Vec<String>,
    rate: u64,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    keys: Vec<String>,
    fanout: HashMap<String, u64>,
}

struct PubConn {
    stream: Option<TcpStream>,
    out: Vec<u8>,
    written: usize,
    inbuf: Vec<u8>,
    /// Intended time (µs) and key of the request in flight.
    inflight: Option<(u64, usize)>,
}

fn publish_request(cfg: &PubConfig, key: &str, t: u64, n: u64, out: &mut Vec<u8>) {
    let body = if cfg.target == "tether" {
        format!(r#"{{"session":"{key}","data":{{"t":{t},"n":{n}}}}}"#)
    } else {
        format!(
            r#"{{"items":[{{"channel":"{key}","formats":{{"http-stream":{{"content":"data: {{\"t\":{t},\"n\":{n}}}\n\n"}}}}}}]}}"#
        )
    };
    out.clear();
    out.extend_from_slice(
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            cfg.path,
            cfg.host,
            body.len()
        )
        .as_bytes(),
    );
    for h in &cfg.headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn pub_connect(cfg: &PubConfig, poll: &Poll, i: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect(cfg.addr).ok()?;
    let _ = s.set_nodelay(true);
    poll.registry()
        .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
        .ok()?;
    Some(s)
}

/// The open-loop publisher: publish k is due at start + k/rate; it is sent on the first free connection
/// at or after that time, with its due time as `t`.
fn publish(
    cfg: PubConfig,
    measure_from: Arc<AtomicU64>,
    _stop: Arc<AtomicBool>,
) -> Result<PublishReport, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(256);
    let mut rep = PublishReport::default();
    let mut conns: Vec<PubConn> = (0..cfg.conns)
        .map(|i| PubConn {
            stream: pub_connect(&cfg, &poll, i),
            out: Vec::with_capacity(512),
            written: 0,
            inbuf: Vec::with_capacity(1024),
            inflight: None,
        })
        .collect();
    let mut free: VecDeque<usize> = (0..cfg.conns).collect();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_at = start + cfg.warmup;
    let end = measure_at + cfg.duration;
    measure_from.store(micros_since_origin(measure_at), Ordering::Relaxed);
    let interval_ns = 1_000_000_000f64 / cfg.rate as f64;
    let mut k: u64 = 0;
    let due = |k: u64| start + Duration::from_nanos((k as f64 * interval_ns) as u64);
    let mut rbuf = [0u8; 4096];
    let measure_from_us = micros_since_origin(measure_at);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Send what is due on free connections.
        while due(k) <= now && due(k) < end {
            let Some(i) = free.pop_front() else { break };
            let c = &mut conns[i];
            if c.stream.is_none() {
                c.stream = pub_connect(&cfg, &poll, i);
                rep.reconnects += 1;
                if c.stream.is_none() {
                    rep.errors += 1;
                    free.push_back(i);
                    break;
                }
            }
            let t = micros_since_origin(due(k));
            let key_i = (k % cfg.keys.len() as u64) as usize;
            publish_request(&cfg, &cfg.keys[key_i], t, k, &mut c.out);
            c.written = 0;
            c.inflight = Some((t, key_i));
            let lag = now.saturating_duration_since(due(k)).as_micros() as u64;
            rep.max_send_lag_us = rep.max_send_lag_us.max(lag);
            rep.sent += 1;
            k += 1;
            if !pub_write(c) {
                c.stream = None;
                c.inflight = None;
                rep.errors += 1;
                free.push_back(i);
            }
        }
        // Answers.
        let wait = if free.is_empty() || due(k) <= now {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        poll.poll(&mut events, Some(wait))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if c.stream.is_none() {
                continue;
            }
            if c.inflight.is_some() && c.written < c.out.len() && !pub_write(c) {
                c.stream = None;
                c.inflight = None;
                rep.errors += 1;
                free.push_back(i);
                continue;
            }
            let mut dead = false;
            loop {
                match c.stream.as_mut().unwrap().read(&mut rbuf) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&rbuf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            if let Some(close) = take_answer(c, &mut rep, &cfg, measure_from_us) {
                if close {
                    dead = true;
                }
                if !dead {
                    free.push_back(i);
                }
            }
            if dead {
                if c.inflight.take().is_some() {
                    rep.errors += 1;
                }
                if let Some(mut s) = c.stream.take() {
                    let _ = poll.registry().deregister(&mut s);
                }
                c.inbuf.clear();
                if !free.contains(&i) {
                    free.push_back(i);
                }
            }
        }
        // Sleep until the next publish is due (epoll waits in whole milliseconds; sleep is finer).
        if !free.is_empty() {
            let next = due(k);
            let now = Instant::now();
            if next > now {
                let gap = next - now;
                if gap > Duration::from_micros(60) {
                    std::thread::sleep(
                        gap.min(Duration::from_millis(1)) - Duration::from_micros(50),
                    );
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
    // Publishes scheduled inside the period that never went out.
    let total_due = ((end - start).as_nanos() as f64 / interval_ns).ceil() as u64;
    rep.backlog_at_end = total_due.saturating_sub(k);
    // Collect the answers still in flight (up to a second).
    let until = Instant::now() + Duration::from_secs(1);
    while conns.iter().any(|c| c.inflight.is_some()) && Instant::now() < until {
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            let Some(s) = c.stream.as_mut() else { continue };
            while let Ok(n) = s.read(&mut rbuf) {
                if n == 0 {
                    break;
                }
                c.inbuf.extend_from_slice(&rbuf[..n]);
            }
            take_answer(c, &mut rep, &cfg, measure_from_us);
        }
    }
    Ok(rep)
}

/// Takes a whole answer off the connection's input, if one is there, and counts it (and, for an accepted
/// publish sent in the measured period, the deliveries it owes). Returns whether it closes the connection.
fn take_answer(
    c: &mut PubConn,
    rep: &mut PublishReport,
    cfg: &PubConfig,
    measure_from_us: u64,
) -> Option<bool> {
    let (status, used, close) = parse_answer(&c.inbuf)?;
    c.inbuf.drain(..used);
    rep.answered += 1;
    *rep.status.entry(status).or_default() += 1;
    if let Some((t, key_i)) = c.inflight.take()
        && (200..300).contains(&status)
        && t >= measure_from_us
    {
        rep.accepted_measured += 1;
        rep.expected_deliveries += cfg.fanout[&cfg.keys[key_i]];
    }
    Some(close)
}

/// Writes what is left of the connection's request; false on a write error.
fn pub_write(c: &mut PubConn) -> bool {
    let Some(s) = c.stream.as_mut() else {
        return false;
    };
    while c.written < c.out.len() {
        match s.write(&c.out[c.written..]) {
            Ok(n) => c.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// A complete answer at the start of `buf`: (status, bytes used, connection closes).
fn parse_answer(buf: &[u8]) -> Option<(u16, usize, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(buf).ok()? else {
        return None;
    };
    let status = resp.code?;
    let mut len = 0usize;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            close = memfind(&v, b"close").is_some();
        }
    }
    (buf.len() >= head + len).then_some((status, head + len, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a = b"HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        assert_eq!(parse_answer(a), Some((202, 49, false)));
        assert_eq!(parse_answer(&a[..48]), None);
        let b = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_answer(b), Some((200, b.len(), true)));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("8s").unwrap(), Duration::from_secs(8));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn publish_bodies_are_json() {
        let mut cfg = PubConfig {
            target: "pushpin".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            host: "h".into(),
            path: "/publish/".into(),
            headers: vec![],
            rate: 1,
            conns: 1,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            keys: vec![],
            fanout: HashMap::new(),
        };
        for target in ["pushpin", "tether"] {
            cfg.target = target.into();
            let mut out = Vec::new();
            publish_request(&cfg, "k1", 123, 7, &mut out);
            let body = &out[memfind(&out, b"\r\n\r\n").unwrap() + 4..];
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            let s = v.to_string();
            assert!(s.contains("123"), "{s}");
        }
    }
}
