//! Login sessions as the replicated store keeps them: the record's value bytes (who, which tenant, roles and
//! groups, when it started, was last seen and ends, which refresh token is current, and a relayed upstream
//! token), and how a request presents one (the sealed session cookie or a bearer access token).
//!
//! A session is a `LoginSession` record (kind 3) keyed by its 16-byte random id; the record's expiry is
//! the session's end (`min(last_seen + idle, absolute)`), so an expired session is gone on every node at
//! the same second without a message. A revocation is the record's tombstone, written with the `sync`
//! class: from its acknowledgement on, no node accepts a cookie or token naming the session. The value
//! format is documented byte by byte in docs/PROTOCOL.md ("Login sessions").

use crate::http::Header;

/// The value format's version (first byte).
pub const FORMAT: u8 = 1;
/// Most roles or groups a session carries.
pub const MAX_NAMES: usize = 32;
/// Longest relayed upstream token (bytes).
pub const MAX_UPSTREAM_TOKEN: usize = 4096;

/// A relayed upstream token (issue #14 point 8): injected into requests to backends, never shown to the
/// client.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTokens {
    pub access: String,
    pub refresh: Option<String>,
    /// Seconds since the Unix epoch; 0: the upstream said nothing.
    pub expires: u32,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        f.debug_struct("UpstreamTokens")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// One login session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    pub user: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: u32,
    /// When a request last renewed the idle expiry (written at most every quarter of `idle`).
    pub last_seen: u32,
    /// Idle timeout, seconds.
    pub idle: u32,
    /// Absolute end, seconds since the Unix epoch.
    pub absolute: u32,
    /// The generation of the current refresh token: a refresh token of an older generation presented
    /// again is a reuse (the session is revoked).
    pub refresh_gen: u32,
    /// When the refresh token last rotated (seconds since the Unix epoch; 0: never): the token just
    /// before the current one is still honoured for a short grace after that (parallel refreshes).
    pub refreshed: u32,
    pub upstream: Option<UpstreamTokens>,
}

/// Why a record's value is not a session (a peer or an older version wrote something we cannot read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed login session record: {0}")]
pub struct DecodeError(pub &'static str);

impl LoginSession {
    /// When the session ends: idle expiry or absolute end, whichever is first.
    pub fn expires(&self) -> u32 {
        self.last_seen.saturating_add(self.idle).min(self.absolute)
    }

    /// Whether the idle expiry should be pushed forward now (a quarter of the idle time has passed since it
    /// was last written), so a busy session costs one write per quarter idle time, not one per request.
    pub fn due_for_touch(&self, now: u32) -> bool {
        now.saturating_sub(self.last_seen) >= (self.idle / 4).max(1)
            && self.last_seen.saturating_add(self.idle) < self.absolute
    }

    /// Whether the user has one of `roles` (empty: no role needed) and one of `groups` (same).
    pub fn allowed(&self, roles: &[Box<str>], groups: &[Box<str>]) -> bool {
        let any = |need: &[Box<str>], have: &[String]| {
            need.is_empty() || need.iter().any(|n| have.iter().any(|h| **n == **h))
        };
        any(roles, &self.roles) && any(groups, &self.groups)
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.user.len() + self.tenant.len());
        out.push(FORMAT);
        for n in [
            self.created,
            self.last_seen,
            self.idle,
            self.absolute,
            self.refresh_gen,
            self.refreshed,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        str8(&mut out, &self.tenant);
        str8(&mut out, &self.user);
        for list in [&self.roles, &self.groups] {
            let n = list.len().min(MAX_NAMES);
            out.push(n as u8);
            for s in &list[..n] {
                str8(&mut out, s);
            }
        }
        match &self.upstream {
            None => out.push(0),
            Some(u) => {
                out.push(1);
                str16(&mut out, &u.access);
                str16(&mut out, u.refresh.as_deref().unwrap_or(""));
                out.extend_from_slice(&u.expires.to_be_bytes());
            }
        }
        out
    }

    /// Reads a record value strictly: every length checked, nothing left over, text UTF-8.
    pub fn decode(value: &[u8]) -> Result<LoginSession, DecodeError> {
        let mut r = Reader(value);
        if r.u8()? != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        let created = r.u32()?;
        let last_seen = r.u32()?;
        let idle = r.u32()?;
        let absolute = r.u32()?;
        let refresh_gen = r.u32()?;
        let refreshed = r.u32()?;
        let tenant = r.str8()?;
        let user = r.str8()?;
        if user.is_empty() {
            return Err(DecodeError("no user"));
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = usize::from(r.u8()?);
            if n > MAX_NAMES {
                return Err(DecodeError("too many roles or groups"));
            }
            for _ in 0..n {
                list.push(r.str8()?);
            }
        }
        let [roles, groups] = lists;
        let upstream = match r.u8()? {
            0 => None,
            1 => {
                let access = r.str16()?;
                let refresh = r.str16()?;
                let expires = r.u32()?;
                Some(UpstreamTokens {
                    access,
                    refresh: (!refresh.is_empty()).then_some(refresh),
                    expires,
                })
            }
            _ => return Err(DecodeError("bad upstream flag")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(LoginSession {
            user,
            tenant,
            roles,
            groups,
            created,
            last_seen,
            idle,
            absolute,
            refresh_gen,
            refreshed,
            upstream,
        })
    }
}

fn str8(out: &mut Vec<u8>, s: &str) {
    // Names are at most 64 bytes (users::MAX_NAME_LEN); cut, never overflow the length byte.
    let b = &s.as_bytes()[..s.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

fn str16(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_UPSTREAM_TOKEN)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self, n: usize) -> Result<String, DecodeError> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError("text not UTF-8"))?;
        if s.chars().any(char::is_control) {
            return Err(DecodeError("control character in text"));
        }
        Ok(s.to_string())
    }

    fn str8(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u8()?);
        self.text(n)
    }

    fn str16(&mut self) -> Result<String, DecodeError> {
        let b = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if n > MAX_UPSTREAM_TOKEN {
            return Err(DecodeError("upstream token too long"));
        }
        self.text(n)
    }
}

