//! Sealed token bundles for API clients (issue #14): an access token (short-lived) and a refresh token,
//! each a PASETO `v4.local` token (XChaCha20 + BLAKE2b-MAC, by the `pasetors` crate; no crypto here).
//!
//! The encrypted payload is JSON: `{"v":1,"typ":"access"|"refresh"|"session","sub":USER,"tnt":TENANT,
//! "sid":SESSION,"iat":ISSUED,"exp":EXPIRES,"aud":AUDIENCE}` and, for a refresh token, `"gen":N` (its
//! generation, for reuse detection), with the session id (16 bytes) in base64url and the times
//! in seconds since the Unix epoch. The footer, authenticated but not encrypted, is
//! `{"kid":"k4.lid.…"}`: the key's PASERK local id (a hash of the key, safe to publish, the form PASETO
//! recommends for key ids), built with `pasetors::footer::Footer`.
//!
//! Opening reads the footer's `kid` first, untrusted, only to pick the key; the token is then verified
//! with that key and the footer that key seals with (compared in constant time by `pasetors`), so a footer
//! that was changed fails the seal. Errors say whose fault it is and never carry the token.
//!
//! A [`Keyring`] holds the keys, newest first. The newest key active when a token is issued seals it;
//! each key is refused after its retirement time, so a retired key's tokens die with it even when their
//! own expiry is later. Keys are meant to replicate like session ticket keys (`tls::tickets`): a key is a
//! record whose key is the key id and whose value is the secret and its times ([`TokenKey::to_record`],
//! [`TokenKey::from_record`]); `auth::keys` keeps the rings the balancer uses.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pasetors::Local;
use pasetors::footer::Footer;
use pasetors::keys::{Generate, SymmetricKey};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, V4};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The payload format's version (the `v` field).
pub const FORMAT_VERSION: u8 = 1;
/// Longest token `open` looks at; a real one is under 400 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest footer `open` parses (a real one is 60 bytes).
const MAX_FOOTER_LEN: usize = 128;
const SECRET_LEN: usize = 32;
/// A record value: the secret, then `created` and `retires` (big-endian).
pub const RECORD_VALUE_LEN: usize = SECRET_LEN + 8 + 8;

/// Which token of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Presented with each API request; short-lived.
    Access,
    /// Presented only to get a new access token.
    Refresh,
    /// The browser's sealed session cookie (same claims; never accepted as a bearer token).
    Session,
    /// An OAuth 2.0 authorization code (issue #22): short-lived, traded once for tokens at
    /// `POST /.tether/token`.
    Code,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub kind: TokenKind,
    pub user: String,
    pub tenant: String,
    /// The login session the token belongs to (revoking it revokes every token of the session).
    pub session: [u8; 16],
    /// Seconds since the Unix epoch.
    pub issued: u64,
    /// Seconds since the Unix epoch; the token is refused from this second on.
    pub expires: u64,
    /// Who the token is for (an API, an application behind tether).
    pub audience: String,
    /// For a refresh token, its generation: each refresh issues the next one, and presenting an older one
    /// again is a reuse (the session is revoked). 0 for the other kinds.
    pub generation: u32,
    /// For the tokens of a registered client application (OAuth 2.0 / OpenID Connect, issue #22): which
    /// application, what it was granted, and the token's own id for single-use records and revocations.
    pub grant: Option<Box<Grant>>,
}

/// What a client application's code or token carries beside the session (the `"oa"` member of the
/// payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The application's `client_id`.
    #[serde(rename = "cid")]
    pub client: String,
    /// The granted scopes, space-separated.
    #[serde(rename = "scp")]
    pub scope: String,
    /// The token's own id (16 random bytes, base64url): the key of its single-use record or revocation.
    #[serde(rename = "jti")]
    pub id: String,
    /// A code's `redirect_uri`, which the exchange must repeat.
    #[serde(rename = "uri", default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// A code's PKCE `code_challenge` (S256), which the exchange's verifier must hash to.
    #[serde(rename = "pkce", default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// The OpenID Connect `nonce` the authorization request carried, repeated in the ID token.
    #[serde(rename = "non", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the user logged in (seconds since the Unix epoch): the ID token's `auth_time`.
    #[serde(rename = "ath")]
    pub auth_time: u64,
}

