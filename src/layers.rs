//! The tower layers in front of decoding: each concern of a call that does not need the decoded
//! request lives here, in one layer, and runs on the HTTP/2 request before tonic decodes it.
//! `server.rs` stacks them (innermost first, each `.push_*` wraps the ones before):
//!
//! ```text
//! request ─▶ streams ─▶ context ─▶ trace ─▶ observe ─▶ audit ─▶ shed ─▶ deadline ─▶ budget ─▶ transport ─▶ services ─▶ tonic: decode ─▶ handler
//! ```
//!
//! (`services`, in `server.rs`, sends a vaultgate RPC straight to its service.) A layer borrows
//! the rest of the stack and calls it before it boxes its own future, so that box holds only
//! the inner future and the layer's own state and nothing is cloned per call; a layer with
//! nothing to do for a call passes the inner future on unboxed (`pass`).
//!
//! A layer answers with a status of its own (shed, deadline, budget, audit failure) by building
//! the gRPC answer itself; every layer outside it still sees that answer, so a refused call is
//! counted, audited and carries its request id like any other.
//!
//! A server-streaming RPC (`stream.rs`) passes the same layers: its head is the answer they see
//! (so it is shed, audited and refused like any call, and its audit line is written when it
//! opens, before its first message), and the observe layer counts it when it ends, with the
//! status it ended with ([`at_end`]).
//!
//! Invariants: calls to paths that are not vaultgate RPCs (health, reflection) pass untouched
//! except for the byte budget; a call is shed before a byte of its body is read; a layer never
//! decodes the body.

use crate::{
    audit::{self, AuditLog},
    call::{self, Call, REQUEST_ID},
    config::Limits,
    error::Error,
    frames::{Event, Frames},
    listener::{Admission, StreamGuard},
    metrics::Metrics,
    vault::RequestIds,
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::{sync::Semaphore, time::Sleep};
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
    Service<HttpRequest, Response = HttpResponse, Error = Infallible, Future: Send + 'static> + Clone + Send + 'static
{
}
impl<S> Next for S where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// One concern in front of decoding: what it does around the rest of the stack.
pub trait Concern: Clone + Send + Sync + 'static {
    /// Handles `request`, calling `next` (already ready) or answering by itself. `next` is
    /// borrowed for this call only: it is called (at most once) before `around` returns, and
    /// the returned future holds `next`'s future, never `next` itself, so no call clones the
    /// rest of the stack.
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture;
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
        // The inner service was polled ready and is called before `around` returns (the
        // `Concern` contract), so it serves this call in place: nothing is cloned per call.
        self.concern.around(request, &mut self.inner)
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

    /// The global budget of request bytes in flight and the per-message bounds of `limits`
    /// ([`Budget`]).
    pub fn push_budget(self, bytes: Arc<ByteBudget>, limits: &Limits) -> Pushed<L, Layer<Budget>> {
        self.push_concern(Budget::new(bytes, limits))
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

    /// The call's exported span, child of the caller's `traceparent` ([`Trace`]).
    pub fn push_trace(self) -> Pushed<L, Layer<Trace>> {
        self.push_concern(Trace)
    }

    /// The per-call context and the request id ([`Context`]).
    pub fn push_context(self) -> Pushed<L, Layer<CallContext>> {
        self.push_concern(CallContext)
    }

    /// Open streams counted per connection ([`Streams`]).
    pub fn push_streams(self, admission: Arc<Admission>) -> Pushed<L, Layer<Streams>> {
        self.push_concern(Streams { admission })
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

/// The rest of the stack's answer, untouched. When the rest is another layer its future is
/// already a `CallFuture` and is passed on as it is, not boxed again.
pub(crate) fn pass<S: Next>(request: HttpRequest, next: &mut S) -> CallFuture {
    let mut answer = Some(next.call(request));
    if let Some(boxed) =
        (&mut answer as &mut dyn std::any::Any).downcast_mut::<Option<CallFuture>>().and_then(Option::take)
    {
        return boxed;
    }
    match answer {
        Some(answer) => Box::pin(answer),
        // Not reached: the downcast above takes the answer only when it is a `CallFuture`.
        None => Box::pin(std::future::ready(Ok(refusal(Error::Internal("a layer lost its answer".into()))))),
    }
}

/// Outermost: recognises a vaultgate RPC by its path and makes its [`Call`] (request id,
/// deadline, peer address) for every layer inside and the handler; puts the request id on the
/// answer, whoever made it, and opens the call's span. It must be outside every layer that can
/// answer, so that each answer has a request id.
#[derive(Clone)]
pub struct CallContext;

/// The peer's socket address, plaintext or TLS.
fn peer_of(request: &HttpRequest) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?.get_ref().remote_addr())
}

/// Outside everything, for every path: counts the stream on its connection's [`Activity`](crate::listener::Activity)
/// from its request until its answer's body ends, so that the listener closes only
/// connections without streams (`limits.first_stream_timeout_ms`,
/// `limits.idle_connection_timeout_ms`).
#[derive(Clone)]
pub struct Streams {
    admission: Arc<Admission>,
}

impl Concern for Streams {
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let Some(guard) = peer_of(&request).and_then(|p| self.admission.activity(p)).map(|a| a.stream()) else {
            return pass(request, next);
        };
        let answer = next.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|inner| Body::new(Streaming { inner, _guard: guard })))
        })
    }
}

