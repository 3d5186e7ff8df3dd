//! End-to-end: a request pins the config snapshot it was routed with and the backend it was given, so a
//! reload while it waits in a QoS queue changes nothing it holds, and every QoS slot is given back.
//!
//! The outage these guard against: a request queued for a backend slot, a reload that reordered the
//! clusters (a new one sorting before), and the request answered 503 while the slot it held was never
//! given back — every later request to that backend waited `queue_timeout` and got 503 until a restart.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// One worker, one backend limited to one request in flight, no idle pool (every request connects), and
/// a long queue timeout (a leaked slot shows as a 503 after it, which the tests would see).
fn config(clusters_before: &str, backend: SocketAddr, extra_routes: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[access_log]\nformat = \"json\"\n\
         [workers]\nupstream_idle_pool = 0\n\
         {extra_routes}\
         [[routes]]\npath_prefix = \"/\"\ncluster = \"web\"\n\
         {clusters_before}\
         [clusters.web]\nmax_inflight = 1\nretries = 0\nqueue_timeout = \"5s\"\n\
         backends = [{{ address = \"{backend}\" }}]\n"
    )
}

/// A backend whose `/slow` requests wait for the gate; everything else answers at once.
fn gated_backend(name: &str, gate: Gate) -> Backend {
    let name = name.to_string();
    Backend::start(move |req, _| {
        if req.path.starts_with("/slow") {
            gate.wait();
        }
        Some(Reply::text(200, &format!("{name} {}", req.path)))
    })
}

/// Waits until SIGUSR1 reports `n` requests waiting in the QoS queues.
fn wait_queued(t: &Tether, n: u32) {
    wait_until(&format!("{n} queued request(s)"), || {
        t.signal("USR1");
        std::thread::sleep(Duration::from_millis(50));
        t.log_lines().iter().rev().take(30).any(|l| {
            l.contains("stats: qos")
                && l.split("waiting_by_class=[")
                    .nth(1)
                    .and_then(|r| r.split(']').next())
                    .map(|v| {
                        v.split(", ")
                            .filter_map(|x| x.parse::<u32>().ok())
                            .sum::<u32>()
                    })
                    == Some(n)
        })
    });
}

/// Waits until SIGUSR1 reports every backend at `inflight=0`: every slot was given back.
fn wait_no_slot_held(t: &Tether) {
    wait_until("every QoS slot given back (inflight=0)", || {
        let before = t.log_lines().len();
        t.signal("USR1");
        std::thread::sleep(Duration::from_millis(100));
        let lines = t.log_lines();
        let report: Vec<&String> = lines[before..]
            .iter()
            .filter(|l| l.contains("stats: cluster") && l.contains("inflight="))
            .collect();
        !report.is_empty() && report.iter().all(|l| l.contains("inflight=0 "))
    });
}

fn reload(t: &Tether, config: &str, generation: u32) {
    t.write_config(config);
    t.signal("HUP");
    t.wait_log(&format!("(generation {generation})"));
}

#[test]
fn a_reload_that_reorders_clusters_leaves_a_queued_request_its_backend_and_slot() {
    let gate = Gate::default();
    let b = gated_backend("b", gate.clone());
    let other = Backend::named("other");
    let before = config("", b.addr, "");
    let t = Tether::start(&before);

    let slow = std::thread::spawn({
        let addr = t.addr;
        move || get(addr, "/slow")
    });
    wait_until("the slow request to hold the slot", || {
        b.request_count() == 1
    });
    let queued = std::thread::spawn({
        let addr = t.addr;
        move || get(addr, "/queued")
    });
    wait_queued(&t, 1);

    // A new cluster whose name sorts before `web`: `web` moves from index 0 to index 1.
    let after = config(
        &format!(
            "[clusters.aaa]\nbackends = [{{ address = \"{}\" }}]\n",
            other.addr
        ),
        b.addr,
        "[[routes]]\npath_prefix = \"/other\"\ncluster = \"aaa\"\n",
    );
    reload(&t, &after, 2);
    gate.open();

    let slow = slow.join().unwrap();
    let queued = queued.join().unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(queued.text(), "b /queued");

    // Nothing leaked: ten more requests are served at once, none waits out the queue timeout.
    for i in 0..10 {
        let r = get(t.addr, &format!("/after/{i}"));
        assert_eq!(r.status, 200, "request {i} after the reload: {}", r.text());
    }
    assert_eq!(get(t.addr, "/other").text(), "other");
    wait_no_slot_held(&t);
    let lines = t.access_lines(13);
    assert!(
        lines
            .iter()
            .all(|l| json_fields(l)["termination"] == "completed"),
        "{lines:#?}"
    );
}

