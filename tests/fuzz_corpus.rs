//! Replays every committed fuzz input (`fuzz/seeds/<target>/`, `fuzz/corpus/<target>/`) through the same
//! entry points the cargo-fuzz targets call (`tether::fuzzing`), on stable Rust, so CI guards every input
//! a fuzzer ever kept, crashes it found included.

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Replays the hand-written seeds (`fuzz/seeds/<target>/`) and the fuzzer's minimised corpus
/// (`fuzz/corpus/<target>/`).
fn replay(target: &str, entry: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = fuzz.join(kind).join(target);
        let before = files.len();
        files_under(&dir, &mut files);
        assert!(
            files.len() >= before + 10,
            "{target}: fewer than 10 files in {}",
            dir.display()
        );
    }
    files.sort();
    for file in &files {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            // A fuzzer running on the same corpus may have just replaced the file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(
            outcome.is_ok(),
            "{target}: invariant broken by {} ({:?})",
            file.display(),
            String::from_utf8_lossy(&data[..data.len().min(200)])
        );
    }
}

#[test]
fn request_head_corpus() {
    replay("request_head", tether::fuzzing::request_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", tether::fuzzing::chunked);
}

#[test]
fn response_head_corpus() {
    replay("response_head", tether::fuzzing::response_head);
}

#[test]
fn config_corpus() {
    replay("config", tether::fuzzing::config);
}

#[test]
fn replication_frame_corpus() {
    replay("replication_frame", tether::fuzzing::replication_frame);
}

#[test]
fn token_open_corpus() {
    replay("token_open", tether::fuzzing::token_open);
}

#[test]
fn session_cookie_corpus() {
    replay("session_cookie", tether::fuzzing::session_cookie);
}

#[test]
fn login_form_corpus() {
    replay("login_form", tether::fuzzing::login_form);
}

#[test]
fn oauth_request_corpus() {
    replay("oauth_request", tether::fuzzing::oauth_request);
}

#[test]
fn notify_input_corpus() {
    replay("notify_input", tether::fuzzing::notify_input);
}
