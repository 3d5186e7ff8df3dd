//! The pieces of tether's own login form (issue #14): parsing a login request body, checking `return_to`
//! (no open redirect), stateless CSRF tokens, the built-in login page and its template replacement, and
//! the one message every failed login gets.
//!
//! Nothing here does I/O on the request path or looks at users: the login endpoint parses the body with
//! [`parse_login_body`], checks the token with [`CsrfKey::verify`], hands the password to the checker, and
//! answers with [`LOGIN_FAILED`] (whatever went wrong with the credentials) or a redirect to
//! [`return_to_or`].
//!
//! Parsing rules (strict where a browser never sends otherwise, lenient where templates may differ):
//! - `application/x-www-form-urlencoded`: `&`-separated `name=value` pairs, `+` is a space, `%XX` an
//!   escape. A `%` not followed by two hex digits is refused, in any field; a decoded known field that is
//!   not UTF-8 is refused; a known field given twice is refused (which one would the user have meant?);
//!   unknown fields are ignored (an operator's template may name its submit button or add a checkbox), but
//!   there may be at most [`MAX_FIELDS`] pairs. Empty pairs (`a=1&&b=2`) are skipped, as browsers do.
//! - `application/json`: one object whose members are strings; `return_to` and `csrf` may also be `null`
//!   (absent). Unknown members are refused (a program wrote the body against a documented schema, and a
//!   misspelt `returnTo` silently ignored would send the user somewhere else), as are duplicates and
//!   values of another type.
//! - Both: the body is at most [`MAX_BODY_LEN`] bytes; `username` and `password` must be present and
//!   non-empty; each field has a length limit. Errors are one line and never contain a value from the
//!   body (the password may be in any of them, or typed into the user name field).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The answer to every failed login: unknown user, wrong password, disabled account alike, so the answer
/// does not tell which user names exist.
pub const LOGIN_FAILED: &str = "Wrong username or password.";

/// The answer when the CSRF token is missing, expired or does not match the cookie (the form was open too
/// long, or was not ours): the page is shown again with a fresh token.
pub const FORM_EXPIRED: &str = "The login form expired. Please try again.";

/// Largest login request body, in bytes. A login body is a few hundred bytes; this leaves room for long
/// `return_to` paths and is small enough to buffer without a second thought.
pub const MAX_BODY_LEN: usize = 8 * 1024;
/// Most `name=value` pairs in a form body (known and unknown together).
pub const MAX_FIELDS: usize = 16;
/// Longest user name, in bytes after decoding. Longer than any user a users file may hold
/// ([`super::users::MAX_NAME_LEN`]), so a too-long name fails like any wrong name rather than with a
/// message of its own.
pub const MAX_USERNAME_LEN: usize = 256;
/// Longest password, in bytes after decoding (argon2 takes any length; this bounds what a worker copies).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Longest `return_to`, in bytes as sent (before its own percent-decoding).
pub const MAX_RETURN_TO_LEN: usize = 2048;
/// Longest CSRF token accepted by the parser (ours are [`CSRF_TOKEN_LEN`] characters).
pub const MAX_CSRF_LEN: usize = 256;

/// A parsed login request. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    /// Where to go after logging in, unchecked: pass it through [`return_to_or`].
    pub return_to: Option<String>,
    /// The CSRF token from the form (see [`CsrfKey`]).
    pub csrf: Option<String>,
}

impl fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginForm")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("return_to", &self.return_to)
            .field("csrf", &self.csrf)
            .finish()
    }
}

/// Why a login body was refused (answered 400, or 413/415 for the first two). One line, naming at most a
/// field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("login body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(
        "unsupported Content-Type: expected application/x-www-form-urlencoded or application/json (UTF-8)"
    )]
    UnsupportedType,
    #[error("malformed percent-escape in {field}")]
    MalformedEscape { field: &'static str },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("{field} given more than once")]
    Duplicate { field: &'static str },
    #[error("{field} missing")]
    Missing { field: &'static str },
    #[error("{field} empty")]
    Empty { field: &'static str },
    #[error("{field} longer than {limit} bytes")]
    TooLong { field: &'static str, limit: usize },
    #[error("more than {limit} fields in the form")]
    TooManyFields { limit: usize },
    /// Malformed JSON or a member of the wrong type, unknown or duplicated. The text is serde_json's
    /// syntax message or one of ours, with the position; it never quotes the body (see [`parse_json`]).
    #[error("bad JSON login body: {0}")]
    Json(String),
}

/// The login body's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
}

/// The body kind a `Content-Type` value names: the media type compared case-insensitively, a `charset`
/// parameter allowed only if it is UTF-8, other parameters ignored.
pub fn body_kind(content_type: &str) -> Result<BodyKind, FormError> {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or("").trim();
    let kind = if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if media.eq_ignore_ascii_case("application/json") {
        BodyKind::Json
    } else {
        return Err(FormError::UnsupportedType);
    };
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim().trim_matches('"');
            if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("utf8") {
                return Err(FormError::UnsupportedType);
            }
        }
    }
    Ok(kind)
}

/// Parses a login body of the given `Content-Type` (see the module documentation for the rules).
pub fn parse_login_body(content_type: &str, body: &[u8]) -> Result<LoginForm, FormError> {
    match body_kind(content_type)? {
        BodyKind::Form => parse_form(body),
        BodyKind::Json => parse_json(body),
    }
}

/// The fields a login body may carry, with their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Username,
    Password,
    ReturnTo,
    Csrf,
}

impl Field {
    const ALL: [Field; 4] = [
        Field::Username,
        Field::Password,
        Field::ReturnTo,
        Field::Csrf,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Username => "username",
            Field::Password => "password",
            Field::ReturnTo => "return_to",
            Field::Csrf => "csrf",
        }
    }

    fn limit(self) -> usize {
        match self {
            Field::Username => MAX_USERNAME_LEN,
            Field::Password => MAX_PASSWORD_LEN,
            Field::ReturnTo => MAX_RETURN_TO_LEN,
            Field::Csrf => MAX_CSRF_LEN,
        }
    }

    fn from_name(name: &[u8]) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name().as_bytes() == name)
    }
}

/// Longest known field name (`return_to`), and the longest encoding of it (`%XX` per byte).
const LONGEST_NAME: usize = 9;

/// The four fields as parsed, before the required ones are checked.
#[derive(Default)]
struct Fields([Option<String>; 4]);

