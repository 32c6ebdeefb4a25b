//! The read cache: GetSecret, ListSecrets and GetKey answers, kept for `cache.ttl_ms` (per role),
//! with singleflight (concurrent identical reads make one Vault request) and serve-stale (while
//! Vault cannot answer, an answer up to `cache.max_stale_ms` old is served, marked stale).
//!
//! Invariants:
//! - **Authority.** An entry is keyed by the SHA-256 of the Vault token that read it, so it is
//!   served only to calls acting with that very token: a JWT caller's own token, or a role token
//!   that all the role's certificate callers share. A caller never gets an answer its own token
//!   could not have read; a flight (singleflight) is keyed the same way, so a coalesced read is
//!   one its every waiter's token would have made. The token itself is not kept.
//! - **Only answers Vault gave are cached**, and an authoritative refusal (403, 404, any 4xx)
//!   removes the entry: a revoked policy or a deleted secret is never served stale.
//! - **Bounded.** At most `cache.max_entries` answers and `cache.max_bytes` (estimated), least
//!   recently used evicted first; an answer larger than a quarter of the bytes is not cached.
//! - **Secret values are held in memory by design and never logged**: [`Value`]'s `Debug` is redacted.
//!
//! Pure state with time passed in ([`Lru`]); [`ReadCache`] adds the flights and the metrics.

use crate::{
    config::{CacheConfig, RoleConfig},
    metrics::Metrics,
    vault::{kv::Secret, transit::KeyInfo, RequestIds, VaultError, VaultToken},
};
use sha2::{Digest, Sha256};
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

/// Which read an entry answers (also the `read` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Read {
    /// GetSecret (KV v2 read).
    Secret,
    /// ListSecrets (KV v2 list).
    List,
    /// GetKey (Transit key metadata).
    Key,
}

impl Read {
    fn label(self) -> &'static str {
        match self {
            Read::Secret => "secret",
            Read::List => "list",
            Read::Key => "key",
        }
    }
}

/// What a cached answer is for: whose token, which read, which object.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    token: [u8; 32],
    read: Read,
    mount: String,
    path: String,
    version: u32,
}

impl Key {
    /// The key of `read` of `path` (a secret, folder or Transit key) in `mount`, version
    /// `version` (0: latest), made with `token`.
    pub fn new(token: &VaultToken, read: Read, mount: &str, path: &str, version: u32) -> Key {
        Key {
            token: Sha256::digest(token.expose().as_bytes()).into(),
            read,
            mount: mount.into(),
            path: path.into(),
            version,
        }
    }

    fn bytes(&self) -> usize {
        96 + self.mount.len() + self.path.len()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?} {}/{} v{})", self.read, self.mount, self.path, self.version)
    }
}

/// A cached answer.
#[derive(Clone)]
pub enum Value {
    /// A secret version.
    Secret(Secret),
    /// A folder's entries.
    List(Vec<String>),
    /// A Transit key's metadata.
    Key(KeyInfo),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Value(<redacted>)")
    }
}

impl Value {
    /// Estimated bytes held.
    fn bytes(&self) -> usize {
        fn json(v: &serde_json::Value) -> usize {
            32 + match v {
                serde_json::Value::String(s) => s.len(),
                serde_json::Value::Array(a) => a.iter().map(json).sum(),
                serde_json::Value::Object(o) => o.iter().map(|(k, v)| k.len() + json(v)).sum(),
                _ => 0,
            }
        }
        64 + match self {
            Value::Secret(s) => {
                s.metadata.created_time.len()
                    + s.data.iter().flatten().map(|(k, v)| 32 + k.len() + json(v)).sum::<usize>()
            }
            Value::List(keys) => keys.iter().map(|k| 24 + k.len()).sum(),
            Value::Key(k) => 64 + k.key_type.len(),
        }
    }
}

/// How one caller's reads are cached: from `[cache]` and its role's `[roles.<name>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long an answer is served without asking Vault (zero: no cache for this caller).
    pub ttl: Duration,
    /// The same for an explicitly requested (immutable) KV version.
    pub version_ttl: Duration,
    /// Oldest answer served stale while Vault cannot answer (zero: never).
    pub max_stale: Duration,
}

