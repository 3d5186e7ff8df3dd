//! Single sign-on's requests read strictly (OAuth 2.0, RFC 6749; PKCE, RFC 7636; issue #22): the
//! parameters of `GET /.tether/authorize` and of the form bodies of the token, introspection, revocation
//! and logout endpoints, client authentication (`client_secret_basic`, `client_secret_post`), the
//! registered client applications, exact redirect-URI matching and the PKCE S256 check.
//!
//! Nothing here touches the network or the store: every function takes bytes and returns a value or a
//! typed error, never panics, and is what the `oauth_request` fuzz target drives
//! (`crate::fuzzing::oauth_request`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// Longest parameter value read (a `redirect_uri`, a `state`, a token): longer ones are refused.
pub const MAX_VALUE_LEN: usize = 4096;
/// Largest form body the OAuth endpoints read.
pub const MAX_BODY_LEN: usize = 16 * 1024;
/// Most parameters a request may carry (known or not).
pub const MAX_PARAMS: usize = 64;

/// The parameters tether reads, each at most once (RFC 6749 §3.1: "Request and response parameters
/// MUST NOT be included more than once"). A parameter sent empty counts as omitted (same section);
/// others are ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub prompt: Option<String>,
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub client_secret: Option<String>,
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
    pub id_token_hint: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
}

/// Why a request's parameters were refused (the `invalid_request` of RFC 6749); one line, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter {0} is given more than once")]
    Repeated(&'static str),
    #[error("a parameter is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("parameter {0} holds a control character")]
    ControlCharacter(&'static str),
    #[error("parameter {0} is longer than {MAX_VALUE_LEN} bytes")]
    TooLong(&'static str),
    #[error("more than {MAX_PARAMS} parameters")]
    TooMany,
    #[error("the body is larger than {MAX_BODY_LEN} bytes")]
    BodyTooLarge,
    #[error("the body must be application/x-www-form-urlencoded")]
    NotAForm,
}

impl Params {
    fn slot(&mut self, name: &[u8]) -> Option<(&'static str, &mut Option<String>)> {
        Some(match name {
            b"response_type" => ("response_type", &mut self.response_type),
            b"client_id" => ("client_id", &mut self.client_id),
            b"redirect_uri" => ("redirect_uri", &mut self.redirect_uri),
            b"scope" => ("scope", &mut self.scope),
            b"state" => ("state", &mut self.state),
            b"code_challenge" => ("code_challenge", &mut self.code_challenge),
            b"code_challenge_method" => ("code_challenge_method", &mut self.code_challenge_method),
            b"nonce" => ("nonce", &mut self.nonce),
            b"prompt" => ("prompt", &mut self.prompt),
            b"grant_type" => ("grant_type", &mut self.grant_type),
            b"code" => ("code", &mut self.code),
            b"code_verifier" => ("code_verifier", &mut self.code_verifier),
            b"refresh_token" => ("refresh_token", &mut self.refresh_token),
            b"client_secret" => ("client_secret", &mut self.client_secret),
            b"token" => ("token", &mut self.token),
            b"token_type_hint" => ("token_type_hint", &mut self.token_type_hint),
            b"id_token_hint" => ("id_token_hint", &mut self.id_token_hint),
            b"post_logout_redirect_uri" => (
                "post_logout_redirect_uri",
                &mut self.post_logout_redirect_uri,
            ),
            _ => return None,
        })
    }

    /// Reads `application/x-www-form-urlencoded` pairs (a query string or a form body).
    pub fn parse(encoded: &[u8]) -> Result<Params, ParamError> {
        let mut params = Params::default();
        let mut count = 0;
        for pair in encoded.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            count += 1;
            if count > MAX_PARAMS {
                return Err(ParamError::TooMany);
            }
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = form_decode(k).ok_or(ParamError::BadEncoding)?;
            let Some((label, slot)) = params.slot(name.as_bytes()) else {
                continue;
            };
            if v.len() > MAX_VALUE_LEN * 3 {
                return Err(ParamError::TooLong(label));
            }
            let value = form_decode(v).ok_or(ParamError::BadEncoding)?;
            if value.len() > MAX_VALUE_LEN {
                return Err(ParamError::TooLong(label));
            }
            if value.chars().any(char::is_control) {
                return Err(ParamError::ControlCharacter(label));
            }
            if slot.is_some() {
                return Err(ParamError::Repeated(label));
            }
            if !value.is_empty() {
                *slot = Some(value);
            } else {
                // Sent empty: omitted (RFC 6749 §3.1), but still once only.
                *slot = Some(String::new());
            }
        }
        params.drop_empty();
        Ok(params)
    }

    /// The query of a request target (after `?`); no query: no parameters.
    pub fn from_target(target: &[u8]) -> Result<Params, ParamError> {
        match target.iter().position(|&b| b == b'?') {
            Some(i) => Params::parse(&target[i + 1..]),
            None => Ok(Params::default()),
        }
    }

    /// A form body (the token, introspection, revocation and logout endpoints take no JSON: RFC 6749
    /// §4.1.3, RFC 7662 §2.1, RFC 7009 §2.1).
    pub fn from_form(content_type: &str, body: &[u8]) -> Result<Params, ParamError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(ParamError::NotAForm);
        }
        if body.len() > MAX_BODY_LEN {
            return Err(ParamError::BodyTooLarge);
        }
        Params::parse(body)
    }

    fn drop_empty(&mut self) {
        for slot in [
            &mut self.response_type,
            &mut self.client_id,
            &mut self.redirect_uri,
            &mut self.scope,
            &mut self.state,
            &mut self.code_challenge,
            &mut self.code_challenge_method,
            &mut self.nonce,
            &mut self.prompt,
            &mut self.grant_type,
            &mut self.code,
            &mut self.code_verifier,
            &mut self.refresh_token,
            &mut self.client_secret,
            &mut self.token,
            &mut self.token_type_hint,
            &mut self.id_token_hint,
            &mut self.post_logout_redirect_uri,
        ] {
            if slot.as_deref() == Some("") {
                *slot = None;
            }
        }
    }
}

