//! End-to-end TLS: SNI, strict SNI, resumption, backend TLS verification and pooling, handshake timeout,
//! certificate reload, plain HTTP on a TLS port, and the https redirect listener.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tether::tls::generate::DevCa;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.display().to_string()
}

fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[derive(Debug)]
struct TlsReply {
    status: u16,
    body: String,
    peer_names: Vec<String>,
    kind: Option<HandshakeKind>,
}

/// One HTTPS GET over a new connection.
fn tls_get(
    addr: SocketAddr,
    sni: &str,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> Result<TlsReply, String> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer closing without close_notify after a complete response is fine for this test.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    let peer_names = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| tether::tls::certs::dns_names(c).unwrap())
        .unwrap_or_default();
    Ok(TlsReply {
        status,
        body,
        peer_names,
        kind: tls.conn.handshake_kind(),
    })
}

/// A TLS backend (rustls, a thread per connection, keep-alive) answering 200 "tls-backend"; counts
/// handshakes and requests.
struct TlsBackend {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

fn tls_backend(cert_pem: &str, key_pem: &str) -> TlsBackend {
    tls_backend_with(cert_pem, key_pem, None)
}

/// A TLS backend; with `client_ca`, it demands a client certificate signed by that CA (mutual TLS).
fn tls_backend_with(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> TlsBackend {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = Arc::new(builder.with_single_cert(chain, key).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (h, r) = (handshakes.clone(), requests.clone());
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let (cfg, h, r) = (cfg.clone(), h.clone(), r.clone());
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut sock = sock;
                // Count a handshake once it completes, whether or not a request follows.
                while conn.is_handshaking() {
                    if conn.complete_io(&mut sock).is_err() {
                        return;
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let mut tls = StreamOwned::new(conn, sock);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        let body = "tls-backend";
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    TlsBackend {
        addr,
        handshakes,
        requests,
    }
}

/// A CA, certificates for `a.test` and `b.test`, and a config with a TLS listener serving both.
struct Setup {
    ca: DevCa,
    dir: tempfile::TempDir,
    a_cert: String,
    a_key: String,
}

fn setup() -> Setup {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = ca.server(&["a.test"]).unwrap();
    let b = ca.server(&["b.test", "*.b.test"]).unwrap();
    let a_cert = write(dir.path(), "a.crt", &a.cert_pem);
    let a_key = write(dir.path(), "a.key", &a.key_pem);
    write(dir.path(), "b.crt", &b.cert_pem);
    write(dir.path(), "b.key", &b.key_pem);
    Setup {
        ca,
        dir,
        a_cert,
        a_key,
    }
}

fn tls_listener(s: &Setup, extra: &str) -> String {
    let d = s.dir.path().display();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n\
         certificates = [{{ cert = \"{d}/a.crt\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/b.crt\", key = \"{d}/b.key\" }}]\n{extra}\n"
    )
}

fn config_with(listener: &str, backend: SocketAddr, extra: &str) -> String {
    format!(
        "{listener}\n[[routes]]\ncluster = \"app\"\n[access_log]\nformat = \"json\"\n{extra}\n\
         [clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n"
    )
}

#[test]
fn sni_selects_the_certificate_for_each_name_and_unknown_names_get_the_default() {
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&config_with(&tls_listener(&s, ""), b.addr, ""));
    let cfg = client_config(&s.ca.cert_pem());
    let a = tls_get(t.addr, "a.test", &cfg, "/").unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "plain"));
    assert_eq!(a.peer_names, vec!["a.test"]);
    let b1 = tls_get(t.addr, "b.test", &cfg, "/").unwrap();
    assert_eq!(b1.peer_names, vec!["b.test", "*.b.test"]);
    let wild = tls_get(t.addr, "x.b.test", &cfg, "/").unwrap();
    assert_eq!(wild.peer_names, vec!["b.test", "*.b.test"]);
    // Not strict: an unknown name gets the default (first) certificate, which then fails verification
    // for that name on the client side.
    let unknown = tls_get(t.addr, "c.test", &cfg, "/");
    assert!(
        unknown.is_err(),
        "default certificate is not valid for c.test"
    );
    let lines = t.access_lines(3);
    assert_eq!(json_fields(&lines[0])["termination"], "completed");
}

#[test]
fn strict_sni_refuses_unknown_names_with_an_alert_and_a_logged_reason() {
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&config_with(
        &tls_listener(&s, "strict_sni = true"),
        b.addr,
        "",
    ));
    let cfg = client_config(&s.ca.cert_pem());
    let err = tls_get(t.addr, "c.test", &cfg, "/").unwrap_err();
    assert!(
        err.to_lowercase().contains("alert") || err.contains("handshake"),
        "{err}"
    );
    assert_eq!(tls_get(t.addr, "a.test", &cfg, "/").unwrap().status, 200);
    let lines = t.access_lines(2);
    let failed = lines
        .iter()
        .map(|l| json_fields(l))
        .find(|f| f["termination"] == "tls_handshake")
        .expect("a log line for the refused handshake");
    assert!(!failed["reason"].is_empty());
    assert_eq!(b.request_count(), 1);
}

#[test]
fn a_second_connection_resumes_and_the_counters_show_it() {
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&config_with(&tls_listener(&s, ""), b.addr, ""));
    for (versions, label) in [
        (&[&rustls::version::TLS13][..], "tls1.3"),
        (&[&rustls::version::TLS12][..], "tls1.2"),
    ] {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(s.ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let cfg = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let first = tls_get(t.addr, "a.test", &cfg, "/").unwrap();
        assert_eq!(first.kind, Some(HandshakeKind::Full), "{label}");
        let second = tls_get(t.addr, "a.test", &cfg, "/").unwrap();
        assert_eq!(second.kind, Some(HandshakeKind::Resumed), "{label}");
    }
    t.signal("USR1");
    let line = t.wait_log("stats: tls handshakes");
    assert!(line.contains("full=2 resumed=2"), "{line}");
}

#[test]
fn backend_tls_is_verified_pooled_and_an_untrusted_backend_gets_502() {
    let s = setup();
    let backend_cert = s.ca.server(&["backend.test", "127.0.0.1"]).unwrap();
    let good = tls_backend(&backend_cert.cert_pem, &backend_cert.key_pem);
    let stranger = DevCa::new("another CA").unwrap();
    let rogue_cert = stranger.server(&["backend.test", "127.0.0.1"]).unwrap();
    let rogue = tls_backend(&rogue_cert.cert_pem, &rogue_cert.key_pem);
    let ca_path = write(s.dir.path(), "ca.crt", &s.ca.cert_pem());

    // Plain listener, TLS to the backend, verified against the test CA by IP address.
    let cfg = |backend: SocketAddr| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"app\"\n[access_log]\nformat = \"json\"\n\
             [clusters.app]\nretries = 0\nbackends = [{{ address = \"{backend}\" }}]\n[clusters.app.tls]\nca = \"{ca_path}\"\n"
        )
    };
    let t = Tether::start(&cfg(good.addr));
    let mut c = Client::connect(t.addr);
    for _ in 0..50 {
        let r = c.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "tls-backend"));
    }
    for _ in 0..10 {
        assert_eq!(get(t.addr, "/").status, 200);
    }
    assert_eq!(good.requests.load(Ordering::SeqCst), 60);
    let handshakes = good.handshakes.load(Ordering::SeqCst);
    assert!(
        handshakes <= 2,
        "{handshakes} backend handshakes for 60 requests"
    );

    let t2 = Tether::start(&cfg(rogue.addr));
    let r = get(t2.addr, "/");
    assert_eq!(r.status, 502);
    let f = json_fields(&t2.access_lines(1)[0]);
    assert_eq!(f["termination"], "upstream_tls");
    assert_eq!(f["reason"], "certificate rejected");
    assert_eq!(
        rogue.requests.load(Ordering::SeqCst),
        0,
        "nothing sent to an unverified backend"
    );
}

