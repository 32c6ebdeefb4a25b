//! Checks of names, paths and payloads that callers send, before anything reaches Vault. Each
//! failure is `INVALID_ARGUMENT` naming the field and what a valid value looks like.

use crate::{config::Limits, error::Error, pb::vaultgate::v1::*};

/// Longest key, role or mount name accepted.
const MAX_NAME: usize = 256;
/// Longest secret path accepted.
const MAX_PATH: usize = 1024;

fn invalid(field: &str, why: &str) -> Error {
    Error::bad_field(field, why)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@')
}

/// A Transit key or database role name: one path segment of safe characters.
pub fn name(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME || !value.chars().all(name_char) || value == "." || value == ".." {
        return Err(invalid(field, "must be 1-256 characters of A-Z a-z 0-9 _ - . @"));
    }
    Ok(())
}

/// A mount path: segments of safe characters separated by `/`. Returns the reason on failure.
pub fn mount(value: &str) -> Result<(), String> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() || trimmed.len() > MAX_NAME {
        return Err("must be a mount path such as \"secret\" or \"team/kv\"".into());
    }
    if trimmed.split('/').any(|s| s.is_empty() || s == "." || s == ".." || !s.chars().all(name_char)) {
        return Err("segments must be A-Z a-z 0-9 _ - . @ (no empty, . or .. segments)".into());
    }
    Ok(())
}

/// A secret path (or, with `folder`, a folder that may be empty or end in `/`).
pub fn secret_path(field: &str, value: &str, folder: bool) -> Result<(), Error> {
    if value.is_empty() && !folder {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_PATH {
        return Err(invalid(field, "must be at most 1024 bytes"));
    }
    if value.starts_with('/') || (!folder && value.ends_with('/')) {
        return Err(invalid(field, "must not start with '/' (nor end with it, for a secret)"));
    }
    let body = value.strip_suffix('/').unwrap_or(value);
    if !body.is_empty() && body.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(invalid(field, "must not contain empty, '.' or '..' segments"));
    }
    if value.chars().any(|c| c.is_control() || matches!(c, '?' | '#' | '%' | '\\')) {
        return Err(invalid(field, "must not contain control characters, '?', '#', '%' or '\\'"));
    }
    Ok(())
}

/// A Vault ciphertext: `vault:v<N>:<base64>` within the size limit.
pub fn ciphertext(field: &str, value: &str, max_bytes: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max_bytes.saturating_mul(4) / 3 + 64 {
        return Err(invalid(field, &format!("is larger than the limit of {max_bytes} bytes of plaintext")));
    }
    ciphertext_version(value)
        .map(|_| ())
        .ok_or_else(|| invalid(field, "is not a Vault ciphertext of the form vault:v<N>:<base64>"))
}

/// The key version in a `vault:v<N>:…` ciphertext.
pub fn ciphertext_version(value: &str) -> Option<u32> {
    let rest = value.strip_prefix("vault:v")?;
    let (version, body) = rest.split_once(':')?;
    // Canonical decimal only: no sign, no leading zero (Rust's parser would take `+1` and `08`).
    if version.is_empty() || version.starts_with('0') || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
        return None;
    }
    version.parse().ok().filter(|v| *v > 0)
}

/// A payload (plaintext, context or AAD) within the size limit.
pub fn payload(field: &str, value: &[u8], max_bytes: usize) -> Result<(), Error> {
    if value.len() > max_bytes {
        return Err(invalid(field, &format!("is {} bytes, over the limit of {max_bytes}", value.len())));
    }
    Ok(())
}

/// A lease id as Vault issues them: `<mount>/creds/<role>/<id>`.
pub fn lease_id(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_PATH || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "is not a Vault lease id"));
    }
    Ok(())
}

/// A Transit mount, key or role mount named in a request: empty means the configured default.
pub fn requested_mount(value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    mount(value).map_err(|why| invalid("mount", &why))
}

/// The item count of an EncryptBatch/DecryptBatch call: 1 to `limits.max_batch_items`.
pub fn batch_len(limits: &Limits, len: usize) -> Result<(), Error> {
    let max = limits.max_batch_items;
    if len == 0 {
        return Err(invalid("items", "must hold at least one item"));
    }
    if len > max {
        return Err(invalid("items", &format!("{len} items is over the limit of {max} per call")));
    }
    Ok(())
}

/// One plaintext to encrypt (an Encrypt call or a batch item): payloads within the item limit.
pub fn encrypt_item(limits: &Limits, plaintext: &[u8], context: &[u8], aad: &[u8]) -> Result<(), Error> {
    let max = limits.max_item_bytes;
    payload("plaintext", plaintext, max)?;
    payload("context", context, max)?;
    payload("associated_data", aad, max)
}

/// One ciphertext to decrypt (a Decrypt or Rewrap call or a batch item).
pub fn decrypt_item(limits: &Limits, ciphertext_value: &str, context: &[u8], aad: &[u8]) -> Result<(), Error> {
    let max = limits.max_item_bytes;
    ciphertext("ciphertext", ciphertext_value, max)?;
    payload("context", context, max)?;
    payload("associated_data", aad, max)
}

