//! The typed configuration, parsed from TOML and validated once at start-up. Every error names
//! the key and says why it is wrong. Invariant: only this module reads files and the environment.

pub mod check;

use crate::vault;
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// The whole gateway configuration (`vaultgate serve --config FILE`).
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Address of the plain-HTTP Prometheus endpoint; `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of a plaintext listener serving only `grpc.health.v1` (for probes that cannot speak
    /// TLS, such as the kubelet's); `None` turns it off.
    pub health_listen: Option<SocketAddr>,
    /// Lifetime of client connections.
    pub connections: ConnectionsConfig,
    /// How to reach Vault.
    pub vault: crate::vault::ClientConfig,
    /// How often the health watcher polls `sys/health`.
    pub health_interval: Duration,
    /// Default engine mounts.
    pub mounts: Mounts,
    /// Rules that map callers to Vault roles, first match wins.
    pub callers: Vec<CallerRule>,
    /// Most caller tokens kept in the cache.
    pub token_cache_size: usize,
    /// Caller tokens used within this long are renewed in the background before they expire, so
    /// a caller back from a quiet spell pays no login; zero renews only on use.
    pub token_keep_warm: Duration,
    /// The read cache of GetSecret, ListSecrets and GetKey answers, and serving them stale.
    pub cache: CacheConfig,
    /// Coalescing of Transit calls.
    pub batch: BatchConfig,
    /// The key-version cache behind Decrypt's `rewrap_recommended` and WatchKey (`[key_versions]`).
    pub key_versions: KeyVersionsConfig,
    /// Request size limits.
    pub limits: Limits,
    /// Log output.
    pub log: LogConfig,
    /// OpenTelemetry traces; `None` (no `[traces]` section): off.
    pub traces: Option<TracesConfig>,
    /// The audit log; `None` when not configured.
    pub audit: Option<AuditConfig>,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Server-streaming RPCs (WatchSecret, WatchDbCreds, WatchKey): bounds, keepalives, polling.
    pub watch: WatchConfig,
    /// Per-caller rate limits by role name; roles not listed are not limited.
    pub rate_limits: std::collections::HashMap<String, crate::ratelimit::Limit>,
    /// TLS of the gRPC listener; `None` serves plaintext (behind a mesh or for dev).
    pub tls: Option<TlsConfig>,
    /// Rules that map callers with a verified client certificate to a role, first match wins.
    pub cert_callers: Vec<CertRule>,
    /// Per-role settings: the gateway's own login for certificate callers and gateway-side rules.
    pub roles: std::collections::HashMap<String, RoleConfig>,
    /// Replica-independent lease ownership; `None`: ownership records are per replica.
    pub leases: Option<LeaseConfig>,
    /// How long a refused login is remembered, so a caller with bad credentials cannot make the
    /// gateway hammer Vault with logins.
    pub login_failure_cache: Duration,
    /// Issuers whose JWTs the gateway verifies itself before any login (`[issuers.<name>]`),
    /// referenced by `[[callers]] verify_with`.
    pub issuers: std::collections::HashMap<String, crate::jwt::IssuerConfig>,
    /// Bounds on logins with JWTs that were not verified locally (rules without `verify_with`).
    pub unverified_logins: UnverifiedLogins,
}

/// What a stranger can cost Vault through callers rules that rely on Vault alone to verify the
/// JWT (no `verify_with`): logins in flight and logins per peer address are capped; past either
/// the call is answered RESOURCE_EXHAUSTED without a login.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnverifiedLogins {
    /// Most such logins in flight at once, all peers together.
    #[serde(default = "default_unverified_in_flight")]
    pub max_in_flight: usize,
    /// Logins per second one peer address may cause, sustained.
    #[serde(default = "default_unverified_rate")]
    pub per_peer_per_second: f64,
    /// Logins one peer address may cause at once after a quiet period.
    #[serde(default = "default_unverified_burst")]
    pub per_peer_burst: f64,
}

// Sized for real bursts of first calls (32 new callers at once during a failover, all behind one
// sidecar address) while a stranger still cannot make more than ~10 logins a second.
fn default_unverified_in_flight() -> usize {
    64
}
fn default_unverified_rate() -> f64 {
    10.0
}
fn default_unverified_burst() -> f64 {
    100.0
}

/// `[issuers.<name>]` as written; see [`crate::jwt::IssuerConfig`].
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    jwt_validation_pubkeys: Option<Vec<String>>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca_cert: Option<PathBuf>,
    jwks_bearer_token_file: Option<PathBuf>,
    #[serde(default = "default_jwks_refresh_ms")]
    jwks_refresh_ms: u64,
    #[serde(default = "default_jwks_timeout_ms")]
    jwks_timeout_ms: u64,
    #[serde(default = "default_leeway_ms")]
    leeway_ms: u64,
}

fn default_jwks_refresh_ms() -> u64 {
    300_000
}
fn default_jwks_timeout_ms() -> u64 {
    5_000
}
fn default_leeway_ms() -> u64 {
    30_000
}

fn issuer_config(name: &str, raw: RawIssuer) -> Result<crate::jwt::IssuerConfig, String> {
    use crate::jwt::{keys_from_jwks, keys_from_pem, KeySource};
    let key = |k: &str| format!("issuers.{name}.{k}");
    if raw.issuer.is_empty() {
        return Err(format!("{}: the `iss` this issuer's JWTs carry", key("issuer")));
    }
    if raw.audiences.iter().any(String::is_empty) {
        return Err(format!("{}: entries must not be empty", key("audiences")));
    }
    if raw.leeway_ms > 300_000 {
        return Err(format!("{}: at most 300000 (5 minutes)", key("leeway_ms")));
    }
    if raw.jwks_url.is_none() && (raw.jwks_ca_cert.is_some() || raw.jwks_bearer_token_file.is_some()) {
        return Err(format!("{}: only with jwks_url", key("jwks_ca_cert")));
    }
    let keys = match (raw.jwt_validation_pubkeys, raw.jwks_file, raw.jwks_url) {
        (Some(pems), None, None) => {
            KeySource::Static(keys_from_pem(&pems).map_err(|e| format!("{}: {e}", key("jwt_validation_pubkeys")))?)
        }
        (None, Some(path), None) => {
            let text = std::fs::read(&path)
                .map_err(|e| format!("{}: cannot read {}: {e}", key("jwks_file"), path.display()))?;
            KeySource::Static(
                keys_from_jwks(&text).map_err(|e| format!("{}: {}: {e}", key("jwks_file"), path.display()))?,
            )
        }
        (None, None, Some(url)) => {
            let parsed =
                reqwest::Url::parse(&url).map_err(|e| format!("{}: {url:?} is not a URL ({e})", key("jwks_url")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("{}: scheme must be http or https", key("jwks_url")));
            }
            positive(&key("jwks_refresh_ms"), raw.jwks_refresh_ms as usize)?;
            positive(&key("jwks_timeout_ms"), raw.jwks_timeout_ms as usize)?;
            let ca_pem = match &raw.jwks_ca_cert {
                Some(p) => Some(
                    std::fs::read(p)
                        .map_err(|e| format!("{}: cannot read {}: {e}", key("jwks_ca_cert"), p.display()))?,
                ),
                None => None,
            };
            KeySource::Url {
                url: parsed,
                ca_pem,
                bearer_file: raw.jwks_bearer_token_file,
                refresh: Duration::from_millis(raw.jwks_refresh_ms),
                timeout: Duration::from_millis(raw.jwks_timeout_ms),
            }
        }
        _ => {
            return Err(format!(
                "{}: set exactly one of jwt_validation_pubkeys, jwks_file, jwks_url",
                key("jwt_validation_pubkeys")
            ))
        }
    };
    Ok(crate::jwt::IssuerConfig {
        issuer: raw.issuer,
        audiences: raw.audiences,
        leeway: Duration::from_millis(raw.leeway_ms),
        keys,
    })
}

/// Lease ownership that every replica can verify: GetDbCreds returns a `lease_token` signed with a
/// Transit HMAC key by the gateway's own token of `role`; RenewLease/RevokeLease verify it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Transit key (in `mounts.transit`) that signs ownership tags; the gateway's role needs
    /// `update` on its `hmac/` and `verify/` paths.
    pub owner_key: String,
    /// A `[roles]` entry with a login: the gateway's own identity for signing and verifying tags
    /// and for `auth/token/renew-accessor` (keeping a lease's parent token alive from any replica).
    pub role: String,
}

/// The TLS listener: certificate and key files (re-read when they change), optional client CA.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS); `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// Refuse connections without a client certificate (else callers may use a JWT instead).
    pub require_client_cert: bool,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// Which field of a verified client certificate a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// A URI subject alternative name, e.g. a SPIFFE ID.
    Uri,
    /// A DNS subject alternative name.
    Dns,
    /// The subject's common name.
    Cn,
}

