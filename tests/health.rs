//! End-to-end: active health checks, passive health and what clients see when backends fail.

mod common;

use common::*;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Fast checks: every 100 ms, down after 2 failures, up after 2 passes.
const CHECK: &str = "[clusters.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";

#[test]
fn a_backend_killed_under_a_stream_of_gets_costs_no_client_error_and_returns_after_rise() {
    let a = Backend::named("a");
    // Killing b: its listener closes (connects are refused) and each of its open connections is cut at
    // its next request, without an answer, as when the process dies.
    let dead = Arc::new(AtomicBool::new(false));
    let b = {
        let dead = dead.clone();
        Backend::start(move |_, _| (!dead.load(Ordering::SeqCst)).then(|| Reply::text(200, "b")))
    };
    let b_addr = b.addr;
    // fall = 5: for about half a second after the kill, requests still go to b, find it refusing
    // connections, and are retried on a.
    let t = Tether::start(&config_with(
        &[a.addr, b.addr],
        "retries = 2",
        &format!(
            "{}\n[clusters.app.passive_health]\ncool_down = \"300ms\"\n",
            CHECK.replace("fall = 2", "fall = 5")
        ),
    ));
    let mut client = Client::connect(t.addr);
    let mut seen_b = 0;
    for _ in 0..20 {
        let r = client.get("/");
        assert_eq!(r.status, 200);
        seen_b += usize::from(r.text() == "b");
    }
    assert!(seen_b > 0, "b serves before it is killed");

    dead.store(true, Ordering::SeqCst);
    b.stop();
    drop(b);
    let down = format!("backend {b_addr} of cluster app is DOWN");
    let mut sent = 0;
    while t.count_log(&down) == 0 {
        // A mix of keep-alive and fresh connections; every one must succeed.
        let r = if sent % 2 == 0 {
            client.get("/")
        } else {
            get(t.addr, "/")
        };
        assert_eq!(r.status, 200, "request {sent} after the kill: {}", r.text());
        sent += 1;
        assert!(sent < 100_000, "no DOWN log line");
    }
    let line = t.wait_log(&down);
    assert!(line.contains("5 failed checks"), "{line}");
    // Requests that found b dead were retried on a rather than failed.
    let total = 20 + sent;
    let lines = t.access_lines(total);
    assert!(
        lines.iter().any(|l| json_fields(l)["retries"] != "0"),
        "no request was retried ({sent} sent after the kill)"
    );
    assert!(lines.iter().all(|l| json_fields(l)["status"] == "200"));
    for _ in 0..10 {
        assert_eq!(client.get("/").text(), "a");
    }

    // Bring b back on the same port: after `rise` passed checks it takes requests again.
    let listener = TcpListener::bind(b_addr).unwrap();
    let _b2 = Backend::on(listener, |_, _| Some(Reply::text(200, "b")));
    let line = t.wait_log(&format!("backend {b_addr} of cluster app is UP"));
    assert!(line.contains("2 passed checks"), "{line}");
    let answers: Vec<String> = (0..10).map(|_| client.get("/").text()).collect();
    assert!(answers.iter().any(|x| x == "b"), "{answers:?}");
}

#[test]
fn a_failing_check_takes_a_backend_out_of_rotation() {
    let a = Backend::named("a");
    let sick = Backend::start(|req, _| {
        Some(if req.path == "/health" {
            Reply::text(503, "overloaded")
        } else {
            Reply::text(200, "sick")
        })
    });
    let t = Tether::start(&config_with(&[a.addr, sick.addr], "", CHECK));
    let line = t.wait_log(&format!("backend {} of cluster app is DOWN", sick.addr));
    assert!(line.contains("(status 503, expected 200-399)"), "{line}");
    let before = sick.request_count();
    for _ in 0..10 {
        assert_eq!(get(t.addr, "/").text(), "a");
    }
    // Only checks reach it now.
    assert!(
        sick.received()[before..]
            .iter()
            .all(|r| r.path == "/health"),
        "a request went to a backend that failed its checks"
    );
    // The check request is what the config says.
    let check = sick
        .received()
        .into_iter()
        .find(|r| r.path == "/health")
        .unwrap();
    assert_eq!(check.method, "GET");
    assert_eq!(check.header("host"), Some(&*sick.addr.to_string()));
}

#[test]
fn all_backends_down_gives_503_with_retry_after() {
    let (x, y) = (dead_addr(), dead_addr());
    let t = Tether::start(&config_with(&[x, y], "", CHECK));
    for addr in [x, y] {
        let line = t.wait_log(&format!("backend {addr} of cluster app is DOWN"));
        assert!(line.contains("connection refused"), "{line}");
    }
    let r = get(t.addr, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    let f = json_fields(&t.access_lines(1)[0]);
    assert_eq!(f["termination"], "no_backend");
    assert_eq!(f["reason"], "no backend available");
    assert_eq!(f["backend"], "null");
}

#[test]
fn passive_health_takes_out_a_failing_backend_then_half_opens_it() {
    let a = Backend::named("a");
    let broken = Backend::start(|_, _| Some(Reply::text(500, "broken")));
    let t = Tether::start(&config_with(
        &[a.addr, broken.addr],
        "",
        "[clusters.app.passive_health]\nconsecutive_failures = 3\ncool_down = \"300ms\"\n",
    ));
    let down = format!(
        "backend {} is DOWN: 3 consecutive failed requests",
        broken.addr
    );
    let mut answers = Vec::new();
    while t.count_log(&down) == 0 {
        answers.push(get(t.addr, "/").status);
        assert!(answers.len() < 100, "{answers:?}");
    }
    // Exactly three 500s reached clients before it was taken out.
    assert_eq!(
        answers.iter().filter(|&&s| s == 500).count(),
        3,
        "{answers:?}"
    );
    for _ in 0..10 {
        assert_eq!(get(t.addr, "/").status, 200);
    }
    // After the cool-down it is tried again; one more failure takes it out again.
    t.wait_log(&format!(
        "backend {} is UP: cool-down over, half-open",
        broken.addr
    ));
    let mut statuses = Vec::new();
    while t.count_log(&format!("backend {} is DOWN", broken.addr)) < 2 {
        statuses.push(get(t.addr, "/").status);
        assert!(statuses.len() < 100, "{statuses:?}");
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 500).count(),
        1,
        "{statuses:?}"
    );
    let line = t.wait_log("consecutive failed requests (last: 5xx response)");
    assert!(line.contains(&broken.addr.to_string()), "{line}");
}

#[test]
fn a_reload_keeps_backend_health_and_drops_verdicts_of_removed_checks() {
    let a = Backend::named("a");
    let dead = dead_addr();
    let t = Tether::start(&config_with(&[a.addr, dead], "", CHECK));
    t.wait_log(&format!("backend {dead} of cluster app is DOWN"));
    // Reload with the same checks (and no retries): the dead backend stays down, so nothing fails.
    t.write_config(&config_with(&[a.addr, dead], "retries = 0", CHECK));
    t.signal("HUP");
    t.wait_log("(generation 2)");
    for _ in 0..10 {
        assert_eq!(
            get(t.addr, "/").status,
            200,
            "a request went to the dead backend"
        );
    }
    // Reload without checks: their verdict goes with them, and requests find out for themselves.
    t.write_config(&config_with(&[a.addr, dead], "retries = 0", ""));
    t.signal("HUP");
    t.wait_log(&format!("backend {dead} is UP: no longer health-checked"));
    let statuses: Vec<u16> = (0..10).map(|_| get(t.addr, "/").status).collect();
    assert!(statuses.contains(&502), "{statuses:?}");
}
