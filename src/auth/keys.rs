//! The auth key rings the workers use (token sealing, identity signing), and the keeper that makes, finds
//! and installs their keys — replicated through the store like TLS ticket keys, so a token sealed on one
//! node opens on every other.
//!
//! Keys live in the store under their rotation *slot* (`created / rotation`, 8 bytes big-endian) and the
//! maker's node id (2 bytes): a node makes a key for a slot only when it holds none (so a node starting
//! after its peers uses theirs), and two nodes starting together never overwrite each other's (with one record per slot, last writer wins left the loser sealing, until the
//! records converged, tokens no other node opens — every user of a killed node was logged out, in the
//! failover benchmark). The keeper finds every key by a scan of the store, run whenever a key record
//! changes (a key made, arrived or expired: a few times a rotation); keys made with another
//! `key_rotation`, before a restart or by a peer configured differently are found the same way, so changing
//! `key_rotation` logs nobody out. A key seals (or signs) only once it is *mature* — made at least
//! [`MATURITY`] ago, time enough to reach every peer — except while no key is mature (a first start):
//! then the newest does. Every key found opens (or is published in the JWKS) until it retires.
//!
//! The keeper runs on its own thread (never a worker), every 100 ms; workers read the rings through
//! `arc-swap` (one atomic load, no lock).

use super::identity::{IdentityKey, IdentityKeyring};
use super::token::{Keyring, TokenKey};
use crate::store::{Kind, Record, Store, StoreWriter};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// How old a key must be before it seals or signs: longer than replication takes to reach every peer.
pub const MATURITY: u64 = 2;
/// Most slots the keeper looks at per kind (a very short rotation with a long session lifetime).
const MAX_SLOTS: u64 = 4096;

/// The token keys: all that open, and the ring that seals (the mature key first).
#[derive(Debug)]
pub struct TokenRings {
    pub open: Keyring,
    pub seal: Keyring,
}

/// The identity keys: the ring that signs (mature keys), and the JWKS document of every published key.
#[derive(Debug)]
pub struct IdentityRings {
    pub sign: IdentityKeyring,
    pub jwks: Arc<str>,
    /// Changes whenever the signing key does (cached JWTs of an older one are re-signed).
    pub generation: u64,
}

/// The rings, as workers read them.
#[derive(Debug)]
pub struct AuthKeys {
    tokens: ArcSwap<TokenRings>,
    identity: ArcSwap<IdentityRings>,
}

impl AuthKeys {
    fn empty(k: &KeyTimes) -> AuthKeys {
        AuthKeys {
            tokens: ArcSwap::from_pointee(TokenRings {
                open: Keyring::new(k.token_retire),
                seal: Keyring::new(k.token_retire),
            }),
            identity: ArcSwap::from_pointee(IdentityRings {
                sign: IdentityKeyring::new(k.identity_signs, k.identity_ttl),
                jwks: Arc::from("{\"keys\":[]}"),
                generation: 0,
            }),
        }
    }

    /// The token rings now (one atomic load).
    pub fn tokens(&self) -> arc_swap::Guard<Arc<TokenRings>> {
        self.tokens.load()
    }

    /// The identity rings now.
    pub fn identity(&self) -> arc_swap::Guard<Arc<IdentityRings>> {
        self.identity.load()
    }
}

/// The key lifetimes, from `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct KeyTimes {
    /// A new key each rotation.
    pub rotation: Duration,
    /// How long a token key opens tokens: it seals for about a rotation, and a token it sealed may live
    /// as long as a login session.
    pub token_retire: Duration,
    /// How long an identity key signs.
    pub identity_signs: Duration,
    /// Longest identity token; a key stays published this long after it stops signing.
    pub identity_ttl: Duration,
}

impl KeyTimes {
    /// Times for a rotation, a login session's longest life and the identity tokens' lifetime.
    pub fn new(rotation: Duration, max_lifetime: Duration, identity_ttl: Duration) -> KeyTimes {
        let rotation = rotation.max(Duration::from_secs(1));
        KeyTimes {
            rotation,
            token_retire: 2 * rotation + max_lifetime,
            identity_signs: 2 * rotation,
            identity_ttl,
        }
    }
}

