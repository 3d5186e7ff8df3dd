//! Authentication: user pools loaded from users files, argon2id password hashes and password rules.

pub mod password;
pub mod users;
