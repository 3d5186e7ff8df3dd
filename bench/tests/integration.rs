//! Runs the built tether-bench binary against tiny in-process HTTP/1.1 servers
//! and checks what it reports against what the server saw. Assertions are on
//! counts and outcomes only, never on timing.

mod common;

use std::net::TcpListener;
use std::sync::atomic::Ordering;

use common::{assert_counts_match, bench, n, start_server};

#[test]
fn closed_loop_keep_alive_counts_match_server() {
    let s = start_server(false);
    let url = format!("http://{}/", s.addr);
    let j = bench(&["-t", "2", "-c", "4", &url]);
    assert_eq!(j["mode"], "closed");
    assert_counts_match(&j, &s, 4);
    assert_eq!(n(&j["connections_opened"]), 4);
    assert_eq!(s.c.connections.load(Ordering::Relaxed), 4);
    assert!(j["latency_us"]["p50"].as_u64().unwrap() > 0);
}

#[test]
fn pipelined_with_body() {
    let s = start_server(false);
    let url = format!("http://{}/upload", s.addr);
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "2",
        "--pipeline",
        "8",
        "-m",
        "POST",
        "--body-size",
        "100",
        &url,
    ]);
    assert_eq!(n(&j["pipeline"]), 8);
    assert_counts_match(&j, &s, 16);
}

#[test]
fn open_loop_sends_at_the_rate() {
    let s = start_server(false);
    let url = format!("http://{}/", s.addr);
    let j = bench(&["-t", "2", "-c", "4", "-R", "200", &url]);
    assert_eq!(j["mode"], "open");
    assert_counts_match(&j, &s, 4);
    // 200/s for 1 s: the schedule fixes the count, whatever the timing.
    let r = n(&j["requests"]);
    assert!((190..=201).contains(&r), "open loop sent {r}, want ~200");
}

#[test]
fn new_connection_per_request() {
    let s = start_server(false);
    let url = format!("http://{}/", s.addr);
    let j = bench(&["-t", "1", "-c", "2", "--new-conn", &url]);
    assert_counts_match(&j, &s, 2);
    let conns = s.c.connections.load(Ordering::Relaxed);
    // One connection per request (plus at most the ones cut off at the end).
    let seen = s.c.requests.load(Ordering::Relaxed);
    assert!(
        conns >= seen && conns <= seen + 2,
        "{conns} connections for {seen} requests"
    );
}

#[test]
fn sessions_send_cookies_back() {
    let s = start_server(true);
    let url = format!("http://{}/", s.addr);
    let j = bench(&["-t", "1", "-c", "3", "--sessions", &url]);
    assert_counts_match(&j, &s, 3);
    let without = s.c.without_cookie.load(Ordering::Relaxed);
    let valid = s.c.valid_cookie.load(Ordering::Relaxed);
    // Each of the 3 virtual users asks once without a cookie, then always with it.
    assert_eq!(without, 3);
    assert_eq!(s.c.bad_cookie.load(Ordering::Relaxed), 0);
    assert_eq!(valid + without, s.c.requests.load(Ordering::Relaxed));
    assert!(valid > 0);
}

#[test]
fn sessions_survive_new_connections() {
    let s = start_server(true);
    let url = format!("http://{}/", s.addr);
    let j = bench(&["-t", "1", "-c", "2", "--sessions", "--new-conn", &url]);
    assert_counts_match(&j, &s, 2);
    let conns = s.c.connections.load(Ordering::Relaxed);
    assert!(conns > 2, "expected many connections, got {conns}");
    // The jar belongs to the virtual user, not the connection.
    assert_eq!(s.c.without_cookie.load(Ordering::Relaxed), 2);
    assert_eq!(s.c.bad_cookie.load(Ordering::Relaxed), 0);
}

#[test]
fn without_sessions_no_cookie_is_sent() {
    let s = start_server(true);
    let url = format!("http://{}/", s.addr);
    let j = bench(&["-t", "1", "-c", "2", &url]);
    assert_counts_match(&j, &s, 2);
    assert_eq!(s.c.valid_cookie.load(Ordering::Relaxed), 0);
}

#[test]
fn refused_connections_are_connect_errors() {
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let j = bench(&["-t", "1", "-c", "1", "-d", "0.2s", &url]);
    assert_eq!(n(&j["requests"]), 0);
    assert!(n(&j["errors"]["connect"]) > 0, "{j}");
}

#[test]
fn timeouts_are_counted() {
    // A server that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let url = format!("http://{addr}/");
    let j = bench(&["-t", "1", "-c", "2", "--timeout", "100ms", &url]);
    assert_eq!(n(&j["requests"]), 0);
    assert!(n(&j["errors"]["timeout"]) >= 2, "{j}");
}

/// A server whose responses rotate through a chunked body with a trailer, an
/// interim 103 before a Content-Length body, and (for HEAD) a Content-Length
/// header without body; driven by a scenario mixing GET and HEAD.
#[test]
fn chunked_interim_and_head_responses() {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count2 = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let count = count2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                let mut i = 0u64;
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let head = line.starts_with("HEAD ");
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    let resp: &[u8] = if head {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
                    } else if i.is_multiple_of(2) {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n"
                    } else {
                        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc"
                    };
                    if r.get_mut().write_all(resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let scenario = std::env::temp_dir().join(format!("tether-bench-mix-{}.txt", addr.port()));
    std::fs::write(&scenario, "GET /a weight=2\nHEAD /b\n").unwrap();
    let url = format!("http://{addr}/");
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "2",
        "--scenario",
        scenario.to_str().unwrap(),
        &url,
    ]);
    let _ = std::fs::remove_file(&scenario);
    let client = n(&j["requests"]);
    let seen = count.load(Ordering::Relaxed);
    assert!(
        client > 0 && seen - client <= 2,
        "client {client}, server {seen}"
    );
    assert_eq!(n(&j["errors"]["total"]), 0, "{j}");
    // Both 200 (chunked and HEAD) and 201 (after the 103) were seen; no 103.
    assert!(
        n(&j["status"]["200"]) > 0 && n(&j["status"]["201"]) > 0,
        "{j}"
    );
    assert!(j["status"].get("103").is_none());
}
