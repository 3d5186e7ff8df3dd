//! Command line, URL and duration parsing.

use std::time::Duration;

use clap::Parser;

const EXAMPLES: &str = "\
Examples:
  # Closed loop, like wrk: 2 threads, 100 connections, 30 seconds
  tether-bench -t2 -c100 -d30s http://127.0.0.1:8080/

  # Open loop at 20000 requests/s total, latency from the intended send time
  tether-bench -t2 -c200 -d60s -R20000 http://127.0.0.1:8080/

  # Pipelining 16 deep, JSON on stdout, percentile distribution to a file
  tether-bench -c50 --pipeline 16 --json --hgrm out.hgrm http://127.0.0.1:8080/

  # TLS handshake rate with a new connection per request, no resumption
  tether-bench -c50 --new-conn --no-resume --cacert ca.pem https://lb.test:8443/

  # POST with a 1 KiB body and headers
  tether-bench -m POST --body-size 1024 -H 'Content-Type: text/plain' http://127.0.0.1:8080/upload

  # Weighted request mix from a scenario file, sticky sessions via cookies
  tether-bench -c100 --scenario mix.txt --sessions http://127.0.0.1:8080/

Durations take a unit: 500ms, 10s, 2m, 1h (a bare number means seconds).
Errors are counted over the whole run, warm-up included; requests, bytes,
latency and status codes only after the warm-up.";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tether-bench",
    version,
    args_override_self = true,
    about = "HTTP/1.1 load generator: closed and open loop, keep-alive, pipelining, TLS, sessions",
    after_help = EXAMPLES
)]
pub struct Args {
    /// Target URL: http://host[:port][/path] or https://...
    pub url: String,

    /// Connections (virtual users) in total, spread over the threads
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,

    /// Worker threads
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,

    /// Measured duration (after the warm-up)
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Open loop: send this many requests per second in total, on a fixed
    /// schedule; latency counts from each request's intended send time
    #[arg(short = 'R', long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Warm-up before measuring (load runs, nothing is counted but errors)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Per-request timeout (counted as a timeout error; the connection is replaced)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Requests in flight per connection (HTTP/1.1 pipelining; refilled in one
    /// write once half of them are answered)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pipeline: u32,

    /// Open a new connection for every request (adds Connection: close)
    #[arg(long)]
    pub new_conn: bool,

    /// Connect from this local address (e.g. 127.0.0.2 on loopback: another client as the target sees it)
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,

    /// Request method
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,

    /// Extra request header 'Name: value' (repeatable; added to scenario requests too)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Send a generated body of N bytes with Content-Length
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub body_size: usize,

    /// Send this exact body with Content-Length (a form a server must read: a token to introspect)
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["body_size", "scenario"])]
    pub body: Option<String>,

    /// Weighted request mix from a scenario file (see README); replaces -m, the URL path and --body-size
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<String>,

    /// Session-aware virtual users: keep cookies from Set-Cookie and send them back
    #[arg(long)]
    pub sessions: bool,

    /// TLS server name (SNI and certificate check); default: the URL host
    #[arg(long)]
    pub sni: Option<String>,

    /// PEM file of CA certificates to trust (default: the system bundle)
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<String>,

    /// Do not verify the server certificate
    #[arg(long)]
    pub insecure: bool,

    /// Disable TLS session resumption (on by default, shared by all connections)
    #[arg(long)]
    pub no_resume: bool,

    /// Offer only this TLS version: 1.2 or 1.3 (default: both)
    #[arg(long, value_name = "VERSION")]
    pub tls_version: Option<String>,

    /// Offer only these key-exchange groups, in order (rustls names: X25519, secp256r1, X25519MLKEM768, …)
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub tls_groups: Vec<String>,

    /// Offer only these cipher suites, in order (rustls names: TLS13_AES_128_GCM_SHA256, …)
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub tls_ciphers: Vec<String>,

    /// Print one JSON object with all figures to stdout (instead of the text report)
    #[arg(long)]
    pub json: bool,

    /// Write the latency percentile distribution (.hgrm text format, milliseconds) to FILE
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<String>,

    /// No live progress line on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 500ms, 10s, 2m)"))?;
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("unknown duration unit {u:?} in {s:?}")),
    };
    let secs = v * mult;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("invalid rate {s:?}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("rate must be a positive number of requests per second".into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Host as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'.
    pub path: String,
}

impl Url {
    /// Value for the Host header: the port is omitted when it is the default.
    pub fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

pub fn parse_url(s: &str) -> Result<Url, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("URL must start with http:// or https://: {s:?}"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = match path.find('#') {
        Some(i) => path[..i].to_string(),
        None => path,
    };
    if authority.contains('@') {
        return Err("user info in the URL is not supported".into());
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let end = r.find(']').ok_or("unterminated IPv6 address in URL")?;
        let host = &r[..end];
        let after = &r[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("bad URL authority {authority:?}")),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("URL has no host: {s:?}"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad port in URL: {p:?}"))?,
        None if tls => 443,
        None => 80,
    };
    Ok(Url {
        tls,
        host,
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:8080/a/b?c=d#frag").unwrap();
        assert_eq!(
            u,
            Url {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/a/b?c=d".into()
            }
        );
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        let u = parse_url("https://example.com").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/"));
        assert_eq!(u.host_header(), "example.com");
        let u = parse_url("http://[::1]:9000?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/?x=1")
        );
        assert_eq!(u.host_header(), "[::1]:9000");
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
    }
}
