//! `[tls]`, `[listeners.tls]` and `[clusters.NAME.tls]`: ranges, and certificate, key and CA files that load
//! and belong together.

use super::Validator;
use crate::config::names::quote_key;
use crate::config::schema::Config;
use std::time::Duration;

impl Validator {
    /// TLS on listeners and toward clusters: files are read now, so `tether check` catches a missing or
    /// mismatched certificate before a start or reload does.
    pub(super) fn tls(&mut self, config: &Config) {
        use crate::tls::certs::{load_certified_key, load_chain, load_key};
        if config.tls.ticket_rotation < Duration::from_secs(1) {
            self.error(
                "tls.ticket_rotation",
                "must be at least 1s (e.g. \"1h\"); tickets stay valid for two rotations",
            );
        }
        for (i, l) in config.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            let Some(tls) = &l.tls else {
                continue;
            };
            if l.redirect_https {
                self.error(
                    format!("{key}.redirect_https"),
                    "only for plain listeners; a TLS listener redirects plain HTTP with tls.plain_http = \"redirect\"",
                );
            }
            if tls.certificates.is_empty() {
                self.error(
                    format!("{key}.tls.certificates"),
                    "at least one certificate is required, e.g. [{ cert = \"certs/site.crt\", key = \"certs/site.key\" }]",
                );
            }
            for (j, c) in tls.certificates.iter().enumerate() {
                let ckey = format!("{key}.tls.certificates[{j}]");
                let (cert_path, key_path) =
                    (config.resolve_path(&c.cert), config.resolve_path(&c.key));
                let chain_ok = match load_chain(&cert_path) {
                    Ok(_) => true,
                    Err(e) => {
                        self.error(format!("{ckey}.cert"), e.to_string());
                        false
                    }
                };
                let key_ok = match load_key(&key_path) {
                    Ok(_) => true,
                    Err(e) => {
                        self.error(format!("{ckey}.key"), e.to_string());
                        false
                    }
                };
                if chain_ok && key_ok {
                    // Both parse: do they belong together, and is the key type usable?
                    if let Err(e) = load_certified_key(&cert_path, &key_path) {
                        self.error(format!("{ckey}.key"), e.to_string());
                    }
                }
                if let Some(names) = &c.names {
                    if names.is_empty() {
                        self.error(
                            format!("{ckey}.names"),
                            "must list at least one name, or be left out to use the certificate's own names",
                        );
                    }
                    for (k, n) in names.iter().enumerate() {
                        if !valid_server_name(n) {
                            self.error(
                                format!("{ckey}.names[{k}]"),
                                format!("{n:?} is not a host name or *.wildcard"),
                            );
                        }
                    }
                }
            }
            if let Err(e) = crate::tls::settings::provider(&tls.choice()) {
                self.error(format!("{key}.tls.{}", e.key()), e.to_string());
            }
            if tls.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
                self.error(
                    format!("{key}.tls.alpn"),
                    "protocol names must be 1 to 255 bytes, e.g. [\"http/1.1\"]",
                );
            }
        }
        for (name, cluster) in &config.clusters {
            let Some(tls) = &cluster.tls else {
                continue;
            };
            let key = format!("clusters.{}.tls", quote_key(name));
            match (&tls.ca, tls.verify) {
                (None, true) => self.error(
                    format!("{key}.ca"),
                    "a CA bundle is required to verify backend certificates (or verify = false, for tests only)",
                ),
                (Some(ca), _) => {
                    if let Err(e) = load_chain(&config.resolve_path(ca)) {
                        self.error(format!("{key}.ca"), e.to_string());
                    }
                }
                (None, false) => {}
            }
            match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(k)) => {
                    if let Err(e) = load_chain(&config.resolve_path(cert)) {
                        self.error(format!("{key}.client_cert"), e.to_string());
                    }
                    if let Err(e) = load_key(&config.resolve_path(k)) {
                        self.error(format!("{key}.client_key"), e.to_string());
                    }
                }
                (Some(_), None) => {
                    self.error(format!("{key}.client_key"), "client_cert needs client_key")
                }
                (None, Some(_)) => {
                    self.error(format!("{key}.client_cert"), "client_key needs client_cert")
                }
                (None, None) => {}
            }
            if let Some(sni) = &tls.sni {
                if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                    self.error(
                        format!("{key}.sni"),
                        format!("{sni:?} is not a valid server name"),
                    );
                }
            }
            if let Err(e) = crate::tls::settings::provider(&tls.choice()) {
                self.error(format!("{key}.{}", e.key()), e.to_string());
            }
            if tls.min_idle > config.workers.upstream_idle_pool {
                self.error(
                    format!("{key}.min_idle"),
                    format!(
                        "must not exceed workers.upstream_idle_pool ({})",
                        config.workers.upstream_idle_pool
                    ),
                );
            }
        }
    }
}

/// A DNS name or a `*.suffix` wildcard as TLS certificates and SNI use them.
fn valid_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
