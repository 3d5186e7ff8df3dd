//! Authentication: user pools loaded from users files, argon2id password hashes and password rules, and
//! the thread pool that checks passwords off the workers.

pub mod checker;
pub mod password;
pub mod users;
