//! Loading PEM certificate chains and private keys, and reading the names a certificate serves.

use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: no certificate found in the PEM file")]
    NoCertificate { path: String },
    #[error("{path}: no private key found in the PEM file (PKCS#8, RSA or SEC1 EC expected)")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("{key}: the private key does not match the certificate {cert}")]
    Mismatch { cert: String, key: String },
    #[error("{path}: cannot parse the certificate: {reason}")]
    Parse { path: String, reason: String },
}

/// Reads every certificate in a PEM file (leaf first).
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let shown = path.display().to_string();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| CertError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let chain: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: shown });
    }
    Ok(chain)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let shown = path.display().to_string();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey { path: shown },
        other => CertError::Read {
            path: shown,
            reason: other.to_string(),
        },
    })
}

/// A certificate chain and its signing key, checked to belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = load_chain(cert)?;
    let der = load_key(key)?;
    let signing = any_supported_type(&der).map_err(|e| CertError::BadKey {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        // Keys whose public half cannot be derived are accepted as rustls would.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err(CertError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        }),
    }
}

/// The DNS names in a certificate's subjectAltName (lowercased), falling back to its common name.
pub fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in parsed.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}