impl Fields {
    fn set(&mut self, field: Field, value: String) -> Result<(), FormError> {
        if value.len() > field.limit() {
            return Err(FormError::TooLong {
                field: field.name(),
                limit: field.limit(),
            });
        }
        let slot = &mut self.0[field as usize];
        if slot.is_some() {
            return Err(FormError::Duplicate {
                field: field.name(),
            });
        }
        *slot = Some(value);
        Ok(())
    }

    fn finish(self) -> Result<LoginForm, FormError> {
        let [username, password, return_to, csrf] = self.0;
        let required = |v: Option<String>, f: Field| match v {
            None => Err(FormError::Missing { field: f.name() }),
            Some(v) if v.is_empty() => Err(FormError::Empty { field: f.name() }),
            Some(v) => Ok(v),
        };
        Ok(LoginForm {
            username: required(username, Field::Username)?,
            password: required(password, Field::Password)?,
            return_to,
            csrf,
        })
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `application/x-www-form-urlencoded` bytes strictly (`+` is a space, `%` needs two hex
/// digits), calling `emit` with each decoded byte. `Err(())` on a malformed escape.
fn form_decode(raw: &[u8], mut emit: impl FnMut(u8)) -> Result<(), ()> {
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => emit(b' '),
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_value).ok_or(())?;
                let lo = raw.get(i + 2).copied().and_then(hex_value).ok_or(())?;
                emit(hi << 4 | lo);
                i += 2;
            }
            b => emit(b),
        }
        i += 1;
    }
    Ok(())
}

/// Parses an `application/x-www-form-urlencoded` login body. Allocates only the known fields' values
/// (names are decoded on the stack).
pub fn parse_form(body: &[u8]) -> Result<LoginForm, FormError> {
    if body.len() > MAX_BODY_LEN {
        return Err(FormError::TooLarge {
            limit: MAX_BODY_LEN,
        });
    }
    let mut fields = Fields::default();
    let mut pairs = 0;
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        pairs += 1;
        if pairs > MAX_FIELDS {
            return Err(FormError::TooManyFields { limit: MAX_FIELDS });
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        // A known name decodes to at most LONGEST_NAME bytes; anything longer is unknown, whatever it is.
        let mut buf = [0u8; LONGEST_NAME];
        let mut len = 0;
        form_decode(name, |b| {
            if len < LONGEST_NAME {
                buf[len] = b;
            }
            len += 1;
        })
        .map_err(|()| FormError::MalformedEscape {
            field: "a field name",
        })?;
        let field = if len <= LONGEST_NAME {
            Field::from_name(&buf[..len])
        } else {
            None
        };
        let Some(field) = field else {
            // Ignored, but still well-formed.
            form_decode(value, |_| {}).map_err(|()| FormError::MalformedEscape {
                field: "an unknown field",
            })?;
            continue;
        };
        // The decoded value is never longer than the raw one; refuse early what cannot fit.
        let mut decoded = Vec::with_capacity(value.len().min(field.limit() + 1));
        form_decode(value, |b| decoded.push(b)).map_err(|()| FormError::MalformedEscape {
            field: field.name(),
        })?;
        let text = String::from_utf8(decoded).map_err(|_| FormError::NotUtf8 {
            field: field.name(),
        })?;
        fields.set(field, text)?;
    }
    fields.finish()
}

/// Parses an `application/json` login body.
///
/// The deserializers are written by hand rather than derived so that no error can quote the body: a
/// derived one reports `invalid type: integer `12345`, expected a string`, and `12345` may be the
/// password. Every value goes through `deserialize_any` and our visitors, so the only data errors are our
/// fixed messages; serde_json's own syntax messages never include input.
pub fn parse_json(body: &[u8]) -> Result<LoginForm, FormError> {
    if body.len() > MAX_BODY_LEN {
        return Err(FormError::TooLarge {
            limit: MAX_BODY_LEN,
        });
    }
    let JsonLogin(fields) =
        serde_json::from_slice(body).map_err(|e| FormError::Json(e.to_string()))?;
    fields?.finish()
}

/// The top-level object. Field errors found while reading it (too long, duplicated) are carried out as a
/// [`FormError`] rather than a serde error, so they keep their own variant.
struct JsonLogin(Result<Fields, FormError>);

/// One member name.
struct JsonKey(Field);

/// A string member; `Option` for those that may be `null`.
struct JsonText<const NULLABLE: bool>(Option<String>);

