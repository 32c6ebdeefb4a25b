//! The Vault nodes the client may talk to: which one is active, which are usable, and the
//! circuit breaker of each. Pure state and decisions, no I/O: `vault.rs` sends, the health
//! watcher polls, and both report what they saw here.
//!
//! Choice of node: every request prefers the node `sys/health` last named active (reads too, so a
//! caller reads its own writes); when it is failing, reads go to an unsealed standby (OpenBao
//! standbys answer read-only requests locally) and writes to a standby, which forwards them or
//! answers 307. A node whose breaker is open gets no request until its cool-down has passed
//! (then exactly one probe) or the health watcher sees it ready again.
//!
//! Grey failures: a node that accepts connections but answers nothing (a frozen process, a
//! black-holed network, a hung disk) is *silent*. A request or health probe that waited
//! `silent_after` while the node answered nothing at all (no request, no probe) proves it: the
//! breaker opens at once, the requests waiting on the node are cut (they are retried elsewhere
//! when idempotent), and while the health watcher runs only it closes the breaker again, so no
//! caller pays for probing a silent node. A node that is merely slow still answers something
//! within `silent_after` and is only counted, as before.

use reqwest::Url;
use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Mutex,
    },
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};

/// What `sys/health` last said about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not probed yet.
    Unknown = 0,
    /// The active node: serves everything.
    Active = 1,
    /// An unsealed standby: serves reads, forwards writes.
    Standby = 2,
    /// Sealed or uninitialised: serves nothing.
    Sealed = 3,
    /// Did not answer.
    Down = 4,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Active,
            2 => Role::Standby,
            3 => Role::Sealed,
            4 => Role::Down,
            _ => Role::Unknown,
        }
    }
}

/// Why a request counted as a failure of its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No answer: connection refused or reset, timeout.
    Unreachable,
    /// `Vault is sealed`.
    Sealed,
    /// A 5xx, including a standby that cannot reach an active node.
    Failing,
    /// No answer within the timeout: silent if the node answered nothing else meanwhile.
    Silent,
}

/// Settings of every node's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long an open breaker refuses requests before letting one probe through.
    pub cool_down: Duration,
    /// A node that answers nothing at all while a request or probe waits this long is silent
    /// (its breaker opens at once); also the health probe's timeout.
    pub silent_after: Duration,
}

/// The defaults documented in docs/configuration.md (`vault.breaker_*`, `vault.silent_after_ms`):
/// with the 1 s health interval a node that hangs is found silent within 1.75 s.
pub const DEFAULT_BREAKER: BreakerConfig =
    BreakerConfig { failures: 5, cool_down: Duration::from_secs(1), silent_after: Duration::from_millis(750) };

/// Whether a request sent at `sent` that has not been answered proves its node silent: the node
/// answered nothing since (`last_answer` is its latest answer of any kind) and the request has
/// waited `after`. A request cut short by its caller's deadline proves nothing.
pub fn is_silent(last_answer: Option<Instant>, sent: Instant, now: Instant, after: Duration) -> bool {
    last_answer.is_none_or(|a| a < sent) && now.saturating_duration_since(sent) >= after
}

/// The state of one node's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Requests flow; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// No requests until `until`; opened at `since` because of `fault`.
    Open {
        /// When the node started failing.
        since: Instant,
        /// When one probe may go.
        until: Instant,
        /// The last failure.
        fault: Fault,
    },
    /// One probe request is out; everything else is refused until it reports.
    HalfOpen {
        /// When the node started failing.
        since: Instant,
        /// When the probe was sent (a probe that never reports is replaced after a cool-down).
        probe: Instant,
        /// The last failure.
        fault: Fault,
    },
}

impl Breaker {
    /// Whether a request may be sent now, without taking the half-open probe slot.
    pub fn open_at(&self, now: Instant, config: &BreakerConfig) -> bool {
        match *self {
            Breaker::Closed { .. } => false,
            Breaker::Open { until, .. } => now < until,
            Breaker::HalfOpen { probe, .. } => now < probe + config.cool_down,
        }
    }

    /// Takes permission to send one request; moves Open → HalfOpen when the cool-down is over.
    pub fn acquire(&mut self, now: Instant, config: &BreakerConfig) -> bool {
        if self.open_at(now, config) {
            return false;
        }
        if let Breaker::Open { since, fault, .. } | Breaker::HalfOpen { since, fault, .. } = *self {
            *self = Breaker::HalfOpen { since, probe: now, fault };
        }
        true
    }

