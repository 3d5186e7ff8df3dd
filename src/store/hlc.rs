//! The hybrid logical clock that versions records: wall-clock milliseconds with a logical counter below
//! them, never going backwards, merged with the readings peers send; and a node's id for version ties.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bits of a reading below the milliseconds: the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// How far ahead of the local wall clock a peer's reading may be before [`Hlc::observe`] refuses it.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(60);

/// A reading a peer sent that is too far ahead of this node's wall clock to be believed; merging it would
/// drag every later version of this node ahead with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer clock {ahead_ms} ms ahead of ours (at most {max_ms} ms accepted); reading ignored")]
pub struct ClockError {
    pub ahead_ms: u64,
    pub max_ms: u64,
}

/// A hybrid logical clock: readings are `milliseconds since the Unix epoch << 16 | logical counter`.
///
/// Every reading [`now`](Hlc::now) returns is larger than every reading it returned before and every one
/// it [`observed`](Hlc::observe), on any thread, even when the wall clock steps backwards (the clock then
/// advances its logical counter until the wall clock catches up). When the counter of one millisecond is
/// used up (65,536 readings), the reading carries into the next millisecond, running ahead of the wall
/// clock by that much. Lock-free: one `AtomicU64` updated by compare-and-exchange.
#[derive(Debug)]
pub struct Hlc {
    last: AtomicU64,
    max_ahead_ms: u64,
}

impl Default for Hlc {
    fn default() -> Self {
        Hlc::new(DEFAULT_MAX_AHEAD)
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hlc {
    /// A clock that refuses peer readings more than `max_ahead` ahead of the local wall clock.
    pub fn new(max_ahead: Duration) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            max_ahead_ms: max_ahead.as_millis() as u64,
        }
    }

    /// A new reading, larger than any before.
    pub fn now(&self) -> u64 {
        self.now_at(wall_ms())
    }

    /// [`now`](Hlc::now) with the wall clock given (milliseconds since the Unix epoch).
    pub fn now_at(&self, wall_ms: u64) -> u64 {
        let physical = wall_ms << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Merges a reading received from a peer: later readings of this clock are larger than it. A reading
    /// more than the allowed skew ahead of the local wall clock is refused (and not merged); callers log it.
    pub fn observe(&self, remote: u64) -> Result<(), ClockError> {
        self.observe_at(remote, wall_ms())
    }

    /// [`observe`](Hlc::observe) with the wall clock given (milliseconds since the Unix epoch).
    pub fn observe_at(&self, remote: u64, wall_ms: u64) -> Result<(), ClockError> {
        let remote_ms = remote >> LOGICAL_BITS;
        if remote_ms > wall_ms.saturating_add(self.max_ahead_ms) {
            return Err(ClockError {
                ahead_ms: remote_ms - wall_ms,
                max_ms: self.max_ahead_ms,
            });
        }
        self.last.fetch_max(remote, Ordering::AcqRel);
        Ok(())
    }

    /// The last reading handed out or observed (0 for a new clock), without advancing the clock.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

/// A node's id, the tie-break of versions: the first two bytes (big-endian) of SHA-256 of its name.
pub fn node_id(name: &str) -> u16 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    u16::from_be_bytes([d.as_ref()[0], d.as_ref()[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T: u64 = 1_750_000_000_000;

    #[test]
    fn readings_increase_even_when_the_wall_clock_goes_back() {
        let c = Hlc::default();
        let a = c.now_at(T);
        assert_eq!(a, T << LOGICAL_BITS);
        let b = c.now_at(T);
        assert_eq!(b, a + 1);
        // The wall clock steps back a second: the logical counter keeps going.
        let d = c.now_at(T - 1_000);
        assert_eq!(d, b + 1);
        // It catches up: physical time takes over again.
        let e = c.now_at(T + 5);
        assert_eq!(e, (T + 5) << LOGICAL_BITS);
    }

    #[test]
    fn logical_counter_carries_into_the_next_millisecond() {
        let c = Hlc::default();
        let mut last = c.now_at(T);
        for _ in 0..70_000 {
            let r = c.now_at(T);
            assert!(r > last);
            last = r;
        }
        assert_eq!(last >> LOGICAL_BITS, T + 1);
    }

    #[test]
    fn observe_merges_and_never_goes_back() {
        let c = Hlc::default();
        c.now_at(T);
        let remote = ((T + 30_000) << LOGICAL_BITS) | 7;
        c.observe_at(remote, T).unwrap();
        assert_eq!(c.now_at(T), remote + 1);
        // An older reading changes nothing.
        c.observe_at(T << LOGICAL_BITS, T).unwrap();
        assert_eq!(c.now_at(T), remote + 2);
    }

    #[test]
    fn observe_refuses_a_reading_too_far_ahead() {
        let c = Hlc::default();
        let before = c.now_at(T);
        let err = c.observe_at((T + 61_000) << LOGICAL_BITS, T).unwrap_err();
        assert_eq!(
            err,
            ClockError {
                ahead_ms: 61_000,
                max_ms: 60_000
            }
        );
        assert_eq!(c.last(), before);
        assert!(c.observe_at((T + 60_000) << LOGICAL_BITS, T).is_ok());
    }

    #[test]
    fn readings_are_unique_across_threads() {
        let c = Arc::new(Hlc::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let v = t.join().unwrap();
            assert!(v.windows(2).all(|w| w[0] < w[1]));
            all.extend(v);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn node_id_is_the_sha256_prefix() {
        // SHA-256("") = e3b0c442…
        assert_eq!(node_id(""), 0xe3b0);
        // SHA-256("abc") = ba7816bf…
        assert_eq!(node_id("abc"), 0xba78);
        assert_ne!(node_id("node-a"), node_id("node-b"));
    }
}
