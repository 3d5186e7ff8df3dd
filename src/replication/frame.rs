//! The frames of the replication protocol (docs/PROTOCOL.md, version 2): an owned [`Frame`] per frame type,
//! [`encode`] into a buffer and an incremental [`decode`] of untrusted bytes.
//!
//! The decoder refuses anything the protocol document does not allow, with the one-line reason it lists
//! ([`FrameError`]), and never panics. It allocates only for what is present: a length or count is checked
//! against its limit and against the bytes actually in the frame before anything is reserved for it, and a
//! frame's payload is not looked at until all of it has arrived (its length is checked against the 16 MiB cap
//! as soon as the 5-byte header is there).
//!
//! The encoding is canonical: a frame has exactly one encoding, and the decoder accepts nothing else (no
//! spare flag bits, no value after a tombstone, no trailing bytes), so `encode(decode(bytes))` gives back
//! `bytes` — the `replication_frame` fuzz target checks it (`src/fuzzing.rs`).

use crate::store::record::{Kind, MAX_KEY, MAX_VALUE, Record, Version};
use std::sync::Arc;

/// Bytes before a frame's payload: the type (`u8`) and the payload length (`u32`).
pub const HEADER_LEN: usize = 5;
/// Largest payload a frame may announce (16 MiB).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// `HELLO`'s magic number, "TTHR".
pub const MAGIC: u32 = 0x5454_4852;
/// The protocol version this module speaks.
/// 2: `PROMISE` frames, which a node with notifications waits for from every linked peer, and
/// `SYNC_POINT`, which a starting node waits for before it serves.
pub const VERSION: u16 = 2;
/// Longest node or cluster name (bytes).
pub const MAX_NAME: usize = 64;
/// Longest `WELCOME` reason (bytes).
pub const MAX_REASON: usize = 200;
/// Most records in one `UPDATES` or `SNAPSHOT_RECORDS` frame.
pub const MAX_RECORDS: u32 = 65_536;
/// Smallest encoded record: a tombstone with a 1-byte key.
const MIN_RECORD: usize = 1 + 1 + 1 + 1 + 8 + 2 + 4;

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const UPDATES: u8 = 0x10;
const ACK: u8 = 0x11;
const RESUME: u8 = 0x12;
const SYNC_POINT: u8 = 0x13;
const SNAPSHOT_BEGIN: u8 = 0x20;
const SNAPSHOT_RECORDS: u8 = 0x21;
const SNAPSHOT_END: u8 = 0x22;
const HEARTBEAT: u8 = 0x30;
const PROMISE: u8 = 0x31;
const SPOOL_DATA: u8 = 0x40;
const SPOOL_ACK: u8 = 0x41;
const SPOOL_FETCH: u8 = 0x42;
const SPOOL_PART: u8 = 0x43;
const SPOOL_MISSING: u8 = 0x44;
const SPOOL_CLAIM: u8 = 0x45;
const SPOOL_CLAIMED: u8 = 0x46;
/// Most upload bytes in one `SPOOL_DATA` or `SPOOL_PART` frame (256 KiB).
pub const MAX_SPOOL_BYTES: usize = 256 * 1024;
/// Bytes of a `SPOOL_DATA` payload before its upload bytes: id, tag, prev, offset, length.
pub const SPOOL_DATA_HEAD: usize = 16 + 8 + 8 + 8 + 4;
/// Bytes of a `SPOOL_PART` payload before its upload bytes: id, offset, length.
pub const SPOOL_PART_HEAD: usize = 16 + 8 + 4;
/// An upload id on the side channel (`spool::state::UploadId`).
pub type SpoolId = [u8; 16];

/// One frame of a replication link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame each way: who the sender is, and what it holds of the receiver's stream:
    /// `resume` is `(stream_epoch, applied)`, `None` when it holds nothing.
    Hello {
        cluster: String,
        node: String,
        epoch: u64,
        hlc: u64,
        resume: Option<(u64, u64)>,
    },
    /// Second frame each way: the hello accepted (`status` [`WelcomeStatus::Ok`], `start` present) or
    /// refused (`start` absent). `start` is `Some` exactly when `status` is `Ok`.
    Welcome {
        status: WelcomeStatus,
        reason: String,
        start: Option<Start>,
    },
    /// Consecutive records of the sender's stream, sequences `first`, `first + 1`, … (1 ..= 65,536 records).
    Updates {
        epoch: u64,
        first: u64,
        records: Vec<Record>,
    },
    /// Cumulative: the receiver applied the stream up to `seq`.
    Ack { epoch: u64, seq: u64 },
    /// A gap: send the stream again from `seq`.
    Resume { epoch: u64, seq: u64 },
    /// The sender now waits for the receiver's acknowledgements before it acknowledges a sync write; every
    /// write it acknowledged before is at or below `seq` of its stream (`epoch`). A starting receiver
    /// serves once it has applied that far.
    SyncPoint { epoch: u64, seq: u64 },
    /// A copy of the sender's store, taken at stream sequence `at`, follows.
    SnapshotBegin { epoch: u64, at: u64 },
    /// Part of a snapshot (1 ..= 65,536 records).
    SnapshotRecords { records: Vec<Record> },
    /// The snapshot is complete: its record count and digest.
    SnapshotEnd { count: u64, digest: [u8; 32] },
    /// Liveness and clocks: the sender's clock and the last sequence it streamed on this link.
    Heartbeat { hlc: u64, sent: u64 },
    /// Notification ids (docs/PROTOCOL.md, `PROMISE`): every id below `below` that the sender will ever
    /// make is in the frames it sent before this one. `u64::MAX` from a node without notifications.
    Promise { below: u64 },
    /// The spool's side channel (docs/PROTOCOL.md, "Upload bytes"): bytes `offset ..` of upload `id`,
    /// part of the append `tag` (non-zero, random per append) that starts where the append `prev`
    /// (0: the upload's creation) ended. Answered with `SpoolAck` once written to the receiver's file.
    SpoolData {
        id: SpoolId,
        tag: u64,
        prev: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The receiver wrote (`written`) or could not write the `len` bytes at `offset` of a `SpoolData` or
    /// `SpoolPart`: either way they leave the sender's window.
    SpoolAck {
        id: SpoolId,
        offset: u64,
        len: u32,
        written: bool,
    },
    /// Send me the acknowledged bytes `from .. upto` of upload `id` (as `SpoolPart`s, or `SpoolMissing`).
    SpoolFetch { id: SpoolId, from: u64, upto: u64 },
    /// An answer to `SpoolFetch`: acknowledged bytes of upload `id` from `offset`.
    SpoolPart {
        id: SpoolId,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// An answer to `SpoolFetch`: this node cannot send the bytes from `from` on.
    SpoolMissing { id: SpoolId, from: u64 },
    /// The sender wants to append to upload `id` (its attempt `nonce`): may it?
    SpoolClaim { id: SpoolId, nonce: u64 },
    /// The answer to `SpoolClaim`: `granted` unless an append to `id` is under way here; `offset` is the
    /// upload's acknowledged offset as this node's store holds it.
    SpoolClaimed {
        id: SpoolId,
        nonce: u64,
        granted: bool,
        offset: u64,
    },
}

/// A `WELCOME`'s status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WelcomeStatus {
    Ok = 0,
    UnsupportedVersion = 1,
    OtherCluster = 2,
    UnknownNode = 3,
    /// The name belongs to another certificate.
    NameTaken = 4,
    /// Retry later.
    Busy = 5,
}