/// The encrypted payload as written.
#[derive(Serialize)]
struct PayloadOut<'a> {
    v: u8,
    typ: TokenKind,
    sub: &'a str,
    tnt: &'a str,
    sid: String,
    iat: u64,
    exp: u64,
    aud: &'a str,
    #[serde(rename = "gen", skip_serializing_if = "is_zero")]
    generation: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    oa: Option<&'a Grant>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The encrypted payload as read back (only ever from a token whose seal verified).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadIn {
    v: u8,
    typ: TokenKind,
    sub: String,
    tnt: String,
    sid: String,
    iat: u64,
    exp: u64,
    aud: String,
    #[serde(rename = "gen", default)]
    generation: u32,
    #[serde(default)]
    oa: Option<Grant>,
}

/// The footer as read, untrusted, to pick the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FooterIn<'a> {
    #[serde(borrow)]
    kid: std::borrow::Cow<'a, str>,
}

/// Why a token was refused. Every variant but `UnknownKey` is the presenter's fault (a broken, forged,
/// stale or misdirected token); `UnknownKey` may also be ours (a key not yet replicated to this node, or
/// already pruned). The messages never include the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a `v4.local` token with our footer and a payload we can read; says what was wrong.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The footer names a key this node does not hold.
    #[error("token sealed with an unknown key")]
    UnknownKey,
    /// The key that sealed it has been retired.
    #[error("token sealed with a retired key")]
    RetiredKey,
    /// The seal does not verify with the key the footer names: forged, altered or truncated.
    #[error("token seal does not verify")]
    BadSeal,
    /// Authentic, but past its expiry.
    #[error("token expired")]
    Expired,
    /// An access token presented as a refresh token or the other way round.
    #[error("wrong kind of token")]
    WrongKind,
    /// Sealed for another audience.
    #[error("token for another audience")]
    WrongAudience,
}

/// Why a token could not be sealed or a key made: always ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No key in the ring is active at the token's issue time (the ring was never rotated, or only
    /// retired keys are left).
    #[error("no active token key")]
    NoActiveKey,
    /// The crate refused to encrypt, or the system gave no randomness.
    #[error("token encryption failed")]
    Crypto,
}

/// One token key, as held in the ring and as mirrored to a replica.
#[derive(Clone)]
pub struct TokenKey {
    /// PASERK local id, `k4.lid.` and 44 base64url characters.
    id: String,
    secret: SymmetricKey<V4>,
    /// The exact footer tokens sealed with this key carry.
    footer: String,
    /// Seconds since the Unix epoch when it was made.
    pub created: u64,
    /// Seconds since the Unix epoch from which its tokens are refused.
    pub retires: u64,
}

impl TokenKey {
    fn new(secret: SymmetricKey<V4>, created: u64, retires: u64) -> Result<TokenKey, SealError> {
        let paserk = Id::from(&secret);
        let mut id = String::new();
        paserk.fmt(&mut id).map_err(|_| SealError::Crypto)?;
        let mut footer = Footer::new();
        footer.key_id(&paserk);
        let footer = footer.to_string().map_err(|_| SealError::Crypto)?;
        Ok(TokenKey {
            id,
            secret,
            footer,
            created,
            retires,
        })
    }

    /// A fresh random key (from the system's CSPRNG, by `pasetors`), not installed in any ring.
    pub fn generate(created: u64, retires: u64) -> Result<TokenKey, SealError> {
        let secret = SymmetricKey::<V4>::generate().map_err(|_| SealError::Crypto)?;
        TokenKey::new(secret, created, retires)
    }

    /// A key with a known secret (32 bytes): a configured key, or a test's; `None` for another length.
    pub fn from_secret(secret: &[u8], created: u64, retires: u64) -> Option<TokenKey> {
        let secret = SymmetricKey::<V4>::from(secret).ok()?;
        TokenKey::new(secret, created, retires).ok()
    }

