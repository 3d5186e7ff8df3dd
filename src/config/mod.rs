//! Configuration: the TOML schema, loading with errors that name file, line and key, and validation.

mod load;
mod names;
pub(crate) mod schema;
mod validate;

pub use load::{ConfigError, ConfigErrors, load_file, load_str};
pub(crate) use load::{locate, syntax_error};
pub use schema::*;
pub(crate) use validate::is_header_char;
