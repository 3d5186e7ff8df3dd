//! Record values sealed before they reach the Redis server: the store holds token-sealing and
//! identity-signing keys, password hashes and sessions, and a server is often read by more people and
//! tools (backups, `MONITOR`, replicas) than a tether node's memory. Each value is encrypted with
//! AES-256-GCM under a key derived from `sessions.cookie_keys` (the first seals, every one opens, so the
//! cookie keys' rotation carries over), with the record's header — kind, key, version, expiry — as
//! associated data, so a value moved to another key or version does not open.
//!
//! The nonce is derived from the header and the value (HMAC-SHA-256 under a second derived key, cut to
//! 12 bytes, as SIV constructions do): the same record seals to the same bytes, so the server's script
//! recognises a record sent twice (a write-back, a resent pipeline) and does not append it to the stream
//! again. The header stays in clear: the script compares versions.

use crate::store::Record;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// Why a value read from the server does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a record: {0}")]
    Decode(String),
    #[error("sealed value too short")]
    Short,
    #[error("no cookie key opens it (written with a key no longer in sessions.cookie_keys?)")]
    NoKey,
}

/// One cookie key's derived pair.
struct Keys {
    aead: LessSafeKey,
    nonce: [u8; 32],
}

/// Seals and opens record values with keys derived from the cookie keys.
pub struct Sealer {
    keys: Vec<Keys>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// HKDF-SHA-256 (RFC 5869) of one 32-byte block: extract with `salt`, expand with `info`.
fn hkdf(ikm: &[u8; 32], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256>>::new_from_slice(salt).expect("any key length");
    m.update(ikm);
    let prk = m.finalize().into_bytes();
    let mut m = <Hmac<Sha256>>::new_from_slice(&prk).expect("any key length");
    m.update(info);
    m.update(&[1]);
    m.finalize().into_bytes().into()
}

impl Sealer {
    /// Keys for `cookie_keys` (newest first), bound to `prefix`: two clusters sharing a server with the
    /// same cookie keys still cannot open each other's values.
    pub fn new(cookie_keys: &[[u8; 32]], prefix: &str) -> Arc<Sealer> {
        const SALT: &[u8] = b"tether store on redis v1";
        let keys = cookie_keys
            .iter()
            .map(|k| {
                let aead = hkdf(k, SALT, format!("value key {prefix}").as_bytes());
                Keys {
                    aead: LessSafeKey::new(
                        UnboundKey::new(&AES_256_GCM, &aead).expect("32-byte key"),
                    ),
                    nonce: hkdf(k, SALT, format!("nonce key {prefix}").as_bytes()),
                }
            })
            .collect();
        Arc::new(Sealer { keys })
    }

    /// The record as the server keeps it: its canonical encoding with the value replaced by
    /// `nonce || ciphertext || tag`. A tombstone has no value to seal. Appends to `out`.
    pub fn seal(&self, record: &Record, out: &mut Vec<u8>) {
        let Some(value) = &record.value else {
            record.encode(out);
            return;
        };
        let Some(k) = self.keys.first() else {
            record.encode(out);
            return;
        };
        let header = header(record);
        let mut m = <Hmac<Sha256>>::new_from_slice(&k.nonce).expect("any key length");
        m.update(&header);
        m.update(value);
        let mac = m.finalize().into_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&mac[..NONCE_LEN]);
        let mut body = value.to_vec();
        k.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..]),
                &mut body,
            )
            .expect("sealing a value under 4 GiB");
        let mut sealed = Vec::with_capacity(NONCE_LEN + body.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        Record {
            value: Some(sealed.into()),
            ..record.clone()
        }
        .encode(out);
    }

    /// The record a server's bytes hold, its value opened with whichever cookie key sealed it.
    pub fn open(&self, bytes: &[u8]) -> Result<Record, OpenError> {
        let record = crate::replication::frame::decode_record(bytes)
            .map_err(|e| OpenError::Decode(e.to_string()))?;
        let Some(sealed) = &record.value else {
            return Ok(record);
        };
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Short);
        }
        let header = header(&record);
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        for k in &self.keys {
            let mut buf = body.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Short)?;
            if let Ok(plain) = k
                .aead
                .open_in_place(nonce, Aad::from(&header[..]), &mut buf)
            {
                let value: Arc<[u8]> = Arc::from(&*plain);
                return Ok(Record {
                    value: Some(value),
                    ..record
                });
            }
        }
        Err(OpenError::NoKey)
    }
}

/// What binds a sealed value to its record: kind, key, version and expiry (the canonical encoding's
/// fields before the value, tombstone flag cleared).
fn header(record: &Record) -> Vec<u8> {
    let mut h = Vec::with_capacity(3 + record.key.len() + 14);
    h.push(record.kind as u8);
    h.push(record.key.len() as u8);
    h.extend_from_slice(&record.key);
    h.extend_from_slice(&record.version.hlc.to_be_bytes());
    h.extend_from_slice(&record.version.node_id.to_be_bytes());
    h.extend_from_slice(&record.expires.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Version};

    fn rec(key: &[u8], hlc: u64, value: Option<&[u8]>) -> Record {
        Record {
            kind: Kind::TokenKey,
            key: key.into(),
            version: Version { hlc, node_id: 3 },
            expires: 99,
            value: value.map(Into::into),
        }
    }

    #[test]
    fn a_sealed_value_opens_with_any_cookie_key_and_hides_the_value() {
        let old = Sealer::new(&[[1; 32]], "p");
        let rotated = Sealer::new(&[[2; 32], [1; 32]], "p");
        let r = rec(b"k1", 7, Some(b"the signing key"));
        let mut bytes = Vec::new();
        old.seal(&r, &mut bytes);
        assert!(!bytes.windows(15).any(|w| w == b"the signing key"));
        assert_eq!(rotated.open(&bytes), Ok(r.clone()));
        // Deterministic: the same record seals to the same bytes.
        let mut again = Vec::new();
        old.seal(&r, &mut again);
        assert_eq!(bytes, again);
        // Another prefix's keys do not open it.
        assert_eq!(
            Sealer::new(&[[1; 32]], "q").open(&bytes),
            Err(OpenError::NoKey)
        );
    }

    #[test]
    fn a_value_moved_to_another_version_does_not_open() {
        let s = Sealer::new(&[[1; 32]], "p");
        let mut a = Vec::new();
        s.seal(&rec(b"k1", 7, Some(b"v")), &mut a);
        // The version bytes sit after kind, flags, key length and the key.
        a[3 + 2 + 7] ^= 1;
        assert_eq!(s.open(&a), Err(OpenError::NoKey));
    }

    #[test]
    fn tombstones_pass_as_they_are() {
        let s = Sealer::new(&[[1; 32]], "p");
        let t = rec(b"k1", 7, None);
        let mut b = Vec::new();
        s.seal(&t, &mut b);
        let mut plain = Vec::new();
        t.encode(&mut plain);
        assert_eq!(b, plain);
        assert_eq!(s.open(&b), Ok(t));
    }
}
