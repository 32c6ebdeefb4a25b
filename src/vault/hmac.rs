//! Transit HMAC: the gateway signs and verifies lease-ownership tags with a Transit key, so every
//! replica can check a tag without sharing memory or holding the key itself.
//! Docs: <https://openbao.org/api-docs/secret/transit/#generate-hmac>.

use super::{transit::b64, Call, Class, Client, Envelope, VaultError, VaultToken};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Serialize)]
struct HmacBody<'a> {
    input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hmac: Option<&'a str>,
}

#[derive(Deserialize)]
struct HmacData {
    #[serde(default)]
    hmac: String,
}

#[derive(Deserialize)]
struct VerifyData {
    #[serde(default)]
    valid: bool,
}

impl Client {
    /// `POST <mount>/hmac/<key> {input}`: the HMAC (`vault:vN:…`) of `input`.
    pub async fn transit_hmac(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        input: &[u8],
        deadline: Option<Instant>,
    ) -> Result<String, VaultError> {
        let body = HmacBody { input: b64(input), hmac: None };
        let env: Envelope<HmacData> = self
            .call(
                Call::new(Method::POST, "transit/hmac", &[mount, "hmac", key]).class(Class::Transit).idempotent(),
                Some(token),
                Some(&body),
                deadline,
            )
            .await?;
        match env.data.map(|d| d.hmac) {
            Some(h) if h.starts_with("vault:") => Ok(h),
            _ => Err(VaultError::Decode("hmac answer without an hmac".into())),
        }
    }

    /// `POST <mount>/verify/<key> {input, hmac}`: whether `hmac` is the key's HMAC of `input`
    /// (any version still allowed for verification).
    pub async fn transit_verify_hmac(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        input: &[u8],
        hmac: &str,
        deadline: Option<Instant>,
    ) -> Result<bool, VaultError> {
        let body = HmacBody { input: b64(input), hmac: Some(hmac) };
        let env: Envelope<VerifyData> = self
            .call(
                Call::new(Method::POST, "transit/verify", &[mount, "verify", key]).class(Class::Transit).idempotent(),
                Some(token),
                Some(&body),
                deadline,
            )
            .await?;
        Ok(env.data.is_some_and(|d| d.valid))
    }
}
