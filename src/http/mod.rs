//! HTTP/1.x: strict head parsing and validation, body framing, header rewriting and canned answers.
//!
//! Everything here works on byte buffers owned by the caller and records *offsets* (`Span`) into them, so a
//! parsed head costs no allocation and headers are written out again straight from the original bytes.
//!
//! Strictness, in brief (each refusal is an `HttpError` with the status to answer and a short reason):
//! - every line ends in CRLF (a bare LF is refused by the scanner *and* the parsers, as httparse accepts
//!   it); obs-fold, whitespace before a colon, NUL / bare CR in values are refused;
//! - request targets: origin-form, `*` (OPTIONS only) or `http(s)://` absolute-form; controls, spaces,
//!   `#` and non-ASCII bytes are refused; CONNECT is 501;
//! - one valid `Host`, required in HTTP/1.1, equal to an absolute-form authority;
//! - `Content-Length` lists must agree; `Transfer-Encoding` must end in a single `chunked` (other codings
//!   before it are 501), never with `Content-Length`, never in HTTP/1.0;
//! - a `Connection` header cannot make `Host`, `Content-Length` or `Transfer-Encoding` hop-by-hop;
//! - `Content_Length` / `Transfer_Encoding` (underscore aliases some backends fold into the real names)
//!   are refused;
//! - a forwarded request carries its framing in one canonical field: `Content-Length: N` once, or
//!   `Transfer-Encoding: chunked` (see `rewrite::write_request_head`).
//!
//! Response heads follow the same rules with status 502, and framing per RFC 9112 §6.3.

pub mod canned;
pub mod chunked;
pub mod cookie;
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