impl CertField {
    /// The name used in config keys, logs and WhoAmI.
    pub fn as_str(self) -> &'static str {
        match self {
            CertField::Uri => "uri",
            CertField::Dns => "dns",
            CertField::Cn => "cn",
        }
    }
}

/// Maps callers whose client certificate has a matching field to a role of `[roles]`.
#[derive(Debug, Clone)]
pub struct CertRule {
    /// The role (a key of `[roles]`, which says how the gateway logs in for it).
    pub role: String,
    /// Certificate field to match.
    pub field: CertField,
    /// Value to match.
    pub value: String,
    /// Match by prefix rather than the exact value.
    pub prefix: bool,
    /// As `[[callers]] bind_identity`: the certificate caller's identity goes into the AEAD
    /// associated data of its encryptions.
    pub bind_identity: bool,
}

/// How the gateway obtains the Vault token of a role that certificate callers map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleLogin {
    /// AppRole login with the role_id and secret_id read from files at each login.
    AppRole {
        /// AppRole auth mount.
        mount: String,
        /// File holding the role_id.
        role_id_file: PathBuf,
        /// File holding the secret_id.
        secret_id_file: PathBuf,
    },
    /// A token issued another way, read from a file (re-read when it is no longer usable).
    TokenFile(PathBuf),
    /// A JWT login (JWT auth method, Vault role = the role's name) with a JWT read from a file at
    /// each login: in Kubernetes, the gateway pod's own projected service-account token.
    JwtFile {
        /// JWT auth mount.
        mount: String,
        /// File holding the JWT (rotated by the kubelet; re-read at each login).
        path: PathBuf,
    },
}

/// Settings of one role.
#[derive(Debug, Clone, Default)]
pub struct RoleConfig {
    /// The gateway's own login for this role; required when certificate callers map to it.
    pub login: Option<RoleLogin>,
    /// Transit keys the role may use (`name` or `prefix*`); `None`: not limited by the gateway.
    pub transit_keys: Option<Vec<String>>,
    /// Transit mounts `transit_keys` apply to: a role with `transit_keys` may name no other mount
    /// (default: `mounts.transit` alone).
    pub transit_mounts: Vec<String>,
    /// KV path prefixes the role may read or list, matched by whole path segments; `None`: not
    /// limited by the gateway.
    pub kv_prefixes: Option<Vec<String>>,
    /// KV mounts `kv_prefixes` apply to: a role with `kv_prefixes` may name no other mount
    /// (default: `mounts.kv` alone).
    pub kv_mounts: Vec<String>,
    /// Database roles the role may get credentials of (`name` or `prefix*`); `None`: not limited.
    pub db_roles: Option<Vec<String>>,
    /// Database mounts `db_roles` apply to: a role with `db_roles` may name no other mount
    /// (default: `mounts.database` alone).
    pub db_mounts: Vec<String>,
    /// How long this role's read answers are cached (`cache_ttl_ms`, zero: not at all);
    /// `None`: `cache.ttl_ms`.
    pub cache_ttl: Option<Duration>,
    /// Whether this role's callers get cached answers marked stale while Vault cannot answer
    /// (`serve_stale`, default true); false: they get the failure.
    pub serve_stale: Option<bool>,
}

/// The key-version cache (`[key_versions]`, `key_versions.rs`): one poller per (mount, key,
/// Vault token) in use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVersionsConfig {
    /// Milliseconds between two reads of a key's versions by one poller (at least 100).
    #[serde(default = "default_key_poll_ms")]
    pub poll_ms: u64,
    /// A poller no call used for this long (and no WatchKey stream watches) stops.
    #[serde(default = "default_key_idle_ms")]
    pub idle_ms: u64,
    /// Most pollers (mount, key, token) at once.
    #[serde(default = "default_key_entries")]
    pub max_entries: usize,
}

impl KeyVersionsConfig {
    /// `poll_ms` as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    /// `idle_ms` as a duration.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

fn default_key_poll_ms() -> u64 {
    5_000
}
fn default_key_idle_ms() -> u64 {
    120_000
}
fn default_key_entries() -> usize {
    4096
}

/// The read cache (`[cache]`): GetSecret, ListSecrets and GetKey answers, per Vault token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Milliseconds an answer is served without asking Vault again (zero: no cache, no
    /// coalescing, no stale answers); per role `roles.<name>.cache_ttl_ms`.
    #[serde(default = "default_cache_ttl_ms")]
    pub ttl_ms: u64,
    /// Milliseconds an explicitly requested KV version (`version = N`, immutable) is served.
    #[serde(default = "default_version_ttl_ms")]
    pub version_ttl_ms: u64,
    /// Oldest answer (milliseconds since Vault confirmed it) served, marked stale, while Vault
    /// cannot answer; zero: never serve stale.
    #[serde(default = "default_max_stale_ms")]
    pub max_stale_ms: u64,
    /// Most answers held.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// Most bytes of answers held (estimated); larger single answers are not cached.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
}

fn default_cache_ttl_ms() -> u64 {
    2_000
}
fn default_version_ttl_ms() -> u64 {
    60_000
}
fn default_max_stale_ms() -> u64 {
    300_000
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_bytes() -> usize {
    32 << 20
}
fn default_keep_warm_ms() -> u64 {
    900_000
}

/// Where audit lines go and what happens when they cannot be written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout` or a file path.
    pub path: String,
    /// Refuse calls whose audit line cannot be written (default true, as Vault does).
    #[serde(default = "yes")]
    pub fail_closed: bool,
}

/// How the gateway stops on SIGTERM: health NOT_SERVING for `grace`, then no new connections,
/// then calls in flight get up to `drain_timeout` to finish.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Milliseconds of NOT_SERVING (still serving) so load balancers stop routing first.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// Milliseconds calls in flight may take to finish after that.
    #[serde(default = "default_drain_ms")]
    pub drain_timeout_ms: u64,
}

fn default_grace_ms() -> u64 {
    5_000
}
fn default_drain_ms() -> u64 {
    20_000
}

/// Server-streaming RPCs (`stream.rs`): how many may be open, keepalives, KV polling, and the
/// grace before a replaced or abandoned database lease is revoked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Streams open at once on this replica, all callers together.
    #[serde(default = "default_watch_max_streams")]
    pub max_streams: usize,
    /// Streams one caller may hold open at once.
    #[serde(default = "default_watch_max_per_caller")]
    pub max_streams_per_caller: usize,
    /// Milliseconds between heartbeat messages on a stream (keep idle streams alive through
    /// proxies that time out silent streams); 0: none.
    #[serde(default = "default_watch_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Milliseconds between KV metadata polls of a watched secret right after a change.
    #[serde(default = "default_watch_poll_min_ms")]
    pub poll_min_ms: u64,
    /// Longest interval between polls: the interval grows by half while nothing changes, up to this.
    #[serde(default = "default_watch_poll_max_ms")]
    pub poll_max_ms: u64,
    /// Milliseconds a replaced (rotated) or abandoned database lease lives on before it is revoked,
    /// so connections opened with it can drain.
    #[serde(default = "default_watch_rotation_grace_ms")]
    pub rotation_grace_ms: u64,
}

