//! Helpers for end-to-end tests of the admin listener: its address from the start-up log.

use super::*;
use std::net::SocketAddr;

/// The admin listener's address, from the start-up line `admin API on http://ADDR …`.
pub fn admin_addr(t: &Tether) -> SocketAddr {
    let line = t.wait_log("admin API on http://");
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}
