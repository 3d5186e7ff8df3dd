//! Subscribed upstream feeds: one thread (`notify-feeds`, never a worker) holds a persistent HTTP/1.1
//! `text/event-stream` connection to each configured feed, with blocking sockets and timeouts. Each
//! event's data is a publish body (`{"user": …, "data": …}` or `{"session": …, "data": …}`) and is queued
//! as a publish would be. A dropped connection is reconnected with a back-off (100 ms doubling up to the
//! feed's `max_backoff`) and `Last-Event-ID: <the last id received>`, so an upstream that keeps its
//! history resumes where the stream stopped, without loss.
//!
//! An event is queued before the next one is read; the id tether resumes from is the id of the last
//! event it queued (on this node: a node that dies loses its place, and the node that subscribes next
//! resumes from whatever id it last saw — see docs/NOTIFICATIONS.md on feeds in a cluster).

use super::hub::{Enqueued, Hub, Stats};
use super::sse::Parser;
use crate::config::{DeleteOn, FeedConfig};
use crate::snapshot::SharedSnapshot;
use crate::store::StoreWriter;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest event line or event a feed may send.
const MAX_EVENT: usize = 256 * 1024;
/// A feed silent this long (no event, no comment) is reconnected.
const IDLE: Duration = Duration::from_secs(90);
/// How often a blocked read looks at the stop flag.
const TICK: Duration = Duration::from_millis(250);

/// A feed's `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Why a feed URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "only http:// feed URLs are supported (put a TLS-terminating proxy in front of others)"
    )]
    Scheme,
    #[error("no host in the URL")]
    Host,
    #[error("bad port")]
    Port,
}

impl FeedUrl {
    pub fn parse(url: &str) -> Result<FeedUrl, UrlError> {
        let rest = url.strip_prefix("http://").ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(UrlError::Host);
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| UrlError::Port)?)
            }
            _ => (authority, 80),
        };
        if host.is_empty()
            || host
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(UrlError::Host);
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(UrlError::Host);
        }
        Ok(FeedUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Starts the feeds thread (nothing when no feed is configured).
pub fn start(
    feeds: Vec<FeedConfig>,
    hub: Arc<Hub>,
    writer: StoreWriter,
    shared: SharedSnapshot,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    if feeds.is_empty() {
        return Ok(None);
    }
    let handle = std::thread::Builder::new()
        .name("notify-feeds".into())
        .spawn(move || {
            // One connection at a time per feed, feeds side by side: a thread per feed, scoped.
            std::thread::scope(|scope| {
                for feed in &feeds {
                    let (hub, writer, shared, stop) = (&hub, &writer, &shared, &stop);
                    scope.spawn(move || run_feed(feed, hub, writer, shared, stop));
                }
            });
        })?;
    Ok(Some(handle))
}

/// Keeps one feed connected until `stop`.
fn run_feed(
    feed: &FeedConfig,
    hub: &Hub,
    writer: &StoreWriter,
    shared: &SharedSnapshot,
    stop: &AtomicBool,
) {
    let Ok(url) = FeedUrl::parse(&feed.url) else {
        log::error!("notifications: feed {}: bad url {:?}", feed.name, feed.url);
        return;
    };
    let mut parser = Parser::new(MAX_EVENT);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if !first {
            Stats::add(&hub.stats.feed_reconnects, 1);
        }
        first = false;
        parser.reset();
        let got = match connect_and_read(feed, &url, &mut parser, hub, writer, shared, stop) {
            Ok(events) => {
                log::info!(
                    "notifications: feed {} ended after {events} event(s); reconnecting",
                    feed.name
                );
                events
            }
            Err(e) => {
                log::warn!("notifications: feed {}: {e}; reconnecting", feed.name);
                0
            }
        };
        if got > 0 {
            backoff = Duration::from_millis(100);
        }
        sleep_unless_stopped(backoff, stop);
        backoff = (backoff * 2).min(feed.max_backoff);
    }
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(TICK));
    }
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Response(String),
    #[error("{0}")]
    Sse(#[from] super::sse::SseError),
    #[error("silent for {0:?}")]
    Idle(Duration),
}

