//! The Vault/OpenBao HTTP client: the one place that talks HTTP. It adds headers, applies a
//! timeout to every attempt (per kind of request: Transit and KV answer in milliseconds, logins
//! and database credentials may take longer), picks the node (`vault/nodes.rs`), cuts requests
//! waiting on a node found silent, hedges slow reads to another node (`vault/hedge.rs`), follows
//! 307s, retries what may be retried (`vault/retry.rs`), records Vault's request ids for the
//! audit line, strips the `{"data": …}` envelope and turns `{"errors": […]}` and status codes
//! into [`VaultError`]. Engine-specific calls live in `vault/`.
//!
//! Invariants: this module knows nothing of gRPC. Request and response bodies are never logged.
//! A token goes only to a configured Vault node: a 307 is followed only to one of
//! `vault.addresses` (and never from https down to http), and with `vault.ca_cert` set, that CA
//! alone is trusted (not the public web roots as well).

pub mod auth;
pub mod database;
pub mod hedge;
pub mod hmac;
pub mod kv;
pub mod nodes;
pub mod pki;
pub mod retry;
pub mod sys;
pub mod transit;

use crate::metrics::Metrics;
use hedge::{HedgeConfig, Latency};
use nodes::{BreakerConfig, Nodes};
use reqwest::{Method, StatusCode, Url};
use retry::{RetryBudget, RetryConfig, Verdict};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tracing::Instrument;

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
    /// No connection could be made (refused, DNS, TLS handshake): nothing was sent.
    Connect(String),
    /// No HTTP answer on an established connection (reset, closed): Vault may have acted.
    Transport(String),
    /// No answer within the call's timeout or the caller's deadline.
    Timeout,
    /// Every node's circuit breaker is open: the request was not sent. The text says since when
    /// and whether the nodes are sealed.
    AllNodesFailing(String),
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

/// The envelope every Vault answer shares; `T` is the engine-specific `data` (`Debug` never
/// prints it: it may be a secret's values, credentials or a plaintext).
#[derive(Deserialize)]
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

impl<T> fmt::Debug for Envelope<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("data", &self.data.as_ref().map(|_| "<redacted>"))
            .field("auth", &self.auth)
            .field("warnings", &self.warnings)
            .finish()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// What a request is, for its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transit operations and key reads: milliseconds when Vault is well.
    Transit,
    /// KV v2 reads and lists: milliseconds when Vault is well.
    Kv,
    /// Logins: Vault may call out (JWKS, TokenReview), so slower.
    Login,
    /// Database credentials: Vault creates a database user, so slower still.
    Database,
    /// Everything else (token and lease calls, health, setup).
    Other,
}

/// The timeout of one request attempt, per [`Class`] (`vault.*_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Transit.
    pub transit: Duration,
    /// KV v2.
    pub kv: Duration,
    /// Logins.
    pub login: Duration,
    /// Database credentials.
    pub database: Duration,
    /// Everything else (`vault.timeout_ms`).
    pub other: Duration,
}

/// The defaults documented in docs/configuration.md.
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    transit: Duration::from_secs(5),
    kv: Duration::from_secs(3),
    login: Duration::from_secs(10),
    database: Duration::from_secs(30),
    other: Duration::from_secs(10),
};

impl Timeouts {
    /// The same timeout for every kind.
    pub const fn uniform(timeout: Duration) -> Timeouts {
        Timeouts { transit: timeout, kv: timeout, login: timeout, database: timeout, other: timeout }
    }

    /// The timeout of a request of `class`.
    pub fn of(&self, class: Class) -> Duration {
        match class {
            Class::Transit => self.transit,
            Class::Kv => self.kv,
            Class::Login => self.login,
            Class::Database => self.database,
            Class::Other => self.other,
        }
    }

    fn longest(&self) -> Duration {
        self.transit.max(self.kv).max(self.login).max(self.database).max(self.other)
    }
}

/// Settings of the client, taken from the `[vault]` config table.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URLs of the Vault nodes (one for a single server or a load balancer).
    pub addresses: Vec<Url>,
    /// Upper bound of every request attempt, per kind of request.
    pub timeouts: Timeouts,
    /// When a slow read is sent to a second node too.
    pub hedge: HedgeConfig,
    /// Optional `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Optional PEM bundle to trust for Vault's TLS certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// When failed requests are sent again.
    pub retry: RetryConfig,
    /// When a node is given up on for a while.
    pub breaker: BreakerConfig,
}

