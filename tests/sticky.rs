//! End-to-end stickiness: sealed cookies, learned cookies, stateless spreading, failover rebinding,
//! tampered and expired cookies.

mod common;

use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Three backends named a, b, c; one secure route on /cart (insert cookie) and a stateless default.
fn sticky_config(backends: &[SocketAddr], session: &str, extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[access_log]\nformat = \"json\"\n{extra}\n\
         [[routes]]\npath_prefix = \"/cart\"\ncluster = \"app\"\nclass = \"secure\"\nsession = \"{session}\"\n\
         [[routes]]\ncluster = \"app\"\n\
         [clusters.app]\nbalance = \"round_robin\"\nretries = 2\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// A backend answering its name; when `dead` is set it hangs up on every request (a crashed process)
/// and `stop()` makes it refuse connections.
fn killable(name: &'static str) -> (Backend, Arc<AtomicBool>) {
    let dead = Arc::new(AtomicBool::new(false));
    let d = dead.clone();
    let b = Backend::start(move |_, _| {
        if d.load(Ordering::SeqCst) {
            None
        } else {
            Some(Reply::text(200, name))
        }
    });
    (b, dead)
}

fn get_with_cookie(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let mut c = Client::connect(addr);
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    c.send(format!("GET {path} HTTP/1.1\r\nHost: shop\r\n{cookie}\r\n").as_bytes());
    c.read_response(false)
}

/// The `NAME=value` part of a Set-Cookie header.
fn cookie_pair(r: &Response) -> String {
    r.header("set-cookie")
        .expect("a Set-Cookie header")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_cookie_session_sticks_to_one_backend_for_100_requests_over_new_connections() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::named(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let t = Tether::start(&sticky_config(&addrs, "insert:TSID", ""));
    let first = get_with_cookie(t.addr, "/cart", None);
    assert_eq!(first.status, 200);
    let set = first.header("set-cookie").unwrap().to_string();
    assert!(set.starts_with("TSID="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP listener: not Secure");
    let cookie = cookie_pair(&first);
    let home = first.text();
    for i in 0..100 {
        let r = get_with_cookie(
            t.addr,
            &format!("/cart/item/{i}"),
            Some(&format!("other=1; {cookie}")),
        );
        assert_eq!(r.text(), home, "request {i} left its backend");
        assert!(
            r.header("set-cookie").is_none(),
            "a valid fresh cookie is not re-issued"
        );
    }
    // Other sessions land elsewhere: round robin still spreads new sessions.
    let homes: HashSet<String> = (0..6)
        .map(|_| get_with_cookie(t.addr, "/cart", None).text())
        .collect();
    assert_eq!(homes.len(), 3);
    t.signal("USR1");
    let line = t.wait_log("stats: sessions");
    assert!(line.contains("hits=100"), "{line}");
}

#[test]
fn a_learned_application_cookie_sticks_to_the_backend_that_set_it() {
    let counter = Arc::new(AtomicUsize::new(0));
    let make = |name: &'static str| {
        let counter = counter.clone();
        Backend::start(move |req, _| {
            let has = req
                .header("cookie")
                .is_some_and(|c| c.contains("JSESSIONID="));
            let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", name.len());
            if !has {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                reply.push_str(&format!("Set-Cookie: JSESSIONID={name}-{n}; Path=/\r\n"));
            }
            reply.push_str("\r\n");
            reply.push_str(name);
            Some(Reply::raw(reply.into_bytes()))
        })
    };
    let backends = [make("a"), make("b"), make("c")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let t = Tether::start(&sticky_config(&addrs, "learn:JSESSIONID", ""));
    let first = get_with_cookie(t.addr, "/cart", None);
    let cookie = cookie_pair(&first);
    assert!(
        cookie.starts_with(&format!("JSESSIONID={}-", first.text())),
        "{cookie}"
    );
    for _ in 0..30 {
        assert_eq!(
            get_with_cookie(t.addr, "/cart/x", Some(&cookie)).text(),
            first.text()
        );
    }
}

#[test]
fn a_stateless_route_spreads_across_backends() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::named(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let t = Tether::start(&sticky_config(&addrs, "insert:TSID", ""));
    let first = get_with_cookie(t.addr, "/cart", None);
    let cookie = cookie_pair(&first);
    // The same client, with its session cookie, on a stateless route: the best backend each time.
    let seen: Vec<String> = (0..9)
        .map(|_| get_with_cookie(t.addr, "/catalog", Some(&cookie)).text())
        .collect();
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "{seen:?}");
}

#[test]
fn when_the_sessions_backend_dies_the_session_is_rebound_once_and_sticks_there() {
    let (a, a_dead) = killable("a");
    let (b, b_dead) = killable("b");
    let (c, c_dead) = killable("c");
    let deaths = [("a", &a, a_dead), ("b", &b, b_dead), ("c", &c, c_dead)];
    let addrs: Vec<SocketAddr> = deaths.iter().map(|(_, b, _)| b.addr).collect();
    let t = Tether::start(&sticky_config(&addrs, "insert:TSID", ""));
    let first = get_with_cookie(t.addr, "/cart", None);
    let old_cookie = cookie_pair(&first);
    let home = first.text();
    // Kill the session's backend.
    let (_, victim, dead) = deaths.iter().find(|(n, _, _)| *n == home).unwrap();
    dead.store(true, Ordering::SeqCst);
    victim.stop();
    let moved = get_with_cookie(t.addr, "/cart/pay", Some(&old_cookie));
    assert_eq!(moved.status, 200, "no client error");
    let new_home = moved.text();
    assert_ne!(new_home, home);
    let new_cookie = cookie_pair(&moved);
    assert_ne!(
        new_cookie, old_cookie,
        "a fresh cookie names the new backend"
    );
    for _ in 0..20 {
        assert_eq!(
            get_with_cookie(t.addr, "/cart", Some(&new_cookie)).text(),
            new_home
        );
        // A client still sending the old cookie follows the table's new binding too.
        assert_eq!(
            get_with_cookie(t.addr, "/cart", Some(&old_cookie)).text(),
            new_home
        );
    }
    assert_eq!(t.count_log("session rebound"), 1, "{:?}", t.log_lines());
}

#[test]
fn a_session_whose_backend_is_down_gets_503_when_the_route_says_fail() {
    let (a, a_dead) = killable("a");
    let cfg = sticky_config(&[a.addr], "insert:TSID", "")
        .replace(
            "class = \"secure\"",
            "class = \"secure\"\non_backend_down = \"fail\"",
        )
        .replace("retries = 2", "retries = 0");
    let t = Tether::start(&cfg);
    let cookie = cookie_pair(&get_with_cookie(t.addr, "/cart", None));
    a_dead.store(true, Ordering::SeqCst);
    a.stop();
    // The first failure is the backend's (502); once health marks it down, the route's policy answers.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get_with_cookie(t.addr, "/cart", Some(&cookie)).status);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    let f = t
        .access_lines(9)
        .iter()
        .map(|l| json_fields(l))
        .find(|f| f["termination"] == "session_backend_down")
        .expect("a session_backend_down line");
    assert_eq!(f["status"], "503");
}

#[test]
fn tampered_foreign_and_expired_cookies_start_a_new_session_without_error() {
    let backends: Vec<Backend> = ["a", "b"].iter().map(|n| Backend::named(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let t = Tether::start(&sticky_config(
        &addrs,
        "insert:TSID",
        "[sessions]\nttl = \"2s\"",
    ));
    let good = cookie_pair(&get_with_cookie(t.addr, "/cart", None));
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        tampered.as_str(),
        "TSID=not-a-sealed-value",
        "TSID=",
        "TSID=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = get_with_cookie(t.addr, "/cart", Some(bad));
        assert_eq!(r.status, 200, "{bad}");
        assert!(
            r.header("set-cookie").is_some(),
            "{bad}: a new session cookie"
        );
        assert_ne!(cookie_pair(&r), good);
    }
    // Expired: the cookie outlives its 2 s lifetime.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = get_with_cookie(t.addr, "/cart", Some(&good));
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_some(), "expired cookie replaced");
}

#[test]
fn a_header_identity_sticks_per_token() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::named(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let t = Tether::start(&sticky_config(&addrs, "header:Authorization", ""));
    let ask = |token: &str| {
        let mut c = Client::connect(t.addr);
        c.send(
            format!("GET /cart HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        );
        c.read_response(false).text()
    };
    for token in ["alice", "bob", "carol", "dave"] {
        let home = ask(token);
        for _ in 0..10 {
            assert_eq!(ask(token), home, "{token}");
        }
    }
}
