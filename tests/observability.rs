//! `/metrics` as a monitoring system reads it: after a warm and a cold pull, a corrupt upstream
//! blob, a redirect the egress policy refuses and a failed client login, each family has the
//! expected counts, and the whole exposition parses with the Prometheus project's own
//! OpenMetrics parser (Debian's `python3-prometheus-client`; skipped with a reason when it is
//! missing, unless `WHARF_REQUIRE_INTEROP` is set).

mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use support::*;

/// The samples of an exposition as the reference parser reads them: `name{k="v",...}` (labels
/// sorted) to value. `None` when the parser is not installed.
fn parse_openmetrics(text: &str) -> Option<HashMap<String, f64>> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = String::from_utf8(out.stdout).unwrap();
    Some(
        samples
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect(),
    )
}

#[tokio::test]
async fn metrics_count_pulls_bad_bytes_refusals_and_failed_logins_and_parse() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(300_000, 41);
    let d = up.put_blob(&blob);
    let bad = bytes_of(200_000, 42);
    let bad_d = up.put_blob(&bad);
    let moved = bytes_of(100_000, 43);
    let moved_d = up.put_blob(&moved);
    let dir = tempfile::tempdir().unwrap();
    let token = "a-build-farm-token";
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(&format!(
        "[cache]\ngc_interval = \"200ms\"\n[access]\n[[access.token]]\nname = \"farm\"\nsha256 = \"{}\"\n\
         [[access.rule]]\nprotocol = \"registry\"\nprefix = \"private/\"\nrequire_auth = true\n",
        sha256(token.as_bytes()).trim_start_matches("sha256:")
    )))
    .await;

    // A cold pull, then the same warm.
    for cache in ["MISS", "HIT"] {
        let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
        assert_eq!(r.headers()["x-cache"], cache);
        assert_eq!(read_body(r).await, blob);
    }
    // A corrupt upstream blob.
    up.set_blob_mode(BlobMode::Corrupt);
    let r = get(w.url(&format!("/v2/app/blobs/{bad_d}"))).await;
    // Refused before the head (the fill failed first) or cut: never a complete body.
    if r.status().is_success() {
        assert!(r.bytes().await.is_err());
    } else {
        assert_eq!(r.status(), 502);
    }
    // A redirect to an address the egress policy refuses.
    up.set_blob_mode(BlobMode::Redirect("http://169.254.169.254".into()));
    let r = get(w.url(&format!("/v2/app/blobs/{moved_d}"))).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    up.set_blob_mode(BlobMode::Normal);
    // A failed client login.
    let r = client()
        .get(w.url(&format!("/v2/private/app/blobs/{d}")))
        .bearer_auth("not-the-token")
        .sent()
        .await;
    assert_eq!(r.status(), 401);
    // A request posing as another replica, with a wrong fleet secret.
    let r = client()
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .header("X-Wharf-Peer", "guessed")
        .sent()
        .await;
    assert_eq!(r.status(), 403);

    // The store is measured each cache.gc_interval.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = get(w.url("/metrics")).await;
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = read_text(r).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let Some(samples) = parse_openmetrics(&text) else {
        let why = "the OpenMetrics parser (python3-prometheus-client) is not installed";
        if std::env::var_os("WHARF_REQUIRE_INTEROP").is_some() {
            panic!("{why}; WHARF_REQUIRE_INTEROP is set, so this is a failure, not a skip");
        }
        eprintln!("skipping: {why}");
        return;
    };
    let at = |key: &str| -> f64 {
        *samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{text}"))
    };
    let blob_hit = r#"kind="blob",outcome="hit",protocol="registry""#;
    let blob_miss = r#"kind="blob",outcome="miss",protocol="registry""#;
    assert_eq!(
        at(&format!(
            "wharf_request_duration_seconds_count{{{blob_hit}}}"
        )),
        1.0
    );
    assert!(
        at(&format!(
            "wharf_request_duration_seconds_count{{{blob_miss}}}"
        )) >= 1.0
    );
    assert_eq!(
        at(
            r#"wharf_request_duration_seconds_bucket{kind="blob",le="+Inf",outcome="hit",protocol="registry"}"#
        ),
        1.0
    );
    assert!(at(&format!("wharf_first_byte_seconds_count{{{blob_miss}}}")) >= 1.0);
    assert_eq!(
        at(r#"wharf_served_bytes_total{outcome="hit",protocol="registry"}"#),
        blob.len() as f64
    );
    assert_eq!(
        at(r#"wharf_verification_failures_total{kind="blob_digest"}"#),
        1.0
    );
    assert_eq!(at(r#"wharf_egress_refusals_total{reason="redirect"}"#), 1.0);
    assert_eq!(
        at(r#"wharf_client_auth_failures_total{reason="bad_token"}"#),
        1.0
    );
    assert_eq!(
        at(r#"wharf_client_auth_failures_total{reason="bad_peer_secret"}"#),
        1.0
    );
    assert_eq!(
        at(r#"wharf_upstream_bytes_total{upstream="fake.test"}"#),
        blob.len() as f64
    );
    assert_eq!(
        at(r#"wharf_requests_total{outcome="hit",protocol="registry"}"#),
        1.0
    );
    // Fills: the good blob, the corrupt one, the refused redirect.
    assert_eq!(at("wharf_fills_started_total{}"), 3.0);
    assert_eq!(at("wharf_fills_completed_total{}"), 1.0);
    assert_eq!(
        at(r#"wharf_fills_failed_total{reason="verification"}"#),
        1.0
    );
    assert_eq!(at(r#"wharf_fills_failed_total{reason="upstream"}"#), 1.0);
    assert_eq!(at("wharf_fill_duration_seconds_count{}"), 1.0);
    assert_eq!(at("wharf_fill_size_bytes_sum{}"), blob.len() as f64);
    assert_eq!(at("wharf_fill_waiters_count{}"), 1.0);
    assert_eq!(at("wharf_store_objects{}"), 1.0);
    assert_eq!(at("wharf_store_bytes{}"), blob.len() as f64);
    assert!(at("wharf_index_bytes{}") > 0.0);
    assert_eq!(at("wharf_evictions_total{}"), 0.0);
    // Requests to the upstream: the good blob and the corrupt one answered 2xx; the refused
    // redirect is no answer.
    let up_2xx = r#"wharf_upstream_request_duration_seconds_count{kind="registry",status="2xx",upstream="fake.test"}"#;
    assert!(at(up_2xx) >= 2.0, "{text}");
    assert!(
        at(
            r#"wharf_upstream_request_duration_seconds_count{kind="registry",status="error",upstream="fake.test"}"#
        ) >= 1.0
    );
    assert_eq!(
        at(r#"wharf_upstream_failovers_total{kind="registry",upstream="fake.test"}"#),
        0.0
    );
    // Labels stay bounded: no repository or digest reaches a label.
    assert!(!text.contains("app/"), "{text}");
    assert!(!text.contains(&d[7..]), "{text}");
}
