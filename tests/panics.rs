//! End-to-end: the panic policy (docs/HARDENING.md, "Panics"). A bug that panics while a worker handles
//! one connection is logged with that connection's context and costs only that connection; the worker
//! keeps serving. Panics that keep coming stop the process with a non-zero status for its supervisor.
//!
//! The panic is injected with `TETHER_TEST_PANIC_ON_PATH`, which is off unless set at start-up.

mod common;

use common::*;

const PANIC_PATH: &str = "/__tether_test_panic";

fn start(backend: &Backend) -> Tether {
    Tether::start_with_env(
        &config_for(&[backend.addr], ""),
        &["--workers", "1"],
        &[("TETHER_TEST_PANIC_ON_PATH", PANIC_PATH)],
    )
}

#[test]
fn a_panic_costs_one_connection_and_the_worker_keeps_serving() {
    let backend = Backend::named("ok");
    let mut t = start(&backend);
    t.wait_log("TETHER_TEST_PANIC_ON_PATH is set");

    // A keep-alive connection on the same (only) worker, mid-life when the panic happens.
    let mut bystander = Client::connect(t.addr);
    assert_eq!(bystander.get("/before").status, 200);

    let mut victim = Client::connect(t.addr);
    victim.send(format!("GET {PANIC_PATH} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    assert!(
        victim.try_read_response(false).is_none(),
        "the panicking connection is dropped without an answer"
    );
    assert!(victim.closed());

    let line = t.wait_log("panic while driving connection");
    assert!(line.contains("from 127.0.0.1:"), "peer in {line}");
    assert!(line.contains("phase ReadHead"), "phase in {line}");
    assert!(
        line.contains("deliberate panic for /__tether_test_panic"),
        "{line}"
    );
    assert!(line.contains("(1 panic(s) in this worker)"), "{line}");

    // The worker is alive: the bystander's connection and new ones are served.
    assert_eq!(bystander.get("/after").status, 200);
    for i in 0..5 {
        assert_eq!(get(t.addr, &format!("/new/{i}")).status, 200);
    }
    assert!(t.running());
    // The dropped request is in the access log as an internal failure.
    let lines = t.access_lines(8);
    let panicked: Vec<_> = lines
        .iter()
        .map(|l| json_fields(l))
        .filter(|f| f["target"] == PANIC_PATH)
        .collect();
    assert_eq!(panicked.len(), 1, "{lines:#?}");
    assert_eq!(panicked[0]["termination"], "internal");
    assert_eq!(backend.request_count(), 7);
}

#[test]
fn panics_that_keep_coming_stop_the_process_with_a_failure_status() {
    let backend = Backend::named("ok");
    let mut t = start(&backend);
    for _ in 0..11 {
        let mut c = Client::connect(t.addr);
        c.send(format!("GET {PANIC_PATH} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert!(c.try_read_response(false).is_none());
    }
    t.wait_log("11 panics within 1m; stopping so the supervisor restarts tether");
    assert_eq!(t.wait_exit(), Some(1), "exit status for the supervisor");
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn without_the_variable_the_path_is_an_ordinary_request() {
    let backend = Backend::named("ok");
    let t = Tether::start(&config_for(&[backend.addr], ""));
    assert_eq!(get(t.addr, PANIC_PATH).status, 200);
    assert!(
        !t.log_lines().iter().any(|l| l.contains("panic")),
        "{:#?}",
        t.log_lines()
    );
}
