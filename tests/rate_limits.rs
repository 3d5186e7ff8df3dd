//! Rate limits and the deny list (issue #15), end to end with the real binary: a client over its limit
//! gets the right number of 429s while another client on the same worker is untouched; a cluster-wide
//! limit holds across three nodes within the stated accuracy; a rule-fed ban at one node is refused at
//! accept by every node; allowed addresses are never limited.

mod common;

use common::login::*;

use common::cluster::*;
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends `n` GETs for `path` on one keep-alive connection from `source`; returns how many were answered
/// 200 and how many 429 (and the last 429, to look at its headers).
fn burst(addr: SocketAddr, source: &str, path: &str, n: usize) -> (usize, usize, Option<Response>) {
    let mut c = Client::connect_from(addr, ip(source));
    let (mut ok, mut limited, mut last) = (0, 0, None);
    for _ in 0..n {
        let r = c.get(path);
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                last = Some(r);
            }
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    (ok, limited, last)
}

/// What becomes of a fresh connection from `source`.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Connected and answered.
    Served,
    /// Connected, then closed unanswered: refused at accept.
    Closed,
    /// Never connected: the kernel filter dropped its SYN (the connect timed out).
    Dropped,
}

fn fate(addr: SocketAddr, source: &str) -> Fate {
    let mut c = match Client::try_connect_from(addr, ip(source), Duration::from_millis(700)) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Fate::Dropped,
        Err(e) => panic!("connect from {source} to {addr}: {e}"),
    };
    use std::io::{Read, Write};
    // The connection may already be closed: a failed write is a refusal too.
    if c.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .is_err()
    {
        return Fate::Closed;
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut first = [0u8; 12];
    match c.stream.read(&mut first) {
        Ok(n) if n > 0 && first[..n].starts_with(b"HTTP/1.1") => Fate::Served,
        Ok(0) => Fate::Closed,
        Ok(n) => panic!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&first[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Fate::Closed,
        // A handshake the filter cut in the middle (its SYN passed before the filter came, its ACK
        // did not): nothing ever comes. Counted as dropped.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Fate::Dropped
        }
        Err(e) => panic!("read from {addr}: {e}"),
    }
}

/// Whether a fresh connection from `source` gets an answer.
fn answered(addr: SocketAddr, source: &str) -> bool {
    fate(addr, source) == Fate::Served
}

