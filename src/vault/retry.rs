//! When a failed Vault request is sent again: which failures are worth a retry, how long to wait
//! (exponential backoff with full jitter, or Vault's `Retry-After`), and the retry budget that
//! keeps an outage from multiplying Vault's load. Pure decisions; `vault.rs` acts on them.
//!
//! Invariant: a request that Vault may have acted on is retried only when the call was marked
//! idempotent ([`super::Call::idempotent`]). Answers that prove Vault did nothing (connection
//! refused, sealed, a standby with no active node) may be retried for any call.

use super::{nodes::Fault, VaultError};
use std::{sync::Mutex, time::Duration};
use tokio::time::Instant;

/// Retry settings, from the `[vault]` config table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Most attempts of one request, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff before the first retry (the upper bound of its jitter).
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Retries allowed per request over time (0.2 = one retry per five requests).
    pub budget_ratio: f64,
    /// Retries per second always allowed, however few requests there are.
    pub budget_floor_per_second: f64,
}

/// The defaults documented in the README (`vault.retry_*`).
pub const DEFAULT: RetryConfig = RetryConfig {
    max_attempts: 3,
    backoff_base: Duration::from_millis(50),
    backoff_max: Duration::from_secs(1),
    budget_ratio: 0.2,
    budget_floor_per_second: 10.0,
};

/// What one attempt's outcome means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Final: success, or an answer that another attempt would not change (400, 403, 404…).
    Done,
    /// Worth another attempt. `fault` says whether it counts against the node's breaker;
    /// `acted` whether Vault may have performed the request.
    Retry {
        /// The node's failure, if it is one.
        fault: Option<Fault>,
        /// Vault may have acted: only idempotent calls are sent again.
        acted: bool,
        /// Vault asked to wait this long (429 `Retry-After`).
        after: Option<Duration>,
        /// For the metric: transport, timeout, sealed, standby, 5xx, 429.
        reason: &'static str,
    },
}

/// A standby answers this to a write while no active node is reachable; it did nothing.
pub const NO_ACTIVE: &str = "active cluster node not found";

/// Classifies one attempt. `status`/`errors` are Vault's answer; `err` the failure without one.
pub fn verdict(answer: Result<(u16, &[String]), &VaultError>, retry_after: Option<Duration>) -> Verdict {
    let retry = |fault, acted, reason| Verdict::Retry { fault, acted, after: None, reason };
    match answer {
        Err(VaultError::Connect(_)) => retry(Some(Fault::Unreachable), false, "transport"),
        Err(VaultError::Transport(_)) => retry(Some(Fault::Unreachable), true, "transport"),
        // No answer in time: the node is silent if it answered nothing else meanwhile (`nodes.rs`).
        Err(VaultError::Timeout) => retry(Some(Fault::Silent), true, "timeout"),
        Err(_) => Verdict::Done,
        Ok((503, errors)) if errors.iter().any(|e| e.contains("sealed")) => retry(Some(Fault::Sealed), false, "sealed"),
        Ok((500..=599, errors)) if errors.iter().any(|e| e.contains(NO_ACTIVE)) => {
            retry(Some(Fault::Failing), false, "standby")
        }
        Ok((429, _)) => Verdict::Retry { fault: None, acted: false, after: retry_after, reason: "429" },
        Ok((502..=504, _)) => retry(Some(Fault::Failing), true, "5xx"),
        // A plain 500 is an answer from a live Vault (often about the request itself): retry an
        // idempotent call, but do not hold it against the node.
        Ok((500..=599, _)) => retry(None, true, "5xx"),
        Ok(_) => Verdict::Done,
    }
}

