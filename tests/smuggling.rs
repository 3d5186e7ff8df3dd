//! End-to-end request-smuggling and conformance suite: crafted raw requests against the real binary and a
//! real backend. For every case the client gets the documented status, the connection is closed whenever
//! framing is in doubt, and the backend reads either exactly the normalized request or nothing at all
//! (asserted on the bytes its socket read). The policy behind each answer is in `docs/HARDENING.md`.
//!
//! `tests/bad_input.rs` keeps the original malformed-head cases; this file covers the smuggling classes.

mod common;

use common::*;

/// What a case must lead to.
struct Case {
    name: String,
    send: Vec<u8>,
    /// Statuses the client reads, in order.
    statuses: Vec<u16>,
    /// Exactly what the backend reads (empty: nothing).
    backend: Vec<u8>,
    /// The client connection must be closed after the answers.
    closed: bool,
    /// The body turned out invalid after its head may have been forwarded: the backend may have read a
    /// strict prefix of `backend` (never all of it, never a complete request) before its connection was cut.
    prefix_only: bool,
}

/// The forwarding headers tether appends for a client on 127.0.0.1 (plain HTTP listener).
fn fwd(host: &str) -> String {
    let mut s = "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n".to_string();
    if !host.is_empty() {
        s.push_str(&format!("X-Forwarded-Host: {host}\r\n"));
    }
    s
}

fn case(
    name: &str,
    send: impl AsRef<[u8]>,
    status: u16,
    backend: impl AsRef<[u8]>,
    closed: bool,
    prefix_only: bool,
) -> Case {
    Case {
        name: name.to_string(),
        send: send.as_ref().to_vec(),
        statuses: vec![status],
        backend: backend.as_ref().to_vec(),
        closed,
        prefix_only,
    }
}

/// Refused at the head: `status`, connection closed, the backend reads nothing.
fn refused(name: &str, send: impl AsRef<[u8]>, status: u16) -> Case {
    case(name, send, status, b"", true, false)
}

/// A chunked body refused mid-stream: 400, connection closed, the backend reads at most a strict prefix
/// of the normalized request `forwarded` (in practice nothing: the whole request arrives in one read).
fn refused_body(name: &str, send: impl AsRef<[u8]>, forwarded: impl AsRef<[u8]>) -> Case {
    case(name, send, 400, forwarded, true, true)
}

/// Forwarded: the client gets the backend's 200 and the connection stays open; the backend reads exactly
/// `backend`.
fn forwarded(name: &str, send: impl AsRef<[u8]>, backend: impl AsRef<[u8]>) -> Case {
    case(name, send, 200, backend, false, false)
}

impl Case {
    fn then_closed(mut self) -> Case {
        self.closed = true;
        self
    }
    fn statuses(mut self, s: &[u16]) -> Case {
        self.statuses = s.to_vec();
        self
    }
}

const CHUNKED_BODY: &str = "5\r\nhello\r\n0\r\n\r\n";

fn post_te(te_line: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: t\r\n{te_line}\r\n\r\n{CHUNKED_BODY}")
}

/// The normalized chunked POST a backend reads for `post_te` requests tether accepts.
fn chunked_forwarded() -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{}\r\n{CHUNKED_BODY}",
        fwd("t")
    )
}

fn post_cl(cl_lines: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: t\r\n{cl_lines}\r\n\r\n{body}")
}

fn cl_forwarded(n: usize, body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n{}\r\n{body}",
        fwd("t")
    )
}

fn post_chunked_body(body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
}

fn chunked_body_forwarded(body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{}\r\n{body}",
        fwd("t")
    )
}

fn get_with(headers: &str) -> String {
    format!("GET / HTTP/1.1\r\n{headers}\r\n")
}

fn get_forwarded(headers: &str, host: &str) -> String {
    format!("GET / HTTP/1.1\r\n{headers}{}\r\n", fwd(host))
}

/// A GET whose head is exactly `size` bytes (one long `X-Pad` header makes up the difference).
fn get_of_size(size: usize) -> (String, String) {
    let fixed = "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n".len();
    let pad = "p".repeat(size - fixed);
    (
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n"),
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n{}\r\n",
            fwd("t")
        ),
    )
}

