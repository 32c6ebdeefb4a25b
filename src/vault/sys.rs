//! `sys/health`: the unauthenticated probe the health watcher polls.
//! Docs: <https://openbao.org/api-docs/system/health/>.

use super::{Call, Client, VaultError};
use reqwest::Method;
use serde::Deserialize;
use tokio::time::Instant;

/// What `sys/health` says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeHealth {
    /// Unsealed active node, or a standby (it serves reads and forwards writes).
    Ready,
    /// Sealed: no request can be served until an operator unseals it.
    Sealed,
    /// Not initialised yet.
    Uninitialized,
}

#[derive(Deserialize)]
struct HealthBody {
    #[serde(default)]
    initialized: bool,
    #[serde(default)]
    sealed: bool,
}

impl Client {
    /// `GET sys/health?standbyok=true`: 200 ready, 503 sealed, 501 uninitialised; anything else
    /// or no answer is an error.
    pub async fn health(&self, deadline: Option<Instant>) -> Result<NodeHealth, VaultError> {
        let call = Call::new(Method::GET, &["sys/health"]).query("standbyok", "true");
        let (status, bytes) = self.send::<()>(call, None, None, deadline).await?;
        let body: Option<HealthBody> = serde_json::from_slice(&bytes).ok();
        match (status.as_u16(), body) {
            (_, Some(b)) if !b.initialized => Ok(NodeHealth::Uninitialized),
            (_, Some(b)) if b.sealed => Ok(NodeHealth::Sealed),
            (200 | 429, Some(_)) => Ok(NodeHealth::Ready),
            (503, None) => Ok(NodeHealth::Sealed),
            (code, _) => Err(VaultError::Api { status: code, errors: vec!["unexpected sys/health answer".into()] }),
        }
    }
}
