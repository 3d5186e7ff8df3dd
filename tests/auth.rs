//! Logins at the balancer, end to end (issue #14): the real `tether` binary with a users file, real
//! backends on loopback. Login success and failure, cookie flags, redirect vs 401 vs 403, spoofed identity
//! headers, the identity JWT checked by a stock JWT crate against the JWKS, refresh rotation and reuse
//! detection, revocation across a three-node cluster, a login that survives kill -9 of its node,
//! self-registration, and a login storm beside plain traffic. The relayed upstream token has its own file
//! (`tests/auth_relay.rs`).

mod common;

use common::login::*;

use common::cluster::*;
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Routes: `/mail/` needs a login, `/admin/` the admin role, `/` is open; a pool `demo` over the example
/// users; `extra` appended.
fn auth_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [pools.demo]\nusers = \"{}\"\n\n\
         [[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\n\n\
         [[routes]]\npath_prefix = \"/admin/\"\ncluster = \"app\"\nauth = \"login\"\nroles = [\"admin\"]\n\n\
         [[routes]]\ncluster = \"app\"\n\n{extra}\n\n\
         [clusters.app]\nbackends = [{}]\n",
        users_file(),
        list.join(", ")
    )
}

/// A backend that answers with the identity headers it received, one per line.
fn identity_backend() -> Backend {
    Backend::start(|req, _| {
        let body = format!(
            "user={}\ntenant={}\nroles={}\njwt={}\nauthorization={}\n",
            req.header("x-tether-user").unwrap_or("-"),
            req.header("x-tether-tenant").unwrap_or("-"),
            req.header("x-tether-roles").unwrap_or("-"),
            req.header("x-tether-identity").unwrap_or("-"),
            req.header("authorization").unwrap_or("-"),
        );
        Some(Reply::text(200, &body))
    })
}

fn field(body: &str, name: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or("")
        .to_string()
}

