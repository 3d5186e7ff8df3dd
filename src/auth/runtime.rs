//! What every worker shares for logins: the key rings, the password checker's threads, the relay to
//! upstream auth endpoints, the CSRF key, and the writer the relay's threads update sessions with.

use super::checker::Checker;
use super::keys::AuthKeys;
use super::login_form::CsrfKey;
use super::relay::Relay;
use crate::store::StoreWriter;
use std::sync::{Arc, Mutex};

/// Shared by all workers (`Arc`); built at start when the config has pools.
#[derive(Debug)]
pub struct Auth {
    pub keys: Arc<AuthKeys>,
    pub checker: Checker,
    pub relay: Relay,
    pub csrf: CsrfKey,
    /// For the relay's threads: a refreshed or rejected upstream token updates or deletes its session
    /// before any waiting request is woken (so a request arriving meanwhile never starts a second
    /// refresh). Only relay threads lock it, never a worker.
    pub relay_writer: Arc<Mutex<StoreWriter>>,
    /// The identity-token lifetime the key rings were made for (seconds): a reload may shorten tokens'
    /// lives, not lengthen them past what the published keys cover.
    pub identity_ttl_max: u32,
    /// Client secrets argon2 already accepted (single sign-on): a client's secret hash (its PHC string)
    /// → SHA-256 of the secret that matched it. A confidential application authenticates on every
    /// token, introspection and revocation request; argon2 on each (30–50 ms of a checker thread) would
    /// cap introspection at a few dozen per second. Client secrets are random and long (`tether clients
    /// secret`), so a SHA-256 compared in constant time is as strong for them; argon2 stays the only
    /// way in for a secret not seen yet. Lock-free; keyed by the PHC string, so a changed hash (a new
    /// secret, reloaded) never matches an old entry.
    pub client_secrets: Arc<papaya::HashMap<Box<str>, [u8; 32]>>,
}

impl Auth {
    /// Starts the checker's and the relay's threads. `cookie_key`: the cluster's first cookie key (every
    /// node then verifies every node's CSRF tokens); `None`: a key for this process only.
    pub fn start(
        keys: Arc<AuthKeys>,
        hash_threads: usize,
        hash_queue: usize,
        cookie_key: Option<&[u8]>,
        relay_writer: StoreWriter,
        identity_ttl_max: u32,
    ) -> std::io::Result<Auth> {
        let csrf = match cookie_key {
            // Not the cookie key itself: CsrfKey domain-separates what it MACs, and a hash keeps the two
            // uses apart even if that ever changed.
            Some(k) => {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(b"tether csrf key\0");
                h.update(k);
                CsrfKey::new(&h.finalize())
            }
            None => CsrfKey::random(),
        };
        Ok(Auth {
            keys,
            checker: Checker::start(hash_threads.max(1), hash_queue.max(1))?,
            relay: Relay::start(2, 1024)?,
            csrf,
            relay_writer: Arc::new(Mutex::new(relay_writer)),
            identity_ttl_max,
            client_secrets: Arc::new(papaya::HashMap::new()),
        })
    }
}
