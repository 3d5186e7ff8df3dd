//! The request path as a fixed list of stages: each one a plain function of the request and the parts of
//! the worker it needs, returning a verdict.
//!
//! ```text
//!  request stages (once per request, with the parsed head):   admin → test_endpoints → deny →
//!                                                              notifications → auth_endpoints →
//!                                                              upload_resources →
//!                                                              route → priority → auth → limits →
//!                                                              quota → upload_creation → stickiness
//!  attempt stages (once per attempt; a retry runs them again): balance → qos
//!  forward (the session's exchange)
//!  response hooks (on the final response head):               sticky_cookie → notifications
//!  finish hooks (once per request, whatever its end):         access_log (in the session's `finish_request`)
//! ```
//!
//! A stage says **continue**, **answer** (tether responds itself: a canned refusal or a reply of its own,
//! with status, headers and body), or **wait** (the request is parked, spending no CPU, until something
//! wakes it: a QoS slot, the request body a stage asked for, another thread's result). A waiting stage is
//! run again when its request wakes, and then decides once more; it finds what it was waiting for in the
//! request's [`Plan`]. Dispatch is static (a const table of function pointers); adding a stage is one
//! function and one line in [`REQUEST_STAGES`] or [`ATTEMPT_STAGES`] (docs/ARCHITECTURE.md shows how).
//!
//! The [`Plan`] holds what the stages decided — route, class, priority, session, backend, slot, attempts —
//! and pins the config snapshot the request was routed with, so a reload never changes what a request
//! holds: every index in the plan points into that pinned snapshot. Nothing here allocates or locks on
//! the common path.

use super::context::{Peer, SnapshotPin, WakeTarget, Wakers};
use crate::balance::{
    self, BackendId, BackendState, Balancer, Cluster, ClusterBackend, PickContext,
};
use crate::config::{FailoverPolicy, RouteClass, SessionIdentity};
use crate::error::Termination;
use crate::http::RequestHead;
use crate::qos::{Admission, Waiter};
use crate::snapshot::ConfigSnapshot;
use crate::sticky::Stickiness;
use crate::sticky::table::{SessionKey, SessionReader};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a stage decided.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Go on with the next stage.
    Continue,
    /// tether answers the request itself; no backend is involved.
    Answer(Answer),
    /// Park the request until it is woken; then this stage runs again.
    Wait(Wait),
}

/// tether's own answer to a request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A refusal: the canned one-line answer for the termination, then the connection closes.
    Refuse(Termination),
    /// A reply of tether's own (an endpoint under `/.tether/`): the connection stays open when the request
    /// allows it.
    Reply(Box<Reply>),
    /// A stream of tether's own (an SSE stream of notifications): the head, then events for as long as
    /// the client stays (the session's `Stream` phase); the connection closes when it ends.
    Stream(Box<crate::notify::endpoints::StreamStart>),
}

/// A complete response written by tether.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reply {
    pub status: u16,
    /// Extra header fields (`Content-Length`, `Connection` and `Date` are tether's).
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with a body of the given type.
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            content_type,
            body: body.into(),
        }
    }
}

/// Why a request is parked.
#[derive(Debug)]
pub(crate) enum Wait {
    /// For a QoS slot on the chosen backend (granted by whichever worker frees one). Deadline: the
    /// cluster's `queue_timeout` (503).
    Qos,
    /// For the request body, up to `limit` bytes (413 beyond; 411 for a chunked body). Deadline: the
    /// client timeout (408).
    Body { limit: usize },
    /// For another thread to complete `ticket` (a password hash, a replica's acknowledgement, a long
    /// poll). Deadline: `until`, then `on_timeout` answers — or, when `None`, the stage runs again and
    /// decides (it finds the ticket not done: a degraded sync write, say).
    Ticket {
        ticket: Arc<Ticket>,
        until: Instant,
        on_timeout: Option<Termination>,
    },
}

impl Wait {
    /// Waiting for a replica to acknowledge a `sync` write: until `[cluster] sync_timeout`, after
    /// which the request fails with `WaitTimeout` — or, with `on_sync_timeout = "degrade"`, goes on.
    pub(crate) fn replica(ticket: Arc<Ticket>, cx: &RequestCx<'_>) -> Wait {
        Wait::Ticket {
            ticket,
            until: cx.now + cx.snapshot.sync_timeout,
            on_timeout: (!cx.snapshot.sync_degrade).then_some(Termination::WaitTimeout),
        }
    }
}

/// A parked request's wake-up call, for another thread: `complete` marks it done and wakes the worker
/// that holds the request (through its command channel and waker). Completing twice is harmless, and a
/// ticket whose request is gone wakes nobody (the session id no longer matches).
#[derive(Debug)]
pub(crate) struct Ticket {
    done: AtomicBool,
    target: WakeTarget,
    /// The request's worker: its channel and waker.
    peer: Peer,
}

impl Ticket {
    pub(crate) fn new(target: WakeTarget, peer: Peer) -> Arc<Ticket> {
        Arc::new(Ticket {
            done: AtomicBool::new(false),
            target,
            peer,
        })
    }

    /// Marks the wait over and wakes the request's worker. Callable from any thread.
    pub(crate) fn complete(&self) {
        self.done.store(true, Ordering::Release);
        self.peer.wake(self.target);
    }