/// A key record's value, as the store holds it.
type KeyValue = Arc<[u8]>;

/// Makes, finds and installs keys (see the module docs). Owned by the keeper thread.
#[derive(Debug)]
pub struct KeyKeeper {
    times: KeyTimes,
    keys: Arc<AuthKeys>,
    /// What was installed last (key ids and the sealing one), to install only on change.
    token_ids: Vec<String>,
    identity_ids: Vec<String>,
    generation: u64,
    /// The store's change generation of each key kind at the last scan (a change calls for a new scan),
    /// and the values found. Changes, not counts: a peer's key replacing ours under the same slot (last
    /// writer wins) changes no count, and a scan kept from before it would still seal with our lost key —
    /// tokens no other node opens (found by the failover benchmark: every user of the node killed was
    /// logged out).
    counts: (u64, u64),
    scanned: (Vec<KeyValue>, Vec<KeyValue>),
    /// The last round's fingerprint of the key records, and when the rings change next by time alone.
    fingerprint: u64,
    recheck_at: u64,
}

impl KeyKeeper {
    pub fn new(times: KeyTimes) -> KeyKeeper {
        KeyKeeper {
            keys: Arc::new(AuthKeys::empty(&times)),
            times,
            token_ids: Vec::new(),
            identity_ids: Vec::new(),
            generation: 0,
            counts: (u64::MAX, u64::MAX),
            scanned: (Vec::new(), Vec::new()),
            fingerprint: 0,
            recheck_at: 0,
        }
    }

    /// The rings this keeper installs into.
    pub fn keys(&self) -> Arc<AuthKeys> {
        self.keys.clone()
    }

    fn slot(&self, unix: u64) -> u64 {
        unix / self.times.rotation.as_secs()
    }

