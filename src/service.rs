//! The gRPC services. Each RPC is a description ([`Described`], on its request message: which
//! RPC, what it acts on, its checks) plus a handler that calls Vault (through the coalescer for
//! single Encrypt/Decrypt) and builds the response. [`Gateway::serve`] runs what every handler
//! needs on the decoded message (authentication, rate limit, checks, rules, the 403 re-login);
//! what needs no decoded message (shedding, deadline, request id, metrics, audit) runs before
//! decoding, in `layers.rs`.
//! Invariant: services know nothing of HTTP; only `error.rs` picks a status code.

pub mod database;
pub mod encryption;
pub mod identity;
pub mod pki;
pub mod secret;
pub mod validate;

use crate::{
    audit::AuditLog,
    batch::Coalescer,
    cache::{self, ReadCache},
    call::{Call, Rpc},
    config::Config,
    error::Error,
    key_versions::KeyVersions,
    leases::Leases,
    metrics::Metrics,
    ratelimit::RateLimits,
    rules::Resource,
    session::{Actor, Credentials, Sessions},
    stream::{Heartbeat, Outgoing, Sink, Streams},
    vault::Client,
};
use std::{future::Future, sync::Arc};
use tokio::{sync::Semaphore, time::Instant};
use tonic::{metadata::MetadataMap, Request, Response, Status};
use validate::Checked;

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
    /// The audit log, when configured (written by the audit layer).
    pub audit: Option<Arc<AuditLog>>,
    /// Per-caller rate limits.
    pub rate_limits: RateLimits,
    /// Permits for calls in flight (`limits.max_concurrent_calls`): the global load-shedding
    /// bound, taken by the shedding layer.
    pub in_flight: Arc<Semaphore>,
    /// This gateway's metrics (its own registry).
    pub metrics: Arc<Metrics>,
    /// Cached GetSecret, ListSecrets and GetKey answers, per Vault token (`cache.rs`).
    pub cache: ReadCache,
    /// The open server streams: their bounds, shutdown, lingering clean-up (`stream.rs`).
    pub streams: Arc<Streams>,
    /// The shared KV metadata pollers of WatchSecret, per token, mount and path.
    pub watched: secret::Watched,
    /// Each Transit key's versions per Vault token, kept fresh by pollers (`key_versions.rs`).
    pub(crate) key_versions: KeyVersions,
}

impl Gateway {
    /// Builds the shared state from the config; everything it counts goes to `metrics`.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Arc<Gateway>, String> {
        let vault = Client::new(&config.vault, metrics.clone())?;
        let coalescer =
            config.batch.enabled.then(|| Coalescer::new(Arc::new(vault.clone()), &config.batch, metrics.clone()));
        let audit = match &config.audit {
            Some(a) => Some(Arc::new(AuditLog::open(&a.path, a.fail_closed)?)),
            None => None,
        };
        // Every configured role's rate-limit counter exists from the start (at 0).
        let roles = config.callers.iter().map(|c| c.role.clone()).chain(config.roles.keys().cloned());
        metrics.roles(roles.chain(config.rate_limits.keys().cloned()));
        Ok(Arc::new(Gateway {
            audit,
            rate_limits: RateLimits::new(config.rate_limits.clone()),
            in_flight: Arc::new(Semaphore::new(config.limits.max_concurrent_calls)),
            cache: ReadCache::new(&config.cache, metrics.clone()),
            streams: Streams::new(&config.watch, metrics.open_streams.clone()),
            watched: Default::default(),
            key_versions: KeyVersions::new(
                Arc::new(vault.clone()),
                &config.key_versions,
                config.vault.timeouts.transit,
            ),
            sessions: Arc::new(Sessions::new(vault.clone(), &config)?),
            vault,
            coalescer,
            leases: Leases::default(),
            config,
            metrics,
        }))
    }

    /// Runs one decoded call after the layers (`layers.rs`) let it through: records what it
    /// acts on, authenticates the caller, applies its rate limit, the request's checks and the
    /// role's gateway rules, then the handler. When Vault answers 403 and the token turns out to
    /// be gone (revoked or expired behind the gateway's back), logs in again and runs the handler
    /// once more. The handler gets the authenticated actor, the deadline and the message.
    pub async fn serve<R, T, F, Fut>(&self, request: Request<R>, handler: F) -> Result<Response<T>, Status>
    where
        R: Described,
        F: Fn(Actor, Option<Instant>, Arc<R>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        // Without the layers (a handler called directly) the call has a context of its own.
        let call = match request.extensions().get::<Arc<Call>>() {
            Some(call) => call.clone(),
            None => Arc::new(Call::new(R::RPC, &Default::default(), request.remote_addr())),
        };
        let peer = request.peer_certs();
        let (metadata, _, message) = request.into_parts();
        let (name, items) = message.target();
        call.aimed_at(name, items);
        let deadline = call.deadline;
        let leaf = peer.as_ref().and_then(|certs| certs.first()).map(|c| c.as_ref());
        // Boxed: the layers and tonic move this future; the handler's can be large.
        let result = Box::pin(self.run(&call, &metadata, leaf, Arc::new(message), handler)).await;
        match result {
            Ok(body) => Ok(Response::new(body)),
            // Vault requests are cut at the caller's deadline: a Vault timeout (UNAVAILABLE) that
            // ends at or after it means the deadline passed, whichever timer fired first.
            Err(Error::Unavailable(_)) if deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(Status::from(Error::DeadlineExceeded("the call's deadline passed before Vault answered".into())))
            }
            Err(e) => Err(Status::from(e)),
        }
    }

    async fn run<R, T, F, Fut>(
        &self,
        call: &Call,
        metadata: &MetadataMap,
        leaf: Option<&[u8]>,
        message: Arc<R>,
        handler: F,
    ) -> Result<T, Error>
    where
        R: Described,
        F: Fn(Actor, Option<Instant>, Arc<R>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = call.deadline;
        let peer = call.peer.map(|a| a.ip());
        let creds = Credentials::from_call(metadata, leaf)?;
        let actor = self.sessions.authenticate(&creds, peer, deadline).await?;
        call.identified(actor.caller.clone(), actor.role.clone());
        if let Err(wait) = self.rate_limits.take(&actor.caller, &actor.role) {
            self.metrics.rate_limit(&actor.role);
            return Err(Error::ResourceExhausted(format!(
                "rate limit of role {:?} exceeded for this caller; retry in {} ms",
                &*actor.role,
                wait.as_millis().max(1)
            )));
        }
        message.check(&self.config.limits)?;
        if let Some(resource) = message.resource() {
            self.allow(&actor, resource)?;
        }
        match handler(actor.clone(), deadline, message.clone()).await {
            Err(denied @ Error::VaultDenied(_)) => {
                // Rare: boxed so that every call's future does not carry its size.
                Box::pin(async move {
                    if !self.sessions.token_dead(&actor, deadline).await {
                        return Err(denied);
                    }
                    let actor = self.sessions.authenticate(&creds, peer, deadline).await?;
                    handler(actor, deadline, message).await
                })
                .await
            }
            other => other,
        }
    }
}

