//! The auth stage's work: who a request is (its session cookie or bearer access token, checked against the
//! key rings and the replicated session record), whether the route lets that user through, and the
//! identity the backend gets (headers, a signed JWT, a relayed upstream token).
//!
//! A worker keeps what it verified in a small cache of its own (no lock, no sharing): the token's bytes →
//! its session, the session record's version, and the identity header block already written and signed.
//! So a request with a token seen before costs a hash lookup, one lock-free store read (the revocation
//! check: a revoked or expired session is refused on the very next request) and a copy of the header
//! block — no decryption, no JSON, no signature, no allocation.

use super::runtime::Auth;
use super::session::{Credential, LoginSession};
use super::settings::{AuthSettings, Pool};
use super::token::TokenKind;
use crate::store::{Kind, Record, StoreWriter, Version};
use std::collections::HashMap;
use std::rc::Rc;

/// Most tokens a worker remembers; past it the cache starts over (a flood of distinct tokens then costs
/// one decryption each, which is what a miss costs anyway).
const MAX_CACHED: usize = 16_384;

/// A verified token.
#[derive(Debug)]
struct Entry {
    /// The whole token (the cache's key is only a part of it).
    token: Box<[u8]>,
    /// How it was presented (a token is good only as the kind it was sealed as).
    kind: TokenKind,
    session_id: [u8; 16],
    /// When the token itself expires (seconds).
    token_expires: u64,
    /// The pool (tenant) it was opened for.
    tenant: Box<str>,
    /// The session record as last read.
    version: Version,
    session: Rc<LoginSession>,
    identity: Option<Identity>,
}

/// The identity header block for one session, as sent to backends.
#[derive(Debug, Clone)]
struct Identity {
    block: Rc<[u8]>,
    /// The relayed upstream token's header line, for a pool that relays.
    upstream: Option<Rc<[u8]>>,
    /// Rebuild from this second on (half the JWT's life).
    renew_at: u32,
    keys_generation: u64,
}

/// A worker's verified tokens, by [`mac_of`] their tokens.
#[derive(Debug, Default)]
pub struct AuthCache {
    tokens: HashMap<[u8; MAC_KEY], Entry>,
}

/// Bytes of a token the cache hashes.
const MAC_KEY: usize = 32;

/// The cache's key for a token: the 32 characters before its footer — the end of the base64 of the
/// token's MAC, different for every token — so a lookup hashes 32 bytes instead of the whole ~270 (the
/// footer is the same for every token of a key). Only tokens that verified are ever inserted, so keys
/// are MACs nobody chose; an entry is used only when its whole token matches.
fn mac_of(token: &[u8]) -> [u8; MAC_KEY] {
    let body = memchr::memrchr(b'.', token).map_or(token, |dot| &token[..dot]);
    let tail = &body[body.len().saturating_sub(MAC_KEY)..];
    let mut key = [0u8; MAC_KEY];
    key[MAC_KEY - tail.len()..].copy_from_slice(tail);
    key
}

/// Why a request's login was not accepted (logged at debug; the client gets the generic 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Token(super::token::TokenError),
    #[error("token for another tenant")]
    OtherTenant,
    #[error("session ended or revoked")]
    SessionGone,
    /// No record of the session at all (no value, no tombstone): with the Redis backend, one written
    /// elsewhere may not have reached this node yet (the caller may fetch it and look again).
    #[error("session not known here")]
    SessionUnknown([u8; 16]),
    #[error("session record unreadable")]
    BadRecord,
    #[error("no replicated store")]
    NoStore,
}

/// Who the request is.
#[derive(Debug)]
pub struct Verified {
    pub session_id: [u8; 16],
    /// The session record's version as read (a touch writes only over this one).
    pub version: Version,
    pub session: Rc<LoginSession>,
    /// The identity block for the backend.
    pub identity: Option<Rc<[u8]>>,
    /// The relayed upstream token's header line.
    pub upstream: Option<Rc<[u8]>>,
}