fn default_watch_max_streams() -> usize {
    10_000
}
fn default_watch_max_per_caller() -> usize {
    100
}
fn default_watch_heartbeat_ms() -> u64 {
    20_000
}
fn default_watch_poll_min_ms() -> u64 {
    1_000
}
fn default_watch_poll_max_ms() -> u64 {
    3_000
}
fn default_watch_rotation_grace_ms() -> u64 {
    30_000
}

/// How long a client connection may live: after `max_age_ms` the server sends GOAWAY and lets its
/// calls finish for `max_age_grace_ms`, so callers reconnect (and spread over new replicas).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Milliseconds a connection may live; 0: no limit.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
    /// Milliseconds its calls in flight get after that, before it is closed.
    #[serde(default = "default_max_age_grace_ms")]
    pub max_age_grace_ms: u64,
}

fn default_max_age_ms() -> u64 {
    300_000
}
fn default_max_age_grace_ms() -> u64 {
    30_000
}

/// Default mount paths of the three engines.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mounts {
    /// Transit mount.
    #[serde(default = "default_transit")]
    pub transit: String,
    /// KV v2 mount used when a request names none.
    #[serde(default = "default_kv")]
    pub kv: String,
    /// Database mount used when a request names none.
    #[serde(default = "default_database")]
    pub database: String,
    /// PKI mount used when a request names none.
    #[serde(default = "default_pki")]
    pub pki: String,
}

/// Maps callers whose JWT claim matches to one Vault JWT-auth role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRule {
    /// Vault role to log in with (a role of the JWT auth method at `auth_mount`).
    pub role: String,
    /// Claim to match; default `sub`.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// The claim must equal this value.
    pub equals: Option<String>,
    /// Or the claim must start with this value.
    pub prefix: Option<String>,
    /// Optional: the JWT's `iss` must equal this.
    pub issuer: Option<String>,
    /// Vault auth method that verifies the JWT: `jwt` (default) or `kubernetes` (service-account tokens).
    #[serde(default = "default_method")]
    pub method: String,
    /// Auth mount; default: the method's name (`jwt` or `kubernetes`).
    #[serde(default)]
    pub auth_mount: String,
    /// Optional: the `[issuers.<name>]` whose keys verify the JWT locally before any login (the
    /// rule then also requires that issuer's `iss`). Without it Vault alone verifies the JWT, and
    /// `[unverified_logins]` bounds what unverified JWTs can cost.
    pub verify_with: Option<String>,
    /// Bind the caller's identity into the AEAD associated data of its Transit encryptions, so
    /// no other caller can decrypt them (`bind.rs`, docs/security.md#identity-bound-ciphertexts).
    #[serde(default)]
    pub bind_identity: bool,
}

/// Limits and knobs of the Transit coalescer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Coalesce concurrent Encrypt/Decrypt calls; when false each call is its own Vault request.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most items in one Vault request (HashiCorp Vault caps arrays at 10,000).
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Most JSON strings in one request body (OpenBao's `max_request_json_strings`, default 1000).
    #[serde(default = "default_max_json_strings")]
    pub max_json_strings: usize,
    /// Most bytes in one request body (OpenBao's `max_request_size` is 32 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Vault requests one lane may have in flight at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Calls that may wait in one lane; past it callers get RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Extra wait before sending a batch, in microseconds; 0 (default) sends at once.
    #[serde(default)]
    pub linger_us: u64,
}

/// Size limits on what callers send.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest plaintext or ciphertext of one item, in bytes.
    #[serde(default = "default_max_item_bytes")]
    pub max_item_bytes: usize,
    /// Most items in one EncryptBatch/DecryptBatch call.
    #[serde(default = "default_max_batch_items")]
    pub max_batch_items: usize,
    /// Largest gRPC request message, in bytes (gRPC's usual 4 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most calls the gateway works on at once, all callers together; past it a call is answered
    /// RESOURCE_EXHAUSTED at once (load shedding keeps memory and latency bounded under overload).
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Request bytes that calls in flight may hold, all callers together, counted as they
    /// arrive; a call whose bytes would pass it is answered RESOURCE_EXHAUSTED before decoding.
    #[serde(default = "default_max_request_bytes_in_flight")]
    pub max_request_bytes_in_flight: usize,
    /// Most concurrent calls (HTTP/2 streams) on one client connection.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// Most client connections open at once; past it a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest a new connection may take to finish its TLS handshake (plaintext: to send its
    /// first bytes), in milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Most handshakes in progress at once, all peers together; past it a new connection is
    /// closed at once.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Most handshakes in progress from one peer address (an IPv6 peer: its /64), so idle
    /// half-open connections from one peer cannot lock others out.
    #[serde(default = "default_max_handshakes_per_peer")]
    pub max_handshakes_per_peer: usize,
    /// Longest an admitted connection may wait before opening its first stream, in
    /// milliseconds; then it is closed (so idle connections cannot hold `max_connections`).
    #[serde(default = "default_first_stream_timeout_ms")]
    pub first_stream_timeout_ms: u64,
    /// Longest a connection may stay without an open stream after its last one, in
    /// milliseconds; then it is closed (clients reconnect on their next call).
    #[serde(default = "default_idle_connection_timeout_ms")]
    pub idle_connection_timeout_ms: u64,
    /// Longest a request message may take to arrive once its header has, in milliseconds; then
    /// the call is answered DEADLINE_EXCEEDED and its share of the byte budget given back.
    #[serde(default = "default_message_read_timeout_ms")]
    pub message_read_timeout_ms: u64,
}

/// Log settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter such as `info` or `vaultgate=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// OpenTelemetry traces (`[traces]`, `traces.rs`): exported over OTLP/gRPC to `endpoint`; the
/// section's presence turns them on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The OTLP/gRPC collector, `http://host:4317` (or `https://`).
    pub endpoint: String,
    /// Share of the traces the gateway starts (a call without a sampled `traceparent`, a Transit
    /// batch) that are recorded, 0.0 to 1.0; a caller's sampling decision is always followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The `service.name` of every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Milliseconds one export to the collector may take.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "vaultgate".into()
}
fn default_export_timeout_ms() -> u64 {
    10_000
}

impl TracesConfig {
    fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.endpoint).map_err(|e| format!("traces.endpoint: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "traces.endpoint: must be http://HOST:PORT or https://HOST:PORT, not {:?}",
                self.endpoint
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!("traces.sample_ratio: must be between 0.0 and 1.0, not {}", self.sample_ratio));
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if !(1..=64).contains(&self.service_name.len()) || !self.service_name.chars().all(name_ok) {
            return Err("traces.service_name: 1 to 64 letters, digits, '-', '_' or '.'".into());
        }
        if !(1..=60_000).contains(&self.export_timeout_ms) {
            return Err("traces.export_timeout_ms: must be 1 to 60000".into());
        }
        Ok(())
    }
}

fn default_transit() -> String {
    "transit".into()
}
fn default_kv() -> String {
    "secret".into()
}
fn default_database() -> String {
    "database".into()
}
fn default_pki() -> String {
    "pki".into()
}
fn default_claim() -> String {
    "sub".into()
}
fn default_method() -> String {
    "jwt".into()
}
fn yes() -> bool {
    true
}
fn default_max_items() -> usize {
    10_000
}
fn default_max_json_strings() -> usize {
    1000
}
fn default_max_bytes() -> usize {
    16 << 20
}
fn default_in_flight() -> usize {
    // One request in flight per lane lets batches grow while it is out; measured with `make bench`,
    // 1 beat 2 (bigger batches, more items/s) against a single OpenBao node.
    1
}
fn default_max_queue() -> usize {
    20_000
}
fn default_max_item_bytes() -> usize {
    768 << 10
}
fn default_max_batch_items() -> usize {
    10_000
}
fn default_max_message_bytes() -> usize {
    4 << 20
}
fn default_max_request_bytes_in_flight() -> usize {
    64 << 20
}
fn default_max_streams_per_connection() -> u32 {
    100
}
fn default_max_connections() -> usize {
    1024
}
fn default_handshake_timeout_ms() -> u64 {
    3000
}
fn default_max_handshakes() -> usize {
    256
}
fn default_max_handshakes_per_peer() -> usize {
    16
}
fn default_first_stream_timeout_ms() -> u64 {
    10_000
}
fn default_idle_connection_timeout_ms() -> u64 {
    300_000
}
fn default_message_read_timeout_ms() -> u64 {
    10_000
}
/// Highest `limits.max_concurrent_calls` accepted: far above what one process can serve, and
/// within what a semaphore and an HTTP/2 stream limit (u32) can hold.
const MAX_CONCURRENT_CALLS: usize = 1 << 20;

