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

/// Longest Vault signature or HMAC accepted (an rsa-4096 signature is 684 base64 characters).
const MAX_SIGNATURE: usize = 4096;

/// A Vault signature or HMAC: `vault:v<N>:<base64>`. Returns its key version.
pub fn signature(field: &str, value: &str) -> Result<u32, Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_SIGNATURE {
        return Err(invalid(field, &format!("is longer than {MAX_SIGNATURE} characters")));
    }
    ciphertext_version(value).ok_or_else(|| invalid(field, "is not a Vault value of the form vault:v<N>:<base64>"))
}

/// Hash algorithms of Transit `hmac` (Vault's names), and of `sign`/`verify` with `sha1` too.
const HMAC_ALGORITHMS: [&str; 8] =
    ["sha2-224", "sha2-256", "sha2-384", "sha2-512", "sha3-224", "sha3-256", "sha3-384", "sha3-512"];

/// A hash algorithm of Sign/Verify (`hmac` false) or Hmac/VerifyHmac (`hmac` true): "" means the
/// default (`None`); otherwise one of Vault's names, returned as the static name so that the
/// coalescer's lanes are keyed by a fixed vocabulary.
pub fn hash_algorithm(field: &str, value: &str, hmac: bool) -> Result<Option<&'static str>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    if !hmac && value == "sha1" {
        return Ok(Some("sha1"));
    }
    match HMAC_ALGORITHMS.iter().find(|a| **a == value) {
        Some(a) => Ok(Some(a)),
        None if hmac => Err(invalid(field, "must be empty (sha2-256) or one of sha2-224, sha2-256, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384, sha3-512")),
        None => Err(invalid(field, "must be empty (the key's default) or one of sha1, sha2-224, sha2-256, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384, sha3-512")),
    }
}

/// Longest PEM accepted (a CSR, certificate or private key; an rsa-4096 key is ~3.3 KB).
const MAX_PEM: usize = 65_536;
/// Most subject alternative names in one request.
const MAX_SANS: usize = 100;

/// A PEM value of the given kind: `-----BEGIN <label>` for one of `labels`, within the size limit.
/// The message never repeats the value (it may be a private key).
pub fn pem(field: &str, value: &str, labels: &[&str]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_PEM {
        return Err(invalid(field, &format!("is longer than {MAX_PEM} bytes")));
    }
    let begins = value
        .trim_start()
        .strip_prefix("-----BEGIN ")
        .is_some_and(|rest| labels.iter().any(|l| rest.strip_prefix(l).is_some_and(|r| r.starts_with("-----"))));
    if !begins {
        return Err(invalid(field, &format!("must be PEM ({})", labels.join(" or "))));
    }
    Ok(())
}

/// A certificate name (common name or DNS/email SAN): what Vault's PKI roles match, never a
/// comma (the SANs are sent to Vault as one comma-separated list) or whitespace.
pub fn cert_name(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > 255
        || !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*' | '@'))
    {
        return Err(invalid(field, "must be a DNS name or email address: 1-255 characters of A-Z a-z 0-9 . - _ * @"));
    }
    Ok(())
}

/// Subject alternative names: each a [`cert_name`], at most 100.
pub fn alt_names(field: &str, values: &[String]) -> Result<(), Error> {
    if values.len() > MAX_SANS {
        return Err(invalid(field, &format!("{} names is over the limit of {MAX_SANS}", values.len())));
    }
    for (i, v) in values.iter().enumerate() {
        cert_name(&format!("{field}[{i}]"), v)?;
    }
    Ok(())
}

/// IP subject alternative names: each an IPv4 or IPv6 address, at most 100.
pub fn ip_sans(field: &str, values: &[String]) -> Result<(), Error> {
    if values.len() > MAX_SANS {
        return Err(invalid(field, &format!("{} addresses is over the limit of {MAX_SANS}", values.len())));
    }
    for (i, v) in values.iter().enumerate() {
        if v.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(&format!("{field}[{i}]"), "must be an IPv4 or IPv6 address"));
        }
    }
    Ok(())
}

/// A requested certificate lifetime: unset (the role's default) or at least one second; as
/// Vault's duration string.
pub fn cert_ttl(ttl: Option<&prost_types::Duration>) -> Result<Option<String>, Error> {
    match ttl {
        None => Ok(None),
        Some(d) if d.seconds > 0 && d.nanos >= 0 => Ok(Some(format!("{}s", d.seconds))),
        Some(_) => Err(invalid("ttl", "must be at least one second (unset means the role's default)")),
    }
}