impl AuthCache {
    /// Verifies `cred` for `pool` at `now`: the token opens (or is cached), and its session is live in the
    /// store. Also returns the header blocks for the backend (built and signed when missing, stale or
    /// made with a retired key).
    pub fn verify(
        &mut self,
        auth: &Auth,
        settings: &AuthSettings,
        pool: &Pool,
        store: Option<&StoreWriter>,
        cred: Credential<'_>,
        now: u32,
    ) -> Result<Verified, Refusal> {
        let store = store.ok_or(Refusal::NoStore)?;
        let token = cred.token();
        let kind = cred.kind();
        // The common case: a token this worker verified before, still within its expiry. One lookup.
        let key = mac_of(token);
        if let Some(entry) = self.tokens.get_mut(&key).filter(|e| *e.token == *token) {
            if entry.kind == kind
                && entry.token_expires > u64::from(now)
                && *entry.tenant == *pool.tenant
            {
                let verified = entry.check(auth, settings, pool, store, now);
                if verified.is_err() {
                    self.tokens.remove(&key);
                }
                return verified;
            }
            self.tokens.remove(&key);
        }
        let claims = auth
            .keys
            .tokens()
            .open
            .open(token, u64::from(now), kind, &pool.tenant)
            .map_err(Refusal::Token)?;
        if claims.tenant != *pool.tenant {
            return Err(Refusal::OtherTenant);
        }
        let record = store
            .get(Kind::LoginSession, &claims.session, now)
            .ok_or_else(|| {
                let held = store
                    .store()
                    .reader()
                    .get_raw(Kind::LoginSession, &claims.session)
                    .is_some();
                if held {
                    Refusal::SessionGone
                } else {
                    Refusal::SessionUnknown(claims.session)
                }
            })?;
        let session = decode(&record)?;
        if self.tokens.len() >= MAX_CACHED {
            self.tokens.clear();
        }
        // A verified token takes its key's place (another token there had the same 32 characters of
        // MAC: never in practice).
        let entry = self.tokens.entry(key).insert_entry(Entry {
            token: token.into(),
            kind,
            session_id: claims.session,
            token_expires: claims.expires,
            tenant: pool.tenant.clone(),
            version: record.version,
            session: Rc::new(session),
            identity: None,
        });
        entry.into_mut().check(auth, settings, pool, store, now)
    }

    /// Forgets a token (its session was found revoked or was just revoked here).
    pub fn forget(&mut self, token: &[u8]) {
        let key = mac_of(token);
        if self.tokens.get(&key).is_some_and(|e| *e.token == *token) {
            self.tokens.remove(&key);
        }
    }
}

impl Entry {
    /// The revocation check (on every request: the session record must still be live), the session
    /// re-read when its record changed, and the identity blocks rebuilt when stale.
    fn check(
        &mut self,
        auth: &Auth,
        settings: &AuthSettings,
        pool: &Pool,
        store: &StoreWriter,
        now: u32,
    ) -> Result<Verified, Refusal> {
        let record = store
            .get(Kind::LoginSession, &self.session_id, now)
            .ok_or(Refusal::SessionGone)?;
        if record.version != self.version {
            self.session = Rc::new(decode(&record)?);
            self.version = record.version;
            self.identity = None;
        }
        let generation = auth.keys.identity().generation;
        let stale = self
            .identity
            .as_ref()
            .is_none_or(|i| now >= i.renew_at || i.keys_generation != generation);
        if stale {
            self.identity =
                build_identity(auth, settings, pool, &self.session, &self.session_id, now);
        }
        Ok(Verified {
            session_id: self.session_id,
            version: self.version,
            session: self.session.clone(),
            identity: self.identity.as_ref().map(|i| i.block.clone()),
            upstream: self.identity.as_ref().and_then(|i| i.upstream.clone()),
        })
    }
}

fn decode(record: &Record) -> Result<LoginSession, Refusal> {
    let value = record.value.as_deref().ok_or(Refusal::SessionGone)?;
    LoginSession::decode(value).map_err(|e| {
        log::warn!("auth: {e}");
        Refusal::BadRecord
    })
}

