//! End-to-end: cluster nodes (real `tether` processes) link up over mutually authenticated TLS and refuse a
//! node of another CA; a killed peer goes down and comes back with a new epoch; session bindings learned at
//! one node route at every node, also after kill -9, and a restarted node resyncs before it serves; TLS
//! tickets resume across nodes; sync writes wait for a peer's acknowledgement or follow their policy.

mod common;

use common::cluster::*;
use common::*;
use std::net::SocketAddr;
use std::process::Command;

#[test]
fn three_nodes_link_up_and_a_killed_peer_comes_back_with_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b,c");
    let backend = Backend::named("app");
    let addr = [repl_addr(), repl_addr(), repl_addr()];
    let names = ["a", "b", "c"];
    let config = |i: usize| {
        let peers: Vec<(&str, SocketAddr)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (names[j], addr[j]))
            .collect();
        node_config(names[i], addr[i], &peers, dir.path(), &[backend.addr])
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
    let (a_addr, b_addr) = (repl_addr(), repl_addr());
    let a = Tether::start(&node_config(
        "a",
        a_addr,
        &[("b", b_addr)],
        ours.path(),
        &[backend.addr],
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
        &[backend.addr],
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

/// Three nodes over two session backends; returns the nodes (a, b, c) and the config maker.
struct Mesh {
    _dir: tempfile::TempDir,
    configs: Vec<String>,
    _backends: [Backend; 2],
}

impl Mesh {
    fn new() -> Mesh {
        Mesh::with_sessions("")
    }

    /// A mesh whose nodes' `[sessions]` also hold `sessions` (TOML lines).
    fn with_sessions(sessions: &str) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        cluster_certs(dir.path(), "a,b,c");
        let backends = [session_backend("one"), session_backend("two")];
        let addrs = [backends[0].addr, backends[1].addr];
        let configs = mesh_configs(&["a", "b", "c"], dir.path(), &addrs)
            .into_iter()
            .map(|c| c.replace("[sessions]\n", &format!("[sessions]\n{sessions}")))
            .collect();
        Mesh {
            _dir: dir,
            configs,
            _backends: backends,
        }
    }

    fn start(&self, i: usize) -> Tether {
        Tether::start(&self.configs[i])
    }
}

/// Starts a session at `node` (the backend sets its cookie); returns the cookie and the backend's name.
fn new_session(node: SocketAddr) -> (String, String) {
    let r = get(node, "/app/start");
    assert_eq!(r.status, 200);
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, r.text())
}

