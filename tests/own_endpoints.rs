//! End-to-end: tether's own answers and waits, through the test-only endpoints under `/.tether/test/`
//! (on only with `TETHER_TEST_ENDPOINTS=1`): a reply of tether's own keeps the connection, a body a
//! stage waits for arrives whole (limits, 100-continue, split segments), a request parked for another
//! thread is woken (or times out) without holding up the worker, and the metrics count it all.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// tether with the test endpoints on, in front of one backend answering its name.
fn start(b: &Backend) -> Tether {
    Tether::start_with_env(
        &config_for(&[b.addr], ""),
        &["--workers", "1"],
        &[("TETHER_TEST_ENDPOINTS", "1")],
    )
}

/// The parsed access-log lines once at least `n` arrived.
fn log_fields(t: &Tether, n: usize) -> Vec<std::collections::HashMap<String, String>> {
    let lines = t.access_lines(n);
    assert!(lines.len() >= n, "expected {n} access-log lines: {lines:?}");
    lines.iter().map(|l| json_fields(l)).collect()
}

fn echo_head(len: usize, extra: &str) -> String {
    format!("POST /.tether/test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n{extra}\r\n")
}

#[test]
fn echo_answers_and_the_same_connection_is_then_proxied() {
    let b = Backend::named("b");
    let t = start(&b);
    let mut c = Client::connect(t.addr);
    let head = echo_head(5, "");
    c.send(format!("{head}hello").as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_ne!(r.header("connection"), Some("close"), "{:?}", r.headers);
    // Keep-alive after tether's own reply: the next request on the connection goes to the backend.
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b");
    let received = b.received();
    assert_eq!(received.len(), 1, "the echo never reached the backend");
    assert_eq!(received[0].path, "/");
    let fields = log_fields(&t, 2);
    assert_eq!(fields[0]["termination"], "answered");
    assert_eq!(fields[0]["status"], "200");
    assert_eq!(fields[0]["bytes_in"], (head.len() + 5).to_string());
    assert_eq!(fields[1]["termination"], "completed");
}

#[test]
fn echo_refuses_a_body_over_its_limit_and_a_chunked_one() {
    let b = Backend::named("b");
    let t = start(&b);
    let r = raw_exchange(t.addr, echo_head(5000, "").as_bytes());
    assert_eq!(r.status, 413);
    let mut c = Client::connect(t.addr);
    c.send(
        b"POST /.tether/test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(c.read_response(false).status, 411);
    let fields = log_fields(&t, 2);
    let terms: Vec<&str> = fields.iter().map(|f| f["termination"].as_str()).collect();
    assert_eq!(terms, ["body_too_large", "length_required"]);
    assert_eq!(b.request_count(), 0, "nothing reached the backend");
}

#[test]
fn echo_sends_100_continue_before_it_reads_the_body() {
    let b = Backend::named("b");
    let t = start(&b);
    let mut c = Client::connect(t.addr);
    c.send(echo_head(5, "Expect: 100-continue\r\n").as_bytes());
    let interim = c.read_response(false);
    assert_eq!(interim.status, 100, "the go-ahead comes first");
    c.send(b"hello");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(b.request_count(), 0);
}

#[test]
fn a_body_over_the_limit_is_refused_without_a_100_continue() {
    let b = Backend::named("b");
    let t = start(&b);
    let mut c = Client::connect(t.addr);
    c.send(echo_head(5000, "Expect: 100-continue\r\n").as_bytes());
    let r = c.read_response(false);
    assert_eq!(
        r.status, 413,
        "refused at once, no go-ahead for a body it will not take"
    );
    assert!(c.closed());
    assert_eq!(log_fields(&t, 1)[0]["termination"], "body_too_large");
}

#[test]
fn a_request_pipelined_behind_an_echo_is_served() {
    let b = Backend::named("b");
    let t = start(&b);
    let mut c = Client::connect(t.addr);
    // Echo request and the next request in one write: the echo's body must not swallow the next head.
    c.send(
        format!(
            "{}helloGET /behind HTTP/1.1\r\nHost: t\r\n\r\n",
            echo_head(5, "")
        )
        .as_bytes(),
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b");
    let received = b.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/behind");
}

#[test]
fn a_body_sent_in_pieces_is_echoed_whole() {
    let b = Backend::named("b");
    let t = start(&b);
    let body: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut c = Client::connect(t.addr);
    c.send(echo_head(body.len(), "").as_bytes());
    // Separate writes with pauses between them: separate segments, separate reads in tether.
    for piece in body.chunks(700) {
        std::thread::sleep(Duration::from_millis(30));
        c.send(piece);
    }
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    // And the connection still serves the next request.
    assert_eq!(c.get("/next").text(), "b");
}

#[test]
fn a_parked_request_is_woken_by_another_thread() {
    let b = Backend::named("b");
    let t = start(&b);
    let r = get(t.addr, "/.tether/test/wake?ms=50");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "woken\n");
    assert_eq!(log_fields(&t, 1)[0]["termination"], "answered");
    assert_eq!(b.request_count(), 0);
}

#[test]
fn parked_requests_do_not_hold_up_the_worker() {
    let b = Backend::named("b");
    let t = start(&b);
    const PARKED: usize = 20;
    let answered = Arc::new(AtomicUsize::new(0));
    let (sent_tx, sent_rx) = mpsc::channel();
    let parked: Vec<_> = (0..PARKED)
        .map(|_| {
            let (addr, answered, sent) = (t.addr, answered.clone(), sent_tx.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                // Woken after 1 s, well within the 2 s deadline.
                c.send(b"GET /.tether/test/wake?ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n");
                sent.send(()).unwrap();
                let r = c.read_response(false);
                answered.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    for _ in 0..PARKED {
        sent_rx
            .recv_timeout(PATIENCE)
            .expect("every wake request sent");
    }
    // The one worker serves another connection while all of them are parked.
    let r = get(t.addr, "/meanwhile");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "the proxied request was served while every wake request was still parked"
    );
    for h in parked {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "woken\n");
    }
    let fields = log_fields(&t, PARKED + 1);
    assert_eq!(
        fields
            .iter()
            .filter(|f| f["termination"] == "answered")
            .count(),
        PARKED
    );
    assert_eq!(b.request_count(), 1);
}

#[test]
fn a_parked_request_whose_client_leaves_disturbs_nothing() {
    let b = Backend::named("b");
    let t = start(&b);
    for _ in 0..5 {
        let mut c = Client::connect(t.addr);
        c.send(b"GET /.tether/test/wake?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n");
        drop(c);
    }
    // New connections (which may reuse the departed sessions' slots) are served, before and after the
    // departed requests' tickets complete.
    assert_eq!(get(t.addr, "/during").status, 200);
    let mut c = Client::connect(t.addr);
    let r = c.get("/.tether/test/wake?ms=600");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "woken\n");
    assert_eq!(c.get("/after").text(), "b");
    assert_eq!(b.request_count(), 2);
}

#[test]
fn a_wait_past_its_deadline_gets_503() {
    let b = Backend::named("b");
    let t = start(&b);
    let r = get(t.addr, "/.tether/test/wake?ms=4000");
    assert_eq!(r.status, 503);
    let f = &log_fields(&t, 1)[0];
    assert_eq!(f["termination"], "wait_timeout");
    assert_eq!(f["status"], "503");
    assert_eq!(b.request_count(), 0);
}

#[test]
fn without_the_variable_the_test_paths_are_proxied_like_any_other() {
    let b = Backend::named("b");
    let t = Tether::start(&config_for(&[b.addr], ""));
    let r = raw_exchange(t.addr, format!("{}hello", echo_head(5, "")).as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b", "answered by the backend, not echoed");
    let received = b.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/.tether/test/echo");
    assert_eq!(received[0].body, b"hello");
    assert_eq!(log_fields(&t, 1)[0]["termination"], "completed");
}

#[test]
fn sigusr1_reports_requests_answered_by_tether() {
    let b = Backend::named("b");
    let t = start(&b);
    let mut c = Client::connect(t.addr);
    for body in ["one", "two"] {
        c.send(format!("{}{body}", echo_head(body.len(), "")).as_bytes());
        assert_eq!(c.read_response(false).text(), body);
    }
    assert_eq!(c.get("/").status, 200);
    assert_eq!(get(t.addr, "/.tether/test/wake?ms=10").status, 200);
    // All four are finished (and counted) once their lines are logged.
    log_fields(&t, 4);
    t.signal("USR1");
    let requests = t.wait_log("stats: requests total=");
    assert!(
        requests.contains("stats: requests total=4 answered_by_tether=3 "),
        "{requests}"
    );
    let ends = t.wait_log("stats: terminations");
    assert!(ends.contains(" answered=3"), "{ends}");
    assert!(ends.contains(" completed=1"), "{ends}");
}
