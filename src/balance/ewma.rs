//! Latency EWMA for power-of-two-choices: peak-sensitive and decayed by time, as in Finagle's and
//! Linkerd's "PeakEWMA". A slower response than the average is taken at once (a backend that slows down
//! is avoided immediately); faster ones pull the average down with a weight that grows with the time
//! since the previous sample, so a backend's history fades over about `DECAY_US` whatever its traffic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Decay time constant: after this long, an old average counts for 1/e.
pub const DECAY_US: f64 = 10_000_000.0;

/// An EWMA shared by all workers: the value as `f64` bits and the time of the last sample. Updates are a
/// load and two stores (relaxed); two workers updating at once may lose one sample, which an average over
/// many samples does not notice.
#[derive(Debug, Default)]
pub struct Ewma {
    bits: AtomicU64,
    at_us: AtomicU64,
}

impl Ewma {
    /// The average in microseconds; 0 before the first sample.
    #[inline]
    pub fn value(&self) -> f64 {
        f64::from_bits(self.bits.load(Relaxed))
    }

    /// Adds a sample taken at `now_us` (a monotonic clock that is never 0).
    pub fn observe(&self, sample_us: u64, now_us: u64) {
        let prev = self.value();
        let at = self.at_us.load(Relaxed);
        let next = next(prev, at, sample_us as f64, now_us, DECAY_US);
        self.bits.store(next.to_bits(), Relaxed);
        self.at_us.store(now_us, Relaxed);
    }
}

/// The average after `sample` at `now_us`, given the average `prev` last updated at `prev_at_us` (0:
/// never).
pub fn next(prev: f64, prev_at_us: u64, sample: f64, now_us: u64, decay_us: f64) -> f64 {
    if prev_at_us == 0 || sample >= prev {
        return sample;
    }
    let dt = now_us.saturating_sub(prev_at_us) as f64;
    let w = (-dt / decay_us).exp();
    prev * w + sample * (1.0 - w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_and_peaks_are_taken_at_once() {
        assert_eq!(next(0.0, 0, 700.0, 5, DECAY_US), 700.0);
        assert_eq!(next(100.0, 1, 5000.0, 2, DECAY_US), 5000.0);
    }

    #[test]
    fn lower_samples_decay_with_time() {
        let tau = 1_000_000.0;
        // No time passed: the old average stays.
        assert_eq!(next(1000.0, 10, 100.0, 10, tau), 1000.0);
        // One time constant: 1/e of the old average remains.
        let v = next(1000.0, 10, 100.0, 10 + tau as u64, tau);
        let want = 1000.0 / std::f64::consts::E + 100.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((v - want).abs() < 1e-9, "{v} vs {want}");
        // Long after, the new sample is all that counts.
        let v = next(1000.0, 10, 100.0, 10 + 50 * tau as u64, tau);
        assert!((v - 100.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn shared_ewma_follows_samples() {
        let e = Ewma::default();
        assert_eq!(e.value(), 0.0);
        e.observe(2000, 1);
        assert_eq!(e.value(), 2000.0);
        // A fast backend after ten decay times: close to the fast latency again.
        e.observe(100, 1 + 10 * DECAY_US as u64);
        assert!(e.value() < 101.0, "{}", e.value());
        println!(
            "ewma after a 2ms peak and 10 decay times of 100us: {:.1}us",
            e.value()
        );
    }
}
