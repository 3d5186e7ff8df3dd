//! Fuzz target `session_cookie`: the invariants live in `tether::fuzzing::session_cookie`, shared with the
//! stable corpus replay test (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether::fuzzing::session_cookie(data));