mod json {
    use super::{Field, Fields, JsonKey, JsonLogin, JsonText};
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// Refuses every kind of value not handled by a visitor, without naming the value.
    macro_rules! refuse_others {
        ($msg:expr) => {
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(E::custom($msg))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(E::custom($msg))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(E::custom($msg))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(E::custom($msg))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom($msg))
            }
        };
    }

    impl<'de> Deserialize<'de> for JsonLogin {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(LoginVisitor)
        }
    }

    struct LoginVisitor;

    const NOT_OBJECT: &str = "expected an object with string members";

    impl<'de> Visitor<'de> for LoginVisitor {
        type Value = JsonLogin;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a login object")
        }

        refuse_others!(NOT_OBJECT);

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom(NOT_OBJECT))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom(NOT_OBJECT))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = Fields::default();
            // Seen members, `null` ones included (a `null` leaves no value behind to find twice).
            let mut seen = [false; 4];
            while let Some(JsonKey(field)) = map.next_key()? {
                let value = match field {
                    Field::Username | Field::Password => map.next_value::<JsonText<false>>()?.0,
                    Field::ReturnTo | Field::Csrf => map.next_value::<JsonText<true>>()?.0,
                };
                if std::mem::replace(&mut seen[field as usize], true) {
                    // The message names only our field.
                    return Err(de::Error::duplicate_field(field.name()));
                }
                if let Some(value) = value {
                    if let Err(e) = fields.set(field, value) {
                        // Still consume the rest so the caller sees this error, not a syntax one.
                        while map
                            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                            .is_some()
                        {}
                        return Ok(JsonLogin(Err(e)));
                    }
                }
            }
            Ok(JsonLogin(Ok(fields)))
        }
    }

    impl<'de> Deserialize<'de> for JsonKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(KeyVisitor)
        }
    }

    struct KeyVisitor;

    const UNKNOWN: &str = "unknown member (expected username, password, return_to or csrf)";

    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = JsonKey;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a member name")
        }

        refuse_others!(UNKNOWN);

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Field::from_name(v.as_bytes())
                .map(JsonKey)
                .ok_or_else(|| E::custom(UNKNOWN))
        }
    }

    impl<'de, const NULLABLE: bool> Deserialize<'de> for JsonText<NULLABLE> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TextVisitor::<NULLABLE>)
        }
    }

    struct TextVisitor<const NULLABLE: bool>;

    const NOT_STRING: &str = "members must be strings";

    impl<'de, const NULLABLE: bool> Visitor<'de> for TextVisitor<NULLABLE> {
        type Value = JsonText<NULLABLE>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        refuse_others!(NOT_STRING);

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(NOT_STRING))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(JsonText(Some(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(JsonText(Some(v)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            if NULLABLE {
                Ok(JsonText(None))
            } else {
                Err(E::custom(NOT_STRING))
            }
        }
    }
}

/// Why a `return_to` was not used (for the access log; the user is sent to the default path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReturnToError {
    #[error("empty or longer than {MAX_RETURN_TO_LEN} bytes")]
    Length,
    #[error("not a path starting with a single /")]
    NotLocalPath,
    #[error("control character, space, backslash or non-ASCII byte")]
    BadByte,
    #[error("malformed percent-escape")]
    MalformedEscape,
    #[error("decodes to // or a backslash in the path, or to a control character")]
    EncodedTrick,
    #[error("dot segment in the path")]
    DotSegment,
    #[error("points at tether's own /.tether/ endpoints")]
    OwnEndpoint,
    #[error("percent-encoded more than {DECODE_ROUNDS} times")]
    TooDeep,
}

/// How many rounds of percent-decoding [`check_return_to`] looks through (a value double-encoded by one
/// hop and decoded twice by others). A path still changing after that many rounds is refused.
pub const DECODE_ROUNDS: usize = 3;

/// Checks that `return_to` is a same-site path that stays one however often it is percent-decoded:
///
/// - 1 to [`MAX_RETURN_TO_LEN`] bytes of printable ASCII (no control character, space or tab, no
///   non-ASCII byte: a browser sends those percent-encoded), no backslash anywhere (browsers read `\` as
///   `/`, so `/\evil.com` is `//evil.com`);
/// - starts with `/` and not `//` (a scheme-relative URL: another host), which also rules out every
///   scheme (`https:`, `javascript:`);
/// - every `%` followed by two hex digits;
/// - decoded up to [`DECODE_ROUNDS`] times, the path (before `?` or `#`) never holds `//` or `\`, and the
///   whole never a control character: a backend or a later redirect that decodes `/%2F%2Fevil.com` must
///   not find `//evil.com`;
/// - no `.` or `..` path segment, raw or decoded (`/..//evil.com` normalises to `//evil.com`);
/// - not under `/.tether/` (raw or decoded, any case): after logging in, `return_to=/.tether/logout` would
///   log the user out again and `/.tether/login` would show the form again, so tether's own endpoints are
///   never a destination; the default path is used instead.
///
/// `//` anywhere in the path is refused, not only at the start: legitimate return paths do not have it, and
/// it is what every trick above turns into.
pub fn check_return_to(return_to: &str) -> Result<(), ReturnToError> {
    let raw = return_to.as_bytes();
    if raw.is_empty() || raw.len() > MAX_RETURN_TO_LEN {
        return Err(ReturnToError::Length);
    }
    if raw[0] != b'/' || raw.get(1) == Some(&b'/') {
        return Err(ReturnToError::NotLocalPath);
    }
    if raw
        .iter()
        .any(|&b| !(0x21..=0x7e).contains(&b) || b == b'\\')
    {
        return Err(ReturnToError::BadByte);
    }
    // Strict escapes on what we were given (later rounds may legitimately hold a literal `%`).
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            if raw.get(i + 1).and_then(|&b| hex_value(b)).is_none()
                || raw.get(i + 2).and_then(|&b| hex_value(b)).is_none()
            {
                return Err(ReturnToError::MalformedEscape);
            }
            i += 2;
        }
        i += 1;
    }
    check_decoded(raw)?;
    let mut current = raw.to_vec();
    for _ in 0..DECODE_ROUNDS {
        if !current.contains(&b'%') {
            return Ok(());
        }
        let next: Vec<u8> = percent_encoding::percent_decode(&current).collect();
        if next == current {
            return Ok(());
        }
        if next.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(ReturnToError::EncodedTrick);
        }
        check_decoded(&next)?;
        current = next;
    }
    if percent_encoding::percent_decode(&current).ne(current.iter().copied()) {
        return Err(ReturnToError::TooDeep);
    }
    Ok(())
}

/// The checks every decoding round of a `return_to` must pass (see [`check_return_to`]).
fn check_decoded(bytes: &[u8]) -> Result<(), ReturnToError> {
    let path_end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    let path = &bytes[..path_end];
    if path.first() != Some(&b'/') || path.windows(2).any(|w| w == b"//") || path.contains(&b'\\') {
        return Err(ReturnToError::EncodedTrick);
    }
    for segment in path[1..].split(|&b| b == b'/') {
        if segment == b"." || segment == b".." {
            return Err(ReturnToError::DotSegment);
        }
    }
    let own = b"/.tether";
    // The one endpoint of tether's that is a destination: single sign-on's authorization request, which
    // a login interrupted and which goes on once the user is logged in (issue #22).
    if path.len() >= own.len()
        && path[..own.len()].eq_ignore_ascii_case(own)
        && matches!(path.get(own.len()), None | Some(b'/'))
        && path != b"/.tether/authorize"
    {
        return Err(ReturnToError::OwnEndpoint);
    }
    Ok(())
}

/// `return_to` if [`check_return_to`] accepts it, else `default` (a path from the config, checked when
/// the config is loaded).
pub fn return_to_or<'a>(return_to: Option<&'a str>, default: &'a str) -> &'a str {
    match return_to {
        Some(r) if check_return_to(r).is_ok() => r,
        _ => default,
    }
}

/// The cookie holding the CSRF binding (see [`CsrfKey`]). The `__Host-` prefix makes browsers accept it
/// only with `Secure`, `Path=/` and no `Domain`, so a sibling subdomain cannot plant one.
pub const CSRF_COOKIE: &str = "__Host-tether_csrf";
/// The form field holding the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

