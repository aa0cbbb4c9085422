//! The request log: one `info` line per protocol request (target `wharf::access`, in the
//! log's format), written when its response body is done, so it carries the bytes sent and the
//! whole duration. On the fast path a body sent with `sendfile` is never polled: the server adds
//! those bytes to the response's `SentBytes` counter instead.
//!
//! The line is formatted here, not by the tracing subscriber (a third of a warm manifest's cost
//! there), into a buffer that a thread of its own writes to stderr when it holds 64 KiB or every
//! 100 ms, and at shutdown: one write for many lines. The server's other messages go into the
//! same buffer (`Messages`, the subscriber's writer), in order. Request threads only append: a
//! slow log consumer (a stalled pipe, a busy journal) never holds up a response. If the writer
//! falls 8 MiB behind, further lines are dropped and counted, and the count is logged when it
//! catches up. `[log] level` still decides whether lines are written.

use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame;

use crate::metrics::{AnsweredBy, Metrics, RequestLabels, SentBytes};
use crate::net::Client;

pub const TARGET: &str = "wharf::access";

/// Bytes of lines that wake the writer.
const BUFFER: usize = 64 << 10;

/// Bytes of lines kept while the writer is behind; lines past it are dropped.
const BEHIND: usize = 8 << 20;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Where lines go: the buffer, and whether they are JSON.
struct Sink {
    json: bool,
    /// Lines not yet handed to the writer (request threads append here).
    buf: Mutex<Vec<u8>>,
    /// The writer's side: the lines being written. Held while writing, so writes keep order.
    out: Mutex<Vec<u8>>,
    /// Lines dropped while the writer was behind, not yet reported.
    dropped: AtomicU64,
    writer: OnceLock<std::thread::Thread>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the line format (once per process) and starts the thread that writes the buffer.
pub fn init(json: bool) {
    let mut started = false;
    let sink = SINK.get_or_init(|| {
        started = true;
        Sink {
            json,
            buf: Mutex::new(Vec::with_capacity(BUFFER)),
            out: Mutex::new(Vec::with_capacity(BUFFER)),
            dropped: AtomicU64::new(0),
            writer: OnceLock::new(),
        }
    });
    if started
        && let Ok(handle) = std::thread::Builder::new()
            .name("wharf-log".into())
            .spawn(|| {
                loop {
                    if buffered() < BUFFER {
                        std::thread::park_timeout(FLUSH_EVERY);
                    }
                    flush();
                }
            })
    {
        let _ = sink.writer.set(handle.thread().clone());
    }
}

/// Bytes of lines waiting for the writer.
fn buffered() -> usize {
    SINK.get().map_or(0, |sink| {
        sink.buf.lock().unwrap_or_else(|p| p.into_inner()).len()
    })
}

/// Writes the lines buffered so far (the request threads' buffer is held only to swap it).
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let mut out = sink.out.lock().unwrap_or_else(|p| p.into_inner());
    {
        let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.is_empty() {
            return;
        }
        std::mem::swap(&mut *out, &mut *buf);
    }
    let _ = std::io::stderr().write_all(&out);
    let dropped = sink.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "log lines dropped: whatever reads wharf's stderr fell {} MiB behind",
            BEHIND >> 20
        );
    }
    out.clear();
    if out.capacity() > 4 * BUFFER {
        out.shrink_to(BUFFER);
    }
}

/// The server's other log messages (the tracing subscriber's writer): into the same buffer as
/// request lines once `init` ran, so they keep their order and no thread waits on stderr;
/// before that, stderr itself. Each wakes the writer at once (they are few; request lines wait
/// for a batch).
#[derive(Clone, Copy, Debug, Default)]
pub struct Messages;

/// One message's writer (see `Messages`).
pub struct MessageWriter;

