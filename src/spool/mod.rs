//! The upload spool (issue #17): resumable uploads in tus 1.0 and the IETF "Resumable Uploads for HTTP"
//! draft, created on `uploads = true` routes and finished on any node. An upload's bytes live only in
//! spool files: the node that takes an append writes its file and pushes the bytes over the side
//! channel of the replication links to its peers, which write theirs; an offset is acknowledged once a
//! peer wrote them. Only the metadata and the offset are records of the replicated store. A completed
//! upload is forwarded to the route's backends as one ordinary request, streamed from the spool.
//! docs/UPLOADS.md is the client's and the backend's side.
//!
//! Parts: `state` (the records and header parsers), `disk` (spool files, pushed bytes, fetches, sweep),
//! `forward` (the request to the backend), `endpoints` (the upload resource's request stage, appends),
//! `creation` (the creation stage), `quota` (the per-user and per-tenant caps, checked off the worker),
//! and [`SpoolInbox`] (what the replication thread hands over). Disk I/O, hashing and forwarding run on
//! the spool's own threads (`spool-N`, a [`TaskPool`]; bytes pushed by peers are written by
//! `spool-rx-N`, so a forward or a fetch cannot hold them up); the request waits on a ticket.

pub(crate) mod creation;
pub(crate) mod disk;
pub(crate) mod endpoints;
pub(crate) mod forward;
pub(crate) mod quota;
pub(crate) mod state;

use crate::base::pool::TaskPool;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The spool of a node: its threads, its files, and the uploads being appended to here.
pub struct Spool {
    pub(crate) shared: Arc<disk::Shared>,
    pub(crate) pool: Arc<TaskPool>,
    /// Uploads with an append or a forward under way on this node: a second one is refused (409), so
    /// bytes of two requests never interleave.
    busy: Arc<Mutex<HashSet<state::UploadId>>>,
    /// Creations that passed the quota check and are not in the store yet.
    pub(crate) quota: Arc<quota::Ledger>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

/// An upload held busy on this node until dropped.
pub(crate) struct BusyGuard {
    id: state::UploadId,
    busy: Arc<Mutex<HashSet<state::UploadId>>>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy.lock().remove(&self.id);
    }
}

impl Spool {
    /// Creates the spool directory and starts the spool's threads and its sweeper (every second, files
    /// of uploads the store no longer holds are removed; it stops with `stop`).
    /// With `side` (a cluster), peers' spool frames are taken by the spool from now on.
    pub fn start(
        dir: std::path::PathBuf,
        threads: usize,
        store: Arc<crate::store::Store>,
        side: Option<Arc<crate::replication::side::SpoolSide>>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Arc<Spool>> {
        std::fs::create_dir_all(&dir)?;
        let shared = Arc::new(disk::Shared::new(dir, store, side.clone()));
        let pool = Arc::new(TaskPool::start("spool", threads, 1024)?);
        let busy = Arc::new(Mutex::new(HashSet::new()));
        if let Some(side) = side {
            side.set_inbox(Arc::new(SpoolInbox {
                shared: shared.clone(),
                pool: pool.clone(),
                rx: TaskPool::start("spool-rx", 1, 1024)?,
                busy: busy.clone(),
            }));
        }
        let sweeper = shared.clone();
        std::thread::Builder::new()
            .name("spool-sweep".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let n = sweeper.sweep(crate::sticky::unix_now());
                    if n > 0 {
                        log::info!(
                            "uploads: swept {n} spool file(s) of finished or expired uploads"
                        );
                    }
                }
            })?;
        Ok(Arc::new(Spool {
            shared,
            pool,
            busy,
            quota: Arc::default(),
        }))
    }

    /// Marks `id` busy on this node; `None` when another request holds it.
    pub(crate) fn claim(&self, id: state::UploadId) -> Option<BusyGuard> {
        self.busy.lock().insert(id).then(|| BusyGuard {
            id,
            busy: self.busy.clone(),
        })
    }
}

/// What the replication thread hands the spool: peers' pushed bytes (written on `spool-rx`, then
/// acknowledged), fetch answers (to the spool thread that asked), fetches to answer (on `spool-N`), and
/// claims (answered at once from the busy set and the store: no disk).
struct SpoolInbox {
    shared: Arc<disk::Shared>,
    pool: Arc<TaskPool>,
    rx: TaskPool,
    busy: Arc<Mutex<HashSet<state::UploadId>>>,
}

/// Tells `peer` whether the `len` bytes at `offset` it sent are in this node's file (`SPOOL_ACK`).
fn ack(
    shared: &disk::Shared,
    peer: usize,
    id: state::UploadId,
    offset: u64,
    len: usize,
    written: bool,
) {
    if let Some(side) = &shared.side {
        side.send(crate::replication::side::Command::Control {
            peer,
            frame: crate::replication::frame::Frame::SpoolAck {
                id,
                offset,
                len: len as u32,
                written,
            },
        });
    }
}

impl crate::replication::side::Inbox for SpoolInbox {
    fn data(
        &self,
        peer: usize,
        id: state::UploadId,
        tag: u64,
        prev: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) {
        let shared = self.shared.clone();
        let len = bytes.len();
        let task = Box::new(move || {
            let written = shared.receive(&id, tag, prev, offset, &bytes);
            ack(&shared, peer, id, offset, len, written);
        });
        if self.rx.submit(task).is_err() {
            ack(&self.shared, peer, id, offset, len, false);
        }
    }

    fn part(&self, peer: usize, id: state::UploadId, offset: u64, bytes: Vec<u8>) {
        let len = bytes.len();
        if !self.shared.fetched_part(peer, &id, offset, bytes) {
            ack(&self.shared, peer, id, offset, len, false);
        }
    }

    fn missing(&self, peer: usize, id: state::UploadId, _from: u64) {
        self.shared.fetched_missing(peer, &id);
    }

    fn fetch(&self, peer: usize, id: state::UploadId, from: u64, upto: u64) {
        let shared = self.shared.clone();
        let task = Box::new(move || shared.serve(peer, &id, from, upto, crate::sticky::unix_now()));
        if self.pool.submit(task).is_err() {
            if let Some(side) = &self.shared.side {
                side.send(crate::replication::side::Command::Control {
                    peer,
                    frame: crate::replication::frame::Frame::SpoolMissing { id, from },
                });
            }
        }
    }

    fn claim(&self, id: state::UploadId) -> (bool, u64) {
        let granted = !self.busy.lock().contains(&id);
        let offset = state::Upload::get(&self.shared.store, &id, crate::sticky::unix_now())
            .map_or(0, |u| u.offset);
        (granted, offset)
    }
}