const CSRF_VERSION: u8 = 1;
const CSRF_NONCE_LEN: usize = 16;
const CSRF_TAG_LEN: usize = 32;
/// version (1) | issued, seconds since the Unix epoch (8, big-endian) | nonce (16) | HMAC-SHA256 tag (32).
const CSRF_RAW_LEN: usize = 1 + 8 + CSRF_NONCE_LEN + CSRF_TAG_LEN;
/// Length of a token as sent (base64url without padding).
pub const CSRF_TOKEN_LEN: usize = (CSRF_RAW_LEN * 4).div_ceil(3);
/// How far in the future a token's issue time may be: another node of the cluster may have issued it
/// with a clock slightly ahead.
pub const CSRF_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Domain separation: a MAC made with the same secret for another purpose never verifies as a token.
const CSRF_CONTEXT: &[u8] = b"tether login csrf v1\0";

/// Why a CSRF token was refused. The login page is shown again with [`FORM_EXPIRED`], whichever it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("no CSRF cookie")]
    NoBinding,
    #[error("malformed CSRF token")]
    Malformed,
    #[error("CSRF token does not match (forged, another key, or another cookie)")]
    Forged,
    #[error("CSRF token expired")]
    Expired,
    #[error("CSRF token issued in the future")]
    FromFuture,
}

/// Issues and verifies stateless CSRF tokens for the login form: signed double-submit.
///
/// When tether serves the login page it makes sure the browser holds a [`CSRF_COOKIE`] with a random value
/// (the *binding*, from [`CsrfKey::new_binding`]; set `Secure; HttpOnly; SameSite=Strict; Path=/`), and
/// puts `issue(now, binding)` in the form's hidden [`CSRF_FIELD`]. The login POST must carry both, and
/// [`CsrfKey::verify`] recomputes the MAC over the cookie's binding. A cross-site attacker can make the
/// victim's browser POST (with the victim's cookie) but cannot read the page to learn the token; it cannot
/// plant its own cookie (the `__Host-` prefix, `SameSite`), and cannot make a token for a binding of its
/// choosing without the key. That is what stops login CSRF (logging the victim into the attacker's
/// account). Nothing is stored: any node holding the key verifies, so the key is per cluster (or per
/// process, from [`CsrfKey::random`], when tokens need not survive a restart or cross nodes). Changing the
/// key invalidates open forms, which the user sees as [`FORM_EXPIRED`].
///
/// The MAC covers a context string, the version, the issue time, a random nonce (two tokens for the same
/// cookie in the same second differ) and the binding. JSON logins come from scripts: a cross-site page
/// cannot send `application/json` without a CORS preflight, so the endpoint may accept them without a token.
/// On a plain-HTTP listener browsers refuse `__Host-` cookies; the endpoint then needs another name, and the
/// cookie can be planted by a network attacker, which plain HTTP cannot prevent anyway.
pub struct CsrfKey {
    mac: Hmac<Sha256>,
    rng: SystemRandom,
}

impl fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CsrfKey { .. }")
    }
}

impl CsrfKey {
    /// A key from a secret shared by the cluster (at least 32 random bytes should be used).
    pub fn new(secret: &[u8]) -> CsrfKey {
        CsrfKey {
            // HMAC takes a key of any length.
            mac: Hmac::new_from_slice(secret).expect("HMAC accepts any key length"),
            rng: SystemRandom::new(),
        }
    }

    /// A key of 32 random bytes, for this process only.
    pub fn random() -> CsrfKey {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .expect("system randomness");
        CsrfKey::new(&secret)
    }

    /// A fresh random binding for the [`CSRF_COOKIE`]: 128 bits, base64url (22 characters).
    pub fn new_binding(&self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).expect("system randomness");
        URL_SAFE_NO_PAD.encode(b)
    }

    fn tag(&self, version_time_nonce: &[u8], binding: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(CSRF_CONTEXT);
        mac.update(version_time_nonce);
        mac.update(binding.as_bytes());
        mac
    }

    /// A token bound to `binding`, issued at `now` (seconds since the Unix epoch), [`CSRF_TOKEN_LEN`]
    /// characters of base64url.
    pub fn issue(&self, now: u64, binding: &str) -> String {
        let mut raw = [0u8; CSRF_RAW_LEN];
        raw[0] = CSRF_VERSION;
        raw[1..9].copy_from_slice(&now.to_be_bytes());
        self.rng
            .fill(&mut raw[9..9 + CSRF_NONCE_LEN])
            .expect("system randomness");
        let (head, tag) = raw.split_at_mut(9 + CSRF_NONCE_LEN);
        tag.copy_from_slice(&self.tag(head, binding).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks `token` against the cookie's `binding`: made with this key for this binding (compared in
    /// constant time), issued at most `max_age` before `now` and not more than [`CSRF_CLOCK_SKEW`] after.
    pub fn verify(
        &self,
        token: &str,
        now: u64,
        binding: &str,
        max_age: Duration,
    ) -> Result<(), CsrfError> {
        if binding.is_empty() {
            return Err(CsrfError::NoBinding);
        }
        if token.len() != CSRF_TOKEN_LEN {
            return Err(CsrfError::Malformed);
        }
        let mut raw = [0u8; CSRF_RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(CSRF_RAW_LEN) => {}
            _ => return Err(CsrfError::Malformed),
        }
        if raw[0] != CSRF_VERSION {
            return Err(CsrfError::Malformed);
        }
        let (head, tag) = raw.split_at(9 + CSRF_NONCE_LEN);
        // The time is trusted only once the MAC is.
        self.tag(head, binding)
            .verify_slice(tag)
            .map_err(|_| CsrfError::Forged)?;
        let issued = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
        if issued > now.saturating_add(CSRF_CLOCK_SKEW.as_secs()) {
            return Err(CsrfError::FromFuture);
        }
        if now.saturating_sub(issued) > max_age.as_secs() {
            return Err(CsrfError::Expired);
        }
        Ok(())
    }
}

/// Appends `text` to `out` with `&`, `<`, `>`, `"` and `'` replaced by character references: safe in
/// element text and in quoted attribute values (single or double), not in unquoted attributes, `<script>`
/// or `<style>`.
pub fn escape_html_into(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// `text` HTML-escaped (see [`escape_html_into`]).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_html_into(&mut out, text);
    out
}

/// What a login page shows. Every value is escaped when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPage<'a> {
    /// The form's `action` (normally `/.tether/login`).
    pub action: &'a str,
    /// The CSRF token for the hidden field.
    pub csrf: &'a str,
    /// Where to go after logging in (already checked, or the default).
    pub return_to: &'a str,
    /// The message of a failed attempt ([`LOGIN_FAILED`], [`FORM_EXPIRED`]).
    pub error: Option<&'a str>,
    /// The user pool's name, shown under the heading.
    pub pool_name: &'a str,
}

