//! Pieces shared by request and response heads: spans, versions, methods, header kinds, the end-of-head
//! scanner and limits.

use super::HttpError;

/// A byte range `start..end` into the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        debug_assert!(start <= end);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    /// The bytes this span covers in `buf`. A span that does not fit `buf` (a caller passing another
    /// buffer than the one parsed) yields an empty slice rather than panicking.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// HTTP version of a message (only 1.0 and 1.1 are accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

/// Request method. Unknown but well-formed methods are `Other` and are forwarded as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Connect,
    Other,
}

impl Method {
    /// Classifies a method token (case-sensitive, as RFC 9110 says methods are).
    pub fn from_token(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
    /// RFC 9110 §9.2.2 idempotent methods: safe to retry when no response byte was received.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// Header names tether acts on, recognised once at parse time (ASCII case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XForwardedPort,
    Forwarded,
    XRealIp,
    Cookie,
    SetCookie,
    /// `X-Tether-*`: tether's own namespace (the identity it passes to backends: `X-Tether-User`,
    /// `X-Tether-Tenant`, `X-Tether-Roles`, ...). Never forwarded from a client: a backend that trusts
    /// these must only ever see tether's.
    TetherReserved,
    Other,
}

impl HeaderKind {
    /// Classifies a header name (ASCII case-insensitive). Switches on the length first, so most names
    /// are told apart without comparing a byte.
    pub fn from_name(name: &[u8]) -> HeaderKind {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => HeaderKind::Te,
            4 if is(b"host") => HeaderKind::Host,
            6 if is(b"cookie") => HeaderKind::Cookie,
            6 if is(b"expect") => HeaderKind::Expect,
            7 if is(b"upgrade") => HeaderKind::Upgrade,
            7 if is(b"trailer") => HeaderKind::Trailer,
            9 if is(b"x-real-ip") => HeaderKind::XRealIp,
            9 if is(b"forwarded") => HeaderKind::Forwarded,
            10 if is(b"connection") => HeaderKind::Connection,
            10 if is(b"keep-alive") => HeaderKind::KeepAlive,
            10 if is(b"set-cookie") => HeaderKind::SetCookie,
            14 if is(b"content-length") => HeaderKind::ContentLength,
            15 if is(b"x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if is(b"x-forwarded-host") => HeaderKind::XForwardedHost,
            16 if is(b"x-forwarded-port") => HeaderKind::XForwardedPort,
            16 if is(b"proxy-connection") => HeaderKind::ProxyConnection,
            17 if is(b"transfer-encoding") => HeaderKind::TransferEncoding,
            17 if is(b"x-forwarded-proto") => HeaderKind::XForwardedProto,
            n if n > 9 && name[..9].eq_ignore_ascii_case(b"x-tether-") => {
                HeaderKind::TetherReserved
            }
            _ => HeaderKind::Other,
        }
    }

    /// The fixed hop-by-hop set (RFC 9110 §7.6.1): removed when forwarding whatever `Connection` says.
    /// `Transfer-Encoding` is deliberately not in it: chunked bodies are forwarded verbatim with their
    /// framing header.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::Trailer
                | HeaderKind::Upgrade
        )
    }
}

/// One header field of a parsed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub name: Span,
    /// The value without leading and trailing whitespace.
    pub value: Span,
    pub kind: HeaderKind,
    /// Connection-specific: removed when the message is forwarded (the fixed hop-by-hop set, plus every
    /// header named in a `Connection` header).
    pub hop_by_hop: bool,
}

/// Tokens of the `Connection` header(s) that change how the connection is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

/// Size limits applied while parsing a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head in bytes, start line to the empty line inclusive.
    pub max_head_size: usize,
    /// Most header fields (at most `MAX_HEADERS_CAP`).
    pub max_headers: usize,
}

/// Upper bound for `HeadLimits::max_headers` (the parser's header array lives on the stack).
pub const MAX_HEADERS_CAP: usize = 512;

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_size: 32 * 1024,
            max_headers: 100,
        }
    }
}

