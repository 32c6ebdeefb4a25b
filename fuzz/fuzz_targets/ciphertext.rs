//! cargo-fuzz target `ciphertext`: its body is `vaultgate::fuzzing::ciphertext` (shared with the fuzz smoke of
//! `cargo test`); see that module for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vaultgate::fuzzing::ciphertext::run(data));
