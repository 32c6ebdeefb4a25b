//! Redacting `Debug` for the types that carry a secret: plaintexts, data keys, secret values,
//! passwords, JWTs, private keys. Each prints its other fields and only the *length* of the
//! secret, so a stray `{:?}` in a log, an error or a test message cannot leak it. (Tokens are
//! [`crate::vault::VaultToken`], redacted at the source; [`crate::session::Credentials`] and
//! [`crate::vault::auth::AuthInfo`] redact their own.)
//!
//! Invariant: every type holding a JWT, token, plaintext, data key, password or secret value has
//! a `Debug` that never prints it; the test below formats each one holding a marker and looks for it.

use crate::pb::vaultgate::v1 as pb;
use std::fmt;

/// What a redacted field shows: its length only.
pub(crate) struct Redacted(pub usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

/// The length of an optional secret, for [`Redacted`].
pub(crate) fn opt_len(s: &Option<String>) -> Option<Redacted> {
    s.as_ref().map(|s| Redacted(s.len()))
}

impl fmt::Debug for pb::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("key", &self.key)
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("context", &Redacted(self.context.len()))
            .field("associated_data", &Redacted(self.associated_data.len()))
            .field("key_version", &self.key_version)
            .finish()
    }
}

impl fmt::Debug for pb::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key_version", &self.key_version)
            .field("rewrap_recommended", &self.rewrap_recommended)
            .field("latest_version", &self.latest_version)
            .finish()
    }
}

impl fmt::Debug for pb::EncryptBatchItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptBatchItem")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("context", &Redacted(self.context.len()))
            .field("associated_data", &Redacted(self.associated_data.len()))
            .finish()
    }
}

impl fmt::Debug for pb::DecryptBatchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptBatchResult")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("error", &self.error)
            .field("key_version", &self.key_version)
            .field("rewrap_recommended", &self.rewrap_recommended)
            .field("latest_version", &self.latest_version)
            .finish()
    }
}

impl fmt::Debug for pb::GenerateDataKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateDataKeyResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("ciphertext", &self.ciphertext)
            .field("key_version", &self.key_version)
            .finish()
    }
}

impl fmt::Debug for pb::GetSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetSecretResponse")
            .field("data", &self.data.as_ref().map(|d| format!("<redacted: {} fields>", d.fields.len())))
            .field("version", &self.version)
            .field("created_time", &self.created_time)
            .field("stale", &self.stale)
            .field("age", &self.age)
            .finish()
    }
}

impl fmt::Debug for pb::GetDbCredsResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetDbCredsResponse")
            .field("username", &self.username)
            .field("password", &Redacted(self.password.len()))
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("lease_token", &self.lease_token)
            .finish()
    }
}

impl fmt::Debug for pb::WatchSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchSecretResponse")
            .field("data", &self.data.as_ref().map(|d| format!("<redacted: {} fields>", d.fields.len())))
            .field("version", &self.version)
            .field("created_time", &self.created_time)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl fmt::Debug for pb::WatchDbCredsResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchDbCredsResponse")
            .field("event", &self.event())
            .field("username", &self.username)
            .field("password", &Redacted(self.password.len()))
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("lease_token", &self.lease_token)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl fmt::Debug for pb::IssueCertificateResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueCertificateResponse")
            .field("certificate", &self.certificate)
            .field("private_key", &Redacted(self.private_key.len()))
            .field("ca_chain", &self.ca_chain)
            .field("serial_number", &self.serial_number)
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl fmt::Debug for pb::RevokeCertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeCertificateRequest")
            .field("certificate", &self.certificate)
            .field("serial_number", &self.serial_number)
            .field("private_key", &Redacted(self.private_key.len()))
            .field("mount", &self.mount)
            .finish()
    }
}

/// Inputs to sign or HMAC may be secret (an HMAC over an id makes it tamper-evident, not public).
macro_rules! redacted_input {
    ($($message:ident { $($field:ident),* }),* $(,)?) => {$(
        impl fmt::Debug for pb::$message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($message))
                    .field("key", &self.key)
                    .field("input", &Redacted(self.input.len()))
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    )*};
}