fn default_max_concurrent_calls() -> usize {
    // `make bench` peaked at 111 MiB RSS with 10,000 calls in flight; 4096 keeps a replica well
    // under that, and is far more than a healthy replica holds (256 callers: p99 of 40 ms).
    4096
}
fn default_log_format() -> String {
    "human".into()
}
fn default_log_level() -> String {
    "info".into()
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    metrics_listen: Option<String>,
    health_listen: Option<String>,
    #[serde(default)]
    connections: Option<ConnectionsConfig>,
    vault: RawVault,
    #[serde(default)]
    mounts: Option<Mounts>,
    #[serde(default)]
    callers: Vec<CallerRule>,
    #[serde(default = "default_cache")]
    token_cache_size: usize,
    #[serde(default = "default_keep_warm_ms")]
    token_keep_warm_ms: u64,
    #[serde(default)]
    cache: Option<CacheConfig>,
    #[serde(default)]
    batch: Option<BatchConfig>,
    #[serde(default)]
    key_versions: Option<KeyVersionsConfig>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    log: Option<LogConfig>,
    #[serde(default)]
    traces: Option<TracesConfig>,
    #[serde(default)]
    audit: Option<AuditConfig>,
    #[serde(default)]
    shutdown: Option<ShutdownConfig>,
    #[serde(default)]
    watch: Option<WatchConfig>,
    #[serde(default)]
    rate_limits: std::collections::HashMap<String, crate::ratelimit::Limit>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    cert_callers: Vec<RawCertRule>,
    #[serde(default)]
    roles: std::collections::HashMap<String, RawRole>,
    #[serde(default = "default_login_failure_ms")]
    login_failure_cache_ms: u64,
    #[serde(default)]
    leases: Option<LeaseConfig>,
    #[serde(default)]
    issuers: std::collections::HashMap<String, RawIssuer>,
    #[serde(default)]
    unverified_logins: Option<UnverifiedLogins>,
}

impl RawConfig {
    /// Fills every optional table that has defaults (for `check-config --print`).
    fn fill_defaults(&mut self) {
        self.mounts.get_or_insert_with(empty);
        self.batch.get_or_insert_with(empty);
        self.limits.get_or_insert_with(empty);
        self.log.get_or_insert_with(empty);
        self.shutdown.get_or_insert_with(empty);
        self.watch.get_or_insert_with(empty);
        self.unverified_logins.get_or_insert_with(empty);
        self.cache.get_or_insert_with(empty);
        self.key_versions.get_or_insert_with(empty);
    }
}

fn default_login_failure_ms() -> u64 {
    5_000
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    require_client_cert: bool,
    #[serde(default = "default_reload_ms")]
    reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    10_000
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCertRule {
    role: String,
    uri: Option<String>,
    uri_prefix: Option<String>,
    dns: Option<String>,
    dns_prefix: Option<String>,
    cn: Option<String>,
    cn_prefix: Option<String>,
    #[serde(default)]
    bind_identity: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default = "default_approle_mount")]
    approle_mount: String,
    role_id_file: Option<PathBuf>,
    secret_id_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    jwt_file: Option<PathBuf>,
    #[serde(default = "default_method")]
    jwt_mount: String,
    transit_keys: Option<Vec<String>>,
    transit_mounts: Option<Vec<String>>,
    kv_prefixes: Option<Vec<String>>,
    kv_mounts: Option<Vec<String>>,
    db_roles: Option<Vec<String>>,
    cache_ttl_ms: Option<u64>,
    serve_stale: Option<bool>,
    db_mounts: Option<Vec<String>>,
}

fn default_approle_mount() -> String {
    "approle".into()
}

fn default_cache() -> usize {
    10_000
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: Option<String>,
    addresses: Option<Vec<String>>,
    ca_cert: Option<String>,
    namespace: Option<String>,
    timeout_ms: Option<u64>,
    transit_timeout_ms: Option<u64>,
    kv_timeout_ms: Option<u64>,
    login_timeout_ms: Option<u64>,
    database_timeout_ms: Option<u64>,
    #[serde(default = "default_silent_after_ms")]
    silent_after_ms: u64,
    #[serde(default = "default_hedge_min_ms")]
    hedge_min_ms: u64,
    #[serde(default = "default_health_ms")]
    health_interval_ms: u64,
    #[serde(default = "default_max_attempts")]
    retry_max_attempts: u32,
    #[serde(default = "default_backoff_base_ms")]
    retry_backoff_base_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    retry_backoff_max_ms: u64,
    #[serde(default = "default_budget_ratio")]
    retry_budget_ratio: f64,
    #[serde(default = "default_budget_floor")]
    retry_budget_floor_per_second: f64,
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_breaker_cool_down_ms")]
    breaker_cool_down_ms: u64,
}

// The resilience defaults live beside the code that uses them (`vault/retry.rs`, `vault/nodes.rs`).
fn default_max_attempts() -> u32 {
    vault::retry::DEFAULT.max_attempts
}
fn default_backoff_base_ms() -> u64 {
    vault::retry::DEFAULT.backoff_base.as_millis() as u64
}
fn default_backoff_max_ms() -> u64 {
    vault::retry::DEFAULT.backoff_max.as_millis() as u64
}
fn default_budget_ratio() -> f64 {
    vault::retry::DEFAULT.budget_ratio
}
fn default_budget_floor() -> f64 {
    vault::retry::DEFAULT.budget_floor_per_second
}
fn default_breaker_failures() -> u32 {
    vault::nodes::DEFAULT_BREAKER.failures
}
fn default_breaker_cool_down_ms() -> u64 {
    vault::nodes::DEFAULT_BREAKER.cool_down.as_millis() as u64
}
fn default_silent_after_ms() -> u64 {
    vault::nodes::DEFAULT_BREAKER.silent_after.as_millis() as u64
}
fn default_hedge_min_ms() -> u64 {
    50
}

