//! The key-version cache: each Transit key's type, latest version and min versions, kept fresh by
//! one poller per (mount, key, Vault token), so that Decrypt can say `rewrap_recommended` and
//! WatchKey can stream changes without a Vault call per call.
//!
//! Invariants:
//! - **Authority** (the rule of `batch.rs`'s lane key and `cache.rs`): an entry is keyed by the
//!   SHA-256 of the Vault token that polls it, and what it learned is given only to calls acting
//!   with that very token (a JWT caller's own, or the role token its certificate callers share).
//!   A caller never learns a version its own token could not read. A rotation through this
//!   gateway only *wakes* the other entries of the key (each then reads with its own token):
//!   nothing one token read is copied into another token's entry.
//! - **Never a Vault call per call.** A call reads the entry; only the first call of an entry
//!   waits, for its first read, which runs concurrently with the call's own Vault request.
//!   Afterwards Vault sees at most one `GET <mount>/keys/<key>` per entry per `poll_ms` (more
//!   rarely on failures, [`next_poll`]), plus one when a decrypted ciphertext shows a version
//!   newer than the entry's latest or the key is rotated through this gateway.
//! - **Bounded.** At most `key_versions.max_entries` entries; an entry that no call used for
//!   `idle_ms` and nobody watches stops polling and is dropped; when full, the least recently
//!   used unwatched entry is dropped (its poller ends at its next wake).
//! - The token is held only to poll; no version is ever logged with it (`VaultToken` redacts).
//!
//! Pure decisions with time passed in ([`next_poll`], [`idle`], [`advice`]); [`KeyVersions`]
//! holds the entries and runs the pollers; [`KeyReader`] is the Vault boundary.

use crate::{
    config::KeyVersionsConfig,
    error::{Error, Subject},
    vault::{retry, transit::KeyInfo, Client, VaultError, VaultToken},
};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

/// Longest wait between polls of an entry whose reads keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Wait before reading again a key that Vault refused this token (403) or does not have (404).
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// What one poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Polled {
    /// Vault answered with the key's metadata.
    Read,
    /// No answer, or a 5xx/429: try again after a backoff. `failures` in a row so far (≥ 1).
    Failed {
        /// Consecutive failed polls, this one included.
        failures: u32,
    },
    /// Vault refused this token the read (403) or has no such key (404).
    Refused,
}

/// When to poll next after a poll at `now` that found `polled`; `unit` ∈ [0, 1) is the jitter.
/// A successful read waits `interval` (minus up to 10 % jitter, so pollers started together
/// spread out); failures back off from `interval` up to [`MAX_BACKOFF`] with full jitter on top;
/// a refusal waits [`REFUSED_RETRY`] (a policy may be granted later), never less than `interval`.
pub(crate) fn next_poll(now: Instant, polled: Polled, interval: Duration, unit: f64) -> Instant {
    match polled {
        Polled::Read => now + interval.mul_f64(1.0 - 0.1 * unit.clamp(0.0, 1.0)),
        Polled::Failed { failures } => {
            let extra = retry::backoff(failures.saturating_sub(1), interval, MAX_BACKOFF, unit);
            now + (interval + extra).min(MAX_BACKOFF.max(interval))
        }
        Polled::Refused => now + REFUSED_RETRY.max(interval),
    }
}

/// Whether an entry last used at `last_used` and watched by `watchers` streams is to be dropped.
pub(crate) fn idle(last_used: Instant, now: Instant, idle_after: Duration, watchers: usize) -> bool {
    watchers == 0 && now.saturating_duration_since(last_used) >= idle_after
}

/// What Decrypt answers about a ciphertext of key version `version`, given the latest version the
/// entry knows (`None`: unknown): (`rewrap_recommended`, `latest_version`). The ciphertext itself
/// proves that its version exists, so the latest is at least that.
pub(crate) fn advice(version: u32, known: Option<u32>) -> (bool, u32) {
    match known {
        Some(latest) if version > 0 => (version < latest, latest.max(version)),
        _ => (false, 0),
    }
}

/// What an entry knows of its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Known {
    /// Not read yet.
    Pending,
    /// The first read failed (Vault unreachable); nothing is known yet.
    Unknown,
    /// Vault's answer to this token; `latest_version` raised by the versions calls saw since.
    Key(KeyInfo),
    /// Vault refused this token the read, or has no such key: the error a call would get.
    Refused(Error),
}

/// A future of one key read.
pub(crate) type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<KeyInfo, VaultError>> + Send + 'a>>;

/// Where key metadata comes from: Vault's Transit engine, or a scripted stand-in in unit tests.
pub(crate) trait KeyReader: Send + Sync + 'static {
    /// `GET <mount>/keys/<key>` with `token` (the client's own timeouts bound it).
    fn read<'a>(&'a self, token: &'a VaultToken, mount: &'a str, key: &'a str) -> ReadFuture<'a>;
}

