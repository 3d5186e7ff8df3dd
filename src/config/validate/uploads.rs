//! `[uploads]`: spool bounds, forwarding, and the routes that accept resumable uploads.

use super::Validator;
use crate::config::names::quote_key;
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
        let tenants: Vec<&str> = config
            .pools
            .iter()
            .map(|(name, p)| p.tenant.as_deref().unwrap_or(name))
            .collect();
        for (tenant, &cap) in &u.tenant_quotas {
            let key = format!("uploads.tenant_quotas.{}", quote_key(tenant));
            if !tenants.contains(&tenant.as_str()) {
                self.error(key, format!("no pool has tenant {tenant:?}"));
            } else if cap > 0 && cap < u.user_quota {
                self.error(
                    key,
                    format!(
                        "is below uploads.user_quota ({}): one user could never reach the user quota",
                        u.user_quota
                    ),
                );
            }
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

    #[test]
    fn a_tenant_of_its_own_cap_must_be_a_pools_tenant() {
        let text = format!(
            "[uploads]\nuser_quota = 100\ntenant_quotas = {{ acme = 1000, free = 50, \"no one\" = 0 }}\n\
             [pools.acme]\nusers = \"users.toml\"\n[pools.f]\ntenant = \"free\"\nusers = \"users.toml\"\n{BASE}"
        );
        // (The pools' users files do not exist here: their errors are another test's.)
        let found: Vec<(usize, String)> = errors(&text)
            .into_iter()
            .filter(|e| e.1.starts_with("uploads."))
            .map(|e| (e.0, e.1))
            .collect();
        assert_eq!(
            found,
            [
                (3, "uploads.tenant_quotas.free".to_string()),
                (3, "uploads.tenant_quotas.\"no one\"".to_string()),
            ]
        );
    }
}
