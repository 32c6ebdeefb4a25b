//! Vault tokens acting for callers, and their lifecycle.
//!
//! Two kinds of holder: a JWT caller's token comes from a login with the caller's own JWT (JWT or
//! Kubernetes auth method; Vault verifies it) and is cached under the SHA-256 of the JWT, never the
//! JWT itself; a certificate caller's token is the gateway's own token of the caller's role, from an
//! AppRole login or a token file, one per role and shared by every caller mapped to that role.
//!
//! Every held token is renewed at about two thirds of its TTL (with jitter); it is replaced by a
//! fresh login when it is not renewable, when Vault caps a renewal (its max TTL is near), or when a
//! call met a 403 and `lookup-self` shows the token is gone. One login or renewal is in flight per
//! holder; refused logins are remembered briefly (negative cache); the caller cache is bounded (LRU).
//!
//! Before a JWT caller's first login, a rule with `verify_with` has the JWT verified locally
//! (`jwt.rs`): a forged JWT never reaches Vault. A rule without it relies on Vault alone, so those
//! logins pass [`gate::LoginGate`] (a cap in flight and a rate per peer address).
//!
//! Invariant: every token acts for exactly one role and came from a login with that role's
//! credentials; no root or broader token serves callers. A token is never handed out after it
//! expires, and a renewal never shortens a token below what the leases it parents need. A JWT
//! that is refused (locally or by Vault) never takes a real caller's place: a caller's slot joins
//! the bounded cache (and may evict the least recently used) only once its login succeeded, and
//! a full negative cache keeps what it holds rather than being flushed by new refusals.

mod gate;

use crate::{
    config::{CallerRule, CertRule, RoleConfig, RoleLogin},
    error::{Error, Subject},
    identity::{self, CertNames},
    vault::{auth::Login, Client, VaultError, VaultToken},
};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// A caller that passed authentication, with the token that acts for it (its `Debug` shows
/// the token redacted: [`VaultToken`]).
#[derive(Debug, Clone)]
pub struct Actor {
    /// Stable caller name (`jwt:<iss>#<sub>` or `cert:<field>:<value>`), for lease ownership and logs.
    pub caller: Arc<str>,
    /// How the caller was identified: `jwt`, `kubernetes`, `uri`, `dns` or `cn`.
    pub kind: &'static str,
    /// The identity itself (`<iss>#<sub>`, or the matched certificate value).
    pub name: Arc<str>,
    /// The Vault role the caller is mapped to.
    pub role: Arc<str>,
    /// The Vault token of that role acting for this caller.
    pub token: VaultToken,
    /// That token's accessor (not secret: it names the token, e.g. in lease-ownership tags).
    pub accessor: Arc<str>,
    /// The caller's rule sets `bind_identity`: `caller` goes into the associated data of its
    /// Transit encryptions (`bind.rs`).
    pub bind_identity: bool,
    /// Unix seconds at which the caller's credentials end (its JWT's `exp`; a Kubernetes
    /// service-account token is a JWT too); `None`: they carry no end (a JWT without `exp`, or a
    /// certificate, whose validity the TLS handshake checked).
    pub expires_unix: Option<u64>,
    key: SlotKey,
}

impl Actor {
    /// When the caller's credentials end, on this process's clock: a stream ends there
    /// (`stream.rs`), since a call made then would be refused.
    pub fn credentials_end(&self) -> Option<Instant> {
        self.expires_unix.map(|exp| Instant::now() + Duration::from_secs(exp.saturating_sub(unix_now())))
    }
}

/// What a call presented to prove who it is (`Debug` never shows the JWT).
pub enum Credentials<'a> {
    /// A bearer JWT (from the `authorization` metadata), borrowed from the call's metadata.
    Bearer(&'a str),
    /// The names of the connection's verified client certificate.
    Cert(CertNames),
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer(jwt) => write!(f, "Bearer(<redacted JWT of {} bytes>)", jwt.len()),
            Credentials::Cert(names) => f.debug_tuple("Cert").field(names).finish(),
        }
    }
}

impl<'a> Credentials<'a> {
    /// Reads the call's credentials: a bearer JWT wins over a client certificate.
    pub fn from_call(metadata: &'a MetadataMap, peer_cert: Option<&[u8]>) -> Result<Credentials<'a>, Error> {
        if metadata.contains_key("authorization") || peer_cert.is_none() {
            return identity::bearer(metadata).map(Credentials::Bearer).map_err(|e| match e {
                Error::Unauthenticated(m) if peer_cert.is_none() && !metadata.contains_key("authorization") => {
                    Error::Unauthenticated(format!(
                        "{m}, or connect over mTLS with a client certificate the gateway trusts"
                    ))
                }
                other => other,
            });
        }
        match peer_cert {
            Some(der) => identity::cert_names(der).map(Credentials::Cert),
            None => Err(Error::Unauthenticated("no credentials".into())),
        }
    }
}

/// Where a token is held: per caller JWT (hash) or per role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SlotKey {
    Jwt([u8; 32]),
    Role(Arc<str>),
}

