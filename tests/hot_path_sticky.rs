//! The hot path allocates nothing per request in steady state: cookie-sticky ("secure") requests, each
//! of which unseals its session cookie and looks the session up in the session table.
//!
//! One test per file: libtest's own threads must stay quiet (see `steady_state`).

mod steady_state;

#[global_allocator]
static GLOBAL: steady_state::Counting = steady_state::Counting;

const FIRST: &[u8] = b"GET /cart HTTP/1.1\r\nHost: test\r\nUser-Agent: hot-path\r\n\r\n";

/// The request that carries the session cookie the first response set.
fn with_cookie(response: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(response);
    let cookie = text
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .expect("the first secure response sets the session cookie");
    let pair = cookie.split(';').next().unwrap();
    assert!(pair.starts_with("TETHER_SID="), "{cookie}");
    format!("GET /cart HTTP/1.1\r\nHost: test\r\nUser-Agent: hot-path\r\nCookie: theme=dark; {pair}\r\n\r\n")
        .into_bytes()
}

#[test]
fn steady_state_sticky_requests_allocate_nothing() {
    let server = steady_state::assert_steady_state_allocates_nothing(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [access_log]\nenabled = false\n\
         [sessions]\ncookie_keys = [\"kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE=\"]\n\
         [clusters.app]\nbackends = [{ address = \"{backend}\" }]\n\
         [[routes]]\npath_prefix = \"/cart\"\ncluster = \"app\"\nclass = \"secure\"\n\
         session = \"insert:TETHER_SID\"\n",
        FIRST,
        with_cookie,
    );
    // Every request after each client's first found its session: the lookups were on the measured path.
    let t = server.session_totals();
    assert_eq!((t.entries, t.binds), (4, 4), "{t:?}");
    assert_eq!(t.hits, 4 * (2_000 + 5_000), "{t:?}");
    server.shutdown(std::time::Duration::ZERO);
}