impl Policy {
    /// The policy of callers of a role with settings `role` (`None`: no `[roles]` entry).
    pub fn of(config: &CacheConfig, role: Option<&RoleConfig>) -> Policy {
        let ttl = role.and_then(|r| r.cache_ttl).unwrap_or(Duration::from_millis(config.ttl_ms));
        let stale = role.and_then(|r| r.serve_stale).unwrap_or(true);
        Policy {
            ttl,
            version_ttl: if ttl.is_zero() { ttl } else { ttl.max(Duration::from_millis(config.version_ttl_ms)) },
            max_stale: if stale && !ttl.is_zero() {
                Duration::from_millis(config.max_stale_ms)
            } else {
                Duration::ZERO
            },
        }
    }

    fn fresh_for(&self, key: &Key) -> Duration {
        if key.version > 0 {
            self.version_ttl
        } else {
            self.ttl
        }
    }
}

/// An answer and how it was obtained.
#[derive(Debug, Clone)]
pub struct Served {
    /// The answer.
    pub value: Arc<Value>,
    /// Time since Vault last confirmed it (zero: Vault answered this very call).
    pub age: Duration,
    /// Vault could not answer: this is an older answer from the cache.
    pub stale: bool,
}

struct Entry {
    value: Arc<Value>,
    confirmed: Instant,
    bytes: usize,
    tick: u64,
}

/// What [`Lru::get`] found.
#[derive(Debug, Clone, PartialEq)]
enum Found {
    /// Fresh: serve it.
    Fresh(Duration),
    /// Too old to serve fresh (maybe still good for serving stale), or nothing.
    Stale,
}

/// The entries, least recently used first: pure state, time passed in.
struct Lru {
    entries: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    /// Longest any entry is useful (fresh or stale): past it an entry is dropped when met.
    keep: Duration,
}

