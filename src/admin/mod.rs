//! The admin listener's shared state: the token (as its SHA-256), the figures the API reads (metrics
//! registry, counters, notification hub, session table), the refusal limiter, the masked running config,
//! and the channel that hands the main thread the work a worker must not do (a config reload, a scan
//! of the store's login sessions).
//!
//! The admin listener is one more listener on the workers, like the publish listener: its requests are
//! told apart by their listener and answered by the `admin` request stage ([`api::serve`]) before any
//! other stage runs, so none of a client listener's routes is reachable from it, and its paths are not
//! reachable from a client listener (the stage answers only requests of the admin listener).

pub mod api;
pub mod client;
mod exposition;
pub mod inventory;

use crate::proxy::stages::Ticket;
use parking_lot::Mutex;
use sha2::Digest;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failed calls an address may make in [`REFUSAL_WINDOW`] before every call of it is refused with 429.
const MAX_REFUSALS: u32 = 10;
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Addresses the limiter remembers; past that it forgets them all (a flood of addresses on an admin
/// listener is an attack on memory, and forgetting costs only a fresh window each).
const MAX_TRACKED: usize = 4096;

/// Work for the main thread, asked for by an admin call; the call waits on `ticket` for the outcome.
#[derive(Debug)]
pub(crate) struct Job {
    pub kind: JobKind,
    pub slot: Arc<JobSlot>,
}

/// What the main thread is asked to do.
#[derive(Debug, Clone)]
pub(crate) enum JobKind {
    /// Re-read the config file and apply it, as SIGHUP does; report the errors.
    Reload,
    /// The live login sessions of `user` of `tenant` (a scan of the store: never on a worker).
    Logins { tenant: String, user: String },
    /// The uploads in the store (a scan).
    Uploads,
    /// The certificates the running config names (files read and parsed).
    Certificates,
}

/// Where the main thread leaves a job's outcome, then completes the ticket.
#[derive(Debug)]
pub(crate) struct JobSlot {
    pub ticket: Arc<Ticket>,
    pub outcome: Mutex<Option<Outcome>>,
}

/// A job's outcome.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A reload applied: the new generation.
    Reloaded { generation: u64 },
    /// A reload refused: every error; the running config stays.
    Refused(Vec<crate::config::ConfigError>),
    /// The login sessions found: (session id, created, last seen, expires).
    Logins(Vec<([u8; 16], u32, u32, u32)>),
    /// The uploads found.
    Uploads(Vec<inventory::UploadRow>),
    /// The certificates found.
    Certificates(Vec<inventory::CertificateRow>),
}

impl JobSlot {
    /// Leaves the outcome and wakes the waiting call. Called on the main thread.
    pub(crate) fn finish(&self, outcome: Outcome) {
        *self.outcome.lock() = Some(outcome);
        self.ticket.complete();
    }
}

/// Failed calls of one address in the current window.
#[derive(Debug, Clone, Copy)]
struct Refusals {
    since: Instant,
    count: u32,
}

/// Everything the admin stage reads, shared by every worker.
#[derive(Debug)]
pub struct Admin {
    /// SHA-256 of the token: compared digest to digest in constant time, so not even the token's
    /// length shows in the timing.
    token: [u8; 32],
    /// The first 8 hex digits of the token's SHA-256: what audit lines name it by.
    pub(crate) fingerprint: String,
    pub(crate) registry: Arc<crate::metrics::Registry>,
    pub(crate) counters: Arc<crate::limits::counters::Counters>,
    pub(crate) notify: Option<Arc<crate::notify::Hub>>,
    pub(crate) sticky: Arc<crate::sticky::Stickiness>,
    pub(crate) tls: Arc<crate::tls::TlsStats>,
    jobs: crossbeam_channel::Sender<Job>,
    /// The running config as JSON, secrets masked; replaced by the main thread on each reload.
    config: arc_swap::ArcSwap<String>,
    /// Failed calls per address. A lock is fine here: only refused admin calls take it.
    refusals: Mutex<HashMap<IpAddr, Refusals>>,
}

/// What the runtime builds an [`Admin`] from.
pub(crate) struct AdminParts {
    pub token: String,
    pub registry: Arc<crate::metrics::Registry>,
    pub counters: Arc<crate::limits::counters::Counters>,
    pub notify: Option<Arc<crate::notify::Hub>>,
    pub sticky: Arc<crate::sticky::Stickiness>,
    pub tls: Arc<crate::tls::TlsStats>,
    pub config_text: Option<String>,
}

impl Admin {
    /// The shared state, and the receiving end of the jobs channel (for the main thread).
    pub(crate) fn new(p: AdminParts) -> (Arc<Admin>, crossbeam_channel::Receiver<Job>) {
        let token: [u8; 32] = sha2::Sha256::digest(p.token.as_bytes()).into();
        let (jobs, rx) = crossbeam_channel::unbounded();
        let admin = Admin {
            fingerprint: fingerprint(&token),
            token,
            registry: p.registry,
            counters: p.counters,
            notify: p.notify,
            sticky: p.sticky,
            tls: p.tls,
            jobs,
            config: arc_swap::ArcSwap::from_pointee(masked_config(p.config_text.as_deref())),
            refusals: Mutex::new(HashMap::new()),
        };
        (Arc::new(admin), rx)
    }

