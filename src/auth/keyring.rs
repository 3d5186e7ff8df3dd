//! What the auth key rings (sealed tokens, identity JWTs) share: keys kept newest first, one per id.

/// A key a ring holds: its id, and when it was made (seconds since the Unix epoch).
pub(crate) trait RingKey {
    fn id(&self) -> &str;
    fn created(&self) -> u64;
}

/// Adds `key` to `keys` (newest first), replacing the one with its id; returns it where it now sits.
pub(crate) fn install<K: RingKey>(keys: &mut Vec<K>, key: K) -> &K {
    keys.retain(|k| k.id() != key.id());
    let at = keys
        .iter()
        .position(|k| k.created() < key.created())
        .unwrap_or(keys.len());
    keys.insert(at, key);
    &keys[at]
}
