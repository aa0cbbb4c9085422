//! Where an answer came from, typed: set by the handlers, read by the header layer, the
//! request log and metrics. One label set for every protocol.

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
}
