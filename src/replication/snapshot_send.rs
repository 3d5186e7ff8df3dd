//! Sending a snapshot: a thread of its own walks the store and encodes it into frames, handing them to
//! the replication thread in chunks as it goes. The replication thread keeps heartbeats, acks and every
//! other peer's stream moving meanwhile, and the peer stages records while later ones are still being
//! read (a million records take the better part of a second to walk: memory-bound).

use super::frame::{self, Frame};
use crate::store::{DigestSum, Store};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

/// Encoded bytes per chunk handed over (a few frames).
const CHUNK: usize = 1 << 20;
/// Chunks the builder may run ahead of the link: bounds the memory a slow peer costs.
const AHEAD: usize = 8;

/// Records per `SNAPSHOT_RECORDS` frame.
const BATCH: usize = 4096;

/// Starts encoding `store` as a snapshot taken at sequence `at` of stream `epoch` (`SNAPSHOT_BEGIN`,
/// `SNAPSHOT_RECORDS`…, `SNAPSHOT_END` with the count and digest of exactly the records sent). The
/// chunks arrive on the returned channel, which disconnects after the last one; dropping the receiver
/// (the link closed) stops the builder.
pub(super) fn spawn(
    store: Arc<Store>,
    epoch: u64,
    at: u64,
    label: String,
) -> std::io::Result<Receiver<Vec<u8>>> {
    let (tx, rx) = crossbeam_channel::bounded(AHEAD);
    std::thread::Builder::new()
        .name("repl-snapshot".into())
        .spawn(move || build(&store, epoch, at, &label, &tx))?;
    Ok(rx)
}

fn build(store: &Store, epoch: u64, at: u64, label: &str, tx: &Sender<Vec<u8>>) {
    let started = Instant::now();
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 4);
    frame::encode(&Frame::SnapshotBegin { epoch, at }, &mut out);
    let reader = store.reader();
    // References into the pinned view, not clones: a clone and its drop are two atomic updates on each
    // record's key and value. The digest sums the hashes the store keeps beside each record: hashing
    // each again would read every key and value twice.
    let mut batch: Vec<&crate::store::Record> = Vec::with_capacity(BATCH);
    let (mut count, mut digest) = (0u64, DigestSum::default());
    for (record, hash) in reader.iter_hashed() {
        count += 1;
        digest = digest + hash;
        batch.push(record);
        if batch.len() == BATCH {
            frame::encode_snapshot_records(&batch, &mut out);
            batch.clear();
            if out.len() >= CHUNK
                && tx
                    .send(std::mem::replace(
                        &mut out,
                        Vec::with_capacity(CHUNK + CHUNK / 4),
                    ))
                    .is_err()
            {
                return; // The link is gone.
            }
        }
    }
    if !batch.is_empty() {
        frame::encode_snapshot_records(&batch, &mut out);
    }
    drop(batch);
    drop(reader);
    frame::encode(
        &Frame::SnapshotEnd {
            count,
            digest: digest.to_bytes(),
        },
        &mut out,
    );
    if tx.send(out).is_ok() {
        log::info!(
            "{label}: snapshot of {count} record(s) at sequence {at} built in {} ms",
            started.elapsed().as_millis()
        );
    }
}
