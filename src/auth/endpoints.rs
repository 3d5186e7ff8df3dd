//! tether's own login endpoints, answered on any listener once pools are configured:
//! `GET|POST /.tether/login`, `POST /.tether/logout`, `POST /.tether/token`, `GET /.tether/jwks.json`,
//! and `POST /.tether/register` for a pool with `self_registration` —
//! and the answers the auth stage gives a request it cannot let through (redirect to the login page, 401,
//! 403).
//!
//! A login waits twice without holding its worker: for the password checker's verdict (argon2 runs on its
//! own threads) or the upstream's answer, then for a replica's acknowledgement of the new session (the
//! `sync` class): the client hears "logged in" only once another node could serve it. Logout and refresh
//! wait for their sync writes the same way. Progress lives in the request's plan ([`Progress`]); every
//! wake runs the stage again, which picks up where it stopped.
//!
//! Which pool an endpoint serves: the pool that lists the request's host in `hosts`, else the first pool.

use super::relay::{Flight, Job, RelayError, UpstreamToken};
use super::runtime::Auth;
use super::session::{Credential, LoginSession, UpstreamTokens};
use super::settings::{AuthSettings, Lockout, Pool};
use super::token::{Claims, TokenKind};
use crate::error::Termination;
use crate::proxy::stages::{Answer, Reply, Request, Ticket, Verdict, Wait};
use crate::store::{Kind, Record};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a login waits for the checker or the upstream before a 503.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a rotation the refresh token just before the current one is still honoured (parallel
/// refreshes, a retry after a lost answer); older ones, or later, are a reuse.
const REFRESH_GRACE: u32 = 10;
/// How long a CSRF token from the login page stays good.
const FORM_MAX_AGE: Duration = Duration::from_secs(3600);

/// A request's progress through a login, logout, refresh or upstream-token refresh.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Waiting for the checker's verdict or the upstream's answer.
    Checking {
        outcome: Arc<Outcome>,
        login: Box<PendingLogin>,
    },
    /// Waiting for a replica to acknowledge a sync write; then `reply`.
    Syncing {
        ticket: Arc<Ticket>,
        reply: Box<Reply>,
    },
    /// Waiting for a relayed upstream token's refresh (the auth stage).
    Refreshing { outcome: Arc<Outcome> },
    /// Waiting for a client application's secret to be checked (single sign-on's token, introspection
    /// and revocation endpoints).
    Client {
        outcome: Arc<Outcome>,
        pending: Box<super::oidc::Pending>,
    },
    /// Waiting for a new user's password hash (self-registration).
    Registering {
        outcome: Arc<Outcome>,
        pool: usize,
        username: String,
        json: bool,
    },
}

/// What another thread hands back to a waiting request.
#[derive(Debug)]
pub(crate) struct Outcome {
    ticket: Arc<Ticket>,
    verdict: OnceLock<Verdict2>,
}

/// The checker's or the relay's answer.
#[derive(Debug)]
enum Verdict2 {
    Password(bool),
    Upstream(Result<UpstreamToken, RelayError>),
    /// A new password's PHC string (`None`: hashing failed).
    Hashed(Option<String>),
}

impl Outcome {
    pub(super) fn new(ticket: Arc<Ticket>) -> Arc<Outcome> {
        Arc::new(Outcome {
            ticket,
            verdict: OnceLock::new(),
        })
    }

    fn set(&self, v: Verdict2) {
        let _ = self.verdict.set(v);
        self.ticket.complete();
    }

    /// Hands the checker's verdict on a password (or a client secret) to the waiting request.
    pub(super) fn set_password(&self, ok: bool) {
        self.set(Verdict2::Password(ok));
    }

    /// The checker's verdict on a password, once it is in.
    pub(super) fn password(&self) -> Option<bool> {
        match self.verdict.get() {
            Some(Verdict2::Password(ok)) => Some(*ok),
            _ => None,
        }
    }
}

/// A login between its check and its answer (never the password).
#[derive(Debug)]
pub(crate) struct PendingLogin {
    pool: usize,
    username: String,
    roles: Vec<String>,
    groups: Vec<String>,
    return_to: String,
    json: bool,
    tls: bool,
}

/// The endpoint stage: answers `/.tether/…` when pools are configured; anything else goes on.
pub(crate) fn serve(r: &mut Request<'_>) -> Verdict {
    let path = r.head.path.of(r.bytes);
    if path == super::oidc::DISCOVERY_PATH {
        return super::oidc::discovery(r);
    }
    if !path.starts_with(b"/.tether/") {
        return Verdict::Continue;
    }
    let (Some(settings), Some(auth)) = (r.cx.snapshot.auth.clone(), r.cx.auth) else {
        return Verdict::Continue;
    };
    match path {
        b"/.tether/login" => login(r, &settings, auth),
        b"/.tether/logout" => logout(r, &settings, auth),
        b"/.tether/token" => refresh(r, &settings, auth),
        b"/.tether/authorize" => super::oidc::authorize(r, &settings, auth),
        b"/.tether/userinfo" => super::oidc::userinfo(r, &settings, auth),
        b"/.tether/introspect" => {
            super::oidc::client_endpoint(r, &settings, auth, super::oidc::Endpoint::Introspect)
        }
        b"/.tether/revoke" => {
            super::oidc::client_endpoint(r, &settings, auth, super::oidc::Endpoint::Revoke)
        }
        b"/.tether/end_session" => super::oidc::end_session(r, &settings, auth),
        b"/.tether/register" => register(r, &settings, auth),
        b"/.tether/jwks.json" => match r.head.method {
            crate::http::Method::Get | crate::http::Method::Head => {
                let jwks = auth.keys.identity().jwks.clone();
                let mut reply = Reply::new(200, "application/json", jwks.as_bytes());
                reply
                    .headers
                    .push(("Cache-Control", "public, max-age=60".into()));
                answer(reply)
            }
            _ => method_not_allowed("GET, HEAD"),
        },
        _ => Verdict::Continue,
    }
}

