//! Response bodies for blobs: positional reads from a committed file, or from a fill still in
//! progress (waiting on the flight's progress). A body from a fill never delivers its last byte
//! before the blob is verified, so a client can never see a complete response of bad bytes:
//! on failure the stream yields an error and the server aborts the response.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::flight::{FillError, FillState};
use super::pool::{self, CHUNK};

/// A single satisfiable byte range, `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Parses a `Range` header against a known size.
    /// `Ok(None)`: no usable single range (absent, malformed, or multi-range): send it all.
    /// `Err(())`: syntactically fine but unsatisfiable: 416.
    #[allow(clippy::result_unit_err)]
    pub fn parse(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, ()> {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
            return Ok(None);
        };
        if spec.contains(',') {
            return Ok(None);
        }
        let Some((a, b)) = spec.trim().split_once('-') else {
            return Ok(None);
        };
        let num = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (a, b) = (a.trim(), b.trim());
        let range = match (a.is_empty(), b.is_empty()) {
            // bytes=-N: the last N bytes.
            (true, false) => {
                let Some(n) = num(b) else { return Ok(None) };
                if n == 0 || size == 0 {
                    return Err(());
                }
                ByteRange {
                    start: size.saturating_sub(n),
                    end: size,
                }
            }
            (false, true) => {
                let Some(s) = num(a) else { return Ok(None) };
                ByteRange {
                    start: s,
                    end: size,
                }
            }
            (false, false) => {
                let (Some(s), Some(e)) = (num(a), num(b)) else {
                    return Ok(None);
                };
                if e < s {
                    return Ok(None);
                }
                ByteRange {
                    start: s,
                    end: e.saturating_add(1).min(size),
                }
            }
            (true, true) => return Ok(None),
        };
        if range.start >= size {
            return Err(());
        }
        Ok(Some(range))
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A blob body that a plain HTTP/1.1 connection may send with `sendfile` instead of reading it
/// through its stream: a blob handler attaches a clone of its `BlobBody` to the response (as an
/// extension), and the server's fast path sends its spans (`BlobBody::next_span`) from the file.
#[derive(Clone)]
pub struct Sendfile(pub BlobBody);

#[derive(Clone)]
enum Source {
    File,
    Fill(watch::Receiver<FillState>),
}

/// A stream of `Bytes` over `start..end` of a blob (end `None`: to the end of a fill of
/// unknown size).
#[derive(Clone)]
pub struct BlobBody {
    source: Source,
    file: Option<Arc<File>>,
    pos: u64,
    end: Option<u64>,
    done: bool,
    /// Hold the window's last byte back until the blob is verified (the default).
    hold_last: bool,
    /// The size the fill announced (what `Content-Length` was built from): a verified blob of
    /// another size fails this body instead of ending it.
    announced: Option<u64>,
}

impl BlobBody {
    pub fn from_file(file: Arc<File>, start: u64, end: u64) -> BlobBody {
        BlobBody {
            source: Source::File,
            file: Some(file),
            pos: start,
            end: Some(end),
            done: false,
            hold_last: true,
            announced: None,
        }
    }

    pub fn from_fill(rx: watch::Receiver<FillState>, start: u64, end: Option<u64>) -> BlobBody {
        BlobBody {
            source: Source::Fill(rx),
            file: None,
            pos: start,
            end,
            done: false,
            hold_last: true,
            announced: None,
        }
    }

    /// The same body sending every byte as soon as it is written, the last included, without
    /// waiting for the blob's verdict (a range a lazy puller wants now; a failed fill still
    /// cuts it).
    pub fn without_holding_back(mut self) -> BlobBody {
        self.hold_last = false;
        self
    }

    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut b| async move {
            if b.done {
                return None;
            }
            match b.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), b)),
                Ok(None) => None,
                Err(e) => {
                    b.done = true;
                    Some((Err(e), b))
                }
            }
        })
    }

    /// Bytes left to send, when known.
    pub fn remaining(&self) -> Option<u64> {
        self.end.map(|end| end.saturating_sub(self.pos))
    }

    /// The next part of the body that may be sent, `(file, from, to)`, waiting for a fill's
    /// progress (the last byte only once verified); `None` when the body is complete. The
    /// caller sends it and then calls `advance`.
    pub async fn next_span(&mut self) -> io::Result<Option<(Arc<File>, u64, u64)>> {
        let Some(limit) = self.readable_limit().await? else {
            return Ok(None);
        };
        let file = self
            .file
            .clone()
            .ok_or_else(|| io::Error::other("no file to read"))?;
        Ok(Some((file, self.pos, limit)))
    }

    /// Marks `n` more bytes as sent.
    pub fn advance(&mut self, n: u64) {
        self.pos += n;
    }

    /// How far this body may read now, or `None` when it is complete.
    async fn readable_limit(&mut self) -> io::Result<Option<u64>> {
        let rx = match &mut self.source {
            Source::File => {
                let end = self.end.unwrap_or(self.pos);
                return Ok((self.pos < end).then_some(end));
            }
            Source::Fill(rx) => rx,
        };
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Pending => {}
                FillState::Streaming {
                    file,
                    size,
                    written,
                } => {
                    self.file.get_or_insert(file);
                    if self.announced.is_none() {
                        self.announced = size;
                    }
                    // Hold back the last byte of the window until the blob is verified.
                    let window_end = self.end.or(size).unwrap_or(u64::MAX);
                    let held = u64::from(self.hold_last);
                    let limit = written.min(window_end.saturating_sub(held));
                    if self.pos < limit {
                        return Ok(Some(limit));
                    }
                }
                FillState::Verified { file, size } | FillState::Committed { file, size } => {
                    if self.announced.is_some_and(|a| a != size) {
                        return Err(io::Error::other(
                            "the blob's verified size differs from the one announced",
                        ));
                    }
                    // Complete and verified: from now on this body reads a plain file.
                    self.file.get_or_insert(file);
                    let end = self.end.unwrap_or(size).min(size);
                    self.source = Source::File;
                    self.end = Some(end);
                    return Ok((self.pos < end).then_some(end));
                }
                FillState::Failed(e) => {
                    let msg = match e {
                        FillError::NotFound => "blob not found upstream".to_string(),
                        FillError::Upstream(m) | FillError::Unavailable(m) => m,
                        FillError::Local => "local storage error".to_string(),
                        FillError::Busy => "too many concurrent fills".to_string(),
                        FillError::Offline => "offline".to_string(),
                        FillError::NoRoom => "the local disk is full".to_string(),
                    };
                    return Err(io::Error::other(format!("blob fill failed: {msg}")));
                }
            }
            if rx.changed().await.is_err() && !rx.borrow().is_terminal() {
                return Err(io::Error::other("blob fill ended without a result"));
            }
        }
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let Some((file, pos, limit)) = self.next_span().await? else {
            return Ok(None);
        };
        let n = (limit - pos).min(CHUNK as u64) as usize;
        let mut buf = pool::take();
        // Bytes in the page cache are copied right here: that never waits for the disk. Only
        // what must come from the disk goes to the blocking pool.
        let got = read_cached(&file, &mut buf[..n], pos);
        let (buf, got) = if got > 0 {
            (buf, got)
        } else {
            tokio::task::spawn_blocking(move || -> io::Result<(Vec<u8>, usize)> {
                file.read_exact_at(&mut buf[..n], pos)?;
                advise_willneed(&file, pos + n as u64, 2 * CHUNK as u64);
                Ok((buf, n))
            })
            .await
            .map_err(io::Error::other)??
        };
        self.pos += got as u64;
        Ok(Some(pool::freeze(buf, got)))
    }
}

