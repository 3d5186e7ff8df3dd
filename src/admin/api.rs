//! The `admin` request stage: every request of the admin listener is answered here (bearer token first),
//! and nothing else looks at it. `GET /metrics` and the REST API under `/api/` (docs/ADMIN.md).
//!
//! Like `notify::endpoints`, this is written against the stages' types, so it belongs with `proxy`. On a
//! client listener the stage costs one boolean. Work that must not run on a worker — a config reload,
//! a scan of the store — is handed to the main thread as a [`Job`]; the call waits on a ticket.

use super::{Admin, Job, JobKind, JobSlot, Outcome, parse_session, session_hex};
use crate::error::Termination;
use crate::http::Method;
use crate::proxy::stages::{Answer, Reply, Request, Verdict, Wait};
use crate::store::{Kind, Record};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The live status page: one HTML file with its script and styles inline, reading the API.
const STATUS_PAGE: &str = include_str!("status.html");

/// The longest body an admin call takes (they are small JSON objects).
const MAX_BODY: usize = 64 * 1024;
/// How long a call waits for the main thread (a reload parses and checks certificates).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin call's progress, kept in the plan across its waits.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Waiting for the main thread; then `then`.
    Job { slot: Arc<JobSlot>, then: Then },
    /// Waiting for a replica to hold a write; then `reply`.
    Syncing {
        ticket: Arc<crate::proxy::stages::Ticket>,
        reply: Box<Reply>,
    },
    /// Waiting for the password checker's threads to hash a user's new password.
    Hashing {
        hash: Arc<parking_lot::Mutex<Option<String>>>,
        user: Box<crate::auth::users::User>,
        pool: usize,
    },
}

/// What a call does with its job's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    Reload,
    ListLogins,
    RevokeLogins,
    ListUploads,
    ListCertificates,
}

/// The request stage.
pub(crate) fn serve(r: &mut Request<'_>) -> Verdict {
    if !r.cx.admin_listener {
        return Verdict::Continue;
    }
    let Some(admin) = r.cx.admin else {
        return error(503, "unavailable", "the admin API is not running");
    };
    if let Some(p) = r.plan.admin.take() {
        return resume(r, admin, *p);
    }
    let now = r.cx.now;
    if admin.limited(r.cx.client, now) {
        let mut reply = reply(
            429,
            json!({"error": "too_many_failures", "message": "too many failed calls from this address"}),
        );
        let after = admin.retry_after(r.cx.client, now);
        reply.headers.push(("Retry-After", after.to_string()));
        return answer(reply);
    }
    match presented(r) {
        None => return refuse(r, admin, "missing bearer token"),
        Some((t, _)) if !admin.token_matches(&t) => {
            return refuse(r, admin, "wrong bearer token");
        }
        // A browser sends Basic credentials it holds by itself, also on a form another site posts to the
        // admin listener: Basic only reads (the status page); changes need the bearer token (no CSRF).
        Some((_, Scheme::Basic)) if !matches!(r.head.method, Method::Get | Method::Head) => {
            return refuse(
                r,
                admin,
                "basic credentials only read: changes need a bearer token",
            );
        }
        Some(_) => {}
    }
    route(r, admin)
}

/// How a call presented the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Basic,
}

/// The token a call presents: `Authorization: Bearer TOKEN`, or — for a browser on the status page,
/// which can only send what it prompts for — `Authorization: Basic` with the token as the password (any
/// user name).
fn presented(r: &Request<'_>) -> Option<(Vec<u8>, Scheme)> {
    use base64::Engine;
    let value = r.head.header(r.bytes, "authorization")?;
    if let Some(t) = crate::auth::session::bearer(value) {
        return Some((t.to_vec(), Scheme::Bearer));
    }
    let rest = value
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case(b"basic "))
        .map(|_| value[6..].trim_ascii())?;
    let pair = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = pair.iter().position(|&b| b == b':')?;
    Some((pair[colon + 1..].to_vec(), Scheme::Basic))
}

fn answer(reply: Reply) -> Verdict {
    Verdict::Answer(Answer::Reply(Box::new(reply)))
}

fn reply(status: u16, body: serde_json::Value) -> Reply {
    let mut text = body.to_string();
    text.push('\n');
    Reply::new(status, "application/json", text)
}

fn ok(body: serde_json::Value) -> Verdict {
    answer(reply(200, body))
}

/// A one-line JSON error.
fn error(status: u16, error: &str, message: &str) -> Verdict {
    answer(reply(status, json!({ "error": error, "message": message })))
}

fn not_found(message: &str) -> Verdict {
    error(404, "not_found", message)
}

fn method_not_allowed(allow: &'static str) -> Verdict {
    let mut reply = reply(
        405,
        json!({"error": "method_not_allowed", "message": format!("use {allow}")}),
    );
    reply.headers.push(("Allow", allow.into()));
    answer(reply)
}