pub(super) fn answer(reply: Reply) -> Verdict {
    Verdict::Answer(Answer::Reply(Box::new(reply)))
}

pub(super) fn method_not_allowed(allow: &'static str) -> Verdict {
    let mut reply = Reply::new(405, "text/plain", "method not allowed\n");
    reply.headers.push(("Allow", allow.into()));
    answer(reply)
}

pub(super) fn text(status: u16, body: &str) -> Verdict {
    answer(Reply::new(status, "text/plain", format!("{body}\n")))
}

fn json_error(status: u16, error: &str, message: &str) -> Reply {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    Reply::new(status, "application/json", body)
}

pub(super) fn header<'b>(r: &Request<'b>, name: &str) -> Option<&'b str> {
    r.head
        .header(r.bytes, name)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn wants_json(r: &Request<'_>) -> bool {
    header(r, "accept").is_some_and(|a| a.contains("application/json"))
}

pub(super) fn wants_html(r: &Request<'_>) -> bool {
    header(r, "accept").is_some_and(|a| a.contains("text/html"))
}

/// The pool an endpoint serves (see the module docs); `usize::MAX` (no pool) when none fits.
pub(super) fn pool_of(r: &Request<'_>, settings: &AuthSettings) -> usize {
    let host = r.head.authority.map(|a| a.of(r.bytes)).unwrap_or(b"");
    settings.pool_for_host(host).unwrap_or(usize::MAX)
}

pub(super) fn no_pool() -> Verdict {
    text(
        404,
        "no user pool for this host (list it in pools.NAME.hosts)",
    )
}

/// A cross-site browser request, which a login or logout form post must not be: the browser says so
/// (`Sec-Fetch-Site: cross-site|same-site`) or sends an `Origin` that is not this host. A client that
/// sends neither (curl, a script) is not a browser being abused.
fn cross_site(r: &Request<'_>) -> bool {
    if let Some(site) = header(r, "sec-fetch-site") {
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return true;
        }
    }
    let Some(origin) = header(r, "origin") else {
        return false;
    };
    let host = r
        .head
        .authority
        .map(|a| a.of(r.bytes))
        .and_then(|a| std::str::from_utf8(a).ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

/// The CSRF cookie's name: `__Host-` on TLS, where browsers honour the prefix; plain on plain HTTP,
/// where they refuse such cookies.
fn csrf_cookie(tls: bool) -> &'static str {
    if tls {
        super::login_form::CSRF_COOKIE
    } else {
        "tether_csrf"
    }
}

/// The login page, with a fresh CSRF binding and token.
fn login_page(
    r: &Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    pool: &Pool,
    status: u16,
    return_to: &str,
    error: Option<&str>,
) -> Reply {
    let tls = r.cx.tls;
    let binding = match crate::http::cookie::request_cookie(
        &r.head.headers,
        r.bytes,
        csrf_cookie(tls).as_bytes(),
    )
    .and_then(|b| std::str::from_utf8(b).ok())
    .filter(|b| {
        b.len() == 22
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    }) {
        Some(b) => b.to_string(),
        None => auth.csrf.new_binding(),
    };
    let csrf = auth.csrf.issue(u64::from(r.cx.unix_now), &binding);
    let page = super::login_form::LoginPage {
        action: "/.tether/login",
        csrf: &csrf,
        return_to,
        error,
        pool_name: &pool.tenant,
    };
    let body = match &settings.login_template {
        Some(t) => t.render(&page),
        None => super::login_form::render_login_page(&page),
    };
    let mut reply = Reply::new(status, "text/html; charset=utf-8", body);
    reply.headers.push((
        "Set-Cookie",
        format!(
            "{}={binding}; Path=/; HttpOnly; SameSite=Strict{}",
            csrf_cookie(tls),
            if tls { "; Secure" } else { "" }
        ),
    ));
    reply.headers.push((
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
            .into(),
    ));
    reply
}

fn query_param(target: &[u8], name: &str) -> Option<String> {
    let q = target.split(|&b| b == b'?').nth(1)?;
    q.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (k == name.as_bytes()).then(|| form_decode(v))?
    })
}

