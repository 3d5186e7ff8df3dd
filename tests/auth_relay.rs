//! Relayed upstream tokens, end to end (issue #14, point 8): a pool whose logins go to an upstream auth
//! endpoint. The real `tether` binary, a real auth server in this process (speaking the wire format of
//! `src/auth/relay.rs`: JSON POSTs to the login and refresh URLs, OAuth-style token answers), real backends.
//! The upstream's tokens are injected into requests to the backends and never shown to the client; a
//! token about to expire is refreshed once per session however many requests wait for it; a token the
//! upstream rejects ends the session.
//!
//! Assertions are on counts and outcomes only. The auth server can hold a refresh answer back (until the
//! test opens a gate, then a short sleep) so that concurrent requests overlap the refresh; that is a way to
//! make them wait together, never something measured.

mod common;

use common::login::*;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

/// The one user the auth server knows.
const USER: &str = "carol";
const PASSWORD: &str = "upstream-secret-pw";

/// What the auth server does and saw.
struct AuthState {
    logins: AtomicUsize,
    refreshes: AtomicUsize,
    /// The number in the last token pair issued (`acc-N`, `ref-N`).
    issued: AtomicUsize,
    /// `expires_in` of the token a login gets, and of the one a refresh gets.
    login_expires_in: AtomicU64,
    refresh_expires_in: AtomicU64,
    /// Answer refreshes with 401.
    reject_refreshes: AtomicBool,
    /// A refresh extends the access token it renews (the same `acc-N`, a new expiry) and rotates only
    /// the refresh token.
    keep_access: AtomicBool,
    /// Refresh tokens already exchanged: a second use is refused (400), as a rotating OAuth server does.
    used: Mutex<Vec<String>>,
    /// The refresh requests' bodies, as received.
    refresh_bodies: Mutex<Vec<serde_json::Value>>,
    /// While closed, a refresh waits for the test to open it before it answers (open unless a test
    /// replaces it with a closed one).
    refresh_gate: Mutex<Gate>,
    /// How long a refresh waits after the gate opened before it answers (lets requests pile up).
    refresh_hold: Mutex<Duration>,
}

/// A small OAuth-style auth server: `POST /login {"username","password"}` and
/// `POST /refresh {"grant_type":"refresh_token","refresh_token"}`, answering
/// `{"access_token":"acc-N","token_type":"Bearer","expires_in":…,"refresh_token":"ref-N"}`.
struct AuthServer {
    server: Backend,
    state: Arc<AuthState>,
}

impl AuthServer {
    fn start(login_expires_in: u64, refresh_expires_in: u64) -> AuthServer {
        let state = Arc::new(AuthState {
            logins: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            login_expires_in: AtomicU64::new(login_expires_in),
            refresh_expires_in: AtomicU64::new(refresh_expires_in),
            reject_refreshes: AtomicBool::new(false),
            keep_access: AtomicBool::new(false),
            used: Mutex::new(Vec::new()),
            refresh_bodies: Mutex::new(Vec::new()),
            refresh_gate: Mutex::new(Gate::default()),
            refresh_hold: Mutex::new(Duration::ZERO),
        });
        state.refresh_gate.lock().unwrap().open();
        let s = state.clone();
        let server = Backend::start(move |req, _| Some(answer(&s, req)));
        AuthServer { server, state }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn logins(&self) -> usize {
        self.state.logins.load(Ordering::SeqCst)
    }

    fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }
}

/// A new pair `acc-N`/`ref-N`; with `access`, that access token instead of `acc-N`.
fn token_answer(state: &AuthState, expires_in: u64, access: Option<String>) -> Reply {
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    json_reply(
        200,
        &serde_json::json!({
            "access_token": access.unwrap_or_else(|| format!("acc-{n}")),
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": format!("ref-{n}"),
        }),
    )
}