/// A refused call: 401, logged — address, method, path and reason, never what was presented — and, for a
/// wrong token, counted against the address (a missing one guesses nothing: a browser asks for the
/// status page without credentials before it prompts). Past the limit, one line says the address is
/// cut off for the window.
fn refuse(r: &Request<'_>, admin: &Admin, reason: &str) -> Verdict {
    // Neither a missing token nor the right one in Basic guesses anything: not counted.
    let missing = reason.starts_with("missing") || reason.starts_with("basic");
    let n = if missing {
        0
    } else {
        admin.refused(r.cx.client, r.cx.now)
    };
    if n <= super::MAX_REFUSALS {
        let path = String::from_utf8_lossy(r.head.path.of(r.bytes));
        let mut path: String = path.chars().take(200).collect();
        // A login session's id in a path: not in the log.
        for prefix in ["/api/logins/", "/api/notifications/"] {
            if path.starts_with(prefix) && path.len() > prefix.len() {
                path = format!("{prefix}…");
            }
        }
        log::warn!(
            "admin: refused {} {:?} {path:?}: {reason}",
            r.cx.client,
            r.head.method
        );
        if n == super::MAX_REFUSALS {
            log::warn!(
                "admin: {} failed {n} times; its calls are refused (429) for the rest of the minute",
                r.cx.client
            );
        }
    }
    let mut reply = reply(401, json!({"error": "unauthorized", "message": reason}));
    // The status page asks the browser for Basic credentials (it prompts); API clients get Bearer.
    let challenge = if r.head.path.of(r.bytes) == b"/" {
        "Basic realm=\"tether-admin\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"tether-admin\""
    };
    reply.headers.push(("WWW-Authenticate", challenge.into()));
    answer(reply)
}

/// An audit line: which token (its fingerprint), from where, what changed.
fn audit(r: &Request<'_>, admin: &Admin, what: &str) {
    log::info!(
        "admin audit: token {} from {}: {what}",
        admin.fingerprint,
        r.cx.client
    );
}

/// The query's decoded `name=value` pairs.
fn query(r: &Request<'_>) -> Vec<(String, String)> {
    let target = r.head.target.of(r.bytes);
    let q = match target.iter().position(|&b| b == b'?') {
        Some(i) => &target[i + 1..],
        None => b"",
    };
    let decode = |s: &[u8]| {
        // `+` is a space in a query (as HTML forms and curl --data-urlencode write it).
        let s: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    q.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&p[..i]), decode(&p[i + 1..])),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn param(q: &[(String, String)], name: &str) -> Option<String> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The body as a JSON object, or the 400 for it (the stage asks for the body first).
fn body_json(r: &Request<'_>) -> Result<serde_json::Map<String, serde_json::Value>, Verdict> {
    let body = r.body.unwrap_or(b"");
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(
            400,
            "malformed_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(error(400, "malformed_json", &e.to_string())),
    }
}

fn string_field(m: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<String> {
    m.get(name).and_then(|v| v.as_str()).map(str::to_string)
}

fn route(r: &mut Request<'_>, admin: &Admin) -> Verdict {
    let Ok(path) = std::str::from_utf8(r.head.path.of(r.bytes)) else {
        return not_found("no such path");
    };
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = r.head.method;
    let get = method == Method::Get || method == Method::Head;
    let post = method == Method::Post;
    match segments.as_slice() {
        [] if get => {
            let mut reply = Reply::new(200, "text/html; charset=utf-8", STATUS_PAGE);
            reply.headers.push(("Cache-Control", "no-store".into()));
            reply.headers.push((
                "Content-Security-Policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'".into(),
            ));
            answer(reply)
        }
        [] => method_not_allowed("GET"),
        ["metrics"] if get => metrics(r, admin),
        ["metrics"] => method_not_allowed("GET"),
        ["api", "backends"] if get => ok(backends_json(r)),
        ["api", "backends"] => method_not_allowed("GET"),
        ["api", "backends", cluster, address, "weight"] if post => {
            let (cluster, address) = (cluster.to_string(), address.to_string());
            backend_weight(r, admin, &cluster, &address)
        }
        ["api", "backends", cluster, address, action] if post => {
            backend_action(r, admin, cluster, address, action)
        }
        ["api", "backends", _, _, _] => method_not_allowed("POST"),
        ["api", "clients"] if get => ok(clients_json(r)),
        ["api", "clients"] => method_not_allowed("GET"),
        ["api", "cluster"] if get => ok(cluster_json(admin)),
        ["api", "cluster"] => method_not_allowed("GET"),
        ["api", "config"] if get => {
            let text = admin.config_json();
            answer(Reply::new(
                200,
                "application/json",
                format!("{{\"config\":{text}}}\n"),
            ))
        }
        ["api", "config"] => method_not_allowed("GET"),
        ["api", "config", "reload"] if post => {
            audit(r, admin, "config reload asked");
            submit(r, admin, JobKind::Reload, Then::Reload)
        }
        ["api", "config", "reload"] => method_not_allowed("POST"),
        ["api", "usage"] if get => usage(r),
        ["api", "usage"] => method_not_allowed("GET"),
        ["api", "logins"] if get => {
            let q = query(r);
            match user_of(r, param(&q, "user"), param(&q, "tenant")) {
                Ok((tenant, user)) => {
                    submit(r, admin, JobKind::Logins { tenant, user }, Then::ListLogins)
                }
                Err(v) => v,
            }
        }
        ["api", "logins"] => method_not_allowed("GET"),
        ["api", "logins", "revoke"] if post => revoke(r, admin),
        ["api", "logins", "revoke"] => method_not_allowed("POST"),
        ["api", "logins", session] if method == Method::Delete => {
            let session = session.to_string();
            revoke_one(r, admin, &session)
        }
        ["api", "logins", _] => method_not_allowed("DELETE"),
        ["api", "log"] if get => {
            ok(json!({ "level": log::max_level().to_string().to_lowercase() }))
        }
        ["api", "log"] if post => log_level(r, admin),
        ["api", "log"] => method_not_allowed("GET, POST"),
        ["api", "notifications", session] if get => {
            let session = session.to_string();
            notifications(r, &session)
        }
        ["api", "notifications", _] => method_not_allowed("GET"),
        // The session's value travels in the body: it is the backend's credential, and a path ends up in
        // the access log.
        ["api", "sessions", "lookup"] if post => session_call(r, admin, false),
        ["api", "sessions", "unbind"] if post => session_call(r, admin, true),
        ["api", "sessions", "lookup" | "unbind"] => method_not_allowed("POST"),
        ["api", "users", name] if method == Method::Put => {
            let name = name.to_string();
            put_user(r, admin, &name)
        }
        ["api", "users", name] if method == Method::Delete => {
            let name = name.to_string();
            delete_user(r, admin, &name)
        }
        ["api", "users", name, verb @ ("disable" | "enable")] if post => {
            let (name, disable) = (name.to_string(), *verb == "disable");
            set_disabled(r, admin, &name, disable)
        }
        ["api", "users", _, "disable" | "enable"] => method_not_allowed("POST"),
        ["api", "users", _] => method_not_allowed("PUT, DELETE"),
        ["api", "uploads"] if get => {
            if r.cx.spool.is_none() {
                return not_found("uploads are not configured ([uploads])");
            }
            submit(r, admin, JobKind::Uploads, Then::ListUploads)
        }
        ["api", "uploads"] => method_not_allowed("GET"),
        ["api", "uploads", id] if method == Method::Delete => {
            let id = id.to_string();
            cancel_upload(r, admin, &id)
        }
        ["api", "uploads", _] => method_not_allowed("DELETE"),
        ["api", "tls", "certificates"] if get => {
            submit(r, admin, JobKind::Certificates, Then::ListCertificates)
        }
        ["api", "tls", "certificates"] => method_not_allowed("GET"),
        // Certificates are read when a config snapshot is built: a reload re-reads every file.
        ["api", "tls", "reload"] if post => {
            audit(r, admin, "TLS certificates reload asked (a config reload)");
            submit(r, admin, JobKind::Reload, Then::Reload)
        }
        ["api", "tls", "reload"] => method_not_allowed("POST"),
        ["api", "lockout", "lift"] if post => lift(r, admin),
        ["api", "lockout", "lift"] => method_not_allowed("POST"),
        _ => not_found("no such path (docs/ADMIN.md lists the API)"),
    }
}

/// `GET /metrics`: the Prometheus text exposition.
fn metrics(r: &Request<'_>, admin: &Admin) -> Verdict {
    let store = r.cx.store.map(|s| s.store());
    let text = super::exposition::render(admin, r.cx.snapshot, store, r.cx.unix_now);
    answer(Reply::new(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    ))
}

/// A backend's admin state as the API names it.
fn state_name(b: &crate::balance::ClusterBackend) -> &'static str {
    use crate::balance::AdminState;
    match b.state.admin_state() {
        AdminState::Disabled => "disabled",
        AdminState::Draining => "draining",
        AdminState::Enabled if b.drain => "draining (config)",
        AdminState::Enabled => "enabled",
    }
}