/// One connection: request, response head, then events until the stream ends. Returns the events read.
#[allow(clippy::too_many_arguments)]
fn connect_and_read(
    feed: &FeedConfig,
    url: &FeedUrl,
    parser: &mut Parser,
    hub: &Hub,
    writer: &StoreWriter,
    shared: &SharedSnapshot,
    stop: &AtomicBool,
) -> Result<u64, FeedError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(FeedError::Connect)?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| FeedError::Response("host has no address".into()))?;
    let mut sock =
        TcpStream::connect_timeout(addr, Duration::from_secs(5)).map_err(FeedError::Connect)?;
    sock.set_read_timeout(Some(TICK))?;
    sock.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = sock.set_nodelay(true);
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: tether\r\n",
        url.path,
        url.authority()
    );
    if let Some(id) = parser.last_id() {
        // An id is one line of the stream: no CR or LF can be in it.
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes())?;
    log::info!(
        "notifications: feed {} connected to {addr}{}",
        feed.name,
        parser
            .last_id()
            .map_or(String::new(), |id| format!(" (resuming after {id})"))
    );

    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let mut last_byte = Instant::now();
    // Read the response head.
    let (chunked, mut body) = loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        match sock.read(&mut buf) {
            Ok(0) => return Err(FeedError::Response("closed before a response".into())),
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
                    let rest = head.split_off(end + 4);
                    break (check_head(&head)?, rest);
                }
                if head.len() > 16 * 1024 {
                    return Err(FeedError::Response("response head over 16 KiB".into()));
                }
            }
            Err(e) if timed_out(&e) => {
                if last_byte.elapsed() > Duration::from_secs(10) {
                    return Err(FeedError::Response("no response head in 10s".into()));
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut dechunk = chunked.then(Dechunk::default);
    let mut events = 0u64;
    loop {
        if !body.is_empty() {
            last_byte = Instant::now();
            let mut payload = Vec::new();
            let data: &[u8] = match &mut dechunk {
                Some(d) => {
                    d.feed(&body, &mut payload)
                        .map_err(|e| FeedError::Response(e.into()))?;
                    &payload
                }
                None => &body,
            };
            let mut failed = None;
            parser.feed(data, |ev| {
                if failed.is_none() {
                    events += 1;
                    if let Err(e) = queue_event(feed, &ev.data, hub, writer, shared) {
                        failed = Some(e);
                    }
                }
            })?;
            if dechunk.as_ref().is_some_and(|d| d.done) {
                return Ok(events);
            }
            body.clear();
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(events);
        }
        match sock.read(&mut buf) {
            Ok(0) => return Ok(events),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) => {
                if last_byte.elapsed() > IDLE {
                    return Err(FeedError::Idle(IDLE));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Checks a response head: 200 and `text/event-stream`. Returns whether the body is chunked.
fn check_head(head: &[u8]) -> Result<bool, FeedError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(FeedError::Response("malformed response head".into())),
    }
    if resp.code != Some(200) {
        return Err(FeedError::Response(format!(
            "status {} (want 200)",
            resp.code.unwrap_or(0)
        )));
    }
    let value = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    if !value("content-type").is_some_and(|v| v.starts_with("text/event-stream")) {
        return Err(FeedError::Response("not text/event-stream".into()));
    }
    Ok(value("transfer-encoding").is_some_and(|v| v.contains("chunked")))
}

/// Queues one event's data as a publish. A bad event is logged and skipped (the stream goes on); only
/// a failure to queue at all would be an error, and there is none: a full queue or a missing session is
/// counted where it happens.
fn queue_event(
    feed: &FeedConfig,
    data: &str,
    hub: &Hub,
    writer: &StoreWriter,
    shared: &SharedSnapshot,
) -> Result<(), FeedError> {
    Stats::add(&hub.stats.feed_events, 1);
    let snapshot = shared.load();
    let (Some(settings), Some(auth)) =
        (snapshot.notifications.as_deref(), snapshot.auth.as_deref())
    else {
        return Ok(());
    };
    let publish = match super::parse::publish_body(data.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("notifications: feed {}: event skipped: {e}", feed.name);
            return Ok(());
        }
    };
    let flags = match feed.delete_on.unwrap_or(settings.delete_on) {
        DeleteOn::Delivery => super::queue::FLAG_DELETE_ON_DELIVERY,
        DeleteOn::Ack => 0,
    };
    let tenant = auth.pools.first().map_or("", |p| &*p.tenant);
    let now = crate::sticky::unix_now();
    if let Enqueued::NoSession = hub.enqueue(
        writer,
        settings,
        tenant,
        &publish.target,
        &publish.data,
        flags,
        now,
        None,
    ) {
        log::debug!(
            "notifications: feed {}: no live session for an event",
            feed.name
        );
    }
    Ok(())
}

/// A chunked body decoder (sizes, extensions ignored, trailers skipped) for the feed's stream.
#[derive(Debug, Default)]
struct Dechunk {
    /// Bytes of the current chunk still to come.
    left: usize,
    /// The partial size line.
    line: Vec<u8>,
    /// After a chunk's data: its CRLF is still to be read.
    crlf: u8,
    done: bool,
}

impl Dechunk {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        while !input.is_empty() && !self.done {
            if self.left > 0 {
                let n = self.left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
                continue;
            }
            if self.crlf > 0 {
                input = &input[1..];
                self.crlf -= 1;
                continue;
            }
            let b = input[0];
            input = &input[1..];
            if b != b'\n' {
                if self.line.len() > 1024 {
                    return Err("chunk size line too long");
                }
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let size = line
                .split(|&c| c == b';' || c == b'\r')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or("bad chunk size")?;
            if size == 0 {
                self.done = true;
            } else {
                self.left = size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_urls() {
        assert_eq!(
            FeedUrl::parse("http://127.0.0.1:9300/events?x=1"),
            Ok(FeedUrl {
                host: "127.0.0.1".into(),
                port: 9300,
                path: "/events?x=1".into()
            })
        );
        assert_eq!(FeedUrl::parse("http://mail").unwrap().path, "/");
        assert_eq!(FeedUrl::parse("https://x/"), Err(UrlError::Scheme));
        assert_eq!(FeedUrl::parse("http:///x"), Err(UrlError::Host));
        assert_eq!(FeedUrl::parse("http://x:99999/"), Err(UrlError::Port));
        assert_eq!(FeedUrl::parse("http://u@x/"), Err(UrlError::Host));
    }

    #[test]
    fn chunked_bodies_in_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            d.feed(&body[..split], &mut out).unwrap();
            d.feed(&body[split..], &mut out).unwrap();
            assert_eq!(out, b"hello world");
            assert!(d.done);
        }
        let mut d = Dechunk::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn response_heads() {
        assert!(
            !check_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n").unwrap()
        );
        assert!(
            check_head(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .unwrap()
        );
        assert!(check_head(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(check_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n").is_err());
    }
}
