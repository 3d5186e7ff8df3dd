//! Runs the built tether-bench binary against tiny in-process HTTP/1.1 servers
//! and checks what it reports against what the server saw. Assertions are on
//! counts and outcomes only, never on timing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
    /// Requests that carried no Cookie header.
    without_cookie: AtomicU64,
    /// Requests whose cookie is one this server issued.
    valid_cookie: AtomicU64,
    /// Requests with a cookie this server never issued.
    bad_cookie: AtomicU64,
    issued: AtomicU64,
}

struct Server {
    addr: SocketAddr,
    c: Arc<Counters>,
}

/// Keep-alive HTTP/1.1 server: answers every request with 200 "ok". With
/// `sessions`, a request without a cookie gets `Set-Cookie: sid=u<N>`.
fn start_server(sessions: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let c = Arc::new(Counters::default());
    let c2 = c.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            c2.connections.fetch_add(1, Ordering::Relaxed);
            let c = c2.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &c, sessions);
            });
        }
    });
    Server { addr, c }
}

fn serve(stream: TcpStream, c: &Counters, sessions: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut cookie: Option<String> = None;
        let mut close = false;
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "cookie" => cookie = Some(v.to_string()),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "content-length" => len = v.parse().unwrap(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let mut set = String::new();
        match cookie {
            None => {
                c.without_cookie.fetch_add(1, Ordering::Relaxed);
                if sessions {
                    let n = c.issued.fetch_add(1, Ordering::Relaxed);
                    set = format!("Set-Cookie: sid=u{n}; Path=/; HttpOnly\r\n");
                }
            }
            Some(v) => {
                let issued = c.issued.load(Ordering::Relaxed);
                let ok = v
                    .strip_prefix("sid=u")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n < issued);
                if ok {
                    c.valid_cookie.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.bad_cookie.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{set}{}\r\nok",
            if close { "Connection: close\r\n" } else { "" }
        );
        w.write_all(resp.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .args(["--json", "--quiet", "--warmup", "0", "-d", "1s"])
        .args(args)
        .output()
        .expect("run tether-bench");
    assert!(
        out.status.success(),
        "tether-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The client's count may trail the server's by the requests still in flight
/// when the run ended (at most connections x pipeline).
fn assert_counts_match(j: &serde_json::Value, server: &Server, in_flight: u64) {
    let client = n(&j["requests"]);
    let seen = server.c.requests.load(Ordering::Relaxed);
    assert!(client > 0, "no requests completed: {j}");
    assert!(
        client <= seen && seen - client <= in_flight,
        "client counted {client}, server saw {seen}"
    );
    assert_eq!(n(&j["errors"]["total"]), 0, "errors: {j}");
    assert_eq!(n(&j["status"]["200"]), client);
    assert!(n(&j["bytes"]) >= client * 40, "bytes: {j}");
}

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
