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
        Span { start: start as u32, end: end as u32 }
    }
    /// The bytes this span covers in `buf`.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
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
        todo!()
    }
    /// RFC 9110 §9.2.2 idempotent methods: safe to retry when no response byte was received.
    pub fn is_idempotent(self) -> bool {
        todo!()
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
    Other,
}

impl HeaderKind {
    /// Classifies a header name (ASCII case-insensitive).
    pub fn from_name(name: &[u8]) -> HeaderKind {
        todo!()
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
        HeadLimits { max_head_size: 32 * 1024, max_headers: 100 }
    }
}

/// Finds where a head ends as bytes arrive, without rescanning what it has already seen, and refuses a bare
/// LF line ending as soon as it appears. Leading empty lines (`\r\n`) before a request line are tolerated and
/// counted in the head.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    scanned: usize,
}

impl HeadScanner {
    /// Forget progress, for the next message on the same connection.
    pub fn reset(&mut self) {
        self.scanned = 0;
    }
    /// `Ok(Some(n))`: the head is `buf[..n]` (through the empty line). `Ok(None)`: incomplete, call again
    /// with more bytes (the same prefix plus new ones). Errors: bare LF (400), or no end within
    /// `limits.max_head_size` bytes (431).
    pub fn scan(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HttpError> {
        todo!()
    }
}
