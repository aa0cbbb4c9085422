//! Lazy pulling: a `Range` of a blob that is still being filled. eStargz, SOCI and nydus read
//! small ranges of large layers; one near the end of a cold layer would otherwise wait for the
//! whole fill. When the fill has not reached the range and is not about to, the range is
//! forwarded to the upstream and streamed back at once, marked unverified (those bytes are never
//! stored; the one full fill, already running, checks the blob when it completes).
//! `registry.cold_ranges = "wait"` turns this off.
//!
//! Any doubt falls back to the fill: an upstream that fails, answers without `206`, or names
//! another range or size than asked.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::sync::OwnedSemaphorePermit;
use wharf_storage::Digest;

use super::routes::RepoName;
use crate::cache::{ByteRange, Engine, Outcome, Served};
use crate::config::ColdRanges;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// A range starting less than this beyond the fill's progress is answered from the fill: it
/// is about to be there, and a second upstream request would not be faster.
const NEAR: u64 = 4 << 20;

/// Longest range forwarded: lazy pullers read small ranges; a larger one waits for the fill
/// rather than taking many unverified bytes.
const MAX_FORWARD: u64 = 16 << 20;

/// The header that marks bytes taken from the upstream before the fill verified them.
pub const UNVERIFIED: &str = "x-wharf-unverified";

/// The range a request asks for, when it should go to the upstream instead of waiting for the
/// fill behind `served`.
pub fn ahead_of_fill(mode: ColdRanges, served: &Served, range: Option<&str>) -> Option<ByteRange> {
    if mode == ColdRanges::Wait {
        return None;
    }
    let written = served.fill_written()?;
    let r = ByteRange::parse(range, served.size?).ok()??;
    (r.start > written.saturating_add(NEAR) && r.len() <= MAX_FORWARD).then_some(r)
}

/// A range of a blob passed through unstored (no room on disk), to forward: only in
/// `upstream` mode and not too long (else the verified whole is sent).
pub fn of_pass_through(mode: ColdRanges, range: Option<&str>, size: u64) -> Option<ByteRange> {
    if mode == ColdRanges::Wait {
        return None;
    }
    let r = ByteRange::parse(range, size).ok()??;
    (r.len() <= MAX_FORWARD).then_some(r)
}

/// Asks the upstream for `r` of the blob and answers with it, or `None` when the answer is not
/// exactly that range of a blob of `size` bytes (the caller then serves it from the fill).
/// Takes a fill permit for as long as it streams; with none free, `None` at once.
pub async fn forward(
    engine: &Engine,
    up: &Arc<UpstreamClient>,
    name: &RepoName,
    digest: &Digest,
    (r, size): (ByteRange, u64),
    outcome: Outcome,
    metrics: &Metrics,
) -> Option<Response> {
    let permit = engine.try_permit()?;
    let path = format!("/v2/{name}/blobs/{digest}");
    let mut headers = HeaderMap::new();
    let asked = format!("bytes={}-{}", r.start, r.end - 1);
    headers.insert(header::RANGE, HeaderValue::from_str(&asked).ok()?);
    let scope = format!("repository:{name}:pull");
    let resp = match up.send_with(Method::GET, &path, headers, &scope).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "cold range from upstream failed; waiting for the fill");
            return None;
        }
    };
    let content_range = format!("bytes {}-{}/{size}", r.start, r.end - 1);
    if !answers_exactly(
        resp.status(),
        resp.headers(),
        &content_range,
        r.end - r.start,
    ) {
        tracing::debug!(status = %resp.status(), "upstream did not answer the range as asked; waiting for the fill");
        return None;
    }
    metrics.count_cold_range(true);
    let len = r.end - r.start;
    let body = exactly(Box::pin(resp.bytes_stream()), len, permit);
    let mut out = Body::from_stream(body).into_response();
    *out.status_mut() = StatusCode::PARTIAL_CONTENT;
    let h = out.headers_mut();
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set("content-range", &content_range);
    set("content-length", &len.to_string());
    set("content-type", "application/octet-stream");
    set("accept-ranges", "bytes");
    set("docker-content-digest", digest.as_str());
    set(UNVERIFIED, "upstream-range");
    outcome.mark(&mut out);
    Some(out)
}

/// Whether an upstream answer is exactly the asked range: `206`, the same `Content-Range` and,
/// when given, the same length.
fn answers_exactly(status: StatusCode, h: &HeaderMap, content_range: &str, len: u64) -> bool {
    let header = |k: header::HeaderName| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    status == StatusCode::PARTIAL_CONTENT
        && header(header::CONTENT_RANGE) == Some(content_range)
        && header(header::CONTENT_LENGTH).is_none_or(|l| l == len.to_string())
}

/// Exactly `len` bytes of `inner`: a longer body is cut there, a shorter one ends in an error,
/// so the client sees a cut body, never a short one that looks whole.
fn exactly<S>(
    inner: S,
    len: u64,
    permit: OwnedSemaphorePermit,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>>
where
    S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    // The permit goes with the stream's state: released when the body ends or is dropped.
    futures_util::stream::unfold(
        (inner, len, permit),
        |(mut inner, left, permit)| async move {
            if left == 0 {
                return None;
            }
            let item = match inner.next().await {
                Some(Ok(mut b)) => {
                    b.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - b.len() as u64;
                    return Some((Ok(b), (inner, left, permit)));
                }
                Some(Err(e)) => Err(std::io::Error::other(e)),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the upstream's range ended early",
                )),
            };
            Some((item, (inner, 0, permit)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_range_is_taken() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 10-19/100".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        let exact = |s, h: &HeaderMap, cr| answers_exactly(s, h, cr, 10);
        assert!(exact(StatusCode::PARTIAL_CONTENT, &h, "bytes 10-19/100"));
        assert!(!exact(StatusCode::OK, &h, "bytes 10-19/100"), "whole body");
        assert!(
            !exact(StatusCode::PARTIAL_CONTENT, &h, "bytes 10-19/101"),
            "other size"
        );
        assert!(
            !exact(StatusCode::PARTIAL_CONTENT, &h, "bytes 11-20/100"),
            "other range"
        );
        h.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert!(
            !exact(StatusCode::PARTIAL_CONTENT, &h, "bytes 10-19/100"),
            "other length"
        );
    }
}
