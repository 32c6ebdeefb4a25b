//! cargo-fuzz target `vault_json`: its body is `vaultgate::fuzzing::vault_json` (shared with the fuzz smoke of
//! `cargo test`); see that module for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vaultgate::fuzzing::vault_json::run(data));
