//! End-to-end abuse tests: slow clients are cut by the head timeout while others are served, one client
//! address can be capped, and tether holds 10,000 idle keep-alive connections in little memory.
//!
//! These hold thousands of sockets: each raises this process's open-file limit to the hard limit first
//! (tether raises its own at start-up and logs it).

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A raw non-blocking client that trickles a head that never ends.
struct Slow {
    stream: TcpStream,
    received: Vec<u8>,
    eof: bool,
    error: Option<ErrorKind>,
}

impl Slow {
    fn pump(&mut self) {
        let mut b = [0u8; 512];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.received.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.error = Some(e.kind());
                    self.eof = true;
                    return;
                }
            }
        }
    }
}

#[test]
fn two_thousand_slow_clients_get_408_while_normal_clients_are_served() {
    const SLOW: usize = 2_000;
    raise_fd_limit(12_500); // both tests of this file may run at once
    let backend = Backend::named("ok");
    let t = Tether::start(&config_for(
        &[backend.addr],
        "[timeouts]\nclient_head = \"1s\"",
    ));
    t.wait_log("open file limit:");

    // A head that never ends, one byte a second per connection.
    let head: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    // Each client sends its first byte as soon as it is connected: a connection that has sent nothing
    // when the head timeout fires is closed without an answer (an idle pre-connect, as browsers open),
    // and connecting two thousand can take over a second when the accept queue overflows once.
    let mut slow: Vec<Slow> = (0..SLOW)
        .map(|_| {
            let mut stream = TcpStream::connect(t.addr).unwrap();
            stream.write_all(&head[..1]).unwrap();
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                received: Vec::new(),
                eof: false,
                error: None,
            }
        })
        .collect();

    let mut normal_ok = 0;
    for round in 1..head.len() {
        for s in slow.iter_mut().filter(|s| !s.eof) {
            // Read first: a byte written after tether answered 408 and closed draws a reset, and Linux
            // drops a socket's unread data when a reset arrives — the 408 would be lost.
            s.pump();
            if !s.eof {
                let _ = s.stream.write(&head[round..round + 1]);
            }
        }
        if round == 1 {
            // Every slow client has started its head: normal clients are served all the same.
            for i in 0..20 {
                let r = get(t.addr, &format!("/normal/{i}"));
                assert_eq!(
                    r.status, 200,
                    "normal request {i} while {SLOW} slow clients wait"
                );
                normal_ok += 1;
            }
        }
        for s in slow.iter_mut().filter(|s| !s.eof) {
            s.pump();
        }
        if slow.iter().all(|s| s.eof) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(normal_ok, 20);
    let closed = slow.iter().filter(|s| s.eof).count();
    assert_eq!(closed, SLOW, "every slow client was closed");
    let answered_408 = slow
        .iter()
        .filter(|s| s.received.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"))
        .count();
    let other: Vec<String> = slow
        .iter()
        .filter(|s| !s.received.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"))
        .take(3)
        .map(|s| format!("{:?} {:?}", String::from_utf8_lossy(&s.received), s.error))
        .collect();
    assert_eq!(
        answered_408,
        SLOW,
        "every slow client was told 408; others got: {other:?}; log tail: {:?}",
        t.log_lines().iter().rev().take(6).collect::<Vec<_>>()
    );
    assert_eq!(
        backend.request_count(),
        20,
        "only the normal requests reached the backend"
    );
    // Still serving after the storm.
    assert_eq!(get(t.addr, "/after").status, 200);
}

/// Connects from a given loopback source address.
fn connect_from(source: &str, to: SocketAddr) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&src.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    Client::from_stream(socket.into())
}

#[test]
fn a_client_address_over_its_connection_limit_is_closed_at_accept() {
    let backend = Backend::named("ok");
    let t = Tether::start(&config_for(
        &[backend.addr],
        "[limits]\nmax_connections_per_client = 3",
    ));
    let mut held: Vec<Client> = (0..3).map(|_| connect_from("127.0.0.1", t.addr)).collect();
    for c in &mut held {
        assert_eq!(c.get("/").status, 200);
    }
    // The fourth from the same address is closed without an answer, request or not.
    for _ in 0..3 {
        let mut extra = connect_from("127.0.0.1", t.addr);
        let _ = extra
            .stream
            .write_all(b"GET /over HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(extra.try_read_response(false).is_none(), "no answer");
        assert!(extra.closed());
    }
    t.wait_log("the per-client limit; new connection closed (3 so far)");
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", t.addr);
    assert_eq!(other.get("/other").status, 200);
    // Once one of the three closes, the address may connect again.
    drop(held.pop());
    assert!(eventually(|| {
        let mut c = connect_from("127.0.0.1", t.addr);
        c.send(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n");
        c.try_read_response(false).is_some_and(|r| r.status == 200)
    }));
    // The held ones were never disturbed.
    for c in &mut held {
        assert_eq!(c.get("/still").status, 200);
    }
    assert_eq!(
        backend
            .received()
            .iter()
            .filter(|r| r.path == "/over")
            .count(),
        0
    );
}

#[test]
fn ten_thousand_idle_keep_alive_connections_are_held_in_little_memory() {
    const CONNECTIONS: usize = 10_000;
    const THREADS: usize = 8;
    raise_fd_limit(12_500); // both tests of this file may run at once
    let backend = Backend::named("ok");
    let t = Tether::start(&config_for(
        &[backend.addr],
        "[timeouts]\nclient_idle = \"10m\"\nclient_head = \"10m\"\n[workers]\nmax_connections = 12000",
    ));
    let limit_line = t.wait_log("open file limit:");
    eprintln!("tether: {limit_line}");
    // Warm up: the worker's pools and the backend connection exist before the baseline.
    for _ in 0..THREADS * 4 {
        assert_eq!(get(t.addr, "/warm").status, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    let baseline = t.rss_kib();

    let addr = t.addr;
    let per_thread = CONNECTIONS / THREADS;
    let mut groups: Vec<Vec<Client>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|_| {
                            let mut c = Client::connect(addr);
                            let r = c.get("/first");
                            assert_eq!(r.status, 200);
                            c
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let held: usize = groups.iter().map(Vec::len).sum();
    assert_eq!(held, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(200));
    let loaded = t.rss_kib();
    let per_connection = (loaded.saturating_sub(baseline) * 1024) as f64 / CONNECTIONS as f64;
    eprintln!(
        "memory per idle connection: {per_connection:.0} bytes (RSS {baseline} KiB -> {loaded} KiB with {CONNECTIONS} idle keep-alive connections)"
    );
    assert!(
        per_connection <= 16.0 * 1024.0,
        "{per_connection:.0} bytes per idle connection (limit 16 KiB)"
    );

    // Every one of them is still open and is answered again.
    let answered: usize = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter_mut()
            .map(|group| {
                s.spawn(move || {
                    group
                        .iter_mut()
                        .map(|c| c.get("/second").status)
                        .filter(|&status| status == 200)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(answered, CONNECTIONS);
    assert_eq!(backend.request_count(), THREADS * 4 + 2 * CONNECTIONS);
}
