//! `[timeouts]`: every timeout greater than zero.

use super::Validator;
use crate::config::schema::Config;
use std::time::Duration;

impl Validator {
    pub(super) fn timeouts(&mut self, config: &Config) {
        let t = &config.timeouts;
        let all: [(&str, Duration); 9] = [
            ("client_head", t.client_head),
            ("client_idle", t.client_idle),
            ("client", t.client),
            ("connect", t.connect),
            ("server", t.server),
            ("tunnel", t.tunnel),
            ("upstream_idle", t.upstream_idle),
            ("shutdown_grace", t.shutdown_grace),
            ("tls_handshake", t.tls_handshake),
        ];
        for (name, value) in all {
            if value.is_zero() {
                self.error(
                    format!("timeouts.{name}"),
                    "must be greater than zero (e.g. \"10s\" or \"500ms\")",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    #[test]
    fn timeouts_non_zero() {
        let names = [
            "client_head",
            "client_idle",
            "client",
            "connect",
            "server",
            "tunnel",
            "upstream_idle",
            "shutdown_grace",
        ];
        // Written in reverse order: errors still come in file order.
        let mut text = String::from("[timeouts]\n");
        for name in names.iter().rev() {
            text.push_str(&format!("{name} = \"0s\"\n"));
        }
        let errs = errors(&format!("{text}{BASE}"));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.0, e.1.as_str())).collect();
        let want: Vec<(usize, String)> = names
            .iter()
            .rev()
            .enumerate()
            .map(|(i, n)| (i + 2, format!("timeouts.{n}")))
            .collect();
        let want: Vec<(usize, &str)> = want.iter().map(|(l, k)| (*l, k.as_str())).collect();
        assert_eq!(got, want);
        assert!(errs.iter().all(|e| e.2.contains("greater than zero")));
        assert_eq!(errors(&before("[timeouts]\nconnect = \"1ms\"")), []);
    }
}
