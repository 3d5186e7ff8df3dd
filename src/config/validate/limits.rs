//! `[limits]`: head size, header count and per-client connections within what the parser and workers allow.

use super::{KIB, MIB, Validator};
use crate::config::schema::Config;

/// Upper bound for `limits.max_headers`: the HTTP parser's fixed header array size.
use crate::http::head::MAX_HEADERS_CAP;

impl Validator {
    pub(super) fn limits(&mut self, config: &Config) {
        let l = &config.limits;
        if l.max_head_size < KIB || l.max_head_size > MIB {
            self.error(
                "limits.max_head_size",
                format!(
                    "must be between 1024 (1 KiB) and 1048576 (1 MiB) bytes, got {}",
                    l.max_head_size
                ),
            );
        }
        self.range("limits.max_headers", l.max_headers, 1, MAX_HEADERS_CAP, "");
        let per_client = l.max_connections_per_client;
        if per_client > config.workers.max_connections {
            self.error(
                "limits.max_connections_per_client",
                format!(
                    "must be at most workers.max_connections ({}) or 0 for no limit, got {per_client}",
                    config.workers.max_connections
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_HEADERS_CAP;
    use crate::config::validate::testing::*;
    #[test]
    fn limits_ranges() {
        for bad in [1023, 1024 * 1024 + 1] {
            only(
                &before(&format!("[limits]\nmax_head_size = {bad}")),
                2,
                "limits.max_head_size",
            );
        }
        for bad in [0, MAX_HEADERS_CAP + 1] {
            let m = only(
                &before(&format!("[limits]\nmax_headers = {bad}")),
                2,
                "limits.max_headers",
            );
            assert!(m.contains("between 1 and 512"), "{m}");
        }
        assert_eq!(
            errors(&before(
                "[limits]\nmax_head_size = 1048576\nmax_headers = 512"
            )),
            []
        );
        let m = only(
            &before("[limits]\nmax_connections_per_client = 10001"),
            2,
            "limits.max_connections_per_client",
        );
        assert!(m.contains("at most workers.max_connections (10000)"), "{m}");
        assert_eq!(
            errors(&before("[limits]\nmax_connections_per_client = 10000")),
            []
        );
    }
}