    /// Marks the wait over without waking anyone: the request stopped waiting on its own (a long poll
    /// that timed out, a stream that ended), so whoever still holds the ticket can drop it.
    pub(crate) fn cancel(&self) {
        self.done.store(true, Ordering::Release);
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// The QoS slot of the current attempt.
#[derive(Debug, Default)]
pub(crate) enum Slot {
    /// The cluster limits nothing, or no attempt has been admitted yet.
    #[default]
    None,
    /// Waiting in the backend's queue.
    Queued(Arc<Waiter>),
    /// A slot is held for an attempt that has not started yet (it becomes the attempt's at connect).
    Held,
}

/// What a secure request knows about its session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StickyRequest {
    /// The session key; `None` until learned (a backend's cookie not seen yet).
    pub key: Option<SessionKey>,
    /// The backend the session is bound to, from the table or a cookie.
    pub preferred: Option<BackendId>,
    /// The SSL context (backend connection id) the session last used.
    pub ssl_context: u64,
    /// The table holds a binding for `key`.
    pub bound: bool,
    /// Insert mode: send a fresh sealed cookie with the response.
    pub issue_cookie: bool,
}

/// What the stages decided about one request. Reset for each request on a connection.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The config snapshot the request was routed with, pinned for the request's whole life: `route`,
    /// `cluster` and `backend` index into it, so a reload cannot move them.
    pub snapshot: Option<SnapshotPin>,
    pub route: usize,
    pub cluster: usize,
    /// The route's class is `secure` (state-bearing: pinned to the session's backend).
    pub secure: bool,
    /// QoS priority (0–7).
    pub priority: u8,
    /// Key for hash-based balancing.
    pub hash_key: Option<u64>,
    /// Stickiness of a request on a secure route.
    pub sticky: Option<StickyRequest>,
    /// The chosen backend: its index in the pinned cluster's backend list.
    pub backend: Option<usize>,
    /// A backend that failed this request (avoided on retry).
    pub avoid: Option<BackendId>,
    pub slot: Slot,
    /// Attempts started (the first one included).
    pub attempts: u32,
    /// The next request stage to run (`REQUEST_STAGES.len()`: all done).
    pub next_stage: usize,
    /// The next attempt stage to run.
    pub next_attempt_stage: usize,
    pub queued_at: Option<Instant>,
    pub queue_us: Option<u64>,
    /// A stage's wake-up ticket (see [`Wait::Ticket`]).
    pub ticket: Option<Arc<Ticket>>,
    /// The auth stage asked the store's backend for a login session this node did not hold (once per
    /// request: see `StoreWriter::fetch`).
    pub fetched: bool,
    /// A login, logout, refresh or upstream-token refresh under way (`auth::endpoints`).
    pub auth: Option<Box<crate::auth::endpoints::Progress>>,
    /// Identity header lines for the backend (user, tenant, roles, JWT), shared with the worker's cache.
    pub identity: Option<std::rc::Rc<[u8]>>,
    /// A relayed upstream token's header line for the backend.
    pub upstream_token: Option<std::rc::Rc<[u8]>>,
    /// The client's `Authorization` header is tether's (a bearer access token) or replaced by the relayed
    /// token: not forwarded.
    pub strip_authorization: bool,
    /// The tenant the request is metered for: its pool's index in the pinned snapshot's `[pools]`.
    pub tenant: Option<usize>,
    /// The login the auth stage verified (shared with the worker's cache: no copy), for limits keyed by
    /// user or tenant.
    pub login: Option<std::rc::Rc<crate::auth::session::LoginSession>>,
    /// The verified login session's id (its notification queue), set with `login`.
    pub login_id: Option<[u8; 16]>,
    /// A poll, publish or acknowledgement of notifications under way (`notify::endpoints`).
    pub notify: Option<Box<crate::notify::endpoints::Progress>>,
    /// An upload's append, creation or forward under way (`spool::endpoints`).
    pub upload: Option<Box<crate::spool::endpoints::Progress>>,
    /// An upload's creation under way (`spool::creation`): its quota check, record or first bytes.
    pub creation: Option<Box<crate::spool::creation::Creation>>,
    /// An interim (1xx) head a stage wants sent before the final answer (HTTP/1.1 clients only): the
    /// session writes it when the request parks or is answered.
    pub interim: Option<Box<Reply>>,
    /// An admin call waiting for the main thread or a replica (`admin::api`).
    pub admin: Option<Box<crate::admin::api::Progress>>,
}

impl Plan {
    /// The pinned snapshot's cluster (`None` before the route stage).
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.snapshot
            .as_ref()?
            .clusters
            .get(self.cluster)
            .map(|c| &**c)
    }

    /// The chosen backend as the pinned cluster lists it.
    pub(crate) fn cluster_backend(&self) -> Option<&ClusterBackend> {
        self.cluster()?.backends.get(self.backend?)
    }

    /// The chosen backend's shared state.
    pub(crate) fn backend_state(&self) -> Option<&Arc<BackendState>> {
        self.cluster_backend().map(|b| &b.state)
    }

    /// Whether the request may be tried once more (the cluster's `retries`).
    pub(crate) fn retries_left(&self) -> bool {
        self.cluster().is_some_and(|c| self.attempts <= c.retries)
    }

    /// Ready for the next request; the snapshot pin is dropped.
    pub(crate) fn reset(&mut self) {
        debug_assert!(
            matches!(self.slot, Slot::None),
            "a QoS slot outlived its request"
        );
        *self = Plan::default();
    }
}