/// An `application/x-www-form-urlencoded` value: `+` is a space, then percent-decoding; `None` when not
/// UTF-8 or an escape is malformed.
pub fn form_decode(v: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
            if !hex(v.get(i + 1)) || !hex(v.get(i + 2)) {
                return None;
            }
            i += 2;
        }
        i += 1;
    }
    let plus: Vec<u8> = v
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// A value for a query string or a form body (`application/x-www-form-urlencoded`, unreserved kept).
pub fn form_encode(v: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, SET).to_string()
}

/// How a client authenticated at the token, introspection or revocation endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub client_id: String,
    /// The secret it presented (none: a public client, or a confidential one that forgot it).
    pub secret: Option<String>,
    /// It came in `Authorization: Basic` (the 401 then carries a `Basic` challenge, RFC 6749 §5.2).
    pub basic: bool,
}

/// Why the client's credentials could not be read (`invalid_request`, or `invalid_client` for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    #[error("no client_id")]
    Missing,
    #[error("more than one client authentication method")]
    TwoMethods,
    #[error("malformed Basic credentials")]
    BadBasic,
    #[error("client_id in the body differs from the Basic credentials")]
    Mismatch,
}

/// The client's credentials: `Authorization: Basic base64(form-encoded id ":" form-encoded secret)`
/// (RFC 6749 §2.3.1), or `client_id` (and `client_secret`) in the body. Using both is refused (same
/// section: "MUST NOT use more than one authentication method"); a body `client_id` equal to the Basic
/// one is allowed.
pub fn client_auth(
    authorization: Option<&[u8]>,
    params: &Params,
) -> Result<ClientAuth, ClientAuthError> {
    let basic = authorization.and_then(|v| {
        let v = v.trim_ascii();
        let space = v.iter().position(|&b| b == b' ')?;
        v[..space]
            .eq_ignore_ascii_case(b"basic")
            .then(|| v[space..].trim_ascii())
    });
    match basic {
        Some(encoded) => {
            if params.client_secret.is_some() {
                return Err(ClientAuthError::TwoMethods);
            }
            let decoded = STANDARD
                .decode(encoded)
                .map_err(|_| ClientAuthError::BadBasic)?;
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or(ClientAuthError::BadBasic)?;
            let id = form_decode(&decoded[..colon]).ok_or(ClientAuthError::BadBasic)?;
            let secret = form_decode(&decoded[colon + 1..]).ok_or(ClientAuthError::BadBasic)?;
            if id.is_empty()
                || id.len() > MAX_VALUE_LEN
                || secret.len() > MAX_VALUE_LEN
                || id.chars().chain(secret.chars()).any(char::is_control)
            {
                return Err(ClientAuthError::BadBasic);
            }
            if params.client_id.as_deref().is_some_and(|c| c != id) {
                return Err(ClientAuthError::Mismatch);
            }
            Ok(ClientAuth {
                client_id: id,
                secret: (!secret.is_empty()).then_some(secret),
                basic: true,
            })
        }
        None => Ok(ClientAuth {
            client_id: params.client_id.clone().ok_or(ClientAuthError::Missing)?,
            secret: params.client_secret.clone(),
            basic: false,
        }),
    }
}

