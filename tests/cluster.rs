//! End-to-end: cluster nodes (real `tether` processes) link up over mutually authenticated TLS, refuse a
//! node whose certificate comes from another CA, and see a killed peer go down and come back with a new
//! epoch.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Writes a cluster CA and node certificates with the real `tether certs cluster`.
fn cluster_certs(dir: &Path, nodes: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["certs", "cluster", "--nodes", nodes, "--out"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A node's config: one client listener, `[cluster]` with `peers`, certificates from `certs`.
fn node_config(
    name: &str,
    listen: SocketAddr,
    peers: &[(&str, SocketAddr)],
    certs: &Path,
    backend: SocketAddr,
) -> String {
    let peers: Vec<String> = peers
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect();
    let c = certs.display();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [cluster]\nname = \"test\"\nnode = \"{name}\"\nlisten = \"{listen}\"\nheartbeat = \"200ms\"\n\
         peers = [{}]\n\
         [cluster.tls]\nca = \"{c}/ca.crt\"\ncert = \"{c}/{name}.crt\"\nkey = \"{c}/{name}.key\"\n\
         [clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n\
         [[routes]]\ncluster = \"app\"\n",
        peers.join(", ")
    )
}

/// The `state=` and `epoch=` SIGUSR1 reports for `peer`, from the newest report line.
fn peer_report(t: &Tether, peer: &str) -> Option<(String, String)> {
    let needle = format!(" peer {peer} at ");
    let line = t
        .log_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("stats: cluster node") && l.contains(&needle))?;
    let field = |k: &str| {
        line.split(&format!(" {k}="))
            .nth(1)
            .map(|v| v.split(' ').next().unwrap_or("").to_string())
    };
    Some((field("state")?, field("epoch")?))
}

/// Waits until SIGUSR1 reports `peer` in `state` at `t`; returns the epoch reported.
fn wait_peer(t: &Tether, peer: &str, state: &str) -> String {
    wait_until(&format!("peer {peer} {state}"), || {
        t.signal("USR1");
        std::thread::sleep(std::time::Duration::from_millis(100));
        peer_report(t, peer).is_some_and(|(s, _)| s == state)
    });
    peer_report(t, peer).map(|(_, e)| e).unwrap_or_default()
}

#[test]
fn three_nodes_link_up_and_a_killed_peer_comes_back_with_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b,c");
    let backend = Backend::named("app");
    let addr = [dead_addr(), dead_addr(), dead_addr()];
    let names = ["a", "b", "c"];
    let config = |i: usize| {
        let peers: Vec<(&str, SocketAddr)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (names[j], addr[j]))
            .collect();
        node_config(names[i], addr[i], &peers, dir.path(), backend.addr)
    };
    let a = Tether::start(&config(0));
    let mut b = Tether::start(&config(1));
    let c = Tether::start(&config(2));
    let b_epoch = wait_peer(&a, "b", "up");
    wait_peer(&a, "c", "up");
    wait_peer(&b, "a", "up");
    wait_peer(&b, "c", "up");
    wait_peer(&c, "a", "up");
    wait_peer(&c, "b", "up");
    // The nodes still serve clients.
    assert_eq!(get(a.addr, "/").text(), "app");

    // kill -9: its peers see the link go down, and a restarted b links up again as a new process.
    b.kill();
    wait_peer(&a, "b", "down");
    wait_peer(&c, "b", "down");
    let b = Tether::start(&config(1));
    let new_epoch = wait_peer(&a, "b", "up");
    wait_peer(&c, "b", "up");
    wait_peer(&b, "a", "up");
    assert_ne!(new_epoch, b_epoch, "a restarted node has a new epoch");
}

#[test]
fn a_node_with_a_certificate_from_another_ca_is_refused_and_logged() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    cluster_certs(ours.path(), "a,b");
    // An impostor for b: a certificate named b, from another CA.
    cluster_certs(theirs.path(), "b");
    let backend = Backend::named("app");
    let (a_addr, b_addr) = (dead_addr(), dead_addr());
    let a = Tether::start(&node_config(
        "a",
        a_addr,
        &[("b", b_addr)],
        ours.path(),
        backend.addr,
    ));
    // The impostor trusts our CA (so it gets as far as presenting its own certificate) but holds a
    // certificate from the other CA.
    let impostor_certs = tempfile::tempdir().unwrap();
    std::fs::copy(
        ours.path().join("ca.crt"),
        impostor_certs.path().join("ca.crt"),
    )
    .unwrap();
    for f in ["b.crt", "b.key"] {
        std::fs::copy(theirs.path().join(f), impostor_certs.path().join(f)).unwrap();
    }
    let impostor = Tether::start(&node_config(
        "b",
        b_addr,
        &[("a", a_addr)],
        impostor_certs.path(),
        backend.addr,
    ));
    // a dials b (its name sorts first) and refuses the impostor's certificate; the impostor never
    // gets a link up.
    let line = a.wait_log("refused: TLS handshake failed");
    assert!(line.contains("link with b"), "{line}");
    a.signal("USR1");
    impostor.signal("USR1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (state, _) = peer_report(&a, "b").expect("a reports b");
    assert_ne!(state, "up");
    assert_eq!(
        impostor.count_log("link with a up"),
        0,
        "the impostor never linked"
    );
    assert_eq!(a.count_log("link with b up"), 0);
}
