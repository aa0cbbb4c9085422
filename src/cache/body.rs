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

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;

use super::flight::{FillError, FillState, Spill};
use super::pool::{self, CHUNK};
use super::spill::{StartAt, checked_stream};

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
    /// The fill's disk ran full: the file's part, then the rest from the source.
    Spilled(Arc<Spill>),
}

/// What a body may send next.
pub enum Span {
    /// `from..to` of the file; the caller sends it and then calls `BlobBody::advance`.
    File(Arc<File>, u64, u64),
    /// Bytes from the source (a spilled fill's rest), already counted as sent.
    Bytes(Bytes),
}

/// How far a body may read now.
enum Readable {
    Upto(u64),
    Done,
    Spilled(Arc<Spill>),
}

/// A spilled fill's rest as one body reads it: the checked stream from where the file stops.
struct Rest {
    /// In a mutex only to be `Sync` (a body rides in response extensions); never locked, as
    /// only `&mut` reaches it.
    stream: std::sync::Mutex<BoxStream<'static, io::Result<Bytes>>>,
    /// The object's offset of the stream's next byte.
    at: u64,
    /// The stream ended: the whole object matched its digest.
    verified: bool,
    /// The stream failed: the body fails again if asked again (a checked stream ends after
    /// its error, and that end is no verdict).
    failed: bool,
    /// The window's last byte when it came from the stream, sent once verified.
    held: Option<Bytes>,
}

/// A body's `Rest`, opened when first needed. A clone starts without one (and opens its own):
/// clones are taken before a body is read.
#[derive(Default)]
struct RestSlot(Option<Box<Rest>>);

impl Clone for RestSlot {
    fn clone(&self) -> Self {
        RestSlot(None)
    }
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
    rest: RestSlot,
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
            rest: RestSlot::default(),
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
            rest: RestSlot::default(),
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

    /// The next part of the body that may be sent, waiting for a fill's progress (the last
    /// byte only once verified); `None` when the body is complete.
    pub async fn next_span(&mut self) -> io::Result<Option<Span>> {
        let limit = match self.readable_limit().await? {
            Readable::Done => return Ok(None),
            Readable::Upto(limit) => limit,
            Readable::Spilled(spill) => return self.next_spilled(&spill).await,
        };
        let file = self
            .file
            .clone()
            .ok_or_else(|| io::Error::other("no file to read"))?;
        Ok(Some(Span::File(file, self.pos, limit)))
    }

