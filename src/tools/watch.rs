//! `wharf stats --watch`: the running server's `/metrics`, read every interval and shown as one
//! screen for the operator at the console (request rate, hit ratio, bytes in and out, fills,
//! connections, disk, upstream states). On a terminal the screen is redrawn in place; otherwise
//! one block is printed per interval, so the output can be logged and tested.
//!
//! Reads only the exposition text (its family names are stable, README's table); a sample it
//! cannot parse is skipped, never fatal. A failed scrape is shown in place of the numbers and
//! retried at the next interval.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wharf_storage::gc::human;

use crate::config::Config;
use crate::tools::client::Client;

/// Largest `/metrics` answer read (a few KiB in practice).
const MAX_EXPOSITION: usize = 16 << 20;
/// How long one scrape may take before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The samples of an exposition; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim_end();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(inner)?;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` and what follows the closing brace; `\\`, `\"` and `\n` unescaped.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Some((out, rest));
        }
        let (key, after) = s.split_once('=')?;
        let quoted = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, c) => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim().to_string(), value));
        s = &quoted[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// An upstream's state, from `wharf_upstream_up` and its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamState {
    pub kind: String,
    pub name: String,
    pub up: bool,
    pub auth_failures: u64,
    /// (limit, remaining) of a registry's pull quota, once it reported one.
    pub quota: Option<(u64, u64)>,
}

/// Outcomes of cache answers. Errors are not; nor is `none` (the `/v2/` ping, and `/metrics`
/// itself, whose bytes would otherwise count this screen's own scrapes).
const CACHE_ANSWERS: &[&str] = &["hit", "stale", "miss", "bypass"];

/// The numbers on one screen, read from one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Cache answers and errors since the server started (`wharf_requests_total`).
    pub requests: u64,
    /// Hit and stale answers.
    pub hits: u64,
    /// Hit, stale, miss and bypass answers (errors are not cache answers).
    pub answered: u64,
    pub errors: u64,
    /// Body bytes of cache answers sent to clients, and bytes fetched from upstreams.
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub fills: u64,
    pub fills_waiting: u64,
    pub connections: u64,
    /// (free, min_free, full) of the data directory's disk, when wharf measures it.
    pub disk: Option<(u64, u64, bool)>,
    pub upstreams: Vec<UpstreamState>,
}

impl Reading {
    pub fn of(samples: &[Sample]) -> Reading {
        let sum = |name: &str, keep: &dyn Fn(&Sample) -> bool| -> u64 {
            let total: f64 = samples
                .iter()
                .filter(|s| s.name == name && keep(s))
                .map(|s| s.value)
                .sum();
            count(total)
        };
        let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        let all = |_: &Sample| true;
        let outcome_in =
            |set: &'static [&'static str]| move |s: &Sample| set.contains(&s.label("outcome"));
        let requests = "wharf_requests_total";
        let disk = one("wharf_disk_free_bytes").map(|free| {
            (
                count(free),
                one("wharf_disk_min_free_bytes").map_or(0, count),
                one("wharf_disk_full").is_some_and(|v| v > 0.0),
            )
        });
        let mut upstreams: BTreeMap<(String, String), UpstreamState> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == "wharf_upstream_up") {
            let key = (s.label("kind").to_string(), s.label("upstream").to_string());
            upstreams.insert(
                key.clone(),
                UpstreamState {
                    kind: key.0,
                    name: key.1,
                    up: s.value > 0.0,
                    auth_failures: 0,
                    quota: None,
                },
            );
        }
        for s in samples
            .iter()
            .filter(|s| s.name == "wharf_upstream_auth_failures")
        {
            let key = (s.label("kind").to_string(), s.label("upstream").to_string());
            if let Some(u) = upstreams.get_mut(&key) {
                u.auth_failures = count(s.value);
            }
        }
        // Quotas are labelled by upstream only (registry upstreams report them).
        let quota_of = |name: &str, upstream: &str| {
            samples
                .iter()
                .find(|s| s.name == name && s.label("upstream") == upstream)
                .map(|s| count(s.value))
        };
        for u in upstreams.values_mut().filter(|u| u.kind == "registry") {
            let limit = quota_of("wharf_upstream_ratelimit_limit", &u.name);
            let remaining = quota_of("wharf_upstream_ratelimit_remaining", &u.name);
            u.quota = limit.zip(remaining);
        }
        Reading {
            requests: sum(requests, &all),
            hits: sum(requests, &outcome_in(&["hit", "stale"])),
            answered: sum(requests, &outcome_in(CACHE_ANSWERS)),
            errors: sum(requests, &outcome_in(&["error"])),
            bytes_out: sum("wharf_served_bytes_total", &outcome_in(CACHE_ANSWERS)),
            bytes_in: sum("wharf_upstream_bytes_total", &all),
            fills: one("wharf_fills_in_flight").map_or(0, count),
            fills_waiting: one("wharf_fill_queue_waiting").map_or(0, count),
            connections: one("wharf_connections_open").map_or(0, count),
            disk,
            upstreams: upstreams.into_values().collect(),
        }
    }
}

