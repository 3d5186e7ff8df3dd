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