/// The parts of the worker a request stage sees.
pub(crate) struct RequestCx<'a> {
    /// The worker's current snapshot (the route stage pins it into the plan).
    pub snapshot: &'a SnapshotPin,
    pub sticky: &'a Stickiness,
    pub sessions: &'a SessionReader<'a>,
    pub worker: usize,
    pub now: Instant,
    pub unix_now: u32,
    /// The client's address and whether its listener trusts forwarding headers.
    pub client: IpAddr,
    pub trusted: bool,
    /// This request's wake-up address, and the worker's channels (for a ticket handed to another thread).
    pub wake: WakeTarget,
    pub wakers: &'a Wakers,
    /// The replicated store: with `[cluster]`, or a local one when pools are configured.
    pub store: Option<&'a crate::store::StoreWriter>,
    pub metrics: &'a crate::metrics::WorkerMetrics,
    /// Logins (with pools configured), and this worker's verified tokens.
    pub auth: Option<&'a crate::auth::runtime::Auth>,
    pub auth_cache: &'a mut crate::auth::gate::AuthCache,
    /// This worker's recently opened sticky cookies.
    pub opened_cookies: &'a mut crate::sticky::cookie::OpenedCookies,
    /// The client's listener speaks TLS (cookies get `Secure`).
    pub tls: bool,
    /// Cluster-wide counters (limits, lockout, metering) and the node's rate-limit buckets.
    pub counters: &'a crate::limits::counters::Counters,
    /// The notification queues (with `[notifications]`).
    pub notify: Option<&'a crate::notify::Hub>,
    /// The request came in on the publish listener.
    pub publish: bool,
    /// The upload spool (with `[uploads]`).
    pub spool: Option<&'a crate::spool::Spool>,
    /// The request came in on the admin listener (the `admin` stage answers it, and nothing else sees it).
    pub admin_listener: bool,
    /// The admin API's shared state (with `[admin]`).
    pub admin: Option<&'a crate::admin::Admin>,
}

impl RequestCx<'_> {
    /// A ticket for another thread to complete when this request may go on (see [`Wait::Ticket`]).
    pub(crate) fn ticket(&self) -> Option<Arc<Ticket>> {
        Some(Ticket::new(self.wake, self.wakers.own_peer()?))
    }
}

/// One request as the request stages see it.
pub(crate) struct Request<'a> {
    pub head: &'a mut RequestHead,
    /// The head's bytes (the spans in `head` point into them).
    pub bytes: &'a [u8],
    /// The request body, once a stage asked for it and it arrived (`Wait::Body`).
    pub body: Option<&'a [u8]>,
    pub plan: &'a mut Plan,
    pub cx: RequestCx<'a>,
}

