//! `sys/health`: the unauthenticated probe the health watcher polls, of one node or any.
//! Docs: <https://openbao.org/api-docs/system/health/>.

use super::{Call, Client, VaultError};
use reqwest::Method;
use serde::Deserialize;
use tokio::time::Instant;

/// What `sys/health` says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeHealth {
    /// The unsealed active node (or a server without HA).
    Ready,
    /// An unsealed standby: it serves reads and forwards writes.
    Standby,
    /// Sealed: no request can be served until an operator unseals it.
    Sealed,
    /// Not initialised yet.
    Uninitialized,
}

/// The body of `sys/health` (crate-visible: the fuzz target decodes this very type).
#[derive(Deserialize)]
pub(crate) struct HealthBody {
    #[serde(default)]
    pub(crate) initialized: bool,
    #[serde(default)]
    pub(crate) sealed: bool,
    #[serde(default)]
    pub(crate) standby: bool,
}

/// The health probe's request, in the root namespace whatever `vault.namespace` is: the
/// endpoint is root-only (inside a namespace OpenBao answers 400).
fn health_call<'a>() -> Call<'a> {
    Call::new(Method::GET, "sys/health", &["sys/health"]).query("standbyok", "true").in_root_namespace()
}

impl Client {
    /// `GET sys/health?standbyok=true` on whichever node answers: 200 ready, 503 sealed, 501
    /// uninitialised; anything else or no answer is an error.
    pub async fn health(&self, deadline: Option<Instant>) -> Result<NodeHealth, VaultError> {
        let call = health_call().idempotent();
        let (status, bytes) = self.send::<()>(call, None, None, deadline).await?;
        health_of(status.as_u16(), &bytes)
    }

    /// The same probe of configured node `index` only (no retry, no breaker): the health
    /// watcher's view of each node.
    pub async fn probe(&self, index: usize, deadline: Option<Instant>) -> Result<NodeHealth, VaultError> {
        let call = health_call().at_node(index);
        let (status, bytes) = self.send::<()>(call, None, None, deadline).await?;
        health_of(status.as_u16(), &bytes)
    }
}

fn health_of(status: u16, bytes: &[u8]) -> Result<NodeHealth, VaultError> {
    let body: Option<HealthBody> = serde_json::from_slice(bytes).ok();
    match (status, body) {
        (_, Some(b)) if !b.initialized => Ok(NodeHealth::Uninitialized),
        (_, Some(b)) if b.sealed => Ok(NodeHealth::Sealed),
        (200 | 429, Some(b)) if b.standby => Ok(NodeHealth::Standby),
        (200 | 429, Some(_)) => Ok(NodeHealth::Ready),
        (503, None) => Ok(NodeHealth::Sealed),
        (code, _) => Err(VaultError::Api { status: code, errors: vec!["unexpected sys/health answer".into()] }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers_table() {
        let cases: &[(u16, &str, Result<NodeHealth, u16>)] = &[
            (200, r#"{"initialized":true,"sealed":false,"standby":false}"#, Ok(NodeHealth::Ready)),
            (200, r#"{"initialized":true,"sealed":false,"standby":true}"#, Ok(NodeHealth::Standby)),
            (429, r#"{"initialized":true,"sealed":false,"standby":true}"#, Ok(NodeHealth::Standby)),
            (503, r#"{"initialized":true,"sealed":true,"standby":true}"#, Ok(NodeHealth::Sealed)),
            (503, "", Ok(NodeHealth::Sealed)),
            (501, r#"{"initialized":false,"sealed":true}"#, Ok(NodeHealth::Uninitialized)),
            (502, "<html>", Err(502)),
        ];
        for (status, body, want) in cases {
            let got = health_of(*status, body.as_bytes()).map_err(|e| match e {
                VaultError::Api { status, .. } => status,
                _ => 0,
            });
            assert_eq!(&got, want, "{status} {body}");
        }
    }
}
