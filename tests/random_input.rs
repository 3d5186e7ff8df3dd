//! End-to-end: thousands of mutated requests (valid requests and smuggling attempts with random edits,
//! sent in random pieces) against the real binary. Whatever comes in, tether stays up, answers only with
//! well-formed responses, forwards only requests that its own strict parser accepts with a single framing
//! field, and holds no descriptor afterwards. Seeded, so a failure replays.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use tether::http::{BodyFraming, HeadLimits, HeaderKind, RequestHead, parse_request};

/// A 64-bit LCG (Knuth's MMIX constants); the high bits are the usable ones.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&[u8]] = &[
    b"GET /a?b HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    b"GET http://t/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close, X-A\r\nX-A: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
];

const ALPHABET: &[u8] = b"\r\n\r\n :;,\t0123456789abcdefABCDEF-/?GETPOSTHTTP/1.1 Host: Content-Length: Transfer-Encoding: chunked \x00\x7f\x80\xff_";

fn mutate(rng: &mut Lcg, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(4) {
            0 if at < v.len() => v[at] = ALPHABET[rng.below(ALPHABET.len())],
            1 => v.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            2 if at < v.len() => {
                v.remove(at);
            }
            _ => {
                let end = (at + rng.below(16)).min(v.len());
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
        }
    }
    v
}

/// Checks that `data` is a sequence of complete, well-formed responses, possibly cut short at the end
/// (a connection tether closed mid-body); returns how many there were.
fn responses_in(data: &[u8]) -> Result<usize, String> {
    let mut rest = data;
    let mut n = 0;
    while !rest.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        let head_len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(n),
            Err(e) => return Err(format!("{e} in {:?}", String::from_utf8_lossy(rest))),
        };
        let code = resp.code.unwrap_or(0);
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
        let body = if code < 200 || code == 204 || code == 304 {
            0
        } else {
            len.ok_or_else(|| {
                format!(
                    "response without Content-Length: {:?}",
                    String::from_utf8_lossy(rest)
                )
            })?
        };
        n += 1;
        if rest.len() < head_len + body {
            return Ok(n);
        }
        rest = &rest[head_len + body..];
    }
    Ok(n)
}

#[test]
fn mutated_requests_never_confuse_tether_or_its_backend() {
    const ROUNDS: usize = 3_000;
    let backend = Backend::named("ok");
    let mut t = Tether::start(&config_for(&[backend.addr], ""));
    assert_eq!(get(t.addr, "/warm").status, 200);
    let fds_before = t.fd_count();
    let mut rng = Lcg(7);
    let mut answered = 0;
    for round in 0..ROUNDS {
        let seed = SEEDS[rng.below(SEEDS.len())];
        let send = if rng.below(8) == 0 {
            seed.to_vec()
        } else {
            mutate(&mut rng, seed)
        };
        let mut s = TcpStream::connect(t.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        // In up to three pieces, then end of input: every exchange ends in a close.
        let mut at = 0;
        for _ in 0..rng.below(3) {
            let end = (at + rng.below(send.len() + 1)).min(send.len());
            let _ = s.write_all(&send[at..end]);
            at = end;
        }
        let _ = s.write_all(&send[at..]);
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "round {round}: {e}; sent {:?}",
                    String::from_utf8_lossy(&send)
                ),
            }
        }
        match responses_in(&got) {
            Ok(n) => answered += n,
            Err(e) => panic!(
                "round {round}: sent {:?}, got {e}",
                String::from_utf8_lossy(&send)
            ),
        }
    }
    assert!(t.running(), "tether survived {ROUNDS} mutated requests");
    assert!(answered > ROUNDS / 2, "only {answered} answers");

    // The backend only ever received requests tether's strict parser accepts, framed once.
    let limits = HeadLimits::default();
    let mut head = RequestHead::with_capacity(128);
    let received = backend.received();
    for r in &received {
        if let Err(e) = parse_request(&r.raw, &limits, &mut head) {
            panic!(
                "backend received a request tether refuses ({e}): {:?}",
                String::from_utf8_lossy(&r.raw)
            );
        }
        let framing = head
            .headers
            .iter()
            .filter(|h| {
                matches!(
                    h.kind,
                    HeaderKind::ContentLength | HeaderKind::TransferEncoding
                )
            })
            .count();
        assert!(framing <= 1, "{:?}", String::from_utf8_lossy(&r.raw));
        // And the backend framed the body exactly as tether did.
        if let BodyFraming::Length(n) = head.framing {
            assert_eq!(
                r.body.len() as u64,
                n,
                "{:?}",
                String::from_utf8_lossy(&r.raw)
            );
        }
    }
    eprintln!(
        "random input: {ROUNDS} mutated requests, {answered} responses, {} requests forwarded",
        received.len()
    );
    assert!(
        eventually(|| t.fd_count() <= fds_before),
        "descriptors back to the baseline"
    );
    assert_eq!(get(t.addr, "/after").status, 200);
}
