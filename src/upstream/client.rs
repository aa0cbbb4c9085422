//! One HTTP client per upstream registry: egress checks on every hop, manual redirects (so
//! credentials are dropped for good on any change of host, port or scheme), bearer-token and
//! basic auth from the registry's challenge, tokens cached per scope until they expire.
//!
//! It knows nothing of disk or caching; callers get a `reqwest::Response` whose status they
//! interpret.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use reqwest::Url;

use super::UpstreamError;
use super::auth::{Challenge, TokenResponse, parse_challenge};
use super::egress::{EgressError, EgressPolicy, redact, strip_userinfo};
use super::pool::{self, Member, Pool, Slot};
use crate::config::{EgressConfig, UpstreamConfig};

/// Upstream credentials; `Debug` never prints the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

/// Largest token-service answer read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

#[derive(Debug, Clone)]
enum KnownAuth {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

#[derive(Debug)]
pub struct UpstreamClient {
    pub name: String,
    /// `name`, shared: what a response names as the upstream that answered (no copy per request).
    pub label: Arc<str>,
    /// Its endpoints (one for `url`, several for `urls`), each with its own connection, auth
    /// state, token cache and health.
    pub pool: Pool<Endpoint>,
    policy: Arc<EgressPolicy>,
    max_redirects: usize,
    /// The pull quota the upstream last reported (`RateLimit-Limit` / `RateLimit-Remaining`).
    pub rate: RateLimit,
    /// When the upstream last said it has no OCI referrers API (unix seconds; 0: not known).
    pub no_referrers_api: std::sync::atomic::AtomicU64,
    offline: bool,
}

/// One endpoint of a registry upstream.
#[derive(Debug)]
pub struct Endpoint {
    slot: Arc<Slot>,
    base: String,
    /// The endpoint's URL: the scheme and port its credentials are bound to.
    origin: Url,
    http: reqwest::Client,
    /// The Unix socket every request goes to (`url = "unix:///path"`), else the network.
    socket: Option<Arc<Path>>,
    /// Its own credentials, else the upstream's.
    creds: Option<Credentials>,
    auth: Mutex<Option<KnownAuth>>,
    /// Tokens by realm, service and scope.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl Member for Endpoint {
    fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

/// The last `RateLimit-Limit` and `RateLimit-Remaining` an upstream sent (Docker Hub's form,
/// `100;w=21600`: the count before any `;`); `u64::MAX` until one arrives.
#[derive(Debug)]
pub struct RateLimit {
    limit: std::sync::atomic::AtomicU64,
    remaining: std::sync::atomic::AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            limit: std::sync::atomic::AtomicU64::new(u64::MAX),
            remaining: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

impl RateLimit {
    /// Reads the headers of one upstream answer.
    pub fn observe(&self, headers: &HeaderMap) {
        use std::sync::atomic::Ordering::Relaxed;
        let count = |name: &str| {
            let v = headers.get(name)?.to_str().ok()?;
            v.split(';').next()?.trim().parse::<u64>().ok()
        };
        if let (Some(limit), Some(remaining)) =
            (count("ratelimit-limit"), count("ratelimit-remaining"))
        {
            self.limit.store(limit, Relaxed);
            self.remaining.store(remaining.min(limit), Relaxed);
        }
    }

    /// `(limit, remaining)`, once the upstream has reported them.
    pub fn get(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let (l, r) = (self.limit.load(Relaxed), self.remaining.load(Relaxed));
        (l != u64::MAX).then_some((l, r))
    }

    /// `ttl`, stretched while the quota left is under `headroom` (a fraction of the limit): up
    /// to 10x as it runs out, so revalidation does not spend what pulls need.
    pub fn stretch(&self, ttl: std::time::Duration, headroom: f64) -> std::time::Duration {
        let Some((limit, remaining)) = self.get().filter(|(l, _)| *l > 0) else {
            return ttl;
        };
        let left = remaining as f64 / limit as f64;
        if headroom <= 0.0 || left >= headroom {
            return ttl;
        }
        ttl.mul_f64(1.0 + 9.0 * (1.0 - left / headroom))
    }
}

impl UpstreamClient {
    /// `password` is `cfg.password()`, read by the caller (`app::Checked`); endpoints with
    /// credentials of their own need `with_passwords`.
    pub fn new(
        cfg: &UpstreamConfig,
        password: Option<String>,
        egress: &EgressConfig,
        policy: Arc<EgressPolicy>,
        offline: bool,
    ) -> Result<UpstreamClient, String> {
        Self::with_passwords(cfg, password, &[], egress, policy, offline)
    }

