//! `/metrics` (Prometheus text) and `/healthz` (JSON): the counters of `metrics` and the
//! upstream and store states, rendered from the application state.

use std::fmt::Write as _;

use crate::app::AppState;
use crate::metrics::OUTCOMES;
use crate::upstream::health::HealthReport;

/// Every upstream's fail-fast state.
pub fn upstream_reports(app: &AppState) -> Vec<(String, HealthReport)> {
    let mut out: Vec<(String, HealthReport)> = app
        .registry
        .upstreams
        .values()
        .map(|u| ("registry".to_string(), u.health.report()))
        .collect();
    if let Some(go) = &app.go {
        for s in &go.public {
            out.push(("go".into(), s.health.report()));
        }
        for r in &go.private {
            out.push(("go-private".into(), r.source.health.report()));
        }
        for h in go.sumdb_health.values() {
            out.push(("sumdb".into(), h.report()));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    out
}

pub fn render(app: &AppState) -> String {
    let m = &app.metrics;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP wharf_requests_total Requests by protocol and cache outcome."
    );
    let _ = writeln!(o, "# TYPE wharf_requests_total counter");
    for (go, proto) in [(false, "registry"), (true, "go")] {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "wharf_requests_total{{protocol=\"{proto}\",outcome=\"{}\"}} {}",
                outcome.to_ascii_lowercase(),
                m.get(go, i)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP wharf_coalesced_total Requests that joined a fill already in flight."
    );
    let _ = writeln!(o, "# TYPE wharf_coalesced_total counter");
    let go_coalesced = app.go.as_ref().map_or(0, |g| g.flights.coalesced());
    let _ = writeln!(
        o,
        "wharf_coalesced_total{{protocol=\"registry\"}} {}",
        app.registry.blob_flights.coalesced()
    );
    let _ = writeln!(o, "wharf_coalesced_total{{protocol=\"go\"}} {go_coalesced}");
    render_bodies(&mut o, m);
    let _ = writeln!(
        o,
        "# HELP wharf_fills_in_flight Upstream fills running now."
    );
    let _ = writeln!(o, "# TYPE wharf_fills_in_flight gauge");
    let running = app.engine.fills_running();
    let _ = writeln!(o, "wharf_fills_in_flight {running}");
    render_fill_queue(&mut o, app);
    render_cold_ranges(&mut o, &app.metrics);
    render_disk(&mut o, app);
    render_connections(&mut o, &app.metrics);
    let _ = writeln!(
        o,
        "# HELP wharf_upstream_up Whether an upstream is considered up (1) or down (0)."
    );
    let _ = writeln!(o, "# TYPE wharf_upstream_up gauge");
    for (kind, r) in upstream_reports(app) {
        let name = r.name.replace(['"', '\\', '\n'], "_");
        let _ = writeln!(
            o,
            "wharf_upstream_up{{kind=\"{kind}\",upstream=\"{name}\"}} {}",
            u8::from(r.up)
        );
    }
    render_rate_limits(&mut o, app);
    let _ = writeln!(
        o,
        "# HELP wharf_upstream_auth_failures Requests in a row that could not authenticate with an upstream (token realm refused or failing); 0 once one does."
    );
    let _ = writeln!(o, "# TYPE wharf_upstream_auth_failures gauge");
    for (kind, r) in upstream_reports(app) {
        let name = r.name.replace(['"', '\\', '\n'], "_");
        let _ = writeln!(
            o,
            "wharf_upstream_auth_failures{{kind=\"{kind}\",upstream=\"{name}\"}} {}",
            r.auth_failures
        );
    }
    let _ = writeln!(
        o,
        "# HELP wharf_upstream_bytes_total Bytes fetched and verified from each upstream."
    );
    let _ = writeln!(o, "# TYPE wharf_upstream_bytes_total counter");
    let mut ub: Vec<_> = m.upstream_bytes().into_iter().collect();
    ub.sort();
    for (u, b) in ub {
        let name = u.replace(['"', '\\', '\n'], "_");
        let _ = writeln!(o, "wharf_upstream_bytes_total{{upstream=\"{name}\"}} {b}");
    }
    let checks = app.access.password_checks();
    for (name, help, value) in [
        (
            "wharf_password_hashes_total",
            "Password checks that ran argon2, for unknown user names too.",
            checks.hashed,
        ),
        (
            "wharf_password_checks_remembered_total",
            "Password checks answered from a recently verified credential.",
            checks.remembered,
        ),
        (
            "wharf_password_checks_busy_total",
            "Password checks answered 503 because every hashing slot stayed taken.",
            checks.busy,
        ),
    ] {
        scalar(&mut o, (name, "counter", help, value));
    }
    render_prefetch(&mut o, &m.prefetch);
    let _ = writeln!(
        o,
        "# HELP wharf_offline Whether wharf runs with offline = true."
    );
    let _ = writeln!(o, "# TYPE wharf_offline gauge");
    let _ = writeln!(o, "wharf_offline {}", u8::from(app.config.offline));
    render_tiers(&mut o, app);
    if let Some(shared) = &app.shared {
        render_shared(&mut o, shared);
    }
    if let Some(peers) = &app.peers {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &peers.stats;
        for (name, help, value) in [
            (
                "wharf_peer_fills_total",
                "Fills streamed from the replica that owns the object.",
                st.fills.load(Relaxed),
            ),
            (
                "wharf_peer_failovers_total",
                "Fills an owner replica began and upstream finished.",
                st.failovers.load(Relaxed),
            ),
            (
                "wharf_peer_served_total",
                "Requests this replica answered as owner for another.",
                st.served.load(Relaxed),
            ),
        ] {
            scalar(&mut o, (name, "counter", help, value));
        }
    }
    o
}

/// Objects and bytes served per tier: memory, local disk, and fills from the shared tier, an
/// owner replica or upstream.
fn render_tiers(o: &mut String, app: &AppState) {
    let t = app.engine.tiers();
    let rows = [
        ("memory", &app.registry.hot.memory),
        ("disk", &t.disk),
        ("shared", &t.shared),
        ("peer", &t.peer),
        ("upstream", &t.upstream),
    ];
    for (name, help, bytes) in [
        (
            "wharf_tier_objects_total",
            "Objects served, by the tier they came from (fills count once, however many clients joined).",
            false,
        ),
        (
            "wharf_tier_bytes_total",
            "Bytes of those objects, by tier.",
            true,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        for (tier, c) in rows {
            let v = if bytes { c.bytes() } else { c.objects() };
            let _ = writeln!(o, "{name}{{tier=\"{tier}\"}} {v}");
        }
    }
}

fn render_shared(o: &mut String, shared: &crate::shared::Shared) {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &shared.stats;
    let r = shared.report();
    for row in [
        (
            "wharf_shared_up",
            "gauge",
            "Whether the shared tier is considered up (1) or down (0).",
            u64::from(r.up),
        ),
        (
            "wharf_shared_pending",
            "gauge",
            "Objects and records committed here and not yet copied to the shared tier.",
            r.pending as u64,
        ),
        (
            "wharf_shared_hits_total",
            "counter",
            "Misses here filled from the shared tier.",
            st.hits.load(Relaxed),
        ),
        (
            "wharf_shared_read_bytes_total",
            "counter",
            "Bytes read from the shared tier.",
            st.bytes_read.load(Relaxed),
        ),
        (
            "wharf_shared_uploads_total",
            "counter",
            "Objects copied to the shared tier.",
            st.uploads.load(Relaxed),
        ),
        (
            "wharf_shared_uploaded_bytes_total",
            "counter",
            "Bytes copied to the shared tier.",
            st.bytes_uploaded.load(Relaxed),
        ),
        (
            "wharf_shared_records_written_total",
            "counter",
            "Index records written to the shared journal.",
            st.journal_written.load(Relaxed),
        ),
        (
            "wharf_shared_records_applied_total",
            "counter",
            "Index records of other replicas applied here.",
            st.records_applied.load(Relaxed),
        ),
        (
            "wharf_shared_discarded_total",
            "counter",
            "Objects in the shared tier that failed verification and were removed.",
            st.discarded.load(Relaxed),
        ),
        (
            "wharf_shared_evictions_total",
            "counter",
            "Objects removed from the shared tier's bucket by eviction.",
            st.evictions.load(Relaxed),
        ),
        (
            "wharf_shared_evicted_bytes_total",
            "counter",
            "Bytes removed from the shared tier's bucket by eviction.",
            st.evicted_bytes.load(Relaxed),
        ),
        (
            "wharf_shared_bucket_bytes",
            "gauge",
            "Size of the shared tier's objects when last measured here (0: not yet).",
            st.bucket_bytes.load(Relaxed),
        ),
        (
            "wharf_shared_snapshots_written_total",
            "counter",
            "Journal snapshots written by this replica.",
            st.snapshots_written.load(Relaxed),
        ),
        (
            "wharf_shared_snapshots_loaded_total",
            "counter",
            "Journal snapshots applied by this replica.",
            st.snapshots_loaded.load(Relaxed),
        ),
    ] {
        scalar(o, row);
    }
}

/// One unlabelled metric: its help, type and value.
fn scalar(o: &mut String, (name, kind, help, value): (&str, &str, &str, u64)) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    let _ = writeln!(o, "{name} {value}");
}

/// `/healthz`: 200 while serving; `status` says `degraded` when an upstream is down or cannot
/// authenticate, or the data directory's disk ran full or is below `cache.min_free`.
pub fn health_json(app: &AppState) -> String {
    let ups: Vec<serde_json::Value> = upstream_reports(app)
        .into_iter()
        .map(|(kind, r)| {
            serde_json::json!({
                "kind": kind, "name": r.name, "up": r.up,
                "consecutive_failures": r.consecutive_failures,
                "last_error": r.last_error, "since_unix": r.since_unix,
                "auth_failures": r.auth_failures, "auth_error": r.auth_error,
            })
        })
        .collect();
    let shared = app.shared.as_ref().map(|s| s.report());
    let room = app.engine.room();
    let disk_problem = room.and_then(|r| r.problem());
    let degraded = ups
        .iter()
        .any(|u| u["up"] == false || u["auth_failures"] != 0)
        || shared.as_ref().is_some_and(|s| !s.up)
        || disk_problem.is_some();
    let mut body = serde_json::json!({
        "status": if degraded { "degraded" } else { "ok" },
        "offline": app.config.offline,
        "upstreams": ups,
    });
    if let Some(space) = room.and_then(|r| r.space()) {
        body["disk"] = serde_json::json!({
            "free": space.free, "total": space.total, "min_free": space.min_free,
            "problem": disk_problem,
        });
    }
    if let Some(s) = shared {
        body["shared"] = serde_json::json!(s);
    }
    if let Some(p) = &app.peers {
        body["peers"] = serde_json::json!(p.report());
    }
    body.to_string()
}

/// Response bodies by how they were sent.
fn render_bodies(o: &mut String, m: &crate::metrics::Metrics) {
    for (name, help, i) in [
        (
            "wharf_http_bodies_total",
            "Response bodies sent, by how: sendfile (stored files on plain HTTP/1.1) or copy (through a buffer: TLS, HTTP/2, fills, memory).",
            0,
        ),
        ("wharf_http_body_bytes_total", "Bytes of those bodies.", 1),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        for (via, sendfile) in [("sendfile", true), ("copy", false)] {
            let b = m.bodies(sendfile);
            let n = if i == 0 { b.0 } else { b.1 };
            let _ = writeln!(o, "{name}{{via=\"{via}\"}} {n}");
        }
    }
}

/// Ranges of blobs still being filled, by where they were answered from.
fn render_cold_ranges(o: &mut String, m: &crate::metrics::Metrics) {
    let name = "wharf_registry_cold_ranges_total";
    let _ = writeln!(
        o,
        "# HELP {name} Range requests for a blob still being filled: from the upstream (unverified, registry.cold_ranges) or from the fill."
    );
    let _ = writeln!(o, "# TYPE {name} counter");
    for (via, upstream) in [("upstream", true), ("fill", false)] {
        let _ = writeln!(o, "{name}{{via=\"{via}\"}} {}", m.cold_ranges(upstream));
    }
}

/// Client connections and the descriptor limit.
fn render_connections(o: &mut String, m: &crate::metrics::Metrics) {
    let (open, shed, refused, failed) = m.connections();
    for (name, kind, help, v) in [
        (
            "wharf_connections_open",
            "gauge",
            "Client connections open now.",
            open,
        ),
        (
            "wharf_connections_shed_total",
            "counter",
            "Idle client connections closed to make room (server.max_connections, descriptor limit).",
            shed,
        ),
        (
            "wharf_connections_refused_total",
            "counter",
            "New connections closed at once: at the limit with none idle.",
            refused,
        ),
        (
            "wharf_accept_failures_total",
            "counter",
            "Failed accepts (EMFILE: out of descriptors).",
            failed,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        let _ = writeln!(o, "{name} {v}");
    }
}

/// The data directory's file system and the fills it could not take.
fn render_disk(o: &mut String, app: &AppState) {
    let Some(room) = app.engine.room() else {
        return;
    };
    if let Some(s) = room.space() {
        for (name, help, v) in [
            (
                "wharf_disk_free_bytes",
                "Free bytes on the data directory's file system.",
                s.free,
            ),
            (
                "wharf_disk_size_bytes",
                "Size of the data directory's file system.",
                s.total,
            ),
            (
                "wharf_disk_min_free_bytes",
                "Free space kept (cache.min_free), in bytes.",
                s.min_free,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {v}");
        }
    }
    let name = "wharf_disk_full";
    let _ = writeln!(
        o,
        "# HELP {name} 1 while the data directory's disk ran full lately (ENOSPC) or is below cache.min_free."
    );
    let _ = writeln!(o, "# TYPE {name} gauge");
    let _ = writeln!(o, "{name} {}", u8::from(room.problem().is_some()));
    let name = "wharf_passthrough_total";
    let _ = writeln!(
        o,
        "# HELP {name} Objects served to a client without being stored (no room on the local disk; X-Cache BYPASS)."
    );
    let _ = writeln!(o, "# TYPE {name} counter");
    let _ = writeln!(o, "{name} {}", room.passed_through());
}

/// Fills waiting for a permit.
fn render_fill_queue(o: &mut String, app: &AppState) {
    let q = app.engine.fill_queue();
    for (name, kind, help, v) in [
        (
            "wharf_fill_queue_waiting",
            "gauge",
            "Requests waiting for a fill permit now (server.max_concurrent_fills reached).",
            &q.waiting,
        ),
        (
            "wharf_fill_queued_total",
            "counter",
            "Requests that had to wait for a fill permit.",
            &q.queued,
        ),
        (
            "wharf_fill_queue_timeouts_total",
            "counter",
            "Requests that waited server.fill_queue_timeout in vain and got 503.",
            &q.timed_out,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        let _ = writeln!(o, "{name} {}", v.load(std::sync::atomic::Ordering::Relaxed));
    }
}

/// The pull quotas registry upstreams report.
fn render_rate_limits(o: &mut String, app: &AppState) {
    let mut rates: Vec<_> = app
        .registry
        .upstreams
        .values()
        .filter_map(|u| Some((u.name.replace(['"', '\\', '\n'], "_"), u.rate.get()?)))
        .collect();
    rates.sort();
    for (name, help, pick) in [
        (
            "wharf_upstream_ratelimit_limit",
            "The pull quota a registry upstream last reported (RateLimit-Limit); absent until it reports one.",
            0,
        ),
        (
            "wharf_upstream_ratelimit_remaining",
            "What it said was left of it (RateLimit-Remaining); below registry.rate_limit_headroom tag answers are trusted longer.",
            1,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
        for (upstream, (limit, remaining)) in &rates {
            let v = if pick == 0 { limit } else { remaining };
            let _ = writeln!(o, "{name}{{upstream=\"{upstream}\"}} {v}");
        }
    }
}

/// The scheduled prefetch (`[[prefetch]]`): runs, and what the last one did.
fn render_prefetch(o: &mut String, p: &crate::metrics::PrefetchRuns) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, kind, help, value) in [
        (
            "wharf_prefetch_runs_total",
            "counter",
            "Scheduled prefetch runs finished.",
            p.runs.load(Relaxed),
        ),
        (
            "wharf_prefetch_items_total",
            "counter",
            "Items the scheduled prefetch fetched and pinned, or tried to.",
            p.items_total.load(Relaxed),
        ),
        (
            "wharf_prefetch_failures_total",
            "counter",
            "Items the scheduled prefetch could not fetch or pin.",
            p.failures_total.load(Relaxed),
        ),
        (
            "wharf_prefetch_last_run_timestamp_seconds",
            "gauge",
            "When the last scheduled prefetch run finished (Unix time; 0: none yet).",
            p.last_run_unix.load(Relaxed),
        ),
        (
            "wharf_prefetch_last_run_items",
            "gauge",
            "Items the last scheduled prefetch run tried.",
            p.last_items.load(Relaxed),
        ),
        (
            "wharf_prefetch_last_run_failures",
            "gauge",
            "Items the last scheduled prefetch run could not fetch or pin.",
            p.last_failures.load(Relaxed),
        ),
    ] {
        scalar(o, (name, kind, help, value));
    }
}
