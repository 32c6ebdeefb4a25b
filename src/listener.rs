//! The gRPC listener: admits client connections before tonic sees them. A new connection first
//! needs a handshake slot (at most `limits.max_handshakes` in progress, at most
//! `limits.max_handshakes_per_peer` from one peer address), then must finish its handshake (TLS,
//! or for plaintext its first bytes) within `limits.handshake_timeout_ms`, then needs one of
//! `limits.max_connections` slots, held until it closes. A connection refused at any step is
//! closed at once (counted by reason); the accept loop never waits, so idle half-open
//! connections cannot keep others from being accepted. An admitted connection that opens no
//! stream within `limits.first_stream_timeout_ms`, or has none open for
//! `limits.idle_connection_timeout_ms` after its last, is closed (its reads end), so idle
//! connections cannot hold the `max_connections` slots either; the layers tell it of its
//! streams ([`Activity`], found by the peer's socket address).
//!
//! Invariants: the per-peer map holds only peers with a handshake in progress (so at most
//! `limits.max_handshakes` entries); the activity map holds only admitted connections (at most
//! `limits.max_connections`); an IPv6 peer is its /64 (one host owns a whole /64).

use crate::{config::Limits, metrics::Metrics};
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The connection limits and what is in progress.
pub struct Admission {
    handshake_timeout: Duration,
    max_handshakes: usize,
    max_per_peer: usize,
    pending: Mutex<Pending>,
    open: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    first_stream: Duration,
    idle: Duration,
    active: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
}

/// What an admitted connection is doing, as the layers see it: its open streams, and since
/// when it has had none (admitted, or its last stream ended).
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    /// When the connection last had no stream open, and whether it ever had one.
    quiet: Mutex<(Instant, bool)>,
}

impl Activity {
    fn new(now: Instant) -> Activity {
        Activity { open: AtomicUsize::new(0), quiet: Mutex::new((now, false)) }
    }

    /// A stream opened; it is counted until the guard is dropped (its answer ended).
    pub fn stream(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.quiet.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        StreamGuard(self.clone())
    }

    /// When the connection is to be closed for idleness, given the two timeouts; `None` while
    /// a stream is open.
    pub fn close_at(&self, first_stream: Duration, idle: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let (since, streamed) = *self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        Some(since + if streamed { idle } else { first_stream })
    }
}

/// One open stream of a connection ([`Activity::stream`]).
#[derive(Debug)]
pub struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.lock().unwrap_or_else(|p| p.into_inner()).0 = Instant::now();
        }
    }
}

#[derive(Default)]
struct Pending {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// Why a connection was closed at once (the metric label).
pub type Refusal = &'static str;

/// A handshake in progress; its slot is given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pending = self.admission.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.total = pending.total.saturating_sub(1);
        if let Some(n) = pending.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                pending.by_peer.remove(&self.peer);
            }
        }
    }
}

/// The key of a peer: its IPv4 address, or its IPv6 /64.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Admission {
    /// The limits of `limits`, counted in `metrics`.
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Admission> {
        Arc::new(Admission {
            handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
            max_handshakes: limits.max_handshakes,
            max_per_peer: limits.max_handshakes_per_peer,
            pending: Mutex::default(),
            open: Arc::new(Semaphore::new(limits.max_connections)),
            metrics,
            first_stream: Duration::from_millis(limits.first_stream_timeout_ms),
            idle: Duration::from_millis(limits.idle_connection_timeout_ms),
            active: Mutex::default(),
        })
    }

    /// The activity of the admitted connection from `peer`, if it is still open.
    pub fn activity(&self, peer: SocketAddr) -> Option<Arc<Activity>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).get(&peer).cloned()
    }

    /// Admits `io` from `peer` holding one of `limits.max_connections`.
    fn admit<IO>(self: &Arc<Self>, io: IO, peer: SocketAddr, open: OwnedSemaphorePermit) -> Admitted<IO> {
        let now = Instant::now();
        let activity = Arc::new(Activity::new(now));
        self.active.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, activity.clone());
        self.metrics.connections.inc();
        Admitted {
            io,
            _open: open,
            admission: self.clone(),
            peer,
            activity,
            idle: Box::pin(tokio::time::sleep_until(now + self.first_stream)),
            closed: false,
        }
    }

    /// A handshake slot for a connection from `ip`, or why there is none.
    pub fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let peer = peer_key(ip);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.total >= self.max_handshakes {
            return Err("handshakes");
        }
        let n = pending.by_peer.entry(peer).or_insert(0);
        if *n >= self.max_per_peer {
            return Err("peer_handshakes");
        }
        *n += 1;
        pending.total += 1;
        Ok(Slot { admission: self.clone(), peer })
    }

    /// One of `limits.max_connections`, held by the connection until it closes.
    pub fn open(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.open.clone().try_acquire_owned().map_err(|_| "max_connections")
    }

    /// Handshakes in progress (all peers, and from `ip`'s key).
    pub fn pending(&self, ip: IpAddr) -> (usize, usize) {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        (pending.total, pending.by_peer.get(&peer_key(ip)).copied().unwrap_or(0))
    }
}

/// An admitted connection: holds its slot among `limits.max_connections` until it is dropped;
/// its reads end when it has been idle too long (see the module doc).
pub struct Admitted<IO> {
    io: IO,
    _open: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    /// Fires when the connection may have become idle for too long; checked, then re-armed.
    idle: Pin<Box<Sleep>>,
    closed: bool,
}

impl<IO> Admitted<IO> {
    /// True when the connection is to be closed for idleness (the timer is re-armed otherwise).
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.activity.close_at(self.admission.first_stream, self.admission.idle) {
                Some(at) if at <= now => return true,
                Some(at) => self.idle.as_mut().reset(at),
                // Streams open: look again one idle period later.
                None => self.idle.as_mut().reset(now + self.admission.idle),
            }
        }
        false
    }
}