impl ClientConfig {
    /// One node, the documented retry and breaker defaults and a 30 s timeout: dev mode's setup client.
    pub fn single(address: Url) -> ClientConfig {
        ClientConfig {
            addresses: vec![address],
            timeouts: Timeouts::uniform(Duration::from_secs(30)),
            hedge: HedgeConfig { min: Duration::ZERO, max: nodes::DEFAULT_BREAKER.silent_after },
            namespace: None,
            ca_pem: None,
            retry: retry::DEFAULT,
            breaker: nodes::DEFAULT_BREAKER,
        }
    }
}

/// A cheap-to-clone handle on the Vault nodes (connection pool, node states and retry budget
/// shared by clones).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    nodes: Arc<Nodes>,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
    hedge: HedgeConfig,
    /// Latency of answered reads, for the hedge delay.
    reads: Arc<Mutex<Latency>>,
    namespace: Option<String>,
    retry: RetryConfig,
    budget: Arc<RetryBudget>,
}

/// An HTTP method plus path segments below `/v1/`; segments are percent-encoded when sent.
pub struct Call<'a> {
    method: Method,
    /// The endpoint kind, the metric label (`transit/encrypt`, `kv/read`): never built from
    /// the segments, which hold mounts and names a caller may have chosen.
    kind: &'static str,
    segments: Vec<&'a str>,
    query: Vec<(&'a str, String)>,
    idempotent: bool,
    read: bool,
    class: Class,
    node: Option<usize>,
    /// Sent without `X-Vault-Namespace`: a root-only endpoint (`sys/health` answers 400
    /// "operation unavailable in namespaces" inside one).
    root: bool,
}

impl<'a> Call<'a> {
    /// A call with this method on `/v1/` + segments (each segment may itself contain `/`),
    /// counted in the metrics as endpoint `kind` (a fixed name, e.g. `kv/read`).
    /// It is not retried once Vault may have acted on it; see [`Call::idempotent`].
    pub fn new(method: Method, kind: &'static str, segments: &[&'a str]) -> Call<'a> {
        let segments = segments.iter().flat_map(|s| s.split('/')).filter(|s| !s.is_empty()).collect();
        Call {
            method,
            kind,
            segments,
            query: Vec::new(),
            idempotent: false,
            read: false,
            class: Class::Other,
            node: None,
            root: false,
        }
    }

    /// Sets the class of request, which chooses its timeout.
    pub fn class(mut self, class: Class) -> Call<'a> {
        self.class = class;
        self
    }

    /// Marks the call a read (idempotent, changes nothing): when it is slow past the usual
    /// latency of reads and several nodes are configured, it is also sent to another node.
    pub fn read(mut self) -> Call<'a> {
        self.idempotent = true;
        self.read = true;
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: &'a str, value: impl ToString) -> Call<'a> {
        self.query.push((name, value.to_string()));
        self
    }

    /// Marks the call safe to send twice (a read, an encryption, a login): it is retried after
    /// timeouts, resets and 5xx, within the retry budget and the caller's deadline.
    pub fn idempotent(mut self) -> Call<'a> {
        self.idempotent = true;
        self
    }

    /// Sends the call to configured node `index` only: no breaker, no retry (health probes).
    fn at_node(mut self, index: usize) -> Call<'a> {
        self.node = Some(index);
        self
    }

    /// Sends the call in the root namespace whatever `vault.namespace` is (root-only endpoints).
    fn in_root_namespace(mut self) -> Call<'a> {
        self.root = true;
        self
    }
}

/// Most 307 redirects followed by one attempt (a standby points at the active node: one hop).
const MAX_REDIRECTS: usize = 2;

/// One attempt's outcome: the node that gave the last answer (or failed), when it was sent, and
/// the answer.
type Attempted = (usize, Instant, Result<Answer, VaultError>);

/// The error of a redirect to a host outside `vault.addresses` (not followed).
pub const FOREIGN_REDIRECT: &str =
    "Vault redirected to a host that is not one of vault.addresses; not followed (list every node there)";

