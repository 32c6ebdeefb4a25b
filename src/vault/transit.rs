//! Transit engine calls: encrypt/decrypt (single and `batch_input`), rewrap, datakey, key read
//! and rotate. Docs: <https://openbao.org/api-docs/secret/transit/>.
//!
//! Batch answers are special (VAULT-API.md §1.3): OpenBao answers a batch with failed items with
//! HTTP 400 *and* a normal `batch_results` body, so [`Client::transit_batch`] accepts any status
//! whose body carries `batch_results` and reports errors per item.

use super::{api_error, decode, Call, Class, Client, Envelope, VaultError, VaultToken};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Which batchable Transit operation a request performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `POST transit/encrypt/:key`.
    Encrypt,
    /// `POST transit/decrypt/:key`.
    Decrypt,
}

impl Op {
    fn path(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
        }
    }

    /// The metric label of its Vault endpoint.
    fn kind(self) -> &'static str {
        match self {
            Op::Encrypt => "transit/encrypt",
            Op::Decrypt => "transit/decrypt",
        }
    }
}

/// One item of a `batch_input`, already base64-encoded; fields that are `None` are not sent.
/// `Debug` shows the lengths of plaintext, context and associated data, never their bytes.
#[derive(Clone, Serialize, Default)]
pub struct BatchItem {
    /// Base64 plaintext (encrypt). Always sent for encrypt, even when empty (VAULT-API §1.3 a).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<String>,
    /// Ciphertext (decrypt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
    /// Base64 derivation context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Base64 AEAD associated data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub associated_data: Option<String>,
    /// Key version to encrypt with (encrypt only; 0/None = latest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
}

impl std::fmt::Debug for BatchItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::redact::opt_len;
        f.debug_struct("BatchItem")
            .field("plaintext", &opt_len(&self.plaintext))
            .field("ciphertext", &self.ciphertext)
            .field("context", &opt_len(&self.context))
            .field("associated_data", &opt_len(&self.associated_data))
            .field("key_version", &self.key_version)
            .finish()
    }
}

impl BatchItem {
    /// How many JSON strings this item adds to a request body (OpenBao's `max_request_json_strings`
    /// counts keys and string values; numbers count only their key).
    pub fn json_strings(&self) -> usize {
        let pair = |o: &Option<String>| if o.is_some() { 2 } else { 0 };
        pair(&self.plaintext)
            + pair(&self.ciphertext)
            + pair(&self.context)
            + pair(&self.associated_data)
            + usize::from(self.key_version.is_some())
    }

    /// Approximate JSON size of this item in bytes, for the request-size budget.
    pub fn json_bytes(&self) -> usize {
        let len = |o: &Option<String>| o.as_ref().map_or(0, |s| s.len() + 24);
        len(&self.plaintext) + len(&self.ciphertext) + len(&self.context) + len(&self.associated_data) + 24
    }
}

/// One entry of `batch_results`: either a value or an `error` (`Debug` redacts the plaintext).
#[derive(Clone, Deserialize, Default)]
pub struct BatchResult {
    /// Encrypt: the ciphertext.
    #[serde(default)]
    pub ciphertext: Option<String>,
    /// Decrypt: the base64 plaintext.
    #[serde(default)]
    pub plaintext: Option<String>,
    /// Encrypt: the key version used.
    #[serde(default)]
    pub key_version: Option<u32>,
    /// Set when this item failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl std::fmt::Debug for BatchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchResult")
            .field("ciphertext", &self.ciphertext)
            .field("plaintext", &crate::redact::opt_len(&self.plaintext))
            .field("key_version", &self.key_version)
            .field("error", &self.error)
            .finish()
    }
}

/// `data` of a Transit batch answer (crate-visible: the fuzz target decodes this very type).
#[derive(Deserialize)]
pub(crate) struct BatchData {
    pub(crate) batch_results: Vec<BatchResult>,
}

#[derive(Serialize)]
struct RewrapBody<'a> {
    ciphertext: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

#[derive(Serialize)]
struct DatakeyBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    bits: u32,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    batch_input: &'a [BatchItem],
}

/// Key metadata as `GET transit/keys/:name` returns it (key material is never requested).
#[derive(Debug, Clone, Deserialize)]
pub struct KeyInfo {
    /// Key type, e.g. `aes256-gcm96`.
    #[serde(rename = "type")]
    pub key_type: String,
    /// Latest version.
    pub latest_version: u32,
    /// Oldest version allowed to decrypt.
    pub min_decryption_version: u32,
    /// Oldest version allowed to encrypt (0 = any).
    pub min_encryption_version: u32,
    /// Whether the key is derived.
    #[serde(default)]
    pub derived: bool,
}

/// Answer of encrypt/rewrap/datakey: a ciphertext and the key version (`Debug` redacts the data key).
#[derive(Clone, Deserialize)]
pub struct Ciphertext {
    /// `vault:vN:…`.
    pub ciphertext: String,
    /// Version used.
    #[serde(default)]
    pub key_version: u32,
    /// Datakey only: the base64 plaintext data key.
    #[serde(default)]
    pub plaintext: Option<String>,
}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ciphertext")
            .field("ciphertext", &self.ciphertext)
            .field("key_version", &self.key_version)
            .field("plaintext", &crate::redact::opt_len(&self.plaintext))
            .finish()
    }
}

/// Encodes bytes as Vault expects binary inputs (standard base64).
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes a base64 value Vault returned.
pub fn unb64(s: &str) -> Result<Vec<u8>, VaultError> {
    B64.decode(s).map_err(|e| VaultError::Decode(format!("base64 from Vault: {e}")))
}

