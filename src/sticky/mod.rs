//! Session stickiness: recognising a request's session, the shared session table that binds it to a
//! backend (and SSL context), and the sealed cookies tether issues.

pub mod cookie;
pub mod table;

use crate::config::{SameSite, SessionIdentity, SessionsConfig};
use crate::http::RequestHead;
use crate::http::cookie::request_cookie;
use cookie::{CookieClaims, CookieSealer};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use table::{SessionKey, SessionTable};

/// Everything stickiness needs, shared by all workers.
#[derive(Debug)]
pub struct Stickiness {
    pub table: SessionTable,
    pub sealer: CookieSealer,
    /// Keys the digest of learned identities (cookie values, headers, addresses). Derived from the
    /// first cookie key, so every node with the same keys computes the same session keys.
    digest_key: [u8; 16],
    same_site: SameSite,
    path: String,
}

/// What a request says about its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identified {
    pub key: SessionKey,
    /// Insert mode: the backend the (valid) cookie names.
    pub cookie_backend: Option<SocketAddr>,
    /// Insert mode: the cookie is past half its life and should be re-issued.
    pub cookie_stale: bool,
}

impl Stickiness {
    pub fn new(config: &SessionsConfig, workers: usize) -> Result<Self, String> {
        let keys: Vec<[u8; 32]> = config
            .cookie_keys
            .iter()
            .map(|k| CookieSealer::decode_key(k))
            .collect::<Result<_, _>>()?;
        let (sealer, digest_key) = match keys.first() {
            Some(first) => {
                let d = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &[b"tether session digest".as_slice(), first].concat(),
                );
                let mut k = [0u8; 16];
                k.copy_from_slice(&d.as_ref()[..16]);
                (CookieSealer::new(&keys), k)
            }
            None => {
                let sealer = CookieSealer::random();
                let k = sealer.new_session_id().to_le_bytes();
                (sealer, k)
            }
        };
        Ok(Stickiness {
            table: SessionTable::new(
                workers,
                config.max_entries,
                config.ttl.as_secs().clamp(1, u32::MAX as u64) as u32,
            ),
            sealer,
            digest_key,
            same_site: config.same_site,
            path: config.cookie_path.clone(),
        })
    }

    fn digest(&self, tag: u8, bytes: &[u8]) -> SessionKey {
        let mut h = SipHasher13::new_with_key(&self.digest_key);
        h.write_u8(tag);
        h.write(bytes);
        h.finish128().as_u128()
    }

    /// The session key of a learned identity (the value of the backend's cookie).
    pub fn learned_key(&self, value: &[u8]) -> SessionKey {
        self.digest(b'c', value)
    }

    /// Recognises the request's session under `identity`; `None` when it names none (insert mode: no
    /// valid cookie — a tampered, foreign or expired one counts as none).
    pub fn identify(
        &self,
        opened: &mut cookie::OpenedCookies,
        identity: &SessionIdentity,
        head: &RequestHead,
        bytes: &[u8],
        client: IpAddr,
        now: u32,
    ) -> Option<Identified> {
        let plain = |key| {
            Some(Identified {
                key,
                cookie_backend: None,
                cookie_stale: false,
            })
        };
        match identity {
            SessionIdentity::Insert(name) => {
                let value = request_cookie(&head.headers, bytes, name.as_bytes())?;
                let claims = opened.open(&self.sealer, value, now).ok()?;
                let half_life = self.table.ttl_secs() / 2;
                Some(Identified {
                    key: claims.session,
                    cookie_backend: Some(claims.backend),
                    cookie_stale: now.saturating_sub(claims.issued) > half_life,
                })
            }
            SessionIdentity::Learn(name) => {
                plain(self.learned_key(request_cookie(&head.headers, bytes, name.as_bytes())?))
            }
            SessionIdentity::Header(name) => {
                let v = head.header(bytes, name).filter(|v| !v.is_empty())?;
                plain(self.digest(b'h', v))
            }
            SessionIdentity::ClientIp => match client.to_canonical() {
                IpAddr::V4(ip) => plain(self.digest(b'i', &ip.octets())),
                IpAddr::V6(ip) => plain(self.digest(b'i', &ip.octets())),
            },
        }
    }

    /// Appends a `Set-Cookie` header line for a session bound to `backend` (insert mode).
    pub fn write_set_cookie(
        &self,
        out: &mut Vec<u8>,
        name: &str,
        session: SessionKey,
        backend: SocketAddr,
        now: u32,
        secure: bool,
    ) {
        let claims = CookieClaims {
            session,
            backend,
            issued: now,
            expires: now.saturating_add(self.table.ttl_secs()),
        };
        out.extend_from_slice(b"Set-Cookie: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        self.sealer.seal(&claims, out);
        out.extend_from_slice(b"; Path=");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b"; HttpOnly");
        out.extend_from_slice(match self.same_site {
            SameSite::Lax => b"; SameSite=Lax".as_slice(),
            SameSite::Strict => b"; SameSite=Strict",
            SameSite::None => b"; SameSite=None",
        });
        // SameSite=None is only accepted by browsers on Secure cookies.
        if secure || self.same_site == SameSite::None {
            out.extend_from_slice(b"; Secure");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Seconds since the Unix epoch (session and cookie clocks).
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}
