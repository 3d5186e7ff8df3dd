//! Receiving a snapshot. Normally its records are staged apart from the store and merged only once their
//! count and digest check out. A node that is starting — it holds nothing yet and serves no client until
//! it is synced — applies them *in place* instead, as they arrive, keeping an undo log: the work is done
//! while each record is still in cache and while the sender is still reading later ones (a full resync
//! of a million records is then one pass, not stage + merge one after the other). A snapshot applied in
//! place that is cut off or fails its check is undone record by record, which leaves the store as it
//! was: empty. (The session table is not filled from snapshots: it caches the store's bindings as
//! workers look them up.)
//!
//! The main thread and this one agree through [`Gate`] on when in-place is allowed: only before the node
//! serves, and the main thread does not start serving while an in-place snapshot is under way (within a
//! bound: see [`Gate::wait_ready`]).

use super::node::Feed;
use crate::store::{DigestSum, Kind, Record, Stage, StageError, UndoLog};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

/// Records handed to an applier thread at a time.
const APPLY_BATCH: usize = 1024;

/// Where a starting node is: waiting for a snapshot, applying one in place, or serving clients.
#[derive(Debug, Default)]
pub(crate) struct Gate(AtomicU8);

const WAITING: u8 = 0;
const IN_PLACE: u8 = 1;
const SERVING: u8 = 2;