/// A request stage.
pub(crate) type RequestStage = fn(&mut Request<'_>) -> Verdict;

/// The request stages, in order.
pub(crate) const REQUEST_STAGES: &[(&str, RequestStage)] = &[
    ("admin", crate::admin::api::serve),
    ("test_endpoints", crate::fault_injection::test_endpoints),
    ("deny", deny),
    ("notifications", crate::notify::endpoints::serve),
    ("auth_endpoints", crate::auth::endpoints::serve),
    (
        "upload_resources",
        crate::spool::endpoints::upload_resources,
    ),
    ("route", route),
    ("priority", priority),
    ("auth", auth),
    ("limits", limits),
    ("quota", quota),
    ("upload_creation", crate::spool::creation::upload_creation),
    ("stickiness", stickiness),
];

/// The login the request presents (session cookie or bearer access token) to the pool serving its host,
/// verified as the auth stage does; for tether's own endpoints that are not routes (notifications,
/// uploads). `None` without logins, a credential, or a valid one.
pub(crate) fn host_login(r: &mut Request<'_>) -> Option<crate::auth::gate::Verified> {
    let (Some(settings), Some(auth)) = (r.cx.snapshot.auth.clone(), r.cx.auth) else {
        return None;
    };
    let host = r.head.authority.map_or(&b""[..], |a| a.of(r.bytes));
    let pool = settings
        .pools
        .get(settings.pool_for_host(host).unwrap_or(0))?;
    let cred =
        crate::auth::session::credential(&r.head.headers, r.bytes, settings.cookie.as_bytes())?;
    r.cx.auth_cache
        .verify(auth, &settings, pool, r.cx.store, cred, r.cx.unix_now)
        .ok()
}

/// Deny stage: the `[deny] rules` count every request of an address that is not allowed (in node-local
/// buckets: no allocation once the address has one); one over a rule bans the address on every node
/// (a replicated deny record), and its requests are answered 429 from then on — new connections are
/// refused at accept. Runs before anything else looks at the request.
fn deny(r: &mut Request<'_>) -> Verdict {
    use crate::limits::{deny, rate::Decision};
    let list = &r.cx.snapshot.deny;
    if !list.has_rules() || list.allows(r.cx.client) {
        return Verdict::Continue;
    }
    let Some(store) = r.cx.store else {
        return Verdict::Continue;
    };
    let now = r.cx.unix_now;
    if deny::banned(store.store(), r.cx.client, now) {
        return denied(1);
    }
    let (addr, len) = deny::address_key(r.cx.client);
    for (i, rule) in list.rules.iter().enumerate() {
        let id = crate::limits::counters::CounterKey::of(&[
            b"deny-rule",
            &(i as u32).to_be_bytes(),
            &addr[..len],
        ]);
        let interval = 1_000_000_000 / rule.requests_per_sec.max(1);
        let buckets = r.cx.counters.buckets();
        if let Decision::Deny { .. } = buckets.take(id, r.cx.now, interval, rule.requests_per_sec) {
            let until = now.saturating_add(rule.ban.as_secs().min(u64::from(u32::MAX)) as u32);
            log::info!(
                "deny list: {} exceeded {} requests/s; refused by every node for {}s",
                r.cx.client,
                rule.requests_per_sec,
                rule.ban.as_secs()
            );
            deny::ban(store, r.cx.client, "requests_per_sec", until);
            r.cx.metrics.denied.inc();
            return denied(rule.ban.as_secs());
        }
    }
    Verdict::Continue
}

/// The answer to a banned address's request on a connection accepted before the ban.
fn denied(retry_after: u64) -> Verdict {
    let mut reply = Reply::new(429, "text/plain", "too many requests\n");
    reply.headers.push(("Retry-After", retry_after.to_string()));
    Verdict::Answer(Answer::Reply(Box::new(reply)))
}

/// Limits stage: the route's `rate_limits` in order, each keyed by the client's address, the login's
/// user or tenant, the route, or a header, at the rate of the tenant's tier when the limit lists it
/// (`tiers`); the first one over its limit answers 429 with `Retry-After`
/// and the `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers). No backend
/// work happens before this. An admitted request allocates nothing (its bucket or window exists); only
/// the 429 answer builds its headers.
fn limits(r: &mut Request<'_>) -> Verdict {
    use crate::limits::rate::{Decision, LimitKey};
    let Some(snapshot) = r.plan.snapshot.as_ref() else {
        return Verdict::Continue;
    };
    let Some(route) = snapshot.routes.get(r.plan.route) else {
        return Verdict::Continue;
    };
    if route.rate_limits.is_empty() || snapshot.deny.allows(r.cx.client) {
        return Verdict::Continue;
    }
    let (addr, len) = crate::limits::deny::address_key(r.cx.client);
    // The request's tenant, for tiers: the logged-in session's pool, else the pool it is metered for.
    let pool = match (&r.plan.login, &route.auth) {
        (Some(_), Some(a)) => Some(a.pool),
        _ => r.plan.tenant,
    };
    for &i in route.rate_limits.iter() {
        let Some(limit) = snapshot.rate_limits.get(i) else {
            continue;
        };
        let key: &[u8] = match &limit.key {
            LimitKey::Address => &addr[..len],
            LimitKey::User => match &r.plan.login {
                Some(l) => l.user.as_bytes(),
                None => continue,
            },
            LimitKey::Tenant => match &r.plan.login {
                Some(l) => l.tenant.as_bytes(),
                None => continue,
            },
            LimitKey::Route => route.name.as_bytes(),
            LimitKey::Header(name) => match r.head.header(r.bytes, name) {
                Some(v) => v,
                None => continue,
            },
        };
        let tier = limit.tier_of(pool);
        if let Decision::Deny { retry_after } =
            limit.check(key, tier, r.cx.counters, r.cx.now, r.cx.unix_now)
        {
            r.cx.metrics.rate_limited.inc();
            let mut reply = Reply::new(429, "text/plain", "too many requests\n");
            reply.headers.push(("Retry-After", retry_after.to_string()));
            reply
                .headers
                .push(("RateLimit-Policy", limit.policy(tier).to_string()));
            reply.headers.push((
                "RateLimit",
                format!("{:?};r=0;t={retry_after}", &*limit.name),
            ));
            return Verdict::Answer(Answer::Reply(Box::new(reply)));
        }
    }
    Verdict::Continue
}

/// Route stage: which route (and so cluster, class, session identity, priority) serves the request; 404
/// when none. Pins the worker's current snapshot into the plan.
fn route(r: &mut Request<'_>) -> Verdict {
    crate::fault_injection::on_request_path(r.head.path.of(r.bytes));
    let snapshot = r.cx.snapshot;
    let authority = r.head.authority.map(|a| a.of(r.bytes));
    let method = r.head.method_span.of(r.bytes);
    let head = &*r.head;
    let bytes = r.bytes;
    let Some(index) = snapshot
        .routes
        .lookup(authority, head.path.of(bytes), |route| {
            route.accepts(method, |name| head.header(bytes, name).is_some())
        })
    else {
        return Verdict::Answer(Answer::Refuse(Termination::NoRoute));
    };
    let Some(route) = snapshot.routes.get(index) else {
        return Verdict::Answer(Answer::Refuse(Termination::NoRoute));
    };
    r.plan.route = index;
    r.plan.cluster = route.cluster;
    r.plan.secure = route.class == RouteClass::Secure;
    r.plan.priority = route.priority;
    if let Some(cluster) = snapshot.clusters.get(route.cluster) {
        r.plan.hash_key = balance::hash_key(cluster, head, bytes, r.cx.client);
    }
    r.plan.snapshot = Some(SnapshotPin::clone(snapshot));
    Verdict::Continue
}

/// QoS priority stage: a trusted upstream's priority header (0–7) overrides the route's (the header is
/// for tether and never forwarded: see [`strip_tether_headers`]).
fn priority(r: &mut Request<'_>) -> Verdict {
    let Some(name) = r.cx.snapshot.qos_priority_header.as_deref() else {
        return Verdict::Continue;
    };
    if r.cx.trusted {
        if let Some(v) = r.head.header(r.bytes, name) {
            if let [d @ b'0'..=b'7'] = v.trim_ascii() {
                r.plan.priority = d - b'0';
            }
        }
    }
    Verdict::Continue
}

/// Auth stage: on a route with `auth = "login"`, who the request is (session cookie or bearer access
/// token, checked against the replicated session: a revoked one is refused), whether the route's roles
/// and groups admit the user (403), and the identity the backend gets. Without a usable login: the login
/// page for a browser, 401 for anything else. A relayed upstream token about to expire is refreshed
/// first (once per session, however many requests wait).
fn auth(r: &mut Request<'_>) -> Verdict {
    use crate::auth::endpoints;
    let Some(snapshot) = r.plan.snapshot.clone() else {
        return Verdict::Continue;
    };
    let policy = snapshot
        .routes
        .get(r.plan.route)
        .and_then(|x| x.auth.as_ref());
    // The tenant the request is metered for: its route's pool, else the pool serving its host.
    if let Some(settings) = snapshot.auth.as_deref().filter(|s| s.metering) {
        r.plan.tenant = policy.map(|p| p.pool).or_else(|| {
            settings.pool_for_host(r.head.authority.map_or(&b""[..], |a| a.of(r.bytes)))
        });
    }
    let Some(policy) = policy else {
        return Verdict::Continue;
    };
    // A login checked against a copy that may miss a revocation is not honoured (`[store]
    // max_staleness`, the Redis backend): one relaxed load.
    if r.cx.store.is_some_and(|s| s.store().is_stale()) {
        return Verdict::Answer(Answer::Refuse(Termination::StoreStale));
    }
    let (Some(settings), Some(auth)) = (snapshot.auth.as_deref(), r.cx.auth) else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal(
            "logins not configured",
        )));
    };
    let Some(pool) = settings.pools.get(policy.pool) else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no such user pool")));
    };
    // This request just waited for its session's upstream token to be refreshed, successfully.
    let mut refreshed = false;
    if let Some(progress) = r.plan.auth.take() {
        if let endpoints::Progress::Refreshing { outcome } = *progress {
            if let Some(answer) = endpoints::refresh_outcome(r, settings, pool, &outcome) {
                return answer;
            }
            refreshed = true;
        }
    }
    let Some(cred) =
        crate::auth::session::credential(&r.head.headers, r.bytes, settings.cookie.as_bytes())
    else {
        return endpoints::login_required(r, settings, pool, None);
    };
    let now = r.cx.unix_now;
    // At most twice round: a second time when the token was renewed by another request's refresh since
    // this one read the session.
    let verified = loop {
        let verified = match r
            .cx
            .auth_cache
            .verify(auth, settings, pool, r.cx.store, cred, now)
        {
            Ok(v) => v,
            Err(e) => {
                // A session this node has never heard of may have been written at another node a
                // moment ago (the Redis backend answers a sync write once the server holds it): ask the
                // backend once, off the worker, and run this stage again when it answered.
                if let crate::auth::gate::Refusal::SessionUnknown(id) = e {
                    if let Some(wait) = fetch_session(r, &id) {
                        return wait;
                    }
                }
                log::debug!("login refused on route {}: {e}", r.plan.route);
                return endpoints::login_required(r, settings, pool, Some(cred));
            }
        };
        if !verified.session.allowed(&policy.roles, &policy.groups) {
            return endpoints::forbidden();
        }
        // Not again right after a refresh: a token the upstream issues for 5 s or less is inside the
        // margin as soon as it arrives, and the request would go round refresh after refresh without
        // ever reaching the backend. It goes with the fresh token; the next request refreshes again.
        let due = !refreshed
            && verified
                .session
                .upstream
                .as_ref()
                .is_some_and(|up| up.expires != 0 && now.saturating_add(5) >= up.expires);
        if !due {
            break verified;
        }
        match endpoints::start_upstream_refresh(
            r,
            auth,
            pool,
            verified.session_id,
            &verified.session,
        ) {
            Some(verdict) => return verdict,
            // Renewed (or ended) since it was read: read it again and go with what it holds now.
            None => refreshed = true,
        }
    };
    if verified.session.due_for_touch(now) {
        if let Some(store) = r.cx.store {
            crate::auth::gate::touch(
                store,
                &verified.session_id,
                &verified.session,
                verified.version,
                now,
            );
        }
    }
    if policy.identity {
        r.plan.identity = verified.identity;
    }
    r.plan.upstream_token = verified.upstream;
    r.plan.login = Some(verified.session);
    r.plan.login_id = Some(verified.session_id);
    r.plan.strip_authorization =
        matches!(cred, crate::auth::session::Credential::Bearer(_)) || pool.upstream.is_some();
    Verdict::Continue
}

