//! Where Go module files come from: private sources (a `cache/download` directory or a GOPROXY
//! with credentials) for matching module paths, else the public upstream list in order. Also the
//! negative cache for "not found" answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use reqwest::Url;

use super::path::{ModulePath, escape};
use crate::cache::Flights;
use crate::config::{Config, ConfigError, EgressConfig, EndpointConfig};
use crate::upstream::client::{
    SOCKET_ORIGIN, basic_authorization, build_http, build_unix_http, send_following,
};
use crate::upstream::health::{Health, HealthReport, guarded};
use crate::upstream::pool::{Member, Pool, Slot, host_label};
use crate::upstream::{EgressPolicy, UpstreamError};

/// Most remembered "not found" answers.
const MAX_NEGATIVE: usize = 100_000;

#[derive(Debug)]
pub enum SourceKind {
    /// The go command's `cache/download` layout on disk.
    Dir(PathBuf),
    /// A GOPROXY: one endpoint, or a pool of them serving the same content.
    Proxy(Pool<GoEndpoint>),
}

/// One GOPROXY endpoint, with optional basic auth.
#[derive(Debug)]
pub struct GoEndpoint {
    pub slot: Arc<Slot>,
    pub base: String,
    authz: Option<HeaderValue>,
    /// A GOPROXY on a Unix socket (`unix:///path`, serving from its root): the client bound to
    /// it and its path, checked against its own `egress.allow` entry on every request.
    socket: Option<(reqwest::Client, Arc<Path>)>,
}

impl Member for GoEndpoint {
    fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

#[derive(Debug)]
pub struct Source {
    pub label: String,
    /// What `/healthz` and `/metrics` name it by.
    pub name: String,
    pub kind: SourceKind,
    /// False for private sources: their modules never reach the public checksum database.
    pub public: bool,
}

impl Source {
    /// Its state, from its endpoints' (a directory is always up).
    pub fn report(&self) -> HealthReport {
        match &self.kind {
            SourceKind::Dir(_) => Health::new(&self.name, 1, Duration::ZERO).report(),
            SourceKind::Proxy(pool) => pool.report(&self.name),
        }
    }

    pub fn pool(&self) -> Option<&Pool<GoEndpoint>> {
        match &self.kind {
            SourceKind::Proxy(pool) => Some(pool),
            SourceKind::Dir(_) => None,
        }
    }
}

/// A GOPROXY pool from its endpoints; a lone endpoint's health is named `name`, a pool's by
/// `name` and host. `authz(i)`: the `Authorization` of endpoint `i`.
fn proxy_pool(
    name: &str,
    eps: &[EndpointConfig],
    egress: &EgressConfig,
    mut authz: impl FnMut(usize) -> Option<HeaderValue>,
) -> Result<Pool<GoEndpoint>, String> {
    let mut endpoints = Vec::with_capacity(eps.len());
    for (i, ep) in eps.iter().enumerate() {
        let label = if eps.len() == 1 {
            name.to_string()
        } else {
            format!("{name} {}", host_label(&ep.url))
        };
        let mut health = Health::new(&label, egress.failure_threshold, egress.probe_interval);
        health.ejection = (egress.ejection_time, egress.max_ejection_time);
        let socket: Option<(reqwest::Client, Arc<Path>)> =
            match crate::config::unix_socket_url(&ep.url) {
                Some(path) => Some((build_unix_http(egress, &path)?, Arc::from(path))),
                None => None,
            };
        health.socket = socket.as_ref().map(|(_, path)| path.clone());
        let base = match socket {
            Some(_) => SOCKET_ORIGIN,
            None => ep.url.trim_end_matches('/'),
        };
        endpoints.push(GoEndpoint {
            slot: Arc::new(Slot::new(&ep.url, ep.weight, health)),
            base: base.to_string(),
            authz: authz(i),
            socket,
        });
    }
    Ok(Pool::new(endpoints))
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

/// Verified checksum-database responses by database and path (`GoState::sumdb_storing`).
pub type VerifiedInFlight = HashMap<(String, String), Arc<Vec<u8>>>;

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
    /// Verified checksum-database responses on their way to disk (`verify::lookup_hashes`
    /// stores them after the verdict, off the fill's path), by database and path; read like
    /// the stored ones until they are stored.
    pub sumdb_storing: Mutex<VerifiedInFlight>,
    /// Fail-fast state per checksum database.
    pub sumdb_health: HashMap<String, Arc<Health>>,
    pub offline: bool,
}

impl GoState {
    /// `password` turns each private source's `password()` (and each of its endpoints' own)
    /// into the password, read by the caller (`app::Checked`).
    pub fn new(
        config: &Config,
        policy: std::sync::Arc<EgressPolicy>,
        mut password: impl FnMut(Result<Option<String>, ConfigError>) -> Option<String>,
    ) -> Result<GoState, String> {
        let go = &config.go;
        let egress: &EgressConfig = &config.egress;
        let public = go
            .upstreams
            .iter()
            .map(|u| {
                let label = u.label();
                Ok(Source {
                    kind: SourceKind::Proxy(proxy_pool(&label, &u.0, egress, |_| None)?),
                    name: label.clone(),
                    label,
                    public: true,
                })
            })
            .collect::<Result<_, String>>()?;
        let mut private = Vec::new();
        for p in &go.private {
            let eps = p.endpoints();
            let kind = match &p.dir {
                Some(dir) => SourceKind::Dir(dir.clone()),
                None if eps.is_empty() => {
                    return Err(format!("go.private {:?} has no source", p.pattern));
                }
                None => {
                    let rule = password(p.password());
                    let own: Vec<Option<String>> = eps
                        .iter()
                        .map(|e| e.username.as_ref().and(password(e.password())))
                        .collect();
                    SourceKind::Proxy(proxy_pool(&p.pattern, &eps, egress, |i| {
                        match eps[i].username.as_deref() {
                            Some(u) => basic_authorization(u, own[i].as_deref().unwrap_or("")),
                            None => p.username.as_deref().and_then(|u| {
                                basic_authorization(u, rule.as_deref().unwrap_or(""))
                            }),
                        }
                    })?)
                }
            };
            private.push(PrivateRule {
                patterns: patterns(&p.pattern),
                source: Source {
                    name: p.pattern.clone(),
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
            sumdb_storing: Mutex::new(HashMap::new()),
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
            SourceKind::Proxy(pool) => {
                if self.offline {
                    return Err(UpstreamError::Offline);
                }
                let rel = &rel;
                let resp = pool
                    .send(|ep| async move {
                        let url = Url::parse(&format!("{}/{rel}", ep.base)).map_err(|e| {
                            UpstreamError::Protocol(format!("bad upstream URL: {e}"))
                        })?;
                        let (http, socket) = match &ep.socket {
                            Some((http, path)) => (http, Some(&**path)),
                            None => (&self.http, None),
                        };
                        let call = send_following(
                            http,
                            (&self.policy, socket),
                            self.max_redirects,
                            Method::GET,
                            url,
                            http::HeaderMap::new(),
                            ep.authz.clone(),
                        );
                        let probe = format!("{}/", ep.base);
                        guarded(&ep.slot.health, http, &self.policy, &probe, call).await
                    })
                    .await?;
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
