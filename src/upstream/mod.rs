//! Everything that talks to the outside: the egress policy, the per-upstream HTTP client with
//! registry token auth, and the errors that say how an upstream failed. No disk access here.

pub mod auth;
pub mod client;
pub mod egress;
pub mod health;
pub mod pool;

pub use client::UpstreamClient;
pub use egress::{EgressError, EgressPolicy};

/// How an upstream request failed. Messages name hosts (redacted URLs), never credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Egress(EgressError),
    #[error("cannot connect to {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("timed out talking to {0} (egress.connect_timeout / egress.read_timeout)")]
    Timeout(String),
    #[error("transfer from {target} failed: {detail}")]
    Transport { target: String, detail: String },
    #[error("upstream redirect refused: {0}")]
    Redirect(String),
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    #[error("upstream answered {status}")]
    Status { status: u16 },
    #[error("upstream sent an invalid response: {0}")]
    Protocol(String),
    #[error("upstream response exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("upstream content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("upstream ended the body after {got} of {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    /// Marked down after repeated connection failures; not contacted until a probe succeeds.
    #[error("upstream {0} is down (repeated connection failures); retrying in the background")]
    Down(String),
    /// `offline = true`: no upstream is ever contacted.
    #[error("wharf is offline: this content is not in the offline cache")]
    Offline,
}

impl UpstreamError {
    /// A short description for clients: no URLs, no nested transport detail (those go to the
    /// log). Egress refusals keep their full text, which names the host and the key to change.
    pub fn summary(&self) -> String {
        match self {
            UpstreamError::Egress(e) => e.to_string(),
            UpstreamError::Connect { detail, .. } => {
                let cause = detail.rsplit(": ").next().unwrap_or("").trim();
                if cause.is_empty() {
                    "cannot connect to the upstream".into()
                } else {
                    format!("cannot connect to the upstream ({cause})")
                }
            }
            UpstreamError::Timeout(_) => "the upstream timed out".into(),
            UpstreamError::Transport { .. } => "the transfer from the upstream failed".into(),
            UpstreamError::Redirect(m) => format!("upstream redirect refused: {m}"),
            UpstreamError::Auth(_) => "authentication with the upstream failed".into(),
            other => other.to_string(),
        }
    }

    /// A rate limit or server-side failure: worth serving a stale answer instead.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, UpstreamError::Status { status: 429 })
    }
}