    /// `next_span` of a spilled fill: the file up to where the disk gave out, then the rest
    /// from the source, checked like a fill; the window's last byte waits for the verdict.
    async fn next_spilled(&mut self, spill: &Arc<Spill>) -> io::Result<Option<Span>> {
        let end = self.end.or(spill.size);
        // The window's last byte, when it must wait for the verdict.
        let held = u64::from(self.hold_last && end.is_some());
        let window_end = end.unwrap_or(u64::MAX);
        let in_file = spill.written.min(window_end.saturating_sub(held));
        if self.pos < in_file {
            return Ok(Some(Span::File(spill.file.clone(), self.pos, in_file)));
        }
        if !self.hold_last && self.pos >= window_end {
            return Ok(None);
        }
        loop {
            let rest = match &mut self.rest.0 {
                Some(rest) => rest,
                None => self.rest.0.insert(Box::new(open_rest(spill).await?)),
            };
            if rest.failed {
                return Err(io::Error::other(
                    "the rest of the blob from the source failed",
                ));
            }
            if rest.verified {
                if let Some(last) = rest.held.take() {
                    self.pos += last.len() as u64;
                    return Ok(Some(Span::Bytes(last)));
                }
                // The held byte came from the file.
                let end = end.unwrap_or(rest.at).min(spill.written);
                return Ok((self.pos < end).then(|| Span::File(spill.file.clone(), self.pos, end)));
            }
            let stream = rest
                .stream
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let chunk = match stream.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    rest.failed = true;
                    return Err(e);
                }
                None => {
                    rest.verified = true;
                    continue;
                }
            };
            let from = rest.at;
            rest.at += chunk.len() as u64;
            // The part of the chunk in the window, less a held last byte.
            let to = rest.at.min(window_end);
            if held == 1 && to == window_end && to > from.max(self.pos) {
                rest.held = Some(chunk.slice((to - 1 - from) as usize..(to - from) as usize));
            }
            let to = to.saturating_sub(if rest.held.is_some() { held } else { 0 });
            let start = from.max(self.pos);
            if start < to {
                self.pos = to;
                return Ok(Some(Span::Bytes(
                    chunk.slice((start - from) as usize..(to - from) as usize),
                )));
            }
            if !self.hold_last && self.pos >= window_end {
                return Ok(None);
            }
        }
    }

    /// Marks `n` more bytes as sent.
    pub fn advance(&mut self, n: u64) {
        self.pos += n;
    }

    /// How far this body may read now.
    async fn readable_limit(&mut self) -> io::Result<Readable> {
        let upto = |pos: u64, end: u64| {
            if pos < end {
                Readable::Upto(end)
            } else {
                Readable::Done
            }
        };
        let rx = match &mut self.source {
            Source::File => {
                let end = self.end.unwrap_or(self.pos);
                return Ok(upto(self.pos, end));
            }
            Source::Spilled(spill) => return Ok(Readable::Spilled(spill.clone())),
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
                        return Ok(Readable::Upto(limit));
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
                    return Ok(upto(self.pos, end));
                }
                FillState::Spilled(spill) => {
                    if self.announced.is_some_and(|a| Some(a) != spill.size) {
                        return Err(io::Error::other(
                            "the blob's size differs from the one announced",
                        ));
                    }
                    self.source = Source::Spilled(spill.clone());
                    return Ok(Readable::Spilled(spill));
                }
                FillState::Failed(e) => {
                    return Err(io::Error::other(format!("blob fill failed: {}", say(e))));
                }
            }
            if rx.changed().await.is_err() && !rx.borrow().is_terminal() {
                return Err(io::Error::other("blob fill ended without a result"));
            }
        }
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let (file, pos, limit) = match self.next_span().await? {
            None => return Ok(None),
            Some(Span::Bytes(bytes)) => return Ok(Some(bytes)),
            Some(Span::File(file, pos, limit)) => (file, pos, limit),
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

/// Opens a spilled fill's rest at the source, from where its file stops.
async fn open_rest(spill: &Spill) -> io::Result<Rest> {
    let failed = |e: FillError| io::Error::other(format!("blob fill failed: {}", say(e)));
    let incoming = spill
        .reopen
        .open_at(spill.written)
        .await
        .map_err(failed)?
        .ok_or_else(|| failed(FillError::NotFound))?;
    if spill.size.is_some() && incoming.len != spill.size {
        return Err(io::Error::other(
            "the source now names another size for the blob",
        ));
    }
    let from = StartAt {
        hasher: spill.hasher.clone(),
        offset: spill.written,
    };
    Ok(Rest {
        stream: std::sync::Mutex::new(checked_stream(
            incoming,
            spill.expected.clone(),
            spill.limit,
            None,
            from,
        )),
        at: spill.written,
        verified: false,
        failed: false,
        held: None,
    })
}

/// A failed fill in words a client may see.
fn say(e: FillError) -> String {
    match e {
        FillError::NotFound => "blob not found upstream".to_string(),
        FillError::Upstream(m) | FillError::Unavailable(m) => m,
        FillError::Local => "local storage error".to_string(),
        FillError::Busy => "too many concurrent fills".to_string(),
        FillError::Offline => "offline".to_string(),
        FillError::NoRoom => "the local disk is full".to_string(),
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
    use crate::cache::Incoming;
    use crate::cache::flight::Reopen;
    use futures_util::future::BoxFuture;
    use wharf_storage::{Digest, Hasher};

    /// The source of a spilled fill: `data` from any offset, in 1000-byte chunks.
    struct Source(Vec<u8>);

    impl Reopen for Source {
        fn open_at(&self, offset: u64) -> BoxFuture<'static, Result<Option<Incoming>, FillError>> {
            let (len, rest) = (self.0.len() as u64, self.0[offset as usize..].to_vec());
            Box::pin(async move {
                let chunks: Vec<_> = rest
                    .chunks(1000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Ok(Some(Incoming {
                    len: Some(len),
                    body: futures_util::stream::iter(chunks).boxed(),
                }))
            })
        }
    }

    /// A fill of `data` whose disk gave out after `written` bytes; the source serves `served`.
    fn spilled(data: &[u8], served: Vec<u8>, written: usize) -> watch::Receiver<FillState> {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&data[..written], 0).unwrap();
        let mut hasher = Hasher::new();
        hasher.update(&data[..written]);
        let spill = Spill {
            file: Arc::new(file),
            written: written as u64,
            size: Some(data.len() as u64),
            expected: Digest::of(data),
            hasher,
            limit: u64::MAX,
            reopen: Arc::new(Source(served)),
        };
        watch::channel(FillState::Spilled(Arc::new(spill))).1
    }

    async fn read(body: BlobBody) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(body.into_stream());
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_spilled_fill_serves_every_window_from_file_and_source() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let written = 4321;
        for (start, end) in [
            (0, 10_000),
            (0, 100),
            (100, 4321),
            (4000, 5000),
            (4321, 4322),
            (5000, 9999),
            (9999, 10_000),
        ] {
            for hold in [true, false] {
                let mut body =
                    BlobBody::from_fill(spilled(&data, data.clone(), written), start, Some(end));
                if !hold {
                    body = body.without_holding_back();
                }
                let got = read(body).await.unwrap();
                assert!(
                    got == data[start as usize..end as usize],
                    "{start}..{end} hold {hold}"
                );
            }
        }
        // Unknown end: to the end of the object.
        let got = read(BlobBody::from_fill(
            spilled(&data, data.clone(), written),
            10,
            None,
        ))
        .await;
        assert!(got.unwrap() == data[10..]);
    }

    #[tokio::test]
    async fn a_spilled_fill_with_bad_bytes_never_completes_a_window() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut bad = data.clone();
        bad[7000] ^= 1;
        // Every window that waits for the verdict fails, the ones in the file included.
        for (start, end) in [(0, 10_000), (0, 100), (6000, 8000), (9000, 10_000)] {
            let rx = spilled(&data, bad.clone(), 4321);
            let got = read(BlobBody::from_fill(rx, start, Some(end))).await;
            assert!(got.is_err(), "{start}..{end}");
        }
    }

    /// A hostile source: `data` in chunks of the given sizes in turn (0: an empty chunk),
    /// claiming `len` for the whole.
    struct Ragged {
        data: Vec<u8>,
        sizes: Vec<usize>,
        len: Option<u64>,
    }

    impl Reopen for Ragged {
        fn open_at(&self, offset: u64) -> BoxFuture<'static, Result<Option<Incoming>, FillError>> {
            let rest = self
                .data
                .get(offset as usize..)
                .unwrap_or_default()
                .to_vec();
            let (sizes, len) = (self.sizes.clone(), self.len);
            Box::pin(async move {
                let mut chunks = Vec::new();
                let mut at = 0;
                for n in sizes.iter().cycle() {
                    if at >= rest.len() {
                        break;
                    }
                    let to = (at + n).min(rest.len());
                    chunks.push(Ok(Bytes::copy_from_slice(&rest[at..to])));
                    at = to;
                }
                Ok(Some(Incoming {
                    len,
                    body: futures_util::stream::iter(chunks).boxed(),
                }))
            })
        }
    }

    fn spilled_from(data: &[u8], written: usize, source: Ragged) -> watch::Receiver<FillState> {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&data[..written], 0).unwrap();
        let mut hasher = Hasher::new();
        hasher.update(&data[..written]);
        let spill = Spill {
            file: Arc::new(file),
            written: written as u64,
            size: Some(data.len() as u64),
            expected: Digest::of(data),
            hasher,
            limit: u64::MAX,
            reopen: Arc::new(source),
        };
        watch::channel(FillState::Spilled(Arc::new(spill))).1
    }

    /// Reads a body through `next_span` as the sendfile path does, also asking again after an
    /// error (as a careless caller might): the bytes, and whether it ever ended cleanly.
    async fn read_spans(mut body: BlobBody) -> (Vec<u8>, bool, bool) {
        let mut out = Vec::new();
        let mut failed = false;
        for _ in 0..100_000 {
            match body.next_span().await {
                Ok(None) => return (out, failed, true),
                Ok(Some(Span::Bytes(b))) => out.extend_from_slice(&b),
                Ok(Some(Span::File(f, from, to))) => {
                    let mut buf = vec![0; (to - from) as usize];
                    f.read_exact_at(&mut buf, from).unwrap();
                    out.extend_from_slice(&buf);
                    body.advance(to - from);
                }
                Err(_) => {
                    if failed {
                        return (out, true, false);
                    }
                    failed = true;
                }
            }
        }
        panic!("a body that never ends")
    }

    #[tokio::test]
    async fn ragged_sources_serve_every_window_and_a_failed_rest_stays_failed() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 253) as u8).collect();
        let n = data.len() as u64;
        let written = 2000u64;
        let mut bad = data.clone();
        bad[3500] ^= 1;
        let edges = [0, 1, written - 1, written, written + 1, 3500, n - 1, n];
        for sizes in [vec![1], vec![0, 7, 0], vec![1000], vec![4096, 0, 1]] {
            for &start in &edges {
                for &end in &edges {
                    if end <= start {
                        continue;
                    }
                    for hold in [true, false] {
                        let ragged = |d: &Vec<u8>| Ragged {
                            data: d.clone(),
                            sizes: sizes.clone(),
                            len: Some(n),
                        };
                        let body = |rx| {
                            let b = BlobBody::from_fill(rx, start, Some(end));
                            if hold { b } else { b.without_holding_back() }
                        };
                        let what = format!("{sizes:?} {start}..{end} hold {hold}");
                        let (got, failed, ended) =
                            read_spans(body(spilled_from(&data, written as usize, ragged(&data))))
                                .await;
                        assert!(!failed && ended, "{what}");
                        assert!(got == data[start as usize..end as usize], "{what}");
                        // Bad bytes after the disk's part: no window that waits for the
                        // verdict ends cleanly, even asked again after its error.
                        let (got, _, ended) =
                            read_spans(body(spilled_from(&data, written as usize, ragged(&bad))))
                                .await;
                        if hold {
                            assert!(!ended, "{what}: ended cleanly with {} bytes", got.len());
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_source_naming_another_size_fails_every_window() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 253) as u8).collect();
        for len in [None, Some(4999), Some(5001)] {
            for (start, end) in [(0, 5000), (0, 10), (4000, 4001)] {
                let rx = spilled_from(
                    &data,
                    2000,
                    Ragged {
                        data: data.clone(),
                        sizes: vec![512],
                        len,
                    },
                );
                let (_, _, ended) = read_spans(BlobBody::from_fill(rx, start, Some(end))).await;
                assert!(!ended, "{len:?} {start}..{end}");
            }
        }
    }

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
