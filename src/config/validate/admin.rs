//! `[admin]`: the admin listener's address and its bearer token.

use super::Validator;
use super::address::parse_socket_addr;
use crate::config::schema::Config;

/// Shortest admin token: it unlocks every operation on the node, so it must not be guessable.
const MIN_TOKEN: usize = 16;

impl Validator {
    pub(super) fn admin(&mut self, config: &Config) {
        let Some(a) = &config.admin else {
            return;
        };
        if let Err(e) = parse_socket_addr(&a.address) {
            self.error("admin.address", e);
        }
        let key = if a.token_file.as_ref().is_some_and(|f| !f.is_empty()) {
            "admin.token_file"
        } else {
            "admin.token"
        };
        match a.read_token(config) {
            Err(e) => self.error(key, e),
            // The length only, never the token: validation errors are printed and logged.
            Ok(t) if t.len() < MIN_TOKEN => self.error(
                key,
                format!(
                    "the token must be at least {MIN_TOKEN} bytes, got {}",
                    t.len()
                ),
            ),
            Ok(t) if t.bytes().any(|b| !b.is_ascii_graphic()) => self.error(
                key,
                "the token must be printable ASCII without spaces (it travels in a header)",
            ),
            Ok(_) => {}
        }
        match a.tls_files() {
            (Some(_), Some(_), _) | (None, None, None) => {}
            (Some(_), None, _) => self.error("admin.key", "admin.cert needs admin.key"),
            (None, Some(_), _) => self.error("admin.cert", "admin.key needs admin.cert"),
            (None, None, Some(_)) => self.error(
                "admin.client_ca",
                "mutual TLS needs the admin listener's own cert and key",
            ),
        }
        let listeners = config.listeners.iter().map(|l| (&l.address, "listeners"));
        let publish = config
            .notifications
            .iter()
            .filter_map(|n| n.publish_address.as_ref())
            .map(|a| (a, "notifications.publish_address"));
        for (other, what) in listeners.chain(publish) {
            if *other == a.address && !a.address.ends_with(":0") {
                self.error(
                    "admin.address",
                    format!(
                        "{} is also {what}: the admin listener needs its own",
                        a.address
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;

    #[test]
    fn admin_needs_a_long_token_and_never_shows_it() {
        let found = errors(&before(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"short-secret\"",
        ));
        let issue = found
            .iter()
            .find(|i| i.1 == "admin.token")
            .expect("a short token is refused");
        assert!(!issue.2.contains("short-secret"), "{issue:?}");
        let found = errors(&before("[admin]\naddress = \"127.0.0.1:0\""));
        assert!(found.iter().any(|i| i.1 == "admin.token"), "{found:?}");
        let found = errors(&before(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef\"",
        ));
        assert!(found.is_empty(), "{found:?}");
        let found = errors(&before(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef\"\nclient_ca = \"ca.crt\"",
        ));
        assert!(found.iter().any(|i| i.1 == "admin.client_ca"), "{found:?}");
        let found = errors(&before(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef\"\ncert = \"a.crt\"",
        ));
        assert!(found.iter().any(|i| i.1 == "admin.key"), "{found:?}");
    }
}
