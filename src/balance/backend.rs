//! A backend's live state, shared by every worker and the health prober: whether it may take requests,
//! how loaded it is (requests in flight, latency EWMA), and the passive-health counters.
//!
//! One `BackendState` per address for the whole process, kept across reloads. Workers touch it only with
//! relaxed atomics: every field is a hint for balancing or a counter, and a stale read costs at most one
//! request going to a backend that was marked down a moment ago (the retry logic covers that).
//!
//! Health is two bits, so the prober and the workers never overwrite each other's verdict:
//!
//! ```text
//!            fall failed checks (prober)                 consecutive failed requests (workers)
//!   UP ─────────────────────────────────► DOWN ◄──────────────────────────────────────────── UP
//!    ▲  rise passed checks, after the cool-down if it was the requests           cool-down over, no
//!    └──────────────────────────────────── DOWN ───────────────────────────────► UP (half-open: one
//!                                                   active checks configured          more failure and
//!                                                                                      it is down again)
//! ```
//!
//! Any transition to UP stamps `up_since`, from which slow start ramps the backend's weight.

use super::ewma::Ewma;
use crate::config::PassiveHealthConfig;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Dense, stable number of a backend address for the life of the process (survives reloads), used to
/// index per-worker tables such as the upstream connection pool.
pub type BackendId = usize;

/// The prober's checks failed `fall` times in a row.
const ACTIVE_DOWN: u8 = 1;
/// `consecutive_failures` requests failed in a row; down at least until `down_until_ms`.
const PASSIVE_DOWN: u8 = 2;

/// Milliseconds since the process's first call (never 0, so 0 can mean "never").
pub fn clock_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Microseconds since the process's first call (never 0).
pub fn clock_us() -> u64 {
    epoch().elapsed().as_micros() as u64 + 1
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A backend's shared, live state. See the module docs.
#[derive(Debug)]
pub struct BackendState {
    pub id: BackendId,
    pub address: SocketAddr,
    /// `ACTIVE_DOWN | PASSIVE_DOWN` bits; 0 is up.
    health: AtomicU8,
    /// Requests answered (any status), for observability.
    pub requests: AtomicU64,
    /// The same by status class (`metrics::status_class`: index 1–5 for 1xx–5xx), counted beside
    /// `requests` (one more relaxed increment per response).
    pub responses: [AtomicU64; 6],
    /// Attempts assigned and not yet finished, over all workers (and the QoS aging step): the part of a
    /// backend the QoS queue works with.
    pub slots: crate::qos::Slots,
    /// Latency of responses (assignment to response head), decayed over time.
    latency: Ewma,
    /// Failed requests in a row (passive health).
    failures: AtomicU32,
    /// `clock_ms()` until which a passive mark-down holds.
    down_until_ms: AtomicU64,
    /// `clock_ms()` of the last transition to up; 0 when it has been up since it was created.
    up_since_ms: AtomicU64,
    // Passive-health settings, from the cluster(s) listing this address (validation makes them agree).
    failure_threshold: AtomicU32,
    cool_down_ms: AtomicU64,
    count_5xx: AtomicBool,
    /// Requests waiting for a slot when the cluster limits requests in flight (QoS).
    pub queue: crate::qos::BackendQueue,
    /// The operator's say ([`AdminState`] as a byte), apart from the health bits so that a health
    /// transition never overwrites it; set through the admin API, kept across reloads.
    admin: AtomicU8,
    /// The operator's weight for the address (the admin API), 0: each cluster's configured weight.
    weight: AtomicU32,
}

/// What an operator said about a backend (the admin API): enabled, or taking no new requests while
/// those in flight finish — draining, or disabled (the same for balancing; disabled says "out for
/// maintenance", draining "on its way out").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Enabled,
    Draining,
    Disabled,
}

/// How one attempt on a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A complete response head arrived (any status); `latency_us` from assignment to that head.
    Response { status: u16, latency_us: u64 },
    /// The connection could not be established (refused, unreachable, timed out).
    ConnectFailed,
    /// The backend reset or closed the connection, timed out, or sent an invalid response.
    Failed,
    /// Ended for reasons that are not the backend's (the client left, a bad request, shutdown).
    Abandoned,
}

