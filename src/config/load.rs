//! Reads a config file and turns every problem into a `file:line: key: message` error.

use super::schema::Config;
use std::fmt;
use std::path::Path;

/// One problem in a configuration file, located by file, line and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given (or a label such as `<embedded demo config>`).
    pub file: String,
    /// 1-based line, 0 when the problem has no single line (e.g. a missing section).
    pub line: usize,
    /// Dotted key path, e.g. `clusters.api.backends[1].address`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// Every problem found in one file (loading reports them all, not just the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    todo!()
}

/// Loads and validates configuration text; `file` labels errors.
pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    todo!()
}
