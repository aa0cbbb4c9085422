//! Read buffers for blob bodies, recycled instead of allocated per chunk.
//!
//! A chunk handed to hyper is a `Bytes` that owns a pooled buffer; when hyper has written it and
//! drops it, the buffer goes back to the pool. Buffers are zeroed once, when first made, so a
//! recycled buffer costs neither an allocation, nor page faults, nor a memset.
//!
//! Memory bound: buffers in use are bounded by the responses in progress (each holds at most
//! the chunk hyper is writing and the one being read); idle buffers kept for reuse are at most
//! `MAX_IDLE`, so `MAX_IDLE * CHUNK` (16 MiB) once the load is gone.

use std::sync::Mutex;

use bytes::Bytes;

/// Size of every pooled buffer: the largest read a body makes.
pub const CHUNK: usize = 256 * 1024;

/// Idle buffers kept for reuse; more are freed when returned.
const MAX_IDLE: usize = 64;

static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A `CHUNK`-sized, initialised buffer from the pool (or a new one when the pool is empty).
pub fn take() -> Vec<u8> {
    let reused = IDLE.lock().unwrap_or_else(|p| p.into_inner()).pop();
    reused.unwrap_or_else(|| vec![0; CHUNK])
}

/// Gives a buffer back (it must have come from `take`).
pub fn give(buf: Vec<u8>) {
    if buf.len() != CHUNK {
        return;
    }
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < MAX_IDLE {
        idle.push(buf);
    }
}

/// The first `len` bytes of a pooled buffer as `Bytes`, without copying; the buffer returns to
/// the pool when the last clone of the `Bytes` is dropped.
pub fn freeze(buf: Vec<u8>, len: usize) -> Bytes {
    let len = len.min(buf.len());
    Bytes::from_owner(Pooled { buf, len })
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_chunks_return_their_buffer_to_the_pool() {
        let mut buf = take();
        buf[..3].copy_from_slice(b"abc");
        let ptr = buf.as_ptr();
        let bytes = freeze(buf, 3);
        assert_eq!(&bytes[..], b"abc");
        let clone = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&clone[..], b"bc");
        drop(clone);
        // Other tests share the pool, so look for the buffer rather than expect it on top.
        let idle = IDLE.lock().unwrap();
        assert!(idle.iter().any(|b| b.as_ptr() == ptr && b.len() == CHUNK));
    }

    #[test]
    fn foreign_buffers_are_not_kept() {
        give(vec![0; 10]);
        assert!(IDLE.lock().unwrap().iter().all(|b| b.len() == CHUNK));
    }
}