    /// One round at `unix` (seconds): makes this slot's keys when missing (writing them through
    /// `writer`, which applies them to the store at once and sends them to peers), then installs every
    /// live key the store holds.
    pub fn tick(&mut self, store: &Store, writer: &StoreWriter, unix: u64) {
        let now32 = unix.min(u64::from(u32::MAX)) as u32;
        let slot = self.slot(unix);
        // This node's key record for the slot: the slot and the node's id. Each node makes its own, so
        // two nodes starting together never overwrite each other's key (last writer wins would leave the
        // loser sealing, for a moment, tokens no other node opens); every node's keys open everywhere
        // (found by the scan below).
        let slot_key = own_key(writer, slot);
        let rot = self.times.rotation.as_secs();
        // A key for this slot another node made (and this one holds) serves as well: a node that starts
        // after its peers makes none (the usual case), only nodes that start together make one each.
        let made = |kind: Kind, created: &dyn Fn(&[u8]) -> Option<u64>| -> bool {
            store.get(kind, &slot_key, now32).is_some() || {
                let reader = store.reader();
                reader
                    .iter(Some(kind))
                    .filter(|r| crate::store::table::live(r, now32))
                    .filter_map(|r| r.value.as_deref())
                    .any(|v| created(v).is_some_and(|c| c / rot == slot))
            }
        };
        if !made(Kind::TokenKey, &|v| {
            TokenKey::from_value(v).map(|k| k.created)
        }) {
            let retires = unix + self.times.token_retire.as_secs();
            match TokenKey::generate(unix, retires) {
                Ok(key) => {
                    let (_, value) = key.to_record();
                    let _ = writer.write(key_record(writer, Kind::TokenKey, slot, &value, retires));
                    log::info!("auth: new token key {} published", key.id());
                }
                Err(e) => log::error!("auth: cannot make a token key: {e}"),
            }
        }
        if !made(Kind::IdentityKey, &|v| {
            IdentityKey::from_value(v).map(|k| k.created)
        }) {
            let retires = unix + self.times.identity_signs.as_secs();
            match IdentityKey::generate(unix, retires) {
                Ok(key) => {
                    let published = retires + self.times.identity_ttl.as_secs();
                    let _ = writer.write(key_record(
                        writer,
                        Kind::IdentityKey,
                        slot,
                        &key.to_value(),
                        published,
                    ));
                    log::info!("auth: new identity key {} published", key.kid());
                }
                Err(e) => log::error!("auth: cannot make an identity key: {e}"),
            }
        }

        let token_slots = (self.times.token_retire.as_secs() / rot + 1).min(MAX_SLOTS);
        let identity_slots =
            ((self.times.identity_signs + self.times.identity_ttl).as_secs() / rot + 1)
                .min(MAX_SLOTS);
        let counts = (
            store.changes_of(Kind::TokenKey),
            store.changes_of(Kind::IdentityKey),
        );
        // Nothing to do unless a key record changed, or a key matured or retired since the last round:
        // a fingerprint of the counts and of the slot records' versions, read without allocating (the
        // keeper runs twice a second beside workers that allocate nothing in steady state).
        let mut fingerprint = counts.0 << 32 ^ counts.1;
        for (kind, n) in [
            (Kind::TokenKey, token_slots),
            (Kind::IdentityKey, identity_slots),
        ] {
            for back in 0..=n {
                let Some(s) = slot.checked_sub(back) else {
                    break;
                };
                if let Some(r) = store.get(kind, &s.to_be_bytes(), now32) {
                    fingerprint = fingerprint.rotate_left(7)
                        ^ r.version.hlc
                        ^ u64::from(r.version.node_id)
                        ^ s;
                }
            }
        }
        if fingerprint == self.fingerprint && unix < self.recheck_at {
            return;
        }
        self.fingerprint = fingerprint;
        if counts != self.counts {
            self.counts = counts;
            let reader = store.reader();
            let live = |kind: Kind| -> Vec<Arc<[u8]>> {
                reader
                    .iter(Some(kind))
                    .filter(|r| crate::store::table::live(r, now32))
                    .filter_map(|r| r.value.clone())
                    .collect()
            };
            self.scanned = (live(Kind::TokenKey), live(Kind::IdentityKey));
        }
        let found = |kind: Kind, n: u64, scanned: &[Arc<[u8]>]| -> Vec<Arc<[u8]>> {
            (0..=n)
                .filter_map(|back| slot.checked_sub(back))
                .filter_map(|s| store.get(kind, &s.to_be_bytes(), now32)?.value)
                .chain(scanned.iter().cloned())
                .collect()
        };
        let mut tokens: Vec<TokenKey> = found(Kind::TokenKey, token_slots, &self.scanned.0)
            .iter()
            .filter_map(|v| TokenKey::from_value(v))
            .filter(|k| unix < k.retires)
            .collect();
        tokens.sort_by(|a, b| b.created.cmp(&a.created).then(b.id().cmp(a.id())));
        tokens.dedup_by(|a, b| a.id() == b.id());
        let mut identities: Vec<IdentityKey> =
            found(Kind::IdentityKey, identity_slots, &self.scanned.1)
                .iter()
                .filter_map(|v| IdentityKey::from_value(v))
                .filter(|k| unix < k.retires + self.times.identity_ttl.as_secs())
                .collect();
        identities.sort_by(|a, b| b.created.cmp(&a.created).then(b.kid().cmp(a.kid())));
        identities.dedup_by(|a, b| a.kid() == b.kid());
        // The next moment the rings change with no record changing: a key matures, retires or leaves
        // the JWKS.
        let ttl = self.times.identity_ttl.as_secs();
        self.recheck_at = tokens
            .iter()
            .flat_map(|k| [k.created + MATURITY, k.retires])
            .chain(
                identities
                    .iter()
                    .flat_map(|k| [k.created + MATURITY, k.retires, k.retires + ttl]),
            )
            .filter(|&t| t > unix)
            .min()
            .unwrap_or(u64::MAX);
        self.install_tokens(tokens, unix);
        self.install_identities(identities, unix);
    }

    fn install_tokens(&mut self, keys: Vec<TokenKey>, unix: u64) {
        let sealing = mature(&keys, unix, |k| k.created);
        let mut ids: Vec<String> = keys.iter().map(|k| k.id().to_string()).collect();
        ids.push(sealing.map_or(String::new(), |i| keys[i].id().to_string()));
        if ids == self.token_ids {
            return;
        }
        self.token_ids = ids;
        let mut open = Keyring::new(self.times.token_retire);
        let mut seal = Keyring::new(self.times.token_retire);
        if let Some(i) = sealing {
            seal.install(keys[i].clone());
        }
        for k in keys {
            open.install(k);
        }
        self.keys.tokens.store(Arc::new(TokenRings { open, seal }));
    }

