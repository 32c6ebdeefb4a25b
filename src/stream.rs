//! Server-streaming RPCs (WatchSecret, WatchDbCreds, WatchKey): the one place that opens,
//! bounds, keeps alive and ends a stream. A stream RPC is a description (`rpc!(…, stream)` on its
//! request's [`Described`](crate::service::Described)) plus a *producer*: an async function
//! that gets the authenticated actor, the checked message and a [`Sink`], sends messages into it
//! and returns only when the stream must end (`Err`: the status the caller gets).
//! [`Gateway::serve_stream`](crate::service::Gateway::serve_stream) runs it:
//!
//! ```text
//! layers (context, observe, audit, shed, deadline, budget) ─▶ serve_stream:
//!    Gateway::serve (authenticate, rate limit, check, rules)  ─▶ Streams::open (bounds)
//!    ─▶ spawned driver: producer ∥ heartbeats ∥ shutdown ∥ caller gone ∥ deadline ─▶ end status
//! ```
//!
//! Invariants:
//! - A stream holds one [`Slot`] from before its first message until its driver ends: at most
//!   `watch.max_streams` streams are open on a replica and `watch.max_streams_per_caller` per
//!   caller (the stable caller name, so a caller cannot escape the bound with fresh JWTs); past
//!   either bound the call is answered RESOURCE_EXHAUSTED before any Vault request. The per-caller
//!   map holds only callers with an open stream, so it is bounded by `watch.max_streams`.
//! - Streams do not hold a `limits.max_concurrent_calls` permit once open (the shedding layer lets
//!   go when the stream's head is sent): they are bounded here instead.
//! - Every stream ends with a status: the producer's error, DEADLINE_EXCEEDED at the caller's
//!   deadline, UNAUTHENTICATED when the caller's credentials end (its JWT's `exp`: a stream never
//!   outlives what admitted it), or, once [`Streams::close`] ran (graceful shutdown), UNAVAILABLE with RetryInfo and
//!   `grpc-retry-pushback-ms` so the client reconnects, to another replica. New streams are then
//!   refused the same way. A caller that goes away ends its stream's producer at once.
//! - A producer is *dropped* when its stream ends, so clean-up that needs Vault (revoking a lease)
//!   is handed to [`Streams::linger`]: it runs after its grace, or at once when the gateway shuts
//!   down, and the server waits for it ([`Streams::finish`]) before it revokes its own tokens.
//! - Keepalives: HTTP/2 PINGs on every connection (`server.rs`), and a heartbeat message
//!   ([`Heartbeat`]) every `watch.heartbeat_ms` on every stream, because L7 proxies time out a
//!   *stream* that carries no data however many PINGs its connection sees.

use crate::{config::WatchConfig, error::Error};
use prometheus_client::metrics::gauge::Gauge;
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tonic::Status;

/// A stream message type that can carry a heartbeat (a message with only `heartbeat = true`).
pub trait Heartbeat {
    /// The heartbeat message.
    fn heartbeat() -> Self;
}

/// Messages a stream's driver may hold for a slow reader before the producer waits.
const BUFFERED: usize = 8;

/// How long the driver waits to hand its last status to a caller that does not read.
const LAST_WORD: Duration = Duration::from_secs(5);

/// The open streams of one gateway: their bounds, the shutdown signal, and the clean-up work
/// that outlives them.
pub struct Streams {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_caller: usize,
    per_caller: Mutex<HashMap<Arc<str>, usize>>,
    heartbeat: Option<Duration>,
    closing: watch::Sender<bool>,
    lingering: Mutex<JoinSet<()>>,
    /// `vaultgate_open_streams`: follows [`Streams::open_streams`] (raised by a slot, lowered
    /// when it is given back).
    gauge: Gauge,
}