    /// `own[i]`: the password of `cfg.endpoints()[i]`'s own username, if it has one.
    pub fn with_passwords(
        cfg: &UpstreamConfig,
        password: Option<String>,
        own: &[Option<String>],
        egress: &EgressConfig,
        policy: Arc<EgressPolicy>,
        offline: bool,
    ) -> Result<UpstreamClient, String> {
        let creds = cfg.username.as_ref().map(|u| Credentials {
            username: u.clone(),
            password: password.unwrap_or_default(),
        });
        let shared_http = build_http(egress, policy.clone())?;
        let eps = cfg.endpoints();
        let mut endpoints = Vec::with_capacity(eps.len());
        for (i, ep) in eps.iter().enumerate() {
            let socket: Option<Arc<Path>> = crate::config::unix_socket_url(&ep.url).map(Arc::from);
            let (http, base) = match &socket {
                Some(path) => (build_unix_http(egress, path)?, SOCKET_ORIGIN.to_string()),
                None => (
                    shared_http.clone(),
                    ep.url.trim_end_matches('/').to_string(),
                ),
            };
            let origin =
                Url::parse(&base).map_err(|e| format!("registry.upstream {:?}: {e}", cfg.name))?;
            // A lone endpoint is the upstream, named as before; a pool's are named by host.
            let label = if eps.len() == 1 {
                cfg.name.clone()
            } else {
                format!("{} {}", cfg.name, pool::host_label(&ep.url))
            };
            let mut health =
                super::health::Health::new(&label, egress.failure_threshold, egress.probe_interval);
            health.socket = socket.clone();
            health.ejection = (egress.ejection_time, egress.max_ejection_time);
            let own_creds = ep.username.as_ref().map(|u| Credentials {
                username: u.clone(),
                password: own.get(i).cloned().flatten().unwrap_or_default(),
            });
            endpoints.push(Endpoint {
                slot: Arc::new(Slot::new(&ep.url, ep.weight, health)),
                base,
                origin,
                http,
                socket,
                creds: own_creds.or_else(|| creds.clone()),
                auth: Mutex::new(None),
                tokens: Mutex::new(HashMap::new()),
            });
        }
        Ok(UpstreamClient {
            name: cfg.name.clone(),
            label: Arc::from(cfg.name.as_str()),
            pool: Pool::new(endpoints),
            policy,
            max_redirects: egress.max_redirects,
            rate: RateLimit::default(),
            no_referrers_api: std::sync::atomic::AtomicU64::new(0),
            offline,
        })
    }

    /// Whether wharf authenticates to this upstream: its content may be private per repository.
    pub fn has_credentials(&self) -> bool {
        self.pool.endpoints.iter().any(|e| e.creds.is_some())
    }

    /// The upstream's state, from its endpoints' (`/healthz`, `/metrics`).
    pub fn report(&self) -> super::health::HealthReport {
        self.pool.report(&self.name)
    }

    /// Sends `method path_and_query` (path starting with `/v2/`) with the given `Accept` list,
    /// authenticating for `scope` (`repository:<name>:pull`) when the registry asks.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        accept: &[&str],
        scope: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.send_with(method, path_and_query, accept_headers(accept), scope)
            .await
    }

    /// `send` with request headers of the caller's (`Accept`, `Range`); `Authorization` is
    /// wharf's to set and is replaced. Goes to one endpoint of the pool, the next on failure.
    pub async fn send_with(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        scope: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline);
        }
        let (method, headers) = (&method, &headers);
        self.pool
            .send(|ep| async move {
                let call = self.send_inner(&ep, method.clone(), path_and_query, headers, scope);
                let probe = format!("{}/v2/", ep.base);
                super::health::guarded(&ep.slot.health, &ep.http, &self.policy, &probe, call).await
            })
            .await
    }

