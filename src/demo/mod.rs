//! `tether demo`: three small built-in backends on loopback and the embedded config that balances them.
//!
//! The backends show what the balancer does — which backend answered (`/`), what headers it received
//! (`/headers`), request bodies streaming through (`/echo`), a slow answer (`/slow?ms=N`) — and they must
//! not be what a load test of the demo measures. They used to write head and body in two writes without
//! `TCP_NODELAY` (Nagle's algorithm then held the body back until the delayed ACK of the head: about 40 ms
//! per keep-alive response) and to start a thread per connection. Now one thread runs one mio event loop
//! for all three backends:
//!
//! - accepted sockets get `TCP_NODELAY`, and each response (head and body) is built in one buffer and
//!   leaves in one write;
//! - each connection is an explicit state machine ([`Conn`]): readiness is edge-triggered, so it reads
//!   until `WouldBlock`, answers every complete request in order, and writes until done or `WouldBlock`
//!   (resuming on the next writable event);
//! - `/slow` parks its answer with a deadline instead of sleeping, and the loop waits at most until the
//!   earliest deadline, so a slow answer holds up only its own connection.

use crate::config::{self, BackendConfig, Config};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The embedded demo configuration (also `configs/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

/// Largest request head a demo backend reads (larger: 431 and close).
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body a demo backend reads (larger: 413 and close).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A connection stops reading once this much is buffered; by the two limits above, the buffer then holds a
/// complete request (or one refused already), so answering it makes room.
const MAX_BUFFERED: usize = MAX_HEAD + MAX_BODY;
/// A connection with nothing happening for this long is closed (a client that went away silently).
const IDLE: Duration = Duration::from_secs(120);
/// How often idle connections are looked for.
const SWEEP: Duration = Duration::from_secs(10);
/// Tokens below this are the listeners (backend `i` of a loop is `Token(i)`); connection `key` is
/// `Token(LISTENERS + key)`.
const LISTENERS: usize = 64;

pub mod cluster;
pub mod webmail;

/// What a demo backend answers: the hello backends of `tether demo`, the webmail of `tether demo --cluster`.
/// Called on the backends' event-loop thread with a whole request; it must not block.
pub(crate) trait Service: Send + Sync {
    fn answer(&self, request: &Request<'_>, now: Instant) -> Answer;
}

/// The hello backends: `/headers`, `/echo`, `/slow`, and a hello.
struct Hello {
    number: usize,
    address: SocketAddr,
}

impl Service for Hello {
    fn answer(&self, request: &Request<'_>, now: Instant) -> Answer {
        answer(request, self.number, self.address, now)
    }
}

/// Starts the demo backends; returns the config to run the balancer with (listening on `listen`) and the
/// backends' addresses.
pub fn start(listen: &str, tls_listen: Option<&str>) -> Result<(Config, Vec<SocketAddr>), String> {
    let mut cfg =
        config::load_str(DEMO_CONFIG, "<embedded demo config>").map_err(|e| e.to_string())?;
    let listen_addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?} is not an ip:port address"))?;
    cfg.listeners[0].address = listen_addr.to_string();
    if let Some(tls_listen) = tls_listen {
        let addr: SocketAddr = tls_listen
            .parse()
            .map_err(|_| format!("--tls-listen {tls_listen:?} is not an ip:port address"))?;
        let dir = demo_cert_dir();
        crate::tls::generate::write_dev_certs(&dir)?;
        let mut tls_listener = cfg.listeners[0].clone();
        tls_listener.name = Some("demo-tls".into());
        tls_listener.address = addr.to_string();
        tls_listener.tls = Some(config::ListenerTls {
            certificates: vec![config::CertificateConfig {
                cert: dir.join("localhost.crt").display().to_string(),
                key: dir.join("localhost.key").display().to_string(),
                names: None,
            }],
            strict_sni: false,
            min_version: config::TlsVersion::Tls12,
            max_version: config::TlsVersion::Tls13,
            groups: None,
            cipher_suites: None,
            alpn: vec!["http/1.1".into()],
            plain_http: config::PlainHttpPolicy::Redirect,
        });
        cfg.listeners.push(tls_listener);
    }

    let mut backends = Vec::new();
    for (i, port) in [9101u16, 9102, 9103].into_iter().enumerate() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
            .map_err(|e| format!("cannot start demo backend: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let service = Arc::new(Hello {
            number: i + 1,
            address,
        });
        backends.push(Backend::new(listener, i + 1, service)?);
    }
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    serve(backends, "demo-backends")?;

    let cluster = cfg
        .clusters
        .get_mut("demo")
        .ok_or("embedded demo config has no cluster \"demo\"")?;
    cluster.backends = addresses
        .iter()
        .map(|a| BackendConfig {
            address: a.to_string(),
            weight: 1,
            drain: false,
        })
        .collect();

    Ok((cfg, addresses))
}

/// Prints what to try, once the balancer listens on `listeners` (the plain one first, then TLS if any).
pub fn print_banner(
    listeners: &[SocketAddr],
    backends: &[SocketAddr],
    snapshot: &crate::snapshot::ConfigSnapshot,
) {
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let url = format!("http://{}", listeners[0]);
    println!(
        "tether demo: three backends on {}\n\
         balancer on {url} (Ctrl-C stops everything)\n\n\
         Try:\n  \
         curl -i {url}/                        # requests spread over the three backends\n  \
         for i in 1 2 3 4 5 6; do curl -s {url}/; done\n  \
         curl -s {url}/headers                 # what a backend receives (X-Forwarded-*)\n  \
         curl -s -d 'hello tether' {url}/echo  # request bodies stream through\n  \
         curl -s '{url}/slow?ms=1500'          # a slow backend answer\n  \
         curl -i {url}/ -H 'Host: bad host'    # bad input gets a clear 400\n",
        list.join(", ")
    );
    if let (Some(tls_addr), Some(Some(_))) = (listeners.get(1), snapshot.listener_tls.get(1)) {
        let ca = demo_cert_dir().join("ca.crt");
        println!(
            "HTTPS on https://localhost:{port} (development CA: {ca}):\n  \
             curl --cacert {ca} https://localhost:{port}/\n  \
             curl -i http://{tls_addr}/   # plain HTTP on the TLS port is redirected\n",
            port = tls_addr.port(),
            ca = ca.display(),
        );
    }
    println!("Access log below (one line per request):");
}

/// One demo backend: its listener, its number (in `X-Backend`), its address and what it answers.
pub(crate) struct Backend {
    listener: TcpListener,
    number: usize,
    address: SocketAddr,
    service: Arc<dyn Service>,
}

impl Backend {
    pub(crate) fn new(
        listener: std::net::TcpListener,
        number: usize,
        service: Arc<dyn Service>,
    ) -> Result<Backend, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot start demo backend: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        Ok(Backend {
            listener: TcpListener::from_std(listener),
            number,
            address,
            service,
        })
    }
}

/// Runs `backends` (at most `LISTENERS`) on one event-loop thread named `name`.
pub(crate) fn serve(mut backends: Vec<Backend>, name: &str) -> Result<(), String> {
    let poll = Poll::new().map_err(|e| format!("cannot start demo backends: {e}"))?;
    for (i, b) in backends.iter_mut().take(LISTENERS).enumerate() {
        poll.registry()
            .register(&mut b.listener, Token(i), Interest::READABLE)
            .map_err(|e| format!("cannot start demo backends: {e}"))?;
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = run(poll, &backends) {
                log::error!("demo backends stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start demo backends: {e}"))?;
    Ok(())
}

/// The event loop of a set of backends; runs until an error of the poll itself.
fn run(mut poll: Poll, backends: &[Backend]) -> io::Result<()> {
    let mut events = Events::with_capacity(256);
    let mut conns: Slab<Conn> = Slab::new();
    // Deadlines of parked `/slow` answers, earliest first, with the connection key. An entry may outlive
    // its connection (or its key may have been reused): driving a connection early is harmless.
    let mut timers: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut next_sweep = Instant::now() + SWEEP;
    // Connection keys to drive this turn (events and due deadlines); may hold a key twice.
    let mut due = Vec::new();
    loop {
        let now = Instant::now();
        let wake = timers
            .peek()
            .map_or(next_sweep, |Reverse((at, _))| (*at).min(next_sweep));
        if let Err(e) = poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Instant::now();
        for event in &events {
            match event.token() {
                Token(i) if i < LISTENERS => {
                    if let Some(b) = backends.get(i) {
                        accept(&poll, b, &mut conns, now);
                    }
                }
                Token(t) => due.push(t - LISTENERS),
            }
        }
        while let Some(&Reverse((at, key))) = timers.peek() {
            if at > now {
                break;
            }
            timers.pop();
            due.push(key);
        }
        for key in due.drain(..) {
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let parked_before = conn.parked_until();
            let fate = conn.drive(now, &mut scratch);
            if let Some(at) = conn.parked_until().filter(|&at| Some(at) != parked_before) {
                timers.push(Reverse((at, key)));
            }
            if !matches!(fate, Ok(Fate::Keep)) {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP;
            let idle: Vec<usize> = conns
                .iter()
                .filter(|(_, c)| c.parked.is_none() && now.duration_since(c.last_active) >= IDLE)
                .map(|(key, _)| key)
                .collect();
            for key in idle {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
}

/// Accepts every pending connection of `backend` (edge-triggered: until `WouldBlock`).
fn accept(poll: &Poll, backend: &Backend, conns: &mut Slab<Conn>, now: Instant) {
    loop {
        let (stream, _) = match backend.listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("demo backend {}: accept: {e}", backend.number);
                return;
            }
        };
        // Responses leave in one write each; without this Nagle's algorithm may still hold a small one
        // back until the previous one is acknowledged.
        let _ = stream.set_nodelay(true);
        let entry = conns.vacant_entry();
        let mut conn = Conn::new(stream, backend.number, backend.service.clone(), now);
        // Registering reports data that arrived before it, so the first event drives the connection.
        let token = Token(LISTENERS + entry.key());
        let interest = Interest::READABLE | Interest::WRITABLE;
        if poll
            .registry()
            .register(&mut conn.stream, token, interest)
            .is_ok()
        {
            entry.insert(conn);
        }
    }
}

/// Whether a connection stays after being driven.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    Close,
}

/// A `/slow` answer waiting for its time.
struct Parked {
    until: Instant,
    response: Vec<u8>,
    close: bool,
}

/// One client connection of a demo backend. Its state is what the buffers hold: `input` (received, not
/// yet answered), `output` (answers not yet written), an answer `parked` until a deadline (no later
/// request is answered before it, so answers stay in order), and whether to close once `output` is out.
struct Conn {
    stream: TcpStream,
    number: usize,
    service: Arc<dyn Service>,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of `output` already written.
    written: usize,
    parked: Option<Parked>,
    /// The last answer said `Connection: close`: nothing after it is answered, and the connection closes
    /// once `output` is written.
    closing: bool,
    /// The client sent EOF: answer what is complete, then close.
    eof: bool,
    last_active: Instant,
}

impl Conn {
    fn new(stream: TcpStream, number: usize, service: Arc<dyn Service>, now: Instant) -> Conn {
        Conn {
            stream,
            number,
            service,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            parked: None,
            closing: false,
            eof: false,
            last_active: now,
        }
    }

    /// The deadline of a parked answer, if any.
    fn parked_until(&self) -> Option<Instant> {
        self.parked.as_ref().map(|p| p.until)
    }

    /// Makes all the progress possible now: answers due, requests complete, bytes writable, bytes
    /// readable. Returns with every ready direction drained to `WouldBlock` (or blocked on a parked answer,
    /// whose deadline wakes the loop), so that the next edge-triggered event or deadline is enough to resume.
    fn drive(&mut self, now: Instant, scratch: &mut [u8]) -> io::Result<Fate> {
        loop {
            // A parked answer whose time has come joins the output.
            if self.parked.as_ref().is_some_and(|p| p.until <= now) {
                let p = self.parked.take().expect("checked");
                self.output.extend_from_slice(&p.response);
                self.closing = p.close;
            }
            // Answer complete requests in order, until one is parked or closes the connection.
            while self.parked.is_none() && !self.closing {
                let answer = match parse(&self.input) {
                    Parsed::Partial => break,
                    Parsed::Complete(len, request) => {
                        let answer = self.service.answer(&request, now);
                        self.input.drain(..len);
                        answer
                    }
                    Parsed::Refuse(status) => {
                        self.input.clear();
                        let mut response = Vec::new();
                        let body = match status {
                            431 => "head too large\n",
                            413 => "body too large\n",
                            _ => "bad request\n",
                        };
                        write_response(&mut response, status, body.as_bytes(), false, self.number);
                        Answer {
                            response,
                            close: true,
                            at: None,
                        }
                    }
                };
                match answer.at {
                    Some(until) if until > now => {
                        self.parked = Some(Parked {
                            until,
                            response: answer.response,
                            close: answer.close,
                        });
                    }
                    _ => {
                        self.output.extend_from_slice(&answer.response);
                        self.closing = answer.close;
                    }
                }
            }
            // Write what is pending.
            while self.written < self.output.len() {
                match self.stream.write(&self.output[self.written..]) {
                    Ok(0) => return Ok(Fate::Close),
                    Ok(n) => {
                        self.written += n;
                        self.last_active = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.written == self.output.len() {
                self.output.clear();
                self.written = 0;
                if self.closing {
                    return Ok(Fate::Close);
                }
            }
            if self.eof {
                // Nothing more will come: close once every complete request is answered and written.
                let waiting = self.parked.is_some() || !self.output.is_empty();
                return Ok(if waiting { Fate::Keep } else { Fate::Close });
            }
            if self.input.len() >= MAX_BUFFERED {
                // A complete request is buffered behind a parked or unwritten answer; its deadline or the
                // next writable event resumes.
                return Ok(Fate::Keep);
            }
            // Read what has arrived; anything new may complete a request, so go round again.
            let mut got = false;
            loop {
                match self.stream.read(scratch) {
                    Ok(0) => {
                        self.eof = true;
                        got = true;
                        break;
                    }
                    Ok(n) => {
                        self.input.extend_from_slice(&scratch[..n]);
                        self.last_active = now;
                        got = true;
                        if self.input.len() >= MAX_BUFFERED {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !got {
                return Ok(Fate::Keep);
            }
        }
    }
}

/// A request at the start of a connection's input, borrowing from it.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Every header as `Name: value` lines, as received (`/headers` shows them).
    pub headers: String,
    pub body: &'a [u8],
    pub keep_alive: bool,
}

impl Request<'_> {
    /// The first header `name`'s value (case-insensitive name).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// What the start of a connection's input holds.
#[derive(Debug)]
enum Parsed<'a> {
    /// Not a whole request yet.
    Partial,
    /// A whole request (head and Content-Length body) of this many bytes.
    Complete(usize, Request<'a>),
    /// Input to answer with this status and a close.
    Refuse(u16),
}

/// Parses the first request in `input`. Bodies are Content-Length only: the balancer in front streams
/// chunked bodies through, and a demo backend does not need to decode them.
fn parse(input: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => return Parsed::Refuse(431),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refuse(400),
    };
    let mut text = String::new();
    let mut length = 0usize;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        text.push_str(&format!("{}: {}\n", h.name, value));
        if h.name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().unwrap_or(0);
        }
        if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            close = v.contains("close") || (close && !v.contains("keep-alive"));
        }
    }
    if length > MAX_BODY {
        return Parsed::Refuse(413);
    }
    if input.len() < head_len + length {
        return Parsed::Partial;
    }
    Parsed::Complete(
        head_len + length,
        Request {
            method: req.method.unwrap_or("GET"),
            path: req.path.unwrap_or("/"),
            headers: text,
            body: &input[head_len..head_len + length],
            keep_alive: !close,
        },
    )
}

/// A response, built whole, and when it may leave.
pub(crate) struct Answer {
    pub response: Vec<u8>,
    pub close: bool,
    /// Not before this (`/slow`).
    pub at: Option<Instant>,
}

/// The demo endpoints: `/headers`, `/echo`, `/slow?ms=N` (at most a minute), and a hello for anything else.
fn answer(request: &Request<'_>, number: usize, address: SocketAddr, now: Instant) -> Answer {
    let (method, path) = (request.method, request.path);
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let mut at = None;
    let text = match route {
        "/headers" => format!("{method} {path}\n{}", request.headers),
        "/echo" => String::new(),
        "/slow" => {
            let ms: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000)
                .min(60_000);
            at = Some(now + Duration::from_millis(ms));
            format!("backend {number} ({address}) answered after {ms} ms\n")
        }
        _ => format!("hello from backend {number} ({address}): {method} {path}\n"),
    };
    let body = if route == "/echo" {
        request.body
    } else {
        text.as_bytes()
    };
    let mut response = Vec::with_capacity(160 + body.len());
    write_response(&mut response, 200, body, request.keep_alive, number);
    Answer {
        response,
        close: !request.keep_alive,
        at,
    }
}

/// Appends a whole response, head and body, to `out` (one buffer, so it leaves in one write).
fn write_response(out: &mut Vec<u8>, status: u16, body: &[u8], keep_alive: bool, number: usize) {
    write_full_response(
        out,
        status,
        "text/plain; charset=utf-8",
        "",
        body,
        keep_alive,
        number,
    );
}

/// Appends a whole response with `content_type` and `extra` header lines (each ending in CRLF).
pub(crate) fn write_full_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
    keep_alive: bool,
    number: usize,
) {
    let reason = crate::http::canned::reason_phrase(status);
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         X-Backend: {number}\r\n{extra}Connection: {connection}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// Where `tether demo --tls` writes its development certificates (one directory per run).
fn demo_cert_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tether-demo-certs-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> (usize, Request<'_>) {
        match parse(input) {
            Parsed::Complete(len, r) => (len, r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_waits_for_the_whole_head_and_body() {
        let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..req.len() {
            assert!(matches!(parse(&req[..cut]), Parsed::Partial), "{cut}");
        }
        let mut two = req.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (len, r) = complete(&two);
        assert_eq!(
            (len, r.method, r.path, r.body),
            (req.len(), "POST", "/echo", &b"hello"[..])
        );
        assert!(r.keep_alive);
        assert_eq!(r.headers, "Host: x\nContent-Length: 5\n");
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        for (req, keep) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ] {
            assert_eq!(
                complete(req).1.keep_alive,
                keep,
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn bad_or_oversized_input_is_refused() {
        assert!(matches!(
            parse(b"\x01 / HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(400)
        ));
        let mut long_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long_head.resize(MAX_HEAD, b'a');
        assert!(matches!(parse(&long_head), Parsed::Refuse(431)));
        let huge = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(parse(huge.as_bytes()), Parsed::Refuse(413)));
    }

    #[test]
    fn each_answer_is_one_whole_response() {
        let addr: SocketAddr = "127.0.0.1:9102".parse().unwrap();
        let now = Instant::now();
        let (_, r) = complete(b"GET /x?y HTTP/1.1\r\n\r\n");
        let a = answer(&r, 2, addr, now);
        let text = String::from_utf8(a.response).unwrap();
        let body = "hello from backend 2 (127.0.0.1:9102): GET /x?y\n";
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(text.contains("X-Backend: 2\r\nConnection: keep-alive\r\n"));
        assert!((a.close, a.at) == (false, None));

        let (_, r) = complete(b"GET /slow?ms=250 HTTP/1.1\r\nConnection: close\r\n\r\n");
        let a = answer(&r, 1, addr, now);
        assert_eq!(a.at, Some(now + Duration::from_millis(250)));
        assert!(a.close);
        let (_, r) = complete(b"GET /slow?ms=999999 HTTP/1.1\r\n\r\n");
        assert_eq!(
            answer(&r, 1, addr, now).at,
            Some(now + Duration::from_secs(60))
        );
    }
}