    /// A request to the node succeeded (or `sys/health` found it ready): close.
    pub fn success(&mut self) {
        *self = Breaker::Closed { failures: 0 };
    }

    /// A request to the node failed; opens after `config.failures` in a row, at once for a probe.
    pub fn failure(&mut self, now: Instant, fault: Fault, config: &BreakerConfig) {
        let until = now + config.cool_down;
        *self = match *self {
            Breaker::Closed { failures } if failures + 1 < config.failures => {
                Breaker::Closed { failures: failures + 1 }
            }
            Breaker::Closed { .. } => Breaker::Open { since: now, until, fault },
            Breaker::Open { since, .. } | Breaker::HalfOpen { since, .. } => Breaker::Open { since, until, fault },
        };
    }

    /// Opens at once (the node said it is sealed: no point in trying it until it is unsealed).
    pub fn trip(&mut self, now: Instant, fault: Fault, config: &BreakerConfig) {
        self.trip_since(now, now, fault, config);
    }

    /// Opens at once, failing since `since` unless it already was (a silent node: since its last answer).
    pub fn trip_since(&mut self, since: Instant, now: Instant, fault: Fault, config: &BreakerConfig) {
        let since = match *self {
            Breaker::Open { since, .. } | Breaker::HalfOpen { since, .. } => since,
            Breaker::Closed { .. } => since.min(now),
        };
        *self = Breaker::Open { since, until: now + config.cool_down, fault };
    }

    /// Whether it is open because the node went silent (then only the health watcher closes it).
    pub fn silent(&self) -> bool {
        matches!(self, Breaker::Open { fault: Fault::Silent, .. } | Breaker::HalfOpen { fault: Fault::Silent, .. })
    }

    /// The metric value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> i64 {
        match self {
            Breaker::Closed { .. } => 0,
            Breaker::HalfOpen { .. } => 1,
            Breaker::Open { .. } => 2,
        }
    }
}

/// One configured Vault node.
pub struct Node {
    /// Its base URL (ends in `/`).
    pub base: Url,
    /// Its address as configured, for logs and metric labels.
    pub label: String,
    role: AtomicU8,
    breaker: Mutex<Breaker>,
    /// Microseconds since [`Nodes`] was made, plus one, at the node's latest answer (0: none yet).
    last_answer: AtomicU64,
    /// Wakes the requests waiting on the node when it is found silent.
    silenced: Notify,
}

impl Node {
    /// Completes when the node is found silent; create it before sending, so no trip is missed.
    pub fn silenced(&self) -> tokio::sync::futures::Notified<'_> {
        self.silenced.notified()
    }
}

/// Why no node could take a request: what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllFailing {
    /// Configured nodes.
    pub nodes: usize,
    /// Of them, sealed.
    pub sealed: usize,
    /// Of them, silent (accepting connections but answering nothing).
    pub silent: usize,
    /// How long the first of them has been failing.
    pub since: Duration,
}

impl AllFailing {
    /// The caller-facing sentence (no address: callers need not know the topology).
    pub fn message(&self) -> String {
        let secs = self.since.as_secs_f64();
        let (n, s) = (self.nodes, if self.nodes == 1 { "" } else { "s" });
        if self.sealed == self.nodes {
            format!("Vault is sealed (all {n} node{s} sealed for {secs:.1} s); an operator must unseal it; retry later")
        } else if self.silent == self.nodes {
            format!("Vault is not answering (all {n} node{s} silent for {secs:.1} s); retry later")
        } else if self.silent > 0 && self.sealed == 0 {
            format!(
                "Vault is unreachable (all {n} node{s} failing since {secs:.1} s, {} of them silent); retry later",
                self.silent
            )
        } else if self.sealed > 0 {
            format!(
                "Vault is unreachable (all {n} node{s} failing since {secs:.1} s, {} of them sealed); retry later",
                self.sealed
            )
        } else {
            format!("Vault is unreachable (all {n} node{s} failing since {secs:.1} s); retry later")
        }
    }
}