#[test]
fn warm_ssl_contexts_are_established_before_any_request_and_then_used() {
    let s = setup();
    let backend_cert = s.ca.server(&["127.0.0.1"]).unwrap();
    let b = tls_backend(&backend_cert.cert_pem, &backend_cert.key_pem);
    let ca_path = write(s.dir.path(), "ca.crt", &s.ca.cert_pem());
    let cfg = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"app\"\n\
         [clusters.app]\nbackends = [{{ address = \"{}\" }}]\n[clusters.app.tls]\nca = \"{ca_path}\"\nmin_idle = 2\n",
        b.addr
    );
    let t = Tether::start(&cfg);
    let deadline = std::time::Instant::now() + PATIENCE;
    while b.handshakes.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "warm connections never made"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(b.requests.load(Ordering::SeqCst), 0);
    let mut c = Client::connect(t.addr);
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(b.requests.load(Ordering::SeqCst), 5);
    // The requests rode a warm connection; the pool is topped up again, never beyond min_idle + in use.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let handshakes = b.handshakes.load(Ordering::SeqCst);
    assert!((2..=3).contains(&handshakes), "{handshakes} handshakes");
}

#[test]
fn a_stalled_handshake_is_closed_by_the_timeout() {
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&config_with(
        &tls_listener(&s, ""),
        b.addr,
        "[timeouts]\ntls_handshake = \"300ms\"",
    ));
    let mut sock = TcpStream::connect(t.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    // The start of a ClientHello record, then silence.
    sock.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).unwrap();
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let f = json_fields(&t.access_lines(1)[0]);
    assert_eq!(f["termination"], "tls_handshake");
    assert_eq!(f["reason"], "TLS handshake timed out");
}

