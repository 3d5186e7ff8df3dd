//! End-to-end: balancing algorithms, draining and reloads, retries, and the access log, through the real
//! binary.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A backend answering `name`, except that `/slow` waits for `gate` first.
fn gated(name: &'static str, gate: &Gate) -> Backend {
    let gate = gate.clone();
    Backend::start(move |req, _| {
        if req.path == "/slow" {
            gate.wait();
        }
        Some(Reply::text(200, name))
    })
}

/// Sends `/slow` requests (each on its own connection, in its own thread) until `backend` holds one;
/// returns the threads (the held one answers once its gate opens).
fn hold_slow_request_on(t: &Tether, backend: &Backend) -> Vec<std::thread::JoinHandle<Response>> {
    let mut threads = Vec::new();
    for _ in 0..6 {
        let addr = t.addr;
        threads.push(std::thread::spawn(move || get(addr, "/slow")));
        let held = || backend.received().iter().any(|r| r.path == "/slow");
        // Either the backend got it, or another backend answered it at once.
        wait_until("the slow request to land", || {
            held() || threads.last().unwrap().is_finished()
        });
        if held() {
            return threads;
        }
    }
    panic!("no /slow request reached the backend");
}

#[test]
fn least_outstanding_sends_new_requests_away_from_a_backend_holding_slow_requests() {
    let gate = Gate::default();
    let a = gated("a", &gate);
    let b = Backend::named("b");
    let t = Tether::start(&config_with(
        &[a.addr, b.addr],
        "balance = \"least_outstanding\"",
        "",
    ));
    let slow = hold_slow_request_on(&t, &a);
    // While a holds a request, every new one goes to b.
    let answers: Vec<String> = (0..20).map(|_| get(t.addr, "/").text()).collect();
    assert!(answers.iter().all(|x| x == "b"), "{answers:?}");
    gate.open();
    for th in slow {
        assert_eq!(th.join().unwrap().status, 200);
    }
    // Both idle again: they take turns.
    let answers: Vec<String> = (0..10).map(|_| get(t.addr, "/").text()).collect();
    let a_count = answers.iter().filter(|x| *x == "a").count();
    assert_eq!(a_count, 5, "{answers:?}");
}

#[test]
fn consistent_hash_sends_a_key_to_the_same_backend_from_every_worker() {
    let backends: Vec<Backend> = ["a", "b", "c"].into_iter().map(Backend::named).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = config_with(
        &addrs,
        "balance = \"consistent_hash\"\nhash_on = \"header:X-User\"",
        "",
    );
    let t = Tether::start_with(&config, &["--workers", "2"]);
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..4 {
        for user in 0..12 {
            // A new connection each time: the kernel spreads them over both workers.
            let mut c = Client::connect(t.addr);
            c.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: user-{user}\r\n\r\n").as_bytes());
            let r = c.read_response(false);
            assert_eq!(r.status, 200);
            let name = r.text();
            let first = owner.entry(format!("user-{user}")).or_insert(name.clone());
            assert_eq!(*first, name, "user-{user} moved in round {round}");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "12 keys all on one backend: {owner:?}");
    // Requests without the key are balanced by weighted round robin.
    let plain: HashSet<String> = (0..6).map(|_| get(t.addr, "/").text()).collect();
    assert!(plain.len() >= 2, "{plain:?}");
}

#[test]
fn a_drained_backend_gets_no_new_requests() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let config = config_for(&[a.addr], "").replace(
        &format!("{{ address = \"{}\" }}", a.addr),
        &format!(
            "{{ address = \"{}\" }}, {{ address = \"{}\", drain = true }}",
            a.addr, b.addr
        ),
    );
    let t = Tether::start(&config);
    for _ in 0..10 {
        assert_eq!(get(t.addr, "/").text(), "a");
    }
    assert_eq!(b.request_count(), 0);
}

#[test]
fn a_backend_removed_by_reload_finishes_its_request_and_gets_no_new_ones() {
    let gate = Gate::default();
    let a = Backend::named("a");
    let b = gated("b", &gate);
    let t = Tether::start(&config_for(&[a.addr, b.addr], ""));
    let slow = hold_slow_request_on(&t, &b);
    t.write_config(&config_for(&[a.addr], ""));
    t.signal("HUP");
    t.wait_log("reloaded");
    let before = b.request_count();
    for _ in 0..10 {
        assert_eq!(get(t.addr, "/").text(), "a");
    }
    assert_eq!(b.request_count(), before, "no new request for b");
    gate.open();
    let answers: Vec<Response> = slow.into_iter().map(|th| th.join().unwrap()).collect();
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert!(
        answers.iter().any(|r| r.text() == "b"),
        "the in-flight request finished on b"
    );
}

#[test]
fn a_reload_closes_idle_pooled_connections_to_a_removed_backend() {
    // A raw keep-alive backend that reports when tether closes its connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let b_addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    {
        let closed = closed.clone();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].ends_with(b"\r\n\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
                .unwrap();
            // Idle in tether's pool now; EOF means tether closed it.
            if let Ok(0) = s.read(&mut buf) {
                closed.store(true, Ordering::SeqCst);
            }
        });
    }
    let a = Backend::named("a");
    let t = Tether::start(&config_for(&[b_addr], ""));
    assert_eq!(get(t.addr, "/").text(), "b");
    t.write_config(&config_for(&[a.addr], ""));
    t.signal("HUP");
    t.wait_log("reloaded");
    // The worker picks the new config up with its next event.
    assert_eq!(get(t.addr, "/").text(), "a");
    wait_until(
        "the idle connection to the removed backend to close",
        || closed.load(Ordering::SeqCst),
    );
}

