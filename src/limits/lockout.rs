//! Account and address lockout after failed logins (issue #15): the decision — locked or not, until
//! when — from a subject's failure record, and what one more failure changes in that record. Pure
//! functions of numbers and times ([`decide`], [`on_failure`]); [`Ledger`] keeps the record in the
//! cluster-wide [`Counters`], so failures counted on any node lock the subject on every node.
//!
//! The rule (Keycloak's, made to add up across nodes):
//! - Failures are counted in a *series*: a series starts at a failure that comes `reset_after` or more
//!   after the previous one (or at the first), and a subject's count is its current series' count.
//! - From the `failures`-th failure of a series on, the subject is locked until the last failure plus
//!   `wait_increment × ⌊count / failures⌋`, at most `max_wait`: each further failure locks again, for
//!   longer every `failures` failures.
//! - A failure less than `quick_login_check` after the previous one locks at once for `min_quick_wait`.
//! - A failure that locks (either way) is a temporary lockout; with `permanent_after = N`, the N-th of a
//!   series locks the subject for good.
//! - A login refused because the subject is locked is not a failure: it never reaches the password hash,
//!   so it says nothing about the password, and a lock ends when it was announced to end.
//! - A success clears nothing. Counters only grow (that is what makes them add up across nodes without
//!   a race), so a success cannot subtract the failures other nodes are counting at the same moment; the
//!   failures age out with their series instead. A user who succeeds after a few mistakes keeps them
//!   until `reset_after` passes without a failure.
//!
//! Accuracy: a node sees its own failures at once and another node's within the counters' flush
//! interval plus the replication delay (10 ms plus a few ms on a LAN). When two nodes start a new
//! series within that delay, the failures of the earlier series' first milliseconds are not counted.

use crate::limits::counters::{CounterKey, Counters};

/// A lockout policy, times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures in a series before the first lock (≥ 1).
    pub failures: u64,
    /// The wait per `failures` failures.
    pub wait_increment: u64,
    /// The longest temporary wait.
    pub max_wait: u64,
    /// Failures closer together than this lock at once (0: no quick check).
    pub quick_login_check: u64,
    /// The wait of a quick lock.
    pub min_quick_wait: u64,
    /// A failure this long after the previous one starts a new series.
    pub reset_after: u64,
    /// Temporary lockouts in a series before a permanent one (0: never permanent).
    pub permanent_after: u64,
}

/// What is known of a subject's failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Start of the current series (0: none yet).
    pub series: u64,
    /// Failures in the current series.
    pub count: u64,
    /// When the last failure happened (0: never).
    pub last_failure: u64,
    /// A quick lock lasts until then (0: none).
    pub quick_until: u64,
    /// Temporary lockouts in the current series.
    pub lockouts: u64,
    /// Locked for good.
    pub permanent: bool,
}

/// May the subject try a password?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Open,
    /// Locked until this time (milliseconds).
    Until(u64),
    Permanent,
}

impl Decision {
    /// Whole seconds to wait from `now` (rounded up; at least 1 while locked); `None` when open or
    /// locked for good.
    pub fn retry_after(&self, now: u64) -> Option<u64> {
        match *self {
            Decision::Until(t) => Some(t.saturating_sub(now).div_ceil(1000).max(1)),
            _ => None,
        }
    }

    pub fn is_locked(&self) -> bool {
        *self != Decision::Open
    }
}

/// Whether a subject with `record` is locked at `now`.
pub fn decide(policy: &Policy, record: &Record, now: u64) -> Decision {
    if record.permanent {
        return Decision::Permanent;
    }
    if record.last_failure == 0 || now.saturating_sub(record.last_failure) >= policy.reset_after {
        // No failure, or the series is over (waits never outlast `reset_after`: validation).
        return Decision::Open;
    }
    let mut until = record.quick_until;
    let level = record.count / policy.failures.max(1);
    if level > 0 {
        let wait = policy
            .wait_increment
            .saturating_mul(level)
            .min(policy.max_wait);
        until = until.max(record.last_failure.saturating_add(wait));
    }
    if now < until {
        Decision::Until(until)
    } else {
        Decision::Open
    }
}

