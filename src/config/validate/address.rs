//! Socket addresses as listeners and backends write them: `ip:port` or `[ipv6]:port`, never a host name.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Parses `ip:port` or `[ipv6]:port`; host names (even `localhost`, which may mean 127.0.0.1 or ::1) are
/// refused with a hint, since tether never resolves names.
pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    const FORM: &str = "expected ip:port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"";
    if s.trim().is_empty() {
        return Err(format!("address is empty; {FORM}"));
    }
    if s.trim() != s {
        return Err(format!("address \"{s}\" has surrounding spaces; {FORM}"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(_) => format!("address \"{s}\" has no port; write e.g. \"{s}:8080\""),
            IpAddr::V6(_) => format!(
                "address \"{s}\" has no port; IPv6 addresses go in brackets before the port, e.g. \"[{s}]:8080\""
            ),
        });
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("address \"{s}\" has no port; {FORM}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "address \"{s}\": port \"{port}\" is not a number from 0 to 65535"
        ));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<Ipv6Addr>().is_ok() && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "address \"{s}\": IPv6 addresses go in brackets before the port, e.g. \"[{bare}]:{port}\""
        ));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Err(format!(
            "host names are not resolved, and localhost may mean 127.0.0.1 or ::1: write \"127.0.0.1:{port}\" or \"[::1]:{port}\""
        ));
    }
    if !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && host.chars().any(|c| c.is_ascii_alphabetic())
    {
        return Err(format!(
            "\"{host}\" is a host name; host names are not resolved: write the IP address, e.g. \"10.0.0.5:{port}\""
        ));
    }
    Err(format!("\"{host}\" is not an IP address; {FORM}"))
}
