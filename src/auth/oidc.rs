//! Single sign-on for the applications behind tether (OAuth 2.0 authorization-code flow with PKCE and
//! OpenID Connect, issue #22): `GET /.tether/authorize`, the application grants of `POST /.tether/token`,
//! `/.tether/userinfo`, introspection (RFC 7662) at `POST /.tether/introspect`, revocation (RFC 7009) at
//! `POST /.tether/revoke`, RP-initiated logout at `/.tether/end_session`, and the discovery document at
//! `/.well-known/openid-configuration`.
//!
//! **One base session.** Every code, access token and refresh token is a sealed bundle (`auth::token`,
//! PASETO v4.local) naming the user's login session; revoking the session (logout, end_session, a code
//! replay, a refresh-token reuse) refuses all of them on every node. Nothing per token is stored but a
//! `SingleUse` record (kind 13) when a code or refresh token is spent or a token is revoked, written with
//! the `sync` class: the answer leaves only once a replica holds it, so a second use at any node — also
//! after the first node was killed — finds it and fails.
//!
//! **A code presented twice** is refused (`invalid_grant`) and revokes the *base session* (RFC 6749
//! §4.1.2: "SHOULD revoke … all tokens previously issued based on that authorization code"). tether keeps
//! no per-grant state, and the session is the one thing every token of that code names: revoking it is the
//! only revocation that reaches them all on every node without a lookup per request. It also ends the
//! user's other applications — a code that leaked (a log, a referrer) means someone acts as the user, and
//! a new login is the safe answer.
//!
//! A client's secret is checked by argon2 on the password checker's threads (never on a worker): the
//! request waits for the verdict like a login does.

use super::endpoints::{
    Outcome, Progress, answer, header, method_not_allowed, no_pool, pool_of, resume,
    session_record, wants_html, write_then_answer,
};
use super::oauth::{Client, ClientAuthError, Params, client_auth, has_scope, with_query};
use super::runtime::Auth;
use super::session::LoginSession;
use super::settings::{AuthSettings, Pool};
use super::token::{Claims, Grant, TokenKind};
use crate::error::Termination;
use crate::proxy::stages::{Answer, Reply, Request, Verdict, Wait};
use crate::store::{Kind, Record};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::Duration;

/// The discovery document's path (OpenID Connect Discovery 1.0 §4).
pub(crate) const DISCOVERY_PATH: &[u8] = b"/.well-known/openid-configuration";
/// How long a login waits for the checker's verdict on a client secret.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a refresh token was spent a second presentation is taken for a parallel refresh (two
/// requests of one application, a retry after a lost answer): refused, but nothing is revoked. Later,
/// it is a reuse, and the session is revoked (as tether's own refresh tokens).
const REFRESH_GRACE: u32 = 10;
/// Longest `nonce` carried into a code (it comes back in the ID token).
const MAX_NONCE_LEN: usize = 512;
/// Most accepted client secrets remembered (see `Auth::client_secrets`).
const MAX_KNOWN_SECRETS: usize = 1024;
/// A `SingleUse` record's value: why (below), then when (seconds, big-endian u32).
const SPENT: u8 = 1;
const REVOKED: u8 = 2;

/// The endpoints a client application authenticates at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Token,
    Introspect,
    Revoke,
}

/// A client request whose secret is being checked: what it asked, to go on with once the verdict is in.
#[derive(Debug)]
pub(crate) struct Pending {
    pool: usize,
    client: String,
    params: Params,
    endpoint: Endpoint,
}

/// The issuer of this request's host: `https://HOST` on a TLS listener, else `http://HOST`. Every node
/// reached under one name gives the same, so an application may fetch discovery at one node and redeem
/// its code at another.
fn issuer(r: &Request<'_>) -> String {
    let host = r
        .head
        .authority
        .map(|a| a.of(r.bytes))
        .and_then(|a| std::str::from_utf8(a).ok())
        .unwrap_or("localhost");
    format!("{}://{host}", if r.cx.tls { "https" } else { "http" })
}

/// An OAuth error answer (RFC 6749 §5.2): `{"error","error_description"}`, never cached; a 401 for a
/// client that authenticated with Basic names the scheme it should use.
fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut reply = Reply::new(status, "application/json", body);
    no_store(&mut reply);
    reply
}

fn no_store(reply: &mut Reply) {
    reply.headers.push(("Cache-Control", "no-store".into()));
    reply.headers.push(("Pragma", "no-cache".into()));
}

fn invalid_client(basic: bool) -> Verdict {
    let mut reply = oauth_error(401, "invalid_client", "client authentication failed");
    if basic {
        reply
            .headers
            .push(("WWW-Authenticate", "Basic realm=\"tether\"".into()));
    }
    answer(reply)
}

/// An error shown to the user, never a redirect: the client or its redirect URI cannot be trusted
/// (RFC 6749 §4.1.2.1).
fn error_page(status: u16, message: &str) -> Verdict {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Sign-in error</title><p>{}</p>\n",
        super::login_form::escape_html(message)
    );
    let mut reply = Reply::new(status, "text/html; charset=utf-8", body);
    no_store(&mut reply);
    answer(reply)
}

