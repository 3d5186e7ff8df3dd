//! Test helpers shared by the section modules' tests: a valid base config to edit, and the errors a text gets,
//! by line and key.

use super::Machine;
use crate::config::load::load_str_on;

pub(super) const MACHINE: Machine = Machine { cpus: 2 };

/// A valid config; tests put extra sections before it or edit it.
pub(super) const BASE: &str = r#"[[listeners]]
address = "127.0.0.1:8080"

[clusters.app]
backends = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "app"
"#;

/// `(line, key, message)` of every error, in the order reported.
pub(super) fn errors(text: &str) -> Vec<(usize, String, String)> {
    match load_str_on(text, "t.toml", &MACHINE) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.into_iter()
                .map(|e| (e.line, e.key, e.message))
                .collect()
        }
    }
}

/// Asserts there is exactly one error, at `line` and `key`; returns its message.
#[track_caller]
pub(super) fn only(text: &str, line: usize, key: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1.as_str()), (line, key), "{errs:#?}");
    errs.into_iter().next().unwrap().2
}

/// `section` (two lines: header and one key) before `BASE`, so its key is on line 2.
pub(super) fn before(section: &str) -> String {
    format!("{section}\n{BASE}")
}

pub(super) fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from));
    BASE.replacen(from, to, 1)
}

/// Writes `text` to `name` in `dir` and returns its absolute path (test configs are not read from a file,
/// so a relative path in them would depend on the working directory).
pub(super) fn scratch_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}
