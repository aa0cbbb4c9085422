//! Bytes that are not stored, checked on their way to a client: a passed-through object (no
//! room to store it) and the rest of a fill whose disk ran full part way (`flight::Spill`). Both
//! hash what they send and hold the last chunk back until the whole matches its digest.

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use tokio::sync::OwnedSemaphorePermit;
use wharf_storage::{Digest, Hasher};

use super::flight::Incoming;

/// Where a checked stream starts in its object: the hash of the bytes before it and how many.
pub struct StartAt {
    pub hasher: Hasher,
    pub offset: u64,
}

impl StartAt {
    /// The object's first byte.
    pub fn object() -> StartAt {
        StartAt {
            hasher: Hasher::new(),
            offset: 0,
        }
    }
}

/// `incoming` (the object from `from.offset` on; its `len` is the whole object's) as a client
/// body, checked on the way: at most `limit` bytes in all and never past the announced length;
/// the last chunk is held back until the whole hashes to `expected`, and the body ends in an
/// error instead when it does not (or ends short). `permit`: a fill permit it keeps while it
/// runs, if any.
pub fn checked_stream(
    incoming: Incoming,
    expected: Digest,
    limit: u64,
    permit: Option<OwnedSemaphorePermit>,
    from: StartAt,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    struct State {
        _permit: Option<OwnedSemaphorePermit>,
        body: BoxStream<'static, Result<Bytes, super::FillError>>,
        len: Option<u64>,
        hasher: Option<Hasher>,
        held: Option<Bytes>,
        seen: u64,
    }
    let fail = |m: String| std::io::Error::other(m);
    let state = State {
        _permit: permit,
        body: incoming.body,
        len: incoming.len,
        hasher: Some(from.hasher),
        held: None,
        seen: from.offset,
    };
    futures_util::stream::unfold(state, move |mut s| {
        let expected = expected.clone();
        async move {
            let hasher = s.hasher.as_mut()?;
            loop {
                match s.body.next().await {
                    Some(Ok(chunk)) => {
                        s.seen += chunk.len() as u64;
                        if s.seen > limit || s.len.is_some_and(|n| s.seen > n) {
                            s.hasher = None;
                            return Some((Err(fail("the source sent more than announced".into())), s));
                        }
                        hasher.update(&chunk);
                        if let Some(prev) = s.held.replace(chunk) {
                            return Some((Ok(prev), s));
                        }
                    }
                    Some(Err(e)) => {
                        s.hasher = None;
                        return Some((Err(fail(format!("{e:?}"))), s));
                    }
                    None => {
                        let hasher = s.hasher.take()?;
                        if s.len.is_some_and(|n| n != s.seen) {
                            return Some((Err(fail("the source ended early".into())), s));
                        }
                        let actual = hasher.finish();
                        if actual != expected {
                            tracing::error!(%expected, %actual, "content sent unstored does not match its digest; cut");
                            return Some((
                                Err(fail(format!("content does not match its digest {expected}"))),
                                s,
                            ));
                        }
                        return s.held.take().map(|last| (Ok(last), s));
                    }
                }
            }
        }
    })
    .boxed()
}