impl Lru {
    fn new(max_entries: usize, max_bytes: usize, keep: Duration) -> Lru {
        Lru { entries: HashMap::new(), order: BTreeMap::new(), tick: 0, bytes: 0, max_entries, max_bytes, keep }
    }

    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.order.remove(&e.tick);
            e.tick = tick;
            self.order.insert(tick, key.clone());
        }
    }

    /// A fresh entry (touched), if any: within `fresh_for` of its confirmation.
    fn get(&mut self, key: &Key, fresh_for: Duration, now: Instant) -> (Found, Option<Arc<Value>>) {
        let Some(e) = self.entries.get(key) else { return (Found::Stale, None) };
        let age = now.saturating_duration_since(e.confirmed);
        if age < fresh_for {
            let value = e.value.clone();
            self.touch(key);
            return (Found::Fresh(age), Some(value));
        }
        (Found::Stale, None)
    }

    /// The entry when Vault cannot answer: if it is at most `max_stale` old, with its age.
    fn stale(&mut self, key: &Key, max_stale: Duration, now: Instant) -> Option<(Arc<Value>, Duration)> {
        let e = self.entries.get(key)?;
        let age = now.saturating_duration_since(e.confirmed);
        if age > max_stale {
            return None;
        }
        let value = e.value.clone();
        self.touch(key);
        Some((value, age))
    }

    /// Stores an answer Vault just gave; returns the read kinds of the entries evicted for room.
    fn put(&mut self, key: Key, value: Arc<Value>, now: Instant) -> Vec<Read> {
        let bytes = key.bytes() + value.bytes();
        self.remove(&key);
        if bytes > self.max_bytes / 4 {
            return Vec::new();
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, Entry { value, confirmed: now, bytes, tick: self.tick });
        self.bytes += bytes;
        let mut evicted = Vec::new();
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
                evicted.push(oldest.read);
            }
        }
        // Drop a few of the least recently used that are of no use any more (past `keep`), so
        // secrets do not linger in memory long after they could be served.
        for _ in 0..4 {
            let Some((_, k)) = self.order.first_key_value() else { break };
            if self.entries.get(k).is_some_and(|e| now.saturating_duration_since(e.confirmed) > self.keep) {
                let k = k.clone();
                self.remove(&k);
            } else {
                break;
            }
        }
        evicted
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    /// Removes every entry of `read` of `path` in `mount`, whoever's token made it.
    fn forget(&mut self, read: Read, mount: &str, path: &str) {
        let keys: Vec<Key> =
            self.entries.keys().filter(|k| k.read == read && k.mount == mount && k.path == path).cloned().collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

/// The result of one Vault read, shared by the calls waiting on it, with its Vault request ids.
type Outcome = Option<(Result<Arc<Value>, VaultError>, Vec<String>)>;

/// The read cache shared by the services.
pub struct ReadCache {
    lru: Arc<Mutex<Lru>>,
    flights: Arc<Mutex<HashMap<Key, watch::Receiver<Outcome>>>>,
    metrics: Arc<Metrics>,
}

/// Whether a failure means Vault could not answer (so a cached answer may be served stale),
/// rather than an answer about the request (403, 404: never served around).
pub fn unavailable(err: &VaultError) -> bool {
    match err {
        VaultError::Connect(_) | VaultError::Transport(_) | VaultError::Timeout | VaultError::AllNodesFailing(_) => {
            true
        }
        VaultError::Api { status, .. } => *status >= 500,
        VaultError::Decode(_) => false,
    }
}

impl ReadCache {
    /// An empty cache bounded as `config` says, counting its events in `metrics`.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> ReadCache {
        let keep = Duration::from_millis(config.max_stale_ms.max(config.version_ttl_ms).max(config.ttl_ms));
        ReadCache {
            lru: Arc::new(Mutex::new(Lru::new(config.max_entries.max(1), config.max_bytes, keep))),
            flights: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Answers `key` from the cache when fresh; else joins the read of the same key already in
    /// flight, or starts it with `fetch` (in a task of its own, so the waiters do not depend on
    /// the caller that started it); when Vault cannot answer, serves the entry stale if `policy`
    /// allows. `fetch` runs with the Vault token the key was made with.
    pub async fn read<F, Fut>(&self, key: Key, policy: Policy, fetch: F) -> Result<Served, VaultError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, VaultError>> + Send + 'static,
    {
        let read = key.read.label();
        let metrics = &self.metrics;
        if policy.ttl.is_zero() {
            return fetch().await.map(|v| Served { value: Arc::new(v), age: Duration::ZERO, stale: false });
        }
        if let (Found::Fresh(age), Some(value)) = lock(&self.lru).get(&key, policy.fresh_for(&key), Instant::now()) {
            metrics.cache(read, "hit");
            return Ok(Served { value, age, stale: false });
        }
        let mut rx = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(rx) => {
                    metrics.cache(read, "coalesced");
                    rx.clone()
                }
                None => {
                    metrics.cache(read, "miss");
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx.clone());
                    self.fly(key.clone(), fetch(), tx);
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            // The flight's task ended without an answer (the runtime is stopping).
            Err(_) => None,
        };
        let Some((result, ids)) = outcome else { return Err(VaultError::Timeout) };
        crate::vault::note_request_ids(&ids);
        match result {
            Ok(value) => Ok(Served { value, age: Duration::ZERO, stale: false }),
            Err(err) if unavailable(&err) && !policy.max_stale.is_zero() => {
                match lock(&self.lru).stale(&key, policy.max_stale, Instant::now()) {
                    Some((value, age)) => {
                        metrics.cache(read, "stale");
                        Ok(Served { value, age, stale: true })
                    }
                    None => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Runs one Vault read for every waiter of `key`: stores its answer (or drops the entry on an
    /// authoritative refusal), ends the flight and hands the outcome to the waiters.
    fn fly<Fut>(&self, key: Key, fetch: Fut, tx: watch::Sender<Outcome>)
    where
        Fut: Future<Output = Result<Value, VaultError>> + Send + 'static,
    {
        let (lru, flights, metrics) = (self.lru.clone(), self.flights.clone(), self.metrics.clone());
        // In the span of the call that started it: its Vault request is traced (and logged) there.
        let span = tracing::Span::current();
        let flight = async move {
            let ids = RequestIds::default();
            let result = ids.scope(fetch).await.map(Arc::new);
            {
                let mut lru = lock(&lru);
                match &result {
                    Ok(value) => {
                        for read in lru.put(key.clone(), value.clone(), Instant::now()) {
                            metrics.cache(read.label(), "eviction");
                        }
                    }
                    Err(err) if !unavailable(err) => lru.remove(&key),
                    Err(_) => {}
                }
                metrics.cache_entries.set(lru.entries.len() as i64);
                metrics.cache_bytes.set(lru.bytes as i64);
                lock(&flights).remove(&key);
            }
            let _ = tx.send(Some((result, ids.take())));
        };
        tokio::spawn(tracing::Instrument::instrument(flight, span));
    }

    /// Forgets every cached answer of `read` of `path` in `mount` (whoever's token read it):
    /// the gateway changed it (a Transit key rotated).
    pub fn forget(&self, read: Read, mount: &str, path: &str) {
        lock(&self.lru).forget(read, mount, path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::kv::SecretMetadata;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(token: &str, path: &str, version: u32) -> Key {
        Key::new(&VaultToken::new(token), Read::Secret, "secret", path, version)
    }

    fn secret(v: &str) -> Value {
        let mut data = serde_json::Map::new();
        data.insert("v".into(), serde_json::Value::String(v.into()));
        Value::Secret(Secret {
            data: Some(data),
            metadata: SecretMetadata { created_time: "2026-12-02T05:00:00Z".into(), version: 1 },
        })
    }

    fn v_of(value: &Value) -> String {
        match value {
            Value::Secret(s) => s.data.as_ref().and_then(|d| d["v"].as_str()).unwrap_or_default().to_string(),
            _ => String::new(),
        }
    }

    const CONFIG: CacheConfig = CacheConfig {
        ttl_ms: 1000,
        version_ttl_ms: 60_000,
        max_stale_ms: 300_000,
        max_entries: 100,
        max_bytes: 1 << 20,
    };

    #[test]
    fn policy_per_role_table() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let role = |ttl: Option<u64>, stale: Option<bool>| RoleConfig {
            cache_ttl: ttl.map(Duration::from_millis),
            serve_stale: stale,
            ..RoleConfig::default()
        };
        // (role settings) -> (ttl, version ttl, max stale)
        type Case = (Option<RoleConfig>, (Duration, Duration, Duration));
        let cases: &[Case] = &[
            (None, (ms(1000), s(60), s(300))),
            (Some(role(None, None)), (ms(1000), s(60), s(300))),
            (Some(role(Some(0), None)), (ms(0), ms(0), ms(0))),
            (Some(role(Some(5000), Some(false))), (s(5), s(60), ms(0))),
            (Some(role(Some(90_000), Some(true))), (s(90), s(90), s(300))),
        ];
        for (role, (ttl, version_ttl, max_stale)) in cases {
            let p = Policy::of(&CONFIG, role.as_ref());
            assert_eq!((p.ttl, p.version_ttl, p.max_stale), (*ttl, *version_ttl, *max_stale), "{role:?}");
        }
    }

    #[test]
    fn entries_are_per_token_fresh_for_their_ttl_and_stale_within_max_stale() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut lru = Lru::new(100, 1 << 20, s(300));
        lru.put(key("alice", "a", 0), Arc::new(secret("x")), t0);
        lru.put(key("alice", "a", 3), Arc::new(secret("v3")), t0);
        // (token, version, fresh for, at) -> fresh?
        let cases: &[(&str, u32, Duration, Duration, bool)] = &[
            ("alice", 0, s(1), Duration::ZERO, true),
            ("alice", 0, s(1), Duration::from_millis(999), true),
            ("alice", 0, s(1), s(1), false),
            ("bob", 0, s(1), Duration::ZERO, false),
            ("alice", 3, s(60), s(30), true),
            ("alice", 2, s(60), Duration::ZERO, false),
        ];
        for (token, version, fresh_for, at, want) in cases {
            let (found, _) = lru.get(&key(token, "a", *version), *fresh_for, t0 + *at);
            assert_eq!(matches!(found, Found::Fresh(_)), *want, "{token} v{version} at {at:?}");
        }
        assert_eq!(lru.stale(&key("alice", "a", 0), s(300), t0 + s(299)).map(|(_, age)| age), Some(s(299)));
        assert!(lru.stale(&key("alice", "a", 0), s(300), t0 + s(301)).is_none(), "too old to serve stale");
        assert!(lru.stale(&key("bob", "a", 0), s(300), t0).is_none(), "never another token's entry");
    }

    #[test]
    fn bounded_by_entries_and_bytes_least_recently_used_first() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(300);
        let mut lru = Lru::new(3, 1 << 20, keep);
        for p in ["a", "b", "c"] {
            lru.put(key("t", p, 0), Arc::new(secret(p)), t0);
        }
        assert!(matches!(lru.get(&key("t", "a", 0), keep, t0).0, Found::Fresh(_)), "a is used again");
        let evicted = lru.put(key("t", "d", 0), Arc::new(secret("d")), t0);
        assert_eq!(evicted, vec![Read::Secret]);
        let has = |lru: &mut Lru, p: &str| matches!(lru.get(&key("t", p, 0), keep, t0).0, Found::Fresh(_));
        assert!(has(&mut lru, "a") && !has(&mut lru, "b") && has(&mut lru, "c") && has(&mut lru, "d"));
        // Bytes: a budget of 4 KiB holds a few small entries; a 2 KiB answer is not cached at all.
        let mut small = Lru::new(1000, 4096, keep);
        for i in 0..50 {
            small.put(key("t", &format!("p{i}"), 0), Arc::new(secret("x")), t0);
        }
        assert!(small.bytes <= 4096 && small.entries.len() < 50 && !small.entries.is_empty(), "{}", small.bytes);
        let before = small.entries.len();
        small.put(key("t", "big", 0), Arc::new(secret(&"x".repeat(2048))), t0);
        assert_eq!(small.entries.len(), before);
        assert_eq!(small.order.len(), small.entries.len());
        // Entries past any use are dropped when met.
        let mut lru = Lru::new(100, 1 << 20, keep);
        lru.put(key("t", "old", 0), Arc::new(secret("o")), t0);
        lru.put(key("t", "new", 0), Arc::new(secret("n")), t0 + keep * 2);
        assert_eq!(lru.entries.len(), 1);
        // A rotated key is forgotten for every token.
        let k = |t| Key::new(&VaultToken::new(t), Read::Key, "transit", "k", 0);
        lru.put(k("t1"), Arc::new(secret("1")), t0 + keep * 2);
        lru.put(k("t2"), Arc::new(secret("2")), t0 + keep * 2);
        lru.forget(Read::Key, "transit", "k");
        assert_eq!(lru.entries.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_identical_reads_make_one_request_and_failures_serve_stale_or_evict() {
        let cache = Arc::new(ReadCache::new(&CONFIG, Default::default()));
        let policy = Policy::of(&CONFIG, None);
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = |answer: Result<&'static str, VaultError>, calls: Arc<AtomicUsize>| {
            move || async move {
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                answer.map(secret)
            }
        };
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks
                .push(tokio::spawn(async move { cache.read(key("t", "a", 0), policy, fetch(Ok("one"), calls)).await }));
        }
        for t in tasks {
            let served = t.await.unwrap().unwrap();
            assert_eq!(v_of(&served.value), "one");
            assert!(!served.stale);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1, "one Vault read for 100 concurrent calls");
        // Another token does not share the entry.
        let other = cache.read(key("u", "a", 0), policy, fetch(Ok("theirs"), calls.clone())).await.unwrap();
        assert_eq!(v_of(&other.value), "theirs");
        // Expired, Vault unreachable: served stale with its age.
        let expired = Policy { ttl: Duration::from_millis(1), ..policy };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let down = Err(VaultError::AllNodesFailing("down".into()));
        let stale = cache.read(key("t", "a", 0), expired, fetch(down.clone(), calls.clone())).await.unwrap();
        assert!(stale.stale && stale.age >= Duration::from_millis(5), "{stale:?}");
        assert_eq!(v_of(&stale.value), "one");
        // Serve-stale off: the failure.
        let off = Policy { max_stale: Duration::ZERO, ..expired };
        assert!(cache.read(key("t", "a", 0), off, fetch(down.clone(), calls.clone())).await.is_err());
        // A refusal (403) removes the entry: never served stale afterwards.
        let denied = Err(VaultError::Api { status: 403, errors: vec![] });
        assert!(cache.read(key("t", "a", 0), expired, fetch(denied, calls.clone())).await.is_err());
        assert!(cache.read(key("t", "a", 0), expired, fetch(down, calls.clone())).await.is_err());
        assert_eq!(format!("{:?}", secret("hunter2")), "Value(<redacted>)");
    }
}
