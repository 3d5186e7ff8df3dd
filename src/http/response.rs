//! Response heads from backends: strict parsing and body framing (RFC 9112 §6.3).

use super::HttpError;
use super::head::{
    ConnectionOptions, HeadLimits, Header, MAX_HEADERS_CAP, Method, Span, Version, collect_headers,
    find_header, has_bare_lf, has_obs_fold, leading_empty_lines, mark_connection_named,
};
use std::mem::MaybeUninit;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD request, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Read until the backend closes.
    UntilClose,
}

/// A parsed response head: offsets into the buffer it came from; reused across responses.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    /// The reason phrase as sent (possibly empty).
    pub reason: Span,
    pub headers: Vec<Header>,
    pub head_len: usize,
    pub framing: ResponseFraming,
    pub connection: ConnectionOptions,
}

impl ResponseHead {
    pub fn with_capacity(max_headers: usize) -> Self {
        ResponseHead {
            version: Version::Http11,
            status: 0,
            reason: Span::default(),
            headers: Vec::with_capacity(max_headers),
            head_len: 0,
            framing: ResponseFraming::None,
            connection: ConnectionOptions::default(),
        }
    }

    /// Whether the backend connection may be reused after this response's body.
    pub fn reusable(&self) -> bool {
        let persistent = match self.version {
            Version::Http11 => !self.connection.close,
            Version::Http10 => self.connection.keep_alive && !self.connection.close,
        };
        persistent && self.framing != ResponseFraming::UntilClose
    }

    /// The first header with this name (ASCII case-insensitive), as its value bytes.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    /// Back to the empty state, keeping the header list's capacity.
    fn clear(&mut self) {
        let mut headers = std::mem::take(&mut self.headers);
        headers.clear();
        *self = ResponseHead {
            headers,
            ..ResponseHead::with_capacity(0)
        };
    }
}

/// A refusal of a backend's response (the client is answered 502).
const fn bad(reason: &'static str) -> HttpError {
    HttpError {
        status: 502,
        reason,
    }
}

fn map_httparse_error(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => bad("too many headers"),
        httparse::Error::HeaderName if has_obs_fold(buf) => bad("obs-fold in header"),
        httparse::Error::HeaderName => bad("invalid header name"),
        httparse::Error::HeaderValue => bad("invalid header value"),
        httparse::Error::Version => bad("invalid http version"),
        httparse::Error::Status => bad("invalid status line"),
        httparse::Error::NewLine => bad("invalid line ending"),
        httparse::Error::Token => bad("invalid response head"),
    }
}

/// The reason phrase of the status line starting at `line` (`HTTP/1.x NNN[ reason]\r\n`, already
/// validated by httparse). Computed here because httparse hands back `""` for a reason with obs-text.
fn reason_span(buf: &[u8], line: usize) -> Span {
    let start = line + 13;
    match buf.get(line + 12) {
        Some(b' ') => {
            let len = buf
                .get(start..)
                .and_then(|rest| memchr::memchr(b'\r', rest))
                .unwrap_or(0);
            Span::new(start, start + len)
        }
        _ => Span::new(line + 12, line + 12),
    }
}

