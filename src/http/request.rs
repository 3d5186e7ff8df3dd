//! Request heads: strict parsing with httparse, validation against smuggling, and body framing.

use super::HttpError;
use super::head::{
    ConnectionOptions, HeadLimits, Header, HeaderKind, MAX_HEADERS_CAP, Method, Span, Version,
    collect_headers, find_header, has_bare_lf, has_obs_fold, mark_connection_named, span_in,
};
use std::mem::MaybeUninit;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head: offsets into the buffer it came from. Reused across requests on a connection
/// (`headers` keeps its capacity), so parsing allocates nothing in steady state.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    /// The request target as it will be forwarded: origin-form (`/path?query`) or `*`. For an absolute-form
    /// target (`http://host/path?q`) this is the `/path?q` part; see `target_empty_path`.
    pub target: Span,
    /// Absolute-form target with an empty path (`http://host` or `http://host?q`): forward as `/` + `target`.
    pub target_empty_path: bool,
    /// The path alone (no query), for routing. Empty when `target_empty_path`.
    pub path: Span,
    pub version: Version,
    /// The host to route on: the absolute-form authority if present, else the `Host` header value.
    /// `None` only for an HTTP/1.0 request without `Host`.
    pub authority: Option<Span>,
    pub headers: Vec<Header>,
    /// Bytes of the head, including leading empty lines and the final empty line.
    pub head_len: usize,
    pub framing: BodyFraming,
    pub connection: ConnectionOptions,
    /// `Expect: 100-continue` present (HTTP/1.1 only: RFC 9110 §10.1.1 says to ignore it in 1.0).
    pub expect_continue: bool,
    /// A protocol upgrade was asked (`Connection: upgrade` plus an `Upgrade` header, HTTP/1.1, no body).
    pub upgrade: bool,
}

impl RequestHead {
    /// An empty head whose header list can hold `max_headers` without growing.
    pub fn with_capacity(max_headers: usize) -> Self {
        RequestHead {
            method: Method::Other,
            method_span: Span::default(),
            target: Span::default(),
            target_empty_path: false,
            path: Span::default(),
            version: Version::Http11,
            authority: None,
            headers: Vec::with_capacity(max_headers),
            head_len: 0,
            framing: BodyFraming::None,
            connection: ConnectionOptions::default(),
            expect_continue: false,
            upgrade: false,
        }
    }

    /// Whether the client connection may stay open after this request (before any server decision).
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.connection.close,
            Version::Http10 => self.connection.keep_alive && !self.connection.close,
        }
    }

    /// The first header with this name (ASCII case-insensitive), as its value bytes.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    /// Back to the empty state, keeping the header list's capacity.
    fn clear(&mut self) {
        let mut headers = std::mem::take(&mut self.headers);
        headers.clear();
        *self = RequestHead {
            headers,
            ..RequestHead::with_capacity(0)
        };
    }
}

const fn bad(reason: &'static str) -> HttpError {
    HttpError::bad_request(reason)
}

/// Whether a byte may appear in a request target. httparse already refuses controls, SP and DEL; tether
/// also refuses `#` (a fragment is never sent, RFC 9112 §3.2) and non-ASCII bytes (raw UTF-8 is not a URI;
/// HAProxy refuses it too unless told otherwise).
fn is_target_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && b != b'#'
}

/// A valid `uri-host [ ":" port ]`: a reg-name (unreserved, sub-delims, `%`) or an IP-literal in brackets,
/// then an optional port of at most 5 digits. The empty string is valid (an empty `Host`).
pub(crate) fn is_valid_authority(v: &[u8]) -> bool {
    let (host, rest) = if v.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', v) else {
            return false;
        };
        let inner = v.get(1..close).unwrap_or(&[]);
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (
            v.get(..=close).unwrap_or(&[]),
            v.get(close + 1..).unwrap_or(&[]),
        )
    } else {
        match memchr::memchr(b':', v) {
            Some(i) => (v.get(..i).unwrap_or(&[]), v.get(i..).unwrap_or(&[])),
            None => (v, &[][..]),
        }
    };
    let reg_name_ok = host.first() == Some(&b'[')
        || host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b'%'
                )
        });
    let port_ok = match rest {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    // A port without a host (":80") routes nowhere.
    reg_name_ok && port_ok && (rest.is_empty() || !host.is_empty())
}

