//! Abuse protection and metering at the edge (issue #15): cluster-wide counters that add up exactly
//! (`counters`), on which account lockout (`lockout`), rate limits, the deny list and per-tenant
//! metering (`metering`) are built.

pub mod counters;
pub mod lockout;
pub mod metering;