/// An `application/x-www-form-urlencoded` value: `+` is a space, then percent-decoding; `None` when not
/// UTF-8.
fn form_decode(v: &[u8]) -> Option<String> {
    let plus: Vec<u8> = v
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `/.tether/login`: the page (GET), or a login (POST, form or JSON).
fn login(r: &mut Request<'_>, settings: &Arc<AuthSettings>, auth: &Auth) -> Verdict {
    let pool_index = pool_of(r, settings);
    let Some(pool) = settings.pools.get(pool_index) else {
        return no_pool();
    };
    if let Some(p) = r.plan.auth.take() {
        return resume(r, settings, auth, *p);
    }
    match r.head.method {
        crate::http::Method::Get | crate::http::Method::Head => {
            let target = r.head.target.of(r.bytes);
            let rt = query_param(target, "return_to");
            let return_to = super::login_form::return_to_or(rt.as_deref(), "/").to_string();
            return answer(login_page(r, settings, auth, pool, 200, &return_to, None));
        }
        crate::http::Method::Post => {}
        _ => return method_not_allowed("GET, HEAD, POST"),
    }
    let Some(body) = r.body else {
        return Verdict::Wait(Wait::Body {
            limit: super::login_form::MAX_BODY_LEN,
        });
    };
    let content_type = header(r, "content-type").unwrap_or("");
    let json = wants_json(r)
        || super::login_form::body_kind(content_type)
            .is_ok_and(|k| k == super::login_form::BodyKind::Json);
    let form = match super::login_form::parse_login_body(content_type, body) {
        Ok(f) => f,
        Err(e) => {
            log::info!("login refused: {e}");
            let status = match e {
                super::login_form::FormError::UnsupportedType => 415,
                super::login_form::FormError::TooLarge { .. } => 413,
                _ => 400,
            };
            return if json {
                answer(json_error(status, "invalid_request", &e.to_string()))
            } else {
                text(status, &format!("bad login request: {e}"))
            };
        }
    };
    let return_to = super::login_form::return_to_or(form.return_to.as_deref(), "/").to_string();
    // Login CSRF: a form post carries the page's token (checked against its cookie), or comes from no
    // browser at all; a cross-site browser post is refused either way.
    if cross_site(r) {
        log::info!("login refused: cross-site request");
        return text(403, "cross-site login refused");
    }
    if let Some(token) = &form.csrf {
        let binding = crate::http::cookie::request_cookie(
            &r.head.headers,
            r.bytes,
            csrf_cookie(r.cx.tls).as_bytes(),
        )
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
        if let Err(e) = auth
            .csrf
            .verify(token, u64::from(r.cx.unix_now), binding, FORM_MAX_AGE)
        {
            log::info!("login refused: {e}");
            return answer(login_page(
                r,
                settings,
                auth,
                pool,
                403,
                &return_to,
                Some(super::login_form::FORM_EXPIRED),
            ));
        }
    }
    // A locked account or address gets a wrong password's answer before its password is looked at:
    // it never reaches the hash. No lock is taken: concurrent logins read the counters side by side.
    if let Some(lockout) = &pool.lockout {
        let now = crate::limits::lockout::now_ms();
        let decision = lock_of(r, lockout, pool, &form.username, now);
        if decision.is_locked() {
            log::info!(
                "login refused: user {:?} or its address is locked ({decision:?})",
                form.username
            );
            r.cx.metrics.login(crate::metrics::LoginOutcome::Locked);
            let retry = json.then(|| decision.retry_after(now)).flatten();
            return login_failed(r, settings, auth, pool, json, &return_to, retry);
        }
    }
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let outcome = Outcome::new(ticket.clone());
    let mut pending = PendingLogin {
        pool: pool_index,
        username: form.username.clone(),
        roles: Vec::new(),
        groups: Vec::new(),
        return_to,
        json,
        tls: r.cx.tls,
    };
    let submitted = if let Some(up) = &pool.upstream {
        let o = outcome.clone();
        auth.relay
            .submit(
                Job::Login {
                    upstream: Arc::new(relay_upstream(up)),
                    username: form.username,
                    password: form.password,
                },
                Box::new(move |res| o.set(Verdict2::Upstream(res))),
            )
            .is_ok()
    } else {
        // A disabled user is checked like an unknown one: the same work, the same answer.
        let user = find_user(r, pool, &form.username).filter(|u| {
            if u.disabled {
                log::info!("login refused: user {:?} is disabled", u.name);
            }
            !u.disabled
        });
        let check = match &user {
            Some(u) => {
                pending.roles = u.roles.clone();
                pending.groups = u.groups.clone();
                super::checker::Check::Password {
                    phc: u.hash.clone(),
                    password: form.password,
                }
            }
            None => super::checker::Check::Unknown {
                password: form.password,
            },
        };
        let o = outcome.clone();
        auth.checker
            .submit(check, Box::new(move |ok| o.set(Verdict2::Password(ok))))
            .is_ok()
    };
    if !submitted {
        log::warn!("login refused: the password checker is busy");
        let mut reply = if json {
            json_error(503, "temporarily_unavailable", "too many logins at once")
        } else {
            Reply::new(503, "text/plain", "too many logins at once, try again\n")
        };
        reply.headers.push(("Retry-After", "1".into()));
        return answer(reply);
    }
    r.plan.auth = Some(Box::new(Progress::Checking {
        outcome,
        login: Box::new(pending),
    }));
    Verdict::Wait(Wait::Ticket {
        ticket,
        until: r.cx.now + CHECK_TIMEOUT,
        on_timeout: Some(Termination::WaitTimeout),
    })
}

/// The answer to a wrong password, and to any login of a locked account or address (the same status and
/// body, so neither tells whether the password was right); `retry_after`: the lock's remaining seconds,
/// for JSON clients.
fn login_failed(
    r: &Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    pool: &Pool,
    json: bool,
    return_to: &str,
    retry_after: Option<u64>,
) -> Verdict {
    let mut reply = if json {
        json_error(401, "invalid_credentials", super::login_form::LOGIN_FAILED)
    } else {
        login_page(
            r,
            settings,
            auth,
            pool,
            401,
            return_to,
            Some(super::login_form::LOGIN_FAILED),
        )
    };
    if let Some(secs) = retry_after {
        reply.headers.push(("Retry-After", secs.to_string()));
    }
    answer(reply)
}

/// The lockout subjects of a login: the account (tenant and name, whether the user exists or not) and the
/// client's address (when the pool locks addresses).
fn lock_subjects<'a>(
    pool: &'a Pool,
    username: &'a str,
    address: &'a [u8],
) -> [crate::limits::lockout::Subject<'a>; 2] {
    use crate::limits::lockout::Subject;
    [
        Subject {
            kind: b"user",
            scope: pool.tenant.as_bytes(),
            name: username.as_bytes(),
        },
        Subject {
            kind: b"address",
            scope: b"",
            name: address,
        },
    ]
}

