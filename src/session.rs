//! Vault tokens acting for callers. A caller's JWT is exchanged for a Vault token by a login to
//! the JWT auth method with the role its rule names; the token is cached under the SHA-256 of
//! the JWT (never the JWT itself) until shortly before it or the JWT expires, and concurrent first
//! calls of one caller share one login.
//!
//! Invariant: the gateway holds no token of its own here; every token came from a login with the
//! caller's own credentials, so it carries exactly that caller's role and nothing broader.

use crate::{
    config::CallerRule,
    error::{Error, Subject},
    identity,
    vault::{Client, VaultToken},
};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// A caller that passed authentication, with the token that acts for it.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Stable caller name (`jwt:<iss>#<sub>`), used for lease ownership and logs.
    pub caller: Arc<str>,
    /// The Vault role the caller is mapped to.
    pub role: Arc<str>,
    /// The Vault token of that role, issued for this caller.
    pub token: VaultToken,
}

/// How long a token without a TTL (never expiring) is cached before logging in again.
const MAX_CACHE_TIME: Duration = Duration::from_secs(3600);

struct Slot {
    /// Held while logging in: later calls of the same caller wait for it instead of logging in too.
    login: tokio::sync::Mutex<()>,
    current: Mutex<Option<(Actor, Instant)>>,
}

impl Slot {
    fn valid(&self) -> Option<Actor> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match &*guard {
            Some((actor, until)) if *until > Instant::now() => Some(actor.clone()),
            _ => None,
        }
    }
}

/// The cache of caller tokens and the logins that fill it.
pub struct Sessions {
    vault: Client,
    rules: Vec<CallerRule>,
    capacity: usize,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
    logins: AtomicU64,
}

impl Sessions {
    /// A cache holding at most `capacity` callers.
    pub fn new(vault: Client, rules: Vec<CallerRule>, capacity: usize) -> Sessions {
        Sessions { vault, rules, capacity, slots: Mutex::new(HashMap::new()), logins: AtomicU64::new(0) }
    }

    /// Number of Vault logins made so far (for tests and metrics).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Authenticates the caller of a request and returns the token that acts for it.
    pub async fn authenticate(&self, metadata: &MetadataMap, deadline: Option<Instant>) -> Result<Actor, Error> {
        let jwt = identity::bearer(metadata)?;
        let key: [u8; 32] = Sha256::digest(jwt.as_bytes()).into();
        if let Some(actor) = self.slot_if_cached(&key).and_then(|s| s.valid()) {
            return Ok(actor);
        }
        let claims = identity::claims(jwt)?;
        let jwt_expiry = identity::expiry(&claims);
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if jwt_expiry.is_some_and(|exp| exp <= now_unix) {
            return Err(Error::Unauthenticated("the JWT has expired; get a fresh one".into()));
        }
        let rule = identity::rule_for(&self.rules, &claims)?;
        let slot = self.slot(key);
        let _login = slot.login.lock().await;
        if let Some(actor) = slot.valid() {
            return Ok(actor);
        }
        self.logins.fetch_add(1, Ordering::Relaxed);
        let login = match self.vault.login_jwt(&rule.auth_mount, &rule.role, jwt, deadline).await {
            Ok(login) => login,
            Err(e) => {
                self.forget(&key);
                crate::metrics::get().logins.get_or_create(&crate::metrics::NameLabel { name: "refused".into() }).inc();
                let err = Error::from_vault(e, Subject::Login(&rule.role));
                tracing::info!(caller = %identity::caller_id(&claims), role = %rule.role, error = ?err, "login refused");
                return Err(err);
            }
        };
        let actor =
            Actor { caller: identity::caller_id(&claims).into(), role: rule.role.as_str().into(), token: login.token };
        // Use a token for two thirds of its TTL, then log in again: a call that took it near the
        // end could otherwise reach Vault after it expired (queued, or slow on the way).
        let token_left = match login.ttl {
            0 => MAX_CACHE_TIME,
            ttl => Duration::from_secs(ttl) * 2 / 3,
        };
        let jwt_left = jwt_expiry.map_or(MAX_CACHE_TIME, |exp| Duration::from_secs(exp.saturating_sub(now_unix)));
        let until = Instant::now() + token_left.min(jwt_left).min(MAX_CACHE_TIME);
        tracing::info!(caller = %actor.caller, role = %actor.role, policies = ?login.policies, ttl = login.ttl, "caller logged in");
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((actor.clone(), until));
        Ok(actor)
    }

    /// At shutdown: revokes every cached caller token except those in `keep` (they parent live
    /// database leases), within a few seconds in all.
    pub async fn revoke_all(&self, keep: &[VaultToken]) {
        let tokens: Vec<VaultToken> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.values().filter_map(|s| s.valid()).map(|a| a.token).filter(|t| !keep.contains(t)).collect()
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut revoked = 0usize;
        for token in &tokens {
            if self.vault.revoke_self(token, Some(deadline)).await.is_ok() {
                revoked += 1;
            }
        }
        tracing::info!(revoked, kept = keep.len(), "caller tokens revoked at shutdown");
    }

    fn slot_if_cached(&self, key: &[u8; 32]) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn slot(&self, key: [u8; 32]) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.contains_key(&key) && slots.len() >= self.capacity {
            // Drop expired entries first, then any idle ones, to stay within the bound.
            slots.retain(|_, s| s.valid().is_some() || Arc::strong_count(s) > 1);
            if slots.len() >= self.capacity {
                let victims: Vec<_> = slots.keys().take(slots.len() + 1 - self.capacity).copied().collect();
                for k in victims {
                    slots.remove(&k);
                }
            }
        }
        slots
            .entry(key)
            .or_insert_with(|| Arc::new(Slot { login: tokio::sync::Mutex::new(()), current: Mutex::new(None) }))
            .clone()
    }

    fn forget(&self, key: &[u8; 32]) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}
