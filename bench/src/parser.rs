//! Incremental HTTP/1.1 response parser.
//!
//! The head is parsed with `httparse` (headers on the stack); the body is then
//! skipped by counting bytes (Content-Length) or by a small byte-level state
//! machine (chunked transfer coding). Nothing is allocated per response.

use crate::cookie::CookieJar;

/// Maximum number of response headers accepted.
const MAX_HEADERS: usize = 64;
/// Maximum size of a response head (status line + headers) in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Maximum length of one trailer line.
const MAX_TRAILER_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed status line or headers (or head larger than [`MAX_HEAD`]).
    Head,
    /// Invalid or conflicting Content-Length.
    ContentLength,
    /// Malformed chunked body.
    Chunk,
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    UntilClose,
    ChunkSize { size: u64, digits: u8, ext: bool },
    ChunkSizeLf { size: u64 },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    Trailer { len: usize },
    TrailerLf { len: usize },
}

const CHUNK_START: State = State::ChunkSize {
    size: 0,
    digits: 0,
    ext: false,
};

#[derive(Debug, Clone)]
pub struct Parser {
    state: State,
    status: u16,
    close: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Parser {
            state: State::Head,
            status: 0,
            close: false,
        }
    }

    pub fn reset(&mut self) {
        *self = Parser::new();
    }

    /// True between responses (nothing of the next response seen yet by the body
    /// machine; a partial head may still be buffered by the caller).
    #[cfg(test)]
    pub fn at_head(&self) -> bool {
        self.state == State::Head
    }

    /// Feed bytes. Returns the number of bytes consumed and, if a response
    /// completed, its summary. Consumption stops right after a completed
    /// response so the caller can account for it before feeding the rest.
    ///
    /// `(0, None)` with non-empty `data` means the head is incomplete: the caller
    /// must keep `data` and call again with more bytes appended.
    ///
    /// `head_request`: the response answers a HEAD request (no body follows).
    /// `jar`: if given, `Set-Cookie` headers are stored in it.
    pub fn feed(
        &mut self,
        data: &[u8],
        head_request: bool,
        mut jar: Option<&mut CookieJar>,
    ) -> Result<(usize, Option<Done>), ParseError> {
        let mut i = 0;
        loop {
            if self.state == State::Head {
                if i == data.len() {
                    return Ok((i, None));
                }
                match self.parse_head(&data[i..], head_request, jar.as_deref_mut())? {
                    None => {
                        if data.len() - i > MAX_HEAD {
                            return Err(ParseError::Head);
                        }
                        return Ok((i, None));
                    }
                    Some((n, done)) => {
                        i += n;
                        if let Some(d) = done {
                            return Ok((i, Some(d)));
                        }
                        // 1xx interim response, or a body follows.
                        continue;
                    }
                }
            }
            let (n, done) = self.body(&data[i..])?;
            i += n;
            if done {
                self.state = State::Head;
                return Ok((
                    i,
                    Some(Done {
                        status: self.status,
                        close: self.close,
                    }),
                ));
            }
            return Ok((i, None));
        }
    }

    /// The peer closed the connection. Returns the response completed by the
    /// close (a body delimited by end of stream), `Ok(None)` if no response was
    /// in progress, or an error for a truncated response.
    pub fn eof(&mut self) -> Result<Option<Done>, ()> {
        match self.state {
            State::Head => Ok(None),
            State::UntilClose => {
                self.state = State::Head;
                Ok(Some(Done {
                    status: self.status,
                    close: true,
                }))
            }
            _ => Err(()),
        }
    }

    /// Parse a head. `Ok(None)`: incomplete. `Ok(Some((n, Some(done))))`: a
    /// complete response without body. `Ok(Some((n, None)))`: an interim 1xx
    /// response was skipped, or the body state was entered.
    fn parse_head(
        &mut self,
        data: &[u8],
        head_request: bool,
        jar: Option<&mut CookieJar>,
    ) -> Result<Option<(usize, Option<Done>)>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(data) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ParseError::Head),
        };
        let status = resp.code.unwrap_or(0);
        let http10 = resp.version == Some(0);
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = http10;
        let mut jar = jar;
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            match name.len() {
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let v = parse_decimal(h.value).ok_or(ParseError::ContentLength)?;
                    if content_length.is_some_and(|old| old != v) {
                        return Err(ParseError::ContentLength);
                    }
                    content_length = Some(v);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    // chunked must be the final coding.
                    chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    if contains_token(h.value, b"close") {
                        close = true;
                    } else if http10 && contains_token(h.value, b"keep-alive") {
                        close = false;
                    }
                }
                10 if name.eq_ignore_ascii_case(b"set-cookie") => {
                    if let Some(j) = jar.as_deref_mut() {
                        j.set_cookie(h.value);
                    }
                }
                _ => {}
            }
        }
        if (100..200).contains(&status) && status != 101 {
            // Interim response: the real one follows.
            return Ok(Some((n, None)));
        }
        self.status = status;
        self.close = close;
        if status == 101 {
            self.close = true;
            return Ok(Some((
                n,
                Some(Done {
                    status,
                    close: true,
                }),
            )));
        }
        if head_request || status == 204 || status == 304 {
            return Ok(Some((n, Some(Done { status, close }))));
        }
        if chunked {
            self.state = CHUNK_START;
        } else if let Some(cl) = content_length {
            if cl == 0 {
                return Ok(Some((n, Some(Done { status, close }))));
            }
            self.state = State::Body(cl);
        } else {
            self.close = true;
            self.state = State::UntilClose;
        }
        Ok(Some((n, None)))
    }

    /// Advance the body state machine. Returns bytes consumed and whether the
    /// response is complete.
    fn body(&mut self, data: &[u8]) -> Result<(usize, bool), ParseError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Head => unreachable!(),
                State::UntilClose => return Ok((data.len(), false)),
                State::Body(rem) => {
                    let avail = (data.len() - i) as u64;
                    if avail >= rem {
                        return Ok((i + rem as usize, true));
                    }
                    self.state = State::Body(rem - avail);
                    return Ok((data.len(), false));
                }
                State::ChunkData(rem) => {
                    let avail = (data.len() - i) as u64;
                    if avail >= rem {
                        i += rem as usize;
                        self.state = State::ChunkDataCr;
                    } else {
                        self.state = State::ChunkData(rem - avail);
                        return Ok((data.len(), false));
                    }
                }
                State::ChunkSize { size, digits, ext } => {
                    let b = data[i];
                    i += 1;
                    if ext {
                        match b {
                            b'\r' => self.state = State::ChunkSizeLf { size },
                            b'\n' => self.end_chunk_size(size),
                            _ => {}
                        }
                        continue;
                    }
                    if let Some(v) = hex_value(b) {
                        if digits >= 15 {
                            return Err(ParseError::Chunk);
                        }
                        self.state = State::ChunkSize {
                            size: size * 16 + v as u64,
                            digits: digits + 1,
                            ext: false,
                        };
                        continue;
                    }
                    if digits == 0 {
                        return Err(ParseError::Chunk);
                    }
                    match b {
                        b'\r' => self.state = State::ChunkSizeLf { size },
                        b'\n' => self.end_chunk_size(size),
                        b';' | b' ' | b'\t' => {
                            self.state = State::ChunkSize {
                                size,
                                digits,
                                ext: true,
                            }
                        }
                        _ => return Err(ParseError::Chunk),
                    }
                }
                State::ChunkSizeLf { size } => {
                    if data[i] != b'\n' {
                        return Err(ParseError::Chunk);
                    }
                    i += 1;
                    self.end_chunk_size(size);
                }
                State::ChunkDataCr => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\r' => self.state = State::ChunkDataLf,
                        b'\n' => self.state = CHUNK_START,
                        _ => return Err(ParseError::Chunk),
                    }
                }
                State::ChunkDataLf => {
                    if data[i] != b'\n' {
                        return Err(ParseError::Chunk);
                    }
                    i += 1;
                    self.state = CHUNK_START;
                }
                State::Trailer { len } => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\r' => self.state = State::TrailerLf { len },
                        b'\n' if len == 0 => return Ok((i, true)),
                        b'\n' => self.state = State::Trailer { len: 0 },
                        _ => {
                            if len >= MAX_TRAILER_LINE {
                                return Err(ParseError::Chunk);
                            }
                            self.state = State::Trailer { len: len + 1 };
                        }
                    }
                }
                State::TrailerLf { len } => {
                    if data[i] != b'\n' {
                        return Err(ParseError::Chunk);
                    }
                    i += 1;
                    if len == 0 {
                        return Ok((i, true));
                    }
                    self.state = State::Trailer { len: 0 };
                }
            }
        }
        Ok((i, false))
    }

    fn end_chunk_size(&mut self, size: u64) {
        self.state = if size == 0 {
            State::Trailer { len: 0 }
        } else {
            State::ChunkData(size)
        };
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

fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as u64;
    }
    Some(n)
}

