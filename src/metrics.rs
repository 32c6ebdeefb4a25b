//! Prometheus metrics: what the gateway counts, and the plain-HTTP `/metrics` endpoint that
//! serves them on a port of its own (off the gRPC port, no auth). One registry per gateway: a
//! [`Metrics`] handle is made by the caller of `server::run` and passed in, as the config is, so
//! two gateways in one process (the tests) never count each other's traffic.
//!
//! Invariant: labels come from a fixed vocabulary. Every label is a `&'static str` chosen by the
//! code (RPC name, gRPC code, Vault endpoint kind such as `transit/encrypt`, event kind, refusal
//! reason) or a name from the config (role, Vault node address); never a value a caller sent (a
//! key name, a mount, a path, a peer address), so the number of series does not grow with traffic.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// Labels of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// RPC name, e.g. `Encrypt`.
    pub rpc: &'static str,
    /// gRPC code name, e.g. `Ok`, `PermissionDenied`.
    pub code: &'static str,
}

/// Labels naming one thing from the config (a role, a Vault node address).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// The name (shared: a role's label is looked up on every call without copying it).
    pub name: Arc<str>,
}

/// Labels naming one kind chosen by the code (an RPC, a Vault endpoint kind, an event, a reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind, e.g. `Encrypt`, `transit/encrypt`, `login`.
    pub name: &'static str,
}

/// Labels of a Vault request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultLabels {
    /// Endpoint kind, e.g. `transit/encrypt`, `kv/read`, `auth/login` (never a mount or key name).
    pub endpoint: &'static str,
    /// HTTP status (a number Vault's HTTP server sent: bounded), or `error` when there was no answer.
    pub status: String,
}

/// Labels of a read-cache event: both from fixed vocabularies.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `secret`, `list` or `key`.
    pub read: &'static str,
    /// `hit`, `miss`, `coalesced`, `stale` or `eviction`.
    pub event: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// gRPC calls by RPC and code.
    pub calls: Family<CallLabels, Counter>,
    /// gRPC call latency by RPC.
    pub call_seconds: Family<KindLabel, Histogram>,
    /// gRPC calls by mapped Vault role.
    pub role_calls: Family<NameLabel, Counter>,
    /// Vault requests by endpoint kind and status.
    pub vault_requests: Family<VaultLabels, Counter>,
    /// Vault request latency by endpoint kind.
    pub vault_seconds: Family<KindLabel, Histogram>,
    /// Items per Transit batch request the coalescer sent.
    pub batch_size: Histogram,
    /// Items sent by the coalescer.
    pub batch_items: Counter,
    /// Vault requests the coalescer made (items minus this is the number of requests saved).
    pub batch_requests: Counter,
    /// Calls waiting in coalescer queues.
    pub queue_depth: Gauge,
    /// Vault logins by result (`ok`, `refused`).
    pub logins: Family<KindLabel, Counter>,
    /// 1 while Vault is reachable and unsealed.
    pub vault_up: Gauge,
    /// Token lifecycle events: `login`, `login_failed`, `renewed`, `dead` (gone behind our back).
    pub token_events: Family<KindLabel, Counter>,
    /// Vault requests sent again, by reason (`transport`, `timeout`, `sealed`, `standby`, `5xx`, `429`).
    pub vault_retries: Family<KindLabel, Counter>,
    /// Retries refused because the retry budget was spent (an outage is not amplified).
    pub vault_retry_budget_exhausted: Counter,
    /// Requests refused at once because every node's circuit breaker was open.
    pub vault_fail_fast: Counter,
    /// 307 redirects followed (a standby pointing at the active node).
    pub vault_redirects: Counter,
    /// Circuit breaker per configured node: 0 closed, 1 half-open, 2 open.
    pub vault_breaker: Family<NameLabel, Gauge>,
    /// Slow reads also sent to a second node.
    pub vault_hedges: Counter,
    /// Read-cache events by read kind.
    pub cache_events: Family<CacheLabels, Counter>,
    /// Answers held by the read cache.
    pub cache_entries: Gauge,
    /// Estimated bytes held by the read cache.
    pub cache_bytes: Gauge,
    /// Client connections open (TLS: handshake done).
    pub connections: Gauge,
    /// Server streams open (WatchSecret, WatchDbCreds, WatchKey), counted by `stream.rs`.
    pub open_streams: Gauge,
    /// Connections closed by admission, by reason (`max_connections`, `handshakes`,
    /// `peer_handshakes` at once; `idle` after the idle timeouts).
    pub connections_refused: Family<KindLabel, Counter>,
    /// Request bytes received and held by calls in flight (`limits.max_request_bytes_in_flight`).
    pub request_bytes_in_flight: Gauge,
    /// Configured Vault nodes by last probed state (`active`, `standby`, `sealed`, `down`).
    pub vault_nodes: Family<StateLabel, Gauge>,
    /// Calls refused at once because `limits.max_concurrent_calls` were in flight (load shedding).
    pub calls_shed: Counter,
    /// Calls refused by the per-caller rate limit, by role.
    pub rate_limited: Family<NameLabel, Counter>,
    /// Audit lines that could not be written.
    pub audit_failures: Counter,
    /// Unix time at which a TLS certificate the gateway serves expires (label name: `listener`);
    /// a family so that nothing is exported without TLS.
    pub tls_expiry: Family<KindLabel, Gauge>,
}