fn json_reply(status: u16, body: &serde_json::Value) -> Reply {
    let body = body.to_string();
    Reply::raw(format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
    .closing()
}

fn answer(state: &AuthState, req: &ReceivedRequest) -> Reply {
    let body: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) if req.method == "POST" => v,
        _ => return json_reply(400, &serde_json::json!({ "error": "invalid_request" })),
    };
    let refused = |error: &str| json_reply(401, &serde_json::json!({ "error": error }));
    match req.path.as_str() {
        "/login" => {
            state.logins.fetch_add(1, Ordering::SeqCst);
            if body["username"] == USER && body["password"] == PASSWORD {
                token_answer(state, state.login_expires_in.load(Ordering::SeqCst), None)
            } else {
                refused("invalid_grant")
            }
        }
        "/refresh" => {
            state.refreshes.fetch_add(1, Ordering::SeqCst);
            state.refresh_bodies.lock().unwrap().push(body.clone());
            let gate = state.refresh_gate.lock().unwrap().clone();
            gate.wait();
            std::thread::sleep(*state.refresh_hold.lock().unwrap());
            if state.reject_refreshes.load(Ordering::SeqCst) {
                return refused("invalid_grant");
            }
            let token = body["refresh_token"].as_str().unwrap_or("").to_string();
            let mut used = state.used.lock().unwrap();
            if body["grant_type"] != "refresh_token" || !token.starts_with("ref-") {
                return json_reply(400, &serde_json::json!({ "error": "invalid_request" }));
            }
            if used.contains(&token) {
                return json_reply(400, &serde_json::json!({ "error": "invalid_grant" }));
            }
            let access = state
                .keep_access
                .load(Ordering::SeqCst)
                .then(|| token.replace("ref-", "acc-"));
            used.push(token);
            token_answer(
                state,
                state.refresh_expires_in.load(Ordering::SeqCst),
                access,
            )
        }
        _ => json_reply(404, &serde_json::json!({ "error": "not_found" })),
    }
}

/// A backend that answers `ok` (never echoing what it received: the client must not see the token
/// through it) and records every request.
fn app_backend() -> Backend {
    Backend::start(|_, _| Some(Reply::text(200, "ok")))
}

/// `/mail/` needs a login of the pool `ext`, relayed to `auth`; `/` is open; `upstream_extra` goes into
/// the `upstream = { … }` table.
fn relay_config(backend: SocketAddr, auth: SocketAddr, upstream_extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [pools.ext]\nupstream = {{ login_url = \"http://{auth}/login\", refresh_url = \"http://{auth}/refresh\"{upstream_extra} }}\n\n\
         [[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\n\n\
         [[routes]]\ncluster = \"app\"\n\n\
         [clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n"
    )
}

/// Panics if any header or the body of `r` holds one of the upstream's tokens (`acc-…`, `ref-…`).
fn assert_no_upstream_token(r: &Response, what: &str) {
    let mut all = r.text();
    for (n, v) in &r.headers {
        all.push_str(&format!("\n{n}: {v}"));
    }
    for needle in ["acc-", "ref-"] {
        assert!(
            !all.contains(needle),
            "{what}: the client saw an upstream token ({needle}…):\n{all}"
        );
    }
}

/// The `Authorization` values of the backend's requests whose path starts with `prefix`.
fn authorizations(backend: &Backend, prefix: &str) -> Vec<Vec<String>> {
    backend
        .received()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .map(|r| {
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.clone())
                .collect()
        })
        .collect()
}

