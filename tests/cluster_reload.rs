//! End-to-end: SIGHUP with a changed `[cluster]` (real `tether` processes on loopback). A reload that keeps
//! a peer keeps its link (no new link, same epoch, same records); an added peer is linked and synced; a
//! removed peer's link closes and its hellos are refused; a changed sync policy applies to the next write,
//! and a changed replication address waits for a restart.

mod common;

use common::cluster::*;
use common::*;
use std::net::SocketAddr;

/// `links_up=` and `epoch=` of a new SIGUSR1 report of `t` about `peer`.
fn link_report(t: &Tether, peer: &str) -> (u64, String) {
    let line = fresh_peer_line(t, peer);
    (
        report_field(&line, "links_up").unwrap().parse().unwrap(),
        report_field(&line, "epoch").unwrap(),
    )
}

/// The lines of a new SIGUSR1 report of `t`, whole: from its first line (the request counters) to its
/// session-table line (after every cluster line).
fn fresh_report(t: &Tether) -> Vec<String> {
    let end = |l: &String| l.contains("stats: sessions entries=");
    let before = t.log_lines().iter().filter(|l| end(l)).count();
    t.signal("USR1");
    wait_until("a new report", || {
        t.log_lines().iter().filter(|l| end(l)).count() > before
    });
    let lines = t.log_lines();
    let last = lines.iter().rposition(end).unwrap();
    let first = lines[..last]
        .iter()
        .rposition(|l| l.contains("stats: requests total="))
        .unwrap();
    lines[first..=last].to_vec()
}

/// Sends SIGHUP and waits for the `n`th "reloaded" line (counting every reload of `t` so far).
fn reload(t: &Tether, n: usize) {
    t.signal("HUP");
    wait_until(&format!("reload {n}"), || t.count_log("(generation ") >= n);
}

#[test]
fn a_reload_keeps_the_links_and_records_of_peers_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let backend = session_backend("one");
    let (a_addr, b_addr) = (repl_addr(), repl_addr());
    let a_config = node_config("a", a_addr, &[("b", b_addr)], dir.path(), &[backend.addr]);
    let b_config = node_config("b", b_addr, &[("a", a_addr)], dir.path(), &[backend.addr]);
    let a = Tether::start(&a_config);
    let b = Tether::start(&b_config);
    wait_peer(&a, "b", "up");
    wait_peer(&b, "a", "up");
    assert_eq!(load_sessions(a.addr, 2, 5), 10);
    let digest = wait_converged(&[&a, &b], 10);
    let before = [link_report(&a, "b"), link_report(&b, "a")];
    assert_eq!((before[0].0, before[1].0), (1, 1), "one link each way");
    let stores = [fresh_store_line(&a), fresh_store_line(&b)];

    // First the same file, then a new heartbeat: neither touches the link or the store.
    let slower = |c: &str| c.replace("heartbeat = \"200ms\"", "heartbeat = \"300ms\"");
    for (n, (a_text, b_text)) in [
        (a_config.clone(), b_config.clone()),
        (slower(&a_config), slower(&b_config)),
    ]
    .into_iter()
    .enumerate()
    {
        a.write_config(&a_text);
        b.write_config(&b_text);
        reload(&a, n + 1);
        reload(&b, n + 1);
        let after = [link_report(&a, "b"), link_report(&b, "a")];
        assert_eq!(
            after, before,
            "same link (links_up) with the same process (epoch)"
        );
        assert_eq!([fresh_store_line(&a), fresh_store_line(&b)], stores);
    }
    a.wait_log("reloaded: 1 peer(s); added [], removed [], new address []; heartbeat 300ms");
    assert_eq!(
        a.count_log("cluster test: reloaded:"),
        1,
        "an unchanged [cluster] is not handed to the replication thread"
    );
    assert_eq!(a.count_log("need a restart"), 0);
    // Writes still flow both ways on the kept link.
    assert_eq!(load_sessions(b.addr, 1, 3), 3);
    assert_ne!(wait_converged(&[&a, &b], 13), digest);
    assert_eq!(link_report(&a, "b").0, 1);
}

