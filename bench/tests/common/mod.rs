//! Shared test servers and helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    /// Requests that carried no Cookie header.
    pub without_cookie: AtomicU64,
    /// Requests whose cookie is one this server issued.
    pub valid_cookie: AtomicU64,
    /// Requests with a cookie this server never issued.
    pub bad_cookie: AtomicU64,
    pub issued: AtomicU64,
}

pub struct Server {
    pub addr: SocketAddr,
    pub c: Arc<Counters>,
}

/// Keep-alive HTTP/1.1 server: answers every request with 200 "ok". With
/// `sessions`, a request without a cookie gets `Set-Cookie: sid=u<N>`.
pub fn start_server(sessions: bool) -> Server {
    start_server_with(sessions, None)
}

/// Like [`start_server`], over TLS when `tls` is given.
pub fn start_server_with(sessions: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let c = Arc::new(Counters::default());
    let c2 = c.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            c2.connections.fetch_add(1, Ordering::Relaxed);
            let c = c2.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                match tls {
                    None => {
                        let _ = serve(stream, &c, sessions);
                    }
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        let _ = serve(rustls::StreamOwned::new(conn, stream), &c, sessions);
                    }
                }
            });
        }
    });
    Server { addr, c }
}

pub fn serve<S: Read + Write>(stream: S, c: &Counters, sessions: bool) -> std::io::Result<()> {
    let mut r = BufReader::new(stream);
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
        r.get_mut().write_all(resp.as_bytes())?;
        r.get_mut().flush()?;
        if close {
            return Ok(());
        }
    }
}

pub fn bench(args: &[&str]) -> serde_json::Value {
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

pub fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The client's count may trail the server's by the requests still in flight
/// when the run ended (at most connections x pipeline).
pub fn assert_counts_match(j: &serde_json::Value, server: &Server, in_flight: u64) {
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