impl WelcomeStatus {
    fn from_u8(b: u8) -> Option<WelcomeStatus> {
        Some(match b {
            0 => WelcomeStatus::Ok,
            1 => WelcomeStatus::UnsupportedVersion,
            2 => WelcomeStatus::OtherCluster,
            3 => WelcomeStatus::UnknownNode,
            4 => WelcomeStatus::NameTaken,
            5 => WelcomeStatus::Busy,
            _ => return None,
        })
    }
}

/// How an accepted link starts: `from` is the first sequence the sender will stream (after the snapshot,
/// for a snapshot: the snapshot's `at + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Start {
    /// The stream resumes at `from` (start byte 0).
    Resume { from: u64 },
    /// A snapshot follows (start byte 1).
    Snapshot { from: u64 },
}

/// Why bytes are not a frame. The `Display` form is the one-line reason logged before the link is closed
/// (docs/PROTOCOL.md, "What a malformed frame gets").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame too large ({0} bytes)")]
    TooLarge(u32),
    #[error("truncated field")]
    Truncated,
    #[error("trailing bytes in frame")]
    Trailing,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    UnsupportedVersion(u16),
    #[error("name not allowed")]
    BadName,
    #[error("epoch is zero")]
    ZeroEpoch,
    #[error("sequence out of range")]
    BadSequence,
    #[error("bad resume flag {0}")]
    BadResumeFlag(u8),
    #[error("unknown welcome status {0}")]
    UnknownStatus(u8),
    #[error("reason too long")]
    ReasonTooLong,
    #[error("reason not UTF-8")]
    ReasonNotUtf8,
    #[error("unknown start {0}")]
    UnknownStart(u8),
    #[error("no records")]
    NoRecords,
    #[error("too many records ({0})")]
    TooManyRecords(u32),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("reserved flag bits set")]
    ReservedFlags,
    #[error("record key empty or too long")]
    BadKey,
    #[error("record value too large")]
    ValueTooLarge,
    #[error("upload bytes empty or over 256 KiB ({0})")]
    BadSpoolLength(u32),
    #[error("upload byte range out of bounds")]
    BadSpoolRange,
    #[error("append tag is zero")]
    ZeroTag,
    #[error("bad flag byte {0}")]
    BadFlag(u8),
}

impl Frame {
    /// The frame's type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Hello { .. } => HELLO,
            Frame::Welcome { .. } => WELCOME,
            Frame::Updates { .. } => UPDATES,
            Frame::Ack { .. } => ACK,
            Frame::Resume { .. } => RESUME,
            Frame::SyncPoint { .. } => SYNC_POINT,
            Frame::SnapshotBegin { .. } => SNAPSHOT_BEGIN,
            Frame::SnapshotRecords { .. } => SNAPSHOT_RECORDS,
            Frame::SnapshotEnd { .. } => SNAPSHOT_END,
            Frame::Heartbeat { .. } => HEARTBEAT,
            Frame::Promise { .. } => PROMISE,
            Frame::SpoolData { .. } => SPOOL_DATA,
            Frame::SpoolAck { .. } => SPOOL_ACK,
            Frame::SpoolFetch { .. } => SPOOL_FETCH,
            Frame::SpoolPart { .. } => SPOOL_PART,
            Frame::SpoolMissing { .. } => SPOOL_MISSING,
            Frame::SpoolClaim { .. } => SPOOL_CLAIM,
            Frame::SpoolClaimed { .. } => SPOOL_CLAIMED,
        }
    }
}

