//! Notification ids: the clock that hands them out, and the promise a node makes about them — "every id
//! below P that this node will ever make is already written" — which lets a node deliver a notification
//! only once nothing smaller can still turn up (docs/NOTIFICATIONS.md, "Delivery order").
//!
//! Why a promise: a client acknowledges cumulatively (`up_to=ID`) and polls with a cursor (`after=ID`),
//! so delivering id X tells it that nothing below X is missing. With several publishers (the worker
//! threads of this node, and the other nodes) an id can be handed out before a smaller one is written: a
//! worker descheduled between taking an id and writing it, or a peer's notification still on the wire.
//! Delivering X then, and taking the acknowledgement of X, deleted the smaller one undelivered (measured:
//! 86 of 733,844 acknowledged notifications lost in the 300-user failover benchmark). Every taker of an
//! id holds a reservation until its writes are done; the promise is the smallest id still reserved, or
//! what the clock will hand out next.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Milliseconds since the Unix epoch of 2024-01-01T00:00:00Z: ids count from there, so 42 bits of
/// milliseconds last until 2163 and every id stays below 2^53 (exact in a JSON number, JavaScript's too).
const ID_EPOCH_MS: u64 = 1_704_067_200_000;
/// Low bits of an id: 7 bits of counter within a millisecond, then 4 bits naming the node.
const SLOT_BITS: u32 = 4;
const LOW_BITS: u32 = 11;
/// Largest id ever handed out (2^53 − 1).
pub const MAX_ID: u64 = (1 << 53) - 1;
/// Reservations held at once: publishes in progress (a worker thread or a feed thread each hold at
/// most one); a taker finding all in use yields until one frees.
const RESERVATIONS: usize = 64;

/// Hands out notification ids: `milliseconds since 2024 << 11 | counter << 4 | node slot`, strictly
/// increasing on this node, and above every id this node has seen from a peer (so a notification
/// published after another one reached this node gets a larger id: causal order). The node slot (the
/// node's place among the cluster's sorted node names) keeps two nodes from ever making the same id.
#[derive(Debug)]
pub struct IdClock {
    last: AtomicU64,
    slot: u64,
    /// The wall clock as this clock last read it, never going back (an NTP step back must not let a
    /// later id fall below a promise made before it).
    wall: AtomicU64,
    /// Per reservation in progress: a lower bound of its id (0: free).
    reserved: [AtomicU64; RESERVATIONS],
    /// Bumped whenever the promise may have moved for a reason other than time: an id handed out or
    /// released, a peer's id observed. The replication thread sends a new promise when it changes.
    version: AtomicU64,
}

/// An id taken and not yet written: the promise stays at or below it until this is dropped, which the
/// taker does once every record carrying the id is written.
#[derive(Debug)]
pub struct Reservation<'a> {
    clock: &'a IdClock,
    index: usize,
    pub id: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.clock.reserved[self.index].store(0, SeqCst);
        self.clock.version.fetch_add(1, SeqCst);
    }
}

impl IdClock {
    /// A clock for the node in `slot` (0–15).
    pub fn new(slot: u8) -> IdClock {
        IdClock {
            last: AtomicU64::new(0),
            slot: u64::from(slot) & ((1 << SLOT_BITS) - 1),
            wall: AtomicU64::new(0),
            reserved: std::array::from_fn(|_| AtomicU64::new(0)),
            version: AtomicU64::new(0),
        }
    }

    /// The node's slot: its name's place among every node name of the cluster, sorted (mod 16).
    pub fn slot_of(node: &str, peers: &[&str]) -> u8 {
        let mut names: Vec<&str> = peers.to_vec();
        names.push(node);
        names.sort_unstable();
        names.dedup();
        (names.iter().position(|n| *n == node).unwrap_or(0) % 16) as u8
    }

    /// The next id at wall-clock `now_ms`, with no reservation (the clock's arithmetic; publishing takes
    /// [`reserve`](Self::reserve)).
    fn next(&self, now_ms: u64) -> u64 {
        let base = (now_ms.saturating_sub(ID_EPOCH_MS) << LOW_BITS) | self.slot;
        let mut last = self.last.load(SeqCst);
        loop {
            // One past the last id in the counter bits, with this node's slot.
            let after = (((last >> SLOT_BITS) + 1) << SLOT_BITS) | self.slot;
            let id = base.max(after).min(MAX_ID);
            match self.last.compare_exchange_weak(last, id, SeqCst, SeqCst) {
                Ok(_) => return id,
                Err(now) => last = now,
            }
        }
    }

    /// The wall clock in milliseconds, never below a reading this clock made before.
    fn wall_ms(&self) -> u64 {
        let t = super::queue::unix_ms();
        self.wall.fetch_max(t, SeqCst).max(t)
    }