/// Parks the request while the store's backend fetches login session `id` (`StoreWriter::fetch`), once
/// per request; `None` when there is nothing to ask (the mesh, asked already, no backend room).
fn fetch_session(r: &mut Request<'_>, id: &[u8; 16]) -> Option<Verdict> {
    let store = r.cx.store?;
    // The mesh never fetches: no ticket made for every unknown session a client sends.
    if r.plan.fetched || !store.fetches() {
        return None;
    }
    let ticket = r.cx.ticket()?;
    let done = ticket.clone();
    if !store.fetch(
        crate::store::Kind::LoginSession,
        id,
        Arc::new(move || done.complete()),
    ) {
        return None;
    }
    r.plan.fetched = true;
    Some(Verdict::Wait(Wait::Ticket {
        ticket,
        until: r.cx.now + r.cx.snapshot.sync_timeout,
        on_timeout: None,
    }))
}

/// Quota stage: a request of a tenant that used up a quota of the current period (cluster-wide, as the
/// metering counts it) is refused — 429 or 403 (`[metering] over_quota`), naming the quota.
fn quota(r: &mut Request<'_>) -> Verdict {
    let Some(pool_index) = r.plan.tenant else {
        return Verdict::Continue;
    };
    // Borrowed from the pinned snapshot: an `Arc` clone here would bump a count every worker shares.
    let Some(settings) = r.plan.snapshot.as_deref().and_then(|s| s.auth.as_deref()) else {
        return Verdict::Continue;
    };
    let Some(pool) = settings.pools.get(pool_index) else {
        return Verdict::Continue;
    };
    for q in &pool.quotas {
        let used = crate::limits::metering::total(
            r.cx.counters,
            &pool.tenant,
            q.metric,
            q.period,
            r.cx.unix_now,
        );
        if used >= q.limit {
            let (_, ends) = q.period.at(r.cx.unix_now);
            let body = serde_json::json!({
                "error": "quota_exceeded",
                "message": format!(
                    "tenant {} used its quota of {} {} per {}",
                    pool.tenant, q.limit, q.metric.name(), q.period.name()
                ),
                "quota": { "metric": q.metric.name(), "period": q.period.name(), "limit": q.limit },
            });
            let mut reply = Reply::new(settings.over_quota, "application/json", body.to_string());
            if settings.over_quota == 429 {
                reply.headers.push((
                    "Retry-After",
                    ends.saturating_sub(r.cx.unix_now).max(1).to_string(),
                ));
            }
            return Verdict::Answer(Answer::Reply(Box::new(reply)));
        }
    }
    Verdict::Continue
}

