//! What every thread shares about notifications: which notification ids each queue holds and which
//! login sessions each user has (indexes the store's watcher keeps, on whatever thread applied the
//! record: a worker publishing, the replication thread applying a peer's records, a snapshot), the
//! requests waiting for a queue (long polls, SSE streams) to wake when one lands, the id clock, and
//! the counters.
//!
//! Everything here is lock-free (papaya maps whose values are small immutable slices, replaced whole):
//! the replication thread must never wait on a worker, nor a worker on it. The indexes are hints: every
//! reader checks the store (a notification's record, the queue's acknowledgement, the session's record)
//! before it delivers anything, so an index entry that outlived its record costs a lookup, not a wrong
//! answer.

use super::queue::{self, IdClock, Notification, QueueId};
use crate::proxy::stages::Ticket;
use crate::store::{Kind, Record, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One notification as a queue's index lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// Bytes of its data (for the queue's byte bound).
    pub len: u32,
    pub flags: u8,
}

/// A notification read for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: u64,
    pub flags: u8,
    pub dropped: u32,
    /// The publisher's JSON text.
    pub data: Arc<[u8]>,
}

/// Counters, summed over the node's threads (atomics: publishing, delivery and the watcher run on
/// different threads; none of this is on a plain request's path).
#[derive(Debug, Default)]
pub struct Stats {
    /// Notifications written to a queue (one per session a publish reached).
    pub queued: AtomicU64,
    /// Notifications handed to a client (piggybacked, polled or streamed), repeats included.
    pub delivered: AtomicU64,
    /// Acknowledgements written.
    pub acks: AtomicU64,
    /// Notifications for a logged-out or unknown session (or a user without one), dropped.
    pub dropped_no_session: AtomicU64,
    /// Old notifications dropped to make room (`when_full = "drop_oldest"`).
    pub dropped_full: AtomicU64,
    /// Publishes refused because every queue they were for was full (`when_full = "refuse"`: 507).
    pub refused_full: AtomicU64,
    /// Publishes refused for a wrong or missing bearer secret (401).
    pub unauthorized: AtomicU64,
    /// Events received from subscribed feeds, and reconnections of those feeds.
    pub feed_events: AtomicU64,
    pub feed_reconnects: AtomicU64,
}

impl Stats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// The SIGUSR1 line.
    pub fn report_line(&self) -> String {
        format!(
            "stats: notifications queued={} delivered={} acks={} dropped_no_session={} dropped_full={} \
             refused_full={} unauthorized={} feed_events={} feed_reconnects={}",
            self.queued.load(Relaxed),
            self.delivered.load(Relaxed),
            self.acks.load(Relaxed),
            self.dropped_no_session.load(Relaxed),
            self.dropped_full.load(Relaxed),
            self.refused_full.load(Relaxed),
            self.unauthorized.load(Relaxed),
            self.feed_events.load(Relaxed),
            self.feed_reconnects.load(Relaxed),
        )
    }
}

/// The notification queues' shared state (one per process, built when `[notifications]` is
/// configured).
pub struct Hub {
    /// Per queue, the notifications this node holds, by increasing id.
    queues: papaya::HashMap<QueueId, Arc<[Entry]>>,
    /// `TENANT/USER` → the user's login sessions (live or not: checked when used).
    users: papaya::HashMap<Box<[u8]>, Arc<[QueueId]>>,
    /// Requests waiting for a notification in a queue; all woken (and forgotten) when one lands.
    waiters: papaya::HashMap<QueueId, Arc<[Arc<Ticket>]>>,
    /// Queues holding a notification not deliverable yet (at or above the delivery bound), with the
    /// smallest such id: woken when the bound passes it.
    held: papaya::HashMap<QueueId, u64>,
    /// The smallest promise of the peers linked to this node (the replication thread sets it; `u64::MAX`
    /// with none): every id below it that a peer will make has reached this node.
    peers_promise: AtomicU64,
    pub ids: IdClock,
    pub stats: Stats,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("queues", &self.queues.len())
            .field("users", &self.users.len())
            .finish()
    }
}

