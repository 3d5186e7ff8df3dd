//! The admin listener end to end, over real sockets against the real binary: the bearer token and each
//! refusal, `/metrics` (parsed strictly; counters equal the requests made), backends (drain, enable,
//! disable: a drained backend gets no new request while its in-flight one finishes), the cluster view,
//! the config (secrets masked) and its reload through the API (a broken file's errors come back as JSON
//! and the old config keeps serving), usage, login revocation, lockout lift, and `tether ctl`.
//!
//! Counts and outcomes only, never durations.

mod common;

use common::admin::*;
use common::cluster::*;
use common::login::*;
use common::uploads::request;
use common::*;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;

const TOKEN: &str = "test-admin-token-0123";

fn admin_section() -> String {
    format!("[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

/// One admin call with `token` (none: no Authorization header).
fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw_exchange(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    call(addr, method, path, Some(TOKEN), body)
}

/// A one-line JSON error with `error` = `code`.
#[track_caller]
fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.text().trim_end().lines().count(), 1, "{}", r.text());
    assert_eq!(json(r)["error"], code, "{}", r.text());
}

/// A strict check of the text exposition format: every line a `# HELP`, a `# TYPE` (once per family,
/// before its samples) or a sample of a typed family (`name{label="value",…} number`), counters named
/// `_total`, no series twice. Returns the samples by `name{labels}`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut helped = HashSet::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name), "bad name in {line:?}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            assert!(parts.next().is_none(), "{line:?}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line:?}");
            }
            assert!(name.starts_with("tether_"), "{line:?}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line:?}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        // name, optional {labels}, one space, value.
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.find('{') {
            Some(i) => {
                let labels = &series[i + 1..];
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{line:?}"));
                // label="value" pairs, values with \\, \" and \n escapes only.
                let mut rest = labels;
                while !rest.is_empty() {
                    let eq = rest.find("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    assert!(name_ok(&rest[..eq]), "bad label in {line:?}");
                    let mut chars = rest[eq + 2..].char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => {
                                let (_, c) = chars.next().unwrap();
                                assert!(matches!(c, '\\' | '"' | 'n'), "{line:?}");
                            }
                            Some((j, '"')) => break eq + 2 + j,
                            Some(_) => {}
                            None => panic!("unterminated label in {line:?}"),
                        }
                    };
                    rest = &rest[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                &series[..i]
            }
            None => series,
        };
        assert!(name_ok(name), "{line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| {
                    types
                        .get(*f)
                        .is_some_and(|k| k == "histogram" || k == "summary")
                })
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "series twice: {line:?}"
        );
    }
    samples
}

#[test]
fn every_call_needs_the_token_and_refusals_are_json_limited_and_logged() {
    let backend = Backend::named("app");
    let t = Tether::start(&config_for(&[backend.addr], &admin_section()));
    let a = admin_addr(&t);

    assert_error(&call(a, "GET", "/metrics", None, ""), 401, "unauthorized");
    let wrong = call(a, "GET", "/api/backends", Some("not-the-token"), "");
    assert_error(&wrong, 401, "unauthorized");
    assert!(wrong.header("www-authenticate").is_some());
    t.wait_log("admin: refused 127.0.0.1 Get \"/api/backends\": wrong bearer token");
    assert!(
        !t.log_lines()
            .iter()
            .any(|l| l.contains(TOKEN) || l.contains("not-the-token")),
        "a token in the log"
    );
    assert_eq!(admin(a, "GET", "/api/backends", "").status, 200);
    // The log level, read and changed (an audit line); a level that is none is refused.
    assert_eq!(json(&admin(a, "GET", "/api/log", ""))["level"], "debug");
    let r = admin(a, "POST", "/api/log", r#"{"level":"info"}"#);
    assert_eq!((r.status, json(&r)["level"].as_str()), (200, Some("info")));
    t.wait_log("log level DEBUG -> INFO");
    assert_error(
        &admin(a, "POST", "/api/log", r#"{"level":"loud"}"#),
        400,
        "invalid_request",
    );
    assert_error(
        &admin(
            a,
            "GET",
            &format!("/api/notifications/{}", "0".repeat(32)),
            "",
        ),
        404,
        "not_found",
    );

    // Unknown paths and wrong methods, as JSON.
    assert_error(&admin(a, "GET", "/api/nothing", ""), 404, "not_found");
    let r = admin(a, "POST", "/metrics", "");
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    assert_error(
        &admin(a, "POST", "/api/lockout/lift", "{not json"),
        400,
        "malformed_json",
    );
    assert_error(
        &admin(a, "POST", "/api/logins/revoke", "[1]"),
        400,
        "malformed_json",
    );

    // Nothing of a client route is reachable from the admin listener...
    for path in ["/x", "/app/page", "/.tether/login"] {
        assert_error(&admin(a, "GET", path, ""), 404, "not_found");
    }
    assert_eq!(backend.request_count(), 0);
    // ... and nothing of the admin API from the client listener: those paths go to the backend.
    for path in ["/metrics", "/api/backends"] {
        let r = get_with(t.addr, path, &format!("Authorization: Bearer {TOKEN}\r\n"));
        assert_eq!((r.status, r.text().as_str()), (200, "app"));
    }
    assert_eq!(backend.request_count(), 2);

    // Past 10 failures in a minute, the address is refused even with the right token.
    // One wrong token so far (a missing one is not counted: a browser asks without first); nine more.
    for _ in 0..9 {
        assert_eq!(call(a, "GET", "/metrics", Some("wrong"), "").status, 401);
    }
    let limited = admin(a, "GET", "/metrics", "");
    assert_error(&limited, 429, "too_many_failures");
    assert!(limited.header("retry-after").is_some());
    t.wait_log("failed 10 times");
    assert_eq!(t.count_log("failed 10 times"), 1);
}

/// `promtool check metrics` on an exposition: it must exit 0 and print nothing (no lint). promtool is not
/// Rust: `scripts/test` installs it (Debian's `prometheus`); without it this fails, it never skips.
fn promtool_check(body: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is not installed ({e}): run the tests with scripts/test, which installs \
                 Debian's prometheus package"
            )
        });
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    assert!(said.trim().is_empty(), "promtool lint:\n{said}");
}

