//! Per-virtual-user cookie jar.
//!
//! Only what a load generator needs: `Set-Cookie: name=value; attrs` stores or
//! replaces `name`, `Max-Age` <= 0 deletes it, and every request carries all
//! stored cookies in one `Cookie:` header. Domain, path, expiry dates and the
//! Secure flag are ignored: all requests go to one origin. The header line is
//! rebuilt only when the jar changes, so a server that re-sends the same cookie
//! on every response costs no allocation.

#[derive(Debug, Default, Clone)]
pub struct CookieJar {
    cookies: Vec<(Vec<u8>, Vec<u8>)>,
    /// `Cookie: a=1; b=2\r\n`, or empty when the jar is empty.
    header: Vec<u8>,
}

impl CookieJar {
    /// Apply one `Set-Cookie` header value.
    pub fn set_cookie(&mut self, value: &[u8]) {
        let mut parts = value.split(|&b| b == b';');
        let pair = parts.next().unwrap_or(b"");
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return;
        };
        let name = pair[..eq].trim_ascii();
        let val = pair[eq + 1..].trim_ascii();
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
            return;
        }
        let delete = parts.any(|attr| {
            let attr = attr.trim_ascii();
            if attr.len() <= 8 || !attr[..8].eq_ignore_ascii_case(b"max-age=") {
                return false;
            }
            let v = &attr[8..];
            v[0] == b'-' || v.iter().all(|&b| b == b'0')
        });
        let pos = self.cookies.iter().position(|(n, _)| n == name);
        match (pos, delete) {
            (Some(i), true) => {
                self.cookies.remove(i);
            }
            (None, true) => return,
            (Some(i), false) => {
                if self.cookies[i].1 == val {
                    return;
                }
                self.cookies[i].1.clear();
                self.cookies[i].1.extend_from_slice(val);
            }
            (None, false) => self.cookies.push((name.to_vec(), val.to_vec())),
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        self.header.clear();
        if self.cookies.is_empty() {
            return;
        }
        self.header.extend_from_slice(b"Cookie: ");
        for (i, (n, v)) in self.cookies.iter().enumerate() {
            if i > 0 {
                self.header.extend_from_slice(b"; ");
            }
            self.header.extend_from_slice(n);
            self.header.push(b'=');
            self.header.extend_from_slice(v);
        }
        self.header.extend_from_slice(b"\r\n");
    }

    /// The `Cookie:` header line including CRLF, empty if there are no cookies.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_replace_delete() {
        let mut j = CookieJar::default();
        assert_eq!(j.header(), b"");
        j.set_cookie(b"sid=abc123; Path=/; HttpOnly");
        assert_eq!(j.get("sid"), Some(&b"abc123"[..]));
        assert_eq!(j.header(), b"Cookie: sid=abc123\r\n");
        j.set_cookie(b" lang = en ");
        assert_eq!(j.header(), b"Cookie: sid=abc123; lang=en\r\n");
        j.set_cookie(b"sid=xyz; Secure");
        assert_eq!(j.header(), b"Cookie: sid=xyz; lang=en\r\n");
        j.set_cookie(b"sid=; Max-Age=0");
        assert_eq!(j.header(), b"Cookie: lang=en\r\n");
        j.set_cookie(b"lang=gone; max-age=-1");
        assert_eq!(j.len(), 0);
        assert_eq!(j.header(), b"");
    }

    #[test]
    fn same_value_does_not_rebuild() {
        let mut j = CookieJar::default();
        j.set_cookie(b"a=1");
        let ptr = j.header().as_ptr();
        j.set_cookie(b"a=1; Path=/");
        assert_eq!(j.header().as_ptr(), ptr);
        assert_eq!(j.header(), b"Cookie: a=1\r\n");
    }

    #[test]
    fn ignores_garbage() {
        let mut j = CookieJar::default();
        j.set_cookie(b"novalue");
        j.set_cookie(b"=x");
        j.set_cookie(b"");
        j.set_cookie(b"gone=1; Max-Age=0");
        assert_eq!(j.len(), 0);
        // Max-Age=10 (not zero) keeps the cookie; empty values are allowed.
        j.set_cookie(b"k=; Max-Age=10");
        assert_eq!(j.header(), b"Cookie: k=\r\n");
    }
}
