//! Fuzz target `replication_frame`: the invariants live in `tether::fuzzing::replication_frame`, shared with
//! the stable corpus replay test (`tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether::fuzzing::replication_frame(data));