/// An authorization error sent back to the application (RFC 6749 §4.1.2.1), with its `state`.
fn redirect_error(redirect: &str, error: &str, description: &str, state: Option<&str>) -> Verdict {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    redirect_to(&with_query(redirect, &pairs))
}

fn redirect_to(location: &str) -> Verdict {
    let mut reply = Reply::new(302, "text/plain", "redirecting\n");
    reply.headers.push(("Location", location.to_string()));
    no_store(&mut reply);
    answer(reply)
}

/// A fresh token id: 16 random bytes, base64url.
fn new_token_id() -> String {
    URL_SAFE_NO_PAD.encode(super::session::new_session_id())
}

/// The session `id` names, if it is still live here.
fn live_session(r: &Request<'_>, id: &[u8; 16]) -> Option<LoginSession> {
    r.cx.store?
        .get(Kind::LoginSession, id, r.cx.unix_now)
        .and_then(|rec| LoginSession::decode(rec.value.as_deref()?).ok())
}

/// The `SingleUse` record of a token id: why it was written, and when. `None`: neither spent nor revoked.
fn single_use(r: &Request<'_>, token_id: &str) -> Option<(u8, u32)> {
    let key = URL_SAFE_NO_PAD.decode(token_id).ok()?;
    let record = r.cx.store?.get(Kind::SingleUse, &key, r.cx.unix_now)?;
    match record.value.as_deref()? {
        [why, a, b, c, d] => Some((*why, u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => Some((REVOKED, 0)),
    }
}

/// The `SingleUse` record that spends or revokes a token until it expires (`expires`; a minute later,
/// so a clock a little behind still finds it).
fn single_use_record(r: &Request<'_>, token_id: &str, why: u8, expires: u64) -> Option<Record> {
    let store = r.cx.store?;
    let key = URL_SAFE_NO_PAD.decode(token_id).ok()?;
    let mut value = vec![why];
    value.extend_from_slice(&r.cx.unix_now.to_be_bytes());
    Some(Record {
        kind: Kind::SingleUse,
        key: key.into(),
        version: store.version(),
        expires: u32::try_from(expires.saturating_add(60)).unwrap_or(u32::MAX),
        value: Some(value.into()),
    })
}

/// `/.well-known/openid-configuration` for the pool serving this host; a pool without registered
/// applications lets the request through (a backend may serve its own).
pub(crate) fn discovery(r: &mut Request<'_>) -> Verdict {
    let Some(settings) = r.cx.snapshot.auth.clone() else {
        return Verdict::Continue;
    };
    let Some(pool) = settings.pools.get(pool_of(r, &settings)) else {
        return Verdict::Continue;
    };
    if pool.clients.is_empty() {
        return Verdict::Continue;
    }
    if !matches!(
        r.head.method,
        crate::http::Method::Get | crate::http::Method::Head
    ) {
        return method_not_allowed("GET, HEAD");
    }
    let iss = issuer(r);
    let mut scopes: Vec<&str> = Vec::new();
    for s in pool.clients.iter().flat_map(|c| c.scopes.iter()) {
        if !scopes.contains(&&**s) {
            scopes.push(s);
        }
    }
    let body = serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/.tether/authorize"),
        "token_endpoint": format!("{iss}/.tether/token"),
        "userinfo_endpoint": format!("{iss}/.tether/userinfo"),
        "jwks_uri": format!("{iss}/.tether/jwks.json"),
        "introspection_endpoint": format!("{iss}/.tether/introspect"),
        "revocation_endpoint": format!("{iss}/.tether/revoke"),
        "end_session_endpoint": format!("{iss}/.tether/end_session"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": scopes,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "azp",
            "preferred_username", "tenant", "roles"],
    })
    .to_string();
    let mut reply = Reply::new(200, "application/json", body);
    reply
        .headers
        .push(("Cache-Control", "public, max-age=60".into()));
    answer(reply)
}