/// How a request presents its login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'b> {
    /// The sealed session cookie's value.
    Cookie(&'b [u8]),
    /// `Authorization: Bearer …`: an access token.
    Bearer(&'b [u8]),
}

impl<'b> Credential<'b> {
    /// The kind of token it must be: a cookie holds a session token, a bearer header an access token.
    pub fn kind(self) -> super::token::TokenKind {
        match self {
            Credential::Cookie(_) => super::token::TokenKind::Session,
            Credential::Bearer(_) => super::token::TokenKind::Access,
        }
    }

    /// The token's bytes.
    pub fn token(self) -> &'b [u8] {
        match self {
            Credential::Cookie(t) | Credential::Bearer(t) => t,
        }
    }
}

/// The login a request presents: a bearer access token of tether's first (an API client's explicit
/// choice), else the session cookie named `cookie`. An `Authorization` header of another scheme, or a
/// bearer token that is not a `v4.local` token, is not ours (it may be for the backend) and is ignored.
pub fn credential<'b>(
    headers: &[Header],
    bytes: &'b [u8],
    cookie: &[u8],
) -> Option<Credential<'b>> {
    if let Some(v) = crate::http::head::find_header(headers, bytes, "authorization") {
        if let Some(token) = bearer(v).filter(|t| t.starts_with(b"v4.local.")) {
            return Some(Credential::Bearer(token));
        }
    }
    crate::http::cookie::request_cookie(headers, bytes, cookie)
        .filter(|v| !v.is_empty())
        .map(Credential::Cookie)
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, RFC 6750 §2.1).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

/// A fresh session id: 16 bytes from the system's randomness.
pub fn new_session_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).expect("system randomness");
    id
}

/// Decodes what a client could make the balancer read as a session — a cookie or bearer value, and a
/// session record's value — for the fuzz target: never panics, whatever the bytes.
pub fn fuzz_decode(data: &[u8]) {
    let _ = LoginSession::decode(data);
    let _ = bearer(data);
    if let Ok(s) = LoginSession::decode(data) {
        assert_eq!(LoginSession::decode(&s.encode()).as_ref(), Ok(&s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> LoginSession {
        LoginSession {
            user: "alice".into(),
            tenant: "demo".into(),
            roles: vec!["user".into()],
            groups: vec![],
            created: 1_000,
            last_seen: 1_000,
            idle: 1_800,
            absolute: 1_000 + 43_200,
            refresh_gen: 0,
            refreshed: 0,
            upstream: None,
        }
    }

    #[test]
    fn round_trips() {
        let mut s = alice();
        assert_eq!(LoginSession::decode(&s.encode()), Ok(s.clone()));
        s.upstream = Some(UpstreamTokens {
            access: "abc".into(),
            refresh: Some("r".into()),
            expires: 5,
        });
        s.groups = vec!["staff".into(), "ops".into()];
        assert_eq!(LoginSession::decode(&s.encode()), Ok(s.clone()));
        s.upstream.as_mut().unwrap().refresh = None;
        assert_eq!(LoginSession::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn refuses_malformed_values() {
        let good = alice().encode();
        for cut in 0..good.len() {
            assert!(LoginSession::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(
            LoginSession::decode(&extra),
            Err(DecodeError("trailing bytes"))
        );
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(
            LoginSession::decode(&bad),
            Err(DecodeError("unknown format"))
        );
        let mut s = alice();
        s.user = "a\nb".into();
        assert_eq!(
            LoginSession::decode(&s.encode()),
            Err(DecodeError("control character in text"))
        );
    }

    #[test]
    fn expiry_and_touch() {
        let s = alice();
        assert_eq!(s.expires(), 2_800);
        assert!(!s.due_for_touch(1_100));
        assert!(s.due_for_touch(1_450));
        let mut near_end = alice();
        near_end.absolute = 2_000;
        assert_eq!(near_end.expires(), 2_000);
        // The idle expiry is already past the absolute end: touching changes nothing.
        assert!(!near_end.due_for_touch(1_500));
    }

    #[test]
    fn policy() {
        let s = alice();
        let b = |v: &[&str]| v.iter().map(|s| Box::from(*s)).collect::<Vec<Box<str>>>();
        assert!(s.allowed(&[], &[]));
        assert!(s.allowed(&b(&["admin", "user"]), &[]));
        assert!(!s.allowed(&b(&["admin"]), &[]));
        assert!(!s.allowed(&[], &b(&["staff"])));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer a b"), None);
    }
}
