//! Coalescing of concurrent Transit Encrypt/Decrypt/Rewrap/Sign/Verify/Hmac/VerifyHmac calls into
//! `batch_input` requests (group commit, no timer), and fan-out of each item's result to exactly
//! the caller that sent it.
//!
//! A *lane* is everything that may share one Vault request: the same Vault token, mount, key,
//! operation and shape (optional fields present, key version, and the request-level hash
//! algorithm of sign/verify/hmac, which Vault takes once per request, not per item). A call that finds its lane with fewer than
//! `max_in_flight` requests out is sent at once; otherwise it queues, and each returning request
//! sends the next batch with everything queued, up to the size budget.
//!
//! The Vault request id of a batch reaches every caller in it with its result, so each caller's
//! audit line names the Vault request that carried its item.
//!
//! Authority invariant: the token is part of the lane key, so a batch only ever carries items of
//! callers who were each authenticated to that very token; no caller's item is sent with a token
//! it could not use itself.

use crate::{
    config::BatchConfig,
    error::{Error, Subject},
    metrics,
    vault::{
        transit::{body_strings, BatchItem, BatchResult, Endpoint, Op},
        Client, RequestIds, VaultError, VaultToken,
    },
};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    ops::Range,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{sync::oneshot, time::Instant};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Which calls may share one Vault request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaneKey {
    /// The token every call in the lane acts with.
    pub token: VaultToken,
    /// Transit mount.
    pub mount: Arc<str>,
    /// Key name.
    pub key: Arc<str>,
    /// Encrypt, decrypt, sign, verify, hmac or HMAC verification.
    pub op: Op,
    /// What items of one request must share.
    pub shape: Shape,
}

/// What every item of one Vault request must share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Items carry a context (Vault needs all or none).
    pub context: bool,
    /// Items carry AEAD associated data.
    pub associated_data: bool,
    /// Key version to encrypt with.
    pub key_version: Option<u32>,
    /// The request-level hash algorithm (sign/verify/hmac); one of a fixed list of Vault's
    /// names (`validate::hash_algorithm`), so lanes never multiply by caller-chosen strings.
    pub algorithm: Option<&'static str>,
}

impl LaneKey {
    /// The lane of one item; `algorithm` is the hash algorithm of sign/verify/hmac calls.
    pub fn new(
        token: VaultToken,
        mount: &str,
        key: &str,
        op: Op,
        algorithm: Option<&'static str>,
        item: &BatchItem,
    ) -> LaneKey {
        LaneKey {
            token,
            mount: mount.into(),
            key: key.into(),
            op,
            shape: Shape {
                context: item.context.is_some(),
                associated_data: item.associated_data.is_some(),
                key_version: item.key_version,
                algorithm: algorithm.filter(|_| op.algorithm_field().is_some()),
            },
        }
    }

    /// Where this lane's requests go.
    pub fn endpoint(&self) -> Endpoint<'_> {
        Endpoint { mount: &self.mount, op: self.op, key: &self.key, algorithm: self.shape.algorithm }
    }

    /// JSON strings of a request body besides its items.
    fn body_strings(&self) -> usize {
        body_strings(self.shape.algorithm)
    }
}

/// A future of one Transit batch request.
pub type BatchFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<BatchResult>, VaultError>> + Send + 'a>>;

/// Where batches go: Vault's Transit engine, or a scripted stand-in in unit tests.
pub trait TransitBatches: Send + Sync + 'static {
    /// Sends one `batch_input` request for `key`'s lane; results in input order.
    fn send<'a>(&'a self, lane: &'a LaneKey, items: &'a [BatchItem], deadline: Option<Instant>) -> BatchFuture<'a>;
}

impl TransitBatches for Client {
    fn send<'a>(&'a self, lane: &'a LaneKey, items: &'a [BatchItem], deadline: Option<Instant>) -> BatchFuture<'a> {
        Box::pin(self.transit_batch(&lane.token, lane.endpoint(), items, deadline))
    }
}

/// Limits one Vault request must respect so that Vault never refuses it for its size.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most items.
    pub items: usize,
    /// Most JSON strings (keys and string values).
    pub strings: usize,
    /// Most body bytes.
    pub bytes: usize,
}

impl From<&BatchConfig> for Budget {
    fn from(c: &BatchConfig) -> Budget {
        Budget { items: c.max_items, strings: c.max_json_strings, bytes: c.max_bytes }
    }
}