/// What the request target turned out to be.
struct Target {
    /// Forwarded part (origin-form / `*` / path+query of absolute-form).
    target: Span,
    path: Span,
    empty_path: bool,
    /// Authority of an absolute-form target.
    authority: Option<Span>,
}

/// Classifies and validates the request target at `t` (which starts at offset `base` in the buffer).
fn parse_target(t: &[u8], base: usize, method: Method) -> Result<Target, HttpError> {
    if !t.iter().all(|&b| is_target_byte(b)) {
        return Err(bad("invalid request target"));
    }
    let whole = Span::new(base, base + t.len());
    let path_of = |from: usize, part: &[u8]| {
        let end = memchr::memchr(b'?', part).unwrap_or(part.len());
        Span::new(base + from, base + from + end)
    };
    match t.first() {
        Some(b'/') => {
            return Ok(Target {
                target: whole,
                path: path_of(0, t),
                empty_path: false,
                authority: None,
            });
        }
        Some(b'*') if t.len() == 1 => {
            if method != Method::Options {
                return Err(bad("invalid request target"));
            }
            return Ok(Target {
                target: whole,
                path: whole,
                empty_path: false,
                authority: None,
            });
        }
        _ => {}
    }
    let has_prefix = |p: &[u8]| t.get(..p.len()).is_some_and(|x| x.eq_ignore_ascii_case(p));
    let scheme_len = if has_prefix(b"http://") {
        7
    } else if has_prefix(b"https://") {
        8
    } else {
        // Another scheme (`ftp://...`) or authority-form / garbage.
        let scheme_end = t
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')));
        if let Some(i) = scheme_end {
            if t.first().is_some_and(u8::is_ascii_alphabetic) && t.get(i..i + 3) == Some(b"://") {
                return Err(bad("unsupported target scheme"));
            }
        }
        return Err(bad("invalid request target"));
    };
    let after = t.get(scheme_len..).unwrap_or_default();
    let auth_len = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let auth = after.get(..auth_len).unwrap_or_default();
    if auth.is_empty() || auth.contains(&b'@') || !is_valid_authority(auth) {
        return Err(bad("invalid request target"));
    }
    let rest_start = scheme_len + auth_len;
    let rest = t.get(rest_start..).unwrap_or_default();
    let authority = Some(Span::new(base + scheme_len, base + rest_start));
    let target = Span::new(base + rest_start, base + t.len());
    if rest.first() == Some(&b'/') {
        Ok(Target {
            target,
            path: path_of(rest_start, rest),
            empty_path: false,
            authority,
        })
    } else {
        let at = base + rest_start;
        Ok(Target {
            target,
            path: Span::new(at, at),
            empty_path: true,
            authority,
        })
    }
}

fn map_httparse_error(e: httparse::Error, method_parsed: bool, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::too_large("too many headers"),
        httparse::Error::HeaderName if has_obs_fold(buf) => bad("obs-fold in header"),
        httparse::Error::HeaderName => bad("invalid header name"),
        httparse::Error::HeaderValue => bad("invalid header value"),
        httparse::Error::Version => bad("invalid http version"),
        // httparse reports a bad target as a token error too; it has recorded the method by then.
        httparse::Error::Token if method_parsed => bad("invalid request target"),
        httparse::Error::Token => bad("invalid method"),
        httparse::Error::NewLine => bad("invalid line ending"),
        httparse::Error::Status => bad("invalid request line"),
    }
}

