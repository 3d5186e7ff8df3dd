//! Choosing the certificate for a handshake by SNI name: exact names, then `*.suffix` wildcards, then the
//! default (unless strict SNI refuses unknown names).

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// A listener's certificates by name.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`: matches one label or more before the suffix.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
    strict: bool,
}

impl SniResolver {
    pub fn new(strict: bool) -> Self {
        SniResolver {
            strict,
            ..SniResolver::default()
        }
    }

    /// Adds a certificate for `names`; the first certificate added becomes the default. An earlier
    /// certificate keeps a name both claim (first wins, like HAProxy's crt-list order).
    pub fn add(&mut self, key: Arc<CertifiedKey>, names: &[String]) {
        if self.default.is_none() {
            self.default = Some(key.clone());
        }
        for name in names {
            let name = name.to_ascii_lowercase();
            if let Some(suffix) = name.strip_prefix('*') {
                if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                    self.wildcard.push((suffix.to_string(), key.clone()));
                }
            } else {
                self.exact.entry(name).or_insert_with(|| key.clone());
            }
        }
        self.wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    /// The certificate for an SNI name (`None`: refuse the handshake).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, k)) = self
                .wildcard
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            {
                return Some(k.clone());
            }
            if self.strict {
                return None;
            }
        } else if self.strict {
            return None;
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name())
    }
}