/// `GET /.tether/authorize`: checks the client and its redirect URI (an error page when either is
/// wrong: never a redirect to a URI nobody registered), then the request (errors go back to the
/// application, RFC 6749 §4.1.2.1); a user without a login goes to the login page and comes back here;
/// a logged-in user is sent back at once with a code (single sign-on: no second login for a second
/// application of the pool).
pub(crate) fn authorize(r: &mut Request<'_>, settings: &AuthSettings, auth: &Auth) -> Verdict {
    if !matches!(
        r.head.method,
        crate::http::Method::Get | crate::http::Method::Head
    ) {
        return method_not_allowed("GET, HEAD");
    }
    let Some(pool) = settings.pools.get(pool_of(r, settings)) else {
        return no_pool();
    };
    let target = r.head.target.of(r.bytes);
    let params = match Params::from_target(target) {
        Ok(p) => p,
        Err(e) => return error_page(400, &format!("Bad sign-in request: {e}.")),
    };
    let Some(client) = params.client_id.as_deref().and_then(|id| pool.client(id)) else {
        log::info!("authorize refused: unknown or missing client_id");
        return error_page(400, "Unknown application (client_id).");
    };
    let Some(redirect) = client.redirect_uri(params.redirect_uri.as_deref()) else {
        log::info!(
            "authorize refused: redirect_uri not registered for client {:?}",
            client.id
        );
        return error_page(
            400,
            "The redirect_uri is not registered for this application.",
        );
    };
    let state = params.state.as_deref();
    let fail = |error: &str, description: &str| redirect_error(redirect, error, description, state);
    match params.response_type.as_deref() {
        Some("code") => {}
        None => return fail("invalid_request", "response_type is required"),
        Some(_) => return fail("unsupported_response_type", "only response_type=code"),
    }
    let scope = match client.grant_scope(params.scope.as_deref()) {
        Ok(s) => s,
        Err(s) => return fail("invalid_scope", &format!("scope {s} is not allowed")),
    };
    match (
        params.code_challenge.as_deref(),
        params.code_challenge_method.as_deref(),
    ) {
        (None, None) if client.secret_hash.is_none() => {
            return fail(
                "invalid_request",
                "PKCE (code_challenge with S256) is required for public clients",
            );
        }
        (None, None) => {}
        (None, Some(_)) => {
            return fail(
                "invalid_request",
                "code_challenge_method without code_challenge",
            );
        }
        (Some(_), m) if m != Some("S256") => {
            return fail("invalid_request", "code_challenge_method must be S256");
        }
        (Some(c), _) if !super::oauth::pkce_shaped(c) => {
            return fail("invalid_request", "malformed code_challenge");
        }
        (Some(_), _) => {}
    }
    if params
        .nonce
        .as_ref()
        .is_some_and(|n| n.len() > MAX_NONCE_LEN)
    {
        return fail("invalid_request", "nonce too long");
    }
    // `prompt` (OpenID Connect Core §3.1.2.1): `none` asks for a silent answer (an application
    // checking whether the user is still signed in); `login` and `consent` cannot be honoured here (no
    // forced re-login, no consent screen), so they are refused rather than silently ignored.
    let silent = match params.prompt.as_deref() {
        None => false,
        Some("none") => true,
        Some(_) => return fail("invalid_request", "only prompt=none is supported"),
    };
    let Some(verified) = crate::proxy::stages::host_login(r) else {
        if silent {
            return fail("login_required", "the user is not signed in");
        }
        // No login yet: the login page, which comes back here once the user is in.
        let target = String::from_utf8_lossy(target);
        let encoded =
            percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC);
        return redirect_to(&format!("/.tether/login?return_to={encoded}"));
    };
    if verified.session.tenant != *pool.tenant {
        return fail("access_denied", "logged in to another pool");
    }
    let now = r.cx.unix_now;
    let session = &verified.session;
    let claims = Claims {
        kind: TokenKind::Code,
        user: session.user.clone(),
        tenant: session.tenant.clone(),
        session: verified.session_id,
        issued: u64::from(now),
        expires: u64::from(now.saturating_add(client.code_ttl).min(session.absolute)),
        audience: Client::audience(&client.id),
        generation: 0,
        grant: Some(Box::new(Grant {
            client: client.id.to_string(),
            scope,
            id: new_token_id(),
            // Only when the request named it: the exchange must then repeat it (RFC 6749 §4.1.3).
            redirect_uri: params.redirect_uri.clone(),
            challenge: params.code_challenge.clone(),
            nonce: params.nonce.clone(),
            auth_time: u64::from(session.created),
        })),
    };
    let code = match auth.keys.tokens().seal.seal(&claims) {
        Ok(c) => c,
        Err(e) => {
            log::error!("auth: cannot seal an authorization code: {e}");
            return fail("temporarily_unavailable", "no token key yet");
        }
    };
    log::info!(
        "authorize: code for user {:?} to client {:?}",
        session.user,
        client.id
    );
    // `iss` (RFC 9207): an application talking to several providers can tell which one answered.
    let iss = issuer(r);
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    pairs.push(("iss", &iss));
    redirect_to(&with_query(redirect, &pairs))
}

/// Whether a `POST /.tether/token` is a registered application's (client credentials in `Authorization:
/// Basic` or the body, or an authorization-code grant), not a refresh of tether's own tokens.
pub(crate) fn is_client_body(r: &Request<'_>, body: &[u8]) -> bool {
    if header(r, "authorization").is_some_and(|a| {
        a.trim_start()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
    }) {
        return true;
    }
    match Params::from_form(header(r, "content-type").unwrap_or(""), body) {
        Ok(p) => p.client_id.is_some() || p.grant_type.as_deref() == Some("authorization_code"),
        // A malformed form body that names a client is still an application's: its errors are OAuth's.
        Err(_) => body.starts_with(b"grant_type=authorization_code"),
    }
}

