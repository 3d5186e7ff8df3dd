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

/// Requests on their own connections, each from a thread.
type Pending = Vec<std::thread::JoinHandle<Response>>;

/// A slow request takes the backend's only slot, then `queued` requests wait for it. Returns the slow
/// one and the queued ones.
fn hold_slot_and_queue(t: &Tether, b: &Backend, queued: &[&str]) -> (Pending, Pending) {
    let spawn = |path: String| {
        let addr = t.addr;
        std::thread::spawn(move || get(addr, &path))
    };
    let slow = vec![spawn("/slow".into())];
    wait_until("the slow request to hold the slot", || {
        b.request_count() == 1
    });
    let waiting: Pending = queued.iter().map(|p| spawn(p.to_string())).collect();
    t.wait_queued(queued.len() as u32);
    (slow, waiting)
}

/// Joins requests; each must have been answered 200 with a body starting with `prefix`.
fn all_served(requests: Pending, prefix: &str) {
    for r in requests {
        let r = r.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().starts_with(prefix), "{}", r.text());
    }
}

#[test]
fn a_reload_that_reorders_clusters_leaves_a_queued_request_its_backend_and_slot() {
    let gate = Gate::default();
    let b = gated_backend("b", gate.clone());
    let other = Backend::named("other");
    let t = Tether::start(&config("", b.addr, ""));
    let (slow, queued) = hold_slot_and_queue(&t, &b, &["/queued"]);

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

    all_served(slow, "b /slow");
    all_served(queued, "b /queued");

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
    let (slow, queued) = hold_slot_and_queue(&t, &b, &["/queued"]);

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
    all_served(slow, "b /slow");
    // Served where it was routed before the reload.
    all_served(queued, "b /queued");
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
    let (slow, queued) = hold_slot_and_queue(&t, &b, &["/queued/0", "/queued/1", "/queued/2"]);

    reload(&t, &config("", moved.addr, ""), 2);
    gate.open();
    all_served(slow, "b /slow");
    all_served(queued, "b /queued/");
    for i in 0..5 {
        assert_eq!(get(t.addr, &format!("/new/{i}")).text(), "moved");
    }
    wait_no_slot_held(&t);
}

#[test]
fn a_queued_client_that_hangs_up_gives_its_place_and_slot_back() {
    let gate = Gate::default();
    let b = gated_backend("b", gate.clone());
    let t = Tether::start(&config("", b.addr, ""));
    let (slow, _) = hold_slot_and_queue(&t, &b, &[]);
    for i in 0..2 {
        let mut c = Client::connect(t.addr);
        c.send(format!("GET /gone/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        t.wait_queued(1);
        drop(c);
        t.wait_queued(0);
    }
    gate.open();
    all_served(slow, "b /slow");
    for i in 0..5 {
        assert_eq!(get(t.addr, &format!("/ok/{i}")).status, 200);
    }
    wait_no_slot_held(&t);
    assert_eq!(
        b.request_count(),
        6,
        "the slow one and five after it; never the two that left"
    );
    let gone: Vec<String> = t
        .access_lines(8)
        .into_iter()
        .filter(|l| l.contains("/gone/"))
        .collect();
    assert_eq!(gone.len(), 2, "{gone:#?}");
    for l in gone {
        // Given up when the client left, not after the 5 s queue timeout.
        assert_eq!(json_fields(&l)["termination"], "client_closed", "{l}");
    }
}
