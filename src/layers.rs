//! The tower layers in front of decoding: each concern of a call that does not need the decoded
//! request lives here, in one layer, and runs on the HTTP/2 request before tonic decodes it.
//! `server.rs` stacks them (innermost first, each `.push_*` wraps the ones before):
//!
//! ```text
//! request ─▶ context ─▶ observe ─▶ audit ─▶ shed ─▶ deadline ─▶ budget ─▶ transport answer ─▶ tonic: decode ─▶ handler
//! ```
//!
//! A layer answers with a status of its own (shed, deadline, budget, audit failure) by building
//! the gRPC answer itself; every layer outside it still sees that answer, so a refused call is
//! counted, audited and carries its request id like any other.
//!
//! Invariants: calls to paths that are not vaultgate RPCs (health, reflection) pass untouched
//! except for the byte budget; a call is shed before a byte of its body is read; a layer never
//! decodes the body.

use crate::{
    audit::{self, AuditLog},
    call::{self, Call, REQUEST_ID},
    error::Error,
    metrics::Metrics,
    vault::RequestIds,
};
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::Semaphore;
use tonic::{
    body::Body,
    codegen::http::{self, HeaderValue},
    transport::server::{TcpConnectInfo, TlsConnectInfo},
    Code, Status,
};
use tower::{layer::util::Identity, Service};
use tracing::Instrument;

/// The HTTP/2 request a layer sees (body not yet read).
pub type HttpRequest = http::Request<Body>;
/// The answer a layer passes on.
pub type HttpResponse = http::Response<Body>;
/// The future of one call through a layer.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

/// The rest of the stack, as a layer sees it.
pub trait Next:
    Service<HttpRequest, Response = HttpResponse, Error = Infallible, Future: Send> + Clone + Send + 'static
{
}
impl<S> Next for S where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible, Future: Send> + Clone + Send + 'static
{
}

/// One concern in front of decoding: what it does around the rest of the stack.
pub trait Concern: Clone + Send + Sync + 'static {
    /// Handles `request`, calling `next` (already ready) or answering by itself.
    fn around<S: Next>(&self, request: HttpRequest, next: S) -> CallFuture;
}

/// A [`Concern`] as a tower layer.
#[derive(Clone)]
pub struct Layer<C>(C);

/// A [`Concern`] around the service `S`.
#[derive(Clone)]
pub struct Around<C, S> {
    concern: C,
    inner: S,
}

impl<C: Concern, S> tower::Layer<S> for Layer<C> {
    type Service = Around<C, S>;

    fn layer(&self, inner: S) -> Around<C, S> {
        Around { concern: self.0.clone(), inner }
    }
}

impl<C: Concern, S: Next> Service<HttpRequest> for Around<C, S> {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> CallFuture {
        // The service that was polled ready serves this call; a clone waits for the next one.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        self.concern.around(request, ready)
    }
}

/// The layers in front of the services, built innermost first: each `push_*` wraps the stack
/// so far, so the last one pushed sees a request first and its answer last.
pub struct Stack<L>(L);

/// `Stack` with one more layer outside.
pub type Pushed<L, Outer> = Stack<tower::layer::util::Stack<L, Outer>>;

impl Default for Stack<Identity> {
    fn default() -> Stack<Identity> {
        Stack::new()
    }
}

impl Stack<Identity> {
    /// No layer yet.
    pub fn new() -> Stack<Identity> {
        Stack(Identity::new())
    }
}

impl<L> Stack<L> {
    /// Wraps the stack in `outer`.
    pub fn push<Outer>(self, outer: Outer) -> Pushed<L, Outer> {
        Stack(tower::layer::util::Stack::new(self.0, outer))
    }

    /// Wraps the stack in a concern.
    pub fn push_concern<C: Concern>(self, concern: C) -> Pushed<L, Layer<C>> {
        self.push(Layer(concern))
    }

    /// Tonic's own refusals rewritten to the contract's codes ([`TransportAnswer`]).
    pub fn push_transport_answer(self) -> Pushed<L, Layer<TransportAnswer>> {
        self.push_concern(TransportAnswer)
    }

