//! Single sign-on, end to end (issue #22): the real `tether` binary as the OAuth 2.0 / OpenID Connect
//! provider of two applications, a real backend behind it. A stock client library (Python `authlib`,
//! `tests/fixtures/oidc_client.py`) runs the authorization-code flow with PKCE: discovery, login, code,
//! tokens, the ID token checked against the JWKS, userinfo, refresh, a second application signed in
//! without a second login, introspection, and logout at one application ending the other's session. Raw
//! requests check the RFC 6749 errors, a code used twice, an expired code, and a code redeemed at node b
//! after node a was killed with -9 between the redirect and the token request. `scripts/test` installs
//! authlib; without it the flow test fails (it never passes by skipping).

mod common;

use base64::Engine;
use common::cluster::*;
use common::login::*;
use common::*;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

const WEBMAIL_SECRET: &str = "webmail-secret-for-tests-0123456789";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The argon2id hash of `secret`, made by the real `tether clients secret --secret-stdin`.
fn secret_hash(secret: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["clients", "secret", "--secret-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("secret_hash = "))
        .unwrap();
    line.trim_matches('"').to_string()
}

/// The pool `demo` (alice and bob) with three applications: `webmail` (confidential, may end sessions
/// back to `http://app.test/bye`), `calendar` (public), and `quick` (confidential, codes live 1 s).
fn clients(hash: &str) -> String {
    format!(
        "[pools.demo]\nusers = \"{}\"\n\n\
         [[pools.demo.clients]]\nclient_id = \"webmail\"\nsecret_hash = \"{hash}\"\n\
         redirect_uris = [\"http://app.test/cb\"]\npost_logout_redirect_uris = [\"http://app.test/bye\"]\n\n\
         [[pools.demo.clients]]\nclient_id = \"calendar\"\nredirect_uris = [\"http://cal.test/cb\"]\nscopes = [\"openid\"]\n\n\
         [[pools.demo.clients]]\nclient_id = \"quick\"\nsecret_hash = \"{hash}\"\n\
         redirect_uris = [\"http://quick.test/cb\", \"http://quick.test/other\"]\ncode_ttl = \"1s\"\n",
        users_file()
    )
}

fn sso_config(backend: SocketAddr, hash: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n{}\n\
         [[routes]]\ncluster = \"app\"\n\n[clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n",
        clients(hash)
    )
}

/// `GET /.tether/authorize?QUERY` with a cookie (or none).
fn authorize(addr: SocketAddr, query: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    get_with(addr, &format!("/.tether/authorize?{query}"), &cookie)
}

/// The authorization query of `client` for `redirect` with the RFC 7636 example challenge.
fn code_query(client: &str, redirect: &str) -> String {
    format!(
        "response_type=code&client_id={client}&redirect_uri={}&scope=openid&state=st&code_challenge={CHALLENGE}&code_challenge_method=S256",
        enc(redirect)
    )
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A query parameter of a `Location`.
fn param(location: &str, name: &str) -> Option<String> {
    let query = location.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .unwrap()
                .into_owned()
        })
    })
}

/// A code for `client`, from a logged-in browser.
fn code_for(addr: SocketAddr, cookie: &str, client: &str, redirect: &str) -> String {
    let r = authorize(addr, &code_query(client, redirect), Some(cookie));
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").unwrap();
    assert!(location.starts_with(redirect), "{location}");
    assert_eq!(param(location, "state").as_deref(), Some("st"));
    param(location, "code").expect("a code")
}

/// `POST /.tether/token` with `form`, the client authenticated by Basic (`basic`) or not.
fn token(addr: SocketAddr, form: &str, basic: Option<(&str, &str)>) -> Response {
    let auth = basic
        .map(|(id, secret)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
            )
        })
        .unwrap_or_default();
    post(
        addr,
        "/.tether/token",
        "application/x-www-form-urlencoded",
        form,
        &auth,
    )
}

fn exchange(
    addr: SocketAddr,
    code: &str,
    client: &str,
    redirect: &str,
    verifier: &str,
) -> Response {
    token(
        addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={verifier}",
            enc(code),
            enc(redirect)
        ),
        Some((client, WEBMAIL_SECRET)),
    )
}

fn userinfo(addr: SocketAddr, access: &str) -> Response {
    get_with(
        addr,
        "/.tether/userinfo",
        &format!("Authorization: Bearer {access}\r\n"),
    )
}

