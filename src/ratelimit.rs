//! Per-caller rate limits: a token bucket per caller, sized by the caller's role, so that one noisy
//! service cannot starve the others. A call over its limit gets `RESOURCE_EXHAUSTED` at once.
//! Buckets live per replica: with N replicas a caller gets up to N times the rate (documented).
//!
//! Bounded: at most `MAX_BUCKETS` callers are tracked. When full, buckets that have refilled
//! (the same as no bucket) are dropped, then the least recently used tenth: an evicted caller
//! starts again with a full bucket, which only ever happens with more callers active at once
//! than the bound.

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
    /// When it is full again if not used (from then on it is the same as no bucket).
    full_at: Instant,
}

/// Buckets of every caller seen, keyed by caller name.
pub struct RateLimits {
    by_role: HashMap<String, Limit>,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
    max_buckets: usize,
}

/// Callers tracked at most.
const MAX_BUCKETS: usize = 100_000;

impl RateLimits {
    /// Limits per role; roles not listed are not limited.
    pub fn new(by_role: HashMap<String, Limit>) -> RateLimits {
        RateLimits::bounded(by_role, MAX_BUCKETS)
    }

    /// As [`RateLimits::new`], tracking at most `max_buckets` callers.
    pub fn bounded(by_role: HashMap<String, Limit>, max_buckets: usize) -> RateLimits {
        RateLimits { by_role, buckets: Mutex::new(HashMap::new()), max_buckets: max_buckets.max(10) }
    }

    /// Callers tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Makes room for one more bucket: drops refilled buckets, then the least recently used tenth.
    fn make_room(&self, buckets: &mut HashMap<Arc<str>, Bucket>, now: Instant) {
        if buckets.len() < self.max_buckets {
            return;
        }
        buckets.retain(|_, b| b.full_at > now);
        if buckets.len() >= self.max_buckets - self.max_buckets / 10 {
            let mut lasts: Vec<Instant> = buckets.values().map(|b| b.last).collect();
            let (_, cut, _) = lasts.select_nth_unstable(self.max_buckets / 10);
            let cut = *cut;
            buckets.retain(|_, b| b.last > cut);
        }
    }

    /// Takes one token from `caller`'s bucket; `Err(wait)` when empty, with how long until one refills.
    pub fn take(&self, caller: &Arc<str>, role: &str) -> Result<(), std::time::Duration> {
        let Some(limit) = self.by_role.get(role) else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(caller) {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(caller.clone()).or_insert(Bucket { tokens: limit.burst, last: now, full_at: now });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * limit.per_second).min(limit.burst);
        bucket.last = now;
        let answer = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second))
        };
        let refill = std::time::Duration::from_secs_f64((limit.burst - bucket.tokens).max(0.0) / limit.per_second);
        bucket.full_at = now.checked_add(refill).unwrap_or(now);
        answer
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

    #[tokio::test(start_paused = true)]
    async fn buckets_are_bounded_and_a_throttled_caller_is_not_flushed_by_strangers() {
        let limits =
            RateLimits::bounded(HashMap::from([("r".to_string(), Limit { per_second: 0.1, burst: 2.0 })]), 100);
        let noisy: Arc<str> = "noisy".into();
        assert!(limits.take(&noisy, "r").is_ok() && limits.take(&noisy, "r").is_ok());
        assert!(limits.take(&noisy, "r").is_err(), "burst spent");
        // 1,000 other callers, each once, a millisecond apart: the map never passes its bound.
        for i in 0..1000 {
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
            assert!(limits.take(&Arc::from(format!("caller-{i}")), "r").is_ok());
            assert!(limits.tracked() <= 100, "{} buckets", limits.tracked());
            // The noisy caller keeps calling: recently used, it is never the one evicted.
            if i % 50 == 0 {
                let _ = limits.take(&noisy, "r");
            }
        }
        assert!(limits.take(&noisy, "r").is_err(), "still throttled: its bucket was kept");
        // Refilled buckets go first: after a quiet period every bucket is full, and the next
        // sweep (when the map is full) drops them all, not a tenth.
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        let mut fewest = usize::MAX;
        for i in 0..101 {
            assert!(limits.take(&Arc::from(format!("late-{i}")), "r").is_ok());
            fewest = fewest.min(limits.tracked());
        }
        assert!(fewest <= 2, "{fewest} buckets right after a sweep of refilled ones");
    }
}
