//! Writes heads out again for the other side: hop-by-hop fields removed, forwarding fields set.

use super::canned::reason_phrase;
use super::head::{HeaderKind, fold_content_length};
use super::request::{BodyFraming, RequestHead};
use super::response::ResponseHead;
use std::io::Write;
use std::net::IpAddr;

/// A client address already written out as text (canonical: an IPv4 client seen through a dual-stack
/// socket is written as IPv4). Made once per connection, so forwarding a request formats nothing.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    pub fn new(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        let mut cursor = std::io::Cursor::new(&mut t.buf[..]);
        // 45 bytes hold the longest IPv6 text form.
        let _ = write!(cursor, "{}", ip.to_canonical());
        t.len = cursor.position() as u8;
        t
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Facts about the client connection a forwarded request carries.
#[derive(Debug, Clone, Copy)]
pub struct ForwardContext<'a> {
    pub client_ip: IpText,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
    /// Keep and extend the client's own forwarding headers instead of replacing them.
    pub trust_forwarded: bool,
    /// A cookie that is tether's, never the backend's (the login session's): removed from `Cookie`.
    pub drop_cookie: Option<&'a str>,
}

/// What the balancer decided about the client connection, reflected in the response head.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseOptions {
    /// Add `Connection: close`: the client connection ends after this response.
    pub close: bool,
    /// HTTP/1.0 client kept alive: add `Connection: keep-alive`.
    pub keep_alive_http10: bool,
    /// A `101 Switching Protocols` to an upgrade request: keep `Upgrade` and send `Connection: upgrade`
    /// (instead of `close` / `keep-alive`, which mean nothing for a tunnel).
    pub upgrade: bool,
}

