//! The balancer-issued session cookie: an AEAD-sealed value that names the session and its backend, so
//! it can be neither read nor forged, and any node holding the keys can honour it.
//!
//! Layout before sealing (34 bytes): version (1) | session id (16) | backend IP (16, v4 mapped) |
//! backend port (2)… then issued and expires (4 + 4, seconds since the Unix epoch). Sealed with AES-256-GCM:
//! key id (1) | nonce (12) | ciphertext (42) | tag (16), base64url without padding (95 characters).
//! The key id (a byte of the key's SHA-256, so it does not depend on the list order) is bound as associated
//! data; the newest key seals and every configured key opens, so keys rotate by adding a new one first and
//! dropping the oldest later.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

const VERSION: u8 = 1;
const PLAIN_LEN: usize = 1 + 16 + 16 + 2 + 4 + 4;
const TAG_LEN: usize = 16;
const SEALED_LEN: usize = 1 + NONCE_LEN + PLAIN_LEN + TAG_LEN;
/// Length of a cookie value as sent (base64url of `SEALED_LEN` bytes).
pub const COOKIE_VALUE_LEN: usize = (SEALED_LEN * 4).div_ceil(3);

/// What a session cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieClaims {
    pub session: u128,
    pub backend: SocketAddr,
    /// Seconds since the Unix epoch.
    pub issued: u32,
    pub expires: u32,
}

/// Why a cookie was not honoured (the request is then treated as a new session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("malformed session cookie")]
    Malformed,
    #[error("session cookie sealed with an unknown key")]
    UnknownKey,
    #[error("session cookie failed authentication")]
    Forged,
    #[error("session cookie expired")]
    Expired,
}

/// Seals and opens session cookies with a set of 32-byte keys (the first seals).
pub struct CookieSealer {
    keys: Vec<(u8, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSealer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl CookieSealer {
    /// Keys in rotation order, newest first.
    pub fn new(keys: &[[u8; 32]]) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k).as_ref()[0];
                let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32-byte key"));
                (id, key)
            })
            .collect();
        CookieSealer {
            keys,
            rng: SystemRandom::new(),
        }
    }

    /// A sealer with one random key (cookies then survive neither a restart nor another node).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("system randomness");
        CookieSealer::new(&[key])
    }

    /// Decodes configured keys (base64, 32 bytes each).
    pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim()))
            .map_err(|e| format!("not base64: {e}"))?;
        bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("a key is 32 bytes, this one is {}", b.len()))
    }

    /// A random 128-bit session id.
    pub fn new_session_id(&self) -> u128 {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).expect("system randomness");
        u128::from_le_bytes(b)
    }

    /// Seals claims into a cookie value, appended to `out` (no intermediate allocation).
    pub fn seal(&self, claims: &CookieClaims, out: &mut Vec<u8>) {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut sealed = [0u8; SEALED_LEN];
        sealed[0] = *id;
        sealed[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        let body = &mut sealed[1 + NONCE_LEN..];
        encode_plain(claims, &mut body[..PLAIN_LEN]);
        let (plain, tag_out) = body.split_at_mut(PLAIN_LEN);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([*id]),
                plain,
            )
            .expect("sealing a fixed-size buffer");
        tag_out.copy_from_slice(tag.as_ref());
        let mut text = [0u8; COOKIE_VALUE_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(sealed, &mut text)
            .expect("exact size");
        out.extend_from_slice(&text[..n]);
    }

    /// Opens a cookie value; `now` in seconds since the Unix epoch.
    pub fn open(&self, value: &[u8], now: u32) -> Result<CookieClaims, CookieError> {
        if value.len() != COOKIE_VALUE_LEN {
            return Err(CookieError::Malformed);
        }
        let mut sealed = [0u8; SEALED_LEN + 2];
        let n = URL_SAFE_NO_PAD
            .decode_slice(value, &mut sealed)
            .map_err(|_| CookieError::Malformed)?;
        if n != SEALED_LEN {
            return Err(CookieError::Malformed);
        }
        let id = sealed[0];
        let mut result = Err(CookieError::UnknownKey);
        // Two keys may share an id byte: try each candidate on a fresh copy.
        for (_, key) in self.keys.iter().filter(|(k, _)| *k == id) {
            let mut body = [0u8; PLAIN_LEN + TAG_LEN];
            body.copy_from_slice(&sealed[1 + NONCE_LEN..SEALED_LEN]);
            let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
                .map_err(|_| CookieError::Malformed)?;
            match key.open_in_place(nonce, Aad::from([id]), &mut body) {
                Ok(plain) => {
                    result = decode_plain(plain).ok_or(CookieError::Malformed);
                    break;
                }
                Err(_) => result = Err(CookieError::Forged),
            }
        }
        let claims = result?;
        if claims.expires <= now {
            return Err(CookieError::Expired);
        }
        Ok(claims)
    }
}

