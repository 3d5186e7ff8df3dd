//! End-to-end: timeouts and limits end with the documented answer.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

fn free_port_addr() -> std::net::SocketAddr {
    // Bind and drop: nothing listens there afterwards.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn a_client_that_never_finishes_its_head_gets_408() {
    let b = Backend::named("b");
    let t = Tether::start(&config_for(
        &[b.addr],
        "[timeouts]\nclient_head = \"300ms\"",
    ));
    let mut c = Client::connect(t.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    let r = c.read_response(false);
    assert_eq!(r.status, 408);
    assert!(c.closed());
    let f = json_fields(&t.access_lines(1)[0]);
    assert_eq!(f["termination"], "head_timeout");
    assert_eq!(b.request_count(), 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_quietly() {
    let b = Backend::named("b");
    let t = Tether::start(&config_for(
        &[b.addr],
        "[timeouts]\nclient_idle = \"300ms\"",
    ));
    let mut c = Client::connect(t.addr);
    assert_eq!(c.get("/").status, 200);
    // No bytes, just the close.
    assert!(c.closed());
    assert_eq!(t.access_lines(1).len(), 1, "an idle close is not a request");
}

#[test]
fn a_backend_that_refuses_connections_gives_502() {
    let dead = free_port_addr();
    let t = Tether::start(&config_for(&[dead], ""));
    let r = get(t.addr, "/");
    assert_eq!(r.status, 502);
    assert!(r.text().starts_with("502 Bad Gateway: "));
    let f = json_fields(&t.access_lines(1)[0]);
    assert_eq!(f["termination"], "connect_failed");
    assert_eq!(f["backend"], dead.to_string());
}

#[test]
fn a_backend_that_does_not_answer_in_time_gives_504() {
    let b = Backend::start(|_, _| {
        std::thread::sleep(Duration::from_secs(3));
        Some(Reply::text(200, "late"))
    });
    let t = Tether::start(&config_for(&[b.addr], "[timeouts]\nserver = \"300ms\""));
    let r = get(t.addr, "/");
    assert_eq!(r.status, 504);
    let f = json_fields(&t.access_lines(1)[0]);
    assert_eq!(f["termination"], "upstream_timeout");
    assert_eq!(
        b.request_count(),
        1,
        "not retried: the backend may be working on it"
    );
}

#[test]
fn a_failed_connect_is_retried_on_another_backend() {
    let dead = free_port_addr();
    let live = Backend::named("live");
    let t = Tether::start(&config_for(&[dead, live.addr], ""));
    for _ in 0..6 {
        let r = get(t.addr, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "live");
    }
    let lines = t.access_lines(6);
    assert!(
        lines.iter().any(|l| json_fields(l)["retries"] == "1"),
        "some requests were retried: {lines:?}"
    );
}

#[test]
fn at_the_connection_limit_new_connections_wait_in_the_backlog() {
    let b = Backend::named("b");
    let t = Tether::start(&config_for(&[b.addr], "[workers]\nmax_connections = 2"));
    let mut c1 = Client::connect(t.addr);
    let mut c2 = Client::connect(t.addr);
    assert_eq!(c1.get("/").status, 200);
    assert_eq!(c2.get("/").status, 200);
    // The third handshake completes in the kernel, but tether does not accept it yet.
    let mut c3 = Client::connect(t.addr);
    c3.stream
        .write_all(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.request_count(),
        2,
        "third request not served while at the limit"
    );
    // One slot frees up: the waiting connection is accepted and answered, not dropped.
    drop(c1);
    let r = c3.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(b.request_count(), 3);
    assert_eq!(c2.get("/").status, 200);
}