/// The token, introspection and revocation endpoints: reads the form, authenticates the client (a
/// confidential client's secret on the checker's threads), then goes on in [`client_checked`].
pub(crate) fn client_endpoint(
    r: &mut Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    endpoint: Endpoint,
) -> Verdict {
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
    let params = match Params::from_form(header(r, "content-type").unwrap_or(""), body) {
        Ok(p) => p,
        Err(e) => return answer(oauth_error(400, "invalid_request", &e.to_string())),
    };
    let pool_index = pool_of(r, settings);
    let Some(pool) = settings.pools.get(pool_index) else {
        return no_pool();
    };
    let authorization = r.head.header(r.bytes, "authorization");
    let creds = match client_auth(authorization, &params) {
        Ok(c) => c,
        Err(ClientAuthError::Missing) => return invalid_client(false),
        Err(e) => return answer(oauth_error(400, "invalid_request", &e.to_string())),
    };
    let Some(client) = pool.client(&creds.client_id) else {
        log::info!("oauth: unknown client {:?}", creds.client_id);
        return invalid_client(creds.basic);
    };
    let pending = Pending {
        pool: pool_index,
        client: client.id.to_string(),
        params,
        endpoint,
    };
    match (&client.secret_hash, creds.secret) {
        // A public client: nothing to check (PKCE guards its codes). It may not introspect.
        (None, None) if endpoint != Endpoint::Introspect => {
            client_checked(r, settings, auth, Some(true), pending)
        }
        (None, _) | (Some(_), None) => invalid_client(creds.basic),
        (Some(phc), Some(secret)) => {
            use sha2::Digest;
            let digest: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
            let known = auth.client_secrets.pin().get(&**phc).is_some_and(|d| {
                aws_lc_rs::constant_time::verify_slices_are_equal(d, &digest).is_ok()
            });
            if known {
                return client_checked(r, settings, auth, Some(true), pending);
            }
            let Some(ticket) = r.cx.ticket() else {
                return Verdict::Answer(Answer::Refuse(Termination::Internal(
                    "no wake-up channel",
                )));
            };
            let outcome = Outcome::new(ticket.clone());
            let o = outcome.clone();
            let check = super::checker::Check::Password {
                phc: phc.to_string(),
                password: secret,
            };
            let (secrets, phc) = (auth.client_secrets.clone(), Box::<str>::from(&**phc));
            let done = Box::new(move |ok: bool| {
                if ok {
                    let secrets = secrets.pin();
                    // Bounded: one entry per client secret in use; hashes of old configs age out here.
                    if secrets.len() >= MAX_KNOWN_SECRETS {
                        secrets.clear();
                    }
                    secrets.insert(phc, digest);
                }
                o.set_password(ok);
            });
            if auth.checker.submit(check, done).is_err() {
                let mut reply = oauth_error(503, "temporarily_unavailable", "too many requests");
                reply.headers.push(("Retry-After", "1".into()));
                return answer(reply);
            }
            r.plan.auth = Some(Box::new(Progress::Client {
                outcome,
                pending: Box::new(pending),
            }));
            Verdict::Wait(Wait::Ticket {
                ticket,
                until: r.cx.now + CHECK_TIMEOUT,
                on_timeout: Some(Termination::WaitTimeout),
            })
        }
    }
}

/// A client request whose client is authenticated (`ok`: the checker's verdict, `None`: lost).
pub(super) fn client_checked(
    r: &mut Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    ok: Option<bool>,
    p: Pending,
) -> Verdict {
    let basic = header(r, "authorization").is_some();
    match ok {
        Some(true) => {}
        Some(false) => {
            log::info!("oauth: wrong secret for client {:?}", p.client);
            return invalid_client(basic);
        }
        None => return answer(oauth_error(503, "temporarily_unavailable", "check lost")),
    }
    // The config may have been reloaded while the secret was checked: look the client up again.
    let Some(pool) = settings.pools.get(p.pool) else {
        return invalid_client(basic);
    };
    let Some(client) = pool.client(&p.client) else {
        return invalid_client(basic);
    };
    match p.endpoint {
        Endpoint::Token => match p.params.grant_type.as_deref() {
            Some("authorization_code") => code_grant(r, settings, auth, pool, client, &p.params),
            Some("refresh_token") => refresh_grant(r, settings, auth, pool, client, &p.params),
            None => answer(oauth_error(
                400,
                "invalid_request",
                "grant_type is required",
            )),
            Some(_) => answer(oauth_error(
                400,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            )),
        },
        Endpoint::Introspect => introspect(r, auth, pool, &p.params),
        Endpoint::Revoke => revoke(r, auth, pool, client, &p.params),
    }
}

fn invalid_grant(description: &str) -> Verdict {
    answer(oauth_error(400, "invalid_grant", description))
}

/// A code or refresh token `client` presents: it opens as `kind` for this client (its audience), names
/// the client in its grant, and is of `pool`'s tenant. `Err`: the `invalid_grant` answer (the reason
/// logged, never shown).
fn client_token(
    auth: &Auth,
    pool: &Pool,
    client: &Client,
    token: &str,
    kind: TokenKind,
    now: u32,
) -> Result<Claims, Verdict> {
    let what = if kind == TokenKind::Code {
        "code"
    } else {
        "refresh token"
    };
    let claims = auth
        .keys
        .tokens()
        .open
        .open(
            token.as_bytes(),
            u64::from(now),
            kind,
            &Client::audience(&client.id),
        )
        .map_err(|e| {
            log::info!("oauth: {what} refused for client {:?}: {e}", client.id);
            invalid_grant(&format!(
                "the {what} is not valid (expired, altered, spent or another client's)"
            ))
        })?;
    let ours = claims
        .grant
        .as_deref()
        .is_some_and(|g| *g.client == *client.id);
    if !ours || claims.tenant != *pool.tenant {
        return Err(invalid_grant(&format!("the {what} is not valid")));
    }
    Ok(claims)
}