    /// The caller's deadline ([`Deadline`]).
    pub fn push_deadline(self) -> Pushed<L, Layer<Deadline>> {
        self.push_concern(Deadline)
    }

    /// Load shedding ([`Shed`]); shed calls are counted in `metrics`.
    pub fn push_shed(self, permits: Arc<Semaphore>, limit: usize, metrics: Arc<Metrics>) -> Pushed<L, Layer<Shed>> {
        self.push_concern(Shed { permits, limit, metrics })
    }

    /// The audit line ([`Audit`]); lines that cannot be written are counted in `metrics`.
    pub fn push_audit(self, log: Option<Arc<AuditLog>>, metrics: Arc<Metrics>) -> Pushed<L, Layer<Audit>> {
        self.push_concern(Audit { log, metrics })
    }

    /// Metrics and the call's last log line ([`Observe`]).
    pub fn push_observe(self, metrics: Arc<Metrics>) -> Pushed<L, Layer<Observe>> {
        self.push_concern(Observe { metrics })
    }

    /// The per-call context and the request id ([`Context`]).
    pub fn push_context(self) -> Pushed<L, Layer<CallContext>> {
        self.push_concern(CallContext)
    }

    /// The tower layer to hand to tonic's `Server::layer`.
    pub fn into_inner(self) -> L {
        self.0
    }
}

/// The gRPC answer of a failure: `error.rs` picks the code (RetryInfo and all).
pub fn refusal(error: Error) -> HttpResponse {
    Status::from(error).into_http()
}

/// The gRPC code of an answer: from its headers when it carries its status there (every
/// refusal and handler error: tonic sends them "trailers-only"), else OK (a message follows).
pub fn code_of(response: &HttpResponse) -> Code {
    response.headers().get("grpc-status").map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
}

fn call_of(request: &HttpRequest) -> Option<Arc<Call>> {
    request.extensions().get::<Arc<Call>>().cloned()
}

fn pass<S: Next>(request: HttpRequest, mut next: S) -> CallFuture {
    Box::pin(next.call(request))
}

/// Outermost: recognises a vaultgate RPC by its path and makes its [`Call`] (request id,
/// deadline, peer address) for every layer inside and the handler; puts the request id on the
/// answer, whoever made it, and opens the call's span. It must be outside every layer that can
/// answer, so that each answer has a request id.
#[derive(Clone)]
pub struct CallContext;

