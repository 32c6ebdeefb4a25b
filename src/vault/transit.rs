//! Transit engine calls: encrypt/decrypt/sign/verify/hmac/rewrap (single and `batch_input`),
//! datakey, key read and rotate. Docs: <https://openbao.org/api-docs/secret/transit/>.
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
    /// `POST transit/sign/:key`: items carry `input`.
    Sign,
    /// `POST transit/verify/:key`: items carry `input` and `signature`.
    Verify,
    /// `POST transit/hmac/:key`: items carry `input`.
    Hmac,
    /// `POST transit/verify/:key`: items carry `input` and `hmac`.
    VerifyHmac,
    /// `POST transit/rewrap/:key`: items carry `ciphertext` (and `context`); no associated data
    /// (Transit's rewrap takes none, VAULT-API.md §1.1).
    Rewrap,
}

impl Op {
    fn path(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Sign => "sign",
            Op::Verify | Op::VerifyHmac => "verify",
            Op::Hmac => "hmac",
            Op::Rewrap => "rewrap",
        }
    }

    /// The request-level body field that names the hash algorithm. It is one per request, not per
    /// item (so it belongs to the lane's shape), and sent in the body, not the URL, so that a
    /// policy on `transit/sign/<key>` covers every algorithm (VAULT-API.md §6) [V: OpenBao 2.7.2
    /// takes `hash_algorithm` for sign/verify, also for HMAC verification, and `algorithm` for hmac].
    pub fn algorithm_field(self) -> Option<&'static str> {
        match self {
            Op::Sign | Op::Verify | Op::VerifyHmac => Some("hash_algorithm"),
            Op::Hmac => Some("algorithm"),
            Op::Encrypt | Op::Decrypt | Op::Rewrap => None,
        }
    }

    /// The metric label (and span attribute) of its Vault endpoint.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Op::Encrypt => "transit/encrypt",
            Op::Decrypt => "transit/decrypt",
            Op::Sign => "transit/sign",
            Op::Verify | Op::VerifyHmac => "transit/verify",
            Op::Hmac => "transit/hmac",
            Op::Rewrap => "transit/rewrap",
        }
    }
}

/// Where one Transit request goes: mount, operation, key, and the request-level hash algorithm
/// (sign/verify/hmac only; `None` = the key's default).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// Transit mount.
    pub mount: &'a str,
    /// The operation.
    pub op: Op,
    /// Key name.
    pub key: &'a str,
    /// Hash algorithm, one of Vault's names (checked by the caller against a fixed list).
    pub algorithm: Option<&'a str>,
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
    /// Base64 input (sign, verify, hmac). Always sent for those, even when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Signature to verify (`vault:vN:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// HMAC to verify (`vault:vN:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
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
            .field("input", &opt_len(&self.input))
            .field("signature", &self.signature)
            .field("hmac", &self.hmac)
            .finish()
    }
}

impl BatchItem {
    /// This item as a JSON object, fields in the order of the struct (serde's order).
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for (key, value) in [
            ("plaintext", &self.plaintext),
            ("ciphertext", &self.ciphertext),
            ("context", &self.context),
            ("associated_data", &self.associated_data),
        ] {
            if let Some(value) = value {
                json_key(out, &mut first, key);
                json_string(out, value);
            }
        }
        if let Some(version) = self.key_version {
            json_key(out, &mut first, "key_version");
            // Writing into a Vec cannot fail.
            let _ = std::io::Write::write_fmt(out, format_args!("{version}"));
        }
        for (key, value) in [("input", &self.input), ("signature", &self.signature), ("hmac", &self.hmac)] {
            if let Some(value) = value {
                json_key(out, &mut first, key);
                json_string(out, value);
            }
        }
        out.push(b'}');
    }

    /// How many JSON strings this item adds to a request body (OpenBao's `max_request_json_strings`
    /// counts keys and string values; numbers count only their key).
    pub fn json_strings(&self) -> usize {
        let pair = |o: &Option<String>| if o.is_some() { 2 } else { 0 };
        pair(&self.plaintext)
            + pair(&self.ciphertext)
            + pair(&self.context)
            + pair(&self.associated_data)
            + pair(&self.input)
            + pair(&self.signature)
            + pair(&self.hmac)
            + usize::from(self.key_version.is_some())
    }

    /// Approximate JSON size of this item in bytes, for the request-size budget.
    pub fn json_bytes(&self) -> usize {
        let len = |o: &Option<String>| o.as_ref().map_or(0, |s| s.len() + 24);
        len(&self.plaintext)
            + len(&self.ciphertext)
            + len(&self.context)
            + len(&self.associated_data)
            + len(&self.input)
            + len(&self.signature)
            + len(&self.hmac)
            + 24
    }
}

