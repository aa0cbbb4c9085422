//! The listener loop: plain HTTP or TLS (rustls, certificate reloadable), HTTP/1.1 and HTTP/2,
//! with limits on header size and a read timeout on request headers (slowloris), the client's
//! address handed to the router, and graceful shutdown that drains in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::app::{AppState, router};

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
pub async fn run(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsReloader>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Limits {
        header_read_timeout: state.config.server.header_read_timeout,
        max_header_size: state.config.server.max_header_size.0 as usize,
    };
    let workers = state.config.server.worker_count();
    let background = state.spawn_background();
    let conns = Arc::new(Conns {
        app: router(state.clone()),
        builder: http_builder(limits),
        tls,
        limits,
    });
    if workers <= 1 {
        accept_loop(listener, &conns, shutdown).await;
        state.finish_fills(FILL_GRACE).await;
    } else {
        let listener = listener.into_std()?;
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
            threads.push(spawn_worker(
                i,
                listener.try_clone()?,
                conns.clone(),
                signals,
            )?);
        }
        drop(listener);
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
    background.abort();
    state.flush_atimes().await;
    Ok(())
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
    listener: std::net::TcpListener,
    conns: Arc<Conns>,
    signals: WorkerSignals,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let WorkerSignals {
        mut stop,
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
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let stop = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        accept_loop(listener, &conns, stop).await;
                    }
                    Err(e) => tracing::error!(error = %e, "worker cannot listen"),
                }
                let _ = done.send(());
                let _ = exit.wait_for(|e| *e).await;
            })
        })
}

/// One event loop's accept loop: serves every connection it accepts until `shutdown`
/// resolves, then drains them.
async fn accept_loop(
    listener: TcpListener,
    conns: &Arc<Conns>,
    shutdown: impl Future<Output = ()>,
) {
    let Conns {
        app, tls, limits, ..
    } = &**conns;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = service_for(app.clone(), peer);
        let ctx = conns.clone();
        let timeout = limits.header_read_timeout;
        match &tls {
            None => {
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // A client must start its request in time, or it holds a connection for
                    // nothing (hyper's own header timer starts only after version detection).
                    let Some(io) = Prefixed::read_start(stream, timeout).await else {
                        return;
                    };
                    let conn = ctx
                        .builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
            Some(t) => {
                let acceptor = t.acceptor();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls_stream =
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let Some(io) = Prefixed::read_start(tls_stream, timeout).await else {
                        return;
                    };
                    let conn = ctx
                        .builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
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
        Some(Prefixed {
            prefix,
            pos: 0,
            inner,
        })
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

/// The router as a hyper service, with the peer address available as `ConnectInfo`.
fn service_for(
    app: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(axum::body::Body::new))
    })
}
