//! Account and address lockout, end to end (issue #15): real `tether` binaries, the example users file.
//! Failures spread over three nodes lock the account on every node, a locked account answers a right and
//! a wrong password alike (and the right one works again once the wait is over), concurrent correct logins
//! all succeed, and a locked address refuses every name. Waits are short (seconds); the tests wait on the
//! real clock for a lock to lift but assert outcomes only.

mod common;

use common::login::*;

use common::cluster::*;
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// One node with the demo pool, an open route, and `lockout` as `[pools.demo.lockout]`.
fn single(backend: SocketAddr, lockout: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [pools.demo]\nusers = \"{}\"\n\n[pools.demo.lockout]\n{lockout}\n\n\
         [[routes]]\ncluster = \"app\"\n\n\
         [clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n",
        users_file()
    )
}

/// A login page's error line (the page itself differs per answer: a fresh CSRF token).
fn page_error(r: &Response) -> bool {
    r.text().contains("Wrong username or password.")
}

/// Every failure counts; the account locks at the 30th for 3 s (addresses are not locked here: the three
/// nodes' clients all come from 127.0.0.1).
const CLUSTER_LOCKOUT: &str = "failures = 30\nwait_increment = \"3s\"\nmax_wait = \"3s\"\n\
    quick_login_check = \"0s\"\nreset_after = \"1m\"\nper_address = false\n";

#[test]
fn failures_on_three_nodes_lock_the_account_on_every_node_until_the_wait_ends() {
    let backend = Backend::named("app");
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b,c");
    let configs: Vec<String> = mesh_configs(&["a", "b", "c"], dir.path(), &[backend.addr])
        .into_iter()
        .map(|c| {
            format!(
                "{c}\n[pools.demo]\nusers = \"{}\"\n\n[pools.demo.lockout]\n{CLUSTER_LOCKOUT}\n",
                users_file()
            )
        })
        .collect();
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_peer(&nodes[0], "b", "up");
    wait_peer(&nodes[0], "c", "up");
    wait_peer(&nodes[1], "c", "up");

    // 29 failures, 10 + 10 + 9: below the factor on every node, whatever it has seen of the others.
    for (i, node) in nodes.iter().enumerate() {
        for _ in 0..if i == 2 { 9 } else { 10 } {
            let r = form_login(node.addr, "alice", "wrong-password");
            assert_eq!(r.status, 401, "{}", r.text());
        }
    }
    // Replication of the others' shares (10 ms flushes) before the count matters.
    std::thread::sleep(Duration::from_millis(300));
    let ok = form_login(nodes[0].addr, "alice", "tether-demo");
    assert_eq!(ok.status, 303, "29 failures do not lock: {}", ok.text());

    // The 30th, at the third node: no node counted 30 itself, the cluster did.
    assert_eq!(form_login(nodes[2].addr, "alice", "wrong").status, 401);
    std::thread::sleep(Duration::from_millis(300));
    for node in &nodes {
        let right = form_login(node.addr, "alice", "tether-demo");
        let wrong = form_login(node.addr, "alice", "still-wrong");
        for r in [&right, &wrong] {
            assert_eq!(r.status, 401, "locked: {}", r.text());
            assert!(page_error(r), "{}", r.text());
            assert!(
                r.header("retry-after").is_none(),
                "no Retry-After on the page"
            );
        }
        // JSON: the same answer, body and all, with Retry-After.
        let right = json_login(node.addr, "alice", "tether-demo");
        let wrong = json_login(node.addr, "alice", "still-wrong");
        assert_eq!((right.status, wrong.status), (401, 401));
        assert_eq!(right.body, wrong.body);
        for r in [&right, &wrong] {
            let secs: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("Retry-After: {:?}", r.headers));
            assert!((1..=3).contains(&secs), "{secs}");
        }
        // Another account is not locked.
        assert_eq!(form_login(node.addr, "bob", "tether-demo").status, 303);
    }

    // The lock lifts once the wait is over (refused logins are not failures: they do not extend it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    loop {
        let r = form_login(nodes[1].addr, "alice", "tether-demo");
        if r.status == 303 {
            break;
        }
        assert_eq!(r.status, 401);
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "still locked after {refused} tries"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for node in &nodes {
        assert_eq!(form_login(node.addr, "alice", "tether-demo").status, 303);
    }
}

#[test]
fn twenty_concurrent_correct_logins_all_succeed() {
    let backend = Backend::named("app");
    let t = Tether::start(&single(backend.addr, "failures = 3\n"));
    // A failure on record: the account is counted, not locked.
    assert_eq!(form_login(t.addr, "alice", "wrong").status, 401);
    let barrier = Arc::new(Barrier::new(20));
    let logins: Vec<_> = (0..20)
        .map(|_| {
            let (barrier, addr) = (barrier.clone(), t.addr);
            std::thread::spawn(move || {
                barrier.wait();
                form_login(addr, "alice", "tether-demo").status
            })
        })
        .collect();
    let statuses: Vec<u16> = logins.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(statuses, vec![303; 20]);
}

#[test]
fn quick_failures_and_a_failing_address_lock() {
    let backend = Backend::named("app");
    // Quick check on for accounts; addresses lock after 4 failures, whatever the names.
    let t = Tether::start(&single(
        backend.addr,
        "failures = 100\nwait_increment = \"1m\"\nmax_wait = \"1m\"\nquick_login_check = \"5s\"\n\
         min_quick_wait = \"1m\"\naddress_failures = 4\n",
    ));
    // Two failures in quick succession lock alice at once; bob is still open.
    assert_eq!(form_login(t.addr, "alice", "wrong").status, 401);
    assert_eq!(form_login(t.addr, "alice", "wrong").status, 401);
    let locked = json_login(t.addr, "alice", "tether-demo");
    assert_eq!(locked.status, 401, "{}", locked.text());
    assert!(locked.header("retry-after").is_some());
    assert_eq!(form_login(t.addr, "bob", "tether-demo").status, 303);
    // Two unknown names bring the address to 4 failures: now bob is refused too, as a wrong password.
    assert_eq!(form_login(t.addr, "mallory", "x").status, 401);
    assert_eq!(form_login(t.addr, "trudy", "x").status, 401);
    let bob = json_login(t.addr, "bob", "tether-demo");
    let wrong = json_login(t.addr, "bob", "wrong");
    assert_eq!((bob.status, wrong.status), (401, 401));
    assert_eq!(bob.body, wrong.body);
    assert!(bob.header("retry-after").is_some());
}

#[test]
fn disabled_lockout_never_locks() {
    let backend = Backend::named("app");
    let t = Tether::start(&single(backend.addr, "enabled = false\n"));
    for _ in 0..30 {
        assert_eq!(form_login(t.addr, "alice", "wrong").status, 401);
    }
    assert_eq!(form_login(t.addr, "alice", "tether-demo").status, 303);
}