/// JSON strings an explicit batch body (no algorithm) has besides its items: `batch_input`.
const BODY_STRINGS: usize = 1;
/// Bytes every batch body has besides its items (including an algorithm field).
const BODY_BYTES: usize = 64;

/// Splits items into consecutive ranges that each fit the budget and share one shape (Vault
/// refuses a batch where only some items carry a context). Every range holds at least one item.
pub fn plan(items: &[BatchItem], budget: Budget) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let (mut strings, mut bytes) = (BODY_STRINGS, BODY_BYTES);
    for (i, item) in items.iter().enumerate() {
        let (s, b) = (item.json_strings(), item.json_bytes());
        let shape_changes = i > start && items[start].context.is_some() != item.context.is_some();
        let full = i - start >= budget.items || strings + s > budget.strings || bytes + b > budget.bytes;
        if i > start && (full || shape_changes) {
            ranges.push(start..i);
            start = i;
            (strings, bytes) = (BODY_STRINGS, BODY_BYTES);
        }
        strings += s;
        bytes += b;
    }
    if start < items.len() {
        ranges.push(start..items.len());
    }
    ranges
}

/// What a waiter receives: its result, the Vault request ids of the request that carried it, and
/// that request's span (`transit.batch`, when traces are on) for its own span to link to.
type Answer = (Result<BatchResult, Error>, Arc<[String]>, Option<SpanContext>);

struct Waiter {
    item: BatchItem,
    deadline: Option<Instant>,
    tx: oneshot::Sender<Answer>,
    /// Its `coalescer.wait` span, when traced: a batch is a child of its first sampled waiter.
    span: Option<SpanContext>,
}

#[derive(Default)]
struct LaneState {
    queue: VecDeque<Waiter>,
    in_flight: usize,
}

#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
}

/// Counters of the coalescer, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Items sent to Vault.
    pub items: AtomicU64,
    /// Vault requests made.
    pub requests: AtomicU64,
    /// Callers removed from a queue because they cancelled or their deadline passed.
    pub abandoned: AtomicU64,
}

/// Sends Transit items to Vault, coalescing concurrent ones of the same lane.
pub struct Coalescer {
    vault: Arc<dyn TransitBatches>,
    budget: Budget,
    max_in_flight: usize,
    max_queue: usize,
    linger: Duration,
    lanes: Mutex<HashMap<LaneKey, Arc<Lane>>>,
    stats: Stats,
    metrics: Arc<metrics::Metrics>,
}

/// Lanes kept before idle ones are dropped from the map.
const LANES_BEFORE_PRUNE: usize = 4096;

impl Coalescer {
    /// A coalescer with the configured limits.
    pub fn new(vault: Arc<dyn TransitBatches>, config: &BatchConfig, metrics: Arc<metrics::Metrics>) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            vault,
            budget: Budget::from(config),
            max_in_flight: config.max_in_flight,
            max_queue: config.max_queue,
            linger: Duration::from_micros(config.linger_us),
            lanes: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            metrics,
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends one item in its lane and waits for its own result. A per-item failure comes back as
    /// a result with `error` set; a failure of the whole Vault request as `Err`.
    pub async fn submit(
        self: &Arc<Self>,
        lane_key: LaneKey,
        item: BatchItem,
        deadline: Option<Instant>,
    ) -> Result<BatchResult, Error> {
        let lane = self.lane(&lane_key);
        let solo = {
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            let idle = st.queue.is_empty() && st.in_flight < self.max_in_flight && self.linger.is_zero();
            if idle {
                st.in_flight += 1;
            }
            idle
        };
        if solo {
            // An idle lane: this call's item goes alone, sent from this very task (no hand-off
            // to a driver task and back); the slot is given back, or handed to a driver for what
            // queued meanwhile, when `solo` ends or is dropped.
            // Boxed: under load calls queue, and every queued call's future would otherwise
            // reserve room for this path's (600 bytes per call in flight).
            return Box::pin(Solo { coalescer: self.clone(), lane, key: Some(lane_key) }.send(item, deadline)).await;
        }
        let (tx, rx) = oneshot::channel();
        // The call's wait for its batch (`traces.rs`); it links to the batch's span.
        let wait = tracing::info_span!(target: "vaultgate::traces", "coalescer.wait");
        let span = crate::traces::span_context(&wait);
        let start = {
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.queue.len() >= self.max_queue {
                return Err(Error::ResourceExhausted(format!(
                    "too many calls queued for Transit key {:?}; retry with backoff",
                    &*lane_key.key
                )));
            }
            st.queue.push_back(Waiter { item, deadline, tx, span });
            self.metrics.queue_depth.inc();
            let start = st.in_flight < self.max_in_flight;
            if start {
                st.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drive(lane, lane_key));
        }
        match rx.instrument(wait.clone()).await {
            Ok((result, ids, batch_span)) => {
                if let Some(batch_span) = batch_span {
                    wait.add_link(batch_span);
                }
                // The batch was sent by another task: hand its Vault request id to this caller.
                crate::vault::note_request_ids(&ids);
                result
            }
            Err(_) => Err(Error::Internal("coalescer dropped a call without an answer".into())),
        }
    }

