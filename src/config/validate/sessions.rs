//! `[sessions]`: the session table's size and lifetime, cookie keys that decode, and a usable cookie path.

use super::Validator;
use crate::config::schema::Config;
use std::time::Duration;

impl Validator {
    /// `[sessions]`.
    pub(super) fn sessions(&mut self, config: &Config) {
        let s = &config.sessions;
        if s.max_entries == 0 {
            self.error("sessions.max_entries", "must be at least 1");
        }
        if s.ttl < Duration::from_secs(1) {
            self.error("sessions.ttl", "must be at least 1s (e.g. \"30m\")");
        }
        for (i, k) in s.cookie_keys.iter().enumerate() {
            if let Err(e) = crate::sticky::cookie::CookieSealer::decode_key(k) {
                self.error(
                    format!("sessions.cookie_keys[{i}]"),
                    format!("{e}; make one with: head -c 32 /dev/urandom | base64"),
                );
            }
        }
        if !s.cookie_path.starts_with('/')
            || s.cookie_path
                .bytes()
                .any(|b| b == b';' || b.is_ascii_control())
        {
            self.error(
                "sessions.cookie_path",
                "must start with / and contain no ; or control characters",
            );
        }
    }
}
