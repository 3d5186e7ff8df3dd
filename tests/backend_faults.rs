//! End-to-end backend faults: a backend that resets mid-body, answers a garbage status line, sends more
//! bytes than its Content-Length, stalls (before or during its answer) or closes before answering. The
//! client gets 502/504 when nothing was sent to it yet, else its connection is closed; a soak of 10,000
//! such exchanges leaves tether's open file count at its baseline and its memory flat.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a stalling backend waits before it gives up (well past tether's `server` timeout below, which
/// in turn is far longer than any healthy answer takes, even on a loaded machine).
const STALL: Duration = Duration::from_millis(1500);

const PARTIAL_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";

/// One backend whose misbehaviour is chosen by the request path.
fn faulty_backend() -> Backend {
    Backend::start(|req, stream| {
        match req.path.as_str() {
        "/reset" => {
            let _ = stream.write_all(PARTIAL_HEAD);
            let _ = stream.flush();
            // Abortive close: RST instead of FIN.
            let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
            None
        }
        "/garbage" => Some(Reply::raw(&b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"[..])),
        "/binary" => Some(Reply::raw(&b"\x00\x01\x02 not http at all\r\n\r\n"[..])),
        "/extra" => Some(Reply::raw(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"[..],
        )),
        "/stall" => {
            std::thread::sleep(STALL);
            None
        }
        "/stall-mid-body" => {
            let _ = stream.write_all(PARTIAL_HEAD);
            std::thread::sleep(STALL);
            None
        }
        "/close" => None,
        _ => Some(Reply::text(200, "ok")),
    }
    })
}

/// One faulty backend. Passive health is off: these tests are about each fault's answer, and the faults
/// would otherwise take the only backend down (tests/health.rs covers that).
fn config(backend: SocketAddr) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[timeouts]\nserver = \"500ms\"\n\n\
         [workers]\nupstream_idle_pool = 8\n\n[access_log]\nformat = \"json\"\n\n\
         [clusters.app]\nretries = 0\nbackends = [{{ address = \"{backend}\" }}]\n\n\
         [clusters.app.passive_health]\nconsecutive_failures = 0\n\n\
         [[routes]]\ncluster = \"app\"\n"
    )
}

/// What a client saw of one exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seen {
    /// A complete response with this status and body.
    Complete(u16, Vec<u8>),
    /// The head of a response with this status, then the connection closed before the body was complete.
    Cut(u16),
}

/// Sends `GET path` on a new connection and reads until the response is complete or the connection ends.
/// Returns what was seen and whether the connection was closed by tether afterwards.
fn exchange(addr: SocketAddr, path: &str) -> (Seen, Client) {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let seen = read_one(&mut c);
    (seen, c)
}

fn read_one(c: &mut Client) -> Seen {
    // Read everything up to EOF or one complete response, whichever comes first, without trusting the
    // harness reader with a cut body.
    let mut data = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(seen) = parse_complete(&data) {
            return seen;
        }
        match c.stream.read(&mut b) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "read failed: {e} after {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(&data) {
        Ok(httparse::Status::Complete(_)) => Seen::Cut(resp.code.unwrap()),
        _ => panic!(
            "connection closed without a response head: {:?}",
            String::from_utf8_lossy(&data)
        ),
    }
}

/// A complete Content-Length response at the start of `data`, if there is one.
fn parse_complete(data: &[u8]) -> Option<Seen> {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut hs);
    let Ok(httparse::Status::Complete(n)) = resp.parse(data) else {
        return None;
    };
    let len: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
        .expect("tether's responses here all carry Content-Length");
    let body = data.get(n..n + len)?;
    Some(Seen::Complete(resp.code.unwrap(), body.to_vec()))
}

fn status_of(seen: &Seen) -> u16 {
    match seen {
        Seen::Complete(s, _) | Seen::Cut(s) => *s,
    }
}

#[test]
fn each_backend_fault_gets_its_answer() {
    let backend = faulty_backend();
    let t = Tether::start(&config(backend.addr));

    // Nothing sent to the client yet: an error status, then the connection closed.
    for (path, status) in [
        ("/garbage", 502),
        ("/binary", 502),
        ("/close", 502),
        ("/stall", 504),
    ] {
        let (seen, mut c) = exchange(t.addr, path);
        assert_eq!(status_of(&seen), status, "{path}: {seen:?}");
        assert!(matches!(seen, Seen::Complete(..)), "{path}: {seen:?}");
        assert!(c.closed(), "{path}: connection closed after the error");
    }

    // The response had started: the client connection is cut, the body is visibly short.
    for path in ["/reset", "/stall-mid-body"] {
        let (seen, mut c) = exchange(t.addr, path);
        assert_eq!(seen, Seen::Cut(200), "{path}");
        assert!(c.closed(), "{path}");
    }

    // More bytes than Content-Length: the client gets exactly the declared body, the excess never reaches
    // it (not even as the answer to its next request), and the backend connection is not reused.
    let connections_before = backend.connection_count();
    let (seen, mut c) = exchange(t.addr, "/extra");
    assert_eq!(seen, Seen::Complete(200, b"hello".to_vec()));
    c.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_one(&mut c), Seen::Complete(200, b"ok".to_vec()));
    assert_eq!(
        backend.connection_count(),
        connections_before + 2,
        "a fresh backend connection after the one that over-sent"
    );

    // Every failure is logged with its cause.
    let lines = t.access_lines(8);
    let terminations: Vec<String> = lines
        .iter()
        .map(|l| json_fields(l)["termination"].clone())
        .collect();
    assert_eq!(
        terminations,
        [
            "bad_response",
            "bad_response",
            "upstream_closed",
            "upstream_timeout",
            "upstream_closed",
            "upstream_timeout",
            "completed",
            "completed",
        ],
        "{lines:#?}"
    );
}