fn backend_json(b: &crate::balance::ClusterBackend) -> serde_json::Value {
    let q = b.state.queue.report();
    json!({
        "address": b.state.address.to_string(),
        "health": if b.state.is_up() { "up" } else { "down" },
        "state": state_name(b),
        "eligible": b.eligible(),
        "in_flight": b.state.inflight(),
        "queue": q.waiting.iter().map(|&n| u64::from(n)).sum::<u64>(),
        "weight": b.weight(),
        "configured_weight": b.weight,
        "requests": b.state.requests.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// `GET /api/backends`: per cluster, each backend's health, load and state.
/// `GET /api/clients`: the registered single sign-on applications of every pool, as the running config
/// has them (never a secret's hash: only whether there is one).
fn clients_json(r: &Request<'_>) -> serde_json::Value {
    let pools =
        r.cx.snapshot
            .auth
            .as_ref()
            .map_or(&[][..], |a| &a.pools[..]);
    let clients: Vec<serde_json::Value> = pools
        .iter()
        .flat_map(|p| p.clients.iter().map(move |c| (p, c)))
        .map(|(pool, c)| {
            json!({
                "client_id": c.id,
                "pool": pool.name,
                "tenant": pool.tenant,
                "confidential": c.secret_hash.is_some(),
                "redirect_uris": c.redirect_uris,
                "post_logout_redirect_uris": c.post_logout_redirect_uris,
                "scopes": c.scopes,
                "code_ttl": c.code_ttl,
                "access_token_ttl": c.access_ttl,
                "refresh_token_ttl": c.refresh_ttl,
            })
        })
        .collect();
    json!({ "clients": clients })
}

fn backends_json(r: &Request<'_>) -> serde_json::Value {
    let clusters: Vec<serde_json::Value> =
        r.cx.snapshot
            .clusters
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "max_inflight": c.max_inflight,
                    "backends": c.backends.iter().map(backend_json).collect::<Vec<_>>(),
                })
            })
            .collect();
    json!({ "clusters": clusters })
}

/// The cluster named in a path and its backend at `address`; 404 for either unknown.
fn backend_in<'s>(
    snapshot: &'s crate::snapshot::ConfigSnapshot,
    cluster: &str,
    address: &str,
) -> Result<
    (
        &'s crate::balance::Cluster,
        &'s crate::balance::ClusterBackend,
    ),
    Verdict,
> {
    let Some(c) = snapshot.clusters.iter().find(|c| c.name == cluster) else {
        return Err(not_found(&format!("no cluster {cluster:?}")));
    };
    address
        .parse()
        .ok()
        .and_then(|a: std::net::SocketAddr| c.backend_at(a))
        .map(|b| (&**c, b))
        .ok_or_else(|| not_found(&format!("cluster {cluster:?} has no backend {address:?}")))
}

