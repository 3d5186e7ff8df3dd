//! Chunked transfer coding: validates framing as bytes stream through, without copying them.

use super::HttpError;
use super::head::is_tchar;

/// Most bytes of chunk extensions on one chunk-size line (from the first byte after the size to the CR).
pub const MAX_CHUNK_EXTENSION: usize = 4096;
/// Most bytes of the trailer section (every trailer line and the final CRLF).
pub const MAX_TRAILERS: usize = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    /// In the hex digits of a chunk size.
    Size,
    /// Whitespace (BWS) after the size or a value: only more whitespace or `;` may follow.
    ExtBws,
    /// After `;`: whitespace or the first byte of an extension name.
    ExtAfterSemi,
    ExtName,
    /// Whitespace after a name: only more whitespace or `=` may follow.
    ExtNameBws,
    /// After `=`: whitespace, a token, or a quoted string.
    ExtAfterEq,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After the closing quote.
    ExtAfterQuote,
    /// CR of the size line seen, LF expected.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
    Failed,
}

/// Walks a chunked body as it arrives and says where it ends. The bytes themselves are forwarded verbatim
/// by the caller; this only proves their framing is valid (strict hex sizes without overflow, bounded chunk
/// extensions, CRLF after data, bounded trailers) so a backend never sees a body it would frame differently.
///
/// Grammar (RFC 9112 §7.1), strictly: `chunk-size` is 1 to 16 hex digits; chunk extensions are
/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`, at most `MAX_CHUNK_EXTENSION` bytes;
/// every line ends in CRLF; trailer fields are `name ":" OWS value` lines (no obs-fold), at most
/// `MAX_TRAILERS` bytes in all.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Hex digits read of the current size.
    digits: u8,
    /// The current chunk's size while reading it, then the data bytes left in it.
    remaining: u64,
    /// Bytes of chunk extensions on the current size line.
    ext_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
    payload: u64,
    error: Option<HttpError>,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            digits: 0,
            remaining: 0,
            ext_len: 0,
            trailer_len: 0,
            payload: 0,
            error: None,
        }
    }

    /// Back to the start, for the next message.
    pub fn reset(&mut self) {
        *self = ChunkedDecoder::new();
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes a prefix of `input`. Returns `(consumed, done)`: `consumed` bytes belong to this body;
    /// `done` means the last chunk, trailers and the final CRLF were all seen, and bytes after `consumed`
    /// belong to the next message. Chunk data is skipped in O(1), not byte by byte. Errors are 400s; once
    /// refused, the decoder keeps refusing until `reset`.
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, bool), HttpError> {
        match self.state {
            State::Done => return Ok((0, true)),
            State::Failed => {
                return Err(self
                    .error
                    .unwrap_or(HttpError::bad_request("invalid chunk framing")));
            }
            _ => {}
        }
        let mut pos = 0;
        while pos < input.len() {
            if self.state == State::Data {
                let avail = (input.len() - pos) as u64;
                let n = self.remaining.min(avail);
                pos += n as usize;
                self.remaining -= n;
                self.payload = self.payload.saturating_add(n);
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let Some(&b) = input.get(pos) else { break };
            pos += 1;
            if let Err(reason) = self.step(b) {
                let e = HttpError::bad_request(reason);
                self.state = State::Failed;
                self.error = Some(e);
                return Err(e);
            }
            if self.state == State::Done {
                return Ok((pos, true));
            }
        }
        Ok((pos, false))
    }

    /// Payload bytes (chunk data, excluding framing) seen so far.
    pub fn payload_len(&self) -> u64 {
        self.payload
    }

    /// One byte of framing (anything but chunk data).
    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        use State::*;
        const FRAMING: &str = "invalid chunk framing";
        const SIZE: &str = "invalid chunk size";
        const EXT: &str = "invalid chunk extension";
        const TRAILER: &str = "invalid trailer";

        if matches!(
            self.state,
            ExtBws
                | ExtAfterSemi
                | ExtName
                | ExtNameBws
                | ExtAfterEq
                | ExtToken
                | ExtQuoted
                | ExtQuotedEscape
                | ExtAfterQuote
        ) && b != b'\r'
        {
            self.ext_len += 1;
            if self.ext_len > MAX_CHUNK_EXTENSION {
                return Err("chunk extension too long");
            }
        }
        if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf
        ) {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILERS {
                return Err("trailers too large");
            }
        }
        let ws = b == b' ' || b == b'\t';
        self.state = match self.state {
            SizeStart | Size => match hex_value(b) {
                Some(d) => {
                    if self.digits == 16 {
                        return Err(SIZE);
                    }
                    self.digits += 1;
                    self.remaining = (self.remaining << 4) | u64::from(d);
                    Size
                }
                None if self.state == SizeStart => {
                    return Err(if b == b'\n' { FRAMING } else { SIZE });
                }
                None if ws => {
                    self.ext_len = 1;
                    ExtBws
                }
                None if b == b';' => {
                    self.ext_len = 1;
                    ExtAfterSemi
                }
                None if b == b'\r' => SizeLf,
                None if b == b'\n' => return Err(FRAMING),
                None => return Err(SIZE),
            },
            ExtBws => match b {
                b' ' | b'\t' => ExtBws,
                b';' => ExtAfterSemi,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            ExtAfterSemi => match b {
                b' ' | b'\t' => ExtAfterSemi,
                _ if is_tchar(b) => ExtName,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            ExtName => match b {
                _ if is_tchar(b) => ExtName,
                b' ' | b'\t' => ExtNameBws,
                b'=' => ExtAfterEq,
                b';' => ExtAfterSemi,
                b'\r' => SizeLf,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            ExtNameBws => match b {
                b' ' | b'\t' => ExtNameBws,
                b'=' => ExtAfterEq,
                b';' => ExtAfterSemi,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            ExtAfterEq => match b {
                b' ' | b'\t' => ExtAfterEq,
                b'"' => ExtQuoted,
                _ if is_tchar(b) => ExtToken,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            ExtToken => match b {
                _ if is_tchar(b) => ExtToken,
                b' ' | b'\t' => ExtBws,
                b';' => ExtAfterSemi,
                b'\r' => SizeLf,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            ExtQuoted => match b {
                b'"' => ExtAfterQuote,
                b'\\' => ExtQuotedEscape,
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => ExtQuoted,
                _ => return Err(EXT),
            },
            ExtQuotedEscape => match b {
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => ExtQuoted,
                _ => return Err(EXT),
            },
            ExtAfterQuote => match b {
                b' ' | b'\t' => ExtBws,
                b';' => ExtAfterSemi,
                b'\r' => SizeLf,
                b'\n' => return Err(FRAMING),
                _ => return Err(EXT),
            },
            SizeLf => {
                if b != b'\n' {
                    return Err(FRAMING);
                }
                self.digits = 0;
                self.ext_len = 0;
                if self.remaining == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            DataCr => {
                if b != b'\r' {
                    return Err(FRAMING);
                }
                DataLf
            }
            DataLf => {
                if b != b'\n' {
                    return Err(FRAMING);
                }
                self.remaining = 0;
                SizeStart
            }
            TrailerStart => match b {
                b'\r' => EndLf,
                b'\n' => return Err(FRAMING),
                _ if is_tchar(b) => TrailerName,
                _ => return Err(TRAILER),
            },
            TrailerName => match b {
                _ if is_tchar(b) => TrailerName,
                b':' => TrailerValue,
                b'\n' => return Err(FRAMING),
                _ => return Err(TRAILER),
            },
            TrailerValue => match b {
                b'\r' => TrailerLf,
                b'\n' => return Err(FRAMING),
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => TrailerValue,
                _ => return Err(TRAILER),
            },
            TrailerLf => {
                if b != b'\n' {
                    return Err(FRAMING);
                }
                TrailerStart
            }
            EndLf => {
                if b != b'\n' {
                    return Err(FRAMING);
                }
                Done
            }
            // Handled by `advance`.
            Data | Done | Failed => self.state,
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of the given sizes (the rest at once), as a caller appending to a buffer
    /// would (the fuzz targets' feeder); a body that does not end within `input` is an error here.
    fn feed_in(input: &[u8], pieces: &[usize]) -> Result<(usize, u64), HttpError> {
        match crate::fuzzing::feed(input, pieces)? {
            (consumed, true, payload) => Ok((consumed, payload)),
            (_, false, _) => Err(HttpError::bad_request("incomplete")),
        }
    }

    fn whole(input: &[u8]) -> Result<(usize, u64), HttpError> {
        feed_in(input, &[])
    }

    fn byte_by_byte(input: &[u8]) -> Result<(usize, u64), HttpError> {
        feed_in(input, &vec![1; input.len()])
    }

    /// Same result whole, byte by byte, and split in two at every position.
    fn all_ways(input: &[u8]) -> Result<(usize, u64), HttpError> {
        let expected = whole(input);
        assert_eq!(
            byte_by_byte(input),
            expected,
            "byte by byte, {:?}",
            String::from_utf8_lossy(input)
        );
        for split in 0..=input.len() {
            assert_eq!(feed_in(input, &[split]), expected, "split at {split}");
        }
        for a in 0..input.len().min(24) {
            for b in 0..input.len().min(24) {
                assert_eq!(feed_in(input, &[a, b]), expected, "split at {a}+{b}");
            }
        }
        expected
    }

    #[track_caller]
    fn assert_valid(input: &[u8], body_len: usize, payload: u64) {
        assert_eq!(
            all_ways(input),
            Ok((body_len, payload)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[track_caller]
    fn assert_invalid(input: &[u8], reason: &'static str) {
        assert_eq!(
            all_ways(input),
            Err(HttpError::bad_request(reason)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn simple_bodies() {
        assert_valid(b"0\r\n\r\n", 5, 0);
        assert_valid(b"5\r\nhello\r\n0\r\n\r\n", 15, 5);
        assert_valid(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 26, 11);
        assert_valid(b"A\r\n0123456789\r\n0\r\n\r\n", 20, 10);
        assert_valid(b"a\r\n0123456789\r\n000\r\n\r\n", 22, 10);
        assert_valid(b"0000000000000005\r\nhello\r\n0\r\n\r\n", 30, 5);
        // Data may hold CR, LF and anything else.
        assert_valid(b"4\r\n\r\n\r\n\r\n0\r\n\r\n", 14, 4);
    }

    #[test]
    fn next_message_not_consumed() {
        let body = b"3\r\nabc\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_valid(&input, body.len(), 3);
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.advance(&input), Ok((body.len(), true)));
        // Done is sticky.
        assert_eq!(d.advance(b"more"), Ok((0, true)));
        d.reset();
        assert_eq!(d.payload_len(), 0);
        assert_eq!(d.advance(body), Ok((body.len(), true)));
        assert_eq!(d.payload_len(), 3);
    }

    #[test]
    fn extensions() {
        assert_valid(b"5;foo\r\nhello\r\n0\r\n\r\n", 19, 5);
        assert_valid(b"5;foo=bar\r\nhello\r\n0;last\r\n\r\n", 28, 5);
        assert_valid(b"5 ; foo = bar ;baz\r\nhello\r\n0\r\n\r\n", 32, 5);
        assert_valid(b"5\t;foo=\"a b;c\\\"d\"\r\nhello\r\n0\r\n\r\n", 31, 5);
        assert_valid(b"5;a=\"\";b=c\r\nhello\r\n0\r\n\r\n", 24, 5);
        assert_invalid(b"5;\r\nhello\r\n0\r\n\r\n", "invalid chunk extension");
        assert_invalid(b"5 \r\nhello\r\n0\r\n\r\n", "invalid chunk extension");
        assert_invalid(b"5;foo \r\nhello\r\n0\r\n\r\n", "invalid chunk extension");
        assert_invalid(b"5;foo=\r\nhello\r\n0\r\n\r\n", "invalid chunk extension");
        assert_invalid(
            b"5;foo=a b\r\nhello\r\n0\r\n\r\n",
            "invalid chunk extension",
        );
        assert_invalid(
            b"5;foo=\"a\r\nhello\r\n0\r\n\r\n",
            "invalid chunk extension",
        );
        assert_invalid(
            b"5;foo=\"a\"b\r\nhello\r\n0\r\n\r\n",
            "invalid chunk extension",
        );
        assert_invalid(b"5;f(o)\r\nhello\r\n0\r\n\r\n", "invalid chunk extension");
        assert_invalid(
            b"5;foo\x00\r\nhello\r\n0\r\n\r\n",
            "invalid chunk extension",
        );
        assert_invalid(b"5;foo\nhello\r\n0\r\n\r\n", "invalid chunk framing");
    }

    #[test]
    fn extension_length_limit() {
        let mut ok = b"1;x=".to_vec();
        ok.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXTENSION - 3));
        ok.extend_from_slice(b"\r\nZ\r\n0\r\n\r\n");
        assert_eq!(whole(&ok), Ok((ok.len(), 1)));
        assert_eq!(byte_by_byte(&ok), Ok((ok.len(), 1)));
        let mut too_long = b"1;x=".to_vec();
        too_long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXTENSION - 2));
        too_long.extend_from_slice(b"\r\nZ\r\n0\r\n\r\n");
        assert_eq!(
            whole(&too_long),
            Err(HttpError::bad_request("chunk extension too long"))
        );
        assert_eq!(
            byte_by_byte(&too_long),
            Err(HttpError::bad_request("chunk extension too long"))
        );
        // The limit is per line, not per body.
        let mut many = Vec::new();
        for _ in 0..4 {
            many.extend_from_slice(b"1;x=");
            many.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXTENSION - 3));
            many.extend_from_slice(b"\r\nZ\r\n");
        }
        many.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(whole(&many), Ok((many.len(), 4)));
    }

    #[test]
    fn sizes() {
        assert_invalid(b"\r\n\r\n", "invalid chunk size");
        assert_invalid(b"g\r\n", "invalid chunk size");
        assert_invalid(b"-1\r\n", "invalid chunk size");
        assert_invalid(b"+1\r\n", "invalid chunk size");
        assert_invalid(b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size");
        assert_invalid(b" 5\r\nhello\r\n0\r\n\r\n", "invalid chunk size");
        assert_invalid(b";a\r\n", "invalid chunk size");
        // 17 digits, even leading zeros, are refused; 16 are not.
        assert_invalid(
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            "invalid chunk size",
        );
        assert_invalid(b"10000000000000000\r\n", "invalid chunk size");
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.advance(b"ffffffffffffffff\r\nabc"), Ok((21, false)));
        assert_eq!(d.payload_len(), 3);
        assert_eq!(d.remaining, u64::MAX - 3);
    }

    #[test]
    fn framing_errors() {
        assert_invalid(b"5\nhello\r\n0\r\n\r\n", "invalid chunk framing");
        assert_invalid(b"5\r\rhello\r\n0\r\n\r\n", "invalid chunk framing");
        assert_invalid(b"5\r\nhello\n0\r\n\r\n", "invalid chunk framing");
        assert_invalid(b"5\r\nhelloX\r\n0\r\n\r\n", "invalid chunk framing");
        assert_invalid(b"5\r\nhello\r\r0\r\n\r\n", "invalid chunk framing");
        assert_invalid(b"5\r\nhello\r\n0\n\r\n", "invalid chunk framing");
        assert_invalid(b"5\r\nhello\r\n0\r\n\n", "invalid chunk framing");
        assert_invalid(b"5\r\nhello\r\n0\r\n\rX", "invalid chunk framing");
        assert_invalid(b"\n", "invalid chunk framing");
        // Errors are sticky.
        let mut d = ChunkedDecoder::new();
        let e = d.advance(b"5\r\nhelloX").unwrap_err();
        assert_eq!(d.advance(b"\r\n0\r\n\r\n"), Err(e));
    }

    #[test]
    fn trailers() {
        assert_valid(b"0\r\nX-Sum: abc\r\n\r\n", 17, 0);
        assert_valid(
            b"3\r\nabc\r\n0\r\nA: 1\r\nB:\r\nC:\tx y \r\n\r\nnext",
            32,
            3,
        );
        assert_valid(b"0\r\nX: caf\xc3\xa9\r\n\r\n", 15, 0);
        assert_invalid(b"0\r\nX-Sum abc\r\n\r\n", "invalid trailer");
        assert_invalid(b"0\r\nX-Sum : abc\r\n\r\n", "invalid trailer");
        assert_invalid(b"0\r\n: abc\r\n\r\n", "invalid trailer");
        assert_invalid(b"0\r\nA: 1\r\n b\r\n\r\n", "invalid trailer");
        assert_invalid(b"0\r\nA: 1\x00\r\n\r\n", "invalid trailer");
        assert_invalid(b"0\r\nA: 1\x7f\r\n\r\n", "invalid trailer");
        assert_invalid(b"0\r\nA: 1\n\r\n", "invalid chunk framing");
        assert_invalid(b"0\r\nA: 1\r\r\n", "invalid chunk framing");
        assert_invalid(b"0\r\nA\n", "invalid chunk framing");
    }

    #[test]
    fn trailer_size_limit() {
        let line = b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"; // 62 bytes
        assert_eq!(line.len(), 62);
        let fits = (MAX_TRAILERS - 2) / line.len();
        let build = |lines: usize, pad: usize| {
            let mut v = b"0\r\n".to_vec();
            for _ in 0..lines {
                v.extend_from_slice(line);
            }
            v.extend_from_slice(b"Y: ");
            v.extend(std::iter::repeat_n(b'b', pad));
            v.extend_from_slice(b"\r\n\r\n");
            v
        };
        // Exactly MAX_TRAILERS bytes after the last-chunk line.
        let used = fits * line.len() + 5 + 2;
        let exact = build(fits, MAX_TRAILERS - used);
        assert_eq!(exact.len() - 3, MAX_TRAILERS);
        assert_eq!(whole(&exact), Ok((exact.len(), 0)));
        let over = build(fits, MAX_TRAILERS - used + 1);
        assert_eq!(
            whole(&over),
            Err(HttpError::bad_request("trailers too large"))
        );
        assert_eq!(
            byte_by_byte(&over),
            Err(HttpError::bad_request("trailers too large"))
        );
    }

    #[test]
    fn large_chunk_data_skipped_in_place() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.advance(b"100000\r\n"), Ok((8, false)));
        let data = vec![0u8; 0x100000];
        assert_eq!(d.advance(&data[..1000]), Ok((1000, false)));
        assert_eq!(d.advance(&data[1000..]), Ok((0x100000 - 1000, false)));
        assert_eq!(d.payload_len(), 0x100000);
        assert_eq!(d.advance(b"\r\n0\r\n\r\nrest"), Ok((7, true)));
    }

    #[test]
    fn empty_input() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.advance(b""), Ok((0, false)));
        assert_eq!(d.advance(b"0\r\n"), Ok((3, false)));
        assert_eq!(d.advance(b""), Ok((0, false)));
        assert_eq!(d.advance(b"\r\n"), Ok((2, true)));
    }
}
