//! Authentication at the balancer (issue #14): user pools loaded from users files, argon2id password hashes
//! and password rules, the thread pool that checks passwords off the workers, sealed token bundles for API
//! clients, the login form's parsing, CSRF tokens and page, identity to backends (identity headers and
//! ES256 JWTs with their JWKS), and `[auth]` and `[pools]` compiled for the request path (`settings`);
//! logins and sessions follow.

pub mod checker;
pub mod identity;
mod keyring;
pub mod login_form;
pub mod password;
pub mod relay;
pub mod settings;
pub mod token;
pub mod users;