/// Every configured node and the breaker settings.
pub struct Nodes {
    nodes: Vec<Node>,
    config: BreakerConfig,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    epoch: Instant,
    /// Microseconds since `epoch`, plus one, of the health watcher's latest observation (0: none).
    watched: AtomicU64,
}

impl Nodes {
    /// The nodes at `addresses` (each a base URL ending in `/`), all unknown and closed.
    pub fn new(addresses: Vec<Url>, config: BreakerConfig, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Nodes {
        let nodes = addresses
            .into_iter()
            .map(|base| Node {
                label: base.as_str().trim_end_matches('/').to_string(),
                base,
                role: AtomicU8::new(Role::Unknown as u8),
                breaker: Mutex::new(Breaker::Closed { failures: 0 }),
                last_answer: AtomicU64::new(0),
                silenced: Notify::new(),
            })
            .collect();
        let nodes = Nodes { nodes, config, metrics, epoch: Instant::now(), watched: AtomicU64::new(0) };
        for (i, node) in nodes.nodes.iter().enumerate() {
            nodes.publish(i, &lock(&node.breaker));
        }
        nodes
    }

    /// All nodes, in configured order.
    pub fn all(&self) -> &[Node] {
        &self.nodes
    }

    /// The node at `index`.
    pub fn get(&self, index: usize) -> Option<&Node> {
        self.nodes.get(index)
    }

    /// The configured node whose origin (scheme, host, port) is that of `url`.
    pub fn by_origin(&self, url: &Url) -> Option<usize> {
        self.nodes.iter().position(|n| n.base.origin() == url.origin())
    }

    /// A node's last known role.
    pub fn role(&self, index: usize) -> Role {
        self.nodes.get(index).map_or(Role::Unknown, |n| Role::from_u8(n.role.load(Ordering::Relaxed)))
    }

    /// A node's breaker.
    pub fn breaker(&self, index: usize) -> Breaker {
        self.nodes.get(index).map_or(Breaker::Closed { failures: 0 }, |n| *lock(&n.breaker))
    }

    /// The breaker settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    fn unstamp(&self, stamp: u64) -> Option<Instant> {
        stamp.checked_sub(1).map(|us| self.epoch + Duration::from_micros(us))
    }

    /// Node `index` answered something (any HTTP status) at `now`: it is not silent.
    pub fn heard(&self, index: usize, now: Instant) {
        if let Some(node) = self.nodes.get(index) {
            node.last_answer.fetch_max(self.stamp(now), Ordering::Relaxed);
        }
    }

    /// When node `index` last answered anything.
    pub fn last_answer(&self, index: usize) -> Option<Instant> {
        self.nodes.get(index).and_then(|n| self.unstamp(n.last_answer.load(Ordering::Relaxed)))
    }

    /// Whether the health watcher observed the nodes lately (then it alone closes silent breakers).
    fn watched(&self, now: Instant) -> bool {
        self.unstamp(self.watched.load(Ordering::Relaxed)).is_some_and(|at| {
            now.saturating_duration_since(at) < (self.config.silent_after + self.config.cool_down) * 4
        })
    }

