//! The QoS manager: a limit on requests in flight per backend (across all workers) and a priority queue
//! per backend for the requests beyond it.
//!
//! A request takes a slot with one compare-and-swap on the backend's in-flight counter; that is all the
//! unsaturated path costs. Only when the backend is full does a request touch the backend's queue (a short
//! critical section), where it waits without a thread and without polling: when a slot frees, the
//! releasing worker hands it straight to the best waiter — strict priority, aged so that a waiter gains
//! one level per `aging` waited — and wakes the worker holding that request.
//!
//! Handoff protocol (why no wake-up is lost): a releaser first gives its slot back, then looks for
//! waiters; a request that found the backend full enqueues itself and then tries for a slot once more.
//! Whichever of the two comes last sees the other's effect.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// A backend's requests in flight over all workers, and how fast its waiters gain priority: what the
/// queue needs of a backend. The backend's shared state owns it (`BackendState::slots`).
#[derive(Debug)]
pub struct Slots {
    inflight: AtomicU32,
    /// Aging step in microseconds (from `[qos] aging`).
    aging_us: AtomicU64,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            inflight: AtomicU32::new(0),
            aging_us: AtomicU64::new(1_000_000),
        }
    }
}

impl Slots {
    /// Takes a slot if fewer than `max` are in flight (0: unlimited, always taken).
    #[inline]
    pub fn try_start(&self, max: u32) -> bool {
        if max == 0 {
            self.inflight.fetch_add(1, Relaxed);
            return true;
        }
        self.inflight
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Counts an attempt in flight without a limit.
    #[inline]
    pub fn start(&self) {
        self.inflight.fetch_add(1, Relaxed);
    }

    /// An attempt ended (its slot is free); returns the count before. SeqCst: the handoff relies on
    /// this release being ordered before the releaser's look at the queue (free on x86, where every
    /// read-modify-write is a full barrier).
    pub fn finish(&self) -> u32 {
        self.inflight
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)))
            .unwrap_or(0)
    }

    /// Gives a slot back without an attempt having run on it.
    pub fn release(&self) {
        self.finish();
    }

    /// Requests in flight.
    #[inline]
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }

    /// How fast a waiting request gains priority.
    pub fn aging(&self) -> Duration {
        Duration::from_micros(self.aging_us.load(Relaxed))
    }

    pub fn set_aging(&self, aging: Duration) {
        self.aging_us
            .store(aging.as_micros().max(1) as u64, Relaxed);
    }
}

/// Priority classes: 0 (lowest) to 7.
pub const CLASSES: usize = 8;

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const CANCELLED: u8 = 2;

/// A request waiting for a slot: shared between its session and the backend's queue.
#[derive(Debug)]
pub struct Waiter {
    state: AtomicU8,
    /// Where to deliver the grant: worker index, session slab key and session id.
    pub worker: usize,
    pub session: usize,
    pub session_id: u64,
    pub priority: u8,
    pub enqueued: Instant,
    /// The backend's in-flight limit this waiter asked under.
    max_inflight: u32,
}

impl Waiter {
    pub fn is_granted(&self) -> bool {
        self.state.load(SeqCst) == GRANTED
    }
}

/// How an attempt to take a slot ended.
#[derive(Debug)]
pub enum Admission {
    /// A slot is taken: go ahead. In a rare race the request ended up holding a second slot, which was
    /// handed to `wake`: the caller must deliver that grant.
    Go { wake: Option<Arc<Waiter>> },
    /// Queued: wait for a grant (or the queue timeout).
    Wait(Arc<Waiter>),
    /// The queue is full: answer 503 at once.
    Full,
}

struct Queues {
    classes: [VecDeque<Arc<Waiter>>; CLASSES],
    /// Live (not cancelled) waiters per class.
    live: [u32; CLASSES],
    wait_us: Histogram<u64>,
}

/// A backend's waiting requests and its wait-time statistics.
pub struct BackendQueue {
    /// Entries in the queues (cancelled ones included until they are popped): the releaser's fast check.
    entries: AtomicU32,
    queues: Mutex<Queues>,
}

impl std::fmt::Debug for BackendQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendQueue")
            .field("entries", &self.entries.load(SeqCst))
            .finish()
    }
}

impl Default for BackendQueue {
    fn default() -> Self {
        BackendQueue {
            entries: AtomicU32::new(0),
            queues: Mutex::new(Queues {
                classes: Default::default(),
                live: [0; CLASSES],
                wait_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            }),
        }
    }
}

