//! The notification records and ids (docs/PROTOCOL.md, kinds 9 and 10), and the writes a queue takes:
//! enqueue, acknowledge, delete.
//!
//! A queue belongs to one login session (its 16-byte id). Each notification is a record of its own
//! (kind 9, key = session id ‖ notification id), so two nodes publishing to one queue never overwrite
//! each other (last writer wins is per key). How far the client acknowledged is one record per queue
//! (kind 10, key = session id): anything at or below it reads as deleted on every node, even a
//! notification that reaches a node after the acknowledgement did.

use crate::store::{Kind, Record, StoreWriter};

/// A queue's id: the login session's id.
pub type QueueId = [u8; 16];

pub use super::ids::{IdClock, MAX_ID};

/// Bit 0 of a value's flags: delete the notification once delivered (no acknowledgement needed).
pub const FLAG_DELETE_ON_DELIVERY: u8 = 1;
const FORMAT: u8 = 1;

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A notification record's key: the session id, then the id (big-endian, so a queue's keys sort by id).
pub fn key(queue: &QueueId, id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(queue);
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The session id and notification id of a kind 9 key; `None` for a key of another shape.
pub fn split_key(key: &[u8]) -> Option<(QueueId, u64)> {
    if key.len() != 24 {
        return None;
    }
    let q: QueueId = key[..16].try_into().ok()?;
    let id = u64::from_be_bytes(key[16..].try_into().ok()?);
    Some((q, id))
}

/// A notification as a record value holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<'a> {
    pub flags: u8,
    /// Older notifications of the queue dropped to make room for this one (the marker).
    pub dropped: u32,
    /// The publisher's `data`, as JSON text.
    pub data: &'a [u8],
}

impl Notification<'_> {
    /// `u8 format (1) ‖ u8 flags ‖ u32 dropped ‖ data (JSON text, the rest)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(6 + self.data.len());
        v.push(FORMAT);
        v.push(self.flags);
        v.extend_from_slice(&self.dropped.to_be_bytes());
        v.extend_from_slice(self.data);
        v
    }

    /// Reads a value strictly: `None` for another format, unknown flags or a short value.
    pub fn decode(value: &[u8]) -> Option<Notification<'_>> {
        match value {
            [FORMAT, flags, a, b, c, d, data @ ..] if flags & !FLAG_DELETE_ON_DELIVERY == 0 => {
                Some(Notification {
                    flags: *flags,
                    dropped: u32::from_be_bytes([*a, *b, *c, *d]),
                    data,
                })
            }
            _ => None,
        }
    }
}

/// A queue's acknowledgement record value: `u64` the highest id acknowledged.
pub fn ack_value(up_to: u64) -> [u8; 8] {
    up_to.to_be_bytes()
}

/// Reads an acknowledgement value (`None` unless exactly 8 bytes).
pub fn read_ack(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// How far `queue` is acknowledged on this node (0: nothing yet).
pub fn acked(store: &crate::store::Store, queue: &QueueId, now: u32) -> u64 {
    store
        .get(Kind::NotificationAck, queue, now)
        .and_then(|r| read_ack(r.value.as_deref()?))
        .unwrap_or(0)
}

/// Writes notification `id` to `queue` (applied here at once; replicated by the replication thread).
/// `on_ack`: make it a `sync` write, called once a peer holds it.
pub fn write_notification(
    writer: &StoreWriter,
    queue: &QueueId,
    id: u64,
    value: Vec<u8>,
    expires: u32,
    on_ack: Option<crate::store::OnAck>,
) -> Result<(), crate::store::Full> {
    let record = Record {
        kind: Kind::Notification,
        key: key(queue, id)[..].into(),
        version: writer.version(),
        expires,
        value: Some(value.into()),
    };
    match on_ack {
        Some(f) => writer.write_sync(record, f).map(drop),
        None => writer.write(record).map(drop),
    }
}

/// Deletes notification `id` of `queue` (a tombstone kept until `expires`, no earlier than the
/// notification's own expiry).
pub fn delete(
    writer: &StoreWriter,
    queue: &QueueId,
    id: u64,
    expires: u32,
) -> Result<(), crate::store::Full> {
    writer
        .delete(Kind::Notification, &key(queue, id), expires)
        .map(drop)
}

/// Raises `queue`'s acknowledgement to `up_to` (never lowers it: a lower one is already covered).
/// `on_ack` as in [`write_notification`]; called at once when nothing needed writing.
pub fn write_ack(
    writer: &StoreWriter,
    queue: &QueueId,
    up_to: u64,
    expires: u32,
    now: u32,
    on_ack: Option<crate::store::OnAck>,
) -> Result<(), crate::store::Full> {
    let current = acked(writer.store(), queue, now);
    if up_to <= current {
        if let Some(f) = on_ack {
            f();
        }
        return Ok(());
    }
    let record = Record {
        kind: Kind::NotificationAck,
        key: queue[..].into(),
        version: writer.version(),
        expires,
        value: Some(ack_value(up_to)[..].into()),
    };
    match on_ack {
        Some(f) => writer.write_sync(record, f).map(drop),
        None => writer.write(record).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_are_refused() {
        let n = Notification {
            flags: FLAG_DELETE_ON_DELIVERY,
            dropped: 7,
            data: b"{\"a\":1}",
        };
        let v = n.encode();
        assert_eq!(Notification::decode(&v), Some(n));
        assert_eq!(Notification::decode(&[]), None);
        assert_eq!(Notification::decode(&[2, 0, 0, 0, 0, 0]), None);
        assert_eq!(Notification::decode(&[1, 0x80, 0, 0, 0, 0]), None);
        let q = [9u8; 16];
        assert_eq!(split_key(&key(&q, 42)), Some((q, 42)));
        assert_eq!(split_key(b"short"), None);
        assert_eq!(read_ack(&ack_value(5)), Some(5));
        assert_eq!(read_ack(b"1234567"), None);
    }
}
