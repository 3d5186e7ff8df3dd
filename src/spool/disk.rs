//! The spool's files and what runs on its threads: checking a chunk's checksum, appending, taking the
//! bytes peers push over the side channel (docs/PROTOCOL.md, "Upload bytes"), knowing which bytes of a
//! file are acknowledged ones, fetching the ones a file lacks from a peer, answering peers' fetches,
//! removing, and the sweep. Nothing here runs on a worker or on the replication thread.

use super::state::{self, UploadId};
use crate::replication::frame::{Frame, MAX_SPOOL_BYTES};
use crate::replication::side::{Bytes, Command, Piece, SpoolSide};
use crate::store::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a fetch waits for the next piece from a peer before it asks the next peer.
const FETCH_IDLE: Duration = Duration::from_secs(10);

/// Why a spool operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SpoolError {
    #[error("the chunk's sha256 does not match Upload-Checksum")]
    ChecksumMismatch,
    #[error("the spool's disk is full")]
    DiskFull,
    #[error("the upload's bytes before this offset are not on this node, and no peer sent them")]
    Missing,
    #[error("no peer is up to hold a copy of the bytes")]
    NoReplica,
    #[error("no peer wrote the bytes (their links closed, or their disks refused)")]
    NotReplicated,
    #[error("spool file: {0}")]
    Io(String),
}

impl From<std::io::Error> for SpoolError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            SpoolError::DiskFull
        } else {
            SpoolError::Io(e.to_string())
        }
    }
}

/// Bytes a peer pushed into this node's file: `[start, end)` of the append `tag`, which starts where the
/// append `prev` ended (docs/PROTOCOL.md, "Which received bytes count").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u64,
    end: u64,
    tag: u64,
    prev: u64,
}

/// What this node knows of one upload's file.
#[derive(Debug, Default)]
struct Held {
    /// The file's first `good.0` bytes are acknowledged bytes, up to the acknowledged offset that the
    /// append `good.1` made (0: the creation).
    good: (u64, u64),
    /// Pushed bytes beyond `good`, not yet tied to an acknowledged offset.
    segments: Vec<Segment>,
}

impl Held {
    /// Whether the file holds the acknowledged bytes up to `offset`, made by the append `tag`: it does
    /// when `offset` is within `good` (acknowledged bytes never change), or when a chain of segments
    /// leads from `(offset, tag)` back to `good`. `good` then moves there.
    fn covers(&mut self, offset: u64, tag: u64) -> bool {
        if offset <= self.good.0 {
            return true;
        }
        let mut at = (offset, tag);
        loop {
            if at == self.good {
                self.good = (offset, tag);
                self.segments.retain(|s| s.end > offset);
                return true;
            }
            match self
                .segments
                .iter()
                .find(|s| s.end == at.0 && s.tag == at.1 && s.start < s.end)
            {
                // Offsets strictly fall along the chain: it ends.
                Some(s) if s.start < at.0 => at = (s.start, s.prev),
                _ => return false,
            }
        }
    }
}

/// A piece of a fetch's answer, for the spool thread that asked.
enum Fetched {
    Part(usize, u64, Vec<u8>),
    Missing(usize),
}

/// What the spool's threads share with the workers and the replication thread.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub store: Arc<Store>,
    /// The side channel to the peers; `None` on a node without `[cluster]`.
    pub side: Option<Arc<SpoolSide>>,
    held: Mutex<HashMap<UploadId, Held>>,
    /// Fetches under way, by upload: where their answers go.
    fetches: Mutex<HashMap<UploadId, crossbeam_channel::Sender<Fetched>>>,
    /// One fill at a time per upload (a HEAD's prefetch and a PATCH may both want one).
    fills: Mutex<HashMap<UploadId, Arc<Mutex<()>>>>,
}