/// Most caller tokens renewed in the background per tick (4 ticks a second): bounded work.
const WARM_RENEWALS_PER_TICK: usize = 16;

/// Longest a token is used without a renewal, even if Vault gave it no TTL.
const MAX_HOLD: Duration = Duration::from_secs(3600);

/// A held token and when to act on it.
#[derive(Clone)]
struct Held {
    actor: Actor,
    /// TTL asked at each renewal (the TTL the login gave).
    period: Duration,
    renewable: bool,
    /// From here on, renew (or log in again) before handing the token out.
    refresh_at: Instant,
    /// Never hand the token out after this (its expiry minus a margin, or the JWT's expiry).
    use_until: Instant,
    /// Leases this token parents need it alive until here: renewals never ask for less.
    keep_until: Option<Instant>,
    /// The credentials' own end (the JWT's `exp`): never used past it, however long the token lives.
    hard_until: Option<Instant>,
    /// `lookup-self` showed it alive at this time (saves repeated checks after policy denials).
    alive_at: Option<Instant>,
    /// The gateway created it by a login and revokes it at shutdown; a token read from a file is
    /// the operator's (other replicas may share it) and is left alone.
    owned: bool,
}

struct Slot {
    /// Held while logging in or renewing: concurrent calls of one holder wait for it.
    refresh: tokio::sync::Mutex<()>,
    current: Mutex<Option<Held>>,
    /// Milliseconds since the cache was created, at the last use (for LRU eviction).
    last_used: AtomicU64,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot { refresh: tokio::sync::Mutex::new(()), current: Mutex::new(None), last_used: AtomicU64::new(0) })
    }

    fn held(&self) -> Option<Held> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, held: Option<Held>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }

    /// The token, when it may be handed out without a refresh.
    fn fresh(&self, now: Instant) -> Option<Actor> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|h| now < h.refresh_at && now < h.use_until).map(|h| h.actor.clone())
    }
}

/// Counters of the token lifecycle (also exported as metrics).
#[derive(Default)]
pub struct TokenStats {
    /// Logins made (JWT, Kubernetes, AppRole, token file reads).
    pub logins: AtomicU64,
    /// Successful renewals.
    pub renewals: AtomicU64,
    /// Tokens found gone (403 + lookup-self) and replaced.
    pub dead: AtomicU64,
}

/// Who the identity of a call is, before its token is known.
struct Who {
    key: SlotKey,
    caller: Arc<str>,
    kind: &'static str,
    name: Arc<str>,
    role: Arc<str>,
    /// Unix seconds after which the credentials themselves are no longer valid (JWT exp).
    expires_unix: Option<u64>,
    /// A JWT caller: the auth mount of the caller rule that matched (its login uses that rule,
    /// never another rule of the same role).
    auth_mount: Option<Arc<str>>,
    /// A JWT caller whose JWT was not verified locally: its login passes the gate, from this peer.
    unverified_from: Option<Option<IpAddr>>,
    /// The matched rule's `bind_identity`.
    bind_identity: bool,
}

impl Who {
    /// `token_holder`'s token, acting for this caller (a role token serves many callers).
    fn acting_as(&self, token_holder: Actor) -> Actor {
        Actor {
            caller: self.caller.clone(),
            kind: self.kind,
            name: self.name.clone(),
            bind_identity: self.bind_identity,
            expires_unix: self.expires_unix,
            ..token_holder
        }
    }
}

/// The holders of tokens and the logins that fill them.
pub struct Sessions {
    vault: Client,
    rules: Vec<CallerRule>,
    cert_rules: Vec<CertRule>,
    roles: HashMap<String, RoleConfig>,
    capacity: usize,
    failure_ttl: Duration,
    /// Caller tokens used within this long are renewed in the background (zero: only on use).
    keep_warm: Duration,
    epoch: Instant,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
    failures: Mutex<HashMap<SlotKey, (Instant, Error)>>,
    verifier: crate::jwt::Verifier,
    gate: gate::LoginGate,
    /// Lifecycle counters.
    pub stats: TokenStats,
}