    fn lane(&self, key: &LaneKey) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = lanes.get(key) {
            return lane.clone();
        }
        if lanes.len() >= LANES_BEFORE_PRUNE {
            lanes.retain(|_, lane| Arc::strong_count(lane) > 1);
        }
        lanes.entry(key.clone()).or_default().clone()
    }

    /// Sends batches for one lane until its queue is empty, then gives up its in-flight slot.
    async fn drive(self: Arc<Self>, lane: Arc<Lane>, key: LaneKey) {
        loop {
            if !self.linger.is_zero() {
                tokio::time::sleep(self.linger).await;
            }
            let batch = self.take(&lane, key.body_strings());
            if !batch.is_empty() {
                self.dispatch(&key, batch).await;
            }
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.queue.is_empty() {
                st.in_flight -= 1;
                return;
            }
        }
    }

    /// Takes the next batch from the queue: skips callers that left, stops at the budget.
    /// `body_strings`: the JSON strings the request body has besides its items.
    fn take(&self, lane: &Lane, body_strings: usize) -> Vec<Waiter> {
        let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut batch = Vec::new();
        let (mut strings, mut bytes) = (body_strings, BODY_BYTES);
        while let Some(w) = st.queue.front() {
            let (s, b) = (w.item.json_strings(), w.item.json_bytes());
            let fits =
                batch.len() < self.budget.items && strings + s <= self.budget.strings && bytes + b <= self.budget.bytes;
            if !batch.is_empty() && !fits {
                break;
            }
            let Some(w) = st.queue.pop_front() else { break };
            self.metrics.queue_depth.dec();
            if w.tx.is_closed() {
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if w.deadline.is_some_and(|d| d <= now) {
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                let _ = w.tx.send((
                    Err(Error::DeadlineExceeded("deadline passed while queued for Vault".into())),
                    Arc::from([]),
                    None,
                ));
                continue;
            }
            strings += s;
            bytes += b;
            batch.push(w);
        }
        tracing::debug!(size = batch.len(), queued = st.queue.len(), in_flight = st.in_flight, "transit batch");
        batch
    }

    /// Counts one Vault request of `items` items.
    fn count(&self, items: usize) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.items.fetch_add(items as u64, Ordering::Relaxed);
        let m = &self.metrics;
        m.batch_requests.inc();
        m.batch_items.inc_by(items as u64);
        m.batch_size.observe(items as f64);
    }

    async fn dispatch(&self, key: &LaneKey, batch: Vec<Waiter>) {
        // The request may run until the latest deadline of its callers; earlier ones stop waiting.
        let deadline = batch.iter().map(|w| w.deadline).try_fold(Instant::now(), |acc, d| d.map(|d| acc.max(d)));
        // The batch's span is a child of its first sampled waiter (so a lone call's Vault request
        // sits in the caller's trace), else of its first traced one; every waiter links to it.
        let parent = (batch.iter().filter_map(|w| w.span.as_ref()).find(|sc| sc.is_sampled()))
            .or_else(|| batch.iter().find_map(|w| w.span.as_ref()))
            .cloned();
        let (items, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.item, w.tx)).unzip();
        self.count(items.len());
        // Its Vault request is its child. Attributes: the operation and the item count only.
        let span = tracing::info_span!(
            target: "vaultgate::traces",
            parent: None,
            "transit.batch",
            vaultgate.transit.op = key.op.kind(),
            vaultgate.batch.items = items.len(),
        );
        if let Some(parent) = parent {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
        }
        let batch_span = crate::traces::span_context(&span);
        let collector = RequestIds::default();
        let answer = collector.scope(self.vault.send(key, &items, deadline)).instrument(span).await;
        let ids: Arc<[String]> = collector.take().into();
        match answer {
            Ok(results) => {
                for (tx, result) in txs.into_iter().zip(results) {
                    let _ = tx.send((Ok(result), ids.clone(), batch_span.clone()));
                }
            }
            Err(e) => {
                let err = Error::from_vault(e, Subject::Key(&key.key));
                for tx in txs {
                    let _ = tx.send((Err(err.clone()), ids.clone(), batch_span.clone()));
                }
            }
        }
    }
}

