//! End-to-end: malformed or unsupported requests get their status and a one-line body, the connection is
//! closed, the access log says why, and the backend receives nothing.

mod common;

use common::*;

/// (what, raw request, expected status)
const CASES: &[(&str, &[u8], u16)] = &[
    ("missing version", b"GET /\r\nHost: t\r\n\r\n", 400),
    ("double space in request line", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("invalid version", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 400),
    ("invalid method characters", b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("space in header name", b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400),
    ("whitespace before colon", b"GET / HTTP/1.1\r\nHost: t\r\nX-A : x\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n", 400),
    ("bare CR in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
    ("bare LF line ending", b"GET / HTTP/1.1\nHost: t\n\n", 400),
    ("missing Host in HTTP/1.1", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (
        "Content-Length and Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "differing duplicate Content-Length",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    ("signed Content-Length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("non-numeric Content-Length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400),
    (
        // RFC 9112 §6.3: without a final chunked the length cannot be determined: 400.
        "transfer coding without chunked",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "chunked not last",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "coding before chunked",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "invalid chunk size",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
        400,
    ),
    ("fragment in target", b"GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("target without slash", b"GET a HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
];

fn too_many_headers() -> Vec<u8> {
    let mut r = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..101 {
        r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn head_too_large() -> Vec<u8> {
    let mut r = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    r.extend(std::iter::repeat_n(b'a', 33 * 1024));
    r.extend_from_slice(b"\r\n\r\n");
    r
}

#[test]
fn every_malformed_request_is_refused_and_never_reaches_the_backend() {
    let backend = Backend::named("should-not-see-anything");
    let t = Tether::start(&config_for(&[backend.addr], ""));
    let mut cases: Vec<(&str, Vec<u8>, u16)> =
        CASES.iter().map(|(n, r, s)| (*n, r.to_vec(), *s)).collect();
    cases.push(("101 headers", too_many_headers(), 431));
    cases.push(("33 KiB head", head_too_large(), 431));

    for (name, raw, status) in &cases {
        let mut c = Client::connect(t.addr);
        c.send(raw);
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(r.status, *status, "{name}: status");
        let body = r.text();
        assert!(
            body.ends_with('\n') && body.matches('\n').count() == 1,
            "{name}: one-line body, got {body:?}"
        );
        assert!(body.starts_with(&status.to_string()), "{name}: {body:?}");
        assert_eq!(r.header("connection"), Some("close"), "{name}");
        assert!(c.closed(), "{name}: connection closed after the refusal");
    }
    // Every refusal is logged with its reason.
    let lines = t.access_lines(cases.len());
    assert_eq!(lines.len(), cases.len());
    for (line, (name, _, status)) in lines.iter().zip(&cases) {
        let f = json_fields(line);
        assert_eq!(f["status"], status.to_string(), "{name}: {line}");
        assert_eq!(f["termination"], "bad_request", "{name}: {line}");
        assert!(!f["reason"].is_empty(), "{name}: reason in {line}");
    }
    assert_eq!(backend.request_count(), 0);
    assert!(
        backend.raw_bytes().is_empty(),
        "backend received {:?}",
        String::from_utf8_lossy(&backend.raw_bytes())
    );
    // The balancer is still healthy.
    assert_eq!(get(t.addr, "/").status, 200);
}

#[test]
fn a_request_pipelined_after_a_refused_one_is_not_processed() {
    let backend = Backend::named("b");
    let t = Tether::start(&config_for(&[backend.addr], ""));
    let mut c = Client::connect(t.addr);
    c.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A : x\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(c.read_response(false).status, 400);
    assert!(c.closed());
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn an_unknown_host_gets_404_with_a_reason() {
    let backend = Backend::named("b");
    let cfg = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nhost = \"known.test\"\ncluster = \"app\"\n\
         [clusters.app]\nbackends = [{{ address = \"{}\" }}]\n",
        backend.addr
    );
    let t = Tether::start(&cfg);
    let r = raw_exchange(t.addr, b"GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route"));
    let r = raw_exchange(t.addr, b"GET / HTTP/1.1\r\nHost: KNOWN.test:80\r\n\r\n");
    assert_eq!(r.status, 200);
}