#[test]
fn metrics_parse_and_counters_equal_the_requests_made() {
    let backend = Backend::start(|req, _| {
        Some(if req.path.starts_with("/missing") {
            Reply::text(404, "no")
        } else {
            Reply::text(200, "ok")
        })
    });
    let t = Tether::start(&logins_config(backend.addr));
    let a = admin_addr(&t);
    const N: usize = 17;
    const MISSING: usize = 3;
    let mut c = Client::connect(t.addr);
    for _ in 0..N {
        assert_eq!(c.get("/x").status, 200);
    }
    for _ in 0..MISSING {
        assert_eq!(c.get("/missing").status, 404);
    }
    // Logins: one good; two wrong passwords (the pool locks after 2); then one refused by the lock.
    assert_eq!(form_login(t.addr, "alice", "tether-demo").status, 303);
    for _ in 0..3 {
        assert_ne!(form_login(t.addr, "bob", "wrong-password").status, 303);
    }
    let r = admin(a, "GET", "/metrics", "");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = parse_exposition(&r.text());
    let b = format!("cluster=\"app\",backend=\"{}\"", backend.addr);
    let route = "route=\"* /\"";
    let routed = N + MISSING;
    for (series, want) in [
        (
            "tether_cluster_requests_total{cluster=\"app\"}".to_string(),
            routed,
        ),
        (
            "tether_listener_connections_total{listener=\"127.0.0.1:0\"}".into(),
            5,
        ),
        // The keep-alive connection's requests, and one login each on its own connection.
        (
            "tether_listener_requests_total{listener=\"127.0.0.1:0\"}".into(),
            routed + 4,
        ),
        (format!("tether_backend_requests_total{{{b}}}"), routed),
        (
            format!("tether_backend_responses_total{{{b},class=\"2xx\"}}"),
            N,
        ),
        (
            format!("tether_backend_responses_total{{{b},class=\"4xx\"}}"),
            MISSING,
        ),
        (format!("tether_route_requests_total{{{route}}}"), routed),
        (
            format!("tether_route_responses_total{{{route},class=\"2xx\"}}"),
            N,
        ),
        (
            format!("tether_route_responses_total{{{route},class=\"4xx\"}}"),
            MISSING,
        ),
        (
            format!("tether_route_request_duration_seconds_count{{{route}}}"),
            routed,
        ),
        (
            format!("tether_route_request_duration_seconds_bucket{{{route},le=\"+Inf\"}}"),
            routed,
        ),
        (
            "tether_cluster_responses_total{cluster=\"app\",class=\"2xx\"}".into(),
            N,
        ),
        ("tether_logins_total{outcome=\"succeeded\"}".into(), 1),
        ("tether_logins_total{outcome=\"failed\"}".into(), 2),
        ("tether_logins_total{outcome=\"locked\"}".into(), 1),
        (
            "tether_tenant_logins{tenant=\"demo\",period=\"hour\"}".into(),
            1,
        ),
        // The store's records by kind: alice's one login session; no upload.
        (
            "tether_store_kind_records{kind=\"login_session\"}".into(),
            1,
        ),
        ("tether_store_kind_records{kind=\"upload\"}".into(), 0),
    ] {
        assert_eq!(m.get(&series).copied(), Some(want as f64), "{series}");
    }
    assert_eq!(
        m.get(&format!("tether_backend_eligible{{{b}}}")),
        Some(&1.0)
    );
    promtool_check(&r.body);
}

