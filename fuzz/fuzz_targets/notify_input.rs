//! Fuzz target `notify_input`: the invariants live in `tether::fuzzing::notify_input`, shared with the
//! stable corpus replay test (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether::fuzzing::notify_input(data));