/// `POST /api/backends/{cluster}/{address}/drain|enable|disable`. The state belongs to the address (one
/// live state per backend address, shared by every cluster that lists it, as health is) and survives
/// reloads; the cluster in the path must list the address.
fn backend_action(
    r: &Request<'_>,
    admin: &Admin,
    cluster: &str,
    address: &str,
    action: &str,
) -> Verdict {
    use crate::balance::AdminState;
    let snapshot = r.cx.snapshot;
    let (c, b) = match backend_in(snapshot, cluster, address) {
        Ok(found) => found,
        Err(v) => return v,
    };
    let state = match action {
        "drain" => AdminState::Draining,
        "enable" => AdminState::Enabled,
        "disable" => AdminState::Disabled,
        _ => return not_found(&format!("no action {action:?}: drain, enable or disable")),
    };
    let before = b.state.admin_state();
    b.state.set_admin_state(state);
    audit(
        r,
        admin,
        &format!(
            "backend {} of cluster {}: {action} (was {before:?})",
            b.state.address, c.name
        ),
    );
    ok(json!({ "cluster": c.name, "backend": backend_json(b) }))
}

/// `POST /api/backends/{cluster}/{address}/weight` with `{"weight": N}` (1–1000) or `{"weight": null}`
/// (back to the config's): the address's weight in weighted picks from the next request on, on this node.
fn backend_weight(r: &mut Request<'_>, admin: &Admin, cluster: &str, address: &str) -> Verdict {
    if r.body.is_none() {
        return Verdict::Wait(Wait::Body { limit: MAX_BODY });
    }
    let m = match body_json(r) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let weight = match m.get("weight") {
        Some(serde_json::Value::Null) => None,
        Some(w) => match w.as_u64().filter(|w| (1..=1000).contains(w)) {
            Some(w) => Some(w as u32),
            None => return error(400, "invalid_request", "weight must be 1 to 1000, or null"),
        },
        None => return error(400, "invalid_request", "give a weight (1 to 1000, or null)"),
    };
    let snapshot = r.cx.snapshot;
    let (c, b) = match backend_in(snapshot, cluster, address) {
        Ok(found) => found,
        Err(v) => return v,
    };
    b.state.set_weight(weight);
    let shown = weight.map_or("the configured one".to_string(), |w| w.to_string());
    audit(
        r,
        admin,
        &format!(
            "backend {} of cluster {}: weight {shown}",
            b.state.address, c.name
        ),
    );
    ok(json!({ "cluster": c.name, "backend": backend_json(b) }))
}

/// `GET /api/cluster`: this node, its store, and each peer's link, epoch, lag and resyncs.
fn cluster_json(admin: &Admin) -> serde_json::Value {
    let Some(c) = admin.registry.cluster_figures() else {
        return json!({ "node": null, "peers": [] });
    };
    let peers: Vec<serde_json::Value> = c
        .peers
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "address": p.address,
                "state": p.state,
                "epoch": p.epoch,
                "links_up": p.links_up,
                "refused": p.refused,
                "sent": p.sent,
                "acked": p.acked,
                "applied": p.applied,
                "lag_records": p.lag_records,
                "lag_ms": p.lag_ms,
                "resyncs_in": p.snapshots_in,
                "resyncs_out": p.snapshots_out,
                "bytes_in": p.bytes_in,
                "bytes_out": p.bytes_out,
                "last_reason": p.last_reason,
            })
        })
        .collect();
    json!({
        "node": c.node,
        "records": c.records,
        "bindings": c.bindings,
        "stream_last": c.stream_last,
        "peers": peers,
    })
}

/// `GET /api/usage[?tenant=T]`: the metering's figures for the current periods.
fn usage(r: &Request<'_>) -> Verdict {
    let Some(settings) = r.cx.snapshot.auth.as_deref() else {
        return not_found("no tenants: usage is metered per pool ([pools])");
    };
    let tenants: Vec<Box<str>> = match param(&query(r), "tenant") {
        Some(t) => match settings.tenants.iter().find(|x| &***x == t.as_str()) {
            Some(x) => vec![x.clone()],
            None => return not_found(&format!("no tenant {t:?}")),
        },
        None => settings.tenants.clone(),
    };
    let text = crate::limits::metering::report_json(r.cx.counters, &tenants, r.cx.unix_now);
    answer(Reply::new(200, "application/json", text))
}

/// The (tenant, user) a call names: `tenant` may be left out when one pool is configured.
fn user_of(
    r: &Request<'_>,
    user: Option<String>,
    tenant: Option<String>,
) -> Result<(String, String), Verdict> {
    let Some(settings) = r.cx.snapshot.auth.as_deref() else {
        return Err(not_found("no logins: configure [pools]"));
    };
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Err(error(400, "invalid_request", "name a user"));
    };
    let tenant = match tenant {
        Some(t) if settings.tenants.iter().any(|x| &**x == t.as_str()) => t,
        Some(t) => return Err(not_found(&format!("no tenant {t:?}"))),
        None if settings.tenants.len() == 1 => settings.tenants[0].to_string(),
        None => return Err(error(400, "invalid_request", "name the user's tenant")),
    };
    Ok((tenant, user))
}

/// Hands `kind` to the main thread and parks the call until it is done.
fn submit(r: &mut Request<'_>, admin: &Admin, kind: JobKind, then: Then) -> Verdict {
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let slot = Arc::new(JobSlot {
        ticket: ticket.clone(),
        outcome: parking_lot::Mutex::new(None),
    });
    if !admin.submit(Job {
        kind,
        slot: slot.clone(),
    }) {
        return error(503, "unavailable", "the balancer is stopping");
    }
    r.plan.admin = Some(Box::new(Progress::Job { slot, then }));
    Verdict::Wait(Wait::Ticket {
        ticket,
        until: r.cx.now + JOB_TIMEOUT,
        on_timeout: Some(Termination::WaitTimeout),
    })
}

