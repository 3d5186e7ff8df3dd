//! Authentication at the balancer (issue #14): sealed token bundles for API clients, so far; logins, users
//! and sessions follow.

pub mod token;