/// Parses the complete response head `buf[..head_len]` to a request made with `method`. Errors are the
/// backend's fault; they carry status 502 (what the client is answered) and a reason for the log.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    method: Method,
    head: &mut ResponseHead,
) -> Result<(), HttpError> {
    head.clear();
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let max = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut resp = httparse::Response::new(&mut []);
    // The default configuration is the strict one: no obs-fold, no space before the colon, no invalid
    // header lines skipped, single spaces in the status line.
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut raw[..max]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(if has_bare_lf(buf) {
                bad("bare LF in head")
            } else {
                bad("incomplete response head")
            });
        }
        Err(e) => return Err(map_httparse_error(e, buf)),
    };
    if has_bare_lf(buf.get(..len).unwrap_or(buf)) {
        return Err(bad("bare LF in head"));
    }
    head.head_len = len;
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(bad("invalid response head"));
    };
    if !(100..=599).contains(&status) {
        return Err(bad("invalid status"));
    }
    head.version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    head.status = status;
    head.reason = reason_span(buf, leading_empty_lines(buf));

    let facts = collect_headers(buf, resp.headers, &mut head.headers);
    if facts.framing_alias {
        return Err(bad("framing header name with underscore"));
    }
    if let Some(e) = facts.content_length_error {
        return Err(bad(e));
    }
    let te = facts.te;
    if te.present {
        if head.version == Version::Http10 {
            // RFC 9112 §6.1: the framing of such a message is faulty.
            return Err(bad("transfer-encoding in http/1.0"));
        }
        if facts.content_length.is_some() {
            return Err(bad("both content-length and transfer-encoding"));
        }
        if te.malformed || te.chunked_count > 1 {
            return Err(bad("invalid transfer-encoding"));
        }
    }
    head.framing = if method == Method::Head || status < 200 || status == 204 || status == 304 {
        ResponseFraming::None
    } else if te.present {
        if te.last_is_chunked {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        }
    } else if let Some(n) = facts.content_length {
        ResponseFraming::Length(n)
    } else {
        ResponseFraming::UntilClose
    };
    head.connection = facts.connection;
    if facts.connection_names_headers {
        mark_connection_named(buf, &mut head.headers);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadScanner, HeaderKind};

    fn parse_m(buf: &[u8], method: Method) -> Result<ResponseHead, HttpError> {
        let mut head = ResponseHead::with_capacity(8);
        parse_response(buf, &HeadLimits::default(), method, &mut head).map(|()| head)
    }

    fn parse(buf: &[u8]) -> Result<ResponseHead, HttpError> {
        parse_m(buf, Method::Get)
    }

    #[track_caller]
    fn assert_err(buf: &[u8], reason: &str) {
        match parse(buf) {
            Ok(h) => panic!("accepted {:?}: {h:?}", String::from_utf8_lossy(buf)),
            Err(e) => assert_eq!(
                (e.status, e.reason),
                (502, reason),
                "for {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn s(buf: &[u8], span: Span) -> &[u8] {
        span.of(buf)
    }

    #[test]
    fn simple_ok() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
        let h = parse(buf).unwrap();
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.status, 200);
        assert_eq!(s(buf, h.reason), b"OK");
        assert_eq!(h.head_len, buf.len() - 5);
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[0].kind, HeaderKind::ContentLength);
        assert!(h.reusable());
        assert_eq!(h.header(buf, "content-type"), Some(&b"text/plain"[..]));
    }

    #[test]
    fn reason_phrases() {
        let buf = b"HTTP/1.1 404 Not  Found \r\nContent-Length: 0\r\n\r\n";
        assert_eq!(s(buf, parse(buf).unwrap().reason), b"Not  Found ");
        let buf = b"HTTP/1.1 204 \r\n\r\n";
        assert_eq!(s(buf, parse(buf).unwrap().reason), b"");
        let buf = b"HTTP/1.1 204\r\n\r\n";
        assert_eq!(s(buf, parse(buf).unwrap().reason), b"");
        // obs-text is kept (httparse would hand back an empty reason).
        let buf = b"\r\nHTTP/1.1 200 Gr\xfc\xdfe\r\nContent-Length: 0\r\n\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(s(buf, h.reason), b"Gr\xfc\xdfe");
        assert_eq!(h.head_len, buf.len());
    }

    #[test]
    fn status_line_errors() {
        assert_err(b"HTTP/1.1 000 Zero\r\n\r\n", "invalid status");
        assert_err(b"HTTP/1.1 099 Low\r\n\r\n", "invalid status");
        assert_err(b"HTTP/1.1 600 High\r\n\r\n", "invalid status");
        assert_err(b"HTTP/1.1 999 High\r\n\r\n", "invalid status");
        assert_err(b"HTTP/1.1 20 OK\r\n\r\n", "invalid status line");
        assert_err(b"HTTP/1.1 2000 OK\r\n\r\n", "invalid status line");
        assert_err(b"HTTP/1.1  200 OK\r\n\r\n", "invalid status line");
        assert_err(b"HTTP/1.1 200 O\x01K\r\n\r\n", "invalid status line");
        assert_err(b"HTTP/1.1 200 OK\rX\r\n\r\n", "invalid status line");
        assert_err(b"HTTP/2.0 200 OK\r\n\r\n", "invalid http version");
        assert_err(b"HTTP/1.1200 OK\r\n\r\n", "invalid http version");
        assert_err(b"ICY 200 OK\r\n\r\n", "invalid http version");
        assert_err(b"HTTP/1.1 200 OK\r\n", "incomplete response head");
        assert_err(
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            "bare LF in head",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\n",
            "bare LF in head",
        );
    }

    #[test]
    fn header_errors() {
        assert_err(
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "obs-fold in header",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\n X: a\r\nContent-Length: 0\r\n\r\n",
            "obs-fold in header",
        );
        assert_err(b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "invalid header name");
        assert_err(
            b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n",
            "invalid header value",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            "invalid header value",
        );
        let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_err(&buf, "too many headers");
    }

    #[test]
    fn framing_rules() {
        let cases: &[(&[u8], Method, ResponseFraming)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Method::Head,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Head,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Method::Post,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Method::Get,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                Method::Get,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::Get,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                Method::Get,
                ResponseFraming::None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Get,
                ResponseFraming::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Method::Get,
                ResponseFraming::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Method::Get,
                ResponseFraming::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::Get,
                ResponseFraming::UntilClose,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Method::Get,
                ResponseFraming::UntilClose,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::Get,
                ResponseFraming::Length(0),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                Method::Post,
                ResponseFraming::Length(3),
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::Get,
                ResponseFraming::UntilClose,
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\n",
                Method::Get,
                ResponseFraming::UntilClose,
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n",
                Method::Delete,
                ResponseFraming::Length(9),
            ),
        ];
        for (buf, method, framing) in cases {
            let h = parse_m(buf, *method)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(buf)));
            assert_eq!(h.framing, *framing, "{}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn framing_errors() {
        assert_err(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting content-length",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "invalid content-length",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "invalid content-length",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both content-length and transfer-encoding",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "invalid transfer-encoding",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
            "invalid transfer-encoding",
        );
        assert_err(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n",
            "invalid transfer-encoding",
        );
        assert_err(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "transfer-encoding in http/1.0",
        );
        // Invalid framing headers are refused even where the response has no body.
        match parse_m(
            b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
            Method::Get,
        ) {
            Err(e) => assert_eq!(e.reason, "invalid content-length"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn reusable_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n",
                true,
            ),
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", false),
            (b"HTTP/1.1 204 No Content\r\n\r\n", true),
        ];
        for (buf, reusable) in cases {
            assert_eq!(
                parse(buf).unwrap().reusable(),
                *reusable,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn hop_by_hop_marking() {
        let buf =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
X-Internal: 1\r\nContent-Length: 0\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n";
        // (CL with TE is refused; rebuild without CL.)
        assert!(parse(buf).is_err());
        let buf = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal, content-length\r\nKeep-Alive: timeout=5\r\n\
X-Internal: 1\r\nContent-Length: 0\r\nUpgrade: h2c\r\nSet-Cookie: a=b\r\n\r\n";
        let h = parse(buf).unwrap();
        let hop: Vec<&[u8]> = h
            .headers
            .iter()
            .filter(|x| x.hop_by_hop)
            .map(|x| x.name.of(buf))
            .collect();
        assert_eq!(
            hop,
            [&b"Connection"[..], b"Keep-Alive", b"X-Internal", b"Upgrade"]
        );
        assert!(h.connection.keep_alive);
        assert!(!h.connection.close);
    }

    #[test]
    fn scanner_then_parser_at_every_split() {
        let messages: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.0 302 Found\r\nLocation: /x\r\nSet-Cookie: a=b; Path=/\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        let limits = HeadLimits::default();
        for msg in messages {
            let end = msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut scanner = HeadScanner::default();
            for n in 1..=msg.len() {
                let r = scanner.scan(&msg[..n], &limits).unwrap();
                assert_eq!(r, if n < end { None } else { Some(end) }, "prefix {n}");
            }
            let mut head = ResponseHead::with_capacity(2);
            parse_response(msg, &limits, Method::Get, &mut head).unwrap();
            assert_eq!(head.head_len, end);
            for n in 0..end {
                assert!(parse_response(&msg[..n], &limits, Method::Get, &mut head).is_err());
            }
        }
    }
}
