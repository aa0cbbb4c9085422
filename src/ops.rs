//! `/metrics` (OpenMetrics text, written by `prometheus-client`) and `/healthz` (JSON): the
//! families of `metrics` and the upstream and store states, read from the application state
//! at each scrape (`Scrape`, a collector).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::app::AppState;
use crate::metrics::OUTCOMES;
use crate::upstream::health::HealthReport;

/// Every upstream's fail-fast state.
pub fn upstream_reports(app: &AppState) -> Vec<(String, HealthReport)> {
    let mut out: Vec<(String, HealthReport)> = app
        .registry
        .upstreams
        .values()
        .map(|u| ("registry".to_string(), u.report()))
        .collect();
    if let Some(go) = &app.go {
        for s in &go.public {
            out.push(("go".into(), s.report()));
        }
        for r in &go.private {
            out.push(("go-private".into(), r.source.report()));
        }
        for h in go.sumdb_health.values() {
            out.push(("sumdb".into(), h.report()));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    out
}

/// Every upstream's endpoints: `(kind, upstream, endpoint)` (one for an upstream with `url`).
pub fn upstream_endpoints(
    app: &AppState,
) -> Vec<(
    &'static str,
    String,
    std::sync::Arc<crate::upstream::pool::Slot>,
)> {
    use crate::upstream::pool::Member as _;
    let mut out = Vec::new();
    for u in app.registry.upstreams.values() {
        for e in &u.pool.endpoints {
            out.push(("registry", u.name.clone(), e.slot().clone()));
        }
    }
    if let Some(go) = &app.go {
        let private = go.private.iter().map(|r| ("go-private", &r.source));
        for (kind, s) in go.public.iter().map(|s| ("go", s)).chain(private) {
            for e in s.pool().map(|p| &p.endpoints[..]).unwrap_or(&[]) {
                out.push((kind, s.name.clone(), e.slot().clone()));
            }
        }
    }
    // Stable: a pool's endpoints stay in their configured order.
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

/// Every upstream's requests (registry upstreams and Go sources that are proxies): time to the
/// answer's head by status class, and failovers to another endpoint.
fn render_upstream_requests(o: &mut Expo, app: &AppState) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut pools: Vec<(&'static str, String, &crate::upstream::pool::PoolStats)> = app
        .registry
        .upstreams
        .values()
        .map(|u| ("registry", u.name.clone(), &u.pool.stats))
        .collect();
    if let Some(go) = &app.go {
        let private = go.private.iter().map(|r| ("go-private", &r.source));
        for (kind, s) in go.public.iter().map(|s| ("go", s)).chain(private) {
            if let Some(p) = s.pool() {
                pools.push((kind, s.name.clone(), &p.stats));
            }
        }
    }
    pools.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut rows = Vec::new();
    for (kind, name, stats) in &pools {
        for (class, h) in crate::upstream::pool::STATUS_CLASSES
            .iter()
            .zip(&stats.seconds)
        {
            let labels = vec![
                ("kind", kind.to_string()),
                ("upstream", label(name)),
                ("status", class.to_string()),
            ];
            rows.push((labels, h));
        }
    }
    o.histograms(
        "wharf_upstream_request_duration_seconds",
        "Requests to each upstream, from sending to the answer's head, by status class (error: no answer).",
        rows,
    );
    o.family(
        "wharf_upstream_failovers_total",
        "counter",
        "Requests sent on to another endpoint of a pool after one failed (refused, timed out, 5xx).",
        pools.iter().map(|(kind, name, stats)| {
            let labels = vec![("kind", kind.to_string()), ("upstream", label(name))];
            (labels, stats.failovers.load(Relaxed))
        }),
    );
    let tokens = pools.iter().flat_map(|(kind, name, stats)| {
        crate::upstream::pool::TOKEN_RESULTS
            .iter()
            .zip(&stats.tokens)
            .map(move |(result, n)| {
                let labels = vec![
                    ("kind", kind.to_string()),
                    ("upstream", label(name)),
                    ("result", result.to_string()),
                ];
                (labels, n.load(Relaxed))
            })
    });
    o.family(
        "wharf_upstream_token_fetches_total",
        "counter",
        "Bearer tokens fetched from an upstream's token service, by result (a cached token is not counted).",
        tokens,
    );
}

/// Each endpoint's health and load: bounded labels (kind, upstream, endpoint host).
fn render_endpoints(o: &mut Expo, app: &AppState) {
    let eps = upstream_endpoints(app);
    type Read = fn(&crate::upstream::pool::Slot) -> u64;
    let families: [(&str, &str, &str, Read); 5] = [
        (
            "wharf_upstream_endpoint_up",
            "gauge",
            "Whether an upstream endpoint is considered up (1) or down (0; probed in the background).",
            |s| u64::from(s.health.is_up()),
        ),
        (
            "wharf_upstream_endpoint_ejected",
            "gauge",
            "Whether a pool skips an endpoint for now after a failure (egress.ejection_time, growing).",
            |s| u64::from(s.health.ejected_until().is_some()),
        ),
        (
            "wharf_upstream_endpoint_outstanding",
            "gauge",
            "Requests in flight on an upstream endpoint (until their bodies are done).",
            |s| s.outstanding(),
        ),
        (
            "wharf_upstream_endpoint_requests_total",
            "counter",
            "Requests sent to an upstream endpoint.",
            |s| s.requests(),
        ),
        (
            "wharf_upstream_endpoint_ejections_total",
            "counter",
            "Times a pool ejected an endpoint (refused, timed out, 5xx, or a body cut).",
            |s| s.health.report().ejections,
        ),
    ];
    for (name, kind, help, read) in families {
        o.family(
            name,
            kind,
            help,
            eps.iter().map(|(k, up, slot)| {
                let labels = vec![
                    ("kind", k.to_string()),
                    ("upstream", label(up)),
                    ("endpoint", label(&slot.host)),
                ];
                (labels, read(slot))
            }),
        );
    }
}

/// The whole exposition: the library's families of `metrics`, then the state read now.
pub fn render(app: &AppState) -> String {
    let mut registry = Registry::default();
    app.metrics.register(&mut registry);
    if app.config.gateway.is_some() {
        app.metrics.gateway.register(&mut registry);
    }
    let fills = app.engine.fill_stats();
    registry.register(
        "wharf_fill_duration_seconds",
        "Completed fills, from their start to the object committed",
        fills.seconds.clone(),
    );
    registry.register(
        "wharf_fill_size_bytes",
        "Sizes of the objects completed fills stored",
        fills.bytes.clone(),
    );
    registry.register(
        "wharf_fill_waiters",
        "Requests that waited on each completed fill, the first included",
        fills.waiters.clone(),
    );
    registry.register_collector(Box::new(Scrape(app.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "writing /metrics failed");
    }
    out
}

/// The application state as a collector: read at each scrape.
struct Scrape(AppState);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut o = Expo {
            enc: encoder,
            result: Ok(()),
        };
        render_state(&mut o, &self.0);
        o.result
    }
}

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// The exposition being written, family by family, through the library's encoder; the first
/// error is kept and the rest skipped.
struct Expo<'a> {
    enc: DescriptorEncoder<'a>,
    result: std::fmt::Result,
}

impl Expo<'_> {
    /// One family: `name` as it is sampled (a counter's ends in `_total`), `kind` `counter` or
    /// `gauge`, and its samples.
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        if self.result.is_ok() {
            self.result = self.write(name, kind, help, rows);
        }
    }

    fn write(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let counter = kind == "counter";
        let (base, kind) = if counter {
            (
                name.strip_suffix("_total").unwrap_or(name),
                MetricType::Counter,
            )
        } else {
            (name, MetricType::Gauge)
        };
        let mut m = self.enc.encode_descriptor(base, help, None, kind)?;
        for (labels, v) in rows {
            if labels.is_empty() {
                sample(&mut m, counter, v)?;
            } else {
                sample(&mut m.encode_family(&labels)?, counter, v)?;
            }
        }
        Ok(())
    }

    /// A histogram family: each labelled histogram's buckets, sum and count.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        rows: Vec<(Labels, &prometheus_client::metrics::histogram::Histogram)>,
    ) {
        use prometheus_client::encoding::EncodeMetric as _;
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            let mut m = self
                .enc
                .encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, h) in &rows {
                h.encode(m.encode_family(labels)?)?;
            }
            Ok(())
        })();
    }

    /// One unlabelled metric: `(name, kind, help, value)`.
    fn scalar(&mut self, (name, kind, help, value): (&str, &str, &str, u64)) {
        self.family(name, kind, help, [(Labels::new(), value)]);
    }
}

