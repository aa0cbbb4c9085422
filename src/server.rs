//! The listener loop: plain HTTP or TLS (rustls, certificate reloadable), HTTP/1.1 and HTTP/2,
//! with limits on header size, a read timeout on request headers (slowloris) and an idle timeout
//! on connections with no request in flight, the client's address handed to the router, and
//! graceful shutdown that drains in-flight requests. Several listeners, TCP and Unix (`listen`),
//! are served alike; a Unix socket's connections are plain HTTP through hyper (no TLS, no
//! `sendfile` fast path), and their requests carry `net::UnixPeer` instead of an address.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::app::AppState;
use crate::metrics::Metrics;
use crate::web::router;

mod fast;
pub mod listen;
mod sockets;

use listen::Listener;

/// A TLS server configuration that can be swapped while serving (SIGHUP).
#[derive(Clone)]
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl TlsReloader {
    pub fn load(cert: &Path, key: &Path) -> Result<TlsReloader, String> {
        let config = load_tls(cert, key)?;
        Ok(TlsReloader {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// Re-reads certificate and key; on error the old ones stay in use.
    pub fn reload(&self) -> Result<(), String> {
        let config = load_tls(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {}: no certificate found", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Connection limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub max_streams: u32,
    pub max_header_size: usize,
}

/// Accepts connections until `shutdown` resolves, then waits for in-flight requests and for
/// fills still running (at most `FILL_GRACE`).
///
/// With `server.workers` above 1, each worker is a thread with its own single-threaded event
/// loop accepting from the same socket, as nginx's worker processes do: a connection stays on
/// the thread that accepted it, so a request costs no cross-thread wake-ups (on a warm manifest
/// hit that halved the CPU time per request compared with one work-stealing runtime).
/// Tasks a request spawns (fills) run on its worker; workers live until every fill is done.
/// How long a starting replica waits for the shared tier's records before serving.
const SHARED_JOIN: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsReloader>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_on(
        vec![Listener::Tcp(listener.into_std()?)],
        state,
        tls,
        shutdown,
    )
    .await
}

/// `run` on several listeners (TCP and Unix), every worker accepting from each of them.
pub async fn run_on(
    listeners: Vec<Listener>,
    state: AppState,
    tls: Option<TlsReloader>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Limits {
        header_read_timeout: state.config.server.header_read_timeout,
        idle_timeout: state.config.server.idle_timeout,
        send_timeout: state.config.server.send_timeout,
        max_streams: state.config.server.max_streams_per_connection,
        max_header_size: state.config.server.max_header_size.0 as usize,
    };
    for l in &listeners {
        l.set_nonblocking()?;
    }
    let workers = state.config.server.worker_count();
    state.start_shared(SHARED_JOIN).await;
    let background = state.spawn_background();
    let conns = Arc::new(Conns {
        app: router(state.clone()),
        builder: http_builder(limits),
        tls,
        limits,
        fast: state.config.server.zero_copy,
        metrics: state.metrics.clone(),
        sockets: sockets::Sockets::new(state.config.server.max_connections, state.metrics.clone()),
    });
    if workers <= 1 {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let loops = futures_util::future::join_all(
            listeners
                .into_iter()
                .map(|l| serve_listener(l, &conns, stop_rx.clone())),
        );
        tokio::join!(stop, loops);
        state.finish_fills(FILL_GRACE).await;
    } else {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
        let mut drained = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            drained.push(done_rx);
            let signals = WorkerSignals {
                stop: stop_rx.clone(),
                done: done_tx,
                exit: exit_rx.clone(),
            };
            let own = listeners
                .iter()
                .map(Listener::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            threads.push(spawn_worker(i, own, conns.clone(), signals)?);
        }
        drop(listeners);
        shutdown.await;
        let _ = stop_tx.send(true);
        for d in drained {
            let _ = d.await;
        }
        state.finish_fills(FILL_GRACE).await;
        let _ = exit_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
    background.stop(FILL_GRACE).await;
    state.flush_atimes().await;
    crate::web::flush_log();
    Ok(())
}

/// One listener on this event loop, accepting until `stop` turns true.
async fn serve_listener(listener: Listener, conns: &Arc<Conns>, mut stop: watch::Receiver<bool>) {
    let accepting = match listener {
        Listener::Tcp(l) => TcpListener::from_std(l).map(Accepting::Tcp),
        Listener::Unix(l) => UnixListener::from_std(l).map(Accepting::Unix),
    };
    match accepting {
        Ok(a) => {
            let stop = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            accept_loop(a, conns, stop).await;
        }
        Err(e) => tracing::error!(error = %e, "cannot listen on this event loop"),
    }
}

/// A listener on an event loop.
enum Accepting {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connection it accepted.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Accepting {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Accepting::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            Accepting::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Who is on the other end of a connection: a TCP address, or a Unix socket's peer (whom the
/// socket file's permissions admitted; it has no address).
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

fn http_builder(limits: Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_size as u32)
        // A client that stops answering pings is dropped.
        .keep_alive_interval(Some(limits.header_read_timeout.max(Duration::from_secs(1))))
        .keep_alive_timeout(limits.header_read_timeout.max(Duration::from_secs(1)));
    builder
}

/// What serving a connection needs, shared by every worker.
struct Conns {
    app: Router,
    builder: Builder<TokioExecutor>,
    tls: Option<TlsReloader>,
    limits: Limits,
    /// Plain HTTP/1.1 through `fast` (`server.zero_copy`), else every request through hyper.
    fast: bool,
    metrics: Arc<Metrics>,
    /// Open connections, shed when the descriptors run short.
    sockets: Arc<sockets::Sockets>,
}

/// How the server steers a worker: `stop` accepting, report the connections `done`, `exit`.
struct WorkerSignals {
    stop: tokio::sync::watch::Receiver<bool>,
    done: tokio::sync::oneshot::Sender<()>,
    exit: tokio::sync::watch::Receiver<bool>,
}

/// A worker thread with its own single-threaded event loop accepting from `listener`. After
/// `stop` it drains its connections and reports `done`, then keeps the loop (and the fills on
/// it) until `exit`.
fn spawn_worker(
    i: usize,
    listeners: Vec<Listener>,
    conns: Arc<Conns>,
    signals: WorkerSignals,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let WorkerSignals {
        stop,
        done,
        mut exit,
    } = signals;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("wharf-worker-{i}"))
        .spawn(move || {
            rt.block_on(async move {
                futures_util::future::join_all(
                    listeners
                        .into_iter()
                        .map(|l| serve_listener(l, &conns, stop.clone())),
                )
                .await;
                let _ = done.send(());
                let _ = exit.wait_for(|e| *e).await;
            })
        })
}

/// One event loop's accept loop: serves every connection it accepts until `shutdown`
/// resolves, then drains them.
async fn accept_loop(listener: Accepting, conns: &Arc<Conns>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender: when all are gone, the receiver sees the end.
    let (live_tx, mut live_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: make room, back off instead of spinning.
                    conns.sockets.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // At the limit with nothing idle to close instead: this one is closed at once.
        let Some(reg) = conns.sockets.register() else {
            continue;
        };
        let ctx = conns.clone();
        let (stop, live) = (stop_rx.clone(), live_tx.clone());
        let timeout = conns.limits.header_read_timeout;
        let slot = reg.slot.clone();
        let (stream, peer) = match accepted {
            Accepted::Tcp(stream, peer) => (stream, peer),
            Accepted::Unix(stream) => {
                // Plain HTTP through hyper: the fast path and TLS are TCP's.
                let task = tokio::spawn(async move {
                    if let Some(io) = Prefixed::read_start(stream, timeout).await {
                        serve_connection(&ctx, io, Peer::Unix, stop, &reg.slot).await;
                    }
                    drop((live, reg));
                });
                slot.set_task(task.abort_handle());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let task = match conns.tls.as_ref().map(TlsReloader::acceptor) {
            None if conns.fast => tokio::spawn(async move {
                let mut stop = stop;
                if let fast::Outcome::Hyper(io) =
                    fast::serve(&ctx, stream, peer, &mut stop, &reg.slot).await
                {
                    serve_connection(&ctx, io, Peer::Tcp(peer), stop, &reg.slot).await;
                }
                drop((live, reg));
            }),
            None => tokio::spawn(async move {
                // A client must start its request in time, or it holds a connection for
                // nothing (hyper's own header timer starts only after version detection).
                if let Some(io) = Prefixed::read_start(stream, timeout).await {
                    serve_connection(&ctx, io, Peer::Tcp(peer), stop, &reg.slot).await;
                }
                drop((live, reg));
            }),
            Some(acceptor) => tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        if let Some(io) = Prefixed::read_start(tls_stream, timeout).await {
                            serve_connection(&ctx, io, Peer::Tcp(peer), stop, &reg.slot).await;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {}
                }
                drop((live, reg));
            }),
        };
        slot.set_task(task.abort_handle());
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(live_tx);
    let _ = live_rx.recv().await;
}

/// Serves one connection until it ends, the server stops (then in-flight requests finish), or
/// no request has been in flight for `server.idle_timeout`.
async fn serve_connection<I>(
    conns: &Conns,
    io: I,
    peer: Peer,
    mut stop: watch::Receiver<bool>,
    slot: &Arc<sockets::Slot>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(slot.clone()));
    let svc = service_for(
        conns.app.clone(),
        peer,
        activity.clone(),
        conns.metrics.clone(),
    );
    let conn = conns
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
        _ = activity.idle_for(conns.limits.idle_timeout) => {
            tracing::debug!(%peer, "closing a connection idle for server.idle_timeout");
        }
        _ = activity.stalled_for(conns.limits.send_timeout) => {
            // Not gracefully: a graceful close would wait for the very responses it stalls.
            tracing::info!(%peer, "closing a connection whose client stopped reading (server.send_timeout)");
            return;
        }
    }
    // A connection opened just before the stop has its first request on the way: answer it
    // (a restart loses no connection attempt), waiting at most `FIRST_REQUEST_GRACE`.
    if !activity.seen() {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = activity.first_request() => {}
            _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// How long, once the server stops, a connection that has sent no request yet is given to
/// send its first.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Requests in flight on one connection, and since when there have been none; the response
/// bodies being sent, each with when it last moved.
struct Activity {
    in_flight: AtomicUsize,
    /// A request has arrived.
    seen: std::sync::atomic::AtomicBool,
    /// When the last request ended, in milliseconds since `start`.
    idle_since_ms: AtomicU64,
    /// One clock per response body: milliseconds since `start` when hyper last asked it for
    /// data, or `WAITING` while it waits on its source (a fill), which is no stall of the
    /// client's. Each body is judged on its own: one that moves says nothing of another.
    bodies: Mutex<Vec<Arc<AtomicU64>>>,
    start: Instant,
    /// The connection's entry among the open ones (busy while a request is in flight).
    slot: Arc<sockets::Slot>,
}

/// A body's clock while it waits on its source.
const WAITING: u64 = u64::MAX;

impl Activity {
    fn new(slot: Arc<sockets::Slot>) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            seen: std::sync::atomic::AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            bodies: Mutex::default(),
            start: Instant::now(),
            slot,
        }
    }

    /// Whether a request has arrived on this connection.
    fn seen(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    /// Resolves once the first request has arrived.
    async fn first_request(&self) {
        while !self.seen() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(WAITING - 1)
    }

    fn add_body(&self) -> Arc<AtomicU64> {
        let clock = Arc::new(AtomicU64::new(self.now_ms()));
        lock(&self.bodies).push(clock.clone());
        clock
    }

    fn remove_body(&self, clock: &Arc<AtomicU64>) {
        lock(&self.bodies).retain(|c| !Arc::ptr_eq(c, clock));
    }

    /// Resolves once some response body that could be sent has not been asked for data for
    /// `limit`: its client stopped reading it (a zero HTTP/2 window, a full TCP buffer).
    async fn stalled_for(&self, limit: Duration) {
        let step = (limit / 4).max(Duration::from_millis(100));
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(step).await;
            let now = self.now_ms();
            let stalled = lock(&self.bodies).iter().any(|c| {
                let t = c.load(Ordering::Relaxed);
                t != WAITING && now.saturating_sub(t) >= limit_ms
            });
            if stalled {
                return;
            }
        }
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        // Checked every quarter of the limit, so a request costs no wake-up of this task.
        let step = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(step).await;
            let since = self.idle_since_ms.load(Ordering::Acquire);
            if self.in_flight.load(Ordering::Acquire) == 0
                && self.now_ms().saturating_sub(since) >= limit_ms
            {
                return;
            }
        }
    }
}

/// One request in flight, from the request's arrival until its response body is dropped.
/// While `busy` is held, the connection is not shed for want of descriptors.
struct InFlight(Arc<Activity>, Option<sockets::Busy>);

impl InFlight {
    fn start(a: Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.seen.store(true, Ordering::Release);
        let busy = a.slot.busy();
        InFlight(a, Some(busy))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The time first, then the count: `idle_for` never sees 0 with an older time.
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until hyper is done with it,
/// and keeps its own clock of when it was last read from (`Activity::stalled_for`).
pub struct Tracked {
    inner: axum::body::Body,
    metrics: Arc<Metrics>,
    /// Only for bodies that can hold a file open or stream for long (over `UNTIMED` bytes, or
    /// of unknown length): a small answer in memory costs a stalled client nothing but memory.
    clock: Option<Arc<AtomicU64>>,
    in_flight: InFlight,
}

/// Largest response body sent without a stall clock (a manifest, an error, a list).
const UNTIMED: u64 = 64 << 10;

impl Tracked {
    fn new(inner: axum::body::Body, in_flight: InFlight, metrics: Arc<Metrics>) -> Tracked {
        let small = hyper::body::Body::size_hint(&inner)
            .exact()
            .is_some_and(|n| n <= UNTIMED);
        let clock = (!small).then(|| in_flight.0.add_body());
        metrics.count_body(false, 0);
        let mut in_flight = in_flight;
        if small {
            // A small answer is made; all it waits for is the client. A client that never
            // reads it (an HTTP/2 window of zero) must not keep its connection from being shed.
            in_flight.1 = None;
        }
        Tracked {
            inner,
            metrics,
            clock,
            in_flight,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(clock) = &self.clock {
            self.in_flight.0.remove_body(clock);
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(clock) = &this.clock {
            // Pending: waiting on its source, not on the client; ready: it just moved.
            let t = if r.is_pending() {
                WAITING
            } else {
                this.in_flight.0.now_ms()
            };
            clock.store(t, Ordering::Relaxed);
        }
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(data) = frame.data_ref()
        {
            this.metrics.add_body_bytes(false, data.len() as u64);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a shutdown waits for fills still running once every connection is closed: a fill
/// whose bytes a client already has is being made durable and takes moments; one still
/// downloading for nobody is abandoned (its temp file is swept at the next start).
const FILL_GRACE: Duration = Duration::from_secs(10);

/// A connection whose first bytes were read ahead (to enforce a deadline on the start of the
/// first request) and are replayed to hyper before the rest.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` (bytes already read from it) read first.
    fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> Prefixed<S> {
    /// Reads until the client has sent a line or the 24 bytes of an HTTP/2 preface, within
    /// `timeout`; `None` when it does not (or closes).
    async fn read_start(mut inner: S, timeout: Duration) -> Option<Prefixed<S>> {
        use tokio::io::AsyncReadExt;
        let mut prefix = Vec::with_capacity(1024);
        let read = async {
            let mut buf = [0u8; 1024];
            // HTTP/1: a whole request line. HTTP/2: the whole 24-byte preface (whose first
            // line alone would look like a request line).
            while prefix.len() < 24 && (prefix.starts_with(b"PRI ") || !prefix.contains(&b'\n')) {
                let n = inner.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                prefix.extend_from_slice(&buf[..n]);
            }
            Some(())
        };
        tokio::time::timeout(timeout, read).await.ok()??;
        Some(Prefixed::new(prefix, inner))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service, with the peer address available as `ConnectInfo` and each
/// request counted in the connection's `activity` until its response body is done.
fn service_for(
    app: Router,
    peer: Peer,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<Tracked>, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::start(activity.clone());
        match peer {
            Peer::Tcp(addr) => {
                req.extensions_mut().insert(ConnectInfo(addr));
            }
            Peer::Unix => {
                req.extensions_mut().insert(crate::net::UnixPeer);
            }
        }
        let resp = app.clone().oneshot(req.map(axum::body::Body::new));
        let metrics = metrics.clone();
        async move {
            let resp = resp.await?;
            Ok(resp.map(|inner| Tracked::new(inner, in_flight, metrics)))
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
