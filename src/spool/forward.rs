//! Sending a completed upload to the backend: one ordinary `POST` to the creation request's path with
//! `Content-Length`, the identity headers and the upload's metadata, its body streamed from this node's
//! spool file. Blocking I/O with timeouts, on the spool's threads; a failed attempt is made again (on
//! the next backend) from the same file, which is safe because the bytes stay until a 2xx.

use super::disk::{Shared, SpoolError};
use super::state::{self, Upload, UploadId};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Largest backend answer body passed on to the client.
const MAX_ANSWER: usize = 1 << 20;

/// A forwarding job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: UploadId,
    pub upload: Upload,
    pub backends: Vec<SocketAddr>,
    pub attempts: u32,
    pub timeout: Duration,
}

/// The backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// Why forwarding failed on every attempt.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("no backend answered: {0}")]
    Unreachable(String),
}

/// Forwards `job`: the first answer that is not a gateway error wins; connection failures and 502, 503,
/// 504 are tried again on the next backend, up to `attempts`.
pub(crate) fn forward(shared: &Shared, job: &Job, _now: u32) -> Result<Answer, ForwardError> {
    let length = job.upload.length.unwrap_or(job.upload.offset);
    let file = shared.fill(&job.id, length, job.upload.tag)?;
    let mut last = String::from("no backend is eligible");
    let mut answer = None;
    for attempt in 0..job.attempts.max(1) {
        let Some(&addr) = job
            .backends
            .get(attempt as usize % job.backends.len().max(1))
        else {
            break;
        };
        match attempt_once(&file, length, addr, job) {
            Ok(a) if matches!(a.status, 502..=504) => {
                last = format!("{addr} answered {}", a.status);
                answer = Some(a);
            }
            Ok(a) => return Ok(a),
            Err(e) => last = format!("{addr}: {e}"),
        }
        log::warn!("uploads: forwarding {} failed: {last}", state::hex(&job.id));
    }
    answer.ok_or(ForwardError::Unreachable(last))
}

fn attempt_once(
    file: &std::fs::File,
    length: u64,
    addr: SocketAddr,
    job: &Job,
) -> std::io::Result<Answer> {
    let mut conn = TcpStream::connect_timeout(&addr, job.timeout.min(Duration::from_secs(5)))?;
    conn.set_read_timeout(Some(job.timeout))?;
    conn.set_write_timeout(Some(job.timeout))?;
    let _ = conn.set_nodelay(true);
    let u = &job.upload;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\nX-Tether-Upload-Id: {}\r\n",
        u.path,
        u.host,
        state::hex(&job.id)
    );
    if !u.metadata.is_empty() {
        head.push_str("X-Tether-Upload-Metadata: ");
        head.push_str(&u.metadata);
        head.push_str("\r\n");
    }
    head.push_str(&u.identity);
    head.push_str("Connection: close\r\n\r\n");
    conn.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    while at < length {
        let want = ((length - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..want], at)?;
        conn.write_all(&buf[..want])?;
        at += want as u64;
    }
    read_answer(&mut conn)
}

/// Reads the backend's answer: the head (httparse), then a `Content-Length` body, a chunked one, or one
/// until close, up to [`MAX_ANSWER`] bytes.
fn read_answer(conn: &mut TcpStream) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut data = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("the backend closed before its answer's head"));
        }
        data.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&data).map_err(|e| bad(&e.to_string()))? {
            httparse::Status::Partial if data.len() > 64 * 1024 => {
                return Err(bad("the backend's head is too long"));
            }
            httparse::Status::Partial => continue,
            httparse::Status::Complete(len) => {
                let status = resp.code.unwrap_or(502);
                if (100..200).contains(&status) {
                    data.drain(..len);
                    continue;
                }
                let find = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(|v| v.trim().to_string())
                };
                let content_type = find("content-type");
                let location = find("location");
                let chunked = find("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let length = find("content-length").and_then(|v| v.parse::<usize>().ok());
                let mut body = data.split_off(len);
                if chunked {
                    // Read to the end (the connection is `close`) and decode.
                    read_to_limit(conn, &mut body)?;
                    body = dechunk(&body).ok_or_else(|| bad("a bad chunked body"))?;
                } else if let Some(n) = length {
                    if n > MAX_ANSWER {
                        return Err(bad("the backend's answer is too long"));
                    }
                    while body.len() < n {
                        let k = conn.read(&mut chunk)?;
                        if k == 0 {
                            return Err(bad("the backend closed inside its answer"));
                        }
                        body.extend_from_slice(&chunk[..k]);
                    }
                    body.truncate(n);
                } else if status != 204 && status != 304 {
                    read_to_limit(conn, &mut body)?;
                }
                return Ok(Answer {
                    status,
                    content_type,
                    location,
                    body,
                });
            }
        }
    }
}

fn read_to_limit(conn: &mut TcpStream, body: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() > MAX_ANSWER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the backend's answer is too long",
            ));
        }
    }
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = memchr::memmem::find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