/// What a failure at `now` changes, given the record just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The series the failure counts in (`now` when it starts a new one).
    pub series: u64,
    /// A quick lock until then.
    pub quick_until: Option<u64>,
    /// The failure locks the subject (a temporary lockout).
    pub locks: bool,
    /// ... and that lockout makes the lock permanent.
    pub permanent: bool,
}

/// The effects of a failure at `now` on a subject whose record was `before`.
pub fn on_failure(policy: &Policy, before: &Record, now: u64) -> Failure {
    let fresh = before.last_failure == 0
        || before.series == 0
        || now.saturating_sub(before.last_failure) >= policy.reset_after;
    let (series, count, lockouts) = if fresh {
        (now, 1, 0)
    } else {
        (before.series, before.count + 1, before.lockouts)
    };
    let quick = !fresh
        && policy.quick_login_check > 0
        && now.saturating_sub(before.last_failure) < policy.quick_login_check;
    let locks = quick || count >= policy.failures.max(1);
    Failure {
        series,
        quick_until: quick.then(|| now.saturating_add(policy.min_quick_wait)),
        locks,
        permanent: locks && policy.permanent_after > 0 && lockouts + 1 >= policy.permanent_after,
    }
}

/// A subject's failure record in the cluster-wide counters. Values that are times are kept as
/// high-water marks ([`Counters::raise`]): the cluster-wide value is the latest any node wrote.
#[derive(Debug, Clone, Copy)]
pub struct Ledger<'c> {
    pub counters: &'c Counters,
}

/// The counters of one subject: `kind` names what is locked (`b"user"`, `b"address"`), `scope` and
/// `name` which one (a tenant and a user name; nothing and an address's bytes).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub kind: &'a [u8],
    pub scope: &'a [u8],
    pub name: &'a [u8],
}

impl Subject<'_> {
    fn key(&self, what: &[u8], series: Option<u64>) -> CounterKey {
        match series {
            Some(s) => CounterKey::of(&[
                b"lockout",
                self.kind,
                what,
                self.scope,
                self.name,
                &s.to_be_bytes(),
            ]),
            None => CounterKey::of(&[b"lockout", self.kind, what, self.scope, self.name]),
        }
    }
}

impl Ledger<'_> {
    /// The subject's record at `now` (milliseconds).
    pub fn read(&self, subject: &Subject<'_>, now: u64) -> Record {
        let secs = secs(now);
        let c = self.counters;
        // An administrator's lift: failures (and a permanent lock) up to then no longer count.
        let lifted = c.highest(&subject.key(b"lifted", None), secs);
        let permanent = c.highest(&subject.key(b"permanent", None), secs) > lifted;
        let last_failure = c.highest(&subject.key(b"last", None), secs);
        if last_failure == 0 || last_failure <= lifted {
            return Record {
                permanent,
                ..Record::default()
            };
        }
        let series = c.highest(&subject.key(b"series", None), secs);
        Record {
            series,
            count: c.total(&subject.key(b"count", Some(series)), secs),
            last_failure,
            quick_until: c.highest(&subject.key(b"quick", None), secs),
            lockouts: c.total(&subject.key(b"lockouts", Some(series)), secs),
            permanent,
        }
    }

    /// Counts a failure at `now` (milliseconds); returns the record after it, as this node sees it.
    pub fn fail(&self, policy: &Policy, subject: &Subject<'_>, now: u64) -> Record {
        let before = self.read(subject, now);
        let f = on_failure(policy, &before, now);
        let c = self.counters;
        // The record lives as long as it can matter: a series ends `reset_after` after its last failure.
        let expires = secs(now.saturating_add(policy.reset_after)).saturating_add(1);
        c.raise(subject.key(b"series", None), f.series, expires);
        c.add(subject.key(b"count", Some(f.series)), 1, expires);
        if let Some(q) = f.quick_until {
            c.raise(subject.key(b"quick", None), q, expires);
        }
        if f.locks {
            c.add(subject.key(b"lockouts", Some(f.series)), 1, expires);
        }
        if f.permanent {
            // Never expires: lifted only by an administrator (a lift at or after this time).
            c.raise(subject.key(b"permanent", None), now, 0);
        }
        c.raise(subject.key(b"last", None), now, expires);
        self.read(subject, now)
    }
}