#[test]
fn a_post_whose_body_was_sent_is_not_retried_but_a_get_is() {
    // Both backends read the whole request, then close without answering.
    let hang_up = || Backend::start(|_, _| None);
    let (a, b) = (hang_up(), hang_up());
    let t = Tether::start(&config_with(
        &[a.addr, b.addr],
        "retries = 2",
        "[clusters.app.passive_health]\nconsecutive_failures = 0\n",
    ));
    let received = || a.request_count() + b.request_count();
    for method in ["POST", "PUT"] {
        let before = received();
        let r = raw_exchange(
            t.addr,
            format!("{method} /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
                .as_bytes(),
        );
        assert_eq!(r.status, 502, "{method}");
        assert_eq!(received() - before, 1, "{method} sent to one backend only");
    }
    let before = received();
    let r = get(t.addr, "/");
    assert_eq!(r.status, 502);
    assert_eq!(received() - before, 3, "a GET: first attempt and 2 retries");
    let lines = t.access_lines(3);
    let retries: Vec<String> = lines
        .iter()
        .map(|l| json_fields(l)["retries"].clone())
        .collect();
    assert_eq!(retries, ["0", "0", "2"]);
    assert!(
        a.received()
            .iter()
            .chain(b.received().iter())
            .all(|r| r.method != "POST" || r.body == b"hello"),
        "the POST arrived whole"
    );
}

#[test]
fn access_log_lines_parse_and_carry_backend_and_status() {
    let a = Backend::named("a");
    let dead = dead_addr();
    // Combined format: `config_for` asks for JSON, so rewrite that.
    let config = config_for(&[a.addr], "").replace("format = \"json\"", "format = \"combined\"");
    let t = Tether::start(&config);
    assert_eq!(get(t.addr, "/hello?x=1").status, 200);
    assert_eq!(raw_exchange(t.addr, b"GET / HTTP/1.1\r\n\r\n").status, 400);
    let lines = t.access_lines(2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = parse_combined(&lines[0]);
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["request"], "GET /hello?x=1 HTTP/1.1");
    assert_eq!(ok["status"], "200");
    assert_eq!(ok["backend"], a.addr.to_string());
    assert_eq!(ok["term"], "completed");
    for key in ["bytes_in", "tq", "tc", "tr", "tt", "bytes"] {
        assert!(ok[key].parse::<u64>().is_ok(), "{key}: {}", lines[0]);
    }
    let bad = parse_combined(&lines[1]);
    assert_eq!(bad["status"], "400");
    assert_eq!(bad["backend"], "-");
    assert_eq!(bad["term"], "bad_request");
    assert!(!bad["reason"].is_empty(), "{}", lines[1]);

    // JSON: every field, for an answered request and for one no backend could take.
    let t = Tether::start(&config_with(
        &[a.addr, dead],
        "retries = 0",
        "[clusters.app.passive_health]\nconsecutive_failures = 0\n",
    ));
    let statuses: Vec<u16> = (0..2).map(|_| get(t.addr, "/p").status).collect();
    assert_eq!(statuses, [200, 502]);
    let lines = t.access_lines(2);
    let f = json_fields(&lines[0]);
    for key in [
        "time",
        "client",
        "method",
        "target",
        "status",
        "bytes_in",
        "bytes_out",
        "backend",
        "queue_us",
        "connect_us",
        "response_us",
        "total_us",
        "termination",
        "reason",
        "retries",
    ] {
        assert!(f.contains_key(key), "{key} missing: {}", lines[0]);
    }
    assert_eq!(
        (f["status"].as_str(), f["backend"].as_str()),
        ("200", &*a.addr.to_string())
    );
    let f = json_fields(&lines[1]);
    assert_eq!(f["status"], "502");
    assert_eq!(f["backend"], dead.to_string());
    assert_eq!(f["termination"], "connect_failed");
    assert_eq!(f["reason"], "could not connect to a backend");
}

/// Splits a combined-format line into named fields.
fn parse_combined(line: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let (client, rest) = line.split_once(" - - [").expect("client and time");
    out.insert("client".into(), client.to_string());
    let (_time, rest) = rest.split_once("] \"").expect("time");
    let (request, rest) = rest.split_once("\" ").expect("request line");
    out.insert("request".into(), request.to_string());
    let mut words = rest.split(' ');
    out.insert("status".into(), words.next().unwrap().to_string());
    out.insert("bytes".into(), words.next().unwrap().to_string());
    // key=value pairs after the user agent; reason="…" may hold spaces.
    let (_, pairs) = rest.split_once("\" host=").expect("tether fields");
    let pairs = format!("host={pairs}");
    let (head, reason) = pairs.split_once(" reason=\"").expect("reason");
    for kv in head.split(' ') {
        if let Some((k, v)) = kv.split_once('=') {
            out.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    let (reason, tail) = reason.rsplit_once("\" ").expect("reason end");
    out.insert("reason".into(), reason.to_string());
    if let Some((k, v)) = tail.split_once('=') {
        out.insert(k.to_string(), v.to_string());
    }
    out
}

#[test]
fn requests_without_a_live_backend_retry_elsewhere() {
    // One backend refuses connections: GETs still all succeed, each retried on the other.
    let a = Backend::named("a");
    let dead = dead_addr();
    let t = Tether::start(&config_with(
        &[dead, a.addr],
        "",
        "[clusters.app.passive_health]\nconsecutive_failures = 0\n",
    ));
    for _ in 0..6 {
        let r = get(t.addr, "/");
        assert_eq!((r.status, r.text().as_str()), (200, "a"));
    }
    let lines = t.access_lines(6);
    assert!(
        lines.iter().any(|l| json_fields(l)["retries"] == "1"),
        "{lines:?}"
    );
}