/// Marks header fields that are for tether, never for the backend, as not forwarded: the QoS priority
/// header, identity headers under configured names (the default `X-Tether-*` ones never pass), an
/// `Authorization` the auth stage consumed or replaces, and the client's copy of a relayed upstream
/// token's header. Runs on the head just before it is rewritten for
/// the backend (after any wait, when the head was parsed again).
pub(crate) fn strip_tether_headers(
    snapshot: &ConfigSnapshot,
    plan: &Plan,
    head: &mut RequestHead,
    bytes: &[u8],
) {
    let priority = snapshot.qos_priority_header.as_deref();
    let auth = snapshot.auth.as_deref();
    if priority.is_none() && auth.is_none() {
        return;
    }
    // The relayed upstream token's header when it has another name than Authorization (`header = …`):
    // the client's own copy would reach the backend too, ahead of tether's, so a client could choose the
    // credential the backend sees. Only when tether injects one (a login route of a relaying pool).
    let upstream_header = plan
        .upstream_token
        .as_ref()
        .and(auth)
        .zip(snapshot.routes.get(plan.route))
        .and_then(|(a, route)| a.pools.get(route.auth.as_ref()?.pool)?.upstream.as_ref())
        .map(|up| up.header.as_bytes());
    for h in head.headers.iter_mut() {
        let name = h.name.of(bytes);
        if priority.is_some_and(|p| name.eq_ignore_ascii_case(p.as_bytes()))
            || auth.is_some_and(|a| a.is_identity_header(name))
            || (plan.strip_authorization && name.eq_ignore_ascii_case(b"authorization"))
            || upstream_header.is_some_and(|u| name.eq_ignore_ascii_case(u))
        {
            h.hop_by_hop = true;
        }
    }
}

/// Stickiness stage: what a secure request says about its session, and where that session lives.
fn stickiness(r: &mut Request<'_>) -> Verdict {
    let Some(snapshot) = r.plan.snapshot.as_ref() else {
        return Verdict::Continue;
    };
    let Some(route) = snapshot.routes.get(r.plan.route) else {
        return Verdict::Continue;
    };
    if route.class != RouteClass::Secure {
        return Verdict::Continue;
    }
    let Some(identity) = route.session.as_ref() else {
        return Verdict::Continue;
    };
    let Some(cluster) = snapshot.clusters.get(r.plan.cluster) else {
        return Verdict::Continue;
    };
    let sticky = r.cx.sticky;
    let now = r.cx.unix_now;
    r.plan.sticky = match sticky.identify(
        r.cx.opened_cookies,
        identity,
        r.head,
        r.bytes,
        r.cx.client,
        now,
    ) {
        Some(id) => {
            let binding = r.cx.sessions.lookup(r.cx.worker, id.key, now).or_else(|| {
                replicated_binding(r.cx.store, sticky, cluster, r.cx.worker, id.key, now)
            });
            if let Some(b) = binding.filter(|b| b.refresh) {
                // The session is in use: its replicated record must outlive the TTL it was written
                // with, or after this node's loss the peers would no longer know it.
                if let Some(backend) = cluster.backend(b.backend) {
                    replicate_binding(r.cx.store, sticky, id.key, backend.state.address, now);
                }
            }
            // Known here; or a valid cookie from another node or before a restart names the backend.
            let preferred = binding.map(|b| b.backend).or_else(|| {
                id.cookie_backend
                    .and_then(|a| cluster.backend_at(a))
                    .map(|b| b.state.id)
            });
            Some(StickyRequest {
                key: Some(id.key),
                preferred,
                ssl_context: binding.map_or(0, |b| b.ssl_context),
                bound: binding.is_some(),
                issue_cookie: id.cookie_stale,
            })
        }
        // No session yet: tether issues one (insert) or waits for the backend's cookie (learn).
        None => match identity {
            SessionIdentity::Insert(_) => Some(StickyRequest {
                key: Some(sticky.sealer.new_session_id()),
                preferred: None,
                ssl_context: 0,
                bound: false,
                issue_cookie: true,
            }),
            SessionIdentity::Learn(_) => Some(StickyRequest {
                key: None,
                preferred: None,
                ssl_context: 0,
                bound: false,
                issue_cookie: false,
            }),
            SessionIdentity::Header(_) | SessionIdentity::ClientIp => None,
        },
    };
    Verdict::Continue
}

/// A session the session table does not know, looked up in the replicated store (with `[cluster]`):
/// bindings other nodes made arrive there, and the session table is this node's cache of them — filled
/// here, on the session's first request through this node, rather than by the replication thread for
/// every binding in the cluster. Binds it in the table, so its next requests are plain hits.
fn replicated_binding(
    store: Option<&crate::store::StoreWriter>,
    sticky: &Stickiness,
    cluster: &crate::balance::Cluster,
    worker: usize,
    key: SessionKey,
    now: u32,
) -> Option<crate::sticky::table::Binding> {
    let record = store?.get(crate::store::Kind::SessionBinding, &key.to_be_bytes(), now)?;
    let address: std::net::SocketAddr = std::str::from_utf8(record.value.as_deref()?)
        .ok()?
        .parse()
        .ok()?;
    let backend = cluster.backend_at(address)?.state.id;
    // The record was written a TTL before it expires: when it is due for a refresh counts from then.
    let written = record.expires.saturating_sub(sticky.table.ttl_secs());
    let refresh = now.saturating_sub(written) >= (sticky.table.ttl_secs() / 2).max(1);
    let replicated = if refresh { now } else { written };
    sticky
        .table
        .bind_replicated(worker, key, backend, now, replicated);
    Some(crate::sticky::table::Binding {
        backend,
        ssl_context: 0,
        refresh,
    })
}

