//! The gRPC services. Each handler validates its request, authenticates the caller, calls Vault
//! (through the coalescer for single Encrypt/Decrypt) and builds the response.
//! Invariant: services know nothing of HTTP; only `error.rs` picks a status code.

pub mod database;
pub mod encryption;
pub mod identity;
pub mod secret;
pub mod validate;

use crate::{
    audit::{self, AuditLog, Target},
    batch::Coalescer,
    config::Config,
    error::Error,
    leases::Leases,
    metrics,
    ratelimit::RateLimits,
    session::{Actor, Credentials, Sessions},
    vault::{Client, RequestIds},
};
use sha2::Digest;
use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};
use tokio::{sync::Semaphore, time::Instant};
use tonic::{
    metadata::{MetadataMap, MetadataValue},
    Request, Response, Status,
};
use tracing::Instrument;

/// State shared by all services: the Vault client, caller sessions, coalescer and leases.
pub struct Gateway {
    /// Vault client (connection pool).
    pub vault: Client,
    /// Vault tokens acting for callers (per caller JWT, per role for certificate callers).
    pub sessions: Arc<Sessions>,
    /// Coalescer of Transit calls; `None` when batching is off.
    pub coalescer: Option<Arc<Coalescer>>,
    /// Database leases handed out.
    pub leases: Leases,
    /// The configuration.
    pub config: Arc<Config>,
    /// The audit log, when configured.
    pub audit: Option<AuditLog>,
    /// Per-caller rate limits.
    pub rate_limits: RateLimits,
    /// Permits for calls in flight (`limits.max_concurrent_calls`): the global load-shedding bound.
    pub in_flight: Semaphore,
}

impl Gateway {
    /// Builds the shared state from the config.
    pub fn new(config: Arc<Config>) -> Result<Arc<Gateway>, String> {
        let vault = Client::new(&config.vault)?;
        let coalescer = config.batch.enabled.then(|| Coalescer::new(Arc::new(vault.clone()), &config.batch));
        let audit = match &config.audit {
            Some(a) => Some(AuditLog::open(&a.path, a.fail_closed)?),
            None => None,
        };
        // Every configured role's rate-limit counter exists from the start (at 0).
        let roles = config.callers.iter().map(|c| c.role.clone()).chain(config.roles.keys().cloned());
        metrics::get().roles(roles.chain(config.rate_limits.keys().cloned()));
        Ok(Arc::new(Gateway {
            audit,
            rate_limits: RateLimits::new(config.rate_limits.clone()),
            in_flight: Semaphore::new(config.limits.max_concurrent_calls),
            sessions: Arc::new(Sessions::new(vault.clone(), &config)),
            vault,
            coalescer,
            leases: Leases::default(),
            config,
        }))
    }