/// A woken call: the job's outcome, or the replica's acknowledgement.
fn resume(r: &mut Request<'_>, admin: &Admin, p: Progress) -> Verdict {
    match p {
        Progress::Syncing { ticket, reply } => {
            if !ticket.is_done() {
                // `on_sync_timeout = "degrade"`: answered without a replica, and counted.
                r.cx.metrics.degraded_writes.inc();
                log::warn!("admin: answered without a replica's acknowledgement (degraded)");
            }
            answer(*reply)
        }
        Progress::Hashing {
            hash,
            mut user,
            pool,
        } => {
            let Some(h) = hash.lock().take() else {
                return error(503, "unavailable", "could not hash the password; try again");
            };
            user.hash = h;
            write_user(r, admin, pool, *user, true)
        }
        Progress::Job { slot, then } => {
            let Some(outcome) = slot.outcome.lock().take() else {
                // Woken before the outcome (cannot happen: it is left before the ticket completes).
                return error(503, "unavailable", "no outcome");
            };
            match (then, outcome) {
                (Then::Reload, Outcome::Reloaded { generation }) => {
                    audit(
                        r,
                        admin,
                        &format!("config reloaded (generation {generation})"),
                    );
                    ok(json!({ "reloaded": true, "generation": generation }))
                }
                (Then::Reload, Outcome::Refused(errors)) => {
                    audit(
                        r,
                        admin,
                        &format!("config reload refused ({} error(s))", errors.len()),
                    );
                    let list: Vec<serde_json::Value> = errors
                        .iter()
                        .map(|e| {
                            json!({"file": e.file, "line": e.line, "key": e.key, "message": e.message})
                        })
                        .collect();
                    answer(reply(
                        422,
                        json!({
                            "error": "invalid_config",
                            "message": "the running configuration stays",
                            "errors": list,
                        }),
                    ))
                }
                (Then::ListLogins, Outcome::Logins(list)) => ok(json!({
                    "sessions": list.iter().map(|(id, created, seen, expires)| json!({
                        "session": session_hex(id),
                        "created": created,
                        "last_seen": seen,
                        "expires": expires,
                    })).collect::<Vec<_>>(),
                })),
                (Then::RevokeLogins, Outcome::Logins(list)) => {
                    let ids: Vec<[u8; 16]> = list.iter().map(|l| l.0).collect();
                    audit(
                        r,
                        admin,
                        &format!("revoked every login session of a user ({})", ids.len()),
                    );
                    revoke_ids(r, &ids)
                }
                (Then::ListUploads, Outcome::Uploads(list)) => ok(json!({ "uploads": list })),
                (Then::ListCertificates, Outcome::Certificates(list)) => {
                    ok(json!({ "certificates": list }))
                }
                _ => error(500, "internal", "unexpected outcome"),
            }
        }
    }
}

/// `POST /api/logins/revoke` with `{"session": HEX}` or `{"user": NAME[, "tenant": T]}` (all of the
/// user's sessions).
fn revoke(r: &mut Request<'_>, admin: &Admin) -> Verdict {
    if r.body.is_none() {
        return Verdict::Wait(Wait::Body { limit: MAX_BODY });
    }
    let m = match body_json(r) {
        Ok(m) => m,
        Err(v) => return v,
    };
    if let Some(s) = string_field(&m, "session") {
        return revoke_one(r, admin, &s);
    }
    match user_of(r, string_field(&m, "user"), string_field(&m, "tenant")) {
        Ok((tenant, user)) => submit(
            r,
            admin,
            JobKind::Logins { tenant, user },
            Then::RevokeLogins,
        ),
        Err(v) => v,
    }
}

/// Revokes one session by id (hex).
fn revoke_one(r: &mut Request<'_>, admin: &Admin, session: &str) -> Verdict {
    let Some(id) = parse_session(session) else {
        return error(400, "invalid_request", "a session id is 32 hex digits");
    };
    let Some(store) = r.cx.store else {
        return not_found("no login sessions on this node");
    };
    if store.get(Kind::LoginSession, &id, r.cx.unix_now).is_none() {
        return not_found(&format!("no live session {session}"));
    }
    // The id's first 8 digits name it in the log (as refusals leave ids out of logged paths).
    let short = session.get(..8).unwrap_or(session);
    audit(r, admin, &format!("revoked login session {short}…"));
    revoke_ids(r, &[id])
}

/// Writes a tombstone for each session (a revocation every node honours) and answers once a replica
/// holds the last one: a node's records reach a peer in order, so it then holds them all.
fn revoke_ids(r: &mut Request<'_>, ids: &[[u8; 16]]) -> Verdict {
    let body = json!({ "revoked": ids.len() });
    let Some(store) = r.cx.store else {
        return ok(body);
    };
    let Some((last, rest)) = ids.split_last() else {
        return ok(body);
    };
    // Past any value's expiry: sessions end at most `max_lifetime` after they start.
    let expires = r.cx.unix_now.saturating_add(
        r.cx.snapshot
            .auth
            .as_ref()
            .map_or(86_400, |s| s.max_lifetime.saturating_add(60)),
    );
    let tombstone = |id: &[u8; 16]| Record {
        kind: Kind::LoginSession,
        key: id.as_slice().into(),
        version: store.version(),
        expires,
        value: None,
    };
    for id in rest {
        let _ = store.write(tombstone(id));
    }
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let _ = store.write_sync(tombstone(last), Arc::new(move || done.complete()));
    wait_sync(r, ticket, reply(200, body))
}

