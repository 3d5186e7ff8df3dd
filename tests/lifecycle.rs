//! End-to-end: the CLI, reloads on SIGHUP, graceful stop on SIGTERM, and the demo.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn sighup_adds_a_backend_that_then_gets_traffic() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let t = Tether::start(&config_for(&[a.addr], ""));
    let mut kept = Client::connect(t.addr);
    assert_eq!(kept.get("/").text(), "a");
    t.write_config(&config_for(&[a.addr, b.addr], ""));
    t.signal("HUP");
    t.wait_log("reloaded");
    // The connection opened before the reload is still served, now by both backends.
    let on_kept: Vec<String> = (0..6).map(|_| kept.get("/").text()).collect();
    assert!(on_kept.iter().any(|x| x == "b"), "{on_kept:?}");
    let answers: Vec<String> = (0..10).map(|_| get(t.addr, "/").text()).collect();
    assert!(answers.iter().any(|x| x == "b"), "{answers:?}");
    assert!(answers.iter().any(|x| x == "a"), "{answers:?}");
}

#[test]
fn a_bad_config_on_sighup_is_refused_and_the_old_one_keeps_serving() {
    let a = Backend::named("a");
    let t = Tether::start(&config_for(&[a.addr], ""));
    let mut keep_alive = Client::connect(t.addr);
    assert_eq!(keep_alive.get("/").text(), "a");
    t.write_config("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[clusters.app]\nbackends = [{ address = \"nonsense\" }]\n");
    t.signal("HUP");
    let line = t.wait_log("reload refused");
    assert!(line.contains("error"), "{line}");
    // The error names file, line and key.
    let logs = t.log_lines().join("\n");
    assert!(
        logs.contains("tether.toml:5: clusters.app.backends[0].address"),
        "{logs}"
    );
    assert_eq!(
        keep_alive.get("/").text(),
        "a",
        "existing connection unaffected"
    );
    assert_eq!(
        get(t.addr, "/").text(),
        "a",
        "new connections served by the old config"
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let slow = Backend::start(|_, _| {
        std::thread::sleep(Duration::from_millis(800));
        Some(Reply::text(200, "finished"))
    });
    let mut t = Tether::start(&config_for(&[slow.addr], ""));
    let addr = t.addr;
    let inflight = std::thread::spawn(move || get(addr, "/slow"));
    // Wait until the backend has the request, then ask tether to stop.
    let deadline = std::time::Instant::now() + PATIENCE;
    while slow.request_count() == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    t.signal("TERM");
    t.wait_log("stopping");
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(t.wait_exit(), Some(0));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn check_accepts_good_configs_and_names_file_line_and_key_of_bad_ones() {
    let bin = env!("CARGO_BIN_EXE_tether");
    for good in [
        "configs/basic.toml",
        "configs/full.toml",
        "configs/demo.toml",
        "configs/tls.toml",
        "configs/sticky.toml",
        "configs/cluster/a.toml",
        "configs/cluster/b.toml",
        "configs/cluster/c.toml",
    ] {
        let out = Command::new(bin)
            .args(["check", "-c", good])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[[routes]]\ncluster = \"missing\"\n\n\
         [clusters.app]\nbackends = [{ address = \"127.0.0.1:9001\", weight = 0 }]\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = bad.display().to_string();
    assert!(
        err.contains(&format!("{name}:5: routes[0].cluster")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{name}:8: clusters.app.backends[0].weight")),
        "{err}"
    );
}

#[test]
fn demo_starts_three_backends_and_balances_them() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "--listen", "127.0.0.1:0", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("balancer on http://").nth(1) {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            break;
        }
        line.clear();
    }
    let addr: std::net::SocketAddr = addr.expect("banner names the balancer address");
    let mut backends = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = get(addr, "/");
        assert_eq!(r.status, 200);
        backends.insert(r.header("x-backend").unwrap().to_string());
    }
    assert_eq!(backends.len(), 3);
    let r = get(addr, "/headers");
    assert!(
        r.text().contains("X-Forwarded-For: 127.0.0.1"),
        "{}",
        r.text()
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits cleanly on Ctrl-C: {status}");
}