/// A registered client application (`[[pools.NAME.clients]]`), compiled.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    pub id: Box<str>,
    /// The argon2id PHC hash of its secret; none: a public client (PKCE required).
    pub secret_hash: Option<Box<str>>,
    pub redirect_uris: Vec<Box<str>>,
    pub post_logout_redirect_uris: Vec<Box<str>>,
    pub scopes: Vec<Box<str>>,
    /// Seconds.
    pub code_ttl: u32,
    pub access_ttl: u32,
    pub refresh_ttl: u32,
}

// By hand: a logged snapshot never shows the secret's hash.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("confidential", &self.secret_hash.is_some())
            .field("redirect_uris", &self.redirect_uris)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The audience its codes and tokens are sealed for: never a tenant's name (tether's own tokens),
    /// so an application's access token is no bearer token for tether's login routes.
    pub fn audience(id: &str) -> String {
        format!("client:{id}")
    }

    /// The redirect URI of an authorization request: the one given, if registered (exact match, RFC
    /// 6749 §3.1.2.3), or the only registered one when none is given. `None`: show an error page, never
    /// redirect.
    pub fn redirect_uri<'a>(&'a self, given: Option<&'a str>) -> Option<&'a str> {
        match given {
            Some(uri) => self
                .redirect_uris
                .iter()
                .any(|r| **r == *uri)
                .then_some(uri),
            None if self.redirect_uris.len() == 1 => Some(&self.redirect_uris[0]),
            None => None,
        }
    }

    /// The scopes granted for `requested` (space-separated; none: every scope the client may have):
    /// `Err` names a scope the client may not ask for (`invalid_scope`).
    pub fn grant_scope(&self, requested: Option<&str>) -> Result<String, String> {
        let Some(requested) = requested else {
            return Ok(self.scopes.join(" "));
        };
        let mut granted: Vec<&str> = Vec::new();
        for s in requested.split(' ').filter(|s| !s.is_empty()) {
            if !self.scopes.iter().any(|a| **a == *s) {
                return Err(s.to_string());
            }
            if !granted.contains(&s) {
                granted.push(s);
            }
        }
        Ok(granted.join(" "))
    }
}

/// Whether `scope` (space-separated) holds `name`.
pub fn has_scope(scope: &str, name: &str) -> bool {
    scope.split(' ').any(|s| s == name)
}

/// Whether every scope of `narrower` is in `wider` (a refresh may narrow, never widen: RFC 6749 §6).
pub fn scope_within(narrower: &str, wider: &str) -> bool {
    narrower
        .split(' ')
        .filter(|s| !s.is_empty())
        .all(|s| has_scope(wider, s))
}

