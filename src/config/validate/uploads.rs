//! `[uploads]`: spool bounds, forwarding, and the routes that accept resumable uploads.

use super::Validator;
use crate::config::schema::Config;

impl Validator {
    pub(super) fn uploads(&mut self, config: &Config) {
        let Some(u) = &config.uploads else {
            for (i, r) in config.routes.iter().enumerate() {
                if r.uploads {
                    self.error(format!("routes[{i}].uploads"), "needs an [uploads] section");
                }
            }
            return;
        };
        if u.dir.trim().is_empty() {
            self.error("uploads.dir", "must name a directory");
        }
        self.range(
            "uploads.max_size",
            usize::try_from(u.max_size).unwrap_or(usize::MAX),
            1,
            1 << 40,
            "",
        );
        // A chunk is held in memory while it is checked and written, and replicated as records.
        self.range("uploads.max_chunk", u.max_chunk, 1024, 64 << 20, "");
        self.range("uploads.threads", u.threads, 1, 64, "");
        self.range(
            "uploads.forward_attempts",
            u.forward_attempts as usize,
            1,
            10,
            "",
        );
        if u.expiry.as_secs() < 1 {
            self.error("uploads.expiry", "must be at least 1s");
        }
        if u.forward_timeout.as_millis() < 100 {
            self.error("uploads.forward_timeout", "must be at least 100ms");
        }
    }
}