/// One entry of `batch_results`: either a value or an `error` (`Debug` redacts the plaintext).
#[derive(Clone, Deserialize, Default)]
pub struct BatchResult {
    /// Encrypt, rewrap: the ciphertext.
    #[serde(default)]
    pub ciphertext: Option<String>,
    /// Decrypt: the base64 plaintext.
    #[serde(default)]
    pub plaintext: Option<String>,
    /// Encrypt, sign, rewrap: the key version used.
    #[serde(default)]
    pub key_version: Option<u32>,
    /// Sign: the signature (`vault:vN:…`).
    #[serde(default)]
    pub signature: Option<String>,
    /// Hmac: the HMAC (`vault:vN:…`; Vault sends no `key_version` with it).
    #[serde(default)]
    pub hmac: Option<String>,
    /// Verify: whether the signature or HMAC matches. Vault leaves it out of a failed HMAC
    /// verification (`{"reference":""}`) [V], so absent means false.
    #[serde(default)]
    pub valid: Option<bool>,
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
            .field("signature", &self.signature)
            .field("hmac", &self.hmac)
            .field("valid", &self.valid)
            .field("error", &self.error)
            .finish()
    }
}

/// `data` of a Transit batch answer (crate-visible: the fuzz target decodes this very type).
#[derive(Deserialize)]
pub(crate) struct BatchData {
    pub(crate) batch_results: Vec<BatchResult>,
}

/// The body of a datakey request (base64 values; `None` fields are not sent).
#[derive(Serialize)]
pub struct DatakeyBody {
    /// Derivation context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// AEAD associated data (the wrapped key needs it again to be decrypted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub associated_data: Option<String>,
    /// Data key size.
    pub bits: u32,
}

/// A request body: the items (or the one item's fields) and the request-level algorithm field.
#[derive(Serialize)]
struct Body<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    hash_algorithm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<&'a str>,
    #[serde(flatten)]
    items: T,
}

/// The batch body as serde writes it: the reference [`batch_body`] is tested against.
#[cfg(test)]
#[derive(Serialize)]
struct BatchInput<'a> {
    batch_input: &'a [BatchItem],
}

