//! `[[listeners]]`: at least one, each with a name if any, a parseable and unique address, and a backlog in range.
//! Their `tls` tables are checked in `tls.rs`.

use super::Validator;
use super::address::parse_socket_addr;
use crate::config::schema::ListenerConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;

impl Validator {
    pub(super) fn listeners(&mut self, listeners: &[ListenerConfig]) {
        if listeners.is_empty() {
            self.error(
                "listeners",
                "at least one listener is required, e.g. [[listeners]] with address = \"0.0.0.0:80\"",
            );
        }
        let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, l) in listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if l.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                self.error(
                    format!("{key}.name"),
                    "must not be empty (leave it out to use the address)",
                );
            }
            match parse_socket_addr(&l.address) {
                Ok(addr) => {
                    // Port 0 asks the kernel for a free port, so two such listeners do not collide.
                    if addr.port() != 0 {
                        if let Some(&first) = seen.get(&addr) {
                            self.conflict(
                                format!("{key}.address"),
                                format!("duplicate listener address {addr}"),
                                format!("listeners[{first}].address"),
                            );
                        } else {
                            seen.insert(addr, i);
                        }
                    }
                }
                Err(e) => self.error(format!("{key}.address"), e),
            }
            if l.backlog == 0 || l.backlog > 65535 {
                self.error(
                    format!("{key}.backlog"),
                    format!("must be between 1 and 65535, got {}", l.backlog),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    #[test]
    fn listener_required() {
        let text = "[clusters.app]\nbackends = [{ address = \"127.0.0.1:9001\" }]\n[[routes]]\ncluster = \"app\"\n";
        let m = only(text, 0, "listeners");
        assert!(m.contains("at least one listener"), "{m}");
        let m = only(&format!("listeners = []\n{text}"), 1, "listeners");
        assert!(m.contains("at least one listener"), "{m}");
    }

    #[test]
    fn listener_address_must_be_ip_and_port() {
        for (address, hint) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:http", "not a number"),
            ("127.0.0.1:70000", "not a number"),
            ("localhost:8080", "\"127.0.0.1:8080\""),
            ("lb.example.com:80", "host name"),
            ("::1", "\"[::1]:8080\""),
            ("fe80::1:80", "brackets"),
            ("300.1.2.3:80", "not an IP address"),
            ("", "empty"),
            (" 127.0.0.1:80", "spaces"),
        ] {
            let m = only(
                &base_with("127.0.0.1:8080", address),
                2,
                "listeners[0].address",
            );
            assert!(m.contains(hint), "{address}: {m}");
        }
        for ok in ["0.0.0.0:80", "[::]:443", "[::1]:8080", "127.0.0.1:0"] {
            assert_eq!(errors(&base_with("127.0.0.1:8080", ok)), [], "{ok}");
        }
    }

    #[test]
    fn listener_addresses_are_unique() {
        let text =
            format!("{BASE}\n[[listeners]]\nname = \"again\"\naddress = \"127.0.0.1:8080\"\n");
        let m = only(&text, 12, "listeners[1].address");
        assert!(
            m.contains("duplicate listener address 127.0.0.1:8080"),
            "{m}"
        );
        assert!(m.contains("(see listeners[0].address, line 2)"), "{m}");
        // Port 0 means "any free port": two of them do not collide.
        let text = format!(
            "{BASE}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n"
        );
        assert_eq!(errors(&text), []);
    }

    #[test]
    fn listener_backlog_range() {
        for backlog in ["0", "65536"] {
            let text = base_with("\n\n", &format!("\nbacklog = {backlog}\n\n"));
            let m = only(&text, 3, "listeners[0].backlog");
            assert!(m.contains("between 1 and 65535"), "{m}");
        }
        assert_eq!(errors(&base_with("\n\n", "\nbacklog = 65535\n\n")), []);
    }

    #[test]
    fn listener_name_not_empty() {
        only(
            &base_with("\n\n", "\nname = \" \"\n\n"),
            3,
            "listeners[0].name",
        );
    }
}
