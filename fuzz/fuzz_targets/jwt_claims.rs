//! cargo-fuzz target `jwt_claims`: its body is `vaultgate::fuzzing::jwt_claims` (shared with the fuzz smoke of
//! `cargo test`); see that module for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vaultgate::fuzzing::jwt_claims::run(data));