/// The interpreter scripts/test installed authlib for; fails (naming scripts/test) without it.
fn python_with_authlib() -> String {
    let python = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import authlib, requests"])
        .output()
        .unwrap_or_else(|e| {
            panic!("{python} did not run ({e}): scripts/test installs python3 and authlib")
        });
    assert!(
        probe.status.success(),
        "authlib is not installed (`import authlib, requests` failed: {}); run scripts/test, which installs it (pip install authlib requests)",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    python
}

#[test]
fn authlib_signs_in_two_applications_with_one_login_and_logout_ends_both() {
    let python = python_with_authlib();
    let backend = Backend::named("app");
    let t = Tether::start(&sso_config(backend.addr, &secret_hash(WEBMAIL_SECRET)));
    let script = format!(
        "{}/tests/fixtures/oidc_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}", t.addr))
        .arg(WEBMAIL_SECRET)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the authlib client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // Discovery names this node; the ID token verified against the JWKS with that issuer and the nonce.
    assert_eq!(seen["issuer"], format!("http://{}", t.addr));
    assert_eq!(seen["webmail_login"], true, "{seen}");
    assert_eq!(seen["id_sub"], "alice");
    assert_eq!(seen["token_type"], "Bearer");
    assert_eq!(seen["scope"], "openid profile offline_access");
    assert_eq!(seen["userinfo_status"], 200);
    assert_eq!(seen["userinfo"]["sub"], "alice");
    assert_eq!(seen["userinfo"]["roles"], serde_json::json!(["user"]));
    assert_eq!(seen["refreshed"], true);
    assert_eq!(seen["refreshed_userinfo_status"], 200);
    // Single sign-on: the second application got its code without a login, on the same base session.
    assert_eq!(seen["calendar_login"], false, "{seen}");
    assert_eq!(seen["same_session"], true);
    assert_eq!(seen["calendar_userinfo_status"], 200);
    assert_eq!(seen["introspect"]["active"], true);
    assert_eq!(seen["introspect"]["client_id"], "calendar");
    assert_eq!(seen["introspect"]["username"], "alice");
    // Logout at webmail: back to its registered page with the state; calendar's tokens are dead.
    assert_eq!(seen["logout_status"], 302);
    assert_eq!(seen["logout_location"], "http://app.test/bye?state=s1");
    assert_eq!(seen["calendar_userinfo_after_logout"], 401);
    assert_eq!(seen["introspect_after_logout"]["active"], false);
    assert_eq!(
        seen["calendar_refresh_after_logout"],
        serde_json::json!([400, "invalid_grant"])
    );
    assert_eq!(seen["authorize_after_logout"], "/.tether/login");
    // Webmail's own refresh token died with the session too.
    let r = token(
        t.addr,
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            enc(seen["webmail_refresh_token"].as_str().unwrap())
        ),
        Some(("webmail", WEBMAIL_SECRET)),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(json(&r)["error"], "invalid_grant");
    // No token of the flow ever reached the backend: tether answered every endpoint itself.
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn a_code_used_twice_is_refused_and_revokes_what_the_first_use_gave() {
    let backend = Backend::named("app");
    let t = Tether::start(&sso_config(backend.addr, &secret_hash(WEBMAIL_SECRET)));
    let cookie = login_cookie_at(t.addr, "test");
    let code = code_for(t.addr, &cookie, "webmail", "http://app.test/cb");
    let first = exchange(t.addr, &code, "webmail", "http://app.test/cb", VERIFIER);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let tokens = json(&first);
    let access = tokens["access_token"].as_str().unwrap();
    assert!(access.starts_with("v4.local."));
    assert!(tokens["id_token"].as_str().unwrap().starts_with("eyJ"));
    assert_eq!(userinfo(t.addr, access).status, 200);
    // The same code again (a thief's copy): refused, and the base session is revoked.
    let again = exchange(t.addr, &code, "webmail", "http://app.test/cb", VERIFIER);
    assert_eq!(again.status, 400, "{}", again.text());
    assert_eq!(json(&again)["error"], "invalid_grant");
    assert_eq!(userinfo(t.addr, access).status, 401);
    let r = token(
        t.addr,
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            enc(tokens["refresh_token"].as_str().unwrap())
        ),
        Some(("webmail", WEBMAIL_SECRET)),
    );
    assert_eq!(json(&r)["error"], "invalid_grant");
    // The browser's login went with it: authorize sends it to the login page again.
    let r = authorize(
        t.addr,
        &code_query("webmail", "http://app.test/cb"),
        Some(&cookie),
    );
    assert_eq!(r.status, 302);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/.tether/login?return_to=%2F%2Etether%2Fauthorize")
    );
}

