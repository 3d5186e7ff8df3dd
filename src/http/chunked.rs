//! Chunked transfer coding: validates framing as bytes stream through, without copying them.

use super::HttpError;

/// Walks a chunked body as it arrives and says where it ends. The bytes themselves are forwarded verbatim
/// by the caller; this only proves their framing is valid (strict hex sizes without overflow, bounded chunk
/// extensions, CRLF after data, bounded trailers) so a backend never sees a body it would frame differently.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    // private state machine
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        todo!()
    }

    /// Back to the start, for the next message.
    pub fn reset(&mut self) {
        todo!()
    }

    /// Consumes a prefix of `input`. Returns `(consumed, done)`: `consumed` bytes belong to this body;
    /// `done` means the last chunk, trailers and the final CRLF were all seen, and bytes after `consumed`
    /// belong to the next message. Chunk data is skipped in O(1), not byte by byte. Errors are 400s.
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, bool), HttpError> {
        todo!()
    }

    /// Payload bytes (chunk data, excluding framing) seen so far.
    pub fn payload_len(&self) -> u64 {
        todo!()
    }
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}