/// The parts of the worker an attempt stage sees.
pub(crate) struct AttemptCx<'a> {
    pub balancer: &'a mut Balancer,
    pub sticky: &'a Stickiness,
    /// The replicated store, with `[cluster]`: new and moved bindings are written there too.
    pub store: Option<&'a crate::store::StoreWriter>,
    pub wakers: &'a mut Wakers,
    pub worker: usize,
    pub now: Instant,
    pub unix_now: u32,
    /// Where a QoS grant for this request is delivered.
    pub wake: WakeTarget,
}

/// One attempt as the attempt stages see it (no head: a retry runs after the head was forwarded).
pub(crate) struct Attempt<'a> {
    pub plan: &'a mut Plan,
    pub cx: AttemptCx<'a>,
}

/// An attempt stage.
pub(crate) type AttemptStage = fn(&mut Attempt<'_>) -> Verdict;

/// The attempt stages, in order.
pub(crate) const ATTEMPT_STAGES: &[(&str, AttemptStage)] = &[("balance", balance), ("qos", qos)];

/// Balance stage: the session's own backend for a secure request (unless it is down or just failed),
/// else the cluster's algorithm's pick; binds or rebinds the session.
fn balance(a: &mut Attempt<'_>) -> Verdict {
    let Some(snapshot) = a.plan.snapshot.clone() else {
        return Verdict::Answer(Answer::Refuse(Termination::NoBackend));
    };
    let Some(cluster) = snapshot.clusters.get(a.plan.cluster) else {
        return Verdict::Answer(Answer::Refuse(Termination::NoBackend));
    };
    let failover = snapshot
        .routes
        .get(a.plan.route)
        .map_or(FailoverPolicy::Rebind, |r| r.on_backend_down);
    let avoid = a.plan.avoid;
    let mut chosen = None;
    if let Some(pref) = a.plan.sticky.as_ref().and_then(|st| st.preferred) {
        match cluster.backends.iter().position(|b| b.state.id == pref) {
            Some(i) if cluster.backends[i].eligible() && Some(pref) != avoid => chosen = Some(i),
            _ if failover == FailoverPolicy::Fail => {
                return Verdict::Answer(Answer::Refuse(Termination::SessionBackendDown));
            }
            _ => {}
        }
    }
    let index = match chosen {
        Some(i) => i,
        None => {
            let pick = PickContext {
                hash_key: a.plan.hash_key,
                avoid,
            };
            match a
                .cx
                .balancer
                .pick(snapshot.generation, a.plan.cluster, cluster, &pick)
            {
                Some(i) => i,
                None => return Verdict::Answer(Answer::Refuse(Termination::NoBackend)),
            }
        }
    };
    let backend = &cluster.backends[index];
    let (id, address) = (backend.state.id, backend.state.address);
    a.plan.backend = Some(index);

    // Bind a new session, rebind one whose backend was down or failed (logged), and decide whether the
    // response carries a fresh cookie.
    if let Some(st) = &mut a.plan.sticky {
        if let Some(key) = st.key {
            if !st.bound {
                a.cx.sticky.table.bind(a.cx.worker, key, id, a.cx.unix_now);
                replicate_binding(a.cx.store, a.cx.sticky, key, address, a.cx.unix_now);
                st.bound = true;
                if st.preferred.is_some_and(|p| p != id) {
                    st.issue_cookie = true;
                }
            } else if st.preferred != Some(id) {
                a.cx.sticky
                    .table
                    .rebind(a.cx.worker, key, id, a.cx.unix_now);
                let from = st.preferred.and_then(|p| cluster.backend(p)).map_or_else(
                    || "a removed backend".to_string(),
                    |b| b.state.address.to_string(),
                );
                log::info!(
                    "session rebound from {from} to {address} (cluster {}): its backend is down or failed",
                    cluster.name
                );
                st.issue_cookie = true;
                st.ssl_context = 0;
            }
            st.preferred = Some(id);
        }
    }
    Verdict::Continue
}

/// QoS stage: when the cluster limits requests in flight per backend, take a slot (one compare-and-swap)
/// or a place in the backend's priority queue (the request waits for a grant); 503 when the queue is full.
fn qos(a: &mut Attempt<'_>) -> Verdict {
    let Some(snapshot) = a.plan.snapshot.clone() else {
        return Verdict::Continue;
    };
    let Some(cluster) = snapshot.clusters.get(a.plan.cluster) else {
        return Verdict::Continue;
    };
    if cluster.max_inflight == 0 {
        return Verdict::Continue;
    }
    let Some(backend) = a.plan.backend.and_then(|i| cluster.backends.get(i)) else {
        return Verdict::Answer(Answer::Refuse(Termination::NoBackend));
    };
    match &a.plan.slot {
        Slot::Held => return Verdict::Continue,
        Slot::Queued(waiter) => {
            // Woken (or timed out): granted means the slot is ours now.
            if !waiter.is_granted() {
                return Verdict::Wait(Wait::Qos);
            }
            a.plan.slot = Slot::Held;
            if let Some(at) = a.plan.queued_at {
                a.plan.queue_us = Some(a.cx.now.saturating_duration_since(at).as_micros() as u64);
            }
            return Verdict::Continue;
        }
        Slot::None => {}
    }
    let target = a.cx.wake;

    match backend.state.queue.admit(
        &backend.state.slots,
        cluster.max_inflight,
        cluster.max_queue,
        a.plan.priority,
        target.worker,
        target.session,
        target.id,
        a.cx.now,
    ) {
        Admission::Go { wake } => {
            a.plan.slot = Slot::Held;
            if let Some(w) = wake {
                a.cx.wakers.deliver_grant(&w);
            }
            Verdict::Continue
        }
        Admission::Wait(waiter) => {
            a.plan.slot = Slot::Queued(waiter);
            a.plan.queued_at = Some(a.cx.now);
            Verdict::Wait(Wait::Qos)
        }
        Admission::Full => Verdict::Answer(Answer::Refuse(Termination::QueueFull)),
    }
}

/// Gives back whatever QoS slot the plan holds that no attempt uses: a held slot, or a place in the
/// queue (a grant that raced the withdrawal brings a slot, given back too). Every slot is handed on to
/// the best waiter. Called on every path that ends a request or an attempt before it started.
pub(crate) fn release_slot(plan: &mut Plan, wakers: &mut Wakers, now: Instant) {
    let slot = std::mem::take(&mut plan.slot);
    let held = match &slot {
        Slot::None => return,
        Slot::Held => true,
        Slot::Queued(waiter) => match plan.backend_state() {
            // `cancel` fails when a grant came first: the slot is ours to give back.
            Some(b) => !b.queue.cancel(waiter),
            None => false,
        },
    };
    if let (Slot::Queued(_), Some(at)) = (&slot, plan.queued_at) {
        plan.queue_us
            .get_or_insert(now.saturating_duration_since(at).as_micros() as u64);
    }
    if held {
        if let Some(b) = plan.backend_state() {
            b.release_slot();
            if let Some(w) = b.queue.release(&b.slots, now) {
                wakers.deliver_grant(&w);
            }
        }
    }
}

/// The final response head on its way to the client, as response hooks see it.
pub(crate) struct Response<'a> {
    /// The replicated store, with `[cluster]`.
    pub store: Option<&'a crate::store::StoreWriter>,
    /// The rewritten head so far: hooks append header lines (the blank line follows them).
    pub out: &'a mut Vec<u8>,
    pub head: &'a crate::http::ResponseHead,
    /// The backend's head bytes (the spans in `head` point into them).
    pub bytes: &'a [u8],
    pub plan: &'a mut Plan,
    pub sticky: &'a Stickiness,
    pub worker: usize,
    pub unix_now: u32,
    /// The client's listener speaks TLS (cookies get `Secure`).
    pub secure: bool,
    /// The notification queues (with `[notifications]`), for the piggyback hook.
    pub notify: Option<&'a crate::notify::Hub>,
}

