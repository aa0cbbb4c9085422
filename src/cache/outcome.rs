//! Where an answer came from, typed: set by the handlers (`mark`), which also writes the
//! `X-Cache` header; read back from the response's extensions by the router's guard for
//! metrics, so no one parses a header string. One label set for every protocol.

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
}

impl Outcome {
    /// The `X-Cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
        }
    }

    /// Marks `resp` as answered with this outcome: the `X-Cache` header, the response's
    /// extensions (for metrics) and the request's span.
    pub fn mark<B>(self, resp: &mut http::Response<B>) {
        tracing::Span::current().record("cache", self.as_str());
        resp.headers_mut()
            .insert(HEADER, HeaderValue::from_static(self.as_str()));
        resp.extensions_mut().insert(self);
    }
}