/// Cookies a worker opened lately, by their exact value: a keep-alive client sends the same sealed
/// cookie with every request, and opening it (base64, AES-GCM) costs more than comparing 95 bytes. A
/// direct-mapped table indexed by the value's last characters (the GCM tag's encoding: uniformly spread
/// for genuine cookies); a collision only evicts. Only values that opened are kept, so an entry proves
/// the bytes were authenticated under this sealer's keys; each hit re-checks the expiry.
pub struct OpenedCookies {
    slots: Box<[Option<Opened>]>,
    /// The sealer the entries were opened with (an address): another one empties the table.
    sealer: usize,
}

impl Default for OpenedCookies {
    fn default() -> Self {
        OpenedCookies {
            slots: vec![None; OPENED_SLOTS].into_boxed_slice(),
            sealer: 0,
        }
    }
}

impl std::fmt::Debug for OpenedCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedCookies")
            .field("held", &self.slots.iter().flatten().count())
            .finish()
    }
}

/// A cookie value that opened, and what it said.
type Opened = ([u8; COOKIE_VALUE_LEN], CookieClaims);

/// Slots of a worker's [`OpenedCookies`] (a power of two): 1,024 × 136 bytes.
const OPENED_SLOTS: usize = 1024;

impl OpenedCookies {
    /// [`CookieSealer::open`], answered from the table when this exact value opened before.
    pub fn open(
        &mut self,
        sealer: &CookieSealer,
        value: &[u8],
        now: u32,
    ) -> Result<CookieClaims, CookieError> {
        let Ok(bytes) = <&[u8; COOKIE_VALUE_LEN]>::try_from(value) else {
            return Err(CookieError::Malformed);
        };
        let id = std::ptr::from_ref(sealer) as usize;
        if self.sealer != id {
            self.slots.fill(None);
            self.sealer = id;
        }
        let tail = u16::from_le_bytes([bytes[COOKIE_VALUE_LEN - 2], bytes[COOKIE_VALUE_LEN - 3]]);
        let slot = &mut self.slots[usize::from(tail) % OPENED_SLOTS];
        if let Some((held, claims)) = slot {
            if held == bytes {
                return if claims.expires > now {
                    Ok(*claims)
                } else {
                    Err(CookieError::Expired)
                };
            }
        }
        let claims = sealer.open(value, now)?;
        *slot = Some((*bytes, claims));
        Ok(claims)
    }
}

fn encode_plain(c: &CookieClaims, out: &mut [u8]) {
    out[0] = VERSION;
    out[1..17].copy_from_slice(&c.session.to_le_bytes());
    let ip = match c.backend.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out[17..33].copy_from_slice(&ip.octets());
    out[33..35].copy_from_slice(&c.backend.port().to_be_bytes());
    out[35..39].copy_from_slice(&c.issued.to_le_bytes());
    out[39..43].copy_from_slice(&c.expires.to_le_bytes());
}