#[test]
fn sighup_serves_a_new_certificate_to_new_connections() {
    let s = setup();
    let b = Backend::named("plain");
    let listener = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        s.a_cert, s.a_key
    );
    let t = Tether::start(&config_with(&listener, b.addr, ""));
    let cfg = client_config(&s.ca.cert_pem());
    assert_eq!(
        tls_get(t.addr, "a.test", &cfg, "/").unwrap().peer_names,
        vec!["a.test"]
    );
    // Replace the files in place with a certificate that also names renewed.a.test.
    let renewed = s.ca.server(&["a.test", "renewed.a.test"]).unwrap();
    std::fs::write(&s.a_cert, &renewed.cert_pem).unwrap();
    std::fs::write(&s.a_key, &renewed.key_pem).unwrap();
    t.signal("HUP");
    t.wait_log("reloaded");
    // A fresh client: a resumed session would not send the certificate again.
    let fresh = client_config(&s.ca.cert_pem());
    let after = tls_get(t.addr, "a.test", &fresh, "/").unwrap();
    assert_eq!(after.peer_names, vec!["a.test", "renewed.a.test"]);
}

#[test]
fn plain_http_on_a_tls_port_is_refused_or_redirected() {
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&config_with(&tls_listener(&s, ""), b.addr, ""));
    let r = raw_exchange(t.addr, b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("plain HTTP request sent to an HTTPS port"),
        "{}",
        r.text()
    );

    let t2 = Tether::start(&config_with(
        &tls_listener(&s, "plain_http = \"redirect\""),
        b.addr,
        "",
    ));
    let r = raw_exchange(t2.addr, b"GET /x?y=1 HTTP/1.1\r\nHost: a.test:8443\r\n\r\n");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://a.test/x?y=1"));
    assert_eq!(b.request_count(), 0);
}

#[test]
fn a_redirect_listener_sends_every_request_to_https() {
    let b = Backend::named("plain");
    let cfg = config_for(&[b.addr], "").replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nredirect_https = true",
    );
    let t = Tether::start(&cfg);
    let r = raw_exchange(t.addr, b"GET /login HTTP/1.1\r\nHost: Shop.Example\r\n\r\n");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://Shop.Example/login"));
    assert_eq!(b.request_count(), 0);
}

#[test]
fn an_rsa_certificate_chain_is_served_too() {
    let s = setup();
    let rsa = s.ca.server_rsa(&["rsa.test"]).unwrap();
    write(s.dir.path(), "rsa.crt", &rsa.cert_pem);
    write(s.dir.path(), "rsa.key", &rsa.key_pem);
    let b = Backend::named("plain");
    let d = s.dir.path().display();
    let listener = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n\
         certificates = [{{ cert = \"{d}/a.crt\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/rsa.crt\", key = \"{d}/rsa.key\" }}]\n"
    );
    let t = Tether::start(&config_with(&listener, b.addr, ""));
    // TLS 1.2 with an RSA-only signature list proves the RSA key signs the handshake.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(s.ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut rsa_only = rustls::crypto::aws_lc_rs::default_provider();
    rsa_only
        .cipher_suites
        .retain(|cs| format!("{:?}", cs.suite()).contains("ECDHE_RSA"));
    let cfg = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rsa_only))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let r = tls_get(t.addr, "rsa.test", &cfg, "/").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "plain"));
    assert_eq!(r.peer_names, vec!["rsa.test"]);
}

