//! Authentication: user pools loaded from users files, argon2id password hashes and password rules, the
//! thread pool that checks passwords off the workers, and the login form's parsing, CSRF tokens and page.

pub mod checker;
pub mod login_form;
pub mod password;
pub mod users;