impl<'a, T: Serialize> Body<'a, T> {
    fn new(at: &Endpoint<'a>, items: T) -> Body<'a, T> {
        let (mut hash_algorithm, mut algorithm) = (None, None);
        match at.op.algorithm_field() {
            Some("algorithm") => algorithm = at.algorithm,
            Some(_) => hash_algorithm = at.algorithm,
            None => {}
        }
        Body { hash_algorithm, algorithm, items }
    }
}

/// The JSON of a batch request, `Body { batch_input }` as serde would write it, byte for byte,
/// written by hand into one buffer sized from the items' budgeted sizes: serde_json grew its
/// buffer a dozen times for a 100-item batch and checked every byte of every string for
/// escaping, and a batch's strings are base64 or `vault:vN:` values that need none (one
/// vectorised pass finds out; a string that does need escaping goes through serde_json).
pub(crate) fn batch_body(at: &Endpoint<'_>, items: &[BatchItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + items.iter().map(BatchItem::json_bytes).sum::<usize>());
    out.push(b'{');
    let mut first = true;
    if let (Some(field), Some(algorithm)) = (at.op.algorithm_field(), at.algorithm) {
        json_key(&mut out, &mut first, field);
        json_string(&mut out, algorithm);
    }
    json_key(&mut out, &mut first, "batch_input");
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write_json(&mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

/// `"key":`, after a comma unless it is the object's `first` key (keys are this module's
/// constants: nothing to escape).
fn json_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `s` as a JSON string, exactly as serde_json writes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // No early exit, so the compiler vectorises the check.
    let plain = s.bytes().fold(true, |plain, b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let mut escaped = serde_json::Serializer::new(out);
        // Serialising a str into a Vec cannot fail.
        let _ = serde::Serializer::serialize_str(&mut escaped, s);
    }
}

/// JSON strings a request body adds besides its items: the `batch_input` key and, when set, the
/// algorithm field's key and value.
pub fn body_strings(algorithm: Option<&str>) -> usize {
    1 + if algorithm.is_some() { 2 } else { 0 }
}

/// Key metadata as `GET transit/keys/:name` returns it (key material is never requested).
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// `POST <mount>/{encrypt,decrypt,sign,verify,hmac,rewrap}/:key` with `batch_input`; results in
    /// input order. A whole-request failure is an `Err`; per-item failures are in each result's
    /// `error`.
    pub async fn transit_batch(
        &self,
        token: &VaultToken,
        at: Endpoint<'_>,
        items: &[BatchItem],
        deadline: Option<Instant>,
    ) -> Result<Vec<BatchResult>, VaultError> {
        // Idempotent: sending an encryption, decryption, signature, HMAC, verification or rewrap
        // twice changes nothing in Vault.
        let call =
            Call::new(Method::POST, at.op.kind(), &[at.mount, at.op.path(), at.key]).class(Class::Transit).idempotent();
        let body = bytes::Bytes::from(batch_body(&at, items));
        let (status, bytes) = self.send_bytes(call, Some(token), Some(body), deadline).await?;
        let code = status.as_u16();
        // 200 all ok (or item errors without a flag: always so for sign/verify/hmac), 400
        // some/all items failed, 207 partial override.
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

    /// `POST <mount>/{encrypt,decrypt,sign,verify,hmac,rewrap}/:key` with one item in the request body
    /// (no batch).
    pub async fn transit_single(
        &self,
        token: &VaultToken,
        at: Endpoint<'_>,
        item: &BatchItem,
        deadline: Option<Instant>,
    ) -> Result<BatchResult, VaultError> {
        let call =
            Call::new(Method::POST, at.op.kind(), &[at.mount, at.op.path(), at.key]).class(Class::Transit).idempotent();
        let env: Envelope<BatchResult> = self.call(call, Some(token), Some(&Body::new(&at, item)), deadline).await?;
        env.data.ok_or_else(|| VaultError::Decode("transit answer without data".into()))
    }

    /// `POST <mount>/datakey/plaintext/:key`: a new data key, in plaintext and wrapped.
    pub async fn transit_datakey(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        body: &DatakeyBody,
        deadline: Option<Instant>,
    ) -> Result<Ciphertext, VaultError> {
        let call = Call::new(Method::POST, "transit/datakey", &[mount, "datakey/plaintext", key]).class(Class::Transit);
        let env: Envelope<Ciphertext> = self.call(call, Some(token), Some(body), deadline).await?;
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
    fn the_algorithm_goes_in_the_body_under_the_field_of_its_operation() {
        let item = BatchItem { input: Some("aGk=".into()), ..Default::default() };
        let items = std::slice::from_ref(&item);
        let cases = [
            (Op::Sign, Some("sha2-512"), r#"{"hash_algorithm":"sha2-512","batch_input":[{"input":"aGk="}]}"#),
            (Op::VerifyHmac, Some("sha2-512"), r#"{"hash_algorithm":"sha2-512","batch_input":[{"input":"aGk="}]}"#),
            (Op::Hmac, Some("sha2-384"), r#"{"algorithm":"sha2-384","batch_input":[{"input":"aGk="}]}"#),
            (Op::Hmac, None, r#"{"batch_input":[{"input":"aGk="}]}"#),
            (Op::Encrypt, Some("ignored"), r#"{"batch_input":[{"input":"aGk="}]}"#),
        ];
        for (op, algorithm, want) in cases {
            let at = Endpoint { mount: "transit", op, key: "k", algorithm };
            let json = String::from_utf8(batch_body(&at, items)).unwrap();
            assert_eq!(json, want, "{op:?}");
            assert_eq!(json, serde_json::to_string(&Body::new(&at, BatchInput { batch_input: items })).unwrap());
            // The strings counted for the body match the serialised body.
            let counted = body_strings(at.algorithm.filter(|_| op.algorithm_field().is_some())) + item.json_strings();
            assert_eq!(json.matches('"').count() / 2, counted, "{op:?}");
        }
        // A single call carries the item's fields at the top level.
        let at = Endpoint { mount: "transit", op: Op::Hmac, key: "k", algorithm: Some("sha2-256") };
        assert_eq!(
            serde_json::to_string(&Body::new(&at, &item)).unwrap(),
            r#"{"algorithm":"sha2-256","input":"aGk="}"#
        );
    }

    #[test]
    fn the_batch_body_is_what_serde_writes_byte_for_byte() {
        // Strings that need escaping, or look as if they might, and every field.
        let odd = ["", "a\"b", "back\\slash", "new\nline", "\u{1}\u{1f}", "\u{7f}", "é ✓ \u{2028}", "/</script>", " "];
        let mut items: Vec<BatchItem> = odd
            .iter()
            .map(|s| BatchItem {
                plaintext: Some(s.to_string()),
                ciphertext: Some(format!("vault:v1:{s}")),
                context: Some(s.to_string()),
                associated_data: Some(s.to_string()),
                key_version: Some(u32::MAX),
                input: Some(s.to_string()),
                signature: Some(s.to_string()),
                hmac: Some(s.to_string()),
            })
            .collect();
        items.push(BatchItem::default());
        items.push(BatchItem { key_version: Some(0), ..Default::default() });
        items.push(BatchItem { plaintext: Some("aGk=".into()), key_version: Some(7), ..Default::default() });
        for op in [Op::Encrypt, Op::Decrypt, Op::Sign, Op::Verify, Op::Hmac, Op::VerifyHmac, Op::Rewrap] {
            for algorithm in [None, Some("sha2-256"), Some("odd\"name")] {
                let at = Endpoint { mount: "transit", op, key: "k", algorithm };
                for items in [&items[..], &items[..1], &[]] {
                    let want = serde_json::to_vec(&Body::new(&at, BatchInput { batch_input: items })).unwrap();
                    let got = batch_body(&at, items);
                    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want), "{op:?} {algorithm:?}");
                }
            }
        }
        // The buffer is sized once for what batches carry (base64 values, `vault:vN:` values).
        let real: Vec<BatchItem> = (0..100)
            .map(|i| BatchItem {
                plaintext: Some(b64(&[i as u8; 64])),
                context: Some(b64(b"tenant-7")),
                key_version: Some(i),
                ..Default::default()
            })
            .chain((0..100).map(|i| BatchItem {
                ciphertext: Some(format!("vault:v1:{}", b64(&[i as u8; 92]))),
                ..Default::default()
            }))
            .collect();
        let at = Endpoint { mount: "transit", op: Op::Sign, key: "k", algorithm: Some("sha2-512") };
        let reserved = 64 + real.iter().map(BatchItem::json_bytes).sum::<usize>();
        assert!(batch_body(&at, &real).len() <= reserved, "the body outgrew its first buffer");
    }

    #[test]
    fn sign_verify_and_hmac_results_parse_as_openbao_answers_them() {
        // Verbatim from OpenBao 2.7.2 (VAULT-API.md §1.2): a failed HMAC verification has no `valid`.
        let body = br#"{"data":{"batch_results":[{"signature":"vault:v1:mRpk","key_version":1,"reference":""},{"key_version":0,"error":"unable to decode input as base64","reference":""},{"valid":true,"reference":""},{"reference":""},{"hmac":"vault:v1:0kZc","reference":""}]}}"#;
        let env: Envelope<BatchData> = serde_json::from_slice(body).unwrap();
        let r = env.data.unwrap().batch_results;
        assert_eq!((r[0].signature.as_deref(), r[0].key_version), (Some("vault:v1:mRpk"), Some(1)));
        assert!(r[1].error.is_some());
        assert_eq!(r[2].valid, Some(true));
        assert_eq!((r[3].valid, r[3].error.as_deref()), (None, None));
        assert_eq!(r[4].hmac.as_deref(), Some("vault:v1:0kZc"));
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