/// Finds where a head ends as bytes arrive, without rescanning what it has already seen, and refuses a bare
/// LF line ending as soon as it appears. Leading empty lines (`\r\n`) before a request line are tolerated and
/// counted in the head.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    /// Bytes of the buffer already looked at.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// A non-empty line (the start line) has been seen, so the next empty line ends the head.
    in_head: bool,
    /// Length of the head once found (0: not found yet).
    found: usize,
}

impl HeadScanner {
    /// Forget progress, for the next message on the same connection.
    pub fn reset(&mut self) {
        *self = HeadScanner::default();
    }
    /// `Ok(Some(n))`: the head is `buf[..n]` (through the empty line). `Ok(None)`: incomplete, call again
    /// with more bytes (the same prefix plus new ones). Errors: bare LF (400), or no end within
    /// `limits.max_head_size` bytes (431; the caller answers 502 instead for a response head). Once the end
    /// is found, further calls return it again until `reset`.
    pub fn scan(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HttpError> {
        if self.found != 0 {
            return Ok(Some(self.found));
        }
        if self.scanned > buf.len() {
            // Not the same buffer grown: start over rather than trust stale offsets.
            self.reset();
        }
        // Bytes past the limit cannot belong to an acceptable head: never look at them, so the verdict
        // does not depend on how much arrived at once.
        let window = buf.get(..limits.max_head_size).unwrap_or(buf);
        let mut pos = self.scanned;
        while let Some(rel) = window
            .get(pos..)
            .and_then(|rest| memchr::memchr(b'\n', rest))
        {
            let lf = pos + rel;
            if lf == 0 || buf.get(lf - 1) != Some(&b'\r') {
                self.scanned = lf;
                return Err(HttpError::bad_request("bare LF in head"));
            }
            if lf == self.line_start + 1 {
                // An empty line: either a tolerated leading one, or the end of the head.
                if self.in_head {
                    let n = lf + 1;
                    if n > limits.max_head_size {
                        return Err(HttpError::too_large("request head too large"));
                    }
                    self.scanned = n;
                    self.found = n;
                    return Ok(Some(n));
                }
            } else {
                self.in_head = true;
            }
            self.line_start = lf + 1;
            pos = lf + 1;
        }
        self.scanned = window.len();
        if buf.len() >= limits.max_head_size {
            return Err(HttpError::too_large("request head too large"));
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers shared by request and response parsing.

/// RFC 9110 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Optional whitespace (SP / HTAB) trimmed from both ends.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The elements of a comma-separated list, OWS trimmed, empty elements included.
pub(crate) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// Offset of `part` (a sub-slice handed back by httparse) within `buf`.
pub(crate) fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    let off = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    debug_assert!(off <= buf.len(), "slice not inside the parsed buffer");
    off.min(buf.len())
}

/// The span of `part` (a sub-slice of `buf`).
pub(crate) fn span_in(buf: &[u8], part: &[u8]) -> Span {
    let start = offset_in(buf, part);
    Span::new(start, (start + part.len()).min(buf.len()))
}

/// Bytes of leading `\r\n` empty lines.
pub(crate) fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    while buf.get(n..n + 2) == Some(b"\r\n") {
        n += 2;
    }
    n
}

/// Whether some `\n` in `head` is not preceded by `\r`.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head.get(i - 1) != Some(&b'\r'))
}

/// Whether a line of the head (after the start line, before the empty line) begins with SP or HTAB:
/// obs-fold, or whitespace before the first header field. httparse reports both as `HeaderName`.
pub(crate) fn has_obs_fold(buf: &[u8]) -> bool {
    let start = leading_empty_lines(buf);
    let head = buf.get(start..).unwrap_or(&[]);
    for lf in memchr::memchr_iter(b'\n', head) {
        match head.get(lf + 1) {
            Some(b' ' | b'\t') => return true,
            Some(b'\r' | b'\n') | None => return false,
            Some(_) => {}
        }
    }
    false
}

/// Parses one `Content-Length` value: a comma-separated list of equal `1*DIGIT` (at most 19 digits, so no
/// overflow), folded into `acc` which holds the value of earlier `Content-Length` fields.
pub(crate) fn fold_content_length(v: &[u8], acc: &mut Option<u64>) -> Result<(), &'static str> {
    for elem in list_elements(v) {
        if elem.is_empty() || elem.len() > 19 || !elem.iter().all(u8::is_ascii_digit) {
            return Err("invalid content-length");
        }
        let n = elem.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        match *acc {
            Some(prev) if prev != n => return Err("conflicting content-length"),
            _ => *acc = Some(n),
        }
    }
    Ok(())
}