/// The client's address as lockout counts it (an IPv4-mapped IPv6 address is its IPv4 one).
fn address_bytes(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// Whether the account or the client's address is locked at `now` (the later lock wins).
fn lock_of(
    r: &Request<'_>,
    lockout: &Lockout,
    pool: &Pool,
    username: &str,
    now: u64,
) -> crate::limits::lockout::Decision {
    use crate::limits::lockout::{Decision, Ledger, decide};
    let ledger = Ledger {
        counters: r.cx.counters,
    };
    let (bytes, len) = address_bytes(r.cx.client);
    let [account, address] = lock_subjects(pool, username, &bytes[..len]);
    let mut decision = decide(&lockout.account, &ledger.read(&account, now), now);
    if let (Some(policy), false) = (&lockout.address, decision == Decision::Permanent) {
        match (decide(policy, &ledger.read(&address, now), now), decision) {
            (Decision::Until(a), Decision::Until(u)) => decision = Decision::Until(a.max(u)),
            (Decision::Until(a), Decision::Open) => decision = Decision::Until(a),
            _ => {}
        }
    }
    decision
}

/// Counts a wrong password (or an unknown user) against the account and the client's address.
fn count_failure(r: &Request<'_>, lockout: &Lockout, pool: &Pool, username: &str) {
    let ledger = crate::limits::lockout::Ledger {
        counters: r.cx.counters,
    };
    let now = crate::limits::lockout::now_ms();
    let (bytes, len) = address_bytes(r.cx.client);
    let [account, address] = lock_subjects(pool, username, &bytes[..len]);
    ledger.fail(&lockout.account, &account, now);
    if let Some(policy) = &lockout.address {
        ledger.fail(policy, &address, now);
    }
}

/// A user of the pool: from its users file, else from the store (users added through the admin API). A
/// users-file user an operator disabled has a stored record of its name saying so (and nothing else).
fn find_user(r: &Request<'_>, pool: &Pool, name: &str) -> Option<super::users::User> {
    let stored =
        r.cx.store
            .and_then(|store| store.get(Kind::User, user_key(pool, name).as_bytes(), r.cx.unix_now))
            .and_then(|record| {
                serde_json::from_slice::<super::users::User>(record.value.as_deref()?).ok()
            });
    if let Some(u) = pool.users.get(name) {
        let mut u = u.clone();
        u.disabled |= stored.is_some_and(|s| s.disabled);
        return Some(u);
    }
    stored
}

/// A stored user's record key: `TENANT/NAME`.
fn user_key(pool: &Pool, name: &str) -> String {
    format!("{}/{name}", pool.tenant)
}

/// `POST /.tether/register` (pools with `self_registration = true`; 404 otherwise): a new user with the
/// given `username` and `password` (form or JSON, as a login), no roles. The name must be free and valid,
/// the password must pass the pool's rules (400 with the rule's reason); the hash is made on the checker's
/// threads, and the user is written to the replicated store with the sync class (every node can then log
/// the user in). 201 (JSON) or 303 to the login page.
fn register(r: &mut Request<'_>, settings: &Arc<AuthSettings>, auth: &Auth) -> Verdict {
    if let Some(p) = r.plan.auth.take() {
        return resume(r, settings, auth, *p);
    }
    let pool_index = pool_of(r, settings);
    let Some(pool) = settings.pools.get(pool_index) else {
        return no_pool();
    };
    if !pool.self_registration || pool.upstream.is_some() {
        return text(404, "registration is not open");
    }
    if r.head.method != crate::http::Method::Post {
        return method_not_allowed("POST");
    }
    let Some(body) = r.body else {
        return Verdict::Wait(Wait::Body {
            limit: super::login_form::MAX_BODY_LEN,
        });
    };
    if cross_site(r) {
        return text(403, "cross-site registration refused");
    }
    let content_type = header(r, "content-type").unwrap_or("");
    let json = wants_json(r)
        || super::login_form::body_kind(content_type)
            .is_ok_and(|k| k == super::login_form::BodyKind::Json);
    let bad = |status: u16, error: &str, msg: &str| {
        if json {
            answer(json_error(status, error, msg))
        } else {
            text(status, msg)
        }
    };
    let form = match super::login_form::parse_login_body(content_type, body) {
        Ok(f) => f,
        Err(e) => return bad(400, "invalid_request", &format!("bad registration: {e}")),
    };
    if let Err(e) = super::users::check_name(&form.username) {
        return bad(400, "invalid_username", &format!("user name {e}"));
    }
    if let Err(e) = pool.rules.check(&form.password, &form.username) {
        return bad(400, "weak_password", &e.to_string());
    }
    if find_user(r, pool, &form.username).is_some() {
        return bad(409, "user_exists", "that user name is taken");
    }
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let outcome = Outcome::new(ticket.clone());
    let o = outcome.clone();
    let password = form.password;
    let task = Box::new(move || {
        o.set(Verdict2::Hashed(super::password::hash(&password).ok()));
    });
    if auth.checker.submit_task(task).is_err() {
        let mut reply = json_error(503, "temporarily_unavailable", "too many requests at once");
        reply.headers.push(("Retry-After", "1".into()));
        return answer(reply);
    }
    r.plan.auth = Some(Box::new(Progress::Registering {
        outcome,
        pool: pool_index,
        username: form.username,
        json,
    }));
    Verdict::Wait(Wait::Ticket {
        ticket,
        until: r.cx.now + CHECK_TIMEOUT,
        on_timeout: Some(Termination::WaitTimeout),
    })
}

fn relay_upstream(up: &super::settings::UpstreamAuth) -> super::relay::Upstream {
    super::relay::Upstream {
        address: up.address,
        host: up.host.clone(),
        login_path: up.login_path.clone(),
        refresh_path: up.refresh_path.clone(),
        timeout: up.timeout,
    }
}

/// A woken login, logout or refresh: the checker's verdict is in, or the sync write is acknowledged (or
/// timed out with the `degrade` policy).
pub(super) fn resume(
    r: &mut Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    p: Progress,
) -> Verdict {
    match p {
        Progress::Syncing { ticket, reply } => {
            if !ticket.is_done() {
                r.cx.metrics.degraded_writes.inc();
                log::warn!("auth: answered without a replica's acknowledgement (degraded)");
            }
            Verdict::Answer(Answer::Reply(reply))
        }
        Progress::Refreshing { .. } => Verdict::Answer(Answer::Refuse(Termination::Internal(
            "refresh progress at an endpoint",
        ))),
        Progress::Client { outcome, pending } => {
            super::oidc::client_checked(r, settings, auth, outcome.password(), *pending)
        }
        Progress::Registering {
            outcome,
            pool,
            username,
            json,
        } => {
            let Some(pool) = settings.pools.get(pool) else {
                return text(503, "the user pool changed; try again");
            };
            let Some(Verdict2::Hashed(Some(hash))) = outcome.verdict.get() else {
                return text(503, "could not hash the password; try again");
            };
            let user = super::users::User {
                name: username.clone(),
                hash: hash.clone(),
                roles: Vec::new(),
                groups: Vec::new(),
                disabled: false,
            };
            let Some(store) = r.cx.store else {
                return Verdict::Answer(Answer::Refuse(Termination::Internal("no store")));
            };
            let Ok(value) = serde_json::to_vec(&user) else {
                return Verdict::Answer(Answer::Refuse(Termination::Internal("user encoding")));
            };
            let record = Record {
                kind: Kind::User,
                key: user_key(pool, &username).into_bytes().into(),
                version: store.version(),
                expires: 0,
                value: Some(value.into()),
            };
            log::info!("register: user {username:?} added to {}", pool.tenant);
            let reply = if json {
                Reply::new(
                    201,
                    "application/json",
                    serde_json::json!({ "registered": username }).to_string(),
                )
            } else {
                let mut reply = Reply::new(303, "text/plain", "registered\n");
                reply.headers.push(("Location", "/.tether/login".into()));
                reply
            };
            write_then_answer(r, Some(record), reply)
        }
        Progress::Checking { outcome, login } => {
            let pool = match settings.pools.get(login.pool) {
                Some(p) => p,
                None => return text(503, "the user pool changed; try again"),
            };
            let upstream = match outcome.verdict.get() {
                Some(Verdict2::Password(true)) => None,
                Some(Verdict2::Upstream(Ok(t))) => Some(UpstreamTokens {
                    access: t.access.clone(),
                    refresh: t.refresh.clone(),
                    expires: t.expires,
                }),
                Some(Verdict2::Upstream(Err(RelayError::Unavailable(why)))) => {
                    log::warn!("login: upstream auth unavailable: {why}");
                    return if login.json {
                        answer(json_error(
                            503,
                            "temporarily_unavailable",
                            "the auth service is unavailable",
                        ))
                    } else {
                        text(503, "the auth service is unavailable, try again")
                    };
                }
                Some(Verdict2::Password(false)) | Some(Verdict2::Upstream(Err(_))) => {
                    log::info!("login failed for user {:?}", login.username);
                    r.cx.metrics.login(crate::metrics::LoginOutcome::Failed);
                    if let Some(lockout) = &pool.lockout {
                        count_failure(r, lockout, pool, &login.username);
                    }
                    return login_failed(
                        r,
                        settings,
                        auth,
                        pool,
                        login.json,
                        &login.return_to,
                        None,
                    );
                }
                None | Some(Verdict2::Hashed(_)) => return text(503, "login check lost"),
            };
            let now = r.cx.unix_now;
            let session = LoginSession {
                user: login.username.clone(),
                tenant: pool.tenant.to_string(),
                roles: login.roles.clone(),
                groups: login.groups.clone(),
                created: now,
                last_seen: now,
                idle: settings.idle_timeout,
                absolute: now.saturating_add(settings.max_lifetime),
                refresh_gen: 0,
                refreshed: 0,
                upstream,
            };
            let id = super::session::new_session_id();
            let reply = if login.json {
                match token_reply(auth, settings, &session, &id, now) {
                    Ok(r) => r,
                    Err(e) => return e,
                }
            } else {
                let cookie = match seal(
                    auth,
                    &session,
                    &id,
                    TokenKind::Session,
                    session.absolute,
                    0,
                    now,
                ) {
                    Ok(c) => c,
                    Err(e) => return e,
                };
                let mut reply = Reply::new(303, "text/plain", "logged in\n");
                reply.headers.push(("Location", login.return_to.clone()));
                reply.headers.push((
                    "Set-Cookie",
                    session_cookie(&settings.cookie, &cookie, login.tls, settings.max_lifetime),
                ));
                reply
            };
            log::info!(
                "login: user {:?} of {} logged in",
                session.user,
                session.tenant
            );
            r.cx.metrics.login(crate::metrics::LoginOutcome::Succeeded);
            if settings.metering {
                crate::limits::metering::add(
                    r.cx.counters,
                    &pool.tenant,
                    crate::limits::metering::Metric::Logins,
                    1,
                    now,
                );
            }
            write_then_answer(r, session_record(r, &id, Some(&session)), reply)
        }
    }
}

/// The `Set-Cookie` value of the session cookie.
/// `SameSite=Lax`: the cookie comes along when a user follows a link to the site (a mail notification),
/// not on cross-site posts; `Secure` on TLS listeners (a browser would refuse it on plain HTTP).
fn session_cookie(name: &str, value: &str, tls: bool, max_age: u32) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub(crate) fn clear_cookie(settings: &AuthSettings, tls: bool) -> String {
    session_cookie(&settings.cookie, "", tls, 0)
}

/// Seals one token of `session`.
fn seal(
    auth: &Auth,
    session: &LoginSession,
    id: &[u8; 16],
    kind: TokenKind,
    expires: u32,
    generation: u32,
    now: u32,
) -> Result<String, Verdict> {
    let claims = Claims {
        kind,
        user: session.user.clone(),
        tenant: session.tenant.clone(),
        session: *id,
        issued: u64::from(now),
        expires: u64::from(expires.min(session.absolute)),
        audience: session.tenant.clone(),
        generation,
        grant: None,
    };
    auth.keys.tokens().seal.seal(&claims).map_err(|e| {
        log::error!("auth: cannot seal a token: {e}");
        Verdict::Answer(Answer::Refuse(Termination::Internal("no token key")))
    })
}

/// The JSON answer to an API login or refresh: an access token and a refresh token (OAuth 2.0's token
/// response shape, RFC 6749 §5.1).
fn token_reply(
    auth: &Auth,
    settings: &AuthSettings,
    session: &LoginSession,
    id: &[u8; 16],
    now: u32,
) -> Result<Reply, Verdict> {
    let access_exp = now
        .saturating_add(settings.access_ttl)
        .min(session.absolute);
    let refresh_exp = now
        .saturating_add(settings.refresh_ttl)
        .min(session.absolute);
    let access = seal(auth, session, id, TokenKind::Access, access_exp, 0, now)?;
    let refresh = seal(
        auth,
        session,
        id,
        TokenKind::Refresh,
        refresh_exp,
        session.refresh_gen,
        now,
    )?;
    let body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": access_exp - now,
        "refresh_token": refresh,
        "refresh_expires_in": refresh_exp - now,
    })
    .to_string();
    Ok(Reply::new(200, "application/json", body))
}