impl<IO> Drop for Admitted<IO> {
    fn drop(&mut self) {
        self.admission.metrics.connections.dec();
        let mut active = self.admission.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.get(&self.peer).is_some_and(|a| Arc::ptr_eq(a, &self.activity)) {
            active.remove(&self.peer);
        }
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.closed && self.idle_too_long(cx) {
            self.closed = true;
            self.admission.metrics.connection_refused("idle");
            tracing::debug!(peer = %self.peer, "connection closed: idle");
        }
        if self.closed {
            // End of input: the HTTP/2 server closes the connection (no stream is open).
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The plaintext "handshake": the client sends its first bytes (the HTTP/2 preface).
pub async fn first_bytes(tcp: TcpStream) -> io::Result<TcpStream> {
    tcp.readable().await?;
    Ok(tcp)
}

/// Accepts connections on `listener` until the returned stream is dropped; each is admitted as
/// the module doc says, `handshake` turning the TCP stream into what tonic serves.
pub fn incoming<IO, H, Fut>(
    listener: TcpListener,
    admission: Arc<Admission>,
    handshake: H,
) -> ReceiverStream<io::Result<Admitted<IO>>>
where
    IO: Send + 'static,
    H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let accept = async {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let slot = match admission.begin(peer.ip()) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        admission.metrics.connection_refused(reason);
                        tracing::debug!(%peer, reason, "connection closed at once: handshake limit");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let shaking = tokio::time::timeout(admission.handshake_timeout, handshake(tcp));
                let (admission, tx) = (admission.clone(), tx.clone());
                tokio::spawn(async move {
                    let shaken = shaking.await;
                    drop(slot);
                    let io = match shaken {
                        Ok(Ok(io)) => io,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "handshake refused"),
                        Err(_) => return tracing::debug!(%peer, "handshake timed out"),
                    };
                    let open = match admission.open() {
                        Ok(open) => open,
                        Err(reason) => {
                            admission.metrics.connection_refused(reason);
                            return tracing::debug!(%peer, reason, "connection closed at once: connection limit");
                        }
                    };
                    let _ = tx.send(Ok(admission.admit(io, peer, open))).await;
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = tx.closed() => {}
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_handshakes: usize, per_peer: usize, connections: usize) -> Limits {
        let text = format!(
            "listen = \"127.0.0.1:1\"\n[vault]\naddress = \"http://x\"\n[limits]\nmax_handshakes = {max_handshakes}\n\
             max_handshakes_per_peer = {per_peer}\nmax_connections = {connections}\n"
        );
        crate::config::Config::parse(&text).unwrap().limits
    }

    #[test]
    fn handshakes_are_capped_per_peer_and_overall_and_slots_come_back() {
        let a = Admission::new(&limits(5, 2, 1), Arc::new(Metrics::new()));
        let (p1, p2, p3): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let s1 = a.begin(p1).unwrap();
        let s2 = a.begin(p1).unwrap();
        assert_eq!(a.begin(p1).err(), Some("peer_handshakes"), "a third from one peer");
        let _others = (a.begin(p2).unwrap(), a.begin(p2).unwrap(), a.begin(p3).unwrap());
        assert_eq!(a.begin(p3).err(), Some("handshakes"), "five in progress overall");
        drop(s1);
        assert_eq!(a.pending(p1), (4, 1));
        let _s3 = a.begin(p3).unwrap();
        drop(s2);
        assert_eq!(a.pending(p1), (4, 0));
        assert!(
            !a.pending.lock().unwrap().by_peer.contains_key(&peer_key(p1)),
            "no entry for a peer without handshakes"
        );
        // Connections: one slot, given back when the connection closes.
        let open = a.open().unwrap();
        assert_eq!(a.open().err(), Some("max_connections"));
        drop(open);
        assert!(a.open().is_ok());
    }

    #[test]
    fn an_ipv6_peer_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(peer_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_and_busy_ones_are_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let text =
            "listen = \"127.0.0.1:1\"\n[vault]\naddress = \"http://x\"\n[limits]\nfirst_stream_timeout_ms = 1000\n\
                    idle_connection_timeout_ms = 5000\nmax_connections = 2\n";
        let limits = crate::config::Config::parse(text).unwrap().limits;
        let a = Admission::new(&limits, Arc::new(Metrics::new()));
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = a.admit(server, peer, a.open().unwrap());
        let activity = a.activity(peer).expect("registered while admitted");
        // Bytes flow as usual.
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        // A stream opens at 0.5 s and stays open past both timeouts: not closed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stream = activity.stream();
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await;
        assert!(read.is_err(), "a connection with a stream open is not closed: {read:?}");
        // Its last stream ends: closed 5 s later (idle timeout), its reads ending.
        drop(stream);
        let quiet = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await.expect("closed").unwrap();
        assert_eq!(n, 0, "end of input");
        assert_eq!(quiet.elapsed(), Duration::from_secs(5));
        // A connection that never opens a stream: closed after the first-stream timeout.
        let (_client2, server2) = tokio::io::duplex(64);
        let peer2: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let mut silent = a.admit(server2, peer2, a.open().unwrap());
        let t0 = Instant::now();
        assert_eq!(silent.read(&mut buf).await.unwrap(), 0);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert!(a.open().is_err(), "both slots held until the connections are dropped");
        drop((conn, silent));
        assert!(a.activity(peer).is_none() && a.activity(peer2).is_none(), "dropped connections leave the map");
        assert!(a.open().is_ok());
        assert!(a.metrics.render().contains("vaultgate_connections_refused_total{name=\"idle\"} 2"));
    }
}