fn last_token(v: &[u8]) -> &[u8] {
    v.rsplit(|&b| b == b',').next().unwrap_or(v).trim_ascii()
}

fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` split at every position in `splits` (carrying incomplete
    /// heads the way the connection code does) and collect completed responses.
    fn run(input: &[u8], splits: &[usize], head_request: bool) -> Result<Vec<Done>, ParseError> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let mut bounds = vec![0];
        bounds.extend(splits.iter().copied().filter(|&s| s > 0 && s < input.len()));
        bounds.push(input.len());
        for w in bounds.windows(2) {
            carry.extend_from_slice(&input[w[0]..w[1]]);
            let buf = std::mem::take(&mut carry);
            let mut data = &buf[..];
            while !data.is_empty() {
                let (n, done) = p.feed(data, head_request, None)?;
                data = &data[n..];
                if let Some(d) = done {
                    out.push(d);
                } else if n == 0 || data.is_empty() {
                    break;
                }
            }
            carry.extend_from_slice(data);
        }
        assert!(carry.is_empty() || p.at_head(), "left over bytes mid-body");
        Ok(out)
    }

    /// Every single split point and every pair of split points.
    fn all_splits(input: &[u8], head_request: bool) -> Vec<Done> {
        let whole = run(input, &[], head_request).unwrap();
        for a in 0..=input.len() {
            assert_eq!(
                run(input, &[a], head_request).unwrap(),
                whole,
                "split at {a}"
            );
        }
        if input.len() < 200 {
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    assert_eq!(run(input, &[a, b], head_request).unwrap(), whole);
                }
            }
        }
        // Byte by byte.
        let each: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(input, &each, head_request).unwrap(), whole);
        whole
    }

    const OK: Done = Done {
        status: 200,
        close: false,
    };

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let got = all_splits(r, false);
        assert_eq!(
            got,
            vec![
                OK,
                Done {
                    status: 404,
                    close: false
                }
            ]
        );
    }

    #[test]
    fn chunked() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n";
        let got = all_splits(r, false);
        assert_eq!(
            got,
            vec![
                OK,
                Done {
                    status: 201,
                    close: false
                }
            ]
        );
    }

    #[test]
    fn interim_1xx_skipped() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(all_splits(r, false), vec![OK]);
    }

    #[test]
    fn head_request_and_bodyless_statuses() {
        // A response to HEAD carries Content-Length but no body.
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(all_splits(r, true), vec![OK, OK]);
        let r = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";
        let got = all_splits(r, false);
        assert_eq!(
            got.iter().map(|d| d.status).collect::<Vec<_>>(),
            vec![204, 304]
        );
    }

    #[test]
    fn connection_close_and_http10() {
        let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            all_splits(r, false),
            vec![Done {
                status: 200,
                close: true
            }]
        );
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            all_splits(r, false),
            vec![Done {
                status: 200,
                close: true
            }]
        );
        let r = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(all_splits(r, false), vec![OK]);
    }

    #[test]
    fn body_until_close() {
        let mut p = Parser::new();
        let r = b"HTTP/1.1 200 OK\r\n\r\nsome body";
        assert_eq!(p.feed(r, false, None).unwrap(), (r.len(), None));
        assert_eq!(
            p.eof(),
            Ok(Some(Done {
                status: 200,
                close: true
            }))
        );
        assert!(p.at_head());
        assert_eq!(p.eof(), Ok(None));
    }

    #[test]
    fn truncated_body_is_error_at_eof() {
        let mut p = Parser::new();
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(p.feed(r, false, None).unwrap(), (r.len(), None));
        assert_eq!(p.eof(), Err(()));
    }

    #[test]
    fn malformed() {
        assert_eq!(
            run(b"HTTP/1.1 abc\r\n\r\n", &[], false),
            Err(ParseError::Head)
        );
        assert_eq!(
            run(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", &[], false),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            run(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &[],
                false
            ),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            run(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                &[],
                false
            ),
            Err(ParseError::Chunk)
        );
        assert_eq!(
            run(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
                &[],
                false
            ),
            Err(ParseError::Chunk)
        );
        // Oversized head.
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(run(&big, &[], false), Err(ParseError::Head));
    }

    #[test]
    fn set_cookie_goes_to_jar() {
        let mut jar = CookieJar::default();
        let mut p = Parser::new();
        let r = b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc; Path=/\r\nSet-Cookie: lang=en\r\nContent-Length: 0\r\n\r\n";
        let (n, d) = p.feed(r, false, Some(&mut jar)).unwrap();
        assert_eq!(n, r.len());
        assert_eq!(d, Some(OK));
        assert_eq!(jar.header(), b"Cookie: sid=abc; lang=en\r\n");
    }
}
