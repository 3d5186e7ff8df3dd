//! `[notifications]` as the request path reads it: queue bounds, delivery settings and the publish
//! secret, in the config snapshot (a reload changes them for the next request).

use crate::config::{DeleteOn, NotificationsConfig, WhenFull};
use std::time::Duration;

/// The compiled `[notifications]` section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_count: usize,
    pub max_bytes: usize,
    pub when_full: WhenFull,
    /// Time to live of a notification, seconds.
    pub ttl: u32,
    pub piggyback_bytes: usize,
    /// For notifications published on the publish listener.
    pub delete_on: DeleteOn,
    pub keepalive: Duration,
    pub max_wait: Duration,
    /// SHA-256 of the publish listener's bearer secret (compared in constant time, digest to digest, so
    /// not even the secret's length shows in the timing).
    pub publish_secret: Option<[u8; 32]>,
}

impl Settings {
    pub fn build(c: &NotificationsConfig) -> Settings {
        use sha2::Digest;
        Settings {
            max_count: c.max_count,
            max_bytes: c.max_bytes,
            when_full: c.when_full,
            ttl: c.ttl.as_secs().min(u64::from(u32::MAX)) as u32,
            piggyback_bytes: c.piggyback_bytes,
            delete_on: c.delete_on,
            keepalive: c.keepalive,
            max_wait: c.max_wait,
            publish_secret: c
                .publish_secret
                .as_ref()
                .map(|s| sha2::Sha256::digest(s.as_bytes()).into()),
        }
    }

    /// Whether `presented` is the publish secret: SHA-256 of both compared in constant time.
    pub fn secret_matches(&self, presented: &[u8]) -> bool {
        use sha2::Digest;
        let Some(want) = &self.publish_secret else {
            return false;
        };
        let got: [u8; 32] = sha2::Sha256::digest(presented).into();
        aws_lc_rs::constant_time::verify_slices_are_equal(want, &got).is_ok()
    }
}