/// What the `Transfer-Encoding` fields of a head say, taken as one list.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TransferCodings {
    pub present: bool,
    /// An empty element, a malformed coding, or `chunked` with parameters.
    pub malformed: bool,
    pub count: u32,
    pub chunked_count: u32,
    pub last_is_chunked: bool,
}

impl TransferCodings {
    pub(crate) fn add_field(&mut self, v: &[u8]) {
        self.present = true;
        for elem in list_elements(v) {
            self.count += 1;
            let (name, has_params) = match memchr::memchr(b';', elem) {
                Some(i) => (trim_ows(elem.get(..i).unwrap_or(&[])), true),
                None => (elem, false),
            };
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                self.malformed = true;
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            if chunked && has_params {
                self.malformed = true;
            }
            if chunked {
                self.chunked_count += 1;
            }
            self.last_is_chunked = chunked;
        }
    }
}

/// What one pass over the header fields found; filled while `Header`s are built.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeaderFacts {
    pub host_count: u32,
    pub host: Option<Span>,
    pub content_length: Option<u64>,
    pub content_length_error: Option<&'static str>,
    pub te: TransferCodings,
    pub connection: ConnectionOptions,
    /// Some `Connection` token names another header (which must then be marked hop-by-hop).
    pub connection_names_headers: bool,
    pub upgrade_present: bool,
    pub expect_continue: bool,
    pub expect_other: bool,
    /// A field named like a framing header with `_` for `-` (`Content_Length`, `transfer_encoding`).
    pub framing_alias: bool,
}

/// Whether `name` is `Content-Length` or `Transfer-Encoding` spelled with underscores. Some backends
/// (CGI-style gateways, a few frameworks) fold `_` into `-`, so such a field could frame the body for them
/// while tether ignores it: refused rather than forwarded.
pub(crate) fn is_framing_alias(name: &[u8]) -> bool {
    let same = |canonical: &[u8]| {
        name.len() == canonical.len()
            && name.contains(&b'_')
            && name
                .iter()
                .zip(canonical)
                .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
    };
    same(b"content-length") || same(b"transfer-encoding")
}

/// Turns httparse's header list into `Header`s (pushed onto `out`, which the caller cleared) and gathers
/// the facts framing and validation need.
pub(crate) fn collect_headers(
    buf: &[u8],
    raw: &[httparse::Header<'_>],
    out: &mut Vec<Header>,
) -> HeaderFacts {
    let mut facts = HeaderFacts::default();
    for h in raw {
        let name = h.name.as_bytes();
        let kind = HeaderKind::from_name(name);
        let value = span_in(buf, h.value);
        out.push(Header {
            name: span_in(buf, name),
            value,
            kind,
            hop_by_hop: kind.is_hop_by_hop(),
        });
        let v = h.value;
        match kind {
            HeaderKind::Host => {
                facts.host_count += 1;
                if facts.host.is_none() {
                    facts.host = Some(value);
                }
            }
            HeaderKind::ContentLength if facts.content_length_error.is_none() => {
                if let Err(e) = fold_content_length(v, &mut facts.content_length) {
                    facts.content_length_error = Some(e);
                }
            }
            HeaderKind::TransferEncoding => facts.te.add_field(v),
            HeaderKind::Connection => {
                for token in list_elements(v) {
                    if token.eq_ignore_ascii_case(b"close") {
                        facts.connection.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        facts.connection.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        facts.connection.upgrade = true;
                    } else if !token.is_empty() {
                        facts.connection_names_headers = true;
                    }
                }
            }
            HeaderKind::Other if is_framing_alias(name) => facts.framing_alias = true,
            HeaderKind::Upgrade => facts.upgrade_present = true,
            HeaderKind::Expect => {
                if v.eq_ignore_ascii_case(b"100-continue") {
                    facts.expect_continue = true;
                } else {
                    facts.expect_other = true;
                }
            }
            _ => {}
        }
    }
    facts
}

/// Marks hop-by-hop every header named by a `Connection` token other than `close`, `keep-alive` and
/// `upgrade`. Fields that frame or route the message (`Host`, `Content-Length`, `Transfer-Encoding`) are
/// never removed this way: a client must not be able to strip them on their way to the backend.
pub(crate) fn mark_connection_named(buf: &[u8], headers: &mut [Header]) {
    for i in 0..headers.len() {
        let Some(conn) = headers.get(i).filter(|h| h.kind == HeaderKind::Connection) else {
            continue;
        };
        for token in list_elements(conn.value.of(buf)) {
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            }
            for h in headers.iter_mut() {
                if !matches!(
                    h.kind,
                    HeaderKind::Host | HeaderKind::ContentLength | HeaderKind::TransferEncoding
                ) && h.name.of(buf).eq_ignore_ascii_case(token)
                {
                    h.hop_by_hop = true;
                }
            }
        }
    }
}

