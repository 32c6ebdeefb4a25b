//! Captures the gateway's log of the whole run (debug level) and checks it for secrets: every
//! value tests registered (plaintexts of note, JWTs, passwords, the root token, secret values),
//! anything shaped like a JWT, and anything shaped like a Vault token.

use crate::support::Env;
use std::{fs::File, path::PathBuf, sync::Mutex};

/// Sends every log line of this process to a file; returns its path.
pub fn capture() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-gateway.log");
    let file = File::create(&path).expect("create the log capture file");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("vaultgate=debug,info"))
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .init();
    path
}

/// Where a Vault service token (`s.` + 24 characters) appears in `text`.
fn vault_token_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(26)).find(|&i| {
        (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes[i] == b's'
            && bytes[i + 1] == b'.'
            && bytes[i + 2..i + 26].iter().all(u8::is_ascii_alphanumeric)
            && bytes.get(i + 26).is_none_or(|b| !b.is_ascii_alphanumeric())
    })
}

/// The leaks found in the captured log (empty when clean).
pub fn check(path: &PathBuf, env: &Env) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut leaks = Vec::new();
    if text.lines().count() < 50 {
        leaks.push(format!("only {} log lines captured: the capture is not working", text.lines().count()));
    }
    for secret in env.secrets() {
        if secret.len() >= 6 && text.contains(&secret) {
            leaks.push(format!(
                "a registered secret ({} bytes, starts {:?}) is in the log",
                secret.len(),
                &secret[..3]
            ));
        }
    }
    if text.contains("eyJ") {
        leaks.push("something shaped like a JWT (eyJ…) is in the log".into());
    }
    if text.contains("PRIVATE KEY-----") {
        leaks.push("something shaped like a PEM private key is in the log".into());
    }
    if let Some(i) = vault_token_at(&text) {
        leaks.push(format!("something shaped like a Vault token is in the log at byte {i}"));
    }
    leaks
}

#[test]
fn token_shape_detector() {
    assert!(vault_token_at("x s.ABCDEFGHIJKLMNOPQRSTUVWX y").is_some());
    assert!(vault_token_at("tests.ABCDEFGHIJKLMNOPQRSTUVWX").is_none());
    assert!(vault_token_at("s.short").is_none());
}
