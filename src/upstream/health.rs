//! Fail fast when an upstream is down: after `egress.failure_threshold` connection failures in a
//! row, the upstream is marked down and requests fail at once (and are answered from cache)
//! instead of each waiting for a timeout. A background probe marks it up again as soon as it
//! answers anything.
//!
//! An endpoint of a pool (`upstream::pool`) is also ejected after any single failure (refused,
//! timed out, 5xx, body cut): skipped while another endpoint can answer, for `ejection_time`,
//! doubled for each failure in a row up to `max_ejection_time`, then tried again.
//!
//! Authentication failures (a refused or failing token realm) are only reported here, for
//! `/healthz` and `/metrics`: they never mark the upstream down, since the next request asks
//! the registry afresh and may succeed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::UpstreamError;

#[derive(Debug)]
pub struct Health {
    pub name: String,
    threshold: u32,
    pub probe_interval: Duration,
    state: Mutex<State>,
    probing: AtomicBool,
    /// The Unix socket of an upstream that listens on one: probes check it, not a host.
    pub socket: Option<std::sync::Arc<std::path::Path>>,
    /// First and longest ejection of a pool endpoint (`egress.ejection_time`, `max_ejection_time`).
    pub ejection: (Duration, Duration),
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    down_since: Option<Instant>,
    last_error: Option<String>,
    last_change_unix: u64,
    auth_failures: u32,
    auth_error: Option<String>,
    ejected_until: Option<Instant>,
    /// Failures in a row since the last success: the next ejection is `ejection_time * 2^n`.
    eject_step: u32,
    ejections: u64,
}

/// A snapshot for `/healthz` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    pub name: String,
    pub up: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub since_unix: u64,
    /// Requests in a row that could not obtain credentials (0 once one does).
    pub auth_failures: u32,
    /// Why the last of them failed, while `auth_failures > 0`.
    pub auth_error: Option<String>,
    /// Skipped by its pool for now (a recent failure).
    pub ejected: bool,
    /// Times it was ejected since start.
    pub ejections: u64,
}