    fn install_identities(&mut self, keys: Vec<IdentityKey>, unix: u64) {
        let signing = mature(&keys, unix, |k| k.created);
        let mut ids: Vec<String> = keys.iter().map(|k| k.kid().to_string()).collect();
        ids.push(signing.map_or(String::new(), |i| keys[i].kid().to_string()));
        if ids == self.identity_ids {
            return;
        }
        self.identity_ids = ids;
        self.generation += 1;
        let mut all = IdentityKeyring::new(self.times.identity_signs, self.times.identity_ttl);
        let mut sign = IdentityKeyring::new(self.times.identity_signs, self.times.identity_ttl);
        if let Some(i) = signing {
            sign.install(keys[i].clone());
        }
        for k in keys {
            all.install(k);
        }
        self.keys.identity.store(Arc::new(IdentityRings {
            sign,
            jwks: Arc::from(all.jwks_json(unix)),
            generation: self.generation,
        }));
    }
}

/// Which key seals: the newest one made at least [`MATURITY`] ago, else (none is) the newest.
fn mature<K>(keys: &[K], unix: u64, created: impl Fn(&K) -> u64) -> Option<usize> {
    keys.iter()
        .position(|k| unix.saturating_sub(created(k)) >= MATURITY && created(k) <= unix)
        .or((!keys.is_empty()).then_some(0))
}

/// A node's key record key for `slot`: the slot (8 bytes, big-endian), then the writer's node id.
fn own_key(writer: &StoreWriter, slot: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..8].copy_from_slice(&slot.to_be_bytes());
    key[8..].copy_from_slice(&writer.version().node_id.to_be_bytes());
    key
}

fn key_record(writer: &StoreWriter, kind: Kind, slot: u64, value: &[u8], expires: u64) -> Record {
    Record {
        kind,
        key: own_key(writer, slot).as_slice().into(),
        version: writer.version(),
        expires: expires.min(u64::from(u32::MAX)) as u32,
        value: Some(value.into()),
    }
}

/// Starts the keeper's thread: one round now (so the rings hold keys before any worker serves), then one
/// every 100 ms until `stop`.
pub fn start_keeper(
    mut keeper: KeyKeeper,
    store: Arc<Store>,
    writer: StoreWriter,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    keeper.tick(&store, &writer, unix_now());
    std::thread::Builder::new()
        .name("auth-keys".into())
        .spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Often: a peer's new key opens here within this much of arriving (a round that finds
                // nothing changed costs a few lookups and no allocation).
                std::thread::sleep(Duration::from_millis(100));
                keeper.tick(&store, &writer, unix_now());
            }
        })
}