/// Parks the call until a replica holds its write (`[cluster] sync_timeout`), then answers `reply`.
fn wait_sync(
    r: &mut Request<'_>,
    ticket: Arc<crate::proxy::stages::Ticket>,
    reply: Reply,
) -> Verdict {
    r.plan.admin = Some(Box::new(Progress::Syncing {
        ticket: ticket.clone(),
        reply: Box::new(reply),
    }));
    Verdict::Wait(Wait::replica(ticket, &r.cx))
}

/// `DELETE /api/uploads/{id}`: cancels an upload as a client's `DELETE` would (the spool's own
/// function): its records become tombstones on every node and the files are swept. 409 while an append
/// holds it.
fn cancel_upload(r: &mut Request<'_>, admin: &Admin, id: &str) -> Verdict {
    use crate::spool::state;
    let Some(spool) = r.cx.spool else {
        return not_found("uploads are not configured ([uploads])");
    };
    let Some(parsed) = state::parse_id(id.as_bytes()) else {
        return error(400, "invalid_request", "an upload id is 32 hex digits");
    };
    let Some(store) = r.cx.store else {
        return not_found("no uploads on this node");
    };
    let Some(upload) = state::Upload::get(store.store(), &parsed, r.cx.unix_now) else {
        return not_found(&format!("no upload {id}"));
    };
    if !crate::spool::endpoints::cancel(r, spool, parsed, &upload) {
        return error(409, "busy", "the upload is being appended to; try again");
    }
    audit(
        r,
        admin,
        &format!(
            "upload {} of user {:?} cancelled at offset {}",
            state::hex(&parsed),
            upload.user,
            upload.offset
        ),
    );
    ok(json!({ "cancelled": state::hex(&parsed), "offset": upload.offset }))
}

/// `POST /api/lockout/lift` with `{"user": NAME[, "tenant": T]}` or `{"address": IP}`: the subject's
/// failures so far no longer count, on every node (a temporary or a permanent lock ends).
fn lift(r: &mut Request<'_>, admin: &Admin) -> Verdict {
    use crate::limits::lockout::{Ledger, Subject, now_ms};
    if r.body.is_none() {
        return Verdict::Wait(Wait::Body { limit: MAX_BODY });
    }
    let m = match body_json(r) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let ledger = Ledger {
        counters: r.cx.counters,
    };
    let now = now_ms();
    if let Some(a) = string_field(&m, "address") {
        let Ok(ip) = a.parse::<std::net::IpAddr>() else {
            return error(400, "invalid_request", "address must be an IP address");
        };
        let (bytes, len) = crate::limits::deny::address_key(ip);
        ledger.lift(
            &Subject {
                kind: b"address",
                scope: b"",
                name: &bytes[..len],
            },
            now,
        );
        audit(r, admin, &format!("lockout lifted for address {ip}"));
        return ok(json!({ "lifted": { "address": ip.to_string() } }));
    }
    match user_of(r, string_field(&m, "user"), string_field(&m, "tenant")) {
        Ok((tenant, user)) => {
            ledger.lift(
                &Subject {
                    kind: b"user",
                    scope: tenant.as_bytes(),
                    name: user.as_bytes(),
                },
                now,
            );
            audit(
                r,
                admin,
                &format!("lockout lifted for user {user:?} of {tenant}"),
            );
            ok(json!({ "lifted": { "tenant": tenant, "user": user } }))
        }
        Err(v) => v,
    }
}

/// `POST /api/log` with `{"level": "error|warn|info|debug|trace"}`: the process log's level from now on
/// (until the next change or a restart).
fn log_level(r: &mut Request<'_>, admin: &Admin) -> Verdict {
    if r.body.is_none() {
        return Verdict::Wait(Wait::Body { limit: MAX_BODY });
    }
    let m = match body_json(r) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let Some(level) = string_field(&m, "level").and_then(|l| l.parse::<log::LevelFilter>().ok())
    else {
        return error(
            400,
            "invalid_request",
            "level must be off, error, warn, info, debug or trace",
        );
    };
    let before = log::max_level();
    // Logged at the level in force before the change, so a change to `error` is still on record.
    audit(r, admin, &format!("log level {before} -> {level}"));
    log::set_max_level(level);
    ok(json!({ "level": level.to_string().to_lowercase() }))
}

/// `GET /api/notifications/{session}`: how many notifications this node holds for a login session's
/// queue (the index the hub keeps; acknowledged ones leave it as acknowledgements arrive).
fn notifications(r: &Request<'_>, session: &str) -> Verdict {
    let Some(id) = parse_session(session) else {
        return error(400, "invalid_request", "a session id is 32 hex digits");
    };
    let Some(hub) = r.cx.notify else {
        return not_found("notifications are not configured");
    };
    let queued = hub.entries(&id).map_or(0, |e| e.len());
    ok(json!({ "session": session, "queued": queued }))
}

/// A learned session's binding (`session = "learn:COOKIE"`; `value` is the cookie's value): the
/// backend's address from this node's session table, else from the replicated store.
fn binding_of(
    r: &Request<'_>,
    value: &str,
) -> (crate::sticky::table::SessionKey, Option<String>, bool) {
    let key = r.cx.sticky.learned_key(value.as_bytes());
    let now = r.cx.unix_now;
    let in_table =
        r.cx.sessions
            .lookup(r.cx.worker, key, now)
            .map(|b| b.backend);
    let from_table = in_table.and_then(|id| {
        r.cx.snapshot
            .clusters
            .iter()
            .flat_map(|c| &c.backends)
            .find(|b| b.state.id == id)
            .map(|b| b.state.address.to_string())
    });
    let from_store = || {
        let record =
            r.cx.store?
                .get(Kind::SessionBinding, &key.to_be_bytes(), now)?;
        Some(String::from_utf8_lossy(record.value.as_deref()?).into_owned())
    };
    (key, from_table.or_else(from_store), in_table.is_some())
}