/// A session's record: its value, or (`None`) its tombstone, which must outlive any value of the key.
pub(super) fn session_record(
    r: &Request<'_>,
    id: &[u8; 16],
    session: Option<&LoginSession>,
) -> Option<Record> {
    let store = r.cx.store?;
    Some(match session {
        Some(s) => Record {
            kind: Kind::LoginSession,
            key: id.as_slice().into(),
            version: store.version(),
            expires: s.expires(),
            value: Some(s.encode().into()),
        },
        None => Record {
            kind: Kind::LoginSession,
            key: id.as_slice().into(),
            version: store.version(),
            // Past any value's expiry: sessions end at most `max_lifetime` after they start.
            expires: r.cx.unix_now.saturating_add(
                r.cx.snapshot
                    .auth
                    .as_ref()
                    .map_or(86_400, |s| s.max_lifetime.saturating_add(60)),
            ),
            value: None,
        },
    })
}

/// Writes `record` with the `sync` class and answers `reply` once a replica acknowledged it (or, past
/// `[cluster] sync_timeout`, 503 — or the reply anyway with `on_sync_timeout = "degrade"`).
pub(super) fn write_then_answer(
    r: &mut Request<'_>,
    record: Option<Record>,
    reply: Reply,
) -> Verdict {
    let (Some(record), Some(store)) = (record, r.cx.store) else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal(
            "no store for login sessions",
        )));
    };
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let _ = store.write_sync(record, Arc::new(move || done.complete()));
    r.plan.auth = Some(Box::new(Progress::Syncing {
        ticket: ticket.clone(),
        reply: Box::new(reply),
    }));
    Verdict::Wait(Wait::replica(ticket, &r.cx))
}