/// What SIGUSR1 (and later the admin API) shows of a backend's queue.
#[derive(Debug, Clone, Default)]
pub struct QueueReport {
    pub waiting: [u32; CLASSES],
    pub granted: u64,
    pub wait_p50_us: u64,
    pub wait_p99_us: u64,
    pub wait_max_us: u64,
}

impl BackendQueue {
    /// Takes a slot on `backend` if one is free under `max_inflight`, else queues the request (unless
    /// `max_queue` requests already wait).
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &self,
        backend: &Slots,
        max_inflight: u32,
        max_queue: u32,
        priority: u8,
        worker: usize,
        session: usize,
        session_id: u64,
        now: Instant,
    ) -> Admission {
        if backend.try_start(max_inflight) {
            return Admission::Go { wake: None };
        }
        let waiter = {
            let mut q = self.queues.lock();
            if backend.try_start(max_inflight) {
                return Admission::Go { wake: None };
            }
            let live: u32 = q.live.iter().sum();
            if live >= max_queue {
                return Admission::Full;
            }
            let class = (priority as usize).min(CLASSES - 1);
            let waiter = Arc::new(Waiter {
                state: AtomicU8::new(WAITING),
                worker,
                session,
                session_id,
                priority: class as u8,
                enqueued: now,
                max_inflight,
            });
            q.classes[class].push_back(waiter.clone());
            q.live[class] += 1;
            self.entries.fetch_add(1, SeqCst);
            waiter
        };
        // A slot may have been given back between our failed try and the push: try once more.
        if backend.try_start(max_inflight) {
            if self.cancel(&waiter) {
                return Admission::Go { wake: None };
            }
            // Granted meanwhile as well: we hold two slots; give one back and hand it on.
            backend.release();
            return Admission::Go {
                wake: self.release(backend, now),
            };
        }
        Admission::Wait(waiter)
    }

    /// Withdraws a waiter (queue timeout, client gone). `false` if it was granted first: the caller
    /// then holds a slot and must use or release it.
    pub fn cancel(&self, waiter: &Waiter) -> bool {
        let mut q = self.queues.lock();
        if waiter
            .state
            .compare_exchange(WAITING, CANCELLED, SeqCst, SeqCst)
            .is_ok()
        {
            q.live[waiter.priority as usize] -= 1;
            true
        } else {
            false
        }
    }

    /// Called after an attempt on `backend` finished (its slot already given back): hands a slot to the
    /// best waiter, if any. Returns the waiter to wake.
    pub fn release(&self, backend: &Slots, now: Instant) -> Option<Arc<Waiter>> {
        if self.entries.load(SeqCst) == 0 {
            return None;
        }
        let mut q = self.queues.lock();
        loop {
            let class = best_class(&q.classes, now, backend.aging())?;
            let waiter = q.classes[class].pop_front()?;
            self.entries.fetch_sub(1, SeqCst);
            if waiter.state.load(SeqCst) != WAITING {
                continue; // cancelled: drop it
            }
            if !backend.try_start(waiter.max_inflight) {
                // Someone took the slot first; they will release it later.
                q.classes[class].push_front(waiter);
                self.entries.fetch_add(1, SeqCst);
                return None;
            }
            waiter.state.store(GRANTED, SeqCst);
            q.live[class] -= 1;
            let waited = now.saturating_duration_since(waiter.enqueued).as_micros() as u64;
            let _ = q.wait_us.record(waited.max(1));
            return Some(waiter);
        }
    }

    /// Queue lengths per class and wait times.
    pub fn report(&self) -> QueueReport {
        let q = self.queues.lock();
        QueueReport {
            waiting: q.live,
            granted: q.wait_us.len(),
            wait_p50_us: q.wait_us.value_at_quantile(0.5),
            wait_p99_us: q.wait_us.value_at_quantile(0.99),
            wait_max_us: q.wait_us.max(),
        }
    }
}

