//! The plain HTTP/1.1 fast path: wharf reads and writes simple requests itself so a stored
//! file can go from the page cache to the socket with `sendfile(2)`, which hyper cannot do.
//!
//! Every request still runs through the same router (guard, access, visibility, metrics, the
//! request span); only the framing is ours. A request qualifies when it is an HTTP/1.1 `GET` or
//! `HEAD` without a body, `Expect` or `Upgrade`, and its head parses strictly. Anything else,
//! and every doubt, hands the connection with the bytes read so far to hyper for the rest of
//! its life, so HTTP/2, request bodies and odd requests keep hyper's behaviour. A response
//! carrying a `Sendfile` (a stored blob or Go module file, or a blob being filled) is sent with `sendfile`
//! from the file; others are written from their body, with `Content-Length` or chunked.
//!
//! Limits as hyper's: each head must arrive within `header_read_timeout` and fit
//! `max_header_size` (else hyper answers it), a write that makes no progress for `send_timeout`
//! closes the connection, and after shutdown starts the request in flight finishes and the
//! connection closes.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use bytes::BytesMut;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt as _;

use super::{Conns, Prefixed};
use crate::cache::{CHUNK, Sendfile, Span};
use crate::metrics::SentBytes;

/// Headers one request may carry on the fast path (more: hyper decides).
const MAX_HEADERS: usize = 64;

/// Bodies up to this size are written with their head in one write.
const SMALL_BODY: u64 = 64 << 10;

/// Largest `sendfile` call; between calls the next part is checked to be in the page cache.
/// Measured against 128 KiB-4 MiB (one 256 MiB hit over loopback, 2-core AMD EPYC): 512 KiB
/// moved 1.0-1.3x the bytes of 4 MiB per second and per CPU second, for 1 and 8 streams alike.
const SENDFILE_STEP: usize = 512 << 10;

/// What became of a connection's fast path.
pub(super) enum Outcome {
    /// The connection is done (closed by the client, a timeout, an error, shutdown).
    Closed,
    /// Hyper serves the rest, starting with these bytes.
    Hyper(Prefixed<TcpStream>),
}

/// Serves requests on `stream` until it closes or a request needs hyper.
pub(super) async fn serve(
    conns: &Conns,
    mut stream: TcpStream,
    peer: SocketAddr,
    stop: &mut watch::Receiver<bool>,
    slot: &Arc<super::sockets::Slot>,
) -> Outcome {
    let limits = conns.limits;
    let mut buf = BytesMut::with_capacity(4096);
    let mut first = true;
    loop {
        let head_len = match read_head(&mut stream, &mut buf, &limits, first, stop).await {
            Head::Complete(n) => n,
            Head::Closed => return Outcome::Closed,
            Head::Other => return Outcome::Hyper(Prefixed::new(buf.to_vec(), stream)),
        };
        first = false;
        let Some((req, keep_alive)) = parse(&buf[..head_len], peer) else {
            return Outcome::Hyper(Prefixed::new(buf.to_vec(), stream));
        };
        let _ = buf.split_to(head_len);
        let _busy = slot.busy();
        let head = req.method() == Method::HEAD;
        let Ok(resp) = conns.app.clone().oneshot(req).await;
        let keep_alive = keep_alive && !*stop.borrow();
        if respond(conns, &mut stream, resp, head, keep_alive)
            .await
            .is_err()
            || !keep_alive
        {
            return Outcome::Closed;
        }
    }
}

enum Head {
    /// A whole head of this many bytes is at the start of the buffer.
    Complete(usize),
    Closed,
    /// Not for the fast path (too large, not HTTP/1): hyper takes over.
    Other,
}

/// The HTTP/2 connection preface; hyper takes a connection that starts with it once it is whole
/// (hyper's own timer starts only after it).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until `buf` holds a whole request head, within `header_read_timeout` of starting to
/// wait for it (as hyper does, for a kept-alive connection too). Shutdown closes a connection
/// that is between requests.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: &super::Limits,
    first: bool,
    stop: &mut watch::Receiver<bool>,
) -> Head {
    let mut deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let mut searched = 0;
    // A new connection's first request may be on its way when the server stops: it is
    // answered (`FIRST_REQUEST_GRACE`); a kept-alive one between requests is closed.
    let mut graced = false;
    loop {
        let preface = buf.len().min(PREFACE.len());
        if preface > 0 && buf[..preface] == PREFACE[..preface] {
            // HTTP/2 only from a connection's start, as hyper has it: later, the connection
            // is closed rather than switched.
            if !first {
                return Head::Closed;
            }
            if buf.len() >= PREFACE.len() {
                return Head::Other;
            }
        } else if let Some(end) = find_head_end(buf, searched) {
            // Over the limit however it arrived: hyper answers it (431).
            if end > limits.max_header_size {
                return Head::Other;
            }
            return Head::Complete(end);
        } else if buf.len() > limits.max_header_size || !plausible(buf) {
            // Too much, or not HTTP/1 at all (a TLS ClientHello on the plain port, which
            // clients probing https first send): hyper answers at once, as it always did.
            return Head::Other;
        } else {
            searched = buf.len().saturating_sub(2);
        }
        buf.reserve(4096);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => r,
            _ = stop.wait_for(|s| *s), if buf.is_empty() && !graced => {
                if !first {
                    return Head::Closed;
                }
                graced = true;
                let grace = tokio::time::Instant::now() + super::FIRST_REQUEST_GRACE;
                deadline = deadline.min(grace);
                continue;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// The end of the first blank line (`\r\n\r\n`, or with bare `\n` line ends, which hyper
/// accepts too) whose first `\n` is at or after `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match &rest[i + 1..] {
            [b'\n', ..] => Some(from + i + 2),
            [b'\r', b'\n', ..] => Some(from + i + 3),
            _ => None,
        }
    })
}