/// Per-kind timeouts: each `vault.<kind>_timeout_ms`; by default the documented figure, or
/// `vault.timeout_ms` when that is set (its meaning before the kinds: every attempt's bound).
fn timeouts(raw: &RawVault) -> Result<vault::Timeouts, String> {
    let d = vault::DEFAULT_TIMEOUTS;
    let cap = match raw.timeout_ms {
        Some(0) => return Err("vault.timeout_ms: must be greater than 0".into()),
        Some(ms) => Duration::from_millis(ms),
        None => Duration::MAX,
    };
    let other = if cap == Duration::MAX { d.other } else { cap };
    let pick = |key: &str, set: Option<u64>, default: Duration| match set {
        Some(0) => Err(format!("vault.{key}: must be greater than 0")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None if cap == Duration::MAX => Ok(default),
        None => Ok(cap),
    };
    Ok(vault::Timeouts {
        transit: pick("transit_timeout_ms", raw.transit_timeout_ms, d.transit)?,
        kv: pick("kv_timeout_ms", raw.kv_timeout_ms, d.kv)?,
        login: pick("login_timeout_ms", raw.login_timeout_ms, d.login)?,
        database: pick("database_timeout_ms", raw.database_timeout_ms, d.database)?,
        other,
    })
}

/// The Vault node URLs: exactly one of `vault.address` and `vault.addresses`, each http(s).
fn vault_addresses(raw: &RawVault) -> Result<Vec<reqwest::Url>, String> {
    let (key, list) = match (&raw.address, &raw.addresses) {
        (Some(a), None) => ("vault.address", vec![a.clone()]),
        (None, Some(list)) if !list.is_empty() && list.len() <= 64 => ("vault.addresses", list.clone()),
        (None, Some(_)) => return Err("vault.addresses: list 1 to 64 node URLs".into()),
        (Some(_), Some(_)) => return Err("vault.address: set either vault.address or vault.addresses, not both".into()),
        (None, None) => {
            return Err("vault.address: set vault.address (one URL) or vault.addresses (the nodes of a cluster)".into())
        }
    };
    let mut urls: Vec<reqwest::Url> = Vec::with_capacity(list.len());
    for a in &list {
        let url = reqwest::Url::parse(a).map_err(|e| format!("{key}: {a:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{key}: scheme must be http or https, not {:?}", url.scheme()));
        }
        if urls.iter().any(|u| u.origin() == url.origin()) {
            return Err(format!("{key}: {a:?} is listed twice"));
        }
        urls.push(url);
    }
    Ok(urls)
}

fn resilience(raw: &RawVault) -> Result<(vault::retry::RetryConfig, vault::nodes::BreakerConfig), String> {
    positive("vault.retry_max_attempts", raw.retry_max_attempts as usize)?;
    positive("vault.retry_backoff_base_ms", raw.retry_backoff_base_ms as usize)?;
    if raw.retry_backoff_max_ms < raw.retry_backoff_base_ms {
        return Err("vault.retry_backoff_max_ms: must be at least vault.retry_backoff_base_ms".into());
    }
    if !(0.0..=1.0).contains(&raw.retry_budget_ratio) {
        return Err("vault.retry_budget_ratio: must be between 0 and 1 (0.2 = one retry per five requests)".into());
    }
    if !(0.0..=10_000.0).contains(&raw.retry_budget_floor_per_second) {
        return Err("vault.retry_budget_floor_per_second: must be between 0 and 10000".into());
    }
    positive("vault.breaker_failures", raw.breaker_failures as usize)?;
    positive("vault.breaker_cool_down_ms", raw.breaker_cool_down_ms as usize)?;
    if !(50..=60_000).contains(&raw.silent_after_ms) {
        return Err("vault.silent_after_ms: must be between 50 and 60000".into());
    }
    Ok((
        vault::retry::RetryConfig {
            max_attempts: raw.retry_max_attempts,
            backoff_base: Duration::from_millis(raw.retry_backoff_base_ms),
            backoff_max: Duration::from_millis(raw.retry_backoff_max_ms),
            budget_ratio: raw.retry_budget_ratio,
            budget_floor_per_second: raw.retry_budget_floor_per_second,
        },
        vault::nodes::BreakerConfig {
            failures: raw.breaker_failures,
            cool_down: Duration::from_millis(raw.breaker_cool_down_ms),
            silent_after: Duration::from_millis(raw.silent_after_ms),
        },
    ))
}

fn default_health_ms() -> u64 {
    1_000
}

fn empty<T: serde::de::DeserializeOwned>() -> T {
    // An empty table always parses: every field of these tables has a default.
    match toml::from_str("") {
        Ok(v) => v,
        Err(e) => unreachable!("defaults of an empty table: {e}"),
    }
}