#[test]
fn a_drained_backend_gets_no_new_requests_while_its_in_flight_one_finishes() {
    let gate = Gate::default();
    let handler = |name: &'static str, gate: Gate| {
        move |req: &ReceivedRequest, _: &mut std::net::TcpStream| {
            if req.path == "/slow" {
                gate.wait();
            }
            Some(Reply::text(200, name))
        }
    };
    let one = Backend::start(handler("one", gate.clone()));
    let two = Backend::start(handler("two", gate.clone()));
    let t = Tether::start(&config_for(&[one.addr, two.addr], &admin_section()));
    let a = admin_addr(&t);

    let list = json(&admin(a, "GET", "/api/backends", ""));
    let backends = list["clusters"][0]["backends"].as_array().unwrap().clone();
    assert_eq!(backends.len(), 2);
    for b in &backends {
        assert_eq!(
            (b["health"].as_str(), b["state"].as_str()),
            (Some("up"), Some("enabled"))
        );
    }

    // A request in flight on one backend ...
    let addr = t.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    wait_until("the slow request reaches a backend", || {
        one.request_count() + two.request_count() == 1
    });
    let (busy, idle) = if one.request_count() == 1 {
        (&one, &two)
    } else {
        (&two, &one)
    };
    let list = json(&admin(a, "GET", "/api/backends", ""));
    let in_flight: u64 = list["clusters"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["in_flight"].as_u64().unwrap())
        .sum();
    assert_eq!(in_flight, 1);

    // ... is drained: no new request reaches it, the one in flight finishes.
    let path = format!("/api/backends/app/{}/drain", busy.addr);
    let r = admin(a, "POST", &path, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["backend"]["state"], "draining");
    t.wait_log(&format!("backend {} of cluster app: drain", busy.addr));
    assert_eq!(
        t.count_log(&format!("backend {} of cluster app: drain", busy.addr)),
        1
    );
    let before = idle.request_count();
    for _ in 0..10 {
        assert_eq!(get(t.addr, "/").status, 200);
    }
    assert_eq!(
        busy.request_count(),
        1,
        "a drained backend got a new request"
    );
    assert_eq!(idle.request_count(), before + 10);
    gate.open();
    let done = slow.join().unwrap();
    assert_eq!(done.status, 200, "the in-flight request finished");

    // Disabled: the same for balancing; enabled again: it takes requests.
    let path = format!("/api/backends/app/{}/disable", busy.addr);
    assert_eq!(
        json(&admin(a, "POST", &path, ""))["backend"]["state"],
        "disabled"
    );
    for _ in 0..4 {
        get(t.addr, "/");
    }
    assert_eq!(busy.request_count(), 1);
    let path = format!("/api/backends/app/{}/enable", busy.addr);
    assert_eq!(
        json(&admin(a, "POST", &path, ""))["backend"]["state"],
        "enabled"
    );
    for _ in 0..4 {
        get(t.addr, "/");
    }
    assert!(busy.request_count() > 1, "enabled again, it takes requests");

    // Unknown backend, cluster, action; a GET on an action.
    let ghost = dead_addr();
    assert_error(
        &admin(a, "POST", &format!("/api/backends/app/{ghost}/drain"), ""),
        404,
        "not_found",
    );
    assert_error(
        &admin(
            a,
            "POST",
            &format!("/api/backends/nope/{}/drain", one.addr),
            "",
        ),
        404,
        "not_found",
    );
    assert_error(
        &admin(
            a,
            "POST",
            &format!("/api/backends/app/{}/explode", one.addr),
            "",
        ),
        404,
        "not_found",
    );
    assert_error(
        &admin(
            a,
            "GET",
            &format!("/api/backends/app/{}/drain", one.addr),
            "",
        ),
        405,
        "method_not_allowed",
    );
}

