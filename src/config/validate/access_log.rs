//! `[access_log]`: a target to write to.

use super::Validator;
use crate::config::schema::Config;

impl Validator {
    pub(super) fn access_log(&mut self, config: &Config) {
        if config.access_log.target.trim().is_empty() {
            self.error(
                "access_log.target",
                "must not be empty: use \"stdout\", \"stderr\" or a file path (or set enabled = false)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    #[test]
    fn access_log_target_not_empty() {
        let m = only(
            &before("[access_log]\ntarget = \"\""),
            2,
            "access_log.target",
        );
        assert!(m.contains("\"stdout\""), "{m}");
    }
}