/// A certificate serial number as Vault writes it: hex bytes separated by `:` (or `-`).
pub fn serial_number(field: &str, value: &str) -> Result<(), Error> {
    let ok = (2..=128).contains(&value.len())
        && value.split([':', '-']).all(|b| !b.is_empty() && b.len() <= 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(invalid(field, "must be a serial number such as 1a:2b:3c (hex bytes separated by ':')"));
    }
    Ok(())
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
    if value.len() > MAX_PATH
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
        || value.split('/').any(|s| s == "." || s == "..")
    {
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

/// The item count of an EncryptBatch/DecryptBatch/RewrapBatch call: 1 to `limits.max_batch_items`.
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
        requested_mount(&self.mount)?;
        encrypt_item(limits, &self.plaintext, &self.context, &self.associated_data)
    }
}

impl Checked for DecryptRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        decrypt_item(limits, &self.ciphertext, &self.context, &self.associated_data)
    }
}

impl Checked for EncryptBatchRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        batch_len(limits, self.items.len())
    }
}

impl Checked for DecryptBatchRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        batch_len(limits, self.items.len())
    }
}

impl Checked for RewrapRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        decrypt_item(limits, &self.ciphertext, &self.context, &[])
    }
}

impl Checked for RewrapBatchRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        batch_len(limits, self.items.len())
    }
}

impl Checked for RotateRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)
    }
}

impl Checked for GetKeyRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)
    }
}

impl Checked for GenerateDataKeyRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        payload("context", &self.context, limits.max_item_bytes)?;
        data_key_bits(self.bits).map(|_| ())
    }
}

impl Checked for SignRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        payload("input", &self.input, limits.max_item_bytes)?;
        payload("context", &self.context, limits.max_item_bytes)?;
        hash_algorithm("hash_algorithm", &self.hash_algorithm, false).map(|_| ())
    }
}

impl Checked for VerifyRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        payload("input", &self.input, limits.max_item_bytes)?;
        signature("signature", &self.signature)?;
        payload("context", &self.context, limits.max_item_bytes)?;
        hash_algorithm("hash_algorithm", &self.hash_algorithm, false).map(|_| ())
    }
}

impl Checked for HmacRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        payload("input", &self.input, limits.max_item_bytes)?;
        hash_algorithm("algorithm", &self.algorithm, true).map(|_| ())
    }
}

impl Checked for VerifyHmacRequest {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        name("key", &self.key)?;
        requested_mount(&self.mount)?;
        payload("input", &self.input, limits.max_item_bytes)?;
        signature("hmac", &self.hmac)?;
        hash_algorithm("algorithm", &self.algorithm, true).map(|_| ())
    }
}

impl Checked for IssueCertificateRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("role", &self.role)?;
        cert_name("common_name", &self.common_name)?;
        alt_names("alt_names", &self.alt_names)?;
        ip_sans("ip_sans", &self.ip_sans)?;
        cert_ttl(self.ttl.as_ref())?;
        requested_mount(&self.mount)
    }
}

impl Checked for SignCertificateRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("role", &self.role)?;
        pem("csr", &self.csr, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?;
        if !self.common_name.is_empty() {
            cert_name("common_name", &self.common_name)?;
        }
        alt_names("alt_names", &self.alt_names)?;
        cert_ttl(self.ttl.as_ref())?;
        requested_mount(&self.mount)
    }
}

impl Checked for RevokeCertificateRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        match (self.certificate.is_empty(), self.serial_number.is_empty()) {
            (false, false) => {
                return Err(invalid("serial_number", "set either certificate or serial_number, not both"))
            }
            (true, true) => return Err(invalid("certificate", "set the certificate (PEM) or its serial_number")),
            (false, true) => pem("certificate", &self.certificate, &["CERTIFICATE"])?,
            (true, false) => serial_number("serial_number", &self.serial_number)?,
        }
        pem("private_key", &self.private_key, &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"])?;
        requested_mount(&self.mount)
    }
}

impl Checked for GetCaChainRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        requested_mount(&self.mount)
    }
}

impl Checked for GetSecretRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        secret_path("path", &self.path, false)?;
        requested_mount(&self.mount)
    }
}

impl Checked for WatchSecretRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        secret_path("path", &self.path, false)?;
        requested_mount(&self.mount)
    }
}

