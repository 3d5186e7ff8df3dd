//! A replicated record: kind, key, version (hybrid logical clock + writer), absolute expiry, and a value or
//! a tombstone — and its canonical byte encoding, shared by the wire protocol (docs/PROTOCOL.md, "Records")
//! and the store's digest.

use std::sync::Arc;

/// What a record is about. Kinds 13–63 are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A session → backend binding (the session table).
    SessionBinding = 1,
    /// The TLS session-ticket key set.
    TicketKeys = 2,
    /// A login session (`auth::session`): who, which tenant, roles, expiry; its tombstone is a revocation.
    LoginSession = 3,
    /// A token-sealing key (`auth::token`): key id → secret and its times.
    TokenKey = 4,
    /// An identity-signing key (`auth::identity`): key id → PKCS#8 private key and its times.
    IdentityKey = 5,
    /// A user kept in the store (added through the admin API), read when the users file lacks the name.
    User = 6,
    /// One node's share of a cluster-wide counter (`limits::counters`): key = counter id and origin node.
    Counter = 7,
    /// An address on the deny list (`limits`), refused at accept by every node until the record expires.
    Deny = 8,
    /// One notification in a login session's queue (`notify`): key = session id and notification id.
    Notification = 9,
    /// How far a login session's queue is acknowledged (`notify`): key = session id, value = the id.
    NotificationAck = 10,
    /// A resumable upload's state (`spool`): key = upload id, value = its metadata and acknowledged
    /// offset (JSON).
    Upload = 11,
    /// An upload's bytes (`spool`): key = upload id and chunk index, value = up to 256 KiB from
    /// `index * 256 KiB` (a later version holds more of the same chunk).
    UploadChunk = 12,
    /// A spent or revoked single sign-on code or token (`auth::oidc`): key = the token's id, value = why
    /// (used or revoked) and when; it expires with the token, so it is never kept longer than needed.
    SingleUse = 13,
}

impl Kind {
    /// One more than the highest kind: sizes per-kind tables.
    pub const BOUND: usize = 14;

    /// Kinds whose changes the store reports to its watcher (see `Store::watch`): the ones the
    /// notification queues index (login sessions by user, notifications by session). Every other kind
    /// costs one comparison per apply.
    pub fn watched(self) -> bool {
        matches!(
            self,
            Kind::LoginSession | Kind::Notification | Kind::NotificationAck
        )
    }
}

impl Kind {
    /// The kind for a wire byte; `None` for an unknown or reserved one.
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::SessionBinding),
            2 => Some(Kind::TicketKeys),
            3 => Some(Kind::LoginSession),
            4 => Some(Kind::TokenKey),
            5 => Some(Kind::IdentityKey),
            6 => Some(Kind::User),
            7 => Some(Kind::Counter),
            8 => Some(Kind::Deny),
            9 => Some(Kind::Notification),
            10 => Some(Kind::NotificationAck),
            11 => Some(Kind::Upload),
            12 => Some(Kind::UploadChunk),
            13 => Some(Kind::SingleUse),
            _ => None,
        }
    }
}

/// Longest key (bytes).
pub const MAX_KEY: usize = 64;
/// Longest value (bytes).
pub const MAX_VALUE: usize = 1 << 20;

/// A record's version: last writer wins by `(hlc, node_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Version {
    /// Hybrid logical clock: milliseconds since the Unix epoch << 16 | a logical counter.
    pub hlc: u64,
    /// The writer's node id (the first two bytes of SHA-256 of its node name).
    pub node_id: u16,
}

/// One replicated record. Values are shared (`Arc`) so a record is copied into the store, the origin
/// stream's backlog and a snapshot without copying its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub key: Arc<[u8]>,
    pub version: Version,
    /// Absolute expiry, seconds since the Unix epoch (0: never).
    pub expires: u32,
    /// `None`: a tombstone (the key was deleted at `version`).
    pub value: Option<Arc<[u8]>>,
}

impl Record {
    /// Whether this record wins over one at `other` (last writer wins; equal versions: the larger
    /// encoding, so every node picks the same).
    pub fn newer_than(&self, other: &Record) -> bool {
        match self.version.cmp(&other.version) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                self.encode(&mut a);
                other.encode(&mut b);
                a > b
            }
        }
    }

    /// Bytes on the wire (and in the digest) for this record.
    pub fn encoded_len(&self) -> usize {
        1 + 1 + 1 + self.key.len() + 8 + 2 + 4 + self.value.as_ref().map_or(0, |v| 4 + v.len())
    }

    /// Appends the canonical encoding (docs/PROTOCOL.md, "Records").
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(!self.key.is_empty() && self.key.len() <= MAX_KEY);
        out.push(self.kind as u8);
        out.push(u8::from(self.value.is_none()));
        out.push(self.key.len() as u8);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.version.hlc.to_be_bytes());
        out.extend_from_slice(&self.version.node_id.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        if let Some(v) = &self.value {
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
}