/// The class whose head should go next: highest effective priority, where a waiter gains one level
/// per `aging` waited; ties go to the longest waiting. Cancelled heads are looked past by the caller.
fn best_class(
    classes: &[VecDeque<Arc<Waiter>>; CLASSES],
    now: Instant,
    aging: Duration,
) -> Option<usize> {
    let aging_us = aging.as_micros().max(1) as u64;
    let mut best: Option<(u64, Instant, usize)> = None;
    for (class, queue) in classes.iter().enumerate() {
        let Some(head) = queue.front() else { continue };
        let waited = now.saturating_duration_since(head.enqueued).as_micros() as u64;
        // Effective priority in microsecond units: class plus aging credit, capped at the top class.
        let effective = (class as u64 * aging_us + waited).min((CLASSES as u64 - 1) * aging_us);
        let better = match best {
            None => true,
            Some((e, t, _)) => effective > e || (effective == e && head.enqueued < t),
        };
        if better {
            best = Some((effective, head.enqueued, class));
        }
    }
    best.map(|(_, _, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(aging: Duration) -> Slots {
        let b = Slots::default();
        b.set_aging(aging);
        b
    }

    fn admit(q: &BackendQueue, b: &Slots, priority: u8, session: usize, now: Instant) -> Admission {
        q.admit(b, 1, 100, priority, 0, session, session as u64, now)
    }

    #[test]
    fn within_the_limit_requests_go_at_once() {
        let b = backend(Duration::from_secs(60));
        let q = BackendQueue::default();
        let now = Instant::now();
        assert!(matches!(admit(&q, &b, 0, 1, now), Admission::Go { .. }));
        assert_eq!(b.inflight(), 1);
        assert!(matches!(admit(&q, &b, 0, 2, now), Admission::Wait(_)));
    }

    #[test]
    fn strict_priority_then_fifo_within_a_class() {
        let b = backend(Duration::from_secs(3600));
        let q = BackendQueue::default();
        let t0 = Instant::now();
        assert!(matches!(admit(&q, &b, 0, 0, t0), Admission::Go { .. }));
        let order = [(1u8, 1usize), (6, 2), (1, 3), (6, 4), (3, 5)];
        for (i, (p, s)) in order.iter().enumerate() {
            let at = t0 + Duration::from_millis(i as u64);
            assert!(matches!(admit(&q, &b, *p, *s, at), Admission::Wait(_)));
        }
        let mut served = Vec::new();
        let now = t0 + Duration::from_millis(10);
        for _ in 0..5 {
            b.finish();
            served.push(q.release(&b, now).unwrap().session);
        }
        assert_eq!(served, vec![2, 4, 5, 1, 3]);
        assert_eq!(b.inflight(), 1, "each release handed its slot on");
        b.finish();
        assert!(q.release(&b, now).is_none());
        assert_eq!(b.inflight(), 0);
    }

    #[test]
    fn aging_lets_a_long_waiting_low_request_overtake_fresh_high_ones() {
        let aging = Duration::from_millis(100);
        let b = backend(aging);
        let q = BackendQueue::default();
        let t0 = Instant::now();
        assert!(matches!(admit(&q, &b, 0, 0, t0), Admission::Go { .. }));
        assert!(matches!(admit(&q, &b, 0, 1, t0), Admission::Wait(_))); // low, old
        let later = t0 + Duration::from_millis(750);
        assert!(matches!(admit(&q, &b, 7, 2, later), Admission::Wait(_))); // high, fresh
        b.finish();
        // Class 0 waited 750 ms = 7.5 levels: capped at the top and older than the fresh class-7 head.
        assert_eq!(q.release(&b, later).unwrap().session, 1);
    }

    #[test]
    fn cancelled_waiters_are_skipped_and_full_queues_refuse() {
        let b = backend(Duration::from_secs(60));
        let q = BackendQueue::default();
        let now = Instant::now();
        assert!(matches!(
            q.admit(&b, 1, 2, 0, 0, 0, 0, now),
            Admission::Go { .. }
        ));
        let Admission::Wait(w1) = q.admit(&b, 1, 2, 3, 0, 1, 1, now) else {
            panic!()
        };
        assert!(matches!(
            q.admit(&b, 1, 2, 3, 0, 2, 2, now),
            Admission::Wait(_)
        ));
        assert!(matches!(
            q.admit(&b, 1, 2, 3, 0, 3, 3, now),
            Admission::Full
        ));
        assert!(q.cancel(&w1));
        assert_eq!(q.report().waiting[3], 1);
        b.finish();
        assert_eq!(q.release(&b, now).unwrap().session, 2);
        assert!(!q.cancel(&w1), "already cancelled");
        let r = q.report();
        assert_eq!((r.waiting[3], r.granted), (0, 1));
    }
}