impl Health {
    pub fn new(name: &str, threshold: u32, probe_interval: Duration) -> Health {
        Health {
            name: name.to_string(),
            threshold: threshold.max(1),
            probe_interval,
            state: Mutex::new(State::default()),
            probing: AtomicBool::new(false),
            socket: None,
            ejection: (Duration::from_secs(5), Duration::from_secs(300)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(Down)` while the upstream is marked down: no connection is attempted.
    pub fn check(&self) -> Result<(), UpstreamError> {
        match self.lock().down_since {
            Some(_) => Err(UpstreamError::Down(self.name.clone())),
            None => Ok(()),
        }
    }

    pub fn is_up(&self) -> bool {
        self.lock().down_since.is_none()
    }

    /// Records the outcome of a request. Returns true when this call marked the upstream down
    /// (the caller then starts the probe).
    pub fn record<T>(&self, result: &Result<T, UpstreamError>) -> bool {
        let mut s = self.lock();
        match result {
            Err(e @ (UpstreamError::Connect { .. } | UpstreamError::Timeout(_))) => {
                s.failures = s.failures.saturating_add(1);
                s.last_error = Some(e.summary());
                if s.failures >= self.threshold && s.down_since.is_none() {
                    s.down_since = Some(Instant::now());
                    s.last_change_unix = now_unix();
                    tracing::warn!(upstream = %self.name, failures = s.failures,
                        "upstream marked down; answering from cache until a probe succeeds");
                    return true;
                }
                false
            }
            Err(_) => false,
            Ok(_) => {
                self.mark_up_locked(&mut s);
                false
            }
        }
    }

    /// Records that a request could not obtain credentials from the upstream's token realm.
    pub fn record_auth_failure(&self, e: &UpstreamError) {
        let mut s = self.lock();
        if s.auth_failures == 0 {
            tracing::warn!(upstream = %self.name, error = %e,
                "authentication with the upstream failed; the next request asks again");
        }
        s.auth_failures = s.auth_failures.saturating_add(1);
        s.auth_error = Some(e.summary());
    }

    /// Records a request the upstream answered without `401`: authentication, if needed, works.
    pub fn record_auth_ok(&self) {
        let mut s = self.lock();
        if s.auth_failures > 0 {
            tracing::info!(upstream = %self.name, "authentication with the upstream works again");
            s.auth_failures = 0;
            s.auth_error = None;
        }
    }

    /// Ejects a pool endpoint after a failure, for longer each time in a row (capped).
    pub fn eject(&self, why: &str) {
        let (base, max) = self.ejection;
        if base.is_zero() {
            return;
        }
        let mut s = self.lock();
        let backoff = base.saturating_mul(1 << s.eject_step.min(16)).min(max);
        s.ejected_until = Some(Instant::now() + backoff);
        s.eject_step = s.eject_step.saturating_add(1);
        s.ejections = s.ejections.saturating_add(1);
        s.last_error = Some(why.to_string());
        tracing::warn!(upstream = %self.name, ?backoff, error = why, "endpoint ejected from its pool");
    }

    /// Until when a pool skips this endpoint, while it does.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.lock().ejected_until.filter(|t| *t > Instant::now())
    }

    /// A success: the next failure ejects for `ejection_time` again.
    pub fn restore(&self) {
        let mut s = self.lock();
        s.eject_step = 0;
        s.ejected_until = None;
    }

    pub fn mark_up(&self) {
        let mut s = self.lock();
        self.mark_up_locked(&mut s);
    }

    fn mark_up_locked(&self, s: &mut State) {
        if let Some(since) = s.down_since.take() {
            s.last_change_unix = now_unix();
            tracing::info!(upstream = %self.name, down_for = ?since.elapsed(), "upstream is back up");
        }
        s.failures = 0;
        s.ejected_until = None;
    }

    /// Claims the right to run the probe (one prober per upstream).
    pub fn start_probing(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    pub fn stop_probing(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn report(&self) -> HealthReport {
        let s = self.lock();
        HealthReport {
            name: self.name.clone(),
            up: s.down_since.is_none(),
            consecutive_failures: s.failures,
            last_error: s.last_error.clone(),
            since_unix: s.last_change_unix,
            auth_failures: s.auth_failures,
            auth_error: s.auth_error.clone(),
            ejected: s.ejected_until.is_some_and(|t| t > Instant::now()),
            ejections: s.ejections,
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One guarded upstream call, the same for every kind of upstream: refused at once while the
/// upstream is down; the result recorded; and when this failure marks it down, a background
/// probe of `probe` (the upstream's base URL) started.
pub async fn guarded<T>(
    health: &std::sync::Arc<Health>,
    http: &reqwest::Client,
    policy: &std::sync::Arc<super::EgressPolicy>,
    probe: &str,
    call: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    health.check()?;
    let result = call.await;
    if health.record(&result) {
        start_probe(health, http, policy, probe);
    }
    result
}

fn start_probe(
    health: &std::sync::Arc<Health>,
    http: &reqwest::Client,
    policy: &std::sync::Arc<super::EgressPolicy>,
    probe: &str,
) {
    if let Ok(url) = reqwest::Url::parse(probe) {
        spawn_probe(health.clone(), http.clone(), policy.clone(), url);
    }
}

/// Probes `url` every `health.probe_interval` until it answers with any HTTP status, then
/// marks the upstream up. Runs in the background; one per upstream at a time.
pub fn spawn_probe(
    health: std::sync::Arc<Health>,
    http: reqwest::Client,
    policy: std::sync::Arc<super::EgressPolicy>,
    url: reqwest::Url,
) {
    if !health.start_probing() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(health.probe_interval).await;
            if health.is_up() {
                break;
            }
            if super::client::check_target(&policy, health.socket.as_deref(), &url).is_err() {
                continue;
            }
            match http.get(url.clone()).send().await {
                Ok(_) => {
                    health.mark_up();
                    break;
                }
                Err(e) => {
                    tracing::debug!(upstream = %health.name, error = %e.without_url(), "probe failed")
                }
            }
        }
        health.stop_probing();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), UpstreamError> {
        Err(UpstreamError::Connect {
            target: "x".into(),
            detail: "refused".into(),
        })
    }

    #[test]
    fn repeated_connection_failures_mark_down_and_success_marks_up() {
        let h = Health::new("up", 3, Duration::from_secs(1));
        assert!(!h.record(&refused()));
        assert!(!h.record(&refused()));
        assert!(h.check().is_ok());
        assert!(h.record(&refused()), "the third failure marks it down");
        assert!(matches!(h.check(), Err(UpstreamError::Down(_))));
        assert!(!h.record(&refused()), "only the transition reports true");
        h.mark_up();
        assert!(h.check().is_ok());
        assert_eq!(h.report().consecutive_failures, 0);
    }

    #[test]
    fn auth_failures_are_reported_until_authentication_works_and_never_mark_down() {
        let h = Health::new("up", 1, Duration::from_secs(1));
        let e = UpstreamError::Auth("token service answered 500".into());
        h.record_auth_failure(&e);
        h.record_auth_failure(&e);
        let r = h.report();
        assert!(r.up && h.check().is_ok());
        assert_eq!(r.auth_failures, 2);
        assert!(r.auth_error.is_some());
        h.record_auth_ok();
        assert_eq!((h.report().auth_failures, h.report().auth_error), (0, None));
    }

    #[test]
    fn ejection_grows_to_its_cap_and_a_success_resets_it() {
        let mut h = Health::new("ep", 3, Duration::from_secs(1));
        h.ejection = (Duration::from_secs(10), Duration::from_secs(25));
        let left = |h: &Health| {
            h.ejected_until()
                .map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64())
                .unwrap_or(0.0)
        };
        h.eject("503");
        assert!((9.0..=10.0).contains(&left(&h)), "{}", left(&h));
        h.eject("503");
        assert!((19.0..=20.0).contains(&left(&h)), "doubled: {}", left(&h));
        h.eject("503");
        assert!((24.0..=25.0).contains(&left(&h)), "capped: {}", left(&h));
        assert!(h.report().ejected && h.is_up(), "ejected is not down");
        h.restore();
        assert!(h.ejected_until().is_none());
        h.eject("503");
        assert!(left(&h) <= 10.0, "a success starts the backoff over");
        assert_eq!(h.report().ejections, 4);
    }

    #[test]
    fn http_errors_do_not_count_as_down() {
        let h = Health::new("up", 1, Duration::from_secs(1));
        assert!(!h.record::<()>(&Err(UpstreamError::Status { status: 503 })));
        assert!(h.is_up());
    }
}
