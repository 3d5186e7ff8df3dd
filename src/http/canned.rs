//! Responses tether writes itself: errors with a one-line body, and their reason phrases.

/// Appends a complete response: status line, `Content-Type: text/plain`, `Content-Length`, optional extra
/// headers, `Connection: close` when `close`, and the one-line body `"{status} {phrase}: {message}\n"`.
/// No allocation beyond `out` growing.
pub fn write_canned(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    close: bool,
    extra_headers: &[(&str, &str)],
) {
    todo!()
}

/// The standard reason phrase for a status code (`"Bad Request"`), or `"Unknown"`.
pub fn reason_phrase(status: u16) -> &'static str {
    todo!()
}