/// A GET with `n` header fields in all (Host and `n - 1` others).
fn get_with_fields(n: usize) -> (String, String) {
    let mut headers = "Host: t\r\n".to_string();
    for i in 1..n {
        headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    (get_with(&headers), get_forwarded(&headers, "t"))
}

fn cases() -> Vec<Case> {
    let smuggled = "GET /admin HTTP/1.1\r\nHost: t\r\n\r\n";
    let (head_at_limit, head_at_limit_fwd) = get_of_size(32 * 1024);
    let (head_over_limit, _) = get_of_size(32 * 1024 + 1);
    let (fields_at_limit, fields_at_limit_fwd) = get_with_fields(100);
    let (fields_over_limit, _) = get_with_fields(150);
    let long_ext = format!("5;{}=x\r\nhello\r\n0\r\n\r\n", "e".repeat(5000));

    vec![
        // ----- CL.TE and TE.CL ------------------------------------------------------------------------
        refused(
            "CL.TE: Content-Length then Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            400,
        ),
        refused(
            "TE.CL: Transfer-Encoding then Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            400,
        ),
        refused(
            "CL.TE with a smuggled request in the chunked body",
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        refused(
            "TE.CL with Content-Length: 0",
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
            400,
        ),
        // ----- Transfer-Encoding obfuscations --------------------------------------------------------------
        forwarded(
            "TE value in upper case (normalized)",
            post_te("Transfer-Encoding: CHUNKED"),
            chunked_forwarded(),
        ),
        forwarded(
            "TE name in mixed case (normalized)",
            post_te("tRaNsFeR-eNcOdInG: chunked"),
            chunked_forwarded(),
        ),
        forwarded(
            "TE value between tabs (normalized)",
            post_te("Transfer-Encoding:\tchunked\t"),
            chunked_forwarded(),
        ),
        refused("TE with space before the colon", post_te("Transfer-Encoding : chunked"), 400),
        refused("TE with tab before the colon", post_te("Transfer-Encoding\t: chunked"), 400),
        refused(
            "TE as the first field with leading space",
            format!("POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: t\r\n\r\n{CHUNKED_BODY}"),
            400,
        ),
        refused("TE folded onto the next line", post_te("Transfer-Encoding:\r\n chunked"), 400),
        refused(
            "TE field twice",
            post_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            400,
        ),
        refused("TE list: chunked, chunked", post_te("Transfer-Encoding: chunked, chunked"), 400),
        refused("TE list: gzip, chunked", post_te("Transfer-Encoding: gzip, chunked"), 501),
        refused("TE list: chunked, gzip", post_te("Transfer-Encoding: chunked, gzip"), 400),
        refused(
            "TE split over two fields: gzip / chunked",
            post_te("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"),
            501,
        ),
        refused("TE: identity", post_te("Transfer-Encoding: identity"), 400),
        refused("TE: xchunked", post_te("Transfer-Encoding: xchunked"), 400),
        refused("TE: quoted \"chunked\"", post_te("Transfer-Encoding: \"chunked\""), 400),
        refused("TE: chunked with a parameter", post_te("Transfer-Encoding: chunked;q=1"), 400),
        refused("TE: chunked, (empty element)", post_te("Transfer-Encoding: chunked,"), 400),
        refused("TE: vertical tab before chunked", post_te("Transfer-Encoding:\x0bchunked"), 400),
        refused("TE: Transfer_Encoding (underscore)", post_te("Transfer_Encoding: chunked"), 400),
        refused(
            "TE in HTTP/1.0",
            format!("POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_BODY}"),
            400,
        ),
        // ----- Content-Length ------------------------------------------------------------------------------
        forwarded(
            "CL: two equal fields (collapsed to one)",
            post_cl("Content-Length: 5\r\nContent-Length: 5", "hello"),
            cl_forwarded(5, "hello"),
        ),
        forwarded(
            "CL: equal list 5, 5 (collapsed to one)",
            post_cl("Content-Length: 5, 5", "hello"),
            cl_forwarded(5, "hello"),
        ),
        forwarded(
            "CL: leading zeros (normalized)",
            post_cl("Content-Length: 005", "hello"),
            cl_forwarded(5, "hello"),
        ),
        refused("CL: two different fields", post_cl("Content-Length: 5\r\nContent-Length: 6", "hello!"), 400),
        refused("CL: different list 5, 6", post_cl("Content-Length: 5, 6", "hello!"), 400),
        refused("CL: negative", post_cl("Content-Length: -5", "hello"), 400),
        refused("CL: hexadecimal", post_cl("Content-Length: 0x5", "hello"), 400),
        refused("CL: space inside the number", post_cl("Content-Length: 1 0", "0123456789"), 400),
        refused("CL: empty", post_cl("Content-Length:", ""), 400),
        refused("CL: 20 digits (overflow)", post_cl("Content-Length: 99999999999999999999", ""), 400),
        refused("CL: space before the colon", post_cl("Content-Length : 5", "hello"), 400),
        refused("CL: Content_Length (underscore)", post_cl("Content_Length: 5", "hello"), 400),
        // ----- chunk sizes and extensions ------------------------------------------------------------------
        refused_body(
            "chunk size overflow (17 hex digits)",
            post_chunked_body("10000000000000005\r\nhello\r\n0\r\n\r\n"),
            chunked_body_forwarded("10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        refused_body(
            "chunk size with 0x prefix",
            post_chunked_body("0x5\r\nhello\r\n0\r\n\r\n"),
            chunked_body_forwarded("0x5\r\nhello\r\n0\r\n\r\n"),
        ),
        refused_body(
            "negative chunk size",
            post_chunked_body("-5\r\nhello\r\n0\r\n\r\n"),
            chunked_body_forwarded("-5\r\nhello\r\n0\r\n\r\n"),
        ),
        refused_body(
            "chunk size after a space",
            post_chunked_body(" 5\r\nhello\r\n0\r\n\r\n"),
            chunked_body_forwarded(" 5\r\nhello\r\n0\r\n\r\n"),
        ),
        refused_body(
            "chunk extension without a name",
            post_chunked_body("5;=x\r\nhello\r\n0\r\n\r\n"),
            chunked_body_forwarded("5;=x\r\nhello\r\n0\r\n\r\n"),
        ),
        refused_body(
            "chunk extension over 4 KiB",
            post_chunked_body(&long_ext),
            chunked_body_forwarded(&long_ext),
        ),
        refused_body(
            "bare LF after a chunk size",
            post_chunked_body("5\nhello\r\n0\r\n\r\n"),
            chunked_body_forwarded("5\nhello\r\n0\r\n\r\n"),
        ),
        refused_body(
            "chunk data longer than its size",
            post_chunked_body("5\r\nhelloX\r\n0\r\n\r\n"),
            chunked_body_forwarded("5\r\nhelloX\r\n0\r\n\r\n"),
        ),
        refused_body(
            "obs-fold in a trailer",
            post_chunked_body("5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
            chunked_body_forwarded("5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
        ),
        forwarded(
            "chunk extensions and trailers (forwarded verbatim)",
            post_chunked_body("5;name=\"a b\";x\r\nhello\r\n0;last\r\nX-Sum: 5\r\n\r\n"),
            chunked_body_forwarded("5;name=\"a b\";x\r\nhello\r\n0;last\r\nX-Sum: 5\r\n\r\n"),
        ),
        // ----- line endings, obs-fold, whitespace before the colon ----------------------------------------
        refused("bare LF after the request line", "GET / HTTP/1.1\nHost: t\r\n\r\n", 400),
        refused("bare LF after a header", "GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400),
        refused("bare LF ending the head", "GET / HTTP/1.1\r\nHost: t\r\n\n", 400),
        refused("bare CR as a line ending", "GET / HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n", 400),
        refused("obs-fold of Host", "GET / HTTP/1.1\r\nHost: t\r\n u\r\n\r\n", 400),
        refused("whitespace before the first header", "GET / HTTP/1.1\r\n Host: t\r\n\r\n", 400),
        refused("space before the colon of Host", "GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        // ----- absolute-form versus Host, several Host headers ---------------------------------------------
        forwarded(
            "absolute-form matching Host (reduced to origin-form)",
            "GET http://t/x?y HTTP/1.1\r\nHost: t\r\n\r\n",
            format!("GET /x?y HTTP/1.1\r\nHost: t\r\n{}\r\n", fwd("t")),
        ),
        forwarded(
            "absolute-form host in other case than Host",
            "GET http://T/x HTTP/1.1\r\nHost: t\r\n\r\n",
            format!("GET /x HTTP/1.1\r\nHost: t\r\n{}\r\n", fwd("T")),
        ),
        refused("absolute-form not matching Host", "GET http://evil/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("absolute-form without Host in HTTP/1.1", "GET http://t/x HTTP/1.1\r\n\r\n", 400),
        forwarded(
            "absolute-form without Host in HTTP/1.0 (Host added)",
            "GET http://t/x HTTP/1.0\r\n\r\n",
            format!("GET /x HTTP/1.0\r\nHost: t\r\n{}\r\n", fwd("t")),
        )
        .then_closed(),
        refused("absolute-form with userinfo", "GET http://u@t/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("absolute-form with another scheme", "GET ftp://t/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("two equal Host headers", "GET / HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n", 400),
        refused("Host list", "GET / HTTP/1.1\r\nHost: t, u\r\n\r\n", 400),
        refused("Host with a path", "GET / HTTP/1.1\r\nHost: t/x\r\n\r\n", 400),
        refused("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@t\r\n\r\n", 400),
        // ----- methods and versions -------------------------------------------------------------------------
        forwarded(
            "unknown lowercase method (forwarded as sent)",
            "get / HTTP/1.1\r\nHost: t\r\n\r\n",
            format!("get / HTTP/1.1\r\nHost: t\r\n{}\r\n", fwd("t")),
        ),
        refused("empty method", " / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("method with a slash", "GE/T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("HTTP/1.2", "GET / HTTP/1.2\r\nHost: t\r\n\r\n", 400),
        refused("lowercase version", "GET / http/1.1\r\nHost: t\r\n\r\n", 400),
        refused("space after the version", "GET / HTTP/1.1 \r\nHost: t\r\n\r\n", 400),
        refused("space in the target", "GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("raw UTF-8 in the target", "GET /caf\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        refused("control byte in the target", "GET /a\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        forwarded(
            "HTTP/1.0 without keep-alive (closed after)",
            "GET / HTTP/1.0\r\nHost: t\r\n\r\n",
            format!("GET / HTTP/1.0\r\nHost: t\r\n{}\r\n", fwd("t")),
        )
        .then_closed(),
        // ----- header count and size limits ----------------------------------------------------------------
        forwarded("100 header fields (the limit)", fields_at_limit, fields_at_limit_fwd),
        refused("150 header fields", fields_over_limit, 431),
        forwarded("head of exactly 32 KiB (the limit)", head_at_limit, head_at_limit_fwd),
        refused("head of 32 KiB + 1", head_over_limit, 431),
        refused("NUL in a header name", "GET / HTTP/1.1\r\nHost: t\r\nX\0A: b\r\n\r\n", 400),
        refused("empty header name", "GET / HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n", 400),
        refused("417 for an unknown expectation", "PUT / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n", 417),
        // ----- bytes after Connection: close, pipelining ---------------------------------------------------
        forwarded(
            "bytes after Connection: close are never forwarded",
            format!("GET /1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n{smuggled}"),
            format!("GET /1 HTTP/1.1\r\nHost: t\r\n{}\r\n", fwd("t")),
        )
        .then_closed(),
        forwarded(
            "body then bytes after Connection: close",
            format!("POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello{smuggled}"),
            cl_forwarded(5, "hello"),
        )
        .then_closed(),
        refused(
            "request pipelined after a refused head",
            format!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n{smuggled}"),
            400,
        ),
        refused_body(
            "request pipelined after a refused chunked body",
            format!("{}{smuggled}", post_chunked_body("5\r\nhelloXX0\r\n\r\n")),
            chunked_body_forwarded("5\r\nhelloXX0\r\n\r\n"),
        ),
        forwarded(
            "two valid pipelined requests",
            "GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n",
            format!(
                "GET /1 HTTP/1.1\r\nHost: t\r\n{0}\r\nGET /2 HTTP/1.1\r\nHost: t\r\n{0}\r\n",
                fwd("t")
            ),
        )
        .statuses(&[200, 200]),
        forwarded(
            "a request inside a Content-Length body stays body",
            post_cl(&format!("Content-Length: {}", smuggled.len()), smuggled),
            cl_forwarded(smuggled.len(), smuggled),
        ),
        // ----- Connection header games, forwarding headers --------------------------------------------------
        forwarded(
            "Connection naming Content-Length does not strip it",
            post_cl("Connection: Content-Length\r\nContent-Length: 5", "hello"),
            cl_forwarded(5, "hello"),
        ),
        forwarded(
            "Connection naming Transfer-Encoding does not strip it",
            post_te("Connection: transfer-encoding\r\nTransfer-Encoding: chunked"),
            chunked_forwarded(),
        ),
        forwarded(
            "Connection naming Host does not strip it",
            get_with("Host: t\r\nConnection: host\r\n"),
            get_forwarded("Host: t\r\n", "t"),
        ),
        forwarded(
            "Upgrade with a body is not an upgrade",
            "POST / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
            cl_forwarded(5, "hello"),
        ),
        forwarded(
            "forged forwarding headers are replaced",
            get_with("Host: t\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"),
            get_forwarded("Host: t\r\n", "t"),
        ),
        forwarded(
            "leading empty lines are dropped",
            "\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
            get_forwarded("Host: t\r\n", "t"),
        ),
    ]
}

#[test]
fn smuggling_and_conformance_suite() {
    let backend = Backend::named("ok");
    let t = Tether::start(&config_for(&[backend.addr], ""));
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = run_case(&t, &backend, case) {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still healthy, and every case was logged.
    assert_eq!(get(t.addr, "/").status, 200);
    let answers: usize = cases.iter().map(|c| c.statuses.len()).sum();
    assert!(t.access_lines(answers + 1).len() > answers);
    eprintln!("smuggling suite: {} cases passed", cases.len());
}

fn run_case(t: &Tether, backend: &Backend, case: &Case) -> Result<(), String> {
    let before = backend.raw_bytes().len();
    let mut c = Client::connect(t.addr);
    c.send(&case.send);
    for (i, want) in case.statuses.iter().enumerate() {
        let r = c
            .try_read_response(false)
            .ok_or_else(|| format!("no response #{i}"))?;
        if r.status != *want {
            return Err(format!(
                "response #{i}: status {} ({:?}), expected {want}",
                r.status,
                r.text()
            ));
        }
        let close_header = r.header("connection") == Some("close");
        let last = i + 1 == case.statuses.len();
        if case.closed && last && !close_header {
            return Err("last response lacks Connection: close".into());
        }
        if !case.closed && close_header {
            return Err("Connection: close on a connection that should stay open".into());
        }
    }
    if case.closed && !c.closed() {
        return Err("connection left open".into());
    }
    if !case.closed {
        // Still usable: one more request on the same connection (its bytes are not part of the case).
        let check = backend.raw_bytes().len();
        let r = c.get("/after");
        if r.status != 200 {
            return Err(format!("follow-up request got {}", r.status));
        }
        let raw = backend.raw_bytes();
        compare(&case.backend, &raw[before..check], case.prefix_only)?;
        return Ok(());
    }
    drop(c);
    let raw = backend.raw_bytes();
    compare(&case.backend, &raw[before..], case.prefix_only)
}

fn compare(expected: &[u8], got: &[u8], prefix_only: bool) -> Result<(), String> {
    let ok = if prefix_only {
        got.len() < expected.len() && expected.starts_with(got)
    } else {
        got == expected
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backend read {:?}\n    expected {}{:?}",
            String::from_utf8_lossy(got),
            if prefix_only {
                "a strict prefix of "
            } else {
                ""
            },
            String::from_utf8_lossy(expected)
        ))
    }
}