fn unix_now() -> u64 {
    u64::from(crate::sticky::unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Arc<Store>, StoreWriter) {
        let store = Arc::new(Store::new());
        let (_feed, mut writers) = crate::store::WriteFeed::new(
            store.clone(),
            Arc::new(crate::store::Hlc::default()),
            1,
            1,
            16,
        );
        (store, writers.remove(0))
    }

    fn times() -> KeyTimes {
        KeyTimes::new(
            Duration::from_secs(3600),
            Duration::from_secs(12 * 3600),
            Duration::from_secs(300),
        )
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn first_tick_makes_and_installs_keys() {
        let (store, writer) = setup();
        let mut keeper = KeyKeeper::new(times());
        keeper.tick(&store, &writer, T0);
        let keys = keeper.keys();
        assert_eq!(keys.tokens().open.keys().len(), 1);
        // None is mature yet: the newest seals all the same.
        assert_eq!(keys.tokens().seal.keys().len(), 1);
        assert_eq!(keys.identity().sign.keys().len(), 1);
        assert!(
            keys.identity()
                .jwks
                .contains(keys.identity().sign.keys()[0].kid())
        );
        // A second round in the same slot makes nothing new.
        keeper.tick(&store, &writer, T0 + 10);
        assert_eq!(keys.tokens().open.keys().len(), 1);
    }

    #[test]
    fn a_peer_keeper_finds_the_same_keys_and_new_keys_mature_before_sealing() {
        let (store, writer) = setup();
        let mut a = KeyKeeper::new(times());
        let mut b = KeyKeeper::new(times());
        a.tick(&store, &writer, T0);
        b.tick(&store, &writer, T0 + 1);
        let (ka, kb) = (a.keys(), b.keys());
        assert_eq!(
            ka.tokens().seal.keys()[0].id(),
            kb.tokens().seal.keys()[0].id()
        );
        // Next slot: a new key, opened at once, sealing only once mature.
        let next = (T0 / 3600 + 1) * 3600;
        a.tick(&store, &writer, next);
        assert_eq!(ka.tokens().open.keys().len(), 2);
        let old = ka.tokens().open.keys()[1].id().to_string();
        assert_eq!(ka.tokens().seal.keys()[0].id(), old);
        a.tick(&store, &writer, next + MATURITY);
        assert_ne!(ka.tokens().seal.keys()[0].id(), old);
        let generation = ka.identity().generation;
        assert!(
            generation >= 2,
            "the signing identity key changed: {generation}"
        );
    }

    #[test]
    fn a_key_that_lost_its_slot_to_a_peers_neither_seals_nor_opens() {
        // Nodes a and c start in the same second: each makes a key for the slot before the other's
        // arrives. c's (written later) wins on both; a must then seal with c's key, not its own.
        let (store_a, writer_a) = setup();
        let (store_c, writer_c) = setup();
        let mut a = KeyKeeper::new(times());
        let mut c = KeyKeeper::new(times());
        a.tick(&store_a, &writer_a, T0);
        std::thread::sleep(Duration::from_millis(2));
        c.tick(&store_c, &writer_c, T0);
        let reader = store_c.reader();
        let theirs: Vec<Record> = reader.iter(None).cloned().collect();
        drop(reader);
        for record in theirs {
            store_a.apply(record);
        }
        a.tick(&store_a, &writer_a, T0 + MATURITY);
        c.tick(&store_c, &writer_c, T0 + MATURITY);
        let (ka, kc) = (a.keys(), c.keys());
        let ids = |k: &Arc<AuthKeys>| -> Vec<String> {
            k.tokens()
                .open
                .keys()
                .iter()
                .map(|k| k.id().to_string())
                .collect()
        };
        assert_eq!(ids(&ka), ids(&kc), "a opens exactly the keys c opens");
        assert_eq!(
            ka.tokens().seal.keys()[0].id(),
            kc.tokens().seal.keys()[0].id()
        );
        assert_eq!(
            ka.identity().sign.keys()[0].kid(),
            kc.identity().sign.keys()[0].kid()
        );
    }

    #[test]
    fn keys_made_with_another_rotation_still_open() {
        let (store, writer) = setup();
        let mut before = KeyKeeper::new(times());
        before.tick(&store, &writer, T0);
        let old = before.keys().tokens().open.keys()[0].id().to_string();
        // Restarted with a rotation of 7 minutes: other slot numbers, and the old key is still found.
        let mut after = KeyKeeper::new(KeyTimes::new(
            Duration::from_secs(420),
            Duration::from_secs(12 * 3600),
            Duration::from_secs(300),
        ));
        // (A key made in the current slot serves as it is: tick in the next 7-minute slot.)
        after.tick(&store, &writer, T0 + 420);
        let keys = after.keys();
        assert!(keys.tokens().open.keys().iter().any(|k| k.id() == old));
        assert_eq!(
            keys.tokens().open.keys().len(),
            2,
            "the old key and a new one"
        );
        // The old key is mature; the new one is not yet: the old one still seals.
        assert_eq!(keys.tokens().seal.keys()[0].id(), old);
    }

    #[test]
    fn retired_keys_leave_the_rings() {
        let (store, writer) = setup();
        let mut k = KeyKeeper::new(times());
        k.tick(&store, &writer, T0);
        let first = k.keys().tokens().open.keys()[0].id().to_string();
        let later = T0 + times().token_retire.as_secs() + 1;
        k.tick(&store, &writer, later);
        assert!(
            k.keys()
                .tokens()
                .open
                .keys()
                .iter()
                .all(|key| key.id() != first)
        );
    }
}
