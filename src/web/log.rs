//! The request log: one `info` line per protocol request (target `wharf::access`, in the
//! log's format), written when its response body is done, so it carries the bytes sent and the
//! whole duration. On the fast path a body sent with `sendfile` is never polled: the server adds
//! those bytes to the response's `SentBytes` counter instead.
//!
//! The line is formatted here, not by the tracing subscriber (a third of a warm manifest's cost
//! there), into a buffer written to stderr when it holds 64 KiB or every 100 ms, and at
//! shutdown: one write for many lines. `[log] level` still decides whether lines are written.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame;

use crate::metrics::{AnsweredBy, SentBytes};

pub const TARGET: &str = "wharf::access";

/// Bytes of lines kept before they are written.
const BUFFER: usize = 64 << 10;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Where lines go: the buffer, and whether they are JSON.
struct Sink {
    json: bool,
    buf: Mutex<Vec<u8>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the line format (once per process) and starts the thread that writes the buffer.
pub fn init(json: bool) {
    let mut started = false;
    SINK.get_or_init(|| {
        started = true;
        Sink {
            json,
            buf: Mutex::new(Vec::with_capacity(BUFFER)),
        }
    });
    if started {
        let _ = std::thread::Builder::new()
            .name("wharf-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                }
            });
    }
}

/// Writes the lines buffered so far.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
        if !buf.is_empty() {
            let _ = std::io::stderr().write_all(&buf);
            buf.clear();
        }
    }
}

/// Whether request lines are wanted at all (the log filter), checked before any work.
pub fn enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What one request's line says, known when its response starts.
pub struct Line {
    pub method: http::Method,
    /// As the client sent it (`?ns=` included).
    pub uri: http::Uri,
    pub client: Option<crate::net::Client>,
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
    upstream: Option<Arc<str>>,
    bytes: Arc<AtomicU64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let Some(sink) = SINK.get() else { return };
        let l = &self.line;
        let micros = l.started.elapsed().as_micros();
        let bytes = self.bytes.load(Ordering::Relaxed);
        let upstream = self.upstream.as_deref().unwrap_or("-");
        let now = SystemTime::now();
        // Formatted straight into the shared buffer: no allocation per line.
        let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut *buf;
        if sink.json {
            out.extend_from_slice(br#"{"timestamp":""#);
            timestamp(out, now);
            out.extend_from_slice(br#"","level":"INFO","fields":{"client":""#);
            match l.client {
                Some(c) => {
                    let _ = write!(out, "{c}");
                }
                None => out.push(b'-'),
            }
            out.extend_from_slice(br#"","method":"#);
            json_str(out, l.method.as_str());
            out.extend_from_slice(br#","path":"#);
            json_str(out, target(&l.uri));
            let _ = write!(
                out,
                r#","status":{},"bytes":{bytes},"ms":{}.{},"cache":"#,
                self.status,
                micros / 1000,
                micros % 1000 / 100
            );
            json_str(out, self.cache);
            out.extend_from_slice(br#","upstream":"#);
            json_str(out, upstream);
            let _ = writeln!(out, r#"}},"target":"{TARGET}"}}"#);
        } else {
            timestamp(out, now);
            out.extend_from_slice(b"  INFO wharf::access: client=");
            match l.client {
                Some(c) => {
                    let _ = write!(out, "{c}");
                }
                None => out.push(b'-'),
            }
            let _ = write!(out, " method={} path=", l.method);
            text_safe(out, target(&l.uri));
            let _ = writeln!(
                out,
                " status={} bytes={bytes} ms={}.{} cache={} upstream={upstream}",
                self.status,
                micros / 1000,
                micros % 1000 / 100,
                self.cache
            );
        }
        if out.len() >= BUFFER {
            let _ = std::io::stderr().write_all(out);
            out.clear();
        }
    }
}

/// Path and query.
fn target(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |p| p.as_str())
}

/// `s` with anything but printable ASCII escaped (`\u{202e}`), so a path cannot forge or
/// disguise a text log line.
fn text_safe(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        if c.is_ascii_graphic() {
            out.push(c as u8);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `t` as RFC 3339 in UTC with microseconds, as the tracing subscriber writes it.
fn timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_escape_all_but_printable_ascii() {
        let mut out = Vec::new();
        text_safe(&mut out, "/v2/a\u{202e}b c\u{2028}/x?ns=d");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "/v2/a\\u{202e}b\\u{20}c\\u{2028}/x?ns=d"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u32| {
            let mut s = Vec::new();
            timestamp(
                &mut s,
                SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000),
            );
            String::from_utf8(s).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_796_226_460, 817_061), "2026-12-02T15:47:40.817061Z");
    }
}
