//! Usage metering per tenant, end to end (issue #15): requests spread over three real nodes, one of them
//! killed with -9 in the middle, are counted exactly once each, cluster-wide, with the bytes the clients
//! sent and received; and a quota refuses the request over it, naming the quota.

mod common;

use common::login::*;

use common::cluster::*;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The usage report's figure (CSV: period,start,tenant,metric,value).
fn figure(csv: &str, period: &str, tenant: &str, metric: &str) -> u64 {
    csv.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 5 && f[0] == period && f[2] == tenant && f[3] == metric)
                .then(|| f[4].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {period} {tenant} {metric} in:\n{csv}"))
}

/// Asks `t` for its report (SIGUSR1) and reads the file it writes.
fn report(t: &Tether, file: &std::path::Path) -> String {
    let _ = std::fs::remove_file(file);
    t.signal("USR1");
    wait_until("the usage report", || file.exists());
    std::fs::read_to_string(file).unwrap()
}

#[test]
fn requests_over_three_nodes_with_one_killed_are_counted_exactly() {
    let backend = Backend::named("inbox");
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b,c");
    let usage = dir.path().join("usage.csv");
    let configs: Vec<String> = mesh_configs(&["a", "b", "c"], dir.path(), &[backend.addr])
        .into_iter()
        .map(|c| {
            format!(
                "{c}\n[metering]\nfile = \"{}\"\n[pools.acme]\nusers = \"{}\"\n\n[[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\n",
                usage.display(),
                users_file()
            )
        })
        .collect();
    let mut nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_peer(&nodes[0], "b", "up");
    wait_peer(&nodes[0], "c", "up");
    wait_peer(&nodes[1], "c", "up");
    let cookie = login_cookie_at(nodes[0].addr, "test");

    let (mut sent, mut received, mut count) = (0u64, 0u64, 0u64);
    let mut send = |addr: SocketAddr, i: usize| {
        let body = "x".repeat(i % 50);
        let request = format!(
            "POST /mail/msg/{i} HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (s, r, status) = close_exchange(addr, request.as_bytes());
        assert_eq!(status, 200);
        sent += s;
        received += r;
        count += 1;
    };
    // First half over all three nodes.
    for i in 0..60 {
        send(nodes[i % 3].addr, i);
    }
    // Node c is killed once what it answered was flushed (a worker hands its sums on every 10 ms, the
    // counters are written every 10 ms, and a peer has them a few ms later).
    std::thread::sleep(Duration::from_millis(300));
    nodes[2].kill();
    // Second half over the two left.
    for i in 60..120 {
        send(nodes[i % 2].addr, i);
    }
    std::thread::sleep(Duration::from_millis(300));
    for t in [&nodes[0], &nodes[1]] {
        let csv = report(t, &usage);
        // Every period holds the same figures (the minute may have turned during the test: not it).
        for period in ["day", "month"] {
            assert_eq!(figure(&csv, period, "acme", "requests"), count, "{csv}");
            assert_eq!(figure(&csv, period, "acme", "bytes_in"), sent, "{csv}");
            assert_eq!(figure(&csv, period, "acme", "bytes_out"), received, "{csv}");
            assert_eq!(figure(&csv, period, "acme", "logins"), 1, "{csv}");
            assert!(figure(&csv, period, "acme", "backend_us") > 0, "{csv}");
        }
    }
    assert_eq!(backend.request_count(), 120);
}

#[test]
fn a_quota_refuses_the_request_over_it_and_names_the_quota() {
    let backend = Backend::named("ok");
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [pools.acme]\nusers = \"{}\"\n\
         [[pools.acme.quotas]]\nmetric = \"requests\"\nperiod = \"month\"\nlimit = 5\n\
         [[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\n\
         [clusters.app]\nbackends = [{{ address = \"{}\" }}]\n",
        users_file(),
        backend.addr
    );
    let t = Tether::start(&config);
    let cookie = login_cookie_at(t.addr, "test");
    let mut ok = 0;
    for i in 0..5 {
        let r = raw_exchange(
            t.addr,
            format!("GET /mail/{i} HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
        );
        if r.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
    // The workers hand their counts on every 10 ms; then the sixth is over the quota.
    std::thread::sleep(Duration::from_millis(200));
    let r = raw_exchange(
        t.addr,
        format!("GET /mail/6 HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "quota_exceeded");
    assert_eq!(body["quota"]["metric"], "requests");
    assert_eq!(body["quota"]["period"], "month");
    assert_eq!(body["quota"]["limit"], 5);
    assert_eq!(
        backend.request_count(),
        5,
        "the refused request never reached the backend"
    );
}