#[test]
fn authorization_errors_follow_rfc_6749_and_never_redirect_to_an_unregistered_uri() {
    let backend = Backend::named("app");
    let t = Tether::start(&sso_config(backend.addr, &secret_hash(WEBMAIL_SECRET)));
    let cookie = login_cookie_at(t.addr, "test");
    // An unknown client, or a redirect URI the client did not register: an error page, no Location.
    for query in [
        code_query("nobody", "http://app.test/cb"),
        code_query("webmail", "http://evil.test/cb"),
        code_query("webmail", "http://app.test/cb/"),
        code_query("webmail", "http://app.test/cb?x=1"),
        // quick registered two: naming none is ambiguous.
        "response_type=code&client_id=quick".to_string(),
    ] {
        let r = authorize(t.addr, &query, Some(&cookie));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert!(r.header("location").is_none(), "{query}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
    }
    // The rest go back to the application with the error and the state.
    let redirect = |query: &str| {
        let r = authorize(t.addr, query, Some(&cookie));
        assert_eq!(r.status, 302, "{query}: {}", r.text());
        let location = r.header("location").unwrap().to_string();
        assert!(location.starts_with("http://cal.test/cb?"), "{location}");
        assert_eq!(
            param(&location, "state").as_deref(),
            Some("st"),
            "{location}"
        );
        assert!(param(&location, "code").is_none());
        param(&location, "error").unwrap()
    };
    let cal = enc("http://cal.test/cb");
    assert_eq!(
        redirect(&format!(
            "response_type=token&client_id=calendar&redirect_uri={cal}&state=st&code_challenge={CHALLENGE}&code_challenge_method=S256"
        )),
        "unsupported_response_type"
    );
    // A public client without PKCE, or with the plain method.
    assert_eq!(
        redirect(&format!(
            "response_type=code&client_id=calendar&redirect_uri={cal}&state=st"
        )),
        "invalid_request"
    );
    assert_eq!(
        redirect(&format!(
            "response_type=code&client_id=calendar&redirect_uri={cal}&state=st&code_challenge={CHALLENGE}&code_challenge_method=plain"
        )),
        "invalid_request"
    );
    assert_eq!(
        redirect(&format!(
            "response_type=code&client_id=calendar&redirect_uri={cal}&state=st&code_challenge={CHALLENGE}&code_challenge_method=S256&scope=openid+profile"
        )),
        "invalid_scope"
    );
    // prompt=none: a silent check; a signed-in user gets a code, a signed-out one login_required.
    let silent = format!(
        "{}&prompt=none",
        code_query("calendar", "http://cal.test/cb")
    );
    let r = authorize(t.addr, &silent, Some(&cookie));
    let location = r.header("location").unwrap();
    assert!(param(location, "code").is_some(), "{location}");
    assert_eq!(param(location, "iss").as_deref(), Some("http://test"));
    let r = authorize(t.addr, &silent, None);
    assert_eq!(
        param(r.header("location").unwrap(), "error").as_deref(),
        Some("login_required")
    );
    assert_eq!(
        redirect(&format!(
            "{}&prompt=login",
            code_query("calendar", "http://cal.test/cb")
        )),
        "invalid_request"
    );
    // A parameter twice is refused, before anything else (RFC 6749 §3.1).
    let r = authorize(
        t.addr,
        &format!(
            "{}&client_id=calendar",
            code_query("calendar", "http://cal.test/cb")
        ),
        Some(&cookie),
    );
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
}

#[test]
fn token_errors_follow_rfc_6749_pkce_redirect_uri_client_and_expiry() {
    let backend = Backend::named("app");
    let t = Tether::start(&sso_config(backend.addr, &secret_hash(WEBMAIL_SECRET)));
    let cookie = login_cookie_at(t.addr, "test");
    let cb = "http://app.test/cb";
    let error = |r: &Response| json(r)["error"].as_str().unwrap_or("").to_string();

    // PKCE: a verifier missing or wrong is invalid_grant (RFC 7636 §4.6); each failure leaves the code
    // unspent, and the right exchange then works.
    let code = code_for(t.addr, &cookie, "webmail", cb);
    let r = token(
        t.addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            enc(&code),
            enc(cb)
        ),
        Some(("webmail", WEBMAIL_SECRET)),
    );
    assert_eq!(
        (r.status, error(&r)),
        (400, "invalid_grant".into()),
        "{}",
        r.text()
    );
    let wrong = format!("{}x", &VERIFIER[..VERIFIER.len() - 1]);
    let r = exchange(t.addr, &code, "webmail", cb, &wrong);
    assert_eq!(error(&r), "invalid_grant");
    // A redirect URI other than the authorization request's.
    let r = exchange(t.addr, &code, "webmail", "http://app.test/other", VERIFIER);
    assert_eq!(error(&r), "invalid_grant");
    // Wrong secret (Basic): 401 invalid_client with a Basic challenge; unknown client likewise.
    let r = token(
        t.addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}",
            enc(&code),
            enc(cb)
        ),
        Some(("webmail", "not-the-secret")),
    );
    assert_eq!((r.status, error(&r)), (401, "invalid_client".into()));
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let r = token(
        t.addr,
        "grant_type=authorization_code&code=x&client_id=nobody",
        None,
    );
    assert_eq!((r.status, error(&r)), (401, "invalid_client".into()));
    // Another client's code (client_secret_post this time): refused.
    let r = token(
        t.addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}&client_id=quick&client_secret={WEBMAIL_SECRET}",
            enc(&code),
            enc(cb)
        ),
        None,
    );
    assert_eq!(error(&r), "invalid_grant", "{}", r.text());
    // Other grant types, and a repeated parameter.
    let r = token(t.addr, "grant_type=password&client_id=calendar", None);
    assert_eq!(error(&r), "unsupported_grant_type");
    let r = token(
        t.addr,
        "grant_type=authorization_code&code=a&code=b&client_id=calendar",
        None,
    );
    assert_eq!(error(&r), "invalid_request");
    // Now the right exchange, with client_secret_post.
    let r = token(
        t.addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}&client_id=webmail&client_secret={WEBMAIL_SECRET}",
            enc(&code),
            enc(cb)
        ),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A secret accepted once is remembered (no argon2 per request), and a wrong one still refused.
    let r = post(
        t.addr,
        "/.tether/introspect",
        "application/x-www-form-urlencoded",
        "token=x",
        &format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("webmail:{WEBMAIL_SECRET}"))
        ),
    );
    assert_eq!((r.status, json(&r)["active"].clone()), (200, false.into()));
    let r = post(
        t.addr,
        "/.tether/introspect",
        "application/x-www-form-urlencoded",
        &format!("token=x&client_id=webmail&client_secret={WEBMAIL_SECRET}x"),
        "",
    );
    assert_eq!(r.status, 401);

    // A public client's code needs its verifier, and its id in the body.
    let code = code_for(t.addr, &cookie, "calendar", "http://cal.test/cb");
    let r = token(
        t.addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&client_id=calendar",
            enc(&code),
            enc("http://cal.test/cb")
        ),
        None,
    );
    assert_eq!(error(&r), "invalid_grant");
    let r = token(
        t.addr,
        &format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&client_id=calendar&code_verifier={VERIFIER}",
            enc(&code),
            enc("http://cal.test/cb")
        ),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["scope"], "openid");

    // An expired code (quick's live 1 s).
    let code = code_for(t.addr, &cookie, "quick", "http://quick.test/cb");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = exchange(t.addr, &code, "quick", "http://quick.test/cb", VERIFIER);
    assert_eq!(
        (r.status, error(&r)),
        (400, "invalid_grant".into()),
        "{}",
        r.text()
    );
    // ...which revoked nothing: the browser still signs in.
    let code = code_for(t.addr, &cookie, "quick", "http://quick.test/cb");
    let r = exchange(t.addr, &code, "quick", "http://quick.test/cb", VERIFIER);
    assert_eq!(r.status, 200, "{}", r.text());
    // A token revoked by its client (RFC 7009) is dead at userinfo and introspection.
    let access = json(&r)["access_token"].as_str().unwrap().to_string();
    assert_eq!(userinfo(t.addr, &access).status, 200);
    let basic = format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("quick:{WEBMAIL_SECRET}"))
    );
    let r = post(
        t.addr,
        "/.tether/revoke",
        "application/x-www-form-urlencoded",
        &format!("token={}", enc(&access)),
        &basic,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(userinfo(t.addr, &access).status, 401);
    let r = post(
        t.addr,
        "/.tether/introspect",
        "application/x-www-form-urlencoded",
        &format!("token={}", enc(&access)),
        &basic,
    );
    assert_eq!(json(&r)["active"], false);
    // A public client may not introspect.
    let r = post(
        t.addr,
        "/.tether/introspect",
        "application/x-www-form-urlencoded",
        &format!("token={}&client_id=calendar", enc(&access)),
        "",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn tether_own_refresh_tokens_still_refresh_beside_the_applications() {
    let backend = Backend::named("app");
    let t = Tether::start(&sso_config(backend.addr, &secret_hash(WEBMAIL_SECRET)));
    let r = json_login(t.addr, "bob", "tether-demo");
    assert_eq!(r.status, 200, "{}", r.text());
    let refresh = json(&r)["refresh_token"].as_str().unwrap().to_string();
    let r = token(t.addr, &format!("refresh_token={}", enc(&refresh)), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        json(&r)["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("v4.local.")
    );
    // An application's access token is no bearer token for tether's own login routes, and tether's
    // own access token is not an application's at userinfo.
    let access = json(&r)["access_token"].as_str().unwrap().to_string();
    assert_eq!(userinfo(t.addr, &access).status, 401);
}

#[test]
fn a_code_is_redeemed_at_node_b_after_node_a_is_killed() {
    let backend = Backend::named("app");
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b,c");
    let hash = secret_hash(WEBMAIL_SECRET);
    let configs: Vec<String> = mesh_configs(&["a", "b", "c"], dir.path(), &[backend.addr])
        .into_iter()
        .map(|c| format!("{c}\n{}", clients(&hash)))
        .collect();
    let mut nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    wait_peer(&nodes[0], "b", "up");
    wait_peer(&nodes[0], "c", "up");
    wait_peer(&nodes[1], "c", "up");

    let cookie = login_cookie_at(nodes[0].addr, "test");
    let code = code_for(nodes[0].addr, &cookie, "webmail", "http://app.test/cb");
    // Between the redirect and the token request, node a dies without a word.
    nodes[0].kill();
    let mut r = exchange(
        nodes[1].addr,
        &code,
        "webmail",
        "http://app.test/cb",
        VERIFIER,
    );
    let (redeemer, other) = if r.status == 200 {
        (1, 2)
    } else {
        // b may not have been the replica that acknowledged the login; c was, then.
        r = exchange(
            nodes[2].addr,
            &code,
            "webmail",
            "http://app.test/cb",
            VERIFIER,
        );
        (2, 1)
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let access = json(&r)["access_token"].as_str().unwrap().to_string();
    assert_eq!(userinfo(nodes[redeemer].addr, &access).status, 200);
    wait_until("the session at the other survivor", || {
        userinfo(nodes[other].addr, &access).status == 200
    });
    // The code was spent with a sync write, which only the other survivor could acknowledge: a second
    // use there fails at once (and revokes the session everywhere).
    let again = exchange(
        nodes[other].addr,
        &code,
        "webmail",
        "http://app.test/cb",
        VERIFIER,
    );
    assert_eq!(json(&again)["error"], "invalid_grant", "{}", again.text());
    wait_until("the revocation at the redeemer", || {
        userinfo(nodes[redeemer].addr, &access).status == 401
    });
}

#[test]
fn discovery_and_the_admin_api_describe_the_provider() {
    let backend = Backend::named("app");
    let hash = secret_hash(WEBMAIL_SECRET);
    let t = Tether::start(&format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token-0123\"\n",
        sso_config(backend.addr, &hash)
    ));
    // The admin API lists the applications, never a secret's hash.
    let r = raw_exchange(
        common::admin::admin_addr(&t),
        b"GET /api/clients HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer test-admin-token-0123\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let list = json(&r);
    let ids: Vec<&str> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["webmail", "calendar", "quick"]);
    assert_eq!(list["clients"][0]["confidential"], true);
    assert_eq!(list["clients"][1]["confidential"], false);
    assert_eq!(list["clients"][2]["code_ttl"], 1);
    assert!(!r.text().contains("argon2"));
    let r = get(t.addr, "/.well-known/openid-configuration");
    assert_eq!(r.status, 200, "{}", r.text());
    let d = json(&r);
    assert_eq!(d["issuer"], "http://test");
    assert_eq!(d["authorization_endpoint"], "http://test/.tether/authorize");
    assert_eq!(d["jwks_uri"], "http://test/.tether/jwks.json");
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    // The PKCE example of RFC 7636 holds (the tests' verifier and challenge belong together).
    let computed =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER));
    assert_eq!(computed, CHALLENGE);
}
