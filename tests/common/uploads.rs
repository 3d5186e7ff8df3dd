//! Helpers for end-to-end tests of the upload spool: test bytes, one-request exchanges that keep the
//! interim (1xx) answers apart from the final one, the tus and IETF steps, and a spool directory's files.

use super::*;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

pub const MIB: usize = 1 << 20;
pub const TUS: &str = "Tus-Resumable: 1.0.0\r\n";

/// Deterministic, non-repeating test bytes; `seed` tells uploads apart.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// The head of a request with a body of `len` bytes (`headers`: extra lines, each ending in CRLF).
pub fn head(method: &str, path: &str, headers: &str, len: usize) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: files.test\r\n{headers}Content-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads the interim answers, then the final one.
pub fn read_final(c: &mut Client, head_request: bool) -> (Vec<Response>, Response) {
    let mut interim = Vec::new();
    loop {
        let r = c.read_response(head_request);
        if r.status >= 200 {
            return (interim, r);
        }
        interim.push(r);
    }
}

/// One request on a new connection: its interim answers and its final answer.
pub fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (Vec<Response>, Response) {
    let mut c = Client::connect(addr);
    let mut bytes = head(method, path, headers, body.len());
    bytes.extend_from_slice(body);
    c.send(&bytes);
    read_final(&mut c, method == "HEAD")
}

/// One request on a new connection: its final answer.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> Response {
    exchange(addr, method, path, headers, body).1
}

/// A tus creation of `length` bytes on `/up/files`; `extra` header lines (a cookie). Its answer.
pub fn tus_create(addr: SocketAddr, length: usize, extra: &str) -> Response {
    request(
        addr,
        "POST",
        "/up/files",
        &format!("{TUS}Upload-Length: {length}\r\n{extra}"),
        b"",
    )
}

/// A tus creation that must succeed: the upload's `Location`.
pub fn tus_created(addr: SocketAddr, length: usize, extra: &str) -> String {
    let r = tus_create(addr, length, extra);
    assert_eq!(r.status, 201, "{}", r.text());
    r.header("location").expect("a Location").to_string()
}

pub fn tus_patch(
    addr: SocketAddr,
    location: &str,
    offset: usize,
    chunk: &[u8],
    extra: &str,
) -> Response {
    request(
        addr,
        "PATCH",
        location,
        &format!(
            "{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n{extra}"
        ),
        chunk,
    )
}

/// The offset `HEAD` reports (tus), or `None` when the upload is not there (404).
pub fn tus_offset(addr: SocketAddr, location: &str, extra: &str) -> Option<usize> {
    let r = request(addr, "HEAD", location, &format!("{TUS}{extra}"), b"");
    match r.status {
        200 => r.header("upload-offset")?.parse().ok(),
        404 => None,
        s => panic!("HEAD {location}: {s}"),
    }
}

pub fn ietf_patch(
    addr: SocketAddr,
    location: &str,
    offset: usize,
    chunk: &[u8],
    complete: bool,
) -> Response {
    let complete = if complete { "?1" } else { "?0" };
    request(
        addr,
        "PATCH",
        location,
        &format!(
            "Upload-Complete: {complete}\r\nUpload-Offset: {offset}\r\nContent-Type: application/partial-upload\r\n"
        ),
        chunk,
    )
}

/// The files in a spool directory.
pub fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// A node's spool directory (the default `dir`, beside its config file).
pub fn spool_dir(t: &Tether) -> std::path::PathBuf {
    t.config_path.parent().unwrap().join("spool")
}

/// A backend that stores what it gets: 201 with `stored`.
pub fn stored_backend() -> Backend {
    Backend::start(|_req, _s| Some(Reply::text(201, "stored")))
}
