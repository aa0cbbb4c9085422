//! Moving bytes once a destination is connected: a CONNECT tunnel (both ways at once, with
//! backpressure, socket to socket through a pipe with `splice(2)`), and an absolute-form
//! request forwarded once through hyper (client side served by hyper's HTTP/1.1 server for
//! framing, origin side by its client over the connection `dest` opened). Both run under the
//! same limits: no byte either way for `idle_timeout`, or `max_duration` in all, ends them.
//! Hop-by-hop headers never cross.
//! Redirects are answers like any other: passed on, never followed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What moved through one exchange, and when anything last did.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte either way.
    last_ms: AtomicU64,
    pub to_origin: AtomicU64,
    pub to_client: AtomicU64,
    /// The answer's status, once there is one (forwarded requests).
    pub status: AtomicU16,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            to_origin: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            status: AtomicU16::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    pub fn bytes(&self) -> (u64, u64) {
        (
            self.to_origin.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// The client's connection, counting what is read from it (to the origin) and written to it.
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Bytes read ahead (the head, or what followed it) and replayed first.
    prefix: Bytes,
}

impl<S> Counted<S> {
    pub fn new(inner: S, activity: Arc<Activity>, prefix: Vec<u8>) -> Counted<S> {
        Counted {
            inner,
            activity,
            prefix: Bytes::from(prefix),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let part = self.prefix.split_to(n);
            buf.put_slice(&part);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.activity.to_origin.fetch_add(n, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.activity
                .to_client
                .fetch_add(*n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// One side closed (or failed) and the other was told.
    Closed,
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// `max_duration` passed.
    TooLong,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Idle => "idle_timeout",
            Ended::TooLong => "max_duration",
        }
    }
}

/// The exchange's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub max: Duration,
}

/// Runs `work` until it ends, nothing moves for `limits.idle`, or `limits.max` passes.
async fn limited(
    activity: &Activity,
    limits: Limits,
    work: impl std::future::Future<Output = ()>,
) -> Ended {
    let idle = async {
        loop {
            let left = limits.idle.saturating_sub(activity.idle());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    tokio::select! {
        () = work => Ended::Closed,
        () = idle => Ended::Idle,
        () = tokio::time::sleep(limits.max) => Ended::TooLong,
    }
}

/// How much one `splice(2)` moves at most, and the capacity asked for each direction's pipe:
/// 4x the default, for about 1.4x the throughput; a user's pipes share a kernel budget
/// (`fs.pipe-user-pages-soft`, 64 MiB by default), past which pipes stay small but work.
const TUNNEL_PIPE: usize = 256 << 10;

/// Copies both ways between `client` and `origin` until both sides are done or a limit hits.
/// The bytes go socket to pipe to socket with `splice(2)`, never through user space; when one
/// side ends its sending, the other's is shut down once everything before it went across.
pub async fn tunnel(
    client: &TcpStream,
    origin: &TcpStream,
    activity: &Activity,
    limits: Limits,
) -> Ended {
    activity.touch();
    let copy = async {
        let up = splice_one_way(client, origin, &activity.to_origin, activity);
        let down = splice_one_way(origin, client, &activity.to_client, activity);
        let _ = tokio::try_join!(up, down);
    };
    limited(activity, limits, copy).await
}

/// Whether `socket` has bytes waiting that `splice` will not take: it stops at TCP urgent data,
/// which a plain read steps over.
fn at_urgent_mark(socket: &TcpStream) -> bool {
    use rustix::net::{RecvFlags, recv};
    let mut one = [0u8; 1];
    let peeked = recv(socket, &mut one[..], RecvFlags::PEEK | RecvFlags::DONTWAIT);
    matches!(peeked, Ok((n, _)) if n > 0)
}

/// Moves everything `from` sends to `to` through a pipe of its own, counting it in `count`;
/// at `from`'s end, shuts down `to`'s sending side.
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> std::io::Result<()> {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // A larger pipe moves more per call; the default still works if it is refused.
    let _ = fcntl_setpipe_size(&pipe_in, TUNNEL_PIPE);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let moved = |n: usize| {
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    };
    loop {
        // `None`: the splice is stuck at TCP urgent data (it never moves past the mark).
        let spliced = from
            .async_io(Interest::READABLE, || {
                // At the mark it answers EAGAIN, or 0 once the sender has ended as well.
                match splice(from, None, &pipe_in, None, TUNNEL_PIPE, flags) {
                    Err(rustix::io::Errno::AGAIN) | Ok(0) if at_urgent_mark(from) => Ok(None),
                    r => r.map(Some).map_err(Into::into),
                }
            })
            .await?;
        // Spliced into the pipe, to drain; or sent on already, past the mark.
        let (n, in_pipe) = match spliced {
            Some(n) => (n, n),
            None => (step_over_mark(from, to, moved).await?, 0),
        };
        if n == 0 {
            // The sender is done: so is the receiver's side of this direction.
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = in_pipe;
        while left > 0 {
            let sent = write_some(to, || splice(&pipe_out, None, to, None, left, flags)).await?;
            left -= sent;
            moved(sent);
        }
    }
}

/// Past TCP urgent data with a plain read (as `read(2)` always stepped over it), and what it
/// read sent on: the bytes moved, 0 at the sender's end. The pipe is empty meanwhile.
async fn step_over_mark(
    from: &TcpStream,
    to: &TcpStream,
    moved: impl Fn(usize),
) -> std::io::Result<usize> {
    use rustix::net::{RecvFlags, SendFlags, recv, send};
    let mut buf = [0u8; 4096];
    let (got, _) = from
        .async_io(Interest::READABLE, || {
            recv(from, &mut buf[..], RecvFlags::empty()).map_err(Into::into)
        })
        .await?;
    let mut part = &buf[..got];
    while !part.is_empty() {
        let sent = write_some(to, || send(to, part, SendFlags::NOSIGNAL)).await?;
        part = &part[sent..];
        moved(sent);
    }
    Ok(got)
}

/// One write to `to` once it is writable; writing nothing is an error.
async fn write_some(
    to: &TcpStream,
    mut op: impl FnMut() -> rustix::io::Result<usize>,
) -> std::io::Result<usize> {
    match to
        .async_io(Interest::WRITABLE, || op().map_err(Into::into))
        .await?
    {
        0 => Err(std::io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// The headers that describe one connection, not the message (RFC 9110 7.6.1), and the
/// proxy's own credentials: none crosses the gateway.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes the hop-by-hop headers, and every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// A short `text/plain` answer from the gateway itself.
pub fn text(status: u16, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A forwarded request's way through `egress.proxy`: the checked destination (`host:port`),
/// which the request's target is rebuilt from, and the proxy's own credentials.
#[derive(Clone)]
pub struct Via {
    pub authority: String,
    pub auth: Option<HeaderValue>,
}

/// Forwards the one request on `client` (its head already checked, replayed from the
/// prefix) to `origin` (or through `via`), and its answer back; then the connection closes.
pub async fn forward(
    client: Counted<TcpStream>,
    origin: TcpStream,
    via: Option<Via>,
    activity: Arc<Activity>,
    limits: Limits,
    max_head: usize,
) -> Ended {
    let work = async {
        let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(origin)).await
        {
            Ok(x) => x,
            Err(_) => return,
        };
        let origin_conn = tokio::spawn(conn);
        // Taken by the first request: the one whose head was checked. hyper serves no second
        // one without keep-alive; were it to, that request would get 400, not the origin.
        let sender = Arc::new(tokio::sync::Mutex::new(Some(sender)));
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let sender = sender.clone();
            let seen = seen.clone();
            let via = via.clone();
            async move {
                // Only the origin's answers are recorded; the gateway's own leave 0 (failed).
                let answer = match send(&sender, req, via.as_ref()).await {
                    Ok(answer) => {
                        seen.status
                            .store(answer.status().as_u16(), Ordering::Relaxed);
                        answer
                    }
                    Err(own) => own,
                };
                Ok::<_, std::convert::Infallible>(answer)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .max_buf_size(max_head.max(8192))
            .serve_connection(TokioIo::new(client), service)
            .await;
        origin_conn.abort();
    };
    limited(&activity, limits, work).await
}

/// The request, hop-by-hop headers removed and in origin form, to the origin (through `via`:
/// in absolute form to the checked destination, `Host` that destination, with the proxy's
/// credentials); its answer with hop-by-hop headers removed, or (`Err`) the gateway's own
/// answer naming the failure.
async fn send(
    sender: &tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Incoming>>>,
    req: Request<Incoming>,
    via: Option<&Via>,
) -> Result<Response<Body>, Response<Body>> {
    let Some(mut sender) = sender.lock().await.take() else {
        return Err(text(
            400,
            "wharf gateway: one request per connection".into(),
        ));
    };
    let (mut parts, body) = req.into_parts();
    let authority = parts.uri.authority().map(|a| a.to_string());
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Some(Ok(host)) = authority.map(|a| HeaderValue::from_str(&a))
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.version = http::Version::HTTP_11;
    let target = match via {
        None => path,
        Some(via) => {
            let host = HeaderValue::from_str(&via.authority)
                .map_err(|_| text(400, "wharf gateway: the destination does not parse".into()))?;
            parts.headers.insert(header::HOST, host);
            // The proxy must forward, never answer as the final recipient (it would reflect
            // the request, its credentials included, in a TRACE or OPTIONS answer).
            parts.headers.remove(header::MAX_FORWARDS);
            if let Some(auth) = &via.auth {
                parts
                    .headers
                    .insert(header::PROXY_AUTHORIZATION, auth.clone());
            }
            format!("http://{}{path}", via.authority)
        }
    };
    parts.uri = target
        .parse()
        .map_err(|_| text(400, "wharf gateway: the request path does not parse".into()))?;
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) if via.is_some() && from_the_proxy(&resp) => {
            // The proxy's own answer (its error pages may quote the request it was sent, the
            // credentials wharf added included): named, never passed on.
            Err(text(
                502,
                format!(
                    "wharf gateway: egress.proxy answered {} itself",
                    resp.status().as_u16()
                ),
            ))
        }
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(_) => Err(text(
            502,
            "wharf gateway: the origin closed or sent an answer that does not parse".into(),
        )),
    }
}

/// Whether `resp` is the proxy's own answer rather than the destination's: a `407` (for the
/// proxy's credentials), or an error page marked as the proxy's (Squid's `X-Squid-Error`).
fn from_the_proxy<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED
        || resp.headers().contains_key("x-squid-error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic dTpw"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("authorization", "Bearer origin-token"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept", "authorization"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_with_nothing_moving_ends_at_the_idle_limit() {
        let activity = Activity::new();
        let limits = Limits {
            idle: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        let started = Instant::now();
        let ended = limited(&activity, limits, std::future::pending()).await;
        assert_eq!(ended, Ended::Idle);
        assert_eq!(started.elapsed().as_secs(), 5);
        let limits = Limits {
            idle: Duration::from_secs(50),
            max: Duration::from_secs(7),
        };
        assert_eq!(
            limited(&activity, limits, std::future::pending()).await,
            Ended::TooLong
        );
    }
}