impl KeyReader for Client {
    fn read<'a>(&'a self, token: &'a VaultToken, mount: &'a str, key: &'a str) -> ReadFuture<'a> {
        Box::pin(self.transit_read_key(token, mount, key, None))
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct EntryKey {
    token: [u8; 32],
    mount: Arc<str>,
    key: Arc<str>,
}

impl EntryKey {
    fn new(token: &VaultToken, mount: &str, key: &str) -> EntryKey {
        EntryKey { token: Sha256::digest(token.expose().as_bytes()).into(), mount: mount.into(), key: key.into() }
    }
}

struct Entry {
    /// The token this entry polls with (the one its key hashes).
    token: VaultToken,
    known: watch::Sender<Known>,
    last_used: Mutex<Instant>,
    /// Wakes the poller before its time (a newer version seen, a rotation, an eviction).
    wake: Notify,
}

impl Entry {
    fn touch(&self, now: Instant) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    reader: Arc<dyn KeyReader>,
    config: KeyVersionsConfig,
    /// How long a call waits for an entry's first read.
    first_read_wait: Duration,
    entries: Mutex<HashMap<EntryKey, Arc<Entry>>>,
}

/// The entries and their pollers (one per gateway).
pub(crate) struct KeyVersions {
    inner: Arc<Inner>,
}

impl KeyVersions {
    /// An empty cache reading through `reader`; a call waits at most `first_read_wait` for an
    /// entry's first read (the Vault read timeout).
    pub(crate) fn new(
        reader: Arc<dyn KeyReader>,
        config: &KeyVersionsConfig,
        first_read_wait: Duration,
    ) -> KeyVersions {
        KeyVersions {
            inner: Arc::new(Inner {
                reader,
                config: config.clone(),
                first_read_wait,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The latest version of `key` as `token` last read it, waiting (until `deadline`, at most
    /// the read timeout) for the entry's first read. `None` when unknown: the token may not read
    /// the key, Vault did not answer, or the cache is full of watched entries.
    pub(crate) async fn latest(
        &self,
        token: &VaultToken,
        mount: &str,
        key: &str,
        deadline: Option<Instant>,
    ) -> Option<u32> {
        let entry = self.entry(token, mount, key).ok()?;
        let mut rx = entry.known.subscribe();
        let wait = Instant::now() + self.inner.first_read_wait;
        let until = deadline.map_or(wait, |d| d.min(wait));
        let first = tokio::time::timeout_at(until, rx.wait_for(|k| *k != Known::Pending)).await;
        let latest = match first.ok()?.ok().as_deref() {
            Some(Known::Key(info)) => Some(info.latest_version),
            _ => None,
        };
        latest
    }

    /// A call with `token` decrypted a ciphertext of `version`: when that is newer than the
    /// entry's latest, the key was rotated since the last poll: raise it now and poll soon.
    pub(crate) fn saw(&self, token: &VaultToken, mount: &str, key: &str, version: u32) {
        let entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.get(&EntryKey::new(token, mount, key)) else { return };
        let raised = entry.known.send_if_modified(|k| match k {
            Known::Key(info) if version > info.latest_version => {
                info.latest_version = version;
                true
            }
            _ => false,
        });
        if raised {
            entry.wake.notify_one();
        }
    }

    /// `key` was rotated through this gateway: every entry of it polls now, each with its own
    /// token (nothing the rotating caller learned is copied to other tokens' entries).
    pub(crate) fn rotated(&self, mount: &str, key: &str) {
        let entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        for (k, entry) in entries.iter() {
            if &*k.mount == mount && &*k.key == key {
                entry.wake.notify_one();
            }
        }
    }

    /// A receiver of what the entry of (`token`, `mount`, `key`) knows, for a stream (WatchKey):
    /// the entry is not dropped while it is held.
    pub(crate) fn watch(&self, token: &VaultToken, mount: &str, key: &str) -> Result<watch::Receiver<Known>, Error> {
        Ok(self.entry(token, mount, key)?.known.subscribe())
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The entry of (`token`, `mount`, `key`), made (and its poller started) if new.
    fn entry(&self, token: &VaultToken, mount: &str, key: &str) -> Result<Arc<Entry>, Error> {
        let now = Instant::now();
        let id = EntryKey::new(token, mount, key);
        let mut entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&id) {
            entry.touch(now);
            return Ok(entry.clone());
        }
        if entries.len() >= self.inner.config.max_entries {
            let victim = entries
                .iter()
                .filter(|(_, e)| e.known.receiver_count() == 0)
                .min_by_key(|(_, e)| e.last_used())
                .map(|(k, _)| k.clone());
            let Some(victim) = victim.and_then(|k| entries.remove(&k)) else {
                return Err(Error::ResourceExhausted(
                    "every key-version entry is watched; retry later or raise key_versions.max_entries".into(),
                ));
            };
            victim.wake.notify_one();
        }
        let entry = Arc::new(Entry {
            token: token.clone(),
            known: watch::Sender::new(Known::Pending),
            last_used: Mutex::new(now),
            wake: Notify::new(),
        });
        entries.insert(id.clone(), entry.clone());
        tokio::spawn(poll(Arc::downgrade(&self.inner), id, entry.clone()));
        Ok(entry)
    }
}

/// The poller of one entry: reads at once, then as [`next_poll`] says, until the entry is idle,
/// evicted, or the cache is dropped.
async fn poll(inner: Weak<Inner>, id: EntryKey, entry: Arc<Entry>) {
    let mut next = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = entry.wake.notified() => {}
        }
        let Some(cache) = inner.upgrade() else { return };
        let now = Instant::now();
        {
            let mut entries = cache.entries.lock().unwrap_or_else(|p| p.into_inner());
            let current = entries.get(&id).is_some_and(|e| Arc::ptr_eq(e, &entry));
            if !current {
                return;
            }
            if idle(entry.last_used(), now, cache.config.idle(), entry.known.receiver_count()) {
                entries.remove(&id);
                return;
            }
        }
        let reader = cache.reader.clone();
        let interval = cache.config.interval();
        drop(cache);
        let polled = match reader.read(&entry.token, &id.mount, &id.key).await {
            Ok(info) => {
                failures = 0;
                entry.known.send_if_modified(|k| changed(k, info));
                Polled::Read
            }
            Err(e @ VaultError::Api { status: 403 | 404, .. }) => {
                failures = 0;
                let err = Error::from_vault(e, Subject::Key(&id.key));
                entry.known.send_if_modified(|k| replace(k, Known::Refused(err)));
                Polled::Refused
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = ?e, failures, "key version poll failed");
                entry.known.send_if_modified(|k| *k == Known::Pending && replace(k, Known::Unknown));
                Polled::Failed { failures }
            }
        };
        next = next_poll(Instant::now(), polled, interval, retry::jitter());
    }
}

/// Puts Vault's answer in; true (watchers told) only when a version, a min version or the type
/// changed, so a stream sends a message per change, not per poll.
fn changed(known: &mut Known, info: KeyInfo) -> bool {
    let same = matches!(known, Known::Key(old) if versions(old) == versions(&info));
    *known = Known::Key(info);
    !same
}

fn versions(k: &KeyInfo) -> (&str, u32, u32, u32, bool) {
    (&k.key_type, k.latest_version, k.min_decryption_version, k.min_encryption_version, k.derived)
}

fn replace(known: &mut Known, new: Known) -> bool {
    let modified = *known != new;
    *known = new;
    modified
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn when_to_poll_next() {
        let t = Instant::now();
        let i = Duration::from_secs(5);
        // (what the poll found, jitter, wait until the next poll)
        let table = [
            (Polled::Read, 0.0, i),
            (Polled::Read, 1.0, i.mul_f64(0.9)),
            (Polled::Failed { failures: 1 }, 0.0, i),
            (Polled::Failed { failures: 1 }, 1.0, 2 * i),
            (Polled::Failed { failures: 3 }, 1.0, i + 4 * i),
            (Polled::Failed { failures: 30 }, 1.0, MAX_BACKOFF),
            (Polled::Refused, 0.5, REFUSED_RETRY),
        ];
        for (polled, unit, wait) in table {
            assert_eq!(next_poll(t, polled, i, unit), t + wait, "{polled:?} with jitter {unit}");
        }
        // An interval longer than the caps is still respected.
        let long = Duration::from_secs(120);
        assert_eq!(next_poll(t, Polled::Refused, long, 0.0), t + long);
        assert_eq!(next_poll(t, Polled::Failed { failures: 9 }, long, 1.0), t + long);
    }

    #[test]
    fn which_entries_are_idle() {
        let t = Instant::now();
        let table = [
            // (used this long ago, watchers, idle?)
            (Duration::ZERO, 0, false),
            (59 * SEC, 0, false),
            (60 * SEC, 0, true),
            (3600 * SEC, 1, false),
        ];
        for (ago, watchers, want) in table {
            assert_eq!(idle(t, t + ago, 60 * SEC, watchers), want, "{ago:?} ago, {watchers} watchers");
        }
    }

    #[test]
    fn what_decrypt_says() {
        // (ciphertext version, known latest, (rewrap_recommended, latest_version))
        let table = [
            (1, Some(2), (true, 2)),
            (2, Some(2), (false, 2)),
            (3, Some(2), (false, 3)), // rotated since the last poll: the ciphertext proves v3
            (1, None, (false, 0)),    // unknown: never a guess
            (0, Some(2), (false, 0)), // no version in the ciphertext
        ];
        for (version, known, want) in table {
            assert_eq!(advice(version, known), want, "v{version} with latest {known:?}");
        }
    }

    fn info(latest: u32) -> KeyInfo {
        KeyInfo {
            key_type: "aes256-gcm96".into(),
            latest_version: latest,
            min_decryption_version: 1,
            min_encryption_version: 0,
            derived: false,
        }
    }

    /// A scripted Vault: the key's latest version per token, reads counted; token `denied` gets 403.
    #[derive(Default)]
    struct Scripted {
        latest: AtomicU32,
        reads: AtomicUsize,
    }

    impl KeyReader for Scripted {
        fn read<'a>(&'a self, token: &'a VaultToken, _mount: &'a str, _key: &'a str) -> ReadFuture<'a> {
            Box::pin(async move {
                self.reads.fetch_add(1, Ordering::SeqCst);
                if token.expose() == "denied" {
                    return Err(VaultError::Api { status: 403, errors: vec!["permission denied".into()] });
                }
                Ok(info(self.latest.load(Ordering::SeqCst)))
            })
        }
    }

    fn config(max_entries: usize) -> KeyVersionsConfig {
        KeyVersionsConfig { poll_ms: 1000, idle_ms: 10_000, max_entries }
    }

    #[tokio::test(start_paused = true)]
    async fn one_read_serves_many_calls_and_polls_follow_rotations() {
        let vault = Arc::new(Scripted { latest: AtomicU32::new(1), ..Default::default() });
        let kv = KeyVersions::new(vault.clone(), &config(16), SEC);
        let t = VaultToken::new("t");
        for _ in 0..100 {
            assert_eq!(kv.latest(&t, "transit", "k", None).await, Some(1));
        }
        assert_eq!(vault.reads.load(Ordering::SeqCst), 1, "one read for 100 calls");
        let mut rx = kv.watch(&t, "transit", "k").unwrap();
        vault.latest.store(2, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(kv.latest(&t, "transit", "k", None).await, Some(2), "the poll saw the rotation");
        assert!(rx.has_changed().unwrap(), "the watcher was told");
        rx.borrow_and_update();
        // A poll that finds nothing new tells no watcher.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!rx.has_changed().unwrap());
        // A ciphertext newer than the entry's latest raises it at once and wakes the poller.
        let reads = vault.reads.load(Ordering::SeqCst);
        vault.latest.store(3, Ordering::SeqCst);
        kv.saw(&t, "transit", "k", 3);
        assert_eq!(kv.latest(&t, "transit", "k", None).await, Some(3));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(vault.reads.load(Ordering::SeqCst), reads + 1, "polled early");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_per_token_and_a_refusal_is_not_shared() {
        let vault = Arc::new(Scripted { latest: AtomicU32::new(4), ..Default::default() });
        let kv = KeyVersions::new(vault.clone(), &config(16), SEC);
        let (a, denied) = (VaultToken::new("a"), VaultToken::new("denied"));
        assert_eq!(kv.latest(&a, "transit", "k", None).await, Some(4));
        // Another token learns nothing from `a`'s entry: it reads for itself, and is refused.
        assert_eq!(kv.latest(&denied, "transit", "k", None).await, None);
        assert_eq!(vault.reads.load(Ordering::SeqCst), 2);
        let rx = kv.watch(&denied, "transit", "k").unwrap();
        assert!(matches!(&*rx.borrow(), Known::Refused(Error::VaultDenied(_))), "{:?}", rx.borrow());
        // A rotation wakes both entries; each reads with its own token.
        kv.rotated("transit", "k");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(vault.reads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_idle_entries_stop_polling_and_watched_ones_stay() {
        let vault = Arc::new(Scripted { latest: AtomicU32::new(1), ..Default::default() });
        let kv = KeyVersions::new(vault.clone(), &config(2), SEC);
        let t = VaultToken::new("t");
        let watched = kv.watch(&t, "transit", "watched").unwrap();
        kv.latest(&t, "transit", "a", None).await;
        kv.latest(&t, "transit", "b", None).await;
        assert_eq!(kv.len(), 2, "the least recently used unwatched entry made room");
        // Full of watched entries: a new one is refused, not grown.
        let w2 = kv.watch(&t, "transit", "b").unwrap();
        assert!(matches!(kv.watch(&t, "transit", "c"), Err(Error::ResourceExhausted(_))));
        assert_eq!(kv.latest(&t, "transit", "c", None).await, None);
        drop(w2);
        // Idle: after idle_ms without a call, only the watched entry is left, and polls stop.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(kv.len(), 1);
        let reads = vault.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let polls = vault.reads.load(Ordering::SeqCst) - reads;
        assert!((4..=6).contains(&polls), "{polls} reads in 5 s: only the watched entry polls, about once a second");
        drop(watched);
    }
}