impl Streams {
    /// The streams of a gateway configured with `config`, counted in `gauge`.
    pub fn new(config: &WatchConfig, gauge: Gauge) -> Arc<Streams> {
        Arc::new(Streams {
            total: Arc::new(Semaphore::new(config.max_streams)),
            max_total: config.max_streams,
            max_per_caller: config.max_streams_per_caller,
            per_caller: Mutex::new(HashMap::new()),
            heartbeat: (config.heartbeat_ms > 0).then(|| Duration::from_millis(config.heartbeat_ms)),
            closing: watch::channel(false).0,
            lingering: Mutex::new(JoinSet::new()),
            gauge,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    /// A slot for one more stream of `caller`, or why not (shutting down, a bound reached).
    pub fn open(self: &Arc<Self>, caller: &Arc<str>) -> Result<Slot, Error> {
        if *self.closing.borrow() {
            return Err(shutting_down());
        }
        let mut per_caller = self.per_caller.lock().unwrap_or_else(|p| p.into_inner());
        let held = per_caller.get(caller).copied().unwrap_or(0);
        if held >= self.max_per_caller {
            return Err(Error::ResourceExhausted(format!(
                "this caller already holds {held} open streams (watch.max_streams_per_caller); close one first"
            )));
        }
        let permit = self.total.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "the gateway holds its most open streams ({}, watch.max_streams); retry with backoff",
                self.max_total
            ))
        })?;
        per_caller.insert(caller.clone(), held + 1);
        self.gauge.inc();
        Ok(Slot { streams: self.clone(), caller: caller.clone(), _permit: permit })
    }

    /// Graceful shutdown: every open stream ends UNAVAILABLE (with RetryInfo), new ones are refused
    /// alike, and lingering clean-up runs at once.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Whether [`Streams::close`] ran.
    pub fn closed(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once [`Streams::close`] ran.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Runs `work` after `grace`, or at once when the gateway shuts down; the server waits for it
    /// ([`Streams::finish`]) before it stops. For clean-up that must outlive a stream (revoking a
    /// lease the caller may still be using for a while).
    pub fn linger(&self, grace: Duration, work: impl Future<Output = ()> + Send + 'static) {
        let closing = self.closing();
        let mut set = self.lingering.lock().unwrap_or_else(|p| p.into_inner());
        // Finished tasks are reaped here, so the set holds only pending work.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = closing => {}
            }
            work.await;
        });
    }

    /// Clean-up work not yet done.
    pub fn lingering(&self) -> usize {
        let mut set = self.lingering.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.len()
    }

    /// At shutdown: closes every stream, waits (up to `within`) until none is open and every
    /// lingering clean-up is done.
    pub async fn finish(&self, within: Duration) {
        self.close();
        let until = Instant::now() + within;
        while self.open_streams() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut set = std::mem::take(&mut *self.lingering.lock().unwrap_or_else(|p| p.into_inner()));
        let joined = tokio::time::timeout_at(until, async { while set.join_next().await.is_some() {} }).await;
        if joined.is_err() {
            tracing::warn!(left = set.len(), "shutdown: stream clean-up (lease revocations) not done in time");
        }
    }

    /// Runs an admitted stream: spawns its driver and returns what tonic sends. The driver runs
    /// `producing` with heartbeats until it ends, the caller goes away, the first of `ends`
    /// passes or the gateway shuts down; then the caller gets the end status and the slot is
    /// given back.
    pub fn run<T, Fut>(&self, slot: Slot, ends: Ends, producing: Fut, sink: Sink<T>) -> Outgoing<T>
    where
        T: Heartbeat + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let (closing, heartbeat, tx) = (self.closing(), self.heartbeat, sink.tx);
        let rx = sink.rx;
        tokio::spawn(async move {
            let mut producing = Box::pin(producing);
            let beats = async {
                let Some(every) = heartbeat else { return std::future::pending().await };
                loop {
                    tokio::time::sleep(every).await;
                    if tx.send(Ok(T::heartbeat())).await.is_err() {
                        return;
                    }
                }
            };
            let until_end = async {
                match ends.first() {
                    Some((at, end)) => {
                        tokio::time::sleep_until(at).await;
                        end.error()
                    }
                    None => std::future::pending().await,
                }
            };
            let end = tokio::select! {
                ended = &mut producing => ended.err(),
                () = closing => Some(shutting_down()),
                error = until_end => Some(error),
                () = tx.closed() => None,
                () = beats => None,
            };
            // The producer goes first: its clean-up (handed to `linger`) is registered before the
            // slot is given back, so `finish` never sees no stream and no clean-up in between.
            drop(producing);
            if let Some(error) = end {
                let _ = tokio::time::timeout(LAST_WORD, tx.send(Err(Status::from(error)))).await;
            }
            drop(slot);
        });
        Outgoing(rx)
    }
}

/// When a stream ends whatever its producer does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ends {
    /// The call's deadline (`grpc-timeout`).
    pub deadline: Option<Instant>,
    /// The caller's credentials end ([`Actor::credentials_end`](crate::session::Actor::credentials_end)):
    /// a stream must not outlive what admitted it, so a caller whose JWT expired stops
    /// receiving secrets and credentials and must come back with a fresh one.
    pub credentials: Option<Instant>,
}

/// Which of [`Ends`] came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Deadline,
    Credentials,
}

impl Ends {
    /// The first end and when it comes; the deadline when both come at once.
    fn first(self) -> Option<(Instant, End)> {
        match (self.deadline, self.credentials) {
            (Some(d), Some(c)) if c < d => Some((c, End::Credentials)),
            (Some(d), _) => Some((d, End::Deadline)),
            (None, Some(c)) => Some((c, End::Credentials)),
            (None, None) => None,
        }
    }
}