/// The users index key: `TENANT/USER`.
pub fn user_key(tenant: &str, user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + user.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(b'/');
    k.extend_from_slice(user.as_bytes());
    k
}

impl Hub {
    /// A hub for the node in id slot `slot`.
    pub fn new(slot: u8) -> Arc<Hub> {
        Arc::new(Hub {
            queues: papaya::HashMap::new(),
            users: papaya::HashMap::new(),
            waiters: papaya::HashMap::new(),
            held: papaya::HashMap::new(),
            peers_promise: AtomicU64::new(u64::MAX),
            ids: IdClock::new(slot),
            stats: Stats::default(),
        })
    }

    /// Makes `store` tell this hub about login sessions and notifications. Called before anything is
    /// written to the store or a peer's snapshot arrives, so nothing escapes the indexes.
    pub fn watch(self: &Arc<Hub>, store: &Store) {
        let hub = Arc::downgrade(self);
        store.watch(Arc::new(move |r: &Record| {
            if let Some(h) = hub.upgrade() {
                h.on_record(r);
            }
        }));
    }

    /// A record of a watched kind changed the store (the store's watcher).
    pub fn on_record(&self, r: &Record) {
        match r.kind {
            Kind::LoginSession => {
                let Ok(id) = <QueueId>::try_from(&r.key[..]) else {
                    return;
                };
                match r.value.as_deref() {
                    Some(v) => {
                        let Ok(s) = crate::auth::session::LoginSession::decode(v) else {
                            return;
                        };
                        let key: Box<[u8]> = user_key(&s.tenant, &s.user).into();
                        let users = self.users.pin();
                        users.update_or_insert_with(
                            key,
                            |list| {
                                if list.contains(&id) {
                                    list.clone()
                                } else {
                                    list.iter().copied().chain([id]).collect()
                                }
                            },
                            || Arc::from([id]),
                        );
                    }
                    None => {
                        // Logged out: its queue goes with it (the records expire; nothing delivers them).
                        if let Some(q) = self.queues.pin().remove(&id) {
                            Stats::add(&self.stats.dropped_no_session, q.len() as u64);
                        }
                        self.wake(&id);
                    }
                }
            }
            Kind::Notification => {
                let Some((q, id)) = queue::split_key(&r.key) else {
                    return;
                };
                match r.value.as_deref().and_then(Notification::decode) {
                    Some(n) => {
                        self.ids.observe(id);
                        let entry = Entry {
                            id,
                            len: n.data.len().min(u32::MAX as usize) as u32,
                            flags: n.flags,
                        };
                        self.queues.pin().update_or_insert_with(
                            q,
                            |list| insert_sorted(list, entry),
                            || Arc::from([entry]),
                        );
                        self.wake(&q);
                    }
                    None => self.forget(&q, |e| e.id == id),
                }
            }
            Kind::NotificationAck => {
                let Ok(q) = <QueueId>::try_from(&r.key[..]) else {
                    return;
                };
                if let Some(up_to) = r.value.as_deref().and_then(queue::read_ack) {
                    self.forget(&q, |e| e.id <= up_to);
                }
            }
            _ => {}
        }
    }

    /// Drops index entries of `q` that `gone` picks.
    fn forget(&self, q: &QueueId, gone: impl Fn(&Entry) -> bool) {
        let queues = self.queues.pin();
        let _ = queues.compute(*q, |current| match current {
            Some((_, list)) if list.iter().any(&gone) => {
                // An emptied queue keeps its key (an empty list): papaya does not reuse a removed key's
                // slot, so removing and re-inserting a queue on every delivery filled the table with
                // dead slots and kept it copying itself (measured: ~¾ of a worker at 5,000 publishes/s
                // in lookups walking to the next table and in retries). Logout removes the key.
                papaya::Operation::Insert(list.iter().filter(|e| !gone(e)).copied().collect())
            }
            _ => papaya::Operation::Abort(()),
        });
    }

