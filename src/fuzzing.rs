//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays every corpus
//! file through them on stable Rust: one place states the invariants, and both the fuzzer and CI check them.
//!
//! Each function takes arbitrary bytes, runs a decoder of untrusted input the way the proxy runs it, and
//! panics only when an invariant is broken (a verdict that depends on how the bytes were segmented, a
//! rewritten head that parses differently, an offset outside the buffer). Refusing the input is fine;
//! panicking on it is the bug.
//!
//! No input carries a control prefix: the corpora are plain HTTP messages, chunked bodies, TOML files and
//! replication frame streams that a person can read and extend. Where a target needs a choice (a split
//! point, a method) it derives it from the input, so the fuzzer still steers it.

use crate::http::{
    ChunkedDecoder, ForwardContext, HeadLimits, HeadScanner, HeaderKind, Method, RequestHead,
    ResponseFraming, ResponseHead, ResponseOptions, Version, end_head, parse_request,
    parse_response, write_request_head, write_response_head,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The limits the proxy runs with by default, and a tight pair that makes the limit paths reachable.
const LIMITS: [HeadLimits; 2] = [
    HeadLimits {
        max_head_size: 32 * 1024,
        max_headers: 100,
    },
    HeadLimits {
        max_head_size: 1024,
        max_headers: 8,
    },
];

/// Limits for re-parsing a rewritten head: it may have grown by the forwarding headers tether adds.
const ROOMY: HeadLimits = HeadLimits {
    max_head_size: 1024 * 1024,
    max_headers: 512,
};

/// A split point in `0..=len` chosen by the input itself (its last byte), so the fuzzer explores it.
fn split_point(data: &[u8]) -> usize {
    let len = data.len();
    let sel = usize::from(data.last().copied().unwrap_or(0));
    len * sel / 255
}

/// Runs the end-of-head scanner over `buf` at once, byte by byte, and in two pieces split at `split`;
/// asserts the three verdicts agree and that a found head ends in CRLF CRLF within the limit.
fn scan_all_ways(
    buf: &[u8],
    limits: &HeadLimits,
    split: usize,
) -> Result<Option<usize>, crate::http::HttpError> {
    let one_shot = HeadScanner::default().scan(buf, limits);

    let mut s = HeadScanner::default();
    let mut byte_by_byte = s.scan(&[], limits);
    for end in 1..=buf.len() {
        byte_by_byte = s.scan(&buf[..end], limits);
        if !matches!(byte_by_byte, Ok(None)) {
            break;
        }
    }
    assert_eq!(byte_by_byte, one_shot, "scanner: byte by byte vs one shot");

    let mut s = HeadScanner::default();
    let first = s.scan(&buf[..split.min(buf.len())], limits);
    let two_pieces = match first {
        Ok(None) => s.scan(buf, limits),
        r => r,
    };
    assert_eq!(
        two_pieces, one_shot,
        "scanner: split at {split} vs one shot"
    );

    if let Ok(Some(n)) = one_shot {
        assert!(n <= buf.len() && n <= limits.max_head_size);
        assert!(buf[..n].ends_with(b"\r\n\r\n"));
    }
    one_shot
}

/// Request heads: scanner, parser and validator, then the rewrite for the backend.
///
/// Invariants: the scanner's verdict does not depend on segmentation; every span of an accepted head lies
/// inside the head; the head tether writes for the backend (`write_request_head`) parses again, strictly,
/// to the same method, target, version, framing, authority and upgrade decision, and carries no hop-by-hop
/// header and exactly one `Host` when the original had an authority. That last property is what keeps a
/// backend from framing a forwarded request differently from tether.
pub fn request_head(data: &[u8]) {
    let split = split_point(data);
    let mut head = RequestHead::with_capacity(100);
    let mut again = RequestHead::with_capacity(512);
    for limits in &LIMITS {
        // The parser must not panic on anything, scanned or not (it refuses incomplete heads itself).
        let _ = parse_request(data, limits, &mut head);

        let Ok(Some(n)) = scan_all_ways(data, limits, split) else {
            continue;
        };
        let bytes = &data[..n];
        if parse_request(bytes, limits, &mut head).is_err() {
            continue;
        }
        check_request_spans(bytes, &head);
        for (trust, ip) in [
            (false, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            (true, IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            let ctx = ForwardContext {
                client_ip: crate::http::rewrite::IpText::new(ip),
                proto: "http",
                trust_forwarded: trust,
                drop_cookie: None,
            };
            let mut out = Vec::new();
            write_request_head(&mut out, bytes, &head, &ctx);
            end_head(&mut out);
            if let Err(e) = parse_request(&out, &ROOMY, &mut again) {
                panic!(
                    "rewritten request refused ({e}): {:?} -> {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&out)
                );
            }
            assert_eq!(
                HeadScanner::default().scan(&out, &ROOMY),
                Ok(Some(out.len()))
            );
            assert_eq!(again.head_len, out.len());
            assert_eq!(again.method, head.method);
            assert_eq!(again.method_span.of(&out), head.method_span.of(bytes));
            assert_eq!(again.version, head.version);
            assert_eq!(
                again.framing, head.framing,
                "framing changed by the rewrite"
            );
            assert_eq!(again.upgrade, head.upgrade);
            let path: &[u8] = if head.target_empty_path {
                b"/"
            } else {
                head.path.of(bytes)
            };
            assert_eq!(again.path.of(&out), path);
            let target_tail = head.target.of(bytes);
            let forwarded_target = again.target.of(&out);
            if head.target_empty_path {
                assert_eq!(forwarded_target.first(), Some(&b'/'));
                assert_eq!(forwarded_target.get(1..), Some(target_tail));
            } else {
                assert_eq!(forwarded_target, target_tail);
            }
            // The authority is carried by `Host` now (ASCII case may differ from an absolute-form one).
            let before = head.authority.map(|a| a.of(bytes));
            let after = again.authority.map(|a| a.of(&out));
            assert!(
                match (before, after) {
                    (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                    (None, None) => true,
                    _ => false,
                },
                "authority changed by the rewrite"
            );
            let hosts = again
                .headers
                .iter()
                .filter(|h| h.kind == HeaderKind::Host)
                .count();
            assert_eq!(hosts, usize::from(head.authority.is_some()));
            for h in &again.headers {
                // Only an upgrade carries Connection/Upgrade on to the backend, and it writes its own.
                if h.kind.is_hop_by_hop() {
                    assert!(
                        head.upgrade
                            && matches!(h.kind, HeaderKind::Connection | HeaderKind::Upgrade),
                        "hop-by-hop header forwarded: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                }
            }
        }
    }
}

fn check_request_spans(bytes: &[u8], head: &RequestHead) {
    let n = head.head_len;
    assert!(n <= bytes.len());
    for span in [head.method_span, head.target, head.path] {
        assert!(span.start <= span.end && span.end as usize <= n);
    }
    if let Some(a) = head.authority {
        assert!(a.start <= a.end && a.end as usize <= n);
    }
    for h in &head.headers {
        assert!(!h.name.is_empty());
        assert!(h.name.end as usize <= n && h.value.end as usize <= n);
        assert!(h.name.start <= h.name.end && h.value.start <= h.value.end);
    }
}

/// Chunked bodies: the decoder's verdict (bytes consumed, done, payload length, or the refusal) is the same
/// whether the body arrives at once, byte by byte, or in two pieces split where the input says.
pub fn chunked(data: &[u8]) {
    let whole = feed(data, &[]);
    let split = split_point(data);
    assert_eq!(feed(data, &[split]), whole, "split at {split}");
    let ones = vec![1; data.len()];
    assert_eq!(feed(data, &ones), whole, "byte by byte");
    if let Ok((consumed, done, payload)) = whole {
        assert!(consumed <= data.len());
        assert!(payload <= consumed as u64);
        if done {
            // The body alone is a complete body, and nothing after it is looked at.
            assert_eq!(feed(&data[..consumed], &[]), whole);
        } else {
            assert_eq!(
                consumed,
                data.len(),
                "an unfinished body consumes all it is offered"
            );
        }
    }
}

pub(crate) type ChunkedVerdict = Result<(usize, bool, u64), crate::http::HttpError>;

/// Offers `data` in pieces of the given sizes (the rest at once), as the proxy does: bytes not consumed
/// are offered again with the next piece. Returns (bytes consumed, body done, payload bytes) or the refusal.
pub(crate) fn feed(data: &[u8], pieces: &[usize]) -> ChunkedVerdict {
    let mut d = ChunkedDecoder::new();
    let mut consumed = 0;
    let mut available = 0;
    let mut pieces = pieces.iter();
    loop {
        available = match pieces.next() {
            Some(&n) => (available + n).min(data.len()),
            None => data.len(),
        };
        let (n, done) = d.advance(&data[consumed..available])?;
        consumed += n;
        if done {
            assert!(d.is_done());
            // A finished decoder stays finished and takes nothing more.
            assert_eq!(d.advance(b"0\r\n\r\n"), Ok((0, true)));
            return Ok((consumed, true, d.payload_len()));
        }
        assert_eq!(
            consumed, available,
            "not done but did not consume its input"
        );
        if available == data.len() {
            return Ok((consumed, false, d.payload_len()));
        }
    }
}

/// Response heads from backends: scanner and parser for each kind of request method, then the rewrite for
/// the client, which must parse again to the same status and framing.
pub fn response_head(data: &[u8]) {
    let split = split_point(data);
    let mut head = ResponseHead::with_capacity(100);
    let mut again = ResponseHead::with_capacity(512);
    for limits in &LIMITS {
        for method in [Method::Get, Method::Head] {
            let _ = parse_response(data, limits, method, &mut head);
        }
        let Ok(Some(n)) = scan_all_ways(data, limits, split) else {
            continue;
        };
        let bytes = &data[..n];
        for (i, method) in [Method::Get, Method::Head, Method::Post]
            .into_iter()
            .enumerate()
        {
            if parse_response(bytes, limits, method, &mut head).is_err() {
                continue;
            }
            assert!(head.head_len <= bytes.len());
            assert!((100..=599).contains(&head.status));
            assert!(head.reason.end as usize <= head.head_len);
            if method == Method::Head {
                assert_eq!(head.framing, ResponseFraming::None);
            }
            let opts = ResponseOptions {
                close: i == 0,
                keep_alive_http10: i == 1,
                upgrade: head.status == 101 && i == 2,
            };
            let mut out = Vec::new();
            write_response_head(&mut out, bytes, &head, &opts);
            end_head(&mut out);
            if let Err(e) = parse_response(&out, &ROOMY, method, &mut again) {
                panic!(
                    "rewritten response refused ({e}): {:?} -> {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&out)
                );
            }
            assert_eq!(again.head_len, out.len());
            assert_eq!(again.status, head.status);
            assert_eq!(again.version, Version::Http11);
            assert_eq!(
                again.framing, head.framing,
                "framing changed by the rewrite"
            );
            let lengths = again
                .headers
                .iter()
                .filter(|h| h.kind == HeaderKind::ContentLength)
                .count();
            assert!(lengths <= 1, "Content-Length not collapsed");
        }
    }
}

/// Config text: loading never panics, and an accepted config builds the snapshot the workers route with.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = crate::config::load_str(text, "fuzz.toml") {
        let mut registry = crate::balance::BackendRegistry::default();
        let tls = crate::tls::server::TlsShared::new(&cfg);
        // TLS files are read again here; one that changed since validation may fail the build, cleanly.
        if let Ok(snapshot) = crate::snapshot::ConfigSnapshot::build(
            &cfg,
            1,
            &mut registry,
            &tls,
            &crate::metrics::MetricNames::default(),
        ) {
            assert_eq!(snapshot.clusters.len(), cfg.clusters.len());
        }
        for l in &cfg.listeners {
            assert!(
                l.address.parse::<std::net::SocketAddr>().is_ok(),
                "validated listener address does not parse: {:?}",
                l.address
            );
        }
        for c in cfg.clusters.values() {
            for b in &c.backends {
                assert!(
                    b.address.parse::<std::net::SocketAddr>().is_ok(),
                    "validated backend address does not parse: {:?}",
                    b.address
                );
            }
        }
    }
}

/// Replication frames (docs/PROTOCOL.md): frames are decoded from the input one after another, as a link
/// reads them, until the input ends or is refused. The verdict for a prefix of the rest (cut where the input
/// says) is "need more bytes" or the same verdict; every decoded frame re-encodes to exactly the bytes it
/// was decoded from (the encoding is canonical) and decodes again to itself.
pub fn replication_frame(data: &[u8]) {
    use crate::replication::frame::{HEADER_LEN, decode, encode};
    let mut rest = data;
    loop {
        let verdict = decode(rest);
        let cut = split_point(rest);
        let partial = decode(&rest[..cut]);
        match &verdict {
            Ok(Some((_, n))) if cut < *n => assert_eq!(partial, Ok(None), "prefix of {cut} bytes"),
            Ok(Some(_)) | Ok(None) => assert_eq!(partial, verdict, "prefix of {cut} bytes"),
            Err(_) => assert!(
                partial == Ok(None) || partial == verdict,
                "prefix of {cut} bytes: {partial:?}, whole: {verdict:?}"
            ),
        }
        let Ok(Some((frame, n))) = verdict else {
            break;
        };
        assert!((HEADER_LEN..=rest.len()).contains(&n));
        let mut out = vec![0xa5];
        encode(&frame, &mut out);
        assert_eq!(&out[1..], &rest[..n], "re-encoding of {frame:?}");
        assert_eq!(decode(&out[1..]), Ok(Some((frame, n))));
        rest = &rest[n..];
    }
}

/// The fixed key ring `token_open` opens with: key `A` (secret `[0xa1; 32]`, made at `TOKEN_T0`, retires
/// ten days later) and key `B` (secret `[0xb2; 32]`, made a day earlier, retired a day after `TOKEN_T0`).
/// Fixed so that the seeds (`fuzz/seeds/token_open/`) are real tokens that open, and the fuzzer starts
/// from inputs that reach the payload checks.
pub fn token_ring() -> &'static crate::auth::token::Keyring {
    use crate::auth::token::{Keyring, TokenKey};
    static RING: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    RING.get_or_init(|| {
        let mut ring = Keyring::new(std::time::Duration::from_secs(10 * 86_400));
        for (secret, created, retires) in [
            ([0xa1; 32], TOKEN_T0, TOKEN_T0 + 10 * 86_400),
            ([0xb2; 32], TOKEN_T0 - 86_400, TOKEN_T0 + 86_400),
        ] {
            ring.install(TokenKey::from_secret(&secret, created, retires).expect("32-byte secret"));
        }
        ring
    })
}

/// The time `token_ring`'s keys are made around, and the audience its tokens are opened for.
pub const TOKEN_T0: u64 = 1_800_000_000;
pub const TOKEN_AUDIENCE: &str = "mail";

/// Token bundles (`auth::token`): `Keyring::open` on arbitrary bytes, for each kind of token, an hour after
/// `TOKEN_T0` (both keys active) and two days after it (key `B` retired).
///
/// Invariants: it never panics; a refusal's message is one short line; an accepted token is a `v4.local`
/// token within the length limit whose claims are of the kind and audience asked for and not expired at
/// that time, and sealing those claims again (issued now) gives a token that opens to the same claims.
pub fn token_open(data: &[u8]) {
    use crate::auth::token::{MAX_TOKEN_LEN, TokenKind};
    let ring = token_ring();
    for now in [TOKEN_T0 + 3600, TOKEN_T0 + 2 * 86_400] {
        for kind in [TokenKind::Access, TokenKind::Refresh, TokenKind::Session] {
            match ring.open(data, now, kind, TOKEN_AUDIENCE) {
                Ok(claims) => {
                    assert!(data.starts_with(b"v4.local.") && data.len() <= MAX_TOKEN_LEN);
                    assert_eq!(claims.kind, kind);
                    assert_eq!(claims.audience, TOKEN_AUDIENCE);
                    assert!(now < claims.expires);
                    let mut again = claims.clone();
                    again.issued = now;
                    let token = ring.seal(&again).expect("an active key");
                    assert_eq!(
                        ring.open(token.as_bytes(), now, kind, TOKEN_AUDIENCE),
                        Ok(again),
                        "resealed claims"
                    );
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.len() < 80 && !msg.contains('\n'), "{msg:?}");
                }
            }
        }
    }
}

/// Single sign-on's requests (`auth::oauth`): the input as an authorization request's target (its query),
/// as a token, introspection or revocation form body, and as an `Authorization` header for client
/// authentication beside that body; then what tether does with the values (redirect-URI matching, scope
/// granting, PKCE, the redirect it would build).
///
/// Invariants: it never panics; a refusal is one line; accepted parameters hold no control character,
/// stay within the length limit, and parse again to themselves once re-encoded; a redirect URI is
/// accepted only when it is registered, byte for byte; granted scopes are registered ones; a redirect
/// built from a registered URI keeps it as its prefix and its parameters read back to the values given.
pub fn oauth_request(data: &[u8]) {
    use crate::auth::oauth::{
        Client, MAX_VALUE_LEN, Params, client_auth, form_encode, pkce_matches, pkce_shaped,
        with_query,
    };
    let client = Client {
        id: "webmail".into(),
        secret_hash: None,
        redirect_uris: vec![
            "https://app.example/cb".into(),
            "http://127.0.0.1:5000/cb?x=1".into(),
        ],
        post_logout_redirect_uris: vec![],
        scopes: vec!["openid".into(), "profile".into()],
        code_ttl: 60,
        access_ttl: 300,
        refresh_ttl: 3600,
    };
    let check = |p: &Params| {
        let fields = [
            ("response_type", &p.response_type),
            ("client_id", &p.client_id),
            ("redirect_uri", &p.redirect_uri),
            ("scope", &p.scope),
            ("state", &p.state),
            ("code_challenge", &p.code_challenge),
            ("code_challenge_method", &p.code_challenge_method),
            ("nonce", &p.nonce),
            ("prompt", &p.prompt),
            ("grant_type", &p.grant_type),
            ("code", &p.code),
            ("code_verifier", &p.code_verifier),
            ("refresh_token", &p.refresh_token),
            ("client_secret", &p.client_secret),
            ("token", &p.token),
            ("token_type_hint", &p.token_type_hint),
            ("id_token_hint", &p.id_token_hint),
            ("post_logout_redirect_uri", &p.post_logout_redirect_uri),
        ];
        let mut again = String::new();
        for (name, value) in fields {
            let Some(v) = value else { continue };
            assert!(!v.is_empty() && v.len() <= MAX_VALUE_LEN);
            assert!(!v.chars().any(char::is_control), "{name}: {v:?}");
            again.push_str(&format!("{name}={}&", form_encode(v)));
        }
        assert_eq!(Params::parse(again.as_bytes()).as_ref(), Ok(p), "{again}");
        if let Some(uri) = client.redirect_uri(p.redirect_uri.as_deref()) {
            assert!(client.redirect_uris.iter().any(|r| **r == *uri));
            if let Some(given) = &p.redirect_uri {
                assert_eq!(given, uri);
            }
            let state = p.state.as_deref().unwrap_or("s");
            let location = with_query(uri, &[("code", "c"), ("state", state)]);
            assert!(location.starts_with(uri));
            let back = Params::from_target(location.as_bytes()).expect("our own query parses");
            assert_eq!(back.state.as_deref(), Some(state));
            assert_eq!(back.code.as_deref(), Some("c"));
        }
        if let Ok(scope) = client.grant_scope(p.scope.as_deref()) {
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                assert!(client.scopes.iter().any(|a| **a == *s), "{s}");
            }
        }
        if let (Some(v), Some(c)) = (&p.code_verifier, &p.code_challenge) {
            if pkce_matches(v, c) {
                assert!(pkce_shaped(v) && pkce_shaped(c));
            }
        }
    };
    match Params::from_target(data) {
        Ok(p) => check(&p),
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
    match Params::from_form("application/x-www-form-urlencoded", data) {
        Ok(p) => {
            check(&p);
            // The same bytes as an Authorization header beside the body.
            let line = data.split(|&b| b == b'\n').next().unwrap_or(b"");
            match client_auth(Some(line), &p) {
                Ok(a) => {
                    assert!(!a.client_id.is_empty());
                    assert!(a.basic || Some(&a.client_id) == p.client_id.as_ref());
                }
                Err(e) => assert!(!e.to_string().contains('\n')),
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
}

/// Session cookies and records (`auth::session`): the input as the value of a request's `Cookie` header
/// (the session cookie found in it is opened as a sealed session token), as an `Authorization` value (a
/// bearer token found in it is opened as an access token), and as a login-session record value.
///
/// Invariants: it never panics; a cookie value found lies within the header; a record value that decodes
/// encodes back to a value that decodes to the same session.
pub fn session_cookie(data: &[u8]) {
    use crate::auth::token::TokenKind;
    use crate::http::{Header, HeaderKind, Span};
    crate::auth::session::fuzz_decode(data);
    let cookie = [Header {
        name: Span::new(0, 0),
        value: Span::new(0, data.len()),
        kind: HeaderKind::Cookie,
        hop_by_hop: false,
    }];
    let ring = token_ring();
    let now = TOKEN_T0 + 3600;
    if let Some(v) = crate::http::cookie::request_cookie(&cookie, data, b"tether_session") {
        let at = crate::http::head::offset_in(data, v);
        assert!(at + v.len() <= data.len());
        let _ = ring.open(v, now, TokenKind::Session, TOKEN_AUDIENCE);
    }
    if let Some(token) = crate::auth::session::bearer(data) {
        let _ = ring.open(token, now, TokenKind::Access, TOKEN_AUDIENCE);
    }
}

/// Login bodies and `return_to` (`auth::login_form`): the input is parsed as a form body and as a JSON
/// body, checked as a `return_to`, offered as a CSRF token, and rendered into the login page.
///
/// Invariants: an accepted body has a non-empty user name and password within their limits, and written
/// again (canonically) parses to the same form; refusals are one line. An accepted `return_to` is a path
/// of printable ASCII starting with a single `/`, and no round of percent-decoding turns its path into one
/// starting with `//` or holding `\`. No input verifies as a CSRF token, and a token issued for any binding
/// verifies for it. Input rendered into the page (every field) adds no `<`, `>`, `"` or `'`.
pub fn login_form(data: &[u8]) {
    use crate::auth::login_form::{
        CsrfKey, DECODE_ROUNDS, LoginForm, LoginPage, LoginTemplate, MAX_BODY_LEN,
        MAX_PASSWORD_LEN, MAX_USERNAME_LEN, check_return_to, encode_form, parse_form, parse_json,
        render_login_page, return_to_or,
    };
    fn check_form(f: &LoginForm) {
        assert!(!f.username.is_empty() && f.username.len() <= MAX_USERNAME_LEN);
        assert!(!f.password.is_empty() && f.password.len() <= MAX_PASSWORD_LEN);
    }
    match parse_form(data) {
        Ok(f) => {
            check_form(&f);
            let again = encode_form(&f);
            if again.len() <= MAX_BODY_LEN {
                assert_eq!(parse_form(again.as_bytes()).as_ref(), Ok(&f), "{again}");
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
    match parse_json(data) {
        Ok(f) => {
            check_form(&f);
            let mut map = serde_json::Map::new();
            map.insert("username".into(), f.username.clone().into());
            map.insert("password".into(), f.password.clone().into());
            if let Some(r) = &f.return_to {
                map.insert("return_to".into(), r.clone().into());
            }
            if let Some(c) = &f.csrf {
                map.insert("csrf".into(), c.clone().into());
            }
            let again = serde_json::to_vec(&map).expect("a map of strings serializes");
            if again.len() <= MAX_BODY_LEN {
                assert_eq!(parse_json(&again).as_ref(), Ok(&f));
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }

    let text = String::from_utf8_lossy(data);
    if check_return_to(&text).is_ok() {
        let b = text.as_bytes();
        assert!(b[0] == b'/' && b.get(1) != Some(&b'/'));
        assert!(b.iter().all(|&c| (0x21..=0x7e).contains(&c) && c != b'\\'));
        let mut current = b.to_vec();
        for _ in 0..=DECODE_ROUNDS {
            let end = current
                .iter()
                .position(|&c| c == b'?' || c == b'#')
                .unwrap_or(current.len());
            let path = &current[..end];
            assert!(
                !path.starts_with(b"//") && !path.contains(&b'\\'),
                "{text:?}"
            );
            current = percent_encoding::percent_decode(&current).collect();
        }
        assert_eq!(return_to_or(Some(&text), "/home"), &*text);
    } else {
        assert_eq!(return_to_or(Some(&text), "/home"), "/home");
    }

    let key = CsrfKey::new(b"fuzzing key");
    assert!(
        key.verify(&text, 1000, "binding", std::time::Duration::from_secs(60))
            .is_err()
    );
    if !text.is_empty() {
        let token = key.issue(1000, &text);
        assert_eq!(
            key.verify(&token, 1001, &text, std::time::Duration::from_secs(60)),
            Ok(())
        );
    }

    fn page(v: &str) -> LoginPage<'_> {
        LoginPage {
            action: v,
            csrf: v,
            return_to: v,
            error: Some(v),
            pool_name: v,
        }
    }
    let count = |html: &str| html.bytes().filter(|b| b"<>\"'".contains(b)).count();
    assert_eq!(
        count(&render_login_page(&page(&text))),
        count(&render_login_page(&page("x")))
    );
    if let Ok(t) = LoginTemplate::parse(&text, std::path::Path::new("fuzz.html")) {
        assert_eq!(count(&t.render(&page(&text))), count(&t.render(&page("x"))));
    }
}

/// Notification input (`notify::parse`, `notify::sse`, `notify::queue`): the input as a publish body, an
/// acknowledgement (JSON, form and query), a poll's query, an upstream feed's event stream, a record key
/// and record values.
///
/// Invariants: it never panics; refusals are one line; an accepted publish carries `data` that is JSON;
/// ids accepted are at most 2^53 − 1 and waits at most the maximum; the event-stream parser gives the same
/// events and the same last id whether the bytes come in one piece or two (split where the last byte
/// says); a record value that decodes encodes back to one that decodes the same.
pub fn notify_input(data: &[u8]) {
    use crate::notify::parse::{ack_body, poll_query, publish_body};
    use crate::notify::queue::{MAX_ID, Notification, read_ack, split_key};
    use crate::notify::sse::Parser;
    let one_line = |e: &dyn std::fmt::Display| assert!(!e.to_string().contains('\n'));
    match publish_body(data) {
        Ok(p) => {
            assert!(serde_json::from_str::<serde_json::Value>(&p.data).is_ok());
        }
        Err(e) => one_line(&e),
    }
    for content_type in [
        "application/json",
        "application/x-www-form-urlencoded",
        "",
        "text/plain",
    ] {
        match ack_body(content_type, data, b"") {
            Ok(id) => assert!(id <= MAX_ID),
            Err(e) => one_line(&e),
        }
    }
    match ack_body("", b"", data) {
        Ok(id) => assert!(id <= MAX_ID),
        Err(e) => one_line(&e),
    }
    let max_wait = std::time::Duration::from_secs(30);
    match poll_query(data, max_wait) {
        Ok((after, wait)) => assert!(after <= MAX_ID && wait <= max_wait),
        Err(e) => one_line(&e),
    }

    type Seen = (Vec<(String, String, Option<String>)>, Option<String>);
    let parse = |pieces: &[&[u8]]| -> Option<Seen> {
        let mut p = Parser::new(4096);
        let mut events = Vec::new();
        for piece in pieces {
            p.feed(piece, |e| events.push((e.event, e.data, e.id)))
                .ok()?;
        }
        Some((events, p.last_id().map(str::to_owned)))
    };
    let at = data
        .last()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let (a, b) = data.split_at(at);
    if let (Some(whole), Some(split)) = (parse(&[data]), parse(&[a, b])) {
        assert_eq!(whole, split, "split at {at}");
    }

    let _ = split_key(data);
    if let Some(n) = Notification::decode(data) {
        let again = Notification {
            flags: n.flags,
            dropped: n.dropped,
            data: n.data,
        }
        .encode();
        let m = Notification::decode(&again).expect("an encoded notification decodes");
        assert_eq!((m.flags, m.dropped, m.data), (n.flags, n.dropped, n.data));
    }
    let _ = read_ack(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_accept_ordinary_input() {
        request_head(b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
        request_head(b"GET http://h HTTP/1.0\r\n\r\n");
        chunked(b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET");
        response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        response_head(b"HTTP/1.0 200 OK\r\n\r\nbody");
        config(include_bytes!("../configs/full.toml"));
        config(b"[[listeners]\n");
        replication_frame(b"\x11\0\0\0\x10\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x07\x30");
        for f in [
            request_head,
            chunked,
            response_head,
            config,
            replication_frame,
        ] {
            f(b"");
            f(b"\xff\r\n");
        }
    }

    /// Writes the `session_cookie` seeds (`fuzz/seeds/session_cookie/`): `Cookie` headers holding real
    /// session tokens of [`token_ring`], bearer values, and login-session record values. Run by hand
    /// (`cargo test --lib write_session_cookie_seeds -- --ignored`) when the formats change.
    #[test]
    #[ignore]
    fn write_session_cookie_seeds() {
        use crate::auth::session::{LoginSession, UpstreamTokens};
        use crate::auth::token::{Claims, TokenKind};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/session_cookie");
        std::fs::create_dir_all(&dir).unwrap();
        let seal = |kind| {
            token_ring()
                .seal(&Claims {
                    kind,
                    user: "alice".into(),
                    tenant: "demo".into(),
                    session: *b"0123456789abcdef",
                    issued: TOKEN_T0,
                    expires: TOKEN_T0 + 7200,
                    audience: TOKEN_AUDIENCE.into(),
                    generation: 0,
                    grant: None,
                })
                .unwrap()
        };
        let session = seal(TokenKind::Session);
        let access = seal(TokenKind::Access);
        let mut record = LoginSession {
            user: "alice".into(),
            tenant: "demo".into(),
            roles: vec!["user".into()],
            groups: vec!["staff".into()],
            created: 1,
            last_seen: 2,
            idle: 1800,
            absolute: 43_200,
            refresh_gen: 3,
            refreshed: 2,
            upstream: None,
        };
        let plain = record.encode();
        record.upstream = Some(UpstreamTokens {
            access: "acc-1".into(),
            refresh: Some("ref-1".into()),
            expires: 99,
        });
        let relayed = record.encode();
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            (
                "cookie_session",
                format!("tether_session={session}").into_bytes(),
            ),
            (
                "cookie_among_others",
                format!("a=1; tether_session={session}; b=2").into_bytes(),
            ),
            (
                "cookie_quoted",
                format!("tether_session=\"{session}\"").into_bytes(),
            ),
            (
                "cookie_access_token",
                format!("tether_session={access}").into_bytes(),
            ),
            ("cookie_empty", b"tether_session=".to_vec()),
            (
                "cookie_twice",
                format!("tether_session=x; tether_session={session}").into_bytes(),
            ),
            ("bearer_access", format!("Bearer {access}").into_bytes()),
            ("bearer_session", format!("bearer {session}").into_bytes()),
            ("record_plain", plain),
            ("record_relayed", relayed),
            ("record_truncated", record.encode()[..20].to_vec()),
        ];
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