/// An answer's body holding its stream's place on the connection until it ends.
struct Streaming {
    inner: Body,
    _guard: StreamGuard,
}

impl http_body::Body for Streaming {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Concern for CallContext {
    fn around<S: Next>(&self, mut request: HttpRequest, next: &mut S) -> CallFuture {
        let Some(rpc) = call::describe(request.uri().path()) else { return pass(request, next) };
        let peer = peer_of(&request);
        let call = Arc::new(Call::new(rpc, request.headers(), peer));
        request.extensions_mut().insert(call.clone());
        let span = tracing::info_span!("call", rpc = rpc.name, request_id = %call.request_id);
        let answer = span.in_scope(|| next.call(request));
        Box::pin(
            async move {
                let mut response = answer.await?;
                if let Ok(mut id) = HeaderValue::from_str(&call.request_id) {
                    // Unique per call, so never worth a place in the connection's HPACK table:
                    // indexed, each answer's id evicted the table's other entries and h2 compared
                    // it with every earlier id still there (5 % of a call's instructions).
                    // Sensitive, it is sent as a literal and the table keeps the answers'
                    // shared headers.
                    id.set_sensitive(true);
                    response.headers_mut().insert(http::HeaderName::from_static(REQUEST_ID), id);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The call's OpenTelemetry span (`traces.rs`): a server span named after the RPC, child of the
/// caller's W3C `traceparent` when its metadata carries one, with the gRPC code and the caller's
/// role (a configured name) once answered. Just inside the context (it reads the [`Call`]),
/// outside every layer that answers, so a refused call is traced with its code too. With traces
/// off the span is disabled and this costs a filter check.
#[derive(Clone)]
pub struct Trace;

impl Concern for Trace {
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let Some(call) = call_of(&request) else { return pass(request, next) };
        let span = tracing::info_span!(
            target: "vaultgate::traces",
            "call",
            otel.name = call.rpc.path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = call.rpc.name,
            rpc.grpc.status_code = tracing::field::Empty,
            vaultgate.role = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if span.is_disabled() {
            // Traces off: nothing to wrap the call in.
            return pass(request, next);
        }
        crate::traces::follow(&span, request.headers());
        let recorded = span.clone();
        let answer = span.in_scope(|| next.call(request));
        Box::pin(
            async move {
                let response = answer.await?;
                let code = code_of(&response);
                recorded.record("rpc.grpc.status_code", code as i32);
                if let Some((_, role)) = call.who() {
                    recorded.record("vaultgate.role", role);
                }
                if !matches!(code, Code::Ok) {
                    recorded.record("otel.status_code", "error");
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
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let Some(call) = call_of(&request) else { return pass(request, next) };
        let metrics = self.metrics.clone();
        let answer = next.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let streaming = call.rpc.streaming;
            let done = move |code: Code| {
                let took = call.started.elapsed();
                let role = call.role();
                metrics.call(call.rpc.name, code, role, took);
                tracing::debug!(?code, role = role.map(|r| &**r), ms = took.as_secs_f64() * 1e3, "call done");
            };
            // A stream that opened is counted when it ends, with the status it ended with.
            if streaming && code_of(&response) == Code::Ok {
                return Ok(at_end(response, done));
            }
            done(code_of(&response));
            Ok(response)
        })
    }
}

/// `response` whose body calls `done` once with the code its stream ended with: the
/// `grpc-status` of its trailers, or CANCELLED when the body is dropped before them (the caller
/// went away).
pub fn at_end(response: HttpResponse, done: impl FnOnce(Code) + Send + 'static) -> HttpResponse {
    response.map(|inner| Body::new(Ending { inner, done: Some(Box::new(done)) }))
}

/// A response body that reports how its stream ended ([`at_end`]).
struct Ending {
    inner: Body,
    done: Option<Box<dyn FnOnce(Code) + Send>>,
}

impl http_body::Body for Ending {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let ended = match &frame {
            Some(Ok(f)) => {
                f.trailers_ref().map(|t| t.get("grpc-status").map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes())))
            }
            Some(Err(e)) => Some(e.code()),
            None => Some(Code::Unknown),
        };
        if let (Some(code), Some(done)) = (ended, self.done.take()) {
            done(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Code::Cancelled);
        }
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
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let (Some(log), Some(call)) = (self.log.clone(), call_of(&request)) else { return pass(request, next) };
        let metrics = self.metrics.clone();
        let answer = next.call(request);
        Box::pin(async move {
            let ids = RequestIds::default();
            let response = ids.scope(answer).await?;
            let (caller, role) = call.who().unwrap_or(("", ""));
            let none = audit::Target::default();
            let entry = audit::Entry {
                time_ms: audit::now_ms(),
                request_id: &call.request_id,
                caller,
                role,
                rpc: call.rpc.name,
                target: call.target().unwrap_or(&none),
                code: crate::metrics::code_name(code_of(&response)),
                latency_ms: call.started.elapsed().as_secs_f64() * 1e3,
                vault_request_ids: &ids.take(),
            };
            // Group commit (audit.rs): answered once this very line is written.
            let written = log.write(&entry).await;
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
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        if call_of(&request).is_none() {
            return pass(request, next);
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let answer = next.call(request);
                Box::pin(async move {
                    let response = answer.await;
                    drop(permit);
                    response
                })
            }
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
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let Some(deadline) = call_of(&request).and_then(|c| c.deadline) else { return pass(request, next) };
        let answer = next.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, answer).await {
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
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let answer = next.call(request);
        Box::pin(async move { answer.await.map(crate::error::transport_answer) })
    }
}

/// The global budget of request bytes in flight (`limits.max_request_bytes_in_flight`): every
/// request message is charged what its header declares as soon as the 5-byte header arrives,
/// before tonic buffers its body, and [`FIELD_COST`] per top-level field as its fields arrive,
/// before tonic decodes it; the charge is given back when the call is answered. So what
/// requests hold in memory, raw and decoded, is bounded by configuration whatever the callers
/// send, declare or trickle.
pub struct ByteBudget {
    max: usize,
    used: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// What one top-level field of a request message may decode into beyond its own bytes: the
/// largest element a repeated field of a request holds (a batch item, a `String`), twice (a
/// `Vec` grows by doubling). 4 MiB of empty batch items (2 bytes each) would otherwise decode
/// to about 150 MB of structs.
pub const FIELD_COST: usize = 256;

/// Top-level fields a request message may have on top of `limits.max_batch_items`: the other
/// fields of a batch, and the largest other request (IssueCertificate: 100 `alt_names` and 100
/// `ip_sans` plus its own fields) with room to spare. Past it the message is refused before it
/// is decoded; below it each handler's own count check names the field.
pub const MORE_FIELDS: usize = 256;

impl ByteBudget {
    /// A budget of `max` bytes, its use shown in `metrics`.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> ByteBudget {
        ByteBudget { max, used: AtomicUsize::new(0), metrics }
    }

    /// Takes `n` bytes; false (and nothing taken) when that would pass the budget.
    pub fn take(&self, n: usize) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|&after| after <= self.max)
        });
        if taken.is_ok() {
            self.metrics.request_bytes_in_flight.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
        taken.is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.metrics.request_bytes_in_flight.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One call's share of the budget: what its messages took, given back when the call is
/// answered (or when the last holder drops it). After the answer (a streaming request's later
/// messages) a message is only checked against the budget, not held: the handler consumes them
/// one by one.
struct Charge {
    budget: Arc<ByteBudget>,
    held: AtomicUsize,
    answered: AtomicBool,
}

impl Charge {
    fn new(budget: Arc<ByteBudget>) -> Arc<Charge> {
        Arc::new(Charge { budget, held: AtomicUsize::new(0), answered: AtomicBool::new(false) })
    }

    fn take(&self, n: usize) -> bool {
        if !self.budget.take(n) {
            return false;
        }
        if self.answered.load(Ordering::Acquire) {
            self.budget.give_back(n);
        } else {
            self.held.fetch_add(n, Ordering::AcqRel);
        }
        true
    }

    fn answered(&self) {
        self.answered.store(true, Ordering::Release);
        self.budget.give_back(self.held.swap(0, Ordering::AcqRel));
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.held.swap(0, Ordering::AcqRel));
    }
}

/// The per-message bounds the budget layer applies as a body arrives.
#[derive(Clone, Copy)]
struct Bounds {
    max_message: usize,
    max_fields: usize,
    /// How long a message may take to arrive after its header.
    read_timeout: Duration,
}

/// A request body walked as it arrives ([`Frames`]): each message is charged by its declared
/// length at its header and by [`FIELD_COST`] per top-level field; a message over
/// `limits.max_message_bytes` or with more fields than allowed fails the body with
/// INVALID_ARGUMENT, a charge past the budget with RESOURCE_EXHAUSTED, which tonic's decoder
/// answers with before buffering the rest or decoding anything.
struct Budgeted {
    inner: Body,
    charge: Arc<Charge>,
    frames: Frames,
    bounds: Bounds,
    /// Top-level fields of the current message so far.
    fields: usize,
    /// When the message that has begun to arrive must have arrived whole.
    late: Option<Pin<Box<Sleep>>>,
}

impl Budgeted {
    fn new(inner: Body, charge: Arc<Charge>, bounds: Bounds) -> Budgeted {
        Budgeted { inner, charge, frames: Frames::default(), bounds, fields: 0, late: None }
    }

    /// Walks `data`: the first refusal of one of its messages, if any. A message that began
    /// in it gets `limits.message_read_timeout_ms` to arrive whole.
    fn walk(&mut self, data: &[u8]) -> Result<(), Error> {
        let mut began = false;
        let Budgeted { charge, frames, bounds, fields, .. } = self;
        let walked = frames.feed(data, |event| {
            let cost = match event {
                Event::Message { declared, .. } => {
                    let declared = usize::try_from(declared).unwrap_or(usize::MAX);
                    if declared > bounds.max_message {
                        return Err(Error::InvalidArgument(format!(
                            "the request message is over limits.max_message_bytes; send less per call \
                             (it declares {declared} bytes, the limit is {})",
                            bounds.max_message
                        )));
                    }
                    *fields = 0;
                    began = true;
                    declared.saturating_add(5)
                }
                Event::Fields(n) => {
                    *fields = fields.saturating_add(n);
                    if *fields > bounds.max_fields {
                        return Err(Error::InvalidArgument(format!(
                            "the request message has more than {} top-level fields (limits.max_batch_items + {MORE_FIELDS}); \
                             send fewer items per call",
                            bounds.max_fields
                        )));
                    }
                    n.saturating_mul(FIELD_COST)
                }
            };
            if charge.take(cost) {
                Ok(())
            } else {
                Err(Error::ResourceExhausted(format!(
                    "the gateway holds too many request bytes ({} in flight, limits.max_request_bytes_in_flight); retry with backoff",
                    charge.budget.max
                )))
            }
        });
        if !self.frames.in_message() {
            self.late = None;
        } else if began {
            self.late = Some(Box::pin(tokio::time::sleep(self.bounds.read_timeout)));
        }
        walked
    }
}

impl http_body::Body for Budgeted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if self.late.as_mut().is_some_and(|late| late.as_mut().poll(cx).is_ready()) {
                    self.late = None;
                    let ms = self.bounds.read_timeout.as_millis();
                    return Poll::Ready(Some(Err(Status::from(Error::DeadlineExceeded(format!(
                        "the request message did not arrive within {ms} ms of its header (limits.message_read_timeout_ms)"
                    ))))));
                }
                return Poll::Pending;
            }
        };
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            if let Err(refused) = self.walk(data.map_or(&[][..], |d| &d[..])) {
                return Poll::Ready(Some(Err(Status::from(refused))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Charges every request against the global [`ByteBudget`] and bounds each of its messages as
/// its bytes arrive ([`Budgeted`]), for every path (health and reflection too). Inside shedding
/// (a shed call reads nothing), right in front of tonic's decoding (so a refused request is
/// never decoded).
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<ByteBudget>,
    bounds: Bounds,
}

impl Budget {
    fn new(bytes: Arc<ByteBudget>, limits: &Limits) -> Budget {
        let max_fields = limits.max_batch_items.saturating_add(MORE_FIELDS);
        let read_timeout = Duration::from_millis(limits.message_read_timeout_ms);
        Budget { bytes, bounds: Bounds { max_message: limits.max_message_bytes, max_fields, read_timeout } }
    }
}

impl Concern for Budget {
    fn around<S: Next>(&self, request: HttpRequest, next: &mut S) -> CallFuture {
        let charge = Charge::new(self.bytes.clone());
        let bounds = self.bounds;
        let request = request.map(|inner| Body::new(Budgeted::new(inner, charge.clone(), bounds)));
        let answer = next.call(request);
        Box::pin(async move {
            let answer = answer.await;
            charge.answered();
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn budget(max: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget::new(max, Arc::new(Metrics::new())))
    }

    #[test]
    fn the_budget_never_passes_its_maximum() {
        let b = budget(100);
        assert!(b.take(60));
        assert!(!b.take(41), "60 + 41 > 100");
        assert_eq!(b.used(), 60, "a refused take takes nothing");
        assert!(b.take(40));
        assert!(!b.take(1));
        b.give_back(100);
        assert_eq!(b.used(), 0);
        assert!(!b.take(usize::MAX), "no overflow");
        assert!(b.take(100));
    }

    /// A body of these data frames, through the budget layer's wrapper.
    fn body(chunks: Vec<Vec<u8>>, charge: &Arc<Charge>, max_fields: usize) -> Budgeted {
        let frames: Vec<Result<Frame<Bytes>, Status>> =
            chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from(c)))).collect();
        let inner = Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
        Budgeted::new(
            inner,
            charge.clone(),
            Bounds { max_message: 1000, max_fields, read_timeout: Duration::from_secs(10) },
        )
    }

    /// A gRPC message header declaring `n` bytes.
    fn header(n: u32) -> Vec<u8> {
        let mut h = vec![0];
        h.extend_from_slice(&n.to_be_bytes());
        h
    }

    #[tokio::test]
    async fn messages_are_charged_by_their_declared_length_before_their_bytes_arrive() {
        let b = budget(1000);
        let first = Charge::new(b.clone());
        let mut trickle = body(vec![header(595), vec![0x0a, 0x01], vec![b'k'; 1]], &first, 10);
        assert!(trickle.frame().await.expect("frame").is_ok());
        assert_eq!(b.used(), 600, "the whole declared message is charged at its header");
        // A second call declares more than is left: refused at its header, taking nothing.
        let second = Charge::new(b.clone());
        let mut greedy = body(vec![header(400), vec![0; 400]], &second, 10);
        let refused = greedy.frame().await.expect("frame").expect_err("past the budget");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("limits.max_request_bytes_in_flight"), "{}", refused.message());
        assert_eq!(b.used(), 600, "the refused header took nothing");
        // Fields are charged as they arrive: one field of the first message.
        assert!(trickle.frame().await.expect("frame").is_ok());
        assert_eq!(b.used(), 600 + FIELD_COST);
        // Over limits.max_message_bytes: refused by its header, whatever the budget.
        let third = Charge::new(b.clone());
        let refused = body(vec![header(1001)], &third, 10).collect().await.expect_err("over the message limit");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("declares 1001 bytes, the limit is 1000"), "{}", refused.message());
        assert_eq!(b.used(), 600 + FIELD_COST);
        // Answers give everything back, whether the body is still alive or not.
        first.answered();
        assert_eq!(b.used(), 0);
        let fourth = Charge::new(b.clone());
        let mut held = body(vec![header(100)], &fourth, 10);
        assert!(held.frame().await.expect("frame").is_ok());
        assert_eq!(b.used(), 105);
        drop(held);
        drop(fourth);
        assert_eq!(b.used(), 0, "dropped calls give back too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_stops_arriving_gives_its_charge_back_after_the_read_timeout() {
        use tokio_stream::StreamExt;
        let b = budget(1000);
        let c = Charge::new(b.clone());
        // A header, half the message, then nothing ever again.
        let chunks = [header(500), vec![0; 250]].map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c))));
        let inner =
            Body::new(http_body_util::StreamBody::new(tokio_stream::iter(chunks).chain(tokio_stream::pending())));
        let bounds = Bounds { max_message: 1000, max_fields: 10, read_timeout: Duration::from_secs(10) };
        let mut silent = Budgeted::new(inner, c.clone(), bounds);
        assert!(silent.frame().await.expect("header").is_ok());
        assert!(silent.frame().await.expect("half").is_ok());
        assert_eq!(b.used(), 505);
        let t0 = tokio::time::Instant::now();
        let late = silent.frame().await.expect("an answer").expect_err("too slow");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert!(late.message().contains("limits.message_read_timeout_ms"), "{}", late.message());
        c.answered();
        assert_eq!(b.used(), 0);
        // Messages that arrive whole in time are not cut, however long the body stays open.
        let c = Charge::new(b.clone());
        let whole = [header(3), vec![0x08, 0x01, 0x10]].map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c))));
        let inner =
            Body::new(http_body_util::StreamBody::new(tokio_stream::iter(whole).chain(tokio_stream::pending())));
        let mut open = Budgeted::new(inner, c, bounds);
        assert!(open.frame().await.expect("header").is_ok());
        assert!(open.frame().await.expect("message").is_ok());
        let waited = tokio::time::timeout(Duration::from_secs(60), open.frame()).await;
        assert!(waited.is_err(), "an idle body between messages is not cut: {waited:?}");
    }

    #[tokio::test]
    async fn many_tiny_fields_are_refused_before_decoding() {
        use crate::pb::vaultgate::v1::{EncryptBatchItem, EncryptBatchRequest};
        use prost::Message;
        let items = |n| {
            let m = EncryptBatchRequest {
                key: "k".into(),
                items: vec![EncryptBatchItem::default(); n],
                ..Default::default()
            };
            [header(m.encoded_len() as u32), m.encode_to_vec()].concat()
        };
        let b = budget(100_000);
        let c = Charge::new(b.clone());
        body(vec![items(9)], &c, 10).collect().await.expect("10 fields (key + 9 items) are allowed");
        assert_eq!(b.used(), 5 + 3 + 9 * 2 + 10 * FIELD_COST, "bytes plus a field cost each");
        let c = Charge::new(b.clone());
        let refused = body(vec![items(10)], &c, 10).collect().await.expect_err("11 fields");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("more than 10 top-level fields"), "{}", refused.message());
        // Field costs pass the budget before the bytes do: 4 MiB of empty items would decode to
        // ~150 MB of structs.
        let c = Charge::new(budget(2_000));
        let refused = body(vec![items(9)], &c, 1000).collect().await.expect_err("past the budget");
        assert_eq!(refused.code(), Code::ResourceExhausted);
    }

    #[test]
    fn a_field_cost_covers_what_a_request_element_decodes_into() {
        use crate::pb::vaultgate::v1::{DecryptBatchItem, EncryptBatchItem, RewrapBatchItem};
        for (name, size) in [
            ("RewrapBatchItem", std::mem::size_of::<RewrapBatchItem>()),
            ("EncryptBatchItem", std::mem::size_of::<EncryptBatchItem>()),
            ("DecryptBatchItem", std::mem::size_of::<DecryptBatchItem>()),
            ("String", std::mem::size_of::<String>()),
        ] {
            assert!(2 * size <= FIELD_COST, "{name} is {size} bytes: raise FIELD_COST");
        }
    }

    #[tokio::test]
    async fn after_the_answer_a_stream_is_checked_but_holds_nothing() {
        let b = budget(100);
        let c = Charge::new(b.clone());
        c.answered();
        let read = body(vec![header(70), vec![0; 70], header(70), vec![0; 70]], &c, 10)
            .collect()
            .await
            .expect("each message fits on its own");
        assert_eq!(read.to_bytes().len(), 150);
        assert_eq!(b.used(), 0);
        assert!(b.take(90));
        let refused = body(vec![header(20)], &c, 10).collect().await.expect_err("the budget is full");
        assert_eq!(refused.code(), Code::ResourceExhausted);
    }

    /// The answer carries the call's request id as a never-indexed header, so no HPACK table
    /// keeps (and compares against) ids that never repeat; a health Check gets none.
    #[tokio::test]
    async fn the_request_id_is_answered_and_never_indexed() {
        let mut next =
            tower::service_fn(|_: HttpRequest| async { Ok::<_, Infallible>(HttpResponse::new(Body::empty())) });
        let ask = |path: &str, id: &str| {
            http::Request::builder().uri(path).header(REQUEST_ID, id).body(Body::empty()).expect("a valid request")
        };
        let encrypt = CallContext.around(ask("/vaultgate.v1.EncryptionService/Encrypt", "id-1"), &mut next).await;
        let encrypt = encrypt.expect("infallible");
        let id = encrypt.headers().get(REQUEST_ID).expect("the request id is answered");
        assert_eq!(id, "id-1");
        assert!(id.is_sensitive());
        let check = CallContext.around(ask("/grpc.health.v1.Health/Check", "id-2"), &mut next).await;
        assert!(check.expect("infallible").headers().get(REQUEST_ID).is_none());
    }
}