impl Gate {
    /// Claims the right to apply a snapshot in place: only while the node waits (not serving, no other
    /// in-place snapshot under way).
    fn claim(&self) -> bool {
        self.0
            .compare_exchange(WAITING, IN_PLACE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// An in-place snapshot is over (merged or undone).
    fn release(&self) {
        let _ = self
            .0
            .compare_exchange(IN_PLACE, WAITING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The node serves from now on (no snapshot is applied in place after this).
    pub(crate) fn serve(&self) {
        self.0.store(SERVING, Ordering::Release);
    }

    /// The main thread's wait before serving: until `synced` (a snapshot is in), or `timeout`. A snapshot
    /// being applied in place at the deadline is given up to one more `timeout` to finish (it is making
    /// progress, and serving from half of it is what the wait is for avoiding). Returns whether synced.
    /// `engaged`: whether a peer has linked since the start. Past `timeout` with none, the node serves
    /// alone; once one has, it waits up to [`ENGAGED_WAIT`] × `timeout` for the sync to finish (a node
    /// that served half a store answered its clients' logins with 401: the failover benchmark's restarted
    /// node, starved of CPU, took longer than `ready_timeout` to merge 900,000 records).
    pub(crate) fn wait_ready(
        &self,
        synced: &AtomicBool,
        timeout: Duration,
        engaged: impl Fn() -> bool,
    ) -> bool {
        let start = Instant::now();
        let mut deadline = start + timeout;
        loop {
            if synced.load(Ordering::Acquire) {
                self.0.store(SERVING, Ordering::Release);
                return true;
            }
            let now = Instant::now();
            if now >= deadline && deadline < start + timeout * ENGAGED_WAIT && engaged() {
                deadline = start + timeout * ENGAGED_WAIT;
                log::warn!(
                    "cluster: not synced after {}: a peer is linked, waiting up to {} in all",
                    humantime::format_duration(timeout),
                    humantime::format_duration(timeout * ENGAGED_WAIT)
                );
                continue;
            }
            if now >= deadline {
                if self
                    .0
                    .compare_exchange(WAITING, SERVING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return synced.load(Ordering::Acquire);
                }
                if now >= deadline + timeout {
                    // Still applying: serve with what is there (peer records either way; a snapshot
                    // that then fails its check is undone while serving).
                    self.0.store(SERVING, Ordering::Release);
                    return synced.load(Ordering::Acquire);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// How many `ready_timeout`s a starting node waits once a peer has linked (see [`Gate::wait_ready`]).
pub(crate) const ENGAGED_WAIT: u32 = 10;

/// What a peer's session-binding record means for the session table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingOp {
    /// Bind the session to the backend with this id.
    Bind { key: u128, backend: usize },
    /// A tombstone: forget the session.
    Forget { key: u128 },
}

/// A snapshot being received from a peer.
#[derive(Debug)]
pub(super) struct Incoming {
    /// Count and digest (and, staged, the records themselves).
    stage: Stage,
    /// The last binding value read and the backend it named (values repeat: a few backends).
    last_address: Option<(Arc<[u8]>, Option<usize>)>,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// Records kept in the stage; bindings to make once it checks out.
    Staged { bindings: Vec<BindingOp> },
    /// Records applied as they come, by applier threads of their own (this thread decodes the next
    /// batch meanwhile), which hash them for the check and keep what undoes them. The session table is left alone: it is
    /// empty (the node has not served), and workers find the bindings in the store on first use.
    InPlace {
        batch: Vec<Record>,
        appliers: Appliers,
        ticket_keys: Vec<Record>,
    },
}

/// A snapshot that checked out and is now in the store and the session table.
#[derive(Debug)]
pub(super) struct Done {
    pub epoch: u64,
    pub at: u64,
    /// Ticket-key records it held (the caller installs them).
    pub ticket_keys: Vec<Record>,
    pub in_place: bool,
    /// From `SNAPSHOT_BEGIN` to `SNAPSHOT_END`, and the work after it.
    pub received_in: Duration,
    pub finished_in: Duration,
}

impl Incoming {
    /// A snapshot of the stream `epoch` at `at` begins; in place when this node is starting and holds
    /// nothing yet.
    pub(super) fn begin(feed: &Feed, gate: &Gate, epoch: u64, at: u64) -> Incoming {
        let applier = if feed.store.is_empty() && gate.claim() {
            let spawned = Appliers::spawn(&feed.store);
            if spawned.is_err() {
                gate.release();
            }
            spawned.ok()
        } else {
            None
        };
        Incoming {
            stage: Stage::begin(epoch, at),
            last_address: None,
            mode: match applier {
                Some(appliers) => Mode::InPlace {
                    batch: Vec::with_capacity(APPLY_BATCH),
                    appliers,
                    ticket_keys: Vec::new(),
                },
                None => Mode::Staged {
                    bindings: Vec::new(),
                },
            },
        }
    }

    pub(super) fn add(&mut self, feed: &Feed, record: Record) {
        match &mut self.mode {
            Mode::Staged { bindings } => {
                bindings.extend(binding_of(feed, &record, &mut self.last_address));
                self.stage.add(record);
            }
            Mode::InPlace {
                batch,
                appliers,
                ticket_keys,
            } => {
                if record.kind == Kind::TicketKeys {
                    ticket_keys.push(record.clone());
                }
                batch.push(record);
                if batch.len() >= APPLY_BATCH {
                    appliers.send(std::mem::replace(batch, Vec::with_capacity(APPLY_BATCH)));
                }
            }
        }
    }

    /// `SNAPSHOT_END`: checks the count and digest; a snapshot that checks out is merged (staged) or
    /// kept (in place), one that does not is dropped (staged) or undone (in place).
    pub(super) fn finish(
        mut self,
        feed: &Feed,
        gate: &Gate,
        count: u64,
        digest: [u8; 32],
    ) -> Result<Done, StageError> {
        let (epoch, at) = (self.stage.epoch(), self.stage.at());
        let received_in = self.stage.started().elapsed();
        let started = Instant::now();
        match self.mode {
            Mode::Staged { bindings } => {
                let verified = self.stage.finish(count, digest)?;
                let ticket_keys = verified
                    .records()
                    .filter(|r| r.kind == Kind::TicketKeys)
                    .cloned()
                    .collect();
                feed.store.merge(verified);
                apply_bindings(feed, &bindings);
                Ok(Done {
                    epoch,
                    at,
                    ticket_keys,
                    in_place: false,
                    received_in,
                    finished_in: started.elapsed(),
                })
            }
            Mode::InPlace {
                batch,
                mut appliers,
                ticket_keys,
            } => {
                let checked = match appliers.finish(batch) {
                    Some((sum, n)) => {
                        self.stage.note(sum, n);
                        self.stage.check(count, digest)
                    }
                    // An applier died: its part is unknown. Count it a failed check: what the others
                    // applied is undone, and the node asks for a snapshot again.
                    None => Err(StageError::CountMismatch {
                        announced: count,
                        staged: 0,
                    }),
                };
                appliers.settle(checked.is_ok());
                if let Err(e) = checked {
                    gate.release();
                    return Err(e);
                }
                gate.release();
                Ok(Done {
                    epoch,
                    at,
                    ticket_keys,
                    in_place: true,
                    received_in,
                    finished_in: started.elapsed(),
                })
            }
        }
    }

    /// The snapshot will not be finished (its link closed, or another began): staged records are
    /// dropped; records applied in place are undone.
    pub(super) fn abandon(self, gate: &Gate) {
        if let Mode::InPlace {
            batch,
            mut appliers,
            ..
        } = self.mode
        {
            let n = appliers.finish(batch).map_or(0, |(_, n)| n);
            appliers.settle(false);
            gate.release();
            log::info!("replication: {n} record(s) of an unfinished snapshot undone");
        }
    }
}

/// Threads applying an in-place snapshot's batches to the store, handed batches in turn (a snapshot
/// holds each key once, so batches commute). Each hashes its records for the check, keeps the undo log
/// of what it applied, and once told the check's outcome either undoes it or throws it away — on its own
/// thread, not the replication thread's.
#[derive(Debug)]
struct Appliers {
    batches: Vec<Sender<Vec<Record>>>,
    totals: Vec<crossbeam_channel::Receiver<(DigestSum, u64)>>,
    verdicts: Vec<Sender<bool>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
}

/// Applier threads per in-place snapshot: with the thread decoding, they keep two cores busy; the node
/// serves nobody meanwhile.
const APPLIERS: usize = 2;

impl Appliers {
    fn spawn(store: &Arc<crate::store::Store>) -> std::io::Result<Appliers> {
        let mut a = Appliers {
            batches: Vec::new(),
            totals: Vec::new(),
            verdicts: Vec::new(),
            handles: Vec::new(),
            next: 0,
        };
        for _ in 0..APPLIERS {
            let (batch_tx, batch_rx) = crossbeam_channel::unbounded::<Vec<Record>>();
            let (total_tx, total_rx) = crossbeam_channel::bounded(1);
            let (verdict_tx, verdict_rx) = crossbeam_channel::bounded::<bool>(1);
            let store = store.clone();
            // If spawning fails, the threads started so far end when `a` is dropped (their channels
            // close, and no verdict means undo).
            let handle = std::thread::Builder::new()
                .name("repl-apply".into())
                .spawn(move || {
                    let mut log = UndoLog::default();
                    let (mut sum, mut count) = (DigestSum::default(), 0u64);
                    for batch in batch_rx {
                        count += batch.len() as u64;
                        sum = sum + store.apply_undoable_batch(batch, &mut log);
                    }
                    let _ = total_tx.send((sum, count));
                    if verdict_rx.recv() != Ok(true) {
                        store.undo(log);
                    }
                })?;
            a.batches.push(batch_tx);
            a.totals.push(total_rx);
            a.verdicts.push(verdict_tx);
            a.handles.push(handle);
        }
        Ok(a)
    }

    fn send(&mut self, batch: Vec<Record>) {
        if let Some(tx) = self.batches.get(self.next % self.batches.len().max(1)) {
            // An applier outlives its sender: a failed send means it panicked, which finish() reports.
            let _ = tx.send(batch);
        }
        self.next += 1;
    }

    /// Hands over the last batch, closes the batch channels and waits until every applier has applied
    /// everything: the sum of the hashes and the count of all records, or `None` if one panicked.
    fn finish(&mut self, batch: Vec<Record>) -> Option<(DigestSum, u64)> {
        if !batch.is_empty() {
            self.send(batch);
        }
        self.batches.clear();
        let mut whole = Some((DigestSum::default(), 0));
        for rx in &self.totals {
            whole = match (whole, rx.recv()) {
                (Some((s, n)), Ok((sum, count))) => Some((s + sum, n + count)),
                _ => None,
            };
        }
        whole
    }

    /// Tells every applier to keep what it applied, or to undo it, and waits for them.
    fn settle(self, keep: bool) {
        for tx in &self.verdicts {
            let _ = tx.send(keep);
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// The session-table change a record asks for: none for other kinds, for expired records, or for an
/// address no configured backend has. `last` remembers the previous address read (saves parsing and
/// searching for a run of records naming the same backend).
pub(super) fn binding_of(
    feed: &Feed,
    record: &Record,
    last: &mut Option<(Arc<[u8]>, Option<usize>)>,
) -> Option<BindingOp> {
    binding_in(&feed.shared, record, last)
}

/// [`binding_of`] for any thread that applies other nodes' records (the Redis backend's feed too), with
/// the config snapshot whose backends the addresses are looked up in.
pub(crate) fn binding_in(
    shared: &crate::snapshot::SharedSnapshot,
    record: &Record,
    last: &mut Option<(Arc<[u8]>, Option<usize>)>,
) -> Option<BindingOp> {
    if record.kind != Kind::SessionBinding {
        return None;
    }
    let key = u128::from_be_bytes(<[u8; 16]>::try_from(&record.key[..]).ok()?);
    let Some(value) = &record.value else {
        return Some(BindingOp::Forget { key });
    };
    if record.expires != 0 && record.expires <= crate::sticky::unix_now() {
        return None;
    }
    let backend = match last {
        Some((v, id)) if **v == **value => *id,
        _ => {
            let id = backend_at(shared, value);
            *last = Some((value.clone(), id));
            id
        }
    }?;
    Some(BindingOp::Bind { key, backend })
}

/// The id of the configured backend whose address `value` spells, if any.
fn backend_at(shared: &crate::snapshot::SharedSnapshot, value: &[u8]) -> Option<usize> {
    let Some(address) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<SocketAddr>().ok())
    else {
        log::debug!("replication: a session binding with an unreadable address");
        return None;
    };
    let snapshot = shared.load();
    snapshot
        .clusters
        .iter()
        .flat_map(|c| &c.backends)
        .find(|b| b.state.address == address)
        .map(|b| b.state.id)
}

/// Brings the session table in line with binding changes from peers. The table is this node's cache of
/// the bindings in the store (workers look a session up in the store when the table lacks it, and bind
/// it then): a session it holds is moved or forgotten here; one it does not hold is left to that first
/// lookup.
pub(super) fn apply_bindings(feed: &Feed, ops: &[BindingOp]) {
    apply_bindings_to(&feed.sticky, feed.slot, ops);
}

/// [`apply_bindings`] into `sticky`'s session table, counting in the table's slot `slot`.
pub(crate) fn apply_bindings_to(
    sticky: &crate::sticky::Stickiness,
    slot: usize,
    ops: &[BindingOp],
) {
    let now = crate::sticky::unix_now();
    let table = &sticky.table;
    for op in ops {
        match *op {
            BindingOp::Forget { key } => {
                table.remove(key);
            }
            BindingOp::Bind { key, backend } => {
                if table
                    .lookup(slot, key, now)
                    .is_some_and(|b| b.backend != backend)
                {
                    table.rebind(slot, key, backend, now);
                }
            }
        }
    }
}