/// Whether `name` is a node or cluster name: 1–64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Appends `frame`'s encoding to `out`.
///
/// The frame must be valid, as [`decode`] would return it: names and keys within their limits, 1 ..= 65,536
/// records per batch, a payload of at most 16 MiB (the sender sizes its batches with
/// [`Record::encoded_len`]), `start` present exactly when a welcome's status is `Ok`. Debug builds assert it.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let at = out.len();
    out.push(frame.frame_type());
    out.extend_from_slice(&[0; 4]);
    match frame {
        Frame::Hello {
            cluster,
            node,
            epoch,
            hlc,
            resume,
        } => {
            out.extend_from_slice(&MAGIC.to_be_bytes());
            out.extend_from_slice(&VERSION.to_be_bytes());
            put_name(out, cluster);
            put_name(out, node);
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&hlc.to_be_bytes());
            match resume {
                None => out.push(0),
                Some((stream_epoch, applied)) => {
                    out.push(1);
                    out.extend_from_slice(&stream_epoch.to_be_bytes());
                    out.extend_from_slice(&applied.to_be_bytes());
                }
            }
        }
        Frame::Welcome {
            status,
            reason,
            start,
        } => {
            debug_assert!(reason.len() <= MAX_REASON, "welcome reason too long");
            debug_assert_eq!(
                start.is_some(),
                *status == WelcomeStatus::Ok,
                "welcome start"
            );
            out.push(*status as u8);
            out.push(reason.len() as u8);
            out.extend_from_slice(reason.as_bytes());
            match start {
                Some(Start::Resume { from }) => {
                    out.push(0);
                    out.extend_from_slice(&from.to_be_bytes());
                }
                Some(Start::Snapshot { from }) => {
                    out.push(1);
                    out.extend_from_slice(&from.to_be_bytes());
                }
                None => {}
            }
        }
        Frame::Updates {
            epoch,
            first,
            records,
        } => {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
            put_records(out, records.iter());
        }
        Frame::Ack { epoch, seq }
        | Frame::Resume { epoch, seq }
        | Frame::SyncPoint { epoch, seq } => {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
        }
        Frame::SnapshotBegin { epoch, at } => {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&at.to_be_bytes());
        }
        Frame::SnapshotRecords { records } => put_records(out, records.iter()),
        Frame::SnapshotEnd { count, digest } => {
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(digest);
        }
        Frame::Heartbeat { hlc, sent } => {
            out.extend_from_slice(&hlc.to_be_bytes());
            out.extend_from_slice(&sent.to_be_bytes());
        }
        Frame::Promise { below } => out.extend_from_slice(&below.to_be_bytes()),
        Frame::SpoolData {
            id,
            tag,
            prev,
            offset,
            bytes,
        } => {
            out.truncate(at);
            return encode_spool_data(id, *tag, *prev, *offset, bytes, out);
        }
        Frame::SpoolPart { id, offset, bytes } => {
            out.truncate(at);
            return encode_spool_part(id, *offset, bytes, out);
        }
        Frame::SpoolAck {
            id,
            offset,
            len,
            written,
        } => {
            out.extend_from_slice(id);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.push(u8::from(!*written));
        }
        Frame::SpoolFetch { id, from, upto } => {
            out.extend_from_slice(id);
            out.extend_from_slice(&from.to_be_bytes());
            out.extend_from_slice(&upto.to_be_bytes());
        }
        Frame::SpoolMissing { id, from } => {
            out.extend_from_slice(id);
            out.extend_from_slice(&from.to_be_bytes());
        }
        Frame::SpoolClaim { id, nonce } => {
            out.extend_from_slice(id);
            out.extend_from_slice(&nonce.to_be_bytes());
        }
        Frame::SpoolClaimed {
            id,
            nonce,
            granted,
            offset,
        } => {
            out.extend_from_slice(id);
            out.extend_from_slice(&nonce.to_be_bytes());
            out.push(u8::from(*granted));
            out.extend_from_slice(&offset.to_be_bytes());
        }
    }
    let len = out.len() - at - HEADER_LEN;
    debug_assert!(len <= MAX_PAYLOAD, "frame payload of {len} bytes");
    out[at + 1..at + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(valid_name(name.as_bytes()), "name {name:?}");
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn put_records<'a>(out: &mut Vec<u8>, records: impl ExactSizeIterator<Item = &'a Record>) {
    debug_assert!((1..=MAX_RECORDS as usize).contains(&records.len()));
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        debug_assert!(r.value.as_ref().is_none_or(|v| v.len() <= MAX_VALUE));
        r.encode(out);
    }
}

/// One record in its canonical encoding ([`Record::encode`]) and nothing after it: how a record is kept
/// outside the wire protocol (the Redis backend's keys and change stream, docs/PROTOCOL.md "Redis layout").
pub fn decode_record(bytes: &[u8]) -> Result<Record, FrameError> {
    let mut r = Reader(bytes);
    let record = record(&mut r, &mut None)?;
    if !r.0.is_empty() {
        return Err(FrameError::Trailing);
    }
    Ok(record)
}