impl Config {
    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        let listen = raw.listen.parse().map_err(|e| format!("listen: {:?} is not host:port ({e})", raw.listen))?;
        let metrics_listen = match &raw.metrics_listen {
            Some(m) => Some(m.parse().map_err(|e| format!("metrics_listen: {m:?} is not host:port ({e})"))?),
            None => None,
        };
        let health_listen = match &raw.health_listen {
            Some(h) => Some(h.parse().map_err(|e| format!("health_listen: {h:?} is not host:port ({e})"))?),
            None => None,
        };
        let addresses = vault_addresses(&raw.vault)?;
        let (retry, breaker) = resilience(&raw.vault)?;
        let ca_pem = match &raw.vault.ca_cert {
            Some(p) => Some(std::fs::read(p).map_err(|e| format!("vault.ca_cert: cannot read {p}: {e}"))?),
            None => None,
        };
        let timeouts = timeouts(&raw.vault)?;
        positive("vault.health_interval_ms", raw.vault.health_interval_ms as usize)?;
        let mounts: Mounts = raw.mounts.unwrap_or_else(empty);
        for (key, value) in [
            ("mounts.transit", &mounts.transit),
            ("mounts.kv", &mounts.kv),
            ("mounts.database", &mounts.database),
            ("mounts.pki", &mounts.pki),
        ] {
            valid_mount(key, value)?;
        }
        let issuers = raw
            .issuers
            .into_iter()
            .map(|(name, issuer)| issuer_config(&name, issuer).map(|i| (name, i)))
            .collect::<Result<std::collections::HashMap<_, _>, _>>()?;
        let mut callers = raw.callers;
        for (i, rule) in callers.iter_mut().enumerate() {
            validate_rule(i, rule, &issuers)?;
        }
        let unverified_logins: UnverifiedLogins = raw.unverified_logins.unwrap_or_else(empty);
        positive("unverified_logins.max_in_flight", unverified_logins.max_in_flight)?;
        if !(unverified_logins.per_peer_per_second > 0.0 && unverified_logins.per_peer_burst >= 1.0) {
            return Err("unverified_logins.per_peer_per_second: must be > 0, and per_peer_burst >= 1".into());
        }
        let roles = raw
            .roles
            .into_iter()
            .map(|(name, role)| role_config(&name, role, &mounts).map(|r| (name, r)))
            .collect::<Result<std::collections::HashMap<_, _>, _>>()?;
        let cert_callers = raw
            .cert_callers
            .into_iter()
            .enumerate()
            .map(|(i, r)| cert_rule(i, r, &roles))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match raw.tls {
            Some(t) => {
                positive("tls.reload_interval_ms", t.reload_interval_ms as usize)?;
                if t.require_client_cert && t.client_ca.is_none() {
                    return Err("tls.require_client_cert: needs tls.client_ca (the CAs of client certificates)".into());
                }
                Some(TlsConfig {
                    cert: t.cert,
                    key: t.key,
                    client_ca: t.client_ca,
                    require_client_cert: t.require_client_cert,
                    reload_interval: Duration::from_millis(t.reload_interval_ms),
                })
            }
            None => None,
        };
        if let Some(l) = &raw.leases {
            crate::service::validate::name("owner_key", &l.owner_key)
                .map_err(|_| format!("leases.owner_key: {:?} is not a valid Transit key name", l.owner_key))?;
            if roles.get(&l.role).is_none_or(|r| r.login.is_none()) {
                return Err(format!(
                    "leases.role: {:?} needs a [roles.{}] table with the gateway's login (role_id_file + secret_id_file, token_file or jwt_file)",
                    l.role, l.role
                ));
            }
        }
        if !cert_callers.is_empty() && tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
            return Err("cert_callers: certificate callers need [tls] with client_ca".into());
        }
        let batch: BatchConfig = raw.batch.unwrap_or_else(empty);
        positive("batch.max_items", batch.max_items)?;
        positive("batch.max_in_flight", batch.max_in_flight)?;
        positive("batch.max_queue", batch.max_queue)?;
        if batch.max_json_strings < 16 {
            return Err("batch.max_json_strings: must be at least 16 (OpenBao's default is 1000)".into());
        }
        if batch.max_bytes < 4096 {
            return Err("batch.max_bytes: must be at least 4096".into());
        }
        let limits: Limits = raw.limits.unwrap_or_else(empty);
        positive("limits.max_item_bytes", limits.max_item_bytes)?;
        positive("limits.max_batch_items", limits.max_batch_items)?;
        positive("limits.max_concurrent_calls", limits.max_concurrent_calls)?;
        if limits.max_concurrent_calls > MAX_CONCURRENT_CALLS {
            return Err(format!("limits.max_concurrent_calls: must be at most {MAX_CONCURRENT_CALLS}"));
        }
        if limits.max_item_bytes.checked_mul(4).is_none_or(|b| b / 3 + 1024 > batch.max_bytes) {
            return Err("limits.max_item_bytes: one item (base64) must fit in batch.max_bytes".into());
        }
        if limits.max_message_bytes < 1024 {
            return Err("limits.max_message_bytes: must be at least 1024".into());
        }
        if limits.max_request_bytes_in_flight < limits.max_message_bytes {
            return Err("limits.max_request_bytes_in_flight: must be at least limits.max_message_bytes".into());
        }
        positive("limits.max_streams_per_connection", limits.max_streams_per_connection as usize)?;
        positive("limits.max_connections", limits.max_connections)?;
        positive("limits.handshake_timeout_ms", limits.handshake_timeout_ms as usize)?;
        positive("limits.max_handshakes", limits.max_handshakes)?;
        positive("limits.max_handshakes_per_peer", limits.max_handshakes_per_peer)?;
        positive("limits.first_stream_timeout_ms", limits.first_stream_timeout_ms as usize)?;
        positive("limits.idle_connection_timeout_ms", limits.idle_connection_timeout_ms as usize)?;
        positive("limits.message_read_timeout_ms", limits.message_read_timeout_ms as usize)?;
        if raw.audit.as_ref().is_some_and(|a| a.path.is_empty()) {
            return Err("audit.path: must be \"stdout\" or a file path".into());
        }
        for (role, limit) in &raw.rate_limits {
            if !(limit.per_second > 0.0 && limit.burst >= 1.0) {
                return Err(format!("rate_limits.{role}: per_second must be > 0 and burst >= 1"));
            }
        }
        let cache: CacheConfig = raw.cache.unwrap_or_else(empty);
        if cache.ttl_ms > 0 {
            positive("cache.max_entries", cache.max_entries)?;
            if cache.max_bytes < 4096 {
                return Err("cache.max_bytes: must be at least 4096".into());
            }
        }
        if cache.max_stale_ms > 0 && cache.max_stale_ms < cache.ttl_ms {
            return Err("cache.max_stale_ms: must be 0 (never stale) or at least cache.ttl_ms".into());
        }
        let watch: WatchConfig = raw.watch.unwrap_or_else(empty);
        positive("watch.max_streams", watch.max_streams)?;
        positive("watch.max_streams_per_caller", watch.max_streams_per_caller)?;
        if watch.poll_min_ms < 100 || watch.poll_max_ms < watch.poll_min_ms {
            return Err("watch.poll_min_ms: must be at least 100, and watch.poll_max_ms at least it".into());
        }
        let key_versions: KeyVersionsConfig = raw.key_versions.unwrap_or_else(empty);
        if key_versions.poll_ms < 100 {
            return Err("key_versions.poll_ms: must be at least 100".into());
        }
        if key_versions.idle_ms < key_versions.poll_ms {
            return Err("key_versions.idle_ms: must be at least key_versions.poll_ms".into());
        }
        positive("key_versions.max_entries", key_versions.max_entries)?;
        let log: LogConfig = raw.log.unwrap_or_else(empty);
        if !matches!(log.format.as_str(), "human" | "json") {
            return Err(format!("log.format: must be \"human\" or \"json\", not {:?}", log.format));
        }
        if let Some(traces) = &raw.traces {
            traces.validate()?;
        }
        Ok(Config {
            listen,
            metrics_listen,
            health_listen,
            connections: raw.connections.unwrap_or_else(empty),
            vault: crate::vault::ClientConfig {
                addresses,
                timeouts,
                hedge: vault::hedge::HedgeConfig {
                    min: Duration::from_millis(raw.vault.hedge_min_ms),
                    max: breaker.silent_after,
                },
                namespace: raw.vault.namespace.filter(|n| !n.is_empty()),
                ca_pem,
                retry,
                breaker,
            },
            health_interval: Duration::from_millis(raw.vault.health_interval_ms),
            mounts,
            callers,
            tls,
            cert_callers,
            roles,
            login_failure_cache: Duration::from_millis(raw.login_failure_cache_ms),
            issuers,
            unverified_logins,
            leases: raw.leases,
            token_cache_size: raw.token_cache_size.max(1),
            token_keep_warm: Duration::from_millis(raw.token_keep_warm_ms),
            cache,
            batch,
            key_versions,
            limits,
            log,
            traces: raw.traces,
            audit: raw.audit,
            shutdown: raw.shutdown.unwrap_or_else(empty),
            watch,
            rate_limits: raw.rate_limits,
        })
    }
}

fn positive(key: &str, value: usize) -> Result<(), String> {
    if value == 0 {
        return Err(format!("{key}: must be greater than 0"));
    }
    Ok(())
}

/// Mount paths are sent as URL path segments: keep them to a safe alphabet.
fn valid_mount(key: &str, value: &str) -> Result<(), String> {
    crate::service::validate::mount(value).map_err(|why| format!("{key}: {why}"))
}

fn validate_rule(
    i: usize,
    rule: &mut CallerRule,
    issuers: &std::collections::HashMap<String, crate::jwt::IssuerConfig>,
) -> Result<(), String> {
    let key = |k: &str| format!("callers[{i}].{k}");
    if rule.role.trim().is_empty() {
        return Err(format!("{}: must name a Vault role", key("role")));
    }
    if rule.claim.is_empty() {
        return Err(format!("{}: must name a claim", key("claim")));
    }
    match (&rule.equals, &rule.prefix) {
        (Some(_), Some(_)) => Err(format!("{}: set either equals or prefix, not both", key("equals"))),
        (None, None) => Err(format!("{}: set equals or prefix", key("equals"))),
        _ => Ok(()),
    }?;
    if !matches!(rule.method.as_str(), "jwt" | "kubernetes") {
        return Err(format!("{}: must be \"jwt\" or \"kubernetes\", not {:?}", key("method"), rule.method));
    }
    if rule.auth_mount.is_empty() {
        rule.auth_mount = rule.method.clone();
    }
    if let Some(name) = &rule.verify_with {
        let issuer = issuers.get(name).ok_or_else(|| format!("{}: no [issuers.{name}] table", key("verify_with")))?;
        match &rule.issuer {
            Some(iss) if *iss != issuer.issuer => {
                return Err(format!(
                    "{}: {iss:?} differs from issuers.{name}.issuer {:?} (leave it out: verify_with implies it)",
                    key("issuer"),
                    issuer.issuer
                ))
            }
            _ => rule.issuer = Some(issuer.issuer.clone()),
        }
    }
    valid_mount(&key("auth_mount"), &rule.auth_mount)
}

