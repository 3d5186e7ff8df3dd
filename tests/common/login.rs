//! Helpers for end-to-end tests of logins at the balancer: the example users file, requests to tether's
//! login endpoints, and the session cookie a login sets.

use super::*;
use std::net::SocketAddr;

/// The example users file: alice (role user) and bob (role admin), password `tether-demo`.
pub fn users_file() -> String {
    format!("{}/configs/cluster/users.toml", env!("CARGO_MANIFEST_DIR"))
}

/// One request with a body on a new connection; `extra` header lines end in CRLF.
pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &str, extra: &str) -> Response {
    raw_exchange(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// A form login (as `curl -d username=… -d password=…` sends it).
pub fn form_login(addr: SocketAddr, user: &str, password: &str) -> Response {
    form_login_at(addr, "test", user, password)
}

/// A form login at `host` (whose pool serves its `/.tether/` endpoints).
pub fn form_login_at(addr: SocketAddr, host: &str, user: &str, password: &str) -> Response {
    let body = format!("username={user}&password={password}");
    raw_exchange(
        addr,
        format!(
            "POST /.tether/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// An API login: JSON in, JSON out.
pub fn json_login(addr: SocketAddr, user: &str, password: &str) -> Response {
    post(
        addr,
        "/.tether/login",
        "application/json",
        &serde_json::json!({ "username": user, "password": password }).to_string(),
        "Accept: application/json\r\n",
    )
}

/// The session cookie (`name=value`) a login response set.
pub fn session_cookie(r: &Response) -> String {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("tether_session=") && c.len() > "tether_session=".len())
        .unwrap_or_else(|| panic!("no session cookie in {:?}", r.headers))
}

/// Logs alice in at `host`; returns her session cookie.
pub fn login_cookie_at(addr: SocketAddr, host: &str) -> String {
    let r = form_login_at(addr, host, "alice", "tether-demo");
    assert_eq!(r.status, 303, "{}", r.text());
    session_cookie(&r)
}

/// A GET with extra header lines, on a new connection.
pub fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Response {
    raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes(),
    )
}

/// The body as JSON (panics with the body when it is not).
pub fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}
