//! Authentication at the balancer (issue #14): user pools loaded from users files, argon2id password hashes
//! and password rules, the thread pool that checks passwords off the workers, and sealed token bundles for
//! API clients; logins and sessions follow.

pub mod checker;
pub mod password;
pub mod token;
pub mod users;
