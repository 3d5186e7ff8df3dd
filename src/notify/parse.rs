//! Parsing what clients and upstreams send about notifications: publish bodies, acknowledgement bodies
//! (form or JSON), the query of a poll (`after`, `wait`) and `Last-Event-ID`. Untrusted input: every
//! function returns a typed error (a one-line reason for the 400) and never panics.

use super::queue::MAX_ID;
use std::time::Duration;

/// Largest publish body (the notification's `data` with its envelope).
pub const MAX_PUBLISH_BODY: usize = 256 * 1024;

/// Why a body or query was refused (the one-line reason of the 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    Json(String),
    #[error("name exactly one of \"user\" and \"session\"")]
    Target,
    #[error("\"data\" is missing")]
    NoData,
    #[error("\"session\" is not a session id (base64url of 16 bytes, as the identity token's sid)")]
    SessionId,
    #[error("\"user\" must be 1-255 bytes without control characters")]
    User,
    #[error("up_to is missing")]
    NoUpTo,
    #[error("{0} is not an id (a whole number from 0 to 2^53-1)")]
    Id(&'static str),
    #[error("wait is not a duration (e.g. 30s)")]
    Wait,
    #[error("bad form encoding")]
    Form,
    #[error("unsupported Content-Type (use application/json or application/x-www-form-urlencoded)")]
    ContentType,
}

/// Who a notification is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every live login session of this user (of `tenant`, default: the first pool's).
    User {
        tenant: Option<String>,
        user: String,
    },
    /// One login session, by id.
    Session([u8; 16]),
}

/// A parsed publish: who, and the data (JSON text, re-serialized compactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub target: Target,
    pub data: String,
}

/// `{"user": …, "data": …}` or `{"session": …, "data": …}` (and an optional `"tenant"` with a user).
pub fn publish_body(body: &[u8]) -> Result<Publish, ParseError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| ParseError::Json(one_line(&e)))?;
    let text = |k: &str| -> Result<Option<String>, ParseError> {
        match map.get(k) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ParseError::Json(format!("\"{k}\" must be a string"))),
        }
    };
    if let Some(k) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "user" | "tenant" | "session" | "data"))
    {
        return Err(ParseError::Json(format!(
            "unknown field \"{}\"",
            one_line_str(k)
        )));
    }
    // `data` may be any JSON, `null` included; compact, so the stored and delivered text has no line
    // breaks (an SSE `data:` line, a header).
    let data = map.get("data").ok_or(ParseError::NoData)?.to_string();
    let (user, tenant, session) = (text("user")?, text("tenant")?, text("session")?);
    let target = match (user, session) {
        (Some(user), None) => {
            if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
                return Err(ParseError::User);
            }
            Target::User { tenant, user }
        }
        (None, Some(s)) if tenant.is_none() => Target::Session(session_id(&s)?),
        _ => return Err(ParseError::Target),
    };
    Ok(Publish { target, data })
}

fn one_line_str(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A session id as the identity token's `sid` carries it: base64url without padding of 16 bytes.
pub fn session_id(s: &str) -> Result<[u8; 16], ParseError> {
    use base64::Engine;
    let mut out = [0u8; 16];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut out) {
        Ok(16) if s.len() == 22 => Ok(out),
        _ => Err(ParseError::SessionId),
    }
}

/// An id: a decimal number up to 2^53 − 1.
pub fn id(s: &[u8], what: &'static str) -> Result<u64, ParseError> {
    let s = std::str::from_utf8(s)
        .map_err(|_| ParseError::Id(what))?
        .trim();
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Id(what));
    }
    match s.parse::<u64>() {
        Ok(n) if n <= MAX_ID => Ok(n),
        _ => Err(ParseError::Id(what)),
    }
}

/// `up_to` of an acknowledgement: a form (`up_to=ID`) or JSON (`{"up_to": ID}`), by Content-Type; an
/// empty body falls back to the query's `up_to`.
pub fn ack_body(content_type: &str, body: &[u8], query: &[u8]) -> Result<u64, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return match query_param(query, "up_to")? {
            Some(v) => id(v.as_bytes(), "up_to"),
            None => Err(ParseError::NoUpTo),
        };
    }
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => {
            #[derive(serde::Deserialize)]
            struct Body {
                up_to: serde_json::Value,
            }
            let b: Body =
                serde_json::from_slice(body).map_err(|e| ParseError::Json(one_line(&e)))?;
            match b.up_to {
                serde_json::Value::Number(n) => n
                    .as_u64()
                    .filter(|n| *n <= MAX_ID)
                    .ok_or(ParseError::Id("up_to")),
                serde_json::Value::String(s) => id(s.as_bytes(), "up_to"),
                _ => Err(ParseError::Id("up_to")),
            }
        }
        "application/x-www-form-urlencoded" | "" => match query_param(body, "up_to")? {
            Some(v) => id(v.as_bytes(), "up_to"),
            None => Err(ParseError::NoUpTo),
        },
        _ => Err(ParseError::ContentType),
    }
}