    /// The index entries of `q` (what this node holds, possibly a little stale).
    pub fn entries(&self, q: &QueueId) -> Option<Arc<[Entry]>> {
        self.queues.pin().get(q).cloned()
    }

    /// Whether `q` has anything indexed: one lock-free lookup, no allocation (the piggyback hook's
    /// test on every response of a `notifications = true` route).
    pub fn has_entries(&self, q: &QueueId) -> bool {
        self.queues.pin().get(q).is_some_and(|l| !l.is_empty())
    }

    /// The login sessions of `TENANT/USER` this node has seen (live or not).
    pub fn sessions_of(&self, tenant: &str, user: &str) -> Vec<QueueId> {
        let users = self.users.pin();
        users
            .get(&user_key(tenant, user)[..])
            .map(|l| l.to_vec())
            .unwrap_or_default()
    }

    /// Forgets sessions of `TENANT/USER` that ended (the publish path prunes what it found dead).
    pub fn prune_sessions(&self, tenant: &str, user: &str, dead: &[QueueId]) {
        if dead.is_empty() {
            return;
        }
        let key: Box<[u8]> = user_key(tenant, user).into();
        let _ = self.users.pin().compute(key, |current| match current {
            Some((_, list)) => {
                let kept: Arc<[QueueId]> =
                    list.iter().filter(|s| !dead.contains(s)).copied().collect();
                if kept.is_empty() {
                    papaya::Operation::Remove
                } else {
                    papaya::Operation::Insert(kept)
                }
            }
            None => papaya::Operation::Abort(()),
        });
    }

    /// The notifications of `q` after `after` that this node holds and that are not acknowledged, in id
    /// order, and whether `after` is an id this node cannot place: not 0, not acknowledged, not held
    /// (expired, dropped, or never seen here). A caller that honours the reset asks again from 0.
    pub fn pending(&self, store: &Store, q: &QueueId, after: u64, now: u32) -> (Vec<Item>, bool) {
        let acked = queue::acked(store, q, now);
        let entries = self.entries(q);
        let list = entries.as_deref().unwrap_or(&[]);
        let reader = store.reader();
        let mut items = Vec::new();
        let mut known = after == 0 || after <= acked;
        // Delivered in id order only below the bound: an id at or above it could still be preceded by a
        // smaller one not here yet, which the client's cursor and cumulative ack would then skip.
        let bound = self.deliverable();
        let mut held = None;
        for e in list {
            if e.id <= acked {
                continue;
            }
            let Some(r) = reader.get(Kind::Notification, &queue::key(q, e.id), now) else {
                continue;
            };
            if e.id == after {
                known = true;
            }
            if e.id <= after {
                continue;
            }
            if e.id >= bound {
                held.get_or_insert(e.id);
                continue;
            }
            let Some(value) = r.value.as_ref() else {
                continue;
            };
            if let Some(n) = Notification::decode(value) {
                let start = value.len() - n.data.len();
                items.push(Item {
                    id: e.id,
                    flags: n.flags,
                    dropped: n.dropped,
                    data: value[start..].into(),
                });
            }
        }
        if let Some(id) = held {
            self.hold(q, id);
        }
        (items, !known)
    }

    /// The delivery bound: every notification below it that will ever exist is here (this node's own
    /// promise and its linked peers'; docs/NOTIFICATIONS.md, "Delivery order").
    pub fn deliverable(&self) -> u64 {
        self.ids.promise().min(self.peers_promise.load(Relaxed))
    }

    /// The linked peers' smallest promise changed (the replication thread): wakes what it releases.
    pub fn set_peers_promise(&self, promise: u64) {
        if self.peers_promise.swap(promise, Relaxed) != promise {
            self.release_held();
        }
    }