#[test]
fn a_client_at_three_times_its_limit_gets_the_right_429s_and_others_are_untouched() {
    let backend = Backend::named("app");
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [clusters.app]\nbackends = [{{ address = \"{}\" }}]\n\
         [[routes]]\ncluster = \"app\"\nrate_limits = [\"per_client\"]\n\
         [[rate_limits]]\nname = \"per_client\"\nkey = \"address\"\nrate = 100\nper = \"1m\"\n\
         [deny]\nallow = [\"127.0.0.4\"]\n",
        backend.addr
    );
    let t = Tether::start(&config); // one worker: both clients on the same one
    // 300 requests at a limit of 100 per minute with a bucket of 100: 200 refused, less the few
    // tokens that refill while the test runs (1 per 0.6 s). Within 5%.
    let (ok, limited, last) = burst(t.addr, "127.0.0.2", "/", 300);
    assert_eq!(ok + limited, 300);
    eprintln!("300 requests at a limit of 100/min: {limited} answered 429");
    assert!(
        (190..=200).contains(&limited),
        "{limited} 429s for 300 requests at 3x the limit, want 200 within 5%"
    );
    let r = last.unwrap();
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per_client\";q=100;w=60")
    );
    assert!(
        r.header("ratelimit")
            .is_some_and(|v| v.starts_with("\"per_client\";r=0;t=")),
        "{:?}",
        r.header("ratelimit")
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another client on the same worker: its own bucket, untouched.
    let (ok_b, limited_b, _) = burst(t.addr, "127.0.0.3", "/", 60);
    assert_eq!((ok_b, limited_b), (60, 0));
    // An allowed address is never limited.
    let (ok_c, limited_c, _) = burst(t.addr, "127.0.0.4", "/", 300);
    assert_eq!((ok_c, limited_c), (300, 0));
    // Refused requests never reached the backend.
    assert_eq!(backend.request_count(), ok + ok_b + ok_c);
}

fn limits_mesh(dir: &std::path::Path, backend: SocketAddr, extra: &str) -> Vec<String> {
    cluster_certs(dir, "a,b,c");
    mesh_configs(&["a", "b", "c"], dir, &[backend])
        .into_iter()
        .map(|c| format!("{c}\n{extra}\n"))
        .collect()
}

fn wait_mesh(nodes: &[Tether]) {
    wait_peer(&nodes[0], "b", "up");
    wait_peer(&nodes[0], "c", "up");
    wait_peer(&nodes[1], "c", "up");
    wait_peer(&nodes[1], "a", "up");
    wait_peer(&nodes[2], "a", "up");
    wait_peer(&nodes[2], "b", "up");
}

#[test]
fn a_cluster_wide_limit_of_300_per_minute_holds_across_three_nodes() {
    let backend = Backend::named("app");
    let dir = tempfile::tempdir().unwrap();
    let configs = limits_mesh(
        dir.path(),
        backend.addr,
        "[[routes]]\npath_prefix = \"/limited/\"\ncluster = \"app\"\nrate_limits = [\"shared\"]\n\
         [[rate_limits]]\nname = \"shared\"\nkey = \"route\"\nrate = 300\nper = \"1m\"\ncluster_wide = true\n",
    );
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_mesh(&nodes);
    early_in_minute(20);
    // 600 requests, round robin over the three nodes, one client connection each, about 2 ms apart
    // (a steady 300-500 requests/s: the stated accuracy is in requests admitted per lag interval).
    let mut clients: Vec<Client> = nodes.iter().map(|n| Client::connect(n.addr)).collect();
    let (mut ok, mut limited) = (0usize, 0usize);
    for i in 0..600 {
        let r = clients[i % 3].get("/limited/x");
        match r.status {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(ok + limited, 600);
    eprintln!("cluster-wide limit 300/min over three nodes: {ok} admitted, {limited} refused");
    // Never fewer than the limit (a node refuses only once the counted total reached it); more by at
    // most what the other nodes admitted within one flush + replication interval: 5% here.
    assert!(
        (300..=315).contains(&ok),
        "{ok} admitted cluster-wide for a limit of 300"
    );
    assert_eq!(backend.request_count(), ok);
}

#[test]
fn an_address_banned_by_a_rule_at_one_node_is_refused_by_every_node() {
    let backend = Backend::named("app");
    let dir = tempfile::tempdir().unwrap();
    let configs = limits_mesh(
        dir.path(),
        backend.addr,
        "[deny]\nallow = [\"127.0.0.1\"]\nrules = [{ requests_per_sec = 20, ban = \"5m\" }]\n",
    );
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_mesh(&nodes);
    // Before: the address is served everywhere.
    for n in &nodes {
        assert!(answered(n.addr, "127.0.0.5"));
    }
    // A flood at node a: past 20 requests/s the rule bans it (the rest of its requests get 429).
    let (_, limited, _) = burst(nodes[0].addr, "127.0.0.5", "/", 100);
    assert!(limited > 0, "the rule never fired");
    // Every node refuses its new connections, once the ban replicated: its kernel filter drops their
    // SYNs.
    for n in &nodes {
        wait_until("the ban in every node's kernel filter", || {
            fate(n.addr, "127.0.0.5") == Fate::Dropped
        });
    }
    // Other addresses are served; the allowed one is never banned, whatever its rate.
    for n in &nodes {
        assert!(answered(n.addr, "127.0.0.6"));
        let (ok, limited, _) = burst(n.addr, "127.0.0.1", "/", 100);
        assert_eq!((ok, limited), (100, 0));
    }
}

/// Sends `n` GETs for `/` at `host` with `cookie` on one keep-alive connection; returns (200s, 429s, the
/// last 429).
fn burst_as(
    addr: SocketAddr,
    host: &str,
    cookie: &str,
    n: usize,
) -> (usize, usize, Option<Response>) {
    let mut c = Client::connect(addr);
    let (mut ok, mut limited, mut last) = (0, 0, None);
    for _ in 0..n {
        c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                last = Some(r);
            }
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    (ok, limited, last)
}

#[test]
fn each_tenant_tier_is_limited_at_its_own_rate() {
    let backend = Backend::named("app");
    let users = format!("{}/configs/cluster/users.toml", env!("CARGO_MANIFEST_DIR"));
    // Two pools of the same users, one tenant each (gold and free tiers), served by host; one limit keyed
    // by tenant that both hosts' routes use (a login route names one pool, so one route per pool).
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [clusters.app]\nbackends = [{{ address = \"{}\" }}]\n\
         [pools.big]\nusers = \"{users}\"\nhosts = [\"gold.test\"]\ntier = \"gold\"\n\
         [pools.small]\nusers = \"{users}\"\nhosts = [\"free.test\"]\ntier = \"free\"\n\
         [[routes]]\nhost = \"gold.test\"\ncluster = \"app\"\nauth = \"login\"\npool = \"big\"\nrate_limits = [\"per_tenant\"]\n\
         [[routes]]\nhost = \"free.test\"\ncluster = \"app\"\nauth = \"login\"\npool = \"small\"\nrate_limits = [\"per_tenant\"]\n\
         [[rate_limits]]\nname = \"per_tenant\"\nkey = \"tenant\"\nrate = 50\nper = \"1m\"\n\
         tiers = {{ gold = 100, free = 20 }}\n",
        backend.addr
    );
    let t = Tether::start(&config);
    let gold = login_cookie_at(t.addr, "gold.test");
    let free = login_cookie_at(t.addr, "free.test");
    // 3× each tier's rate per minute, bucket = the tier's rate: 2× refused, less the few tokens that
    // refill while the test runs (gold: 1 per 0.6 s, free: 1 per 3 s). Within 5%.
    let (ok_g, limited_g, last_g) = burst_as(t.addr, "gold.test", &gold, 300);
    let (ok_f, limited_f, last_f) = burst_as(t.addr, "free.test", &free, 60);
    eprintln!("gold (100/min): {limited_g} of 300 answered 429; free (20/min): {limited_f} of 60");
    assert!(
        (190..=200).contains(&limited_g),
        "gold: {limited_g} 429s for 300 requests at 3x its tier's rate of 100, want 200 within 5%"
    );
    assert!(
        (38..=40).contains(&limited_f),
        "free: {limited_f} 429s for 60 requests at 3x its tier's rate of 20, want 40 within 5%"
    );
    // Each 429 names its tier's quota.
    assert_eq!(
        last_g.unwrap().header("ratelimit-policy"),
        Some("\"per_tenant\";q=100;w=60")
    );
    assert_eq!(
        last_f.unwrap().header("ratelimit-policy"),
        Some("\"per_tenant\";q=20;w=60")
    );
    assert_eq!(backend.request_count(), ok_g + ok_f);
}

/// Sends one malformed request (a space in a header name) on a new connection from `source`; returns
/// the status tether answered (it closes the connection after it).
fn malformed(addr: SocketAddr, source: &str) -> u16 {
    let mut c = Client::connect_from(addr, ip(source));
    c.send(b"GET / HTTP/1.1\r\nHost: test\r\nBad Header: x\r\n\r\n");
    c.read_response(false).status
}

#[test]
fn an_address_past_its_bad_requests_per_minute_is_refused_by_every_node() {
    let backend = Backend::named("app");
    let dir = tempfile::tempdir().unwrap();
    let configs = limits_mesh(
        dir.path(),
        backend.addr,
        "[deny]\nrules = [{ bad_requests_per_min = 5, ban = \"5m\" }]\n",
    );
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_mesh(&nodes);
    // Five malformed requests (the rule's allowance in a minute) from one address, at node a: not
    // banned, served everywhere.
    for _ in 0..5 {
        assert_eq!(malformed(nodes[0].addr, "127.0.0.8"), 400);
    }
    for n in &nodes {
        assert!(answered(n.addr, "127.0.0.8"));
    }
    // Six from another address: the sixth bans it; every node refuses its new connections at accept
    // once the ban replicated.
    for _ in 0..6 {
        assert_eq!(malformed(nodes[0].addr, "127.0.0.9"), 400);
    }
    for n in &nodes {
        wait_until("the ban in every node's kernel filter", || {
            fate(n.addr, "127.0.0.9") == Fate::Dropped
        });
    }
    // The address with five is still served by every node.
    for n in &nodes {
        assert!(answered(n.addr, "127.0.0.8"));
    }
    // One ban, by node a, for the address with six.
    let bans: Vec<usize> = nodes
        .iter()
        .map(|n| n.count_log("bad requests/min"))
        .collect();
    assert_eq!(bans, [1, 0, 0]);
    assert_eq!(
        nodes[0].count_log("127.0.0.9 exceeded 5 bad requests/min"),
        1
    );
}

fn deny_node(backend: SocketAddr, deny: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n\
         [[routes]]\ncluster = \"app\"\n{deny}"
    )
}

#[test]
fn denied_addresses_syns_are_dropped_by_the_kernel_or_closed_at_accept_when_the_filter_is_off() {
    let backend = Backend::named("app");
    // The kernel filter (the default): a denied address never connects; a block's allowed part and
    // other addresses are served.
    let t = Tether::start(&deny_node(
        backend.addr,
        "[deny]\ndeny = [\"127.0.0.0/24\"]\nallow = [\"127.0.0.1\", \"127.0.0.20/30\"]\n",
    ));
    for denied in [
        "127.0.0.9",
        "127.0.0.2",
        "127.0.0.19",
        "127.0.0.24",
        "127.0.0.255",
    ] {
        assert_eq!(fate(t.addr, denied), Fate::Dropped, "{denied}");
    }
    for served in ["127.0.0.1", "127.0.0.20", "127.0.0.23", "127.0.1.1"] {
        assert_eq!(fate(t.addr, served), Fate::Served, "{served}");
    }
    // Nothing denied reached tether's accept: the kernel dropped it.
    t.signal("USR1");
    let stats = t.wait_log("rejected_denied=");
    assert!(stats.contains(" rejected_denied=0 "), "{stats}");
    // A reload that lifts the block detaches the filter.
    t.write_config(&deny_node(backend.addr, ""));
    t.signal("HUP");
    wait_until("the filter lifted", || {
        fate(t.addr, "127.0.0.9") == Fate::Served
    });
    drop(t);
    // With the filter off, a denied address connects and is closed at accept, unanswered.
    let t = Tether::start(&deny_node(
        backend.addr,
        "[deny]\nkernel_filter = false\ndeny = [\"127.0.0.7\"]\n",
    ));
    assert_eq!(fate(t.addr, "127.0.0.7"), Fate::Closed);
    assert_eq!(fate(t.addr, "127.0.0.8"), Fate::Served);
    t.signal("USR1");
    let stats = t.wait_log("rejected_denied=");
    assert!(stats.contains(" rejected_denied=1 "), "{stats}");
    // Served: four before the reload, one after it, one with the filter off.
    assert_eq!(backend.request_count(), 6);
}
