//! KV version 2 calls: read a secret (optionally a version) and list a folder.
//! Docs: <https://openbao.org/api-docs/secret/kv/kv-v2/>.
//!
//! A missing path answers 404 `{"errors":[]}`; a deleted or destroyed version answers 404 with a
//! full body whose `data` is null (VAULT-API.md §2). Both become `VaultError::Api { status: 404 }`.

use super::{decode, Call, Class, Client, Envelope, VaultError, VaultToken};
use reqwest::Method;
use serde::Deserialize;
use tokio::time::Instant;

/// One version of a secret: its data and metadata (`Debug` shows how many fields, never a value).
#[derive(Clone, Deserialize)]
pub struct Secret {
    /// The key/value data; `None` when the version is deleted or destroyed.
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Version metadata.
    pub metadata: SecretMetadata,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("data", &self.data.as_ref().map(|d| format!("<redacted: {} fields>", d.len())))
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// Metadata of one secret version.
#[derive(Debug, Clone, Deserialize)]
pub struct SecretMetadata {
    /// RFC 3339 creation time.
    pub created_time: String,
    /// Version number.
    pub version: u32,
}

/// The metadata of a secret (`GET <mount>/metadata/<path>`): its current version and the state
/// of each version. No secret value is in it.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// The newest version (0: none).
    #[serde(default)]
    pub current_version: u32,
    /// Each version kept, by number.
    #[serde(default)]
    pub versions: std::collections::HashMap<String, VersionState>,
}

/// The state of one version in a secret's metadata.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VersionState {
    /// RFC 3339 time when it was (or will be, with `delete_version_after`) deleted; "" if never.
    #[serde(default)]
    pub deletion_time: String,
    /// Destroyed for good.
    #[serde(default)]
    pub destroyed: bool,
}

/// `data` of a KV list (crate-visible: the fuzz target decodes this very type).
#[derive(Deserialize)]
pub(crate) struct Keys {
    pub(crate) keys: Vec<String>,
}

impl Client {
    /// `GET <mount>/data/<path>[?version=N]`.
    pub async fn kv_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
        version: u32,
        deadline: Option<Instant>,
    ) -> Result<Secret, VaultError> {
        let mut call = Call::new(Method::GET, "kv/read", &[mount, "data", path]).class(Class::Kv).read();
        if version > 0 {
            call = call.query("version", version);
        }
        let (status, bytes) = self.send::<()>(call, Some(token), None, deadline).await?;
        let env: Envelope<Secret> = decode(status, &bytes)?;
        match env.data {
            Some(secret) if secret.data.is_some() => Ok(secret),
            _ => Err(VaultError::Api { status: 404, errors: vec!["secret version deleted or destroyed".into()] }),
        }
    }

    /// `GET <mount>/metadata/<path>`: the current version and the state of every version.
    pub async fn kv_metadata(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
        deadline: Option<Instant>,
    ) -> Result<Metadata, VaultError> {
        let call = Call::new(Method::GET, "kv/metadata", &[mount, "metadata", path]).class(Class::Kv).read();
        let (status, bytes) = self.send::<()>(call, Some(token), None, deadline).await?;
        let env: Envelope<Metadata> = decode(status, &bytes)?;
        env.data.ok_or_else(|| VaultError::Decode("metadata answer without data".into()))
    }

    /// `LIST <mount>/metadata/<path>` (as `GET ?list=true`); folders end in `/`.
    pub async fn kv_list(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
        deadline: Option<Instant>,
    ) -> Result<Vec<String>, VaultError> {
        let call =
            Call::new(Method::GET, "kv/list", &[mount, "metadata", path]).query("list", "true").class(Class::Kv).read();
        let (status, bytes) = self.send::<()>(call, Some(token), None, deadline).await?;
        let env: Envelope<Keys> = decode(status, &bytes)?;
        Ok(env.data.map(|k| k.keys).unwrap_or_default())
    }
}