impl Ledger<'_> {
    /// An administrator lifts the subject's lock at `now` (milliseconds): its failures so far no longer
    /// count, on every node (a high-water mark like the others: counters only grow), and a permanent
    /// lock ends. Kept for good, like a permanent lock.
    pub fn lift(&self, subject: &Subject<'_>, now: u64) {
        self.counters.raise(subject.key(b"lifted", None), now, 0);
    }
}

/// Milliseconds since the Unix epoch (the lockout's clock: a lock's end is a time every node agrees on,
/// as far as their clocks do).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const POLICY: Policy = Policy {
        failures: 5,
        wait_increment: 60 * S,
        max_wait: 15 * 60 * S,
        quick_login_check: S,
        min_quick_wait: 60 * S,
        reset_after: 12 * 3600 * S,
        permanent_after: 0,
    };
    const T0: u64 = 1_700_000_000_000;

    /// Applies failures at `times` to an empty record as one node would.
    fn replay(policy: &Policy, times: &[u64]) -> Record {
        let mut r = Record::default();
        for &t in times {
            let f = on_failure(policy, &r, t);
            if f.series != r.series {
                r.count = 0;
                r.lockouts = 0;
            }
            r.series = f.series;
            r.count += 1;
            r.last_failure = t;
            if let Some(q) = f.quick_until {
                r.quick_until = r.quick_until.max(q);
            }
            r.lockouts += u64::from(f.locks);
            r.permanent |= f.permanent;
        }
        r
    }

    fn every(start: u64, gap: u64, n: u64) -> Vec<u64> {
        (0..n).map(|i| start + i * gap).collect()
    }

    #[test]
    fn open_without_failures_and_below_the_factor() {
        assert_eq!(decide(&POLICY, &Record::default(), T0), Decision::Open);
        let r = replay(&POLICY, &every(T0, 10 * S, 4));
        assert_eq!(r.count, 4);
        assert_eq!(decide(&POLICY, &r, T0 + 40 * S), Decision::Open);
        assert_eq!(r.lockouts, 0);
    }

    #[test]
    fn the_factor_locks_and_the_wait_grows_to_the_maximum() {
        // 5 failures 10 s apart: the 5th (at +40 s) locks for 1 × 60 s.
        let r = replay(&POLICY, &every(T0, 10 * S, 5));
        let last = T0 + 40 * S;
        assert_eq!(decide(&POLICY, &r, last), Decision::Until(last + 60 * S));
        assert_eq!(
            decide(&POLICY, &r, last + 60 * S - 1),
            Decision::Until(last + 60 * S)
        );
        assert_eq!(decide(&POLICY, &r, last + 60 * S), Decision::Open);
        // Every failure past the factor locks again; at 10 the wait is 2 × 60 s.
        let r = replay(&POLICY, &every(T0, 100 * S, 10));
        let last = T0 + 900 * S;
        assert_eq!(r.lockouts, 6, "failures 5 to 10 each locked");
        assert_eq!(decide(&POLICY, &r, last), Decision::Until(last + 120 * S));
        // 100 failures would be 20 minutes; the maximum is 15.
        let r = replay(&POLICY, &every(T0, 2 * S, 100));
        let last = T0 + 198 * S;
        assert_eq!(
            decide(&POLICY, &r, last),
            Decision::Until(last + 15 * 60 * S)
        );
    }

    #[test]
    fn quick_failures_lock_at_once_for_the_minimum_wait() {
        let r = replay(&POLICY, &[T0, T0 + 500]);
        assert_eq!(r.count, 2);
        assert_eq!(r.lockouts, 1);
        assert_eq!(
            decide(&POLICY, &r, T0 + 600),
            Decision::Until(T0 + 500 + 60 * S)
        );
        // Exactly the threshold apart is not quick.
        let r = replay(&POLICY, &[T0, T0 + S]);
        assert_eq!(decide(&POLICY, &r, T0 + S), Decision::Open);
        // No quick check.
        let p = Policy {
            quick_login_check: 0,
            ..POLICY
        };
        assert_eq!(decide(&p, &replay(&p, &[T0, T0]), T0), Decision::Open);
        // The first failure of a series is never quick.
        assert_eq!(
            on_failure(&POLICY, &Record::default(), T0).quick_until,
            None
        );
    }

    #[test]
    fn a_quiet_reset_window_starts_a_new_series() {
        let r = replay(&POLICY, &every(T0, 10 * S, 4));
        let later = T0 + 30 * S + POLICY.reset_after;
        let f = on_failure(&POLICY, &r, later);
        assert_eq!(f.series, later);
        assert!(!f.locks);
        let f = on_failure(&POLICY, &r, later - 1);
        assert_eq!(
            f.series, T0,
            "one millisecond short of the window: same series"
        );
        assert!(f.locks, "and the 5th failure");
        // A lock never outlives its series.
        let r = replay(&POLICY, &every(T0, 2 * S, 100));
        assert_eq!(
            decide(&POLICY, &r, T0 + 198 * S + POLICY.reset_after),
            Decision::Open
        );
    }

    #[test]
    fn permanent_after_n_temporary_lockouts() {
        let p = Policy {
            permanent_after: 3,
            quick_login_check: 0,
            ..POLICY
        };
        let r = replay(&p, &every(T0, 100 * S, 6));
        assert_eq!((r.lockouts, r.permanent), (2, false));
        let r = replay(&p, &every(T0, 100 * S, 7));
        assert_eq!((r.lockouts, r.permanent), (3, true));
        assert_eq!(decide(&p, &r, T0 + 1000 * 3600 * S), Decision::Permanent);
        assert_eq!(Decision::Permanent.retry_after(T0), None);
        // Never, with 0.
        assert!(!replay(&POLICY, &every(T0, 100 * S, 50)).permanent);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(Decision::Until(T0 + 1).retry_after(T0), Some(1));
        assert_eq!(Decision::Until(T0 + 1000).retry_after(T0), Some(1));
        assert_eq!(Decision::Until(T0 + 1001).retry_after(T0), Some(2));
        assert_eq!(Decision::Open.retry_after(T0), None);
    }

    #[test]
    fn every_count_and_gap_decides_like_the_rule() {
        // Exhaustive over small counts and gaps: the decision right after the last failure.
        let p = Policy {
            failures: 3,
            wait_increment: 10 * S,
            max_wait: 35 * S,
            quick_login_check: 2 * S,
            min_quick_wait: 7 * S,
            reset_after: 100 * S,
            permanent_after: 0,
        };
        for n in 1..=12u64 {
            for gap in [S, 2 * S, 5 * S] {
                let times = every(T0, gap, n);
                let r = replay(&p, &times);
                let last = *times.last().unwrap_or(&T0);
                let factor = (n / 3 * 10 * S).min(35 * S);
                let quick = if n >= 2 && gap < 2 * S { 7 * S } else { 0 };
                let wait = factor.max(quick);
                let expect = if wait == 0 {
                    Decision::Open
                } else {
                    Decision::Until(last + wait)
                };
                assert_eq!(decide(&p, &r, last), expect, "n={n} gap={gap}");
            }
        }
    }

    #[test]
    fn the_ledger_counts_in_the_counters() {
        let counters = Counters::new(0, vec![], None);
        let ledger = Ledger {
            counters: &counters,
        };
        let alice = Subject {
            kind: b"user",
            scope: b"acme",
            name: b"alice",
        };
        let bob = Subject {
            kind: b"user",
            scope: b"acme",
            name: b"bob",
        };
        let p = Policy {
            quick_login_check: 0,
            ..POLICY
        };
        for i in 0..4 {
            let r = ledger.fail(&p, &alice, T0 + i * S);
            assert_eq!(r.count, i + 1);
        }
        assert_eq!(
            decide(&p, &ledger.read(&alice, T0 + 4 * S), T0 + 4 * S),
            Decision::Open
        );
        let r = ledger.fail(&p, &alice, T0 + 4 * S);
        assert_eq!((r.count, r.lockouts, r.series), (5, 1, T0));
        assert_eq!(decide(&p, &r, T0 + 5 * S), Decision::Until(T0 + 64 * S));
        assert_eq!(
            ledger.read(&bob, T0 + 5 * S),
            Record::default(),
            "bob is untouched"
        );
        // After a quiet window: a new series.
        let later = T0 + 4 * S + p.reset_after;
        let r = ledger.fail(&p, &alice, later);
        assert_eq!((r.count, r.series, r.lockouts), (1, later, 0));
    }
}
