//! Fuzz target `oauth_request`: the invariants live in `tether::fuzzing::oauth_request`, shared with the
//! stable corpus replay test (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether::fuzzing::oauth_request(data));
