//! TLS runs against an in-process rustls server using the test certificates in
//! tests/fixtures (a test CA and a server certificate for localhost,
//! bench.test and 127.0.0.1, valid until 2126).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Server, assert_counts_match, bench, n, start_server_with};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn tls_server() -> Server {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{FIXTURES}/server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{FIXTURES}/server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    start_server_with(false, Some(Arc::new(cfg)))
}

fn ca() -> String {
    format!("{FIXTURES}/ca.pem")
}

#[test]
fn what_is_offered_is_what_is_negotiated_and_reported() {
    let s = tls_server();
    let url = format!("https://localhost:{}/", s.addr.port());
    // Left alone: rustls's defaults, reported as negotiated (the hybrid group, AES-256 first).
    let j = bench(&["-t", "1", "-c", "1", "--cacert", &ca(), &url]);
    let got: Vec<&String> = j["tls"]["negotiated"].as_object().unwrap().keys().collect();
    assert_eq!(got, ["TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519MLKEM768"]);
    // One version, group and suite offered: exactly those, on every handshake.
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "2",
        "--new-conn",
        "--cacert",
        &ca(),
        "--tls-version",
        "1.2",
        "--tls-groups",
        "secp256r1",
        "--tls-ciphers",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        &url,
    ]);
    // A full handshake names its group; a resumed TLS 1.2 one has none (no key exchange at all).
    let negotiated = j["tls"]["negotiated"].as_object().unwrap();
    let suite = "TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256";
    let full = n(&negotiated[&format!("{suite} secp256r1")]);
    let resumed = n(&negotiated[&format!("{suite} none")]);
    assert_eq!(negotiated.len(), 2, "{negotiated:?}");
    assert!(full >= 1 && resumed > full, "{negotiated:?}");
    assert_eq!(full + resumed, n(&j["tls"]["handshakes"]));
    assert_eq!(resumed, n(&j["tls"]["resumed"]));
}

#[test]
fn keep_alive_over_tls() {
    let s = tls_server();
    let url = format!("https://localhost:{}/", s.addr.port());
    let j = bench(&["-t", "1", "-c", "2", "--cacert", &ca(), &url]);
    assert_counts_match(&j, &s, 2);
    assert_eq!(n(&j["tls"]["handshakes"]), 2);
}

#[test]
fn new_connections_resume_sessions() {
    let s = tls_server();
    let url = format!("https://localhost:{}/", s.addr.port());
    let j = bench(&["-t", "1", "-c", "2", "--new-conn", "--cacert", &ca(), &url]);
    assert_counts_match(&j, &s, 2);
    let hs = n(&j["tls"]["handshakes"]);
    let resumed = n(&j["tls"]["resumed"]);
    assert!(hs > 4, "handshakes: {hs}");
    // Only the first handshake of each virtual user can't resume.
    assert!(
        resumed > 0 && resumed + 2 >= hs / 2,
        "{resumed} of {hs} resumed"
    );
    assert!(s.c.connections.load(Ordering::Relaxed) >= hs);
}

#[test]
fn no_resume_does_full_handshakes() {
    let s = tls_server();
    let url = format!("https://localhost:{}/", s.addr.port());
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "1",
        "--new-conn",
        "--no-resume",
        "--cacert",
        &ca(),
        &url,
    ]);
    assert_counts_match(&j, &s, 1);
    assert!(n(&j["tls"]["handshakes"]) > 1);
    assert_eq!(n(&j["tls"]["resumed"]), 0);
}

#[test]
fn sni_override_and_ip_url() {
    let s = tls_server();
    // Connect by IP, verify the certificate against the --sni name.
    let url = format!("https://127.0.0.1:{}/", s.addr.port());
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "1",
        "--sni",
        "bench.test",
        "--cacert",
        &ca(),
        &url,
    ]);
    assert_counts_match(&j, &s, 1);
    // A name the certificate does not cover fails verification.
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "1",
        "-d",
        "1s",
        "--sni",
        "other.test",
        "--cacert",
        &ca(),
        &url,
    ]);
    assert_eq!(n(&j["requests"]), 0);
    assert!(n(&j["errors"]["connect"]) > 0, "{j}");
}

#[test]
fn insecure_skips_verification() {
    let s = tls_server();
    let url = format!("https://localhost:{}/", s.addr.port());
    // Without our CA the certificate is rejected...
    let wrong = std::env::temp_dir().join("tether-bench-wrong-ca.pem");
    let _ = std::fs::write(&wrong, wrong_ca());
    let j = bench(&[
        "-t",
        "1",
        "-c",
        "1",
        "-d",
        "1s",
        "--cacert",
        wrong.to_str().unwrap(),
        &url,
    ]);
    assert_eq!(n(&j["requests"]), 0);
    assert!(n(&j["errors"]["connect"]) > 0, "{j}");
    // ...and accepted with --insecure.
    let j = bench(&["-t", "1", "-c", "1", "--insecure", &url]);
    assert_counts_match(&j, &s, 1);
}

/// A valid CA certificate that did not sign the server certificate: the
/// server certificate itself (a leaf cannot anchor its own chain here).
fn wrong_ca() -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/server.pem")).unwrap()
}