/// Where a request with `cookie` lands at `node`.
fn served_by(node: SocketAddr, cookie: &str) -> String {
    let r = raw_exchange(
        node,
        format!(
            "GET /app/page HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    r.text()
}

#[test]
fn a_session_learned_at_one_node_is_routed_to_its_backend_by_every_node_even_after_kill_9() {
    let mesh = Mesh::new();
    let mut a = mesh.start(0);
    let b = mesh.start(1);
    let c = mesh.start(2);
    for (t, peer) in [(&a, "b"), (&a, "c"), (&b, "c")] {
        wait_peer(t, peer, "up");
    }
    // Sessions learned at a, on both backends (round robin alternates them), plus four more on "two":
    // a node that did not know them would balance them, and round robin would put some on "one".
    let mut sessions: Vec<(String, String)> = (0..6).map(|_| new_session(a.addr)).collect();
    assert!(sessions.iter().any(|(_, s)| s == "one") && sessions.iter().any(|(_, s)| s == "two"));
    sessions.extend(
        (0..8)
            .map(|_| new_session(a.addr))
            .filter(|(_, s)| s == "two"),
    );
    assert_eq!(sessions.len(), 10);
    let digest = wait_records(&b, 14);
    assert_eq!(wait_records(&c, 14), digest);
    assert_eq!(wait_records(&a, 14), digest);
    for (cookie, backend) in &sessions {
        for node in [b.addr, c.addr] {
            for _ in 0..3 {
                assert_eq!(&served_by(node, cookie), backend, "{cookie} at {node}");
            }
        }
    }
    // a dies without a word; its clients' next requests at b and c still reach their backends.
    a.kill();
    wait_peer(&b, "a", "down");
    for (cookie, backend) in &sessions {
        assert_eq!(&served_by(b.addr, cookie), backend);
        assert_eq!(&served_by(c.addr, cookie), backend);
    }
    // A restarted a (a new process, empty) learns everything from a snapshot of its peers before it
    // serves: its first report already holds every record.
    let a = mesh.start(0);
    a.wait_log("synced from a peer (");
    assert_eq!(wait_records(&a, 14), digest);
    for (cookie, backend) in &sessions {
        assert_eq!(&served_by(a.addr, cookie), backend);
    }
}

#[test]
fn a_session_in_use_for_longer_than_its_ttl_is_still_known_to_the_peers_when_its_node_dies() {
    // Bindings replicate with an absolute expiry a TTL after their write; a session kept busy at a must
    // not lapse in its peers' stores meanwhile (a refreshes the record half-way through the TTL).
    let mesh = Mesh::with_sessions("ttl = \"4s\"\n");
    let mut a = mesh.start(0);
    let b = mesh.start(1);
    wait_peer(&a, "b", "up");
    // Sessions all on one backend: were they unknown at b, its balancer would send half of them to the
    // other one.
    let sessions: Vec<(String, String)> = (0..12)
        .map(|_| new_session(a.addr))
        .filter(|(_, s)| s == "two")
        .collect();
    assert_eq!(sessions.len(), 6, "round robin alternates the backends");
    wait_records(&b, 12);
    // Busy at a for twice the TTL, a request a second each.
    for _ in 0..8 {
        for (cookie, backend) in &sessions {
            assert_eq!(&served_by(a.addr, cookie), backend);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    a.kill();
    wait_peer(&b, "a", "down");
    // b never served these sessions: it knows them from its store only (three requests each: an unbound
    // session would alternate between the backends).
    for (cookie, backend) in &sessions {
        for _ in 0..3 {
            assert_eq!(
                &served_by(b.addr, cookie),
                backend,
                "{cookie} at b after a died"
            );
        }
    }
}

#[test]
fn two_nodes_binding_a_thousand_sessions_each_end_with_the_same_two_thousand_everywhere() {
    let mesh = Mesh::new();
    let a = mesh.start(0);
    let b = mesh.start(1);
    let c = mesh.start(2);
    for (t, peer) in [(&a, "b"), (&a, "c"), (&b, "c")] {
        wait_peer(t, peer, "up");
    }
    let spawn = |node: SocketAddr| {
        std::thread::spawn(move || {
            let mut client = Client::connect(node);
            for _ in 0..1000 {
                client.send(b"GET /app/start HTTP/1.1\r\nHost: t\r\n\r\n");
                assert_eq!(client.read_response(false).status, 200);
            }
        })
    };
    let (ta, tb) = (spawn(a.addr), spawn(b.addr));
    ta.join().unwrap();
    tb.join().unwrap();
    let digest = wait_records(&a, 2000);
    assert_eq!(wait_records(&b, 2000), digest);
    assert_eq!(wait_records(&c, 2000), digest);
}

/// One HTTPS GET on a new connection; returns how the handshake went.
fn tls_get(
    addr: SocketAddr,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    tls.conn.handshake_kind()
}

#[test]
fn a_tls_session_ticket_issued_by_one_node_resumes_at_another() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let web = dir.path().join("web");
    let status = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["certs", "--out"])
        .arg(&web)
        .status()
        .unwrap();
    assert!(status.success());
    let backend = Backend::named("app");
    let (a_addr, b_addr) = (repl_addr(), repl_addr());
    let tls_listener = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{w}/localhost.crt\", key = \"{w}/localhost.key\" }}]\n",
        w = web.display()
    );
    // The nodes' configs with their one listener replaced by a TLS one.
    let config = |name: &str, listen: SocketAddr, peer: (&str, SocketAddr)| {
        node_config(name, listen, &[peer], dir.path(), &[backend.addr]).replacen(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n",
            &tls_listener,
            1,
        )
    };
    let a = Tether::start(&config("a", a_addr, ("b", b_addr)));
    let b = Tether::start(&config("b", b_addr, ("a", a_addr)));
    wait_peer(&a, "b", "up");
    wait_peer(&b, "a", "up");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(web.join("ca.crt")).unwrap())
        .unwrap();
    let cfg = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    // A full handshake at a (its ticket sealed with a cluster key), then the ticket resumes at b.
    assert_eq!(tls_get(a.addr, &cfg), Some(rustls::HandshakeKind::Full));
    assert_eq!(tls_get(b.addr, &cfg), Some(rustls::HandshakeKind::Resumed));
    // b's own counters: the resumption happened there, and b made no full handshake.
    b.signal("USR1");
    let line = b.wait_log("stats: tls handshakes full=0 resumed=1 ");
    assert!(line.contains("failed=0"), "{line}");
}

