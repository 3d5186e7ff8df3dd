//! Fuzz target `request_head`: the invariants live in `tether::fuzzing::request_head`, shared with the stable corpus replay
//! test (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether::fuzzing::request_head(data));
