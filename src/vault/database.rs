//! Database engine and lease calls: dynamic credentials, `sys/leases/renew`, `sys/leases/revoke`.
//! Docs: <https://openbao.org/api-docs/secret/databases/>, <https://openbao.org/api-docs/system/leases/>.
//!
//! Credentials are children of the token that requested them and die with it (VAULT-API.md §3).

use super::{Call, Class, Client, Envelope, VaultError, VaultToken};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A database user created for one lease.
#[derive(Clone, Deserialize)]
pub struct Credentials {
    /// Database user name.
    pub username: String,
    /// Database password (never logged: `Debug` is redacted).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// Credentials with their lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The credentials.
    pub credentials: Credentials,
    /// Vault lease id.
    pub lease_id: String,
    /// Seconds until expiry.
    pub lease_duration: u64,
    /// Whether renewable.
    pub renewable: bool,
}

#[derive(Serialize)]
struct LeaseBody<'a> {
    lease_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    increment: Option<u64>,
}

/// `data` of `sys/leases/lookup` (crate-visible: the fuzz target decodes this very type).
#[derive(Deserialize)]
pub(crate) struct LeaseInfo {
    ttl: u64,
}

impl Client {
    /// `GET <mount>/creds/:role`: new credentials under a new lease.
    pub async fn db_creds(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        deadline: Option<Instant>,
    ) -> Result<Lease, VaultError> {
        let env: Envelope<Credentials> = self
            .call::<(), _>(
                Call::new(Method::GET, "database/creds", &[mount, "creds", role]).class(Class::Database),
                Some(token),
                None,
                deadline,
            )
            .await?;
        let credentials = env.data.ok_or_else(|| VaultError::Decode("creds answer without data".into()))?;
        Ok(Lease { credentials, lease_id: env.lease_id, lease_duration: env.lease_duration, renewable: env.renewable })
    }

    /// `PUT sys/leases/renew`: sets the lease's TTL to `increment` seconds from now (capped by Vault).
    /// Returns the new lease duration in seconds.
    pub async fn lease_renew(
        &self,
        token: &VaultToken,
        lease_id: &str,
        increment: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<u64, VaultError> {
        let body = LeaseBody { lease_id, increment };
        let env: Envelope<serde_json::Value> = self
            .call(Call::new(Method::PUT, "sys/leases/renew", &["sys/leases/renew"]), Some(token), Some(&body), deadline)
            .await?;
        Ok(env.lease_duration)
    }

    /// `PUT sys/leases/revoke` (synchronous: the database user is dropped when this returns).
    pub async fn lease_revoke(
        &self,
        token: &VaultToken,
        lease_id: &str,
        deadline: Option<Instant>,
    ) -> Result<(), VaultError> {
        let body = LeaseBody { lease_id, increment: None };
        self.call_empty(
            Call::new(Method::PUT, "sys/leases/revoke", &["sys/leases/revoke"]),
            Some(token),
            Some(&body),
            deadline,
        )
        .await
    }

    /// `PUT sys/leases/lookup`: whether a lease exists, and its remaining TTL in seconds.
    pub async fn lease_lookup(
        &self,
        token: &VaultToken,
        lease_id: &str,
        deadline: Option<Instant>,
    ) -> Result<u64, VaultError> {
        let body = LeaseBody { lease_id, increment: None };
        let env: Envelope<LeaseInfo> = self
            .call(
                Call::new(Method::PUT, "sys/leases/lookup", &["sys/leases/lookup"]),
                Some(token),
                Some(&body),
                deadline,
            )
            .await?;
        Ok(env.data.map(|i| i.ttl).unwrap_or(0))
    }
}