/// A sample's value as a count (negative, NaN and fractions are not counts).
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

/// `part` of `whole` as a percentage, `-` when there is no whole.
fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Growth of a counter since the last reading; a restarted server counts from zero.
fn delta(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

/// One screen: `now`, with rates against `last` (the previous reading and the time since).
pub fn render(title: &str, now: &Reading, last: Option<(&Reading, Duration)>) -> String {
    let per_second = |pick: fn(&Reading) -> u64| -> Option<f64> {
        let (before, elapsed) = last?;
        let secs = elapsed.as_secs_f64();
        (secs > 0.0).then(|| delta(pick(now), pick(before)) as f64 / secs)
    };
    let rate = |pick: fn(&Reading) -> u64| {
        per_second(pick).map_or_else(|| "-".to_string(), |r| format!("{r:.1}/s"))
    };
    let byte_rate = |pick: fn(&Reading) -> u64| {
        per_second(pick).map_or_else(|| "-".to_string(), |r| format!("{}/s", human(r as u64)))
    };
    let recent = match last {
        Some((before, _)) => ratio(
            delta(now.hits, before.hits),
            delta(now.answered, before.answered),
        ),
        None => "-".into(),
    };
    let mut out = format!("{title}\n");
    out += &format!(
        "requests     {:>12}   total {} ({} errors)\n",
        rate(|r| r.requests),
        now.requests,
        now.errors
    );
    out += &format!(
        "hit ratio    {recent:>12}   {} since start\n",
        ratio(now.hits, now.answered)
    );
    out += &format!(
        "bytes out    {:>12}   total {} served\n",
        byte_rate(|r| r.bytes_out),
        human(now.bytes_out)
    );
    out += &format!(
        "bytes in     {:>12}   total {} from upstreams\n",
        byte_rate(|r| r.bytes_in),
        human(now.bytes_in)
    );
    out += &format!(
        "fills        {} in flight, {} waiting for a permit\n",
        now.fills, now.fills_waiting
    );
    out += &format!("connections  {} open\n", now.connections);
    if let Some((free, min_free, full)) = now.disk {
        let full = if full { "   DISK FULL" } else { "" };
        out += &format!(
            "disk         {} free (min_free {}){full}\n",
            human(free),
            human(min_free)
        );
    }
    for u in &now.upstreams {
        let mut state = if u.up { "up" } else { "DOWN" }.to_string();
        if u.auth_failures > 0 {
            state += &format!(", {} auth failures in a row", u.auth_failures);
        }
        if let Some((limit, remaining)) = u.quota {
            state += &format!(", quota {remaining}/{limit} left");
        }
        out += &format!("upstream     {:<10} {} {state}\n", u.kind, u.name);
    }
    out
}

/// How `--watch` runs: its refresh interval, and (hidden, for tests and scripts) how many
/// screens to show before ending.
#[derive(Debug, Clone, Copy)]
pub struct WatchArgs {
    pub interval: Duration,
    pub count: Option<u64>,
}

/// `--interval`: a humantime duration, more than zero.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s}: {e}"))?;
    if d.is_zero() {
        return Err("the interval must be more than 0".into());
    }
    Ok(d)
}