    async fn send_inner(
        &self,
        ep: &Endpoint,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        scope: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let health = &ep.slot.health;
        let url = Url::parse(&format!("{}{}", ep.base, path_and_query))
            .map_err(|e| UpstreamError::Protocol(format!("bad upstream URL: {e}")))?;
        // A remembered scheme saves the 401 round trip. When it fails it is forgotten, and the
        // registry's challenge decides afresh (it may name another realm) — within this request,
        // unless the token service is unreachable, when asking again would only wait twice.
        let mut authz = match self.cached_authorization(ep, scope).await {
            Ok(a) => a,
            Err(e) => {
                *lock(&ep.auth) = None;
                if matches!(e, UpstreamError::Connect { .. } | UpstreamError::Timeout(_)) {
                    health.record_auth_failure(&e);
                    return Err(e);
                }
                None
            }
        };
        let mut retried = false;
        loop {
            let resp = self
                .follow(ep, method.clone(), url.clone(), headers, authz.clone())
                .await?;
            if same_origin(resp.url(), &url) {
                self.rate.observe(resp.headers());
            }
            if resp.status() != StatusCode::UNAUTHORIZED {
                health.record_auth_ok();
                return Ok(resp);
            }
            // Only the upstream itself may ask for its credentials: a 401 from a hop it
            // redirected to (a blob CDN) names a realm wharf has no reason to log in to.
            if retried || !same_origin(resp.url(), &url) {
                return Ok(resp);
            }
            retried = true;
            let challenge = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(parse_challenge)
                .next();
            authz = match challenge {
                Some(Challenge::Bearer(b)) => {
                    // Decided per challenge: a realm is remembered only once it gave a token, so
                    // one refused or failing realm cannot stick to the upstream.
                    let token = match self
                        .fetch_token(ep, &b.realm, b.service.as_deref(), scope)
                        .await
                    {
                        Ok(t) => t,
                        Err(e) => {
                            health.record_auth_failure(&e);
                            return Err(e);
                        }
                    };
                    *lock(&ep.auth) = Some(KnownAuth::Bearer {
                        realm: b.realm,
                        service: b.service,
                    });
                    Some(token)
                }
                Some(Challenge::Basic { .. }) => match basic_header(ep) {
                    Some(h) => {
                        *lock(&ep.auth) = Some(KnownAuth::Basic);
                        Some(h)
                    }
                    None => return Ok(resp),
                },
                None => return Ok(resp),
            };
        }
    }

    /// An `Authorization` value when the auth scheme is already known from an earlier challenge.
    async fn cached_authorization(
        &self,
        ep: &Endpoint,
        scope: &str,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let known = lock(&ep.auth).clone();
        match known {
            None => Ok(None),
            Some(KnownAuth::Basic) => Ok(basic_header(ep)),
            Some(KnownAuth::Bearer { realm, service }) => Ok(Some(
                self.fetch_token(ep, &realm, service.as_deref(), scope)
                    .await?,
            )),
        }
    }

    /// A bearer token for `scope`, from the endpoint's cache or its realm.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<HeaderValue, UpstreamError> {
        let key = format!("{realm}\0{}\0{scope}", service.unwrap_or(""));
        if let Some((tok, until)) = lock(&ep.tokens).get(&key)
            && Instant::now() < *until
        {
            return bearer(tok);
        }
        let fetched = self.request_token(ep, realm, service, scope).await;
        self.pool.stats.tokens[usize::from(fetched.is_err())]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (token, until) = fetched?;
        let mut tokens = lock(&ep.tokens);
        if tokens.len() > 4096 {
            tokens.retain(|_, (_, t)| Instant::now() < *t);
        }
        tokens.insert(key, (token.clone(), until));
        bearer(&token)
    }

    /// Asks the token service at `realm` for a token, and how long it may be used.
    async fn request_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Instant), UpstreamError> {
        let mut url = Url::parse(realm).map_err(|_| {
            UpstreamError::Auth("the registry sent a token realm that is not a URL".into())
        })?;
        if strip_userinfo(&mut url) {
            tracing::warn!(upstream = %self.name, realm = %redact(&url),
                "the token realm carries a user name or password; ignored");
        }
        // The realm is an egress destination like any other, checked before credentials go to it;
        // the credentials themselves go only to the upstream's scheme and port, or to a port
        // the operator listed.
        check_target(&self.policy, ep.socket.as_deref(), &url)?;
        if ep.creds.is_some() {
            self.policy
                .check_credentials(&ep.origin, &url)
                .map_err(UpstreamError::Egress)?;
        }
        if let Some(s) = service {
            url.query_pairs_mut().append_pair("service", s);
        }
        url.query_pairs_mut().append_pair("scope", scope);
        let mut req = ep.http.get(url.clone());
        if let Some(c) = &ep.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| transport_error(e, &url))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::Auth(format!(
                "token service {} answered {status}",
                redact(&url)
            )));
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE, &url).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            UpstreamError::Auth(format!(
                "token service {} sent malformed JSON",
                redact(&url)
            ))
        })?;
        let token = parsed
            .token()
            .ok_or_else(|| {
                UpstreamError::Auth(format!("token service {} sent no token", redact(&url)))
            })?
            .to_string();
        Ok((token, Instant::now() + parsed.lifetime()))
    }

    async fn follow(
        &self,
        ep: &Endpoint,
        method: Method,
        url: Url,
        headers: &HeaderMap,
        authz: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        send_following(
            &ep.http,
            (&self.policy, ep.socket.as_deref()),
            self.max_redirects,
            method,
            url,
            headers.clone(),
            authz,
        )
        .await
    }
}