    /// The key id tokens carry in their footer (a PASERK `k4.lid`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The replicated record: its key (the key id) and its value (the secret, then `created` and
    /// `retires`, big-endian).
    pub fn to_record(&self) -> (Vec<u8>, [u8; RECORD_VALUE_LEN]) {
        let mut v = [0u8; RECORD_VALUE_LEN];
        v[..SECRET_LEN].copy_from_slice(self.secret.as_bytes());
        v[SECRET_LEN..SECRET_LEN + 8].copy_from_slice(&self.created.to_be_bytes());
        v[SECRET_LEN + 8..].copy_from_slice(&self.retires.to_be_bytes());
        (self.id.as_bytes().to_vec(), v)
    }

    /// A key from a record value alone (the secret, `created`, `retires`): the id is the secret's.
    pub fn from_value(value: &[u8]) -> Option<TokenKey> {
        let value: &[u8; RECORD_VALUE_LEN] = value.try_into().ok()?;
        let secret = SymmetricKey::<V4>::from(&value[..SECRET_LEN]).ok()?;
        let created = u64::from_be_bytes(value[SECRET_LEN..SECRET_LEN + 8].try_into().ok()?);
        let retires = u64::from_be_bytes(value[SECRET_LEN + 8..].try_into().ok()?);
        TokenKey::new(secret, created, retires).ok()
    }

    /// A key from a replicated record's key and value; `None` when the value has the wrong size or the
    /// id is not the one the secret hashes to.
    pub fn from_record(id: &[u8], value: &[u8]) -> Option<TokenKey> {
        let value: &[u8; RECORD_VALUE_LEN] = value.try_into().ok()?;
        let secret = SymmetricKey::<V4>::from(&value[..SECRET_LEN]).ok()?;
        let created = u64::from_be_bytes(value[SECRET_LEN..SECRET_LEN + 8].try_into().ok()?);
        let retires = u64::from_be_bytes(value[SECRET_LEN + 8..].try_into().ok()?);
        let key = TokenKey::new(secret, created, retires).ok()?;
        (key.id.as_bytes() == id).then_some(key)
    }
}

impl std::fmt::Debug for TokenKey {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("retires", &self.retires)
            .finish_non_exhaustive()
    }
}

/// The token keys in use, newest (latest `created`) first.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<TokenKey>,
    retire_after: Duration,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys)
            .field("retire_after", &self.retire_after)
            .finish()
    }
}

impl Keyring {
    /// An empty ring whose new keys retire `retire_after` after they are made. That period should cover
    /// the rotation interval plus the longest token lifetime, or tokens die with their key before their
    /// expiry.
    pub fn new(retire_after: Duration) -> Keyring {
        Keyring {
            keys: Vec::new(),
            retire_after,
        }
    }