impl Checked for WatchDbCredsRequest {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        name("role", &self.role)?;
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
    fn lease_ids() {
        assert!(lease_id("lease_id", "database/creds/billing/AbC123").is_ok());
        // Sent as the path of sys/leases/revoke/<id>: no way out of that prefix.
        for bad in ["", "database/../sys/policies/acl/x", "../x", "a/./b", "a b", "a\nb"] {
            assert!(lease_id("lease_id", bad).is_err(), "{bad:?}");
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
    fn signing_inputs() {
        assert_eq!(signature("signature", "vault:v2:YWJj").ok(), Some(2));
        for bad in ["", "YWJj", "vault:v0:YWJj", "vault:v1:", "vault:v1:a b"] {
            assert!(signature("signature", bad).is_err(), "{bad}");
        }
        assert!(signature("hmac", &format!("vault:v1:{}", "A".repeat(5000))).is_err());
        assert_eq!(hash_algorithm("hash_algorithm", "", false).unwrap(), None);
        assert_eq!(hash_algorithm("hash_algorithm", "sha1", false).unwrap(), Some("sha1"));
        assert_eq!(hash_algorithm("algorithm", "sha3-512", true).unwrap(), Some("sha3-512"));
        for (bad, hmac) in [("sha1", true), ("md5", false), ("SHA2-256", true), ("sha2-256/x", false), ("none", false)]
        {
            let err = hash_algorithm("algorithm", bad, hmac).unwrap_err();
            assert!(matches!(&err, Error::BadField { field, .. } if field == "algorithm"), "{bad}: {err:?}");
        }
    }

    #[test]
    fn certificate_inputs() {
        for ok in ["api.billing.svc.cluster.local", "*.billing.svc.cluster.local", "ops@example.com"] {
            assert!(cert_name("common_name", ok).is_ok(), "{ok}");
        }
        // A comma would smuggle extra names into Vault's comma-separated list.
        for bad in ["", "a,b.billing.svc.cluster.local", "a b", "a\nb", &"a".repeat(256), "é.example"] {
            assert!(cert_name("common_name", bad).is_err(), "{bad}");
        }
        let err = alt_names("alt_names", &["ok.example".into(), "x,y".into()]).unwrap_err();
        assert!(matches!(&err, Error::BadField { field, .. } if field == "alt_names[1]"), "{err:?}");
        assert!(ip_sans("ip_sans", &["10.0.0.1".into(), "::1".into()]).is_ok());
        assert!(ip_sans("ip_sans", &["10.0.0.300".into()]).is_err());
        assert!(alt_names("alt_names", &vec!["a.example".to_string(); 101]).is_err());
        assert_eq!(cert_ttl(None).unwrap(), None);
        assert_eq!(
            cert_ttl(Some(&prost_types::Duration { seconds: 3600, nanos: 0 })).unwrap().as_deref(),
            Some("3600s")
        );
        assert!(cert_ttl(Some(&prost_types::Duration { seconds: 0, nanos: 5 })).is_err());
        assert!(serial_number("serial_number", "07:25:56:a7:3e").is_ok());
        for bad in ["", "7", "07::25", "zz:01", "0725:56"] {
            assert!(serial_number("serial_number", bad).is_err(), "{bad}");
        }
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n";
        assert!(pem("private_key", key, &["PRIVATE KEY", "EC PRIVATE KEY"]).is_ok());
        assert!(pem("csr", key, &["CERTIFICATE REQUEST"]).is_err());
        // A wrong private key's text never appears in the error.
        let err = pem("private_key", "MIGHAgEA-secret-bytes", &["PRIVATE KEY"]).unwrap_err();
        assert!(!format!("{err:?}").contains("MIGHAgEA"), "{err:?}");
    }

    #[test]
    fn revoke_needs_exactly_one_of_certificate_and_serial() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".to_string();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string();
        let limits: Limits = toml::from_str("").unwrap();
        let r = |certificate: &str, serial: &str, private_key: &str| RevokeCertificateRequest {
            certificate: certificate.into(),
            serial_number: serial.into(),
            private_key: private_key.into(),
            mount: String::new(),
        };
        assert!(r(&cert, "", &key).check(&limits).is_ok());
        assert!(r("", "01:02", &key).check(&limits).is_ok());
        for (req, field) in [
            (r(&cert, "01:02", &key), "serial_number"),
            (r("", "", &key), "certificate"),
            (r("", "01", ""), "private_key"),
        ] {
            let err = req.check(&limits).unwrap_err();
            assert!(matches!(&err, Error::BadField { field: f, .. } if f == field), "{err:?}");
        }
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
