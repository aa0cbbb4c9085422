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

/// Serves `cached` while fresh; else runs `fetch` (which stores what it gets and says whether
/// that was a MISS or a confirming HIT). When `fetch` fails with an error `stale_if` accepts and
/// something is cached, that is served STALE, with one warning naming `what` and the error.
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
    match fetch.await {
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
}
