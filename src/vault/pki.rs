//! PKI engine calls: issue (Vault makes the key pair), sign (the caller's CSR), revoke with proof
//! of possession, and the CA chain. Docs: <https://openbao.org/api-docs/secret/pki/>.
//!
//! Invariant: a private key passes through once. It is held in a [`PrivateKey`] (redacted
//! `Debug`), moved into the caller's answer or borrowed into the revoke body, and never logged,
//! cached or kept. Issue and sign create a certificate each time, so neither is retried once Vault
//! may have acted; revoke is not retried either (OpenBao answers a key mismatch with HTTP 500 [V]).

use super::{Call, Client, Envelope, VaultError, VaultToken};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::fmt;
use tokio::time::Instant;

/// A private key in PEM. Its `Debug` is redacted; the only way to the text is [`PrivateKey::expose`]
/// or [`PrivateKey::into_pem`].
#[derive(Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct PrivateKey(String);

impl PrivateKey {
    /// Wraps a PEM private key.
    pub fn new(pem: impl Into<String>) -> PrivateKey {
        PrivateKey(pem.into())
    }

    /// The PEM text, for the request body of `revoke-with-key` only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The PEM text, moved into the caller's answer, ending in a newline.
    pub fn into_pem(self) -> String {
        with_newline(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// What to certify: the body of `issue/:role` and `sign/:role`.
#[derive(Debug, Serialize, Default)]
pub struct CertRequest<'a> {
    /// Subject common name ("" is not sent: for sign, the CSR's is used).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub common_name: &'a str,
    /// Comma-separated DNS/email SANs (the caller's names were checked to hold no comma).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alt_names: String,
    /// Comma-separated IP SANs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip_sans: String,
    /// Lifetime such as `3600s`; unset means the role's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Sign only: the CSR in PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csr: Option<&'a str>,
    /// Issue only: `pkcs8`, one PEM form that every TLS stack reads, whatever the key type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_format: Option<&'static str>,
}

/// Which PKI endpoint certifies: `issue/:role` (Vault makes the key) or `sign/:role` (the caller's CSR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certify {
    /// `issue/:role`: the answer must carry the new private key.
    Issue,
    /// `sign/:role`.
    Sign,
}

/// A certificate from `issue/:role` or `sign/:role`.
#[derive(Debug, Deserialize)]
pub struct Certificate {
    /// PEM certificate.
    pub certificate: String,
    /// The issuing CA first, then its issuers (PEM each).
    #[serde(default)]
    pub ca_chain: Vec<String>,
    /// The issuing CA (PEM), used when `ca_chain` is absent.
    #[serde(default)]
    pub issuing_ca: String,
    /// Colon-separated hex serial.
    pub serial_number: String,
    /// Expiry, Unix seconds.
    #[serde(default)]
    pub expiration: i64,
    /// Issue only: the new private key.
    #[serde(default)]
    pub private_key: Option<PrivateKey>,
}

impl Certificate {
    /// The CA chain, issuing CA first, each block ending in a newline (as [`pem_blocks`] gives
    /// them); the issuing CA alone when Vault sent no chain.
    pub fn chain(&mut self) -> Vec<String> {
        match std::mem::take(&mut self.ca_chain) {
            chain if !chain.is_empty() => chain.iter().flat_map(|c| pem_blocks(c)).collect(),
            _ => pem_blocks(&std::mem::take(&mut self.issuing_ca)),
        }
    }
}

/// A PEM value ending in a newline, the form files and [`pem_blocks`] have (Vault sends none).
pub fn with_newline(mut pem: String) -> String {
    if !pem.is_empty() && !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem
}

/// Which certificate to revoke, and its private key as proof of possession.
#[derive(Serialize)]
pub struct RevokeRequest<'a> {
    /// PEM certificate, or
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<&'a str>,
    /// its serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<&'a str>,
    /// The certificate's private key (PEM).
    pub private_key: &'a str,
}

impl fmt::Debug for RevokeRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("certificate", &self.certificate.map(|_| "<pem>"))
            .field("serial_number", &self.serial_number)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Revoked {
    #[serde(default)]
    revocation_time: i64,
}

#[derive(Debug, Deserialize)]
struct CaChain {
    #[serde(default)]
    ca_chain: String,
    #[serde(default)]
    certificate: String,
}

/// The PEM blocks of a bundle, each with its END line and a final newline.
pub fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(len) = rest[start..].find(END) else { break };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

