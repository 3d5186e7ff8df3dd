//! What the main thread lists for an admin call, off the workers: the uploads in the store (a scan of
//! kind-11 records) and the TLS certificates the running config names (files read and parsed).

use serde::Serialize;
use std::path::Path;

/// An upload as `GET /api/uploads` lists it: where it stands, not what it holds (no session, identity or
/// metadata).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UploadRow {
    pub id: String,
    pub protocol: &'static str,
    pub user: String,
    pub route: String,
    pub path: String,
    /// Declared length (`null` until known).
    pub length: Option<u64>,
    /// Bytes acknowledged.
    pub offset: u64,
    pub created: u32,
    pub expires: u32,
}

/// The live uploads in `store`, oldest first.
pub(crate) fn uploads(store: &crate::store::Store, now: u32) -> Vec<UploadRow> {
    use crate::spool::state::{Proto, Upload, hex};
    let reader = store.reader();
    let mut rows: Vec<UploadRow> = reader
        .iter(Some(crate::store::Kind::Upload))
        .filter(|r| r.expires == 0 || r.expires > now)
        .filter_map(|r| {
            let u = Upload::decode(r.value.as_deref()?)?;
            let id: [u8; 16] = r.key.as_ref().try_into().ok()?;
            Some(UploadRow {
                id: hex(&id),
                protocol: match u.proto {
                    Proto::Tus => "tus",
                    Proto::Ietf => "ietf",
                },
                user: u.user,
                route: u.route,
                path: u.path,
                length: u.length,
                offset: u.offset,
                created: u.created,
                expires: u.expires,
            })
        })
        .collect();
    rows.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    rows
}

/// A certificate the running config names, as `GET /api/tls/certificates` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertificateRow {
    /// Where it is used: `listener NAME`, `cluster NAME client`, `cluster link`.
    pub used_by: String,
    /// The PEM file (resolved against the config file's directory).
    pub file: String,
    /// The leaf's DNS names (its common name when it has none), subject and issuer.
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Validity, in seconds since the Unix epoch, and whole days left at the time of the call (negative:
    /// expired).
    pub not_before: i64,
    pub not_after: i64,
    pub days_left: i64,
    /// Why the file could not be read or parsed (then the other fields are empty).
    pub error: Option<String>,
}

/// Every certificate the running config names: listeners' chains, clusters' client certificates, the
/// cluster link's.
pub(crate) fn certificates(config: &crate::config::Config, unix_now: i64) -> Vec<CertificateRow> {
    let mut rows = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let name = l
            .name
            .clone()
            .unwrap_or_else(|| format!("{i} ({})", l.address));
        for c in l.tls.iter().flat_map(|t| &t.certificates) {
            rows.push(row(
                format!("listener {name}"),
                &config.resolve_path(&c.cert),
                unix_now,
            ));
        }
    }
    for (name, c) in &config.clusters {
        if let Some(cert) = c.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
            rows.push(row(
                format!("cluster {name} client"),
                &config.resolve_path(cert),
                unix_now,
            ));
        }
    }
    if let Some(m) = &config.cluster {
        rows.push(row(
            "cluster link".into(),
            &config.resolve_path(&m.tls.cert),
            unix_now,
        ));
    }
    rows
}

/// The leaf certificate of the PEM chain at `file`.
fn row(used_by: String, file: &Path, unix_now: i64) -> CertificateRow {
    use x509_parser::prelude::*;
    let mut r = CertificateRow {
        used_by,
        file: file.display().to_string(),
        names: Vec::new(),
        subject: String::new(),
        issuer: String::new(),
        not_before: 0,
        not_after: 0,
        days_left: 0,
        error: None,
    };
    let chain = match crate::tls::certs::load_chain(file) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let Some(leaf) = chain.first() else {
        r.error = Some("no certificate in the file".into());
        return r;
    };
    match X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, parsed)) => {
            r.subject = parsed.subject().to_string();
            r.issuer = parsed.issuer().to_string();
            r.not_before = parsed.validity().not_before.timestamp();
            r.not_after = parsed.validity().not_after.timestamp();
            r.days_left = (r.not_after - unix_now).div_euclid(86_400);
            r.names = crate::tls::certs::dns_names(leaf).unwrap_or_default();
        }
        Err(e) => r.error = Some(format!("not an X.509 certificate: {e}")),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_listed_with_its_names_and_expiry_and_a_missing_one_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["demo.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let file = dir.path().join("c.pem");
        std::fs::write(&file, cert.pem()).unwrap();
        // 2029-12-31T00:00:00Z: one day left.
        let r = row("listener web".into(), &file, 1_893_369_600);
        assert_eq!(r.error, None);
        assert_eq!(r.names, vec!["demo.test".to_string()]);
        assert_eq!(r.not_after, 1_893_456_000);
        assert_eq!(r.days_left, 1);
        let missing = row("listener web".into(), &dir.path().join("none.pem"), 0);
        assert!(missing.error.is_some() && missing.names.is_empty());
    }
}