fn basic_header(ep: &Endpoint) -> Option<HeaderValue> {
    let c = ep.creds.as_ref()?;
    basic_authorization(&c.username, &c.password)
}

/// `Accept` headers, one per media type.
pub fn accept_headers(accept: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for a in accept {
        if let Ok(v) = HeaderValue::from_str(a) {
            headers.append(header::ACCEPT, v);
        }
    }
    headers
}

/// Sends a request and follows redirects by hand: egress is checked before every hop, https ->
/// http is refused, `authz` is dropped for good on any change of host, port or scheme, and
/// userinfo in a URL is never sent (reqwest would turn it into Basic auth). With a socket (the
/// client is bound to it), every hop must stay on it (`check_target`).
pub async fn send_following(
    http: &reqwest::Client,
    (policy, socket): (&EgressPolicy, Option<&Path>),
    max_redirects: usize,
    mut method: Method,
    mut url: Url,
    extra: HeaderMap,
    mut authz: Option<HeaderValue>,
) -> Result<reqwest::Response, UpstreamError> {
    strip_userinfo(&mut url);
    for hop in 0..=max_redirects {
        if let Err(e) = check_target(policy, socket, &url) {
            if hop > 0 {
                super::egress::Refusals::count(&policy.refusals.redirect);
            }
            return Err(e);
        }
        let mut headers = extra.clone();
        headers.remove(header::AUTHORIZATION);
        if let Some(a) = &authz {
            headers.insert(header::AUTHORIZATION, a.clone());
        }
        let resp = http
            .request(method.clone(), url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|e| transport_error(e, &url))?;
        if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let Some(location) = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
        else {
            return Ok(resp);
        };
        let (next, same_origin) = next_hop(&url, location)?;
        if !same_origin {
            // Once dropped, credentials never come back, even if a later hop returns.
            authz = None;
        }
        if resp.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
            method = Method::GET;
        }
        tracing::debug!(hop, to = %redact(&next), "following upstream redirect");
        url = next;
    }
    Err(UpstreamError::Redirect(format!(
        "more than {max_redirects} redirects (egress.max_redirects)"
    )))
}

/// The origin of requests to an upstream on a Unix socket: every request of its client goes to
/// the socket, whatever the URL, so only this origin (what the upstream's own absolute
/// `Location`s name, from the `Host` it was sent) stays on it.
pub const SOCKET_ORIGIN: &str = "http://localhost";

/// The egress check of one request target: a host by `egress.allow`; for a client bound to a
/// Unix socket, the socket by its own entry and the target by being on that socket (a redirect
/// or token realm elsewhere is refused: that client can reach nothing else).
pub fn check_target(
    policy: &EgressPolicy,
    socket: Option<&Path>,
    url: &Url,
) -> Result<(), UpstreamError> {
    let Some(path) = socket else {
        return policy.check(url).map_err(UpstreamError::Egress);
    };
    policy.check_socket(path).map_err(UpstreamError::Egress)?;
    let on_socket = url.scheme() == "http"
        && url.host_str() == Some("localhost")
        && url.port_or_known_default() == Some(80);
    if on_socket {
        Ok(())
    } else {
        Err(UpstreamError::Redirect(format!(
            "the upstream on the Unix socket {} sent wharf to {}; a socket upstream is asked only on its socket",
            path.display(),
            redact(url)
        )))
    }
}

/// Where a redirect leads, and whether it stays on the same origin (scheme, host and port) so
/// credentials may go along. https -> http is refused; userinfo in `location` is dropped.
pub fn next_hop(url: &Url, location: &str) -> Result<(Url, bool), UpstreamError> {
    let mut next = url.join(location).map_err(|_| {
        UpstreamError::Protocol(format!("redirect from {} to an invalid URL", redact(url)))
    })?;
    if strip_userinfo(&mut next) {
        tracing::warn!(to = %redact(&next), "redirect Location carries a user name or password; ignored");
    }
    if url.scheme() == "https" && next.scheme() != "https" {
        return Err(UpstreamError::Redirect(format!(
            "refused https -> {} downgrade to {}",
            next.scheme(),
            redact(&next)
        )));
    }
    let same_origin = next.scheme() == url.scheme()
        && next.host_str() == url.host_str()
        && next.port_or_known_default() == url.port_or_known_default();
    Ok((next, same_origin))
}

