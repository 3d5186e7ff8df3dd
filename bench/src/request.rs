//! Request templates (pre-serialized bytes), the scenario file format and the
//! weighted request sequence.
//!
//! Scenario format (one request per line, headers indented below it):
//!
//! ```text
//! # comment
//! GET /index.html weight=8
//! GET /api/user weight=2
//!     Accept: application/json
//! POST /api/items body=512
//!     Content-Type: application/json
//! ```
//!
//! A request line is `METHOD PATH [weight=N] [body=N]`; `weight` defaults to 1,
//! `body` (bytes of generated body, sent with Content-Length) to 0. Indented
//! `Name: value` lines add headers to the request above them. Blank lines and
//! lines whose first non-blank character is `#` are ignored.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_size: usize,
    pub weight: u32,
}

/// One request, serialized once. A request on the wire is
/// `head` + (optional `Cookie:` line) + `tail`.
#[derive(Debug, Clone)]
pub struct Template {
    /// Request line and headers, each ending in CRLF.
    pub head: Vec<u8>,
    /// The blank line ending the head, then the body.
    pub tail: Vec<u8>,
    /// The request is a HEAD request (its response has no body).
    pub is_head: bool,
}

impl Template {
    /// `host`: value of the Host header (used unless the request sets one).
    /// `extra`: headers added to every request (from `-H`).
    /// `close`: add `Connection: close` (unless a Connection header is set).
    pub fn build(
        spec: &RequestSpec,
        host: &str,
        extra: &[(String, String)],
        close: bool,
    ) -> Template {
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(spec.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(spec.path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let all: Vec<&(String, String)> = spec.headers.iter().chain(extra.iter()).collect();
        let has = |n: &str| all.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has("host") {
            head.extend_from_slice(b"Host: ");
            head.extend_from_slice(host.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        for (k, v) in &all {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if spec.body_size > 0 && !has("content-length") {
            head.extend_from_slice(format!("Content-Length: {}\r\n", spec.body_size).as_bytes());
        }
        if close && !has("connection") {
            head.extend_from_slice(b"Connection: close\r\n");
        }
        let mut tail = Vec::with_capacity(2 + spec.body_size);
        tail.extend_from_slice(b"\r\n");
        tail.extend((0..spec.body_size).map(|i| b'a' + (i % 26) as u8));
        Template {
            head,
            tail,
            is_head: spec.method.eq_ignore_ascii_case("HEAD"),
        }
    }

    /// Append the request bytes to `out`. `cookie` is a full header line or empty.
    #[inline]
    pub fn write_to(&self, out: &mut Vec<u8>, cookie: &[u8]) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(cookie);
        out.extend_from_slice(&self.tail);
    }
}

/// Parse a `Name: value` header argument.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not of the form 'Name: value'"))?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(is_token_char) {
        return Err(format!("invalid header name in {s:?}"));
    }
    let v = v.trim();
    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("invalid header value in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse the scenario line format described in the module documentation.
pub fn parse_scenario(text: &str) -> Result<Vec<RequestSpec>, String> {
    let mut out: Vec<RequestSpec> = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let no = no + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some(last) = out.last_mut() else {
                return Err(format!("line {no}: header before any request"));
            };
            let h = parse_header(trimmed).map_err(|e| format!("line {no}: {e}"))?;
            last.headers.push(h);
            continue;
        }
        let mut words = trimmed.split_whitespace();
        let method = words.next().unwrap_or_default();
        if !method.bytes().all(is_token_char) {
            return Err(format!("line {no}: invalid method {method:?}"));
        }
        let path = words
            .next()
            .ok_or_else(|| format!("line {no}: expected 'METHOD PATH [weight=N] [body=N]'"))?;
        if !(path.starts_with('/') || path == "*") {
            return Err(format!("line {no}: path must start with '/': {path:?}"));
        }
        let mut spec = RequestSpec {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body_size: 0,
            weight: 1,
        };
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("line {no}: unexpected {w:?} (want weight=N or body=N)"))?;
            match k {
                "weight" => {
                    spec.weight =
                        v.parse().ok().filter(|&w| w > 0).ok_or_else(|| {
                            format!("line {no}: weight must be a positive integer")
                        })?
                }
                "body" => {
                    spec.body_size = v
                        .parse()
                        .map_err(|_| format!("line {no}: body must be a byte count"))?
                }
                _ => return Err(format!("line {no}: unknown option {k:?}")),
            }
        }
        out.push(spec);
    }
    if out.is_empty() {
        return Err("scenario has no requests".into());
    }
    if out.len() > u16::MAX as usize {
        return Err("scenario has too many requests".into());
    }
    Ok(out)
}