/// The wait before retry number `retry` (0 = the first retry): uniformly random in
/// `[0, min(max, base·2^retry)]` ("full jitter"); `unit` is a random number in `[0, 1)`.
pub fn backoff(retry: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(20)).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A random number in `[0, 1)` for jitter (std's per-process random hash keys; not for secrets).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Seconds of floor retries the budget can save up, so a burst after a quiet spell is bounded.
const FLOOR_WINDOW_SECS: u64 = 10;

/// Retries are counted in thousandths so that deposits of a fraction of a retry add up exactly.
const MILLI: u64 = 1000;

/// A token bucket of retries: every request deposits `ratio` of a retry, time deposits the
/// floor, every retry withdraws one. The bucket holds at most 10 s of floor plus 100 requests'
/// deposits, so an outage cannot draw on a large hoard saved up while all was well.
pub struct RetryBudget {
    ratio: u64,
    floor: u64,
    capacity: u64,
    state: Mutex<(u64, Instant)>,
}

impl RetryBudget {
    /// A full budget.
    pub fn new(ratio: f64, floor_per_second: f64, now: Instant) -> RetryBudget {
        let ratio = (ratio.clamp(0.0, 1.0) * MILLI as f64) as u64;
        let floor = (floor_per_second.max(0.0) * MILLI as f64) as u64;
        let capacity = (floor * FLOOR_WINDOW_SECS).max(MILLI) + 100 * ratio;
        RetryBudget { ratio, floor, capacity, state: Mutex::new((capacity, now)) }
    }

    /// One request was made.
    pub fn deposit(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = (st.0 + self.ratio).min(self.capacity);
    }

    /// Takes one retry; false when the budget is spent (the request then fails as it is).
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed_ms = now.saturating_duration_since(st.1).as_millis() as u64;
        if elapsed_ms > 0 {
            st.0 = (st.0 + elapsed_ms * self.floor / 1000).min(self.capacity);
            st.1 = now;
        }
        if st.0 >= MILLI {
            st.0 -= MILLI;
            true
        } else {
            false
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored), capped at one minute.
pub fn retry_after(header: Option<&str>) -> Option<Duration> {
    let secs: u64 = header?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (base, max) = (Duration::from_millis(50), Duration::from_secs(1));
        let table = [(0, 1.0, 50), (1, 1.0, 100), (2, 1.0, 200), (4, 1.0, 800), (5, 1.0, 1000), (30, 1.0, 1000)];
        for (retry, unit, ms) in table {
            assert_eq!(backoff(retry, base, max, unit), Duration::from_millis(ms), "retry {retry}");
        }
        assert_eq!(backoff(3, base, max, 0.0), Duration::ZERO);
        assert_eq!(backoff(3, base, max, 0.5), Duration::from_millis(200));
        let draws: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "jitter is roughly uniform: mean {mean}");
    }

    #[test]
    fn budget_allows_a_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 1.0, t0);
        // The starting balance (the floor's window plus a little) is spent first.
        let mut start = 0;
        while budget.withdraw(t0) {
            start += 1;
        }
        assert_eq!(start, 30);
        // Then one retry per five requests.
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit();
            allowed += usize::from(budget.withdraw(t0));
        }
        assert_eq!(allowed, 200);
        assert!(!budget.withdraw(t0));
        // With no requests at all, the floor: one per second.
        assert!(budget.withdraw(t0 + Duration::from_secs(1)));
        assert!(!budget.withdraw(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn which_failures_are_retried() {
        let e = |s: &str| vec![s.to_string()];
        let sealed = e("Vault is sealed");
        let standby = e("local node not active but active cluster node not found");
        type Answer<'a> = Result<(u16, &'a [String]), VaultError>;
        let cases: Vec<(Answer, Verdict)> = vec![
            (Ok((200, &[])), Verdict::Done),
            (Ok((400, &[])), Verdict::Done),
            (Ok((403, &[])), Verdict::Done),
            (Ok((404, &[])), Verdict::Done),
            (
                Ok((503, &sealed)),
                Verdict::Retry { fault: Some(Fault::Sealed), acted: false, after: None, reason: "sealed" },
            ),
            (
                Ok((500, &standby)),
                Verdict::Retry { fault: Some(Fault::Failing), acted: false, after: None, reason: "standby" },
            ),
            (Ok((500, &[])), Verdict::Retry { fault: None, acted: true, after: None, reason: "5xx" }),
            (Ok((502, &[])), Verdict::Retry { fault: Some(Fault::Failing), acted: true, after: None, reason: "5xx" }),
            (
                Err(VaultError::Connect("refused".into())),
                Verdict::Retry { fault: Some(Fault::Unreachable), acted: false, after: None, reason: "transport" },
            ),
            (
                Err(VaultError::Transport("reset".into())),
                Verdict::Retry { fault: Some(Fault::Unreachable), acted: true, after: None, reason: "transport" },
            ),
            (
                Err(VaultError::Timeout),
                Verdict::Retry { fault: Some(Fault::Silent), acted: true, after: None, reason: "timeout" },
            ),
            (Err(VaultError::Decode("x".into())), Verdict::Done),
        ];
        for (answer, want) in cases {
            assert_eq!(verdict(answer.as_ref().map(|(s, e)| (*s, *e)), None), want, "{answer:?}");
        }
        let wait = Some(Duration::from_secs(2));
        assert_eq!(
            verdict(Ok((429, &[])), wait),
            Verdict::Retry { fault: None, acted: false, after: wait, reason: "429" }
        );
        assert_eq!(retry_after(Some("2")), wait);
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(Some("99999")), Some(Duration::from_secs(60)));
    }
}