impl std::io::Write for MessageWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let Some(sink) = SINK.get() else {
            return std::io::stderr().write(bytes);
        };
        {
            let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
            if buf.len() >= BEHIND {
                sink.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(bytes.len());
            }
            buf.extend_from_slice(bytes);
        }
        if let Some(w) = sink.writer.get() {
            w.unpark();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Messages {
    type Writer = MessageWriter;

    fn make_writer(&'a self) -> MessageWriter {
        MessageWriter
    }
}

/// Whether the log filter wants request lines, as `serve` decided it from `[log] level` (the
/// subscriber cannot say once a layer without a filter, such as the traces', is installed).
static WANTED: OnceLock<bool> = OnceLock::new();

/// Records whether the log filter wants request lines (once per process).
pub fn set_wanted(wanted: bool) {
    let _ = WANTED.set(wanted);
}

/// Whether request lines are wanted at all (the log filter), checked before any work.
pub fn enabled() -> bool {
    SINK.get().is_some()
        && WANTED
            .get()
            .copied()
            .unwrap_or_else(|| tracing::enabled!(target: TARGET, tracing::Level::INFO))
}

/// What one request's line says, known when its response starts.
pub struct Line {
    pub method: http::Method,
    /// As the client sent it (`?ns=` included).
    pub uri: http::Uri,
    pub client: Option<crate::net::Client>,
}

/// What every answer is measured by: when its request arrived, its labels and where to count.
pub struct Answer {
    pub started: Instant,
    pub labels: RequestLabels,
    pub metrics: Arc<Metrics>,
}

/// `resp` with its body wrapped so the answer is measured, and its line (if any) written, when
/// the body is done (or dropped).
pub fn attach(
    line: Option<Line>,
    answer: Answer,
    mut resp: Response,
    cache: Option<&'static str>,
) -> Response {
    let bytes = Arc::new(AtomicU64::new(0));
    resp.extensions_mut().insert(SentBytes(bytes.clone()));
    let upstream = resp.extensions().get::<AnsweredBy>().map(|a| a.0.clone());
    let done = Done {
        line,
        answer,
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
    line: Option<Line>,
    answer: Answer,
    status: u16,
    cache: &'static str,
    upstream: Option<Arc<str>>,
    bytes: Arc<AtomicU64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let elapsed = self.answer.started.elapsed();
        let bytes = self.bytes.load(Ordering::Relaxed);
        let a = &self.answer;
        a.metrics
            .observe_request(&a.labels, elapsed.as_secs_f64(), bytes);
        let (Some(sink), Some(l)) = (SINK.get(), &self.line) else {
            return;
        };
        let micros = elapsed.as_micros() as u64;
        let upstream = self.upstream.as_deref().unwrap_or("-");
        let now = SystemTime::now();
        // Written straight into the shared buffer, without `fmt`: no allocation per line.
        let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut *buf;
        if out.len() >= BEHIND {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let line_start = out.len();
        if sink.json {
            out.extend_from_slice(br#"{"timestamp":""#);
            timestamp(out, now);
            out.extend_from_slice(br#"","level":"INFO","fields":{"client":""#);
            client(out, l.client);
            out.extend_from_slice(br#"","method":"#);
            json_str(out, l.method.as_str());
            out.extend_from_slice(br#","path":"#);
            json_str(out, target(&l.uri));
            out.extend_from_slice(br#","status":"#);
            number(out, u64::from(self.status));
            out.extend_from_slice(br#","bytes":"#);
            number(out, bytes);
            out.extend_from_slice(br#","ms":"#);
            millis(out, micros);
            out.extend_from_slice(br#","cache":"#);
            json_str(out, self.cache);
            out.extend_from_slice(br#","upstream":"#);
            json_str(out, upstream);
            out.extend_from_slice(br#"},"target":""#);
            out.extend_from_slice(TARGET.as_bytes());
            out.extend_from_slice(b"\"}\n");
        } else {
            timestamp(out, now);
            out.extend_from_slice(b"  INFO wharf::access: client=");
            client(out, l.client);
            out.extend_from_slice(b" method=");
            out.extend_from_slice(l.method.as_str().as_bytes());
            out.extend_from_slice(b" path=");
            text_safe(out, target(&l.uri));
            out.extend_from_slice(b" status=");
            number(out, u64::from(self.status));
            out.extend_from_slice(b" bytes=");
            number(out, bytes);
            out.extend_from_slice(b" ms=");
            millis(out, micros);
            out.extend_from_slice(b" cache=");
            out.extend_from_slice(self.cache.as_bytes());
            out.extend_from_slice(b" upstream=");
            out.extend_from_slice(upstream.as_bytes());
            out.push(b'\n');
        }
        if out.len() >= BUFFER
            && line_start < BUFFER
            && let Some(w) = sink.writer.get()
        {
            // Just reached: wake the writer once.
            w.unpark();
        }
    }
}

/// `n` in decimal.
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` in decimal, zero-padded to `width` digits.
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    number(out, n);
    let short = width.saturating_sub(out.len() - start);
    if short > 0 {
        out.splice(start..start, std::iter::repeat_n(b'0', short));
    }
}

/// Microseconds as milliseconds with one decimal (`12.3`).
fn millis(out: &mut Vec<u8>, micros: u64) {
    number(out, micros / 1000);
    out.push(b'.');
    out.push(b'0' + (micros % 1000 / 100) as u8);
}

/// The client's address, `unix` for a Unix-socket peer, or `-`.
fn client(out: &mut Vec<u8>, c: Option<Client>) {
    match c {
        Some(Client::Unix) => out.extend_from_slice(b"unix"),
        Some(Client::Ip(IpAddr::V4(v4))) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, u64::from(octet));
            }
        }
        Some(Client::Ip(c)) => {
            let _ = write!(out, "{c}");
        }
        None => out.push(b'-'),
    }
}

/// Path and query.
fn target(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |p| p.as_str())
}

/// `s` with anything but printable ASCII escaped (`\u{202e}`), so a path cannot forge or
/// disguise a text log line.
fn text_safe(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
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

/// `t` as RFC 3339 in UTC with microseconds, as the tracing subscriber writes it. The date and
/// time of day are formatted once per second and thread.
fn timestamp(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
        static SECOND: std::cell::RefCell<(u64, Vec<u8>)> = const {
            std::cell::RefCell::new((u64::MAX, Vec::new()))
        };
    }
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            text.clear();
            date_time(text, secs);
        }
        out.extend_from_slice(text);
    });
    out.push(b'.');
    padded(out, u64::from(d.subsec_micros()), 6);
    out.push(b'Z');
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC).
fn date_time(out: &mut Vec<u8>, secs: u64) {
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
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
    fn numbers_and_addresses_are_written_as_fmt_would() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 99, 1234, u64::MAX] {
            number(&mut out, n);
            out.push(b' ');
            padded(&mut out, n, 6);
            out.push(b' ');
            millis(&mut out, n % 10_000_000);
            out.push(b' ');
        }
        for c in [
            None,
            Some(Client::Ip(IpAddr::from([10, 0, 255, 1]))),
            Some(Client::Ip("::1".parse().unwrap())),
            Some(Client::Unix),
        ] {
            client(&mut out, c);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 000000 0.0 7 000007 0.0 10 000010 0.0 99 000099 0.0 1234 001234 1.2 \
             18446744073709551615 18446744073709551615 9551.6 - 10.0.255.1 ::1 unix "
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
        // The same second again (cached), then the next.
        assert_eq!(at(1_796_226_460, 5), "2026-12-02T15:47:40.000005Z");
        assert_eq!(at(1_796_226_461, 999_999), "2026-12-02T15:47:41.999999Z");
    }
}