    /// Takes the next id, reserved until the returned guard is dropped.
    ///
    /// Order matters (all `SeqCst`): the reservation is published with a lower bound before the wall
    /// clock and the id are read. A [`promise`](Self::promise) that missed the reservation read the wall
    /// clock and `last` before it was published, so this id, taken after, is above both parts of that
    /// promise; one that saw it is at or below the bound, which is at or below the id.
    pub fn reserve(&self) -> Reservation<'_> {
        loop {
            let bound = self.last.load(SeqCst).saturating_add(1);
            for (index, r) in self.reserved.iter().enumerate() {
                if r.compare_exchange(0, bound, SeqCst, SeqCst).is_ok() {
                    let id = self.next(self.wall_ms());
                    // The exact id is a tighter bound than `bound` (both are at or below it).
                    r.store(id, SeqCst);
                    self.version.fetch_add(1, SeqCst);
                    return Reservation {
                        clock: self,
                        index,
                        id,
                    };
                }
            }
            std::thread::yield_now();
        }
    }

    /// An id seen in a peer's record: later ids of this node are larger.
    pub fn observe(&self, id: u64) {
        if self.last.fetch_max(id.min(MAX_ID), SeqCst) < id {
            self.version.fetch_add(1, SeqCst);
        }
    }

    /// This node's promise: every id below it that this node will ever make is already written (its
    /// reservation dropped). Never above the smallest reservation in progress; otherwise what the clock
    /// hands out next (one past `last`, and no earlier than the current millisecond).
    pub fn promise(&self) -> u64 {
        let time = self.wall_ms().saturating_sub(ID_EPOCH_MS) << LOW_BITS;
        let mut p = self.last.load(SeqCst).saturating_add(1).max(time);
        for r in &self.reserved {
            let v = r.load(SeqCst);
            if v != 0 {
                p = p.min(v);
            }
        }
        p.min(MAX_ID + 1)
    }

    /// Changes whenever the promise may have moved other than with time (see the field).
    pub fn version(&self) -> u64 {
        self.version.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_stay_below_2_53_and_carry_the_slot() {
        let c = IdClock::new(3);
        let now = ID_EPOCH_MS + 86_400_000 * 365 * 2;
        let mut last = 0;
        for _ in 0..1000 {
            let id = c.next(now);
            assert!(id > last && id <= MAX_ID);
            assert_eq!(id & 0xf, 3);
            last = id;
        }
        // A peer's larger id pushes this node's next one above it.
        c.observe(last + 1000);
        assert!(c.next(now) > last + 1000);
        // Far in the future the ids saturate at 2^53 - 1 rather than leave exact JSON range.
        assert!(IdClock::new(0).next(u64::MAX / 2) <= MAX_ID);
        // Two nodes in the same millisecond never make the same id.
        let (a, b) = (IdClock::new(0), IdClock::new(1));
        assert_ne!(a.next(now), b.next(now));
    }

    #[test]
    fn slots_follow_the_sorted_names() {
        assert_eq!(IdClock::slot_of("a", &["b", "c"]), 0);
        assert_eq!(IdClock::slot_of("c", &["a", "b"]), 2);
        assert_eq!(IdClock::slot_of("b", &["c", "a"]), 1);
    }

    #[test]
    fn the_promise_stays_at_or_below_every_reserved_id_and_passes_it_once_released() {
        let c = IdClock::new(1);
        let v0 = c.version();
        let first = c.reserve();
        let second = c.reserve();
        let (a, b) = (first.id, second.id);
        assert!(b > a);
        // Two ids out, neither written: nothing at or above the first may be delivered.
        assert!(c.promise() <= a);
        assert!(c.version() > v0);
        // The larger one written first (a worker descheduled holding the smaller): still held back.
        drop(second);
        assert!(c.promise() <= a);
        drop(first);
        let p = c.promise();
        assert!(p > b, "promise {p} passes every released id");
        // Whatever is taken next is at or above the promise made before it.
        assert!(c.reserve().id >= p);
    }

    #[test]
    fn observing_a_larger_peer_id_moves_the_promise_past_it() {
        let c = IdClock::new(0);
        let far = c.promise() + (1_000 << LOW_BITS);
        let v = c.version();
        c.observe(far);
        assert!(c.version() > v);
        assert!(c.promise() > far);
        // A smaller one changes nothing.
        let v = c.version();
        c.observe(far - 5);
        assert_eq!(c.version(), v);
    }

    #[test]
    fn concurrent_takers_never_hand_out_an_id_below_a_promise_made_before() {
        use std::sync::Arc;
        // A global order of events: a promise finished at tick t, a reservation begun at tick u > t must
        // get an id at or above it.
        let c = Arc::new(IdClock::new(2));
        let ticks = Arc::new(AtomicU64::new(0));
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let (c, ticks) = (c.clone(), ticks.clone());
                std::thread::spawn(move || {
                    // Paced, so that ids follow the wall clock rather than run ahead of it on the counter.
                    (0..3_000)
                        .map(|_| {
                            std::thread::sleep(std::time::Duration::from_micros(20));
                            let began = ticks.fetch_add(1, SeqCst);
                            let r = c.reserve();
                            (began, r.id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut promises = Vec::new();
        while !takers.iter().all(|t| t.is_finished()) {
            let p = c.promise();
            promises.push((ticks.fetch_add(1, SeqCst), p));
            std::thread::yield_now();
        }
        let taken: Vec<(u64, u64)> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        // For each reservation, the largest promise finished before it began.
        let mut best = Vec::with_capacity(promises.len());
        let mut max = 0;
        for &(t, p) in &promises {
            max = max.max(p);
            best.push((t, max));
        }
        for (began, id) in taken {
            let i = best.partition_point(|(t, _)| *t < began);
            if i > 0 {
                let (_, p) = best[i - 1];
                assert!(id >= p, "id {id} taken after promise {p}");
            }
        }
    }
}
