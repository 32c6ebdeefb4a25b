//! The Vault/OpenBao HTTP client: one place that adds headers, applies a timeout to every call,
//! strips the `{"data": …}` envelope and turns `{"errors": […]}` and status codes into
//! [`VaultError`]. Engine-specific calls live in `vault/`.
//!
//! Invariant: this module knows nothing of gRPC. Request and response bodies are never logged.

pub mod auth;
pub mod database;
pub mod hmac;
pub mod kv;
pub mod sys;
pub mod transit;

use reqwest::{Method, StatusCode, Url};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{fmt, sync::Arc, time::Duration};
use tokio::time::Instant;

/// A Vault token. Its `Debug` and `Display` are redacted so it can never reach a log by accident.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VaultToken(Arc<str>);

impl VaultToken {
    /// Wraps a token string received from Vault or read from a file.
    pub fn new(token: impl Into<Arc<str>>) -> VaultToken {
        VaultToken(token.into())
    }

    /// The raw token, for the `X-Vault-Token` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

/// Why a Vault call failed, in Vault's own terms; `error.rs` maps it to a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultError {
    /// No HTTP answer: connection refused, reset, TLS failure.
    Transport(String),
    /// No answer within the call's timeout or the caller's deadline.
    Timeout,
    /// Vault answered with a non-success status and these error strings.
    Api {
        /// HTTP status code.
        status: u16,
        /// Vault's `errors` array (may be empty, e.g. a missing KV path).
        errors: Vec<String>,
    },
    /// Vault answered success but the body did not have the expected shape.
    Decode(String),
}

/// The envelope every Vault answer shares; `T` is the engine-specific `data`.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    /// Lease id of dynamic secrets ("" otherwise).
    #[serde(default)]
    pub lease_id: String,
    /// Seconds until the lease ends.
    #[serde(default)]
    pub lease_duration: u64,
    /// Whether the lease can be renewed.
    #[serde(default)]
    pub renewable: bool,
    /// Engine-specific payload.
    pub data: Option<T>,
    /// Token issued by a login or renewal.
    pub auth: Option<auth::AuthInfo>,
    /// Vault's warnings (e.g. a TTL capped at max_ttl).
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// Settings of the client, taken from the `[vault]` config table.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8200`.
    pub address: Url,
    /// Upper bound of every call.
    pub timeout: Duration,
    /// Optional `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Optional PEM bundle to trust for Vault's TLS certificate.
    pub ca_pem: Option<Vec<u8>>,
}

/// A cheap-to-clone handle on one Vault server (connection pool shared by clones).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    namespace: Option<String>,
}

/// An HTTP method plus path segments below `/v1/`; segments are percent-encoded when sent.
pub struct Call<'a> {
    method: Method,
    segments: Vec<&'a str>,
    query: Vec<(&'a str, String)>,
}