/// Property-style checks over pseudo-random and mutated input: nothing panics, incremental and one-shot
/// processing agree, and whatever is accepted is written out again as something that parses the same.
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// A 64-bit LCG (Knuth's MMIX constants); the high bits are the usable ones.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Bytes that matter to the parsers, so random input reaches past the first check.
    const ALPHABET: &[u8] =
        b"\r\n\r\n\r\n  \t:;,=\"\\/?#*@[]0123456789abcdefABCDEF-.GETPOSTHTTP/1.1 hostHost\
content-lengthtransfer-encodingchunkedconnectionupgradeclosekeep-alive\x00\x7f\x80\xff";

    fn random_bytes(rng: &mut Lcg, max_len: usize) -> Vec<u8> {
        let len = rng.below(max_len + 1);
        (0..len)
            .map(|_| {
                if rng.below(8) == 0 {
                    rng.next() as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect()
    }

    /// A few random edits (replace, insert, delete, duplicate a range) of a valid message.
    fn mutate(rng: &mut Lcg, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(v.len() + 1);
            match rng.below(5) {
                0 if at < v.len() => v[at] = ALPHABET[rng.below(ALPHABET.len())],
                1 => v.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 => {
                    let end = (at + rng.below(12)).min(v.len());
                    let piece = v[at..end].to_vec();
                    v.splice(at..at, piece);
                }
                _ if at < v.len() => v[at] = rng.next() as u8,
                _ => {}
            }
        }
        v
    }

    const REQUESTS: &[&[u8]] = &[
        b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"\r\nGET http://example.com/x HTTP/1.0\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nKeep-Alive: 5\r\n\r\n",
    ];

    const RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=b\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.0 404 Not Found\r\nConnection: keep-alive, X-B\r\nX-B: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ];

    const BODIES: &[&[u8]] = &[
        b"5\r\nhello\r\n0\r\n\r\n",
        b"3;a=b;c=\"d e\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET",
        b"A\r\n0123456789\r\n1 ;x\r\nZ\r\n0\r\n\r\n",
    ];

    fn input(rng: &mut Lcg, corpus: &[&[u8]]) -> Vec<u8> {
        if rng.below(3) == 0 {
            random_bytes(rng, 160)
        } else {
            let seed = corpus[rng.below(corpus.len())];
            mutate(rng, seed)
        }
    }

    /// Rounds per property; `TETHER_FUZZ_ROUNDS` raises it for a longer local run.
    fn rounds() -> usize {
        std::env::var("TETHER_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    }

    #[test]
    fn random_requests() {
        let mut rng = Lcg(1);
        let limits = HeadLimits {
            max_head_size: 512,
            max_headers: 8,
        };
        let roomy = HeadLimits {
            max_head_size: 4096,
            max_headers: 32,
        };
        let mut head = RequestHead::with_capacity(8);
        let mut again = RequestHead::with_capacity(8);
        let mut accepted = 0;
        for round in 0..rounds() {
            let buf = input(&mut rng, REQUESTS);
            let Ok(()) = parse_request(&buf, &limits, &mut head) else {
                continue;
            };
            accepted += 1;
            assert!(head.head_len <= buf.len());
            for span in [head.method_span, head.target, head.path] {
                assert!(span.end as usize <= head.head_len);
            }
            for h in &head.headers {
                assert!(
                    h.name.end as usize <= head.head_len && h.value.end as usize <= head.head_len
                );
                assert!(!h.name.is_empty());
            }
            let trust = round % 2 == 0;
            let ctx = ForwardContext {
                client_ip: rewrite::IpText::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                proto: "http",
                trust_forwarded: trust,
                drop_cookie: None,
            };
            let mut out = Vec::new();
            write_request_head(&mut out, &buf, &head, &ctx);
            end_head(&mut out);
            if let Err(e) = parse_request(&out, &roomy, &mut again) {
                panic!(
                    "{e}: {:?} rewritten as {:?}",
                    String::from_utf8_lossy(&buf),
                    String::from_utf8_lossy(&out)
                );
            }
            assert_eq!(again.head_len, out.len());
            assert_eq!(again.method, head.method);
            assert_eq!(again.method_span.of(&out), head.method_span.of(&buf));
            assert_eq!(again.version, head.version);
            assert_eq!(again.framing, head.framing);
            assert_eq!(again.upgrade, head.upgrade);
            let path: &[u8] = if head.target_empty_path {
                b"/"
            } else {
                head.path.of(&buf)
            };
            assert_eq!(again.path.of(&out), path);
            assert!(!again.target_empty_path);
            assert_eq!(
                again.authority.map(|a| a.of(&out)),
                head.authority.map(|a| a.of(&buf))
            );
        }
        assert!(
            accepted > rounds() / 20,
            "only {accepted} accepted: the corpus is not exercised"
        );
    }

    #[test]
    fn random_responses() {
        let mut rng = Lcg(2);
        let limits = HeadLimits {
            max_head_size: 512,
            max_headers: 8,
        };
        let roomy = HeadLimits {
            max_head_size: 4096,
            max_headers: 32,
        };
        let mut head = ResponseHead::with_capacity(8);
        let mut again = ResponseHead::with_capacity(8);
        let methods = [Method::Get, Method::Head, Method::Post];
        let mut accepted = 0;
        for round in 0..rounds() {
            let buf = input(&mut rng, RESPONSES);
            let method = methods[round % methods.len()];
            let Ok(()) = parse_response(&buf, &limits, method, &mut head) else {
                continue;
            };
            accepted += 1;
            assert!(head.head_len <= buf.len());
            assert!(head.reason.end as usize <= head.head_len);
            assert!((100..=599).contains(&head.status));
            let opts = ResponseOptions {
                close: round % 3 == 0,
                keep_alive_http10: round % 3 == 1,
                upgrade: false,
            };
            let mut out = Vec::new();
            write_response_head(&mut out, &buf, &head, &opts);
            end_head(&mut out);
            if let Err(e) = parse_response(&out, &roomy, method, &mut again) {
                panic!(
                    "{e}: {:?} rewritten as {:?}",
                    String::from_utf8_lossy(&buf),
                    String::from_utf8_lossy(&out)
                );
            }
            assert_eq!(again.status, head.status);
            assert_eq!(again.framing, head.framing);
            assert_eq!(again.version, Version::Http11);
        }
        assert!(
            accepted > rounds() / 20,
            "only {accepted} accepted: the corpus is not exercised"
        );
    }

    #[test]
    fn random_scanner_input() {
        let mut rng = Lcg(3);
        let limits = HeadLimits {
            max_head_size: 128,
            max_headers: 8,
        };
        for _ in 0..rounds() {
            let corpus = if rng.below(2) == 0 {
                REQUESTS
            } else {
                RESPONSES
            };
            let buf = input(&mut rng, corpus);
            let one_shot = HeadScanner::default().scan(&buf, &limits);
            // Fed in random pieces, the scanner reaches the same verdict as soon as it has the bytes.
            let mut scanner = HeadScanner::default();
            let mut len = 0;
            let incremental = loop {
                len = (len + 1 + rng.below(16)).min(buf.len());
                match scanner.scan(&buf[..len], &limits) {
                    Ok(None) if len < buf.len() => continue,
                    r => break r,
                }
            };
            assert_eq!(incremental, one_shot, "{:?}", String::from_utf8_lossy(&buf));
            if let Ok(Some(n)) = one_shot {
                assert!(n <= buf.len() && n <= limits.max_head_size);
                assert!(buf[..n].ends_with(b"\r\n\r\n"));
                // Whatever the parsers say, they must not panic on a scanned head.
                let mut req = RequestHead::with_capacity(8);
                let _ = parse_request(&buf, &limits, &mut req);
                let mut resp = ResponseHead::with_capacity(8);
                let _ = parse_response(&buf, &limits, Method::Get, &mut resp);
            }
        }
    }

    #[test]
    fn random_chunked_bodies() {
        let mut rng = Lcg(4);
        for _ in 0..rounds() {
            let buf = input(&mut rng, BODIES);
            let mut d = ChunkedDecoder::new();
            let whole = d.advance(&buf).map(|(n, done)| (n, done, d.payload_len()));
            // The same bytes in random pieces give the same verdict.
            let mut d = ChunkedDecoder::new();
            let mut pos = 0;
            let pieces = loop {
                let end = (pos + rng.below(8)).min(buf.len());
                match d.advance(&buf[pos..end]) {
                    Err(e) => break Err(e),
                    Ok((n, true)) => break Ok((pos + n, true, d.payload_len())),
                    Ok((n, false)) => {
                        assert_eq!(n, end - pos);
                        pos = end;
                        if pos == buf.len() {
                            break Ok((pos, false, d.payload_len()));
                        }
                    }
                }
            };
            assert_eq!(pieces, whole, "{:?}", String::from_utf8_lossy(&buf));
            if let Ok((n, _, payload)) = whole {
                assert!(n <= buf.len());
                assert!(payload <= n as u64);
            }
        }
    }
}