    /// Runs one call: sheds it when `limits.max_concurrent_calls` are in flight, else reads the
    /// caller's deadline, authenticates, runs `work`, maps the error. When Vault answers 403 and
    /// the token turns out to be gone (revoked or expired behind the gateway's back), logs in again
    /// and runs `work` once more. Every call, shed or not, is audited and recorded in the metrics.
    pub async fn handle<R, T, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<R>,
        describe: fn(&R) -> Target,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        F: Fn(Actor, Option<Instant>, Arc<R>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let peer = request.peer_certs();
        let (metadata, _, message) = request.into_parts();
        let message = Arc::new(message);
        let deadline = grpc_deadline(&metadata);
        let request_id = request_id(&metadata);
        let target = describe(&message);
        let span = tracing::info_span!("call", rpc, request_id = %request_id);
        let mut who: Option<(Arc<str>, Arc<str>)> = None;
        // Load shedding: a non-blocking try, so an overloaded gateway answers at once instead of
        // queueing without bound. The permit is held until the call's work is done.
        let permit = self.in_flight.try_acquire().ok();
        let shed = permit.is_none();
        // Boxed once here: the timeout and the request-id scope below each move the future they
        // wrap, and an unboxed call future would be copied into each (measured: the Encrypt
        // handler's future went from 14.6 KB to a fraction of it, x10,000 calls in flight).
        let call = Box::pin(
            async {
                if shed {
                    metrics::get().calls_shed.inc();
                    return Err(Error::ResourceExhausted(format!(
                    "the gateway is overloaded ({} calls in flight, limits.max_concurrent_calls); retry with backoff",
                    self.config.limits.max_concurrent_calls
                )));
                }
                let leaf = peer.as_ref().and_then(|certs| certs.first()).map(|c| c.as_ref());
                let creds = Credentials::from_call(&metadata, leaf)?;
                let actor = self.sessions.authenticate(&creds, deadline).await?;
                who = Some((actor.caller.clone(), actor.role.clone()));
                if let Err(wait) = self.rate_limits.take(&actor.caller, &actor.role) {
                    metrics::get()
                        .rate_limited
                        .get_or_create(&metrics::NameLabel { name: actor.role.to_string() })
                        .inc();
                    return Err(Error::ResourceExhausted(format!(
                        "rate limit of role {:?} exceeded for this caller; retry in {} ms",
                        &*actor.role,
                        wait.as_millis().max(1)
                    )));
                }
                match work(actor.clone(), deadline, message.clone()).await {
                    Err(denied @ Error::VaultDenied(_)) => {
                        // Rare: boxed so that every call's future does not carry its size.
                        Box::pin(async move {
                            if !self.sessions.token_dead(&actor, deadline).await {
                                return Err(denied);
                            }
                            let actor = self.sessions.authenticate(&creds, deadline).await?;
                            work(actor, deadline, message).await
                        })
                        .await
                    }
                    other => other,
                }
            }
            .instrument(span.clone()),
        );
        let late = || Error::DeadlineExceeded("the call's deadline passed before Vault answered".into());
        let bounded = async {
            match deadline {
                Some(d) => match tokio::time::timeout_at(d, call).await {
                    // Vault requests are cut at the caller's deadline: a Vault timeout (UNAVAILABLE)
                    // that ends at or after it means the deadline passed, whichever timer fired first.
                    Ok(Err(Error::Unavailable(_))) if Instant::now() >= d => Err(late()),
                    Ok(result) => result,
                    Err(_) => Err(late()),
                },
                None => call.await,
            }
        };
        // Vault's request ids are collected only for the audit line: no cost without one.
        let vault_ids = self.audit.as_ref().map(|_| RequestIds::default());
        let result = match &vault_ids {
            Some(ids) => ids.scope(bounded).await,
            None => bounded.await,
        };
        drop(permit);
        let took = started.elapsed();
        let (caller, role) = who.as_ref().map_or(("", ""), |(c, r)| (&**c, &**r));
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => Status::from(e.clone()).code(),
        };
        let result = match (&self.audit, result) {
            (Some(log), result) => {
                let entry = audit::Entry {
                    time_ms: audit::now_ms(),
                    request_id: &request_id,
                    caller,
                    role,
                    rpc,
                    target: &target,
                    code: format!("{code:?}"),
                    latency_ms: took.as_secs_f64() * 1e3,
                    vault_request_ids: &vault_ids.as_ref().map(RequestIds::take).unwrap_or_default(),
                };
                let written = log.write(&entry);
                if written.is_err() {
                    metrics::get().audit_failures.inc();
                }
                match written {
                    Err(e) if log.fail_closed => {
                        tracing::error!(error = %e, "audit log write failed: refusing the call's answer");
                        Err(Error::Unavailable(
                            "the audit log cannot be written; the gateway refuses to serve unaudited".into(),
                        ))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit log write failed");
                        result
                    }
                    Ok(()) => result,
                }
            }
            (None, result) => result,
        };
        let header = MetadataValue::try_from(request_id.as_str()).ok();
        let result = match result {
            Ok(body) => {
                let mut response = Response::new(body);
                if let Some(h) = header {
                    response.metadata_mut().insert(REQUEST_ID, h);
                }
                Ok(response)
            }
            Err(err) => {
                let mut status = Status::from(err);
                if let Some(h) = header {
                    status.metadata_mut().insert(REQUEST_ID, h);
                }
                Err(status)
            }
        };
        let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        span.in_scope(|| tracing::debug!(?code, role, ms = took.as_secs_f64() * 1e3, "call done"));
        metrics::get().call(rpc, code, who.as_ref().map(|(_, r)| &**r), took);
        result
    }
}

/// Metadata key of the request id: taken from the caller when it sends a sane one, else made
/// here; it is on every log line of the call and returned in the response (or error) metadata.
pub const REQUEST_ID: &str = "x-request-id";

fn request_id(metadata: &MetadataMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: OnceLock<String> = OnceLock::new();
    if let Some(given) = metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if (1..=64).contains(&given.len()) && given.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return given.to_string();
        }
    }
    let prefix = PREFIX.get_or_init(|| {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        sha2::Sha256::digest(seed.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
    });
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The caller's deadline from the `grpc-timeout` header, slightly early so that the answer is
/// ours (DEADLINE_EXCEEDED) rather than the transport's cancellation.
pub fn grpc_deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    // The gRPC spec allows at most 8 digits; anything else is ignored (no deadline).
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let early = timeout.saturating_sub(timeout / 50 + Duration::from_millis(1));
    Instant::now().checked_add(early)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1m", Some(Duration::ZERO)),
            ("", None),
            ("10x", None),
            ("abcS", None),
            ("10000000000000000000S", None),
            ("9999999999999999H", None),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("+5S", None),
        ];
        for (raw, want) in cases {
            let mut md = MetadataMap::new();
            if !raw.is_empty() {
                md.insert("grpc-timeout", raw.parse().unwrap());
            }
            let got = grpc_deadline(&md).map(|d| d.saturating_duration_since(Instant::now()));
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g <= *w && g + Duration::from_millis(2) + *w / 50 >= *w, "{raw}: {g:?}"),
                _ => panic!("{raw}: got {got:?}, want {want:?}"),
            }
        }
    }
}
