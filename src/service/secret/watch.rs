//! WatchSecret: one KV metadata poller per (Vault token, mount, path), shared by every watcher of
//! that secret acting with that token; each watcher gets the current version first, then every
//! newer version the poller sees.
//!
//! Invariants:
//! - Authority: the token is part of the poller's key (as in `batch.rs`'s lane key and the read
//!   cache), so a watcher only ever receives what its own token read: callers with different JWTs
//!   (different tokens) never share a poller; certificate callers of one role share the role's.
//! - A poller lives while it has watchers: the last watcher gone, it stops and leaves the
//!   registry (under the registry's lock, so a new watcher either joins it or starts a new one).
//!   The registry is bounded by the open streams (`watch.max_streams`).
//! - Polling backs off while nothing changes (`watch.poll_min_ms` growing by half up to
//!   `watch.poll_max_ms`) and returns to the minimum after a change; a Vault failure that may pass
//!   (unavailable, timeout, 429) is polled again at the maximum, never ends the stream; a deleted
//!   or destroyed current version, a deleted secret (NOT_FOUND) or a refusal (PERMISSION_DENIED,
//!   or UNAVAILABLE when the token itself expired: reconnect) ends every watcher's stream.
//! - Each message is the newest version at the poll: versions written within one poll interval
//!   of each other arrive as the newest alone.