impl BackendState {
    /// A backend that is up, idle, with passive health at its defaults.
    pub fn new(id: BackendId, address: SocketAddr) -> Self {
        let passive = PassiveHealthConfig::default();
        BackendState {
            id,
            address,
            health: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            slots: crate::qos::Slots::default(),
            latency: Ewma::default(),
            failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            failure_threshold: AtomicU32::new(passive.consecutive_failures),
            cool_down_ms: AtomicU64::new(passive.cool_down.as_millis() as u64),
            count_5xx: AtomicBool::new(passive.count_5xx),
            queue: crate::qos::BackendQueue::default(),
            admin: AtomicU8::new(0),
            weight: AtomicU32::new(0),
        }
    }

    /// Gives a slot back without an attempt having run on it.
    pub fn release_slot(&self) {
        self.slots.release();
    }

    pub fn set_aging(&self, aging: std::time::Duration) {
        self.slots.set_aging(aging);
    }

    /// Whether the backend may receive new requests (one relaxed load: this is on every pick).
    #[inline]
    pub fn is_up(&self) -> bool {
        self.health.load(Relaxed) == 0
    }

    /// Whether the operator lets the backend take new requests (one relaxed load, on every pick).
    #[inline]
    pub fn admitted(&self) -> bool {
        self.admin.load(Relaxed) == 0
    }