/// `POST /api/sessions/lookup|unbind` with `{"session": VALUE}`.
fn session_call(r: &mut Request<'_>, admin: &Admin, unbind: bool) -> Verdict {
    if r.body.is_none() {
        return Verdict::Wait(Wait::Body { limit: MAX_BODY });
    }
    let m = match body_json(r) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let Some(value) = string_field(&m, "session").filter(|v| !v.is_empty()) else {
        return error(
            400,
            "invalid_request",
            "give the session's value as \"session\"",
        );
    };
    if unbind {
        session_unbind(r, admin, &value)
    } else {
        session_lookup(r, &value)
    }
}

/// The backend a learned session is bound to.
fn session_lookup(r: &Request<'_>, value: &str) -> Verdict {
    match binding_of(r, value) {
        (_, Some(backend), in_table) => ok(json!({
            "session": value,
            "backend": backend,
            "in_table": in_table,
        })),
        (_, None, _) => not_found("no binding for that session"),
    }
}

/// Unbinds a learned session on every node (a tombstone of its binding
/// record, which peers apply to their tables); its next request is balanced afresh.
fn session_unbind(r: &Request<'_>, admin: &Admin, value: &str) -> Verdict {
    let (key, backend, _) = binding_of(r, value);
    let Some(backend) = backend else {
        return not_found("no binding for that session");
    };
    r.cx.sticky.table.remove(key);
    if let Some(store) = r.cx.store {
        let expires = r.cx.unix_now.saturating_add(r.cx.sticky.table.ttl_secs());
        let _ = store.delete(Kind::SessionBinding, &key.to_be_bytes(), expires);
    }
    audit(r, admin, &format!("session unbound from backend {backend}"));
    ok(json!({ "session": value, "unbound": backend }))
}

/// The pool of `tenant` (or the only one), by index in the pinned snapshot's `[pools]`.
fn pool_of(r: &Request<'_>, tenant: Option<String>) -> Result<usize, Verdict> {
    let Some(settings) = r.cx.snapshot.auth.as_deref() else {
        return Err(not_found("no logins: configure [pools]"));
    };
    match tenant {
        Some(t) => settings
            .pools
            .iter()
            .position(|p| *p.tenant == *t)
            .ok_or_else(|| not_found(&format!("no tenant {t:?}"))),
        None if settings.pools.len() == 1 => Ok(0),
        None => Err(error(400, "invalid_request", "name the user's tenant")),
    }
}

/// A user kept in the store: the record's key, `TENANT/NAME` (as the login endpoint reads it).
fn user_key(tenant: &str, name: &str) -> Vec<u8> {
    format!("{tenant}/{name}").into_bytes()
}

fn string_list(
    m: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<Result<Vec<String>, ()>> {
    let v = m.get(name)?;
    Some(v.as_array().ok_or(()).and_then(|a| {
        a.iter()
            .map(|x| x.as_str().map(str::to_string).ok_or(()))
            .collect()
    }))
}

/// `PUT /api/users/{name}` with `{"tenant"?, "password"?, "roles"?, "groups"?}`: creates a user of the
/// pool (a password is required), or changes a user added this way — a new password (the hash is made on
/// the password checker's threads), roles, groups. Users of a users file are changed in the file. The
/// user is a replicated record (sync): every node can log the user in.
fn put_user(r: &mut Request<'_>, admin: &Admin, name: &str) -> Verdict {
    if r.body.is_none() {
        return Verdict::Wait(Wait::Body { limit: MAX_BODY });
    }
    let m = match body_json(r) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let pool_index = match pool_of(r, string_field(&m, "tenant")) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let (Some(settings), Some(store), Some(auth)) =
        (r.cx.snapshot.auth.as_deref(), r.cx.store, r.cx.auth)
    else {
        return error(503, "unavailable", "logins are not running");
    };
    let pool = &settings.pools[pool_index];
    if let Err(e) = crate::auth::users::check_name(name) {
        return error(400, "invalid_request", &format!("user name {e}"));
    }
    if pool.users.get(name).is_some() {
        return error(
            409,
            "in_users_file",
            "the user is in the pool's users file: change it there",
        );
    }
    let existing: Option<crate::auth::users::User> = store
        .get(Kind::User, &user_key(&pool.tenant, name), r.cx.unix_now)
        .and_then(|rec| serde_json::from_slice(rec.value.as_deref()?).ok());
    let mut user = existing.clone().unwrap_or(crate::auth::users::User {
        name: name.to_string(),
        hash: String::new(),
        roles: Vec::new(),
        groups: Vec::new(),
        disabled: false,
    });
    for (field, list) in [("roles", &mut user.roles), ("groups", &mut user.groups)] {
        match string_list(&m, field) {
            Some(Ok(v)) => *list = v,
            Some(Err(())) => {
                return error(
                    400,
                    "invalid_request",
                    &format!("{field} is a list of names"),
                );
            }
            None => {}
        }
    }
    match string_field(&m, "password") {
        Some(password) => {
            if let Err(e) = pool.rules.check(&password, name) {
                return error(400, "weak_password", &e.to_string());
            }
            let Some(ticket) = r.cx.ticket() else {
                return Verdict::Answer(Answer::Refuse(Termination::Internal(
                    "no wake-up channel",
                )));
            };
            let hash = Arc::new(parking_lot::Mutex::new(None));
            let (slot, done) = (hash.clone(), ticket.clone());
            let task = Box::new(move || {
                *slot.lock() = crate::auth::password::hash(&password).ok();
                done.complete();
            });
            if auth.checker.submit_task(task).is_err() {
                return error(
                    503,
                    "unavailable",
                    "the password checker is busy; try again",
                );
            }
            r.plan.admin = Some(Box::new(Progress::Hashing {
                hash,
                user: Box::new(user),
                pool: pool_index,
            }));
            Verdict::Wait(Wait::Ticket {
                ticket,
                until: r.cx.now + JOB_TIMEOUT,
                on_timeout: Some(Termination::WaitTimeout),
            })
        }
        None if existing.is_some() => write_user(r, admin, pool_index, user, false),
        None => error(400, "invalid_request", "a new user needs a password"),
    }
}

/// Writes a user's record (sync) and answers once a replica holds it.
fn write_user(
    r: &mut Request<'_>,
    admin: &Admin,
    pool: usize,
    user: crate::auth::users::User,
    password: bool,
) -> Verdict {
    let (Some(settings), Some(store)) = (r.cx.snapshot.auth.as_deref(), r.cx.store) else {
        return error(503, "unavailable", "logins are not running");
    };
    let Some(pool) = settings.pools.get(pool) else {
        return error(503, "unavailable", "the pools changed; try again");
    };
    let Ok(value) = serde_json::to_vec(&user) else {
        return error(500, "internal", "user encoding");
    };
    let tenant = pool.tenant.to_string();
    let record = Record {
        kind: Kind::User,
        key: user_key(&tenant, &user.name).into(),
        version: store.version(),
        expires: 0,
        value: Some(value.into()),
    };
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let _ = store.write_sync(record, Arc::new(move || done.complete()));
    audit(
        r,
        admin,
        &format!(
            "user {:?} of {tenant} written (roles {:?}{})",
            user.name,
            user.roles,
            if password { ", new password" } else { "" }
        ),
    );
    let body =
        json!({ "tenant": tenant, "user": user.name, "roles": user.roles, "groups": user.groups });
    wait_sync(r, ticket, reply(200, body))
}

/// The pool the request's `?tenant=` names (the first pool without one), the auth settings and the store
/// — or the refusal to answer.
fn pool_and_store<'a>(
    r: &Request<'a>,
) -> Result<
    (
        &'a crate::auth::settings::AuthSettings,
        &'a crate::store::StoreWriter,
        usize,
    ),
    Verdict,
