//! End-to-end: HTTP/1.1 forwarding through the real binary to real backends.

mod common;

use common::*;
use std::io::{Read, Write};

#[test]
fn requests_spread_over_both_backends() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let t = Tether::start(&config_for(&[a.addr, b.addr], ""));
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let r = get(t.addr, "/");
        assert_eq!(r.status, 200);
        *seen.entry(r.text()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10));
    assert_eq!(seen.get("b"), Some(&10));
}

#[test]
fn keep_alive_reuses_backend_connections() {
    let a = Backend::named("a");
    let t = Tether::start(&config_for(&[a.addr], ""));
    let mut c = Client::connect(t.addr);
    for _ in 0..100 {
        assert_eq!(c.get("/").text(), "a");
    }
    // A second client connection reuses the pooled backend connection too.
    let mut c2 = Client::connect(t.addr);
    for _ in 0..100 {
        assert_eq!(c2.get("/").text(), "a");
    }
    assert_eq!(a.request_count(), 200);
    assert!(
        a.connection_count() <= 2,
        "backend saw {} connections for 200 requests",
        a.connection_count()
    );
}

fn echo_backend() -> Backend {
    Backend::start(|req, _| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            req.body.len()
        )
        .into_bytes();
        r.extend_from_slice(&req.body);
        Some(Reply::raw(r))
    })
}

