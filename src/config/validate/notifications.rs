//! `[notifications]`: the publish listener's address and secret, queue bounds, feed URLs, and the routes
//! that piggyback notifications.

use super::Validator;
use super::address::parse_socket_addr;
use crate::config::schema::{Config, RouteAuthMode};

/// Shortest publish secret: a bearer secret an upstream shares with tether must not be guessable.
const MIN_SECRET: usize = 16;

impl Validator {
    pub(super) fn notifications(&mut self, config: &Config) {
        let Some(n) = &config.notifications else {
            for (i, r) in config.routes.iter().enumerate() {
                if r.notifications {
                    self.error(
                        format!("routes[{i}].notifications"),
                        "needs a [notifications] section",
                    );
                }
            }
            return;
        };
        if config.pools.is_empty() {
            self.error(
                "notifications",
                "notifications are queued per login session: configure [pools] too",
            );
        }
        match (&n.publish_address, &n.publish_secret) {
            (Some(a), secret) => {
                if let Err(e) = parse_socket_addr(a) {
                    self.error("notifications.publish_address", e);
                }
                match secret {
                    None => self.error(
                        "notifications.publish_secret",
                        "the publish listener needs a bearer secret",
                    ),
                    Some(s) if s.len() < MIN_SECRET => self.error(
                        "notifications.publish_secret",
                        format!("must be at least {MIN_SECRET} bytes, got {}", s.len()),
                    ),
                    Some(s) if s.bytes().any(|b| !b.is_ascii_graphic()) => self.error(
                        "notifications.publish_secret",
                        "must be printable ASCII without spaces (it travels in a header)",
                    ),
                    Some(_) => {}
                }
            }
            (None, Some(_)) => self.error(
                "notifications.publish_secret",
                "set without notifications.publish_address",
            ),
            (None, None) => {}
        }
        self.range("notifications.max_count", n.max_count, 1, 100_000, "");
        self.range(
            "notifications.max_bytes",
            n.max_bytes,
            1024,
            64 << 20,
            " bytes",
        );
        self.range(
            "notifications.piggyback_bytes",
            n.piggyback_bytes,
            0,
            32 * 1024,
            " bytes",
        );
        if n.ttl.as_secs() < 1 || n.ttl.as_secs() > 30 * 24 * 3600 {
            self.error("notifications.ttl", "must be between 1s and 30 days");
        }
        if n.keepalive.as_millis() < 100 {
            self.error("notifications.keepalive", "must be at least 100ms");
        }
        if n.max_wait.as_secs() > 3600 {
            self.error("notifications.max_wait", "must be at most 1h");
        }
        for (i, f) in n.feeds.iter().enumerate() {
            if f.name.is_empty() {
                self.error(
                    format!("notifications.feeds[{i}].name"),
                    "must not be empty",
                );
            }
            if let Err(e) = crate::notify::feed::FeedUrl::parse(&f.url) {
                self.error(format!("notifications.feeds[{i}].url"), e.to_string());
            }
            if f.max_backoff.as_millis() < 100 {
                self.error(
                    format!("notifications.feeds[{i}].max_backoff"),
                    "must be at least 100ms",
                );
            }
        }
        for (i, r) in config.routes.iter().enumerate() {
            if r.notifications && r.auth != RouteAuthMode::Login {
                self.error(
                    format!("routes[{i}].notifications"),
                    "needs auth = \"login\" (notifications belong to a login session)",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;

    const NODE: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[clusters.app]\nbackends = [{ address = \"127.0.0.1:9001\" }]\n[pools.demo]\nusers = \"users.toml\"\n";

    #[test]
    fn publish_needs_a_long_secret_and_feeds_a_url() {
        let text = format!(
            "{NODE}[notifications]\npublish_address = \"127.0.0.1:0\"\npublish_secret = \"short\"\n\
             [[notifications.feeds]]\nname = \"mail\"\nurl = \"https://x/\"\n"
        );
        let issues = errors(&text);
        assert!(
            issues.iter().any(|i| i.1 == "notifications.publish_secret"),
            "{issues:?}"
        );
        assert!(
            issues.iter().any(|i| i.1 == "notifications.feeds[0].url"),
            "{issues:?}"
        );
    }

    #[test]
    fn a_piggybacking_route_needs_logins() {
        let text =
            format!("{NODE}[notifications]\n[[routes]]\ncluster = \"app\"\nnotifications = true\n");
        let issues = errors(&text);
        assert!(
            issues.iter().any(|i| i.1 == "routes[0].notifications"),
            "{issues:?}"
        );
    }
}