/// `Authorization: Basic ...`, marked sensitive so it is never logged.
pub fn basic_authorization(username: &str, password: &str) -> Option<HeaderValue> {
    let raw = format!("{username}:{password}");
    let mut v = HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes()))).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn bearer(token: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        UpstreamError::Auth("token service sent a token with invalid characters".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shared reqwest settings: connect and idle-read timeouts, never a whole-request timeout.
pub fn build_http(
    egress: &EgressConfig,
    policy: Arc<EgressPolicy>,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(super::egress::PolicyResolver(policy)))
        .connect_timeout(egress.connect_timeout)
        .read_timeout(egress.read_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_adaptive_window(true)
        .no_proxy()
        .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")));
    if let Some(proxy) = &egress.proxy {
        let p = reqwest::Proxy::all(proxy.as_str()).map_err(|e| format!("egress.proxy: {e}"))?;
        b = b.proxy(p);
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// `build_http`'s settings for a client whose every connection goes to the Unix socket `path`
/// (no resolver, no proxy: `check_target` vets each request instead).
pub fn build_unix_http(egress: &EgressConfig, path: &Path) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .unix_socket(path)
        .connect_timeout(egress.connect_timeout)
        .read_timeout(egress.read_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .no_proxy()
        .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client for {}: {e}", path.display()))
}

/// A transport error described without its URL (signed URLs carry secrets in the query).
/// Same scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// An upstream answer's body as the cache engine reads it: transport failures are logged and
/// reported as upstream failures with a client-safe summary.
/// The pool endpoint that answered (`pool::Lease`) stays leased until the body is done, and is
/// ejected when the body fails.
pub fn into_incoming(mut resp: reqwest::Response) -> crate::cache::Incoming {
    use futures_util::StreamExt as _;
    let url = resp.url().clone();
    let len = resp.content_length();
    let lease = resp.extensions_mut().remove::<Arc<pool::Lease>>();
    let body = resp
        .bytes_stream()
        .map(move |r| {
            r.map_err(|e| {
                let e = transport_error(e, &url);
                tracing::warn!(error = %e, "upstream failed mid-body");
                if let Some(l) = &lease {
                    l.failed(&e.summary());
                }
                crate::cache::FillError::Upstream(e.summary())
            })
        })
        .boxed();
    crate::cache::Incoming { len, body }
}

pub fn transport_error(e: reqwest::Error, url: &Url) -> UpstreamError {
    let target = redact(url);
    let mut msg = String::new();
    let mut local = false;
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s.to_string());
        // Out of descriptors here (EMFILE, ENFILE) says nothing about the upstream.
        local |= s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|c| c == 23 || c == 24);
        src = s.source();
    }
    if local {
        UpstreamError::Transport {
            target,
            detail: format!("out of file descriptors on this machine: {msg}"),
        }
    } else if e.is_timeout() {
        UpstreamError::Timeout(target)
    } else if e.is_connect() {
        UpstreamError::Connect {
            target,
            detail: msg,
        }
    } else {
        UpstreamError::Transport {
            target,
            detail: msg,
        }
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    url: &Url,
) -> Result<Vec<u8>, UpstreamError> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(UpstreamError::TooLarge {
            limit: limit as u64,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(e, url))? {
        if out.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge {
                limit: limit as u64,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl From<EgressError> for UpstreamError {
    fn from(e: EgressError) -> Self {
        UpstreamError::Egress(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn redirects_refuse_downgrades_and_know_their_origin() {
        let u = |s: &str| Url::parse(s).unwrap();
        let e = next_hop(&u("https://reg.example/v2/x"), "http://cdn.example/blob").unwrap_err();
        assert!(e.to_string().contains("downgrade"), "{e}");
        let (n, same) = next_hop(&u("https://reg.example/v2/x"), "/v2/y").unwrap();
        assert_eq!((n.as_str(), same), ("https://reg.example/v2/y", true));
        for other in [
            "https://cdn.example/b",
            "https://reg.example:444/b",
            "https://REG.example.evil/b",
        ] {
            assert!(
                !next_hop(&u("https://reg.example/v2/x"), other).unwrap().1,
                "{other}"
            );
        }
        let (_, same) =
            next_hop(&u("http://reg.example/v2/x"), "https://reg.example/v2/x").unwrap();
        assert!(!same, "a change of scheme drops credentials too");
        assert!(next_hop(&u("https://reg.example/"), "https://[::1").is_err());
        let (n, same) =
            next_hop(&u("https://reg.example/v2/x"), "https://u:pw@reg.example/y").unwrap();
        assert_eq!((n.as_str(), same), ("https://reg.example/y", true));
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