/// A node with the test endpoints on (for `/.tether/test/sync`).
fn start_with_test_endpoints(config: &str) -> Tether {
    Tether::start_with_env(
        config,
        &["--workers", "1"],
        &[("TETHER_TEST_ENDPOINTS", "1")],
    )
}

#[test]
fn a_sync_write_is_answered_once_a_peer_holds_it_and_fails_when_none_can() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let backend = Backend::named("app");
    let (a_addr, b_addr) = (repl_addr(), repl_addr());
    let sync = "sync_timeout = \"300ms\"\n";
    let a = start_with_test_endpoints(
        &node_config("a", a_addr, &[("b", b_addr)], dir.path(), &[backend.addr]).replacen(
            "ready_timeout",
            &format!("{sync}ready_timeout"),
            1,
        ),
    );
    let mut b = Tether::start(&node_config(
        "b",
        b_addr,
        &[("a", a_addr)],
        dir.path(),
        &[backend.addr],
    ));
    wait_peer(&a, "b", "up");
    let r = get(a.addr, "/.tether/test/sync?key=first");
    assert_eq!((r.status, r.text().as_str()), (200, "acknowledged\n"));
    // The acknowledgement promised that b holds it: b's very next report has it (no waiting), and it stays
    // there when a, which answered the client, is killed with SIGKILL.
    assert_eq!(
        fresh_store_report(&b).0,
        1,
        "acknowledged means applied at a peer"
    );
    let mut a = a;
    a.kill();
    wait_peer(&b, "a", "down");
    assert_eq!(
        fresh_store_report(&b).0,
        1,
        "nothing acknowledged is lost with its node"
    );
    // a comes back (learning the record from b) and b goes: with no peer to acknowledge a write, the
    // policy ("fail") answers 503 and says why.
    let a = start_with_test_endpoints(
        &node_config("a", a_addr, &[("b", b_addr)], dir.path(), &[backend.addr]).replacen(
            "ready_timeout",
            &format!("{sync}ready_timeout"),
            1,
        ),
    );
    a.wait_log("synced from a peer (");
    assert_eq!(wait_records(&a, 1), wait_records(&b, 1));
    b.kill();
    wait_peer(&a, "b", "down");
    let r = get(a.addr, "/.tether/test/sync?key=second");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("timed out waiting"), "{}", r.text());
    // The write is not lost: it is in a's store and reaches b when b is back.
    let _b = Tether::start(&node_config(
        "b",
        b_addr,
        &[("a", a_addr)],
        dir.path(),
        &[backend.addr],
    ));
    wait_records(&_b, 2);
}

#[test]
fn with_the_degrade_policy_a_sync_write_without_peers_is_served_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let backend = Backend::named("app");
    // b is never started.
    let a = start_with_test_endpoints(
        &node_config(
            "a",
            repl_addr(),
            &[("b", repl_addr())],
            dir.path(),
            &[backend.addr],
        )
        .replacen(
            "ready_timeout",
            "sync_timeout = \"200ms\"\non_sync_timeout = \"degrade\"\nready_timeout",
            1,
        ),
    );
    a.wait_log("serving alone");
    let r = get(a.addr, "/.tether/test/sync?key=k");
    assert_eq!((r.status, r.text().as_str()), (200, "degraded\n"));
    a.signal("USR1");
    a.wait_log("degraded_writes=1");
}