/// `grant_type=authorization_code`: the code opens for this client, its redirect URI and PKCE verifier
/// match, its session is live, and it was never used; then it is spent (sync) and the tokens answered.
/// A code used before revokes its session (see the module docs).
fn code_grant(
    r: &mut Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    pool: &Pool,
    client: &Client,
    params: &Params,
) -> Verdict {
    let now = r.cx.unix_now;
    let Some(code) = params.code.as_deref() else {
        return answer(oauth_error(400, "invalid_request", "code is required"));
    };
    let claims = match client_token(auth, pool, client, code, TokenKind::Code, now) {
        Ok(c) => c,
        Err(v) => return v,
    };
    let Some(grant) = claims.grant.as_deref() else {
        return invalid_grant("the code is not valid");
    };
    if let Some(uri) = &grant.redirect_uri {
        if params.redirect_uri.as_deref() != Some(uri) {
            return invalid_grant("redirect_uri differs from the authorization request's");
        }
    }
    match (&grant.challenge, &params.code_verifier) {
        (Some(c), Some(v)) if super::oauth::pkce_matches(v, c) => {}
        (Some(_), None) => return invalid_grant("code_verifier is required (PKCE)"),
        (Some(_), Some(_)) => return invalid_grant("code_verifier does not match (PKCE)"),
        (None, Some(_)) => return invalid_grant("no code_challenge was sent for this code"),
        (None, None) => {}
    }
    if single_use(r, &grant.id).is_some() {
        log::warn!(
            "oauth: code of user {:?} presented again by client {:?}: session revoked",
            claims.user,
            client.id
        );
        let reply = oauth_error(
            400,
            "invalid_grant",
            "the code was already used: every token it gave is revoked",
        );
        return write_then_answer(r, session_record(r, &claims.session, None), reply);
    }
    let Some(session) = live_session(r, &claims.session) else {
        return invalid_grant("the login session ended");
    };
    let reply = match token_response(
        r,
        settings,
        auth,
        &session,
        &claims.session,
        client,
        &grant.scope,
        grant.nonce.as_deref(),
        grant.auth_time,
    ) {
        Ok(reply) => reply,
        Err(v) => return v,
    };
    log::info!(
        "oauth: code of user {:?} exchanged by client {:?}",
        claims.user,
        client.id
    );
    let record = single_use_record(r, &grant.id, SPENT, claims.expires);
    write_then_answer(r, record, reply)
}

/// `grant_type=refresh_token` with an application's refresh token: it rotates (each is spent, sync,
/// when used); a spent one again within [`REFRESH_GRACE`] is refused, later it revokes the session.
fn refresh_grant(
    r: &mut Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    pool: &Pool,
    client: &Client,
    params: &Params,
) -> Verdict {
    let now = r.cx.unix_now;
    let Some(token) = params.refresh_token.as_deref() else {
        return answer(oauth_error(
            400,
            "invalid_request",
            "refresh_token is required",
        ));
    };
    let claims = match client_token(auth, pool, client, token, TokenKind::Refresh, now) {
        Ok(c) => c,
        Err(v) => return v,
    };
    let Some(grant) = claims.grant.as_deref() else {
        return invalid_grant("the refresh token is not valid");
    };
    let Some(session) = live_session(r, &claims.session) else {
        return invalid_grant("the login session ended");
    };
    match single_use(r, &grant.id) {
        None => {}
        Some((REVOKED, _)) => return invalid_grant("the refresh token was revoked"),
        Some((_, at)) if now.saturating_sub(at) <= REFRESH_GRACE => {
            return invalid_grant("the refresh token was just used");
        }
        Some(_) => {
            log::warn!(
                "oauth: refresh token of user {:?} reused by client {:?}: session revoked",
                claims.user,
                client.id
            );
            let reply = oauth_error(
                400,
                "invalid_grant",
                "refresh token reused: session revoked",
            );
            return write_then_answer(r, session_record(r, &claims.session, None), reply);
        }
    }
    let scope = match params.scope.as_deref() {
        Some(s) if !super::oauth::scope_within(s, &grant.scope) => {
            return answer(oauth_error(
                400,
                "invalid_scope",
                "a refresh may not widen the scope",
            ));
        }
        Some(s) => s.to_string(),
        None => grant.scope.clone(),
    };
    // A refresh is a use of the session: push its idle expiry as a request would (an ordinary write;
    // the sync one below is the spent token's).
    if session.due_for_touch(now) {
        if let Some(store) = r.cx.store {
            let mut touched = session.clone();
            touched.last_seen = now;
            let _ = store.put(
                Kind::LoginSession,
                &claims.session,
                &touched.encode(),
                touched.expires(),
            );
        }
    }
    let reply = match token_response(
        r,
        settings,
        auth,
        &session,
        &claims.session,
        client,
        &scope,
        None,
        grant.auth_time,
    ) {
        Ok(reply) => reply,
        Err(v) => return v,
    };
    let record = single_use_record(r, &grant.id, SPENT, claims.expires);
    write_then_answer(r, record, reply)
}

