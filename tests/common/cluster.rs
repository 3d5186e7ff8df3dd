//! Helpers for end-to-end cluster tests: certificates from the real `tether certs cluster`, node configs
//! with `[cluster]` and a secure route learning `APPSESSION`, the SIGUSR1 store and peer reports, session
//! load, and a TCP relay that can cut a link after a number of bytes.

use super::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A free loopback address for a node's replication listener, below the kernel's ephemeral port range
/// (32768 and up): nodes are restarted on the same address, and a port from the ephemeral range may by
/// then be the local port of some other connection on the machine.
pub fn repl_addr() -> SocketAddr {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for _ in 0..2000 {
        // Spread by process (test binaries run side by side) and by call.
        let n = std::process::id().wrapping_mul(37) + NEXT.fetch_add(1, Ordering::Relaxed) * 7919;
        let port = 20_000 + n % 12_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port below the ephemeral range");
}

/// Writes a cluster CA and node certificates with the real `tether certs cluster`.
pub fn cluster_certs(dir: &Path, nodes: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["certs", "cluster", "--nodes", nodes, "--out"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A node's config: one client listener, `[cluster]` with `peers` (heartbeat 200 ms; a node that gets no
/// peer's snapshot serves alone after 1 s), certificates from
/// `certs`, shared cookie keys, and a secure route `/app/` learning `APPSESSION` over `backends`.
pub fn node_config(
    name: &str,
    listen: SocketAddr,
    peers: &[(&str, SocketAddr)],
    certs: &Path,
    backends: &[SocketAddr],
) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    let backends = backends.join(", ");
    let peers: Vec<String> = peers
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect();
    let c = certs.display();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [cluster]\nname = \"test\"\nnode = \"{name}\"\nlisten = \"{listen}\"\nheartbeat = \"200ms\"\nready_timeout = \"1s\"\n\
         peers = [{}]\n\
         [cluster.tls]\nca = \"{c}/ca.crt\"\ncert = \"{c}/{name}.crt\"\nkey = \"{c}/{name}.key\"\n\
         [sessions]\ncookie_keys = [\"kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE=\"]\n\
         [clusters.app]\nbackends = [{backends}]\n\
         [[routes]]\npath_prefix = \"/app/\"\ncluster = \"app\"\nclass = \"secure\"\nsession = \"learn:APPSESSION\"\n\
         [[routes]]\ncluster = \"app\"\n",
        peers.join(", ")
    )
}

/// Configs for a full mesh of nodes `names` (certificates in `certs`), each listing the others as peers
/// at fresh replication addresses, over `backends`.
pub fn mesh_configs(names: &[&str], certs: &Path, backends: &[SocketAddr]) -> Vec<String> {
    let listen: Vec<SocketAddr> = names.iter().map(|_| repl_addr()).collect();
    (0..names.len())
        .map(|i| {
            let peers: Vec<(&str, SocketAddr)> = (0..names.len())
                .filter(|&j| j != i)
                .map(|j| (names[j], listen[j]))
                .collect();
            node_config(names[i], listen[i], &peers, certs, backends)
        })
        .collect()
}

/// The value of ` key=` in a report line (up to the next space).
pub fn report_field(line: &str, key: &str) -> Option<String> {
    line.split(&format!(" {key}="))
        .nth(1)
        .map(|v| v.split(' ').next().unwrap_or("").to_string())
}

/// The newest SIGUSR1 report line about `peer`, if any.
pub fn peer_line(t: &Tether, peer: &str) -> Option<String> {
    let needle = format!(" peer {peer} at ");
    t.log_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("stats: cluster node") && l.contains(&needle))
}

/// The `state=` and `epoch=` SIGUSR1 reports for `peer`, from the newest report line.
pub fn peer_report(t: &Tether, peer: &str) -> Option<(String, String)> {
    let line = peer_line(t, peer)?;
    Some((report_field(&line, "state")?, report_field(&line, "epoch")?))
}

/// Asks `t` for a new SIGUSR1 report and returns its line about `peer` (waits for the new line).
pub fn fresh_peer_line(t: &Tether, peer: &str) -> String {
    let needle = format!(" peer {peer} at ");
    let is = |l: &String| l.contains("stats: cluster node") && l.contains(&needle);
    let before = t.log_lines().iter().filter(|l| is(l)).count();
    t.signal("USR1");
    wait_until(&format!("a new report about peer {peer}"), || {
        t.log_lines().iter().filter(|l| is(l)).count() > before
    });
    peer_line(t, peer).unwrap()
}

/// Waits until SIGUSR1 reports `peer` in `state` at `t`; returns the epoch reported.
pub fn wait_peer(t: &Tether, peer: &str, state: &str) -> String {
    wait_until(&format!("peer {peer} {state}"), || {
        t.signal("USR1");
        std::thread::sleep(Duration::from_millis(100));
        peer_report(t, peer).is_some_and(|(s, _)| s == state)
    });
    peer_report(t, peer).map(|(_, e)| e).unwrap_or_default()
}

/// A backend that gives every client without an `APPSESSION` cookie a new one (`NAME-N`) and answers
/// with its name.
pub fn session_backend(name: &'static str) -> Backend {
    let counter = Arc::new(AtomicUsize::new(0));
    Backend::start(move |req, _| {
        let has = req
            .header("cookie")
            .is_some_and(|c| c.contains("APPSESSION="));
        if has {
            return Some(Reply::text(200, name));
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Some(Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nSet-Cookie: APPSESSION={name}-{n}; Path=/\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        )))
    })
}

/// A SIGUSR1 report of the store: records of every kind, session bindings, ticket-key records, digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLine {
    pub records: usize,
    pub bindings: usize,
    pub ticket_keys: usize,
    pub digest: String,
}

