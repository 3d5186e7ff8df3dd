//! Authentication at the balancer (issue #14): user pools loaded from users files, argon2id password hashes
//! and password rules, the thread pool that checks passwords off the workers, the relay to upstream auth
//! endpoints, sealed token bundles and their replicated key rings, login sessions in the replicated store,
//! the login endpoints and the auth stage's checks, CSRF tokens and the login page, identity to backends
//! (identity headers and ES256 JWTs with their JWKS), and `[auth]` and `[pools]` compiled for the request
//! path (`settings`); and single sign-on for the applications behind tether (OAuth 2.0 / OpenID Connect:
//! `oauth` reads its requests, `oidc` answers them).

pub mod checker;
pub(crate) mod endpoints;
pub mod gate;
pub mod identity;
mod keyring;
pub mod keys;
pub mod login_form;
pub mod oauth;
pub(crate) mod oidc;
pub mod password;
pub mod relay;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod token;
pub mod users;