impl Client {
    /// `POST <mount>/issue/:role` (a new key pair and certificate, PKCS#8 key) or
    /// `POST <mount>/sign/:role` (a certificate for the CSR's public key), as `op` says.
    pub async fn pki_certify(
        &self,
        op: Certify,
        token: &VaultToken,
        mount: &str,
        role: &str,
        body: &CertRequest<'_>,
        deadline: Option<Instant>,
    ) -> Result<Certificate, VaultError> {
        // Not idempotent: every issue creates another certificate (and key); every sign another certificate.
        let (kind, segment) = match op {
            Certify::Issue => ("pki/issue", "issue"),
            Certify::Sign => ("pki/sign", "sign"),
        };
        let env: Envelope<Certificate> = self
            .call(Call::new(Method::POST, kind, &[mount, segment, role]), Some(token), Some(body), deadline)
            .await?;
        let cert = env.data.ok_or_else(|| VaultError::Decode(format!("{segment} answer without data")))?;
        if op == Certify::Issue && cert.private_key.as_ref().is_none_or(|k| k.expose().is_empty()) {
            return Err(VaultError::Decode("issue answer without a private key".into()));
        }
        Ok(cert)
    }

    /// `POST <mount>/revoke-with-key`: Vault revokes the certificate only if the private key
    /// matches it. Returns the revocation time (Unix seconds; the first one if already revoked).
    pub async fn pki_revoke_with_key(
        &self,
        token: &VaultToken,
        mount: &str,
        body: &RevokeRequest<'_>,
        deadline: Option<Instant>,
    ) -> Result<i64, VaultError> {
        let env: Envelope<Revoked> = self
            .call(
                Call::new(Method::POST, "pki/revoke-with-key", &[mount, "revoke-with-key"]),
                Some(token),
                Some(body),
                deadline,
            )
            .await?;
        Ok(env.data.map_or(0, |d| d.revocation_time))
    }

    /// `GET <mount>/cert/ca_chain`: the mount's CA chain as PEM blocks, issuing CA first.
    pub async fn pki_ca_chain(
        &self,
        token: &VaultToken,
        mount: &str,
        deadline: Option<Instant>,
    ) -> Result<Vec<String>, VaultError> {
        let call = Call::new(Method::GET, "pki/ca_chain", &[mount, "cert", "ca_chain"]).idempotent();
        let env: Envelope<CaChain> = self.call::<(), _>(call, Some(token), None, deadline).await?;
        let data = env.data.ok_or_else(|| VaultError::Decode("ca_chain answer without data".into()))?;
        let bundle = if data.ca_chain.is_empty() { data.certificate } else { data.ca_chain };
        let blocks = pem_blocks(&bundle);
        if blocks.is_empty() {
            return Err(VaultError::Decode("the PKI mount has no CA certificate".into()));
        }
        Ok(blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_redacted_in_debug() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n";
        let key = PrivateKey::new(pem);
        assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
        let cert = Certificate {
            certificate: "CERT".into(),
            ca_chain: vec![],
            issuing_ca: String::new(),
            serial_number: "01".into(),
            expiration: 1,
            private_key: Some(key.clone()),
        };
        let revoke = RevokeRequest { certificate: None, serial_number: Some("01"), private_key: pem };
        for shown in [format!("{cert:?}"), format!("{cert:#?}"), format!("{revoke:?}"), format!("{revoke:#?}")] {
            assert!(!shown.contains("MIGHAgEA") && !shown.contains("BEGIN PRIVATE"), "{shown}");
        }
        // The body sent to Vault does carry it.
        assert!(serde_json::to_string(&revoke).unwrap().contains("MIGHAgEA"));
        assert_eq!(key.into_pem(), pem);
    }

    #[test]
    fn bundles_split_into_pem_blocks() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----";
        assert_eq!(pem_blocks(&format!("{a}\n{b}\n")), vec![format!("{a}\n"), format!("{b}\n")]);
        assert_eq!(pem_blocks(&format!("{a}{b}")).len(), 2);
        assert!(pem_blocks("").is_empty());
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nunterminated").is_empty());
    }

    #[test]
    fn cert_requests_send_only_what_is_set() {
        let body = CertRequest {
            common_name: "api.billing.svc.cluster.local",
            alt_names: "a.billing.svc.cluster.local,b.billing.svc.cluster.local".into(),
            ttl: Some("3600s".into()),
            private_key_format: Some("pkcs8"),
            ..Default::default()
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"common_name": "api.billing.svc.cluster.local",
                "alt_names": "a.billing.svc.cluster.local,b.billing.svc.cluster.local",
                "ttl": "3600s", "private_key_format": "pkcs8"})
        );
    }
}
