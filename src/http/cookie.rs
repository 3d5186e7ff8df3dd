//! Cookies in heads: finding one in a request's `Cookie` headers or a response's `Set-Cookie`, without
//! allocating.

use super::head::{Header, HeaderKind};

/// The value of cookie `name` in the request's `Cookie` header(s) (`a=1; b=2`, RFC 6265 §4.2), without
/// surrounding double quotes; `None` when absent or empty.
pub fn request_cookie<'b>(headers: &[Header], bytes: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Cookie)
        .flat_map(|h| pairs(h.value.of(bytes)))
        .find_map(|(n, value)| {
            if n != name {
                return None;
            }
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            (!value.is_empty()).then_some(value)
        })
}

/// The `name=value` pairs of a `Cookie` header value, each trimmed; pieces without `=` are skipped.
/// Splits at each `;` with `memchr` (a pass over a few hundred bytes, no set-up: cheaper per request
/// than building a substring searcher for the name).
pub fn pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        loop {
            let v = rest?;
            let (piece, next) = match memchr::memchr(b';', v) {
                Some(i) => (&v[..i], Some(&v[i + 1..])),
                None => (v, None),
            };
            rest = next;
            let piece = piece.trim_ascii();
            if let Some(eq) = memchr::memchr(b'=', piece) {
                return Some((piece[..eq].trim_ascii(), piece[eq + 1..].trim_ascii()));
            }
        }
    })
}

/// The value a response's `Set-Cookie` header(s) give cookie `name` (`name=value; Path=/; …`), when
/// it is set to a non-empty value (a deletion sets it empty).
pub fn response_set_cookie<'b>(
    headers: &[Header],
    bytes: &'b [u8],
    name: &[u8],
) -> Option<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::SetCookie)
        .find_map(|h| {
            let v = h.value.of(bytes);
            let first = v.split(|&b| b == b';').next()?.trim_ascii();
            let eq = first.iter().position(|&b| b == b'=')?;
            if first[..eq].trim_ascii() != name {
                return None;
            }
            let value = first[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            (!value.is_empty()).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadLimits, RequestHead, ResponseHead, parse_request, parse_response};

    #[test]
    fn finds_request_cookies_across_headers() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; sid=\"xyz\"\r\nCookie: b=2\r\n\r\n";
        let mut head = RequestHead::with_capacity(16);
        parse_request(raw, &HeadLimits::default(), &mut head).unwrap();
        assert_eq!(
            request_cookie(&head.headers, raw, b"sid"),
            Some(&b"xyz"[..])
        );
        assert_eq!(request_cookie(&head.headers, raw, b"b"), Some(&b"2"[..]));
        assert_eq!(request_cookie(&head.headers, raw, b"none"), None);
        assert_eq!(request_cookie(&head.headers, raw, b"si"), None);
    }

    #[test]
    fn finds_a_set_cookie_value_and_ignores_deletions() {
        let raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: other=1\r\nSet-Cookie: JSESSIONID=abc123; Path=/; HttpOnly\r\n\
                    Content-Length: 0\r\n\r\n";
        let mut head = ResponseHead::with_capacity(16);
        parse_response(
            raw,
            &HeadLimits::default(),
            crate::http::Method::Get,
            &mut head,
        )
        .unwrap();
        assert_eq!(
            response_set_cookie(&head.headers, raw, b"JSESSIONID"),
            Some(&b"abc123"[..])
        );
        let del =
            b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=; Max-Age=0\r\nContent-Length: 0\r\n\r\n";
        parse_response(
            del,
            &HeadLimits::default(),
            crate::http::Method::Get,
            &mut head,
        )
        .unwrap();
        assert_eq!(response_set_cookie(&head.headers, del, b"JSESSIONID"), None);
    }
}
