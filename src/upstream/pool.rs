//! Upstream pools: several endpoints that serve the same content (`urls = [...]`), behind one
//! upstream. Each request goes to the endpoint with the fewest outstanding requests per unit
//! of weight (ties shared by smooth weighted round robin); an endpoint that is refused, times
//! out, answers 5xx or cuts a body is ejected for a while (`Health::eject`) and the request
//! tries the next. Each endpoint keeps its own `Health` (fail fast, background probe), so the
//! existing guarded path and probes run per endpoint.
//!
//! A response carries a `Lease` in its extensions: it counts the request as outstanding until
//! its body is done, and ejects the endpoint when the body fails (`client::into_incoming`), so
//! the engine's resume (`Fetch::open_at`) continues on another endpoint.
//!
//! Knows nothing of registries or Go: a member is anything with a `Slot`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::UpstreamError;
use super::health::{Health, HealthReport};

/// One endpoint's balancing state and health.
#[derive(Debug)]
pub struct Slot {
    /// `host[:port]` (or the socket's path): the endpoint's label in `/metrics` and `/healthz`.
    pub host: String,
    pub weight: u32,
    pub health: Arc<Health>,
    outstanding: AtomicU64,
    requests: AtomicU64,
}

impl Slot {
    pub fn new(url: &str, weight: u32, health: Health) -> Slot {
        Slot {
            host: host_label(url),
            weight: weight.max(1),
            health: Arc::new(health),
            outstanding: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Requests sent to it since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts one request as sent and outstanding until the lease is dropped; `pooled`: the
    /// endpoint has others to stand in for it (a lone one is never ejected).
    pub fn lease(self: &Arc<Slot>, pooled: bool) -> Arc<Lease> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Arc::new(Lease {
            slot: self.clone(),
            pooled,
        })
    }
}

/// The host (and port, when the URL names one) of an endpoint URL; a socket's path.
pub fn host_label(url: &str) -> String {
    if let Some(path) = crate::config::unix_socket_url(url) {
        return format!("unix:{}", path.display());
    }
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// A request in flight on one endpoint (in a response's extensions until its body is done).
#[derive(Debug)]
pub struct Lease {
    slot: Arc<Slot>,
    pooled: bool,
}

impl Lease {
    /// The body failed: the endpoint is ejected, so a continuation goes elsewhere.
    pub fn failed(&self, why: &str) {
        if self.pooled {
            self.slot.health.eject(why);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint of a pool.
pub trait Member {
    fn slot(&self) -> &Arc<Slot>;
}

#[derive(Debug)]
pub struct Pool<E> {
    pub endpoints: Vec<Arc<E>>,
    /// Smooth weighted round robin's running scores, per endpoint.
    wrr: Mutex<Vec<i64>>,
    /// What its requests did, for `/metrics`.
    pub stats: PoolStats,
}

/// Status classes of upstream answers, as `PoolStats::seconds` is indexed.
pub const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

/// An upstream's requests: time to the answer's head by status class (`STATUS_CLASSES`;
/// `error`: no answer), requests sent on to another endpoint after one failed, and tokens
/// fetched from its token service (`TOKEN_RESULTS`; a cached token is not a fetch).
#[derive(Debug)]
pub struct PoolStats {
    pub seconds: [prometheus_client::metrics::histogram::Histogram; 5],
    pub failovers: std::sync::atomic::AtomicU64,
    pub tokens: [std::sync::atomic::AtomicU64; 2],
}

/// Results of token fetches, as `PoolStats::tokens` is indexed.
pub const TOKEN_RESULTS: [&str; 2] = ["ok", "error"];

impl Default for PoolStats {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        PoolStats {
            // 1 ms to about 2 minutes.
            seconds: std::array::from_fn(|_| Histogram::new(exponential_buckets(0.001, 2.0, 18))),
            failovers: Default::default(),
            tokens: Default::default(),
        }
    }
}

impl PoolStats {
    fn observe(&self, answer: Result<reqwest::StatusCode, ()>, since: std::time::Instant) {
        let i = match answer {
            Ok(s) => usize::from((s.as_u16() / 100).clamp(2, 5)) - 2,
            Err(()) => 4,
        };
        self.seconds[i].observe(since.elapsed().as_secs_f64());
    }
}

impl<E: Member> Pool<E> {
    pub fn new(endpoints: Vec<E>) -> Pool<E> {
        let n = endpoints.len();
        Pool {
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            wrr: Mutex::new(vec![0; n]),
            stats: PoolStats::default(),
        }
    }

    /// The endpoints in the order a request tries them: those available, the chosen one first
    /// and then by outstanding requests per weight; then ejected ones, soonest back first; then
    /// those marked down (their `guarded` call fails at once, as a lone upstream's does).
    pub fn order(&self) -> Vec<Arc<E>> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.clone();
        }
        let mut live = Vec::new();
        let mut ejected = Vec::new();
        let mut down = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let h = &e.slot().health;
            if !h.is_up() {
                down.push(i);
            } else if let Some(until) = h.ejected_until() {
                ejected.push((until, i));
            } else {
                live.push(i);
            }
        }
        let load = |i: usize| {
            let s = self.endpoints[i].slot();
            (s.outstanding(), u64::from(s.weight))
        };
        // a/wa < b/wb without division.
        let less = |a: (u64, u64), b: (u64, u64)| {
            u128::from(a.0) * u128::from(b.1) < u128::from(b.0) * u128::from(a.1)
        };
        live.sort_by(|&a, &b| {
            let (la, lb) = (load(a), load(b));
            if less(la, lb) {
                std::cmp::Ordering::Less
            } else if less(lb, la) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        if let Some(&first) = live.first() {
            // Among the least loaded, smooth weighted round robin picks.
            let tied: Vec<usize> = live
                .iter()
                .copied()
                .take_while(|&i| !less(load(first), load(i)))
                .collect();
            let mut wrr = self.wrr.lock().unwrap_or_else(|p| p.into_inner());
            let total: i64 = tied
                .iter()
                .map(|&i| i64::from(self.endpoints[i].slot().weight))
                .sum();
            let mut best = tied[0];
            for &i in &tied {
                wrr[i] += i64::from(self.endpoints[i].slot().weight);
                if wrr[i] > wrr[best] {
                    best = i;
                }
            }
            wrr[best] -= total;
            if let Some(pos) = live.iter().position(|&i| i == best) {
                live.remove(pos);
                live.insert(0, best);
            }
        }
        ejected.sort();
        live.into_iter()
            .chain(ejected.into_iter().map(|(_, i)| i))
            .chain(down)
            .map(|i| self.endpoints[i].clone())
            .collect()
    }

    /// Sends one request through the pool: `call` on each endpoint in `order` until one
    /// answers below 500 (or the last answers anything). Refusals, timeouts, cut transfers
    /// and 5xx eject the endpoint and go on to the next; any other error is the answer.
    pub async fn send<F, Fut>(&self, mut call: F) -> Result<reqwest::Response, UpstreamError>
    where
        F: FnMut(Arc<E>) -> Fut,
        Fut: Future<Output = Result<reqwest::Response, UpstreamError>>,
    {
        let order = self.order();
        let n = order.len();
        let mut last = None;
        for (i, ep) in order.into_iter().enumerate() {
            let more = i + 1 < n;
            let slot = ep.slot().clone();
            let lease = slot.lease(n > 1);
            if i > 0 {
                self.stats
                    .failovers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let since = std::time::Instant::now();
            let answer = call(ep).await;
            self.stats
                .observe(answer.as_ref().map(|r| r.status()).map_err(|_| ()), since);
            match answer {
                Ok(mut resp) => {
                    let status = resp.status();
                    if status.is_server_error() {
                        if n > 1 {
                            slot.health.eject(&format!("answered {status}"));
                        }
                        if more {
                            continue;
                        }
                    } else {
                        slot.health.restore();
                    }
                    resp.extensions_mut().insert(lease);
                    return Ok(resp);
                }
                Err(e) if fails_over(&e) => {
                    if n > 1 && !matches!(e, UpstreamError::Down(_)) {
                        slot.health.eject(&e.summary());
                    }
                    if !more {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Protocol("an upstream without endpoints".into())))
    }

    /// The upstream's state from its endpoints': up while any is; the failures and errors of
    /// the one that works best; auth failures of all.
    pub fn report(&self, name: &str) -> HealthReport {
        let reports: Vec<HealthReport> = self
            .endpoints
            .iter()
            .map(|e| e.slot().health.report())
            .collect();
        let mut best = reports
            .iter()
            .min_by_key(|r| (!r.up, r.ejected, r.consecutive_failures))
            .cloned()
            .unwrap_or_else(|| Health::new(name, 1, Default::default()).report());
        best.name = name.to_string();
        best.up = reports.iter().any(|r| r.up);
        best.auth_failures = reports.iter().map(|r| r.auth_failures).max().unwrap_or(0);
        best.auth_error = reports.iter().find_map(|r| r.auth_error.clone());
        best.ejected = !reports.is_empty() && reports.iter().all(|r| r.ejected);
        best.ejections = reports.iter().map(|r| r.ejections).sum();
        best
    }
}

/// Errors after which the next endpoint is worth asking: it could not answer at all.
fn fails_over(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Connect { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Transport { .. }
            | UpstreamError::Down(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Ep(Arc<Slot>);

    impl Member for Ep {
        fn slot(&self) -> &Arc<Slot> {
            &self.0
        }
    }

    fn pool(weights: &[u32]) -> Pool<Ep> {
        Pool::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let url = format!("http://ep{i}.test");
                    Ep(Arc::new(Slot::new(
                        &url,
                        w,
                        Health::new(&url, 3, Duration::from_secs(1)),
                    )))
                })
                .collect(),
        )
    }

    fn first(p: &Pool<Ep>) -> String {
        p.order()[0].0.host.clone()
    }

    #[test]
    fn sequential_requests_follow_the_weights() {
        let p = pool(&[1, 3]);
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..400 {
            *counts.entry(first(&p)).or_default() += 1;
        }
        assert_eq!(counts["ep0.test"], 100, "{counts:?}");
        assert_eq!(counts["ep1.test"], 300, "{counts:?}");
    }

    #[test]
    fn the_least_loaded_endpoint_goes_first() {
        let p = pool(&[1, 1]);
        let held: Vec<_> = (0..2).map(|_| p.endpoints[0].0.lease(true)).collect();
        assert_eq!(first(&p), "ep1.test");
        drop(held);
        assert_eq!(p.endpoints[0].0.outstanding(), 0, "a dropped lease is done");
    }

    #[test]
    fn ejected_endpoints_go_last_and_down_ones_after_them() {
        let p = pool(&[1, 1, 1]);
        p.endpoints[0].0.health.eject("503");
        for _ in 0..3 {
            p.endpoints[1]
                .0
                .health
                .record::<()>(&Err(UpstreamError::Connect {
                    target: "x".into(),
                    detail: "refused".into(),
                }));
        }
        let order: Vec<String> = p.order().iter().map(|e| e.0.host.clone()).collect();
        assert_eq!(order, ["ep2.test", "ep0.test", "ep1.test"]);
        let r = p.report("pool");
        assert!(r.up && !r.ejected && r.ejections == 1, "{r:?}");
        assert_eq!(host_label("http://127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(host_label("unix:///run/r.sock"), "unix:/run/r.sock");
    }
}