    /// Notes that `q` holds `id`, not deliverable yet; wakes it at once should the bound have passed it
    /// meanwhile (a [`release_held`](Self::release_held) that ran before this note missed it).
    fn hold(&self, q: &QueueId, id: u64) {
        self.held
            .pin()
            .update_or_insert(*q, |old| (*old).min(id), id);
        if id < self.deliverable() {
            self.release_held();
        }
    }

    /// Wakes every queue whose held notification the bound now passes. Cheap when nothing is held (one
    /// length read): it runs after every publish and on every promise from a peer.
    pub fn release_held(&self) {
        let held = self.held.pin();
        if held.is_empty() {
            return;
        }
        let bound = self.deliverable();
        let due: Vec<QueueId> = held
            .iter()
            .filter(|(_, id)| **id < bound)
            .map(|(q, _)| *q)
            .collect();
        for q in due {
            let _ = held.compute(q, |current| match current {
                Some((_, id)) if *id < bound => papaya::Operation::Remove,
                _ => papaya::Operation::Abort(()),
            });
            self.wake(&q);
        }
    }

    /// [`pending`](Self::pending) for a client: on a reset, everything not acknowledged instead.
    pub fn pending_or_reset(
        &self,
        store: &Store,
        q: &QueueId,
        after: u64,
        now: u32,
    ) -> (Vec<Item>, bool) {
        match self.pending(store, q, after, now) {
            (_, true) => (self.pending(store, q, 0, now).0, true),
            other => other,
        }
    }

    /// Registers `ticket` to be completed when a notification lands in `q` (or its session ends). Tickets
    /// already done or cancelled are dropped from the queue's list on the way, so a client that long-polls
    /// an empty queue over and over leaves one entry, not one per poll.
    pub(crate) fn wait(&self, q: &QueueId, ticket: Arc<Ticket>) {
        self.waiters.pin().update_or_insert_with(
            *q,
            |list| {
                // Tickets already completed (their request moved on) are dropped on the way.
                list.iter()
                    .filter(|t| !t.is_done())
                    .cloned()
                    .chain([ticket.clone()])
                    .collect()
            },
            || Arc::from([ticket.clone()]),
        );
    }

    /// Wakes every request waiting for `q`.
    pub fn wake(&self, q: &QueueId) {
        let removed = self.waiters.pin().remove(q).cloned();
        if let Some(list) = removed {
            for t in list.iter() {
                t.complete();
            }
        }
    }

    /// Requests waiting (long polls and streams not yet woken), for reports.
    pub fn waiting(&self) -> usize {
        self.waiters.pin().values().map(|l| l.len()).sum()
    }
}

/// What [`Hub::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Written to `queues` sessions' queues under `id` (`full` more refused it: `when_full = "refuse"`).
    Queued { id: u64, queues: usize, full: usize },
    /// No live login session to deliver to: dropped and counted.
    NoSession,
    /// Every queue it was for is full and refuses (507).
    Full,
}