    /// The keys, newest first (for replication).
    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }

    /// Makes a new key, created `now`, the sealing key; returns it (to be published to peers).
    pub fn rotate(&mut self, now: u64) -> Result<&TokenKey, SealError> {
        let retires = now.saturating_add(self.retire_after.as_secs());
        let key = TokenKey::generate(now, retires)?;
        Ok(super::keyring::install(&mut self.keys, key))
    }

    /// Adds a key (one a peer made), or replaces the one with its id; keeps the ring newest first.
    pub fn install(&mut self, key: TokenKey) {
        super::keyring::install(&mut self.keys, key);
    }

    /// Forgets the keys retired by `now` (their tokens are then refused as sealed by an unknown key).
    pub fn prune(&mut self, now: u64) {
        self.keys.retain(|k| now < k.retires);
    }

    /// Seals `claims` with the newest key active at `claims.issued`, its id in the footer.
    pub fn seal(&self, claims: &Claims) -> Result<String, SealError> {
        let key = self
            .keys
            .iter()
            .find(|k| claims.issued < k.retires)
            .ok_or(SealError::NoActiveKey)?;
        let payload = PayloadOut {
            v: FORMAT_VERSION,
            typ: claims.kind,
            sub: &claims.user,
            tnt: &claims.tenant,
            sid: URL_SAFE_NO_PAD.encode(claims.session),
            iat: claims.issued,
            exp: claims.expires,
            aud: &claims.audience,
            generation: claims.generation,
            oa: claims.grant.as_deref(),
        };
        let json = serde_json::to_vec(&payload).map_err(|_| SealError::Crypto)?;
        LocalToken::encrypt(&key.secret, &json, Some(key.footer.as_bytes()), None)
            .map_err(|_| SealError::Crypto)
    }

    /// Opens a token presented at `now` (seconds since the Unix epoch) as a `kind` token for `audience`.
    pub fn open(
        &self,
        token: &[u8],
        now: u64,
        kind: TokenKind,
        audience: &str,
    ) -> Result<Claims, TokenError> {
        self.open_for(token, now, kind, Some(audience))
    }

    /// Opens a `kind` token for whichever audience it was sealed for: the caller checks the audience
    /// itself (a bearer token at `/.tether/userinfo` names its client application only inside).
    pub fn open_any_audience(
        &self,
        token: &[u8],
        now: u64,
        kind: TokenKind,
    ) -> Result<Claims, TokenError> {
        self.open_for(token, now, kind, None)
    }

    fn open_for(
        &self,
        token: &[u8],
        now: u64,
        kind: TokenKind,
        audience: Option<&str>,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        if !token.starts_with(LocalToken::HEADER.as_bytes()) {
            return Err(TokenError::Malformed("not a v4.local token"));
        }
        let text = std::str::from_utf8(token).map_err(|_| TokenError::Malformed("not text"))?;
        let untrusted = UntrustedToken::<Local, V4>::try_from(text)
            .map_err(|_| TokenError::Malformed("bad encoding"))?;
        let footer = untrusted.untrusted_footer();
        if footer.is_empty() {
            return Err(TokenError::Malformed("no footer"));
        }
        if footer.len() > MAX_FOOTER_LEN {
            return Err(TokenError::Malformed("footer too long"));
        }
        let footer: FooterIn<'_> =
            serde_json::from_slice(footer).map_err(|_| TokenError::Malformed("bad footer"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == footer.kid)
            .ok_or(TokenError::UnknownKey)?;
        if now >= key.retires {
            return Err(TokenError::RetiredKey);
        }
        let trusted =
            LocalToken::decrypt(&key.secret, &untrusted, Some(key.footer.as_bytes()), None)
                .map_err(|_| TokenError::BadSeal)?;
        // Authentic from here on: only a token sealed by a key of ours reaches this point.
        let p: PayloadIn = serde_json::from_str(trusted.payload())
            .map_err(|_| TokenError::Malformed("unreadable payload"))?;
        if p.v != FORMAT_VERSION {
            return Err(TokenError::Malformed("unsupported version"));
        }
        let mut session = [0u8; 16];
        match URL_SAFE_NO_PAD.decode(p.sid.as_bytes()) {
            Ok(sid) if sid.len() == session.len() => session.copy_from_slice(&sid),
            _ => return Err(TokenError::Malformed("bad session id")),
        }
        if p.typ != kind {
            return Err(TokenError::WrongKind);
        }
        if audience.is_some_and(|a| a != p.aud) {
            return Err(TokenError::WrongAudience);
        }
        if now >= p.exp {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            kind: p.typ,
            user: p.sub,
            tenant: p.tnt,
            session,
            issued: p.iat,
            expires: p.exp,
            audience: p.aud,
            generation: p.generation,
            grant: p.oa.map(Box::new),
        })
    }
}

impl super::keyring::RingKey for TokenKey {
    fn id(&self) -> &str {
        &self.id
    }

