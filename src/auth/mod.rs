//! Authentication at the balancer (issue #14): user pools loaded from users files, argon2id password hashes
//! and password rules, the thread pool that checks passwords off the workers, sealed token bundles for API
//! clients, the login form's parsing, CSRF tokens and page, and identity to backends (identity headers and
//! ES256 JWTs with their JWKS); logins and sessions follow.

pub mod checker;
pub mod identity;
mod keyring;
pub mod login_form;
pub mod password;
pub mod relay;
pub mod token;
pub mod users;