fn sample(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    counter: bool,
    v: u64,
) -> std::fmt::Result {
    if counter {
        m.encode_counter::<NoLabelSet, _, u64>(&v, None)
    } else {
        m.encode_gauge(&v)
    }
}

/// A label value that cannot break the exposition's quoting.
fn label(v: &str) -> String {
    v.replace(['"', '\\', '\n'], "_")
}

fn render_state(o: &mut Expo, app: &AppState) {
    let m = &app.metrics;
    let mut requests = Vec::new();
    for (go, proto) in [(false, "registry"), (true, "go")] {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let labels = vec![
                ("protocol", proto.to_string()),
                ("outcome", outcome.to_ascii_lowercase()),
            ];
            requests.push((labels, m.get(go, i)));
        }
    }
    o.family(
        "wharf_requests_total",
        "counter",
        "Requests by protocol and cache outcome.",
        requests,
    );
    let go_coalesced = app.go.as_ref().map_or(0, |g| g.flights.coalesced());
    o.family(
        "wharf_coalesced_total",
        "counter",
        "Requests that joined a fill already in flight.",
        [
            (
                vec![("protocol", "registry".to_string())],
                app.registry.blob_flights.coalesced(),
            ),
            (vec![("protocol", "go".to_string())], go_coalesced),
        ],
    );
    render_bodies(o, m);
    o.scalar((
        "wharf_fills_in_flight",
        "gauge",
        "Upstream fills running now.",
        app.engine.fills_running() as u64,
    ));
    render_fills(o, app);
    render_fill_queue(o, app);
    render_store(o, &m.store);
    render_cold_ranges(o, &app.metrics);
    render_disk(o, app);
    render_connections(o, &app.metrics);
    let reports = upstream_reports(app);
    let per_upstream = |v: &dyn Fn(&HealthReport) -> u64| -> Vec<(Labels, u64)> {
        reports
            .iter()
            .map(|(kind, r)| {
                let labels = vec![("kind", kind.clone()), ("upstream", label(&r.name))];
                (labels, v(r))
            })
            .collect()
    };
    o.family(
        "wharf_upstream_up",
        "gauge",
        "Whether an upstream is considered up (1) or down (0).",
        per_upstream(&|r| u64::from(r.up)),
    );
    render_rate_limits(o, app);
    render_upstream_requests(o, app);
    render_endpoints(o, app);
    o.family(
        "wharf_upstream_auth_failures",
        "gauge",
        "Requests in a row that could not authenticate with an upstream (token realm refused or failing); 0 once one does.",
        per_upstream(&|r| u64::from(r.auth_failures)),
    );
    let mut ub: Vec<_> = m.upstream_bytes().into_iter().collect();
    ub.sort();
    o.family(
        "wharf_upstream_bytes_total",
        "counter",
        "Bytes fetched and verified from each upstream.",
        ub.into_iter()
            .map(|(u, b)| (vec![("upstream", label(&u))], b)),
    );
    o.family(
        "wharf_egress_refusals_total",
        "counter",
        "Outgoing connections the egress policy refused, by reason: host (or port, socket, URL) not allowed, address (the name resolved only to forbidden addresses), redirect (a redirect's target; also counted under host or address), credentials (kept from a token service).",
        app.egress
            .refusals
            .read()
            .map(|(reason, n)| (vec![("reason", reason.to_string())], n)),
    );
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
        o.scalar((name, "counter", help, value));
    }
    render_prefetch(o, &m.prefetch);
    o.scalar((
        "wharf_offline",
        "gauge",
        "Whether wharf runs with offline = true.",
        u64::from(app.config.offline),
    ));
    render_tiers(o, app);
    if let Some(shared) = &app.shared {
        render_shared(o, shared);
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
            o.scalar((name, "counter", help, value));
        }
    }
}