/// The built-in login page: plain HTML with a little inline CSS, no script, no external asset (the page
/// must work before any backend is reachable, and loads nothing another origin could change).
pub fn render_login_page(page: &LoginPage<'_>) -> String {
    let mut out = String::with_capacity(2048);
    // Referrer policy `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null`
    // with the form's own POST, which the cross-site check rightly refuses (found by a real browser).
    // Cross-origin requests still carry no referrer, so the page's query never leaks.
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta name=\"referrer\" content=\"same-origin\">\n<title>Sign in</title>\n<style>\n",
        "body{font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2430;margin:0}\n",
        "main{max-width:22rem;margin:10vh auto;background:#fff;padding:2rem;border-radius:8px;",
        "box-shadow:0 1px 4px rgba(0,0,0,.15)}\n",
        "h1{font-size:1.4rem;margin:0 0 .25rem}.pool{color:#5b6472;margin:0 0 1.5rem}\n",
        "label{display:block;margin:.75rem 0 .25rem;font-weight:600}\n",
        "input{box-sizing:border-box;width:100%;padding:.5rem;font:inherit;border:1px solid #b8bec8;",
        "border-radius:4px}\n",
        "button{margin-top:1.25rem;width:100%;padding:.6rem;font:inherit;font-weight:600;border:0;",
        "border-radius:4px;background:#2456c9;color:#fff;cursor:pointer}\n",
        ".error{background:#fdecec;color:#8a1c1c;padding:.5rem .75rem;border-radius:4px}\n",
        "</style>\n</head>\n<body>\n<main>\n<h1>Sign in</h1>\n<p class=\"pool\">"
    ));
    escape_html_into(&mut out, page.pool_name);
    out.push_str("</p>\n");
    if let Some(error) = page.error {
        out.push_str("<p class=\"error\" role=\"alert\">");
        escape_html_into(&mut out, error);
        out.push_str("</p>\n");
    }
    out.push_str("<form method=\"post\" action=\"");
    escape_html_into(&mut out, page.action);
    out.push_str("\">\n<input type=\"hidden\" name=\"csrf\" value=\"");
    escape_html_into(&mut out, page.csrf);
    out.push_str("\">\n<input type=\"hidden\" name=\"return_to\" value=\"");
    escape_html_into(&mut out, page.return_to);
    out.push_str(concat!(
        "\">\n<label for=\"username\">Username</label>\n",
        "<input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" ",
        "autocapitalize=\"none\" spellcheck=\"false\" required autofocus>\n",
        "<label for=\"password\">Password</label>\n",
        "<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" ",
        "required>\n<button type=\"submit\">Sign in</button>\n</form>\n</main>\n</body>\n</html>\n"
    ));
    out
}

/// Largest login template file.
pub const MAX_TEMPLATE_LEN: usize = 256 * 1024;

/// A placeholder a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Action,
    Csrf,
    ReturnTo,
    Error,
    PoolName,
}

impl Slot {
    const ALL: [(Slot, &'static str); 5] = [
        (Slot::Action, "action"),
        (Slot::Csrf, "csrf"),
        (Slot::ReturnTo, "return_to"),
        (Slot::Error, "error"),
        (Slot::PoolName, "pool_name"),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Slot(Slot),
}

/// Why a login template was refused (when the config is loaded or reloaded; the running page stays).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: cannot read the login template: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: login template larger than {MAX_TEMPLATE_LEN} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: login template is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(
        "{}: login template has no {{{{csrf}}}} placeholder (the form must post the CSRF token)",
        path.display()
    )]
    NoCsrf { path: PathBuf },
    #[error(
        "{}:{line}: unknown placeholder (expected {{{{action}}}}, {{{{csrf}}}}, {{{{return_to}}}}, \
         {{{{error}}}} or {{{{pool_name}}}})",
        path.display()
    )]
    UnknownPlaceholder { path: PathBuf, line: usize },
}

/// An operator's login page: an HTML file with the placeholders `{{action}}`, `{{csrf}}` (required),
/// `{{return_to}}`, `{{error}}` (empty when there is none) and `{{pool_name}}`, each replaced by the
/// HTML-escaped value. Put them in element text or in quoted attribute values, as the built-in page does
/// (escaping does not make a value safe inside `<script>` or an unquoted attribute). `{{` is reserved: any
/// other `{{` in the file is refused with its line, so a misspelt placeholder is not shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginTemplate {
    pieces: Vec<Piece>,
}

impl LoginTemplate {
    /// Reads and checks a template file; errors name the file.
    pub fn load(path: &Path) -> Result<LoginTemplate, TemplateError> {
        let bytes = std::fs::read(path).map_err(|error| TemplateError::Read {
            path: path.to_owned(),
            error,
        })?;
        if bytes.len() > MAX_TEMPLATE_LEN {
            return Err(TemplateError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| TemplateError::NotUtf8 {
            path: path.to_owned(),
        })?;
        LoginTemplate::parse(&text, path)
    }

    /// Checks template text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<LoginTemplate, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut csrf = false;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                pieces.push(Piece::Text(rest[..i].to_owned()));
            }
            let after = &rest[i + 2..];
            let slot = Slot::ALL.iter().find_map(|&(slot, name)| {
                after
                    .strip_prefix(name)
                    .and_then(|a| a.strip_prefix("}}"))
                    .map(|a| (slot, a))
            });
            let Some((slot, tail)) = slot else {
                let line = 1 + text[..text.len() - rest.len() + i].matches('\n').count();
                return Err(TemplateError::UnknownPlaceholder {
                    path: path.to_owned(),
                    line,
                });
            };
            csrf |= slot == Slot::Csrf;
            pieces.push(Piece::Slot(slot));
            rest = tail;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if !csrf {
            return Err(TemplateError::NoCsrf {
                path: path.to_owned(),
            });
        }
        Ok(LoginTemplate { pieces })
    }

    /// The page with every placeholder replaced by its escaped value.
    pub fn render(&self, page: &LoginPage<'_>) -> String {
        let mut out = String::with_capacity(4096);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(slot) => {
                    let value = match slot {
                        Slot::Action => page.action,
                        Slot::Csrf => page.csrf,
                        Slot::ReturnTo => page.return_to,
                        Slot::Error => page.error.unwrap_or(""),
                        Slot::PoolName => page.pool_name,
                    };
                    escape_html_into(&mut out, value);
                }
            }
        }
        out
    }
}