#[test]
fn mutual_tls_to_a_backend_presents_the_client_certificate() {
    let s = setup();
    let backend_cert = s.ca.server(&["127.0.0.1"]).unwrap();
    let b = tls_backend_with(
        &backend_cert.cert_pem,
        &backend_cert.key_pem,
        Some(&s.ca.cert_pem()),
    );
    let client = s.ca.client("tether").unwrap();
    let ca = write(s.dir.path(), "ca.crt", &s.ca.cert_pem());
    let cert = write(s.dir.path(), "client.crt", &client.cert_pem);
    let key = write(s.dir.path(), "client.key", &client.key_pem);
    let cfg = |mtls: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"app\"\n[access_log]\nformat = \"json\"\n\
             [clusters.app]\nretries = 0\nbackends = [{{ address = \"{}\" }}]\n[clusters.app.tls]\nca = \"{ca}\"\n{mtls}\n",
            b.addr
        )
    };
    let with = Tether::start(&cfg(&format!(
        "client_cert = \"{cert}\"\nclient_key = \"{key}\""
    )));
    assert_eq!(get(with.addr, "/").status, 200);
    assert_eq!(b.requests.load(Ordering::SeqCst), 1);
    // Without a client certificate the backend refuses the handshake: 502, and it saw no request.
    let without = Tether::start(&cfg(""));
    assert_eq!(get(without.addr, "/").status, 502);
    let f = json_fields(&without.access_lines(1)[0]);
    assert_eq!(f["termination"], "upstream_tls");
    assert_eq!(b.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn session_cookies_issued_over_tls_are_secure() {
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&format!(
        "{}\n[[routes]]\npath_prefix = \"/cart\"\ncluster = \"app\"\nclass = \"secure\"\nsession = \"insert:TSID\"\n\
         [[routes]]\ncluster = \"app\"\n[clusters.app]\nbackends = [{{ address = \"{}\" }}]\n",
        tls_listener(&s, ""),
        b.addr
    ));
    let cfg = client_config(&s.ca.cert_pem());
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let conn = ClientConnection::new(cfg, name).unwrap();
    let sock = TcpStream::connect(t.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"GET /cart HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let set_cookie = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie in {text}"));
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
}

/// A client offering exactly `suites`, in that order, and only the protocol version they belong to.
fn client_offering(ca_pem: &str, suites: &[rustls::SupportedCipherSuite]) -> Arc<ClientConfig> {
    let version = suites[0].version();
    client_with(ca_pem, suites, None, &[version])
}