impl Client {
    /// `POST <mount>/{encrypt,decrypt}/:key` with `batch_input`; results in input order.
    /// A whole-request failure is an `Err`; per-item failures are in each result's `error`.
    pub async fn transit_batch(
        &self,
        token: &VaultToken,
        mount: &str,
        op: Op,
        key: &str,
        items: &[BatchItem],
        deadline: Option<Instant>,
    ) -> Result<Vec<BatchResult>, VaultError> {
        // Idempotent: sending an encryption or decryption twice changes nothing in Vault.
        let call = Call::new(Method::POST, op.kind(), &[mount, op.path(), key]).class(Class::Transit).idempotent();
        let (status, bytes) = self.send(call, Some(token), Some(&BatchBody { batch_input: items }), deadline).await?;
        let code = status.as_u16();
        // 200 all ok (or item errors without a flag), 400 some/all items failed, 207 partial override.
        let results = if matches!(code, 200 | 207 | 400) {
            match serde_json::from_slice::<Envelope<BatchData>>(&bytes) {
                Ok(Envelope { data: Some(d), .. }) => d.batch_results,
                _ => return Err(api_error(status, &bytes)),
            }
        } else {
            return Err(api_error(status, &bytes));
        };
        if results.len() != items.len() {
            return Err(VaultError::Decode(format!("{} batch results for {} items", results.len(), items.len())));
        }
        Ok(results)
    }

    /// `POST <mount>/{encrypt,decrypt}/:key` with one item in the request body (no batch).
    pub async fn transit_single(
        &self,
        token: &VaultToken,
        mount: &str,
        op: Op,
        key: &str,
        item: &BatchItem,
        deadline: Option<Instant>,
    ) -> Result<BatchResult, VaultError> {
        let call = Call::new(Method::POST, op.kind(), &[mount, op.path(), key]).class(Class::Transit).idempotent();
        let env: Envelope<BatchResult> = self.call(call, Some(token), Some(item), deadline).await?;
        env.data.ok_or_else(|| VaultError::Decode("transit answer without data".into()))
    }

    /// `POST <mount>/rewrap/:key`: re-encrypts a ciphertext under the latest version.
    pub async fn transit_rewrap(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        ciphertext: &str,
        context: Option<String>,
        deadline: Option<Instant>,
    ) -> Result<Ciphertext, VaultError> {
        let body = RewrapBody { ciphertext, context };
        let env: Envelope<Ciphertext> = self
            .call(
                Call::new(Method::POST, "transit/rewrap", &[mount, "rewrap", key]).class(Class::Transit).idempotent(),
                Some(token),
                Some(&body),
                deadline,
            )
            .await?;
        env.data.ok_or_else(|| VaultError::Decode("rewrap answer without data".into()))
    }

    /// `POST <mount>/datakey/plaintext/:key`: a new data key, in plaintext and wrapped.
    pub async fn transit_datakey(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        context: Option<String>,
        bits: u32,
        deadline: Option<Instant>,
    ) -> Result<Ciphertext, VaultError> {
        let body = DatakeyBody { context, bits };
        let call = Call::new(Method::POST, "transit/datakey", &[mount, "datakey/plaintext", key]).class(Class::Transit);
        let env: Envelope<Ciphertext> = self.call(call, Some(token), Some(&body), deadline).await?;
        env.data.ok_or_else(|| VaultError::Decode("datakey answer without data".into()))
    }

    /// `GET <mount>/keys/:key`: key metadata.
    pub async fn transit_read_key(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<KeyInfo, VaultError> {
        let (status, bytes) = self
            .send::<()>(
                Call::new(Method::GET, "transit/keys", &[mount, "keys", key]).class(Class::Transit).read(),
                Some(token),
                None,
                deadline,
            )
            .await?;
        let env: Envelope<KeyInfo> = decode(status, &bytes)?;
        env.data.ok_or_else(|| VaultError::Decode("key answer without data".into()))
    }

    /// `POST <mount>/keys/:key/rotate`: adds a key version; returns the new metadata.
    pub async fn transit_rotate(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<KeyInfo, VaultError> {
        // Not idempotent: a second send would add a second version.
        let call = Call::new(Method::POST, "transit/rotate", &[mount, "keys", key, "rotate"]).class(Class::Transit);
        let (status, bytes) = self.send::<()>(call, Some(token), None, deadline).await?;
        if status == reqwest::StatusCode::NO_CONTENT {
            // Older servers answer 204; read the key to learn the new version.
            return self.transit_read_key(token, mount, key, deadline).await;
        }
        let env: Envelope<KeyInfo> = decode(status, &bytes)?;
        env.data.ok_or_else(|| VaultError::Decode("rotate answer without data".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_cost_matches_openbao_counting() {
        let plain = BatchItem { plaintext: Some("aGk=".into()), ..Default::default() };
        assert_eq!(plain.json_strings(), 2);
        let full = BatchItem {
            plaintext: Some(String::new()),
            context: Some("Yw==".into()),
            associated_data: Some("YQ==".into()),
            key_version: Some(2),
            ..Default::default()
        };
        assert_eq!(full.json_strings(), 7);
        // The serialised form has exactly the counted strings.
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(json.matches('"').count() / 2, full.json_strings());
    }

    #[test]
    fn item_errors_parse_from_both_shapes() {
        let body = br#"{"data":{"batch_results":[{"ciphertext":"vault:v1:x","key_version":1,"reference":""},{"plaintext":"","error":"invalid ciphertext: no prefix","reference":""}]}}"#;
        let env: Envelope<BatchData> = serde_json::from_slice(body).unwrap();
        let r = env.data.unwrap().batch_results;
        assert_eq!(r[0].ciphertext.as_deref(), Some("vault:v1:x"));
        assert!(r[0].error.is_none());
        assert_eq!(r[1].error.as_deref(), Some("invalid ciphertext: no prefix"));
    }
}
