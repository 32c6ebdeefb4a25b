//! Coalescing of concurrent Transit Encrypt/Decrypt calls into `batch_input` requests (group
//! commit, no timer), and fan-out of each item's result to exactly the caller that sent it.
//!
//! A *lane* is everything that may share one Vault request: the same Vault token, mount, key,
//! operation and shape of optional fields. A call that finds its lane with fewer than
//! `max_in_flight` requests out is sent at once; otherwise it queues, and each returning request
//! sends the next batch with everything queued, up to the size budget.
//!
//! Authority invariant: the token is part of the lane key, so a batch only ever carries items of
//! callers who were each authenticated to that very token; no caller's item is sent with a token
//! it could not use itself.

use crate::{
    config::BatchConfig,
    error::{Error, Subject},
    vault::{
        transit::{BatchItem, BatchResult, Op},
        Client, VaultToken,
    },
};
use std::{
    collections::{HashMap, VecDeque},
    ops::Range,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{sync::oneshot, time::Instant};

/// Which calls may share one Vault request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaneKey {
    /// The token every call in the lane acts with.
    pub token: VaultToken,
    /// Transit mount.
    pub mount: Arc<str>,
    /// Key name.
    pub key: Arc<str>,
    /// Encrypt or decrypt.
    pub op: Op,
    /// Whether items carry a context (Vault needs all or none), AAD, and which key version.
    pub shape: (bool, bool, Option<u32>),
}

impl LaneKey {
    /// The lane of one item.
    pub fn new(token: VaultToken, mount: &str, key: &str, op: Op, item: &BatchItem) -> LaneKey {
        LaneKey {
            token,
            mount: mount.into(),
            key: key.into(),
            op,
            shape: (item.context.is_some(), item.associated_data.is_some(), item.key_version),
        }
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

/// JSON strings every batch body has besides its items (the `batch_input` key).
const BODY_STRINGS: usize = 1;
/// Bytes every batch body has besides its items.
const BODY_BYTES: usize = 32;

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

struct Waiter {
    item: BatchItem,
    deadline: Option<Instant>,
    tx: oneshot::Sender<Result<BatchResult, Error>>,
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
    vault: Client,
    budget: Budget,
    max_in_flight: usize,
    max_queue: usize,
    linger: Duration,
    lanes: Mutex<HashMap<LaneKey, Arc<Lane>>>,
    stats: Stats,
}

/// Lanes kept before idle ones are dropped from the map.
const LANES_BEFORE_PRUNE: usize = 4096;

impl Coalescer {
    /// A coalescer with the configured limits.
    pub fn new(vault: Client, config: &BatchConfig) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            vault,
            budget: Budget::from(config),
            max_in_flight: config.max_in_flight,
            max_queue: config.max_queue,
            linger: Duration::from_micros(config.linger_us),
            lanes: Mutex::new(HashMap::new()),
            stats: Stats::default(),
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
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.queue.len() >= self.max_queue {
                return Err(Error::ResourceExhausted(format!(
                    "too many calls queued for Transit key {:?}; retry with backoff",
                    &*lane_key.key
                )));
            }
            st.queue.push_back(Waiter { item, deadline, tx });
            let start = st.in_flight < self.max_in_flight;
            if start {
                st.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drive(lane, lane_key));
        }
        match rx.await {
            Ok(result) => result,
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
            let batch = self.take(&lane);
            if !batch.is_empty() {
                self.send(&key, batch).await;
            }
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.queue.is_empty() {
                st.in_flight -= 1;
                return;
            }
        }
    }

    /// Takes the next batch from the queue: skips callers that left, stops at the budget.
    fn take(&self, lane: &Lane) -> Vec<Waiter> {
        let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut batch = Vec::new();
        let (mut strings, mut bytes) = (BODY_STRINGS, BODY_BYTES);
        while let Some(w) = st.queue.front() {
            let (s, b) = (w.item.json_strings(), w.item.json_bytes());
            let fits =
                batch.len() < self.budget.items && strings + s <= self.budget.strings && bytes + b <= self.budget.bytes;
            if !batch.is_empty() && !fits {
                break;
            }
            let Some(w) = st.queue.pop_front() else { break };
            if w.tx.is_closed() {
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if w.deadline.is_some_and(|d| d <= now) {
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                let _ = w.tx.send(Err(Error::DeadlineExceeded("deadline passed while queued for Vault".into())));
                continue;
            }
            strings += s;
            bytes += b;
            batch.push(w);
        }
        tracing::debug!(size = batch.len(), queued = st.queue.len(), in_flight = st.in_flight, "transit batch");
        batch
    }

    async fn send(&self, key: &LaneKey, batch: Vec<Waiter>) {
        // The request may run until the latest deadline of its callers; earlier ones stop waiting.
        let deadline = batch.iter().map(|w| w.deadline).try_fold(Instant::now(), |acc, d| d.map(|d| acc.max(d)));
        let (items, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.item, w.tx)).unzip();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.items.fetch_add(items.len() as u64, Ordering::Relaxed);
        match self.vault.transit_batch(&key.token, &key.mount, key.op, &key.key, &items, deadline).await {
            Ok(results) => {
                for (tx, result) in txs.into_iter().zip(results) {
                    let _ = tx.send(Ok(result));
                }
            }
            Err(e) => {
                let err = Error::from_vault(e, Subject::Key(&key.key));
                for tx in txs {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(n: usize) -> BatchItem {
        BatchItem { plaintext: Some("a".repeat(n)), ..Default::default() }
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