    fn created(&self) -> u64 {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn claims(kind: TokenKind) -> Claims {
        Claims {
            kind,
            user: "alice".into(),
            tenant: "acme".into(),
            session: *b"0123456789abcdef",
            issued: T0,
            expires: T0 + 900,
            audience: "mail".into(),
            generation: 0,
            grant: None,
        }
    }

    fn ring() -> Keyring {
        let mut ring = Keyring::new(Duration::from_secs(7 * DAY));
        ring.rotate(T0).unwrap();
        ring
    }

    fn open(ring: &Keyring, token: &str, now: u64) -> Result<Claims, TokenError> {
        ring.open(token.as_bytes(), now, TokenKind::Access, "mail")
    }

    #[test]
    fn round_trip() {
        let ring = ring();
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            let c = claims(kind);
            let token = ring.seal(&c).unwrap();
            assert!(token.starts_with("v4.local."), "{token}");
            assert!(token.len() < 400, "{}", token.len());
            assert_eq!(ring.open(token.as_bytes(), T0 + 1, kind, "mail"), Ok(c));
        }
    }

    #[test]
    fn a_code_round_trips_with_its_grant_and_is_only_a_code() {
        let ring = ring();
        let mut c = claims(TokenKind::Code);
        c.grant = Some(Box::new(Grant {
            client: "app".into(),
            scope: "openid profile".into(),
            id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            redirect_uri: Some("https://app.example/cb".into()),
            challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            nonce: Some("n-0S6_WzA2Mj".into()),
            auth_time: T0 - 10,
        }));
        let token = ring.seal(&c).unwrap();
        assert_eq!(
            ring.open(token.as_bytes(), T0 + 1, TokenKind::Code, "mail"),
            Ok(c)
        );
        for kind in [TokenKind::Access, TokenKind::Refresh, TokenKind::Session] {
            assert_eq!(
                ring.open(token.as_bytes(), T0 + 1, kind, "mail"),
                Err(TokenError::WrongKind)
            );
        }
    }