impl Shared {
    pub(crate) fn new(dir: PathBuf, store: Arc<Store>, side: Option<Arc<SpoolSide>>) -> Shared {
        Shared {
            dir,
            store,
            side,
            held: Mutex::new(HashMap::new()),
            fetches: Mutex::new(HashMap::new()),
            fills: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(state::hex(id))
    }

    fn open(&self, id: &UploadId) -> Result<std::fs::File, SpoolError> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(self.path(id))?)
    }

    /// Whether this node's file holds the acknowledged bytes up to `offset` (made by the append `tag`).
    pub(crate) fn covers(&self, id: &UploadId, offset: u64, tag: u64) -> bool {
        offset == 0 || self.held.lock().entry(*id).or_default().covers(offset, tag)
    }

    /// After this node's own acknowledged append (or a fetch): its file holds the acknowledged bytes up
    /// to `offset`, made by `tag`.
    pub(crate) fn set_good(&self, id: &UploadId, offset: u64, tag: u64) {
        let mut held = self.held.lock();
        let h = held.entry(*id).or_default();
        if offset >= h.good.0 {
            h.good = (offset, tag);
            h.segments.retain(|s| s.end > offset);
        }
    }

    /// Makes this node's file hold the acknowledged bytes `[0, upto)` (the offset the append `tag` made):
    /// what it lacks (appends other nodes took while this one was away) is fetched from a peer.
    pub(crate) fn fill(
        &self,
        id: &UploadId,
        upto: u64,
        tag: u64,
    ) -> Result<std::fs::File, SpoolError> {
        let file = self.open(id)?;
        if self.covers(id, upto, tag) {
            return Ok(file);
        }
        let lock = self.fills.lock().entry(*id).or_default().clone();
        let _one = lock.lock();
        if self.covers(id, upto, tag) {
            return Ok(file);
        }
        let from = self.held.lock().get(id).map_or(0, |h| h.good.0);
        self.fetch(id, &file, from, upto)?;
        self.set_good(id, upto, tag);
        self.fills.lock().remove(id);
        Ok(file)
    }

    /// Fetches `[from, upto)` into `file` from the first up peer that has it.
    fn fetch(
        &self,
        id: &UploadId,
        file: &std::fs::File,
        from: u64,
        upto: u64,
    ) -> Result<(), SpoolError> {
        let Some(side) = &self.side else {
            return Err(SpoolError::Missing);
        };
        for peer in side.up_peers() {
            let (tx, rx) = crossbeam_channel::unbounded();
            self.fetches.lock().insert(*id, tx);
            side.send(Command::Control {
                peer,
                frame: Frame::SpoolFetch {
                    id: *id,
                    from,
                    upto,
                },
            });
            let got = self.take_parts(side, id, file, peer, &rx, from, upto);
            self.fetches.lock().remove(id);
            match got {
                Ok(()) => {
                    log::info!(
                        "uploads: fetched bytes {from}..{upto} of {} from a peer",
                        state::hex(id)
                    );
                    return Ok(());
                }
                Err(SpoolError::DiskFull) => return Err(SpoolError::DiskFull),
                Err(e) => log::info!(
                    "uploads: a peer did not send bytes {from}..{upto} of {}: {e}",
                    state::hex(id)
                ),
            }
        }
        Err(SpoolError::Missing)
    }

    /// Writes a fetch's answers from `peer` into `file` as they come, acknowledging each (so they leave
    /// the peer's window), until `upto`.
    #[allow(clippy::too_many_arguments)]
    fn take_parts(
        &self,
        side: &SpoolSide,
        id: &UploadId,
        file: &std::fs::File,
        peer: usize,
        rx: &crossbeam_channel::Receiver<Fetched>,
        from: u64,
        upto: u64,
    ) -> Result<(), SpoolError> {
        let mut at = from;
        while at < upto {
            match rx.recv_timeout(FETCH_IDLE) {
                Ok(Fetched::Part(p, offset, bytes)) if p == peer => {
                    let len = bytes.len() as u32;
                    let ok = offset == at && offset + u64::from(len) <= upto;
                    let written = ok && file.write_all_at(&bytes, offset).is_ok();
                    side.send(Command::Control {
                        peer,
                        frame: Frame::SpoolAck {
                            id: *id,
                            offset,
                            len,
                            written,
                        },
                    });
                    if !written {
                        return Err(if ok {
                            SpoolError::DiskFull
                        } else {
                            SpoolError::Missing
                        });
                    }
                    at += u64::from(len);
                }
                Ok(Fetched::Part(p, offset, bytes)) => side.send(Command::Control {
                    peer: p,
                    frame: Frame::SpoolAck {
                        id: *id,
                        offset,
                        len: bytes.len() as u32,
                        written: false,
                    },
                }),
                Ok(Fetched::Missing(p)) if p == peer => return Err(SpoolError::Missing),
                Ok(Fetched::Missing(_)) => {}
                Err(_) => return Err(SpoolError::Missing),
            }
        }
        Ok(())
    }

    /// Checks `body` against `checksum`, brings the file up to `offset` (the acknowledged offset, made by
    /// the append `prev`), and writes `body` there. Returns the pieces for the peers.
    pub(crate) fn append(
        &self,
        id: &UploadId,
        offset: u64,
        prev: u64,
        tag: u64,
        body: &Arc<[u8]>,
        checksum: Option<[u8; 32]>,
    ) -> Result<Vec<Piece>, SpoolError> {
        use sha2::Digest;
        if let Some(expected) = checksum {
            if sha2::Sha256::digest(body).as_slice() != expected {
                return Err(SpoolError::ChecksumMismatch);
            }
        }
        let file = self.fill(id, offset, prev)?;
        file.write_all_at(body, offset)?;
        let mut pieces = Vec::with_capacity(body.len().div_ceil(MAX_SPOOL_BYTES));
        let mut start = 0;
        while start < body.len() {
            let len = (body.len() - start).min(MAX_SPOOL_BYTES);
            pieces.push(Piece {
                offset: offset + start as u64,
                prev: if start == 0 { prev } else { tag },
                bytes: Bytes {
                    data: body.clone(),
                    start,
                    len,
                },
            });
            start += len;
        }
        Ok(pieces)
    }

    /// Bytes a peer pushed (`SPOOL_DATA`): written to this node's file unless they would overwrite bytes
    /// known to be acknowledged (a late push of an append that was never acknowledged); then noted as a
    /// segment. Returns whether they were written.
    pub(crate) fn receive(
        &self,
        id: &UploadId,
        tag: u64,
        prev: u64,
        offset: u64,
        bytes: &[u8],
    ) -> bool {
        let end = offset + bytes.len() as u64;
        {
            let mut held = self.held.lock();
            let h = held.entry(*id).or_default();
            if offset < h.good.0 {
                return false;
            }
            // Whatever these bytes overwrite no longer counts.
            h.segments.retain(|s| s.end <= offset || s.start >= end);
        }
        let written = self
            .open(id)
            .and_then(|f| Ok(f.write_all_at(bytes, offset)?))
            .is_ok();
        if written {
            let mut held = self.held.lock();
            let h = held.entry(*id).or_default();
            h.segments.retain(|s| s.end <= offset || s.start >= end);
            h.segments.push(Segment {
                start: offset,
                end,
                tag,
                prev,
            });
        }
        written
    }

    /// A fetch's answer from `peer`, for the spool thread that asked; `false` when none asked.
    pub(crate) fn fetched_part(
        &self,
        peer: usize,
        id: &UploadId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> bool {
        match self.fetches.lock().get(id) {
            Some(tx) => tx.send(Fetched::Part(peer, offset, bytes)).is_ok(),
            None => false,
        }
    }

    pub(crate) fn fetched_missing(&self, peer: usize, id: &UploadId) {
        if let Some(tx) = self.fetches.lock().get(id) {
            let _ = tx.send(Fetched::Missing(peer));
        }
    }

    /// Answers `peer`'s fetch of `[from, upto)`: `SPOOL_PART`s read from this node's file, at most a
    /// window's worth unacknowledged at a time, if the file holds acknowledged bytes that far; else
    /// `SPOOL_MISSING`.
    pub(crate) fn serve(&self, peer: usize, id: &UploadId, from: u64, upto: u64, now: u32) {
        let Some(side) = &self.side else {
            return;
        };
        let missing = || {
            side.send(Command::Control {
                peer,
                frame: Frame::SpoolMissing { id: *id, from },
            })
        };
        // The file holds acknowledged bytes up to this node's offset, or at least up to `upto` (tag 0 names
        // no append: that asks only whether `upto` is within the known prefix).
        let holds = state::Upload::get(&self.store, id, now).is_some_and(|u| {
            u.offset >= upto && (self.covers(id, u.offset, u.tag) || self.covers(id, upto, 0))
        });
        let file = match std::fs::File::open(self.path(id)) {
            Ok(f) if holds => f,
            _ => return missing(),
        };
        let most = (side.window / MAX_SPOOL_BYTES).max(1);
        let mut waiting = std::collections::VecDeque::new();
        let mut at = from;
        while at < upto {
            // A window's worth in flight: the oldest piece must be written there first.
            if waiting.len() >= most {
                if let Some(rx) = waiting.pop_front() {
                    let rx: crossbeam_channel::Receiver<bool> = rx;
                    if !rx.recv_timeout(FETCH_IDLE).unwrap_or(false) {
                        return;
                    }
                }
            }
            let len = ((upto - at) as usize).min(MAX_SPOOL_BYTES);
            let mut buf = vec![0u8; len];
            if file.read_exact_at(&mut buf, at).is_err() {
                return missing();
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            side.send(Command::Part {
                peer,
                id: *id,
                offset: at,
                bytes: Bytes {
                    data: Arc::from(buf),
                    start: 0,
                    len,
                },
                done: Box::new(move |ok| {
                    let _ = tx.send(ok);
                }),
            });
            waiting.push_back(rx);
            at += len as u64;
        }
    }

    pub(crate) fn remove(&self, id: &UploadId) {
        self.held.lock().remove(id);
        self.fills.lock().remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Removes the files of uploads the store no longer holds live (finished, deleted, expired — here or
    /// on another node). Returns how many went.
    pub(crate) fn sweep(&self, now: u32) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = state::parse_id(name.as_encoded_bytes()) else {
                continue;
            };
            if self
                .store
                .get(crate::store::Kind::Upload, &id, now)
                .is_none()
            {
                // Bytes pushed for an upload whose record has not arrived at all yet (neither live nor
                // expired nor a tombstone) are young: kept a while.
                let unheard = self
                    .store
                    .reader()
                    .get_raw(crate::store::Kind::Upload, &id)
                    .is_none();
                let young = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|a| a < Duration::from_secs(30)));
                if unheard && young && self.held.lock().contains_key(&id) {
                    continue;
                }
                self.remove(&id);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, end: u64, tag: u64, prev: u64) -> Segment {
        Segment {
            start,
            end,
            tag,
            prev,
        }
    }

    #[test]
    fn only_a_chain_back_to_the_good_prefix_counts() {
        // Append 7 in two pieces, then append 9.
        let mut h = Held {
            segments: vec![seg(0, 4, 7, 0), seg(4, 6, 7, 7), seg(6, 10, 9, 7)],
            ..Held::default()
        };
        assert!(h.covers(6, 7));
        assert_eq!(h.good, (6, 7));
        assert!(h.covers(10, 9));
        assert_eq!(h.good, (10, 9));
        assert!(
            h.covers(3, 1),
            "below the good prefix: acknowledged bytes do not change"
        );
    }

    #[test]
    fn an_append_never_acknowledged_does_not_count() {
        // Append 5 at 0 was never acknowledged; append 6 at 0 was, then 8 followed it, but this node
        // holds only 5's bytes and 8's.
        let mut h = Held {
            segments: vec![seg(0, 4, 5, 0), seg(4, 8, 8, 6)],
            ..Held::default()
        };
        assert!(!h.covers(8, 8));
        assert_eq!(h.good, (0, 0));
        // The same range under the wrong tag, or a chain that does not reach the prefix.
        h.segments = vec![seg(0, 4, 5, 0)];
        assert!(!h.covers(4, 6));
        h.segments = vec![seg(2, 4, 6, 3)];
        assert!(!h.covers(4, 6));
    }

    #[test]
    fn pushed_bytes_below_the_good_prefix_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(dir.path().to_path_buf(), Arc::new(Store::new()), None);
        let id = [3u8; 16];
        assert!(shared.receive(&id, 4, 0, 0, b"abcd"));
        assert!(shared.covers(&id, 4, 4));
        assert!(
            !shared.receive(&id, 5, 0, 0, b"zz"),
            "a late, unacknowledged push"
        );
        assert!(shared.receive(&id, 6, 4, 4, b"ef"));
        assert!(!shared.covers(&id, 6, 7));
        assert!(shared.covers(&id, 6, 6));
        let got = std::fs::read(shared.path(&id)).unwrap();
        assert_eq!(got, b"abcdef");
    }
}