/// Whether `preadv2(RWF_NOWAIT)` works here; cleared the first time the kernel or the
/// filesystem says it does not.
#[cfg(target_os = "linux")]
static NOWAIT_WORKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Reads at `pos` only what is already in the page cache (`preadv2` with `RWF_NOWAIT`, Linux
/// 4.14+); 0 when nothing is, or on any error (the blocking read then reports it).
#[cfg(target_os = "linux")]
fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> usize {
    use rustix::io::{Errno, ReadWriteFlags};
    use std::sync::atomic::Ordering;
    if buf.is_empty() || !NOWAIT_WORKS.load(Ordering::Relaxed) {
        return 0;
    }
    let mut iov = [io::IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut iov, pos, ReadWriteFlags::NOWAIT) {
        Ok(n) => n,
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
            NOWAIT_WORKS.store(false, Ordering::Relaxed);
            0
        }
        Err(_) => 0,
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &File, _buf: &mut [u8], _pos: u64) -> usize {
    0
}

/// Starts the kernel reading the next chunks of a blob that was not in the page cache.
#[cfg(target_os = "linux")]
fn advise_willneed(file: &File, pos: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        pos,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
}

#[cfg(not(target_os = "linux"))]
fn advise_willneed(_file: &File, _pos: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc9110() {
        let p = |h: &str| ByteRange::parse(Some(h), 100);
        assert_eq!(p("bytes=0-9"), Ok(Some(ByteRange { start: 0, end: 10 })));
        assert_eq!(
            p("bytes=90-"),
            Ok(Some(ByteRange {
                start: 90,
                end: 100
            }))
        );
        assert_eq!(
            p("bytes=-10"),
            Ok(Some(ByteRange {
                start: 90,
                end: 100
            }))
        );
        assert_eq!(p("bytes=-1000"), Ok(Some(ByteRange { start: 0, end: 100 })));
        assert_eq!(
            p("bytes=50-1000"),
            Ok(Some(ByteRange {
                start: 50,
                end: 100
            }))
        );
        assert_eq!(p("bytes=100-"), Err(()));
        assert_eq!(p("bytes=-0"), Err(()));
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(p(ignored), Ok(None), "{ignored}");
        }
        assert_eq!(ByteRange::parse(None, 100), Ok(None));
    }
}