    /// The operator's state of the backend.
    pub fn admin_state(&self) -> AdminState {
        match self.admin.load(Relaxed) {
            0 => AdminState::Enabled,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    /// Sets the operator's state; picks on every worker see it on their next request.
    pub fn set_admin_state(&self, state: AdminState) {
        let v = match state {
            AdminState::Enabled => 0,
            AdminState::Draining => 1,
            AdminState::Disabled => 2,
        };
        self.admin.store(v, Relaxed);
    }

    /// The operator's weight, if one is set (one relaxed load: weighted picks read it).
    #[inline]
    pub fn weight_override(&self) -> Option<u32> {
        match self.weight.load(Relaxed) {
            0 => None,
            w => Some(w),
        }
    }

    /// Sets the operator's weight (`None`: back to the configured weights).
    pub fn set_weight(&self, weight: Option<u32>) {
        self.weight.store(weight.unwrap_or(0), Relaxed);
    }

    /// Attempts in flight on this backend, over all workers.
    #[inline]
    pub fn inflight(&self) -> u32 {
        self.slots.inflight()
    }

    /// The latency EWMA in microseconds (0 before the first response).
    #[inline]
    pub fn latency_us(&self) -> f64 {
        self.latency.value()
    }

    /// `clock_ms()` of the last transition to up (0: up since it was created).
    #[inline]
    pub fn up_since_ms(&self) -> u64 {
        self.up_since_ms.load(Relaxed)
    }

    /// A request was assigned to this backend (one attempt; a retry is a new attempt).
    #[inline]
    pub fn attempt_started(&self) {
        self.slots.start();
    }

    /// The attempt ended; feeds load and health bookkeeping. Called exactly once per `attempt_started`.
    pub fn attempt_finished(&self, outcome: AttemptOutcome) {
        let before = self.slots.finish();
        debug_assert!(before > 0, "attempt finished twice");
        match outcome {
            AttemptOutcome::Response { status, latency_us } => {
                self.requests.fetch_add(1, Relaxed);
                if !cfg!(feature = "skip-metrics") {
                    self.responses[crate::metrics::status_class(status)].fetch_add(1, Relaxed);
                }
                self.latency.observe(latency_us, clock_us());
                if status >= 500 && self.count_5xx.load(Relaxed) {
                    self.request_failed("5xx response");
                } else {
                    self.request_succeeded();
                }
            }
            AttemptOutcome::ConnectFailed => self.request_failed("connect failed"),
            AttemptOutcome::Failed => self.request_failed("reset, timeout or invalid response"),
            AttemptOutcome::Abandoned => {}
        }
    }

    fn request_succeeded(&self) {
        // Read first: a healthy backend's counter is already 0, and a store would dirty the cache line.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    fn request_failed(&self, reason: &str) {
        let threshold = self.failure_threshold.load(Relaxed);
        if threshold == 0 {
            return;
        }
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n < threshold {
            return;
        }
        let cool_down = self.cool_down_ms.load(Relaxed);
        // Deadline before the bit: whoever sees the bit also sees a deadline in the future.
        self.down_until_ms.store(clock_ms() + cool_down, Relaxed);
        let before = self.health.fetch_or(PASSIVE_DOWN, Relaxed);
        if before & PASSIVE_DOWN == 0 {
            log::warn!(
                "backend {} is DOWN: {n} consecutive failed requests (last: {reason}); cool-down {}",
                self.address,
                humantime::format_duration(Duration::from_millis(cool_down))
            );
        }
    }

    /// Applies a cluster's passive-health settings (on every snapshot build).
    pub fn configure_passive(&self, config: &PassiveHealthConfig) {
        self.failure_threshold
            .store(config.consecutive_failures, Relaxed);
        self.cool_down_ms
            .store(config.cool_down.as_millis() as u64, Relaxed);
        self.count_5xx.store(config.count_5xx, Relaxed);
    }

    // ----- the prober's side ---------------------------------------------------------------------------

    /// Marked down by failed requests (whatever the checks say).
    pub fn passive_down(&self) -> bool {
        self.health.load(Relaxed) & PASSIVE_DOWN != 0
    }

    /// Marked down by failed checks.
    pub fn active_down(&self) -> bool {
        self.health.load(Relaxed) & ACTIVE_DOWN != 0
    }

    /// The passive mark-down's cool-down has passed (`now` from [`clock_ms`]).
    pub fn cool_down_over(&self, now_ms: u64) -> bool {
        now_ms >= self.down_until_ms.load(Relaxed)
    }

    /// Checks failed `fall` times: down. `true` if the backend was up until now.
    pub fn mark_active_down(&self) -> bool {
        self.health.fetch_or(ACTIVE_DOWN, Relaxed) == 0
    }

    /// Active checks no longer cover this backend (a reload removed them): their verdict is dropped. `true`
    /// if that brings it up.
    pub fn clear_active_down(&self) -> bool {
        let before = self.health.fetch_and(!ACTIVE_DOWN, Relaxed);
        let up = before == ACTIVE_DOWN;
        if up {
            self.up_since_ms.store(clock_ms(), Relaxed);
        }
        up
    }

    /// Checks passed `rise` times (and any cool-down is over): up. `true` if it was down until now.
    pub fn mark_up(&self) -> bool {
        let was_down = self.health.swap(0, Relaxed) != 0;
        if was_down {
            self.failures.store(0, Relaxed);
            self.up_since_ms.store(clock_ms(), Relaxed);
        }
        was_down
    }

    /// No active checks and the cool-down is over: up again, half-open (the next failed request takes it
    /// down again). `true` if it changed.
    pub fn revive_half_open(&self) -> bool {
        let revived = self
            .health
            .compare_exchange(PASSIVE_DOWN, 0, Relaxed, Relaxed)
            .is_ok();
        if revived {
            let threshold = self.failure_threshold.load(Relaxed);
            self.failures.store(threshold.saturating_sub(1), Relaxed);
            self.up_since_ms.store(clock_ms(), Relaxed);
        }
        revived
    }

    /// Test hook: force the health bits (`true` = up).
    #[cfg(test)]
    pub(crate) fn set_up_for_test(&self, up: bool) {
        self.health.store(if up { 0 } else { ACTIVE_DOWN }, Relaxed);
    }

    /// Test hook: a latency sample at a given clock.
    #[cfg(test)]
    pub(crate) fn observe_latency_at(&self, latency_us: u64, now_us: u64) {
        self.latency.observe(latency_us, now_us);
    }
}

/// A backend's share of traffic as weight × permille of slow start (so 1000 × weight at full strength).
/// Within `slow_start_ms` of `up_since_ms` the share ramps linearly from a tenth to all of the weight.
#[inline]
pub fn ramped_weight(weight: u32, up_since_ms: u64, slow_start_ms: u64, now_ms: u64) -> u64 {
    let full = weight as u64 * 1000;
    if slow_start_ms == 0 || up_since_ms == 0 {
        return full;
    }
    let elapsed = now_ms.saturating_sub(up_since_ms);
    if elapsed >= slow_start_ms {
        return full;
    }
    let permille = (100 + 900 * elapsed / slow_start_ms).min(1000);
    weight as u64 * permille
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BackendState {
        let s = BackendState::new(0, "127.0.0.1:1".parse().unwrap());
        s.configure_passive(&PassiveHealthConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_secs(3600),
            count_5xx: true,
        });
        s
    }

    fn attempt(s: &BackendState, outcome: AttemptOutcome) {
        s.attempt_started();
        s.attempt_finished(outcome);
    }

    const OK: AttemptOutcome = AttemptOutcome::Response {
        status: 200,
        latency_us: 100,
    };
    const E500: AttemptOutcome = AttemptOutcome::Response {
        status: 503,
        latency_us: 100,
    };

    #[test]
    fn inflight_counts_started_minus_finished() {
        let s = state();
        s.attempt_started();
        s.attempt_started();
        assert_eq!(s.inflight(), 2);
        s.attempt_finished(AttemptOutcome::Abandoned);
        assert_eq!(s.inflight(), 1);
        s.attempt_finished(OK);
        assert_eq!(s.inflight(), 0);
        assert_eq!(s.requests.load(Relaxed), 1);
    }

    #[test]
    fn passive_health_needs_consecutive_failures() {
        let s = state();
        attempt(&s, AttemptOutcome::ConnectFailed);
        attempt(&s, AttemptOutcome::Failed);
        attempt(&s, OK); // resets the streak
        attempt(&s, AttemptOutcome::ConnectFailed);
        attempt(&s, AttemptOutcome::Abandoned); // not the backend's fault: neither resets nor counts
        attempt(&s, E500);
        assert!(s.is_up());
        attempt(&s, AttemptOutcome::Failed);
        assert!(!s.is_up());
        assert!(s.passive_down() && !s.active_down());
        assert!(!s.cool_down_over(clock_ms()));
    }

    #[test]
    fn five_hundreds_count_only_when_configured() {
        let s = state();
        s.configure_passive(&PassiveHealthConfig {
            consecutive_failures: 2,
            cool_down: Duration::from_secs(1),
            count_5xx: false,
        });
        for _ in 0..10 {
            attempt(&s, E500);
        }
        assert!(s.is_up());
        let off = state();
        off.configure_passive(&PassiveHealthConfig {
            consecutive_failures: 0,
            ..PassiveHealthConfig::default()
        });
        for _ in 0..10 {
            attempt(&off, AttemptOutcome::ConnectFailed);
        }
        assert!(off.is_up(), "0 turns passive health off");
    }

    #[test]
    fn half_open_after_cool_down_goes_down_on_the_next_failure() {
        let s = state();
        s.configure_passive(&PassiveHealthConfig {
            consecutive_failures: 3,
            cool_down: Duration::ZERO,
            count_5xx: true,
        });
        for _ in 0..3 {
            attempt(&s, AttemptOutcome::ConnectFailed);
        }
        assert!(!s.is_up());
        assert!(s.cool_down_over(clock_ms()));
        assert!(s.revive_half_open());
        assert!(s.is_up());
        assert!(s.up_since_ms() > 0);
        assert!(!s.revive_half_open(), "already up");
        attempt(&s, AttemptOutcome::ConnectFailed);
        assert!(!s.is_up(), "one failure in half-open state");
        // A success in half-open state closes it: the full streak is needed again.
        assert!(s.revive_half_open());
        attempt(&s, OK);
        attempt(&s, AttemptOutcome::ConnectFailed);
        attempt(&s, AttemptOutcome::ConnectFailed);
        assert!(s.is_up());
    }

    #[test]
    fn active_and_passive_bits_are_independent() {
        let s = state();
        assert!(s.mark_active_down());
        assert!(!s.mark_active_down(), "already down");
        for _ in 0..3 {
            attempt(&s, AttemptOutcome::ConnectFailed);
        }
        assert!(s.active_down() && s.passive_down());
        assert!(!s.revive_half_open(), "checks still say down");
        assert!(s.mark_up());
        assert!(s.is_up() && !s.passive_down() && !s.active_down());
        assert!(!s.mark_up());
        // Checks removed by a reload: their verdict goes, a passive one stays.
        s.mark_active_down();
        assert!(s.clear_active_down() && s.is_up());
        s.mark_active_down();
        for _ in 0..3 {
            attempt(&s, AttemptOutcome::ConnectFailed);
        }
        assert!(!s.clear_active_down());
        assert!(s.passive_down() && !s.active_down());
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_full_weight() {
        // Not configured, or up since creation: full weight.
        assert_eq!(ramped_weight(4, 1000, 0, 1000), 4000);
        assert_eq!(ramped_weight(4, 0, 30_000, 5000), 4000);
        let up = 10_000;
        let ramp: Vec<u64> = [0, 7_500, 15_000, 22_500, 30_000, 60_000]
            .iter()
            .map(|t| ramped_weight(2, up, 30_000, up + t))
            .collect();
        println!("slow start over 30s, weight 2 (x1000): {ramp:?}");
        assert_eq!(ramp, [200, 650, 1100, 1550, 2000, 2000]);
        assert!(ramp.is_sorted());
    }
}