/// Objects and bytes served per tier: memory, local disk, and fills from the shared tier, an
/// owner replica or upstream.
fn render_tiers(o: &mut Expo, app: &AppState) {
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
        let samples = rows.iter().map(|(tier, c)| {
            let v = if bytes { c.bytes() } else { c.objects() };
            (vec![("tier", tier.to_string())], v)
        });
        o.family(name, "counter", help, samples);
    }
}

fn render_shared(o: &mut Expo, shared: &crate::shared::Shared) {
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
        o.scalar(row);
    }
}

/// `/healthz`: 200 while serving; `status` says `degraded` when an upstream is down or cannot
/// authenticate, or the data directory's disk ran full or is below `cache.min_free`.
pub fn health_json(app: &AppState) -> String {
    let eps = upstream_endpoints(app);
    let ups: Vec<serde_json::Value> = upstream_reports(app)
        .into_iter()
        .map(|(kind, r)| {
            let endpoints: Vec<serde_json::Value> = eps
                .iter()
                .filter(|(k, up, _)| *k == kind && *up == r.name)
                .map(|(_, _, s)| {
                    let h = s.health.report();
                    serde_json::json!({
                        "endpoint": s.host, "weight": s.weight, "up": h.up,
                        "ejected": h.ejected, "ejections": h.ejections,
                        "outstanding": s.outstanding(), "requests": s.requests(),
                        "consecutive_failures": h.consecutive_failures,
                        "last_error": h.last_error,
                    })
                })
                .collect();
            serde_json::json!({
                "kind": kind, "name": r.name, "up": r.up,
                "consecutive_failures": r.consecutive_failures,
                "last_error": r.last_error, "since_unix": r.since_unix,
                "auth_failures": r.auth_failures, "auth_error": r.auth_error,
                "endpoints": endpoints,
            })
        })
        .collect();
    let shared = app.shared.as_ref().map(|s| s.report());
    let room = app.engine.room();
    let disk_problem = room.and_then(|r| r.problem());
    let degraded = ups
        .iter()
        .any(|u| u["up"] == false || u["auth_failures"] != 0)
        || eps.iter().any(|(_, _, s)| !s.health.is_up())
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
fn render_bodies(o: &mut Expo, m: &crate::metrics::Metrics) {
    for (name, help, i) in [
        (
            "wharf_http_bodies_total",
            "Response bodies sent, by how: sendfile (stored files on plain HTTP/1.1) or copy (through a buffer: TLS, HTTP/2, fills, memory).",
            0,
        ),
        ("wharf_http_body_bytes_total", "Bytes of those bodies.", 1),
    ] {
        let samples = [("sendfile", true), ("copy", false)].map(|(via, sendfile)| {
            let b = m.bodies(sendfile);
            (
                vec![("via", via.to_string())],
                if i == 0 { b.0 } else { b.1 },
            )
        });
        o.family(name, "counter", help, samples);
    }
}

/// Ranges of blobs still being filled, by where they were answered from.
fn render_cold_ranges(o: &mut Expo, m: &crate::metrics::Metrics) {
    o.family(
        "wharf_registry_cold_ranges_total",
        "counter",
        "Range requests for a blob still being filled: from the upstream (unverified, registry.cold_ranges) or from the fill.",
        [("upstream", true), ("fill", false)]
            .map(|(via, upstream)| (vec![("via", via.to_string())], m.cold_ranges(upstream))),
    );
}

/// Client connections and the descriptor limit.
fn render_connections(o: &mut Expo, m: &crate::metrics::Metrics) {
    let (open, shed, refused, failed) = m.connections();
    for row in [
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
        o.scalar(row);
    }
}

/// The data directory's file system and the fills it could not take.
fn render_disk(o: &mut Expo, app: &AppState) {
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
            o.scalar((name, "gauge", help, v));
        }
    }
    o.scalar((
        "wharf_disk_full",
        "gauge",
        "1 while the data directory's disk ran full lately (ENOSPC) or is below cache.min_free.",
        u64::from(room.problem().is_some()),
    ));
    o.scalar((
        "wharf_passthrough_total",
        "counter",
        "Objects served to a client without being stored (no room on the local disk; X-Cache BYPASS).",
        room.passed_through(),
    ));
}

