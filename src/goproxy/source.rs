//! Where Go module files come from: private sources (a `cache/download` directory or a GOPROXY
//! with credentials) for matching module paths, else the public upstream list in order. Also the
//! negative cache for "not found" answers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use reqwest::Url;

use super::path::{ModulePath, escape};
use crate::cache::Flights;
use crate::config::{Config, EgressConfig, PrivateModuleConfig};
use crate::upstream::client::{basic_authorization, build_http, send_following};
use crate::upstream::health::{Health, guarded};
use crate::upstream::{EgressPolicy, UpstreamError};

/// Most remembered "not found" answers.
const MAX_NEGATIVE: usize = 100_000;

#[derive(Debug)]
pub enum SourceKind {
    /// The go command's `cache/download` layout on disk.
    Dir(PathBuf),
    /// A GOPROXY URL, with optional basic auth.
    Proxy {
        base: String,
        authz: Option<HeaderValue>,
    },
}

#[derive(Debug)]
pub struct Source {
    pub label: String,
    pub kind: SourceKind,
    /// Fail-fast state of a network source.
    pub health: Arc<Health>,
    /// False for private sources: their modules never reach the public checksum database.
    pub public: bool,
}

#[derive(Debug)]
pub struct PrivateRule {
    patterns: Vec<String>,
    pub source: Source,
}

/// What a source answered.
pub enum Fetched {
    Found(reqwest::Response),
    File(PathBuf),
    NotFound,
}

pub struct GoState {
    pub http: reqwest::Client,
    pub policy: std::sync::Arc<EgressPolicy>,
    pub max_redirects: usize,
    pub public: Vec<Source>,
    pub private: Vec<PrivateRule>,
    pub flights: Flights<String>,
    negative: Mutex<HashMap<String, Instant>>,
    pub not_found_ttl: Duration,
    /// Serialises checksum-database lookups, so the trusted tree head only moves forward.
    pub sumdb_lock: tokio::sync::Mutex<()>,
    /// Fail-fast state per checksum database.
    pub sumdb_health: HashMap<String, Arc<Health>>,
    pub offline: bool,
}

impl GoState {
    /// `password` gives each private source's `password()`, read by the caller (`app::Checked`).
    pub fn new(
        config: &Config,
        policy: std::sync::Arc<EgressPolicy>,
        mut password: impl FnMut(&PrivateModuleConfig) -> Option<String>,
    ) -> Result<GoState, String> {
        let go = &config.go;
        let egress: &EgressConfig = &config.egress;
        let public = go
            .upstreams
            .iter()
            .map(|u| Source {
                health: Arc::new(Health::new(
                    u,
                    egress.failure_threshold,
                    egress.probe_interval,
                )),
                label: u.clone(),
                kind: SourceKind::Proxy {
                    base: u.trim_end_matches('/').to_string(),
                    authz: None,
                },
                public: true,
            })
            .collect();
        let mut private = Vec::new();
        for p in &go.private {
            let kind = match (&p.dir, &p.url) {
                (Some(dir), _) => SourceKind::Dir(dir.clone()),
                (None, Some(url)) => {
                    let password = password(p);
                    let authz = p
                        .username
                        .as_deref()
                        .and_then(|u| basic_authorization(u, password.as_deref().unwrap_or("")));
                    SourceKind::Proxy {
                        base: url.trim_end_matches('/').to_string(),
                        authz,
                    }
                }
                (None, None) => return Err(format!("go.private {:?} has no source", p.pattern)),
            };
            private.push(PrivateRule {
                patterns: patterns(&p.pattern),
                source: Source {
                    health: Arc::new(Health::new(
                        &p.pattern,
                        egress.failure_threshold,
                        egress.probe_interval,
                    )),
                    label: format!("private source for {}", p.pattern),
                    kind,
                    public: false,
                },
            });
        }
        Ok(GoState {
            http: build_http(egress, policy.clone())?,
            policy,
            max_redirects: egress.max_redirects,
            public,
            private,
            flights: Flights::default(),
            negative: Mutex::new(HashMap::new()),
            not_found_ttl: go.not_found_ttl,
            sumdb_lock: tokio::sync::Mutex::new(()),
            sumdb_health: go
                .sumdbs
                .iter()
                .map(|d| {
                    let h = Health::new(&d.name, egress.failure_threshold, egress.probe_interval);
                    (d.name.clone(), Arc::new(h))
                })
                .collect(),
            offline: config.offline,
        })
    }

    /// The private rule a module falls under, if any.
    pub fn private_rule(&self, module: &ModulePath) -> Option<&PrivateRule> {
        self.private.iter().find(|r| {
            r.patterns
                .iter()
                .any(|p| matches_prefix_pattern(p, module.as_str()))
        })
    }