impl Sessions {
    /// A cache holding at most `capacity` caller tokens (role tokens are not counted). Fails only
    /// when a JWKS client cannot be built.
    pub fn new(vault: Client, config: &crate::config::Config) -> Result<Sessions, String> {
        Ok(Sessions {
            vault,
            rules: config.callers.clone(),
            cert_rules: config.cert_callers.clone(),
            roles: config.roles.clone(),
            capacity: config.token_cache_size.max(1),
            failure_ttl: config.login_failure_cache,
            keep_warm: config.token_keep_warm,
            epoch: Instant::now(),
            slots: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verifier: crate::jwt::Verifier::new(&config.issuers)?,
            gate: gate::LoginGate::new(&config.unverified_logins),
            stats: TokenStats::default(),
        })
    }

    /// Number of Vault logins made so far (for tests and metrics).
    pub fn logins(&self) -> u64 {
        self.stats.logins.load(Ordering::Relaxed)
    }

    /// Authenticates the caller of a request and returns the token that acts for it. `peer` is the
    /// address the call came from (it bounds the logins an unverifiable JWT may cause).
    pub async fn authenticate(
        &self,
        creds: &Credentials<'_>,
        peer: Option<IpAddr>,
        deadline: Option<Instant>,
    ) -> Result<Actor, Error> {
        let (key, jwt) = match creds {
            Credentials::Bearer(jwt) => {
                let key = SlotKey::Jwt(Sha256::digest(jwt.as_bytes()).into());
                if let Some(actor) = self.cached(&key) {
                    return Ok(actor);
                }
                (Some(key), Some(*jwt))
            }
            Credentials::Cert(_) => (None, None),
        };
        // Boxed: the slow path (verification, login, renewal) is a large future, and every call's
        // future would otherwise reserve room for it while the cached path never uses it.
        Box::pin(async move {
            let who = match (creds, key, jwt) {
                (Credentials::Bearer(_), Some(key), Some(jwt)) => self.jwt_caller(key, jwt, peer, deadline).await?,
                (Credentials::Cert(names), ..) => self.cert_caller(names)?,
                _ => return Err(Error::Internal("credentials without a JWT or a certificate".into())),
            };
            self.acquire(&who, jwt, deadline).await
        })
        .await
    }

    /// The gateway's own token of `role` (a `[roles]` entry with a login), for work done on no
    /// caller's behalf, such as signing lease-ownership tags.
    pub async fn service_actor(&self, role: &str, deadline: Option<Instant>) -> Result<Actor, Error> {
        let who = Who {
            key: SlotKey::Role(role.into()),
            caller: format!("gateway:{role}").into(),
            kind: "gateway",
            name: role.into(),
            role: role.into(),
            expires_unix: None,
            auth_mount: None,
            unverified_from: None,
            bind_identity: false,
        };
        self.acquire(&who, None, deadline).await
    }

    /// Runs `work` with the gateway's own token of `role`. When Vault refuses that token (403) and
    /// `lookup-self` shows it is gone (revoked, expired behind the gateway's back), a fresh login
    /// replaces it at once and `work` runs once more, instead of failing callers until the next
    /// scheduled refresh. The outer error: no token could be had; the inner one: Vault's answer.
    pub async fn with_service_token<T, F, Fut>(
        &self,
        role: &str,
        deadline: Option<Instant>,
        work: F,
    ) -> Result<Result<T, VaultError>, Error>
    where
        F: Fn(VaultToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        let actor = self.service_actor(role, deadline).await?;
        match work(actor.token.clone()).await {
            Err(VaultError::Api { status: 403, errors }) => {
                if !self.token_dead(&actor, deadline).await {
                    return Ok(Err(VaultError::Api { status: 403, errors }));
                }
                tracing::warn!(role, "the gateway's own Vault token was refused and is gone; logged in again");
                let fresh = self.service_actor(role, deadline).await?;
                Ok(work(fresh.token).await)
            }
            other => Ok(other),
        }
    }

    /// True when `actor`'s token is gone (expired or revoked behind the gateway's back): then it is
    /// dropped, and the next [`Sessions::authenticate`] logs in again. False when it is alive (a
    /// 403 was then a real policy denial).
    pub async fn token_dead(&self, actor: &Actor, deadline: Option<Instant>) -> bool {
        let Some(slot) = self.slot_if_cached(&actor.key) else { return true };
        let _guard = slot.refresh.lock().await;
        let Some(held) = slot.held() else { return true };
        if held.actor.token != actor.token {
            return true; // Already replaced by another call.
        }
        if held.alive_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        match self.vault.lookup_self(&actor.token, deadline).await {
            Err(VaultError::Api { status: 403, .. }) => {
                self.stats.dead.fetch_add(1, Ordering::Relaxed);
                self.vault.metrics().token_event("dead");
                tracing::warn!(caller = %actor.caller, role = %actor.role, "Vault token is gone (revoked or expired); logging in again");
                slot.set(None);
                true
            }
            Ok(_) => {
                slot.set(Some(Held { alive_at: Some(Instant::now()), ..held }));
                false
            }
            Err(_) => false,
        }
    }

