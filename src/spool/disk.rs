//! The spool's files and what runs on its threads: checking a chunk's checksum, bringing a node's file up
//! to the acknowledged offset from the replicated chunk records, appending, removing, and the sweep.
//! Nothing here runs on a worker.

use super::state::{self, CHUNK, UploadId};
use crate::store::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a spool operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SpoolError {
    #[error("the chunk's sha256 does not match Upload-Checksum")]
    ChecksumMismatch,
    #[error("the spool's disk is full")]
    DiskFull,
    #[error("the upload's bytes before this offset are not on this node or in the store")]
    Missing,
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

/// What the spool's threads share with the workers.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub store: Arc<Store>,
    /// Per upload, how many bytes of this node's file are known to equal the acknowledged bytes (set
    /// after this node's own acknowledged appends and fills): bytes beyond it may be a chunk that was
    /// never acknowledged, and are rewritten from the records before they are used.
    pub good: Mutex<HashMap<UploadId, u64>>,
}

impl Shared {
    pub(crate) fn path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(state::hex(id))
    }

    fn good(&self, id: &UploadId) -> u64 {
        self.good.lock().get(id).copied().unwrap_or(0)
    }

    pub(crate) fn set_good(&self, id: &UploadId, upto: u64) {
        self.good.lock().insert(*id, upto);
    }

    /// Makes this node's file hold the acknowledged bytes `[0, upto)`: what it lacks (the appends other
    /// nodes took) is written from the replicated chunk records.
    pub(crate) fn fill(
        &self,
        id: &UploadId,
        upto: u64,
        now: u32,
    ) -> Result<std::fs::File, SpoolError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(self.path(id))?;
        let good = self.good(id).min(upto);
        if good < upto {
            let mut index = good / CHUNK;
            while index * CHUNK < upto {
                let bytes = state::chunk(&self.store, id, index, now).ok_or(SpoolError::Missing)?;
                let want = (upto - index * CHUNK).min(CHUNK) as usize;
                let part = bytes.get(..want).ok_or(SpoolError::Missing)?;
                file.write_all_at(part, index * CHUNK)?;
                index += 1;
            }
            self.set_good(id, upto);
        }
        Ok(file)
    }

    /// Checks `body` against `checksum`, brings the file up to `offset`, writes `body` there, and
    /// returns the chunk records the append leaves (for the worker to replicate).
    pub(crate) fn append(
        &self,
        id: &UploadId,
        offset: u64,
        body: &[u8],
        checksum: Option<[u8; 32]>,
        now: u32,
    ) -> Result<state::Chunks, SpoolError> {
        use sha2::Digest;
        if let Some(expected) = checksum {
            if sha2::Sha256::digest(body).as_slice() != expected {
                return Err(SpoolError::ChecksumMismatch);
            }
        }
        let file = self.fill(id, offset, now)?;
        let chunks = state::chunks_after_append(&self.store, id, offset, body, now)
            .ok_or(SpoolError::Missing)?;
        file.write_all_at(body, offset)?;
        Ok(chunks)
    }

    pub(crate) fn remove(&self, id: &UploadId) {
        self.good.lock().remove(id);
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
                self.remove(&id);
                removed += 1;
            }
        }
        removed
    }
}