/// The order in which templates are used: a cycle in which template `i`
/// appears `weights[i]` times (after dividing by the common divisor), spread
/// out by smooth weighted round-robin. Very large totals are scaled down to
/// keep the cycle at most `MAX_CYCLE` long.
pub fn weighted_sequence(weights: &[u32]) -> Vec<u16> {
    const MAX_CYCLE: u64 = 100_000;
    let g = weights.iter().fold(0u32, |a, &b| gcd(a, b)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| (x / g) as u64).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_CYCLE {
        for x in w.iter_mut() {
            *x = (*x * MAX_CYCLE / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u16);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_parsing() {
        let text = "# mix\n\nGET /a weight=3\n  Accept: text/html\n\tX-Two: 2\nPOST /b body=10\n   # indented comment\nHEAD /c weight=1 body=0\n";
        let s = parse_scenario(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].method, "GET");
        assert_eq!(s[0].path, "/a");
        assert_eq!(s[0].weight, 3);
        assert_eq!(
            s[0].headers,
            vec![
                ("Accept".to_string(), "text/html".to_string()),
                ("X-Two".to_string(), "2".to_string())
            ]
        );
        assert_eq!(
            (s[1].method.as_str(), s[1].body_size, s[1].weight),
            ("POST", 10, 1)
        );
        assert_eq!(s[2].method, "HEAD");
    }

    #[test]
    fn scenario_errors() {
        assert!(parse_scenario("").is_err());
        assert!(
            parse_scenario("  X: 1\nGET /")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_scenario("GET").unwrap_err().contains("line 1"));
        assert!(parse_scenario("GET nopath").is_err());
        assert!(parse_scenario("GET / weight=0").is_err());
        assert!(parse_scenario("GET / body=x").is_err());
        assert!(parse_scenario("GET / color=red").is_err());
        assert!(
            parse_scenario("GET /\n  bad header")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn template_bytes() {
        let spec = RequestSpec {
            method: "POST".into(),
            path: "/x?y=1".into(),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body_size: 5,
            weight: 1,
        };
        let extra = vec![("X-A".to_string(), "b".to_string())];
        let t = Template::build(&spec, "example.com:8080", &extra, false);
        let mut out = Vec::new();
        t.write_to(&mut out, b"Cookie: s=1\r\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\nX-A: b\r\nContent-Length: 5\r\nCookie: s=1\r\n\r\nabcde"
        );
        assert!(!t.is_head);
        let head = RequestSpec {
            method: "HEAD".into(),
            path: "/".into(),
            headers: vec![("Host".into(), "other".into())],
            body_size: 0,
            weight: 1,
        };
        let t = Template::build(&head, "ignored", &[], true);
        let mut out = Vec::new();
        t.write_to(&mut out, b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HEAD / HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n"
        );
        assert!(t.is_head);
    }

    #[test]
    fn header_args() {
        assert_eq!(parse_header("A: b c").unwrap(), ("A".into(), "b c".into()));
        assert_eq!(parse_header("A:").unwrap(), ("A".into(), "".into()));
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[test]
    fn weights() {
        assert_eq!(weighted_sequence(&[1]), vec![0]);
        assert_eq!(weighted_sequence(&[2, 4]), vec![1, 0, 1]);
        let s = weighted_sequence(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&x| x == 0).count(), 5);
        // Smooth: the heavy entry never runs more than 3 times in a row here.
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let big = weighted_sequence(&[1_000_000, 1]);
        assert!(big.len() <= 100_001 && big.contains(&1));
    }
}
