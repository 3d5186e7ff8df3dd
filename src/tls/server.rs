//! The rustls server configuration of a TLS listener: certificates by SNI, versions, groups and suites
//! (`settings`), ALPN, and the process-wide ticket keys and session cache.

use super::certs::{dns_names, load_certified_key};
use super::session_cache::SessionCache;
use super::sni::SniResolver;
use super::tickets::TicketKeyring;
use crate::config::{Config, ListenerTls};
use rustls::ServerConfig;
use std::sync::Arc;

/// TLS state that lives as long as the process and outlives reloads: ticket keys, the session cache and
/// the counters.
#[derive(Debug, Clone)]
pub struct TlsShared {
    pub tickets: Arc<TicketKeyring>,
    pub cache: Arc<SessionCache>,
    pub stats: Arc<super::TlsStats>,
}

impl TlsShared {
    pub fn new(config: &Config) -> Self {
        TlsShared {
            tickets: Arc::new(TicketKeyring::new(
                config.tls.ticket_rotation,
                config.tls.session_tickets,
            )),
            cache: Arc::new(SessionCache::new(config.tls.session_cache_size)),
            stats: Arc::new(super::TlsStats::default()),
        }
    }
}

/// The provider every config uses: aws-lc-rs.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds a listener's server config; certificates are read now (a reload reads them again).
pub fn server_config(
    tls: &ListenerTls,
    config: &Config,
    shared: &TlsShared,
) -> Result<Arc<ServerConfig>, String> {
    let mut resolver = SniResolver::new(tls.strict_sni);
    for c in &tls.certificates {
        let key = load_certified_key(&config.resolve_path(&c.cert), &config.resolve_path(&c.key))
            .map_err(|e| e.to_string())?;
        let names = match &c.names {
            Some(n) => n.clone(),
            None => key
                .cert
                .first()
                .map(dns_names)
                .transpose()
                .map_err(|e| format!("{}: {e}", c.cert))?
                .unwrap_or_default(),
        };
        resolver.add(key, &names);
    }
    let choice = tls.choice();
    let chosen = super::settings::provider(&choice).map_err(|e| format!("{}: {e}", e.key()))?;
    let versions = super::settings::versions(choice.min_version, choice.max_version);
    let mut server = ServerConfig::builder_with_provider(chosen)
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // The server's cipher suite order decides, not the client's: rustls otherwise takes the first suite in
    // the client's list that it supports. With this the listener's `cipher_suites` order (default: AES-128-GCM,
    // AES-256-GCM, ChaCha20-Poly1305) wins, for TLS 1.2 and 1.3 alike; testssl.sh checks for exactly this.
    server.ignore_client_order = true;
    server.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    server.ticketer = shared.tickets.clone();
    server.session_storage = shared.cache.clone();
    // No 0-RTT: early data can be replayed, and a balancer cannot know which requests tolerate that.
    server.max_early_data_size = 0;
    Ok(Arc::new(server))
}

/// The admin listener's server config (`[admin] cert`, `key`, optional `client_ca`): one certificate, and
/// with a client CA, mutual TLS — a client without a certificate chaining to it fails the handshake, before
/// any byte of HTTP. Read when a snapshot is built, so a reload picks up replaced files.
pub fn admin_server_config(
    admin: &crate::config::AdminConfig,
    config: &Config,
) -> Result<Option<Arc<ServerConfig>>, String> {
    let (Some(cert), Some(key), client_ca) = admin.tls_files() else {
        return Ok(None);
    };
    let certified = load_certified_key(&config.resolve_path(cert), &config.resolve_path(key))
        .map_err(|e| e.to_string())?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let path = config.resolve_path(ca);
            let mut roots = rustls::RootCertStore::empty();
            for c in super::certs::load_chain(&path).map_err(|e| e.to_string())? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCert(certified)));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.max_early_data_size = 0;
    Ok(Some(Arc::new(server)))
}

/// One certificate for every handshake (the admin listener has no SNI names to choose by).
#[derive(Debug)]
struct SingleCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}