/// A response hook.
pub(crate) type ResponseHook = fn(&mut Response<'_>);

/// The response hooks, in order.
pub(crate) const RESPONSE_HOOKS: &[(&str, ResponseHook)] = &[
    ("sticky_cookie", sticky_cookie),
    ("notifications", crate::notify::endpoints::piggyback),
];

/// Sticky-cookie hook: a fresh sealed session cookie (insert mode), or the backend's own session cookie
/// learned and bound (learn mode).
fn sticky_cookie(r: &mut Response<'_>) {
    let Some(st) = &mut r.plan.sticky else {
        return;
    };
    let Some(snapshot) = r.plan.snapshot.as_ref() else {
        return;
    };
    let identity = snapshot
        .routes
        .get(r.plan.route)
        .and_then(|route| route.session.as_ref());
    let Some(backend) = snapshot
        .clusters
        .get(r.plan.cluster)
        .and_then(|c| c.backends.get(r.plan.backend?))
    else {
        return;
    };
    match identity {
        Some(SessionIdentity::Insert(name)) if st.issue_cookie => {
            if let Some(key) = st.key {
                r.sticky.write_set_cookie(
                    r.out,
                    name,
                    key,
                    backend.state.address,
                    r.unix_now,
                    r.secure,
                );
                st.issue_cookie = false;
            }
        }
        Some(SessionIdentity::Learn(name)) => {
            // The backend set (or changed) its session cookie: bind that session here.
            if let Some(value) =
                crate::http::cookie::response_set_cookie(&r.head.headers, r.bytes, name.as_bytes())
            {
                let key = r.sticky.learned_key(value);
                let id = backend.state.id;
                if st.key != Some(key) || !st.bound {
                    r.sticky.table.bind(r.worker, key, id, r.unix_now);
                    replicate_binding(r.store, r.sticky, key, backend.state.address, r.unix_now);
                    st.key = Some(key);
                    st.bound = true;
                    st.preferred = Some(id);
                }
            }
        }
        _ => {}
    }
}

/// Writes a session binding to the replicated store (with `[cluster]`), so every node routes the session
/// to the same backend: key the session key (16 bytes), value the backend's address (the same on every
/// node, where backend ids are not), expiring with the session table's TTL. A full replication queue is
/// counted by the writer, never waited for. Runs when a session is bound or moved, not on every request.
pub(crate) fn replicate_binding(
    store: Option<&crate::store::StoreWriter>,
    sticky: &Stickiness,
    key: SessionKey,
    backend: std::net::SocketAddr,
    now: u32,
) {
    let Some(store) = store else {
        return;
    };
    let value = backend.to_string();
    let expires = now.saturating_add(sticky.table.ttl_secs());
    let _ = store.put(
        crate::store::Kind::SessionBinding,
        &key.to_be_bytes(),
        value.as_bytes(),
        expires,
    );
}
