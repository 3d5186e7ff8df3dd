//! Abuse protection and metering at the edge (issue #15): cluster-wide counters that add up exactly
//! (`counters`), on which lockout, rate limits, the deny list and per-tenant metering are built; rate
//! limits with node-local token buckets or cluster-wide windows (`rate`); the deny list checked at
//! accept (`deny`).

pub mod counters;
pub mod deny;
pub mod rate;
