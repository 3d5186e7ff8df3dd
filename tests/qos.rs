//! End-to-end QoS: a backend limited to one request in flight; waiting requests are served by priority,
//! aging lets a long-waiting low one through, and queue timeouts and full queues answer 503.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Routes: /block (priority 7, to hold the slot), /high (priority 6), /low (priority 0); the cluster
/// allows one request in flight.
fn qos_config(backend: SocketAddr, cluster_extra: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[access_log]\nformat = \"json\"\n{extra}\n\
         [[routes]]\npath_prefix = \"/block\"\ncluster = \"app\"\npriority = 7\n\
         [[routes]]\npath_prefix = \"/high\"\ncluster = \"app\"\npriority = 6\n\
         [[routes]]\npath_prefix = \"/low\"\ncluster = \"app\"\npriority = 0\n\
         [clusters.app]\nmax_inflight = 1\nretries = 0\n{cluster_extra}\nbackends = [{{ address = \"{backend}\" }}]\n"
    )
}

/// A backend that records the order requests reach it; `/block` waits for the gate.
fn recording_backend(gate: Gate) -> (Backend, Arc<Mutex<Vec<String>>>) {
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let b = Backend::start(move |req, _| {
        o.lock().unwrap().push(req.path.clone());
        if req.path.starts_with("/block") {
            gate.wait();
        }
        Some(Reply::text(200, &req.path))
    });
    (b, order)
}

/// Sends a GET on its own connection from a thread; returns the thread's handle.
fn spawn_get(addr: SocketAddr, path: String) -> std::thread::JoinHandle<Response> {
    std::thread::spawn(move || get(addr, &path))
}

#[test]
fn every_high_priority_request_is_served_before_any_waiting_low_one() {
    let gate = Gate::default();
    let (b, order) = recording_backend(gate.clone());
    // Aging far longer than the test: pure strict priority.
    let t = Tether::start(&qos_config(b.addr, "", "[qos]\naging = \"1h\""));
    let blocker = spawn_get(t.addr, "/block".into());
    wait_until("the blocker to hold the slot", || b.request_count() == 1);
    let mut waiting = Vec::new();
    for i in 0..20 {
        waiting.push(spawn_get(t.addr, format!("/low/{i}")));
        waiting.push(spawn_get(t.addr, format!("/high/{i}")));
    }
    t.wait_queued(40);
    gate.open();
    assert_eq!(blocker.join().unwrap().status, 200);
    for h in waiting {
        assert_eq!(h.join().unwrap().status, 200);
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 41);
    let last_high = order.iter().rposition(|p| p.starts_with("/high")).unwrap();
    let first_low = order.iter().position(|p| p.starts_with("/low")).unwrap();
    assert!(
        last_high < first_low,
        "a low request overtook a high one: {order:?}"
    );
    t.signal("USR1");
    let line = t.wait_log("granted=40");
    assert!(line.contains("wait_p99_us="), "{line}");
}

#[test]
fn aging_lets_a_long_waiting_low_request_through_within_its_bound() {
    let gate = Gate::default();
    let (b, order) = recording_backend(gate.clone());
    // One level per 20 ms: a low request outranks fresh high ones after 7 levels (140 ms).
    let t = Tether::start(&qos_config(b.addr, "", "[qos]\naging = \"20ms\""));
    let blocker = spawn_get(t.addr, "/block".into());
    wait_until("the blocker to hold the slot", || b.request_count() == 1);
    let low = spawn_get(t.addr, "/low/old".into());
    t.wait_queued(1);
    // Well past the aging bound, a crowd of high-priority requests arrives.
    std::thread::sleep(Duration::from_millis(400));
    let highs: Vec<_> = (0..10)
        .map(|i| spawn_get(t.addr, format!("/high/{i}")))
        .collect();
    t.wait_queued(11);
    gate.open();
    blocker.join().unwrap();
    assert_eq!(low.join().unwrap().status, 200);
    for h in highs {
        h.join().unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order[1], "/low/old",
        "the aged low request goes first: {order:?}"
    );
}

#[test]
fn a_request_that_waits_past_the_queue_timeout_gets_503() {
    let gate = Gate::default();
    let (b, _) = recording_backend(gate.clone());
    let t = Tether::start(&qos_config(b.addr, "queue_timeout = \"300ms\"", ""));
    let blocker = spawn_get(t.addr, "/block".into());
    wait_until("the blocker to hold the slot", || b.request_count() == 1);
    let r = get(t.addr, "/high/late");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    gate.open();
    assert_eq!(blocker.join().unwrap().status, 200);
    let lines = t.access_lines(2);
    let f = lines
        .iter()
        .map(|l| json_fields(l))
        .find(|f| f["termination"] == "queue_timeout")
        .expect("a queue_timeout line");
    assert_ne!(f["queue_us"], "null");
    assert_eq!(
        b.request_count(),
        1,
        "the timed-out request never reached the backend"
    );
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let gate = Gate::default();
    let (b, _) = recording_backend(gate.clone());
    let t = Tether::start(&qos_config(b.addr, "max_queue = 1", ""));
    let blocker = spawn_get(t.addr, "/block".into());
    wait_until("the blocker to hold the slot", || b.request_count() == 1);
    let queued = spawn_get(t.addr, "/high/queued".into());
    t.wait_queued(1);
    let r = get(t.addr, "/high/refused");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("queue full"), "{}", r.text());
    gate.open();
    assert_eq!(blocker.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
}

#[test]
fn a_slot_freed_on_one_worker_wakes_a_request_waiting_on_another() {
    let gate = Gate::default();
    let (b, order) = recording_backend(gate.clone());
    let t = Tether::start_with(
        &qos_config(b.addr, "", "[qos]\naging = \"1h\""),
        &["--workers", "2"],
    );
    let blocker = spawn_get(t.addr, "/block".into());
    wait_until("the blocker to hold the slot", || b.request_count() == 1);
    // Connections spread over both workers (SO_REUSEPORT); each waits for the single slot.
    let waiting: Vec<_> = (0..12)
        .map(|i| spawn_get(t.addr, format!("/high/{i}")))
        .collect();
    t.wait_queued(12);
    gate.open();
    blocker.join().unwrap();
    for h in waiting {
        assert_eq!(h.join().unwrap().status, 200);
    }
    assert_eq!(order.lock().unwrap().len(), 13);
}
