//! The process log (not the access log): one timestamped line per event on stderr.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::SystemTime;

/// The level lives in `log`'s global maximum (one atomic), so the admin API can change it at run time
/// (`POST /api/log`).
struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = humantime::format_rfc3339_millis(SystemTime::now());
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("-");
        // One write per line so lines from several threads never interleave.
        let line = format!("{now} {:<5} [{name}] {}\n", record.level(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the stderr logger. `TETHER_LOG` (error, warn, info, debug, trace) overrides `default`.
pub fn init(default: LevelFilter) {
    let level = std::env::var("TETHER_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    if log::set_boxed_logger(Box::new(StderrLogger)).is_ok() {
        log::set_max_level(level);
    }
}