    /// Records what `sys/health` said about node `index` (probe sent at `sent`); only a ready
    /// node closes its breaker; a probe that got no answer while the node answered nothing else
    /// for `silent_after` opens it at once.
    pub fn observe(&self, index: usize, role: Role, sent: Instant, now: Instant) {
        let Some(node) = self.nodes.get(index) else { return };
        self.watched.fetch_max(self.stamp(now), Ordering::Relaxed);
        if role == Role::Down {
            node.role.store(role as u8, Ordering::Relaxed);
            return self.report(index, Some(Fault::Silent), sent, now);
        }
        if role == Role::Active {
            // Only one node is active: a former active that did not answer yet is a standby at best.
            for (i, other) in self.nodes.iter().enumerate() {
                if i != index {
                    let _ = other.role.compare_exchange(
                        Role::Active as u8,
                        Role::Unknown as u8,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        node.role.store(role as u8, Ordering::Relaxed);
        let mut breaker = lock(&node.breaker);
        match role {
            Role::Active | Role::Standby => breaker.success(),
            Role::Sealed => breaker.trip(now, Fault::Sealed, &self.config),
            Role::Down | Role::Unknown => {}
        }
        self.publish(index, &breaker);
    }

    /// Records the outcome of one request to node `index`, sent at `sent`: `None` for success.
    /// A request without an answer ([`Fault::Silent`]) opens the breaker at once when the node
    /// answered nothing else while it waited `silent_after` ([`is_silent`]), and cuts the other
    /// requests waiting on it; otherwise it counts as an ordinary failure.
    pub fn report(&self, index: usize, fault: Option<Fault>, sent: Instant, now: Instant) {
        let Some(node) = self.nodes.get(index) else { return };
        let mut breaker = lock(&node.breaker);
        let before = *breaker;
        match fault {
            None if matches!(before, Breaker::Closed { failures: 0 }) => return,
            None => breaker.success(),
            Some(Fault::Silent) => {
                let last = self.last_answer(index);
                if is_silent(last, sent, now, self.config.silent_after) {
                    breaker.trip_since(last.unwrap_or(sent), now, Fault::Silent, &self.config);
                    node.silenced.notify_waiters();
                } else {
                    breaker.failure(now, Fault::Unreachable, &self.config);
                }
            }
            Some(fault) => breaker.failure(now, fault, &self.config),
        }
        if fault.is_some() && node.role.load(Ordering::Relaxed) == Role::Active as u8 {
            // Send the next requests elsewhere until `sys/health` says who is active.
            node.role
                .store(if fault == Some(Fault::Sealed) { Role::Sealed } else { Role::Down } as u8, Ordering::Relaxed);
        }
        if before.gauge() != breaker.gauge() {
            match *breaker {
                Breaker::Open { fault, .. } => {
                    tracing::warn!(vault = %node.label, ?fault, "vault node failing: circuit breaker open")
                }
                Breaker::Closed { .. } => {
                    tracing::info!(vault = %node.label, "vault node answers again: breaker closed")
                }
                Breaker::HalfOpen { .. } => {}
            }
        }
        self.publish(index, &breaker);
    }

    /// Chooses the node for the next attempt and takes its breaker's permission. `tried` has bit
    /// `i` set for nodes that already failed this request: others are preferred. `Err` when every
    /// breaker is open.
    pub fn choose(&self, tried: u64, now: Instant) -> Result<usize, AllFailing> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        // Lower rank first; `sort_by_key` is stable, so configured order breaks ties.
        order.sort_by_key(|&i| {
            let fresh = tried & (1u64 << (i % 64)) == 0;
            (!fresh, rank(self.role(i)))
        });
        let watched = self.watched(now);
        for i in order {
            let node = &self.nodes[i];
            let mut breaker = lock(&node.breaker);
            if watched && breaker.silent() {
                // No caller's request probes a silent node: the health watcher's probes do.
                continue;
            }
            let was = breaker.gauge();
            if breaker.acquire(now, &self.config) {
                if was != breaker.gauge() {
                    self.publish(i, &breaker);
                }
                return Ok(i);
            }
        }
        Err(self.all_failing(now))
    }

    /// Whether some node can take requests now (for `grpc.health.v1`).
    pub fn any_usable(&self, now: Instant) -> bool {
        (0..self.nodes.len()).any(|i| {
            matches!(self.role(i), Role::Active | Role::Standby) && !self.breaker(i).open_at(now, &self.config)
        })
    }

    fn all_failing(&self, now: Instant) -> AllFailing {
        let (mut sealed, mut silent) = (0, 0);
        let mut since = now;
        for node in &self.nodes {
            match *lock(&node.breaker) {
                Breaker::Open { since: s, fault, .. } | Breaker::HalfOpen { since: s, fault, .. } => {
                    since = since.min(s);
                    sealed += usize::from(fault == Fault::Sealed);
                    silent += usize::from(fault == Fault::Silent);
                }
                Breaker::Closed { .. } => {}
            }
        }
        AllFailing { nodes: self.nodes.len(), sealed, silent, since: now.saturating_duration_since(since) }
    }

    fn publish(&self, index: usize, breaker: &Breaker) {
        if let Some(node) = self.nodes.get(index) {
            self.metrics.breaker(&node.label, breaker.gauge());
        }
    }
}

/// Order of preference: the active node, then standbys, then nodes not probed yet; sealed and
/// down nodes last (their breakers usually refuse anyway). Reads and writes rank alike: reads
/// prefer the active node too, so a caller reads what it just wrote; standbys take over when it fails.
fn rank(role: Role) -> u8 {
    match role {
        Role::Active => 0,
        Role::Standby => 1,
        Role::Unknown => 2,
        Role::Down => 3,
        Role::Sealed => 4,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig =
        BreakerConfig { failures: 3, cool_down: Duration::from_secs(2), silent_after: Duration::from_millis(500) };

    #[test]
    fn breaker_state_machine() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::Closed { failures: 0 };
        b.failure(t0, Fault::Unreachable, &CONFIG);
        b.failure(t0, Fault::Unreachable, &CONFIG);
        assert_eq!(b, Breaker::Closed { failures: 2 });
        assert!(b.acquire(t0, &CONFIG));
        b.success();
        assert_eq!(b, Breaker::Closed { failures: 0 }, "a success resets the count");
        for _ in 0..3 {
            b.failure(t0, Fault::Unreachable, &CONFIG);
        }
        assert!(matches!(b, Breaker::Open { .. }));
        assert!(!b.acquire(t0 + s, &CONFIG), "open during the cool-down");
        assert!(b.acquire(t0 + 2 * s, &CONFIG), "one probe after it");
        assert!(matches!(b, Breaker::HalfOpen { .. }));
        assert!(!b.acquire(t0 + 2 * s, &CONFIG), "only one probe");
        b.failure(t0 + 3 * s, Fault::Failing, &CONFIG);
        assert_eq!(b, Breaker::Open { since: t0, until: t0 + 5 * s, fault: Fault::Failing }, "a failed probe reopens");
        assert!(b.acquire(t0 + 5 * s, &CONFIG));
        assert!(b.acquire(t0 + 7 * s, &CONFIG), "a probe that never reported is replaced");
        b.success();
        assert_eq!(b, Breaker::Closed { failures: 0 });
        b.trip(t0, Fault::Sealed, &CONFIG);
        assert!(matches!(b, Breaker::Open { fault: Fault::Sealed, .. }), "sealed opens at once");
    }

    fn nodes(n: usize) -> Nodes {
        let urls = (0..n).map(|i| Url::parse(&format!("http://127.0.0.1:{}/", 8200 + i)).unwrap()).collect();
        Nodes::new(urls, CONFIG, Default::default())
    }

    #[test]
    fn node_choice_table() {
        let now = Instant::now();
        // (roles, open breakers, nodes tried) -> chosen
        type Case<'a> = (&'a [Role], &'a [usize], u64, Option<usize>);
        let cases: &[Case] = &[
            (&[Role::Unknown, Role::Unknown, Role::Unknown], &[], 0, Some(0)),
            (&[Role::Standby, Role::Active, Role::Standby], &[], 0, Some(1)),
            (&[Role::Standby, Role::Active, Role::Standby], &[1], 0, Some(0)),
            (&[Role::Standby, Role::Active, Role::Standby], &[], 0b010, Some(0)),
            (&[Role::Standby, Role::Active, Role::Standby], &[0], 0b010, Some(2)),
            (&[Role::Sealed, Role::Standby, Role::Active], &[], 0, Some(2)),
            (&[Role::Sealed, Role::Standby, Role::Down], &[], 0, Some(1)),
            // Every node already tried: the best of them again.
            (&[Role::Active, Role::Standby], &[], 0b11, Some(0)),
            (&[Role::Active, Role::Standby], &[0, 1], 0, None),
        ];
        for (roles, open, tried, want) in cases {
            let set = nodes(roles.len());
            for (i, role) in roles.iter().enumerate() {
                set.nodes[i].role.store(*role as u8, Ordering::Relaxed);
            }
            for &i in *open {
                lock(&set.nodes[i].breaker).trip(now, Fault::Unreachable, &CONFIG);
            }
            let got = set.choose(*tried, now).ok();
            assert_eq!(got, *want, "roles {roles:?} open {open:?} tried {tried:b}");
        }
    }

    #[test]
    fn health_and_reports_drive_the_breakers() {
        let now = Instant::now();
        let set = nodes(2);
        assert!(!set.any_usable(now), "nothing is known before the first probe");
        set.observe(0, Role::Active, now, now);
        set.observe(1, Role::Standby, now, now);
        assert!(set.any_usable(now));
        for _ in 0..3 {
            set.report(0, Some(Fault::Unreachable), now, now);
        }
        assert_eq!(set.role(0), Role::Down, "a failing active node is not chosen first any more");
        assert_eq!(set.choose(0, now), Ok(1));
        set.observe(1, Role::Sealed, now, now);
        let err = set.choose(0, now).unwrap_err();
        assert_eq!((err.nodes, err.sealed), (2, 1));
        assert!(err.message().contains("all 2 nodes failing"), "{}", err.message());
        assert!(!set.any_usable(now));
        set.observe(1, Role::Active, now, now);
        assert_eq!(set.choose(0, now), Ok(1), "the health watcher closes a breaker");
        let one = nodes(1);
        one.observe(0, Role::Sealed, now, now);
        let msg = one.choose(0, now).unwrap_err().message();
        assert!(msg.starts_with("Vault is sealed (all 1 node sealed"), "{msg}");
    }

    #[test]
    fn silence_table() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let after = ms(500);
        // (last answer, sent, now) -> silent?
        let cases: &[(Option<Duration>, Duration, Duration, bool)] = &[
            (None, ms(0), ms(500), true),
            (None, ms(0), ms(499), false),
            (Some(ms(100)), ms(200), ms(900), true),
            (Some(ms(300)), ms(200), ms(900), false),
            (Some(ms(200)), ms(200), ms(900), false),
            (Some(ms(100)), ms(800), ms(900), false),
        ];
        for (last, sent, now, want) in cases {
            let got = is_silent(last.map(|l| t0 + l), t0 + *sent, t0 + *now, after);
            assert_eq!(got, *want, "last {last:?} sent {sent:?} now {now:?}");
        }
    }

    #[tokio::test]
    async fn a_silent_node_trips_at_once_cuts_its_waiters_and_only_health_closes_it() {
        let set = nodes(2);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        set.observe(0, Role::Active, t0, t0);
        set.observe(1, Role::Standby, t0, t0);
        set.heard(0, t0);
        // A request cut short after 100 ms (the caller's deadline) proves nothing: counted only.
        set.report(0, Some(Fault::Silent), t0 + ms(10), t0 + ms(110));
        assert_eq!(set.breaker(0), Breaker::Closed { failures: 1 });
        // A slow node that answered something meanwhile is counted, not tripped.
        set.observe(0, Role::Active, t0, t0);
        set.heard(0, t0 + ms(300));
        set.report(0, Some(Fault::Silent), t0 + ms(200), t0 + ms(800));
        assert_eq!(set.breaker(0), Breaker::Closed { failures: 1 });
        // Nothing heard since the request went out 600 ms ago: silent, open at once, waiters cut.
        let waiter = set.get(0).unwrap().silenced();
        tokio::pin!(waiter);
        waiter.as_mut().enable();
        set.report(0, Some(Fault::Silent), t0 + ms(400), t0 + ms(1000));
        assert!(set.breaker(0).silent());
        let Breaker::Open { since, .. } = set.breaker(0) else { panic!("open") };
        assert!(since.max(t0 + ms(300)) - since.min(t0 + ms(300)) < ms(1), "silent since its last answer");
        assert!(tokio::time::timeout(ms(50), waiter).await.is_ok(), "the requests waiting on it are cut");
        // With the health watcher running, no caller probes it, even after the cool-down.
        let later = t0 + ms(1000) + CONFIG.cool_down * 2;
        set.observe(1, Role::Standby, later, later);
        assert_eq!(set.choose(0, later), Ok(1));
        set.observe(1, Role::Sealed, later, later);
        let err = set.choose(0, later).unwrap_err();
        assert_eq!((err.silent, err.sealed), (1, 1));
        set.observe(1, Role::Standby, later, later);
        // The health watcher hears it again: closed.
        set.observe(0, Role::Active, later, later);
        assert_eq!(set.choose(0, later), Ok(0));
        // Without a health watcher (a setup client), the cool-down's probe still goes.
        let lonely = nodes(1);
        lonely.report(0, Some(Fault::Silent), t0, t0 + ms(600));
        let err = lonely.choose(0, t0 + ms(700)).unwrap_err();
        assert!(err.message().starts_with("Vault is not answering (all 1 node silent for 0.7 s)"), "{}", err.message());
        assert_eq!(lonely.choose(0, t0 + ms(600) + CONFIG.cool_down), Ok(0));
    }
}
