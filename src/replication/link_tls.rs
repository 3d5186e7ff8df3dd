//! The TLS of replication links: TLS 1.3 only, both ends authenticated by certificates from the cluster's
//! CA, and the peer's node name read from its certificate (its first DNS name), so a node can check that
//! the name a peer announces in its `HELLO` is the name its certificate was issued to.

use crate::tls::certs::{dns_names, load_chain, load_key};
use crate::tls::server::provider;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// ALPN protocol id of replication links (refuses a client that speaks anything else, e.g. HTTP).
pub const ALPN: &[u8] = b"tether-repl/1";

/// Both sides of this node's link TLS.
#[derive(Debug, Clone)]
pub struct LinkTls {
    /// For links peers open to this node: client certificates required, verified against the CA.
    pub server: Arc<ServerConfig>,
    /// For links this node opens: the peer's certificate verified against the CA and the peer's name.
    pub client: Arc<ClientConfig>,
}

impl LinkTls {
    /// Loads the cluster CA and this node's certificate and key. Errors name the file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<LinkTls, String> {
        let mut roots = RootCertStore::empty();
        for c in load_chain(ca).map_err(|e| e.to_string())? {
            roots
                .add(c)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let chain = load_chain(cert).map_err(|e| e.to_string())?;
        let key_der = load_key(key).map_err(|e| e.to_string())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Links are few and long-lived: no tickets, no resumption state to keep.
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::disabled();
        Ok(LinkTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// A client connection to the peer named `peer` (its certificate must carry that name).
    pub fn connect(&self, peer: &str) -> Result<rustls::ClientConnection, String> {
        let name = ServerName::try_from(peer.to_string())
            .map_err(|e| format!("peer name {peer:?}: {e}"))?;
        rustls::ClientConnection::new(self.client.clone(), name).map_err(|e| e.to_string())
    }

    /// A server connection for a link a peer opened.
    pub fn accept(&self) -> Result<rustls::ServerConnection, String> {
        rustls::ServerConnection::new(self.server.clone()).map_err(|e| e.to_string())
    }
}

/// The node name in the peer's (verified) certificate: its first DNS name. `None` before the handshake
/// completed or when the certificate names none.
pub fn peer_node_name(conn: &rustls::CommonState) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    dns_names(cert).ok()?.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::write_cluster_certs;

    /// Runs a handshake between two in-memory connections; `Err` carries the first side's error.
    fn handshake(
        client: &mut rustls::ClientConnection,
        server: &mut rustls::ServerConnection,
    ) -> Result<(), String> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server
                .process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client
                .process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err("handshake did not finish".into())
    }

    fn node(dir: &Path, name: &str) -> LinkTls {
        LinkTls::load(
            &dir.join("ca.crt"),
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
        )
        .unwrap()
    }

    #[test]
    fn nodes_of_one_ca_authenticate_each_other_and_learn_the_peer_name() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_certs(dir.path(), &["a".into(), "b".into()]).unwrap();
        let (a, b) = (node(dir.path(), "a"), node(dir.path(), "b"));
        let mut client = a.connect("b").unwrap();
        let mut server = b.accept().unwrap();
        handshake(&mut client, &mut server).unwrap();
        assert_eq!(peer_node_name(&server).as_deref(), Some("a"));
        assert_eq!(peer_node_name(&client).as_deref(), Some("b"));
        assert_eq!(server.alpn_protocol(), Some(ALPN));
    }

    #[test]
    fn a_node_of_another_ca_is_refused_both_ways() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        write_cluster_certs(ours.path(), &["a".into(), "b".into()]).unwrap();
        write_cluster_certs(theirs.path(), &["x".into()]).unwrap();
        let (a, x) = (node(ours.path(), "a"), node(theirs.path(), "x"));
        // x (trusting our CA, but with a certificate from its own) dials a: a refuses x's certificate.
        let x_trusting_us = LinkTls::load(
            &ours.path().join("ca.crt"),
            &theirs.path().join("x.crt"),
            &theirs.path().join("x.key"),
        )
        .unwrap();
        let mut client = x_trusting_us.connect("a").unwrap();
        let mut server = a.accept().unwrap();
        let e = handshake(&mut client, &mut server).unwrap_err();
        // Both CAs carry the same name, so the issuer is found and its signature fails to verify.
        assert!(e.starts_with("server: invalid peer certificate"), "{e}");
        // a dials x: a refuses x's server certificate.
        let mut client = a.connect("x").unwrap();
        let mut server = x.accept().unwrap();
        let e = handshake(&mut client, &mut server).unwrap_err();
        assert!(e.starts_with("client: invalid peer certificate"), "{e}");
    }

    #[test]
    fn a_certificate_for_another_name_is_refused_by_the_dialer() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_certs(dir.path(), &["a".into(), "b".into(), "c".into()]).unwrap();
        let (a, c) = (node(dir.path(), "a"), node(dir.path(), "c"));
        // a thinks it dials b, but c answers.
        let mut client = a.connect("b").unwrap();
        let mut server = c.accept().unwrap();
        let e = handshake(&mut client, &mut server).unwrap_err();
        assert!(e.starts_with("client: invalid peer certificate"), "{e}");
        assert!(e.contains("not valid for name \"b\""), "{e}");
    }
}