#[test]
fn an_added_peer_is_linked_and_synced_and_a_removed_one_is_closed_and_refused() {
    // c sorts between b and d: b dials c, and c dials d — so once d drops c, c's redials reach d's
    // greeting check.
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "b,c,d");
    let backend = session_backend("one");
    let (b_addr, c_addr, d_addr) = (repl_addr(), repl_addr(), repl_addr());
    let config = |name: &str, listen: SocketAddr, peers: &[(&str, SocketAddr)]| {
        node_config(name, listen, peers, dir.path(), &[backend.addr])
    };
    let b = Tether::start(&config("b", b_addr, &[("d", d_addr)]));
    let d = Tether::start(&config("d", d_addr, &[("b", b_addr)]));
    wait_peer(&b, "d", "up");
    assert_eq!(load_sessions(b.addr, 2, 4), 8);
    let digest = wait_converged(&[&b, &d], 8);

    // c joins the config of both, then starts: both link with it, and it gets every record.
    b.write_config(&config("b", b_addr, &[("d", d_addr), ("c", c_addr)]));
    d.write_config(&config("d", d_addr, &[("b", b_addr), ("c", c_addr)]));
    reload(&b, 1);
    reload(&d, 1);
    b.wait_log("reloaded: 2 peer(s); added [c], removed []");
    d.wait_log("reloaded: 2 peer(s); added [c], removed []");
    let c = Tether::start(&config("c", c_addr, &[("b", b_addr), ("d", d_addr)]));
    wait_peer(&b, "c", "up");
    wait_peer(&d, "c", "up");
    wait_peer(&c, "b", "up");
    wait_peer(&c, "d", "up");
    assert_eq!(wait_converged(&[&b, &c, &d], 8), digest);
    assert_eq!(link_report(&b, "d").0, 1, "the b-d link stayed up");

    // d drops c: the link closes with the reason, and c's redials are refused at the greeting.
    d.write_config(&config("d", d_addr, &[("b", b_addr)]));
    reload(&d, 2);
    let closed = d.wait_log("link with c closed:");
    assert!(closed.contains("removed from the config"), "{closed}");
    let refused = d.wait_log("node \"c\" is not among this node's [cluster] peers");
    assert!(refused.contains("refused \"c\""), "{refused}");
    c.wait_log("link with d refused: the peer refused this node");
    wait_until("c reports refusals by d", || {
        report_field(&fresh_peer_line(&c, "d"), "refused")
            .is_some_and(|n| n.parse::<u64>().unwrap() >= 1)
    });
    // d no longer reports c; b and c stay linked, and d keeps every record.
    let report = fresh_report(&d);
    assert!(
        report.iter().any(|l| l.contains(" peer b at ")),
        "{report:?}"
    );
    assert!(
        !report.iter().any(|l| l.contains(" peer c at ")),
        "{report:?}"
    );
    assert_eq!(link_report(&b, "c").0, 1);
    assert_eq!(fresh_store_line(&d).bindings, 8);
    assert_eq!(link_report(&d, "b").0, 1, "the d-b link was not touched");
}

#[test]
fn a_reload_changes_the_sync_write_policy() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let backend = Backend::named("app");
    // b is never started: no peer acknowledges a sync write.
    let (a_addr, b_addr) = (repl_addr(), repl_addr());
    let config = |listen: SocketAddr, policy: &str| {
        node_config("a", listen, &[("b", b_addr)], dir.path(), &[backend.addr]).replacen(
            "ready_timeout",
            &format!("sync_timeout = \"200ms\"\non_sync_timeout = \"{policy}\"\nready_timeout"),
            1,
        )
    };
    let a = Tether::start_with_env(
        &config(a_addr, "fail"),
        &["--workers", "1"],
        &[("TETHER_TEST_ENDPOINTS", "1")],
    );
    assert_eq!(get(a.addr, "/.tether/test/sync?key=one").status, 503);
    // The listen address cannot change under a running node: that part waits for a restart, the
    // policy applies.
    a.write_config(&config(repl_addr(), "degrade"));
    reload(&a, 1);
    a.wait_log("reload: changes to cluster.listen need a restart and are ignored");
    let r = get(a.addr, "/.tether/test/sync?key=two");
    assert_eq!((r.status, r.text().as_str()), (200, "degraded\n"));
}

#[test]
fn a_peer_with_a_new_address_is_closed_and_dialled_there() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let backend = session_backend("one");
    let (a_addr, b_addr) = (repl_addr(), repl_addr());
    let a_config =
        |b_at: SocketAddr| node_config("a", a_addr, &[("b", b_at)], dir.path(), &[backend.addr]);
    let a = Tether::start(&a_config(b_addr));
    let b = Tether::start(&node_config(
        "b",
        b_addr,
        &[("a", a_addr)],
        dir.path(),
        &[backend.addr],
    ));
    let epoch = wait_peer(&a, "b", "up");
    assert_eq!(load_sessions(a.addr, 1, 4), 4);
    let digest = wait_converged(&[&a, &b], 4);
    // b is now reached through a relay (a dials b: its name sorts first).
    let relay = Relay::start(b_addr);
    a.write_config(&a_config(relay.addr));
    reload(&a, 1);
    let closed = a.wait_log("link with b closed:");
    assert!(
        closed.contains(&format!("its address changed to {}", relay.addr)),
        "{closed}"
    );
    wait_until("a second link with b", || link_report(&a, "b").0 == 2);
    assert!(relay.connected.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let line = fresh_peer_line(&a, "b");
    assert_eq!(report_field(&line, "state").unwrap(), "up");
    assert_eq!(
        report_field(&line, "epoch").unwrap(),
        epoch,
        "the same process"
    );
    assert!(line.contains(&format!(" at {} ", relay.addr)), "{line}");
    assert_eq!(wait_converged(&[&a, &b], 4), digest);
}