/// Writes `form` as a form body (every byte but ASCII letters and digits escaped, as the fuzz target's
/// round trip needs a canonical encoding).
#[doc(hidden)]
pub fn encode_form(form: &LoginForm) -> String {
    let mut out = String::new();
    let mut pair = |name: &str, value: &str| {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    };
    pair("username", &form.username);
    pair("password", &form.password);
    if let Some(r) = &form.return_to {
        pair("return_to", r);
    }
    if let Some(c) = &form.csrf {
        pair("csrf", c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &str = "application/x-www-form-urlencoded";

    fn form(body: &str) -> Result<LoginForm, FormError> {
        parse_login_body(FORM, body.as_bytes())
    }

    fn json(body: &str) -> Result<LoginForm, FormError> {
        parse_login_body("application/json", body.as_bytes())
    }

    #[test]
    fn form_body_decodes_plus_and_escapes() {
        let f =
            form("username=alice&password=p%40ss+w%C3%B6rd%2B&return_to=%2Fapp%3Fx%3D1&csrf=tok")
                .unwrap();
        assert_eq!(f.username, "alice");
        assert_eq!(f.password, "p@ss wörd+");
        assert_eq!(f.return_to.as_deref(), Some("/app?x=1"));
        assert_eq!(f.csrf.as_deref(), Some("tok"));
        // Optional fields may be absent; names may be encoded; empty pairs are skipped.
        let f = form("&user%6Eame=bob&&password=x&").unwrap();
        assert_eq!(
            (f.username.as_str(), f.return_to, f.csrf),
            ("bob", None, None)
        );
    }

    #[test]
    fn form_body_refusals() {
        let e = |b: &str| form(b).unwrap_err();
        assert_eq!(
            e("username=a&password=%zz"),
            FormError::MalformedEscape { field: "password" }
        );
        assert_eq!(
            e("username=a&password=abc%4"),
            FormError::MalformedEscape { field: "password" }
        );
        assert_eq!(
            e("user%g=a&password=b"),
            FormError::MalformedEscape {
                field: "a field name"
            }
        );
        assert_eq!(
            e("username=a&password=b&x=%"),
            FormError::MalformedEscape {
                field: "an unknown field"
            }
        );
        assert_eq!(
            e("username=a&password=%FF"),
            FormError::NotUtf8 { field: "password" }
        );
        assert_eq!(
            e("username=a&username=b&password=c"),
            FormError::Duplicate { field: "username" }
        );
        assert_eq!(
            e("username=a&password=b&csrf=1&csrf=2"),
            FormError::Duplicate { field: "csrf" }
        );
        assert_eq!(e("username=a"), FormError::Missing { field: "password" });
        assert_eq!(e("password=a"), FormError::Missing { field: "username" });
        assert_eq!(
            e("username=&password=a"),
            FormError::Empty { field: "username" }
        );
        assert_eq!(
            e("username=a&password"),
            FormError::Empty { field: "password" }
        );
        let long = format!("username={}&password=b", "a".repeat(MAX_USERNAME_LEN + 1));
        assert_eq!(
            e(&long),
            FormError::TooLong {
                field: "username",
                limit: MAX_USERNAME_LEN
            }
        );
        let many = "x=1&".repeat(MAX_FIELDS) + "username=a&password=b";
        assert_eq!(e(&many), FormError::TooManyFields { limit: MAX_FIELDS });
        let big = format!("username=a&password={}", "a".repeat(MAX_BODY_LEN));
        assert_eq!(
            e(&big),
            FormError::TooLarge {
                limit: MAX_BODY_LEN
            }
        );
        // Unknown fields are ignored (a template's submit button), also long or repeated ones.
        let f =
            form("login=Sign+in&username=a&password=b&login=x&averyveryverylongname=1").unwrap();
        assert_eq!(f.username, "a");
    }

    #[test]
    fn errors_never_echo_the_password() {
        let secret = "hunter2-Secret";
        let bodies = [
            format!("username=a&password={secret}%"),
            format!("username=a&password={secret}&password={secret}"),
            format!("username={secret}%FF&password={secret}"),
            format!("{secret}=1&{secret}%=2"),
        ];
        for b in &bodies {
            let msg = form(b).unwrap_err().to_string();
            assert!(!msg.contains("hunter2") && !msg.contains('\n'), "{msg}");
        }
        let bodies = [
            r#"{"username":"a","password":1234567}"#.replace("1234567", "98765432"),
            r#"{"username":"a","password":["hunter2-Secret"]}"#.to_owned(),
            r#"{"username":"a","password":{"hunter2-Secret":1}}"#.to_owned(),
            r#"{"hunter2-Secret":"a"}"#.to_owned(),
            r#""hunter2-Secret""#.to_owned(),
            r#"98765432"#.to_owned(),
            r#"{"username":"a","password":true}"#.to_owned(),
            r#"{"username":"a","password":"hunter2-Secret" x}"#.to_owned(),
            r#"{"username":"a","password":"hunter2-Secret"} "hunter2-Secret""#.to_owned(),
        ];
        for b in &bodies {
            let msg = json(b).unwrap_err().to_string();
            assert!(
                !msg.contains("hunter2") && !msg.contains("98765432") && !msg.contains('\n'),
                "{b}: {msg}"
            );
        }
        let f = form(&format!("username=a&password={secret}")).unwrap();
        assert!(!format!("{f:?}").contains("hunter2"));
    }

    #[test]
    fn json_body() {
        let f = json(r#"{"username":"alice","password":"p\u00e4ss","return_to":"/a","csrf":"t"}"#)
            .unwrap();
        assert_eq!(
            f,
            LoginForm {
                username: "alice".into(),
                password: "päss".into(),
                return_to: Some("/a".into()),
                csrf: Some("t".into())
            }
        );
        let f = json(r#" {"password":"x","username":"b","return_to":null,"csrf":null} "#).unwrap();
        assert_eq!((f.return_to, f.csrf), (None, None));
        let e = |b: &str| json(b).unwrap_err();
        assert_eq!(
            e(r#"{"username":"a"}"#),
            FormError::Missing { field: "password" }
        );
        assert_eq!(
            e(r#"{"username":"","password":"b"}"#),
            FormError::Empty { field: "username" }
        );
        assert!(
            matches!(e(r#"{"username":null,"password":"b"}"#), FormError::Json(m) if m.contains("strings"))
        );
        assert!(
            matches!(e(r#"{"username":"a","password":"b","returnTo":"/"}"#), FormError::Json(m) if m.contains("unknown member"))
        );
        assert!(
            matches!(e(r#"{"username":"a","username":"a","password":"b"}"#), FormError::Json(m) if m.contains("duplicate field `username`"))
        );
        assert!(
            matches!(e(r#"{"username":"a","password":"b","csrf":null,"csrf":"x"}"#), FormError::Json(m) if m.contains("duplicate"))
        );
        assert!(matches!(
            e(r#"{"username":"a","password":"b"}x"#),
            FormError::Json(_)
        ));
        assert!(matches!(e(r#"[]"#), FormError::Json(m) if m.contains("object")));
        assert!(matches!(
            e(r#"{"username":"a","password":"\ud800"}"#),
            FormError::Json(_)
        ));
        let long = format!(
            r#"{{"username":"a","password":"b","csrf":"{}"}}"#,
            "a".repeat(MAX_CSRF_LEN + 1)
        );
        assert_eq!(
            e(&long),
            FormError::TooLong {
                field: "csrf",
                limit: MAX_CSRF_LEN
            }
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            body_kind("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            Ok(BodyKind::Form)
        );
        assert_eq!(
            body_kind("application/json;charset=\"utf-8\"; v=1"),
            Ok(BodyKind::Json)
        );
        assert_eq!(
            body_kind("application/json; charset=latin1"),
            Err(FormError::UnsupportedType)
        );
        assert_eq!(
            body_kind("multipart/form-data; boundary=x"),
            Err(FormError::UnsupportedType)
        );
        assert_eq!(body_kind(""), Err(FormError::UnsupportedType));
    }

    /// Whether a browser on https://site.example/here following `Location: {path}` stays on the site.
    fn stays_on_site(path: &str) -> bool {
        let base = url::Url::parse("https://site.example/here").unwrap();
        base.join(path).is_ok_and(|u| u.origin() == base.origin())
    }

    #[test]
    fn return_to_accepts_plain_paths() {
        for ok in [
            "/",
            "/app",
            "/app/page?x=1&next=https://other.example/#frag",
            "/a%20b/%C3%A9t%C3%A9",
            "/search?q=a%5Cb",
            "/tether/x",
            "/.tetherx",
            "/.well-known/x",
            "/a.b/..c/",
        ] {
            assert_eq!(check_return_to(ok), Ok(()), "{ok}");
            assert!(stays_on_site(ok), "{ok}");
            assert_eq!(return_to_or(Some(ok), "/home"), ok);
        }
    }

    #[test]
    fn return_to_refuses_classic_bypasses() {
        use ReturnToError::*;
        let cases: &[(&str, ReturnToError)] = &[
            ("", Length),
            ("//evil.com", NotLocalPath),
            ("///evil.com", NotLocalPath),
            ("/\\evil.com", BadByte),
            ("\\\\evil.com", NotLocalPath),
            ("https://evil.com", NotLocalPath),
            ("http:evil.com", NotLocalPath),
            ("javascript:alert(1)", NotLocalPath),
            ("JavaScript:alert(1)", NotLocalPath),
            ("data:text/html,x", NotLocalPath),
            ("evil.com", NotLocalPath),
            (" /app", NotLocalPath),
            ("/%2F%2Fevil.com", EncodedTrick),
            ("/%2f/evil.com", EncodedTrick),
            ("/%5Cevil.com", EncodedTrick),
            ("/%5cevil.com", EncodedTrick),
            ("/%252F%252Fevil.com", EncodedTrick),
            ("/%25252F%25252Fevil.com", EncodedTrick),
            ("/%2525252F%2525252Fevil.com", TooDeep),
            ("/\t/evil.com", BadByte),
            ("/\n/evil.com", BadByte),
            ("/\r\nSet-Cookie:x", BadByte),
            ("/a b", BadByte),
            ("/\u{0}", BadByte),
            ("/caf\u{e9}", BadByte),
            ("/%09/evil.com", EncodedTrick),
            ("/%0d%0aSet-Cookie:x", EncodedTrick),
            ("/%zz", MalformedEscape),
            ("/%2", MalformedEscape),
            ("/..//evil.com", EncodedTrick),
            ("/../evil.com", DotSegment),
            ("/./x", DotSegment),
            ("/a/..", DotSegment),
            ("/%2e%2e/x", DotSegment),
            ("/a//b", EncodedTrick),
            ("/.tether/login", OwnEndpoint),
            ("/.tether/logout?x", OwnEndpoint),
            ("/.TETHER/login", OwnEndpoint),
            ("/%2Etether/login", OwnEndpoint),
            ("/.tether", OwnEndpoint),
        ];
        for (path, why) in cases {
            assert_eq!(check_return_to(path), Err(*why), "{path:?}");
            assert_eq!(return_to_or(Some(path), "/home"), "/home", "{path:?}");
        }
        assert_eq!(
            check_return_to(&format!("/{}", "a".repeat(MAX_RETURN_TO_LEN))),
            Err(Length)
        );
        assert_eq!(return_to_or(None, "/home"), "/home");
        // What the checks guard: a browser would leave the site for these.
        for leaves in [
            "//evil.com",
            "/\\evil.com",
            "https://evil.com",
            "/\t/evil.com",
        ] {
            assert!(!stays_on_site(leaves), "{leaves:?}");
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn csrf_round_trip_and_refusals() {
        let key = CsrfKey::new(b"cluster secret, 32 bytes or more");
        let binding = key.new_binding();
        assert_eq!(binding.len(), 22);
        let now = 1_700_000_000;
        let token = key.issue(now, &binding);
        assert_eq!(token.len(), CSRF_TOKEN_LEN);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(
            token,
            key.issue(now, &binding),
            "the nonce makes each token unique"
        );
        assert_eq!(key.verify(&token, now, &binding, HOUR), Ok(()));
        assert_eq!(key.verify(&token, now + 3600, &binding, HOUR), Ok(()));
        assert_eq!(
            key.verify(&token, now + 3601, &binding, HOUR),
            Err(CsrfError::Expired)
        );
        assert_eq!(
            key.verify(&token, now - 60, &binding, HOUR),
            Ok(()),
            "clock skew"
        );
        assert_eq!(
            key.verify(&token, now - 61, &binding, HOUR),
            Err(CsrfError::FromFuture)
        );
        assert_eq!(
            key.verify(&token, now, "other-binding", HOUR),
            Err(CsrfError::Forged)
        );
        assert_eq!(key.verify(&token, now, "", HOUR), Err(CsrfError::NoBinding));
        let other = CsrfKey::new(b"another cluster's secret........");
        assert_eq!(
            other.verify(&token, now, &binding, HOUR),
            Err(CsrfError::Forged)
        );
        // Another node with the same secret verifies it.
        let same = CsrfKey::new(b"cluster secret, 32 bytes or more");
        assert_eq!(same.verify(&token, now + 1, &binding, MINUTE), Ok(()));
        // Every single-character change is refused, most as forged.
        for i in 0..token.len() {
            let mut t = token.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            assert!(key.verify(&t, now, &binding, HOUR).is_err(), "{i}");
        }
        for bad in [
            "",
            "x",
            &token[1..],
            &format!("{token}A"),
            &token.replace(|_| true, "="),
        ] {
            assert_eq!(
                key.verify(bad, now, &binding, HOUR),
                Err(CsrfError::Malformed),
                "{bad}"
            );
        }
        let random = CsrfKey::random();
        let t = random.issue(5, "b");
        assert_eq!(random.verify(&t, 5, "b", MINUTE), Ok(()));
        assert!(!format!("{random:?}").contains('['));
    }

    #[test]
    fn escaper() {
        assert_eq!(
            escape_html(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape_html("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape_html("&amp;"), "&amp;amp;");
        assert_eq!(escape_html(""), "");
    }

    fn page<'a>(error: Option<&'a str>, hostile: &'a str) -> LoginPage<'a> {
        LoginPage {
            action: hostile,
            csrf: hostile,
            return_to: hostile,
            error,
            pool_name: hostile,
        }
    }

    #[test]
    fn built_in_page() {
        let html = render_login_page(&LoginPage {
            action: "/.tether/login",
            csrf: "TOKEN",
            return_to: "/app?a=1&b=2",
            error: Some(LOGIN_FAILED),
            pool_name: "Staff",
        });
        for needle in [
            "<form method=\"post\" action=\"/.tether/login\">",
            "<input type=\"hidden\" name=\"csrf\" value=\"TOKEN\">",
            "<input type=\"hidden\" name=\"return_to\" value=\"/app?a=1&amp;b=2\">",
            "autocomplete=\"username\"",
            "autocomplete=\"current-password\"",
            "type=\"password\"",
            "role=\"alert\">Wrong username or password.</p>",
            ">Staff</p>",
        ] {
            assert!(html.contains(needle), "{needle}");
        }
        assert!(!html.contains("http") && !html.contains("<script") && !html.contains("src="));
        let plain = render_login_page(&page(None, "x"));
        assert!(!plain.contains("role=\"alert\""));
        // Hostile values add no markup: the page has as many `<`, `"` and `'` as with harmless ones.
        let hostile = "\"'><script>alert(1)</script>&";
        let bad = render_login_page(&page(Some(hostile), hostile));
        let good = render_login_page(&page(Some("x"), "x"));
        for c in ['<', '>', '"', '\''] {
            assert_eq!(bad.matches(c).count(), good.matches(c).count(), "{c}");
        }
        assert!(!bad.contains("<script"));
    }

    #[test]
    fn template() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("login.html");
        std::fs::write(
            &path,
            "<form action=\"{{action}}\" method=post><input name=csrf value='{{csrf}}'>\
             <input name=return_to value=\"{{return_to}}\"><p>{{error}}</p><h1>{{pool_name}}</h1></form>",
        )
        .unwrap();
        let t = LoginTemplate::load(&path).unwrap();
        let html = t.render(&LoginPage {
            action: "/.tether/login",
            csrf: "T'",
            return_to: "/a?b=1&c=\"2\"",
            error: None,
            pool_name: "<Pool>",
        });
        assert_eq!(
            html,
            "<form action=\"/.tether/login\" method=post><input name=csrf value='T&#39;'>\
             <input name=return_to value=\"/a?b=1&amp;c=&quot;2&quot;\"><p></p><h1>&lt;Pool&gt;</h1></form>"
        );
        let hostile = "\"'><script>&";
        let bad = t.render(&page(Some(hostile), hostile));
        let good = t.render(&page(Some("x"), "x"));
        for c in ['<', '>', '"', '\''] {
            assert_eq!(bad.matches(c).count(), good.matches(c).count(), "{c}");
        }

        std::fs::write(&path, "<form>{{action}}</form>").unwrap();
        let e = LoginTemplate::load(&path).unwrap_err();
        assert!(matches!(e, TemplateError::NoCsrf { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("login.html") && msg.contains("{{csrf}}"),
            "{msg}"
        );

        std::fs::write(&path, "{{csrf}}\n\n<p>{{eror}}</p>").unwrap();
        let msg = LoginTemplate::load(&path).unwrap_err().to_string();
        assert!(msg.contains("login.html:3: unknown placeholder"), "{msg}");

        let missing = dir.path().join("nope.html");
        let msg = LoginTemplate::load(&missing).unwrap_err().to_string();
        assert!(msg.starts_with(&missing.display().to_string()), "{msg}");
        std::fs::write(&path, b"{{csrf}}\xff").unwrap();
        assert!(matches!(
            LoginTemplate::load(&path),
            Err(TemplateError::NotUtf8 { .. })
        ));
        // Text around and between placeholders is kept verbatim, `{` alone included.
        let t = LoginTemplate::parse("a{b}{{csrf}}{{csrf}}}c", Path::new("t")).unwrap();
        assert_eq!(t.render(&page(None, "X")), "a{b}XX}c");
    }

    #[test]
    fn form_encoding_round_trips() {
        let f = LoginForm {
            username: "a b+c".into(),
            password: "p&=%ü".into(),
            return_to: Some("/x?y=1".into()),
            csrf: None,
        };
        assert_eq!(parse_form(encode_form(&f).as_bytes()), Ok(f));
    }

    #[test]
    fn generic_messages() {
        assert_eq!(LOGIN_FAILED, "Wrong username or password.");
        assert!(!FORM_EXPIRED.contains('\n'));
    }
}
