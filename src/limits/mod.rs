//! Abuse protection and metering at the edge (issue #15): cluster-wide counters that add up exactly
//! (`counters`), on which account lockout (`lockout`), rate limits with node-local token buckets or
//! cluster-wide windows (`rate`), the deny list checked at accept (`deny`) and dropped by the kernel
//! (`kernel_filter`) and per-tenant metering (`metering`) are built.

pub mod counters;
pub mod deny;
pub mod kernel_filter;
pub mod lockout;
pub mod metering;
pub mod rate;
