//! Request heads: strict parsing with httparse, validation against smuggling, and body framing.

use super::head::{ConnectionOptions, HeadLimits, Header, Method, Span, Version};
use super::HttpError;

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
    /// `Expect: 100-continue` present.
    pub expect_continue: bool,
    /// A protocol upgrade was asked (`Connection: upgrade` plus an `Upgrade` header, HTTP/1.1, no body).
    pub upgrade: bool,
}

impl RequestHead {
    /// An empty head whose header list can hold `max_headers` without growing.
    pub fn with_capacity(max_headers: usize) -> Self {
        todo!()
    }

    /// Whether the client connection may stay open after this request (before any server decision).
    pub fn keep_alive(&self) -> bool {
        todo!()
    }

    /// The first header with this name (ASCII case-insensitive), as its value bytes.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        todo!()
    }
}

/// Parses and validates the complete request head `buf[..head_len]` (as found by `HeadScanner`) into
/// `head`. Every refusal carries the status to answer (400, 431, 501).
pub fn parse_request(buf: &[u8], limits: &HeadLimits, head: &mut RequestHead) -> Result<(), HttpError> {
    todo!()
}
