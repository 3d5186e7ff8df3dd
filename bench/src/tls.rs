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
    /// `"1.2"` or `"1.3"`: offer only that version.
    pub version: Option<&'a str>,
    /// Groups and suites to offer, in order (empty: rustls's defaults).
    pub groups: &'a [String],
    pub ciphers: &'a [String],
}

/// What a handshake negotiated, as rustls names it: `TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519`.
pub fn negotiated(c: &rustls::ClientConnection) -> String {
    format!(
        "{:?} {:?} {}",
        c.protocol_version()
            .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
        c.negotiated_cipher_suite()
            .map_or(rustls::CipherSuite::Unknown(0), |s| s.suite()),
        c.negotiated_key_exchange_group()
            .map_or("none".to_string(), |g| format!("{:?}", g.name())),
    )
}

/// The provider offering `groups` and `ciphers` (by rustls's names, any case) in that order.
fn offering(
    groups: &[String],
    ciphers: &[String],
) -> Result<rustls::crypto::CryptoProvider, String> {
    use rustls::crypto::aws_lc_rs::{ALL_CIPHER_SUITES, ALL_KX_GROUPS, default_provider};
    let mut p = default_provider();
    if !groups.is_empty() {
        p.kx_groups = groups
            .iter()
            .map(|n| {
                ALL_KX_GROUPS
                    .iter()
                    .copied()
                    .find(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(n))
                    .ok_or_else(|| format!("unknown TLS group {n:?}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if !ciphers.is_empty() {
        p.cipher_suites = ciphers
            .iter()
            .map(|n| {
                ALL_CIPHER_SUITES
                    .iter()
                    .copied()
                    .find(|s| format!("{:?}", s.suite()).eq_ignore_ascii_case(n))
                    .ok_or_else(|| format!("unknown TLS cipher suite {n:?}"))
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(p)
}

/// Places where Debian, Fedora/RHEL and Alpine/macOS keep the system CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(offering(opts.groups, opts.ciphers)?);
    let versions: &[&rustls::SupportedProtocolVersion] = match opts.version {
        None => rustls::DEFAULT_VERSIONS,
        Some("1.3") => &[&rustls::version::TLS13],
        Some("1.2") => &[&rustls::version::TLS12],
        Some(v) => return Err(format!("--tls-version {v:?}: 1.2 or 1.3")),
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
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
