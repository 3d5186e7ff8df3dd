//! Fuzz target `token_open`: the invariants live in `tether::fuzzing::token_open`, shared with the stable
//! corpus replay test (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether::fuzzing::token_open(data));