/// Appends a `SNAPSHOT_RECORDS` frame of `records`, byte for byte what [`encode`] writes for
/// `Frame::SnapshotRecords` of the same records, from references: a snapshot's sender encodes straight
/// from its pinned view of the store, without cloning (and then dropping) each record.
pub fn encode_snapshot_records(records: &[&Record], out: &mut Vec<u8>) {
    let at = out.len();
    out.push(SNAPSHOT_RECORDS);
    out.extend_from_slice(&[0; 4]);
    put_records(out, records.iter().copied());
    let len = out.len() - at - HEADER_LEN;
    debug_assert!(len <= MAX_PAYLOAD, "frame payload of {len} bytes");
    out[at + 1..at + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a `SPOOL_DATA` frame, byte for byte what [`encode`] writes for `Frame::SpoolData`, from a
/// borrowed slice: an append's bytes go onto the link without a copy into a frame first.
pub fn encode_spool_data(
    id: &SpoolId,
    tag: u64,
    prev: u64,
    offset: u64,
    bytes: &[u8],
    out: &mut Vec<u8>,
) {
    debug_assert!((1..=MAX_SPOOL_BYTES).contains(&bytes.len()) && tag != 0);
    out.push(SPOOL_DATA);
    out.extend_from_slice(&((SPOOL_DATA_HEAD + bytes.len()) as u32).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(&prev.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a `SPOOL_PART` frame from a borrowed slice (see [`encode_spool_data`]).
pub fn encode_spool_part(id: &SpoolId, offset: u64, bytes: &[u8], out: &mut Vec<u8>) {
    debug_assert!((1..=MAX_SPOOL_BYTES).contains(&bytes.len()));
    out.push(SPOOL_PART);
    out.extend_from_slice(&((SPOOL_PART_HEAD + bytes.len()) as u32).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes are needed, `Ok(Some((frame,
/// consumed)))` when one is complete (the caller drops `consumed` bytes and calls again), or the reason the
/// bytes are not a frame (the link is then closed).
///
/// Verdicts do not depend on how the bytes arrived: a prefix of `buf` decodes to `Ok(None)` or to the same
/// result. An unknown type is refused at the first byte and an oversized length at the fifth, before any
/// payload arrives.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if !matches!(
        kind,
        HELLO
            | WELCOME
            | UPDATES
            | ACK
            | RESUME
            | SYNC_POINT
            | SNAPSHOT_BEGIN
            | SNAPSHOT_RECORDS
            | SNAPSHOT_END
            | HEARTBEAT
            | PROMISE
            | SPOOL_DATA
            | SPOOL_ACK
            | SPOOL_FETCH
            | SPOOL_PART
            | SPOOL_MISSING
            | SPOOL_CLAIM
            | SPOOL_CLAIMED
    ) {
        return Err(FrameError::UnknownType(kind));
    }
    let &[_, l0, l1, l2, l3, ref rest @ ..] = buf else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let Some(payload) = rest.get(..len as usize) else {
        return Ok(None);
    };
    let mut r = Reader(payload);
    let frame = match kind {
        HELLO => hello(&mut r)?,
        WELCOME => welcome(&mut r)?,
        UPDATES => {
            let epoch = epoch(&mut r)?;
            let first = r.u64()?;
            let count = count(&mut r)?;
            // Sequences first ..= first + count - 1, all of them non-zero.
            if first == 0 || first.checked_add(u64::from(count) - 1).is_none() {
                return Err(FrameError::BadSequence);
            }
            Frame::Updates {
                epoch,
                first,
                records: records(&mut r, count)?,
            }
        }
        ACK => Frame::Ack {
            epoch: epoch(&mut r)?,
            seq: r.u64()?,
        },
        RESUME => Frame::Resume {
            epoch: epoch(&mut r)?,
            seq: sequence(&mut r)?,
        },
        SYNC_POINT => Frame::SyncPoint {
            epoch: epoch(&mut r)?,
            seq: r.u64()?,
        },
        SNAPSHOT_BEGIN => Frame::SnapshotBegin {
            epoch: epoch(&mut r)?,
            at: r.u64()?,
        },
        SNAPSHOT_RECORDS => {
            let count = count(&mut r)?;
            Frame::SnapshotRecords {
                records: records(&mut r, count)?,
            }
        }
        SNAPSHOT_END => Frame::SnapshotEnd {
            count: r.u64()?,
            digest: r.array()?,
        },
        HEARTBEAT => Frame::Heartbeat {
            hlc: r.u64()?,
            sent: r.u64()?,
        },
        PROMISE => Frame::Promise { below: r.u64()? },
        SPOOL_DATA => {
            let id = r.array()?;
            let tag = r.u64()?;
            if tag == 0 {
                return Err(FrameError::ZeroTag);
            }
            let prev = r.u64()?;
            let (offset, bytes) = spool_bytes(&mut r)?;
            Frame::SpoolData {
                id,
                tag,
                prev,
                offset,
                bytes,
            }
        }
        SPOOL_PART => {
            let id = r.array()?;
            let (offset, bytes) = spool_bytes(&mut r)?;
            Frame::SpoolPart { id, offset, bytes }
        }
        SPOOL_ACK => {
            let id = r.array()?;
            let (offset, len) = spool_range(&mut r)?;
            let written = match r.u8()? {
                0 => true,
                1 => false,
                b => return Err(FrameError::BadFlag(b)),
            };
            Frame::SpoolAck {
                id,
                offset,
                len,
                written,
            }
        }
        SPOOL_FETCH => {
            let id = r.array()?;
            let from = r.u64()?;
            let upto = r.u64()?;
            if from >= upto {
                return Err(FrameError::BadSpoolRange);
            }
            Frame::SpoolFetch { id, from, upto }
        }
        SPOOL_MISSING => Frame::SpoolMissing {
            id: r.array()?,
            from: r.u64()?,
        },
        SPOOL_CLAIM => Frame::SpoolClaim {
            id: r.array()?,
            nonce: r.u64()?,
        },
        SPOOL_CLAIMED => {
            let id = r.array()?;
            let nonce = r.u64()?;
            let granted = match r.u8()? {
                0 => false,
                1 => true,
                b => return Err(FrameError::BadFlag(b)),
            };
            Frame::SpoolClaimed {
                id,
                nonce,
                granted,
                offset: r.u64()?,
            }
        }
        _ => return Err(FrameError::UnknownType(kind)),
    };
    if !r.0.is_empty() {
        return Err(FrameError::Trailing);
    }
    Ok(Some((frame, HEADER_LEN + len as usize)))
}

/// An offset and a length of upload bytes (`SPOOL_DATA`, `SPOOL_PART`, `SPOOL_ACK`): 1 ..= 256 KiB, a
/// range that does not pass the end of the offsets.
fn spool_range(r: &mut Reader<'_>) -> Result<(u64, u32), FrameError> {
    let offset = r.u64()?;
    let len = r.u32()?;
    if len == 0 || len as usize > MAX_SPOOL_BYTES {
        return Err(FrameError::BadSpoolLength(len));
    }
    if offset.checked_add(u64::from(len)).is_none() {
        return Err(FrameError::BadSpoolRange);
    }
    Ok((offset, len))
}

/// The offset, length and bytes that end `SPOOL_DATA` and `SPOOL_PART`.
fn spool_bytes(r: &mut Reader<'_>) -> Result<(u64, Vec<u8>), FrameError> {
    let (offset, len) = spool_range(r)?;
    Ok((offset, r.take(len as usize)?.to_vec()))
}

fn hello(r: &mut Reader<'_>) -> Result<Frame, FrameError> {
    if r.u32()? != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let cluster = name(r)?;
    let node = name(r)?;
    let epoch = epoch(r)?;
    let hlc = r.u64()?;
    let resume = match r.u8()? {
        0 => None,
        1 => Some((self::epoch(r)?, r.u64()?)),
        b => return Err(FrameError::BadResumeFlag(b)),
    };
    Ok(Frame::Hello {
        cluster,
        node,
        epoch,
        hlc,
        resume,
    })
}

fn welcome(r: &mut Reader<'_>) -> Result<Frame, FrameError> {
    let b = r.u8()?;
    let status = WelcomeStatus::from_u8(b).ok_or(FrameError::UnknownStatus(b))?;
    let len = usize::from(r.u8()?);
    if len > MAX_REASON {
        return Err(FrameError::ReasonTooLong);
    }
    let reason = std::str::from_utf8(r.take(len)?).map_err(|_| FrameError::ReasonNotUtf8)?;
    let start = match status {
        WelcomeStatus::Ok => Some(match r.u8()? {
            0 => Start::Resume { from: sequence(r)? },
            1 => Start::Snapshot { from: sequence(r)? },
            b => return Err(FrameError::UnknownStart(b)),
        }),
        _ => None,
    };
    Ok(Frame::Welcome {
        status,
        reason: reason.to_owned(),
        start,
    })
}

fn name(r: &mut Reader<'_>) -> Result<String, FrameError> {
    let len = usize::from(r.u8()?);
    if !(1..=MAX_NAME).contains(&len) {
        return Err(FrameError::BadName);
    }
    let bytes = r.take(len)?;
    if !valid_name(bytes) {
        return Err(FrameError::BadName);
    }
    // ASCII, by the check above.
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::BadName)
}

fn epoch(r: &mut Reader<'_>) -> Result<u64, FrameError> {
    match r.u64()? {
        0 => Err(FrameError::ZeroEpoch),
        e => Ok(e),
    }
}

/// A stream sequence number: they start at 1.
fn sequence(r: &mut Reader<'_>) -> Result<u64, FrameError> {
    match r.u64()? {
        0 => Err(FrameError::BadSequence),
        s => Ok(s),
    }
}

fn count(r: &mut Reader<'_>) -> Result<u32, FrameError> {
    match r.u32()? {
        0 => Err(FrameError::NoRecords),
        n if n > MAX_RECORDS => Err(FrameError::TooManyRecords(n)),
        n => Ok(n),
    }
}

fn records(r: &mut Reader<'_>, count: u32) -> Result<Vec<Record>, FrameError> {
    // Reserve only for records that can be present: the smallest takes MIN_RECORD bytes.
    let count = count as usize;
    let mut out = Vec::with_capacity(count.min(r.0.len() / MIN_RECORD));
    let mut last_value = None;
    for _ in 0..count {
        out.push(record(r, &mut last_value)?);
    }
    Ok(out)
}

/// Values up to this long are shared with the previous record's when equal (see [`record`]).
const SHARED_VALUE: usize = 64;

/// One record (docs/PROTOCOL.md, "Records"), the inverse of [`Record::encode`]. A short value equal to the
/// previous record's (`last_value`) shares its allocation: batches of session bindings name a handful of
/// backends, so most values repeat, and sharing saves an allocation per record here and its memory in the
/// store.
fn record(r: &mut Reader<'_>, last_value: &mut Option<Arc<[u8]>>) -> Result<Record, FrameError> {
    let b = r.u8()?;
    let kind = Kind::from_u8(b).ok_or(FrameError::UnknownKind(b))?;
    let flags = r.u8()?;
    if flags & !1 != 0 {
        return Err(FrameError::ReservedFlags);
    }
    let len = usize::from(r.u8()?);
    if !(1..=MAX_KEY).contains(&len) {
        return Err(FrameError::BadKey);
    }
    let key = Arc::from(r.take(len)?);
    let version = Version {
        hlc: r.u64()?,
        node_id: r.u16()?,
    };
    let expires = r.u32()?;
    let value = if flags & 1 == 1 {
        None
    } else {
        let len = r.u32()? as usize;
        if len > MAX_VALUE {
            return Err(FrameError::ValueTooLarge);
        }
        let bytes = r.take(len)?;
        match last_value {
            Some(v) if **v == *bytes => Some(v.clone()),
            _ if len <= SHARED_VALUE => {
                let v: Arc<[u8]> = Arc::from(bytes);
                *last_value = Some(v.clone());
                Some(v)
            }
            _ => Some(Arc::from(bytes)),
        }
    };
    Ok(Record {
        kind,
        key,
        version,
        expires,
        value,
    })
}

/// The unread rest of a frame's payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if n > self.0.len() {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_records_from_references_encode_as_the_frame_does() {
        let records: Vec<Record> = (0..5u8)
            .map(|i| Record {
                kind: Kind::SessionBinding,
                key: vec![i; 16].into(),
                version: Version {
                    hlc: 1_000 + u64::from(i),
                    node_id: 7,
                },
                expires: if i % 2 == 0 { 0 } else { 99 },
                value: (i != 3).then(|| b"127.0.0.1:9001".as_slice().into()),
            })
            .collect();
        let refs: Vec<&Record> = records.iter().collect();
        let mut from_refs = vec![0xaa];
        encode_snapshot_records(&refs, &mut from_refs);
        let mut from_frame = vec![0xaa];
        encode(&Frame::SnapshotRecords { records }, &mut from_frame);
        assert_eq!(from_refs, from_frame);
    }

    fn rec(kind: Kind, key: &[u8], hlc: u64, value: Option<&[u8]>) -> Record {
        Record {
            kind,
            key: Arc::from(key),
            version: Version {
                hlc,
                node_id: 0xbeef,
            },
            expires: 1_700_000_000,
            value: value.map(Arc::from),
        }
    }

    /// One of every frame type, and every optional part present and absent.
    fn samples() -> Vec<Frame> {
        let max_key = [b'k'; MAX_KEY];
        vec![
            Frame::Hello {
                cluster: "prod-eu.1".into(),
                node: "lb_a".into(),
                epoch: 0x0123_4567_89ab_cdef,
                hlc: 42 << 16 | 3,
                resume: None,
            },
            Frame::Hello {
                cluster: "c".into(),
                node: "n".repeat(MAX_NAME),
                epoch: u64::MAX,
                hlc: 0,
                resume: Some((7, 0)),
            },
            Frame::Welcome {
                status: WelcomeStatus::Ok,
                reason: String::new(),
                start: Some(Start::Resume { from: 18 }),
            },
            Frame::Welcome {
                status: WelcomeStatus::Ok,
                reason: "stream epoch unknown: snapshot".into(),
                start: Some(Start::Snapshot { from: 1 }),
            },
            Frame::Welcome {
                status: WelcomeStatus::NameTaken,
                reason: "é".repeat(MAX_REASON / 2),
                start: None,
            },
            Frame::Welcome {
                status: WelcomeStatus::Busy,
                reason: "busy".into(),
                start: None,
            },
            Frame::Updates {
                epoch: 9,
                first: 1,
                records: vec![
                    rec(Kind::SessionBinding, b"s", 1, Some(b"backend-1")),
                    rec(Kind::TicketKeys, &max_key, u64::MAX, Some(b"")),
                    rec(Kind::SessionBinding, b"gone", 5, None),
                ],
            },
            Frame::Updates {
                epoch: 9,
                first: u64::MAX,
                records: vec![rec(Kind::SessionBinding, b"last", 1, None)],
            },
            Frame::Ack { epoch: 9, seq: 0 },
            Frame::Ack { epoch: 9, seq: 3 },
            Frame::Resume { epoch: 9, seq: 4 },
            Frame::SyncPoint { epoch: 9, seq: 0 },
            Frame::SnapshotBegin { epoch: 9, at: 0 },
            Frame::SnapshotRecords {
                records: vec![rec(Kind::SessionBinding, b"s", 1, Some(&[0, 1, 2, 255]))],
            },
            Frame::SnapshotEnd {
                count: 1,
                digest: [0x5a; 32],
            },
            Frame::Heartbeat {
                hlc: 1 << 40,
                sent: 3,
            },
            Frame::Promise { below: 0 },
            Frame::Promise { below: u64::MAX },
            Frame::SpoolData {
                id: [7; 16],
                tag: 1,
                prev: 0,
                offset: 0,
                bytes: vec![0xab; 300],
            },
            Frame::SpoolData {
                id: [0; 16],
                tag: u64::MAX,
                prev: 9,
                offset: u64::MAX - 1,
                bytes: vec![1],
            },
            Frame::SpoolAck {
                id: [1; 16],
                offset: 5,
                len: 1,
                written: true,
            },
            Frame::SpoolAck {
                id: [1; 16],
                offset: 0,
                len: MAX_SPOOL_BYTES as u32,
                written: false,
            },
            Frame::SpoolFetch {
                id: [2; 16],
                from: 0,
                upto: u64::MAX,
            },
            Frame::SpoolPart {
                id: [3; 16],
                offset: 1 << 20,
                bytes: b"part".to_vec(),
            },
            Frame::SpoolMissing {
                id: [4; 16],
                from: 3,
            },
            Frame::SpoolClaim {
                id: [5; 16],
                nonce: 77,
            },
            Frame::SpoolClaimed {
                id: [5; 16],
                nonce: 77,
                granted: true,
                offset: 1 << 30,
            },
            Frame::SpoolClaimed {
                id: [5; 16],
                nonce: 0,
                granted: false,
                offset: 0,
            },
        ]
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(frame, &mut out);
        out
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn hello_payload(magic: u32, version: u16, cluster: &[u8], node: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&magic.to_be_bytes());
        p.extend_from_slice(&version.to_be_bytes());
        for name in [cluster, node] {
            p.push(name.len() as u8);
            p.extend_from_slice(name);
        }
        p.extend_from_slice(&1u64.to_be_bytes());
        p.extend_from_slice(&2u64.to_be_bytes());
        p
    }

    /// A raw record: kind, flags, key, the fixed fields, and a value unless `value` is `None`.
    fn raw_record(kind: u8, flags: u8, key: &[u8], value: Option<(u32, &[u8])>) -> Vec<u8> {
        let mut p = vec![kind, flags, key.len() as u8];
        p.extend_from_slice(key);
        p.extend_from_slice(&[0; 14]);
        if let Some((len, bytes)) = value {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(bytes);
        }
        p
    }

    fn updates(epoch: u64, first: u64, count: u32, records: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&epoch.to_be_bytes());
        p.extend_from_slice(&first.to_be_bytes());
        p.extend_from_slice(&count.to_be_bytes());
        p.extend_from_slice(records);
        frame(UPDATES, &p)
    }

    fn two(a: u64, b: u64) -> Vec<u8> {
        [a.to_be_bytes(), b.to_be_bytes()].concat()
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = samples();
        let mut types: Vec<u8> = frames.iter().map(Frame::frame_type).collect();
        types.dedup();
        assert_eq!(
            types,
            [
                0x01, 0x02, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x30, 0x31, 0x40, 0x41, 0x42,
                0x43, 0x44, 0x45, 0x46
            ]
        );
        for f in frames {
            let bytes = encoded(&f);
            assert_eq!(decode(&bytes), Ok(Some((f.clone(), bytes.len()))), "{f:?}");
            if let Frame::Updates { records, .. } | Frame::SnapshotRecords { records } = &f {
                let sum: usize = records.iter().map(Record::encoded_len).sum();
                assert_eq!(
                    bytes.len(),
                    HEADER_LEN + sum + if f.frame_type() == UPDATES { 20 } else { 4 }
                );
            }
        }
    }

    #[test]
    fn largest_value_round_trips() {
        let value = vec![7; MAX_VALUE];
        let f = Frame::SnapshotRecords {
            records: vec![rec(Kind::TicketKeys, b"k", 1, Some(&value)); 3],
        };
        let bytes = encoded(&f);
        assert_eq!(decode(&bytes), Ok(Some((f, bytes.len()))));
    }

    #[test]
    fn largest_spool_frame_round_trips() {
        // Apart from `samples`: the stream tests split their stream at every byte.
        let f = Frame::SpoolData {
            id: [7; 16],
            tag: 1,
            prev: 0,
            offset: 0,
            bytes: vec![0xab; MAX_SPOOL_BYTES],
        };
        let bytes = encoded(&f);
        assert_eq!(bytes.len(), HEADER_LEN + SPOOL_DATA_HEAD + MAX_SPOOL_BYTES);
        assert_eq!(decode(&bytes), Ok(Some((f, bytes.len()))));
    }

    /// The bytes of a few frames written out by hand from docs/PROTOCOL.md.
    #[test]
    fn layout_matches_the_document() {
        let hb = encoded(&Frame::Heartbeat {
            hlc: 0x0102,
            sent: 3,
        });
        assert_eq!(
            hb,
            [
                0x30, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 3
            ]
        );
        assert_eq!(
            encoded(&Frame::Promise { below: 0x0a0b }),
            [0x31, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x0a, 0x0b]
        );
        let hello = encoded(&Frame::Hello {
            cluster: "c".into(),
            node: "n".into(),
            epoch: 1,
            hlc: 2,
            resume: Some((1, 5)),
        });
        let mut want = vec![0x01, 0, 0, 0, 43];
        want.extend_from_slice(b"TTHR\x00\x02\x01c\x01n");
        want.extend_from_slice(&two(1, 2));
        want.push(1);
        want.extend_from_slice(&two(1, 5));
        assert_eq!(hello, want);
        let welcome = encoded(&Frame::Welcome {
            status: WelcomeStatus::Ok,
            reason: "hi".into(),
            start: Some(Start::Snapshot { from: 2 }),
        });
        assert_eq!(
            welcome,
            [2, 0, 0, 0, 13, 0, 2, b'h', b'i', 1, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        let ups = encoded(&Frame::Updates {
            epoch: 1,
            first: 1,
            records: vec![Record {
                kind: Kind::SessionBinding,
                key: Arc::from(&b"k"[..]),
                version: Version {
                    hlc: 4,
                    node_id: 0x0a0b,
                },
                expires: 6,
                value: Some(Arc::from(&b"v"[..])),
            }],
        });
        let mut want = vec![0x10, 0, 0, 0, 43];
        want.extend_from_slice(&two(1, 1));
        want.extend_from_slice(&[
            0, 0, 0, 1, 1, 0, 1, b'k', 0, 0, 0, 0, 0, 0, 0, 4, 0x0a, 0x0b,
        ]);
        want.extend_from_slice(&[0, 0, 0, 6, 0, 0, 0, 1, b'v']);
        assert_eq!(ups, want);
        let data = encoded(&Frame::SpoolData {
            id: [0x11; 16],
            tag: 2,
            prev: 1,
            offset: 3,
            bytes: b"xy".to_vec(),
        });
        let mut want = vec![0x40, 0, 0, 0, 46];
        want.extend_from_slice(&[0x11; 16]);
        want.extend_from_slice(&two(2, 1));
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 2, b'x', b'y']);
        assert_eq!(data, want);
        let ack = encoded(&Frame::SpoolAck {
            id: [0x11; 16],
            offset: 3,
            len: 2,
            written: false,
        });
        let mut want = vec![0x41, 0, 0, 0, 29];
        want.extend_from_slice(&[0x11; 16]);
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 2, 1]);
        assert_eq!(ack, want);
        let claimed = encoded(&Frame::SpoolClaimed {
            id: [0x11; 16],
            nonce: 4,
            granted: true,
            offset: 5,
        });
        let mut want = vec![0x46, 0, 0, 0, 33];
        want.extend_from_slice(&[0x11; 16]);
        want.extend_from_slice(&4u64.to_be_bytes());
        want.push(1);
        want.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(claimed, want);
    }

    /// A `SPOOL_DATA` payload: id, tag, prev, offset, a length and the bytes given.
    fn spool_data(tag: u64, offset: u64, len: u32, bytes: &[u8]) -> Vec<u8> {
        let p = [
            &[9u8; 16][..],
            &two(tag, 0),
            &offset.to_be_bytes(),
            &len.to_be_bytes(),
            bytes,
        ]
        .concat();
        frame(SPOOL_DATA, &p)
    }

    #[test]
    fn spool_frames_refuse_bad_lengths_ranges_and_flags() {
        let big = vec![0u8; MAX_SPOOL_BYTES + 1];
        let id = [9u8; 16];
        let ack = |offset: u64, len: u32, flag: u8| {
            let p = [&id[..], &offset.to_be_bytes(), &len.to_be_bytes(), &[flag]].concat();
            frame(SPOOL_ACK, &p)
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (spool_data(0, 0, 1, b"x"), "append tag is zero"),
            (
                spool_data(1, 0, 0, b""),
                "upload bytes empty or over 256 KiB (0)",
            ),
            (
                spool_data(1, 0, big.len() as u32, &big),
                "upload bytes empty or over 256 KiB (262145)",
            ),
            (
                spool_data(1, u64::MAX, 1, b"x"),
                "upload byte range out of bounds",
            ),
            (spool_data(1, 0, 2, b"x"), "truncated field"),
            (spool_data(1, 0, 1, b"xy"), "trailing bytes in frame"),
            (
                spool_data(1, 0, u32::MAX, b""),
                "upload bytes empty or over 256 KiB (4294967295)",
            ),
            (frame(SPOOL_DATA, &id[..10]), "truncated field"),
            (
                frame(
                    SPOOL_PART,
                    &[&id[..], &0u64.to_be_bytes(), &0u32.to_be_bytes()].concat(),
                ),
                "upload bytes empty or over 256 KiB (0)",
            ),
            (ack(0, 1, 2), "bad flag byte 2"),
            (ack(0, 0, 0), "upload bytes empty or over 256 KiB (0)"),
            (ack(u64::MAX, 1, 0), "upload byte range out of bounds"),
            (
                frame(SPOOL_FETCH, &[&id[..], &two(5, 5)].concat()),
                "upload byte range out of bounds",
            ),
            (
                frame(SPOOL_FETCH, &[&id[..], &two(6, 5)].concat()),
                "upload byte range out of bounds",
            ),
            (frame(SPOOL_MISSING, &id), "truncated field"),
            (
                frame(SPOOL_CLAIM, &[&id[..], &two(1, 1)].concat()),
                "trailing bytes in frame",
            ),
            (
                frame(
                    SPOOL_CLAIMED,
                    &[&id[..], &1u64.to_be_bytes(), &[7], &1u64.to_be_bytes()].concat(),
                ),
                "bad flag byte 7",
            ),
            (frame(0x47, &[]), "unknown frame type 0x47"),
        ];
        for (bytes, reason) in cases {
            match decode(&bytes) {
                Err(e) => assert_eq!(
                    e.to_string(),
                    reason,
                    "{:02x?}",
                    &bytes[..bytes.len().min(64)]
                ),
                other => panic!("{reason}: {other:?}"),
            }
        }
        // A retired upload-chunk record (kind 12) from an older peer still decodes: it is held, unused.
        let old = updates(1, 1, 1, &raw_record(12, 0, &[0; 24], Some((1, b"v"))));
        assert!(matches!(decode(&old), Ok(Some((Frame::Updates { .. }, _)))));
        // The borrowed-slice encoders write what `encode` writes.
        let mut a = Vec::new();
        encode_spool_part(&id, 4, b"abc", &mut a);
        let b = encoded(&Frame::SpoolPart {
            id,
            offset: 4,
            bytes: b"abc".to_vec(),
        });
        assert_eq!(a, b);
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let good_hello = hello_payload(MAGIC, VERSION, b"c", b"n");
        let hello_with = |tail: &[u8]| frame(HELLO, &[&good_hello[..], tail].concat());
        let welcome = |status: u8, reason: &[u8], tail: &[u8]| {
            let p = [&[status, reason.len() as u8][..], reason, tail].concat();
            frame(WELCOME, &p)
        };
        let r1 = raw_record(1, 0, b"k", Some((1, b"v")));
        let long_key = [b'k'; MAX_KEY + 1];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x7f], "unknown frame type 0x7f"),
            (vec![0x00, 0, 0], "unknown frame type 0x00"),
            (frame(0x14, &[]), "unknown frame type 0x14"),
            (
                vec![0x21, 0x01, 0, 0, 1],
                "frame too large (16777217 bytes)",
            ),
            (
                vec![0x10, 0xff, 0xff, 0xff, 0xff],
                "frame too large (4294967295 bytes)",
            ),
            (frame(ACK, &[1; 15]), "truncated field"),
            (frame(HEARTBEAT, &[]), "truncated field"),
            (frame(SNAPSHOT_END, &[0; 39]), "truncated field"),
            (hello_with(&[]), "truncated field"),
            (hello_with(&[1, 0, 0, 0, 0, 0, 0, 0, 1]), "truncated field"),
            (
                frame(HELLO, &hello_payload(MAGIC, VERSION, b"c", b"n")[..8]),
                "truncated field",
            ),
            // A length that points past the frame: the key, the value, the reason, the records.
            (updates(1, 1, 1, &r1[..3]), "truncated field"),
            (
                updates(1, 1, 1, &raw_record(1, 0, b"k", Some((2, b"v")))),
                "truncated field",
            ),
            (frame(WELCOME, &[0, 3, b'a', b'b']), "truncated field"),
            (
                {
                    let mut f = welcome(1, b"abc", &[]);
                    f.truncate(f.len() - 1);
                    f[4] -= 1;
                    f
                },
                "truncated field",
            ),
            (updates(1, 1, 2, &r1), "truncated field"),
            (updates(1, 1, MAX_RECORDS, &r1), "truncated field"),
            (
                frame(ACK, &[&two(1, 1)[..], &[0]].concat()),
                "trailing bytes in frame",
            ),
            (hello_with(&[0, 0]), "trailing bytes in frame"),
            (welcome(3, b"", &[0]), "trailing bytes in frame"),
            (
                welcome(0, b"", &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
                "trailing bytes in frame",
            ),
            // A tombstone followed by what would have been its value.
            (
                updates(1, 1, 1, &raw_record(1, 1, b"k", Some((1, b"v")))),
                "trailing bytes in frame",
            ),
            (
                frame(HELLO, &hello_payload(0x5454_4853, 1, b"c", b"n")),
                "bad magic",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, 3, b"c", b"n")),
                "unsupported version 3",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, 0, b"c", b"n")),
                "unsupported version 0",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, VERSION, b"", b"n")),
                "name not allowed",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, VERSION, b"c", &[b'n'; 65])),
                "name not allowed",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, VERSION, b"a b", b"n")),
                "name not allowed",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, VERSION, b"c", b"n/1")),
                "name not allowed",
            ),
            (
                frame(HELLO, &hello_payload(MAGIC, VERSION, "é".as_bytes(), b"n")),
                "name not allowed",
            ),
            (
                {
                    let mut p = hello_payload(MAGIC, VERSION, b"c", b"n");
                    p[10..18].copy_from_slice(&[0; 8]);
                    p.push(0);
                    frame(HELLO, &p)
                },
                "epoch is zero",
            ),
            (
                hello_with(&[&[1][..], &two(0, 5)].concat()),
                "epoch is zero",
            ),
            (frame(ACK, &two(0, 1)), "epoch is zero"),
            (frame(RESUME, &two(0, 1)), "epoch is zero"),
            (frame(SNAPSHOT_BEGIN, &two(0, 1)), "epoch is zero"),
            (updates(0, 1, 1, &r1), "epoch is zero"),
            (updates(1, 0, 1, &r1), "sequence out of range"),
            (
                updates(1, u64::MAX, 2, &[r1.clone(), r1.clone()].concat()),
                "sequence out of range",
            ),
            (frame(RESUME, &two(1, 0)), "sequence out of range"),
            (welcome(0, b"", &[0; 9]), "sequence out of range"),
            (
                welcome(0, b"", &[1, 0, 0, 0, 0, 0, 0, 0, 0]),
                "sequence out of range",
            ),
            (hello_with(&[2]), "bad resume flag 2"),
            (welcome(6, b"", &[]), "unknown welcome status 6"),
            (welcome(2, &[b'r'; 201], &[]), "reason too long"),
            (welcome(2, &[0xff], &[]), "reason not UTF-8"),
            (welcome(2, &[0xc3], &[]), "reason not UTF-8"),
            (
                welcome(0, b"", &[2, 0, 0, 0, 0, 0, 0, 0, 1]),
                "unknown start 2",
            ),
            (updates(1, 1, 0, &[]), "no records"),
            (frame(SNAPSHOT_RECORDS, &[0, 0, 0, 0]), "no records"),
            (
                updates(1, 1, MAX_RECORDS + 1, &r1),
                "too many records (65537)",
            ),
            (
                frame(SNAPSHOT_RECORDS, &[0xff; 4]),
                "too many records (4294967295)",
            ),
            (
                updates(1, 1, 1, &raw_record(14, 0, b"k", Some((0, b"")))),
                "unknown record kind 14",
            ),
            (
                updates(1, 1, 1, &raw_record(0, 1, b"k", None)),
                "unknown record kind 0",
            ),
            (
                updates(1, 1, 1, &raw_record(1, 2, b"k", None)),
                "reserved flag bits set",
            ),
            (
                updates(1, 1, 1, &raw_record(1, 0x81, b"k", None)),
                "reserved flag bits set",
            ),
            (
                updates(1, 1, 1, &raw_record(1, 1, b"", None)),
                "record key empty or too long",
            ),
            (
                updates(1, 1, 1, &raw_record(2, 1, &long_key, None)),
                "record key empty or too long",
            ),
            (
                updates(
                    1,
                    1,
                    1,
                    &raw_record(1, 0, b"k", Some((MAX_VALUE as u32 + 1, b""))),
                ),
                "record value too large",
            ),
            (
                frame(
                    SNAPSHOT_RECORDS,
                    &[
                        &[0, 0, 0, 1][..],
                        &raw_record(1, 0, b"k", Some((u32::MAX, b""))),
                    ]
                    .concat(),
                ),
                "record value too large",
            ),
        ];
        for (bytes, reason) in cases {
            match decode(&bytes) {
                Err(e) => assert_eq!(e.to_string(), reason, "{bytes:02x?}"),
                other => panic!("{bytes:02x?}: {other:?}, wanted {reason:?}"),
            }
        }
    }

    /// Decodes a stream delivered in the given pieces as a link does: bytes are appended to a buffer and
    /// complete frames taken off its front.
    fn read_stream(stream: &[u8], pieces: &[usize]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut at = 0;
        for &end in pieces.iter().chain([stream.len()].iter()) {
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            while let Some((f, n)) = decode(&buf)? {
                frames.push(f);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(frames)
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_split() {
        let frames = samples();
        let mut stream = Vec::new();
        for f in &frames {
            encode(f, &mut stream);
        }
        assert_eq!(read_stream(&stream, &[]).as_ref(), Ok(&frames));
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(
            read_stream(&stream, &every).as_ref(),
            Ok(&frames),
            "byte by byte"
        );
        for split in 0..=stream.len() {
            assert_eq!(
                read_stream(&stream, &[split]).as_ref(),
                Ok(&frames),
                "split at {split}"
            );
        }
        // Every prefix of a frame is "need more"; a refused stream is refused at the same frame.
        for end in 0..stream.len() {
            if let Ok(Some((_, n))) = decode(&stream[..end]) {
                assert!(n <= end);
            }
        }
        let mut bad = stream.clone();
        bad.extend_from_slice(&frame(HEARTBEAT, &[0; 17]));
        for split in 0..=bad.len() {
            assert_eq!(
                read_stream(&bad, &[split]),
                Err(FrameError::Trailing),
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_payload() {
        let mut at_cap = vec![SNAPSHOT_RECORDS];
        at_cap.extend_from_slice(&(MAX_PAYLOAD as u32).to_be_bytes());
        assert_eq!(
            decode(&at_cap),
            Ok(None),
            "16 MiB exactly is allowed; waits for it"
        );
        let over = [SNAPSHOT_RECORDS, 0x01, 0x00, 0x00, 0x01];
        for end in 0..over.len() {
            assert_eq!(decode(&over[..end]), Ok(None));
        }
        assert_eq!(
            decode(&over),
            Err(FrameError::TooLarge(MAX_PAYLOAD as u32 + 1))
        );
        assert_eq!(
            decode(&[0x99]),
            Err(FrameError::UnknownType(0x99)),
            "refused at the first byte"
        );
    }
}
