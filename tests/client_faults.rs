//! End-to-end: each failure is blamed on whoever caused it, answered as documented and logged truthfully.
//! A client that stalls mid-body is timed out as the client's (408), never against the backend's health;
//! a backend that really is slow still gets 504; a broken response body that arrived with its head gets a
//! 502 instead of an empty reply; refusals, queue timeouts and tunnel timeouts carry their log fields.

mod common;

use common::*;
use std::io::Read;
use std::time::Duration;

/// Reads one response, or `None` when tether closed the connection without a complete one.
fn response_or_close(c: &mut Client) -> Option<Response> {
    c.try_read_response(false)
}

/// The parsed access-log lines once at least `n` arrived.
fn log_fields(t: &Tether, n: usize) -> Vec<std::collections::HashMap<String, String>> {
    let lines = t.access_lines(n);
    assert!(lines.len() >= n, "expected {n} access-log lines: {lines:?}");
    lines.iter().map(|l| json_fields(l)).collect()
}

#[test]
fn a_stalled_client_cannot_take_a_backend_out_of_service() {
    let b = Backend::named("b");
    // Passive health takes the backend down after 2 failures in a row; the client and server timeouts are
    // equal, so whichever side the stall is blamed on, its timer fires at the same moment.
    let t = Tether::start(&config_with(
        &[b.addr],
        "",
        "[clusters.app.passive_health]\nconsecutive_failures = 2\ncool_down = \"1h\"\n\n\
         [timeouts]\nclient = \"300ms\"\nserver = \"300ms\"\n",
    ));
    const STALLED: usize = 5;
    let stalls: Vec<_> = (0..STALLED)
        .map(|i| {
            let addr = t.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                // Promises 100 body bytes and sends 10 (or starts a chunked body), then says no more.
                let framing = if i % 2 == 0 {
                    "Content-Length: 100\r\n\r\n0123456789"
                } else {
                    "Transfer-Encoding: chunked\r\n\r\n64\r\n0123456789"
                };
                c.send(format!("POST /upload/{i} HTTP/1.1\r\nHost: t\r\n{framing}").as_bytes());
                let r = response_or_close(&mut c);
                (r.map(|r| r.status), c.closed())
            })
        })
        .collect();
    for h in stalls {
        let (status, closed) = h.join().unwrap();
        assert!(
            status.is_none() || status == Some(408),
            "a stalled client gets 408 or a closed connection, got {status:?}"
        );
        assert!(closed, "the stalled client's connection is closed");
    }
    let fields = log_fields(&t, STALLED);
    for f in &fields {
        assert_eq!(
            f["termination"], "client_timeout",
            "the stall is the client's: {f:?}"
        );
    }

    // The backend is still in service: a normal request reaches it.
    let r = get(t.addr, "/after");
    assert_eq!(
        r.status,
        200,
        "the backend was not taken down: {}",
        r.text()
    );
    assert_eq!(r.text(), "b");
    let fields = log_fields(&t, STALLED + 1);
    assert_eq!(
        fields
            .iter()
            .filter(|f| f["termination"] == "upstream_timeout")
            .count(),
        0,
        "no stall was blamed on the backend: {fields:?}"
    );
    assert_eq!(
        t.count_log("is DOWN"),
        0,
        "no backend went down: {:?}",
        t.log_lines()
    );
    // The backend saw at most the partial uploads, and completed only the one real request.
    let received = b.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/after");
}

#[test]
fn a_backend_that_really_is_slow_still_gets_504_and_no_retry_count() {
    let b = Backend::start(|_, _| {
        std::thread::sleep(Duration::from_millis(1500));
        None
    });
    let t = Tether::start(&config_for(&[b.addr], "[timeouts]\nserver = \"300ms\""));
    let r = get(t.addr, "/slow");
    assert_eq!(r.status, 504);
    let f = &log_fields(&t, 1)[0];
    assert_eq!(f["termination"], "upstream_timeout");
    assert_eq!(f["status"], "504");
    assert_eq!(f["retries"], "0", "one attempt, no retry: {f:?}");
    assert_eq!(b.request_count(), 1, "not replayed");
}

#[test]
fn a_bad_chunked_body_that_arrives_with_its_head_gets_502() {
    let b = Backend::start(|_, _| {
        Some(Reply::raw(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        ))
    });
    let t = Tether::start(&config_for(&[b.addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(b"GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = response_or_close(&mut c).expect("an answer, not an empty reply");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(c.closed());
    let f = &log_fields(&t, 1)[0];
    assert_eq!(f["termination"], "bad_response");
    assert_eq!(f["status"], "502");
}

#[test]
fn a_417_is_logged_with_its_host_and_bytes_in() {
    let b = Backend::named("b");
    let t = Tether::start(&config_for(&[b.addr], ""));
    let head = b"GET / HTTP/1.1\r\nHost: example.test\r\nExpect: something-else\r\n\r\n";
    let r = raw_exchange(t.addr, head);
    assert_eq!(r.status, 417);
    let f = &log_fields(&t, 1)[0];
    assert_eq!(f["status"], "417");
    assert_eq!(f["termination"], "bad_request");
    assert_eq!(f["host"], "example.test");
    assert_eq!(f["bytes_in"], head.len().to_string());
    assert_eq!(b.request_count(), 0);
}

#[test]
fn a_queue_timeout_is_logged_with_its_wait_and_leaks_no_slot() {
    let gate = Gate::default();
    let g = gate.clone();
    let b = Backend::start(move |req, _| {
        if req.path == "/block" {
            g.wait();
        }
        Some(Reply::text(200, &req.path))
    });
    let t = Tether::start(&config_with(
        &[b.addr],
        "max_inflight = 1\nqueue_timeout = \"300ms\"\nretries = 0",
        "",
    ));
    let addr = t.addr;
    let blocker = std::thread::spawn(move || get(addr, "/block"));
    wait_until("the blocker to hold the slot", || b.request_count() == 1);
    let r = get(t.addr, "/late");
    assert_eq!(r.status, 503);
    let f = log_fields(&t, 1)
        .into_iter()
        .find(|f| f["termination"] == "queue_timeout")
        .expect("a queue_timeout line");
    let queued: u64 = f["queue_us"]
        .parse()
        .unwrap_or_else(|_| panic!("queue_us is a number: {f:?}"));
    assert!(queued > 0, "the wait is logged: {f:?}");
    gate.open();
    assert_eq!(blocker.join().unwrap().status, 200);
    // The timed-out request gave its place back; the slot is free again.
    let r = get(t.addr, "/third");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "/third");
    assert_eq!(
        b.request_count(),
        2,
        "the timed-out request never reached it"
    );
}

#[test]
fn a_tunnel_idle_timeout_is_logged_as_tunnel_timeout() {
    let b = Backend::start(|_, s| {
        use std::io::Write;
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        // Silent until tether closes the tunnel.
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        None
    });
    let t = Tether::start(&config_for(&[b.addr], "[timeouts]\ntunnel = \"300ms\""));
    let mut c = Client::connect(t.addr);
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 101);
    assert!(c.closed(), "the idle tunnel is closed");
    let f = &log_fields(&t, 1)[0];
    assert_eq!(f["termination"], "tunnel_timeout", "{f:?}");
    assert_eq!(f["status"], "101");
}