/// The data key size of GenerateDataKey in bits: 128, 256 or 512; 0 means 256.
pub fn data_key_bits(bits: u32) -> Result<u32, Error> {
    match bits {
        0 => Ok(256),
        b @ (128 | 256 | 512) => Ok(b),
        b => Err(invalid("bits", &format!("{b} is not 128, 256 or 512 (0 means 256)"))),
    }
}

/// The lease increment of RenewLease in seconds; `None` lets Vault choose.
pub fn lease_increment(increment: Option<&prost_types::Duration>) -> Result<Option<u64>, Error> {
    match increment {
        None => Ok(None),
        Some(d) if d.seconds > 0 && d.nanos >= 0 => Ok(u64::try_from(d.seconds).ok()),
        Some(_) => Err(invalid("increment", "must be at least one second")),
    }
}

/// The checks of one RPC's request that need no Vault, run by `Gateway::serve` before the
/// handler; the fuzz target and the fuzz smoke test call the same ones. Batch items are checked one
/// by one by the handler ([`encrypt_item`], [`decrypt_item`]): a bad item fails alone.
pub trait Checked {
    /// `INVALID_ARGUMENT` naming the first wrong field, or `Ok`.
    fn check(&self, limits: &Limits) -> Result<(), Error>;
}

impl Checked for EncryptRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        encrypt_item(limits, &self.plaintext, &self.context, &self.associated_data)
    }
}

impl Checked for DecryptRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        decrypt_item(limits, &self.ciphertext, &self.context, &self.associated_data)
    }
}

impl Checked for EncryptBatchRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        batch_len(limits, self.items.len())
    }
}

impl Checked for DecryptBatchRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        batch_len(limits, self.items.len())
    }
}

impl Checked for RewrapRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        decrypt_item(limits, &self.ciphertext, &self.context, &[])
    }
}

impl Checked for RotateRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("key", &self.key)
    }
}

impl Checked for GetKeyRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("key", &self.key)
    }
}

impl Checked for GenerateDataKeyRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        payload("context", &self.context, limits.max_item_bytes)?;
        data_key_bits(self.bits).map(|_| ())
    }
}

impl Checked for GetSecretRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        secret_path("path", &self.path, false)?;
        requested_mount(&self.mount)
    }
}

impl Checked for ListSecretsRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        secret_path("path", &self.path, true)?;
        requested_mount(&self.mount)
    }
}

impl Checked for GetDbCredsRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("role", &self.role)?;
        requested_mount(&self.mount)
    }
}

impl Checked for RenewLeaseRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        lease_id("lease_id", &self.lease_id)?;
        lease_increment(self.increment.as_ref()).map(|_| ())
    }
}

impl Checked for RevokeLeaseRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        lease_id("lease_id", &self.lease_id)
    }
}

/// Most names one WhoAmI may ask about (each costs a few paths in one Vault request).
pub const MAX_WHOAMI_NAMES: usize = 64;

impl Checked for WhoAmIRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        if self.keys.len() + self.secret_paths.len() + self.db_roles.len() > MAX_WHOAMI_NAMES {
            return Err(Error::InvalidArgument(format!("ask about at most {MAX_WHOAMI_NAMES} names in one call")));
        }
        for (i, key) in self.keys.iter().enumerate() {
            name(&format!("keys[{i}]"), key)?;
        }
        for (i, path) in self.secret_paths.iter().enumerate() {
            secret_path(&format!("secret_paths[{i}]"), path, true)?;
        }
        for (i, role) in self.db_roles.iter().enumerate() {
            name(&format!("db_roles[{i}]"), role)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["billing", "a-b_c.d", "x@y"] {
            assert!(name("key", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..", "a b", "é", &"k".repeat(257)] {
            assert!(name("key", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let cases: &[(&str, bool, bool)] = &[
            ("billing/api-keys", false, true),
            ("", false, false),
            ("", true, true),
            ("billing/", true, true),
            ("billing/", false, false),
            ("/etc", false, false),
            ("a/../b", false, false),
            ("a//b", false, false),
            ("a?b", false, false),
            ("a b/c", false, true),
        ];
        for (path, folder, ok) in cases {
            assert_eq!(secret_path("path", path, *folder).is_ok(), *ok, "{path:?} folder={folder}");
        }
    }

    #[test]
    fn ciphertexts() {
        let cases: &[(&str, Option<u32>)] = &[
            ("vault:v1:abc=", Some(1)),
            ("vault:v12:YWJj", Some(12)),
            ("vault:v0:abc", None),
            ("vault:v1:", None),
            ("vault:vx:abc", None),
            ("v1:abc", None),
            ("vault:v1:a b", None),
            ("vault:v08:kl1+", None),
            ("vault:v+1:YWJj", None),
            ("", None),
        ];
        for (ct, version) in cases {
            assert_eq!(ciphertext_version(ct), *version, "{ct}");
            assert_eq!(ciphertext("ciphertext", ct, 100).is_ok(), version.is_some(), "{ct}");
        }
        assert!(ciphertext("ciphertext", &format!("vault:v1:{}", "A".repeat(1000)), 100).is_err());
    }

    #[test]
    fn mounts() {
        assert!(mount("secret").is_ok());
        assert!(mount("team/kv").is_ok());
        for bad in ["", "/", "a/../b", "a b", "a//b"] {
            assert!(mount(bad).is_err(), "{bad}");
        }
    }
}