/// The first header called `name` (ASCII case-insensitive), as its value bytes.
pub(crate) fn find_header<'a>(headers: &[Header], buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.of(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_basics_and_out_of_range() {
        let s = Span::new(2, 5);
        assert_eq!(s.of(b"abcdefg"), b"cde");
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.of(b"abc"), b"");
        let bad = Span { start: 5, end: 2 };
        assert_eq!(bad.len(), 0);
        assert!(bad.is_empty());
        assert_eq!(bad.of(b"abcdefg"), b"");
    }

    #[test]
    fn methods() {
        assert_eq!(Method::from_token(b"GET"), Method::Get);
        assert_eq!(Method::from_token(b"HEAD"), Method::Head);
        assert_eq!(Method::from_token(b"POST"), Method::Post);
        assert_eq!(Method::from_token(b"PUT"), Method::Put);
        assert_eq!(Method::from_token(b"DELETE"), Method::Delete);
        assert_eq!(Method::from_token(b"OPTIONS"), Method::Options);
        assert_eq!(Method::from_token(b"PATCH"), Method::Patch);
        assert_eq!(Method::from_token(b"TRACE"), Method::Trace);
        assert_eq!(Method::from_token(b"CONNECT"), Method::Connect);
        assert_eq!(Method::from_token(b"get"), Method::Other);
        assert_eq!(Method::from_token(b"PROPFIND"), Method::Other);
        assert_eq!(Method::from_token(b""), Method::Other);
        for m in [
            Method::Get,
            Method::Head,
            Method::Put,
            Method::Delete,
            Method::Options,
            Method::Trace,
        ] {
            assert!(m.is_idempotent(), "{m:?}");
        }
        for m in [Method::Post, Method::Patch, Method::Connect, Method::Other] {
            assert!(!m.is_idempotent(), "{m:?}");
        }
    }

    #[test]
    fn header_kinds() {
        let cases: &[(&[u8], HeaderKind)] = &[
            (b"Host", HeaderKind::Host),
            (b"HOST", HeaderKind::Host),
            (b"content-length", HeaderKind::ContentLength),
            (b"Transfer-Encoding", HeaderKind::TransferEncoding),
            (b"Connection", HeaderKind::Connection),
            (b"Keep-Alive", HeaderKind::KeepAlive),
            (b"Proxy-Connection", HeaderKind::ProxyConnection),
            (b"TE", HeaderKind::Te),
            (b"Trailer", HeaderKind::Trailer),
            (b"Upgrade", HeaderKind::Upgrade),
            (b"Expect", HeaderKind::Expect),
            (b"X-Forwarded-For", HeaderKind::XForwardedFor),
            (b"x-forwarded-proto", HeaderKind::XForwardedProto),
            (b"X-FORWARDED-HOST", HeaderKind::XForwardedHost),
            (b"X-Forwarded-Port", HeaderKind::XForwardedPort),
            (b"Forwarded", HeaderKind::Forwarded),
            (b"X-Real-IP", HeaderKind::XRealIp),
            (b"Cookie", HeaderKind::Cookie),
            (b"Set-Cookie", HeaderKind::SetCookie),
            (b"Accept", HeaderKind::Other),
            (b"Hosts", HeaderKind::Other),
            (b"Hos", HeaderKind::Other),
            (b"Trailers", HeaderKind::Other),
            (b"", HeaderKind::Other),
            (b"Content-Lengt", HeaderKind::Other),
            (b"Xontent-Length", HeaderKind::Other),
        ];
        for (name, kind) in cases {
            assert_eq!(
                HeaderKind::from_name(name),
                *kind,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn content_length_values() {
        let mut acc = None;
        assert_eq!(fold_content_length(b"42", &mut acc), Ok(()));
        assert_eq!(acc, Some(42));
        assert_eq!(fold_content_length(b"42 , 42,42", &mut acc), Ok(()));
        assert_eq!(
            fold_content_length(b"43", &mut acc),
            Err("conflicting content-length")
        );
        let mut acc = None;
        assert_eq!(
            fold_content_length(b"9999999999999999999", &mut acc),
            Ok(())
        );
        assert_eq!(acc, Some(9_999_999_999_999_999_999));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"1,",
            b",1",
            b"1,,1",
            b"10000000000000000000",
            b"99999999999999999999999",
            b"1.0",
        ] {
            let mut acc = None;
            assert_eq!(
                fold_content_length(bad, &mut acc),
                Err("invalid content-length"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn framing_aliases() {
        for name in [
            &b"Content_Length"[..],
            b"content_length",
            b"Transfer_Encoding",
            b"TRANSFER_ENCODING",
        ] {
            assert!(
                is_framing_alias(name),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
        for name in [
            &b"Content-Length"[..],
            b"Transfer-Encoding",
            b"Content_Lengths",
            b"X_Content_Length",
            b"Content_Type",
            b"",
        ] {
            assert!(
                !is_framing_alias(name),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_obs_fold(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"));
        assert!(has_obs_fold(b"\r\n\r\nGET / HTTP/1.1\r\n\tA: b\r\n\r\n"));
        assert!(!has_obs_fold(b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n c"));
        assert_eq!(leading_empty_lines(b"\r\n\r\nX"), 4);
        assert_eq!(leading_empty_lines(b"\r\r\n"), 0);
    }

    /// The httparse behaviours the checks in this module rely on; if an upgrade changes one, this says so.
    #[test]
    fn httparse_behaviour_relied_on() {
        fn req(buf: &[u8]) -> Result<httparse::Status<usize>, httparse::Error> {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            httparse::Request::new(&mut headers).parse(buf)
        }
        fn target(buf: &[u8]) -> Option<String> {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Request::new(&mut headers);
            r.parse(buf).ok()?;
            r.path.map(str::to_owned)
        }
        use httparse::{Error, Status};
        // Bare LF line endings are accepted (hence `has_bare_lf`).
        assert_eq!(
            req(b"GET / HTTP/1.1\nHost: a\n\n"),
            Ok(Status::Complete(24))
        );
        assert_eq!(req(b"\nGET / HTTP/1.1\r\n\r\n"), Ok(Status::Complete(19)));
        // obs-fold and whitespace before the first field are a header *name* error (hence `has_obs_fold`).
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
            Err(Error::HeaderName)
        );
        assert_eq!(
            req(b"GET / HTTP/1.1\r\n A: b\r\n\r\n"),
            Err(Error::HeaderName)
        );
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nA : b\r\n\r\n"),
            Err(Error::HeaderName)
        );
        // The target may hold `#` and UTF-8 (refused by tether); controls, SP and DEL are token errors.
        assert_eq!(
            target(b"GET /a#b HTTP/1.1\r\n\r\n").as_deref(),
            Some("/a#b")
        );
        assert_eq!(
            target("GET /caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes()).as_deref(),
            Some("/caf\u{e9}")
        );
        assert_eq!(req(b"GET /\x7f HTTP/1.1\r\n\r\n"), Err(Error::Token));
        assert_eq!(req(b"GET /\x01 HTTP/1.1\r\n\r\n"), Err(Error::Token));
        assert_eq!(req(b"GET /\xff HTTP/1.1\r\n\r\n"), Err(Error::Token));
        // Bare CR in a value, and NUL, are value errors.
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"),
            Err(Error::HeaderValue)
        );
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nA: b\x00\r\n\r\n"),
            Err(Error::HeaderValue)
        );
        // A response reason with obs-text comes back empty (hence tether computes the reason span).
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut headers);
        assert!(r.parse(b"HTTP/1.1 200 \xfc\r\n\r\n").is_ok());
        assert_eq!(r.reason, Some(""));
        // Any three digits parse as a status, 000 to 999; tether refuses those outside 100..=599.
        for (line, code) in [
            (&b"HTTP/1.1 000 X\r\n\r\n"[..], 0),
            (b"HTTP/1.1 999 X\r\n\r\n", 999),
        ] {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Response::new(&mut headers);
            assert!(r.parse(line).is_ok());
            assert_eq!(r.code, Some(code));
        }
    }

    fn scan_all(msg: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HttpError> {
        let mut s = HeadScanner::default();
        s.scan(msg, limits)
    }

    #[test]
    fn scanner_finds_end() {
        let l = HeadLimits::default();
        let msg = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(scan_all(msg, &l), Ok(Some(27)));
        assert_eq!(
            scan_all(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", &l),
            Ok(Some(22))
        );
        assert_eq!(scan_all(b"\r\n\r\n", &l), Ok(None));
        assert_eq!(scan_all(b"", &l), Ok(None));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r", &l), Ok(None));
    }

    #[test]
    fn scanner_bare_lf() {
        let l = HeadLimits::default();
        let e = Err(HttpError::bad_request("bare LF in head"));
        assert_eq!(scan_all(b"GET / HTTP/1.1\nHost: a\r\n\r\n", &l), e);
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\n\r\n", &l), e);
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n\n", &l), e);
        assert_eq!(scan_all(b"\n", &l), e);
        assert_eq!(scan_all(b"\r\n\nGET", &l), e);
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\r\nA: b\r\n\n", &l), e);
        // Incrementally: the LF arrives in a later call, its CR in an earlier one.
        let mut s = HeadScanner::default();
        assert_eq!(s.scan(b"GET / HTTP/1.1\r", &l), Ok(None));
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nA: b", &l), Ok(None));
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nA: b\n", &l), e);
    }

    #[test]
    fn scanner_limit() {
        let l = HeadLimits {
            max_head_size: 32,
            max_headers: 10,
        };
        let too_large = Err(HttpError::too_large("request head too large"));
        // Exactly at the limit is fine.
        let head = b"GET / HTTP/1.1\r\nHost: abcdefgh\r\n\r\n";
        assert_eq!(head.len(), 34);
        let l34 = HeadLimits {
            max_head_size: 34,
            ..l
        };
        assert_eq!(scan_all(head, &l34), Ok(Some(34)));
        // One byte over, complete or not, is refused.
        assert_eq!(scan_all(head, &l), too_large);
        assert_eq!(scan_all(&head[..32], &l), too_large);
        assert_eq!(scan_all(&head[..31], &l), Ok(None));
        // Endless leading empty lines count too.
        assert_eq!(scan_all(&[b'\r', b'\n'].repeat(16), &l), too_large);
    }

    #[test]
    fn scanner_incremental_does_not_rescan_and_is_sticky() {
        let l = HeadLimits::default();
        let msg = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let end = msg.len() - 3;
        let mut s = HeadScanner::default();
        for n in 1..=msg.len() {
            let r = s.scan(&msg[..n], &l);
            if n < end {
                assert_eq!(r, Ok(None), "prefix {n}");
                assert_eq!(s.scanned, n);
            } else {
                assert_eq!(r, Ok(Some(end)), "prefix {n}");
            }
        }
        s.reset();
        assert_eq!(s.scan(msg, &l), Ok(Some(end)));
    }

    #[test]
    fn scanner_restarts_on_shorter_buffer() {
        let l = HeadLimits::default();
        let mut s = HeadScanner::default();
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nHost: abc", &l), Ok(None));
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\n\r\n", &l), Ok(Some(18)));
    }
}
