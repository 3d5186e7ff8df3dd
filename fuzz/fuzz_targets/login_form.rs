//! Fuzz target `login_form`: the invariants live in `tether::fuzzing::login_form`, shared with the stable
//! corpus replay test (`tests/fuzz_corpus.rs`). On top of them, a `return_to` the check accepts must keep a
//! browser on the site when used as a `Location` (resolved by the `url` crate, a WHATWG URL parser).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tether::fuzzing::login_form(data);
    let text = String::from_utf8_lossy(data);
    if tether::auth::login_form::check_return_to(&text).is_ok() {
        let base = url::Url::parse("https://site.example/here").unwrap();
        let target = base.join(&text).expect("an accepted return_to resolves");
        assert_eq!(target.origin(), base.origin(), "{text:?} leaves the site");
    }
});
