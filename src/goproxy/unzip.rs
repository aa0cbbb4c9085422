//! The content pass of a module-zip check: every entry decompressed, counted, CRC-checked and
//! hashed straight from its bytes in the file, on up to four threads for a large zip (entries
//! are independent, and the go command waits for the verdict).
//!
//! The zip crate parses the directories and finds each entry's data; the bytes are read here
//! with positioned reads, so threads share one source without seeking, and inflated in large
//! steps with a bounded buffer per thread whatever an entry declares.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use flate2::{Decompress, FlushDecompress, Status};
use sha2::{Digest, Sha256};

use super::hash::ModZipError;

/// Compressed bytes read per step, and decompressed bytes hashed per step.
const IN_STEP: usize = 32 * 1024;
const OUT_STEP: usize = 64 * 1024;
/// Declared content below which one thread does it all (another would cost more to start).
const PARALLEL_FROM: u64 = 256 * 1024;
/// Most threads one zip gets.
const MAX_THREADS: usize = 4;

/// A source of positioned reads that several threads can share: a file or bytes in memory.
pub trait ReadAt: Sync {
    /// Reads from `offset` into `buf`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// `Read + Seek` over a `ReadAt`, for the zip crate's parse of the directories.
pub struct Cursor<'a, S: ReadAt + ?Sized> {
    src: &'a S,
    pos: u64,
    len: u64,
}

impl<'a, S: ReadAt + ?Sized> Cursor<'a, S> {
    pub fn new(src: &'a S) -> io::Result<Self> {
        Ok(Cursor {
            src,
            pos: 0,
            len: src.size()?,
        })
    }
}

impl<S: ReadAt + ?Sized> Read for Cursor<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: ReadAt + ?Sized> Seek for Cursor<'_, S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Where one entry's bytes are and what they must decode to, from the central directory.
pub struct Entry {
    pub name: Vec<u8>,
    /// Offset of its data (after the local header) and the number of bytes stored there.
    pub data: u64,
    pub stored: u64,
    pub deflated: bool,
    /// Declared (uncompressed) size and CRC-32.
    pub size: u64,
    pub crc: u32,
}

impl Entry {
    fn fail(&self, why: impl Into<String>) -> ModZipError {
        ModZipError::Entry {
            name: String::from_utf8_lossy(&self.name).into_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, why.into()),
        }
    }
}

/// One entry's SHA-256, or why it has none.
type Hashed = Result<[u8; 32], ModZipError>;

/// The SHA-256 of every entry's contents, in order; the first failure of any entry otherwise.
pub fn hash_entries<S: ReadAt + ?Sized>(
    src: &S,
    entries: &[Entry],
) -> Result<Vec<[u8; 32]>, ModZipError> {
    let total = entries.iter().fold(0u64, |t, e| t.saturating_add(e.size));
    let threads = if total < PARALLEL_FROM {
        1
    } else {
        // Asked once: on Linux it reads the cgroup's CPU quota files.
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cpus =
            *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        cpus.min(MAX_THREADS).min(entries.len())
    };
    if threads <= 1 {
        let mut bufs = Buffers::new();
        return entries
            .iter()
            .map(|e| hash_entry(src, e, &mut bufs))
            .collect();
    }
    // Threads take the next entry until none is left or one has failed.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let out: Mutex<Vec<Option<Hashed>>> = Mutex::new(entries.iter().map(|_| None).collect());
    let work = || {
        let mut bufs = Buffers::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(entry) = entries.get(i) else { break };
            let r = hash_entry(src, entry, &mut bufs);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            if let Ok(mut out) = out.lock()
                && let Some(slot) = out.get_mut(i)
            {
                *slot = Some(r);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    let out = out.into_inner().unwrap_or_else(|e| e.into_inner());
    // The first failure by position; every entry is there when none failed.
    let mut hashes = Vec::with_capacity(entries.len());
    for (slot, entry) in out.into_iter().zip(entries) {
        match slot {
            Some(r) => hashes.push(r?),
            None => return Err(entry.fail("not read")),
        }
    }
    Ok(hashes)
}

/// One thread's buffers and inflater, reused from entry to entry.
struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
    inflater: Option<Decompress>,
}

impl Buffers {
    fn new() -> Self {
        Buffers {
            input: vec![0; IN_STEP],
            output: vec![0; OUT_STEP],
            inflater: None,
        }
    }

    /// A raw-deflate inflater in its initial state.
    fn inflater(&mut self) -> Decompress {
        match self.inflater.take() {
            Some(mut z) => {
                z.reset(false);
                z
            }
            None => Decompress::new(false),
        }
    }
}

/// One entry: exactly its declared bytes, the right CRC, a deflate stream that ends inside its
/// stored bytes (what Go's `archive/zip` reader insists on before the go command unpacks it).
fn hash_entry<S: ReadAt + ?Sized>(
    src: &S,
    e: &Entry,
    bufs: &mut Buffers,
) -> Result<[u8; 32], ModZipError> {
    let mut hasher = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut actual: u64 = 0;
    let mut take = |bytes: &[u8]| -> Result<(), ModZipError> {
        hasher.update(bytes);
        crc.update(bytes);
        actual += bytes.len() as u64;
        if actual > e.size {
            return Err(ModZipError::SizeMismatch {
                name: String::from_utf8_lossy(&e.name).into_owned(),
                declared: e.size,
                actual,
            });
        }
        Ok(())
    };
    let end = e
        .data
        .checked_add(e.stored)
        .ok_or_else(|| e.fail("data past the end of the zip"))?;
    let mut pos = e.data;
    // Stored bytes read but not yet inflated: `input[lo..hi]`.
    let (mut lo, mut hi) = (0, 0);
    let mut inflate = e.deflated.then(|| bufs.inflater());
    loop {
        if lo == hi && pos < end {
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(bufs.input.len());
            let n = src
                .read_at(&mut bufs.input[..want], pos)
                .map_err(|err| e.fail(format!("read failed: {err}")))?;
            if n == 0 {
                return Err(e.fail("data past the end of the zip"));
            }
            pos += n as u64;
            (lo, hi) = (0, n);
        }
        let Some(z) = inflate.as_mut() else {
            // Stored: the bytes are the contents.
            if lo == hi {
                break;
            }
            take(&bufs.input[lo..hi])?;
            lo = hi;
            continue;
        };
        let (before_in, before_out) = (z.total_in(), z.total_out());
        let status = z
            .decompress(&bufs.input[lo..hi], &mut bufs.output, FlushDecompress::None)
            .map_err(|err| e.fail(format!("bad deflate data: {err}")))?;
        let used = usize::try_from(z.total_in() - before_in).unwrap_or(usize::MAX);
        let made = usize::try_from(z.total_out() - before_out).unwrap_or(usize::MAX);
        lo = lo.saturating_add(used).min(hi);
        take(bufs.output.get(..made).unwrap_or_default())?;
        if status == Status::StreamEnd {
            break;
        }
        if used == 0 && made == 0 && !(lo == hi && pos < end) {
            // No progress with input left is corrupt data; without any, a stream cut short.
            return Err(e.fail(if lo < hi {
                "bad deflate data"
            } else {
                "deflate data ends early"
            }));
        }
    }
    if inflate.is_some() {
        bufs.inflater = inflate;
    }
    if actual != e.size {
        return Err(ModZipError::SizeMismatch {
            name: String::from_utf8_lossy(&e.name).into_owned(),
            declared: e.size,
            actual,
        });
    }
    if crc.finalize() != e.crc {
        return Err(e.fail("checksum (CRC-32) mismatch"));
    }
    Ok(hasher.finalize().into())
}