    /// Whether `presented` is the token: SHA-256 of both compared in constant time.
    pub(crate) fn token_matches(&self, presented: &[u8]) -> bool {
        let got: [u8; 32] = sha2::Sha256::digest(presented).into();
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.token, &got).is_ok()
    }

    /// Whether `ip` failed too often lately: its calls are refused without looking at the token.
    pub(crate) fn limited(&self, ip: IpAddr, now: Instant) -> bool {
        self.refusals.lock().get(&ip).is_some_and(|r| {
            now.duration_since(r.since) < REFUSAL_WINDOW && r.count >= MAX_REFUSALS
        })
    }

    /// Counts a failed call of `ip`; returns its failures in the current window.
    pub(crate) fn refused(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.refusals.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.clear();
        }
        let r = map.entry(ip).or_insert(Refusals {
            since: now,
            count: 0,
        });
        if now.duration_since(r.since) >= REFUSAL_WINDOW {
            *r = Refusals {
                since: now,
                count: 0,
            };
        }
        r.count += 1;
        r.count
    }

    /// Seconds until `ip`'s window ends.
    pub(crate) fn retry_after(&self, ip: IpAddr, now: Instant) -> u64 {
        self.refusals.lock().get(&ip).map_or(1, |r| {
            REFUSAL_WINDOW
                .saturating_sub(now.duration_since(r.since))
                .as_secs()
                .max(1)
        })
    }

    /// Hands a job to the main thread. `false` when the main thread is gone (stopping).
    pub(crate) fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// The running config as JSON, secrets masked.
    pub(crate) fn config_json(&self) -> Arc<String> {
        self.config.load_full()
    }

    /// Replaces the config view after a reload (main thread).
    pub(crate) fn set_config_text(&self, text: Option<&str>) {
        self.config.store(Arc::new(masked_config(text)));
    }
}

/// The first 8 hex digits of a token's SHA-256 (a name for the token in logs that does not reveal it).
fn fingerprint(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Keys whose values are secrets: shown as `"********"` by `GET /api/config`.
const SECRET_KEYS: [&str; 3] = ["token", "publish_secret", "cookie_keys"];

/// The config file's text as JSON with every secret masked (`null` without a file: an embedded config).
fn masked_config(text: Option<&str>) -> String {
    let Some(value) = text.and_then(|t| toml::from_str::<toml::Value>(t).ok()) else {
        return "null".into();
    };
    fn json(key: Option<&str>, v: &toml::Value) -> serde_json::Value {
        use serde_json::Value as J;
        if key.is_some_and(|k| SECRET_KEYS.contains(&k)) {
            return match v {
                toml::Value::Array(a) => J::Array(a.iter().map(|_| "********".into()).collect()),
                _ => "********".into(),
            };
        }
        match v {
            toml::Value::String(s) => J::String(s.clone()),
            toml::Value::Integer(i) => J::from(*i),
            toml::Value::Float(f) => J::from(*f),
            toml::Value::Boolean(b) => J::Bool(*b),
            toml::Value::Datetime(d) => J::String(d.to_string()),
            toml::Value::Array(a) => J::Array(a.iter().map(|v| json(None, v)).collect()),
            toml::Value::Table(t) => J::Object(
                t.iter()
                    .map(|(k, v)| (k.clone(), json(Some(k), v)))
                    .collect(),
            ),
        }
    }
    json(None, &value).to_string()
}

/// A session id as 32 hex digits.
pub(crate) fn session_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session id from 32 hex digits.
pub(crate) fn parse_session(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in s.chunks(2).enumerate() {
        id[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_secrets_are_masked() {
        let text = "[admin]\ntoken = \"demo-admin-token\"\n[sessions]\ncookie_keys = [\"k1\", \"k2\"]\n\
                    [notifications]\npublish_secret = \"s\"\nmax_count = 5\n";
        let json = masked_config(Some(text));
        assert!(
            !json.contains("demo-admin-token") && !json.contains("\"k1\""),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["admin"]["token"], "********");
        assert_eq!(v["sessions"]["cookie_keys"][1], "********");
        assert_eq!(v["notifications"]["publish_secret"], "********");
        assert_eq!(v["notifications"]["max_count"], 5);
    }

    #[test]
    fn session_ids_round_trip_through_hex() {
        let id = [0xab; 16];
        assert_eq!(parse_session(&session_hex(&id)), Some(id));
        assert_eq!(parse_session("xyz"), None);
        assert_eq!(parse_session(&"g".repeat(32)), None);
    }

    #[test]
    fn fingerprint_is_eight_hex_digits_of_the_digest() {
        let d: [u8; 32] = sha2::Sha256::digest(b"demo-admin-token").into();
        let f = fingerprint(&d);
        assert_eq!(f.len(), 8);
        assert!(!f.contains("demo"));
    }
}
