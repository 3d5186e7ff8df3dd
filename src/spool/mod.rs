//! The upload spool (issue #17): resumable uploads in tus 1.0 and the IETF "Resumable Uploads for HTTP"
//! draft, created on `uploads = true` routes and finished on any node. Bytes go to a spool file per
//! upload on the node that takes them and, as chunk records of the replicated store, to a replica before
//! an offset is acknowledged; a completed upload is forwarded to the route's backends as one ordinary
//! request, streamed from the spool. docs/UPLOADS.md is the client's and the backend's side.
//!
//! Parts: `state` (the records and header parsers), `disk` (spool files, fill from records, sweep),
//! `forward` (the request to the backend), `endpoints` (the upload resource's request stage, appends),
//! `creation` (the creation stage), `quota` (the per-user and per-tenant caps, checked off the worker). Disk I/O, hashing and
//! forwarding run on the spool's own threads (`spool-N`, a [`TaskPool`]); the request waits on a ticket.

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
    pub(crate) pool: TaskPool,
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
    pub fn start(
        dir: std::path::PathBuf,
        threads: usize,
        store: Arc<crate::store::Store>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Arc<Spool>> {
        std::fs::create_dir_all(&dir)?;
        let shared = Arc::new(disk::Shared {
            dir,
            store,
            good: Mutex::new(Default::default()),
        });
        let pool = TaskPool::start("spool", threads, 1024)?;
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
            busy: Arc::new(Mutex::new(HashSet::new())),
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