    /// Sources to try for `module`, in order.
    pub fn sources(&self, module: &ModulePath) -> Vec<&Source> {
        match self.private_rule(module) {
            Some(rule) => vec![&rule.source],
            None => self.public.iter().collect(),
        }
    }

    /// Fetches `<escaped module>/<rest>` (e.g. `@v/list`) from one source.
    pub async fn fetch(
        &self,
        src: &Source,
        module: &ModulePath,
        rest: &str,
    ) -> Result<Fetched, UpstreamError> {
        let rel = format!("{}/{rest}", escape(module.as_str()));
        match &src.kind {
            SourceKind::Dir(dir) => {
                let path = dir.join(&rel);
                // `rel` is built from a validated module path and version: no `..`, no
                // absolute part, so it stays under `dir`.
                Ok(if path.is_file() {
                    Fetched::File(path)
                } else {
                    Fetched::NotFound
                })
            }
            SourceKind::Proxy { base, authz } => {
                if self.offline {
                    return Err(UpstreamError::Offline);
                }
                let url = Url::parse(&format!("{base}/{rel}"))
                    .map_err(|e| UpstreamError::Protocol(format!("bad upstream URL: {e}")))?;
                let call = send_following(
                    &self.http,
                    (&self.policy, None),
                    self.max_redirects,
                    Method::GET,
                    url,
                    http::HeaderMap::new(),
                    authz.clone(),
                );
                let probe = format!("{base}/");
                let resp = guarded(&src.health, &self.http, &self.policy, &probe, call).await?;
                match resp.status().as_u16() {
                    200 => Ok(Fetched::Found(resp)),
                    404 | 410 => Ok(Fetched::NotFound),
                    s => Err(UpstreamError::Status { status: s }),
                }
            }
        }
    }

    pub fn remember_not_found(&self, key: &str) {
        let mut neg = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        if neg.len() >= MAX_NEGATIVE {
            let now = Instant::now();
            neg.retain(|_, until| *until > now);
            if neg.len() >= MAX_NEGATIVE {
                neg.clear();
            }
        }
        neg.insert(key.to_string(), Instant::now() + self.not_found_ttl);
    }

    pub fn known_not_found(&self, key: &str) -> bool {
        let neg = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        neg.get(key).is_some_and(|until| *until > Instant::now())
    }

    pub fn forget_not_found(&self, key: &str) {
        let mut neg = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        neg.remove(key);
    }
}

/// The patterns of a `go.private` rule's comma-separated `pattern`.
fn patterns(pattern: &str) -> Vec<String> {
    pattern
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether the config's `[[go.private]]` rules cover a module, as the running proxy decides it
/// (none does with the Go proxy disabled): for the commands that check without a server.
pub fn is_private(config: &crate::config::GoConfig, module: &ModulePath) -> bool {
    config.enabled
        && config.private.iter().any(|p| {
            patterns(&p.pattern)
                .iter()
                .any(|pat| matches_prefix_pattern(pat, module.as_str()))
        })
}

/// GOPRIVATE matching (golang.org/x/mod/module.MatchPrefixPatterns): the pattern is a glob
/// matched against the leading path elements of `target`, element by element.
pub fn matches_prefix_pattern(pattern: &str, target: &str) -> bool {
    let n = pattern.split('/').count();
    let elems: Vec<&str> = target.split('/').collect();
    if elems.len() < n {
        return false;
    }
    pattern
        .split('/')
        .zip(elems.iter())
        .all(|(p, t)| glob_match(p.as_bytes(), t.as_bytes()))
}

/// `path.Match` for one element: `*`, `?`, and literal bytes (no classes).
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&p[1..], t) || (!t.is_empty() && glob_match(p, &t[1..])),
        (Some(b'?'), Some(_)) => glob_match(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&p[1..], &t[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goprivate_patterns_match_path_prefixes() {
        assert!(matches_prefix_pattern(
            "corp.example.com",
            "corp.example.com/x/y"
        ));
        assert!(matches_prefix_pattern(
            "*.corp.example.com",
            "git.corp.example.com/x"
        ));
        assert!(!matches_prefix_pattern(
            "*.corp.example.com",
            "corp.example.com/x"
        ));
        assert!(matches_prefix_pattern("rsc.io/private", "rsc.io/private/x"));
        assert!(!matches_prefix_pattern(
            "rsc.io/private",
            "rsc.io/privateer"
        ));
        assert!(!matches_prefix_pattern("rsc.io/private", "rsc.io"));
        assert!(matches_prefix_pattern(
            "github.com/acme-*",
            "github.com/acme-internal/tool"
        ));
    }
}
