//! Session ticket keys: one key set for every worker (and, with replication, every node), rotated on a
//! schedule, so a client resumes wherever it lands.
//!
//! A ticket is `key id (16) | nonce (12) | AES-256-GCM(plaintext)`, with the key id as associated data.
//! The newest key seals; the newest and the previous two open (a ticket lives two to three rotations).
//! The key set is a plain value (`TicketKeySet`) published with arc-swap, so the replication stage can
//! ship it to peers and install theirs.

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const KEY_ID_LEN: usize = 16;
const KEYS_KEPT: usize = 3;

/// One ticket key as it would be mirrored to a replica.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub id: [u8; KEY_ID_LEN],
    pub secret: [u8; 32],
    /// Seconds since the Unix epoch when it was made.
    pub created: u64,
}

impl TicketKey {
    /// The replicated record's value: the secret, then `created` (big-endian); the key id is the
    /// record's key.
    pub fn to_value(&self) -> [u8; 40] {
        let mut v = [0u8; 40];
        v[..32].copy_from_slice(&self.secret);
        v[32..].copy_from_slice(&self.created.to_be_bytes());
        v
    }

    /// A key from a replicated record's key and value; `None` when either has the wrong size.
    pub fn from_record(id: &[u8], value: &[u8]) -> Option<TicketKey> {
        let id: [u8; KEY_ID_LEN] = id.try_into().ok()?;
        let value: &[u8; 40] = value.try_into().ok()?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&value[..32]);
        let created = u64::from_be_bytes(value[32..].try_into().ok()?);
        Some(TicketKey {
            id,
            secret,
            created,
        })
    }
}

impl std::fmt::Debug for TicketKey {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// The keys in use, newest first.
#[derive(Debug, Clone, Default)]
pub struct TicketKeySet {
    pub keys: Vec<TicketKey>,
}

struct Sealing {
    set: TicketKeySet,
    aeads: Vec<LessSafeKey>,
}

impl Sealing {
    fn new(set: TicketKeySet) -> Self {
        let aeads = set
            .keys
            .iter()
            .map(|k| {
                LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, &k.secret).expect("32-byte AES-256-GCM key"),
                )
            })
            .collect();
        Sealing { set, aeads }
    }
}

/// The process's ticket producer: shared by every TLS listener's rustls config.
pub struct TicketKeyring {
    current: ArcSwap<Sealing>,
    rng: SystemRandom,
    lifetime: u32,
    enabled: bool,
}

impl std::fmt::Debug for TicketKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeyring")
            .field("keys", &self.current.load().set.keys.len())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl TicketKeyring {
    /// A keyring with one fresh key; tickets are announced valid for two rotations.
    pub fn new(rotation: Duration, enabled: bool) -> Self {
        let ring = TicketKeyring {
            current: ArcSwap::from_pointee(Sealing::new(TicketKeySet::default())),
            rng: SystemRandom::new(),
            lifetime: (rotation.as_secs() * 2).clamp(60, 7 * 24 * 3600) as u32,
            enabled,
        };
        ring.rotate();
        ring
    }

    /// Makes a new key the sealing key; the oldest beyond `KEYS_KEPT` is forgotten.
    pub fn rotate(&self) {
        let Some(key) = self.new_key() else {
            log::error!("ticket key rotation: keeping the current keys");
            return;
        };
        let mut set = self.current.load().set.clone();
        set.keys.insert(0, key);
        set.keys.truncate(KEYS_KEPT);
        self.install(set);
    }

    /// A fresh random key, not installed (a cluster node publishes it to its peers first).
    pub fn new_key(&self) -> Option<TicketKey> {
        let mut key = TicketKey {
            id: [0; KEY_ID_LEN],
            secret: [0; 32],
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        if self.rng.fill(&mut key.id).is_err() || self.rng.fill(&mut key.secret).is_err() {
            log::error!("ticket key: no randomness available");
            return None;
        }
        Some(key)
    }

    /// The keys in use (for replication).
    pub fn key_set(&self) -> TicketKeySet {
        self.current.load().set.clone()
    }

    /// Replaces the keys (a replica installing its primary's set).
    pub fn install(&self, set: TicketKeySet) {
        self.current.store(Arc::new(Sealing::new(set)));
    }
}

impl ProducesTickets for TicketKeyring {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let sealing = self.current.load();
        let key = sealing.set.keys.first()?;
        let aead = sealing.aeads.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&key.id),
            &mut body,
        )
        .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < KEY_ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = cipher.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let sealing = self.current.load();
        let i = sealing.set.keys.iter().position(|k| k.id == id)?;
        let mut body = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = sealing.aeads[i]
            .open_in_place(nonce, Aad::from(id), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_across_two_rotations_then_expire() {
        let ring = TicketKeyring::new(Duration::from_secs(3600), true);
        let t = ring.encrypt(b"session state").unwrap();
        assert_eq!(ring.decrypt(&t).unwrap(), b"session state");
        ring.rotate();
        ring.rotate();
        assert_eq!(
            ring.decrypt(&t).unwrap(),
            b"session state",
            "third key still kept"
        );
        ring.rotate();
        assert!(
            ring.decrypt(&t).is_none(),
            "key forgotten after three rotations"
        );
    }

    #[test]
    fn tampered_or_foreign_tickets_are_refused() {
        let a = TicketKeyring::new(Duration::from_secs(60), true);
        let b = TicketKeyring::new(Duration::from_secs(60), true);
        let mut t = a.encrypt(b"x").unwrap();
        assert!(b.decrypt(&t).is_none());
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(a.decrypt(&t).is_none());
        assert!(a.decrypt(&[]).is_none());
        assert!(a.decrypt(&[0u8; 20]).is_none());
    }

    #[test]
    fn an_installed_key_set_opens_the_other_nodes_tickets() {
        let primary = TicketKeyring::new(Duration::from_secs(60), true);
        let replica = TicketKeyring::new(Duration::from_secs(60), true);
        let t = primary.encrypt(b"resume me").unwrap();
        replica.install(primary.key_set());
        assert_eq!(replica.decrypt(&t).unwrap(), b"resume me");
    }

    #[test]
    fn a_key_survives_its_record_encoding() {
        let ring = TicketKeyring::new(Duration::from_secs(60), true);
        let key = ring.new_key().unwrap();
        let back = TicketKey::from_record(&key.id, &key.to_value()).unwrap();
        assert!(back == key);
        assert!(TicketKey::from_record(&key.id[..8], &key.to_value()).is_none());
        assert!(TicketKey::from_record(&key.id, &key.to_value()[..39]).is_none());
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let ring = TicketKeyring::new(Duration::from_secs(60), true);
        let set = ring.key_set();
        let secret_hex: String = set.keys[0].secret.iter().map(|b| format!("{b}")).collect();
        let shown = format!("{:?} {:?}", ring, set);
        assert!(!shown.contains("secret"));
        assert!(!shown.contains(&secret_hex));
    }
}
