//! Open-loop rate scheduler.
//!
//! Request `k` of a thread is *intended* to be sent at
//! `start + phase + k / rate`, whatever happened to earlier requests. Latency
//! is measured from that intended time, so a stalled server shows up as
//! latency instead of silently lowering the send rate (no coordinated
//! omission). Times are nanoseconds relative to the run's start instant and
//! are computed from `k` directly, so rounding never accumulates.

#[derive(Debug, Clone)]
pub struct RateScheduler {
    start_ns: u64,
    interval_ns: f64,
    k: u64,
}

impl RateScheduler {
    /// `rate`: requests per second for this scheduler (> 0).
    /// `start_ns`: intended time of request 0.
    pub fn new(start_ns: u64, rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite());
        RateScheduler {
            start_ns,
            interval_ns: 1e9 / rate,
            k: 0,
        }
    }

    /// Scheduler for thread `idx` of `threads` sharing `total_rate` requests/s:
    /// each gets `total_rate / threads`, phase-shifted by `idx / total_rate`
    /// so the threads interleave instead of firing together.
    pub fn for_thread(idx: usize, threads: usize, total_rate: f64) -> Self {
        let phase = (idx as f64 * 1e9 / total_rate) as u64;
        RateScheduler::new(phase, total_rate / threads as f64)
    }

    /// Intended send time of the next request.
    #[inline]
    pub fn next_time(&self) -> u64 {
        self.start_ns + (self.k as f64 * self.interval_ns) as u64
    }

    /// If the next request is due at `now_ns`, consume it and return its
    /// intended send time.
    #[inline]
    pub fn take_due(&mut self, now_ns: u64) -> Option<u64> {
        let t = self.next_time();
        if t <= now_ns {
            self.k += 1;
            Some(t)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times() {
        let mut s = RateScheduler::new(0, 1000.0); // every 1 ms
        assert_eq!(s.next_time(), 0);
        assert_eq!(s.take_due(0), Some(0));
        assert_eq!(s.take_due(999_999), None);
        assert_eq!(s.take_due(1_000_000), Some(1_000_000));
        // A stall: at 5.5 ms, requests 2..=5 are all due, each with its own
        // intended time (not "now").
        let got: Vec<u64> = std::iter::from_fn(|| s.take_due(5_500_000)).collect();
        assert_eq!(got, vec![2_000_000, 3_000_000, 4_000_000, 5_000_000]);
        assert_eq!(s.next_time(), 6_000_000);
    }

    #[test]
    fn no_drift_with_fractional_interval() {
        // 3 requests/s: interval 333_333_333.33 ns; request 3 lands on 1 s exactly.
        let mut s = RateScheduler::new(10, 3.0);
        let times: Vec<u64> = std::iter::from_fn(|| s.take_due(10 + 3_000_000_000)).collect();
        assert_eq!(times.len(), 10);
        assert_eq!(times[3], 10 + 1_000_000_000);
        assert_eq!(times[9], 10 + 3_000_000_000);
    }

    #[test]
    fn threads_interleave() {
        // 4 threads sharing 4000/s: each 1000/s, phases 0, 250, 500, 750 us.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|i| {
                let mut s = RateScheduler::for_thread(i, 4, 4000.0);
                std::iter::from_fn(move || s.take_due(1_999_999)).collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        let expect: Vec<u64> = (0..8).map(|k| k * 250_000).collect();
        assert_eq!(all, expect);
    }
}
