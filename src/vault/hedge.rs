//! When a slow read is worth a second request to another node (a hedge): once it has taken
//! longer than reads usually take. "Usually" is a smoothed latency and its mean deviation, as
//! TCP estimates its retransmission timeout (RFC 6298): hedge after `srtt + 4·rttvar`, kept
//! between `min` and `max`. Pure state, time passed in; `vault.rs` acts on it.
//!
//! Invariant: only reads are hedged (`Call::read`), never writes, and each hedge is paid from the
//! retry budget, so a slow cluster sees at most the budget's share of extra requests.

use std::time::Duration;

/// Settings, from `vault.hedge_min_ms` (`min` zero: no hedging) and `vault.silent_after_ms` (`max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeConfig {
    /// Never hedge sooner than this (zero turns hedging off).
    pub min: Duration,
    /// Always hedge a read that has waited this long (a node silent this long is given up on).
    pub max: Duration,
}

/// Samples before the estimate is trusted; until then a read hedges only at `max`.
const WARM_UP: u32 = 8;

/// The smoothed latency of reads (microseconds, RFC 6298's gains 1/8 and 1/4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    srtt_us: u64,
    rttvar_us: u64,
    samples: u32,
}

impl Latency {
    /// Adds the latency of one answered read.
    pub fn observe(&mut self, took: Duration) {
        let r = took.as_micros().min(u128::from(u32::MAX)) as u64;
        if self.samples == 0 {
            self.srtt_us = r;
            self.rttvar_us = r / 2;
        } else {
            self.rttvar_us = (3 * self.rttvar_us + self.srtt_us.abs_diff(r)) / 4;
            self.srtt_us = (7 * self.srtt_us + r) / 8;
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// How long a read may take before it is hedged; `None` when hedging is off.
    pub fn hedge_after(&self, config: &HedgeConfig) -> Option<Duration> {
        if config.min.is_zero() {
            return None;
        }
        if self.samples < WARM_UP {
            return Some(config.max.max(config.min));
        }
        let usual = Duration::from_micros(self.srtt_us.saturating_add(self.rttvar_us.saturating_mul(4)));
        Some(usual.clamp(config.min, config.max.max(config.min)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_delay_follows_the_usual_latency_within_bounds() {
        let ms = Duration::from_millis;
        let config = HedgeConfig { min: ms(20), max: ms(750) };
        // (latencies seen) -> hedge after
        let cases: &[(&[u64], Option<Duration>)] = &[
            (&[], Some(ms(750))),
            (&[5; 7], Some(ms(750))),
            (&[5; 100], Some(ms(20))),
            (&[100; 100], Some(ms(100))),
            (&[2000; 100], Some(ms(750))),
        ];
        for (seen, want) in cases {
            let mut l = Latency::default();
            for t in *seen {
                l.observe(ms(*t));
            }
            assert_eq!(l.hedge_after(&config), *want, "{} samples of {:?} ms", seen.len(), seen.first());
        }
        // Jittery reads (40 and 60 ms alternating) hedge later than steady 50 ms ones.
        let mut jittery = Latency::default();
        for i in 0..100 {
            jittery.observe(ms(if i % 2 == 0 { 40 } else { 60 }));
        }
        let after = jittery.hedge_after(&config).unwrap();
        assert!(after > ms(70) && after < ms(120), "{after:?}");
        let off = HedgeConfig { min: Duration::ZERO, max: ms(750) };
        assert_eq!(Latency::default().hedge_after(&off), None);
    }
}