/// A PKCE `code_challenge` or `code_verifier` as RFC 7636 §4.1 allows: 43 to 128 unreserved characters.
pub fn pkce_shaped(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The PKCE S256 check (RFC 7636 §4.6): `BASE64URL(SHA256(verifier)) == challenge`, compared in
/// constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !pkce_shaped(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    aws_lc_rs::constant_time::verify_slices_are_equal(computed.as_bytes(), challenge.as_bytes())
        .is_ok()
}

/// A URI a client may register (redirect or post-logout): absolute `https://` or `http://`, a host, no
/// fragment (RFC 6749 §3.1.2), no whitespace or control character. `Err` says what is wrong.
pub fn check_registered_uri(uri: &str) -> Result<(), &'static str> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or("must start with https:// or http://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("must name a host");
    }
    if uri.contains('#') {
        return Err("must not have a fragment");
    }
    if uri
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err("must not hold spaces, backslashes or control characters");
    }
    if uri.len() > 1024 {
        return Err("must be at most 1024 bytes");
    }
    Ok(())
}

/// A `client_id` or scope name as the config may write it: 1 to 128 of letters, digits, `-._~`.
pub fn check_client_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        return Err("may hold only letters, digits, '-', '.', '_' and '~'");
    }
    Ok(())
}

/// `uri` with `pairs` added to its query (`?` or `&`), each value form-encoded.
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = uri.to_string();
    let mut sep = if uri.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&form_encode(v));
        sep = '&';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(public: bool) -> Client {
        Client {
            id: "app".into(),
            secret_hash: (!public).then(|| "$argon2id$x".into()),
            redirect_uris: vec!["https://app.example/cb".into()],
            post_logout_redirect_uris: vec![],
            scopes: vec!["openid".into(), "profile".into()],
            code_ttl: 60,
            access_ttl: 300,
            refresh_ttl: 3600,
        }
    }

    #[test]
    fn params_are_read_once_each_and_empty_means_omitted() {
        let p = Params::parse(
            b"response_type=code&client_id=app&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=openid+profile&state=&x=1&x=2",
        )
        .unwrap();
        assert_eq!(p.response_type.as_deref(), Some("code"));
        assert_eq!(p.redirect_uri.as_deref(), Some("https://app.example/cb"));
        assert_eq!(p.scope.as_deref(), Some("openid profile"));
        assert_eq!(p.state, None);
        assert_eq!(
            Params::parse(b"code=a&code=b"),
            Err(ParamError::Repeated("code"))
        );
        assert_eq!(
            Params::parse(b"state=&state=x"),
            Err(ParamError::Repeated("state"))
        );
        assert_eq!(Params::parse(b"code=%zz"), Err(ParamError::BadEncoding));
        assert_eq!(Params::parse(b"code=%ff"), Err(ParamError::BadEncoding));
        assert_eq!(
            Params::parse(b"state=a%0Ab"),
            Err(ParamError::ControlCharacter("state"))
        );
        let long = format!("state={}", "a".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(
            Params::parse(long.as_bytes()),
            Err(ParamError::TooLong("state"))
        );
        let many = "a=1&".repeat(MAX_PARAMS + 1);
        assert_eq!(Params::parse(many.as_bytes()), Err(ParamError::TooMany));
        assert_eq!(
            Params::from_target(b"/.tether/authorize?client_id=app")
                .unwrap()
                .client_id
                .as_deref(),
            Some("app")
        );
        assert_eq!(
            Params::from_form("application/json", b"{}"),
            Err(ParamError::NotAForm)
        );
        assert!(
            Params::from_form(
                "application/x-www-form-urlencoded; charset=UTF-8",
                b"code=x"
            )
            .is_ok()
        );
    }

    #[test]
    fn client_authentication_methods() {
        let none = Params::default();
        let basic = format!("Basic {}", STANDARD.encode("app:s%3Acret"));
        let a = client_auth(Some(basic.as_bytes()), &none).unwrap();
        assert_eq!(a.client_id, "app");
        assert_eq!(a.secret.as_deref(), Some("s:cret"));
        assert!(a.basic);
        let post = Params {
            client_id: Some("app".into()),
            client_secret: Some("s".into()),
            ..Params::default()
        };
        let a = client_auth(None, &post).unwrap();
        assert_eq!(
            (a.client_id.as_str(), a.secret.as_deref()),
            ("app", Some("s"))
        );
        assert_eq!(
            client_auth(Some(basic.as_bytes()), &post),
            Err(ClientAuthError::TwoMethods)
        );
        assert_eq!(client_auth(None, &none), Err(ClientAuthError::Missing));
        assert_eq!(
            client_auth(Some(b"Basic !!!"), &none),
            Err(ClientAuthError::BadBasic)
        );
        let other = Params {
            client_id: Some("other".into()),
            ..Params::default()
        };
        assert_eq!(
            client_auth(Some(basic.as_bytes()), &other),
            Err(ClientAuthError::Mismatch)
        );
        // A bearer header is no client authentication: the body's client_id counts.
        let public = Params {
            client_id: Some("spa".into()),
            ..Params::default()
        };
        assert_eq!(
            client_auth(Some(b"Bearer x"), &public).unwrap().client_id,
            "spa"
        );
    }

    #[test]
    fn redirect_uris_match_exactly() {
        let c = client(false);
        assert_eq!(
            c.redirect_uri(Some("https://app.example/cb")),
            Some("https://app.example/cb")
        );
        for wrong in [
            "https://app.example/cb/",
            "https://app.example/cb?x=1",
            "https://APP.example/cb",
            "https://app.example/c",
            "https://evil.example/cb",
        ] {
            assert_eq!(c.redirect_uri(Some(wrong)), None, "{wrong}");
        }
        assert_eq!(c.redirect_uri(None), Some("https://app.example/cb"));
        let mut two = c.clone();
        two.redirect_uris.push("https://app.example/other".into());
        assert_eq!(two.redirect_uri(None), None);
    }

    #[test]
    fn scopes() {
        let c = client(true);
        assert_eq!(c.grant_scope(None).unwrap(), "openid profile");
        assert_eq!(c.grant_scope(Some("openid openid")).unwrap(), "openid");
        assert_eq!(c.grant_scope(Some("openid admin")), Err("admin".into()));
        assert!(scope_within("openid", "openid profile"));
        assert!(!scope_within("openid email", "openid profile"));
        assert!(has_scope("openid profile", "profile"));
        assert!(!has_scope("openid profile", "prof"));
    }

    #[test]
    fn pkce_s256_from_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_shaped(challenge) && pkce_shaped(verifier));
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
        assert!(!pkce_shaped(&"a".repeat(129)));
        assert!(!pkce_shaped(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn registered_uris_and_names() {
        assert!(check_registered_uri("https://app.example/cb").is_ok());
        assert!(check_registered_uri("http://127.0.0.1:5000/cb").is_ok());
        for bad in [
            "app.example/cb",
            "https://",
            "https:///cb",
            "https://app.example/cb#x",
            "https://app.example/c b",
            "javascript:alert(1)",
        ] {
            assert!(check_registered_uri(bad).is_err(), "{bad}");
        }
        assert!(check_client_name("mail-app.v2").is_ok());
        assert!(check_client_name("").is_err());
        assert!(check_client_name("a b").is_err());
        assert!(check_client_name("a:b").is_err());
    }

    #[test]
    fn query_building() {
        assert_eq!(
            with_query(
                "https://a.example/cb",
                &[("code", "v4.local.x+y"), ("state", "a b")]
            ),
            "https://a.example/cb?code=v4.local.x%2By&state=a%20b"
        );
        assert_eq!(
            with_query("https://a.example/cb?t=1", &[("error", "access_denied")]),
            "https://a.example/cb?t=1&error=access_denied"
        );
    }
}
