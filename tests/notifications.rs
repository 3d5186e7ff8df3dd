//! Notifications end to end (issue #16): real `tether` binaries, the example users file, logins, the
//! publish listener, polls, long polls, SSE streams, acknowledgements, piggybacked headers, a subscribed
//! upstream feed, and failover with `kill -9`. Every test asserts counts and outcomes, never durations.

mod common;

use common::cluster::*;
use common::login::*;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "test-publish-secret";

/// `[pools.demo]`, `[notifications]` (with `notify` extra keys), and a `/mail/` login route that
/// piggybacks notifications.
fn notify_sections(notify: &str) -> String {
    format!(
        "[pools.demo]\nusers = \"{}\"\n\n\
         [notifications]\npublish_address = \"127.0.0.1:0\"\npublish_secret = \"{SECRET}\"\n{notify}\n\n\
         [[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\nnotifications = true\n",
        users_file()
    )
}

/// One node with notifications over `backend`.
fn single(backend: SocketAddr, notify: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n\n\
         [[routes]]\ncluster = \"app\"\n\n{}",
        notify_sections(notify)
    )
}

fn publish_with(addr: SocketAddr, secret: &str, body: &str) -> Response {
    post(
        addr,
        "/publish",
        "application/json",
        body,
        &format!("Authorization: Bearer {secret}\r\n"),
    )
}

