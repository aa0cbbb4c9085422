//! Where an answer came from, typed: set by the handlers (`mark`) as the `X-Cache` header, and
//! read back as an `Outcome` by the router's guard for metrics (`of`). This module is the only
//! place that knows the header and its values. (Not a response extension: inserting one costs
//! two allocations per answer, measured at 5-7% of warm manifest requests per second.)

use http::{HeaderName, HeaderValue};

/// The header that tells clients (and operators) where an answer came from.
pub const HEADER: HeaderName = HeaderName::from_static("x-cache");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache without asking upstream.
    Hit,
    /// Fetched from upstream (or joined a fill in progress) for this request.
    Miss,
    /// Upstream failed or could not be asked; the last known answer was served.
    Stale,
    /// Streamed from the source and verified on the way, not stored: the local disk had no
    /// room for it.
    Bypass,
}

impl Outcome {
    /// The `X-Cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
        }
    }

    /// Marks `resp` as answered with this outcome: the `X-Cache` header and the request's span.
    /// The outcome as a metrics label (lower case).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }

    pub fn mark<B>(self, resp: &mut http::Response<B>) {
        tracing::Span::current().record("cache", self.as_str());
        resp.headers_mut()
            .insert(HEADER, HeaderValue::from_static(self.as_str()));
    }

    /// The outcome a handler marked `resp` with; `None` for answers that are not cache answers
    /// (the `/v2/` ping, errors).
    pub fn of<B>(resp: &http::Response<B>) -> Option<Outcome> {
        match resp.headers().get(HEADER)?.as_bytes() {
            b"HIT" => Some(Outcome::Hit),
            b"MISS" => Some(Outcome::Miss),
            b"STALE" => Some(Outcome::Stale),
            b"BYPASS" => Some(Outcome::Bypass),
            _ => None,
        }
    }
}