/// Labels of a state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state, one of a fixed set.
    pub state: &'static str,
}

/// Token lifecycle events (`vaultgate_vault_token_events_total{name}`), all exported from the
/// start at 0 so that `rate()` and alerts see them before the first one happens.
pub const TOKEN_EVENTS: [&str; 5] = ["login", "login_failed", "renewed", "renew_failed", "dead"];

/// Reasons of `vaultgate_vault_retries_total{name}` (`vault/retry.rs` decides which applies), all
/// exported from the start at 0.
pub const RETRY_REASONS: [&str; 6] = ["transport", "timeout", "sealed", "standby", "5xx", "429"];

/// States of `vaultgate_vault_nodes`.
pub const NODE_STATES: [&str; 4] = ["active", "standby", "sealed", "down"];

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0].into_iter()
}

/// Registers each field of `m` under its name and help, one row per metric.
macro_rules! register {
    ($registry:ident, $m:ident, { $($name:ident => $field:ident: $help:literal,)* }) => {
        $( $registry.register(stringify!($name), $help, $m.$field.clone()); )*
    };
}

impl Metrics {
    /// A gateway's metrics, in a registry of their own.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vaultgate");
        let calls = Family::<CallLabels, Counter>::default();
        let call_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let role_calls = Family::<NameLabel, Counter>::default();
        let vault_requests = Family::<VaultLabels, Counter>::default();
        let vault_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 499.0, 1000.0]);
        let build = Family::<NameLabel, Gauge>::default();
        build.get_or_create(&NameLabel { name: env!("CARGO_PKG_VERSION").into() }).set(1);
        let m = Metrics {
            calls,
            call_seconds,
            role_calls,
            vault_requests,
            vault_seconds,
            batch_size,
            batch_items: Counter::default(),
            batch_requests: Counter::default(),
            queue_depth: Gauge::default(),
            logins: Family::default(),
            vault_up: Gauge::default(),
            token_events: Family::default(),
            vault_retries: Family::default(),
            vault_retry_budget_exhausted: Counter::default(),
            vault_fail_fast: Counter::default(),
            vault_redirects: Counter::default(),
            vault_breaker: Family::default(),
            vault_hedges: Counter::default(),
            cache_events: Family::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            connections: Gauge::default(),
            open_streams: Gauge::default(),
            connections_refused: Family::default(),
            request_bytes_in_flight: Gauge::default(),
            vault_nodes: Family::default(),
            calls_shed: Counter::default(),
            rate_limited: Family::default(),
            audit_failures: Counter::default(),
            tls_expiry: Family::default(),
            registry: Registry::default(),
        };
        for name in TOKEN_EVENTS {
            drop(m.token_events.get_or_create(&KindLabel { name }));
        }
        for name in RETRY_REASONS {
            drop(m.vault_retries.get_or_create(&KindLabel { name }));
        }
        // One row per metric: exported name (after the `vaultgate_` prefix), field, help.
        register!(registry, m, {
            grpc_calls => calls: "gRPC calls by RPC and status code",
            grpc_call_seconds => call_seconds: "gRPC call latency by RPC",
            role_calls => role_calls: "gRPC calls by the Vault role of the caller",
            vault_requests => vault_requests: "Vault HTTP requests by endpoint kind and status",
            vault_request_seconds => vault_seconds: "Vault HTTP request latency by endpoint kind",
            batch_size_items => batch_size: "items per Transit request sent by the coalescer",
            batch_items => batch_items: "items sent by the coalescer",
            batch_vault_requests => batch_requests: "Transit requests made by the coalescer",
            batch_queue_depth => queue_depth: "calls waiting in coalescer queues",
            vault_logins => logins: "Vault logins by result",
            vault_token_events => token_events: "Vault token lifecycle events by kind",
            vault_up => vault_up: "1 while Vault is reachable and unsealed",
            vault_retries => vault_retries: "Vault requests sent again, by reason",
            vault_retry_budget_exhausted => vault_retry_budget_exhausted: "retries not made because the retry budget was spent",
            vault_fail_fast => vault_fail_fast: "requests refused at once because every Vault node's circuit breaker was open",
            vault_redirects => vault_redirects: "307 redirects from a standby followed",
            vault_breaker_state => vault_breaker: "circuit breaker per Vault node (label name = address): 0 closed, 1 half-open, 2 open",
            vault_hedges => vault_hedges: "slow Vault reads also sent to a second node",
            cache_events => cache_events: "read cache events (read = secret, list, key; event = hit, miss, coalesced, stale, eviction)",
            cache_entries => cache_entries: "answers held by the read cache",
            cache_bytes => cache_bytes: "estimated bytes held by the read cache",
            connections => connections: "client connections open",
            open_streams => open_streams: "server streams open (WatchSecret, WatchDbCreds, WatchKey; watch.max_streams per replica)",
            connections_refused => connections_refused: "client connections closed by admission, by reason (max_connections, handshakes, peer_handshakes: at once; idle: no stream for the idle timeouts)",
            request_bytes_in_flight => request_bytes_in_flight: "request bytes received and held by calls in flight",
            vault_nodes => vault_nodes: "configured Vault nodes by last probed state (active, standby, sealed, down)",
            calls_shed => calls_shed: "calls refused at once because limits.max_concurrent_calls were in flight",
            rate_limited_calls => rate_limited: "calls refused by the per-caller rate limit, by role (label name)",
            audit_write_failures => audit_failures: "audit lines that could not be written",
            tls_certificate_expiry_timestamp_seconds => tls_expiry: "Unix time at which the served TLS certificate expires (label name: listener)",
        });
        registry.register("build_info", "the running version (label name)", build);
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Records one gRPC call; `role` is the configured role the caller was mapped to.
    pub fn call(&self, rpc: &'static str, code: tonic::Code, role: Option<&Arc<str>>, took: Duration) {
        self.calls.get_or_create(&CallLabels { rpc, code: code_name(code) }).inc();
        self.call_seconds.get_or_create(&KindLabel { name: rpc }).observe(took.as_secs_f64());
        if let Some(role) = role {
            self.role_calls.get_or_create(&NameLabel { name: role.clone() }).inc();
        }
    }

    /// Records one Vault request (`status` None: no HTTP answer).
    pub fn vault(&self, endpoint: &'static str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.vault_seconds.get_or_create(&KindLabel { name: endpoint }).observe(took.as_secs_f64());
        self.vault_requests.get_or_create(&VaultLabels { endpoint, status }).inc();
    }

    /// Records one retry of a Vault request.
    pub fn vault_retry(&self, reason: &'static str) {
        debug_assert!(RETRY_REASONS.contains(&reason), "add {reason:?} to metrics::RETRY_REASONS");
        self.vault_retries.get_or_create(&KindLabel { name: reason }).inc();
    }

    /// Records one token lifecycle event (`login`, `login_failed`, `renewed`, `dead`).
    pub fn token_event(&self, event: &'static str) {
        debug_assert!(TOKEN_EVENTS.contains(&event), "add {event:?} to metrics::TOKEN_EVENTS");
        self.token_events.get_or_create(&KindLabel { name: event }).inc();
    }

    /// Records a connection closed at once, and why.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&KindLabel { name: reason }).inc();
    }

    /// Records how many configured nodes are in each state (`NODE_STATES`), from the last probes.
    pub fn nodes(&self, counts: [i64; 4]) {
        for (state, n) in NODE_STATES.into_iter().zip(counts) {
            self.vault_nodes.get_or_create(&StateLabel { state }).set(n);
        }
    }

    /// Exports the rate-limit counter of each configured role at 0 (a role is bounded: config).
    pub fn roles(&self, roles: impl IntoIterator<Item = String>) {
        for name in roles {
            drop(self.rate_limited.get_or_create(&NameLabel { name: name.into() }));
        }
    }

    /// Records a call refused by its role's rate limit (`role`: a configured role).
    pub fn rate_limit(&self, role: &str) {
        self.rate_limited.get_or_create(&NameLabel { name: role.into() }).inc();
    }

    /// Records the expiry (Unix seconds) of the gRPC listener's certificate, as loaded or reloaded.
    pub fn tls_expiry(&self, not_after_unix: i64) {
        self.tls_expiry.get_or_create(&KindLabel { name: "listener" }).set(not_after_unix);
    }

    /// Records one read-cache event.
    pub fn cache(&self, read: &'static str, event: &'static str) {
        self.cache_events.get_or_create(&CacheLabels { read, event }).inc();
    }

    /// Records the breaker state of the node at `address` (a configured address: bounded).
    pub fn breaker(&self, address: &str, state: i64) {
        self.vault_breaker.get_or_create(&NameLabel { name: address.into() }).set(state);
    }
}

