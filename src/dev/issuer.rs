//! The demo JWT issuer of dev mode: a fresh ES256 key pair per run, whose public key Vault's JWT
//! auth method trusts, and the demo callers' JWTs signed with it.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `iss` of every demo JWT; Vault's JWT config binds it.
pub const ISSUER: &str = "https://vaultgate.dev.local";
/// The `aud` of every demo JWT; Vault's roles bind it.
pub const AUDIENCE: &str = "vaultgate";

/// A signing key and its public half.
pub struct Issuer {
    key: EncodingKey,
    /// PEM public key (SPKI), for `auth/jwt/config jwt_validation_pubkeys`.
    pub public_pem: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl Issuer {
    /// Generates a new ECDSA P-256 key pair.
    pub fn generate() -> Result<Issuer, String> {
        let pair = rcgen::KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).map_err(|e| format!("signing key: {e}"))?;
        Ok(Issuer { key, public_pem: pair.public_key_pem() })
    }

    /// A JWT for `subject`, valid for `ttl_secs` from now (negative: already expired, for tests).
    pub fn mint(&self, subject: &str, ttl_secs: i64) -> Result<String, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
        let exp = now.saturating_add_signed(ttl_secs);
        let iat = now.min(exp.saturating_sub(1));
        let claims = Claims { iss: ISSUER, sub: subject, aud: AUDIENCE, iat, nbf: iat.saturating_sub(60), exp };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key).map_err(|e| format!("signing: {e}"))
    }

    /// A JWT with exactly these claims (e.g. a Kubernetes service-account token's), for tests and demos.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.key).map_err(|e| format!("signing: {e}"))
    }
}
