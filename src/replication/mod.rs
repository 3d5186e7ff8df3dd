//! Replication between tether nodes: peer links (TLS 1.3, mutual authentication) and frames.

pub mod link_tls;
