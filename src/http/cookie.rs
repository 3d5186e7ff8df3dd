//! Cookies in heads: finding one in a request's `Cookie` headers or a response's `Set-Cookie`, without
//! allocating.

use super::head::{Header, HeaderKind};

/// The value of cookie `name` in the request's `Cookie` header(s) (`a=1; b=2`, RFC 6265 §4.2), without
/// surrounding double quotes; `None` when absent or empty.
pub fn request_cookie<'b>(headers: &[Header], bytes: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Cookie)
        .map(|h| h.value.of(bytes))
        // A header that does not hold the name anywhere is skipped with one vectorised search instead of
        // being split pair by pair (requests carry several cookies; tether looks for one or two).
        .filter(|v| memchr::memmem::find(v, name).is_some())
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            if pair[..eq].trim_ascii() != name {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            (!value.is_empty()).then_some(value)
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