/// `wharf stats --watch`: until Ctrl-C (or `count` screens), exit 0; 1 when no server answers.
pub async fn command(config: &Config, server: Option<&str>, args: WatchArgs) -> ExitCode {
    let client = match Client::running(config, server).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf: {e}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last: Option<(Reading, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let step = async {
            ticker.tick().await;
            tokio::time::timeout(SCRAPE_TIMEOUT, scrape(&client))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {SCRAPE_TIMEOUT:?}")))
        };
        let scraped = tokio::select! {
            _ = &mut ctrl_c => break,
            s = step => s,
        };
        let at = Instant::now();
        let title = format!(
            "{}   {}",
            client.describe(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let screen = match scraped {
            Ok(now) => {
                let since = last.as_ref().map(|(r, t)| (r, at.duration_since(*t)));
                let screen = render(&title, &now, since);
                last = Some((now, at));
                screen
            }
            Err(e) => format!("{title}\n/metrics: {e}\n"),
        };
        if show(&screen, terminal).is_err() {
            // Standard output closed (a pager quit): nothing more to show.
            break;
        }
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            break;
        }
    }
    if terminal {
        let _ = writeln!(std::io::stdout());
    }
    ExitCode::SUCCESS
}

/// One screen: in place on a terminal (home, each line cleared to its end, the rest below
/// cleared), else as a block followed by a blank line.
fn show(screen: &str, terminal: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if terminal {
        let mut frame = String::from("\x1b[H");
        for line in screen.lines() {
            frame += line;
            frame += "\x1b[K\n";
        }
        frame += "\x1b[J";
        out.write_all(frame.as_bytes())?;
    } else {
        out.write_all(screen.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

async fn scrape(client: &Client) -> Result<Reading, String> {
    let reply = client.get("/metrics", &[]).await?;
    if !reply.status.is_success() {
        return Err(reply.error().await);
    }
    let body = reply.bytes(MAX_EXPOSITION).await?;
    Ok(Reading::of(&parse(&String::from_utf8_lossy(&body))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP wharf_requests Requests by protocol and cache outcome.
# TYPE wharf_requests counter
wharf_requests_total{protocol="registry",outcome="hit"} 6
wharf_requests_total{protocol="registry",outcome="miss"} 2
wharf_requests_total{protocol="go",outcome="stale"} 2
wharf_requests_total{protocol="go",outcome="error"} 1
wharf_served_bytes_total{protocol="registry",outcome="hit"} 3072
wharf_served_bytes_total{protocol="registry",outcome="none"} 999
wharf_upstream_bytes_total{upstream="docker.io"} 1024
wharf_fills_in_flight 2
wharf_fill_queue_waiting 1
wharf_connections_open 5
wharf_disk_free_bytes 2048
wharf_disk_min_free_bytes 1024
wharf_disk_full 0
wharf_upstream_up{kind="registry",upstream="docker.io"} 1
wharf_upstream_up{kind="go",upstream="proxy \"one\""} 0
wharf_upstream_auth_failures{kind="registry",upstream="docker.io"} 3
wharf_upstream_ratelimit_limit{upstream="docker.io"} 100
wharf_upstream_ratelimit_remaining{upstream="docker.io"} 87
wharf_request_duration_seconds_bucket{kind="blob",le="+Inf",outcome="hit",protocol="registry"} 6
not a sample line
# EOF
"#;

    #[test]
    fn a_sample_line_parses_with_escaped_labels_and_bad_lines_are_skipped() {
        let samples = parse(EXPOSITION);
        assert_eq!(samples.len(), 19);
        let odd = samples
            .iter()
            .find(|s| s.name == "wharf_upstream_up" && s.value == 0.0)
            .unwrap();
        assert_eq!(odd.label("upstream"), "proxy \"one\"");
        assert_eq!(parse("wharf_fills_in_flight 3\n")[0].value, 3.0);
        assert!(parse("wharf_x{a=\"unterminated} 1\n").is_empty());
        assert!(parse("wharf_x{a=\"1\"} not-a-number\n").is_empty());
    }

    #[test]
    fn a_reading_adds_protocols_and_counts_hits_and_stale_over_cache_answers() {
        let r = Reading::of(&parse(EXPOSITION));
        assert_eq!(r.requests, 11);
        assert_eq!(r.hits, 8);
        assert_eq!(r.answered, 10);
        assert_eq!(r.errors, 1);
        assert_eq!((r.bytes_out, r.bytes_in), (3072, 1024));
        assert_eq!((r.fills, r.fills_waiting, r.connections), (2, 1, 5));
        assert_eq!(r.disk, Some((2048, 1024, false)));
        assert_eq!(r.upstreams.len(), 2);
        let hub = r.upstreams.iter().find(|u| u.name == "docker.io").unwrap();
        assert!(hub.up);
        assert_eq!(hub.auth_failures, 3);
        assert_eq!(hub.quota, Some((100, 87)));
    }

    #[test]
    fn rates_are_per_second_since_the_last_screen() {
        let before = Reading::of(&parse(EXPOSITION));
        let mut now = before.clone();
        now.requests += 20;
        now.hits += 5;
        now.answered += 20;
        now.bytes_out += 4096;
        let screen = render("t", &now, Some((&before, Duration::from_secs(2))));
        assert!(
            screen.contains("requests           10.0/s   total 31"),
            "{screen}"
        );
        // 5 of the last 20 cache answers were hits; 13 of 30 since start.
        assert!(screen.contains("25.0%   43.3% since start"), "{screen}");
        assert!(
            screen.contains("2.0 KiB/s   total 7.0 KiB served"),
            "{screen}"
        );
        assert!(screen.contains("upstream     go         proxy \"one\" DOWN"));
        assert!(screen.contains("up, 3 auth failures in a row, quota 87/100 left"));
    }

    #[test]
    fn the_first_screen_has_no_rates_and_a_restart_counts_from_zero() {
        let r = Reading::of(&parse(EXPOSITION));
        let screen = render("t", &r, None);
        assert!(
            screen.contains("requests                -   total 11"),
            "{screen}"
        );
        assert_eq!(delta(3, 10), 3);
        assert_eq!(ratio(0, 0), "-");
    }

    #[test]
    fn an_interval_of_zero_is_refused() {
        assert_eq!(parse_interval("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
