//! One active health check: connect, send the check request, read the status line, judge the status.
//! Blocking I/O with every step bounded by what is left of the check's timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest status line read; a backend that sends more without a line end fails the check.
const MAX_STATUS_LINE: usize = 1024;

/// Runs one check of `address`; `Err` says why it failed, in words for the log.
pub(super) fn run(
    address: SocketAddr,
    request: &[u8],
    expect: (u16, u16),
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err("timed out".to_string())
        } else {
            Ok(d)
        }
    };
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| describe(&e))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| describe(&e))?;
    stream.write_all(request).map_err(|e| describe(&e))?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    let line_end = loop {
        if let Some(i) = buf[..len].iter().position(|&b| b == b'\n') {
            break i;
        }
        if len == buf.len() {
            return Err("invalid response: no status line".to_string());
        }
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| describe(&e))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Err("closed before answering".to_string()),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe(&e)),
        }
    };
    let status = parse_status_line(&buf[..line_end])
        .ok_or_else(|| "invalid response: bad status line".to_string())?;
    if (expect.0..=expect.1).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "status {status}, expected {}",
            if expect.0 == expect.1 {
                expect.0.to_string()
            } else {
                format!("{}-{}", expect.0, expect.1)
            }
        ))
    }
}

/// The status of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let digits = rest.strip_prefix(b" ")?.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&status).then_some(status)
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const REQ: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    const T: Duration = Duration::from_millis(500);

    /// A one-shot server answering `reply` (after reading the request) or doing nothing.
    fn server(reply: Option<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            match reply {
                Some(r) => {
                    let _ = s.write_all(r);
                }
                None => std::thread::sleep(Duration::from_secs(2)),
            }
        });
        addr
    }

    #[test]
    fn status_in_range_passes() {
        let a = server(Some(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(run(a, REQ, (200, 399), T), Ok(()));
        let a = server(Some(b"HTTP/1.0 302 Found\r\n"));
        assert_eq!(run(a, REQ, (200, 399), T), Ok(()));
    }

    #[test]
    fn failures_say_why() {
        let a = server(Some(b"HTTP/1.1 503 Busy\r\n\r\n"));
        assert_eq!(
            run(a, REQ, (200, 399), T),
            Err("status 503, expected 200-399".into())
        );
        let a = server(Some(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert_eq!(
            run(a, REQ, (204, 204), T),
            Err("status 200, expected 204".into())
        );
        let a = server(Some(b"SSH-2.0-OpenSSH\r\n"));
        assert_eq!(
            run(a, REQ, (200, 399), T),
            Err("invalid response: bad status line".into())
        );
        let a = server(Some(b""));
        assert_eq!(
            run(a, REQ, (200, 399), T),
            Err("closed before answering".into())
        );
        let a = server(None);
        assert_eq!(
            run(a, REQ, (200, 399), Duration::from_millis(100)),
            Err("timed out".into())
        );
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(
            run(dead, REQ, (200, 399), T),
            Err("connection refused".into())
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404"), Some(404));
        for bad in [
            &b"HTTP/2 200"[..],
            b"HTTP/1.1 20",
            b"HTTP/1.1 abc",
            b"HTTP/1.1 999 x",
            b"",
        ] {
            assert_eq!(parse_status_line(bad), None, "{bad:?}");
        }
    }
}