/// A client offering `suites` (and `groups`, default rustls's) for `versions`.
fn client_with(
    ca_pem: &str,
    suites: &[rustls::SupportedCipherSuite],
    groups: Option<&[&'static dyn rustls::crypto::SupportedKxGroup]>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut offering = rustls::crypto::aws_lc_rs::default_provider();
    offering.cipher_suites = suites.to_vec();
    if let Some(g) = groups {
        offering.kx_groups = g.to_vec();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(offering))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// What a fresh handshake with `cfg` negotiates (after one request, so the handshake is done): the
/// version, the cipher suite and the key-exchange group.
fn negotiated(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
) -> (
    rustls::ProtocolVersion,
    rustls::CipherSuite,
    rustls::NamedGroup,
) {
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    (
        tls.conn.protocol_version().expect("handshake completed"),
        tls.conn.negotiated_cipher_suite().expect("suite").suite(),
        tls.conn
            .negotiated_key_exchange_group()
            .expect("group")
            .name(),
    )
}

fn negotiated_suite(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> rustls::CipherSuite {
    negotiated(addr, cfg).1
}

#[test]
fn the_server_cipher_order_decides_not_the_clients() {
    use rustls::CipherSuite as Cs;
    use rustls::crypto::aws_lc_rs::cipher_suite as suites;
    let s = setup();
    let b = Backend::named("plain");
    let t = Tether::start(&config_with(&tls_listener(&s, ""), b.addr, ""));
    let ca = s.ca.cert_pem();
    // The default order, which the server follows: AES-128-GCM before AES-256-GCM before ChaCha20 (a.test
    // has an ECDSA certificate, so the ECDHE_ECDSA suites apply for TLS 1.2).
    // TLS 1.2, the client listing AES-256 (and ChaCha20) first: the server still picks AES-128.
    let tls12 = client_offering(
        &ca,
        &[
            suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
    );
    assert_eq!(
        negotiated_suite(t.addr, &tls12),
        Cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    // TLS 1.3 the same way.
    let tls13 = client_offering(
        &ca,
        &[
            suites::TLS13_CHACHA20_POLY1305_SHA256,
            suites::TLS13_AES_256_GCM_SHA384,
            suites::TLS13_AES_128_GCM_SHA256,
        ],
    );
    assert_eq!(
        negotiated_suite(t.addr, &tls13),
        Cs::TLS13_AES_128_GCM_SHA256
    );
    // A client that offers only a suite the server ranks lower still gets it (preference, not refusal).
    let only_256 = client_offering(&ca, &[suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]);
    assert_eq!(
        negotiated_suite(t.addr, &only_256),
        Cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    // With rustls's default groups a client gets the post-quantum hybrid, the listener's first choice.
    let default_client = client_with(
        &ca,
        rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES,
        None,
        &[&rustls::version::TLS13],
    );
    assert_eq!(
        negotiated(t.addr, &default_client).2,
        rustls::NamedGroup::X25519MLKEM768
    );
}

#[test]
fn a_listener_offers_the_versions_groups_and_suites_its_config_names() {
    use rustls::crypto::aws_lc_rs::{DEFAULT_CIPHER_SUITES as ALL, kx_group};
    use rustls::{CipherSuite as Cs, NamedGroup as G, ProtocolVersion as V};
    let s = setup();
    let b = Backend::named("plain");
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    // P-384 only, AES-256 first; copied OpenSSL spellings accepted.
    let t = Tether::start(&config_with(
        &tls_listener(
            &s,
            "groups = [\"P-384\"]\ncipher_suites = [\"TLS_AES_256_GCM_SHA384\", \"TLS13_AES_128_GCM_SHA256\", \"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]",
        ),
        b.addr,
        "",
    ));
    let ca = s.ca.cert_pem();
    let client = client_with(&ca, ALL, None, &both);
    assert_eq!(
        negotiated(t.addr, &client),
        (V::TLSv1_3, Cs::TLS13_AES_256_GCM_SHA384, G::secp384r1)
    );
    // A client without P-384 cannot agree on a group: the handshake fails, nothing is proxied.
    let x25519_only = client_with(&ca, ALL, Some(&[kx_group::X25519]), &both);
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let conn = ClientConnection::new(x25519_only, name).unwrap();
    let sock = TcpStream::connect(t.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let mut raw = Vec::new();
    assert!(tls.read_to_end(&mut raw).is_err() || raw.is_empty());

    // max_version = "1.2": a client offering both gets TLS 1.2, with the listener's TLS 1.2 order.
    let t12 = Tether::start(&config_with(
        &tls_listener(&s, "max_version = \"1.2\"\ngroups = [\"X25519\"]"),
        b.addr,
        "",
    ));
    assert_eq!(
        negotiated(t12.addr, &client),
        (
            V::TLSv1_2,
            Cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            G::X25519
        )
    );
}

#[test]
fn a_bad_tls_setting_names_its_file_line_and_key() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let listener = tls_listener(&s, "groups = [\"X25519\", \"curve9\"]");
    let text = config_with(&listener, "127.0.0.1:9".parse().unwrap(), "");
    std::fs::write(&path, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("groups")).unwrap() + 1;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("bad.toml:{line}")) && err.contains("listeners[0].tls.groups"),
        "{err}"
    );
    assert!(
        err.contains("unknown key-exchange group \"curve9\""),
        "{err}"
    );
}