/// `POST /.tether/logout`: revokes the session the request presents (sync), and deletes the cookie.
fn logout(r: &mut Request<'_>, settings: &Arc<AuthSettings>, auth: &Auth) -> Verdict {
    if let Some(p) = r.plan.auth.take() {
        return resume(r, settings, auth, *p);
    }
    if r.head.method != crate::http::Method::Post {
        return method_not_allowed("POST");
    }
    if cross_site(r) {
        return text(403, "cross-site logout refused");
    }
    let Some(pool) = settings.pools.get(pool_of(r, settings)) else {
        return no_pool();
    };
    let json = wants_json(r) || !wants_html(r);
    let mut reply = if json {
        Reply::new(200, "application/json", "{\"logged_out\":true}")
    } else {
        let mut reply = Reply::new(303, "text/plain", "logged out\n");
        reply.headers.push(("Location", "/.tether/login".into()));
        reply
    };
    reply
        .headers
        .push(("Set-Cookie", clear_cookie(settings, r.cx.tls)));
    let cred = super::session::credential(&r.head.headers, r.bytes, settings.cookie.as_bytes());
    let claims = cred.and_then(|c| {
        auth.keys
            .tokens()
            .open
            .open(c.token(), u64::from(r.cx.unix_now), c.kind(), &pool.tenant)
            .ok()
    });
    let Some(claims) = claims else {
        // Nothing (valid) to revoke: logging out is done all the same.
        return answer(reply);
    };
    if let Some(c) = cred {
        r.cx.auth_cache.forget(c.token());
    }
    log::info!("logout: session of user {:?} revoked", claims.user);
    let record = session_record(r, &claims.session, None);
    write_then_answer(r, record, reply)
}

/// The body of a refresh: `refresh_token` (and optionally `grant_type=refresh_token`), as a form or JSON.
fn refresh_token_of(content_type: &str, body: &[u8]) -> Result<String, &'static str> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        grant_type: Option<String>,
        refresh_token: String,
    }
    let parsed = match super::login_form::body_kind(content_type) {
        Ok(super::login_form::BodyKind::Json) => {
            serde_json::from_slice::<Body>(body).map_err(|_| "bad JSON body")?
        }
        Ok(super::login_form::BodyKind::Form) => {
            let mut grant = None;
            let mut token = None;
            for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                let (k, v) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &b""[..]),
                };
                let v = form_decode(v).ok_or("bad form encoding")?;
                match k {
                    b"grant_type" => grant = Some(v),
                    b"refresh_token" if token.is_none() => token = Some(v),
                    b"refresh_token" => return Err("refresh_token given twice"),
                    _ => {}
                }
            }
            Body {
                grant_type: grant,
                refresh_token: token.ok_or("refresh_token missing")?,
            }
        }
        Err(_) => return Err("unsupported Content-Type"),
    };
    if parsed
        .grant_type
        .as_deref()
        .is_some_and(|g| g != "refresh_token")
    {
        return Err("unsupported grant_type");
    }
    Ok(parsed.refresh_token)
}

