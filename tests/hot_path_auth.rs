//! The hot path allocates nothing per request in steady state: logged-in requests on a route with
//! `auth = "login"`, each of which finds its session cookie in the worker's verified-token cache, checks
//! the session record in the store (the revocation check) and sends the identity headers and JWT along.
//!
//! One test per file: libtest's own threads must stay quiet (see `steady_state`). The key keeper's thread
//! runs twice a second beside the measured requests and must allocate nothing either while no key changes.
//! Metering is off here: its workers' part allocates nothing per request either, but the counters'
//! flusher thread writes the changed counters to the store every 10 ms (a few allocations per counter
//! and flush, bounded by time, not by requests), which a process-wide count cannot tell apart.

mod steady_state;

#[global_allocator]
static GLOBAL: steady_state::Counting = steady_state::Counting;

const LOGIN: &[u8] = b"POST /.tether/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 35\r\n\r\nusername=alice&password=tether-demo";

/// The request that carries the session cookie the login set. The first call also waits out the keys'
/// maturity: a first start makes its keys, and the keeper re-installs its rings once, 2 s later, when
/// they mature (a one-off, not per request); steady state begins after that.
fn with_cookie(response: &[u8]) -> Vec<u8> {
    static MATURED: std::sync::Once = std::sync::Once::new();
    MATURED.call_once(|| {
        std::thread::sleep(std::time::Duration::from_secs(
            tether::auth::keys::MATURITY + 1,
        ));
    });
    let text = String::from_utf8_lossy(response);
    assert!(text.starts_with("HTTP/1.1 303"), "{text}");
    let pair = text
        .lines()
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .map(|c| c.split(';').next().unwrap())
        .find(|c| c.starts_with("tether_session="))
        .expect("the login sets the session cookie");
    format!("GET /mail/inbox HTTP/1.1\r\nHost: test\r\nUser-Agent: hot-path\r\nCookie: theme=dark; {pair}\r\n\r\n")
        .into_bytes()
}

#[test]
fn steady_state_logged_in_requests_allocate_nothing() {
    let users = format!("{}/configs/cluster/users.toml", env!("CARGO_MANIFEST_DIR"));
    steady_state::assert_steady_state_allocates_nothing(
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
             [access_log]\nenabled = false\n\
             [auth]\nhash_threads = 1\n\
             [metering]\nenabled = false\n\
             [pools.demo]\nusers = \"{users}\"\n\
             [clusters.app]\nbackends = [{{ address = \"{{backend}}\" }}]\n\
             [[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\n"
        ),
        LOGIN,
        with_cookie,
    )
    .shutdown(std::time::Duration::ZERO);
}
