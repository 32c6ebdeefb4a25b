//! Per-caller rate limits: a token bucket per caller, sized by the caller's role, so that one noisy
//! service cannot starve the others. A call over its limit gets `RESOURCE_EXHAUSTED` at once.
//! Buckets live per replica: with N replicas a caller gets up to N times the rate (documented).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::time::Instant;

/// The limit of one role: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at once after a quiet period (bucket size).
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets of every caller seen, keyed by caller name.
pub struct RateLimits {
    by_role: HashMap<String, Limit>,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// Callers tracked before idle full buckets are dropped.
const BUCKETS_BEFORE_PRUNE: usize = 100_000;

impl RateLimits {
    /// Limits per role; roles not listed are not limited.
    pub fn new(by_role: HashMap<String, Limit>) -> RateLimits {
        RateLimits { by_role, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token from `caller`'s bucket; `Err(wait)` when empty, with how long until one refills.
    pub fn take(&self, caller: &Arc<str>, role: &str) -> Result<(), std::time::Duration> {
        let Some(limit) = self.by_role.get(role) else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= BUCKETS_BEFORE_PRUNE {
            buckets.retain(|_, b| now.duration_since(b.last).as_secs_f64() < 60.0);
        }
        let bucket = buckets.entry(caller.clone()).or_insert(Bucket { tokens: limit.burst, last: now });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * limit.per_second).min(limit.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_the_burst_then_the_rate() {
        let limits = RateLimits::new(HashMap::from([("noisy".to_string(), Limit { per_second: 10.0, burst: 5.0 })]));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for _ in 0..5 {
            assert!(limits.take(&a, "noisy").is_ok());
        }
        let wait = limits.take(&a, "noisy").unwrap_err();
        assert!(wait <= std::time::Duration::from_millis(100), "{wait:?}");
        // Another caller of the same role has its own bucket; unlisted roles are not limited.
        assert!(limits.take(&b, "noisy").is_ok());
        for _ in 0..1000 {
            assert!(limits.take(&a, "quiet").is_ok());
        }
        tokio::time::advance(std::time::Duration::from_millis(200)).await;
        assert!(limits.take(&a, "noisy").is_ok());
        assert!(limits.take(&a, "noisy").is_ok());
        assert!(limits.take(&a, "noisy").is_err());
    }
}
