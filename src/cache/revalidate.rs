//! Freshness of mutable keys (tags, tag lists, Go `@v/list` and `@latest`, checksum-database
//! reads), one rule for all: within its TTL a cached answer is served as it is (HIT); past it the
//! upstream is asked, and what it says is stored and served (MISS, or HIT when it confirms what
//! is cached); when the upstream fails, the last known answer is served however old (STALE).
//! "Not found" and "access refused" are answers, not failures: they never fall back to a stale
//! copy. Callers keep their own records and storage calls; this module only decides.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use super::outcome::Outcome;

/// A cached answer and when it was learned (unix seconds).
pub struct Cached<T> {
    pub value: T,
    pub learned_unix: u64,
}

/// Whether something learned at `learned_unix` is still fresh at `now` under `ttl`
/// (`None`: never expires).
pub fn is_fresh(learned_unix: u64, ttl: Option<Duration>, now: u64) -> bool {
    ttl.is_none_or(|ttl| now.saturating_sub(learned_unix) < ttl.as_secs())
}

/// How long a request with a cached answer waits for the upstream to revalidate it before the
/// cached answer is served (STALE) instead: a stalled upstream costs a client this, not the
/// whole read timeout.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Serves `cached` while fresh; else runs `fetch` (which stores what it gets and says whether
/// that was a MISS or a confirming HIT). When `fetch` fails with an error `stale_if` accepts and
/// something is cached, that is served STALE, with one warning naming `what` and the error;
/// also when it takes longer than `PATIENCE` (the fetch is dropped).
/// `now` is the caller's clock (unix seconds, `app::now_unix` in production; tests pass their
/// own), the only time this rule reads.
pub async fn revalidate<T, E, F>(
    what: &str,
    cached: Option<Cached<T>>,
    ttl: Option<Duration>,
    now: u64,
    fetch: F,
    stale_if: impl FnOnce(&E) -> bool,
) -> Result<(T, Outcome), E>
where
    F: Future<Output = Result<(T, Outcome), E>>,
    E: Display,
{
    let cached = match cached {
        Some(c) if is_fresh(c.learned_unix, ttl, now) => return Ok((c.value, Outcome::Hit)),
        other => other,
    };
    let (fetched, cached) = match cached {
        None => (fetch.await, None),
        Some(c) => match tokio::time::timeout(PATIENCE, fetch).await {
            Ok(r) => (r, Some(c)),
            Err(_) => {
                tracing::warn!(
                    what,
                    "the upstream is slow to answer; serving the last known answer"
                );
                return Ok((c.value, Outcome::Stale));
            }
        },
    };
    match fetched {
        Ok(fetched) => Ok(fetched),
        Err(e) if stale_if(&e) => match cached {
            Some(c) => {
                tracing::warn!(what, error = %e, "upstream failed; serving the last known answer");
                Ok((c.value, Outcome::Stale))
            }
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(v: &'static str, at: u64) -> Option<Cached<&'static str>> {
        Some(Cached {
            value: v,
            learned_unix: at,
        })
    }

    async fn run(
        c: Option<Cached<&'static str>>,
        ttl: Option<u64>,
        fetched: Result<(&'static str, Outcome), &'static str>,
    ) -> Result<(&'static str, Outcome), &'static str> {
        revalidate(
            "k",
            c,
            ttl.map(Duration::from_secs),
            1000,
            async move { fetched },
            |e: &&str| *e == "down",
        )
        .await
    }

    #[tokio::test]
    async fn fresh_is_a_hit_without_asking() {
        let r = run(cached("old", 990), Some(60), Err("must not be asked")).await;
        assert_eq!(r, Ok(("old", Outcome::Hit)));
        let r = run(cached("old", 0), None, Err("must not be asked")).await;
        assert_eq!(r, Ok(("old", Outcome::Hit)), "no TTL never expires");
    }

    #[tokio::test]
    async fn expired_is_fetched_and_zero_ttl_always_asks() {
        let r = run(cached("old", 900), Some(60), Ok(("new", Outcome::Miss))).await;
        assert_eq!(r, Ok(("new", Outcome::Miss)));
        let r = run(cached("old", 1000), Some(0), Ok(("new", Outcome::Miss))).await;
        assert_eq!(r, Ok(("new", Outcome::Miss)));
    }

    #[tokio::test]
    async fn failure_serves_stale_but_an_answer_does_not() {
        let r = run(cached("old", 0), Some(60), Err("down")).await;
        assert_eq!(r, Ok(("old", Outcome::Stale)));
        let r = run(cached("old", 0), Some(60), Err("not found")).await;
        assert_eq!(r, Err("not found"));
        let r = run(None, Some(60), Err("down")).await;
        assert_eq!(r, Err("down"));
    }

    /// One mutable key over a fake upstream, on a clock the test moves by hand (the rule reads
    /// no time of its own).
    struct Key {
        now: u64,
        ttl: Option<Duration>,
        /// What the caller keeps: the value and when it was learned.
        stored: Option<(&'static str, u64)>,
        upstream: Upstream,
        calls: usize,
    }

    #[derive(Clone, Copy)]
    enum Upstream {
        Says(&'static str),
        Down,
        Gone,
    }

    #[derive(Debug, PartialEq)]
    enum Miss {
        NotFound,
        Failed,
    }

    impl Display for Miss {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Key {
        fn new(ttl_secs: u64) -> Key {
            Key {
                now: 1_700_000_000,
                ttl: Some(Duration::from_secs(ttl_secs)),
                stored: None,
                upstream: Upstream::Says("v1"),
                calls: 0,
            }
        }

        fn advance(&mut self, secs: u64) {
            self.now += secs;
        }

        /// A request for the key, as the handlers make it.
        async fn get(&mut self) -> Result<(&'static str, Outcome), Miss> {
            let Key {
                now,
                ttl,
                stored,
                upstream,
                calls,
            } = self;
            let now = *now;
            let cached = stored.map(|(value, learned_unix)| Cached {
                value,
                learned_unix,
            });
            let fetch = async {
                *calls += 1;
                match *upstream {
                    Upstream::Says(v) => {
                        let outcome = match stored {
                            Some((old, _)) if *old == v => Outcome::Hit,
                            _ => Outcome::Miss,
                        };
                        *stored = Some((v, now));
                        Ok((v, outcome))
                    }
                    Upstream::Down => Err(Miss::Failed),
                    Upstream::Gone => Err(Miss::NotFound),
                }
            };
            revalidate("k", cached, *ttl, now, fetch, |e| *e == Miss::Failed).await
        }
    }

    #[tokio::test]
    async fn within_the_ttl_the_upstream_is_not_asked() {
        let mut k = Key::new(60);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Miss)));
        assert_eq!(k.calls, 1);
        // Whatever the upstream would say now, a fresh answer does not ask it.
        k.upstream = Upstream::Down;
        for _ in 0..3 {
            k.advance(19);
            assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)), "at +{}s", k.now);
        }
        assert_eq!(k.calls, 1, "fresh answers must not reach the upstream");
    }

    #[tokio::test]
    async fn at_the_ttl_the_upstream_is_asked_and_the_answer_restarts_the_ttl() {
        let mut k = Key::new(60);
        k.get().await.ok();
        k.advance(59);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(k.calls, 1);
        // Exactly `ttl` old is expired; the upstream confirms: a HIT, but asked.
        k.advance(1);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(k.calls, 2);
        // The confirmation is fresh for a whole TTL again.
        k.advance(59);
        k.upstream = Upstream::Says("v2");
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(k.calls, 2);
        // A new answer replaces the old one.
        k.advance(1);
        assert_eq!(k.get().await, Ok(("v2", Outcome::Miss)));
        assert_eq!(k.calls, 3);
        assert_eq!(k.stored, Some(("v2", k.now)));
    }

    #[tokio::test]
    async fn a_failing_upstream_past_the_ttl_gets_the_stale_answer_with_no_age_bound() {
        let mut k = Key::new(60);
        k.get().await.ok();
        k.upstream = Upstream::Down;
        k.advance(61);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Stale)));
        // No bound on staleness: ten years on, the last known answer is still served.
        k.advance(10 * 365 * 86_400);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Stale)));
        // A stale answer is not a new one: every request keeps asking the upstream.
        assert_eq!(k.calls, 3);
        assert_eq!(k.stored.map(|(_, at)| at), Some(1_700_000_000));
        // Once the upstream answers again, its answer wins.
        k.upstream = Upstream::Says("v2");
        assert_eq!(k.get().await, Ok(("v2", Outcome::Miss)));
        assert_eq!(k.calls, 4);
    }

    #[tokio::test]
    async fn gone_upstream_past_the_ttl_is_not_found_never_stale() {
        let mut k = Key::new(60);
        k.get().await.ok();
        k.upstream = Upstream::Gone;
        // Within the TTL the removal is not seen.
        k.advance(30);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        k.advance(30);
        assert_eq!(k.get().await, Err(Miss::NotFound));
        assert_eq!(k.calls, 2);
        // The rule deletes nothing (callers keep their records); the next request asks again.
        assert!(k.stored.is_some());
        assert_eq!(k.get().await, Err(Miss::NotFound));
        assert_eq!(k.calls, 3);
    }

    #[tokio::test]
    async fn nothing_cached_and_a_failing_upstream_is_the_failure() {
        let mut k = Key::new(60);
        k.upstream = Upstream::Down;
        assert_eq!(k.get().await, Err(Miss::Failed));
        assert_eq!(k.calls, 1);
        assert_eq!(k.stored, None);
    }

    #[tokio::test]
    async fn no_ttl_never_expires_and_zero_always_asks() {
        let mut k = Key::new(0);
        k.ttl = None;
        k.get().await.ok();
        k.upstream = Upstream::Down;
        k.advance(10 * 365 * 86_400);
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(k.calls, 1);

        let mut k = Key::new(0);
        k.get().await.ok();
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(
            k.calls, 2,
            "a zero TTL asks on every request, even in the same second"
        );
    }

    #[tokio::test]
    async fn the_ttl_counts_whole_seconds_and_a_clock_set_back_keeps_the_answer_fresh() {
        // 1.9s is one second: answers carry whole unix seconds.
        let mut k = Key::new(0);
        k.ttl = Some(Duration::from_millis(1900));
        k.get().await.ok();
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(k.calls, 1);
        k.advance(1);
        k.get().await.ok();
        assert_eq!(k.calls, 2);

        // Learned "in the future" (the clock was set back): as if learned just now.
        let mut k = Key::new(60);
        k.get().await.ok();
        k.now -= 3600;
        assert_eq!(k.get().await, Ok(("v1", Outcome::Hit)));
        assert_eq!(k.calls, 1);
    }
}