impl Concern for CallContext {
    fn around<S: Next>(&self, mut request: HttpRequest, mut next: S) -> CallFuture {
        let Some(rpc) = call::describe(request.uri().path()) else { return pass(request, next) };
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?.get_ref().remote_addr());
        let call = Arc::new(Call::new(rpc, request.headers(), peer));
        request.extensions_mut().insert(call.clone());
        let span = tracing::info_span!("call", rpc = rpc.name, request_id = %call.request_id);
        Box::pin(
            async move {
                let mut response = next.call(request).await?;
                if let Ok(id) = HeaderValue::from_str(&call.request_id) {
                    response.headers_mut().insert(REQUEST_ID, id);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Counts every call (RPC, code, role, latency) and logs its end. Outside the audit layer, so
/// that an answer replaced because the audit line failed is counted as what the caller got.
#[derive(Clone)]
pub struct Observe {
    metrics: Arc<Metrics>,
}

impl Concern for Observe {
    fn around<S: Next>(&self, request: HttpRequest, mut next: S) -> CallFuture {
        let Some(call) = call_of(&request) else { return pass(request, next) };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = next.call(request).await?;
            let (code, took) = (code_of(&response), call.started.elapsed());
            let role = call.who().map(|(_, role)| role);
            metrics.call(call.rpc.name, code, role, took);
            tracing::debug!(?code, role, ms = took.as_secs_f64() * 1e3, "call done");
            Ok(response)
        })
    }
}

/// Writes one audit line per call, whatever answered it (handler, shedding, deadline, budget),
/// and collects the ids of the Vault requests made for it (a task-local scope around the rest
/// of the stack, which runs the handler in the same task). Fail closed: when the line cannot be
/// written the answer becomes UNAVAILABLE, so it must sit outside every layer that answers.
#[derive(Clone)]
pub struct Audit {
    log: Option<Arc<AuditLog>>,
    metrics: Arc<Metrics>,
}

impl Concern for Audit {
    fn around<S: Next>(&self, request: HttpRequest, mut next: S) -> CallFuture {
        let (Some(log), Some(call)) = (self.log.clone(), call_of(&request)) else { return pass(request, next) };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let ids = RequestIds::default();
            let response = ids.scope(next.call(request)).await?;
            let (caller, role) = call.who().unwrap_or(("", ""));
            let target = call.target().cloned().unwrap_or_default();
            let entry = audit::Entry {
                time_ms: audit::now_ms(),
                request_id: &call.request_id,
                caller,
                role,
                rpc: call.rpc.name,
                target: &target,
                code: crate::metrics::code_name(code_of(&response)).to_string(),
                latency_ms: call.started.elapsed().as_secs_f64() * 1e3,
                vault_request_ids: &ids.take(),
            };
            let written = log.write(&entry);
            if written.is_err() {
                metrics.audit_failures.inc();
            }
            match written {
                Err(e) if log.fail_closed => {
                    tracing::error!(error = %e, "audit log write failed: refusing the call's answer");
                    Ok(refusal(Error::Unavailable(
                        "the audit log cannot be written; the gateway refuses to serve unaudited".into(),
                    )))
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log write failed");
                    Ok(response)
                }
                Ok(()) => Ok(response),
            }
        })
    }
}

/// Load shedding: at most `limits.max_concurrent_calls` calls are past this layer at once (a
/// non-blocking try: past it a call is answered RESOURCE_EXHAUSTED at once, never queued). The
/// permit is held until the handler answered. It sits in front of the body budget and of
/// decoding, so a shed call costs no read of its body.
#[derive(Clone)]
pub struct Shed {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Concern for Shed {
    fn around<S: Next>(&self, request: HttpRequest, mut next: S) -> CallFuture {
        if call_of(&request).is_none() {
            return pass(request, next);
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Box::pin(async move {
                let response = next.call(request).await;
                drop(permit);
                response
            }),
            Err(_) => {
                let limit = self.limit;
                self.metrics.calls_shed.inc();
                Box::pin(async move {
                    Ok(refusal(Error::ResourceExhausted(format!(
                        "the gateway is overloaded ({limit} calls in flight, limits.max_concurrent_calls); retry with backoff"
                    ))))
                })
            }
        }
    }
}

/// The caller's deadline bounds the whole call, reading and decoding its request included:
/// when it passes, the rest of the stack (and the handler with its Vault requests) is dropped
/// and the answer is DEADLINE_EXCEEDED. Inside shedding (a shed call needs no timer), outside
/// the byte budget (a slow sender is cut at its deadline).
#[derive(Clone)]
pub struct Deadline;

impl Concern for Deadline {
    fn around<S: Next>(&self, request: HttpRequest, mut next: S) -> CallFuture {
        let Some(deadline) = call_of(&request).and_then(|c| c.deadline) else { return pass(request, next) };
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, next.call(request)).await {
                Ok(answer) => answer,
                Err(_) => {
                    Ok(refusal(Error::DeadlineExceeded("the call's deadline passed before it was answered".into())))
                }
            }
        })
    }
}

/// Innermost, right on the services: tonic refuses a request message over
/// `limits.max_message_bytes` with OUT_OF_RANGE before any handler runs; `error.rs` makes it
/// the contract's INVALID_ARGUMENT here, so every layer outside sees (and audits) the code the
/// caller gets.
#[derive(Clone)]
pub struct TransportAnswer;

impl Concern for TransportAnswer {
    fn around<S: Next>(&self, request: HttpRequest, mut next: S) -> CallFuture {
        let answer = next.call(request);
        Box::pin(async move { answer.await.map(crate::error::transport_answer) })
    }
}