/// The name of a gRPC code, as a label value (`Ok`, `InvalidArgument`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Serves `GET /metrics` of `metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> Result<(), String> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "metrics endpoint serving /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
        }),
    );
    axum::serve(listener, app).await.map_err(|e| format!("metrics endpoint failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.call("Encrypt", tonic::Code::Ok, Some(&"billing".into()), Duration::from_millis(2));
        m.vault("transit/encrypt", Some(200), Duration::from_millis(1));
        m.batch_size.observe(12.0);
        m.logins.get_or_create(&KindLabel { name: "ok" }).inc();
        m.vault_retry("timeout");
        m.breaker("http://n1:8200", 2);
        m.nodes([1, 2, 0, 0]);
        m.roles(["billing".to_string()]);
        m.calls_shed.inc();
        m.audit_failures.inc();
        m.tls_expiry(1_900_000_000);
        let text = m.render();
        for name in [
            "vaultgate_grpc_calls_total{rpc=\"Encrypt\",code=\"Ok\"}",
            "vaultgate_grpc_call_seconds_bucket",
            "vaultgate_role_calls_total{name=\"billing\"}",
            "vaultgate_vault_requests_total{endpoint=\"transit/encrypt\",status=\"200\"}",
            "vaultgate_batch_size_items_bucket",
            "vaultgate_batch_items_total",
            "vaultgate_batch_vault_requests_total",
            "vaultgate_batch_queue_depth",
            "vaultgate_vault_logins_total",
            "vaultgate_vault_up",
            "vaultgate_build_info",
            "vaultgate_vault_retries_total{name=\"timeout\"}",
            "vaultgate_vault_retry_budget_exhausted_total",
            "vaultgate_vault_fail_fast_total",
            "vaultgate_vault_redirects_total",
            "vaultgate_vault_breaker_state{name=\"http://n1:8200\"}",
            "vaultgate_connections ",
            "vaultgate_open_streams 0",
            "vaultgate_request_bytes_in_flight ",
            "vaultgate_vault_nodes{state=\"standby\"} 2",
            "vaultgate_vault_nodes{state=\"sealed\"} 0",
            "vaultgate_rate_limited_calls_total{name=\"billing\"} 0",
            "vaultgate_calls_shed_total 1",
            "vaultgate_audit_write_failures_total 1",
            "vaultgate_tls_certificate_expiry_timestamp_seconds{name=\"listener\"} 1900000000",
            "vaultgate_vault_token_events_total{name=\"renew_failed\"} 0",
            "vaultgate_vault_retries_total{name=\"429\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        // Another gateway's registry is its own.
        assert!(!Metrics::new().render().contains("rpc=\"Encrypt\""));
        // Without TLS, no certificate-expiry series (an alert on it must not see a 0).
        assert!(!Metrics::new().render().contains("vaultgate_tls_certificate_expiry_timestamp_seconds{"));
    }
}