/// Parses and validates the complete request head `buf[..head_len]` (as found by `HeadScanner`) into
/// `head`. `buf` may hold more bytes (the body, a pipelined request) after the head; they are not looked
/// at. Every refusal carries the status to answer (400, 417, 431, 501); after one, `head` holds no
/// meaningful request.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<(), HttpError> {
    head.clear();
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let max = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw[..max]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(if has_bare_lf(buf) {
                bad("bare LF in head")
            } else {
                bad("incomplete request head")
            });
        }
        Err(e) => return Err(map_httparse_error(e, req.method.is_some(), buf)),
    };
    let head_bytes = buf.get(..len).unwrap_or(buf);
    // httparse accepts bare LF line endings; the scanner refuses them, and so does this, on its own.
    if has_bare_lf(head_bytes) {
        return Err(bad("bare LF in head"));
    }
    head.head_len = len;
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("invalid request line"));
    };
    head.method = Method::from_token(method.as_bytes());
    head.method_span = span_in(buf, method.as_bytes());
    head.version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    if head.method == Method::Connect {
        return Err(HttpError::not_implemented("connect not supported"));
    }
    let t = parse_target(
        target.as_bytes(),
        span_in(buf, target.as_bytes()).start as usize,
        head.method,
    )?;
    head.target = t.target;
    head.path = t.path;
    head.target_empty_path = t.empty_path;

    let facts = collect_headers(buf, req.headers, &mut head.headers);

    // Host.
    if facts.host_count > 1 {
        return Err(bad("multiple host headers"));
    }
    if let Some(host) = facts.host {
        if !is_valid_authority(host.of(buf)) {
            return Err(bad("invalid host header"));
        }
        if let Some(auth) = t.authority {
            if !auth.of(buf).eq_ignore_ascii_case(host.of(buf)) {
                return Err(bad("host header does not match target"));
            }
        }
    } else if head.version == Version::Http11 {
        return Err(bad("missing host header"));
    }
    head.authority = t.authority.or(facts.host);

    // Framing.
    if facts.framing_alias {
        return Err(bad("framing header name with underscore"));
    }
    if let Some(e) = facts.content_length_error {
        return Err(bad(e));
    }
    if facts.te.present {
        if head.version == Version::Http10 {
            return Err(bad("transfer-encoding in http/1.0"));
        }
        if facts.content_length.is_some() {
            return Err(bad("both content-length and transfer-encoding"));
        }
        let te = facts.te;
        if te.malformed || te.chunked_count > 1 || !te.last_is_chunked {
            return Err(bad("invalid transfer-encoding"));
        }
        if te.count > 1 {
            return Err(HttpError::not_implemented("unsupported transfer-encoding"));
        }
        head.framing = BodyFraming::Chunked;
    } else if let Some(n) = facts.content_length {
        head.framing = BodyFraming::Length(n);
    }

    // Expectations.
    if facts.expect_other {
        return Err(HttpError {
            status: 417,
            reason: "unsupported expectation",
        });
    }
    head.expect_continue = facts.expect_continue && head.version == Version::Http11;

    // Connection management.
    head.connection = facts.connection;
    if facts.connection_names_headers {
        mark_connection_named(buf, &mut head.headers);
    }
    let no_body = matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
    head.upgrade = facts.connection.upgrade
        && facts.upgrade_present
        && head.version == Version::Http11
        && no_body;
    debug_assert!(
        head.headers
            .iter()
            .all(|h| h.kind != HeaderKind::Host || !h.hop_by_hop)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeadScanner;

    fn parse(buf: &[u8]) -> Result<RequestHead, HttpError> {
        let mut head = RequestHead::with_capacity(16);
        parse_request(buf, &HeadLimits::default(), &mut head).map(|()| head)
    }

    fn err(buf: &[u8]) -> HttpError {
        match parse(buf) {
            Ok(h) => panic!("accepted {:?}: {h:?}", String::from_utf8_lossy(buf)),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_err(buf: &[u8], status: u16, reason: &str) {
        let e = err(buf);
        assert_eq!(
            (e.status, e.reason),
            (status, reason),
            "for {:?}",
            String::from_utf8_lossy(buf)
        );
    }

    fn s(buf: &[u8], span: Span) -> &str {
        std::str::from_utf8(span.of(buf)).unwrap()
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\nNEXT";
        let h = parse(buf).unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(s(buf, h.method_span), "GET");
        assert_eq!(s(buf, h.target), "/a/b?c=d");
        assert_eq!(s(buf, h.path), "/a/b");
        assert!(!h.target_empty_path);
        assert_eq!(h.version, Version::Http11);
        assert_eq!(s(buf, h.authority.unwrap()), "example.com");
        assert_eq!(h.head_len, buf.len() - 4);
        assert_eq!(h.framing, BodyFraming::None);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(s(buf, h.headers[0].name), "Host");
        assert_eq!(h.headers[0].kind, HeaderKind::Host);
        assert_eq!(s(buf, h.headers[1].name), "Accept");
        assert_eq!(s(buf, h.headers[1].value), "*/*");
        assert_eq!(h.headers[1].kind, HeaderKind::Other);
        assert!(h.headers.iter().all(|h| !h.hop_by_hop));
        assert!(h.keep_alive());
        assert!(!h.upgrade && !h.expect_continue);
        assert_eq!(h.header(buf, "accept"), Some(&b"*/*"[..]));
        assert_eq!(h.header(buf, "HOST"), Some(&b"example.com"[..]));
        assert_eq!(h.header(buf, "missing"), None);
    }

    #[test]
    fn value_whitespace_trimmed_and_empty_values() {
        let buf = b"GET / HTTP/1.1\r\nHost:  a.b \t\r\nX-Empty:\r\nX-Blank:   \r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(s(buf, h.headers[0].value), "a.b");
        assert_eq!(s(buf, h.headers[1].value), "");
        assert_eq!(s(buf, h.headers[2].value), "");
    }

    #[test]
    fn leading_empty_lines_counted() {
        let buf = b"\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(h.head_len, buf.len());
        assert_eq!(s(buf, h.method_span), "GET");
        assert_eq!(h.method_span.start, 4);
        assert_eq!(h.version, Version::Http10);
        assert_eq!(h.authority, None);
        assert!(!h.keep_alive());
    }

    #[test]
    fn other_methods_and_options_star() {
        let buf = b"PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(h.method, Method::Other);
        assert_eq!(s(buf, h.method_span), "PROPFIND");
        let buf = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(h.method, Method::Options);
        assert_eq!(s(buf, h.target), "*");
        assert_eq!(s(buf, h.path), "*");
        assert_err(
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "invalid request target",
        );
        assert_err(
            b"OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "invalid request target",
        );
    }

    #[test]
    fn absolute_form() {
        let buf = b"GET http://Example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: example.COM:8080\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(s(buf, h.authority.unwrap()), "Example.com:8080");
        assert_eq!(s(buf, h.target), "/p/q?x=1");
        assert_eq!(s(buf, h.path), "/p/q");
        assert!(!h.target_empty_path);

        let buf = b"GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(s(buf, h.authority.unwrap()), "example.com");
        assert!(h.target_empty_path);
        assert_eq!(s(buf, h.target), "");
        assert!(h.path.is_empty());

        let buf = b"GET http://example.com?q=1 HTTP/1.0\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(s(buf, h.authority.unwrap()), "example.com");
        assert!(h.target_empty_path);
        assert_eq!(s(buf, h.target), "?q=1");
        assert!(h.path.is_empty());

        let buf = b"GET http://[::1]:80/ HTTP/1.0\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(s(buf, h.authority.unwrap()), "[::1]:80");
        assert_eq!(s(buf, h.target), "/");
    }

    #[test]
    fn absolute_form_errors() {
        let cases: &[(&[u8], u16, &str)] = &[
            (
                b"GET http:///x HTTP/1.0\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http:// HTTP/1.0\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http://user@host/ HTTP/1.0\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http://user:pw@host/ HTTP/1.0\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http://ho\"st/ HTTP/1.0\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http://host:abc/ HTTP/1.0\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET ftp://host/ HTTP/1.0\r\n\r\n",
                400,
                "unsupported target scheme",
            ),
            (
                b"GET ws://host/ HTTP/1.0\r\n\r\n",
                400,
                "unsupported target scheme",
            ),
            (
                b"GET example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http:/x HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET http://a.com/ HTTP/1.1\r\nHost: b.com\r\n\r\n",
                400,
                "host header does not match target",
            ),
            (
                b"GET http://a.com:80/ HTTP/1.1\r\nHost: a.com\r\n\r\n",
                400,
                "host header does not match target",
            ),
            (
                b"GET http://a.com/ HTTP/1.1\r\nHost: \r\n\r\n",
                400,
                "host header does not match target",
            ),
            (
                b"GET http://a.com/ HTTP/1.1\r\n\r\n",
                400,
                "missing host header",
            ),
        ];
        for (buf, status, reason) in cases {
            assert_err(buf, *status, reason);
        }
    }

    #[test]
    fn connect_not_supported() {
        assert_err(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            501,
            "connect not supported",
        );
    }

    #[test]
    fn request_line_errors() {
        let cases: &[(&[u8], u16, &str)] = &[
            (
                b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
                400,
                "invalid http version",
            ),
            (
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                400,
                "invalid http version",
            ),
            (
                b"GET / http/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid http version",
            ),
            (
                b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
                400,
                "invalid line ending",
            ),
            (
                b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
                400,
                "invalid line ending",
            ),
            (
                b"GET / HTTP/1.1\rX\nHost: a\r\n\r\n",
                400,
                "invalid line ending",
            ),
            (
                b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (
                b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid http version",
            ),
            (
                b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid request target",
            ),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid method"),
            (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid method"),
            (
                b"\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "invalid method",
            ),
            (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid method"),
            (b"GET\r\n\r\n", 400, "invalid method"),
            (b"\r\rGET / HTTP/1.1\r\n\r\n", 400, "invalid line ending"),
        ];
        for (buf, status, reason) in cases {
            assert_err(buf, *status, reason);
        }
    }

    #[test]
    fn header_syntax_errors() {
        let cases: &[(&[u8], u16, &str)] = &[
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                400,
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
                400,
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
                400,
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX(Y): z\r\n\r\n",
                400,
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
                400,
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
                400,
                "invalid header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
                400,
                "invalid header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
                400,
                "invalid header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
                400,
                "invalid header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
                400,
                "obs-fold in header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
                400,
                "obs-fold in header",
            ),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
                400,
                "obs-fold in header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\rY: c\r\n\r\n",
                400,
                "invalid header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n",
                400,
                "invalid line ending",
            ),
        ];
        for (buf, status, reason) in cases {
            assert_err(buf, *status, reason);
        }
    }

    #[test]
    fn bare_lf_refused_by_parser_too() {
        assert_err(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF in head");
        assert_err(b"GET / HTTP/1.1\r\nHost: a\n\n", 400, "bare LF in head");
        assert_err(
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "bare LF in head",
        );
        // Bytes after the head (a body) may hold anything.
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\n\n").is_ok());
    }

    #[test]
    fn incomplete_head() {
        assert_err(
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            400,
            "incomplete request head",
        );
        assert_err(b"", 400, "incomplete request head");
    }

    #[test]
    fn too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..4 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let mut head = RequestHead::with_capacity(0);
        let l5 = HeadLimits {
            max_headers: 5,
            ..HeadLimits::default()
        };
        assert_eq!(parse_request(&buf, &l5, &mut head), Ok(()));
        assert_eq!(head.headers.len(), 5);
        let l4 = HeadLimits {
            max_headers: 4,
            ..HeadLimits::default()
        };
        assert_eq!(
            parse_request(&buf, &l4, &mut head),
            Err(HttpError::too_large("too many headers"))
        );
        // Limits above the cap are clamped to it.
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS_CAP {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let big = HeadLimits {
            max_headers: 10_000,
            max_head_size: 1 << 20,
        };
        assert_eq!(
            parse_request(&buf, &big, &mut head),
            Err(HttpError::too_large("too many headers"))
        );
    }

    #[test]
    fn host_rules() {
        assert_err(b"GET / HTTP/1.1\r\n\r\n", 400, "missing host header");
        assert_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            400,
            "multiple host headers",
        );
        assert_err(
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
            400,
            "multiple host headers",
        );
        for bad_host in [
            &b"a b"[..],
            b"a/b",
            b"a@b",
            b"a:b",
            b"a:123456",
            b":80",
            b"[::1",
            b"[]",
            b"[::g]",
            b"[::1]x",
            b"a\"b",
            b"a:80:80",
            b"\xc3\xa9",
        ] {
            let mut buf = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            buf.extend_from_slice(bad_host);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_err(&buf, 400, "invalid host header");
        }
        for good in [
            &b"a"[..],
            b"example.com",
            b"example.com:8080",
            b"example.com:",
            b"127.0.0.1:1",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"xn--caf-dma.example",
            b"a_b~c!$&'()*+,;=%20",
            b"",
        ] {
            let mut buf = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            buf.extend_from_slice(good);
            buf.extend_from_slice(b"\r\n\r\n");
            let h = parse(&buf)
                .unwrap_or_else(|e| panic!("{e} for {:?}", String::from_utf8_lossy(good)));
            assert_eq!(h.authority.unwrap().of(&buf), good);
        }
        let buf = b"GET / HTTP/1.0\r\nHost: h\r\n\r\n";
        assert_eq!(s(buf, parse(buf).unwrap().authority.unwrap()), "h");
    }

    #[test]
    fn content_length_rules() {
        let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(parse(buf).unwrap().framing, BodyFraming::Length(12));
        let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse(buf).unwrap().framing, BodyFraming::Length(0));
        let buf =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\ncontent-length: 7\r\n\r\n";
        assert_eq!(parse(buf).unwrap().framing, BodyFraming::Length(7));
        let buf = b"POST / HTTP/1.0\r\nContent-Length: 18446744\r\n\r\n";
        assert_eq!(parse(buf).unwrap().framing, BodyFraming::Length(18446744));
        let conflicting: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,2\r\n\r\n",
        ];
        for buf in conflicting {
            assert_err(buf, 400, "conflicting content-length");
        }
        for buf in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n",
        ] {
            assert_err(buf, 400, "framing header name with underscore");
        }
        for v in [
            &b"-1"[..],
            b"+1",
            b"1 1",
            b"",
            b"abc",
            b"1,",
            b"12345678901234567890",
            b"0x5",
            b"1;a",
        ] {
            let mut buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ".to_vec();
            buf.extend_from_slice(v);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_err(&buf, 400, "invalid content-length");
        }
    }

    fn with_te(version: &str, te: &[&str]) -> Vec<u8> {
        let mut buf = format!("POST / HTTP/{version}\r\nHost: a\r\n").into_bytes();
        for v in te {
            buf.extend_from_slice(format!("Transfer-Encoding: {v}\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        buf
    }

    #[test]
    fn transfer_encoding_rules() {
        for ok in [&["chunked"][..], &["Chunked"], &["CHUNKED "], &[" chunked"]] {
            assert_eq!(
                parse(&with_te("1.1", ok)).unwrap().framing,
                BodyFraming::Chunked,
                "{ok:?}"
            );
        }
        let invalid: &[&[&str]] = &[
            &[""],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["chunked, gzip"],
            &["chunked", "gzip"],
            &["gzip"],
            &["foo"],
            &["chunked,"],
            &[",chunked"],
            &["gzip,,chunked"],
            &["", "chunked"],
            &["chunked;foo=bar"],
            &["chunk ed"],
            &["\"chunked\""],
            &["chunked\x0b"],
        ];
        for te in invalid {
            let buf = with_te("1.1", te);
            if te == &["chunked\x0b"] {
                // A control byte is already a header value error in httparse.
                assert_err(&buf, 400, "invalid header value");
                continue;
            }
            assert_err(&buf, 400, "invalid transfer-encoding");
        }
        let unsupported: &[&[&str]] = &[
            &["gzip, chunked"],
            &["gzip", "chunked"],
            &["foo, chunked"],
            &["gzip;q=1, chunked"],
        ];
        for te in unsupported {
            assert_err(&with_te("1.1", te), 501, "unsupported transfer-encoding");
        }
        assert_err(
            &with_te("1.0", &["chunked"]),
            400,
            "transfer-encoding in http/1.0",
        );
        assert_err(
            &with_te("1.0", &["gzip"]),
            400,
            "transfer-encoding in http/1.0",
        );
        assert_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both content-length and transfer-encoding",
        );
        assert_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            400,
            "both content-length and transfer-encoding",
        );
        // The chunked body keeps its framing header: Transfer-Encoding is not hop-by-hop.
        let h = parse(&with_te("1.1", &["chunked"])).unwrap();
        assert!(h.headers.iter().all(|h| !h.hop_by_hop));
    }

    #[test]
    fn expect_rules() {
        let buf =
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(parse(buf).unwrap().expect_continue);
        let buf = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert!(!parse(buf).unwrap().expect_continue);
        assert_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
            417,
            "unsupported expectation",
        );
        assert_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n",
            417,
            "unsupported expectation",
        );
    }

    #[test]
    fn connection_tokens_and_hop_by_hop() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close, X-Secret\r\nKeep-Alive: 5\r\n\