/// The ID token's claims (OpenID Connect Core §2), signed like identity tokens (ES256, the JWKS's keys).
#[derive(serde::Serialize, serde::Deserialize)]
struct IdToken {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    auth_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    /// The base session (base64url), as in identity tokens: RP-initiated logout ends it.
    sid: String,
    azp: String,
    #[serde(default)]
    preferred_username: String,
    #[serde(default)]
    tenant: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// The token answer (RFC 6749 §5.1): an access token and a refresh token of `client` for `session`,
/// and with `openid` in `scope` an ID token.
#[allow(clippy::too_many_arguments)]
fn token_response(
    r: &Request<'_>,
    settings: &AuthSettings,
    auth: &Auth,
    session: &LoginSession,
    session_id: &[u8; 16],
    client: &Client,
    scope: &str,
    nonce: Option<&str>,
    auth_time: u64,
) -> Result<Reply, Verdict> {
    let now = r.cx.unix_now;
    let access_exp = now.saturating_add(client.access_ttl).min(session.absolute);
    let refresh_exp = now.saturating_add(client.refresh_ttl).min(session.absolute);
    let seal = |kind, expires: u32| {
        let claims = Claims {
            kind,
            user: session.user.clone(),
            tenant: session.tenant.clone(),
            session: *session_id,
            issued: u64::from(now),
            expires: u64::from(expires),
            audience: Client::audience(&client.id),
            generation: 0,
            grant: Some(Box::new(Grant {
                client: client.id.to_string(),
                scope: scope.to_string(),
                id: new_token_id(),
                redirect_uri: None,
                challenge: None,
                nonce: None,
                auth_time,
            })),
        };
        auth.keys.tokens().seal.seal(&claims).map_err(|e| {
            log::error!("auth: cannot seal a token: {e}");
            answer(oauth_error(
                503,
                "temporarily_unavailable",
                "no token key yet",
            ))
        })
    };
    let access = seal(TokenKind::Access, access_exp)?;
    let refresh = seal(TokenKind::Refresh, refresh_exp)?;
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": access_exp.saturating_sub(now),
        "refresh_token": refresh,
        "scope": scope,
    });
    if has_scope(scope, "openid") {
        let ttl = settings.identity_ttl.min(auth.identity_ttl_max).max(1);
        let claims = IdToken {
            iss: issuer(r),
            sub: session.user.clone(),
            aud: client.id.to_string(),
            exp: u64::from(now) + u64::from(ttl),
            iat: u64::from(now),
            auth_time,
            nonce: nonce.map(str::to_string),
            sid: URL_SAFE_NO_PAD.encode(session_id),
            azp: client.id.to_string(),
            preferred_username: session.user.clone(),
            tenant: session.tenant.clone(),
            roles: if has_scope(scope, "profile") {
                session.roles.clone()
            } else {
                Vec::new()
            },
        };
        let signed = auth
            .keys
            .identity()
            .sign
            .sign_claims(&claims, claims.iat, claims.exp)
            .map_err(|e| {
                log::error!("auth: cannot sign an ID token: {e}");
                answer(oauth_error(
                    503,
                    "temporarily_unavailable",
                    "no signing key yet",
                ))
            })?;
        body["id_token"] = signed.into();
    }
    let mut reply = Reply::new(200, "application/json", body.to_string());
    no_store(&mut reply);
    Ok(reply)
}

/// Why an application's token is not live (logged, never shown: the client learns only "invalid").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum TokenRefusal {
    #[error("{0}")]
    Token(super::token::TokenError),
    #[error("not an application's token")]
    NotAnApplications,
    #[error("token of another pool or of an application no longer registered")]
    OtherPool,
    #[error("token spent or revoked")]
    Spent,
    #[error("login session ended")]
    SessionGone,
}

/// An application's token of `kind` that is live: it opens, belongs to a client of `pool`, its session
/// is live and it was neither spent nor revoked.
fn live_token(
    r: &Request<'_>,
    auth: &Auth,
    pool: &Pool,
    token: &[u8],
    kind: TokenKind,
) -> Result<(Claims, LoginSession), TokenRefusal> {
    let now = r.cx.unix_now;
    let claims = auth
        .keys
        .tokens()
        .open
        .open_any_audience(token, u64::from(now), kind)
        .map_err(TokenRefusal::Token)?;
    let grant = claims
        .grant
        .as_deref()
        .ok_or(TokenRefusal::NotAnApplications)?;
    if claims.tenant != *pool.tenant
        || pool.client(&grant.client).is_none()
        || claims.audience != Client::audience(&grant.client)
    {
        return Err(TokenRefusal::OtherPool);
    }
    if single_use(r, &grant.id).is_some() {
        return Err(TokenRefusal::Spent);
    }
    let session = live_session(r, &claims.session).ok_or(TokenRefusal::SessionGone)?;
    Ok((claims, session))
}

