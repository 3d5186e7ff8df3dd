//! `[qos]` and the clusters' queue limits (`max_inflight`, `queue_timeout`).

use super::{Validator, is_header_char};
use crate::config::names::quote_key;
use crate::config::schema::Config;

impl Validator {
    /// `[qos]` and the clusters' queue limits.
    pub(super) fn qos(&mut self, config: &Config) {
        if config.qos.aging.is_zero() {
            self.error("qos.aging", "must be greater than zero (e.g. \"1s\")");
        }
        if let Some(h) = &config.qos.priority_header {
            if h.is_empty() || !h.chars().all(is_header_char) {
                self.error("qos.priority_header", format!("{h:?} is not a header name"));
            }
        }
        for (name, c) in &config.clusters {
            let key = format!("clusters.{}", quote_key(name));
            if c.max_inflight > 0 && c.queue_timeout.is_zero() {
                self.error(
                    format!("{key}.queue_timeout"),
                    "must be greater than zero (e.g. \"10s\")",
                );
            }
        }
    }
}
