//! The Grafana dashboard (`dashboards/wharf.json`) queries only what wharf exports: every metric
//! name in every PromQL expression (panel targets and template variables) is found in the
//! `/metrics` of a real wharf after a cold and a warm pull (and a corrupt blob, so the
//! verification family has a sample). A renamed family fails here, naming the panel, instead of
//! leaving an empty panel in someone's Grafana.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::*;

const DASHBOARD: &str = include_str!("../dashboards/wharf.json");

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("dashboards/wharf.json is JSON")
}

/// Every PromQL expression with where it is: `(panel title or variable name, expr)`.
fn queries(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    walk(d["panels"].as_array().map_or(&[], Vec::as_slice), &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(q) = q {
            let name = format!("${}", v["name"].as_str().unwrap_or("?"));
            out.push((name, q.to_string()));
        }
    }
    out
}

/// The metric names an expression reads: identifiers that start with `wharf_`, outside string
/// literals (label values) and not Grafana variables (`$__rate_interval`, `${x}`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let cs: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < cs.len() {
        match cs[i] {
            q @ ('"' | '\'' | '`') => {
                i += 1;
                while i < cs.len() && cs[i] != q {
                    i += if cs[i] == '\\' && q != '`' { 2 } else { 1 };
                }
                i += 1;
            }
            '$' => {
                i += 1;
                if cs.get(i) == Some(&'{') {
                    while i < cs.len() && cs[i] != '}' {
                        i += 1;
                    }
                }
                while i < cs.len() && ident(cs[i]) {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < cs.len() && (ident(cs[i]) || (cs[i] == '.' && cs[start].is_ascii_digit()))
                {
                    i += 1;
                }
                let word: String = cs[start..i].iter().collect();
                if word.starts_with("wharf_") {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The sample names an exposition offers: every sample line's name, and for each declared
/// family the names its type gives it (`_total` for a counter, `_bucket`/`_count`/`_sum` for a
/// histogram, the name itself for a gauge), so a family with no samples yet (no verification
/// failure, no upstream quota reported) still counts as exported.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut words = decl.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                "summary" => &["", "_count", "_sum"],
                _ => &[""],
            };
            out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#')
            && let Some(end) = line.find(['{', ' '])
        {
            out.insert(line[..end].to_string());
        }
    }
    out
}

/// `name (panel)` for each queried name the exposition does not offer.
fn missing(queries: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (panel, expr) in queries {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                out.push(format!("{name} ({panel})"));
            }
        }
    }
    out
}

const SMALL_EXPOSITION: &str = "\
# TYPE wharf_requests counter
wharf_requests_total{protocol=\"go\",outcome=\"hit\"} 1
# TYPE wharf_request_duration_seconds histogram
wharf_request_duration_seconds_bucket{le=\"+Inf\"} 1
wharf_request_duration_seconds_count 1
wharf_request_duration_seconds_sum 0.1
# TYPE wharf_verification_failures counter
# TYPE wharf_fills_in_flight gauge
wharf_fills_in_flight 0
# EOF
";

#[test]
fn the_tokenizer_finds_metric_names_outside_strings_and_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (le, kind) (rate(wharf_request_duration_seconds_bucket{instance=~"$instance",kind="wharf_not_a_name"}[$__rate_interval]))) / on() group_left wharf_fills_in_flight offset 5m"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "wharf_fills_in_flight",
            "wharf_request_duration_seconds_bucket"
        ]
    );
    assert!(metric_names("sum(${wharf_var}) + $wharf_other").is_empty());
    assert!(metric_names("rate(up{job='wharf_x'}[5m])").is_empty());
}