/// Fills started, completed and failed by reason.
fn render_fills(o: &mut Expo, app: &AppState) {
    use std::sync::atomic::Ordering::Relaxed;
    let f = app.engine.fill_stats();
    o.scalar((
        "wharf_fills_started_total",
        "counter",
        "Fills started (one per object however many requests wait on it).",
        f.started.load(Relaxed),
    ));
    o.scalar((
        "wharf_fills_completed_total",
        "counter",
        "Fills whose object was verified and stored.",
        f.completed.load(Relaxed),
    ));
    o.scalar((
        "wharf_fill_resumes_total",
        "counter",
        "Transfers cut mid-body that a fill continued at the byte where they stopped (a Range, or the whole with its start skipped).",
        f.resumes.load(Relaxed),
    ));
    let failed = crate::cache::engine::FAIL_REASONS
        .iter()
        .zip(&f.failed)
        .map(|(reason, n)| (vec![("reason", reason.to_string())], n.load(Relaxed)));
    o.family(
        "wharf_fills_failed_total",
        "counter",
        "Fills that stored nothing, by reason: not_found, upstream (transport, status, size), verification (the bytes failed their digest or checks), local, no_room, unavailable (upstream marked down), offline.",
        failed,
    );
}

/// The store as last measured, and eviction.
fn render_store(o: &mut Expo, s: &crate::metrics::StoreStats) {
    use std::sync::atomic::Ordering::Relaxed;
    for row in [
        (
            "wharf_store_bytes",
            "gauge",
            "Bytes of objects in the local store (measured each cache.gc_interval).",
            s.bytes.load(Relaxed),
        ),
        (
            "wharf_store_objects",
            "gauge",
            "Objects in the local store.",
            s.objects.load(Relaxed),
        ),
        (
            "wharf_store_pinned_bytes",
            "gauge",
            "Bytes of pinned objects (never evicted).",
            s.pinned_bytes.load(Relaxed),
        ),
        (
            "wharf_store_pinned_objects",
            "gauge",
            "Pinned objects.",
            s.pinned_objects.load(Relaxed),
        ),
        (
            "wharf_index_bytes",
            "gauge",
            "Bytes the sled index takes on disk.",
            s.index_bytes.load(Relaxed),
        ),
        (
            "wharf_evictions_total",
            "counter",
            "Objects evicted (over cache.max_size, or to make room).",
            s.evictions.load(Relaxed),
        ),
        (
            "wharf_evicted_bytes_total",
            "counter",
            "Bytes of those objects.",
            s.evicted_bytes.load(Relaxed),
        ),
    ] {
        o.scalar(row);
    }
}

/// Fills waiting for a permit.
fn render_fill_queue(o: &mut Expo, app: &AppState) {
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
        o.scalar((
            name,
            kind,
            help,
            v.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
}

/// The pull quotas registry upstreams report.
fn render_rate_limits(o: &mut Expo, app: &AppState) {
    let mut rates: Vec<_> = app
        .registry
        .upstreams
        .values()
        .filter_map(|u| Some((label(&u.name), u.rate.get()?)))
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
        let samples = rates.iter().map(|(upstream, (limit, remaining))| {
            let v = if pick == 0 { limit } else { remaining };
            (vec![("upstream", upstream.clone())], *v)
        });
        o.family(name, "gauge", help, samples);
    }
}

/// The scheduled prefetch (`[[prefetch]]`): runs, and what the last one did.
fn render_prefetch(o: &mut Expo, p: &crate::metrics::PrefetchRuns) {
    use std::sync::atomic::Ordering::Relaxed;
    for row in [
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
        o.scalar(row);
    }
}