#[test]
fn login_success_and_failure_with_cookie_flags() {
    let backend = identity_backend();
    // Failures in quick succession would lock alice (tests/lockout.rs); here they check the answers.
    let t = Tether::start(&auth_config(
        &[backend.addr],
        "[pools.demo.lockout]\nquick_login_check = \"0s\"\n",
    ));

    let ok = form_login(t.addr, "alice", "tether-demo");
    assert_eq!(ok.status, 303, "{}", ok.text());
    assert_eq!(ok.header("location"), Some("/"));
    let set = ok
        .headers
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("tether_session="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    let cookie = session_cookie(&ok);
    assert!(!cookie.contains("alice"), "the cookie is sealed: {cookie}");

    let r = get_with(t.addr, "/mail/inbox", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(field(&r.text(), "user"), "alice");
    assert_eq!(field(&r.text(), "tenant"), "demo");
    assert_eq!(field(&r.text(), "roles"), "user");

    // One generic answer for a wrong password and for a user that does not exist.
    let wrong = form_login(t.addr, "alice", "not-her-password");
    let nobody = form_login(t.addr, "mallory", "tether-demo");
    assert_eq!(wrong.status, 401);
    assert_eq!(nobody.status, 401);
    for r in [&wrong, &nobody] {
        assert!(
            r.text().contains("Wrong username or password."),
            "{}",
            r.text()
        );
        assert!(
            !r.headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("set-cookie")
                    && v.starts_with("tether_session=v4")),
            "no session on failure"
        );
    }
    // JSON failures are JSON, the same for both.
    for user in ["alice", "mallory"] {
        let r = post(
            t.addr,
            "/.tether/login",
            "application/json",
            &format!(r#"{{"username":"{user}","password":"nope-nope-nope"}}"#),
            "Accept: application/json\r\n",
        );
        assert_eq!(r.status, 401);
        assert_eq!(json(&r)["error"], "invalid_credentials");
    }
    // A malformed login body gets a one-line reason and never reaches a backend.
    let before = backend.request_count();
    let bad = post(
        t.addr,
        "/.tether/login",
        "application/x-www-form-urlencoded",
        "username=alice&password=%zz",
        "",
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.text().lines().count(), 1, "{}", bad.text());
    // A cross-site browser post is refused (login CSRF).
    let cross = post(
        t.addr,
        "/.tether/login",
        "application/x-www-form-urlencoded",
        "username=alice&password=tether-demo",
        "Origin: https://evil.example\r\n",
    );
    assert_eq!(cross.status, 403);
    assert_eq!(backend.request_count(), before);
    // No open redirect: an absolute return_to falls back to "/".
    let r = post(
        t.addr,
        "/.tether/login",
        "application/x-www-form-urlencoded",
        "username=alice&password=tether-demo&return_to=https%3A%2F%2Fevil.example%2F",
        "",
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let r = post(
        t.addr,
        "/.tether/login",
        "application/x-www-form-urlencoded",
        "username=alice&password=tether-demo&return_to=%2Fmail%2Finbox",
        "",
    );
    assert_eq!(r.header("location"), Some("/mail/inbox"));
    // The page itself: HTML with a CSRF field and cookie.
    let page = get_with(t.addr, "/.tether/login?return_to=/mail/", "");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("name=\"csrf\""), "{}", page.text());
    assert!(
        page.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("tether_csrf="))
    );
    // Passwords never reach the log.
    assert!(
        !t.log_lines().iter().any(|l| l.contains("tether-demo")),
        "a password was logged"
    );
}

#[test]
fn redirect_401_and_403() {
    let backend = identity_backend();
    let t = Tether::start(&auth_config(&[backend.addr], ""));
    // A browser without a session is sent to the login page, with where it was going.
    let r = get_with(t.addr, "/mail/inbox?x=1", "Accept: text/html,*/*\r\n");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("/.tether/login?return_to=%2Fmail%2Finbox%3Fx%3D1")
    );
    // Anything else gets 401 with a challenge.
    let r = get_with(t.addr, "/mail/inbox", "");
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=\"demo\"")
    );
    // A forged or garbled cookie: 401, and the cookie is deleted.
    let r = get_with(
        t.addr,
        "/mail/inbox",
        "Cookie: tether_session=v4.local.garbage\r\n",
    );
    assert_eq!(r.status, 401);
    assert!(
        r.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.contains("Max-Age=0"))
    );
    let r = get_with(
        t.addr,
        "/mail/inbox",
        "Authorization: Bearer v4.local.nope\r\n",
    );
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    // A role the user lacks: 403; the admin passes.
    let alice = session_cookie(&form_login(t.addr, "alice", "tether-demo"));
    let bob = session_cookie(&form_login(t.addr, "bob", "tether-demo"));
    let r = get_with(t.addr, "/admin/users", &format!("Cookie: {alice}\r\n"));
    assert_eq!(r.status, 403);
    let r = get_with(t.addr, "/admin/users", &format!("Cookie: {bob}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(field(&r.text(), "user"), "bob");
    // The open route needs nothing.
    assert_eq!(get(t.addr, "/public").status, 200);
    assert_eq!(
        backend.request_count(),
        2,
        "only admitted requests reach the backend"
    );
}

#[test]
fn spoofed_identity_headers_are_stripped_and_the_jwt_verifies_against_the_jwks() {
    let backend = identity_backend();
    let t = Tether::start(&auth_config(&[backend.addr], ""));
    let alice = session_cookie(&form_login(t.addr, "alice", "tether-demo"));
    let spoof = "X-Tether-User: bob\r\nX-Tether-Roles: admin\r\nX-Tether-Tenant: other\r\nX-Tether-Identity: forged\r\n";
    // Without a login, on the open route: none of them arrive.
    let r = get_with(t.addr, "/public", spoof);
    assert_eq!(r.status, 200);
    for name in ["user", "tenant", "roles", "jwt"] {
        assert_eq!(field(&r.text(), name), "-", "{name} passed: {}", r.text());
    }
    // With alice's login: only tether's values arrive.
    let r = get_with(t.addr, "/mail/", &format!("{spoof}Cookie: {alice}\r\n"));
    assert_eq!(r.status, 200);
    let body = r.text();
    assert_eq!(field(&body, "user"), "alice");
    assert_eq!(field(&body, "roles"), "user");
    assert_eq!(field(&body, "tenant"), "demo");
    let received = backend.received();
    let last = received.last().unwrap();
    assert_eq!(last.header_count("x-tether-user"), 1);
    assert_eq!(last.header_count("x-tether-identity"), 1);
    // The session cookie is tether's credential: the backend never sees it.
    assert!(
        last.header("cookie")
            .is_none_or(|c| !c.contains("tether_session")),
        "{:?}",
        last.header("cookie")
    );

    // The JWT, checked the way a backend would: a stock JWT crate, the key from the JWKS by kid.
    let jwt = field(&body, "jwt");
    let jwks = get(t.addr, "/.tether/jwks.json");
    assert_eq!(jwks.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("the kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["backends"]);
    validation.set_issuer(&["tether"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["tenant"], "demo");
    assert_eq!(data.claims["roles"], serde_json::json!(["user"]));
    // A JWT altered by one character no longer verifies.
    let mut forged = jwt.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &validation).is_err());
}

#[test]
fn bearer_tokens_refresh_rotation_and_reuse_detection() {
    let backend = identity_backend();
    let t = Tether::start(&auth_config(&[backend.addr], ""));
    let login = post(
        t.addr,
        "/.tether/login",
        "application/json",
        r#"{"username":"bob","password":"tether-demo"}"#,
        "Accept: application/json\r\n",
    );
    assert_eq!(login.status, 200, "{}", login.text());
    let tokens = json(&login);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh1 = tokens["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    assert!(access.starts_with("v4.local.") && refresh1.starts_with("v4.local."));

    // The access token is accepted as a bearer token; it is tether's, so the backend never sees it.
    let r = get_with(
        t.addr,
        "/admin/x",
        &format!("Authorization: Bearer {access}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(field(&r.text(), "user"), "bob");
    assert_eq!(field(&r.text(), "authorization"), "-");
    // A refresh token is not an access token, nor an access token a session cookie.
    let r = get_with(
        t.addr,
        "/admin/x",
        &format!("Authorization: Bearer {refresh1}\r\n"),
    );
    assert_eq!(r.status, 401);
    let r = get_with(
        t.addr,
        "/admin/x",
        &format!("Cookie: tether_session={access}\r\n"),
    );
    assert_eq!(r.status, 401);

    // Refresh: a new pair; the refresh token rotates.
    let refresh = |token: &str| {
        post(
            t.addr,
            "/.tether/token",
            "application/x-www-form-urlencoded",
            &format!("grant_type=refresh_token&refresh_token={token}"),
            "",
        )
    };
    let r = refresh(&refresh1);
    assert_eq!(r.status, 200, "{}", r.text());
    let pair2 = json(&r);
    let refresh2 = pair2["refresh_token"].as_str().unwrap().to_string();
    let access2 = pair2["access_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh1);
    let r = get_with(
        t.addr,
        "/admin/x",
        &format!("Authorization: Bearer {access2}\r\n"),
    );
    assert_eq!(r.status, 200);

    // The first refresh token again, moments later: a parallel refresh or a retry, not a theft. It gets
    // tokens of the current generation, and nobody is logged out.
    let r = refresh(&refresh1);
    assert_eq!(r.status, 200, "{}", r.text());
    let twin = json(&r);
    let r = get_with(
        t.addr,
        "/admin/x",
        &format!(
            "Authorization: Bearer {}\r\n",
            twin["access_token"].as_str().unwrap()
        ),
    );
    assert_eq!(r.status, 200);
    // The chain goes on; then the first refresh token, now two generations old: reuse. The whole
    // session is revoked.
    let r = refresh(&refresh2);
    assert_eq!(r.status, 200, "{}", r.text());
    let refresh3 = json(&r)["refresh_token"].as_str().unwrap().to_string();
    let r = refresh(&refresh1);
    assert_eq!(r.status, 401);
    assert_eq!(json(&r)["error"], "invalid_grant");
    for token in [&access, &access2] {
        let r = get_with(
            t.addr,
            "/admin/x",
            &format!("Authorization: Bearer {token}\r\n"),
        );
        assert_eq!(r.status, 401, "a token of the revoked session still works");
    }
    assert_eq!(
        refresh(&refresh3).status,
        401,
        "the newest refresh token died too"
    );
    // The log line is read by another thread: wait for it rather than look once.
    t.wait_log("refresh token reuse");
}

/// Three nodes of one cluster over the same backends, each with the example pool; the nodes' configs.
fn auth_mesh(dir: &std::path::Path, backend: SocketAddr) -> Vec<String> {
    cluster_certs(dir, "a,b,c");
    mesh_configs(&["a", "b", "c"], dir, &[backend])
        .into_iter()
        .map(|c| {
            format!(
                "{c}\n[pools.demo]\nusers = \"{}\"\n\n[[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nclass = \"secure\"\nsession = \"learn:APPSESSION\"\nauth = \"login\"\n",
                users_file()
            )
        })
        .collect()
}

#[test]
fn logout_at_one_node_refuses_the_cookie_at_the_others() {
    let backend = identity_backend();
    let dir = tempfile::tempdir().unwrap();
    let configs = auth_mesh(dir.path(), backend.addr);
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_peer(&nodes[0], "b", "up");
    wait_peer(&nodes[0], "c", "up");
    wait_peer(&nodes[1], "c", "up");

    let login = form_login(nodes[0].addr, "alice", "tether-demo");
    assert_eq!(login.status, 303, "{}", login.text());
    let cookie = session_cookie(&login);
    // The login was acknowledged by a replica: every node serves it at once.
    for n in &nodes {
        wait_until("the session at every node", || {
            get_with(n.addr, "/mail/", &format!("Cookie: {cookie}\r\n")).status == 200
        });
    }
    // Logout at b.
    let r = post(
        nodes[1].addr,
        "/.tether/logout",
        "application/x-www-form-urlencoded",
        "",
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Acknowledged by a replica: refused at b at once, and at a and c once the tombstone arrives.
    assert_eq!(
        get_with(nodes[1].addr, "/mail/", &format!("Cookie: {cookie}\r\n")).status,
        401
    );
    for n in [&nodes[0], &nodes[2]] {
        wait_until("the revocation at every node", || {
            get_with(n.addr, "/mail/", &format!("Cookie: {cookie}\r\n")).status == 401
        });
    }
}

#[test]
fn kill_9_of_the_login_node_keeps_the_user_logged_in() {
    let backend = identity_backend();
    let dir = tempfile::tempdir().unwrap();
    let configs = auth_mesh(dir.path(), backend.addr);
    let mut nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_peer(&nodes[0], "b", "up");
    wait_peer(&nodes[0], "c", "up");

    let login = form_login(nodes[0].addr, "alice", "tether-demo");
    assert_eq!(login.status, 303, "{}", login.text());
    let cookie = session_cookie(&login);
    // The login answer left only after a replica held the session: kill -9 right away.
    nodes[0].kill();
    let r = get_with(
        nodes[1].addr,
        "/mail/inbox",
        &format!("Cookie: {cookie}\r\n"),
    );
    let r = if r.status == 200 {
        r
    } else {
        // b may not be the replica that acknowledged; the other one surely has it, and b soon.
        let c = get_with(
            nodes[2].addr,
            "/mail/inbox",
            &format!("Cookie: {cookie}\r\n"),
        );
        assert!(
            r.status == 200 || c.status == 200,
            "neither survivor knows the session: b {} c {}",
            r.status,
            c.status
        );
        c
    };
    assert_eq!(field(&r.text(), "user"), "alice");
}

#[test]
fn login_storm_does_not_slow_plain_requests_on_the_same_worker() {
    let backend = Backend::named("plain");
    let t = Tether::start(&auth_config(
        &[backend.addr],
        // Lockout would stop the storm before the hash: this test is about the hash threads.
        "[auth]\nhash_threads = 1\nhash_queue = 64\n\n[pools.demo.lockout]\nenabled = false\n",
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logins = Arc::new(AtomicUsize::new(0));
    let mut storm = Vec::new();
    for _ in 0..4 {
        let (stop, logins, addr) = (stop.clone(), logins.clone(), t.addr);
        storm.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = form_login(addr, "alice", "wrong-password-x");
                assert!(r.status == 401 || r.status == 503, "{}", r.status);
                logins.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Plain requests on one keep-alive connection (one worker: the same worker as the logins).
    let mut c = Client::connect(t.addr);
    let threshold = Duration::from_millis(20);
    let (mut slow, mut total) = (0, 0);
    while total < 400 {
        let started = std::time::Instant::now();
        let r = c.get("/plain");
        assert_eq!(r.status, 200);
        if started.elapsed() > threshold {
            slow += 1;
        }
        total += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for s in storm {
        s.join().unwrap();
    }
    let n = logins.load(Ordering::Relaxed);
    assert!(n >= 4, "the storm ran: {n} logins");
    // argon2 takes ~25 ms a check; had it run on the worker, nearly every plain request would wait for
    // one. Off the worker, only scheduler noise crosses the threshold.
    assert!(
        slow * 100 <= total * 5,
        "{slow} of {total} plain requests took over {threshold:?} during a storm of {n} logins"
    );
}

#[test]
fn self_registration_adds_a_user_who_can_log_in() {
    let backend = identity_backend();
    // Closed by default: 404.
    let t = Tether::start(&auth_config(&[backend.addr], ""));
    let r = post(
        t.addr,
        "/.tether/register",
        "application/json",
        r#"{"username":"carol","password":"a long passphrase"}"#,
        "",
    );
    assert_eq!(r.status, 404);
    drop(t);

    let config = auth_config(&[backend.addr], "").replace(
        "[pools.demo]\n",
        "[pools.demo]\nself_registration = true\nmin_password_length = 12\n",
    );
    let t = Tether::start(&config);
    let register = |user: &str, password: &str| {
        post(
            t.addr,
            "/.tether/register",
            "application/json",
            &format!(r#"{{"username":"{user}","password":"{password}"}}"#),
            "Accept: application/json\r\n",
        )
    };
    // The pool's rules: too short, a common password, a bad name, a taken name.
    assert_eq!(json(&register("carol", "short"))["error"], "weak_password");
    assert_eq!(
        json(&register("carol", "q1w2e3r4t5y6"))["error"],
        "weak_password"
    );
    assert_eq!(
        json(&register("../x", "a long passphrase"))["error"],
        "invalid_username"
    );
    let taken = register("alice", "a long passphrase");
    assert_eq!(taken.status, 409);
    // A new user, who can then log in (and the file's users still can).
    let r = register("carol", "a long passphrase");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(register("carol", "another long one").status, 409);
    let login = form_login(t.addr, "carol", "a%20long%20passphrase");
    assert_eq!(login.status, 303, "{}", login.text());
    let r = get_with(
        t.addr,
        "/mail/",
        &format!("Cookie: {}\r\n", session_cookie(&login)),
    );
    assert_eq!(field(&r.text(), "user"), "carol");
    assert_eq!(field(&r.text(), "roles"), "");
    assert_eq!(form_login(t.addr, "carol", "wrong-passphrase").status, 401);
    assert_eq!(form_login(t.addr, "alice", "tether-demo").status, 303);
}
