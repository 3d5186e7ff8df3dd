//! Semantic checks on a parsed config: addresses, names, references, ranges.
//!
//! Each check names the offending key by its dotted path (`clusters.app.backends[1].weight`); `load.rs` turns
//! the path into a line. Every problem is collected, so one run reports them all.
//!
//! This file holds what every section shares (`Issue`, `Machine`, the `validate` entry point that runs
//! the sections in turn); each section of the file has its own module beside it, with its tests.

mod access_log;
mod address;
mod admin;
mod auth;
mod cluster;
mod clusters;
mod health;
mod limits;
mod listeners;
mod notifications;
mod qos;
mod rate_limits;
mod routes;
mod sessions;
mod store;
#[cfg(test)]
mod testing;
mod timeouts;
mod tls;
mod uploads;
mod workers;

use super::schema::Config;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// One semantic problem: the key it is about, what is wrong, and optionally another key it conflicts with
/// (e.g. the first of two duplicates), which `load.rs` points to by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub key: String,
    pub message: String,
    pub related: Option<String>,
}

/// Facts about the machine that validation depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine {
    /// CPUs online; `workers.pin_cpus` entries must be below it.
    pub cpus: usize,
}

impl Machine {
    pub(super) fn detect() -> Self {
        Machine {
            cpus: online_cpus(),
        }
    }
}

/// The number of CPUs online on the machine (not the ones this process may use: a CPU quota or affinity mask,
/// e.g. after a thread was pinned, must not make a valid `pin_cpus` fail on reload).
fn online_cpus() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system setting.
        // One of the crate's two `unsafe` (the other: the demo cluster's SIGTERM): a plain libc query with no pointers; `sysconf` is thread-safe.
        #[allow(unsafe_code)]
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n > 0 {
            return n as usize;
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Checks everything `serde` cannot: returns the config unchanged, or every problem found.
pub(crate) fn validate(config: Config, machine: &Machine) -> Result<Config, Vec<Issue>> {
    let mut v = Validator { issues: Vec::new() };
    v.workers(&config, machine);
    v.limits(&config);
    v.timeouts(&config);
    v.access_log(&config);
    v.listeners(&config.listeners);
    v.clusters(&config);
    v.shared_backend_health(&config);
    v.routes(&config);
    v.tls(&config);
    v.sessions(&config);
    v.qos(&config);
    v.cluster(&config);
    v.auth(&config);
    v.rate_limits(&config);
    v.notifications(&config);
    v.uploads(&config);
    v.admin(&config);
    v.store(&config);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(v.issues)
    }
}

/// Collects the issues; each section module adds an `impl Validator` with its checks.
struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            key: key.into(),
            message: message.into(),
            related: None,
        });
    }

    fn conflict(&mut self, key: String, message: String, related: String) {
        self.issues.push(Issue {
            key,
            message,
            related: Some(related),
        });
    }

    /// `value` must be in `min..=max`; `unit` follows the numbers in the message (e.g. " bytes").
    fn range(&mut self, key: &str, value: usize, min: usize, max: usize, unit: &str) {
        if value < min || value > max {
            self.error(
                key,
                format!("must be between {min} and {max}{unit}, got {value}"),
            );
        }
    }
}

/// A character of an RFC 9110 token, as header names are.
pub(crate) fn is_header_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::Machine;
    use crate::config::load::load_str_on;
    use crate::config::validate::testing::*;

    #[test]
    fn base_is_valid() {
        assert_eq!(errors(BASE), []);
    }

    #[test]
    fn detected_machine_has_a_cpu() {
        assert!(Machine::detect().cpus >= 1);
    }

    #[test]
    fn all_errors_reported_in_file_order() {
        let text = r#"[[routes]]
host = "a.*"
cluster = "nope"

[[listeners]]
address = "localhost:80"
backlog = 0

[clusters.app]
retries = 99
backends = [{ address = "127.0.0.1:1", weight = 0 }]

[workers]
buffer_size = 1

[timeouts]
connect = "0s"
"#;
        let errs = errors(text);
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (2, "routes[0].host"),
                (3, "routes[0].cluster"),
                (6, "listeners[0].address"),
                (7, "listeners[0].backlog"),
                (10, "clusters.app.retries"),
                (11, "clusters.app.backends[0].weight"),
                (14, "workers.buffer_size"),
                (17, "timeouts.connect"),
            ]
        );
        let shown = load_str_on(text, "lb.toml", &MACHINE)
            .unwrap_err()
            .to_string();
        assert_eq!(shown.lines().count(), 8);
        assert!(shown.starts_with("lb.toml:2: routes[0].host: "), "{shown}");
    }

    #[test]
    fn fixture_errors() {
        let text = include_str!("../../../tests/fixtures/config/errors.toml");
        let got: Vec<(usize, String)> = errors(text).into_iter().map(|e| (e.0, e.1)).collect();
        let got: Vec<(usize, &str)> = got.iter().map(|(l, k)| (*l, k.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "workers.buffer_size"),
                (6, "listeners[0].address"),
                (9, "clusters.app.backends[0].weight"),
                (12, "routes[0].host"),
                (13, "routes[0].cluster"),
            ]
        );
    }
}