redacted_input!(
    SignRequest { hash_algorithm },
    VerifyRequest { signature, hash_algorithm },
    HmacRequest { algorithm },
    VerifyHmacRequest { hmac, algorithm },
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{self, auth, database, kv, transit, VaultToken};

    /// A marker that stands for every secret; no formatted value may contain it.
    const S: &str = "SeCrEt-MaRkEr-42";

    fn assert_redacted(name: &str, printed: String) {
        assert!(!printed.contains(S), "{name} leaks its secret: {printed}");
        // The secret is still accounted for (the type printed *something* for it).
        assert!(printed.contains("redacted"), "{name} shows no redaction: {printed}");
    }

    #[test]
    fn every_secret_holding_type_has_a_redacting_debug() {
        let b = || S.as_bytes().to_vec();
        let s = || S.to_string();
        let mut data = prost_types::Struct::default();
        data.fields
            .insert("api_key".into(), prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s())) });
        let json: serde_json::Value = serde_json::json!({"api_key": S});
        let env: vault::Envelope<serde_json::Value> = serde_json::from_value(serde_json::json!({
            "data": {"password": S}, "auth": {"client_token": S, "accessor": "acc"}, "lease_id": "l"
        }))
        .unwrap();
        let cases: Vec<(&str, String)> = vec![
            (
                "pb::EncryptRequest",
                format!(
                    "{:?}",
                    pb::EncryptRequest {
                        key: "k".into(),
                        plaintext: b(),
                        context: b(),
                        associated_data: b(),
                        key_version: 0,
                        mount: String::new()
                    }
                ),
            ),
            (
                "pb::DecryptResponse",
                format!("{:?}", pb::DecryptResponse { plaintext: b(), key_version: 1, ..Default::default() }),
            ),
            (
                "pb::EncryptBatchItem",
                format!(
                    "{:?}",
                    pb::EncryptBatchItem { plaintext: b(), context: b(), associated_data: b(), key_version: 0 }
                ),
            ),
            (
                "pb::DecryptBatchResponse",
                format!(
                    "{:?}",
                    pb::DecryptBatchResponse {
                        results: vec![pb::DecryptBatchResult { plaintext: b(), key_version: 1, ..Default::default() }]
                    }
                ),
            ),
            (
                "pb::EncryptBatchRequest",
                format!(
                    "{:?}",
                    pb::EncryptBatchRequest {
                        key: "k".into(),
                        items: vec![pb::EncryptBatchItem { plaintext: b(), ..Default::default() }],
                        mount: String::new()
                    }
                ),
            ),
            (
                "pb::GenerateDataKeyResponse",
                format!(
                    "{:?}",
                    pb::GenerateDataKeyResponse { plaintext: b(), ciphertext: "vault:v1:x".into(), key_version: 1 }
                ),
            ),
            (
                "pb::GetSecretResponse",
                format!("{:?}", pb::GetSecretResponse { data: Some(data.clone()), version: 1, ..Default::default() }),
            ),
            (
                "pb::GetDbCredsResponse",
                format!("{:?}", pb::GetDbCredsResponse { username: "u".into(), password: s(), ..Default::default() }),
            ),
            (
                "pb::WatchSecretResponse",
                format!("{:?}", pb::WatchSecretResponse { data: Some(data.clone()), version: 1, ..Default::default() }),
            ),
            (
                "pb::WatchDbCredsResponse",
                format!("{:?}", pb::WatchDbCredsResponse { username: "u".into(), password: s(), ..Default::default() }),
            ),
            (
                "pb::IssueCertificateResponse",
                format!(
                    "{:?}",
                    pb::IssueCertificateResponse { certificate: "c".into(), private_key: s(), ..Default::default() }
                ),
            ),
            (
                "pb::RevokeCertificateRequest",
                format!(
                    "{:?}",
                    pb::RevokeCertificateRequest { serial_number: "01".into(), private_key: s(), ..Default::default() }
                ),
            ),
            ("pki::PrivateKey", format!("{:?}", crate::vault::pki::PrivateKey::new(S))),
            ("pb::SignRequest", format!("{:?}", pb::SignRequest { key: "k".into(), input: b(), ..Default::default() })),
            (
                "pb::VerifyRequest",
                format!("{:?}", pb::VerifyRequest { key: "k".into(), input: b(), ..Default::default() }),
            ),
            ("pb::HmacRequest", format!("{:?}", pb::HmacRequest { key: "k".into(), input: b(), ..Default::default() })),
            (
                "pb::VerifyHmacRequest",
                format!("{:?}", pb::VerifyHmacRequest { key: "k".into(), input: b(), ..Default::default() }),
            ),
            (
                "transit::BatchItem (sign)",
                format!("{:?}", transit::BatchItem { input: Some(s()), ..Default::default() }),
            ),
            ("VaultToken", format!("{:?}", VaultToken::new(S))),
            ("auth::AuthInfo", format!("{:?}", env.auth.clone().unwrap())),
            (
                "auth::Login",
                format!(
                    "{:?}",
                    auth::Login {
                        token: VaultToken::new(S),
                        accessor: "a".into(),
                        policies: vec![],
                        ttl: 1,
                        renewable: true
                    }
                ),
            ),
            ("vault::Envelope", format!("{env:?}")),
            ("database::Credentials", format!("{:?}", database::Credentials { username: "u".into(), password: s() })),
            (
                "kv::Secret",
                format!(
                    "{:?}",
                    kv::Secret {
                        data: json.as_object().cloned(),
                        metadata: kv::SecretMetadata { created_time: "t".into(), version: 1 }
                    }
                ),
            ),
            (
                "transit::BatchItem",
                format!(
                    "{:?}",
                    transit::BatchItem {
                        plaintext: Some(s()),
                        context: Some(s()),
                        associated_data: Some(s()),
                        ..Default::default()
                    }
                ),
            ),
            (
                "transit::BatchResult",
                format!("{:?}", transit::BatchResult { plaintext: Some(s()), ..Default::default() }),
            ),
            (
                "transit::Ciphertext",
                format!(
                    "{:?}",
                    transit::Ciphertext { ciphertext: "vault:v1:x".into(), key_version: 1, plaintext: Some(s()) }
                ),
            ),
            ("session::Credentials", format!("{:?}", crate::session::Credentials::Bearer(S))),
            ("dev::provision::PgTarget", format!("{:?}", crate::dev::provision::PgTarget { port: 1, password: s() })),
            ("dev::certs::Pair", format!("{:?}", crate::dev::certs::Pair { cert_pem: "cert".into(), key_pem: s() })),
        ];
        for (name, printed) in cases {
            assert_redacted(name, printed);
        }
    }
}
