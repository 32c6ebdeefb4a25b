//! Bounds on logins whose JWT the gateway did not verify itself (caller rules without
//! `verify_with`, where only Vault can tell a forged JWT from a real one): a global cap on such
//! logins in flight and a token bucket per peer address (`[unverified_logins]`). Past either, the
//! call is answered `RESOURCE_EXHAUSTED` and Vault sees nothing.
//!
//! Invariants: the peer map is bounded ([`MAX_PEERS`]); a bucket that has refilled is dropped first
//! (it is the same as a fresh one, so nothing is forgotten); IPv6 peers are counted per /64, the
//! block one host usually holds. Time is passed in: the decisions are tested without a clock.

use crate::{config::UnverifiedLogins, error::Error};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Most peer addresses tracked; past it, new peers share one bucket.
pub const MAX_PEERS: usize = 65_536;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The cap on unverified logins in flight and the per-peer login rate.
pub struct LoginGate {
    config: UnverifiedLogins,
    in_flight: Arc<Semaphore>,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The address a peer's logins are counted under.
fn peer_key(peer: Option<IpAddr>) -> IpAddr {
    match peer {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        Some(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4),
        Some(v4) => v4,
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

impl LoginGate {
    /// A gate with these bounds.
    pub fn new(config: &UnverifiedLogins) -> LoginGate {
        LoginGate {
            config: config.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Lets one unverified login from `peer` go ahead (the permit bounds logins in flight until
    /// dropped), or refuses it.
    pub fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Result<OwnedSemaphorePermit, Error> {
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "too many logins with JWTs the gateway cannot verify itself are in flight \
                 (unverified_logins.max_in_flight = {}); retry with backoff",
                self.config.max_in_flight
            ))
        })?;
        if !self.take(peer_key(peer), now) {
            return Err(Error::ResourceExhausted(format!(
                "too many logins from this address (unverified_logins.per_peer_per_second = {}); retry with backoff",
                self.config.per_peer_per_second
            )));
        }
        Ok(permit)
    }

    /// Takes one token from `key`'s bucket.
    fn take(&self, key: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.config.per_peer_per_second, self.config.per_peer_burst);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |b: &Bucket| (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate).min(burst);
        let key = if peers.len() >= MAX_PEERS && !peers.contains_key(&key) {
            // Full buckets are as good as absent: drop them; if none is, the newcomer shares one.
            peers.retain(|_, b| refill(b) < burst);
            if peers.len() >= MAX_PEERS {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                key
            }
        } else {
            key
        };
        let bucket = peers.entry(key).or_insert(Bucket { tokens: burst, last: now });
        bucket.tokens = refill(bucket);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate(max_in_flight: usize, rate: f64, burst: f64) -> LoginGate {
        LoginGate::new(&UnverifiedLogins { max_in_flight, per_peer_per_second: rate, per_peer_burst: burst })
    }

    #[test]
    fn in_flight_cap_and_per_peer_rate() {
        let t0 = Instant::now();
        let g = gate(2, 1.0, 3.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = g.admit(Some(a), t0).unwrap();
        let p2 = g.admit(Some(a), t0).unwrap();
        // Two in flight: a third is refused whoever sends it.
        assert!(matches!(g.admit(Some(b), t0), Err(Error::ResourceExhausted(m)) if m.contains("max_in_flight")));
        drop((p1, p2));
        // The burst of 3: the third token of `a`, then nothing until it refills.
        assert!(g.admit(Some(a), t0).is_ok());
        assert!(matches!(g.admit(Some(a), t0), Err(Error::ResourceExhausted(m)) if m.contains("per_peer")));
        assert!(g.admit(Some(b), t0).is_ok(), "another peer has its own bucket");
        assert!(g.admit(Some(a), t0 + Duration::from_millis(999)).is_err());
        assert!(g.admit(Some(a), t0 + Duration::from_millis(2000)).is_ok());
    }

    #[test]
    fn peers_are_keyed_by_address_and_ipv6_by_64() {
        let key = |s: &str| peer_key(Some(s.parse().unwrap()));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(peer_key(None), peer_key(None));
    }

    #[test]
    fn the_peer_map_is_bounded_and_forgets_only_refilled_buckets() {
        let t0 = Instant::now();
        let g = gate(1, 1.0, 2.0);
        let addr = |i: usize| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
        for i in 0..MAX_PEERS {
            assert!(g.take(addr(i), t0));
        }
        // Every bucket is below its burst: a newcomer shares the overflow bucket.
        assert!(g.take(addr(MAX_PEERS), t0));
        assert!(g.take(addr(MAX_PEERS + 1), t0));
        assert!(!g.take(addr(MAX_PEERS + 2), t0), "the overflow bucket is shared");
        assert_eq!(g.peers.lock().unwrap().len(), MAX_PEERS + 1);
        // Later every bucket has refilled: they are dropped, and newcomers get their own.
        let later = t0 + Duration::from_secs(5);
        assert!(g.take(addr(MAX_PEERS + 3), later));
        assert!(g.peers.lock().unwrap().len() <= 2);
    }
}
