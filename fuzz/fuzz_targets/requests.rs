//! cargo-fuzz target `requests`: its body is `vaultgate::fuzzing::requests` (shared with the fuzz smoke of
//! `cargo test`); see that module for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vaultgate::fuzzing::requests::run(data));
