//! `tether demo`: three small built-in backends on loopback and the embedded config that balances them.
//!
//! The backends are deliberately simple (a thread per connection, std sockets): they exist to show what
//! the balancer does — which backend answered, what headers it received, bodies streaming through, a slow
//! answer — not to be fast.

use crate::config::{self, BackendConfig, Config};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// The embedded demo configuration (also `configs/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.toml");

/// Starts the demo backends; returns the config to run the balancer with (listening on `listen`) and the
/// backends' addresses.
pub fn start(listen: &str, tls_listen: Option<&str>) -> Result<(Config, Vec<SocketAddr>), String> {
    let mut cfg =
        config::load_str(DEMO_CONFIG, "<embedded demo config>").map_err(|e| e.to_string())?;
    let listen_addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?} is not an ip:port address"))?;
    cfg.listeners[0].address = listen_addr.to_string();
    if let Some(tls_listen) = tls_listen {
        let addr: SocketAddr = tls_listen
            .parse()
            .map_err(|_| format!("--tls-listen {tls_listen:?} is not an ip:port address"))?;
        let dir = demo_cert_dir();
        crate::tls::generate::write_dev_certs(&dir)?;
        let mut tls_listener = cfg.listeners[0].clone();
        tls_listener.name = Some("demo-tls".into());
        tls_listener.address = addr.to_string();
        tls_listener.tls = Some(config::ListenerTls {
            certificates: vec![config::CertificateConfig {
                cert: dir.join("localhost.crt").display().to_string(),
                key: dir.join("localhost.key").display().to_string(),
                names: None,
            }],
            strict_sni: false,
            min_version: config::TlsVersion::default(),
            alpn: vec!["http/1.1".into()],
            plain_http: config::PlainHttpPolicy::Redirect,
        });
        cfg.listeners.push(tls_listener);
    }

    let mut addresses = Vec::new();
    for (i, port) in [9101u16, 9102, 9103].into_iter().enumerate() {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
            .map_err(|e| format!("cannot start demo backend: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        spawn_backend(listener, i + 1).map_err(|e| e.to_string())?;
        addresses.push(address);
    }
    let cluster = cfg
        .clusters
        .get_mut("demo")
        .ok_or("embedded demo config has no cluster \"demo\"")?;
    cluster.backends = addresses
        .iter()
        .map(|a| BackendConfig {
            address: a.to_string(),
            weight: 1,
            drain: false,
        })
        .collect();

    Ok((cfg, addresses))
}

/// Prints what to try, once the balancer listens on `listeners` (the plain one first, then TLS if any).
pub fn print_banner(
    listeners: &[SocketAddr],
    backends: &[SocketAddr],
    snapshot: &crate::snapshot::ConfigSnapshot,
) {
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let url = format!("http://{}", listeners[0]);
    println!(
        "tether demo: three backends on {}\n\
         balancer on {url} (Ctrl-C stops everything)\n\n\
         Try:\n  \
         curl -i {url}/                        # requests spread over the three backends\n  \
         for i in 1 2 3 4 5 6; do curl -s {url}/; done\n  \
         curl -s {url}/headers                 # what a backend receives (X-Forwarded-*)\n  \
         curl -s -d 'hello tether' {url}/echo  # request bodies stream through\n  \
         curl -s '{url}/slow?ms=1500'          # a slow backend answer\n  \
         curl -i {url}/ -H 'Host: bad host'    # bad input gets a clear 400\n",
        list.join(", ")
    );
    if let (Some(tls_addr), Some(Some(_))) = (listeners.get(1), snapshot.listener_tls.get(1)) {
        let ca = demo_cert_dir().join("ca.crt");
        println!(
            "HTTPS on https://localhost:{port} (development CA: {ca}):\n  \
             curl --cacert {ca} https://localhost:{port}/\n  \
             curl -i http://{tls_addr}/   # plain HTTP on the TLS port is redirected\n",
            port = tls_addr.port(),
            ca = ca.display(),
        );
    }
    println!("Access log below (one line per request):");
}

fn spawn_backend(listener: TcpListener, number: usize) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("demo-backend-{number}"))
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name(format!("demo-backend-{number}-conn"))
                    .spawn(move || {
                        let _ = serve_connection(stream, number);
                    });
            }
        })?;
    Ok(())
}

fn serve_connection(mut stream: TcpStream, number: usize) -> io::Result<()> {
    let local = stream.local_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        // Read until a complete head is buffered.
        let (head_len, method, path, headers_text, content_length, keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[..filled]) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut text = String::new();
                    let mut length = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        let value = String::from_utf8_lossy(h.value);
                        text.push_str(&format!("{}: {}\n", h.name, value));
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        if h.name.eq_ignore_ascii_case("connection") {
                            let v = value.to_ascii_lowercase();
                            close = v.contains("close") || (close && !v.contains("keep-alive"));
                        }
                    }
                    break (
                        n,
                        req.method.unwrap_or("GET").to_string(),
                        req.path.unwrap_or("/").to_string(),
                        text,
                        length,
                        !close,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if filled == buf.len() {
                        return respond(&mut stream, 431, "head too large\n", false, number);
                    }
                    let n = stream.read(&mut buf[filled..])?;
                    if n == 0 {
                        return Ok(());
                    }
                    filled += n;
                }
                Err(_) => return respond(&mut stream, 400, "bad request\n", false, number),
            }
        };
        // Read the body (Content-Length only: the balancer in front streams chunked bodies through, and
        // a demo backend does not need to decode them).
        let mut body = Vec::with_capacity(content_length.min(1 << 20));
        body.extend_from_slice(&buf[head_len..filled.min(head_len + content_length)]);
        let extra_start = head_len + body.len();
        let leftover = buf[extra_start..filled].to_vec();
        while body.len() < content_length {
            let mut chunk = vec![0u8; (content_length - body.len()).min(64 * 1024)];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        buf[..leftover.len()].copy_from_slice(&leftover);
        filled = leftover.len();

        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        match route {
            "/headers" => {
                let text = format!("{method} {path}\n{headers_text}");
                respond(&mut stream, 200, &text, keep_alive, number)?;
            }
            "/echo" => {
                let text = String::from_utf8_lossy(&body).into_owned();
                respond(&mut stream, 200, &text, keep_alive, number)?;
            }
            "/slow" => {
                let ms: u64 = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000)
                    .min(60_000);
                std::thread::sleep(Duration::from_millis(ms));
                let text = format!("backend {number} ({local}) answered after {ms} ms\n");
                respond(&mut stream, 200, &text, keep_alive, number)?;
            }
            _ => {
                let text = format!("hello from backend {number} ({local}): {method} {path}\n");
                respond(&mut stream, 200, &text, keep_alive, number)?;
            }
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    keep_alive: bool,
    number: usize,
) -> io::Result<()> {
    let reason = crate::http::canned::reason_phrase(status);
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Backend: {number}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Where `tether demo --tls` writes its development certificates (one directory per run).
fn demo_cert_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tether-demo-certs-{}", std::process::id()))
}