use super::{to_struct, to_timestamp};
use crate::{
    error::{Error, Subject},
    pb::vaultgate::v1::WatchSecretResponse,
    service::Gateway,
    session::Actor,
    stream::Sender,
    vault::{kv::Metadata, VaultToken},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio::sync::watch;

/// What a poller last saw, as its watchers read it.
#[derive(Clone)]
enum Latest {
    /// Nothing read yet.
    Nothing,
    /// The newest version.
    Version(Arc<WatchSecretResponse>),
    /// The watch is over, for every watcher.
    Ended(Error),
}

type Key = (VaultToken, String, String);

/// The pollers running now, by token, mount and path.
#[derive(Default)]
pub struct Watched {
    pollers: Mutex<HashMap<Key, Arc<watch::Sender<Latest>>>>,
}

impl Watched {
    /// Pollers running now.
    pub fn pollers(&self) -> usize {
        self.pollers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What one look at a secret's metadata means for its watchers, given the version last sent.
#[derive(Debug, PartialEq)]
enum Seen {
    Unchanged,
    New(u32),
    Gone(String),
}

fn judge(meta: &Metadata, last: u32, now: SystemTime) -> Seen {
    let current = meta.current_version;
    if current == 0 {
        return Seen::Gone("has no version".into());
    }
    let state = meta.versions.get(&current.to_string()).cloned().unwrap_or_default();
    if state.destroyed {
        return Seen::Gone(format!("version {current} was destroyed"));
    }
    // `delete_version_after` sets a deletion time in the future: deleted only once it passed.
    let deleted = !state.deletion_time.is_empty()
        && humantime::parse_rfc3339_weak(state.deletion_time.trim_end_matches('Z')).map_or(true, |t| t <= now);
    if deleted {
        return Seen::Gone(format!("version {current} was deleted"));
    }
    if current == last {
        Seen::Unchanged
    } else {
        Seen::New(current)
    }
}

/// The interval before the next poll: the minimum after a change, else half as long again, up to
/// the maximum.
fn next_interval(now: Duration, changed: bool, min: Duration, max: Duration) -> Duration {
    if changed {
        min
    } else {
        (now + now / 2).clamp(min, max)
    }
}

impl Gateway {
    /// Streams the secret `path` of `mount` to `out` as `actor` may read it, until it ends.
    pub(crate) async fn watch_secret(
        self: Arc<Self>,
        actor: Actor,
        mount: String,
        path: String,
        out: Sender<WatchSecretResponse>,
    ) -> Result<(), Error> {
        let mut rx = self.clone().subscribe(actor, mount, path);
        let mut sent = None;
        loop {
            let latest = rx.borrow_and_update().clone();
            match latest {
                Latest::Nothing => {}
                Latest::Version(v) if sent != Some(v.version) => {
                    sent = Some(v.version);
                    out.send((*v).clone()).await?;
                }
                Latest::Version(_) => {}
                Latest::Ended(e) => return Err(e),
            }
            if rx.changed().await.is_err() {
                return Err(Error::Unavailable("the secret's poller stopped; reconnect".into()));
            }
        }
    }

    /// Joins the poller of `actor`'s token for `mount`/`path`, or starts it.
    fn subscribe(self: Arc<Self>, actor: Actor, mount: String, path: String) -> watch::Receiver<Latest> {
        let key = (actor.token.clone(), mount, path);
        let mut pollers = self.watched.pollers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = pollers.get(&key) {
            return tx.subscribe();
        }
        let tx = Arc::new(watch::channel(Latest::Nothing).0);
        let rx = tx.subscribe();
        pollers.insert(key.clone(), tx.clone());
        drop(pollers);
        tokio::spawn(self.poll(actor, key, tx));
        rx
    }

    /// The poller: looks at the metadata until no watcher is left or the watch ends.
    async fn poll(self: Arc<Self>, actor: Actor, key: Key, tx: Arc<watch::Sender<Latest>>) {
        let (_, mount, path) = &key;
        let min = Duration::from_millis(self.config.watch.poll_min_ms);
        let max = Duration::from_millis(self.config.watch.poll_max_ms);
        let (mut last, mut every) = (0, min);
        loop {
            match self.look(&actor, mount, path, last).await {
                Ok(Some(version)) => {
                    last = version.version;
                    tx.send_replace(Latest::Version(Arc::new(version)));
                    every = min;
                }
                Ok(None) => every = next_interval(every, false, min, max),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = ?e, "watched secret: Vault did not answer; polling again");
                    every = max;
                }
                Err(Error::VaultDenied(m)) => {
                    let ended = if self.sessions.token_dead(&actor, None).await {
                        Error::Unavailable(
                            "the Vault token acting for this watch expired or was revoked; reconnect".into(),
                        )
                    } else {
                        Error::PermissionDenied(m)
                    };
                    tx.send_replace(Latest::Ended(ended));
                    break;
                }
                Err(e) => {
                    tx.send_replace(Latest::Ended(e));
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = tx.closed() => {}
            }
            let mut pollers = self.watched.pollers.lock().unwrap_or_else(|p| p.into_inner());
            if tx.receiver_count() == 0 {
                pollers.remove(&key);
                return;
            }
        }
        // Ended: new watchers start afresh (their first look reports the same end, or a recovery).
        let mut pollers = self.watched.pollers.lock().unwrap_or_else(|p| p.into_inner());
        if pollers.get(&key).is_some_and(|t| Arc::ptr_eq(t, &tx)) {
            pollers.remove(&key);
        }
    }

    /// One look: the metadata, and the new version's data when there is one.
    async fn look(
        &self,
        actor: &Actor,
        mount: &str,
        path: &str,
        last: u32,
    ) -> Result<Option<WatchSecretResponse>, Error> {
        let meta = self
            .vault
            .kv_metadata(&actor.token, mount, path, None)
            .await
            .map_err(|e| Error::from_vault(e, Subject::Secret(path)))?;
        let version = match judge(&meta, last, SystemTime::now()) {
            Seen::Unchanged => return Ok(None),
            Seen::Gone(why) => return Err(Error::NotFound(format!("secret {path:?} {why}"))),
            Seen::New(v) => v,
        };
        let secret =
            self.vault.kv_read(&actor.token, mount, path, version, None).await.map_err(|e| match Error::from_vault(
                e,
                Subject::Secret(path),
            ) {
                Error::NotFound(_) => Error::NotFound(format!("secret {path:?} version {version} was deleted")),
                other => other,
            })?;
        Ok(Some(WatchSecretResponse {
            data: secret.data.map(to_struct),
            version: secret.metadata.version,
            created_time: to_timestamp(&secret.metadata.created_time),
            heartbeat: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::kv::VersionState;

    fn meta(current: u32, state: VersionState) -> Metadata {
        Metadata { current_version: current, versions: [(current.to_string(), state)].into_iter().collect() }
    }

    #[test]
    fn what_a_look_at_the_metadata_means() {
        let now = humantime::parse_rfc3339("2026-12-02T09:00:00Z").unwrap();
        let deleted = |t: &str| VersionState { deletion_time: t.into(), destroyed: false };
        let cases: &[(Metadata, u32, Seen)] = &[
            (meta(3, VersionState::default()), 0, Seen::New(3)),
            (meta(3, VersionState::default()), 3, Seen::Unchanged),
            (meta(4, VersionState::default()), 3, Seen::New(4)),
            // Deleted and recreated between two looks: versions start again.
            (meta(1, VersionState::default()), 5, Seen::New(1)),
            (
                meta(4, VersionState { destroyed: true, ..Default::default() }),
                3,
                Seen::Gone("version 4 was destroyed".into()),
            ),
            (meta(4, deleted("2026-12-02T08:59:59.5Z")), 4, Seen::Gone("version 4 was deleted".into())),
            // delete_version_after: deletion scheduled in the future is not a deletion yet.
            (meta(4, deleted("2026-12-02T10:00:00Z")), 3, Seen::New(4)),
            (meta(4, deleted("garbage")), 3, Seen::Gone("version 4 was deleted".into())),
            (Metadata { current_version: 0, versions: HashMap::new() }, 0, Seen::Gone("has no version".into())),
            // A current version missing from the map (Vault pruned it oddly): read it.
            (Metadata { current_version: 2, versions: HashMap::new() }, 1, Seen::New(2)),
        ];
        for (m, last, want) in cases {
            assert_eq!(&judge(m, *last, now), want, "{m:?} after {last}");
        }
    }

    #[test]
    fn polling_backs_off_while_nothing_changes() {
        let (min, max) = (Duration::from_millis(1000), Duration::from_millis(3000));
        let mut every = min;
        let mut seen = vec![];
        for _ in 0..5 {
            every = next_interval(every, false, min, max);
            seen.push(every.as_millis());
        }
        assert_eq!(seen, [1500, 2250, 3000, 3000, 3000]);
        assert_eq!(next_interval(max, true, min, max), min);
        assert_eq!(next_interval(Duration::ZERO, false, min, max), min);
    }
}