    /// Records that leases parented by `parent` (a token of `actor`'s holder) need it alive for
    /// `ttl` more: later renewals of it never ask for less.
    pub fn keep_alive(&self, actor: &Actor, parent: &VaultToken, ttl: Duration) {
        if let Some(slot) = self.slot_if_cached(&actor.key) {
            let mut guard = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = guard.as_mut().filter(|h| &h.actor.token == parent) {
                let until = Instant::now() + ttl.min(crate::leases::MAX_TTL);
                held.keep_until = Some(held.keep_until.map_or(until, |k| k.max(until)));
            }
        }
    }

    /// Keeps role tokens fresh in the background (so an idle role's token and the leases it
    /// parents do not lapse), and renews the tokens of callers active within `token_keep_warm`
    /// (see [`Sessions::keep_callers_warm`]). Runs until the task is dropped.
    pub async fn keep_roles_fresh(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // Side by side: a slow renewal of a caller's token never delays a role token's.
            tokio::join!(self.keep_callers_warm(), self.refresh_roles());
        }
    }

    /// Refreshes the role tokens that are due.
    async fn refresh_roles(&self) {
        {
            let now = Instant::now();
            let due: Vec<Held> = {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                slots
                    .iter()
                    .filter(|(k, _)| matches!(k, SlotKey::Role(_)))
                    .filter_map(|(_, s)| s.held())
                    .filter(|h| now >= h.refresh_at)
                    .collect()
            };
            for held in due {
                let a = &held.actor;
                let who = Who {
                    key: a.key.clone(),
                    caller: a.caller.clone(),
                    kind: a.kind,
                    name: a.name.clone(),
                    role: a.role.clone(),
                    expires_unix: None,
                    auth_mount: None,
                    unverified_from: None,
                    bind_identity: a.bind_identity,
                };
                let deadline = Some(Instant::now() + Duration::from_secs(10));
                if let Err(e) = self.acquire(&who, None, deadline).await {
                    tracing::warn!(role = %a.role, error = ?e, "could not refresh the role's Vault token");
                }
            }
        }
    }

    /// Renews, before it is due, the token of each caller that used it within `token_keep_warm`
    /// (at most [`WARM_RENEWALS_PER_TICK`] per call, those due first), so a caller back from a
    /// quiet spell longer than its token's TTL is served without a login. Only renewals: the
    /// gateway never keeps a caller's JWT, so it cannot log in for it. A failed or capped renewal
    /// is not tried again in the background; the caller's next call logs in.
    async fn keep_callers_warm(&self) {
        if self.keep_warm.is_zero() {
            return;
        }
        let now = Instant::now();
        let used_since = self.epoch.elapsed().saturating_sub(self.keep_warm).as_millis() as u64;
        let mut due: Vec<(Instant, Arc<Slot>)> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .filter(|(k, s)| matches!(k, SlotKey::Jwt(_)) && s.last_used.load(Ordering::Relaxed) >= used_since)
                .filter_map(|(_, s)| s.held().map(|h| (h, s)))
                .filter(|(h, _)| h.renewable && now >= h.refresh_at && now < h.use_until)
                .map(|(h, s)| (h.refresh_at, s.clone()))
                .collect()
        };
        due.sort_by_key(|(at, _)| *at);
        for (_, slot) in due.into_iter().take(WARM_RENEWALS_PER_TICK) {
            let _guard = slot.refresh.lock().await;
            let now = Instant::now();
            let Some(held) = slot.held().filter(|h| h.renewable && now >= h.refresh_at && now < h.use_until) else {
                continue; // A call renewed or replaced it meanwhile.
            };
            let deadline = Some(now + Duration::from_secs(5));
            match self.renew(held.clone(), deadline).await {
                Ok(renewed) => slot.set(Some(renewed)),
                Err(e) => {
                    tracing::debug!(role = %held.actor.role, error = ?e, "background renewal of a caller token failed");
                    slot.set(Some(Held { renewable: false, ..held }));
                }
            }
        }
    }

    /// At shutdown: revokes every token the gateway logged in for, except those in `keep` (they
    /// parent live database leases) and tokens read from files (the operator's), within a few
    /// seconds in all.
    pub async fn revoke_all(&self, keep: &[VaultToken]) {
        let tokens: Vec<VaultToken> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            slots
                .values()
                .filter_map(|s| s.held())
                .filter(|h| h.use_until > now && h.owned)
                .map(|h| h.actor.token)
                .filter(|t| !keep.contains(t))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut revoked = 0usize;
        for token in &tokens {
            if self.vault.revoke_self(token, Some(deadline)).await.is_ok() {
                revoked += 1;
            }
        }
        tracing::info!(revoked, kept = keep.len(), "Vault tokens revoked at shutdown");
    }

    fn cached(&self, key: &SlotKey) -> Option<Actor> {
        let slot = self.slot_if_cached(key)?;
        slot.last_used.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        slot.fresh(Instant::now())
    }

    /// The JWT caller: the rule its (unverified) claims match, then, when that rule names an
    /// issuer, the JWT verified locally with that issuer's keys (a forged one ends here).
    async fn jwt_caller(
        &self,
        key: SlotKey,
        jwt: &str,
        peer: Option<IpAddr>,
        deadline: Option<Instant>,
    ) -> Result<Who, Error> {
        let claims = identity::claims(jwt)?;
        let rule = identity::rule_for(&self.rules, &claims)?;
        let claims = match &rule.verify_with {
            Some(issuer) => self.verifier.verify(issuer, jwt, deadline).await?,
            None => claims,
        };
        identity::subject(&claims)?;
        let expires_unix = identity::expiry(&claims);
        if expires_unix.is_some_and(|exp| exp <= unix_now()) {
            return Err(Error::Unauthenticated("the JWT has expired; get a fresh one".into()));
        }
        let caller = identity::caller_id(&claims);
        let name: Arc<str> = caller.trim_start_matches("jwt:").into();
        let kind = if rule.method == "kubernetes" { "kubernetes" } else { "jwt" };
        Ok(Who {
            key,
            caller: caller.into(),
            kind,
            name,
            role: rule.role.as_str().into(),
            expires_unix,
            auth_mount: Some(rule.auth_mount.as_str().into()),
            unverified_from: rule.verify_with.is_none().then_some(peer),
            bind_identity: rule.bind_identity,
        })
    }

    fn cert_caller(&self, names: &CertNames) -> Result<Who, Error> {
        let (rule, value) = identity::cert_rule_for(&self.cert_rules, names)?;
        Ok(Who {
            key: SlotKey::Role(rule.role.as_str().into()),
            caller: format!("cert:{}:{value}", rule.field.as_str()).into(),
            kind: rule.field.as_str(),
            name: value.into(),
            role: rule.role.as_str().into(),
            expires_unix: None,
            auth_mount: None,
            unverified_from: None,
            bind_identity: rule.bind_identity,
        })
    }

    /// Returns a usable token of `who`: the held one, a renewal of it, or a fresh login.
    async fn acquire(&self, who: &Who, jwt: Option<&str>, deadline: Option<Instant>) -> Result<Actor, Error> {
        // Fast path, no lock held across an await: a role token shared by many certificate callers
        // is handed out without serialising them.
        if let Some(fresh) = self.slot_if_cached(&who.key).and_then(|s| s.fresh(Instant::now())) {
            return Ok(who.acting_as(fresh));
        }
        if let Some(err) = self.recent_failure(&who.key) {
            return Err(err);
        }
        let slot = self.slot(who.key.clone());
        let _guard = slot.refresh.lock().await;
        let now = Instant::now();
        let actor_for = |held: &Held| who.acting_as(held.actor.clone());
        let current = slot.held();
        if let Some(held) = current.as_ref().filter(|h| now < h.refresh_at && now < h.use_until) {
            return Ok(actor_for(held));
        }
        if let Some(held) = current.clone().filter(|h| h.renewable && now < h.use_until) {
            match self.renew(held, deadline).await {
                Ok(renewed) => {
                    slot.set(Some(renewed.clone()));
                    return Ok(actor_for(&renewed));
                }
                // A failed renewal falls through to a fresh login.
                Err(e) => {
                    self.vault.metrics().token_event("renew_failed");
                    tracing::info!(role = %who.role, error = ?e, "token renewal failed; logging in again")
                }
            }
        }
        // A JWT the gateway could not verify itself: bounded logins in flight and per peer.
        let _gate = match who.unverified_from {
            Some(peer) => match self.gate.admit(peer, Instant::now()) {
                Ok(permit) => Some(permit),
                Err(err) => {
                    if slot.held().is_none() {
                        self.forget(&who.key);
                    }
                    return Err(err);
                }
            },
            None => None,
        };
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let login = self.login(who, jwt, deadline).await;
        let result = if login.is_ok() { "ok" } else { "refused" };
        self.vault.metrics().logins.get_or_create(&crate::metrics::KindLabel { name: result }).inc();
        let login = match login {
            Ok(login) => login,
            Err(err) => {
                let usable = current.as_ref().filter(|h| Instant::now() < h.use_until);
                if let (Error::Unavailable(m), Some(held)) = (&err, usable) {
                    // Vault is unreachable but the held token is still good for a while: keep using it.
                    tracing::warn!(role = %who.role, reason = %m, "cannot refresh the Vault token yet; using it until it nears its end");
                    return Ok(actor_for(held));
                }
                self.vault.metrics().token_event("login_failed");
                tracing::info!(caller = %who.caller, role = %who.role, error = ?err, "login refused");
                if matches!(err, Error::Unauthenticated(_) | Error::PermissionDenied(_)) {
                    self.remember_failure(who.key.clone(), err.clone());
                }
                if matches!(who.key, SlotKey::Jwt(_)) && slot.held().is_none() {
                    self.forget(&who.key);
                }
                return Err(err);
            }
        };
        self.vault.metrics().token_event("login");
        tracing::info!(caller = %who.caller, role = %who.role, policies = ?login.policies, ttl = login.ttl, renewable = login.renewable, "logged in to Vault");
        let actor = Actor {
            caller: who.caller.clone(),
            kind: who.kind,
            name: who.name.clone(),
            role: who.role.clone(),
            token: login.token.clone(),
            accessor: login.accessor.as_str().into(),
            bind_identity: who.bind_identity,
            expires_unix: who.expires_unix,
            key: who.key.clone(),
        };
        let period = match login.ttl {
            0 => MAX_HOLD,
            ttl => Duration::from_secs(ttl),
        };
        let mut held = schedule(actor, period, login.renewable && login.ttl > 0, period, Instant::now());
        held.owned =
            !matches!(self.roles.get(&*who.role).and_then(|r| r.login.as_ref()), Some(RoleLogin::TokenFile(_)))
                || jwt.is_some();
        // Never past the JWT's own expiry: after it, the caller must come back with a fresh one.
        held.hard_until =
            who.expires_unix.map(|exp| Instant::now() + Duration::from_secs(exp.saturating_sub(unix_now())));
        let held = held.capped();
        slot.set(Some(held.clone()));
        if matches!(who.key, SlotKey::Jwt(_)) {
            // Only now, with a token Vault issued, may this caller take a place in the cache.
            self.make_room();
        }
        Ok(held.actor)
    }

    /// Renews a held token; Err when it must be replaced by a login instead.
    async fn renew(&self, held: Held, deadline: Option<Instant>) -> Result<Held, VaultError> {
        let now = Instant::now();
        let needed = held.keep_until.map_or(Duration::ZERO, |k| k.saturating_duration_since(now));
        let ask = held.period.max(needed);
        let renewal = self.vault.renew_self_full(&held.actor.token, ask.as_secs().max(1), deadline).await?;
        self.stats.renewals.fetch_add(1, Ordering::Relaxed);
        self.vault.metrics().token_event("renewed");
        let ttl = Duration::from_secs(renewal.ttl);
        // Vault capped the TTL below what was asked: the max TTL is near. Keep using the token
        // for two thirds of what is left, then log in again instead of renewing.
        let capped = renewal.ttl + 1 < ask.as_secs();
        tracing::debug!(role = %held.actor.role, ttl = renewal.ttl, capped, "Vault token renewed");
        let mut renewed = schedule(held.actor.clone(), held.period, renewal.renewable && !capped, ttl, now);
        renewed.keep_until = held.keep_until;
        renewed.hard_until = held.hard_until;
        renewed.owned = held.owned;
        let renewed = renewed.capped();
        if renewed.use_until <= now {
            return Err(VaultError::Decode("renewed token has no time left".into()));
        }
        Ok(renewed)
    }

    async fn login(&self, who: &Who, jwt: Option<&str>, deadline: Option<Instant>) -> Result<Login, Error> {
        let role = &*who.role;
        let refused = |e| Error::from_vault(e, Subject::Login(role));
        if let Some(jwt) = jwt {
            let mount =
                who.auth_mount.as_deref().ok_or_else(|| Error::Internal("a JWT caller without its rule".into()))?;
            return self.vault.login_jwt(mount, role, jwt, deadline).await.map_err(refused);
        }
        let login =
            self.roles.get(role).and_then(|r| r.login.as_ref()).ok_or_else(|| {
                Error::Internal(format!("role {role} has no gateway login configured (roles.{role})"))
            })?;
        match login {
            RoleLogin::AppRole { mount, role_id_file, secret_id_file } => {
                let role_id = read_secret_file(role_id_file, role, "role_id_file").await?;
                let secret_id = read_secret_file(secret_id_file, role, "secret_id_file").await?;
                self.vault.login_approle(mount, &role_id, &secret_id, deadline).await.map_err(refused)
            }
            RoleLogin::JwtFile { mount, path } => {
                let jwt = read_secret_file(path, role, "jwt_file").await?;
                self.vault.login_jwt(mount, role, &jwt, deadline).await.map_err(refused)
            }
            RoleLogin::TokenFile(path) => {
                let token = VaultToken::new(read_secret_file(path, role, "token_file").await?);
                let info = self.vault.lookup_self(&token, deadline).await.map_err(refused)?;
                Ok(Login {
                    token,
                    accessor: info.accessor,
                    policies: info.policies,
                    ttl: info.ttl,
                    renewable: info.renewable,
                })
            }
        }
    }

    fn recent_failure(&self, key: &SlotKey) -> Option<Error> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(key).filter(|(until, _)| *until > Instant::now()).map(|(_, e)| e.clone())
    }

    fn remember_failure(&self, key: SlotKey, err: Error) {
        if self.failure_ttl.is_zero() {
            return;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() >= self.capacity {
            failures.retain(|_, (until, _)| *until > now);
            if failures.len() >= self.capacity {
                // Full of live refusals: keep them (new refusals must not flush old ones; the login
                // gate and local verification bound what an unremembered refusal can cost).
                return;
            }
        }
        failures.insert(key, (now + self.failure_ttl, err));
    }

    fn slot_if_cached(&self, key: &SlotKey) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// The slot of `key`, created empty if absent. A new caller's slot evicts nobody: it is
    /// removed again if its login fails, and makes room only once its login succeeded
    /// ([`Sessions::make_room`]); empty slots are bounded by the logins in flight.
    fn slot(&self, key: SlotKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(key).or_insert_with(Slot::new).clone();
        slot.last_used.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        slot
    }

    /// After a caller's successful login: when more than `capacity` callers hold tokens, evicts.
    fn make_room(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let callers = slots.iter().filter(|(k, s)| matches!(k, SlotKey::Jwt(_)) && s.held().is_some()).count();
        if callers > self.capacity {
            self.evict(&mut slots);
        }
    }

    /// Makes room in a full cache: expired caller tokens first, then the least recently used
    /// sixteenth (never a slot a call is using, nor a role token).
    fn evict(&self, slots: &mut HashMap<SlotKey, Arc<Slot>>) {
        let now = Instant::now();
        slots.retain(|k, s| {
            matches!(k, SlotKey::Role(_))
                || Arc::strong_count(s) > 1
                || s.held().is_some_and(|h| h.use_until > now || h.keep_until.is_some_and(|k| k > now))
        });
        let mut idle: Vec<(u64, SlotKey)> = slots
            .iter()
            .filter(|(k, s)| matches!(k, SlotKey::Jwt(_)) && Arc::strong_count(s) == 1)
            .filter(|(_, s)| s.held().is_none_or(|h| h.keep_until.is_none_or(|k| k <= now)))
            .map(|(k, s)| (s.last_used.load(Ordering::Relaxed), k.clone()))
            .collect();
        let callers = slots.keys().filter(|k| matches!(k, SlotKey::Jwt(_))).count();
        let excess = callers.saturating_sub(self.capacity);
        let n = excess.max(self.capacity / 16).min(idle.len());
        if n > 0 {
            idle.select_nth_unstable_by_key(n - 1, |(used, _)| *used);
        }
        for (_, k) in idle.into_iter().take(n) {
            slots.remove(&k);
        }
    }

    fn forget(&self, key: &SlotKey) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// Schedules a token that lives `ttl` from `now`: refresh at 60–67 % of it (jitter spreads the
/// refreshes of many tokens), never hand it out in its last tenth.
fn schedule(actor: Actor, period: Duration, renewable: bool, ttl: Duration, now: Instant) -> Held {
    let ttl = ttl.min(MAX_HOLD);
    let fraction = 0.60 + 0.07 * jitter();
    let margin = (ttl / 10).max(Duration::from_millis(200)).min(ttl / 3);
    Held {
        actor,
        period,
        renewable,
        refresh_at: now + ttl.mul_f64(fraction),
        use_until: now + ttl.saturating_sub(margin),
        keep_until: None,
        hard_until: None,
        alive_at: None,
        owned: true,
    }
}

impl Held {
    /// Applies the credentials' own end to the schedule.
    fn capped(mut self) -> Held {
        if let Some(hard) = self.hard_until {
            self.use_until = self.use_until.min(hard);
            self.refresh_at = self.refresh_at.min(self.use_until);
        }
        self
    }
}

/// A number in [0, 1) that differs between calls; enough to spread timers (not for security).
fn jitter() -> f64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0);
    let mut x = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ nanos;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads a credential file (trimmed); its content never reaches a log or an error.
