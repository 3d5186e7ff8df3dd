//! The rustls client configuration tether uses toward a cluster's backends: CA bundle, SNI name,
//! verification, optional client certificate (mutual TLS).

use super::certs::{load_chain, load_key};
use super::server::provider;
use crate::config::{ClusterTls, Config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::IpAddr;
use std::sync::Arc;

/// How tether speaks TLS to one cluster's backends.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// The configured SNI name; `None`: the backend's IP address is used (and verified).
    pub server_name: Option<ServerName<'static>>,
    /// Established connections to keep ready per backend per worker.
    pub min_idle: usize,
}

impl UpstreamTls {
    /// The name to send and verify for a backend at `ip`.
    pub fn name_for(&self, ip: IpAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

/// Builds the client side of a cluster's backend TLS.
pub fn upstream_tls(tls: &ClusterTls, config: &Config) -> Result<UpstreamTls, String> {
    let choice = tls.choice();
    let chosen = super::settings::provider(&choice).map_err(|e| format!("{}: {e}", e.key()))?;
    let builder = ClientConfig::builder_with_provider(chosen)
        .with_protocol_versions(&super::settings::versions(
            choice.min_version,
            choice.max_version,
        ))
        .map_err(|e| e.to_string())?;
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        let ca = tls
            .ca
            .as_deref()
            .ok_or("backend TLS verification needs a CA bundle (`ca`)")?;
        for cert in load_chain(&config.resolve_path(ca)).map_err(|e| e.to_string())? {
            roots
                .add(cert)
                .map_err(|e| format!("{ca}: unusable CA certificate: {e}"))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    };
    let mut client = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_chain(&config.resolve_path(cert)).map_err(|e| e.to_string())?;
            let key = load_key(&config.resolve_path(key)).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = match &tls.sni {
        Some(name) => {
            Some(ServerName::try_from(name.clone()).map_err(|e| format!("sni {name:?}: {e}"))?)
        }
        None => None,
    };
    Ok(UpstreamTls {
        config: Arc::new(client),
        server_name,
        min_idle: tls.min_idle,
    })
}

/// Accepts any backend certificate (`verify = false`): for tests and labs only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