impl Gateway {
    /// Runs one server-streaming call (`stream.rs`): the same admission as [`Gateway::serve`]
    /// (authentication, rate limit, checks, rules), then a slot within the stream bounds, then
    /// `produce(actor, message, sink)` in the stream's driver until the stream ends. The
    /// producer sends into the sink and returns only to end the stream (`Err`: its status).
    pub async fn serve_stream<R, T, F, Fut>(
        &self,
        request: Request<R>,
        produce: F,
    ) -> Result<Response<Outgoing<T>>, Status>
    where
        R: Described,
        T: Heartbeat + Send + 'static,
        F: FnOnce(Actor, Arc<R>, crate::stream::Sender<T>) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let deadline = request.extensions().get::<Arc<Call>>().and_then(|c| c.deadline);
        let admitted = self.serve(request, |actor, _deadline, message| async move { Ok((actor, message)) }).await?;
        let (actor, message) = admitted.into_inner();
        let slot = self.streams.open(&actor.caller).map_err(Status::from)?;
        let ends = crate::stream::Ends { deadline, credentials: actor.credentials_end() };
        let sink = Sink::default();
        let producing = produce(actor, message, sink.sender());
        Ok(Response::new(self.streams.run(slot, ends, producing, sink)))
    }

    /// Reads through the cache (`cache.rs`) as `actor`'s role allows: `key` names the read and is
    /// made with `actor`'s token, the token `fetch` reads with.
    pub(crate) async fn cached<F, Fut>(
        &self,
        actor: &Actor,
        key: cache::Key,
        fetch: F,
    ) -> Result<cache::Served, crate::vault::VaultError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<cache::Value, crate::vault::VaultError>> + Send + 'static,
    {
        let policy = cache::Policy::of(&self.config.cache, self.config.roles.get(&*actor.role));
        self.cache.read(key, policy, fetch).await
    }
}

/// The `age` field of an answer that may come from the cache.
pub(crate) fn age(age: std::time::Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(age.subsec_nanos()).unwrap_or(0),
    })
}

/// The description of an RPC, carried by its request message: which RPC, what it acts on, and
/// the checks [`Gateway::serve`] runs before the handler (the message's own `check`, then the
/// role's gateway rules on [`Described::resource`]). A new RPC is one impl of this plus its
/// handler, and an entry in `call::RPCS`.
pub trait Described: Checked + Send + Sync + 'static {
    /// The RPC.
    const RPC: &'static Rpc;
    /// The name the call acts on (recorded in the audit line only if valid) and its item count.
    fn target(&self) -> (&str, usize);
    /// What the role's gateway rules must allow; `None` when the handler checks by itself.
    fn resource(&self) -> Option<Resource<'_>> {
        None
    }
}

/// The description of one RPC of `vaultgate.v1.<service>`; `stream` marks a server-streaming one
/// (served by [`Gateway::serve_stream`], `stream.rs`).
macro_rules! rpc {
    ($service:literal, $name:literal, $kind:ident) => {
        &crate::call::Rpc {
            path: concat!("/vaultgate.v1.", $service, "/", $name),
            name: $name,
            kind: crate::call::ResourceKind::$kind,
            streaming: false,
        }
    };
    ($service:literal, $name:literal, $kind:ident, stream) => {
        &crate::call::Rpc {
            path: concat!("/vaultgate.v1.", $service, "/", $name),
            name: $name,
            kind: crate::call::ResourceKind::$kind,
            streaming: true,
        }
    };
}
pub(crate) use rpc;