    #[test]
    fn footer_names_the_key_and_is_readable() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        let footer = token.rsplit('.').next().unwrap();
        let footer = URL_SAFE_NO_PAD.decode(footer).unwrap();
        let expected = format!("{{\"kid\":\"{}\"}}", ring.keys()[0].id());
        assert_eq!(footer, expected.as_bytes());
        assert!(ring.keys()[0].id().starts_with("k4.lid."));
    }

    #[test]
    fn wrong_key_refused() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        // Another ring: its key has another id, so the token's kid is unknown to it.
        let other = self::ring();
        assert_eq!(open(&other, &token, T0 + 1), Err(TokenError::UnknownKey));
        // A ring holding another secret under the first key's id (forged record): the seal fails.
        let mut forged = Keyring::new(Duration::from_secs(DAY));
        let mut key = other.keys()[0].clone();
        key.id = ring.keys()[0].id.clone();
        key.footer = ring.keys()[0].footer.clone();
        forged.install(key);
        assert_eq!(open(&forged, &token, T0 + 1), Err(TokenError::BadSeal));
    }

    #[test]
    fn unknown_kid_refused() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        let (body, _) = token.rsplit_once('.').unwrap();
        let footer = URL_SAFE_NO_PAD
            .encode(br#"{"kid":"k4.lid.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#);
        assert_eq!(
            open(&ring, &format!("{body}.{footer}"), T0 + 1),
            Err(TokenError::UnknownKey)
        );
        // A footer that names our key but is written differently fails the seal, not the lookup.
        let footer = format!("{{ \"kid\": \"{}\" }}", ring.keys()[0].id());
        let footer = URL_SAFE_NO_PAD.encode(footer);
        assert_eq!(
            open(&ring, &format!("{body}.{footer}"), T0 + 1),
            Err(TokenError::BadSeal)
        );
    }

    #[test]
    fn retired_key_refused_after_retirement_then_unknown_after_prune() {
        let mut ring = Keyring::new(Duration::from_secs(DAY));
        ring.rotate(T0).unwrap();
        let mut c = claims(TokenKind::Refresh);
        c.expires = T0 + 30 * DAY;
        let old = ring.seal(&c).unwrap();
        // A newer key seals from now on; the old one still opens until it retires.
        ring.rotate(T0 + 3600).unwrap();
        assert_eq!(ring.keys().len(), 2);
        c.issued = T0 + 3600;
        let new = ring.seal(&c).unwrap();
        assert_ne!(old.rsplit('.').next(), new.rsplit('.').next());
        let at = |t: &str, now| ring.open(t.as_bytes(), now, TokenKind::Refresh, "mail");
        assert!(at(&old, T0 + DAY - 1).is_ok());
        assert_eq!(at(&old, T0 + DAY), Err(TokenError::RetiredKey));
        assert!(at(&new, T0 + DAY).is_ok());
        ring.prune(T0 + DAY);
        assert_eq!(ring.keys().len(), 1);
        let at = |t: &str, now| ring.open(t.as_bytes(), now, TokenKind::Refresh, "mail");
        assert_eq!(at(&old, T0 + DAY), Err(TokenError::UnknownKey));
        assert!(at(&new, T0 + DAY).is_ok());
    }

    #[test]
    fn seal_needs_an_active_key() {
        let empty = Keyring::new(Duration::from_secs(DAY));
        assert_eq!(
            empty.seal(&claims(TokenKind::Access)),
            Err(SealError::NoActiveKey)
        );
        let ring = Keyring::new(Duration::from_secs(DAY));
        let mut ring = ring;
        ring.rotate(T0).unwrap();
        let mut c = claims(TokenKind::Access);
        c.issued = T0 + DAY;
        assert_eq!(ring.seal(&c), Err(SealError::NoActiveKey));
    }

    #[test]
    fn tampered_token_refused() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        let (body, footer) = token.rsplit_once('.').unwrap();
        let start = "v4.local.".len();
        // Change one character at a time across the body (nonce, ciphertext, tag; not the last, whose low
        // bits may be base64 padding): each is refused.
        for i in (start..body.len() - 1).step_by(7) {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let err = ring
                .open(&bytes, T0 + 1, TokenKind::Access, "mail")
                .unwrap_err();
            assert!(
                matches!(err, TokenError::BadSeal | TokenError::Malformed(_)),
                "byte {i}: {err:?}"
            );
        }
        // A flipped bit (not a base64url character any more, or another one), and a changed footer.
        let mut bytes = token.clone().into_bytes();
        bytes[start + 10] ^= 0x01;
        assert!(
            ring.open(&bytes, T0 + 1, TokenKind::Access, "mail")
                .is_err()
        );
        let footer = URL_SAFE_NO_PAD.decode(footer).unwrap();
        let mut f = footer.clone();
        *f.last_mut().unwrap() = b' ';
        let t = format!("{body}.{}", URL_SAFE_NO_PAD.encode(&f));
        assert!(open(&ring, &t, T0 + 1).is_err());
        // The footer dropped entirely.
        assert_eq!(
            open(&ring, body, T0 + 1),
            Err(TokenError::Malformed("no footer"))
        );
    }

    #[test]
    fn expired_refused() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        assert!(open(&ring, &token, T0 + 899).is_ok());
        assert_eq!(open(&ring, &token, T0 + 900), Err(TokenError::Expired));
    }

    #[test]
    fn kind_must_match() {
        let ring = ring();
        let access = ring.seal(&claims(TokenKind::Access)).unwrap();
        let refresh = ring.seal(&claims(TokenKind::Refresh)).unwrap();
        assert_eq!(
            ring.open(access.as_bytes(), T0, TokenKind::Refresh, "mail"),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            ring.open(refresh.as_bytes(), T0, TokenKind::Access, "mail"),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn audience_must_match() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        assert_eq!(
            ring.open(token.as_bytes(), T0, TokenKind::Access, "billing"),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            ring.open(token.as_bytes(), T0, TokenKind::Access, ""),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn garbage_refused_without_panic() {
        let ring = ring();
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        let (body, _) = token.rsplit_once('.').unwrap();
        let huge = format!("v4.local.{}", "A".repeat(MAX_TOKEN_LEN));
        let mut non_utf8 = b"v4.local.".to_vec();
        non_utf8.extend_from_slice(&[0xff, 0xfe, b'.', 0xc3]);
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"v4.local.".to_vec(),
            b"v4.local..".to_vec(),
            b"v4.local...".to_vec(),
            b"v4.local.AAAA".to_vec(),
            b"v4.local.AAAA.AAAA".to_vec(),
            b"v4.public.AAAA.AAAA".to_vec(),
            b"v3.local.AAAA".to_vec(),
            b"Bearer v4.local.AAAA".to_vec(),
            huge.into_bytes(),
            non_utf8,
            body.as_bytes().to_vec(),
            format!("{body}.").into_bytes(),
            format!("{body}.!!").into_bytes(),
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(b"not json")).into_bytes(),
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(b"{\"kid\":1}")).into_bytes(),
            format!(
                "{body}.{}",
                URL_SAFE_NO_PAD.encode(b"{\"kid\":\"x\",\"y\":1}")
            )
            .into_bytes(),
            format!("{body}.{}", URL_SAFE_NO_PAD.encode([b'{'; 200])).into_bytes(),
            format!("{token}.x").into_bytes(),
            format!("{token}\0").into_bytes(),
        ];
        for case in &cases {
            let r = ring.open(case, T0 + 1, TokenKind::Access, "mail");
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(case));
        }
        assert_eq!(
            ring.open(b"", T0, TokenKind::Access, "mail"),
            Err(TokenError::Malformed("not a v4.local token"))
        );
    }

    #[test]
    fn record_round_trip() {
        let ring = ring();
        let key = &ring.keys()[0];
        let (id, value) = key.to_record();
        let back = TokenKey::from_record(&id, &value).unwrap();
        assert_eq!(back.id(), key.id());
        assert_eq!((back.created, back.retires), (key.created, key.retires));
        assert_eq!(back.footer, key.footer);
        // A replica holding only the record opens the primary's tokens.
        let mut replica = Keyring::new(Duration::from_secs(DAY));
        replica.install(back);
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        assert_eq!(
            open(&replica, &token, T0 + 1),
            Ok(claims(TokenKind::Access))
        );
        // Wrong sizes, and an id that is not the secret's, are refused.
        assert!(TokenKey::from_record(&id, &value[1..]).is_none());
        assert!(TokenKey::from_record(&id[1..], &value).is_none());
        let mut other = value;
        other[0] ^= 1;
        assert!(TokenKey::from_record(&id, &other).is_none());
    }

    #[test]
    fn install_keeps_newest_first_and_replaces_by_id() {
        let mut ring = Keyring::new(Duration::from_secs(DAY));
        let a = TokenKey::generate(T0, T0 + DAY).unwrap();
        let b = TokenKey::generate(T0 + 10, T0 + DAY).unwrap();
        ring.install(b.clone());
        ring.install(a.clone());
        ring.install(b.clone());
        let ids: Vec<&str> = ring.keys().iter().map(TokenKey::id).collect();
        assert_eq!(ids, [b.id(), a.id()]);
    }

    #[test]
    fn debug_and_errors_show_no_secret() {
        let ring = ring();
        let key = &ring.keys()[0];
        let secret_hex: String = key
            .secret
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let debug = format!("{ring:?}");
        assert!(debug.contains(key.id()));
        assert!(!debug.contains(&secret_hex));
        assert!(!debug.contains(&format!("{:?}", key.secret.as_bytes())));
        let token = ring.seal(&claims(TokenKind::Access)).unwrap();
        for now in [T0, T0 + 10_000] {
            for kind in [TokenKind::Access, TokenKind::Refresh] {
                if let Err(e) = ring.open(token.as_bytes(), now, kind, "x") {
                    let msg = e.to_string();
                    assert!(!msg.contains(&token[9..30]) && !msg.contains('\n'), "{msg}");
                }
            }
        }
    }
}