#[test]
fn reload_through_the_api_returns_errors_and_keeps_serving() {
    let backend = Backend::named("app");
    let good = config_for(&[backend.addr], &admin_section());
    let t = Tether::start(&good);
    let a = admin_addr(&t);

    // The running config, token masked.
    let r = admin(a, "GET", "/api/config", "");
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(TOKEN), "{}", r.text());
    assert_eq!(json(&r)["config"]["admin"]["token"], "********");

    // A broken file: its errors come back as JSON, the old config stays and serves.
    t.write_config(&good.replace(
        "[[routes]]\ncluster = \"app\"",
        "[[routes]]\ncluster = \"nowhere\"",
    ));
    let r = admin(a, "POST", "/api/config/reload", "");
    assert_eq!(r.status, 422, "{}", r.text());
    let body = json(&r);
    assert_eq!(body["error"], "invalid_config");
    let errors = body["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    assert!(
        errors.iter().any(|e| e["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("routes[0]"))),
        "{body}"
    );
    assert!(errors[0]["line"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(get(t.addr, "/").status, 200, "still serving the old config");
    t.wait_log("admin audit: token");
    t.wait_log("config reload refused");
    assert_eq!(t.count_log("config reload refused"), 1);

    // A good one applies: the next generation.
    t.write_config(&good.replace("format = \"json\"", "format = \"json\"\nenabled = true"));
    let r = admin(a, "POST", "/api/config/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["generation"], 2);
    assert_eq!(get(t.addr, "/").status, 200);

    // No cluster configured: the cluster view says so.
    let c = json(&admin(a, "GET", "/api/cluster", ""));
    assert_eq!(
        (c["node"].is_null(), c["peers"].as_array().map(Vec::len)),
        (true, Some(0))
    );
}

/// A node with the demo pool (alice and bob), a login-only `/mail/` route, lockout after 2 failures.
fn logins_config(backend: SocketAddr) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [pools.demo]\nusers = \"{}\"\n\n[pools.demo.lockout]\nfailures = 2\nwait_increment = \"1h\"\nmax_wait = \"1h\"\n\n\
         [[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\nauth = \"login\"\n\n\
         [[routes]]\ncluster = \"app\"\n\n\
         [clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n\n\
         [notifications]\npublish_address = \"127.0.0.1:0\"\npublish_secret = \"{PUBLISH_SECRET}\"\n\n{}",
        users_file(),
        admin_section()
    )
}

const PUBLISH_SECRET: &str = "test-publish-secret-0123";

#[test]
fn logins_are_listed_and_revoked_usage_shown_lockouts_lifted() {
    let backend = Backend::named("app");
    let t = Tether::start(&logins_config(backend.addr));
    let a = admin_addr(&t);

    let cookie = login_cookie_at(t.addr, "test");
    let other = login_cookie_at(t.addr, "test");
    let with = |c: &str| {
        get_with(
            t.addr,
            "/mail/inbox",
            &format!("Cookie: {c}\r\nAccept: application/json\r\n"),
        )
    };
    assert_eq!(with(&cookie).status, 200);

    let list = json(&admin(a, "GET", "/api/logins?user=alice", ""));
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{list}");
    let id = sessions[0]["session"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);

    // A notification for alice: one in each of her sessions' queues.
    let line = t.wait_log("notifications: publish listener on ");
    let p: SocketAddr = line
        .split("publish listener on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let r = post(
        p,
        "/publish",
        "application/json",
        r#"{"user":"alice","data":1}"#,
        &format!("Authorization: Bearer {PUBLISH_SECRET}\r\n"),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let q = json(&admin(a, "GET", &format!("/api/notifications/{id}"), ""));
    assert_eq!(q["queued"], 1, "{q}");
    assert_error(
        &admin(a, "GET", "/api/notifications/nothex", ""),
        400,
        "invalid_request",
    );

    // One session revoked: its cookie no longer works; the other one does, until all are revoked.
    let r = admin(a, "DELETE", &format!("/api/logins/{id}"), "");
    assert_eq!(
        (r.status, json(&r)["revoked"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    assert_error(
        &admin(a, "DELETE", &format!("/api/logins/{id}"), ""),
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "DELETE", "/api/logins/xyz", ""),
        400,
        "invalid_request",
    );
    let still: Vec<u16> = [&cookie, &other].iter().map(|c| with(c).status).collect();
    assert_eq!(still.iter().filter(|&&s| s == 200).count(), 1, "{still:?}");
    let r = admin(a, "POST", "/api/logins/revoke", r#"{"user":"alice"}"#);
    assert_eq!(
        (r.status, json(&r)["revoked"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    for c in [&cookie, &other] {
        assert_ne!(with(c).status, 200, "revoked");
    }
    t.wait_log("revoked every login session of a user (1)");
    assert_eq!(t.count_log("admin audit: token"), 2);
    assert_error(
        &admin(a, "GET", "/api/logins?user=alice&tenant=nope", ""),
        404,
        "not_found",
    );

    // Usage per tenant: alice's two logins.
    let u = json(&admin(a, "GET", "/api/usage?tenant=demo", ""));
    assert!(u["tenants"]["demo"].is_object(), "{u}");
    assert_error(
        &admin(a, "GET", "/api/usage?tenant=nope", ""),
        404,
        "not_found",
    );

    // Locked after two failures (for an hour) ... lifted by the API.
    for _ in 0..2 {
        assert_eq!(form_login(t.addr, "bob", "wrong").status, 401);
    }
    assert_eq!(
        form_login(t.addr, "bob", "tether-demo").status,
        401,
        "locked"
    );
    // The account and (when the pool locks addresses) the address.
    let r = admin(a, "POST", "/api/lockout/lift", r#"{"user":"bob"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(a, "POST", "/api/lockout/lift", r#"{"address":"127.0.0.1"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        form_login(t.addr, "bob", "tether-demo").status,
        303,
        "lifted"
    );
    assert_error(
        &admin(a, "POST", "/api/lockout/lift", r#"{"address":"nope"}"#),
        400,
        "invalid_request",
    );
}

/// `tether ctl ARGS` with the admin address and token from the environment: (exit code, stdout, stderr).
fn ctl(a: SocketAddr, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.arg("ctl").args(args).env("TETHER_ADMIN", a.to_string());
    match token {
        Some(t) => c.env("TETHER_ADMIN_TOKEN", t),
        None => c.env_remove("TETHER_ADMIN_TOKEN"),
    };
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_shows_tables_json_and_errors() {
    let one = Backend::named("one");
    let two = Backend::named("two");
    let good = config_for(&[one.addr, two.addr], &admin_section());
    let t = Tether::start(&good);
    let a = admin_addr(&t);

    let (code, out, err) = ctl(a, Some(TOKEN), &["backends"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("CLUSTER"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains(&one.addr.to_string()) && out.contains("enabled"),
        "{out}"
    );
    let (code, out, _) = ctl(a, Some(TOKEN), &["backends", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clusters"][0]["backends"].as_array().unwrap().len(), 2);

    // A backend by its address alone (one cluster lists it), or as CLUSTER/ADDRESS; flags beat the env.
    let (code, out, err) = ctl(a, Some(TOKEN), &["drain", &one.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("draining"), "{out}");
    let flags = ["--admin", &a.to_string(), "--token", TOKEN, "enable"];
    let target = format!("app/{}", one.addr);
    let (code, out, err) = ctl(
        "127.0.0.1:1".parse().unwrap(),
        None,
        &[&flags[..], &[target.as_str()]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("enabled"), "{out}");
    let (code, out, err) = ctl(a, Some(TOKEN), &["weight", &one.addr.to_string(), "7"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).unwrap().contains(" 7 "), "{out}");
    let (code, _, err) = ctl(a, Some(TOKEN), &["drain", "app/127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    // Refusals: no token at all, a wrong one.
    assert_eq!(ctl(a, None, &["backends"]).0, 2);
    let (code, _, err) = ctl(a, Some("wrong-token-wrong-token"), &["backends"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");

    // Reload: a broken file's errors, then a good one.
    t.write_config(&good.replace(
        "[[routes]]\ncluster = \"app\"",
        "[[routes]]\ncluster = \"nowhere\"",
    ));
    let (code, _, err) = ctl(a, Some(TOKEN), &["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("routes[0]"), "{err}");
    t.write_config(&good);
    let (code, out, err) = ctl(a, Some(TOKEN), &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "reloaded: generation 2");

    let (code, out, _) = ctl(a, Some(TOKEN), &["cluster"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("node - "), "{out}");
    let (code, out, _) = ctl(a, Some(TOKEN), &["metrics"]);
    assert_eq!(code, 0);
    assert!(out.contains("tether_requests_total"), "{out}");
}

#[test]
fn a_learned_session_is_looked_up_and_unbound() {
    let backend = Backend::start(|_, _| {
        Some(Reply::raw(
            "HTTP/1.1 200 OK\r\nSet-Cookie: APPSESSION=s3cr3t-session\r\nContent-Length: 2\r\n\r\nok",
        ))
    });
    let config = config_for(&[backend.addr], &admin_section()).replace(
        "[[routes]]\ncluster = \"app\"",
        "[[routes]]\ncluster = \"app\"\nclass = \"secure\"\nsession = \"learn:APPSESSION\"",
    );
    let t = Tether::start(&config);
    let a = admin_addr(&t);
    let body = r#"{"session":"s3cr3t-session"}"#;
    assert_error(
        &admin(a, "POST", "/api/sessions/lookup", body),
        404,
        "not_found",
    );
    assert_eq!(get(t.addr, "/").status, 200);
    let r = admin(a, "POST", "/api/sessions/lookup", body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["backend"], backend.addr.to_string());
    let r = admin(a, "POST", "/api/sessions/unbind", body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(
        &admin(a, "POST", "/api/sessions/lookup", body),
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "POST", "/api/sessions/unbind", body),
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "POST", "/api/sessions/lookup", "{}"),
        400,
        "invalid_request",
    );
    assert_error(
        &admin(a, "GET", "/api/sessions/lookup", ""),
        405,
        "method_not_allowed",
    );
    t.wait_log("session unbound from backend");
    // The session's value is in no log: not the process log, not the access log.
    let access = t.access_lines(8);
    assert!(
        !t.log_lines()
            .iter()
            .chain(&access)
            .any(|l| l.contains("s3cr3t")),
        "a session's value in a log"
    );
}

#[test]
fn the_status_page_is_one_self_contained_file_behind_basic_auth() {
    use base64::Engine;
    let backend = Backend::named("app");
    let t = Tether::start(&config_for(&[backend.addr], &admin_section()));
    let a = admin_addr(&t);
    let page = |auth: &str| get_with(a, "/", auth);
    // A browser asks without credentials first, and is asked for Basic ones (not counted as a failure).
    let r = page("");
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate").unwrap().starts_with("Basic "),
        "{:?}",
        r.headers
    );
    let basic = |password: &str| {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"));
        format!("Authorization: Basic {b}\r\n")
    };
    assert_eq!(page(&basic("wrong-token")).status, 401);
    let r = page(&basic(TOKEN));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.text();
    assert!(
        html.contains("/api/backends")
            && html.contains("/api/cluster")
            && html.contains("/metrics")
    );
    // No external asset: no URL of another origin, no linked script, style or image.
    for needle in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "<img",
        "@import",
    ] {
        assert!(!html.contains(needle), "the page refers to {needle}");
    }
    // The API takes the same Basic credentials (the page's fetches send them).
    let r = get_with(a, "/api/backends", &basic(TOKEN));
    assert_eq!(
        json(&r)["clusters"][0]["backends"][0]["address"],
        backend.addr.to_string()
    );
    // But Basic only reads: a change needs the bearer token (a browser holding Basic credentials can be
    // made to post by another site's page).
    let r = raw_exchange(
        a,
        format!(
            "POST /api/backends/app/{}/disable HTTP/1.1\r\nHost: admin\r\n{}Content-Length: 0\r\n\r\n",
            backend.addr,
            basic(TOKEN)
        )
        .as_bytes(),
    );
    assert_error(&r, 401, "unauthorized");
    assert!(r.text().contains("bearer"), "{}", r.text());
    let r = get_with(a, "/api/backends", &basic(TOKEN));
    assert_eq!(json(&r)["clusters"][0]["backends"][0]["state"], "enabled");
}

#[test]
fn a_backend_weight_set_through_the_api_shapes_the_traffic() {
    let one = Backend::named("one");
    let two = Backend::named("two");
    let t = Tether::start(&config_for(&[one.addr, two.addr], &admin_section()));
    let a = admin_addr(&t);
    let path = format!("/api/backends/app/{}/weight", one.addr);
    let r = admin(a, "POST", &path, r#"{"weight":3}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["backend"]["weight"], 3);
    assert_eq!(json(&r)["backend"]["configured_weight"], 1);
    for _ in 0..8 {
        assert_eq!(get(t.addr, "/").status, 200);
    }
    assert_eq!((one.request_count(), two.request_count()), (6, 2));
    // Back to the configured weights.
    let r = admin(a, "POST", &path, r#"{"weight":null}"#);
    assert_eq!(json(&r)["backend"]["weight"], 1);
    for _ in 0..8 {
        get(t.addr, "/");
    }
    assert_eq!((one.request_count(), two.request_count()), (10, 6));
    assert_error(
        &admin(a, "POST", &path, r#"{"weight":0}"#),
        400,
        "invalid_request",
    );
    assert_error(&admin(a, "POST", &path, "weight=3"), 400, "malformed_json");
    let ghost = format!("/api/backends/app/{}/weight", dead_addr());
    assert_error(
        &admin(a, "POST", &ghost, r#"{"weight":2}"#),
        404,
        "not_found",
    );
}

/// Two nodes: `/api/cluster` shows the peer up, and a login session revoked through one node's API is
/// refused at the other.
#[test]
fn the_cluster_view_and_a_revocation_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let backend = Backend::named("app");
    let configs: Vec<String> = mesh_configs(&["a", "b"], dir.path(), &[backend.addr])
        .into_iter()
        .map(|c| {
            format!(
                "{c}\n[pools.demo]\nusers = \"{}\"\n\n[[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\n\
                 auth = \"login\"\n\n{}",
                users_file(),
                admin_section()
            )
        })
        .collect();
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    let admins: Vec<SocketAddr> = nodes.iter().map(admin_addr).collect();
    wait_until("the peer link is up in the API", || {
        let c = json(&admin(admins[0], "GET", "/api/cluster", ""));
        c["peers"][0]["state"] == "up"
    });
    let c = json(&admin(admins[0], "GET", "/api/cluster", ""));
    assert_eq!(
        (c["node"].as_str(), c["peers"][0]["name"].as_str()),
        (Some("a"), Some("b"))
    );
    assert!(c["peers"][0]["epoch"].is_u64(), "{c}");
    // A cluster node's exposition (peers, store, tenants) parses strictly and passes promtool too.
    let r = admin(admins[0], "GET", "/metrics", "");
    let m = parse_exposition(&r.text());
    assert_eq!(m.get("tether_cluster_peer_up{peer=\"b\"}"), Some(&1.0));
    assert!(m.contains_key("tether_cluster_peer_lag_seconds{peer=\"b\"}"));
    assert!(m.contains_key("tether_cluster_peer_resyncs_total{peer=\"b\",direction=\"in\"}"));
    assert!(m.contains_key("tether_store_kind_records{kind=\"session_binding\"}"));
    promtool_check(&r.body);

    let cookie = login_cookie_at(nodes[0].addr, "test");
    let at = |n: &Tether| {
        get_with(
            n.addr,
            "/mail/",
            &format!("Cookie: {cookie}\r\nAccept: application/json\r\n"),
        )
        .status
    };
    assert_eq!(at(&nodes[0]), 200);
    // Node b lists the session once it has it (a sync write: already there), and revokes it.
    let list = json(&admin(admins[1], "GET", "/api/logins?user=alice", ""));
    let id = list["sessions"][0]["session"]
        .as_str()
        .unwrap_or_else(|| panic!("{list}"))
        .to_string();
    let r = admin(admins[1], "DELETE", &format!("/api/logins/{id}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("node a refuses the revoked session", || {
        at(&nodes[0]) != 200
    });
    assert_ne!(at(&nodes[1]), 200);
}

#[test]
fn users_are_added_changed_and_removed_through_the_api() {
    let backend = Backend::named("app");
    let t = Tether::start(&logins_config(backend.addr));
    let a = admin_addr(&t);
    let carol = r#"{"password":"carol-Secret-passphrase-1","roles":["user"]}"#;
    let r = admin(a, "PUT", "/api/users/carol", carol);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["roles"][0], "user");
    assert_eq!(
        form_login(t.addr, "carol", "carol-Secret-passphrase-1").status,
        303
    );
    // Roles change, the password stays; a new password replaces the old one.
    let r = admin(a, "PUT", "/api/users/carol", r#"{"roles":["admin"]}"#);
    assert_eq!(
        (r.status, json(&r)["roles"][0].as_str()),
        (200, Some("admin"))
    );
    assert_eq!(
        form_login(t.addr, "carol", "carol-Secret-passphrase-1").status,
        303
    );
    let r = admin(
        a,
        "PUT",
        "/api/users/carol",
        r#"{"password":"another-Long-passphrase-2"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        form_login(t.addr, "carol", "another-Long-passphrase-2").status,
        303
    );
    assert!(
        !t.log_lines().iter().any(|l| l.contains("passphrase")),
        "a password in the log"
    );
    t.wait_log("admin audit: token");
    // Refusals: a users-file user, no password for a new one, a weak one, a bad name, bad JSON.
    assert_error(
        &admin(a, "PUT", "/api/users/alice", carol),
        409,
        "in_users_file",
    );
    assert_error(
        &admin(a, "PUT", "/api/users/dave", r#"{"roles":[]}"#),
        400,
        "invalid_request",
    );
    assert_error(
        &admin(a, "PUT", "/api/users/dave", r#"{"password":"dave"}"#),
        400,
        "weak_password",
    );
    assert_error(
        &admin(a, "PUT", "/api/users/no%20spaces", carol),
        400,
        "invalid_request",
    );
    assert_error(
        &admin(a, "PUT", "/api/users/dave", "{"),
        400,
        "malformed_json",
    );
    assert_error(
        &admin(
            a,
            "PUT",
            "/api/users/dave?x",
            r#"{"tenant":"nope","password":"x"}"#,
        ),
        404,
        "not_found",
    );
    // Disabled and enabled again: a users-file user and one added through the API.
    for (user, password) in [
        ("alice", "tether-demo"),
        ("carol", "another-Long-passphrase-2"),
    ] {
        let r = admin(a, "POST", &format!("/api/users/{user}/disable"), "");
        assert_eq!(
            (r.status, json(&r)["disabled"].as_bool()),
            (200, Some(true)),
            "{}",
            r.text()
        );
        assert_eq!(form_login(t.addr, user, password).status, 401, "{user}");
        let r = admin(a, "POST", &format!("/api/users/{user}/enable"), "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(form_login(t.addr, user, password).status, 303, "{user}");
    }
    t.wait_log("login refused: user \"alice\" is disabled");
    t.wait_log("user \"carol\" of demo disabled");
    assert_error(
        &admin(a, "POST", "/api/users/nobody/disable", ""),
        404,
        "not_found",
    );
    assert_eq!(admin(a, "GET", "/api/users/alice/disable", "").status, 405);
    // Removed: no more logins.
    let r = admin(a, "DELETE", "/api/users/carol", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        form_login(t.addr, "carol", "another-Long-passphrase-2").status,
        401
    );
    assert_error(
        &admin(a, "DELETE", "/api/users/carol", ""),
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "DELETE", "/api/users/alice", ""),
        409,
        "in_users_file",
    );
}

#[test]
fn uploads_are_listed_and_cancelled_and_certificates_listed_and_reloaded() {
    let backend = Backend::named("app");
    let certs = format!("{}/configs/certs", env!("CARGO_MANIFEST_DIR"));
    let spool = tempfile::tempdir().unwrap();
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"secure\"\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n\
         certificates = [{{ cert = \"{certs}/localhost.crt\", key = \"{certs}/localhost.key\" }}]\n\n\
         [clusters.app]\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\npath_prefix = \"/up/\"\ncluster = \"app\"\nuploads = true\n\n[[routes]]\ncluster = \"app\"\n\n\
         [uploads]\ndir = \"{}\"\n\n{}",
        backend.addr,
        spool.path().display(),
        admin_section()
    );
    let t = Tether::start(&config);
    let a = admin_addr(&t);

    // Two uploads, one with 5 bytes appended.
    let tus = "Tus-Resumable: 1.0.0\r\n";
    let create = || {
        let r = request(
            t.addr,
            "POST",
            "/up/files",
            &format!("{tus}Upload-Length: 10\r\n"),
            b"",
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.header("location").unwrap().to_string()
    };
    let first = create();
    let second = create();
    let r = request(
        t.addr,
        "PATCH",
        &first,
        &format!("{tus}Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"),
        b"hello",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let id_of = |loc: &str| loc.rsplit('/').next().unwrap().to_string();
    let list = json(&admin(a, "GET", "/api/uploads", ""));
    let uploads = list["uploads"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(uploads.len(), 2, "{list}");
    let one = uploads
        .iter()
        .find(|u| u["id"] == id_of(&first))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        (one["offset"].as_u64(), one["length"].as_u64()),
        (Some(5), Some(10))
    );
    assert_eq!(one["protocol"], "tus");

    // Cancel the first: gone from the list, and the client's next HEAD finds nothing.
    let r = admin(a, "DELETE", &format!("/api/uploads/{}", id_of(&first)), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["offset"], 5);
    t.wait_log(&format!(
        "upload {} of user \"\" cancelled at offset 5",
        id_of(&first)
    ));
    let list = json(&admin(a, "GET", "/api/uploads", ""));
    assert_eq!(list["uploads"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["uploads"][0]["id"], id_of(&second));
    let r = request(t.addr, "HEAD", &first, tus, b"");
    assert_eq!(r.status, 404);
    // Refusals: the same again (gone), a malformed id, a wrong method.
    assert_error(
        &admin(a, "DELETE", &format!("/api/uploads/{}", id_of(&first)), ""),
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "DELETE", "/api/uploads/xyz", ""),
        400,
        "invalid_request",
    );
    assert_error(
        &admin(a, "POST", "/api/uploads", ""),
        405,
        "method_not_allowed",
    );

    // ctl: the uploads table, and a cancel.
    let (code, out, err) = ctl(a, Some(TOKEN), &["uploads"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.starts_with("UPLOAD") && out.contains(&id_of(&second)),
        "{out}"
    );
    let (code, out, err) = ctl(a, Some(TOKEN), &["cancel-upload", &id_of(&second)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("cancelled upload {} at offset 0", id_of(&second))
    );
    let (code, _, err) = ctl(a, Some(TOKEN), &["cancel-upload", &id_of(&second)]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    // Certificates: the TLS listener's, with its names and expiry; then a reload re-reads them.
    let list = json(&admin(a, "GET", "/api/tls/certificates", ""));
    let certs_list = list["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(certs_list.len(), 1, "{list}");
    let c = &certs_list[0];
    assert_eq!(c["used_by"], "listener secure");
    assert!(
        c["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "localhost"),
        "{c}"
    );
    assert!(c["error"].is_null(), "{c}");
    assert!(c["not_after"].as_i64().unwrap() > c["not_before"].as_i64().unwrap());
    let (code, out, err) = ctl(a, Some(TOKEN), &["certs"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("listener secure") && out.contains("localhost") && out.contains(" days"),
        "{out}"
    );
    let r = admin(a, "POST", "/api/tls/reload", "");
    assert_eq!(
        (r.status, json(&r)["generation"].as_u64()),
        (200, Some(2)),
        "{}",
        r.text()
    );
    t.wait_log("TLS certificates reload asked (a config reload)");
    assert_error(
        &admin(a, "GET", "/api/tls/reload", ""),
        405,
        "method_not_allowed",
    );
    // Without a token, nothing.
    assert_error(
        &call(a, "GET", "/api/uploads", None, ""),
        401,
        "unauthorized",
    );
    assert_error(
        &call(a, "GET", "/api/tls/certificates", Some("wrong"), ""),
        401,
        "unauthorized",
    );
}

#[test]
fn ctl_lists_sessions_revokes_one_and_shows_usage() {
    let backend = Backend::named("app");
    let t = Tether::start(&logins_config(backend.addr));
    let a = admin_addr(&t);
    let cookie = login_cookie_at(t.addr, "test");
    let _ = login_cookie_at(t.addr, "test");
    let inbox = || {
        get_with(
            t.addr,
            "/mail/inbox",
            &format!("Cookie: {cookie}\r\nAccept: application/json\r\n"),
        )
        .status
    };
    assert_eq!(inbox(), 200);

    let (code, out, err) = ctl(a, Some(TOKEN), &["sessions", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("SESSION"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, out, _) = ctl(a, Some(TOKEN), &["sessions", "alice", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<String> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    // Revoke every session shown, one by one: the cookie stops working.
    for id in &ids {
        let (code, out, err) = ctl(a, Some(TOKEN), &["revoke", id]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), "revoked 1 session(s)");
    }
    assert_ne!(inbox(), 200);
    let (code, out, _) = ctl(a, Some(TOKEN), &["sessions", "alice"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    let (code, _, err) = ctl(a, Some(TOKEN), &["revoke", &ids[0]]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    // No session id is in the log beyond its first 8 digits.
    t.wait_log(&format!("revoked login session {}…", &ids[0][..8]));
    assert!(
        !t.log_lines().iter().any(|l| l.contains(&ids[0])),
        "a session id in the log"
    );

    // Usage of the tenant: two logins, the requests.
    let (code, out, err) = ctl(a, Some(TOKEN), &["usage", "demo"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TENANT"), "{out}");
    let logins_hour = out
        .lines()
        .find(|l| l.starts_with("demo") && l.contains("hour") && l.contains(" logins "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(logins_hour.trim_end().ends_with(" 2"), "{logins_hour}");
    let (code, _, err) = ctl(a, Some(TOKEN), &["usage", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    // Users and lockouts: bob disabled (no login), enabled again; a lockout lifted.
    let (code, out, err) = ctl(a, Some(TOKEN), &["disable-user", "bob"]);
    assert_eq!(
        (code, out.trim()),
        (0, "user bob of demo: disabled"),
        "{err}"
    );
    assert_eq!(form_login(t.addr, "bob", "tether-demo").status, 401);
    let (code, out, err) = ctl(a, Some(TOKEN), &["enable-user", "bob"]);
    assert_eq!(
        (code, out.trim()),
        (0, "user bob of demo: enabled"),
        "{err}"
    );
    assert_eq!(form_login(t.addr, "bob", "tether-demo").status, 303);
    let (code, out, err) = ctl(a, Some(TOKEN), &["lift-lockout", "--user", "bob"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("lockout lifted: ") && out.contains("\"bob\""),
        "{out}"
    );
    let (code, _, err) = ctl(a, Some(TOKEN), &["disable-user", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
}

/// One admin call over TLS with `client` (its certificate, if any), the token given: the status, or the
/// handshake's (or the connection's) error.
fn tls_call(
    addr: SocketAddr,
    client: &std::sync::Arc<rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
) -> Result<u16, String> {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from("admin.test").unwrap();
    let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[test]
fn mutual_tls_on_the_admin_listener_refuses_a_client_without_a_certificate_of_its_ca() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    use tether::tls::generate::DevCa;
    let ca = DevCa::new("admin CA").unwrap();
    let rogue = DevCa::new("another CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let server = ca.server(&["admin.test"]).unwrap();
    let (cert, key) = (
        write("admin.crt", &server.cert_pem),
        write("admin.key", &server.key_pem),
    );
    let client_ca = write("clients.crt", &ca.cert_pem());
    let backend = Backend::named("app");
    let t = Tether::start(&config_for(
        &[backend.addr],
        &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             client_ca = \"{client_ca}\"\n"
        ),
    ));
    let line = t.wait_log("admin API on https://");
    assert!(line.contains("client certificates required"), "{line}");
    let a: SocketAddr = line
        .split("https://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap();

    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            r.add(c.unwrap()).unwrap();
        }
        Arc::new(r)
    };
    let provider = || Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let with_cert = |issued: &tether::tls::generate::Issued| {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        Arc::new(builder().with_client_auth_cert(chain, key).unwrap())
    };
    let ops_issued = ca.client("ops").unwrap();
    let ops = with_cert(&ops_issued);
    let stranger = with_cert(&rogue.client("ops").unwrap());
    let anonymous = Arc::new(builder().with_no_client_auth());

    // A certificate of the admin CA and the token: served. The certificate alone is not enough.
    assert_eq!(tls_call(a, &ops, "/api/backends", Some(TOKEN)), Ok(200));
    assert_eq!(tls_call(a, &ops, "/metrics", Some(TOKEN)), Ok(200));
    assert_eq!(tls_call(a, &ops, "/api/backends", None), Ok(401));
    // No certificate, or one of another CA: the handshake fails, no HTTP answer at all — the token
    // does not help.
    for (who, client) in [("anonymous", &anonymous), ("stranger", &stranger)] {
        let r = tls_call(a, client, "/api/backends", Some(TOKEN));
        assert!(r.is_err(), "{who}: {r:?}");
    }
    // tether ctl over HTTPS: the CA, the listener's name, and the client's certificate.
    let ca_file = write("ca.crt", &ca.cert_pem());
    let (ops_cert, ops_key) = (
        write("ops.crt", &ops_issued.cert_pem),
        write("ops.key", &ops_issued.key_pem),
    );
    let tls_flags = ["--cacert", &ca_file, "--server-name", "admin.test"];
    let mutual = [
        &tls_flags[..],
        &["--cert", &ops_cert, "--key", &ops_key, "backends"],
    ]
    .concat();
    let (code, out, err) = ctl(a, Some(TOKEN), &mutual);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("CLUSTER") && out.contains(&backend.addr.to_string()),
        "{out}"
    );
    // Without its certificate, or over plain HTTP, ctl gets nothing and says so.
    let (code, _, err) = ctl(a, Some(TOKEN), &[&tls_flags[..], &["backends"]].concat());
    assert_eq!(code, 1);
    assert!(err.starts_with("error: "), "{err}");
    let (code, _, _) = ctl(a, Some(TOKEN), &["backends"]);
    assert_eq!(code, 1);
    // Plain HTTP on the admin port gets no answer from the API either.
    let plain = raw_exchange(
        a,
        format!("GET /api/backends HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    );
    assert_ne!(plain.status, 200);
}