impl Hub {
    /// Queues `data` (JSON text) for `target`: every live login session of a user (of `tenant`, default
    /// the first pool's), or one session. Bounds each queue by `max_count` and `max_bytes`: the oldest
    /// notifications make room (tombstoned, and the new one carries how many), or the queue refuses.
    /// All of one publish's writes but the last are plain ones; the last carries `on_ack` (a `sync`
    /// write): a peer acknowledges a node's stream cumulatively, so that one acknowledgement covers the
    /// writes before it. `on_ack` is dropped uncalled when nothing was written.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        writer: &crate::store::StoreWriter,
        settings: &super::Settings,
        default_tenant: &str,
        target: &super::parse::Target,
        data: &str,
        flags: u8,
        now: u32,
        on_ack: Option<crate::store::OnAck>,
    ) -> Enqueued {
        use super::parse::Target;
        let store = writer.store();
        let live = |s: &QueueId| store.get(Kind::LoginSession, s, now).is_some();
        let sessions: Vec<QueueId> = match target {
            Target::Session(s) => vec![*s].into_iter().filter(live).collect(),
            Target::User { tenant, user } => {
                let tenant = tenant.as_deref().unwrap_or(default_tenant);
                let all = self.sessions_of(tenant, user);
                let (alive, dead): (Vec<QueueId>, Vec<QueueId>) = all.into_iter().partition(live);
                self.prune_sessions(tenant, user, &dead);
                alive
            }
        };
        if sessions.is_empty() {
            Stats::add(&self.stats.dropped_no_session, 1);
            return Enqueued::NoSession;
        }
        // Held until every write below is done: the promise stays at or below `id` meanwhile.
        let reservation = self.ids.reserve();
        let id = reservation.id;
        let expires = now.saturating_add(settings.ttl);
        let len = data.len().min(u32::MAX as usize) as u32;
        let mut writes: Vec<(QueueId, u32)> = Vec::with_capacity(sessions.len());
        let mut full = 0;
        for q in &sessions {
            let acked = queue::acked(store, q, now);
            let held: Vec<Entry> = self
                .entries(q)
                .map(|l| l.iter().filter(|e| e.id > acked).copied().collect())
                .unwrap_or_default();
            let (mut count, mut bytes) = (
                held.len(),
                held.iter().map(|e| e.len as usize).sum::<usize>(),
            );
            let fits = |count: usize, bytes: usize| {
                count < settings.max_count && bytes + len as usize <= settings.max_bytes
            };
            let mut dropped = 0u32;
            if !fits(count, bytes) {
                if settings.when_full == crate::config::WhenFull::Refuse
                    || len as usize > settings.max_bytes
                {
                    full += 1;
                    continue;
                }
                for e in &held {
                    if fits(count, bytes) {
                        break;
                    }
                    let _ = queue::delete(writer, q, e.id, expires);
                    count -= 1;
                    bytes -= e.len as usize;
                    dropped += 1;
                }
                Stats::add(&self.stats.dropped_full, u64::from(dropped));
            }
            writes.push((*q, dropped));
        }
        if writes.is_empty() {
            Stats::add(&self.stats.refused_full, 1);
            drop(reservation);
            self.release_held();
            return Enqueued::Full;
        }
        let n = writes.len();
        let mut on_ack = on_ack;
        for (i, (q, dropped)) in writes.into_iter().enumerate() {
            let value = Notification {
                flags,
                dropped,
                data: data.as_bytes(),
            }
            .encode();
            let ack = if i + 1 == n { on_ack.take() } else { None };
            let _ = queue::write_notification(writer, &q, id, value, expires, ack);
        }
        Stats::add(&self.stats.queued, n as u64);
        // Written: the promise may pass `id` now, and what waited for that is woken.
        drop(reservation);
        self.release_held();
        Enqueued::Queued {
            id,
            queues: n,
            full,
        }
    }
}

