//! rustls client configuration.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub struct TlsOptions<'a> {
    pub cacert: Option<&'a str>,
    pub insecure: bool,
    pub resume: bool,
    /// Number of virtual users, to size the session cache.
    pub connections: usize,
}

/// Places where Debian, Fedora/RHEL and Alpine/macOS keep the system CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut cfg = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        let path = match opts.cacert {
            Some(p) => p.to_string(),
            None => std::env::var("SSL_CERT_FILE").ok().unwrap_or_else(|| {
                SYSTEM_BUNDLES
                    .iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .unwrap_or(&SYSTEM_BUNDLES[0])
                    .to_string()
            }),
        };
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| format!("reading CA certificates from {path}: {e}"))?;
        for c in certs {
            let c = c.map_err(|e| format!("parsing {path}: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {path}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("no CA certificates found in {path}"));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = if opts.resume {
        Resumption::in_memory_sessions(opts.connections.saturating_mul(2).max(256))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))
}

/// `--insecure`: accept any certificate, but still check handshake signatures
/// so the connection is a real TLS connection.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