/// `GET|POST /.tether/userinfo` with an application's access token (`Authorization: Bearer`): who the
/// user is (OpenID Connect Core §5.3); the token needs the `openid` scope.
pub(crate) fn userinfo(r: &mut Request<'_>, settings: &AuthSettings, auth: &Auth) -> Verdict {
    if !matches!(
        r.head.method,
        crate::http::Method::Get | crate::http::Method::Head | crate::http::Method::Post
    ) {
        return method_not_allowed("GET, HEAD, POST");
    }
    let Some(pool) = settings.pools.get(pool_of(r, settings)) else {
        return no_pool();
    };
    let challenge = |error: Option<&str>| {
        let mut reply = oauth_error(
            401,
            error.unwrap_or("invalid_token"),
            "a valid access token is required",
        );
        let value = match error {
            Some(e) => format!("Bearer realm=\"{}\", error=\"{e}\"", pool.tenant),
            None => format!("Bearer realm=\"{}\"", pool.tenant),
        };
        reply.headers.push(("WWW-Authenticate", value));
        answer(reply)
    };
    let Some(token) = r
        .head
        .header(r.bytes, "authorization")
        .and_then(super::session::bearer)
    else {
        return challenge(None);
    };
    let (claims, session) = match live_token(r, auth, pool, token, TokenKind::Access) {
        Ok(t) => t,
        Err(why) => {
            log::info!("userinfo refused: {why}");
            return challenge(Some("invalid_token"));
        }
    };
    let scope = claims.grant.as_deref().map_or("", |g| g.scope.as_str());
    if !has_scope(scope, "openid") {
        let mut reply = oauth_error(403, "insufficient_scope", "the openid scope is required");
        reply.headers.push((
            "WWW-Authenticate",
            format!(
                "Bearer realm=\"{}\", error=\"insufficient_scope\"",
                pool.tenant
            ),
        ));
        return answer(reply);
    }
    let mut body = serde_json::json!({
        "sub": session.user,
        "preferred_username": session.user,
        "tenant": session.tenant,
    });
    if has_scope(scope, "profile") {
        body["roles"] = session.roles.clone().into();
        body["groups"] = session.groups.clone().into();
    }
    let mut reply = Reply::new(200, "application/json", body.to_string());
    no_store(&mut reply);
    answer(reply)
}

/// `POST /.tether/introspect` (RFC 7662), for confidential clients of the pool (a resource server
/// checks a token another application holds): `{"active":true,…}` for a live access or refresh token of
/// the pool, `{"active":false}` for anything else.
fn introspect(r: &mut Request<'_>, auth: &Auth, pool: &Pool, params: &Params) -> Verdict {
    let Some(token) = params.token.as_deref() else {
        return answer(oauth_error(400, "invalid_request", "token is required"));
    };
    let kinds = match params.token_type_hint.as_deref() {
        Some("refresh_token") => [TokenKind::Refresh, TokenKind::Access],
        _ => [TokenKind::Access, TokenKind::Refresh],
    };
    let found = kinds
        .iter()
        .find_map(|&k| live_token(r, auth, pool, token.as_bytes(), k).ok());
    let body = match found {
        None => serde_json::json!({ "active": false }),
        Some((claims, session)) => {
            let grant = claims.grant.as_deref();
            serde_json::json!({
                "active": true,
                "scope": grant.map_or("", |g| g.scope.as_str()),
                "client_id": grant.map_or("", |g| g.client.as_str()),
                "username": session.user,
                "sub": session.user,
                "token_type": if claims.kind == TokenKind::Access { "Bearer" } else { "refresh_token" },
                "exp": claims.expires,
                "iat": claims.issued,
                "iss": issuer(r),
                "aud": grant.map_or("", |g| g.client.as_str()),
                "sid": URL_SAFE_NO_PAD.encode(claims.session),
                "tenant": session.tenant,
            })
        }
    };
    let mut reply = Reply::new(200, "application/json", body.to_string());
    no_store(&mut reply);
    answer(reply)
}

/// `POST /.tether/revoke` (RFC 7009): an access or refresh token the client holds is revoked on every
/// node (a `SingleUse` record, sync) until it would have expired. 200 also for a token that is not
/// valid or not the client's (§2.2), which is then left alone.
fn revoke(
    r: &mut Request<'_>,
    auth: &Auth,
    pool: &Pool,
    client: &Client,
    params: &Params,
) -> Verdict {
    let Some(token) = params.token.as_deref() else {
        return answer(oauth_error(400, "invalid_request", "token is required"));
    };
    let now = u64::from(r.cx.unix_now);
    let audience = Client::audience(&client.id);
    let ring = auth.keys.tokens();
    let claims = [TokenKind::Refresh, TokenKind::Access]
        .iter()
        .find_map(|&k| ring.open.open(token.as_bytes(), now, k, &audience).ok());
    drop(ring);
    let mut reply = Reply::new(200, "application/json", "{}");
    no_store(&mut reply);
    let Some(claims) = claims.filter(|c| c.tenant == *pool.tenant) else {
        return answer(reply);
    };
    let Some(grant) = claims.grant.as_deref() else {
        return answer(reply);
    };
    log::info!(
        "oauth: client {:?} revoked a token of user {:?}",
        client.id,
        claims.user
    );
    let record = single_use_record(r, &grant.id, REVOKED, claims.expires);
    write_then_answer(r, record, reply)
}