/// `POST /.tether/token`: a refresh token for a new pair. The refresh token rotates; presenting one that
/// was already used revokes the whole session (reuse detection).
fn refresh(r: &mut Request<'_>, settings: &Arc<AuthSettings>, auth: &Auth) -> Verdict {
    if let Some(p) = r.plan.auth.take() {
        return resume(r, settings, auth, *p);
    }
    if r.head.method != crate::http::Method::Post {
        return method_not_allowed("POST");
    }
    let Some(body) = r.body else {
        return Verdict::Wait(Wait::Body {
            limit: super::oauth::MAX_BODY_LEN,
        });
    };
    if super::oidc::is_client_body(r, body) {
        // A registered application's grant (authorization code, or its own refresh token).
        return super::oidc::client_endpoint(r, settings, auth, super::oidc::Endpoint::Token);
    }
    let invalid = |msg: &str| answer(json_error(400, "invalid_request", msg));
    let token = match refresh_token_of(header(r, "content-type").unwrap_or(""), body) {
        Ok(t) => t,
        Err(e) => return invalid(e),
    };
    let Some(pool) = settings.pools.get(pool_of(r, settings)) else {
        return no_pool();
    };
    let now = r.cx.unix_now;
    let grant = |msg: &str| answer(json_error(401, "invalid_grant", msg));
    let claims = match auth.keys.tokens().open.open(
        token.as_bytes(),
        u64::from(now),
        TokenKind::Refresh,
        &pool.tenant,
    ) {
        Ok(c) => c,
        Err(e) => {
            log::info!("refresh refused: {e}");
            return grant("refresh token not valid");
        }
    };
    let Some(store) = r.cx.store else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no store")));
    };
    let Some(session) = store
        .get(Kind::LoginSession, &claims.session, now)
        .and_then(|rec| LoginSession::decode(rec.value.as_deref()?).ok())
    else {
        return grant("session ended");
    };
    if claims.generation != session.refresh_gen {
        // The token just before the current one, moments after it rotated: a parallel refresh or a
        // retry after a lost answer (oauth2-proxy logs users out here). It gets tokens of the current
        // generation; nothing rotates, nothing is written.
        let grace = claims.generation.wrapping_add(1) == session.refresh_gen
            && now.saturating_sub(session.refreshed) <= REFRESH_GRACE;
        if grace {
            return match token_reply(auth, settings, &session, &claims.session, now) {
                Ok(reply) => answer(reply),
                Err(e) => e,
            };
        }
        // An older refresh token again: someone else holds a copy. Revoke the session, so neither the
        // thief nor the user keeps it.
        log::warn!(
            "refresh token reuse for user {:?}: session revoked",
            session.user
        );
        let reply = json_error(
            401,
            "invalid_grant",
            "refresh token reused: session revoked",
        );
        let record = session_record(r, &claims.session, None);
        return write_then_answer(r, record, reply);
    }
    let mut next = session;
    next.refresh_gen = next.refresh_gen.wrapping_add(1);
    next.refreshed = now;
    next.last_seen = now;
    let reply = match token_reply(auth, settings, &next, &claims.session, now) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let record = session_record(r, &claims.session, Some(&next));
    write_then_answer(r, record, reply)
}

/// The answer to a request without a usable login on a route that needs one: a browser (`Accept` with
/// `text/html`, GET or HEAD) is sent to the login page, anything else gets 401 with `WWW-Authenticate`.
/// A presented cookie that failed is deleted.
pub(crate) fn login_required(
    r: &Request<'_>,
    settings: &AuthSettings,
    pool: &Pool,
    presented: Option<Credential<'_>>,
) -> Verdict {
    let browser = wants_html(r)
        && matches!(
            r.head.method,
            crate::http::Method::Get | crate::http::Method::Head
        );
    let mut reply = if browser {
        let target = String::from_utf8_lossy(r.head.target.of(r.bytes));
        let encoded: String =
            percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let mut reply = Reply::new(302, "text/plain", "login required\n");
        reply
            .headers
            .push(("Location", format!("/.tether/login?return_to={encoded}")));
        reply
    } else {
        let mut reply = json_error(401, "login_required", "log in first");
        let challenge = match presented {
            Some(Credential::Bearer(_)) => {
                format!("Bearer realm=\"{}\", error=\"invalid_token\"", pool.tenant)
            }
            _ => format!("Bearer realm=\"{}\"", pool.tenant),
        };
        reply.headers.push(("WWW-Authenticate", challenge));
        reply
    };
    if matches!(presented, Some(Credential::Cookie(_))) {
        reply
            .headers
            .push(("Set-Cookie", clear_cookie(settings, r.cx.tls)));
    }
    answer(reply)
}

/// The answer to a logged-in user the route's roles or groups do not admit.
pub(crate) fn forbidden() -> Verdict {
    answer(json_error(
        403,
        "forbidden",
        "your account lacks a role or group this route requires",
    ))
}

