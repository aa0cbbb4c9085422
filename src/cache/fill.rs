//! The copy at the heart of every fill: an upstream body into a `BlobWriter` (hashed as it is
//! written), with the flight's watchers told how far they may read. Shared by the registry and
//! the Go proxy; what to fetch and how to verify it stays with them.

use std::hash::Hash;

use wharf_storage::BlobWriter;

use super::flight::Leader;

/// Watchers are woken at most once per this many new bytes (and at the end), not per network
/// read: a wake-up costs more than the few kilobytes one read brings.
const PROGRESS_STEP: u64 = 64 * 1024;

#[derive(Debug)]
pub enum CopyError {
    /// The connection failed mid-body.
    Transport(reqwest::Error),
    /// More bytes than the upstream's `Content-Length`.
    Overlong { content_length: u64 },
    /// More bytes than the caller's limit, declared or sent.
    TooLarge { limit: u64 },
    /// The body ended before its `Content-Length`.
    Truncated { expected: u64, got: u64 },
    /// The temp file could not be written.
    Write(std::io::Error),
}

/// Copies `resp`'s body into `writer`, at most `limit` bytes. Publishes `Streaming` first, then
/// progress. Returns the number of bytes written, which equals the `Content-Length` if any.
pub async fn copy_body<K: Hash + Eq + Clone>(
    mut resp: reqwest::Response,
    writer: &mut BlobWriter,
    leader: &Leader<K>,
    limit: u64,
) -> Result<u64, CopyError> {
    let size = resp.content_length();
    if size.is_some_and(|n| n > limit) {
        return Err(CopyError::TooLarge { limit });
    }
    leader.streaming(writer.file(), size);
    let mut notified = writer.written();
    while let Some(chunk) = resp.chunk().await.map_err(CopyError::Transport)? {
        let after = writer.written() + chunk.len() as u64;
        match size {
            Some(content_length) if after > content_length => {
                return Err(CopyError::Overlong { content_length });
            }
            None if after > limit => return Err(CopyError::TooLarge { limit }),
            _ => {}
        }
        writer.write_all(&chunk).map_err(CopyError::Write)?;
        if writer.written() - notified >= PROGRESS_STEP {
            notified = writer.written();
            leader.progress(notified);
        }
    }
    let written = writer.written();
    leader.progress(written);
    if let Some(expected) = size.filter(|&n| n != written) {
        return Err(CopyError::Truncated {
            expected,
            got: written,
        });
    }
    Ok(written)
}
