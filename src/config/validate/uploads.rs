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
        // Tenants are the pools' (`[pools.NAME] tenant`): without pools no upload has a tenant, and a cap
        // that can never apply is a mistake worth naming.
        if u.tenant_quota > 0 && config.pools.is_empty() {
            self.error(
                "uploads.tenant_quota",
                "counts the uploads of logged-in users by tenant: it needs [pools]",
            );
        }
        if u.tenant_quota > 0 && u.tenant_quota < u.user_quota {
            self.error(
                "uploads.tenant_quota",
                format!(
                    "is below uploads.user_quota ({}): one user could never reach the user quota",
                    u.user_quota
                ),
            );
        }
        if u.forward_timeout.as_millis() < 100 {
            self.error("uploads.forward_timeout", "must be at least 100ms");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;

    #[test]
    fn a_tenant_quota_needs_pools_and_room_for_a_user() {
        let msg = only(
            &before("[uploads]\ntenant_quota = 1000"),
            2,
            "uploads.tenant_quota",
        );
        assert!(msg.contains("[pools]"), "{msg}");
        let text = format!(
            "[uploads]\nuser_quota = 5000\ntenant_quota = 1000\n[pools.acme]\nusers = \"users.toml\"\n{BASE}"
        );
        let found = errors(&text);
        assert!(
            found
                .iter()
                .any(|e| (e.0, e.1.as_str()) == (3, "uploads.tenant_quota")),
            "{found:?}"
        );
        assert!(errors(&before("[uploads]\nuser_quota = 1000")).is_empty());
    }
}