fn role_config(name: &str, raw: RawRole, mounts: &Mounts) -> Result<RoleConfig, String> {
    let key = |k: &str| format!("roles.{name}.{k}");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) {
        return Err(format!("roles.{name:?}: a role name is letters, digits and - _ . @"));
    }
    let login = match (raw.role_id_file, raw.secret_id_file, raw.token_file, raw.jwt_file) {
        (None, None, None, None) => None,
        (Some(role_id_file), Some(secret_id_file), None, None) => {
            valid_mount(&key("approle_mount"), &raw.approle_mount)?;
            Some(RoleLogin::AppRole { mount: raw.approle_mount, role_id_file, secret_id_file })
        }
        (None, None, Some(path), None) => Some(RoleLogin::TokenFile(path)),
        (None, None, None, Some(path)) => {
            valid_mount(&key("jwt_mount"), &raw.jwt_mount)?;
            Some(RoleLogin::JwtFile { mount: raw.jwt_mount, path })
        }
        (Some(_), None, None, None) | (None, Some(_), None, None) => {
            return Err(format!("{}: AppRole needs both role_id_file and secret_id_file", key("role_id_file")))
        }
        _ => return Err(format!("{}: set one login: AppRole files, token_file or jwt_file", key("token_file"))),
    };
    for (field, list) in [
        ("transit_keys", &raw.transit_keys),
        ("kv_prefixes", &raw.kv_prefixes),
        ("db_roles", &raw.db_roles),
        ("kv_mounts", &raw.kv_mounts),
        ("db_mounts", &raw.db_mounts),
        ("transit_mounts", &raw.transit_mounts),
    ] {
        if list.iter().flatten().any(|v| v.trim_matches('/').is_empty()) {
            return Err(format!("{}: entries must not be empty", key(field)));
        }
    }
    let mount_list = |field: &str, list: Option<Vec<String>>, default: &str| -> Result<Vec<String>, String> {
        let list = list.unwrap_or_else(|| vec![default.to_string()]);
        list.iter().try_for_each(|m| valid_mount(&key(field), m))?;
        Ok(list.iter().map(|m| m.trim_matches('/').to_string()).collect())
    };
    Ok(RoleConfig {
        login,
        transit_keys: raw.transit_keys,
        transit_mounts: mount_list("transit_mounts", raw.transit_mounts, &mounts.transit)?,
        kv_prefixes: raw.kv_prefixes,
        kv_mounts: mount_list("kv_mounts", raw.kv_mounts, &mounts.kv)?,
        db_roles: raw.db_roles,
        db_mounts: mount_list("db_mounts", raw.db_mounts, &mounts.database)?,
        cache_ttl: raw.cache_ttl_ms.map(Duration::from_millis),
        serve_stale: raw.serve_stale,
    })
}