async fn read_secret_file(path: &std::path::Path, role: &str, key: &str) -> Result<String, Error> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(Error::Unavailable(format!("roles.{role}.{key}: {} is empty", path.display()))),
        Err(e) => Err(Error::Unavailable(format!("roles.{role}.{key}: cannot read {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            caller: "jwt:i#a".into(),
            kind: "jwt",
            name: "i#a".into(),
            role: "r".into(),
            token: VaultToken::new("t"),
            accessor: "a".into(),
            bind_identity: false,
            expires_unix: None,
            key: SlotKey::Role("r".into()),
        }
    }

    #[test]
    fn refresh_comes_at_two_thirds_with_jitter_and_before_the_end() {
        let now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..200 {
            let h = schedule(actor(), Duration::from_secs(30), true, Duration::from_secs(30), now);
            let at = (h.refresh_at - now).as_secs_f64();
            assert!((18.0..=20.1).contains(&at), "refresh at {at}");
            assert_eq!(h.use_until - now, Duration::from_secs(27));
            seen.push((at * 1000.0) as u64);
        }
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() > 50, "jitter spreads refreshes: {} distinct", seen.len());
        // Short tokens still leave a usable window after the refresh point.
        let h = schedule(actor(), Duration::from_secs(1), true, Duration::from_secs(1), now);
        assert!(h.refresh_at < h.use_until);
    }

    #[tokio::test]
    async fn a_full_cache_evicts_the_least_recently_used_idle_callers() {
        let text = "listen = \"127.0.0.1:0\"\ntoken_cache_size = 32\n[vault]\naddress = \"http://127.0.0.1:1\"\n";
        let config = crate::config::Config::parse(text).unwrap();
        let sessions = Sessions::new(Client::new(&config.vault, Default::default()).unwrap(), &config).unwrap();
        let now = Instant::now();
        let key = |i: u8| SlotKey::Jwt([i; 32]);
        let role = SlotKey::Role("r".into());
        for (i, k) in (0..32).map(|i| (i, key(i))).chain([(99, role.clone())]) {
            let slot = sessions.slot(k);
            let mut held = schedule(actor(), Duration::from_secs(60), true, Duration::from_secs(60), now);
            if i == 0 {
                held.keep_until = Some(now + Duration::from_secs(600)); // parents a live lease
            }
            slot.set(Some(held));
            slot.last_used.store(1000 + u64::from(i), Ordering::Relaxed);
        }
        let busy = sessions.slot_if_cached(&key(1)).unwrap(); // a call is using it
                                                              // A newcomer whose login is in flight evicts nobody.
        let newcomer = sessions.slot(key(200));
        assert_eq!(sessions.slots.lock().unwrap().len(), 34);
        // Its login succeeded: now the cache makes room.
        newcomer.set(Some(schedule(actor(), Duration::from_secs(60), true, Duration::from_secs(60), now)));
        sessions.make_room();
        drop(newcomer);
        let slots = sessions.slots.lock().unwrap();
        let kept = |i: u8| slots.contains_key(&key(i));
        // 32 / 16 = 2 evicted: the least recently used idle ones (2 and 3), not the lease parent
        // (0), not the one in use (1), never a role token.
        assert!(kept(0) && kept(1) && !kept(2) && !kept(3) && kept(4) && kept(31) && kept(200));
        assert!(slots.contains_key(&role));
        drop(busy);
    }

    #[tokio::test]
    async fn new_refusals_do_not_flush_the_negative_cache() {
        let text = "listen = \"127.0.0.1:0\"\ntoken_cache_size = 4\n[vault]\naddress = \"http://127.0.0.1:1\"\n";
        let config = crate::config::Config::parse(text).unwrap();
        let sessions = Sessions::new(Client::new(&config.vault, Default::default()).unwrap(), &config).unwrap();
        let key = |i: u8| SlotKey::Jwt([i; 32]);
        let refused = || Error::Unauthenticated("refused".into());
        for i in 0..4 {
            sessions.remember_failure(key(i), refused());
        }
        // An attacker's fresh refusals while the cache is full of live ones.
        for i in 10..100 {
            sessions.remember_failure(key(i), refused());
        }
        for i in 0..4 {
            assert!(sessions.recent_failure(&key(i)).is_some(), "refusal {i} was flushed");
        }
        assert!(sessions.recent_failure(&key(50)).is_none());
    }

    #[test]
    fn credentials_prefer_the_bearer_token() {
        let mut md = MetadataMap::new();
        assert!(matches!(Credentials::from_call(&md, None), Err(Error::Unauthenticated(m)) if m.contains("mTLS")));
        md.insert("authorization", "Bearer a.b.c".parse().unwrap());
        assert!(matches!(Credentials::from_call(&md, Some(b"x")), Ok(Credentials::Bearer(_))));
        let empty = MetadataMap::new();
        assert!(matches!(Credentials::from_call(&empty, Some(b"junk")), Err(Error::Unauthenticated(_))));
    }
}
