//! Auth calls: logins that turn credentials into a Vault token (JWT, Kubernetes, AppRole), and
//! token self-management (`lookup-self`, `renew-self`, `revoke-self`, `sys/capabilities-self`).
//! Docs: <https://openbao.org/api-docs/auth/jwt/>, <https://openbao.org/api-docs/auth/token/>.

use super::{Call, Class, Client, Envelope, VaultError, VaultToken};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The `auth` block of a login or renewal answer.
#[derive(Clone, Deserialize)]
pub struct AuthInfo {
    /// The token.
    pub client_token: String,
    /// The token's accessor (names it for renewal or revocation without being it).
    #[serde(default)]
    pub accessor: String,
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
    /// Its accessor.
    pub accessor: String,
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
struct AppRoleLogin<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

/// What `renew-self` answered.
#[derive(Debug, Clone, Copy)]
pub struct Renewal {
    /// Seconds the token now lives.
    pub ttl: u64,
    /// Whether it can be renewed again.
    pub renewable: bool,
}

/// What `lookup-self` says about a token (never the token itself).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenInfo {
    /// The token's accessor.
    #[serde(default)]
    pub accessor: String,
    /// Policies attached to the token.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Seconds left (0: never expires).
    #[serde(default)]
    pub ttl: u64,
    /// Whether renew-self works.
    #[serde(default)]
    pub renewable: bool,
}

#[derive(Serialize)]
struct Paths<'a> {
    paths: &'a [String],
}

#[derive(Serialize)]
struct Increment {
    increment: u64,
}

fn login_from(env: Envelope<serde_json::Value>) -> Result<Login, VaultError> {
    let auth = env.auth.ok_or_else(|| VaultError::Decode("login answer without auth".into()))?;
    Ok(Login {
        token: VaultToken::new(auth.client_token),
        accessor: auth.accessor,
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
        let call = Call::new(Method::POST, "auth/login", &["auth", mount, "login"]).class(Class::Login).idempotent();
        login_from(self.call(call, None, Some(&JwtLogin { role, jwt }), deadline).await?)
    }

    /// `POST auth/<mount>/login {role_id, secret_id}`: the gateway's own login for a role whose
    /// callers are identified by certificate. Docs: <https://openbao.org/api-docs/auth/approle/>.
    pub async fn login_approle(
        &self,
        mount: &str,
        role_id: &str,
        secret_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Login, VaultError> {
        let call = Call::new(Method::POST, "auth/login", &["auth", mount, "login"]).class(Class::Login).idempotent();
        login_from(self.call(call, None, Some(&AppRoleLogin { role_id, secret_id }), deadline).await?)
    }

    /// `POST auth/token/renew-self {increment}`: extends the token; returns its new TTL in seconds.
    pub async fn renew_self(
        &self,
        token: &VaultToken,
        increment: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, VaultError> {
        Ok(self.renew_self_full(token, increment, deadline).await?.ttl)
    }

    /// `POST auth/token/renew-self {increment}`, with whether the token stays renewable. A TTL
    /// shorter than asked means the token nears its max TTL (Vault caps it, with a warning).
    pub async fn renew_self_full(
        &self,
        token: &VaultToken,
        increment: u64,
        deadline: Option<Instant>,
    ) -> Result<Renewal, VaultError> {
        let call = Call::new(Method::POST, "auth/token/renew-self", &["auth/token/renew-self"]);
        let env: Envelope<serde_json::Value> =
            self.call(call, Some(token), Some(&Increment { increment }), deadline).await?;
        let auth = env.auth.ok_or_else(|| VaultError::Decode("renew-self answer without auth".into()))?;
        Ok(Renewal { ttl: auth.lease_duration, renewable: auth.renewable })
    }

    /// `POST auth/token/renew-accessor {accessor, increment}`: renews another token by its accessor
    /// (the gateway's own token needs `update` on this path); returns the new TTL in seconds.
    pub async fn renew_accessor(
        &self,
        token: &VaultToken,
        accessor: &str,
        increment: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, VaultError> {
        #[derive(Serialize)]
        struct Body<'a> {
            accessor: &'a str,
            increment: u64,
        }
        let call = Call::new(Method::POST, "auth/token/renew-accessor", &["auth/token/renew-accessor"]);
        let env: Envelope<serde_json::Value> =
            self.call(call, Some(token), Some(&Body { accessor, increment }), deadline).await?;
        Ok(env.auth.map(|a| a.lease_duration).unwrap_or(0))
    }

    /// `GET auth/token/lookup-self`: the token's policies and remaining TTL; a 403 means the token
    /// is gone (expired or revoked).
    pub async fn lookup_self(&self, token: &VaultToken, deadline: Option<Instant>) -> Result<TokenInfo, VaultError> {
        let env: Envelope<TokenInfo> = self
            .call::<(), _>(
                Call::new(Method::GET, "auth/token/lookup-self", &["auth/token/lookup-self"]).idempotent(),
                Some(token),
                None,
                deadline,
            )
            .await?;
        env.data.ok_or_else(|| VaultError::Decode("lookup-self answer without data".into()))
    }

    /// `POST sys/capabilities-self {paths}`: the token's capabilities on each path, as Vault's
    /// policies grant them. Docs: <https://openbao.org/api-docs/system/capabilities-self/>.
    pub async fn capabilities_self(
        &self,
        token: &VaultToken,
        paths: &[String],
        deadline: Option<Instant>,
    ) -> Result<std::collections::HashMap<String, Vec<String>>, VaultError> {
        let call = Call::new(Method::POST, "sys/capabilities-self", &["sys/capabilities-self"]).idempotent();
        let env: Envelope<serde_json::Map<String, serde_json::Value>> =
            self.call(call, Some(token), Some(&Paths { paths }), deadline).await?;
        let data = env.data.unwrap_or_default();
        Ok(paths
            .iter()
            .map(|p| {
                let caps = data
                    .get(p)
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                (p.clone(), caps)
            })
            .collect())
    }

    /// `POST auth/token/revoke-self`: ends the token and every lease it parents.
    pub async fn revoke_self(&self, token: &VaultToken, deadline: Option<Instant>) -> Result<(), VaultError> {
        self.call_empty::<()>(
            Call::new(Method::POST, "auth/token/revoke-self", &["auth/token/revoke-self"]),
            Some(token),
            None,
            deadline,
        )
        .await
    }
}
