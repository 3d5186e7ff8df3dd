//! `[workers]`: ranges of the per-worker settings, and `pin_cpus` entries that exist on this machine.

use super::{KIB, MIB, Machine, Validator};
use crate::config::schema::Config;
use std::time::Duration;

impl Validator {
    pub(super) fn workers(&mut self, config: &Config, machine: &Machine) {
        let w = &config.workers;
        if w.max_connections == 0 {
            self.error(
                "workers.max_connections",
                "must be at least 1 (it is the number of client connections each worker accepts)",
            );
        }
        if w.buffer_size < KIB || w.buffer_size > MIB {
            self.error(
                "workers.buffer_size",
                format!(
                    "must be between 1024 (1 KiB) and 1048576 (1 MiB) bytes, got {}",
                    w.buffer_size
                ),
            );
        }
        self.range("workers.accept_batch", w.accept_batch, 1, 4096, "");
        if w.busy_poll > Duration::from_millis(10) {
            self.error(
                "workers.busy_poll",
                "must be at most \"10ms\" (e.g. \"200us\"); a longer spin only burns CPU",
            );
        }
        if w.batch_window > Duration::from_millis(1) {
            self.error(
                "workers.batch_window",
                "must be at most \"1ms\" (e.g. \"60us\"); it is latency added to requests under load",
            );
        }
        self.range("workers.batch_target", w.batch_target, 1, 1024, "");
        if w.upstream_idle_pool > 65536 {
            self.error(
                "workers.upstream_idle_pool",
                format!(
                    "must be at most 65536, got {} (0 disables pooling)",
                    w.upstream_idle_pool
                ),
            );
        }
        for (i, &cpu) in w.pin_cpus.iter().enumerate() {
            if cpu >= machine.cpus {
                let max = machine.cpus.saturating_sub(1);
                let plural = if machine.cpus == 1 { "" } else { "s" };
                self.error(
                    format!("workers.pin_cpus[{i}]"),
                    format!(
                        "CPU {cpu} does not exist: this machine has {} CPU{plural}, numbered 0 to {max}",
                        machine.cpus
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    #[test]
    fn workers_max_connections_at_least_1() {
        only(
            &before("[workers]\nmax_connections = 0"),
            2,
            "workers.max_connections",
        );
    }

    #[test]
    fn workers_buffer_size_range() {
        for bad in [1023, 1024 * 1024 + 1] {
            let m = only(
                &before(&format!("[workers]\nbuffer_size = {bad}")),
                2,
                "workers.buffer_size",
            );
            assert!(m.contains("between 1024"), "{m}");
        }
        for ok in [1024, 1024 * 1024] {
            assert_eq!(
                errors(&before(&format!("[workers]\nbuffer_size = {ok}"))),
                []
            );
        }
    }

    #[test]
    fn workers_accept_batch_range() {
        for bad in [0, 4097] {
            only(
                &before(&format!("[workers]\naccept_batch = {bad}")),
                2,
                "workers.accept_batch",
            );
        }
        assert_eq!(errors(&before("[workers]\naccept_batch = 4096")), []);
    }

    #[test]
    fn workers_batching_bounds() {
        only(
            &before("[workers]\nbatch_window = \"2ms\""),
            2,
            "workers.batch_window",
        );
        for bad in [0, 1025] {
            only(
                &before(&format!("[workers]\nbatch_target = {bad}")),
                2,
                "workers.batch_target",
            );
        }
        assert_eq!(
            errors(&before(
                "[workers]\nbatch_window = \"1ms\"\nbatch_target = 1024"
            )),
            []
        );
        assert_eq!(errors(&before("[workers]\nbatch_window = \"0s\"")), []);
    }

    #[test]
    fn workers_upstream_idle_pool_at_most_65536() {
        only(
            &before("[workers]\nupstream_idle_pool = 65537"),
            2,
            "workers.upstream_idle_pool",
        );
        assert_eq!(errors(&before("[workers]\nupstream_idle_pool = 0")), []);
    }

    #[test]
    fn workers_pin_cpus_exist() {
        let m = only(
            &before("[workers]\npin_cpus = [\n  1,\n  2,\n]"),
            4,
            "workers.pin_cpus[1]",
        );
        assert_eq!(
            m,
            "CPU 2 does not exist: this machine has 2 CPUs, numbered 0 to 1"
        );
        assert_eq!(errors(&before("[workers]\npin_cpus = [0, 1, 0]")), []);
    }
}