fn decode_plain(p: &[u8]) -> Option<CookieClaims> {
    if p.len() != PLAIN_LEN || p[0] != VERSION {
        return None;
    }
    let session = u128::from_le_bytes(p[1..17].try_into().ok()?);
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&p[17..33]).ok()?);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    let port = u16::from_be_bytes([p[33], p[34]]);
    Some(CookieClaims {
        session,
        backend: SocketAddr::new(ip, port),
        issued: u32::from_le_bytes(p[35..39].try_into().ok()?),
        expires: u32::from_le_bytes(p[39..43].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> CookieClaims {
        CookieClaims {
            session: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            backend: "10.1.2.3:8080".parse().unwrap(),
            issued: 1_000,
            expires: 2_000,
        }
    }

    #[test]
    fn round_trip() {
        let s = CookieSealer::new(&[[7u8; 32]]);
        let mut v = Vec::new();
        s.seal(&claims(), &mut v);
        assert_eq!(v.len(), COOKIE_VALUE_LEN);
        assert!(
            v.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        );
        assert_eq!(s.open(&v, 1_500).unwrap(), claims());
        let v6 = CookieClaims {
            backend: "[2001:db8::1]:443".parse().unwrap(),
            ..claims()
        };
        v.clear();
        s.seal(&v6, &mut v);
        assert_eq!(s.open(&v, 1_500).unwrap(), v6);
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let s = CookieSealer::new(&[[7u8; 32]]);
        let mut v = Vec::new();
        s.seal(&claims(), &mut v);
        for i in 0..v.len() {
            let mut t = v.clone();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert!(s.open(&t, 1_500).is_err(), "byte {i}");
        }
        assert_eq!(s.open(b"short", 1_500), Err(CookieError::Malformed));
        assert_eq!(
            s.open(&[b'!'; COOKIE_VALUE_LEN], 1_500),
            Err(CookieError::Malformed)
        );
    }

    #[test]
    fn the_opened_cookie_table_answers_only_for_the_exact_bytes_that_opened() {
        let s = CookieSealer::new(&[[7u8; 32]]);
        let mut opened = OpenedCookies::default();
        let mut v = Vec::new();
        s.seal(&claims(), &mut v);
        assert_eq!(opened.open(&s, &v, 1_500), Ok(claims()));
        // Held now: the same answer, and expiry still applies.
        assert_eq!(opened.open(&s, &v, 1_500), Ok(claims()));
        assert_eq!(opened.open(&s, &v, 2_000), Err(CookieError::Expired));
        // A value that shares the slot (same last characters) but differs elsewhere is opened, and
        // refused: an entry never vouches for other bytes.
        for i in 0..v.len() - 3 {
            let mut t = v.clone();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert!(opened.open(&s, &t, 1_500).is_err(), "byte {i}");
        }
        // Another sealer (other keys): nothing it did not open itself is honoured.
        let other = CookieSealer::new(&[[8u8; 32]]);
        assert_eq!(opened.open(&other, &v, 1_500), Err(CookieError::UnknownKey));
        assert_eq!(
            opened.open(&s, b"short", 1_500),
            Err(CookieError::Malformed)
        );
    }

    #[test]
    fn expired_cookies_are_refused() {
        let s = CookieSealer::new(&[[7u8; 32]]);
        let mut v = Vec::new();
        s.seal(&claims(), &mut v);
        assert_eq!(s.open(&v, 2_000), Err(CookieError::Expired));
    }

    #[test]
    fn key_rotation_keeps_old_cookies_valid_until_the_key_is_dropped() {
        let old = [1u8; 32];
        let new = [2u8; 32];
        let before = CookieSealer::new(&[old]);
        let mut v = Vec::new();
        before.seal(&claims(), &mut v);
        // A new key is added in front: it seals, the old one still opens.
        let rotated = CookieSealer::new(&[new, old]);
        assert_eq!(rotated.open(&v, 1_500).unwrap(), claims());
        let mut fresh = Vec::new();
        rotated.seal(&claims(), &mut fresh);
        assert_eq!(rotated.open(&fresh, 1_500).unwrap(), claims());
        assert!(before.open(&fresh, 1_500).is_err());
        // The old key is dropped: its cookies are no longer honoured.
        let dropped = CookieSealer::new(&[new]);
        assert!(dropped.open(&v, 1_500).is_err());
        assert_eq!(dropped.open(&fresh, 1_500).unwrap(), claims());
    }

    #[test]
    fn another_key_cannot_open_or_forge() {
        let a = CookieSealer::new(&[[1u8; 32]]);
        let b = CookieSealer::new(&[[9u8; 32]]);
        let mut v = Vec::new();
        a.seal(&claims(), &mut v);
        // Unknown key id, or (1 in 256) a colliding id whose key fails authentication.
        assert!(matches!(
            b.open(&v, 1_500),
            Err(CookieError::UnknownKey | CookieError::Forged)
        ));
    }
}