/// Whether an incomplete head is still a valid start of an HTTP/1 request.
fn plausible(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    matches!(
        httparse::Request::new(&mut headers).parse(buf),
        Ok(httparse::Status::Partial)
    ) || buf.is_empty()
}

/// A request the fast path takes, and whether the connection stays open after it; `None` for
/// anything hyper should see.
fn parse(head: &[u8], peer: SocketAddr) -> Option<(Request<axum::body::Body>, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()) {
        return None;
    }
    if parsed.version != Some(1) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let path = parsed.path?;
    if !path.starts_with('/') {
        return None;
    }
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .version(http::Version::HTTP_11);
    let mut keep_alive = true;
    for h in parsed.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
        {
            return None;
        }
        if name == header::CONNECTION {
            for token in value.to_str().ok()?.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if !token.eq_ignore_ascii_case("keep-alive") {
                    return None;
                }
            }
        }
        req = req.header(name, value);
    }
    let mut req = req.body(axum::body::Body::empty()).ok()?;
    req.extensions_mut().insert(ConnectInfo(peer));
    Some((req, keep_alive))
}

/// Writes `resp`; `Err` when the connection must close (the client went away, a stall, a body
/// that failed: a cut response is never completed).
async fn respond(
    conns: &Conns,
    stream: &mut TcpStream,
    resp: Response<axum::body::Body>,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let send_timeout = conns.limits.send_timeout;
    let (mut parts, body) = resp.into_parts();
    let sendable = parts.extensions.remove::<Sendfile>();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let exact = hyper::body::Body::size_hint(&body).exact();
    let length = if no_body {
        declared
    } else {
        declared.or(exact)
    };
    let chunked = !no_body && length.is_none();
    if !no_body && declared.is_none() {
        if let Some(n) = exact {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        } else {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
    }
    if !keep_alive {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut out = Vec::with_capacity(512);
    write_head(&mut out, status, &parts.headers);
    if no_body {
        return send_all(stream, &out, send_timeout).await;
    }
    // A blob body of exactly the announced length: sent from its file, as a fill makes it
    // available (never its last byte before it is verified).
    if let Some(Sendfile(mut b)) = sendable.filter(|s| !chunked && s.0.remaining() == length) {
        send_all_more(stream, &out, send_timeout).await?;
        let mut sent = 0;
        let result = async {
            while let Some(span) = b.next_span().await? {
                match span {
                    Span::File(file, from, to) => {
                        sendfile(stream, &file, from, to, send_timeout, &mut sent).await?;
                        b.advance(to - from);
                    }
                    // The rest of a fill whose disk ran full, from the source.
                    Span::Bytes(data) => {
                        send_all(stream, &data, send_timeout).await?;
                        sent += data.len() as u64;
                    }
                }
            }
            Ok(())
        }
        .await;
        // Counted as far as it got, also when it was cut.
        conns.metrics.count_body(true, sent);
        if let Some(SentBytes(n)) = parts.extensions.get::<SentBytes>() {
            n.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        }
        return result;
    }
    conns.metrics.count_body(false, 0);
    // Small bodies of known length go with their head in one write.
    if length.is_some_and(|n| n <= SMALL_BODY) {
        let data = body
            .collect()
            .await
            .map_err(|_| io::Error::other("response body failed"))?
            .to_bytes();
        if Some(data.len() as u64) != length {
            return Err(io::Error::other("response body does not match its length"));
        }
        out.extend_from_slice(&data);
        conns.metrics.add_body_bytes(false, data.len() as u64);
        return send_all(stream, &out, send_timeout).await;
    }
    send_all(stream, &out, send_timeout).await?;
    let mut body = body;
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| io::Error::other("response body failed"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|n| sent > n) {
            return Err(io::Error::other("response body longer than its length"));
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            send_all(stream, size.as_bytes(), send_timeout).await?;
            send_all(stream, &data, send_timeout).await?;
            send_all(stream, b"\r\n", send_timeout).await?;
        } else {
            send_all(stream, &data, send_timeout).await?;
        }
        conns.metrics.add_body_bytes(false, data.len() as u64);
    }
    if chunked {
        return send_all(stream, b"0\r\n\r\n", send_timeout).await;
    }
    if length != Some(sent) {
        return Err(io::Error::other("response body shorter than its length"));
    }
    Ok(())
}

/// The status line and headers, with `date` when the response has none.
fn write_head(out: &mut Vec<u8>, status: StatusCode, headers: &http::HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes all of `data`; each write must make progress within `limit`.
async fn send_all(stream: &mut TcpStream, data: &[u8], limit: Duration) -> io::Result<()> {
    send_flags(stream, data, limit, rustix::net::SendFlags::empty()).await
}

/// As `send_all`, telling the kernel more follows at once (the file after its head), so a small
/// head and its body leave in the same packets.
async fn send_all_more(stream: &mut TcpStream, data: &[u8], limit: Duration) -> io::Result<()> {
    send_flags(stream, data, limit, rustix::net::SendFlags::MORE).await
}

async fn send_flags(
    stream: &mut TcpStream,
    mut data: &[u8],
    limit: Duration,
    flags: rustix::net::SendFlags,
) -> io::Result<()> {
    while !data.is_empty() {
        let sent = writable(stream, limit, || {
            rustix::net::send(
                stream.as_fd(),
                data,
                flags | rustix::net::SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        })
        .await?;
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[sent..];
    }
    Ok(())
}

/// Runs `op` once the socket is writable, again while it would block; `limit` without progress
/// is a stalled client.
async fn writable<T>(
    stream: &TcpStream,
    limit: Duration,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.writable()).await {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "client stalled")),
            Ok(r) => r?,
        }
        match stream.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Sends `from..to` of `file` to the socket. A part not in the page cache is read on the
/// blocking pool and copied instead, so a disk read never stalls the event loop.
async fn sendfile(
    stream: &mut TcpStream,
    file: &Arc<File>,
    from: u64,
    to: u64,
    limit: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let mut pos = from;
    while pos < to {
        let n = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_STEP);
        if cached(file, pos, n) {
            let moved = writable(stream, limit, || {
                let mut off = pos;
                rustix::fs::sendfile(stream.as_fd(), file.as_fd(), Some(&mut off), n)
                    .map_err(io::Error::from)
            })
            .await? as u64;
            if moved == 0 {
                // The file is shorter than the response: never pad, never finish.
                return Err(io::Error::other("file shorter than the response"));
            }
            pos += moved;
            *sent += moved;
        } else {
            let n = n.min(CHUNK);
            let file = file.clone();
            let buf = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                let mut buf = vec![0u8; n];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, pos)?;
                Ok(buf)
            })
            .await
            .map_err(io::Error::other)??;
            send_all(stream, &buf, limit).await?;
            pos += n as u64;
            *sent += n as u64;
        }
    }
    Ok(())
}