fn publish(addr: SocketAddr, user: &str, n: usize) -> u64 {
    let r = publish_with(
        addr,
        SECRET,
        &serde_json::json!({ "user": user, "data": { "n": n } }).to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    json(&r)["id"].as_u64().unwrap()
}

/// `GET /.tether/notifications?QUERY` with the session cookie: the JSON answer.
fn poll(addr: SocketAddr, cookie: &str, query: &str) -> serde_json::Value {
    let r = get_with(
        addr,
        &format!("/.tether/notifications?{query}"),
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    json(&r)
}

/// `(id, n)` of each notification in a poll answer.
fn listed(v: &serde_json::Value) -> Vec<(u64, u64)> {
    v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["data"]["n"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn ack(addr: SocketAddr, cookie: &str, up_to: u64) -> Response {
    post(
        addr,
        "/.tether/notifications/ack",
        "application/x-www-form-urlencoded",
        &format!("up_to={up_to}"),
        &format!("Cookie: {cookie}\r\n"),
    )
}

/// The `stats: notifications …` figure `key` after a SIGUSR1.
fn stat(t: &Tether, key: &str) -> u64 {
    let before = t.count_log("stats: notifications ");
    t.signal("USR1");
    wait_until("a notifications report", || {
        t.count_log("stats: notifications ") > before
    });
    let line = t
        .log_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("stats: notifications "))
        .unwrap();
    report_field(&line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn publish_poll_ack_reset_and_refusals_on_one_node() {
    let backend = Backend::named("mail");
    let t = Tether::start(&single(backend.addr, ""));
    let p = publish_addr(&t);
    let cookie = login_cookie_at(t.addr, "test");

    // Wrong or missing secret: 401, counted; bad JSON: 400 with a one-line reason.
    assert_eq!(
        publish_with(
            p,
            "wrong-secret-wrong-secret",
            r#"{"user":"alice","data":1}"#
        )
        .status,
        401
    );
    let r = post(
        p,
        "/publish",
        "application/json",
        r#"{"user":"alice","data":1}"#,
        "",
    );
    assert_eq!(r.status, 401);
    let r = publish_with(p, SECRET, r#"{"user":"alice""#);
    assert_eq!(r.status, 400);
    assert_eq!(r.text().lines().count(), 1, "{}", r.text());
    assert_eq!(publish_with(p, SECRET, r#"{"user":"alice"}"#).status, 400);
    assert_eq!(get(p, "/publish").status, 405);
    assert_eq!(get(p, "/elsewhere").status, 404);

    // Three for alice, over one keep-alive connection.
    let mut c = Client::connect(p);
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = serde_json::json!({ "user": "alice", "data": { "n": n } }).to_string();
        c.send(
            format!(
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(json(&r)["id"].as_u64().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids.iter().all(|&id| id < 1 << 53));
    let all = poll(t.addr, &cookie, "after=0");
    assert_eq!(listed(&all), vec![(ids[0], 0), (ids[1], 1), (ids[2], 2)]);
    assert!(all.get("reset").is_none());
    assert_eq!(
        listed(&poll(t.addr, &cookie, &format!("after={}", ids[0]))).len(),
        2
    );

    // An id the node cannot place: the reset, and what is held — never silence.
    let reset = poll(t.addr, &cookie, &format!("after={}", ids[2] + 1));
    assert_eq!(reset["reset"], true);
    assert_eq!(listed(&reset).len(), 3);

    // Acknowledged up to the second (form), then JSON: gone.
    let r = ack(t.addr, &cookie, ids[1]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(listed(&poll(t.addr, &cookie, "after=0")), vec![(ids[2], 2)]);
    let r = post(
        t.addr,
        "/.tether/notifications/ack",
        "application/json",
        &format!("{{\"up_to\":{}}}", ids[2]),
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(listed(&poll(t.addr, &cookie, "after=0")).is_empty());
    assert_eq!(ack(t.addr, &cookie, 0).status, 200);
    assert_eq!(
        post(
            t.addr,
            "/.tether/notifications/ack",
            "text/plain",
            "x",
            &format!("Cookie: {cookie}\r\n")
        )
        .status,
        400
    );

    // Without a login: 401.
    assert_eq!(get(t.addr, "/.tether/notifications?after=0").status, 401);

    // A long poll parked with nothing to say is answered by the next publish.
    let addr = t.addr;
    let waiting_cookie = cookie.clone();
    let waiter = std::thread::spawn(move || poll(addr, &waiting_cookie, "after=0&wait=20s"));
    wait_until("the long poll to park", || {
        t.signal("USR1");
        std::thread::sleep(Duration::from_millis(50));
        t.log_lines()
            .iter()
            .rev()
            .find(|l| l.contains("stats: notifications "))
            .is_some_and(|l| l.contains("waiting=1"))
    });
    let id = publish(p, "alice", 7);
    assert_eq!(listed(&waiter.join().unwrap()), vec![(id, 7)]);

    // Logged out: the next publish for alice finds no session, and is dropped and counted.
    let r = post(
        t.addr,
        "/.tether/logout",
        "application/x-www-form-urlencoded",
        "",
        &format!("Cookie: {cookie}\r\nAccept: application/json\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let before = stat(&t, "dropped_no_session");
    let r = publish_with(p, SECRET, r#"{"user":"alice","data":{"late":true}}"#);
    assert_eq!(r.status, 202);
    assert_eq!(json(&r)["queued"], 0);
    let r = publish_with(
        p,
        SECRET,
        r#"{"session":"AAAAAAAAAAAAAAAAAAAAAA","data":1}"#,
    );
    assert_eq!(json(&r)["queued"], 0);
    assert_eq!(stat(&t, "dropped_no_session"), before + 2);
    assert_eq!(stat(&t, "unauthorized"), 2);
}

#[test]
fn piggybacked_headers_stay_within_the_budget_and_a_full_queue_drops_the_oldest() {
    let backend = Backend::named("mail");
    let t = Tether::start(&single(
        backend.addr,
        "piggyback_bytes = 300\nmax_count = 5\n",
    ));
    let p = publish_addr(&t);
    let cookie = login_cookie_at(t.addr, "test");
    let pad = "x".repeat(40);
    let ids: Vec<u64> = (0..8)
        .map(|n| {
            let r = publish_with(
                p,
                SECRET,
                &serde_json::json!({ "user": "alice", "data": { "n": n, "pad": pad } }).to_string(),
            );
            assert_eq!(r.status, 202, "{}", r.text());
            json(&r)["id"].as_u64().unwrap()
        })
        .collect();

    // Eight published into a queue of five: the three oldest dropped, counted, and marked.
    let all = poll(t.addr, &cookie, "after=0");
    assert_eq!(
        listed(&all),
        ids[3..]
            .iter()
            .zip(3..)
            .map(|(&i, n)| (i, n))
            .collect::<Vec<_>>()
    );
    let dropped: u64 = all["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["dropped"].as_u64())
        .sum();
    assert_eq!(dropped, 3);
    assert_eq!(stat(&t, "dropped_full"), 3);

    // A /mail/ response carries what fits in 300 bytes and announces the rest.
    let r = get_with(t.addr, "/mail/inbox", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(r.status, 200);
    let header = r.header("tether-notifications").expect("piggybacked");
    let pending = r.header("tether-notifications-pending").expect("announced");
    let line_bytes = "Tether-Notifications: \r\n".len()
        + header.len()
        + "Tether-Notifications-Pending: \r\n".len()
        + pending.len();
    assert!(
        line_bytes <= 300,
        "{line_bytes} bytes: {header} / {pending}"
    );
    let carried: Vec<serde_json::Value> = serde_json::from_str(header).unwrap();
    assert!(!carried.is_empty() && carried.len() < 5);
    assert_eq!(carried[0]["id"].as_u64(), Some(ids[3]));
    let next = ids[3 + carried.len()];
    assert_eq!(pending, format!("count={}, next={next}", 5 - carried.len()));
    // A route without notifications carries none.
    let r = get_with(t.addr, "/other", &format!("Cookie: {cookie}\r\n"));
    assert!(r.header("tether-notifications").is_none());
}

#[test]
fn a_full_queue_refuses_with_507_when_configured() {
    let backend = Backend::named("mail");
    let t = Tether::start(&single(
        backend.addr,
        "max_count = 2\nwhen_full = \"refuse\"\n",
    ));
    let p = publish_addr(&t);
    let cookie = login_cookie_at(t.addr, "test");
    publish(p, "alice", 0);
    publish(p, "alice", 1);
    let r = publish_with(p, SECRET, r#"{"user":"alice","data":{"n":2}}"#);
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(listed(&poll(t.addr, &cookie, "after=0")).len(), 2);
    assert_eq!(stat(&t, "refused_full"), 1);
}

/// A two-node cluster (a, b) with notifications: while both run, a publish's 202 means the other node
/// holds it. Once one is gone the other has no replica to wait for: its sync writes are answered after
/// `sync_timeout` as degraded writes (`on_sync_timeout = "degrade"`), so it goes on serving.
fn two_nodes(backend: SocketAddr, dir: &std::path::Path) -> (Tether, Tether) {
    cluster_certs(dir, "a,b");
    let configs: Vec<String> = mesh_configs(&["a", "b"], dir, &[backend])
        .into_iter()
        .map(|c| {
            let c = c.replacen(
                "heartbeat = \"200ms\"\n",
                "heartbeat = \"200ms\"\nsync_timeout = \"300ms\"\non_sync_timeout = \"degrade\"\n",
                1,
            );
            format!("{c}\n{}", notify_sections(""))
        })
        .collect();
    let a = Tether::start(&configs[0]);
    let b = Tether::start(&configs[1]);
    wait_peer(&a, "b", "up");
    wait_peer(&b, "a", "up");
    (a, b)
}

#[test]
fn acknowledged_ones_stay_deleted_and_the_rest_survive_kill_9() {
    let backend = Backend::named("mail");
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = two_nodes(backend.addr, dir.path());
    let p = publish_addr(&a);
    let cookie = login_cookie_at(a.addr, "test");
    let ids: Vec<u64> = (0..100).map(|n| publish(p, "alice", n)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ack(a.addr, &cookie, ids[39]).status, 200);
    a.kill();
    // b: the session, and exactly the 60 not acknowledged, in order.
    let rest = poll(b.addr, &cookie, "after=0");
    let want: Vec<(u64, u64)> = ids[40..].iter().zip(40..).map(|(&i, n)| (i, n)).collect();
    assert_eq!(listed(&rest), want);
    // And new ones live, on b's own publish listener.
    let id = publish(publish_addr(&b), "alice", 100);
    assert!(id > ids[99]);
    assert_eq!(
        listed(&poll(b.addr, &cookie, &format!("after={}", ids[99]))),
        vec![(id, 100)]
    );
}

/// An SSE client: reads events from a stream until `want` notifications arrived.
struct Sse {
    stream: TcpStream,
    parser: tether::notify::sse::Parser,
    head_done: bool,
    buf: Vec<u8>,
}

impl Sse {
    fn open(addr: SocketAddr, cookie: &str, last_event_id: Option<u64>) -> Sse {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let last = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        write!(
            stream,
            "GET /.tether/notifications HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\nCookie: {cookie}\r\n{last}\r\n"
        )
        .unwrap();
        Sse {
            stream,
            parser: tether::notify::sse::Parser::new(1 << 20),
            head_done: false,
            buf: Vec::new(),
        }
    }

    /// The next `n` events (event name, id, data).
    fn events(&mut self, n: usize) -> Vec<(String, Option<u64>, String)> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < n {
            let k = self.stream.read(&mut chunk).expect("stream read");
            assert!(k > 0, "stream closed after {} event(s)", got.len());
            let mut data = &chunk[..k];
            if !self.head_done {
                self.buf.extend_from_slice(data);
                let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert!(
                    head.to_ascii_lowercase().contains("text/event-stream"),
                    "{head}"
                );
                self.head_done = true;
                let rest = self.buf.split_off(end + 4);
                self.buf = rest;
                data = &[];
            }
            let pending = std::mem::take(&mut self.buf);
            for part in [&pending[..], data] {
                self.parser
                    .feed(part, |e| {
                        got.push((
                            e.event.clone(),
                            e.id.as_deref().and_then(|i| i.parse().ok()),
                            e.data,
                        ))
                    })
                    .unwrap();
            }
        }
        got
    }
}

#[test]
fn an_sse_client_that_loses_its_node_resumes_at_another_without_gap_or_repeat() {
    let backend = Backend::named("mail");
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = two_nodes(backend.addr, dir.path());
    let p = publish_addr(&a);
    let cookie = login_cookie_at(a.addr, "test");
    let first: Vec<u64> = (0..5).map(|n| publish(p, "alice", n)).collect();
    let mut sse = Sse::open(a.addr, &cookie, None);
    let got = sse.events(5);
    assert_eq!(got.iter().map(|e| e.1.unwrap()).collect::<Vec<_>>(), first);
    // Live: published while the stream is open.
    let more: Vec<u64> = (5..10).map(|n| publish(p, "alice", n)).collect();
    let live = sse.events(5);
    assert_eq!(live.iter().map(|e| e.1.unwrap()).collect::<Vec<_>>(), more);
    // The client acknowledged the first three; it last saw the tenth.
    assert_eq!(ack(a.addr, &cookie, first[2]).status, 200);
    a.kill();
    // Published at b while the client reconnects.
    let pb = publish_addr(&b);
    let later: Vec<u64> = (10..13).map(|n| publish(pb, "alice", n)).collect();
    let mut resumed = Sse::open(b.addr, &cookie, Some(more[4]));
    let got = resumed.events(3);
    assert!(got.iter().all(|e| e.0.is_empty()), "no reset: {got:?}");
    assert_eq!(got.iter().map(|e| e.1.unwrap()).collect::<Vec<_>>(), later);
    // And an unknown id gets the reset event first, then every unacknowledged one (7 + 3).
    let mut reset = Sse::open(b.addr, &cookie, Some(later[2] + 1));
    let got = reset.events(11);
    assert_eq!(got[0].0, "reset");
    let ids: Vec<u64> = got[1..].iter().map(|e| e.1.unwrap()).collect();
    let mut want: Vec<u64> = first[3..].to_vec();
    want.extend(&more);
    want.extend(&later);
    assert_eq!(ids, want);
}

/// A small SSE upstream: the first connection waits for `go`, sends events 1–3 and drops; later ones send
/// what comes after the client's `Last-Event-ID` up to 6 and stay open. Records each connection's
/// Last-Event-ID.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    /// Set once the test logged in: the events then find alice's session, however slow the login was.
    go: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = go.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut last = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("last-event-id:") {
                        last = Some(v.trim().to_string());
                    }
                }
                let first = log.lock().unwrap().is_empty();
                log.lock().unwrap().push(last.clone());
                while first && !started.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let from: u64 = last.and_then(|l| l.parse().ok()).unwrap_or(0);
                let to = if first { 3 } else { 6 };
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hello\n\n",
                );
                for i in from + 1..=to {
                    out.push_str(&format!(
                        "id: {i}\ndata: {{\"user\":\"alice\",\"data\":{{\"n\":{i}}}}}\n\n"
                    ));
                }
                let _ = stream.write_all(out.as_bytes());
                if first {
                    drop(stream); // the connection drops
                } else {
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(60));
                        drop(stream);
                    });
                }
            }
        });
        Upstream { addr, seen, go }
    }
}

#[test]
fn a_subscribed_feed_that_drops_is_resumed_from_its_last_event_id_without_loss() {
    let backend = Backend::named("mail");
    let up = Upstream::start();
    // Log in first: the feed's events are for alice's live sessions.
    let config = single(
        backend.addr,
        &format!(
            "[[notifications.feeds]]\nname = \"mail\"\nurl = \"http://{}/events\"\nmax_backoff = \"30s\"\n",
            up.addr
        ),
    );
    let t = Tether::start(&config);
    let cookie = login_cookie_at(t.addr, "test");
    // The upstream sends its first events only now: every one finds alice's session.
    up.go.store(true, std::sync::atomic::Ordering::Release);
    wait_until("the feed to reconnect", || {
        up.seen.lock().unwrap().len() >= 2
    });
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen[0], None);
    assert_eq!(
        seen[1].as_deref(),
        Some("3"),
        "resumed from its last event id"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = listed(&poll(t.addr, &cookie, "after=0"));
        let ns: Vec<u64> = got.iter().map(|x| x.1).collect();
        if ns.len() >= 6 {
            // No loss and no repeat across the reconnection.
            assert_eq!(ns, [1, 2, 3, 4, 5, 6]);
            break;
        }
        assert!(Instant::now() < deadline, "feed events: {ns:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stat(&t, "feed_reconnects"), 1);
}