/// The faults of the soak, with how often each comes up and what the client must see.
const MIX: &[(&str, usize)] = &[
    ("/reset", 2),
    ("/garbage", 2),
    ("/binary", 1),
    ("/extra", 2),
    ("/close", 2),
    ("/stall", 1),
    ("/stall-mid-body", 1),
];

fn expected(path: &str) -> Seen {
    match path {
        "/reset" | "/stall-mid-body" => Seen::Cut(200),
        "/garbage" | "/binary" | "/close" => Seen::Complete(502, Vec::new()),
        "/stall" => Seen::Complete(504, Vec::new()),
        "/extra" => Seen::Complete(200, b"hello".to_vec()),
        _ => unreachable!(),
    }
}

/// Runs `count` faulty exchanges on `threads` parallel clients; returns how many went as expected.
fn soak(addr: SocketAddr, count: usize, threads: usize) -> usize {
    let schedule: Vec<&str> = MIX
        .iter()
        .flat_map(|(p, n)| std::iter::repeat_n(*p, *n))
        .collect();
    std::thread::scope(|s| {
        let schedule = &schedule;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut ok = 0;
                    for i in (t..count).step_by(threads) {
                        let path = schedule[i % schedule.len()];
                        let (seen, mut c) = exchange(addr, path);
                        let want = expected(path);
                        let same = match (&seen, &want) {
                            // Error bodies are one line of text; only the status matters here.
                            (Seen::Complete(a, _), Seen::Complete(b, body)) if body.is_empty() => {
                                a == b
                            }
                            _ => seen == want,
                        };
                        if same && (path == "/extra" || c.closed()) {
                            ok += 1;
                        } else {
                            eprintln!("{path}: saw {seen:?}");
                        }
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[test]
fn ten_thousand_faulty_exchanges_leak_no_descriptor_and_no_memory() {
    const HALF: usize = 5_000;
    const THREADS: usize = 64;
    raise_fd_limit(1_024);
    let backend = faulty_backend();
    let mut t = Tether::start(&config(backend.addr));
    for _ in 0..4 {
        assert_eq!(get(t.addr, "/ok").status, 200);
    }
    // The baseline: listeners, poller, waker, stdio, log pipes, and the pooled backend connection.
    let fds_before = t.fd_count();
    let rss_start = t.rss_kib();

    assert_eq!(soak(t.addr, HALF, THREADS), HALF, "first half");
    let rss_half = t.rss_kib();
    assert_eq!(soak(t.addr, HALF, THREADS), HALF, "second half");
    let rss_end = t.rss_kib();

    // Every client and backend connection of the soak is gone again.
    let settled = eventually(|| t.fd_count() <= fds_before);
    let fds_after = t.fd_count();
    eprintln!(
        "faulty-exchange soak: fds {fds_before} -> {fds_after}; RSS {rss_start} KiB -> {rss_half} KiB (5,000) -> {rss_end} KiB (10,000)"
    );
    assert!(
        settled,
        "open files: {fds_before} before the soak, {fds_after} after"
    );
    // Memory: whatever the first 5,000 exchanges made the allocator keep, the next 5,000 did not add to.
    assert!(
        rss_end <= rss_half + 1024,
        "RSS grew from {rss_half} KiB to {rss_end} KiB over the second 5,000 faulty exchanges"
    );
    assert!(t.running());
    assert_eq!(get(t.addr, "/ok").status, 200);
}

/// A backend that floods interim (1xx) responses to a client that does not read must not make tether
/// buffer them without bound: tether stops reading the backend until the client takes what is queued.
#[test]
fn a_flood_of_interim_responses_to_a_client_that_does_not_read_stays_bounded() {
    const FLOOD: usize = 64 * 1024 * 1024;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
    let done_tx = std::sync::Mutex::new(done_tx);
    let backend = Backend::start(move |req, stream| {
        if req.path != "/flood" {
            return Some(Reply::text(200, "ok"));
        }
        let interim = b"HTTP/1.1 102 Processing\r\n\r\n";
        let chunk: Vec<u8> = interim.repeat(4096);
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut written = 0;
        while written < FLOOD {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        done_tx.lock().unwrap().send(written).unwrap();
        None
    });
    let t = Tether::start(&config_for(&[backend.addr], ""));
    assert_eq!(get(t.addr, "/warm").status, 200);
    let baseline = t.rss_kib();

    // This client sends its request and reads nothing.
    let mut c = Client::connect(t.addr);
    c.send(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    let written = done_rx.recv().unwrap();
    let grown = t.rss_kib().saturating_sub(baseline);
    eprintln!("interim flood: backend wrote {written} bytes; tether RSS grew {grown} KiB");
    assert!(
        written < FLOOD,
        "tether kept reading the backend although the client took nothing"
    );
    assert!(grown < 16 * 1024, "tether RSS grew {grown} KiB");
    drop(c);
    assert_eq!(get(t.addr, "/after").status, 200);
    let mut t = t;
    assert!(t.running());
}