/// The newest SIGUSR1 store report of `t`.
pub fn store_line(t: &Tether) -> Option<StoreLine> {
    let line = t
        .log_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("stats: cluster node") && l.contains(" store records="))?;
    Some(StoreLine {
        records: report_field(&line, "records")?.parse().ok()?,
        bindings: report_field(&line, "bindings")?.parse().ok()?,
        ticket_keys: report_field(&line, "ticket_keys")?.parse().ok()?,
        digest: report_field(&line, "digest")?,
    })
}

/// Asks `t` for a new SIGUSR1 report and returns its store line (waits for the new line, so two calls
/// never read the same report).
pub fn fresh_store_line(t: &Tether) -> StoreLine {
    let is = |l: &String| l.contains("stats: cluster node") && l.contains(" store records=");
    let before = t.log_lines().iter().filter(|l| is(l)).count();
    t.signal("USR1");
    wait_until("a new store report", || {
        t.log_lines().iter().filter(|l| is(l)).count() > before
    });
    store_line(t).unwrap()
}

/// The store's `bindings=` and `digest=` from the newest SIGUSR1 report.
pub fn store_report(t: &Tether) -> Option<(usize, String)> {
    store_line(t).map(|l| (l.bindings, l.digest))
}

/// `bindings=` and `digest=` of a new SIGUSR1 report of `t`.
pub fn fresh_store_report(t: &Tether) -> (usize, String) {
    let l = fresh_store_line(t);
    (l.bindings, l.digest)
}

/// Waits until `t` reports `want` session bindings; returns its store's digest (every kind).
pub fn wait_records(t: &Tether, want: usize) -> String {
    wait_until(&format!("{want} replicated bindings"), || {
        t.signal("USR1");
        std::thread::sleep(Duration::from_millis(100));
        store_report(t).is_some_and(|(n, _)| n == want)
    });
    store_report(t).unwrap().1
}

/// Waits until every node reports `bindings` session bindings and all report one digest (their
/// ticket keys, in the store too, have reached each other); returns it.
pub fn wait_converged(nodes: &[&Tether], bindings: usize) -> String {
    for t in nodes {
        wait_records(t, bindings);
    }
    wait_until(&format!("{} nodes with one digest", nodes.len()), || {
        let lines: Vec<StoreLine> = nodes.iter().map(|t| fresh_store_line(t)).collect();
        lines
            .iter()
            .all(|l| l.bindings == bindings && l.digest == lines[0].digest)
    });
    store_line(nodes[0]).unwrap().digest
}

/// Starts `per_connection` new sessions on each of `connections` keep-alive connections to `node` (the
/// backend sets a new `APPSESSION` on every request without one); returns how many succeeded.
pub fn load_sessions(node: SocketAddr, connections: usize, per_connection: usize) -> usize {
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(node);
                let mut ok = 0;
                for _ in 0..per_connection {
                    client.send(b"GET /app/start HTTP/1.1\r\nHost: t\r\n\r\n");
                    let r = client.read_response(false);
                    assert_eq!(r.status, 200);
                    assert!(r.header("set-cookie").is_some(), "a new session each time");
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// A TCP relay on loopback: accepts on `addr`, connects each client to `target`, and copies bytes both
/// ways. While armed with [`Relay::cut_upstream_after`], a connection is cut (both sockets shut down)
/// once that many client→target bytes were forwarded; [`Relay::pass`] lets later connections through
/// whole. Connections already open keep the mode they were accepted in.
pub struct Relay {
    pub addr: SocketAddr,
    /// Client→target bytes after which a new connection is cut (`usize::MAX`: never).
    cut_after: Arc<AtomicUsize>,
    /// Connections accepted, connections that reached the target, and connections cut at the limit.
    pub accepted: Arc<AtomicUsize>,
    pub connected: Arc<AtomicUsize>,
    pub cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// A relay to `target`, passing everything.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr,
            cut_after: Arc::new(AtomicUsize::new(usize::MAX)),
            accepted: Arc::new(AtomicUsize::new(0)),
            connected: Arc::new(AtomicUsize::new(0)),
            cuts: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (cut_after, accepted, connected, cuts, stop) = (
            relay.cut_after.clone(),
            relay.accepted.clone(),
            relay.connected.clone(),
            relay.cuts.clone(),
            relay.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let limit = cut_after.load(Ordering::SeqCst);
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    // The target is down: the client sees the connection close.
                    continue;
                };
                connected.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let up = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (stop_up, stop_down, cuts) = (stop.clone(), stop.clone(), cuts.clone());
                std::thread::spawn(move || {
                    let (from, to) = up;
                    if copy(&from, &to, limit, &stop_up) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    copy(&server, &client, usize::MAX, &stop_down);
                    let _ = server.shutdown(Shutdown::Both);
                    let _ = client.shutdown(Shutdown::Both);
                });
            }
        });
        relay
    }

    /// New connections are cut once `bytes` client→target bytes were forwarded.
    pub fn cut_upstream_after(&self, bytes: usize) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    /// New connections pass everything.
    pub fn pass(&self) {
        self.cut_after.store(usize::MAX, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` → `to` until EOF, an error, the relay stopping, or `limit` bytes; `true` when it stopped
/// because the limit was reached (exactly `limit` bytes were forwarded).
fn copy(mut from: &TcpStream, mut to: &TcpStream, limit: usize, stop: &AtomicBool) -> bool {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded = 0usize;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let want = buf.len().min(limit - forwarded);
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return false,
        };
        if to.write_all(&buf[..n]).is_err() {
            return false;
        }
        forwarded += n;
        if forwarded >= limit {
            return true;
        }
    }
}
