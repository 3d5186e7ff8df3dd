//! The admin API from the command line (`tether ctl`): a blocking HTTP/1.1 client over std::net (one
//! call per connection, `Connection: close`), over TLS with rustls when the admin listener speaks it
//! (`[admin] cert`, and with `client_ca` the client's certificate), and the tables people read.

use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Why a call failed before an answer came.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("talking to the admin API: {0}")]
    Io(#[from] std::io::Error),
    #[error("the admin API's answer is not HTTP: {0}")]
    Malformed(&'static str),
    #[error("TLS to the admin API: {0}")]
    Tls(String),
}

/// How to reach an HTTPS admin listener: the CAs its certificate chains to, the name to check it
/// against, and for mutual TLS this client's certificate.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub cacert: std::path::PathBuf,
    /// The name in the admin listener's certificate; default: the host of the address.
    pub server_name: Option<String>,
    /// Certificate chain and key (PEM) for mutual TLS.
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsOptions {
    fn connector(
        &self,
        address: &str,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ClientError> {
        let tls = |e: String| ClientError::Tls(e);
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::certs::load_chain(&self.cacert).map_err(|e| tls(e.to_string()))? {
            roots.add(c).map_err(|e| tls(e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::server::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = crate::tls::certs::load_chain(cert).map_err(|e| tls(e.to_string()))?;
                let key = crate::tls::certs::load_key(key).map_err(|e| tls(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(e.to_string()))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => address
                .rsplit_once(':')
                .map_or(address, |(h, _)| h)
                .trim_matches(|c| c == '[' || c == ']')
                .to_string(),
        };
        let name = ServerName::try_from(host).map_err(|e| tls(e.to_string()))?;
        Ok((Arc::new(config), name))
    }
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Where the admin API is and the token to present.
#[derive(Debug, Clone)]
pub struct Client {
    pub address: String,
    pub token: String,
    /// HTTPS (`[admin] cert`); `None`: plain HTTP.
    pub tls: Option<TlsOptions>,
}

impl Client {
    /// One call: `method path` with an optional JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let connect_err = |source| ClientError::Connect {
            address: self.address.clone(),
            source,
        };
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| {
                connect_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })?;
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(connect_err)?;
        // A reload parses the config and loads certificates: give it time.
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n",
            self.address,
            self.token,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        let mut raw = Vec::new();
        match &self.tls {
            None => {
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut raw)?;
            }
            Some(options) => {
                let (config, name) = options.connector(&self.address)?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let mut tls = rustls::StreamOwned::new(conn, s);
                tls.write_all(req.as_bytes())?;
                match tls.read_to_end(&mut raw) {
                    Ok(_) => {}
                    // The listener may close without close_notify once its answer is complete.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        parse_answer(&raw)
    }
}

/// Status and body of a complete `Content-Length` answer.
fn parse_answer(raw: &[u8]) -> Result<Answer, ClientError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ClientError::Malformed("no end of head"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| ClientError::Malformed("head not UTF-8"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::Malformed("no status"))?;
    let mut body = raw[end + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    if let Some(n) = length {
        body.truncate(n);
    }
    Ok(Answer { status, body })
}

/// Rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            l.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_tables() {
        let a = parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "{}"));
        assert!(parse_answer(b"garbage").is_err());
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
