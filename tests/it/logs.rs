//! Captures the gateway's log of the whole run (debug level) and checks it for secrets: every
//! value tests registered (plaintexts sent, raw and base64; JWTs, passwords, the root token,
//! secret values), anything shaped like a JWT, and anything shaped like a Vault token.
//!
//! The scan proves itself first ([`self_check`]): planted into a copy of the real log, a
//! registered plaintext (raw and base64), a JWT and a Vault token must each be reported, and the
//! token-shape detector must tell a token from look-alikes. The `it` binary has its own runner
//! (no libtest), so these are plain functions the runner calls, not `#[test]`s.

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
    memchr::memmem::find_iter(bytes, b"s.").find(|&i| {
        (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes.get(i + 2..i + 26).is_some_and(|body| body.iter().all(u8::is_ascii_alphanumeric))
            && bytes.get(i + 26).is_none_or(|b| !b.is_ascii_alphanumeric())
    })
}

/// The leaks found in `text` (empty when clean).
/// Each registered value is looked for once (tests register some many times), with memchr's
/// vectorised `memmem`: the test binary is built without optimisation, where `str::contains`
/// took minutes over a full run's log (11 MB) for the scan and its self-check.
fn scan(text: &str, secrets: &[String]) -> Vec<String> {
    let mut leaks = Vec::new();
    let found = |needle: &str| memchr::memmem::find(text.as_bytes(), needle.as_bytes()).is_some();
    let mut unique: Vec<&str> = secrets.iter().map(String::as_str).filter(|s| s.len() >= 6).collect();
    unique.sort_unstable();
    unique.dedup();
    for secret in unique {
        if found(secret) {
            let start: String = secret.chars().take(3).collect();
            leaks.push(format!("a registered secret ({} bytes, starts {start:?}) is in the log", secret.len()));
        }
    }
    if found("eyJ") {
        leaks.push("something shaped like a JWT (eyJ…) is in the log".into());
    }
    if found("PRIVATE KEY-----") {
        leaks.push("something shaped like a PEM private key is in the log".into());
    }
    if let Some(i) = vault_token_at(text) {
        leaks.push(format!("something shaped like a Vault token is in the log at byte {i}"));
    }
    leaks
}

/// Reads the captured log; an unreadable or near-empty capture is itself a failure.
fn read(path: &PathBuf) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the log capture {}: {e}", path.display()))?;
    let lines = text.lines().count();
    if lines < 50 || !text.contains(" DEBUG ") {
        return Err(format!("only {lines} log lines captured, none at debug level: the capture is not working"));
    }
    Ok(text)
}

/// The leaks found in the captured log (empty when clean).
pub fn check(path: &PathBuf, env: &Env) -> Vec<String> {
    match read(path) {
        Ok(text) => scan(&text, &env.secrets()),
        Err(e) => vec![e],
    }
}

/// Proves the scan can fail: each planted value, appended to a copy of the real log, must be
/// reported by [`scan`]; the token detector must accept a token and refuse look-alikes. Returns
/// what did not hold (empty when the scan works) and how many plants were caught.
/// On a full run (`full`) the tests must have registered plaintexts; a filtered run may not
/// have, so a synthetic one is registered and planted too.
pub fn self_check(path: &PathBuf, env: &Env, full: bool) -> (Vec<String>, usize) {
    let mut wrong = Vec::new();
    if vault_token_at("x s.ABCDEFGHIJKLMNOPQRSTUVWX y").is_none() {
        wrong.push("the token detector missed s.ABCDEFGHIJKLMNOPQRSTUVWX".to_string());
    }
    for look_alike in ["tests.ABCDEFGHIJKLMNOPQRSTUVWX", "s.short", "s.ABCDEFGHIJKLMNOPQRSTUVWXYZ"] {
        if vault_token_at(look_alike).is_some() {
            wrong.push(format!("the token detector flagged the look-alike {look_alike:?}"));
        }
    }
    let text = match read(path) {
        Ok(text) => text,
        Err(e) => return (vec![e], 0),
    };
    if full && env.plaintexts().is_empty() {
        wrong.push("no test registered a plaintext: the scan would not look for any".into());
    }
    env.remember_plaintext(b"planted plaintext of the self-check");
    let secrets = env.secrets();
    let plaintexts = env.plaintexts();
    let mut plants: Vec<(String, String)> = Vec::new();
    // A registered plaintext, raw and as the base64 sent to Vault, inside a log-like line.
    for (raw, b64) in plaintexts.iter().take(3).chain(plaintexts.last()) {
        plants.push((format!("raw plaintext {:?}", raw.chars().take(3).collect::<String>()), raw.clone()));
        plants.push((format!("base64 plaintext {:?}", b64.chars().take(3).collect::<String>()), b64.clone()));
    }
    plants.push(("a JWT".into(), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into()));
    plants.push(("a Vault token".into(), "s.ABCDEFGHIJKLMNOPQRSTUVWX".into()));
    let clean = scan(&text, &secrets).len();
    let mut caught = 0;
    for (what, value) in &plants {
        let planted =
            format!("{text}2026-01-01T00:00:00Z DEBUG call{{id=x}}: vaultgate::vault: body={{\"v\":\"{value}\"}}\n");
        if scan(&planted, &secrets).len() > clean {
            caught += 1;
        } else {
            wrong.push(format!("the scan missed {what} planted into the log"));
        }
    }
    (wrong, caught)
}
