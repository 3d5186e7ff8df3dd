//! Responses tether writes itself: errors with a one-line body, replies of its own endpoints, reason phrases.

use std::io::Write;

/// Appends a complete response: status line, `Content-Type: text/plain`, `Content-Length`,
/// `Cache-Control: no-store`, the extra headers, `Connection: close` when `close`, and the one-line body
/// `"{status} {phrase}: {message}\n"`. CR and LF in `message` and in the extra headers are written as
/// spaces, so neither can end a line early. No allocation beyond `out` growing.
pub fn write_canned(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    close: bool,
    extra_headers: &[(&str, &str)],
) {
    let phrase = reason_phrase(status);
    // "{status} {phrase}: {message}\n"
    let body_len = decimal_len(u64::from(status)) + 1 + phrase.len() + 2 + message.len() + 1;
    write_head(out, status, "text/plain", body_len, close, extra_headers);
    let _ = write!(out, "{status} {phrase}: ");
    extend_one_line(out, message.as_bytes());
    out.push(b'\n');
}

/// Appends a response head tether writes itself (a canned answer, a reply of its own endpoints): status
/// line, `Content-Type` (unless empty), `Content-Length`, `Cache-Control: no-store` (unless the extra headers
/// set one), the extra headers,
/// `Connection: close` when `close`, and the blank line. CR and LF in the extra headers are written as
/// spaces, so neither can end a line early.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
    close: bool,
    extra_headers: &[(&str, &str)],
) {
    let phrase = reason_phrase(status);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {phrase}\r\n");
    if !content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        extend_one_line(out, content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "Content-Length: {content_length}\r\n");
    // tether's answers are not to be cached, unless the caller says otherwise (the JWKS).
    if !extra_headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
    {
        out.extend_from_slice(b"Cache-Control: no-store\r\n");
    }
    for (name, value) in extra_headers {
        extend_one_line(out, name.as_bytes());
        out.extend_from_slice(b": ");
        extend_one_line(out, value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an interim (1xx) head tether writes itself (`104 Upload Resumption Supported`): the status
/// line, the headers (CR and LF written as spaces), the blank line — no `Content-Length`, no body.
pub fn write_interim(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)]) {
    debug_assert!((102..200).contains(&status), "not an interim status");
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        extend_one_line(out, name.as_bytes());
        out.extend_from_slice(b": ");
        extend_one_line(out, value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn extend_one_line(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(
        bytes
            .iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// The standard reason phrase for a status code (`"Bad Request"`), or `"Unknown"`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        104 => "Upload Resumption Supported",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        460 => "Checksum Mismatch",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interim_head_has_no_length_and_no_line_breaks_from_its_values() {
        let mut out = Vec::new();
        write_interim(
            &mut out,
            104,
            &[("Location", "/.tether/uploads/ab"), ("X", "a\r\nb")],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 104 Upload Resumption Supported\r\nLocation: /.tether/uploads/ab\r\nX: a  b\r\n\r\n"
        );
    }

    #[test]
    fn bad_request_close() {
        let mut out = b"prefix".to_vec();
        write_canned(&mut out, 400, "invalid header name", true, &[]);
        let expected = "prefixHTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 37\r\n\
Cache-Control: no-store\r\n\
Connection: close\r\n\
\r\n\
400 Bad Request: invalid header name\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn service_unavailable_with_extra_headers() {
        let mut out = Vec::new();
        write_canned(
            &mut out,
            503,
            "no server available",
            false,
            &[("Retry-After", "5"), ("X-A", "b")],
        );
        let expected = "HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain\r\n\
Content-Length: 45\r\n\
Cache-Control: no-store\r\n\
Retry-After: 5\r\n\
X-A: b\r\n\
\r\n\
503 Service Unavailable: no server available\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn content_length_matches_body() {
        for (status, message) in [
            (100u16, ""),
            (431, "too many headers"),
            (999, "x"),
            (7, "tiny"),
            (65535, "big"),
        ] {
            let mut out = Vec::new();
            write_canned(&mut out, status, message, false, &[]);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len(), "{text}");
            assert_eq!(
                body,
                format!("{status} {}: {message}\n", reason_phrase(status))
            );
        }
    }

    #[test]
    fn line_breaks_neutralised() {
        let mut out = Vec::new();
        write_canned(
            &mut out,
            502,
            "bad\r\nX-Injected: 1",
            false,
            &[("X-A", "1\r\nX-B: 2")],
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-A: 1  X-B: 2\r\n"));
        assert!(text.ends_with("502 Bad Gateway: bad  X-Injected: 1\n"));
        assert_eq!(text.matches("\r\n").count(), 6);
    }

    #[test]
    fn phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(400), "Bad Request");
        assert_eq!(reason_phrase(417), "Expectation Failed");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(501), "Not Implemented");
        assert_eq!(reason_phrase(502), "Bad Gateway");
        assert_eq!(reason_phrase(504), "Gateway Timeout");
        assert_eq!(reason_phrase(299), "Unknown");
        assert_eq!(reason_phrase(0), "Unknown");
        assert_eq!(decimal_len(0), 1);
        assert_eq!(decimal_len(9), 1);
        assert_eq!(decimal_len(10), 2);
        assert_eq!(decimal_len(65535), 5);
    }
}