/// Appends the request head for the backend to `out`, without the final empty line (call `end_head`):
/// request line (absolute-form reduced to origin-form, version as received), `Host` (only when the client
/// sent none: an HTTP/1.0 absolute-form request), the framing normalised (one `Content-Length: N` for any
/// number of equal values, or `Transfer-Encoding: chunked` whatever its case and whitespace, at the place of
/// the first framing field), every other header in order except hop-by-hop ones and,
/// unless trusted, the client's own forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`);
/// then `X-Forwarded-For` (trusted: the client's values joined, then the client address),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (trusted: only when the client sent none);
/// and `Connection: upgrade` with the `Upgrade` header(s) for an upgrade request.
pub fn write_request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    ctx: &ForwardContext<'_>,
) {
    out.extend_from_slice(head.method_span.of(buf));
    out.push(b' ');
    if head.target_empty_path {
        out.push(b'/');
    }
    out.extend_from_slice(head.target.of(buf));
    out.push(b' ');
    out.extend_from_slice(head.version.as_bytes());
    out.extend_from_slice(b"\r\n");

    let authority = head.authority.map(|a| a.of(buf)).filter(|a| !a.is_empty());
    if !head.headers.iter().any(|h| h.kind == HeaderKind::Host) {
        if let Some(a) = authority {
            write_header(out, b"Host", a);
        }
    }

    let trust = ctx.trust_forwarded;
    let (mut xff, mut xfp, mut xfh) = (false, false, false);
    let mut framing_written = false;
    for h in &head.headers {
        if h.hop_by_hop {
            continue;
        }
        match h.kind {
            // Framing is written in one canonical form, once, where the client first put it: a backend
            // that reads `Content-Length: 5, 5`, two equal fields or `Transfer-Encoding: CHUNKED` its own
            // way can never frame the body differently from tether.
            HeaderKind::ContentLength | HeaderKind::TransferEncoding => {
                if !framing_written {
                    framing_written = true;
                    write_framing(out, head.framing);
                }
                continue;
            }
            HeaderKind::XForwardedFor => {
                // Trusted values are joined into the one written below.
                xff |= trust;
                continue;
            }
            // Identity is tether's to assert, whoever sent the request (trusted proxies included).
            HeaderKind::TetherReserved => continue,
            HeaderKind::Cookie if ctx.drop_cookie.is_some() => {
                if let Some(name) = ctx.drop_cookie {
                    write_cookie_without(out, h.value.of(buf), name.as_bytes());
                }
                continue;
            }
            HeaderKind::XForwardedProto if trust => xfp = true,
            HeaderKind::XForwardedHost if trust => xfh = true,
            HeaderKind::XForwardedProto
            | HeaderKind::XForwardedHost
            | HeaderKind::XForwardedPort
            | HeaderKind::Forwarded
            | HeaderKind::XRealIp
                if !trust =>
            {
                continue;
            }
            _ => {}
        }
        write_header(out, h.name.of(buf), h.value.of(buf));
    }

    out.extend_from_slice(b"X-Forwarded-For: ");
    if xff {
        for h in &head.headers {
            if h.kind == HeaderKind::XForwardedFor && !h.hop_by_hop && !h.value.is_empty() {
                out.extend_from_slice(h.value.of(buf));
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(ctx.client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !xfp {
        write_header(out, b"X-Forwarded-Proto", ctx.proto.as_bytes());
    }
    if !xfh {
        if let Some(a) = authority {
            write_header(out, b"X-Forwarded-Host", a);
        }
    }

    if head.upgrade {
        write_header(out, b"Connection", b"upgrade");
        for h in head
            .headers
            .iter()
            .filter(|h| h.kind == HeaderKind::Upgrade)
        {
            write_header(out, h.name.of(buf), h.value.of(buf));
        }
    }
}

/// A `Cookie` header with the pairs named `name` left out; nothing when no pair is left. Pairs keep their
/// bytes and order, joined by `; ` (RFC 6265 §4.2.1). No allocation.
fn write_cookie_without(out: &mut Vec<u8>, value: &[u8], name: &[u8]) {
    let start = out.len();
    let mut first = true;
    let mut dropped = false;
    let mut rest = value;
    loop {
        let (piece, next) = match memchr::memchr(b';', rest) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let pair = piece.trim_ascii();
        let named = memchr::memchr(b'=', pair).is_some_and(|eq| pair[..eq].trim_ascii() == name);
        dropped |= named;
        if !pair.is_empty() && !named {
            out.extend_from_slice(if first { b"Cookie: " } else { b"; " });
            out.extend_from_slice(pair);
            first = false;
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    if !dropped {
        // Nothing of tether's: the header goes on as the client wrote it.
        out.truncate(start);
        write_header(out, b"Cookie", value);
    } else if !first {
        out.extend_from_slice(b"\r\n");
    }
}

/// The one framing header a forwarded request carries (validation guarantees the client sent it).
fn write_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => write_header(out, b"Transfer-Encoding", b"chunked"),
        BodyFraming::None => debug_assert!(false, "a framing header without framing"),
    }
}

/// Appends the response head for the client to `out`, without the final empty line (call `end_head`):
/// always `HTTP/1.1 <status> <reason>` (the standard phrase when the backend sent none), every header
/// except hop-by-hop ones (`Upgrade` kept when `opts.upgrade`), equal `Content-Length` values as one
/// `Content-Length: N` where the first was, `Transfer-Encoding` as received, then the `Connection` header
/// `opts` asks for.
pub fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    opts: &ResponseOptions,
) {
    // The parser accepts 100..=599 only: three digits.
    let s = head.status.min(999);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
        b' ',
    ]);
    let reason = head.reason.of(buf);
    if reason.is_empty() {
        out.extend_from_slice(reason_phrase(head.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for h in &head.headers {
        if h.hop_by_hop && !(opts.upgrade && h.kind == HeaderKind::Upgrade) {
            continue;
        }
        if h.kind == HeaderKind::ContentLength {
            // Equal values (validated by the parser) collapse into one canonical field, as for requests.
            if !length_written {
                length_written = true;
                let mut n = None;
                if fold_content_length(h.value.of(buf), &mut n).is_ok() {
                    if let Some(n) = n {
                        out.extend_from_slice(b"Content-Length: ");
                        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            continue;
        }
        write_header(out, h.name.of(buf), h.value.of(buf));
    }
    if opts.upgrade {
        write_header(out, b"Connection", b"upgrade");
    } else if opts.close {
        write_header(out, b"Connection", b"close");
    } else if opts.keep_alive_http10 {
        write_header(out, b"Connection", b"keep-alive");
    }
}

/// Appends one header line `name: value\r\n`.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the empty line that ends a head.
pub fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadLimits, Method, parse_request, parse_response};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ctx(trust: bool) -> ForwardContext<'static> {
        ForwardContext {
            client_ip: IpText::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
            proto: "https",
            trust_forwarded: trust,
            drop_cookie: None,
        }
    }

    #[test]
    fn tethers_session_cookie_is_not_forwarded() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; tether_session=v4.x; b=2\r\nCookie: tether_session=y\r\nCookie: c=3\r\n\r\n";
        let mut c = ctx(false);
        c.drop_cookie = Some("tether_session");
        let out = forward(req, &c);
        assert!(out.contains("Cookie: a=1; b=2\r\n"), "{out}");
        assert!(out.contains("Cookie: c=3\r\n"), "{out}");
        assert!(!out.contains("tether_session"), "{out}");
        // Without a cookie to drop, the header goes as it came.
        let out = forward(req, &ctx(false));
        assert!(
            out.contains("Cookie: a=1; tether_session=v4.x; b=2\r\n"),
            "{out}"
        );
    }

    fn forward(req: &[u8], ctx: &ForwardContext) -> String {
        let mut head = RequestHead::with_capacity(16);
        parse_request(req, &HeadLimits::default(), &mut head).unwrap();
        let mut out = Vec::new();
        write_request_head(&mut out, req, &head, ctx);
        end_head(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn respond(resp: &[u8], method: Method, opts: &ResponseOptions) -> String {
        let mut head = ResponseHead::with_capacity(16);
        parse_response(resp, &HeadLimits::default(), method, &mut head).unwrap();
        let mut out = Vec::new();
        write_response_head(&mut out, resp, &head, opts);
        end_head(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_request() {
        let req = b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \r\nCookie: a=b\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nCookie: a=b\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_removed() {
        let req = b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: 300\r\n\
TE: trailers\r\nTrailer: X-Sum\r\nProxy-Connection: keep-alive\r\nUpgrade: websocket\r\nX-Private: secret\r\n\
Transfer-Encoding: chunked\r\nX-Public: 1\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Public: 1\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
        );
    }

    #[test]
    fn forged_forwarding_headers_dropped_when_untrusted() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-proto: http\r\n\
X-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Keep: y\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Keep: y\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
        );
    }

    #[test]
    fn forwarding_headers_extended_when_trusted() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Forwarded-Proto: http\r\n\
X-Real-IP: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.3\r\nX-Forwarded-For:\r\nForwarded: for=10.0.0.1\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(true)),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\
X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\nX-Forwarded-Host: h\r\n\r\n"
        );
        // Trusted, but the client sent none: ours are added.
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: front.example\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(true)),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: front.example\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n"
        );
    }

    #[test]
    fn framing_normalised() {
        // Equal Content-Length values, however many and however spelled, become one field where the first
        // one was.
        let req = b"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 3, 3\r\nX-A: 1\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: 1\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
        );
        let req = b"POST / HTTP/1.1\r\ntransfer-encoding:\tCHUNKED \r\nHost: h\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
        );
        // A Connection header cannot make them disappear.
        let req = b"POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 0\r\n\r\n";
        assert!(forward(req, &ctx(false)).contains("\r\nContent-Length: 0\r\n"));
    }

    #[test]
    fn ipv6_and_mapped_clients() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut c = ctx(false);
        c.client_ip = IpText::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
        assert!(forward(req, &c).contains("\r\nX-Forwarded-For: 2001:db8::1\r\n"));
        c.client_ip = IpText::new(IpAddr::V6(Ipv4Addr::new(198, 51, 100, 1).to_ipv6_mapped()));
        assert!(forward(req, &c).contains("\r\nX-Forwarded-For: 198.51.100.1\r\n"));
    }

    #[test]
    fn absolute_form_reduced() {
        let req = b"GET http://example.com:8080/x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET /x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\nX-Forwarded-For: 192.0.2.7\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com:8080\r\n\r\n"
        );
        // HTTP/1.0 without Host: one is added from the target; an empty path becomes "/".
        let req = b"GET http://example.com?q HTTP/1.0\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET /?q HTTP/1.0\r\nHost: example.com\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.7\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\n\r\n"
        );
        let req = b"OPTIONS http://example.com HTTP/1.0\r\n\r\n";
        assert!(
            forward(req, &ctx(false)).starts_with("OPTIONS / HTTP/1.0\r\nHost: example.com\r\n")
        );
    }

    #[test]
    fn no_authority() {
        let req = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET / HTTP/1.0\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n"
        );
        let req = b"GET / HTTP/1.1\r\nHost:\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET / HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n"
        );
    }

    #[test]
    fn upgrade_request() {
        let req = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(
            forward(req, &ctx(false)),
            "GET /chat HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\
Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        // Not an upgrade (no Connection token): Upgrade is dropped.
        let req = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        assert!(!forward(req, &ctx(false)).contains("pgrade"));
    }

    #[test]
    fn unknown_method_and_version_forwarded_as_sent() {
        let req = b"\r\nPURGE /c HTTP/1.0\r\nHost: h\r\n\r\n";
        assert!(forward(req, &ctx(false)).starts_with("PURGE /c HTTP/1.0\r\nHost: h\r\n"));
    }

    #[test]
    fn response_plain_and_hop_by_hop() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: keep-alive, X-Backend\r\n\
Keep-Alive: timeout=5\r\nX-Backend: b1\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\n";
        assert_eq!(
            respond(resp, Method::Get, &ResponseOptions::default()),
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\
Set-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\n"
        );
    }

    #[test]
    fn response_content_length_collapsed() {
        let resp =
            b"HTTP/1.1 200 OK\r\ncontent-length: 005, 5\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            respond(resp, Method::Get, &ResponseOptions::default()),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n"
        );
        // Kept as metadata where it does not frame anything (a HEAD answer, 304).
        let resp = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(
            respond(resp, Method::Get, &ResponseOptions::default()),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        );
    }

    #[test]
    fn response_connection_options() {
        let resp = b"HTTP/1.0 404 Nope\r\nContent-Length: 3\r\n\r\n";
        let close = ResponseOptions {
            close: true,
            ..Default::default()
        };
        assert_eq!(
            respond(resp, Method::Get, &close),
            "HTTP/1.1 404 Nope\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let ka = ResponseOptions {
            keep_alive_http10: true,
            ..Default::default()
        };
        assert_eq!(
            respond(resp, Method::Get, &ka),
            "HTTP/1.1 404 Nope\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn response_reason_defaulted() {
        let resp = b"HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            respond(resp, Method::Get, &ResponseOptions::default()),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        );
        let resp = b"HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n";
        assert!(
            respond(resp, Method::Get, &ResponseOptions::default())
                .starts_with("HTTP/1.1 299 Unknown\r\n")
        );
    }

    #[test]
    fn response_upgrade() {
        let resp =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: xyz\r\n\r\n";
        let up = ResponseOptions {
            upgrade: true,
            close: true,
            keep_alive_http10: false,
        };
        assert_eq!(
            respond(resp, Method::Get, &up),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: xyz\r\n\
Connection: upgrade\r\n\r\n"
        );
        // Without the upgrade decision, Upgrade is hop-by-hop like any other.
        assert_eq!(
            respond(resp, Method::Get, &ResponseOptions::default()),
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: xyz\r\n\r\n"
        );
    }

    #[test]
    fn write_header_line() {
        let mut out = Vec::new();
        write_header(&mut out, b"X-A", b"b c");
        end_head(&mut out);
        assert_eq!(out, b"X-A: b c\r\n\r\n");
    }
}
