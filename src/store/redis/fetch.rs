//! The Redis backend's fetcher thread (`store-fetch`): reads one record a worker found missing. A sync
//! write is answered once the server holds it, and other nodes have it once their feed applied it; a
//! request that reaches another node in between (a login honoured at b a moment after a answered it)
//! would meet the state before the write. The worker parks that request and asks here; the record is
//! read from the server, applied like the feed's, and the request runs its stage again. Never on a
//! worker; bounded (a full queue of asks answers at once, as if nothing were there).

use super::{Conn, MIN_BACKOFF, RedisSetup};
use crate::snapshot::SharedSnapshot;
use crate::sticky::Stickiness;
use crate::store::{Hlc, Kind, OnAck, Store};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Asks waiting for the fetcher; past it an ask is refused (the request answers as on a miss).
pub(super) const QUEUE: usize = 1024;

/// One ask: the record's kind and key, and whom to tell when it is done.
pub(super) type Ask = (Kind, Vec<u8>, OnAck);

pub(super) struct Fetcher {
    pub(super) setup: Arc<RedisSetup>,
    pub(super) store: Arc<Store>,
    pub(super) hlc: Arc<Hlc>,
    pub(super) sticky: Arc<Stickiness>,
    pub(super) shared: SharedSnapshot,
    pub(super) slot: usize,
    pub(super) asks: Receiver<Ask>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Fetcher {
    pub(super) fn run(&mut self) {
        let mut conn: Option<Conn> = None;
        // After a failed connection, asks are answered at once until this passes (no connection
        // attempt per ask while the server is down).
        let mut retry_at = Instant::now();
        loop {
            let (kind, key, done) = match self.asks.recv_timeout(Duration::from_millis(100)) {
                Ok(ask) => ask,
                Err(RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if conn.is_none() && Instant::now() >= retry_at {
                match self.setup.connect() {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        log::debug!("store: redis fetcher: {e}");
                        retry_at = Instant::now() + MIN_BACKOFF;
                    }
                }
            }
            if let Some(c) = conn.as_mut() {
                if let Err(e) = self.fetch(c, kind, &key) {
                    log::debug!("store: redis fetcher: {e}");
                    conn = None;
                }
            }
            done();
        }
    }

    fn fetch(&self, c: &mut Conn, kind: Kind, key: &[u8]) -> Result<(), super::RedisStoreError> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.setup.layout.record(kind, key))
            .query(&mut c.con)
            .map_err(|e| c.error(e))?;
        let Some(bytes) = bytes else {
            return Ok(());
        };
        match self.setup.sealer.open(&bytes) {
            Ok(record) => {
                let _ = self.hlc.observe(record.version.hlc);
                let op =
                    crate::replication::snapshot_recv::binding_in(&self.shared, &record, &mut None);
                if self.store.apply(record).changed() {
                    log::debug!("store: fetched a {kind:?} record the feed had not brought yet");
                    if let Some(op) = op {
                        crate::replication::snapshot_recv::apply_bindings_to(
                            &self.sticky,
                            self.slot,
                            &[op],
                        );
                    }
                }
            }
            Err(e) => log::warn!("store: redis fetcher: a record that does not open ({e})"),
        }
        Ok(())
    }
}