fn cert_rule(
    i: usize,
    raw: RawCertRule,
    roles: &std::collections::HashMap<String, RoleConfig>,
) -> Result<CertRule, String> {
    let key = |k: &str| format!("cert_callers[{i}].{k}");
    let matchers = [
        (CertField::Uri, false, raw.uri),
        (CertField::Uri, true, raw.uri_prefix),
        (CertField::Dns, false, raw.dns),
        (CertField::Dns, true, raw.dns_prefix),
        (CertField::Cn, false, raw.cn),
        (CertField::Cn, true, raw.cn_prefix),
    ];
    let mut set = matchers.into_iter().filter_map(|(f, p, v)| v.map(|v| (f, p, v)));
    let (Some((field, prefix, value)), None) = (set.next(), set.next()) else {
        return Err(format!("{}: set exactly one of uri, uri_prefix, dns, dns_prefix, cn, cn_prefix", key("uri")));
    };
    if value.is_empty() {
        return Err(format!("{}: must not be empty", key(field.as_str())));
    }
    match roles.get(&raw.role) {
        Some(RoleConfig { login: Some(_), .. }) => {
            Ok(CertRule { role: raw.role, field, value, prefix, bind_identity: raw.bind_identity })
        }
        _ => Err(format!(
            "{}: role {:?} needs a [roles.{}] table with the gateway's login for it (role_id_file + secret_id_file, token_file or jwt_file)",
            key("role"),
            raw.role,
            raw.role
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.mounts.transit, "transit");
        assert_eq!(c.mounts.kv, "secret");
        assert_eq!(c.mounts.pki, "pki");
        assert_eq!(c.batch.max_json_strings, 1000);
        assert!(c.batch.enabled);
        assert_eq!(c.vault.timeouts, vault::DEFAULT_TIMEOUTS);
        assert_eq!(c.vault.hedge.min, Duration::from_millis(50));
        assert_eq!(c.cache.ttl_ms, 2_000);
        assert_eq!(c.cache.max_stale_ms, 300_000);
        assert_eq!(c.token_keep_warm, Duration::from_secs(900));
        let w = &c.watch;
        assert_eq!((w.max_streams, w.max_streams_per_caller, w.heartbeat_ms), (10_000, 100, 20_000));
        assert_eq!((w.poll_min_ms, w.poll_max_ms, w.rotation_grace_ms), (1_000, 3_000, 30_000));
        for bad in ["max_streams_per_caller = 0", "poll_min_ms = 10", "poll_min_ms = 5000"] {
            assert!(Config::parse(&format!("{MINIMAL}[watch]\n{bad}\n")).is_err(), "{bad}");
        }
        let short = Config::parse(&format!("{MINIMAL}timeout_ms = 2000\nkv_timeout_ms = 500\n")).unwrap();
        let t = short.vault.timeouts;
        assert_eq!(
            (t.transit, t.kv, t.login, t.database, t.other),
            (
                Duration::from_secs(2),
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(2),
                Duration::from_secs(2)
            ),
            "vault.timeout_ms is every kind's default"
        );
        assert_eq!(c.vault.addresses.len(), 1);
        assert_eq!(c.vault.retry, vault::retry::DEFAULT);
        assert_eq!(c.vault.breaker, vault::nodes::DEFAULT_BREAKER);
        let three = "listen = \"127.0.0.1:0\"\n[vault]\naddresses = [\"http://n1:8200\", \"http://n2:8200\", \"https://n3:8200\"]\nretry_max_attempts = 1\n";
        let c = Config::parse(three).unwrap();
        assert_eq!(
            c.vault.addresses.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
            ["http://n1:8200/", "http://n2:8200/", "https://n3:8200/"]
        );
        assert_eq!(c.vault.retry.max_attempts, 1);
        assert_eq!(c.log.format, "human");
        assert_eq!(c.limits.max_concurrent_calls, 4096);
        assert_eq!((c.connections.max_age_ms, c.connections.max_age_grace_ms), (300_000, 30_000));
        assert!(c.health_listen.is_none());
        assert!(c.traces.is_none(), "traces are off unless configured");
        let traced = Config::parse(&format!("{three}[traces]\nendpoint = \"http://otel-collector:4317\"\n")).unwrap();
        let t = traced.traces.expect("on");
        assert_eq!((t.sample_ratio, t.service_name.as_str(), t.export_timeout_ms), (1.0, "vaultgate", 10_000));
        // The limits in front of decoding (docs/attacks.md lists them with these defaults).
        let l = &c.limits;
        assert_eq!(l.max_message_bytes, 4 << 20);
        assert_eq!(l.max_request_bytes_in_flight, 64 << 20);
        assert_eq!((l.max_streams_per_connection, l.max_connections), (100, 1024));
        assert_eq!((l.handshake_timeout_ms, l.max_handshakes, l.max_handshakes_per_peer), (3000, 256, 16));
        assert_eq!(
            (l.first_stream_timeout_ms, l.idle_connection_timeout_ms, l.message_read_timeout_ms),
            (10_000, 300_000, 10_000)
        );
    }

    #[test]
    fn the_kubernetes_config_parses() {
        let text = include_str!("../deploy/kubernetes/base/vaultgate.toml");
        // The CA file exists only in the pod; everything else must parse as shipped.
        let text = text.replace("ca_cert = \"/etc/vaultgate/openbao-ca.crt\"", "");
        let text = text.replace("jwks_ca_cert = \"/etc/vaultgate/kube-ca.crt\"", "");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.callers.len(), 2);
        // Callers' service-account tokens are verified locally, with the cluster's JWKS.
        assert!(c.callers.iter().all(|r| r.verify_with.as_deref() == Some("k8s")));
        assert!(matches!(c.issuers["k8s"].keys, crate::jwt::KeySource::Url { .. }));
        assert_eq!(c.log.format, "json");
        assert!(c.metrics_listen.is_some() && c.audit.is_some());
        assert_eq!(c.shutdown.drain_timeout_ms, 20_000);
        assert_eq!(c.vault.addresses.len(), 3, "the three Raft nodes");
        assert_eq!(c.leases.as_ref().map(|l| l.owner_key.as_str()), Some("vaultgate-leases"));
        assert!(matches!(c.roles["vaultgate-gateway"].login, Some(RoleLogin::JwtFile { .. })));
        // TLS on the gRPC port, probes on the plaintext health port, connections aged out.
        assert!(c.tls.as_ref().is_some_and(|t| t.cert.ends_with("tls/tls.crt")));
        assert_eq!(c.health_listen.map(|a| a.port()), Some(50052));
        assert_eq!((c.connections.max_age_ms, c.connections.max_age_grace_ms), (300_000, 30_000));
    }

    #[test]
    fn invalid_configs_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("listen = \"nope\"\n[vault]\naddress = \"http://x\"\n", "listen"),
            ("listen = \"127.0.0.1:1\"\nhealth_listen = \"x\"\n[vault]\naddress = \"http://x\"\n", "health_listen"),
            (&format!("{MINIMAL}[connections]\nmax_age = 1\n"), "max_age"),
            ("listen = \"127.0.0.1:1\"\n[vault]\naddress = \"ftp://x\"\n", "vault.address"),
            ("listen = \"127.0.0.1:1\"\n[vault]\naddress = \"http://x\"\ntimeout_ms = 0\n", "vault.timeout_ms"),
            ("listen = \"127.0.0.1:1\"\n", "vault"),
            ("listen = \"127.0.0.1:1\"\n[vault]\ntimeout_ms = 5\n", "vault.address"),
            (&format!("{MINIMAL}addresses = [\"http://y\"]\n"), "not both"),
            ("listen = \"127.0.0.1:1\"\n[vault]\naddresses = []\n", "vault.addresses"),
            ("listen = \"127.0.0.1:1\"\n[vault]\naddresses = [\"http://a\", \"ftp://b\"]\n", "vault.addresses"),
            ("listen = \"127.0.0.1:1\"\n[vault]\naddresses = [\"http://a\", \"http://a/\"]\n", "twice"),
            (&format!("{MINIMAL}retry_budget_ratio = 2.0\n"), "vault.retry_budget_ratio"),
            (&format!("{MINIMAL}retry_max_attempts = 0\n"), "vault.retry_max_attempts"),
            (&format!("{MINIMAL}retry_backoff_max_ms = 1\n"), "vault.retry_backoff_max_ms"),
            (&format!("{MINIMAL}breaker_failures = 0\n"), "vault.breaker_failures"),
            (&format!("{MINIMAL}silent_after_ms = 10\n"), "vault.silent_after_ms"),
            (&format!("{MINIMAL}transit_timeout_ms = 0\n"), "vault.transit_timeout_ms"),
            (&format!("{MINIMAL}[cache]\nmax_entries = 0\n"), "cache.max_entries"),
            (&format!("{MINIMAL}[key_versions]\npoll_ms = 10\n"), "key_versions.poll_ms"),
            (&format!("{MINIMAL}[key_versions]\nidle_ms = 200\n"), "key_versions.idle_ms"),
            (&format!("{MINIMAL}[key_versions]\nmax_entries = 0\n"), "key_versions.max_entries"),
            (&format!("{MINIMAL}[cache]\nttl_ms = 5000\nmax_stale_ms = 1000\n"), "cache.max_stale_ms"),
            (&format!("{MINIMAL}[cache]\nttl = 5\n"), "ttl"),
            (&format!("{MINIMAL}typo = 1\n"), "typo"),
            (&format!("{MINIMAL}[batch]\nmax_in_flight = 0\n"), "batch.max_in_flight"),
            (&format!("{MINIMAL}[batch]\nmax_json_strings = 2\n"), "batch.max_json_strings"),
            (&format!("{MINIMAL}[traces]\nendpoint = \"collector:4317\"\n"), "traces.endpoint"),
            (&format!("{MINIMAL}[traces]\nendpoint = \"ftp://collector:4317\"\n"), "traces.endpoint"),
            (&format!("{MINIMAL}[traces]\nendpoint = \"http://c:4317\"\nsample_ratio = 1.5\n"), "traces.sample_ratio"),
            (&format!("{MINIMAL}[traces]\nendpoint = \"http://c:4317\"\nsample_ratio = nan\n"), "traces.sample_ratio"),
            (&format!("{MINIMAL}[traces]\nendpoint = \"http://c:4317\"\nservice_name = \"a b\"\n"), "traces.service_name"),
            (&format!("{MINIMAL}[traces]\nendpoint = \"http://c:4317\"\nexport_timeout_ms = 0\n"), "traces.export_timeout_ms"),
            (&format!("{MINIMAL}[mounts]\nkv = \"a/../b\"\n"), "mounts.kv"),
            (&format!("{MINIMAL}[[callers]]\nrole = \"r\"\n"), "callers[0].equals"),
            (&format!("{MINIMAL}[[callers]]\nrole = \"\"\nequals = \"x\"\n"), "callers[0].role"),
            (&format!("{MINIMAL}[log]\nformat = \"xml\"\n"), "log.format"),
            (&format!("{MINIMAL}[[callers]]\nrole = \"r\"\nequals = \"x\"\nmethod = \"oidc\"\n"), "callers[0].method"),
            (&format!("{MINIMAL}[[cert_callers]]\nrole = \"r\"\nuri = \"spiffe://a\"\n"), "cert_callers[0].role"),
            (
                &format!("{MINIMAL}[roles.r]\ntoken_file = \"t\"\n[[cert_callers]]\nrole = \"r\"\nuri = \"x\"\ndns = \"y\"\n"),
                "cert_callers[0].uri",
            ),
            (&format!("{MINIMAL}[roles.r]\nrole_id_file = \"a\"\n"), "roles.r.role_id_file"),
            (&format!("{MINIMAL}[roles.r]\nrole_id_file = \"a\"\nsecret_id_file = \"b\"\ntoken_file = \"c\"\n"), "roles.r.token_file"),
            (&format!("{MINIMAL}[roles.r]\njwt_file = \"a\"\ntoken_file = \"c\"\n"), "roles.r.token_file"),
            (&format!("{MINIMAL}[roles.r]\njwt_file = \"a\"\njwt_mount = \"a/../b\"\n"), "roles.r.jwt_mount"),
            (
                &format!("{MINIMAL}[roles.r]\ntoken_file = \"t\"\n[[cert_callers]]\nrole = \"r\"\nuri = \"x\"\n"),
                "cert_callers",
            ),
            (&format!("{MINIMAL}[tls]\ncert = \"c\"\nkey = \"k\"\nrequire_client_cert = true\n"), "tls.require_client_cert"),
            (&format!("{MINIMAL}[roles.r]\ntransit_keys = [\"\"]\n"), "roles.r.transit_keys"),
            (&format!("{MINIMAL}[leases]\nowner_key = \"k\"\nrole = \"gw\"\n"), "leases.role"),
            (&format!("{MINIMAL}[roles.gw]\ntoken_file = \"t\"\n[leases]\nowner_key = \"\"\nrole = \"gw\"\n"), "leases.owner_key"),
            (&format!("{MINIMAL}[limits]\nmax_concurrent_calls = 0\n"), "limits.max_concurrent_calls"),
            (
                &format!("{MINIMAL}[limits]\nmax_concurrent_calls = 4611686018427387904\n"),
                "limits.max_concurrent_calls",
            ),
            (&format!("{MINIMAL}[limits]\nmax_item_bytes = 4611686018427387904\n"), "limits.max_item_bytes"),
            (
                &format!("{MINIMAL}[limits]\nmax_request_bytes_in_flight = 1048576\n"),
                "limits.max_request_bytes_in_flight",
            ),
            (&format!("{MINIMAL}[limits]\nmax_streams_per_connection = 0\n"), "limits.max_streams_per_connection"),
            (&format!("{MINIMAL}[limits]\nmax_handshakes_per_peer = 0\n"), "limits.max_handshakes_per_peer"),
            (
                &format!("{MINIMAL}[rate_limits]\nbilling = {{ per_second = 0.0, burst = 5.0 }}\n"),
                "rate_limits.billing",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(key), "error {err:?} should name {key:?}");
        }
    }
}
