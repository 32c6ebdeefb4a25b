//! Auth calls: logins that turn a caller's credentials into a Vault token, and token
//! self-management (`lookup-self`, `renew-self`, `revoke-self`).
//! Docs: <https://openbao.org/api-docs/auth/jwt/>, <https://openbao.org/api-docs/auth/token/>.

use super::{Call, Client, Envelope, VaultError, VaultToken};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The `auth` block of a login or renewal answer.
#[derive(Clone, Deserialize)]
pub struct AuthInfo {
    /// The token.
    pub client_token: String,
    /// Policies attached to the token.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Seconds the token lives.
    #[serde(default)]
    pub lease_duration: u64,
    /// Whether renew-self works.
    #[serde(default)]
    pub renewable: bool,
}

impl std::fmt::Debug for AuthInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInfo")
            .field("client_token", &"<redacted>")
            .field("policies", &self.policies)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// A token issued by a login, with what Vault told about it.
#[derive(Debug, Clone)]
pub struct Login {
    /// The token.
    pub token: VaultToken,
    /// Its policies.
    pub policies: Vec<String>,
    /// Seconds it lives.
    pub ttl: u64,
    /// Whether it can be renewed.
    pub renewable: bool,
}

#[derive(Serialize)]
struct JwtLogin<'a> {
    role: &'a str,
    jwt: &'a str,
}

#[derive(Serialize)]
struct Increment {
    increment: u64,
}

fn login_from(env: Envelope<serde_json::Value>) -> Result<Login, VaultError> {
    let auth = env.auth.ok_or_else(|| VaultError::Decode("login answer without auth".into()))?;
    Ok(Login {
        token: VaultToken::new(auth.client_token),
        policies: auth.policies,
        ttl: auth.lease_duration,
        renewable: auth.renewable,
    })
}

impl Client {
    /// `POST auth/<mount>/login {role, jwt}`: Vault verifies the caller's JWT against `role`.
    pub async fn login_jwt(
        &self,
        mount: &str,
        role: &str,
        jwt: &str,
        deadline: Option<Instant>,
    ) -> Result<Login, VaultError> {
        // Idempotent enough: a repeated login only leaves an unused token that expires on its own.
        let call = Call::new(Method::POST, &["auth", mount, "login"]).idempotent();
        login_from(self.call(call, None, Some(&JwtLogin { role, jwt }), deadline).await?)
    }

    /// `POST auth/token/renew-self {increment}`: extends the token; returns its new TTL in seconds.
    pub async fn renew_self(
        &self,
        token: &VaultToken,
        increment: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, VaultError> {
        let call = Call::new(Method::POST, &["auth/token/renew-self"]);
        let env: Envelope<serde_json::Value> =
            self.call(call, Some(token), Some(&Increment { increment }), deadline).await?;
        Ok(env.auth.map(|a| a.lease_duration).unwrap_or(0))
    }

    /// `POST auth/token/revoke-self`: ends the token and every lease it parents.
    pub async fn revoke_self(&self, token: &VaultToken, deadline: Option<Instant>) -> Result<(), VaultError> {
        self.call_empty::<()>(Call::new(Method::POST, &["auth/token/revoke-self"]), Some(token), None, deadline).await
    }
}
