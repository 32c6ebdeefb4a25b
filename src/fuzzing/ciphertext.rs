//! The string checks of `service::validate` on arbitrary text: never a panic, and the answers
//! agree with what each check promises. These restate the rules, so they find crashes, not a
//! wrong rule: Vault judges the ciphertext rule in `tests/it/oracles.rs`.

use crate::service::validate;

/// Plaintext limits to check ciphertexts against: tiny, the default (768 KiB), the largest
/// `limits.max_item_bytes` a config can hold with the default `batch.max_bytes` (16 MiB).
const LIMITS: [usize; 3] = [1, 768 << 10, 12 << 20];

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@')
}

/// One input of the target (what `fuzz_target!` runs).
pub fn run(data: &[u8]) {
    // Protobuf `string` fields reach the handlers as valid UTF-8 only.
    let Ok(s) = std::str::from_utf8(data) else { return };

    // ciphertext_version: Some(v) only for `vault:v<v>:<non-empty base64 alphabet>`, v > 0, and
    // written the one canonical way (no leading zeros, no sign), so the version the gateway
    // reports is the one in the text.
    let version = validate::ciphertext_version(s);
    if let Some(v) = version {
        assert!(v > 0, "version 0 accepted: {s:?}");
        let prefix = format!("vault:v{v}:");
        assert!(s.starts_with(&prefix), "ciphertext_version({s:?}) = {v}, but the text does not start with {prefix:?}");
        let body = &s[prefix.len()..];
        assert!(!body.is_empty() && body.bytes().all(is_b64), "accepted body {body:?}");
    }
    // ...and the converse: every well-formed ciphertext is accepted.
    if let Some(rest) = s.strip_prefix("vault:v") {
        if let Some((digits, body)) = rest.split_once(':') {
            let canonical = !digits.is_empty()
                && digits.len() <= 9
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            if canonical && !body.is_empty() && body.bytes().all(is_b64) {
                // At most 9 ASCII digits: always a valid u32 (≤ 999,999,999).
                assert_eq!(version, Some(digits.parse().unwrap()), "well-formed ciphertext refused: {s:?}");
            }
        }
    }

    // ciphertext: ok iff non-empty, within the size bound, and ciphertext_version accepts it.
    for max in LIMITS {
        let ok = validate::ciphertext("ciphertext", s, max).is_ok();
        assert!(!ok || version.is_some(), "ciphertext accepted what ciphertext_version refuses: {s:?}");
        assert!(!ok || s.len() <= max * 4 / 3 + 64, "oversized ciphertext accepted: {} bytes, limit {max}", s.len());
        if version.is_some() && s.len() <= max * 4 / 3 + 64 {
            assert!(ok, "ciphertext refused a valid one within the limit: {s:?}");
        }
    }

    // name: one segment of the safe alphabet, 1..=256 bytes, not `.` or `..`.
    let name_ok = validate::name("key", s).is_ok();
    let expected = !s.is_empty() && s.len() <= 256 && s.chars().all(name_char) && s != "." && s != "..";
    assert_eq!(name_ok, expected, "name({s:?})");

    // mount: slash-separated names; whatever it accepts is safe as URL path segments.
    if validate::mount(s).is_ok() {
        let trimmed = s.trim_matches('/');
        assert!(!trimmed.is_empty() && trimmed.len() <= 256, "mount({s:?})");
        for seg in trimmed.split('/') {
            assert!(validate::name("mount", seg).is_ok(), "mount({s:?}) accepted segment {seg:?}");
        }
    }

    // secret_path: no traversal, no empty segments, no characters that change a URL's meaning.
    for folder in [false, true] {
        if validate::secret_path("path", s, folder).is_ok() {
            assert!(s.len() <= 1024, "secret_path({s:?}) too long");
            assert!(!s.starts_with('/'), "secret_path({s:?}) absolute");
            assert!(folder || (!s.is_empty() && !s.ends_with('/')), "secret_path({s:?}) not a secret");
            let body = s.strip_suffix('/').unwrap_or(s);
            if !body.is_empty() {
                for seg in body.split('/') {
                    assert!(!seg.is_empty() && seg != "." && seg != "..", "secret_path({s:?}) segment {seg:?}");
                }
            }
            assert!(
                !s.chars().any(|c| c.is_control() || matches!(c, '?' | '#' | '%' | '\\')),
                "secret_path({s:?}) has a forbidden character"
            );
        }
    }
    // A secret is also a valid folder.
    if validate::secret_path("path", s, false).is_ok() {
        assert!(validate::secret_path("path", s, true).is_ok(), "secret but not folder: {s:?}");
    }

    // lease_id: non-empty, bounded, no whitespace or control characters.
    if validate::lease_id("lease_id", s).is_ok() {
        assert!(!s.is_empty() && s.len() <= 1024, "lease_id({s:?})");
        assert!(!s.chars().any(|c| c.is_control() || c.is_whitespace()), "lease_id({s:?})");
    }

    // The error of every check renders to a gRPC status without panicking.
    if let Err(e) = validate::ciphertext("items[0].ciphertext", s, LIMITS[1]) {
        let status = tonic_status(e);
        assert!(!status.is_empty());
    }
}

fn tonic_status(e: crate::error::Error) -> String {
    let status: tonic::Status = e.into();
    status.message().to_string()
}