impl End {
    fn error(self) -> Error {
        match self {
            End::Deadline => Error::DeadlineExceeded("the stream reached the call's deadline".into()),
            End::Credentials => Error::Unauthenticated(
                "the caller's credentials expired during the stream (the JWT's exp); reconnect with a fresh one".into(),
            ),
        }
    }
}

fn shutting_down() -> Error {
    Error::Unavailable("the gateway is shutting down; reconnect (another replica serves the stream)".into())
}

/// One open stream's share of the bounds; given back when dropped.
pub struct Slot {
    streams: Arc<Streams>,
    caller: Arc<str>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.streams.gauge.dec();
        let mut per_caller = self.streams.per_caller.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = per_caller.get_mut(&self.caller) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                per_caller.remove(&self.caller);
            }
        }
    }
}

/// Where a producer sends its stream's messages.
pub struct Sink<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    rx: mpsc::Receiver<Result<T, Status>>,
}

impl<T> Default for Sink<T> {
    fn default() -> Sink<T> {
        let (tx, rx) = mpsc::channel(BUFFERED);
        Sink { tx, rx }
    }
}

impl<T> Sink<T> {
    /// The producer's end of the stream.
    pub fn sender(&self) -> Sender<T> {
        Sender(self.tx.clone())
    }
}