#[test]
fn a_panel_querying_a_name_wharf_does_not_export_is_caught() {
    let exported = exported(SMALL_EXPOSITION);
    let good = [
        "sum(rate(wharf_requests_total[5m]))",
        "histogram_quantile(0.5, sum by (le) (rate(wharf_request_duration_seconds_bucket[5m])))",
        "rate(wharf_request_duration_seconds_sum[5m]) / rate(wharf_request_duration_seconds_count[5m])",
        // Declared, no samples yet.
        "sum(increase(wharf_verification_failures_total[1h])) or vector(0)",
        "wharf_fills_in_flight",
    ];
    let good: Vec<_> = good
        .iter()
        .map(|e| ("good".into(), e.to_string()))
        .collect();
    assert!(missing(&good, &exported).is_empty());
    let bad = [
        // A counter without `_total`, a misspelt family, a histogram without its suffix.
        ("requests", "rate(wharf_requests[5m])"),
        ("typo", "sum(wharf_fill_in_flight)"),
        ("bare", "wharf_request_duration_seconds"),
        ("gauge as counter", "rate(wharf_fills_in_flight_total[5m])"),
    ];
    let bad: Vec<_> = bad
        .iter()
        .map(|(p, e)| (p.to_string(), e.to_string()))
        .collect();
    assert_eq!(
        missing(&bad, &exported),
        [
            "wharf_requests (requests)",
            "wharf_fill_in_flight (typo)",
            "wharf_request_duration_seconds (bare)",
            "wharf_fills_in_flight_total (gauge as counter)",
        ]
    );
}

#[test]
fn the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "Grafana 10+"
    );
    assert!(d["id"].is_null(), "an exported dashboard has no id");
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a ${{datasource}} variable of Prometheus data sources"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64()), "{title}: duplicate id");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{title}: description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["refId"].is_string(), "{title}: refId");
        }
    }
    // The verification-failure panel stays green at 0 and is red from 1.
    let verification = panels
        .iter()
        .find(|p| {
            p["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Verification"))
        })
        .expect("a verification failures panel");
    assert_eq!(verification["type"], "stat");
    let steps = &verification["fieldConfig"]["defaults"]["thresholds"]["steps"];
    assert_eq!(steps[0]["color"], "green");
    assert_eq!(steps[1]["color"], "red");
    assert_eq!(steps[1]["value"], 1);
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_in_the_exposition() {
    let up = FakeRegistry::start().await;
    let (_, manifest) = up.put_image("team/app", "v1", &[bytes_of(50_000, 7)]);
    let blob = bytes_of(120_000, 8);
    let d = up.put_blob(&blob);
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path())).await;
    // A cold pull, then the same warm: the request, first-byte and served-bytes label sets exist.
    for cache in ["MISS", "HIT"] {
        let r = get(w.url(&format!("/v2/team/app/blobs/{d}"))).await;
        assert_eq!(r.headers()["x-cache"], cache);
        assert_eq!(read_body(r).await, blob);
        let m = w.manifest("/v2/team/app/manifests/v1").await;
        assert_eq!(m.body, manifest);
    }
    // A corrupt upstream blob: the library writes a labelled family (verification failures)
    // only once it has a label set; on a healthy server the panel's `or vector(0)` shows 0.
    let bad = bytes_of(200_000, 9);
    let bad_d = up.put_blob(&bad);
    up.set_blob_mode(BlobMode::Corrupt);
    let r = get(w.url(&format!("/v2/team/app/blobs/{bad_d}"))).await;
    let _ = r.bytes().await;
    up.set_blob_mode(BlobMode::Normal);
    let text = read_text(get(w.url("/metrics")).await).await;
    let exported = exported(&text);

    let queries = queries(&dashboard());
    assert!(queries.len() > 20, "{queries:?}");
    let names: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for family in [
        "wharf_requests_total",
        "wharf_request_duration_seconds_bucket",
        "wharf_first_byte_seconds_bucket",
        "wharf_served_bytes_total",
        "wharf_upstream_bytes_total",
        "wharf_upstream_up",
        "wharf_verification_failures_total",
        "wharf_disk_free_bytes",
        "wharf_connections_open",
    ] {
        assert!(
            names.contains(family),
            "the dashboard does not show {family}"
        );
    }
    let gone = missing(&queries, &exported);
    assert!(
        gone.is_empty(),
        "the dashboard queries names wharf does not export: {}\n{text}",
        gone.join(", ")
    );
    // The same check fails for a panel that queries a name wharf does not export.
    let bad = [(
        "bad".to_string(),
        "rate(wharf_cache_hits_total[5m])".to_string(),
    )];
    assert_eq!(missing(&bad, &exported), ["wharf_cache_hits_total (bad)"]);
    w.stop().await;
}