/// `list` with `e` in its place by id (replacing an entry of the same id).
fn insert_sorted(list: &Arc<[Entry]>, e: Entry) -> Arc<[Entry]> {
    let mut v: Vec<Entry> = Vec::with_capacity(list.len() + 1);
    let at = list.partition_point(|x| x.id < e.id);
    v.extend_from_slice(&list[..at]);
    v.push(e);
    let rest = if list.get(at).is_some_and(|x| x.id == e.id) {
        at + 1
    } else {
        at
    };
    v.extend_from_slice(&list[rest..]);
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Hlc, WriteFeed};

    fn setup() -> (Arc<Store>, crate::store::StoreWriter, Arc<Hub>) {
        let store = Arc::new(Store::new());
        let (feed, mut w) = WriteFeed::new(store.clone(), Arc::new(Hlc::default()), 1, 1, 16);
        drop(feed);
        let hub = Hub::new(0);
        hub.watch(&store);
        (store, w.remove(0), hub)
    }

    fn publish(w: &crate::store::StoreWriter, hub: &Hub, q: &QueueId, data: &str) -> u64 {
        let id = hub.ids.reserve().id;
        let v = Notification {
            flags: 0,
            dropped: 0,
            data: data.as_bytes(),
        }
        .encode();
        queue::write_notification(w, q, id, v, u32::MAX, None).unwrap();
        id
    }

    #[test]
    fn published_notifications_are_read_in_order_after_a_cursor_and_acks_hide_them() {
        let (store, w, hub) = setup();
        let q = [1u8; 16];
        let ids: Vec<u64> = (0..5)
            .map(|i| publish(&w, &hub, &q, &i.to_string()))
            .collect();
        let (all, reset) = hub.pending(&store, &q, 0, 1);
        assert!(!reset);
        assert_eq!(all.iter().map(|i| i.id).collect::<Vec<_>>(), ids);
        assert_eq!(&*all[2].data, b"2");
        let (after, reset) = hub.pending(&store, &q, ids[1], 1);
        assert!(!reset);
        assert_eq!(after.len(), 3);
        // An id this node never saw: a reset, with everything held.
        let (held, reset) = hub.pending_or_reset(&store, &q, ids[1] + 1, 1);
        assert!(reset);
        assert_eq!(held.len(), 5);
        // Acknowledged up to the third: gone from every read, and the index forgets them.
        queue::write_ack(&w, &q, ids[2], u32::MAX, 1, None).unwrap();
        let (rest, reset) = hub.pending(&store, &q, 0, 1);
        assert!(!reset);
        assert_eq!(rest.iter().map(|i| i.id).collect::<Vec<_>>(), ids[3..]);
        assert_eq!(hub.entries(&q).unwrap().len(), 2);
        // The acknowledged cursor itself is known: no reset.
        assert!(!hub.pending(&store, &q, ids[1], 1).1);
        // A tombstone removes one.
        queue::delete(&w, &q, ids[3], u32::MAX).unwrap();
        assert_eq!(hub.pending(&store, &q, 0, 1).0.len(), 1);
    }

    #[test]
    fn nothing_at_or_above_the_delivery_bound_is_delivered_until_it_passes() {
        let (store, w, hub) = setup();
        let q = [2u8; 16];
        // A worker took an id and has not written it yet; another publish after it is written.
        let slow = hub.ids.reserve();
        let fast = publish(&w, &hub, &q, "fast");
        assert!(fast > slow.id);
        // Delivering `fast` now would let its acknowledgement cover `slow`, unseen: held back.
        assert!(hub.pending(&store, &q, 0, 1).0.is_empty());
        let v = Notification {
            flags: 0,
            dropped: 0,
            data: b"slow",
        }
        .encode();
        queue::write_notification(&w, &q, slow.id, v, u32::MAX, None).unwrap();
        let slow_id = slow.id;
        drop(slow);
        let ids: Vec<u64> = hub
            .pending(&store, &q, 0, 1)
            .0
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, [slow_id, fast]);

        // A linked peer that has not promised past an id holds it back too, and releases it.
        let later = publish(&w, &hub, &q, "later");
        hub.set_peers_promise(later);
        let (items, _) = hub.pending(&store, &q, fast, 1);
        assert!(items.is_empty());
        assert_eq!(hub.held.pin().get(&q).copied(), Some(later));
        hub.set_peers_promise(later + 1);
        assert!(hub.held.pin().get(&q).is_none(), "released once passed");
        assert_eq!(hub.pending(&store, &q, fast, 1).0.len(), 1);
    }

    #[test]
    fn out_of_order_arrivals_are_indexed_in_id_order() {
        let l: Arc<[Entry]> = Arc::from([]);
        let e = |id| Entry {
            id,
            len: 0,
            flags: 0,
        };
        let l = insert_sorted(&l, e(5));
        let l = insert_sorted(&l, e(1));
        let l = insert_sorted(&l, e(3));
        let l = insert_sorted(&l, e(3));
        assert_eq!(l.iter().map(|x| x.id).collect::<Vec<_>>(), [1, 3, 5]);
    }
}
