//! Response heads from backends: strict parsing and body framing (RFC 9112 §6.3).

use super::head::{ConnectionOptions, HeadLimits, Header, Method, Span, Version};
use super::HttpError;

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
    pub reason: Span,
    pub headers: Vec<Header>,
    pub head_len: usize,
    pub framing: ResponseFraming,
    pub connection: ConnectionOptions,
}

impl ResponseHead {
    pub fn with_capacity(max_headers: usize) -> Self {
        todo!()
    }

    /// Whether the backend connection may be reused after this response's body.
    pub fn reusable(&self) -> bool {
        todo!()
    }

    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        todo!()
    }
}

/// Parses the complete response head `buf[..head_len]` to a request made with `method`. Errors are the
/// backend's fault; the caller answers the client 502.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    method: Method,
    head: &mut ResponseHead,
) -> Result<(), HttpError> {
    todo!()
}
