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
    let _ = writeln!(
        o,
        "# HELP wharf_fills_in_flight Upstream fills running now."
    );
    let _ = writeln!(o, "# TYPE wharf_fills_in_flight gauge");
    let running = app.engine.fills_running();
    let _ = writeln!(o, "wharf_fills_in_flight {running}");
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
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        let _ = writeln!(o, "{name} {value}");
    }
    let _ = writeln!(
        o,
        "# HELP wharf_offline Whether wharf runs with offline = true."
    );
    let _ = writeln!(o, "# TYPE wharf_offline gauge");
    let _ = writeln!(o, "wharf_offline {}", u8::from(app.config.offline));
    o
}

/// `/healthz`: 200 while serving; `status` says `degraded` when an upstream is down or cannot
/// authenticate.
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
    let degraded = ups
        .iter()
        .any(|u| u["up"] == false || u["auth_failures"] != 0);
    serde_json::json!({
        "status": if degraded { "degraded" } else { "ok" },
        "offline": app.config.offline,
        "upstreams": ups,
    })
    .to_string()
}
