//! vaultgate: an encryption-as-a-service gRPC gateway in front of Vault/OpenBao.
//!
//! Code map, in the order a request meets it:
//! - [`server`]: the tonic server, health and reflection; `run(listener, config, shutdown)`.
//! - [`listener`]: admits connections (handshake slots per peer and overall, handshake timeout,
//!   a bound on open connections) before tonic sees them.
//! - [`tls`]: TLS of the listener (mTLS client certificates; certificate files reloaded as they change).
//! - [`layers`]: the tower layers in front of decoding (request id, metrics, audit, load
//!   shedding, deadline); [`call`]: what they know of a call (its RPC's description, its context).
//! - [`codec`]: protobuf decoding of requests; a message that does not decode is the caller's error.
//! - [`service`]: one module per gRPC service; each RPC a description plus its handler;
//!   authenticate → check → rules → Vault → response.
//! - [`identity`]: the caller's bearer JWT or client certificate and the rule mapping it to a role.
//! - [`jwt`]: local verification of callers' JWTs (issuer keys: PEM, JWKS file or URL) before any login.
//! - [`rules`]: gateway-side rules per role (keys, KV prefixes, database roles), before Vault.
//! - [`session`]: Vault tokens acting for callers: logins (JWT, Kubernetes, AppRole, token file),
//!   renewal, re-login, cache.
//! - [`batch`]: coalescing of concurrent Transit calls into `batch_input` requests.
//! - `bind`: the associated data that binds a caller's ciphertexts to its identity (`bind_identity`).
//! - `key_versions`: each Transit key's versions per Vault token, kept fresh by a poller
//!   (Decrypt's `rewrap_recommended`, WatchKey).
//! - [`leases`]: who owns each database lease, and keeping its parent token alive.
//! - [`vault`]: the Vault HTTP client (node choice, breakers, retries); knows nothing of gRPC.
//! - [`error`]: the one mapping from failures to gRPC status codes.
//! - [`ratelimit`]: per-caller token buckets, sized per role.
//! - [`audit`]: one JSON line per call, fail closed.
//! - [`health`]: the per-node `sys/health` watcher behind node choice and `grpc.health.v1`.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//! - [`traces`]: OpenTelemetry spans exported over OTLP/gRPC, W3C `traceparent` in and out.
//! - [`config`]: the TOML config, validated at start-up.
//! - [`dev`]: `vaultgate dev`, a local OpenBao + PostgreSQL with two demo callers.
//!
//! Invariants: no root or broader token serves callers (a role's token is shared only by callers
//! mapped to that role); nothing logs a secret; a batch result goes back only to the caller that
//! sent the item; a Vault request that may have acted is sent again only when its call is idempotent.
#![forbid(unsafe_code)]

pub mod audit;
pub mod batch;
pub(crate) mod bind;
pub mod cache;
pub mod call;
pub mod codec;
pub mod config;
pub mod dev;
pub mod error;
pub mod frames;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod identity;
pub mod jwt;
pub(crate) mod key_versions;
pub mod layers;
pub mod leases;
pub mod listener;
pub mod log_fields;
pub mod metrics;
pub mod ratelimit;
pub(crate) mod redact;
pub mod rules;
pub mod server;
pub mod service;
pub mod session;
pub mod stream;
pub mod tls;
pub mod traces;
pub mod vault;

/// Generated protobuf and gRPC code.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// `google.rpc` (Status for per-item batch errors).
    pub mod google {
        /// `google.rpc`.
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    /// `vaultgate.v1`.
    pub mod vaultgate {
        /// `vaultgate.v1`.
        pub mod v1 {
            tonic::include_proto!("vaultgate.v1");
        }
    }
}
