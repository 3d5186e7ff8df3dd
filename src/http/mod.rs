//! HTTP/1.x: strict head parsing and validation, body framing, header rewriting and canned answers.
//!
//! Everything here works on byte buffers owned by the caller and records *offsets* (`Span`) into them, so a
//! parsed head costs no allocation and headers are written out again straight from the original bytes.

pub mod canned;
pub mod chunked;
pub mod error;
pub mod head;
pub mod request;
pub mod response;
pub mod rewrite;

pub use chunked::ChunkedDecoder;
pub use error::HttpError;
pub use head::{
    ConnectionOptions, HeadLimits, HeadScanner, Header, HeaderKind, Method, Span, Version,
};
pub use request::{BodyFraming, RequestHead, parse_request};
pub use response::{ResponseFraming, ResponseHead, parse_response};
pub use rewrite::{
    ForwardContext, ResponseOptions, end_head, write_request_head, write_response_head,
};