/// The header lines a backend gets for `session`: user, tenant, roles, the signed JWT, and a relayed
/// upstream token as `<header>: Bearer <token>`. `None` when no identity key is installed yet or a value
/// cannot go in a header (both logged).
fn build_identity(
    auth: &Auth,
    settings: &AuthSettings,
    pool: &Pool,
    session: &LoginSession,
    session_id: &[u8; 16],
    now: u32,
) -> Option<Identity> {
    use base64::Engine;
    let rings = auth.keys.identity();
    let ttl = settings.identity_ttl.min(auth.identity_ttl_max).max(1);
    let claims = super::identity::IdentityClaims {
        sub: session.user.clone(),
        tenant: session.tenant.clone(),
        roles: session.roles.clone(),
        iss: settings.issuer.to_string(),
        aud: settings.audience.to_string(),
        iat: u64::from(now),
        exp: u64::from(now) + u64::from(ttl),
        sid: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(session_id)),
    };
    let headers = match super::identity::identity_headers(&claims, &settings.headers) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("auth: no identity headers for a session: {e}");
            return None;
        }
    };
    let jwt = match rings.sign.sign(&claims) {
        Ok(j) => j,
        Err(e) => {
            log::warn!("auth: cannot sign an identity token: {e}");
            return None;
        }
    };
    let mut block = Vec::with_capacity(jwt.len() + 128);
    for (name, value) in &headers {
        crate::http::rewrite::write_header(&mut block, name.as_bytes(), value.as_bytes());
    }
    crate::http::rewrite::write_header(
        &mut block,
        settings.identity_header.as_bytes(),
        jwt.as_bytes(),
    );
    let mut upstream = Vec::new();
    upstream_header(pool, session, &mut upstream);
    Some(Identity {
        block: block.into(),
        upstream: (!upstream.is_empty()).then(|| upstream.into()),
        renew_at: now.saturating_add((ttl / 2).max(1)),
        keys_generation: rings.generation,
    })
}

/// The relayed upstream token's header line for the backend, when the session holds a usable one.
fn upstream_header(pool: &Pool, session: &LoginSession, out: &mut Vec<u8>) {
    if let (Some(up), Some(tokens)) = (&pool.upstream, &session.upstream) {
        let mut value = Vec::with_capacity(tokens.access.len() + 7);
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(tokens.access.as_bytes());
        crate::http::rewrite::write_header(out, up.header.as_bytes(), &value);
    }
}

/// Writes `session` back with its idle expiry pushed forward (async: losing one touch costs a quarter
/// of the idle time at worst) — only over the record it was read from (`version`): a refresh, a new
/// upstream token or a revocation written meanwhile wins, and is never undone by a touch.
pub fn touch(
    store: &StoreWriter,
    id: &[u8; 16],
    session: &LoginSession,
    version: Version,
    now: u32,
) {
    let mut s = session.clone();
    s.last_seen = now;
    let record = Record {
        kind: Kind::LoginSession,
        key: id.as_slice().into(),
        version: store.version(),
        expires: s.expires(),
        value: Some(s.encode().into()),
    };
    let _ = store.write_if_current(record, version);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_keyed_by_the_end_of_their_mac_not_their_shared_footer() {
        let a = b"v4.local.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAmacOfA0123456789abcdefghijklmnop.eyJraWQiOiJrMSJ9";
        let b = b"v4.local.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAmacOfB0123456789abcdefghijklmnop.eyJraWQiOiJrMSJ9";
        assert_ne!(mac_of(a), mac_of(b));
        assert_eq!(mac_of(a), *b"macOfA0123456789abcdefghijklmnop");
        // Short or footer-less tokens still get a key (padded with zeros in front).
        assert_eq!(mac_of(b"abc")[29..], *b"abc");
        assert_eq!(mac_of(b"abc")[..29], [0u8; 29]);
        assert_eq!(mac_of(b"x.abc")[31], b'x');
    }
}