/// The first value of `name` in a query string or form body, decoded (`+` is a space).
pub fn query_param(query: &[u8], name: &str) -> Result<Option<String>, ParseError> {
    for pair in query.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if k == name.as_bytes() {
            let v: Vec<u8> = v
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            let decoded = percent_encoding::percent_decode(&v)
                .decode_utf8()
                .map_err(|_| ParseError::Form)?;
            return Ok(Some(decoded.into_owned()));
        }
    }
    Ok(None)
}

/// A poll's query: `after` (default 0) and `wait` (default none; capped at `max_wait`). `wait` is a
/// duration (`30s`, `500ms`) or plain seconds (`30`).
pub fn poll_query(query: &[u8], max_wait: Duration) -> Result<(u64, Duration), ParseError> {
    let after = match query_param(query, "after")? {
        Some(v) => id(v.as_bytes(), "after")?,
        None => 0,
    };
    let wait = match query_param(query, "wait")? {
        None => Duration::ZERO,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs.min(86_400)),
            Err(_) => humantime::parse_duration(&v).map_err(|_| ParseError::Wait)?,
        },
    };
    Ok((after, wait.min(max_wait)))
}

/// A serde error on one line (its message may quote the input).
fn one_line(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies() {
        let p = publish_body(br#"{"user":"alice","data":{"subject":"hi"}}"#).unwrap();
        assert_eq!(
            p.target,
            Target::User {
                tenant: None,
                user: "alice".into()
            }
        );
        assert_eq!(p.data, r#"{"subject":"hi"}"#);
        let p =
            publish_body(b"{\"session\":\"AAAAAAAAAAAAAAAAAAAAAA\",\"data\":\n[1,\n2]}").unwrap();
        assert_eq!(p.target, Target::Session([0; 16]));
        assert_eq!(p.data, "[1,2]");
        assert_eq!(publish_body(br#"{"user":"a"}"#), Err(ParseError::NoData));
        assert_eq!(
            publish_body(br#"{"user":"a","session":"x","data":1}"#),
            Err(ParseError::Target)
        );
        assert_eq!(publish_body(br#"{"data":1}"#), Err(ParseError::Target));
        assert_eq!(
            publish_body(br#"{"session":"short","data":1}"#),
            Err(ParseError::SessionId)
        );
        assert!(matches!(publish_body(b"{"), Err(ParseError::Json(_))));
        assert!(matches!(
            publish_body(br#"{"user":"a","data":1,"x":2}"#),
            Err(ParseError::Json(_))
        ));
        assert_eq!(
            publish_body(br#"{"user":"","data":1}"#),
            Err(ParseError::User)
        );
    }

    #[test]
    fn ack_bodies_form_json_and_query() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(ack_body(form, b"up_to=42", b""), Ok(42));
        assert_eq!(
            ack_body("application/json", br#"{"up_to":42}"#, b""),
            Ok(42)
        );
        assert_eq!(
            ack_body("application/json", br#"{"up_to":"42"}"#, b""),
            Ok(42)
        );
        assert_eq!(ack_body("", b"", b"up_to=7"), Ok(7));
        assert_eq!(ack_body(form, b"x=1", b""), Err(ParseError::NoUpTo));
        assert_eq!(
            ack_body(form, b"up_to=-1", b""),
            Err(ParseError::Id("up_to"))
        );
        assert_eq!(
            ack_body(form, b"up_to=9007199254740992", b""),
            Err(ParseError::Id("up_to"))
        );
        assert_eq!(
            ack_body("text/plain", b"up_to=1", b""),
            Err(ParseError::ContentType)
        );
        assert_eq!(ack_body("", b"", b""), Err(ParseError::NoUpTo));
    }

    #[test]
    fn poll_queries() {
        let max = Duration::from_secs(60);
        assert_eq!(poll_query(b"", max), Ok((0, Duration::ZERO)));
        assert_eq!(
            poll_query(b"after=5&wait=30s", max),
            Ok((5, Duration::from_secs(30)))
        );
        assert_eq!(poll_query(b"wait=600", max), Ok((0, max)));
        assert_eq!(poll_query(b"after=x", max), Err(ParseError::Id("after")));
        assert_eq!(poll_query(b"wait=soon", max), Err(ParseError::Wait));
        assert_eq!(poll_query(b"after=%ff", max), Err(ParseError::Form));
    }

    #[test]
    fn no_input_panics() {
        // Every byte string of up to 3 bytes from an alphabet of the characters that matter.
        let alphabet = b"{}\"=&%+0a:, \xff";
        let mut inputs = vec![Vec::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for i in &inputs {
                for &c in alphabet {
                    let mut v: Vec<u8> = i.clone();
                    v.push(c);
                    next.push(v);
                }
            }
            inputs.extend(next);
        }
        for i in &inputs {
            let _ = publish_body(i);
            let _ = ack_body("application/json", i, i);
            let _ = ack_body("", i, i);
            let _ = poll_query(i, Duration::from_secs(1));
            let _ = id(i, "x");
        }
    }
}