TE: trailers\r\nTrailer: x\r\nProxy-Connection: keep-alive\r\nx-secret: 1\r\nX-Other: 2\r\n\r\n";
        let h = parse(buf).unwrap();
        assert!(h.connection.close);
        assert!(!h.connection.keep_alive);
        assert!(!h.keep_alive());
        let hop: Vec<&str> = h
            .headers
            .iter()
            .filter(|x| x.hop_by_hop)
            .map(|x| s(buf, x.name))
            .collect();
        assert_eq!(
            hop,
            [
                "Connection",
                "Keep-Alive",
                "TE",
                "Trailer",
                "Proxy-Connection",
                "x-secret"
            ]
        );

        // A Connection header may come after the header it names, and may not strip framing or Host.
        let buf = b"POST / HTTP/1.1\r\nX-A: 1\r\nHost: a\r\nContent-Length: 1\r\n\
Connection: x-a, host, content-length, transfer-encoding, , keep-alive\r\n\r\n";
        let h = parse(buf).unwrap();
        let hop: Vec<&str> = h
            .headers
            .iter()
            .filter(|x| x.hop_by_hop)
            .map(|x| s(buf, x.name))
            .collect();
        assert_eq!(hop, ["X-A", "Connection"]);
        assert!(h.connection.keep_alive);
        assert!(h.keep_alive());

        let buf = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(parse(buf).unwrap().keep_alive());
        let buf = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n";
        assert!(!parse(buf).unwrap().keep_alive());
        let buf = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!parse(buf).unwrap().keep_alive());
    }

    #[test]
    fn upgrade_rules() {
        let buf =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h = parse(buf).unwrap();
        assert!(h.upgrade);
        assert!(h.connection.upgrade);
        assert!(
            h.headers
                .iter()
                .filter(|x| x.kind == HeaderKind::Upgrade)
                .all(|x| x.hop_by_hop)
        );
        // No Upgrade header, HTTP/1.0, no Connection token, or a body: not an upgrade.
        let no: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n",
        ];
        for buf in no {
            assert!(
                !parse(buf).unwrap().upgrade,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n";
        assert!(parse(buf).unwrap().upgrade);
    }

    #[test]
    fn head_is_reused_without_growing() {
        let mut head = RequestHead::with_capacity(8);
        let cap = head.headers.capacity();
        let a = b"GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\n\r\n";
        let b = b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n";
        for _ in 0..3 {
            parse_request(a, &HeadLimits::default(), &mut head).unwrap();
            assert_eq!(head.headers.len(), 3);
            parse_request(b, &HeadLimits::default(), &mut head).unwrap();
            assert_eq!(head.headers.len(), 1);
            assert_eq!(s(b, head.target), "/b");
        }
        assert_eq!(head.headers.capacity(), cap);
        // A failed parse leaves no stale state for the next one.
        assert!(
            parse_request(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
                &HeadLimits::default(),
                &mut head
            )
            .is_err()
        );
        parse_request(b, &HeadLimits::default(), &mut head).unwrap();
        assert_eq!(head.framing, BodyFraming::None);
    }

    /// Every prefix of a pipelined stream through the scanner, then the parser.
    #[test]
    fn scanner_then_parser_at_every_split() {
        let messages: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\nPOST /upload?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 5\r\n\r\nhello",
            b"GET http://h.example/p HTTP/1.0\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
            b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n0\r\n\r\n",
        ];
        let limits = HeadLimits::default();
        for msg in messages {
            // The end: the first empty line after the start line.
            let start = crate::http::head::leading_empty_lines(msg);
            let end_of_head = start
                + msg[start..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap()
                + 4;
            let mut scanner = HeadScanner::default();
            for n in 1..=msg.len() {
                let r = scanner.scan(&msg[..n], &limits).unwrap();
                if n < end_of_head {
                    assert_eq!(r, None, "prefix {n} of {:?}", String::from_utf8_lossy(msg));
                } else {
                    assert_eq!(r, Some(end_of_head));
                }
                // A fresh scanner over the same prefix agrees with the incremental one.
                assert_eq!(HeadScanner::default().scan(&msg[..n], &limits).unwrap(), r);
            }
            let mut head = RequestHead::with_capacity(4);
            parse_request(msg, &limits, &mut head).unwrap();
            assert_eq!(head.head_len, end_of_head);
            // And the parser refuses every incomplete prefix.
            for n in 0..end_of_head {
                assert!(parse_request(&msg[..n], &limits, &mut head).is_err());
            }
        }
    }
}