impl<'a> Call<'a> {
    /// A call with this method on `/v1/` + segments (each segment may itself contain `/`).
    pub fn new(method: Method, segments: &[&'a str]) -> Call<'a> {
        let segments = segments.iter().flat_map(|s| s.split('/')).filter(|s| !s.is_empty()).collect();
        Call { method, segments, query: Vec::new() }
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: &'a str, value: impl ToString) -> Call<'a> {
        self.query.push((name, value.to_string()));
        self
    }
}

impl Client {
    /// Builds the HTTP client; fails only on an unusable CA bundle.
    pub fn new(config: &ClientConfig) -> Result<Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        if let Some(pem) = &config.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("vault.ca_cert: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("cannot build the Vault HTTP client: {e}"))?;
        let mut base = config.address.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Client { http, base, timeout: config.timeout, namespace: config.namespace.clone() })
    }

    /// The server's base URL (for logs and health).
    pub fn address(&self) -> &Url {
        &self.base
    }

    fn url(&self, call: &Call<'_>) -> Result<Url, VaultError> {
        let mut url = self.base.join("v1/").map_err(|e| VaultError::Decode(e.to_string()))?;
        {
            let mut segs =
                url.path_segments_mut().map_err(|_| VaultError::Decode("vault address cannot be a base".into()))?;
            segs.pop_if_empty();
            segs.extend(call.segments.iter());
        }
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(call.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// Sends one request and returns the raw status and body; the only place that talks HTTP.
    #[tracing::instrument(level = "debug", skip_all, fields(method = %call.method, path = %call.segments.join("/")))]
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        call: Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&B>,
        deadline: Option<Instant>,
    ) -> Result<(StatusCode, bytes::Bytes), VaultError> {
        let timeout = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(self.timeout),
            None => self.timeout,
        };
        if timeout.is_zero() {
            return Err(VaultError::Timeout);
        }
        let mut req = self.http.request(call.method.clone(), self.url(&call)?).timeout(timeout);
        if let Some(token) = token {
            req = req.header("X-Vault-Token", token.expose());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let started = Instant::now();
        let endpoint = call.segments.iter().take(2).copied().collect::<Vec<_>>().join("/");
        let answer = async {
            let resp = req.send().await.map_err(classify)?;
            let status = resp.status();
            Ok((status, resp.bytes().await.map_err(classify)?))
        }
        .await;
        let status = answer.as_ref().ok().map(|(s, _): &(StatusCode, bytes::Bytes)| s.as_u16());
        crate::metrics::get().vault(endpoint, status, started.elapsed());
        tracing::debug!(status, "vault answered");
        answer
    }

    /// Sends a request and decodes a success envelope; any other status becomes [`VaultError::Api`].
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&B>,
        deadline: Option<Instant>,
    ) -> Result<Envelope<T>, VaultError> {
        let (status, bytes) = self.send(call, token, body, deadline).await?;
        decode(status, &bytes)
    }

    /// Sends a request whose success has no useful body (204, or a body we do not need).
    pub async fn call_empty<B: Serialize + ?Sized>(
        &self,
        call: Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&B>,
        deadline: Option<Instant>,
    ) -> Result<(), VaultError> {
        let (status, bytes) = self.send(call, token, body, deadline).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

fn classify(err: reqwest::Error) -> VaultError {
    if err.is_timeout() {
        VaultError::Timeout
    } else {
        // reqwest's Display of a connect error names only the URL and the OS error; no body.
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        VaultError::Transport(detail)
    }
}

/// Decodes a success envelope, or the `errors` of a failure.
pub fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<Envelope<T>, VaultError> {
    if !status.is_success() {
        return Err(api_error(status, bytes));
    }
    serde_json::from_slice(bytes).map_err(|e| VaultError::Decode(format!("HTTP {status}: {e}")))
}

/// Builds [`VaultError::Api`] from a failure body (which may be empty or not JSON).
pub fn api_error(status: StatusCode, bytes: &[u8]) -> VaultError {
    let errors = serde_json::from_slice::<ErrorBody>(bytes).map(|b| b.errors).unwrap_or_default();
    VaultError::Api { status: status.as_u16(), errors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_bodies_become_api_errors() {
        let cases: &[(u16, &str, Vec<String>)] = &[
            (404, r#"{"errors":[]}"#, vec![]),
            (403, r#"{"errors":["permission denied"]}"#, vec!["permission denied".into()]),
            (502, "<html>bad gateway</html>", vec![]),
            (503, "", vec![]),
        ];
        for (status, body, errors) in cases {
            let got = decode::<serde_json::Value>(StatusCode::from_u16(*status).unwrap(), body.as_bytes()).unwrap_err();
            assert_eq!(got, VaultError::Api { status: *status, errors: errors.clone() });
        }
    }

    #[test]
    fn success_envelope_is_stripped() {
        let body = br#"{"request_id":"x","lease_id":"","renewable":false,"lease_duration":0,"data":{"a":1},"wrap_info":null,"warnings":null,"auth":null}"#;
        let env = decode::<serde_json::Value>(StatusCode::OK, body).unwrap();
        assert_eq!(env.data.unwrap()["a"], 1);
        assert!(matches!(decode::<serde_json::Value>(StatusCode::OK, b"not json"), Err(VaultError::Decode(_))));
    }

    #[test]
    fn paths_are_percent_encoded_per_segment() {
        let client = Client::new(&ClientConfig {
            address: Url::parse("http://127.0.0.1:8200").unwrap(),
            timeout: Duration::from_secs(1),
            namespace: None,
            ca_pem: None,
        })
        .unwrap();
        let url = client.url(&Call::new(Method::GET, &["secret/data", "a b/c?d"]).query("version", 2)).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8200/v1/secret/data/a%20b/c%3Fd?version=2");
    }

    #[test]
    fn token_is_redacted_in_debug() {
        assert_eq!(format!("{:?}", VaultToken::new("s.secret")), "VaultToken(<redacted>)");
    }
}