/// Starts (or joins) the refresh of a session's relayed upstream token; the request waits for it. The
/// relay's thread updates the session record (or deletes it when the upstream rejects the token) before
/// the flight ends and any waiter wakes. `None`: no refresh runs and the record no longer holds the token
/// `session` (as the request read it) has — renewed meanwhile, or the session ended: read it again.
pub(crate) fn start_upstream_refresh(
    r: &mut Request<'_>,
    auth: &Auth,
    pool: &Pool,
    session_id: [u8; 16],
    session: &LoginSession,
) -> Option<Verdict> {
    let (Some(up), Some(tokens)) = (&pool.upstream, &session.upstream) else {
        return Some(Verdict::Continue);
    };
    let Some(ticket) = r.cx.ticket() else {
        return Some(Verdict::Answer(Answer::Refuse(Termination::Internal(
            "no wake-up channel",
        ))));
    };
    let outcome = Outcome::new(ticket.clone());
    let o = outcome.clone();
    let writer = auth.relay_writer.clone();
    let Some(refresh) = tokens.refresh.clone() else {
        // Nothing to refresh with: the upstream's token has expired for good, and so has the login.
        if let Some(store) = r.cx.store {
            let _ = store.delete(
                Kind::LoginSession,
                &session_id,
                session.absolute.saturating_add(60),
            );
        }
        log::info!(
            "auth: the upstream token of user {:?} expired and cannot be refreshed: session ended",
            session.user
        );
        let settings = r.plan.snapshot.as_ref().and_then(|s| s.auth.clone())?;
        let cred = super::session::credential(&r.head.headers, r.bytes, settings.cookie.as_bytes());
        return Some(login_required(r, &settings, pool, cred));
    };
    let apply = Box::new(move |res: &Result<UpstreamToken, RelayError>| {
        apply_refresh(&writer, &session_id, res);
    });
    let done = Box::new(move |res: Result<UpstreamToken, RelayError>| {
        o.set(Verdict2::Upstream(res));
    });
    // The request read the session a moment ago; a flight may have landed since (a new token, or the
    // session deleted). Checked under the relay's lock, with `apply` run before a flight ends, so a
    // refresh token is never sent twice.
    let (store, now) = (r.cx.store, r.cx.unix_now);
    let still_due = || {
        store
            .and_then(|s| s.get(Kind::LoginSession, &session_id, now))
            .and_then(|rec| LoginSession::decode(rec.value.as_deref()?).ok())
            .and_then(|current| current.upstream)
            .is_some_and(|current| current == *tokens)
    };
    match auth.relay.refresh_once_with(
        session_id,
        Arc::new(relay_upstream(up)),
        refresh,
        &still_due,
        Some(apply),
        done,
    ) {
        Ok(Flight::Waiting) => {}
        Ok(Flight::Renewed) => return None,
        Err(_) => return Some(text(503, "the auth service is busy, try again")),
    }
    r.plan.auth = Some(Box::new(Progress::Refreshing { outcome }));
    Some(Verdict::Wait(Wait::Ticket {
        ticket,
        until: r.cx.now + up.timeout + Duration::from_secs(1),
        on_timeout: Some(Termination::WaitTimeout),
    }))
}

/// On a relay thread: a refreshed token goes into the session record; a rejected one ends the session.
fn apply_refresh(
    writer: &std::sync::Mutex<crate::store::StoreWriter>,
    id: &[u8; 16],
    res: &Result<UpstreamToken, RelayError>,
) {
    let Ok(writer) = writer.lock() else {
        return;
    };
    let now = crate::sticky::unix_now();
    let Some(record) = writer.get(Kind::LoginSession, id, now) else {
        return;
    };
    let Some(mut session) = record
        .value
        .as_deref()
        .and_then(|v| LoginSession::decode(v).ok())
    else {
        return;
    };
    match res {
        Ok(t) => {
            let renewed = UpstreamTokens {
                access: t.access.clone(),
                refresh: t
                    .refresh
                    .clone()
                    .or_else(|| session.upstream.as_ref().and_then(|u| u.refresh.clone())),
                expires: t.expires,
            };
            // The whole token, not the access token alone: an upstream may extend the same access
            // token (a new expiry, a rotated refresh token), which must be stored too.
            if session.upstream.as_ref() == Some(&renewed) {
                return; // already stored
            }
            session.upstream = Some(renewed);
            let _ = writer.put(Kind::LoginSession, id, &session.encode(), session.expires());
        }
        Err(RelayError::Rejected) => {
            log::info!(
                "auth: the upstream rejected the token of user {:?}: session ended",
                session.user
            );
            let _ = writer.delete(Kind::LoginSession, id, session.absolute.saturating_add(60));
        }
        Err(RelayError::Unavailable(_)) => {}
    }
}

/// What a woken upstream refresh means for the waiting request: go on (the record holds the new
/// token), or the answer.
pub(crate) fn refresh_outcome(
    r: &Request<'_>,
    settings: &AuthSettings,
    pool: &Pool,
    outcome: &Outcome,
) -> Option<Verdict> {
    match outcome.verdict.get() {
        Some(Verdict2::Upstream(Ok(_))) => None,
        Some(Verdict2::Upstream(Err(RelayError::Rejected))) => {
            // The session is gone: the cookie that named it goes too.
            let cred =
                super::session::credential(&r.head.headers, r.bytes, settings.cookie.as_bytes());
            Some(login_required(r, settings, pool, cred))
        }
        Some(Verdict2::Upstream(Err(RelayError::Unavailable(why)))) => {
            log::warn!("auth: upstream token refresh failed: {why}");
            Some(text(503, "the auth service is unavailable, try again"))
        }
        _ => Some(text(503, "token refresh lost")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_bodies() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            refresh_token_of(
                form,
                b"grant_type=refresh_token&refresh_token=v4.local.a%2Bb"
            ),
            Ok("v4.local.a+b".to_string())
        );
        assert_eq!(
            refresh_token_of("application/json", br#"{"refresh_token":"t"}"#),
            Ok("t".to_string())
        );
        assert!(refresh_token_of(form, b"grant_type=password&refresh_token=t").is_err());
        assert!(refresh_token_of(form, b"refresh_token=a&refresh_token=b").is_err());
        assert!(refresh_token_of(form, b"x=1").is_err());
        assert!(refresh_token_of("text/plain", b"refresh_token=t").is_err());
        assert!(refresh_token_of("application/json", b"{").is_err());
    }

    #[test]
    fn cookie_flags() {
        let plain = session_cookie("tether_session", "v", false, 60);
        assert_eq!(
            plain,
            "tether_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        let tls = session_cookie("tether_session", "v", true, 60);
        assert!(tls.ends_with("; Secure"), "{tls}");
        assert_eq!(csrf_cookie(true), "__Host-tether_csrf");
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(b"/.tether/login?return_to=%2Fmail%2F&x=1", "return_to"),
            Some("/mail/".to_string())
        );
        assert_eq!(query_param(b"/.tether/login", "return_to"), None);
    }
}