/// Whether the first and last bytes of `pos..pos + n` are in the page cache.
fn cached(file: &std::fs::File, pos: u64, n: usize) -> bool {
    let mut b = [0u8; 1];
    let last = pos + n.saturating_sub(1) as u64;
    [pos, last].iter().all(|&at| {
        let mut iov = [io::IoSliceMut::new(&mut b)];
        matches!(
            rustix::io::preadv2(file, &mut iov, at, rustix::io::ReadWriteFlags::NOWAIT),
            Ok(1)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn plain_gets_and_heads_take_the_fast_path() {
        let (req, keep) = parse(
            b"GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n",
            peer(),
        )
        .expect("fast");
        assert!(keep);
        assert_eq!(req.uri().path(), "/v2/a/blobs/sha256:00");
        assert_eq!(req.headers()["range"], "bytes=0-1");
        let (req, keep) =
            parse(b"HEAD /go/x HTTP/1.1\r\nConnection: close\r\n\r\n", peer()).expect("fast");
        assert!(!keep);
        assert_eq!(req.method(), Method::HEAD);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            &b"POST /admin/gc HTTP/1.1\r\nContent-Length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET http://other/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nextra",
        ] {
            assert!(
                parse(head, peer()).is_none(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_start_that_cannot_be_http1_is_noticed_at_once() {
        assert!(plausible(b""));
        assert!(plausible(b"GE"));
        assert!(plausible(b"GET /v2/ HTTP/1.1\r\nHost: w"));
        assert!(!plausible(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]));
        assert!(!plausible(b"GET /v2/ HTTP/1.1\r\nBad Header: x\r\n"));
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nGET", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\nHost: x\n\nGET", 0),
            Some(24)
        );
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\n\r\n", 0),
            Some(26)
        );
        assert_eq!(find_head_end(b"ab", 5), None);
        let (req, _) = parse(b"GET /v2/ HTTP/1.1\nHost: x\n\n", peer()).expect("bare LF parses");
        assert_eq!(req.uri().path(), "/v2/");
    }
}
