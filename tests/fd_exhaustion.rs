//! End-to-end: tether out of file descriptors. Started with a tiny open-file limit, it fills it with
//! client connections; a request that then needs a backend connection gets 502 rather than a crash, the
//! accept loop backs off instead of failing, and once clients leave tether serves again.

mod common;

use common::*;

#[test]
fn running_out_of_descriptors_degrades_and_recovers() {
    const LIMIT: usize = 40;
    let backend = Backend::named("ok");
    let mut t = Tether::start_under(
        &["prlimit", &format!("--nofile={LIMIT}:{LIMIT}")],
        &config_for(&[backend.addr], ""),
        &["--workers", "1"],
        &[],
    );
    t.wait_log(&format!("open file limit: {LIMIT}"));

    // More idle connections than descriptors are left. The first is surely accepted.
    let mut first = Client::connect(t.addr);
    let mut crowd: Vec<Client> = (0..LIMIT + 20).map(|_| Client::connect(t.addr)).collect();
    t.wait_log("accept failed: Too many open files");

    // No descriptor for a backend connection: a clear answer, not a crash.
    let r = first.get("/while-full");
    assert_eq!(r.status, 502);
    assert!(t.running());
    let lines = t.access_lines(1);
    assert_eq!(json_fields(&lines[0])["termination"], "connect_failed");

    // Clients leave: tether accepts and serves again, the backlog included.
    let mut waiting = crowd.pop().unwrap();
    drop(crowd);
    drop(first);
    waiting.send(b"GET /from-the-backlog HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(waiting.read_response(false).status, 200);
    assert!(eventually(|| get(t.addr, "/after").status == 200));
    assert!(t.running());
}
