//! Writes heads out again for the other side: hop-by-hop fields removed, forwarding fields set.

use super::request::RequestHead;
use super::response::ResponseHead;
use std::net::IpAddr;

/// Facts about the client connection a forwarded request carries.
#[derive(Debug, Clone, Copy)]
pub struct ForwardContext {
    pub client_ip: IpAddr,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
    /// Keep and extend the client's own forwarding headers instead of replacing them.
    pub trust_forwarded: bool,
}

/// What the balancer decided about the client connection, reflected in the response head.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseOptions {
    /// Add `Connection: close`: the client connection ends after this response.
    pub close: bool,
    /// HTTP/1.0 client kept alive: add `Connection: keep-alive`.
    pub keep_alive_http10: bool,
    /// A `101 Switching Protocols` to an upgrade request: keep `Upgrade` and send `Connection: upgrade`.
    pub upgrade: bool,
}

/// Appends the request head for the backend to `out`, without the final empty line (call `end_head`):
/// request line (absolute-form reduced to origin-form), every header except hop-by-hop ones and, unless
/// trusted, the client's own forwarding headers; then `X-Forwarded-For`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host`; and `Connection: upgrade` with `Upgrade` for an upgrade request.
pub fn write_request_head(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, ctx: &ForwardContext) {
    todo!()
}

/// Appends the response head for the client to `out`, without the final empty line (call `end_head`).
pub fn write_response_head(out: &mut Vec<u8>, buf: &[u8], head: &ResponseHead, opts: &ResponseOptions) {
    todo!()
}

/// Appends one header line `name: value\r\n`.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    todo!()
}

/// Appends the empty line that ends a head.
pub fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}