#[test]
fn chunked_upload_arrives_byte_exact_and_chunked_response_too() {
    let b = Backend::start(|req, _| {
        // Answer chunked, splitting the echoed body into uneven chunks, with a chunk extension and a trailer.
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in req.body.chunks(7) {
            r.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            r.extend_from_slice(part);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        Some(Reply::raw(r))
    });
    let t = Tether::start(&config_for(&[b.addr], ""));
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(4099) {
        req.extend_from_slice(format!("{:X}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut c = Client::connect(t.addr);
    c.send(&req);
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, body, "response body byte-exact");
    let got = b.received();
    assert_eq!(got[0].body, body, "request body byte-exact at the backend");
    // The connection stays usable.
    c.send(b"POST /again HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(c.read_response(false).body, b"abc");
}

#[test]
fn content_length_body_streams_through_in_pieces() {
    let b = echo_backend();
    let t = Tether::start(&config_for(&[b.addr], ""));
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut c = Client::connect(t.addr);
    c.send(
        format!(
            "PUT /big HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for part in body.chunks(65536) {
        c.send(part);
    }
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body);
}

#[test]
fn expect_100_continue_is_forwarded_with_the_request() {
    let b = Backend::start(|req, _| Some(Reply::text(200, &format!("got {}", req.body.len()))));
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    // A client that does not wait for 100 (allowed by RFC 9110) still gets its answer.
    c.send(
        b"POST /e HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "got 5");
    assert_eq!(b.received()[0].header("expect"), Some("100-continue"));
}

#[test]
fn interim_100_continue_from_the_backend_reaches_the_client_first() {
    // A hand-written backend: reads the head, sends 100, reads the body, answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = got[head_end..].to_vec();
        while body.len() < 5 {
            let n = s.read(&mut buf).unwrap();
            body.extend_from_slice(&buf[..n]);
        }
        let reply = format!(
            "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(reply.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    let t = Tether::start(&config_for(&[addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(b"POST /e HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_response(false);
    assert_eq!(
        interim.status, 100,
        "the client waits for 100 before sending its body"
    );
    c.send(b"hello");
    let r = c.read_response(false);
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "hello");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start(|req, _| Some(Reply::text(200, &req.path)));
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(b"POST /p10 HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nxy");
    batch.extend_from_slice(b"GET /p11 HTTP/1.1\r\nHost: test\r\n\r\n");
    c.send(&batch);
    for i in 0..12 {
        assert_eq!(c.read_response(false).text(), format!("/p{i}"));
    }
}

#[test]
fn websocket_upgrade_becomes_a_two_way_tunnel() {
    let b = Backend::start(|req, s| {
        assert_eq!(req.header("upgrade"), Some("websocket"));
        assert!(
            req.header("connection")
                .unwrap()
                .to_ascii_lowercase()
                .contains("upgrade")
        );
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        // Echo raw bytes until the client closes.
        let mut buf = [0u8; 1024];
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&buf[..n]);
                    s.write_all(&out).unwrap();
                }
            }
        }
    });
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    for msg in [&b"frame-1"[..], b"frame-2", &[0u8, 1, 2, 255]] {
        c.stream.write_all(msg).unwrap();
        let mut want = b"echo:".to_vec();
        want.extend_from_slice(msg);
        let mut got = vec![0u8; want.len()];
        c.stream.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn forwarding_headers_are_set_and_client_copies_replaced() {
    let b = Backend::start(|_, _| Some(Reply::text(200, "ok")));
    let t = Tether::start(&config_for(&[b.addr], ""));
    let r = raw_exchange(
        t.addr,
        b"GET /h HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: keep-alive, X-Secret\r\n\
          X-Secret: hop\r\nKeep-Alive: timeout=5\r\nX-App: kept\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = &b.received()[0];
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header_count("x-forwarded-for"), 1);
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(got.header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(got.header("host"), Some("shop.example"));
    assert_eq!(got.header("forwarded"), None);
    assert_eq!(got.header("x-real-ip"), None);
    assert_eq!(
        got.header("x-secret"),
        None,
        "named in Connection: hop-by-hop"
    );
    assert_eq!(got.header("keep-alive"), None);
    assert_eq!(got.header("connection"), None);
    assert_eq!(got.header("x-app"), Some("kept"));
}

#[test]
fn a_trusted_listener_extends_the_forwarding_chain() {
    let b = Backend::start(|_, _| Some(Reply::text(200, "ok")));
    let cfg = config_for(&[b.addr], "").replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\ntrust_forwarded = true",
    );
    let t = Tether::start(&cfg);
    raw_exchange(
        t.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    let got = &b.received()[0];
    assert_eq!(got.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn identity_headers_from_clients_never_reach_a_backend_even_through_a_trusted_listener() {
    let b = Backend::start(|_, _| Some(Reply::text(200, "ok")));
    let cfg = config_for(&[b.addr], "").replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\ntrust_forwarded = true",
    );
    let t = Tether::start(&cfg);
    let r = raw_exchange(
        t.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Tether-User: admin\r\nx-tether-roles: admin\r\n\
          X-TETHER-TENANT: acme\r\nX-Tether-Identity: eyJhbGciOi.x.y\r\nX-Tetherish: kept\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = &b.received()[0];
    for name in [
        "x-tether-user",
        "x-tether-roles",
        "x-tether-tenant",
        "x-tether-identity",
    ] {
        assert_eq!(got.header(name), None, "{name} was forwarded");
    }
    assert_eq!(
        got.header("x-tetherish"),
        Some("kept"),
        "only the X-Tether- prefix is reserved"
    );
}

#[test]
fn head_204_and_304_carry_no_body_and_keep_the_connection() {
    let b = Backend::start(|req, _| {
        Some(Reply::raw(match req.path.as_str() {
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(),
            // HEAD: Content-Length describes the body a GET would get; none follows.
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(),
        }))
    });
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(b"HEAD /x HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("1234")));
    assert_eq!(c.get("/204").status, 204);
    assert_eq!(c.get("/304").status, 304);
    c.send(b"HEAD /y HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(c.read_response(true).status, 200);
    assert_eq!(b.request_count(), 4);
}

#[test]
fn http10_clients_are_served_and_closed_unless_they_ask_for_keep_alive() {
    let b = Backend::start(|req, _| Some(Reply::text(200, &format!("v1.{}", req.version))));
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.text(), "v1.0");
    assert!(c.closed(), "HTTP/1.0 without keep-alive is closed");

    let mut c = Client::connect(t.addr);
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
}

#[test]
fn close_delimited_responses_are_forwarded_whole() {
    let b = Backend::start(|_, _| {
        Some(
            Reply::raw(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
            )
            .closing(),
        )
    });
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.text(), "until the end");
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn access_log_lines_carry_backend_status_and_reason() {
    let b = Backend::named("a");
    let t = Tether::start(&config_for(&[b.addr], ""));
    get(t.addr, "/logged?q=1");
    raw_exchange(
        t.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
    );
    let lines = t.access_lines(2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = json_fields(&lines[0]);
    assert_eq!(ok["status"], "200");
    assert_eq!(ok["target"], "/logged?q=1");
    assert_eq!(ok["backend"], b.addr.to_string());
    assert_eq!(ok["termination"], "completed");
    let bad = json_fields(&lines[1]);
    assert_eq!(bad["status"], "400");
    assert_eq!(bad["termination"], "bad_request");
    assert!(!bad["reason"].is_empty());
    assert_eq!(bad["backend"], "null");
}

#[test]
fn batching_under_load_serves_every_request_and_an_idle_worker_still_sleeps() {
    // A target of 2 makes two requests in flight at the backend count as load, and a 1 ms window (the
    // longest allowed) makes every busy turn gather: requests readied while the worker polls must all be
    // served.
    let b = Backend::named("a");
    let t = Tether::start(&config_for(
        &[b.addr],
        "[workers]\ncount = 1\nbatch_window = \"1ms\"\nbatch_target = 2",
    ));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let served = std::sync::Arc::clone(&served);
            let addr = t.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..300 {
                    assert_eq!(c.get("/").text(), "a");
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 2400);
    wait_until("the idle worker to sleep", || t.worker_state() == Some('S'));
}

#[test]
fn busy_polling_serves_requests_and_an_idle_worker_still_goes_to_sleep() {
    let b = Backend::named("a");
    let t = Tether::start(&config_for(&[b.addr], "[workers]\nbusy_poll = \"1ms\""));
    let mut c = Client::connect(t.addr);
    for _ in 0..200 {
        assert_eq!(c.get("/").text(), "a");
    }
    drop(c);
    // The spin is bounded: with no traffic the worker blocks in epoll_wait (state S), it does not spin.
    wait_until("the idle worker to sleep", || t.worker_state() == Some('S'));
}

#[test]
fn a_client_that_asked_to_close_is_closed_at_once_and_one_that_sent_more_is_drained() {
    let a = Backend::named("a");
    let t = Tether::start(&config_for(&[a.addr], ""));
    // Asked to close, nothing more sent: answered, then closed outright (no half-close waiting for the
    // client's end). Bytes the client writes afterwards meet a closed socket: the kernel resets, and a
    // later write fails (looked for a few times, not timed).
    let mut s = std::net::TcpStream::connect(t.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let mut refused = None;
    for _ in 0..50 {
        if let Err(e) = s.write_all(b"x") {
            refused = Some(e.kind());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        matches!(
            refused,
            Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
        ),
        "the server's socket is gone: {refused:?}"
    );

    // Bytes sent past the request (a pipelined one behind `Connection: close`): the answer is followed
    // by a half-close and tether drains what comes, so nothing resets the answer away.
    let mut s = std::net::TcpStream::connect(t.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // Still draining: writes keep being taken.
    for _ in 0..5 {
        s.write_all(b"more").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