#[test]
fn a_reload_that_removes_the_queued_requests_cluster_still_serves_it_from_the_pinned_config() {
    let gate = Gate::default();
    let b = gated_backend("b", gate.clone());
    let c = Backend::named("c");
    let t = Tether::start(&config("", b.addr, ""));

    let slow = std::thread::spawn({
        let addr = t.addr;
        move || get(addr, "/slow")
    });
    wait_until("the slow request to hold the slot", || {
        b.request_count() == 1
    });
    let queued = std::thread::spawn({
        let addr = t.addr;
        move || get(addr, "/queued")
    });
    wait_queued(&t, 1);

    // `web` is gone: its route now leads to a new cluster on another backend.
    let after = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[access_log]\nformat = \"json\"\n\
         [workers]\nupstream_idle_pool = 0\n\
         [[routes]]\npath_prefix = \"/\"\ncluster = \"fresh\"\n\
         [clusters.fresh]\nbackends = [{{ address = \"{}\" }}]\n",
        c.addr
    );
    reload(&t, &after, 2);
    gate.open();
    assert_eq!(slow.join().unwrap().status, 200);
    let queued = queued.join().unwrap();
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(
        queued.text(),
        "b /queued",
        "served where it was routed before the reload"
    );
    for i in 0..5 {
        assert_eq!(get(t.addr, &format!("/n/{i}")).text(), "c");
    }
    wait_no_slot_held(&t);
}

#[test]
fn a_reload_that_moves_the_backend_to_another_address_serves_the_queued_request_and_leaks_no_slot()
{
    let gate = Gate::default();
    let b = gated_backend("b", gate.clone());
    let moved = Backend::named("moved");
    let t = Tether::start(&config("", b.addr, ""));

    let slow = std::thread::spawn({
        let addr = t.addr;
        move || get(addr, "/slow")
    });
    wait_until("the slow request to hold the slot", || {
        b.request_count() == 1
    });
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let addr = t.addr;
            std::thread::spawn(move || get(addr, &format!("/queued/{i}")))
        })
        .collect();
    wait_queued(&t, 3);

    reload(&t, &config("", moved.addr, ""), 2);
    gate.open();
    assert_eq!(slow.join().unwrap().status, 200);
    for q in queued {
        let r = q.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().starts_with("b /queued/"), "{}", r.text());
    }
    for i in 0..5 {
        assert_eq!(get(t.addr, &format!("/new/{i}")).text(), "moved");
    }
    wait_no_slot_held(&t);
}

#[test]
fn slots_are_given_back_when_queued_clients_leave_or_time_out() {
    let gate = Gate::default();
    let b = gated_backend("b", gate.clone());
    let config =
        config("", b.addr, "").replace("queue_timeout = \"5s\"", "queue_timeout = \"300ms\"");
    let t = Tether::start(&config);
    let slow = std::thread::spawn({
        let addr = t.addr;
        move || get(addr, "/slow")
    });
    wait_until("the slow request to hold the slot", || {
        b.request_count() == 1
    });
    // Two queued clients hang up, one waits out the queue timeout.
    for i in 0..2 {
        let mut c = Client::connect(t.addr);
        c.send(format!("GET /gone/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        wait_queued(&t, 1);
        drop(c);
        wait_queued(&t, 0);
    }
    assert_eq!(get(t.addr, "/late").status, 503);
    gate.open();
    assert_eq!(slow.join().unwrap().status, 200);
    for i in 0..5 {
        assert_eq!(get(t.addr, &format!("/ok/{i}")).status, 200);
    }
    wait_no_slot_held(&t);
    assert_eq!(b.request_count(), 6, "the slow one and five after it");
}
