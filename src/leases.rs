//! Ownership and lifetime of the database leases handed out through this gateway.
//!
//! Ownership: only the caller that obtained a lease may renew or revoke it. The record maps the
//! lease id to the caller's stable name (issuer and subject of its JWT), so a caller keeps its
//! leases across fresh JWTs, and nobody else may touch them.
//!
//! Lifetime rule (Vault: credentials die with the token that created them): when a lease is
//! issued or renewed, the gateway renews the *parent* token so that it lives at least as long as
//! the lease. If Vault caps the token (its role's `token_max_ttl`), the lease can live no longer
//! than the token, and the duration reported to the caller is the shorter of the two: configure
//! the JWT role's `token_max_ttl` no shorter than the database role's `max_ttl`.
//!
//! These records are per replica (memory); see ARCHITECTURE.md.

use crate::vault::VaultToken;
use std::{collections::HashMap, sync::Mutex, time::Duration};
use tokio::time::Instant;

/// Extra time the parent token is kept beyond its lease, to absorb clock and request delays.
pub const PARENT_SLACK: Duration = Duration::from_secs(60);

/// Longest lease time believed from Vault (its own system max is 32 days); bounds the arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

fn end(now: Instant, ttl: Duration) -> Instant {
    now + ttl.min(MAX_TTL)
}

#[derive(Clone)]
struct Record {
    owner: String,
    parent: VaultToken,
    expires: Instant,
}

/// What the registry says about a lease and a caller.
#[derive(Debug)]
pub enum Ownership {
    /// The caller owns it; here is the token that parents it.
    Owner(VaultToken),
    /// Another caller owns it.
    Other,
    /// This gateway did not hand it out, or it has expired.
    Unknown,
}

/// The registry of leases handed out.
#[derive(Default)]
pub struct Leases {
    records: Mutex<HashMap<String, Record>>,
}

impl Leases {
    /// Records a new lease of `owner`, parented by `parent`, ending after `ttl`.
    pub fn insert(&self, lease_id: &str, owner: &str, parent: VaultToken, ttl: Duration) {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|_, r| r.expires > now);
        records.insert(lease_id.to_string(), Record { owner: owner.to_string(), parent, expires: end(now, ttl) });
    }

    /// Who owns `lease_id`, as seen by `caller`.
    pub fn check(&self, lease_id: &str, caller: &str) -> Ownership {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match records.get(lease_id) {
            Some(r) if r.expires <= Instant::now() => Ownership::Unknown,
            Some(r) if r.owner == caller => Ownership::Owner(r.parent.clone()),
            Some(_) => Ownership::Other,
            None => Ownership::Unknown,
        }
    }

    /// Moves a lease's end after a renewal.
    pub fn extend(&self, lease_id: &str, ttl: Duration) {
        if let Some(r) = self.records.lock().unwrap_or_else(|p| p.into_inner()).get_mut(lease_id) {
            r.expires = end(Instant::now(), ttl);
        }
    }

    /// The tokens that parent live leases (never revoked at shutdown: their leases would die).
    pub fn parents(&self) -> Vec<VaultToken> {
        let now = Instant::now();
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.values().filter(|r| r.expires > now).map(|r| r.parent.clone()).collect()
    }

    /// Forgets a revoked lease.
    pub fn remove(&self, lease_id: &str) {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).remove(lease_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_owner_is_the_owner() {
        let leases = Leases::default();
        leases.insert("database/creds/r/1", "jwt:i#billing", VaultToken::new("t"), Duration::from_secs(60));
        assert!(matches!(leases.check("database/creds/r/1", "jwt:i#billing"), Ownership::Owner(_)));
        assert!(matches!(leases.check("database/creds/r/1", "jwt:i#reports"), Ownership::Other));
        assert!(matches!(leases.check("database/creds/r/2", "jwt:i#billing"), Ownership::Unknown));
        leases.remove("database/creds/r/1");
        assert!(matches!(leases.check("database/creds/r/1", "jwt:i#billing"), Ownership::Unknown));
        leases.insert("x", "a", VaultToken::new("t"), Duration::ZERO);
        assert!(matches!(leases.check("x", "a"), Ownership::Unknown));
    }
}