/// A producer's handle to send messages.
pub struct Sender<T>(mpsc::Sender<Result<T, Status>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<T> Sender<T> {
    /// Sends one message (waits while the caller reads slowly); `Err` when the caller is gone,
    /// and the producer should end.
    pub async fn send(&self, message: T) -> Result<(), Error> {
        self.0.send(Ok(message)).await.map_err(|_| Error::Unavailable("the caller closed the stream".into()))
    }
}

/// The messages of one stream, as tonic sends them.
pub struct Outgoing<T>(mpsc::Receiver<Result<T, Status>>);

impl<T> tokio_stream::Stream for Outgoing<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio_stream::StreamExt;

    #[derive(Debug, PartialEq)]
    struct Msg(u32);
    impl Heartbeat for Msg {
        fn heartbeat() -> Msg {
            Msg(0)
        }
    }

    fn streams(total: usize, per_caller: usize, heartbeat_ms: u64) -> Arc<Streams> {
        streams_counted(total, per_caller, heartbeat_ms, Gauge::default())
    }

    fn streams_counted(total: usize, per_caller: usize, heartbeat_ms: u64, gauge: Gauge) -> Arc<Streams> {
        Streams::new(
            &WatchConfig {
                max_streams: total,
                max_streams_per_caller: per_caller,
                heartbeat_ms,
                poll_min_ms: 1000,
                poll_max_ms: 3000,
                rotation_grace_ms: 30_000,
            },
            gauge,
        )
    }

    #[tokio::test]
    async fn bounds_per_caller_and_in_total_are_given_back() {
        let gauge = Gauge::default();
        let s = streams_counted(3, 2, 0, gauge.clone());
        let (a, b): (Arc<str>, Arc<str>) = ("jwt:i#a".into(), "jwt:i#b".into());
        let a1 = s.open(&a).expect("first");
        let a2 = s.open(&a).expect("second");
        let refused = s.open(&a).err().expect("third of one caller");
        assert!(matches!(&refused, Error::ResourceExhausted(m) if m.contains("max_streams_per_caller")), "{refused:?}");
        let b1 = s.open(&b).expect("another caller");
        let refused = s.open(&b).err().expect("past the total");
        assert!(matches!(&refused, Error::ResourceExhausted(m) if m.contains("watch.max_streams")), "{refused:?}");
        assert_eq!(s.open_streams(), 3);
        assert_eq!(gauge.get(), 3, "refused opens are not counted");
        drop(a1);
        assert_eq!(gauge.get(), 2);
        assert!(s.open(&b).is_ok(), "a slot given back serves anyone");
        drop((a2, b1));
        assert_eq!(s.open_streams(), 0);
        assert_eq!(gauge.get(), 0);
        assert!(s.per_caller.lock().unwrap().is_empty(), "callers without streams are forgotten");
    }

    #[tokio::test]
    async fn shutdown_ends_streams_unavailable_with_retry_info_and_refuses_new_ones() {
        let s = streams(10, 10, 0);
        let caller: Arc<str> = "c".into();
        let sink = Sink::default();
        let out = sink.sender();
        let producing = async move {
            out.send(Msg(1)).await?;
            std::future::pending().await
        };
        let mut stream = s.run(s.open(&caller).unwrap(), Ends::default(), producing, sink);
        assert_eq!(stream.next().await.unwrap().unwrap(), Msg(1));
        s.close();
        let status = stream.next().await.unwrap().expect_err("ends with a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.metadata().get(crate::error::RETRY_PUSHBACK).is_some(), "pushback for gRPC retry policies");
        use tonic_types::StatusExt;
        assert!(status.get_details_retry_info().is_some(), "RetryInfo in the details");
        assert!(stream.next().await.is_none(), "nothing after the status");
        assert!(matches!(s.open(&caller), Err(Error::Unavailable(_))));
        s.finish(Duration::from_secs(1)).await;
        assert_eq!(s.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_caller_going_away_drops_the_producer_and_frees_the_slot() {
        let s = streams(10, 1, 0);
        let caller: Arc<str> = "c".into();
        let dropped = Arc::new(AtomicBool::new(false));
        struct Guard(Arc<AtomicBool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = Guard(dropped.clone());
        let sink = Sink::<Msg>::default();
        let producing = async move {
            let _guard = guard;
            std::future::pending().await
        };
        let stream = s.run(s.open(&caller).unwrap(), Ends::default(), producing, sink);
        drop(stream);
        for _ in 0..100 {
            if s.open_streams() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(dropped.load(Ordering::SeqCst), "the producer was dropped");
        assert_eq!(s.open_streams(), 0);
        assert!(s.open(&caller).is_ok(), "the caller's slot is back");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_flow_and_the_producers_error_ends_the_stream() {
        let s = streams(10, 10, 1000);
        let sink = Sink::default();
        let out = sink.sender();
        let producing = async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            out.send(Msg(7)).await?;
            Err(Error::NotFound("secret \"x\" was deleted".into()))
        };
        let stream = s.run(s.open(&"c".into()).unwrap(), Ends::default(), producing, sink);
        let got: Vec<_> = stream.collect().await;
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap(), &Msg(0));
        assert_eq!(got[1].as_ref().unwrap(), &Msg(0));
        assert_eq!(got[2].as_ref().unwrap(), &Msg(7));
        assert_eq!(got[3].as_ref().unwrap_err().code(), tonic::Code::NotFound);
    }

    #[test]
    fn the_first_end_decides() {
        let now = Instant::now();
        let (early, late) = (now + Duration::from_secs(1), now + Duration::from_secs(2));
        let cases = [
            (None, None, None),
            (Some(early), None, Some((early, End::Deadline))),
            (None, Some(early), Some((early, End::Credentials))),
            (Some(early), Some(late), Some((early, End::Deadline))),
            (Some(late), Some(early), Some((early, End::Credentials))),
            (Some(early), Some(early), Some((early, End::Deadline))),
        ];
        for (deadline, credentials, want) in cases {
            assert_eq!(Ends { deadline, credentials }.first(), want, "{deadline:?} {credentials:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_or_the_callers_expiry_ends_a_stream() {
        let s = streams(10, 10, 0);
        let cases = [
            (Some(3), None, tonic::Code::DeadlineExceeded, 3),
            (None, Some(2), tonic::Code::Unauthenticated, 2),
            (Some(5), Some(4), tonic::Code::Unauthenticated, 4),
            (Some(4), Some(5), tonic::Code::DeadlineExceeded, 4),
        ];
        for (deadline, credentials, code, after) in cases {
            let start = Instant::now();
            let at = |secs: Option<u64>| secs.map(|s| start + Duration::from_secs(s));
            let ends = Ends { deadline: at(deadline), credentials: at(credentials) };
            let producing = std::future::pending::<Result<(), Error>>();
            let got: Vec<_> =
                s.run::<Msg, _>(s.open(&"c".into()).unwrap(), ends, producing, Sink::default()).collect().await;
            assert_eq!(got.len(), 1, "{ends:?}");
            assert_eq!(got[0].as_ref().unwrap_err().code(), code, "{ends:?}");
            assert_eq!(start.elapsed().as_secs(), after, "{ends:?}");
        }
        assert_eq!(s.open_streams(), 0, "every ended stream gave its slot back");
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_work_waits_its_grace_or_runs_at_shutdown() {
        let s = streams(10, 10, 0);
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        s.linger(Duration::from_secs(30), async move { d.store(true, Ordering::SeqCst) });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!done.load(Ordering::SeqCst), "not before its grace");
        assert_eq!(s.lingering(), 1);
        let started = Instant::now();
        s.finish(Duration::from_secs(5)).await;
        assert!(done.load(Ordering::SeqCst), "shutdown runs it at once");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(s.lingering(), 0);
    }
}
