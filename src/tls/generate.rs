//! Development certificates (`tether certs`): a throw-away CA and certificates it signs for the demo, the
//! tests and `configs/tls.toml`. ECDSA P-256 keys. Never for production.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A development CA that can issue certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<DevCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            issuer: CertifiedIssuer::self_signed(params, key)?,
            key_pem,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `names` (DNS names, `*.wildcards` or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate with an RSA 2048 key (for testing RSA chains; ECDSA is the default).
    pub fn server_rsa(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
        self.issue_with(names, ExtendedKeyUsagePurpose::ServerAuth, key)
    }

    /// A client certificate (mutual TLS) for `name`.
    pub fn client(&self, name: &str) -> Result<Issued, rcgen::Error> {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A cluster node's certificate: named after the node (its subject and first DNS name, which peers
    /// check against the node name it announces) and `127.0.0.1`, for both ends of a replication link.
    pub fn node(&self, name: &str) -> Result<Issued, rcgen::Error> {
        self.issue_for(
            &[name, "127.0.0.1"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            KeyPair::generate()?,
        )
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, rcgen::Error> {
        self.issue_with(names, usage, KeyPair::generate()?)
    }

    fn issue_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        key: KeyPair,
    ) -> Result<Issued, rcgen::Error> {
        self.issue_for(names, &[usage], key)
    }

    fn issue_for(
        &self,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
        key: KeyPair,
    ) -> Result<Issued, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = usages.to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What `tether certs` wrote.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

/// Writes `ca.crt`/`ca.key`, `localhost.crt`/`.key` (localhost, *.localhost, 127.0.0.1, ::1),
/// `backend.crt`/`.key` (backend.local, 127.0.0.1) and `client.crt`/`.key` (mutual TLS) into `dir`.
pub fn write_dev_certs(dir: &Path) -> Result<Written, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| e.to_string();
    let ca = DevCa::new("tether development CA").map_err(err)?;
    let localhost = ca
        .server(&["localhost", "*.localhost", "127.0.0.1", "::1"])
        .map_err(err)?;
    let backend = ca.server(&["backend.local", "127.0.0.1"]).map_err(err)?;
    let client = ca.client("tether-client").map_err(err)?;
    let files = [
        ("ca.crt", ca.cert_pem()),
        ("ca.key", ca.key_pem().to_string()),
        ("localhost.crt", localhost.cert_pem),
        ("localhost.key", localhost.key_pem),
        ("backend.crt", backend.cert_pem),
        ("backend.key", backend.key_pem),
        ("client.crt", client.cert_pem),
        ("client.key", client.key_pem),
    ];
    write_files(dir, files)
}

/// Writes a development cluster CA (`ca.crt`, `ca.key`) and a certificate per node (`NODE.crt`,
/// `NODE.key`) into `dir`, for the mutual TLS of replication links (`tether certs cluster`).
pub fn write_cluster_certs(dir: &Path, nodes: &[String]) -> Result<Written, String> {
    if nodes.is_empty() {
        return Err("--nodes names no node".into());
    }
    for (i, n) in nodes.iter().enumerate() {
        // The protocol's rule for node names (docs/PROTOCOL.md, "Concepts").
        if !crate::replication::frame::valid_name(n.as_bytes()) {
            return Err(format!(
                "node name {n:?} is not 1-64 characters of letters, digits, '.', '_' or '-'"
            ));
        }
        if nodes[..i].contains(n) {
            return Err(format!("node name {n:?} is given twice"));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| e.to_string();
    let ca = DevCa::new("tether cluster development CA").map_err(err)?;
    let mut files = vec![
        ("ca.crt".to_string(), ca.cert_pem()),
        ("ca.key".to_string(), ca.key_pem().to_string()),
    ];
    for n in nodes {
        let issued = ca.node(n).map_err(err)?;
        files.push((format!("{n}.crt"), issued.cert_pem));
        files.push((format!("{n}.key"), issued.key_pem));
    }
    write_files(dir, files)
}

/// Writes each `(file name, PEM)` into `dir`; errors name the file.
fn write_files(
    dir: &Path,
    files: impl IntoIterator<Item = (impl AsRef<Path>, String)>,
) -> Result<Written, String> {
    let mut written = Vec::new();
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(Written { files: written })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_load_and_name_their_sans() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_certs(dir.path()).unwrap();
        let key = crate::tls::certs::load_certified_key(
            &dir.path().join("localhost.crt"),
            &dir.path().join("localhost.key"),
        )
        .unwrap();
        let names = crate::tls::certs::dns_names(&key.cert[0]).unwrap();
        assert_eq!(names, vec!["localhost", "*.localhost"]);
        // A key from another certificate does not match.
        let mismatch = crate::tls::certs::load_certified_key(
            &dir.path().join("localhost.crt"),
            &dir.path().join("backend.key"),
        );
        assert!(mismatch.is_err());
    }

    #[test]
    fn cluster_certificates_name_their_nodes_and_refuse_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<String> = ["a", "b", "node-c.east"].map(String::from).to_vec();
        let written = write_cluster_certs(dir.path(), &nodes).unwrap();
        assert_eq!(written.files.len(), 2 + 2 * nodes.len());
        for n in &nodes {
            let key = crate::tls::certs::load_certified_key(
                &dir.path().join(format!("{n}.crt")),
                &dir.path().join(format!("{n}.key")),
            )
            .unwrap();
            assert_eq!(
                crate::tls::certs::dns_names(&key.cert[0]).unwrap(),
                vec![n.clone()]
            );
        }
        for bad in [
            vec![],
            vec!["a b".to_string()],
            vec!["a".into(), "a".into()],
        ] {
            assert!(write_cluster_certs(dir.path(), &bad).is_err(), "{bad:?}");
        }
    }
}
