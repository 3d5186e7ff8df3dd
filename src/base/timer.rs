//! A per-worker hashed timer wheel with lazy cancellation.
//!
//! Connections do not cancel timers. Each connection keeps its current `deadline` and the tick it is
//! *armed* at; it only adds a wheel entry when its deadline moves *earlier* than the armed tick. When an entry
//! fires, the owner checks it is still the armed one (else it is stale and dropped) and either times out or
//! re-arms at its later deadline. Moving a deadline later — what happens on every byte of traffic — is
//! therefore a plain field write, and the wheel's slot vectors keep their capacity, so steady state
//! allocates nothing.

use std::time::{Duration, Instant};

/// Width of one wheel slot.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 1024;

/// What a wheel entry points at: the owner's token and a per-owner id that guards against slot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub token: usize,
    pub id: u64,
    pub tick: u64,
}

/// Hashed wheel of `SLOTS` slots of `TICK`; deadlines past one turn stay in their slot until due.
#[derive(Debug)]
pub struct TimerWheel {
    origin: Instant,
    slots: Vec<Vec<TimerEntry>>,
    /// Every tick before this one has been processed.
    next_tick: u64,
    len: usize,
}

impl TimerWheel {
    pub fn new(now: Instant) -> Self {
        TimerWheel {
            origin: now,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            len: 0,
        }
    }

    /// The tick a deadline falls in (rounded up, so a timer never fires early).
    pub fn tick_of(&self, at: Instant) -> u64 {
        // u64 arithmetic (a u128 division costs ~100 cycles and runs on every deadline update);
        // u64 nanoseconds last 584 years.
        let d = at.saturating_duration_since(self.origin);
        let nanos = d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos());
        nanos.div_ceil(TICK.as_nanos() as u64)
    }

    /// Adds an entry for `at`; returns the tick it was armed at (store it to recognise the entry later).
    pub fn schedule(&mut self, token: usize, id: u64, at: Instant) -> u64 {
        // A deadline already in the past fires on the next pass.
        let tick = self.tick_of(at).max(self.next_tick);
        self.slots[(tick as usize) % SLOTS].push(TimerEntry { token, id, tick });
        self.len += 1;
        tick
    }

    /// Moves every entry due at `now` into `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<TimerEntry>) {
        let now_tick = self.tick_of(now);
        if now_tick < self.next_tick || self.len == 0 {
            self.next_tick = self.next_tick.max(now_tick);
            return;
        }
        // After a long sleep one pass over every slot is enough.
        let last = now_tick.min(self.next_tick + SLOTS as u64 - 1);
        for tick in self.next_tick..=last {
            let slot = &mut self.slots[(tick as usize) % SLOTS];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].tick <= now_tick {
                    due.push(slot.swap_remove(i));
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
        }
        self.next_tick = now_tick + 1;
    }

    /// How long the event loop may sleep before the next entry could be due (`None`: no entries).
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        // Look a bounded distance ahead; past it, waking once per bound is cheap enough.
        const LOOKAHEAD: u64 = 100;
        let now_tick = self.tick_of(now);
        let from = self.next_tick.max(now_tick);
        let mut wake = from + LOOKAHEAD;
        for tick in from..from + LOOKAHEAD {
            if self.slots[(tick as usize) % SLOTS]
                .iter()
                .any(|e| e.tick <= tick)
            {
                wake = tick;
                break;
            }
        }
        let at = self.origin + TICK * (wake as u32);
        Some(at.saturating_duration_since(now))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A timer owner's view: its deadline and the tick it is armed at in the wheel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadline {
    pub at: Option<Instant>,
    pub armed: Option<u64>,
}

impl Deadline {
    /// Sets the deadline; adds a wheel entry only if it is earlier than the armed one.
    pub fn set(&mut self, wheel: &mut TimerWheel, token: usize, id: u64, at: Instant) {
        self.at = Some(at);
        let tick = wheel.tick_of(at);
        if self.armed.is_none_or(|armed| tick < armed) {
            self.armed = Some(wheel.schedule(token, id, at));
        }
    }

    /// No deadline; any armed entry becomes stale when it fires.
    pub fn clear(&mut self) {
        self.at = None;
    }

    /// Handles a fired entry: `true` when the deadline has really passed. Stale entries return `false`;
    /// an entry fired before a later deadline re-arms at it.
    pub fn fire(&mut self, wheel: &mut TimerWheel, entry: &TimerEntry, now: Instant) -> bool {
        if self.armed != Some(entry.tick) {
            return false;
        }
        self.armed = None;
        match self.at {
            None => false,
            Some(at) if at <= now => {
                self.at = None;
                true
            }
            Some(at) => {
                self.armed = Some(wheel.schedule(entry.token, entry.id, at));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_once_their_tick_has_passed_and_never_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.schedule(1, 1, t0 + Duration::from_millis(25));
        w.schedule(2, 2, t0 + Duration::from_millis(5000));
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(20), &mut due);
        assert!(due.is_empty());
        w.expire(t0 + Duration::from_millis(30), &mut due);
        assert_eq!(due.iter().map(|e| e.token).collect::<Vec<_>>(), vec![1]);
        due.clear();
        w.expire(t0 + Duration::from_millis(4990), &mut due);
        assert!(due.is_empty());
        w.expire(t0 + Duration::from_millis(5000), &mut due);
        assert_eq!(due.len(), 1);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_for_their_round() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        // More than SLOTS ticks away: shares a slot with an earlier tick.
        w.schedule(7, 7, t0 + TICK * (SLOTS as u32 + 3));
        let mut due = Vec::new();
        w.expire(t0 + TICK * 5, &mut due);
        assert!(due.is_empty());
        w.expire(t0 + TICK * (SLOTS as u32 + 3), &mut due);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn a_later_deadline_rearms_instead_of_firing() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut d = Deadline::default();
        d.set(&mut w, 3, 9, t0 + Duration::from_millis(100));
        // Activity pushes the deadline later: no new entry.
        d.set(&mut w, 3, 9, t0 + Duration::from_millis(300));
        assert_eq!(w.len(), 1);
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(150), &mut due);
        assert_eq!(due.len(), 1);
        assert!(!d.fire(&mut w, &due[0], t0 + Duration::from_millis(150)));
        assert_eq!(w.len(), 1, "re-armed at the later deadline");
        due.clear();
        w.expire(t0 + Duration::from_millis(310), &mut due);
        assert!(d.fire(&mut w, &due[0], t0 + Duration::from_millis(310)));
    }

    #[test]
    fn an_earlier_deadline_adds_an_entry_and_the_old_one_goes_stale() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut d = Deadline::default();
        d.set(&mut w, 3, 9, t0 + Duration::from_millis(500));
        d.set(&mut w, 3, 9, t0 + Duration::from_millis(100));
        assert_eq!(w.len(), 2);
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(100), &mut due);
        assert!(d.fire(&mut w, &due[0], t0 + Duration::from_millis(100)));
        due.clear();
        w.expire(t0 + Duration::from_millis(600), &mut due);
        assert!(
            !d.fire(&mut w, &due[0], t0 + Duration::from_millis(600)),
            "stale"
        );
    }

    #[test]
    fn next_timeout_points_at_the_earliest_entry() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        assert_eq!(w.next_timeout(t0), None);
        w.schedule(1, 1, t0 + Duration::from_millis(50));
        let d = w.next_timeout(t0).unwrap();
        assert!(
            d >= Duration::from_millis(50) && d <= Duration::from_millis(60),
            "{d:?}"
        );
    }
}
