//! The request log: one `info` line per protocol request (target `wharf::access`), written
//! when its response body is done, so it carries the bytes sent and the whole duration. On the
//! fast path a body sent with `sendfile` is never polled: the server adds those bytes to the
//! response's `SentBytes` counter instead.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame;

use crate::metrics::{AnsweredBy, SentBytes};

pub const TARGET: &str = "wharf::access";

/// Whether request lines are wanted at all (the log filter), checked before any work.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What one request's line says, known when its response starts.
pub struct Line {
    pub method: http::Method,
    /// Path and query as the client sent them (`?ns=` included).
    pub target: String,
    pub client: Option<IpAddr>,
    pub started: Instant,
}

/// `resp` with its body wrapped so the line is written when the body is done (or dropped).
pub fn attach(line: Line, mut resp: Response, cache: Option<&'static str>) -> Response {
    let bytes = Arc::new(AtomicU64::new(0));
    resp.extensions_mut().insert(SentBytes(bytes.clone()));
    let upstream = resp.extensions().get::<AnsweredBy>().map(|a| a.0.clone());
    let done = Done {
        line,
        status: resp.status().as_u16(),
        cache: cache.unwrap_or(if resp.status().is_success() {
            "-"
        } else {
            "ERROR"
        }),
        upstream,
        bytes,
    };
    resp.map(|inner| Body::new(Logged { inner, done }))
}

struct Done {
    line: Line,
    status: u16,
    cache: &'static str,
    upstream: Option<String>,
    bytes: Arc<AtomicU64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let l = &self.line;
        tracing::info!(
            target: TARGET,
            client = %l.client.map_or_else(|| "-".to_string(), |c| c.to_string()),
            method = %l.method,
            path = %l.target,
            status = self.status,
            bytes = self.bytes.load(Ordering::Relaxed),
            ms = format_args!("{:.1}", l.started.elapsed().as_secs_f64() * 1e3),
            cache = %self.cache,
            upstream = %self.upstream.as_deref().unwrap_or("-"),
        );
    }
}

struct Logged {
    inner: Body,
    done: Done,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(data) = frame.data_ref()
        {
            this.done
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
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