#[test]
fn relayed_token_is_injected_and_never_shown() {
    let auth = AuthServer::start(3600, 3600);
    let backend = app_backend();
    let t = Tether::start(&relay_config(backend.addr, auth.addr(), ""));

    // A form login: the upstream checked the credentials, the client got tether's own sealed cookie.
    let login = form_login(t.addr, USER, PASSWORD);
    assert_eq!(login.status, 303, "{}", login.text());
    assert_eq!(auth.logins(), 1);
    assert_no_upstream_token(&login, "form login");
    let cookie = session_cookie(&login);

    // The backend gets the upstream's token, replacing the client's own Authorization (a scheme that is
    // not tether's, so the cookie is the login); the client never sees it.
    let r = get_with(
        t.addr,
        "/mail/inbox",
        &format!("Cookie: {cookie}\r\nAuthorization: Basic Y2Fyb2w6Zm9yZ2Vk\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_upstream_token(&r, "proxied request (cookie)");
    assert_eq!(authorizations(&backend, "/mail/inbox"), [["Bearer acc-1"]]);

    // A JSON login: the tokens in the answer are tether's, not the upstream's.
    let login = json_login(t.addr, USER, PASSWORD);
    assert_eq!(login.status, 200, "{}", login.text());
    assert_eq!(auth.logins(), 2);
    assert_no_upstream_token(&login, "JSON login");
    let tokens = json(&login);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    assert!(access.starts_with("v4.local."), "{access}");
    // tether's access token as the bearer: consumed by tether, replaced by the upstream's.
    let r = get_with(
        t.addr,
        "/mail/api",
        &format!("Authorization: Bearer {access}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_upstream_token(&r, "proxied request (bearer)");
    assert_eq!(authorizations(&backend, "/mail/api"), [["Bearer acc-2"]]);
    // The first session still relays its own token.
    let r = get_with(t.addr, "/mail/again", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(authorizations(&backend, "/mail/again"), [["Bearer acc-1"]]);
    // Nothing was due: no refresh.
    assert_eq!(auth.refreshes(), 0);

    // Wrong credentials at the upstream (it answers 401): 401, no session, for both kinds of login.
    let wrong = form_login(t.addr, USER, "not-the-password");
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(
        !wrong.headers.iter().any(
            |(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("tether_session=v4")
        ),
        "no session on failure: {:?}",
        wrong.headers
    );
    let wrong = json_login(t.addr, "mallory", PASSWORD);
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(json(&wrong)["error"], "invalid_credentials");
    assert_eq!(auth.logins(), 4);

    // The upstream down: 503 (not the user's fault), for both kinds of login.
    let auth_addr = auth.addr();
    auth.server.stop();
    wait_until("the auth server to stop listening", || {
        TcpStream::connect(auth_addr).is_err()
    });
    let down = form_login(t.addr, USER, PASSWORD);
    assert_eq!(down.status, 503, "{}", down.text());
    let down = json_login(t.addr, USER, PASSWORD);
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(json(&down)["error"], "temporarily_unavailable");
    t.wait_log("upstream auth unavailable");

    // Neither the password nor a token ever reached the log.
    for l in t.log_lines() {
        for secret in [PASSWORD, "acc-", "ref-"] {
            assert!(!l.contains(secret), "{secret:?} was logged: {l}");
        }
    }
}

/// Logs in to a fresh tether (`workers` workers) whose upstream issues a login token already due for a
/// refresh, then sends 50 concurrent requests of that session, each on its own connection, while the
/// upstream holds the refresh answer back until all of them are sent.
fn fifty_concurrent_requests(workers: &str) {
    const N: usize = 50;
    // expires_in = 1: with tether's 5 s margin the login's token is due at once; the refreshed one is
    // good for an hour, so nothing after the refresh is due again.
    let auth = AuthServer::start(1, 3600);
    let backend = app_backend();
    let t = Tether::start_with(
        &relay_config(backend.addr, auth.addr(), ""),
        &["--workers", workers],
    );
    let cookie = session_cookie(&form_login(t.addr, USER, PASSWORD));
    assert_eq!(auth.logins(), 1);

    // The refresh answer waits until every request was sent, then a little longer, so that the requests
    // pile up behind it.
    let gate = Gate::default();
    *auth.state.refresh_gate.lock().unwrap() = gate.clone();
    *auth.state.refresh_hold.lock().unwrap() = Duration::from_millis(300);
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(N));
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let (cookie, sent, start, addr) = (cookie.clone(), sent.clone(), start.clone(), t.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                start.wait();
                c.send(
                    format!("GET /mail/{i} HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n\r\n")
                        .as_bytes(),
                );
                sent.fetch_add(1, Ordering::SeqCst);
                c.read_response(false)
            })
        })
        .collect();
    wait_until("all requests sent", || sent.load(Ordering::SeqCst) == N);
    gate.open();
    let responses: Vec<Response> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_no_upstream_token(r, "proxied request");
    }
    assert_eq!(
        auth.refreshes(),
        1,
        "{workers} worker(s): one refresh for {N} waiting requests"
    );
    assert_eq!(
        auth.state.refresh_bodies.lock().unwrap()[0],
        serde_json::json!({ "grant_type": "refresh_token", "refresh_token": "ref-1" })
    );
    // Every request was either parked behind the refresh (woken after the session record held the new
    // token) or came after it: none reached the backend with the expired one.
    let seen = authorizations(&backend, "/mail/");
    assert_eq!(seen.len(), N);
    for (i, a) in seen.iter().enumerate() {
        assert_eq!(a, &["Bearer acc-2"], "backend request {i}");
    }
}

#[test]
fn one_refresh_for_50_concurrent_requests() {
    fifty_concurrent_requests("1");
}

#[test]
fn one_refresh_for_50_concurrent_requests_on_two_workers() {
    fifty_concurrent_requests("2");
}

#[test]
fn rejected_token_deletes_the_session() {
    let auth = AuthServer::start(1, 3600);
    let backend = app_backend();
    let t = Tether::start(&relay_config(backend.addr, auth.addr(), ""));
    let cookie = session_cookie(&form_login(t.addr, USER, PASSWORD));
    auth.state.reject_refreshes.store(true, Ordering::SeqCst);

    // The token is due; the upstream rejects the refresh: 401, and the cookie is deleted.
    let r = get_with(t.addr, "/mail/inbox", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(json(&r)["error"], "login_required");
    assert_no_upstream_token(&r, "401");
    assert_eq!(auth.refreshes(), 1);
    t.wait_log("rejected the token of user \"carol\": session ended");

    // The session is gone: the same cookie is refused without asking the upstream again.
    let r = get_with(t.addr, "/mail/inbox", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(r.status, 401, "{}", r.text());
    // A browser is sent to the login page.
    let r = get_with(
        t.addr,
        "/mail/inbox",
        &format!("Cookie: {cookie}\r\nAccept: text/html\r\n"),
    );
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.header("location").unwrap().starts_with("/.tether/login"),
        "{:?}",
        r.headers
    );
    assert_eq!(auth.refreshes(), 1, "no refresh for a session that ended");
    assert_eq!(backend.request_count(), 0, "nothing reached the backend");
}

#[test]
fn short_lived_upstream_tokens_cost_one_refresh_per_request() {
    // Every token the upstream issues is inside tether's 5 s margin: each request finds it due.
    let auth = AuthServer::start(1, 1);
    let backend = app_backend();
    let t = Tether::start(&relay_config(backend.addr, auth.addr(), ""));
    let cookie = session_cookie(&form_login(t.addr, USER, PASSWORD));
    for (i, token) in ["acc-2", "acc-3"].iter().enumerate() {
        let r = get_with(
            t.addr,
            &format!("/mail/{i}"),
            &format!("Cookie: {cookie}\r\n"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // The refreshed token goes to the backend at once, however short its life: the request is not
        // sent round for another refresh.
        assert_eq!(auth.refreshes(), i + 1, "request {i}");
        assert_eq!(
            authorizations(&backend, &format!("/mail/{i}")),
            [[format!("Bearer {token}")]]
        );
    }
}

#[test]
fn a_custom_upstream_header_replaces_the_clients_copy() {
    let auth = AuthServer::start(3600, 3600);
    let backend = app_backend();
    let t = Tether::start(&relay_config(
        backend.addr,
        auth.addr(),
        ", header = \"X-Upstream-Auth\"",
    ));
    let cookie = session_cookie(&form_login(t.addr, USER, PASSWORD));
    let r = get_with(
        t.addr,
        "/mail/inbox",
        &format!("Cookie: {cookie}\r\nX-Upstream-Auth: Bearer forged\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_upstream_token(&r, "proxied request");
    let received = backend.received();
    let values: Vec<&str> = received[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-upstream-auth"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values, ["Bearer acc-1"]);
}

#[test]
fn a_refresh_token_is_never_sent_twice() {
    // Requests that keep arriving while a refresh lands (each on its own connection, sent without waiting
    // for the answers before): one that read the session just before the new token was stored must not
    // start a second refresh with the refresh token just used. This upstream refuses a used refresh token
    // (as a rotating OAuth server does), which would end the session: its requests would get 401.
    const ROUNDS: usize = 40;
    const THREADS: usize = 3;
    const PER_THREAD: usize = 60;
    let auth = AuthServer::start(1, 3600);
    let backend = app_backend();
    let t = Tether::start_with(
        &relay_config(backend.addr, auth.addr(), ""),
        &["--workers", "2"],
    );
    for round in 1..=ROUNDS {
        let cookie = session_cookie(&form_login(t.addr, USER, PASSWORD));
        let senders: Vec<_> = (0..THREADS)
            .map(|_| {
                let (cookie, addr) = (cookie.clone(), t.addr);
                std::thread::spawn(move || {
                    let mut clients = Vec::new();
                    for _ in 0..PER_THREAD {
                        let mut c = Client::connect(addr);
                        c.send(
                            format!(
                                "GET /mail/r{round}/ HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        clients.push(c);
                        // Pacing, so that arrivals spread over the refresh's landing.
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    clients
                        .into_iter()
                        .map(|mut c| c.read_response(false).status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        let statuses: Vec<u16> = senders
            .into_iter()
            .flat_map(|s| s.join().unwrap())
            .collect();
        let failed = statuses.iter().filter(|&&s| s != 200).count();
        assert_eq!(failed, 0, "round {round}: {failed} requests failed");
        assert_eq!(
            auth.refreshes(),
            round,
            "round {round}: one refresh per session"
        );
        // Login N got acc-(2N-1), its refresh acc-2N: every request of the round went with the latter.
        let seen = authorizations(&backend, &format!("/mail/r{round}/"));
        assert_eq!(seen.len(), THREADS * PER_THREAD);
        assert!(
            seen.iter()
                .all(|a| a == &[format!("Bearer acc-{}", 2 * round)]),
            "round {round}"
        );
    }
    let sent: Vec<String> = auth
        .state
        .refresh_bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["refresh_token"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (1..=ROUNDS).map(|n| format!("ref-{}", 2 * n - 1)).collect();
    assert_eq!(sent, expected, "each refresh token sent once");
}

#[test]
fn an_extended_access_token_is_stored_with_its_new_expiry() {
    // The upstream renews acc-1 itself (a new expiry) and rotates the refresh token: tether must keep the
    // new expiry and refresh token, or the next request would refresh again with the used ref-1.
    let auth = AuthServer::start(1, 3600);
    auth.state.keep_access.store(true, Ordering::SeqCst);
    let backend = app_backend();
    let t = Tether::start(&relay_config(backend.addr, auth.addr(), ""));
    let cookie = session_cookie(&form_login(t.addr, USER, PASSWORD));
    for i in 0..3 {
        let r = get_with(
            t.addr,
            &format!("/mail/{i}"),
            &format!("Cookie: {cookie}\r\n"),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(auth.refreshes(), 1);
    assert_eq!(
        authorizations(&backend, "/mail/"),
        [["Bearer acc-1"], ["Bearer acc-1"], ["Bearer acc-1"]]
    );
}