/// One HTTP answer and the node that gave it.
struct Answer {
    status: StatusCode,
    bytes: bytes::Bytes,
    retry_after: Option<Duration>,
}

impl Client {
    /// Builds the HTTP client, counting its requests in `metrics`; fails only on an unusable CA
    /// bundle or no address.
    pub fn new(config: &ClientConfig, metrics: Arc<Metrics>) -> Result<Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeouts.longest())
            .connect_timeout(config.timeouts.longest().min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            // 307s from standbys are followed by `send`, bounded and counted, with the body re-sent.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true);
        if let Some(pem) = &config.ca_pem {
            // Only the configured CA: a certificate from any public CA must not pass for Vault's.
            builder = builder.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("vault.ca_cert: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("cannot build the Vault HTTP client: {e}"))?;
        if config.addresses.is_empty() || config.addresses.len() > 64 {
            return Err("vault.addresses: between 1 and 64 addresses".into());
        }
        let bases = config
            .addresses
            .iter()
            .map(|a| {
                let mut base = a.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                base
            })
            .collect();
        Ok(Client {
            http,
            nodes: Arc::new(Nodes::new(bases, config.breaker, metrics.clone())),
            metrics,
            timeouts: config.timeouts,
            hedge: config.hedge,
            reads: Arc::new(Mutex::new(Latency::default())),
            namespace: config.namespace.clone(),
            retry: config.retry,
            budget: Arc::new(RetryBudget::new(
                config.retry.budget_ratio,
                config.retry.budget_floor_per_second,
                Instant::now(),
            )),
        })
    }

    /// The first configured node's base URL (for logs).
    pub fn address(&self) -> &Url {
        &self.nodes.all()[0].base
    }

    /// The configured nodes and what is known of them.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The gateway's metrics, which this client's requests are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn url(base: &Url, call: &Call<'_>) -> Result<Url, VaultError> {
        // `base` ends with `/` (`Client::new`): `<base>v1/<segments>`, built without parsing a
        // URL again per request.
        let mut url = base.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut segs =
                url.path_segments_mut().map_err(|_| VaultError::Decode("vault address cannot be a base".into()))?;
            segs.pop_if_empty();
            segs.push("v1");
            segs.extend(call.segments.iter());
        }
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(call.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// [`Client::send_bytes`] with `body` serialised as JSON.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        call: Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&B>,
        deadline: Option<Instant>,
    ) -> Result<(StatusCode, bytes::Bytes), VaultError> {
        let body = match body {
            Some(b) => Some(bytes::Bytes::from(
                serde_json::to_vec(b).map_err(|e| VaultError::Decode(format!("request body: {e}")))?,
            )),
            None => None,
        };
        self.send_bytes(call, token, body, deadline).await
    }

    /// Sends one request whose JSON body is already written and returns the raw status and body;
    /// the only place that talks HTTP. Chooses the node, follows 307s, retries what may be
    /// retried (see `vault/retry.rs`) within `deadline`, and feeds each node's circuit breaker.
    /// A retry or a redirect sends the very same bytes.
    #[tracing::instrument(level = "debug", skip_all, fields(method = %call.method, path = %call.segments.join("/")))]
    pub(crate) async fn send_bytes(
        &self,
        call: Call<'_>,
        token: Option<&VaultToken>,
        body: Option<bytes::Bytes>,
        deadline: Option<Instant>,
    ) -> Result<(StatusCode, bytes::Bytes), VaultError> {
        if let Some(node) = call.node {
            return self.attempt(node, &call, token, body.as_ref(), deadline).await.2.map(|a| (a.status, a.bytes));
        }
        self.budget.deposit();
        let mut tried = 0u64;
        let mut attempts = 0u32;
        loop {
            let node = match self.nodes.choose(tried, Instant::now()) {
                Ok(node) => node,
                Err(all) => {
                    self.metrics.vault_fail_fast.inc();
                    return Err(VaultError::AllNodesFailing(all.message()));
                }
            };
            let (answered, sent, answer) = if call.read && attempts == 0 && self.nodes.all().len() > 1 {
                self.hedged(node, tried, &call, token, body.as_ref(), deadline).await
            } else {
                self.attempt(node, &call, token, body.as_ref(), deadline).await
            };
            attempts += 1;
            let verdict = verdict_of(&answer);
            let fault = match verdict {
                Verdict::Done => None,
                Verdict::Retry { fault, .. } => fault,
            };
            let now = Instant::now();
            if call.read && verdict == Verdict::Done {
                lock(&self.reads).observe(now.saturating_duration_since(sent));
            }
            // A request cut short by the caller's own deadline says nothing about the node: it
            // counts neither as a failure (callers with tiny deadlines would open the breaker for
            // everyone) nor as a success.
            let cut_by_caller = matches!(answer, Err(VaultError::Timeout)) && deadline.is_some_and(|d| now >= d);
            if !cut_by_caller {
                self.nodes.report(answered, fault, sent, now);
                if answered != node {
                    // The first node answered (a redirect): it is alive whatever the target did.
                    self.nodes.report(node, None, sent, now);
                }
            }
            let Verdict::Retry { acted, after, reason, .. } = verdict else {
                return answer.map(|a| (a.status, a.bytes));
            };
            tried |= (1u64 << (node % 64)) | (1u64 << (answered % 64));
            let wait = match self.retry_wait(&call, acted, after, attempts, deadline, now) {
                Some(wait) => wait,
                None => return answer.map(|a| (a.status, a.bytes)),
            };
            self.metrics.vault_retry(reason);
            tracing::debug!(reason, attempt = attempts, wait_ms = wait.as_millis() as u64, "retrying vault request");
            tokio::time::sleep(wait).await;
        }
    }

    /// A read on node `first`; when it has not answered after the usual latency of reads (and the
    /// retry budget allows), the same read goes to another node too and the first good answer
    /// wins. The loser is dropped; a failed attempt is reported here when the other one wins.
    async fn hedged(
        &self,
        first: usize,
        tried: u64,
        call: &Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&bytes::Bytes>,
        deadline: Option<Instant>,
    ) -> Attempted {
        let primary = self.attempt(first, call, token, body, deadline);
        tokio::pin!(primary);
        let Some(after) = lock(&self.reads).hedge_after(&self.hedge) else { return primary.await };
        tokio::select! {
            done = &mut primary => return done,
            _ = tokio::time::sleep(after) => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) || !self.budget.withdraw(now) {
            return primary.await;
        }
        let second = match self.nodes.choose(tried | (1u64 << (first % 64)), now) {
            Ok(second) if second != first => second,
            _ => return primary.await,
        };
        self.metrics.vault_hedges.inc();
        tracing::debug!(after_ms = after.as_millis() as u64, "read slow: hedged to another node");
        let secondary = self.attempt(second, call, token, body, deadline);
        tokio::pin!(secondary);
        let (done, other) = tokio::select! {
            done = &mut primary => (done, false),
            done = &mut secondary => (done, true),
        };
        if verdict_of(&done.2) == Verdict::Done {
            return done;
        }
        // The first to finish failed: report it, and take the other one's answer.
        if let Verdict::Retry { fault, .. } = verdict_of(&done.2) {
            self.nodes.report(done.0, fault, done.1, Instant::now());
        }
        if other {
            primary.await
        } else {
            secondary.await
        }
    }

    /// How long to wait before sending a failed request again, or `None` when it must not be:
    /// not idempotent and Vault may have acted, out of attempts, past the deadline, or over budget.
    fn retry_wait(
        &self,
        call: &Call<'_>,
        acted: bool,
        after: Option<Duration>,
        attempts: u32,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Option<Duration> {
        if (acted && !call.idempotent) || attempts >= self.retry.max_attempts {
            return None;
        }
        let backoff = retry::backoff(attempts - 1, self.retry.backoff_base, self.retry.backoff_max, retry::jitter());
        let wait = after.map_or(backoff, |a| a.max(backoff));
        // A retry that cannot get an answer before the deadline only adds load.
        if deadline.is_some_and(|d| now + wait + Duration::from_millis(1) >= d) {
            return None;
        }
        if !self.budget.withdraw(now) {
            self.metrics.vault_retry_budget_exhausted.inc();
            tracing::debug!("retry budget exhausted: not retrying");
            return None;
        }
        Some(wait)
    }

    /// One attempt on node `first`, following up to [`MAX_REDIRECTS`] 307s to configured nodes
    /// only; returns the node that gave the last answer and when the attempt was sent. An
    /// attempt waiting on a node that is found silent meanwhile ends at once with
    /// [`VaultError::Timeout`].
    async fn attempt(
        &self,
        first: usize,
        call: &Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&bytes::Bytes>,
        deadline: Option<Instant>,
    ) -> Attempted {
        let sent = Instant::now();
        let Some(node) = self.nodes.get(first) else {
            return (first, sent, Err(VaultError::Decode(format!("no vault node {first}"))));
        };
        let silenced = node.silenced();
        tokio::pin!(silenced);
        silenced.as_mut().enable();
        tokio::select! {
            (node, answer) = self.hops(first, call, token, body, deadline) => (node, sent, answer),
            _ = silenced => (first, sent, Err(VaultError::Timeout)),
        }
    }

    async fn hops(
        &self,
        first: usize,
        call: &Call<'_>,
        token: Option<&VaultToken>,
        body: Option<&bytes::Bytes>,
        deadline: Option<Instant>,
    ) -> (usize, Result<Answer, VaultError>) {
        let Some(base) = self.nodes.get(first).map(|n| &n.base) else {
            return (first, Err(VaultError::Decode(format!("no vault node {first}"))));
        };
        let mut node = first;
        let mut url = match Client::url(base, call) {
            Ok(url) => url,
            Err(e) => return (node, Err(e)),
        };
        let endpoint = call.kind;
        let limit = self.timeouts.of(call.class);
        for hop in 0..=MAX_REDIRECTS {
            let timeout = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(limit),
                None => limit,
            };
            if timeout.is_zero() {
                return (node, Err(VaultError::Timeout));
            }
            let started = Instant::now();
            // One exported span per HTTP request (`traces.rs`): the endpoint kind, never the path.
            // Not the health watcher's probes: every node each interval would be a trace of its own.
            let span = if endpoint == "sys/health" {
                tracing::Span::none()
            } else {
                tracing::info_span!(
                target: "vaultgate::traces",
                "vault.request",
                otel.name = endpoint,
                otel.kind = "client",
                http.request.method = call.method.as_str(),
                http.response.status_code = tracing::field::Empty,
                )
            };
            let mut request = self.request(call, &url, token, body, timeout);
            let mut traceparent = reqwest::header::HeaderMap::new();
            crate::traces::inject(&span, &mut traceparent);
            if !traceparent.is_empty() {
                request = request.headers(traceparent);
            }
            let resp = match request.send().instrument(span.clone()).await {
                Ok(resp) => {
                    span.record("http.response.status_code", resp.status().as_u16());
                    resp
                }
                Err(e) => {
                    self.metrics.vault(endpoint, None, started.elapsed());
                    let err = classify(e);
                    tracing::debug!(error = ?err, "vault request failed");
                    return (node, Err(err));
                }
            };
            self.nodes.heard(node, Instant::now());
            let status = resp.status();
            if matches!(status.as_u16(), 307 | 308) && hop < MAX_REDIRECTS {
                if let Some(target) = redirect_target(&resp, &url) {
                    let Some(next) = self.nodes.by_origin(&target) else {
                        // The request carries a token: it goes to no host the operator did not list.
                        tracing::warn!(to = %target.origin().ascii_serialization(), "vault redirect to a host that is not a configured node: not followed");
                        return (
                            node,
                            Err(VaultError::Api { status: status.as_u16(), errors: vec![FOREIGN_REDIRECT.into()] }),
                        );
                    };
                    self.metrics.vault_redirects.inc();
                    tracing::debug!(to = %target.origin().ascii_serialization(), "following vault redirect");
                    node = next;
                    url = target;
                    continue;
                }
            }
            let retry_after =
                retry::retry_after(resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()));
            let bytes = match resp.bytes().await {
                Ok(bytes) => bytes,
                Err(e) => return (node, Err(classify(e))),
            };
            self.metrics.vault(endpoint, Some(status.as_u16()), started.elapsed());
            tracing::debug!(status = status.as_u16(), "vault answered");
            note_request_id_of(&bytes);
            return (node, Ok(Answer { status, bytes, retry_after }));
        }
        (node, Err(VaultError::Api { status: 307, errors: vec!["too many redirects".into()] }))
    }

    /// The HTTP request of one hop: method, URL, timeout, token, namespace, JSON body.
    fn request(
        &self,
        call: &Call<'_>,
        url: &Url,
        token: Option<&VaultToken>,
        body: Option<&bytes::Bytes>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(call.method.clone(), url.clone()).timeout(timeout);
        if let Some(token) = token {
            req = req.header("X-Vault-Token", token.expose());
        }
        if let Some(ns) = self.namespace.as_ref().filter(|_| !call.root) {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
        }
        req
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most Vault request ids kept for one gateway call (an explicit batch makes a few requests).
const MAX_REQUEST_IDS: usize = 64;

/// The Vault request ids of one gateway call, for its audit line; filled by [`Client::send`]
/// while the call's future runs inside [`RequestIds::scope`].
#[derive(Clone, Default)]
pub struct RequestIds(Arc<Mutex<Vec<String>>>);

tokio::task_local! {
    static REQUEST_IDS: RequestIds;
}

impl RequestIds {
    /// Runs `work` with this collector in place: every Vault answer it gets adds its request id.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        REQUEST_IDS.scope(self.clone(), work).await
    }

    /// The ids collected so far, in order.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Adds Vault request ids to the current call's collector, if any (the coalescer uses it to
/// hand the id of a shared batch request to every caller in the batch).
pub fn note_request_ids(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let _ = REQUEST_IDS.try_with(|c| {
        let mut list = c.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids.iter().take(MAX_REQUEST_IDS.saturating_sub(list.len())) {
            list.push(id.clone());
        }
    });
}

/// Adds the request id of a Vault answer to the current call's collector; nothing to do (not
/// even reading the id) outside a collector's scope.
fn note_request_id_of(body: &[u8]) {
    let _ = REQUEST_IDS.try_with(|c| {
        if let Some(id) = request_id_of(body) {
            let mut list = c.0.lock().unwrap_or_else(|p| p.into_inner());
            if list.len() < MAX_REQUEST_IDS {
                list.push(id);
            }
        }
    });
}

/// Vault's `request_id`, read from the start of the body without parsing it (Vault writes it
/// first); `None` for bodies without one (errors, 204).
fn request_id_of(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"request_id\":\"";
    let head = &body[..body.len().min(96)];
    let start = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = head[start..].iter().position(|&b| b == b'"')?;
    let id = &head[start..start + len];
    (!id.is_empty() && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'))
        .then(|| String::from_utf8_lossy(id).into_owned())
}

/// What an attempt's outcome means; only 5xx bodies are read (for "sealed", "no active node").
fn verdict_of(answer: &Result<Answer, VaultError>) -> Verdict {
    let errors = match answer {
        Ok(a) if a.status.as_u16() >= 500 => api_errors(&a.bytes),
        _ => Vec::new(),
    };
    retry::verdict(
        answer.as_ref().map(|a| (a.status.as_u16(), errors.as_slice())),
        answer.as_ref().ok().and_then(|a| a.retry_after),
    )
}

/// Where a 307/308 points, resolved against the request's URL; only http(s).
fn redirect_target(resp: &reqwest::Response, url: &Url) -> Option<Url> {
    redirect_location(resp.headers().get(reqwest::header::LOCATION)?.to_str().ok()?, url)
}

/// Where a redirect may lead: http(s) only, and never from https down to http (the request
/// carries the Vault token, which must not travel in clear text).
fn redirect_location(location: &str, url: &Url) -> Option<Url> {
    url.join(location)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .filter(|u| !(url.scheme() == "https" && u.scheme() == "http"))
}

fn api_errors(bytes: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ErrorBody>(bytes).map(|b| b.errors).unwrap_or_default()
}

fn classify(err: reqwest::Error) -> VaultError {
    if err.is_timeout() {
        VaultError::Timeout
    } else {
        let connect = err.is_connect();
        // reqwest's Display of a connect error names only the URL and the OS error; no body.
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if connect {
            VaultError::Connect(detail)
        } else {
            VaultError::Transport(detail)
        }
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
    VaultError::Api { status: status.as_u16(), errors: api_errors(bytes) }
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
        let client =
            Client::new(&ClientConfig::single(Url::parse("http://127.0.0.1:8200").unwrap()), Default::default())
                .unwrap();
        let call = Call::new(Method::GET, "kv/read", &["secret/data", "a b/c?d"]).query("version", 2);
        let url = Client::url(client.address(), &call).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8200/v1/secret/data/a%20b/c%3Fd?version=2");
        // Behind a path prefix (a reverse proxy), the prefix stays in front of `v1`.
        let behind =
            Client::new(&ClientConfig::single(Url::parse("https://proxy.example/vault").unwrap()), Default::default())
                .unwrap();
        let url =
            Client::url(behind.address(), &Call::new(Method::POST, "transit/encrypt", &["transit", "encrypt", "k"]))
                .unwrap();
        assert_eq!(url.as_str(), "https://proxy.example/vault/v1/transit/encrypt/k");
    }

    #[test]
    fn request_ids_are_read_from_the_head_of_the_body() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                br#"{"request_id":"64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92","lease_id":""}"#,
                Some("64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92"),
            ),
            (br#"{"errors":["permission denied"]}"#, None),
            (b"", None),
            (br#"{"request_id":"","data":{}}"#, None),
            (br#"{"request_id":"a\"b"}"#, None),
        ];
        for (body, want) in cases {
            assert_eq!(request_id_of(body).as_deref(), *want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[tokio::test]
    async fn request_ids_are_collected_only_inside_a_scope() {
        note_request_ids(&["outside".into()]);
        let ids = RequestIds::default();
        ids.scope(async {
            note_request_ids(&["a".into(), "b".into()]);
            note_request_ids(&(0..100).map(|i| i.to_string()).collect::<Vec<_>>());
        })
        .await;
        let got = ids.take();
        assert_eq!(got.len(), MAX_REQUEST_IDS);
        assert_eq!(&got[..3], ["a", "b", "0"]);
    }

    fn client(max_attempts: u32, budget_ratio: f64, floor: f64) -> Client {
        let mut config = ClientConfig::single(Url::parse("http://127.0.0.1:8200").unwrap());
        config.retry = RetryConfig { max_attempts, budget_ratio, budget_floor_per_second: floor, ..retry::DEFAULT };
        Client::new(&config, Default::default()).unwrap()
    }

    #[test]
    fn retries_only_what_may_be_sent_again() {
        let now = Instant::now();
        let write = Call::new(Method::POST, "transit/rotate", &["transit/keys/k/rotate"]);
        let read = Call::new(Method::GET, "transit/keys", &["transit/keys/k"]).idempotent();
        let c = client(3, 0.2, 10.0);
        // (call, Vault may have acted, attempts so far, deadline) -> retried?
        let cases: &[(&Call, bool, u32, Option<Duration>, bool)] = &[
            (&write, true, 1, None, false),
            (&write, false, 1, None, true),
            (&read, true, 1, None, true),
            (&read, true, 2, None, true),
            (&read, true, 3, None, false),
            (&read, true, 1, Some(Duration::from_millis(1)), false),
            (&read, true, 1, Some(Duration::from_secs(5)), true),
        ];
        for (call, acted, attempts, deadline, want) in cases {
            let got = c.retry_wait(call, *acted, None, *attempts, deadline.map(|d| now + d), now);
            assert_eq!(got.is_some(), *want, "acted {acted} attempts {attempts} deadline {deadline:?}");
            assert!(got.is_none_or(|w| w <= retry::DEFAULT.backoff_base * 2));
        }
        // Vault's Retry-After is honoured when it is longer than the backoff.
        let wait = c.retry_wait(&read, false, Some(Duration::from_secs(2)), 1, None, now);
        assert_eq!(wait, Some(Duration::from_secs(2)));
        // A spent budget stops retries: no deposits and no floor allow only the starting balance.
        let stingy = client(100, 0.0, 0.0);
        let allowed = (0..10).filter(|_| stingy.retry_wait(&read, true, None, 1, None, now).is_some()).count();
        assert_eq!(allowed, 1);
    }

    #[test]
    fn redirects_never_downgrade_to_plain_http() {
        let from = Url::parse("https://n1:8200/v1/transit/encrypt/k").unwrap();
        let cases: &[(&str, Option<&str>)] = &[
            ("https://n2:8200/v1/transit/encrypt/k", Some("https://n2:8200/v1/transit/encrypt/k")),
            ("/v1/x", Some("https://n1:8200/v1/x")),
            ("http://n2:8200/v1/transit/encrypt/k", None),
            ("file:///etc/passwd", None),
        ];
        for (location, want) in cases {
            assert_eq!(redirect_location(location, &from).map(|u| u.to_string()).as_deref(), *want, "{location}");
        }
        let plain = Url::parse("http://n1:8200/v1/x").unwrap();
        assert!(redirect_location("http://n2:8200/v1/x", &plain).is_some());
    }

    /// A Vault that reads each request whole, then closes the connection without answering
    /// (it may have acted); returns its address and the count of requests it got.
    /// Callers with tiny deadlines (the 1 ms rows of the error tables) cut their Vault requests
    /// short; that must not open the node's breaker for every other caller.
    #[tokio::test]
    async fn requests_cut_by_the_callers_deadline_do_not_open_the_breaker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        // Accepts and never answers (held open until the test ends).
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let client = Client::new(&ClientConfig::single(url), Default::default()).unwrap();
        let token = VaultToken::new("s.test");
        for _ in 0..10 {
            let deadline = Some(Instant::now() + Duration::from_millis(20));
            let r = client.transit_read_key(&token, "transit", "k", deadline).await;
            assert_eq!(r.unwrap_err(), VaultError::Timeout);
        }
        assert_eq!(client.nodes().breaker(0), nodes::Breaker::Closed { failures: 0 });
    }

    async fn hang_up_vault() -> (Url, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf);
                        let Some(end) = text.find("\r\n\r\n") else { continue };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return; // drops the connection unanswered
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    /// The real client calls, not synthetic `Call`s: a write whose connection drops after it was
    /// sent is not sent again (Vault may have acted), a read is. Each on a fresh client so no
    /// breaker state carries over. `tests/it/behaviours.rs` shows the same against real OpenBao.
    #[tokio::test]
    async fn real_calls_are_sent_again_only_when_safe_to_repeat() {
        let token = VaultToken::new("s.test");
        let mut sent = Vec::new();
        let names =
            ["rotate", "datakey", "db_creds", "lease_renew", "lease_revoke", "lease_lookup", "read_key", "kv_read"];
        for name in names {
            let (url, seen) = hang_up_vault().await;
            let client = Client::new(&ClientConfig::single(url), Default::default()).unwrap();
            let deadline = Some(Instant::now() + Duration::from_secs(10));
            let failed = match name {
                "rotate" => client.transit_rotate(&token, "transit", "k", deadline).await.is_err(),
                "datakey" => {
                    let body = transit::DatakeyBody { context: None, associated_data: None, bits: 256 };
                    client.transit_datakey(&token, "transit", "k", &body, deadline).await.is_err()
                }
                "db_creds" => client.db_creds(&token, "database", "r", deadline).await.is_err(),
                "lease_renew" => client.lease_renew(&token, "database/creds/r/x", Some(60), deadline).await.is_err(),
                "lease_revoke" => client.lease_revoke(&token, "database/creds/r/x", deadline).await.is_err(),
                "lease_lookup" => client.lease_lookup(&token, "database/creds/r/x", deadline).await.is_err(),
                "read_key" => client.transit_read_key(&token, "transit", "k", deadline).await.is_err(),
                _ => client.kv_read(&token, "secret", "a/b", 0, deadline).await.is_err(),
            };
            assert!(failed, "{name}: a Vault that never answers cannot succeed");
            sent.push((name, seen.load(std::sync::atomic::Ordering::SeqCst)));
        }
        // Sent once. (The lease lookup, a PUT, is a read in effect but not marked safe to repeat.)
        let once: Vec<_> = sent[..6].iter().map(|(n, c)| (*n, *c)).collect();
        assert_eq!(
            once,
            [
                ("rotate", 1),
                ("datakey", 1),
                ("db_creds", 1),
                ("lease_renew", 1),
                ("lease_revoke", 1),
                ("lease_lookup", 1)
            ]
        );
        for (name, count) in &sent[6..] {
            assert!(*count >= 2, "{name}: a read is sent again after a dropped connection ({count} sent)");
        }
    }

    #[test]
    fn token_is_redacted_in_debug() {
        assert_eq!(format!("{:?}", VaultToken::new("s.secret")), "VaultToken(<redacted>)");
    }
}