> {
    let pool_index = pool_of(r, param(&query(r), "tenant"))?;
    let (Some(settings), Some(store)) = (r.cx.snapshot.auth.as_deref(), r.cx.store) else {
        return Err(error(503, "unavailable", "logins are not running"));
    };
    Ok((settings, store, pool_index))
}

/// `POST /api/users/{name}/disable` (or `enable`): no more logins for the user (sessions already open
/// stay: revoke them with `POST /api/logins/revoke`). A users-file user gets a stored record of its name
/// that says only that (enable removes it); a user added through the API has the flag in its record. A
/// sync write: every node refuses the user once the call answers.
fn set_disabled(r: &mut Request<'_>, admin: &Admin, name: &str, disable: bool) -> Verdict {
    let (settings, store, pool_index) = match pool_and_store(r) {
        Ok(t) => t,
        Err(v) => return v,
    };
    let pool = &settings.pools[pool_index];
    let key = user_key(&pool.tenant, name);
    let stored: Option<crate::auth::users::User> = store
        .get(Kind::User, &key, r.cx.unix_now)
        .and_then(|rec| serde_json::from_slice(rec.value.as_deref()?).ok());
    let value = if pool.users.get(name).is_some() {
        // A users-file user: the record is only the operator's disable.
        disable.then(|| crate::auth::users::User {
            name: name.to_string(),
            hash: String::new(),
            roles: Vec::new(),
            groups: Vec::new(),
            disabled: true,
        })
    } else {
        match stored {
            Some(mut u) => {
                u.disabled = disable;
                Some(u)
            }
            None => return not_found(&format!("no user {name:?} in the pool")),
        }
    };
    let tenant = pool.tenant.to_string();
    let record = Record {
        kind: Kind::User,
        key: key.into(),
        version: store.version(),
        expires: 0,
        value: value.map(|u| Arc::from(serde_json::to_vec(&u).unwrap_or_default())),
    };
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let _ = store.write_sync(record, Arc::new(move || done.complete()));
    let verb = if disable { "disabled" } else { "enabled" };
    audit(r, admin, &format!("user {name:?} of {tenant} {verb}"));
    wait_sync(
        r,
        ticket,
        reply(
            200,
            json!({ "tenant": tenant, "user": name, "disabled": disable }),
        ),
    )
}

/// `DELETE /api/users/{name}[?tenant=T]`: removes a user added through the API (it can no longer log
/// in; its sessions stay until revoked: `POST /api/logins/revoke {"user": …}`).
fn delete_user(r: &mut Request<'_>, admin: &Admin, name: &str) -> Verdict {
    let (settings, store, pool_index) = match pool_and_store(r) {
        Ok(t) => t,
        Err(v) => return v,
    };
    let pool = &settings.pools[pool_index];
    if pool.users.get(name).is_some() {
        return error(
            409,
            "in_users_file",
            "the user is in the pool's users file: change it there",
        );
    }
    let key = user_key(&pool.tenant, name);
    if store.get(Kind::User, &key, r.cx.unix_now).is_none() {
        return not_found(&format!("no user {name:?} added through the API"));
    }
    let tenant = pool.tenant.to_string();
    let record = Record {
        kind: Kind::User,
        key: key.into(),
        version: store.version(),
        expires: 0,
        value: None,
    };
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let _ = store.write_sync(record, Arc::new(move || done.complete()));
    audit(r, admin, &format!("user {name:?} of {tenant} removed"));
    wait_sync(
        r,
        ticket,
        reply(200, json!({ "tenant": tenant, "removed": name })),
    )
}