/// A call sent alone from its own task on an idle lane, holding one of the lane's in-flight
/// slots. Dropped (answered, or the caller gone mid-request), it gives the slot back, or hands it
/// to a driver task when calls queued behind it, so no queued call waits for a caller that left.
struct Solo {
    coalescer: Arc<Coalescer>,
    lane: Arc<Lane>,
    /// Taken by `drop` when a driver inherits the slot.
    key: Option<LaneKey>,
}

impl Solo {
    async fn send(self, item: BatchItem, deadline: Option<Instant>) -> Result<BatchResult, Error> {
        let (c, key) = (&self.coalescer, self.key.as_ref().ok_or_else(|| Error::Internal("solo lane".into()))?);
        c.count(1);
        // The Vault request runs in the caller's task: its request id goes to the caller's
        // audit collector directly (`Client::send`).
        let results = c.vault.send(key, std::slice::from_ref(&item), deadline).await;
        let result = results.map_err(|e| Error::from_vault(e, Subject::Key(&key.key)))?;
        result.into_iter().next().ok_or_else(|| Error::Internal("Vault answered a batch of one with no result".into()))
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        let mut st = self.lane.state.lock().unwrap_or_else(|p| p.into_inner());
        let handed = match (st.queue.is_empty(), self.key.take(), tokio::runtime::Handle::try_current()) {
            (false, Some(key), Ok(rt)) => {
                rt.spawn(self.coalescer.clone().drive(self.lane.clone(), key));
                true
            }
            _ => false,
        };
        if !handed {
            st.in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    fn plain(n: usize) -> BatchItem {
        BatchItem { plaintext: Some("a".repeat(n)), ..Default::default() }
    }

    fn text(s: &str) -> BatchItem {
        BatchItem { plaintext: Some(s.to_string()), ..Default::default() }
    }

    /// A scripted Transit: "ciphertext" = `ct:` + plaintext; the plaintext `bad` fails alone; the
    /// plaintext `boom` fails the whole request. Each request first takes a permit of `gate`, so a
    /// test can hold requests in flight while others queue.
    struct Scripted {
        gate: Semaphore,
        requests: Mutex<Vec<Vec<String>>>,
    }

    impl Scripted {
        fn new(open: bool) -> Arc<Scripted> {
            let permits = if open { Semaphore::MAX_PERMITS } else { 0 };
            Arc::new(Scripted { gate: Semaphore::new(permits), requests: Mutex::new(Vec::new()) })
        }

        fn requests(&self) -> Vec<Vec<String>> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl TransitBatches for Scripted {
        fn send<'a>(
            &'a self,
            _lane: &'a LaneKey,
            items: &'a [BatchItem],
            _deadline: Option<Instant>,
        ) -> BatchFuture<'a> {
            Box::pin(async move {
                let plaintexts: Vec<String> = items.iter().map(|i| i.plaintext.clone().unwrap_or_default()).collect();
                let n = {
                    let mut requests = self.requests.lock().unwrap();
                    requests.push(plaintexts.clone());
                    requests.len()
                };
                // As `Client::send` does with the `request_id` of each Vault answer.
                crate::vault::note_request_ids(&[format!("vault-request-{n}")]);
                self.gate.acquire().await.map_err(|_| VaultError::Timeout)?.forget();
                if plaintexts.iter().any(|p| p == "boom") {
                    return Err(VaultError::Api { status: 500, errors: vec!["internal error".into()] });
                }
                Ok(plaintexts
                    .into_iter()
                    .map(|p| match p.as_str() {
                        "bad" => BatchResult { error: Some("invalid input".into()), ..Default::default() },
                        _ => BatchResult {
                            ciphertext: Some(format!("ct:{p}")),
                            key_version: Some(1),
                            ..Default::default()
                        },
                    })
                    .collect())
            })
        }
    }

    fn config(max_in_flight: usize, max_queue: usize) -> BatchConfig {
        BatchConfig {
            enabled: true,
            max_items: 10_000,
            max_json_strings: 1000,
            max_bytes: 1 << 20,
            max_in_flight,
            max_queue,
            linger_us: 0,
        }
    }

    fn lane(token: &str) -> LaneKey {
        LaneKey::new(VaultToken::new(token), "transit", "k", Op::Encrypt, None, &text("x"))
    }

    /// Waits until the scripted Vault has seen `n` requests (the coalescer runs on spawned tasks).
    async fn seen(vault: &Scripted, n: usize) {
        while vault.requests().len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn queued_calls_go_in_one_batch_and_each_gets_its_own_result() {
        let vault = Scripted::new(false);
        let c = Coalescer::new(vault.clone(), &config(1, 100), Default::default());
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.submit(lane("t"), text("first"), None).await }
        });
        seen(&vault, 1).await;
        let queued: Vec<_> = (0..50)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.submit(lane("t"), text(&format!("p{i}")), None).await })
            })
            .collect();
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 50 {
            tokio::task::yield_now().await;
        }
        vault.gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap().ciphertext.as_deref(), Some("ct:first"));
        for (i, task) in queued.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap().ciphertext, Some(format!("ct:p{i}")));
        }
        let requests = vault.requests();
        assert_eq!(requests.len(), 2, "one request alone, then one batch of everything queued");
        assert_eq!(requests[1].len(), 50);
        assert_eq!(c.stats().requests.load(Ordering::Relaxed), 2);
        assert_eq!(c.stats().items.load(Ordering::Relaxed), 51);
    }

    #[tokio::test]
    async fn every_caller_in_a_batch_gets_the_vault_request_id_of_the_batch() {
        let vault = Scripted::new(false);
        let c = Coalescer::new(vault.clone(), &config(1, 100), Default::default());
        let call = |p: &'static str| {
            let c = c.clone();
            tokio::spawn(async move {
                let ids = RequestIds::default();
                ids.scope(c.submit(lane("t"), text(p), None)).await.unwrap();
                ids.take()
            })
        };
        let first = call("first");
        seen(&vault, 1).await;
        let queued = [call("a"), call("b")];
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 2 {
            tokio::task::yield_now().await;
        }
        vault.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), ["vault-request-1"]);
        for task in queued {
            assert_eq!(task.await.unwrap(), ["vault-request-2"], "the batch was sent by another task");
        }
    }

    #[tokio::test]
    async fn an_idle_lane_sends_at_once() {
        let vault = Scripted::new(true);
        let c = Coalescer::new(vault.clone(), &config(2, 100), Default::default());
        let r = c.submit(lane("t"), text("solo"), None).await.unwrap();
        assert_eq!(r.ciphertext.as_deref(), Some("ct:solo"));
        assert_eq!(vault.requests(), vec![vec!["solo".to_string()]]);
    }

    #[tokio::test]
    async fn a_solo_caller_that_leaves_hands_its_slot_to_the_calls_queued_behind_it() {
        let vault = Scripted::new(false);
        let c = Coalescer::new(vault.clone(), &config(1, 100), Default::default());
        let submit = |p: &'static str| {
            let c = c.clone();
            tokio::spawn(async move { c.submit(lane("t"), text(p), None).await })
        };
        let solo = submit("solo");
        seen(&vault, 1).await;
        let queued = [submit("a"), submit("b")];
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 2 {
            tokio::task::yield_now().await;
        }
        // The solo caller goes away while its own request is out (its deadline, a cancel).
        solo.abort();
        assert!(solo.await.unwrap_err().is_cancelled());
        vault.gate.add_permits(1);
        for (task, p) in queued.into_iter().zip(["a", "b"]) {
            assert_eq!(task.await.unwrap().unwrap().ciphertext, Some(format!("ct:{p}")));
        }
        assert_eq!(vault.requests()[1], vec!["a".to_string(), "b".to_string()], "one batch, sent by a driver");
        let back = async {
            while c.lane(&lane("t")).state.lock().unwrap().in_flight != 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), back).await.expect("the slot is given back");
    }

    #[tokio::test]
    async fn item_failures_stay_alone_and_request_failures_reach_everyone_in_it() {
        let vault = Scripted::new(false);
        let c = Coalescer::new(vault.clone(), &config(1, 100), Default::default());
        let submit = |p: &'static str| {
            let c = c.clone();
            tokio::spawn(async move { c.submit(lane("t"), text(p), None).await })
        };
        let holder = submit("hold");
        seen(&vault, 1).await;
        let tasks: Vec<_> = ["a", "bad", "b"].into_iter().map(submit).collect();
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 3 {
            tokio::task::yield_now().await;
        }
        vault.gate.add_permits(1);
        holder.await.unwrap().unwrap();
        seen(&vault, 2).await;
        let boom: Vec<_> = ["c", "boom", "d"].into_iter().map(submit).collect();
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 3 {
            tokio::task::yield_now().await;
        }
        vault.gate.add_permits(2);
        let results: Vec<_> = futures_join(tasks).await;
        assert_eq!(results[0].as_ref().unwrap().ciphertext.as_deref(), Some("ct:a"));
        assert_eq!(results[1].as_ref().unwrap().error.as_deref(), Some("invalid input"));
        assert_eq!(results[2].as_ref().unwrap().ciphertext.as_deref(), Some("ct:b"));
        for r in futures_join(boom).await {
            assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
        }
    }

    async fn futures_join(
        tasks: Vec<tokio::task::JoinHandle<Result<BatchResult, Error>>>,
    ) -> Vec<Result<BatchResult, Error>> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn cancelled_and_expired_callers_are_never_sent() {
        let vault = Scripted::new(false);
        let c = Coalescer::new(vault.clone(), &config(1, 100), Default::default());
        let holder = tokio::spawn({
            let c = c.clone();
            async move { c.submit(lane("t"), text("hold"), None).await }
        });
        seen(&vault, 1).await;
        let cancelled = tokio::spawn({
            let c = c.clone();
            async move { c.submit(lane("t"), text("cancelled"), None).await }
        });
        let expired = tokio::spawn({
            let c = c.clone();
            async move { c.submit(lane("t"), text("expired"), Some(Instant::now())).await }
        });
        let kept = tokio::spawn({
            let c = c.clone();
            async move { c.submit(lane("t"), text("kept"), None).await }
        });
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 3 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        vault.gate.add_permits(2);
        holder.await.unwrap().unwrap();
        assert!(matches!(expired.await.unwrap(), Err(Error::DeadlineExceeded(_))));
        assert_eq!(kept.await.unwrap().unwrap().ciphertext.as_deref(), Some("ct:kept"));
        assert_eq!(vault.requests()[1], vec!["kept".to_string()]);
        assert_eq!(c.stats().abandoned.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_full_queue_sheds_load() {
        let vault = Scripted::new(false);
        let c = Coalescer::new(vault.clone(), &config(1, 2), Default::default());
        let mut tasks = Vec::new();
        for i in 0..3 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.submit(lane("t"), text(&format!("{i}")), None).await }));
            if i == 0 {
                seen(&vault, 1).await;
            }
        }
        while c.lane(&lane("t")).state.lock().unwrap().queue.len() < 2 {
            tokio::task::yield_now().await;
        }
        let shed = c.submit(lane("t"), text("over"), None).await;
        assert!(matches!(shed, Err(Error::ResourceExhausted(_))), "{shed:?}");
        vault.gate.add_permits(10);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn batches_respect_the_string_budget_and_lanes_do_not_mix_tokens() {
        let vault = Scripted::new(false);
        let mut cfg = config(1, 10_000);
        cfg.max_json_strings = 21; // 1 for `batch_input` + 10 plain items of 2 strings
        let c = Coalescer::new(vault.clone(), &cfg, Default::default());
        let mut tasks = Vec::new();
        for i in 0..35 {
            let c = c.clone();
            let token = if i % 2 == 0 { "a" } else { "b" };
            tasks.push(tokio::spawn(async move {
                (format!("{token}{i}"), c.submit(lane(token), text(&format!("{token}{i}")), None).await)
            }));
        }
        // Wait until every call is either queued or in a (held) request.
        loop {
            let queued: usize = c.lanes.lock().unwrap().values().map(|l| l.state.lock().unwrap().queue.len()).sum();
            if queued + vault.requests().iter().map(Vec::len).sum::<usize>() == 35 {
                break;
            }
            tokio::task::yield_now().await;
        }
        vault.gate.add_permits(100);
        // Each call gets the answer to its own item: one swapped within a lane would fail here.
        for t in tasks {
            let (sent, r) = t.await.unwrap();
            assert_eq!(r.unwrap().ciphertext, Some(format!("ct:{sent}")));
        }
        for request in vault.requests() {
            assert!(request.len() <= 10, "{} items over the budget", request.len());
            let tokens: std::collections::HashSet<_> = request.iter().map(|p| &p[..1]).collect();
            assert_eq!(tokens.len(), 1, "a batch mixed two tokens: {request:?}");
        }
    }

    #[tokio::test]
    async fn the_hash_algorithm_is_part_of_the_lane_and_of_the_string_budget() {
        let sign = |algorithm: Option<&'static str>| {
            LaneKey::new(VaultToken::new("t"), "transit", "k", Op::Sign, algorithm, &text("x"))
        };
        assert_ne!(sign(Some("sha2-256")), sign(Some("sha2-512")), "one request carries one algorithm");
        assert_ne!(sign(None), sign(Some("sha2-256")));
        assert_eq!(sign(Some("sha2-256")), sign(Some("sha2-256")));
        // Encrypt takes no algorithm: none reaches its lane.
        let enc = LaneKey::new(VaultToken::new("t"), "transit", "k", Op::Encrypt, Some("sha2-256"), &text("x"));
        assert_eq!(enc, lane("t"));
        // 1 (`batch_input`) + 2 (`hash_algorithm`: value) + 2 per item: 21 strings hold 9 items.
        let vault = Scripted::new(false);
        let mut cfg = config(1, 10_000);
        cfg.max_json_strings = 21;
        let c = Coalescer::new(vault.clone(), &cfg, Default::default());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.submit(sign(Some("sha2-512")), text(&format!("m{i}")), None).await })
            })
            .collect();
        loop {
            let queued: usize = c.lanes.lock().unwrap().values().map(|l| l.state.lock().unwrap().queue.len()).sum();
            if queued + vault.requests().iter().map(Vec::len).sum::<usize>() == 20 {
                break;
            }
            tokio::task::yield_now().await;
        }
        vault.gate.add_permits(100);
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap().ciphertext, Some(format!("ct:m{i}")));
        }
        let sizes: Vec<usize> = vault.requests().iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|n| *n <= 9), "{sizes:?}");
        assert!(sizes.contains(&9), "the budget is used, not just respected: {sizes:?}");
    }

    #[test]
    fn plan_respects_every_budget() {
        let roomy = Budget { items: 10_000, strings: 1000, bytes: 1 << 30 };
        // OpenBao's default: 499 plain items per request (1 + 2*499 = 999 strings).
        let items: Vec<_> = (0..1000).map(|_| plain(4)).collect();
        let ranges = plan(&items, roomy);
        assert_eq!(ranges, vec![0..499, 499..998, 998..1000]);
        // With context and AAD each item costs 6 strings: 166 items.
        let rich = BatchItem { context: Some("Yw==".into()), associated_data: Some("YQ==".into()), ..plain(4) };
        assert_eq!(plan(&vec![rich; 200], roomy)[0], 0..166);
        // Item cap.
        assert_eq!(plan(&items[..10], Budget { items: 3, ..roomy }).len(), 4);
        // Byte cap: each item is 4 + 48 bytes.
        let ranges = plan(&items[..10], Budget { bytes: BODY_BYTES + 2 * 52, ..roomy });
        assert!(ranges.iter().all(|r| r.len() == 2), "{ranges:?}");
        // An item larger than the budget still goes alone (the caller validated its size).
        assert_eq!(plan(&[plain(1 << 20)], Budget { bytes: 100, ..roomy }), vec![0..1]);
    }

    #[test]
    fn plan_splits_where_context_presence_changes() {
        let with = BatchItem { context: Some("Yw==".into()), ..plain(1) };
        let items = vec![plain(1), plain(1), with.clone(), with, plain(1)];
        let roomy = Budget { items: 100, strings: 1000, bytes: 1 << 20 };
        assert_eq!(plan(&items, roomy), vec![0..2, 2..4, 4..5]);
        assert!(plan(&[], roomy).is_empty());
    }
}