/// An `id_token_hint` as read back: only what logout needs.
#[derive(serde::Deserialize)]
struct IdTokenHint {
    aud: String,
    sid: String,
}

/// `GET|POST /.tether/end_session` (OpenID Connect RP-Initiated Logout 1.0): the `id_token_hint` (an ID
/// token tether signed, expired or not) names the base session, which is revoked on every node (sync) —
/// every application of the user is logged out — and the browser's cookie is deleted. Then the browser
/// goes to `post_logout_redirect_uri` if the hint's application registered it (with `state`), else a
/// page says it is logged out. Without a valid hint nothing is ended: a link on another site must not log
/// users out.
pub(crate) fn end_session(r: &mut Request<'_>, settings: &AuthSettings, auth: &Auth) -> Verdict {
    if let Some(p) = r.plan.auth.take() {
        return resume(r, settings, auth, *p);
    }
    let params = match r.head.method {
        crate::http::Method::Get | crate::http::Method::Head => {
            Params::from_target(r.head.target.of(r.bytes))
        }
        crate::http::Method::Post => {
            let Some(body) = r.body else {
                return Verdict::Wait(Wait::Body {
                    limit: super::oauth::MAX_BODY_LEN,
                });
            };
            Params::from_form(header(r, "content-type").unwrap_or(""), body)
        }
        _ => return method_not_allowed("GET, HEAD, POST"),
    };
    let params = match params {
        Ok(p) => p,
        Err(e) => return error_page(400, &format!("Bad logout request: {e}.")),
    };
    let Some(pool) = settings.pools.get(pool_of(r, settings)) else {
        return no_pool();
    };
    let now = u64::from(r.cx.unix_now);
    let hint = params.id_token_hint.as_deref().and_then(|t| {
        auth.keys
            .identity()
            .sign
            .verify_ignoring_expiry::<IdTokenHint>(t, now)
    });
    let Some(hint) = hint else {
        return error_page(
            400,
            "Logout needs the id_token_hint of an ID token this sign-in service issued.",
        );
    };
    let Some(client) = pool.client(&hint.aud) else {
        return error_page(
            400,
            "The ID token is not for an application of this service.",
        );
    };
    if params
        .client_id
        .as_deref()
        .is_some_and(|c| c != &*client.id)
    {
        return error_page(400, "client_id differs from the ID token's application.");
    }
    let redirect = match params.post_logout_redirect_uri.as_deref() {
        None => None,
        Some(uri) if client.post_logout_redirect_uris.iter().any(|u| **u == *uri) => Some(uri),
        Some(_) => {
            return error_page(
                400,
                "The post_logout_redirect_uri is not registered for this application.",
            );
        }
    };
    let mut reply = match redirect {
        Some(uri) => {
            let mut pairs = Vec::new();
            if let Some(s) = params.state.as_deref() {
                pairs.push(("state", s));
            }
            let mut reply = Reply::new(302, "text/plain", "logged out\n");
            reply.headers.push(("Location", with_query(uri, &pairs)));
            reply
        }
        None if wants_html(r) => Reply::new(
            200,
            "text/html; charset=utf-8",
            "<!doctype html><meta charset=utf-8><title>Logged out</title><p>You are logged out.</p>\n",
        ),
        None => Reply::new(200, "application/json", "{\"logged_out\":true}"),
    };
    no_store(&mut reply);
    reply.headers.push((
        "Set-Cookie",
        super::endpoints::clear_cookie(settings, r.cx.tls),
    ));
    let mut sid = [0u8; 16];
    match URL_SAFE_NO_PAD.decode(&hint.sid) {
        Ok(b) if b.len() == 16 => sid.copy_from_slice(&b),
        _ => return error_page(400, "The ID token names no session."),
    }
    log::info!(
        "end_session: session ended by client {:?} for every application",
        client.id
    );
    let record = session_record(r, &sid, None);
    write_then_answer(r, record, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_redirects_carry_state_and_never_lose_the_registered_query() {
        let Verdict::Answer(Answer::Reply(reply)) = redirect_error(
            "https://app.example/cb?tenant=1",
            "invalid_scope",
            "scope admin is not allowed",
            Some("xyz"),
        ) else {
            panic!("not a reply");
        };
        assert_eq!(reply.status, 302);
        let location = &reply
            .headers
            .iter()
            .find(|(n, _)| *n == "Location")
            .unwrap()
            .1;
        assert_eq!(
            location,
            "https://app.example/cb?tenant=1&error=invalid_scope&error_description=scope%20admin%20is%20not%20allowed&state=xyz"
        );
    }

    #[test]
    fn error_pages_escape_what_they_show() {
        let Verdict::Answer(Answer::Reply(reply)) = error_page(400, "<script>") else {
            panic!("not a reply");
        };
        let body = String::from_utf8(reply.body).unwrap();
        assert!(!body.contains("<script>") && body.contains("&lt;script&gt;"));
    }
}
