//! End-to-end: `tether demo` and its built-in backends — every endpoint the banner advertises answers,
//! keep-alive holds over hundreds of requests, a slow answer holds up no one else, and the backends serve
//! any number of connections without starting a thread for each.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

/// A running `tether demo` (one worker) on free ports, and the addresses its banner names.
struct Demo {
    child: Child,
    balancer: SocketAddr,
    backends: Vec<SocketAddr>,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["demo", "--listen", "127.0.0.1:0", "--workers", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tether demo");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut balancer, mut backends) = (None, Vec::new());
        let mut line = String::new();
        while balancer.is_none() && out.read_line(&mut line).unwrap() > 0 {
            if let Some(rest) = line.split("three backends on ").nth(1) {
                backends = rest
                    .trim()
                    .split(", ")
                    .map(|a| a.parse().expect("backend address in the banner"))
                    .collect();
            }
            if let Some(rest) = line.split("balancer on http://").nth(1) {
                balancer = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            line.clear();
        }
        // The access log goes to stdout: keep draining it so tether never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        assert_eq!(backends.len(), 3, "banner names three backends");
        Demo {
            child,
            balancer: balancer.expect("banner names the balancer address"),
            backends,
        }
    }

    /// Threads of the tether process (`Threads:` in /proc/PID/status).
    fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Threads: in /proc/PID/status")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The backend number a `/` answer names, checked against its `X-Backend` header and the exact body.
fn hello_from(r: &Response, path: &str, backends: &[SocketAddr]) -> usize {
    assert_eq!(r.status, 200, "{}", r.text());
    let n: usize = r.header("x-backend").unwrap().parse().unwrap();
    assert_eq!(
        r.text(),
        format!("hello from backend {n} ({}): GET {path}\n", backends[n - 1])
    );
    n
}

#[test]
fn one_keep_alive_connection_gets_hundreds_of_answers_from_all_three_backends() {
    let demo = Demo::start();
    let mut c = Client::connect(demo.balancer);
    let mut per_backend = [0usize; 3];
    for i in 0..300 {
        let path = format!("/item/{i}?q={i}");
        let r = c.get(&path);
        per_backend[hello_from(&r, &path, &demo.backends) - 1] += 1;
    }
    // Round robin over three backends, one worker: exactly a third each.
    assert_eq!(per_backend, [100, 100, 100]);

    // The other endpoints of the banner, on the same connection.
    let r = c.get("/headers");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /headers\n"), "{}", r.text());
    assert!(
        r.text().contains("X-Forwarded-For: 127.0.0.1"),
        "{}",
        r.text()
    );
    for body in ["hello tether", "", "x"] {
        c.send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!((r.status, r.text().as_str()), (200, body));
    }
    let r = c.get("/slow?ms=50");
    let n: usize = r.header("x-backend").unwrap().parse().unwrap();
    assert_eq!(
        r.text(),
        format!(
            "backend {n} ({}) answered after 50 ms\n",
            demo.backends[n - 1]
        )
    );
    // Bad input gets tether's 400.
    let r = raw_exchange(demo.balancer, b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n");
    assert_eq!(r.status, 400);
}

#[test]
fn connections_do_not_add_threads() {
    let demo = Demo::start();
    // Warm up: every backend has served a request.
    let mut c = Client::connect(demo.balancer);
    for _ in 0..6 {
        assert_eq!(c.get("/").status, 200);
    }
    let before = demo.threads();

    // 50 client connections with a slow request each in flight at once: tether opens about as many
    // backend connections (and pools them afterwards).
    let mut clients: Vec<Client> = (0..50).map(|_| Client::connect(demo.balancer)).collect();
    for c in &mut clients {
        c.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: test\r\n\r\n");
    }
    for c in &mut clients {
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert!(r.text().contains("answered after 300 ms"), "{}", r.text());
    }
    for c in &mut clients {
        for _ in 0..3 {
            assert_eq!(c.get("/").status, 200);
        }
    }
    assert_eq!(
        demo.threads(),
        before,
        "threads before and after 50 connections"
    );

    // Straight at a backend, too: 50 connections of its own, all open at once.
    let mut direct: Vec<Client> = (0..50).map(|_| Client::connect(demo.backends[0])).collect();
    for c in &mut direct {
        assert_eq!(c.get("/").header("x-backend"), Some("1"));
    }
    assert_eq!(
        demo.threads(),
        before,
        "threads with 50 direct connections open"
    );
}

#[test]
fn a_slow_answer_holds_up_no_other_connection() {
    let demo = Demo::start();
    // A minute-long answer pending at every backend (tether's own backend timeout, 30 s, is longer than
    // any wait below)...
    let slow: Vec<Client> = demo
        .backends
        .iter()
        .map(|&b| {
            let mut c = Client::connect(b);
            c.send(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: test\r\n\r\n");
            c
        })
        .collect();
    let mut slow_via_tether = Client::connect(demo.balancer);
    slow_via_tether.send(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: test\r\n\r\n");
    // ...and other connections are answered meanwhile (a client gives up after PATIENCE, 20 s).
    let mut c = Client::connect(demo.balancer);
    for _ in 0..30 {
        assert_eq!(c.get("/").status, 200);
    }
    for &b in &demo.backends {
        assert_eq!(get(b, "/").status, 200);
    }
    // A short slow answer on another connection arrives while the long ones still wait.
    let r = get(demo.backends[0], "/slow?ms=10");
    assert!(r.text().contains("answered after 10 ms"), "{}", r.text());
    drop((slow, slow_via_tether));
}

#[test]
fn a_backend_handles_partial_reads_pipelining_large_bodies_and_close() {
    let demo = Demo::start();
    let backend = demo.backends[1];

    // A request trickling in a byte at a time, then a second one on the same connection.
    let mut c = Client::connect(backend);
    for b in b"GET /one HTTP/1.1\r\nHost: test\r\n\r\n" {
        c.send(&[*b]);
    }
    let r = c.read_response(false);
    assert_eq!(
        r.text(),
        format!("hello from backend 2 ({backend}): GET /one\n")
    );
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(c.get("/two").status, 200);

    // Three requests in one write, the middle one slow: answered in order.
    c.send(
        b"GET /a HTTP/1.1\r\nHost: test\r\n\r\nGET /slow?ms=100 HTTP/1.1\r\nHost: test\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nthird",
    );
    assert!(c.read_response(false).text().ends_with("GET /a\n"));
    assert!(
        c.read_response(false)
            .text()
            .ends_with("answered after 100 ms\n")
    );
    assert_eq!(c.read_response(false).text(), "third");

    // An echo far larger than the socket buffers, written by the test while it reads the answer: the
    // backend's reads and writes both stop at WouldBlock part way and resume.
    let body: Vec<u8> = (0..4 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let writer = {
        let mut s = c.stream.try_clone().unwrap();
        let body = body.clone();
        std::thread::spawn(move || {
            s.write_all(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            s.write_all(&body).unwrap();
        })
    };
    let r = c.read_response(false);
    writer.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echoed {} bytes", r.body.len());

    // Connection: close and HTTP/1.0 are answered, then the backend closes.
    for request in [
        &b"GET /bye HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"[..],
        &b"GET /old HTTP/1.0\r\n\r\n"[..],
    ] {
        let mut c = Client::connect(backend);
        c.send(request);
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed());
    }
    // Garbage gets 400 and a close.
    let mut raw = TcpStream::connect(backend).unwrap();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    raw.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}
