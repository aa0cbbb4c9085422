//! Black-box tests of the registry mirror over real sockets, against a fake upstream on port 0.

mod support;
use support::*;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn setup(registry_keys: &str) -> (FakeRegistry, Wharf, tempfile::TempDir) {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::start(&up.url(), dir.path(), registry_keys).await;
    (up, w, dir)
}

#[tokio::test]
async fn base_endpoint_answers_with_the_api_version_header() {
    let (_up, w, _d) = setup("").await;
    let r = get(w.url("/v2/")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn manifest_by_tag_is_fetched_once_then_served_from_cache() {
    let (up, w, _d) = setup("tag_ttl = \"1h\"").await;
    let (digest, body) = up.put_image("team/app", "v1", &[bytes_of(1000, 1)]);
    let r = get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(
        r.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(read_body(r).await, body);
    let before = up.total();
    let r = get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, body);
    assert_eq!(up.total(), before, "a fresh tag must not go upstream");
}

#[tokio::test]
async fn expired_tag_is_revalidated_with_head_and_content_is_not_refetched() {
    let (up, w, _d) = setup("tag_ttl = \"0s\"").await;
    let (digest, _) = up.put_image("team/app", "v1", &[bytes_of(10, 1)]);
    get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(up.count("GET", "/manifests/"), 1);
    let r = get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(
        up.count("HEAD", "/manifests/v1"),
        2,
        "each expired lookup is a HEAD"
    );
    assert_eq!(
        up.count("GET", "/manifests/"),
        1,
        "known digest is not fetched again"
    );
    // The tag moves upstream: the next lookup follows it.
    let (digest2, _) = up.put_image("team/app", "v1", &[bytes_of(10, 2)]);
    assert_ne!(digest, digest2);
    let r = get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.headers()["docker-content-digest"], digest2.as_str());
}

#[tokio::test]
async fn manifest_head_has_every_header_and_no_body() {
    let (up, w, _d) = setup("").await;
    let (digest, body) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let r = client()
        .head(w.url(&format!("/v2/app/manifests/{digest}")))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        r.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert!(read_body(r).await.is_empty());
}

#[tokio::test]
async fn manifest_without_digest_header_is_hashed_on_arrival() {
    let (up, w, _d) = setup("").await;
    *up.state.omit_digest_header.lock().unwrap() = true;
    let (digest, _) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let r = get(w.url("/v2/app/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
}

#[tokio::test]
async fn blobs_are_served_whole_and_by_range() {
    let (up, w, _d) = setup("").await;
    let data = bytes_of(300_000, 7);
    let d = up.put_blob(&data);
    let c = client();
    let url = w.url(&format!("/v2/app/blobs/{d}"));
    let r = get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(read_body(r).await, data);
    let r = c.get(&url).header("range", "bytes=100-199").sent().await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/300000");
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, &data[100..200]);
    let r = c.get(&url).header("range", "bytes=-10").sent().await;
    assert_eq!(read_body(r).await, &data[data.len() - 10..]);
    let r = c.get(&url).header("range", "bytes=300000-").sent().await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */300000");
    assert_eq!(error_code(r).await, "RANGE_INVALID");
    let r = c.head(&url).sent().await;
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(up.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn range_on_a_cold_blob_is_served_from_the_fill() {
    let (up, w, _d) = setup("").await;
    let data = bytes_of(1_000_000, 3);
    let d = up.put_blob(&data);
    let r = client()
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .header("range", "bytes=500000-500099")
        .sent()
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(read_body(r).await, &data[500_000..500_100]);
}

#[tokio::test]
async fn unknown_blob_and_manifest_are_404_with_spec_codes() {
    let (_up, w, _d) = setup("").await;
    let missing = sha256(b"nope");
    let r = get(w.url(&format!("/v2/app/blobs/{missing}"))).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = get(w.url("/v2/app/manifests/nope")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn tags_list_paginates_and_falls_back_to_the_cached_list() {
    let (up, w, _d) = setup("tag_ttl = \"0s\"").await;
    for t in ["b", "a", "c"] {
        up.put_image("app", t, &[bytes_of(5, 1)]);
    }
    let r = get(w.url("/v2/app/tags/list")).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b", "c"]));
    let r = get(w.url("/v2/app/tags/list?n=2")).await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(link.starts_with("</v2/app/tags/list?n=2&last=b>"), "{link}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    up.fail_with(Some(503));
    let r = get(w.url("/v2/app/tags/list?n=1&last=a")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["b"]));
    let r = get(w.url("/v2/other/tags/list")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}

#[tokio::test]
async fn token_challenge_is_answered_and_the_token_reused() {
    let (up, w, _d) = setup("tag_ttl = \"0s\"").await;
    *up.state.require_token.lock().unwrap() = true;
    up.put_image("app", "v1", &[bytes_of(10, 1)]);
    for _ in 0..3 {
        assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    }
    assert_eq!(
        up.state
            .token_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let metrics = get(w.url("/metrics")).await.body_text().await;
    let fetched = |result: &str| {
        format!(
            "wharf_upstream_token_fetches_total{{kind=\"registry\",upstream=\"fake.test\",result=\"{result}\"}} "
        )
    };
    assert!(
        metrics.contains(&format!("{}1\n", fetched("ok"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{}0\n", fetched("error"))),
        "{metrics}"
    );
}

#[tokio::test]
async fn token_realm_on_a_refused_host_gets_no_request() {
    let (up, w, _d) = setup("").await;
    let planted = FakeRegistry::start().await;
    *up.state.require_token.lock().unwrap() = true;
    *up.state.realm.lock().unwrap() =
        Some(format!("http://localhost:{}/token", planted.addr.port()));
    up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let r = get(w.url("/v2/app/manifests/v1")).await;
    assert_eq!(r.status(), 502);
    let body = read_text(r).await;
    assert!(
        body.contains("localhost") && body.contains("egress.allow"),
        "{body}"
    );
    assert_eq!(
        planted
            .state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn refused_realm_does_not_disable_the_upstream() {
    let (up, w, _d) = setup("").await;
    let planted = FakeRegistry::start().await;
    *up.state.require_token.lock().unwrap() = true;
    *up.state.realm.lock().unwrap() =
        Some(format!("http://localhost:{}/token", planted.addr.port()));
    up.put_image("app", "v1", &[bytes_of(10, 1)]);
    up.put_image("other", "v1", &[bytes_of(10, 2)]);
    let upstream_state = || async {
        let (health, up) = health_of(&w.url(""), "fake.test").await;
        let metrics = get(w.url("/metrics")).await.body_text().await;
        (health["status"].clone(), up, metrics)
    };

    // While the realm is refused, each request fails, but each is sent and challenged afresh.
    for (i, repo) in ["app", "other"].into_iter().enumerate() {
        let r = get(w.url(&format!("/v2/{repo}/manifests/v1"))).await;
        assert_eq!(r.status(), 502, "{repo}");
        let body = read_text(r).await;
        assert!(
            body.contains("localhost") && body.contains("egress.allow"),
            "{body}"
        );
        let asked = up
            .seen()
            .iter()
            .filter(|s| s.path.ends_with("/manifests/v1"))
            .count();
        assert_eq!(asked, i + 1, "{repo} was not asked: {:?}", up.seen());
    }
    let (status, state, metrics) = upstream_state().await;
    assert_eq!(status, "degraded");
    assert_eq!(state["up"], true, "an auth failure is not an outage");
    assert_eq!(state["auth_failures"], 2);
    assert!(
        state["auth_error"]
            .as_str()
            .unwrap_or("")
            .contains("localhost"),
        "{state}"
    );
    assert!(
        metrics
            .contains("wharf_upstream_auth_failures{kind=\"registry\",upstream=\"fake.test\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        planted
            .state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // The registry now names an allowed realm (its own /token): the next request works.
    *up.state.realm.lock().unwrap() = None;
    for repo in ["other", "app"] {
        let r = get(w.url(&format!("/v2/{repo}/manifests/v1"))).await;
        assert_eq!(r.status(), 200, "{repo}");
    }
    let (status, state, metrics) = upstream_state().await;
    assert_eq!(status, "ok");
    assert_eq!(state["auth_failures"], 0);
    assert_eq!(state["auth_error"], serde_json::Value::Null);
    assert!(
        metrics
            .contains("wharf_upstream_auth_failures{kind=\"registry\",upstream=\"fake.test\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rate_limited_or_failing_upstream_serves_the_last_known_tag_as_stale() {
    let (up, w, _d) = setup("tag_ttl = \"0s\"").await;
    let (digest, body) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    get(w.url("/v2/app/manifests/v1")).await;
    for code in [429, 500, 503] {
        up.fail_with(Some(code));
        let r = get(w.url("/v2/app/manifests/v1")).await;
        assert_eq!(r.status(), 200, "upstream {code}");
        assert_eq!(r.headers()["x-cache"], "STALE");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(read_body(r).await, body);
    }
    up.fail_with(Some(429));
    let r = get(w.url("/v2/app/manifests/uncached")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    up.fail_with(Some(500));
    let r = get(w.url("/v2/app/manifests/uncached")).await;
    assert_eq!(r.status(), 502);
    let text = read_text(r).await;
    assert!(
        text.contains("UNAVAILABLE") && text.contains("fake.test"),
        "{text}"
    );
}

/// A wharf with `registry_keys` that has cached `app:v1` and `app`'s tag list.
async fn cached_tag_and_list(
    registry_keys: &str,
) -> (FakeRegistry, Wharf, tempfile::TempDir, String, Vec<u8>) {
    let (up, w, d) = setup(registry_keys).await;
    let (digest, body) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    up.state
        .tags
        .lock()
        .unwrap()
        .insert("app".into(), vec!["v1".into()]);
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    assert_eq!(status_of(w.url("/v2/app/tags/list")).await, 200);
    (up, w, d, digest, body)
}

#[tokio::test]
async fn a_refusal_or_a_deleted_tag_is_the_answer_unless_serve_stale_on_lists_it() {
    // Default: 401/403/404 from upstream are answers; the client sees them.
    let (up, w, _d, _, _) = cached_tag_and_list("tag_ttl = \"0s\"").await;
    for code in [401, 403, 404] {
        up.fail_with(Some(code));
        let r = get(w.url("/v2/app/manifests/v1")).await;
        assert_eq!(r.status(), 404, "upstream {code}");
        let r = get(w.url("/v2/app/tags/list")).await;
        assert_eq!(r.status(), 404, "upstream {code}");
    }

    // Opted in: the cached tag and tag list answer, marked STALE, for exactly those answers.
    let keys = "tag_ttl = \"0s\"\nserve_stale_on = [\"auth\", \"not_found\"]";
    let (up, w, _d, digest, body) = cached_tag_and_list(keys).await;
    for code in [401, 403, 404] {
        up.fail_with(Some(code));
        let r = get(w.url("/v2/app/manifests/v1")).await;
        assert_eq!(r.status(), 200, "upstream {code}");
        assert_eq!(r.headers()["x-cache"], "STALE");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(read_body(r).await, body);
        let r = get(w.url("/v2/app/tags/list")).await;
        assert_eq!(r.status(), 200, "upstream {code}");
        assert_eq!(r.headers()["x-cache"], "STALE");
        assert!(read_text(r).await.contains("\"v1\""));
    }
    // Nothing cached: still the upstream's answer.
    up.fail_with(Some(404));
    assert_eq!(status_of(w.url("/v2/app/manifests/v2")).await, 404);

    // Only what is listed: "auth" alone leaves a deleted tag deleted.
    let keys = "tag_ttl = \"0s\"\nserve_stale_on = [\"auth\"]";
    let (up, w, _d, _, _) = cached_tag_and_list(keys).await;
    up.fail_with(Some(401));
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    up.fail_with(Some(404));
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 404);
}

#[tokio::test]
async fn unreachable_upstream_serves_stale_tags() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (digest, _) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let url = up.url();
    let w = Wharf::start(&url, dir.path(), "tag_ttl = \"0s\"").await;
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = get(w.url("/v2/app/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
}

#[tokio::test]
async fn blob_redirect_to_an_allowed_host_is_followed_without_credentials() {
    let up = FakeRegistry::start().await;
    let cdn = FakeRegistry::start().await;
    let data = bytes_of(50_000, 9);
    let d = up.put_blob(&data);
    cdn.put_blob(&data);
    *up.state.require_token.lock().unwrap() = true;
    up.redirect_to(format!("localhost:{}", cdn.addr.port()));
    let dir = tempfile::tempdir().unwrap();
    let w =
        Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).allow(&["127.0.0.1", "localhost"]))
            .await;
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_body(r).await, data);
    let cdn_seen = cdn.seen();
    assert_eq!(cdn_seen.len(), 1);
    assert_eq!(
        cdn_seen[0].authorization, None,
        "Authorization must not cross hosts"
    );
    assert!(
        up.seen()
            .iter()
            .any(|s| s.authorization.as_deref() == Some("Bearer good-token"))
    );
}

#[tokio::test]
async fn blob_redirect_to_a_refused_host_fails_before_connecting() {
    let (up, w, _d) = setup("").await;
    let planted = FakeRegistry::start().await;
    let data = bytes_of(5_000, 9);
    let d = up.put_blob(&data);
    planted.put_blob(&data);
    up.redirect_to(format!("localhost:{}", planted.addr.port()));
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.status(), 502);
    let body = read_text(r).await;
    assert!(
        body.contains("localhost") && body.contains("egress.allow"),
        "{body}"
    );
    assert!(
        !body.contains("secret"),
        "signed query must not leak: {body}"
    );
    assert_eq!(
        planted
            .state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(
        !w.data_dir
            .join("blobs/sha256")
            .join(&d[7..9])
            .join(&d[7..])
            .exists()
    );
}

#[tokio::test]
async fn blob_with_wrong_digest_is_never_cached() {
    let (up, w, dir) = setup("").await;
    let data = bytes_of(2_000_000, 5);
    let d = up.put_blob(&data);
    up.set_blob_mode(BlobMode::Corrupt);
    let url = w.url(&format!("/v2/app/blobs/{d}"));
    for _ in 0..2 {
        let r = get(&url).await;
        // Headers usually go out before the digest is known; then the body must be aborted.
        // A fill that fails before its first byte is served is a plain 502.
        match r.status().as_u16() {
            200 => assert!(
                r.bytes().await.is_err(),
                "the body must be aborted, never completed"
            ),
            502 => assert!(read_text(r).await.contains("does not match")),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        up.count("GET", "/blobs/"),
        2,
        "a failed fill is not remembered as content"
    );
    let blobs: Vec<_> = files_under(&dir.path().join("blobs"));
    assert!(blobs.is_empty(), "nothing stored: {blobs:?}");
    assert!(fill_files(dir.path()).is_empty());
    // Upstream heals: the right bytes arrive and are cached.
    up.set_blob_mode(BlobMode::Normal);
    let r = get(&url).await;
    assert_eq!(read_body(r).await, data);
    assert_eq!(get(&url).await.headers()["x-cache"], "HIT");
}

/// A 1,000,000-byte blob whose every full GET (announcing `claimed` bytes, default the real
/// size) is cut after 400,000 bytes, while a range is answered whole; and one GET of it.
async fn cut_blob(
    seed: u64,
    claimed: Option<usize>,
) -> (
    FakeRegistry,
    Wharf,
    tempfile::TempDir,
    String,
    Vec<u8>,
    reqwest::Response,
) {
    let (up, w, dir) = setup("").await;
    let data = bytes_of(1_000_000, seed);
    let d = up.put_blob(&data);
    *up.state.claimed_len.lock().unwrap() = claimed;
    up.set_blob_mode(BlobMode::Truncate(400_000));
    *up.state.range_answer.lock().unwrap() = RangeAnswer::Exact;
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    (up, w, dir, d, data, r)
}

#[tokio::test]
async fn a_fill_cut_mid_body_continues_with_a_range_from_where_it_stopped() {
    let (up, w, _dir, d, data, r) = cut_blob(7, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_body(r).await, data, "the client's body is whole");
    assert_eq!(up.state.range_requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        up.count("GET", &d),
        2,
        "one full GET, one range from byte 400000"
    );
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT", "stored, verified");
    assert_eq!(read_body(r).await, data);
    let metrics = get(w.url("/metrics")).await.body_text().await;
    assert!(
        metrics.contains("\nwharf_fill_resumes_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_continuation_that_names_another_size_than_announced_fails_the_fill() {
    // Announces 700,000 bytes, sends 400,000, is cut; the range then says 1,000,000 in all.
    let (_up, _w, dir, _d, _data, r) = cut_blob(8, Some(700_000)).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "never a clean end with other bytes"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn truncated_upstream_aborts_the_client_and_stores_nothing() {
    let (up, w, dir) = setup("").await;
    let data = bytes_of(1_000_000, 6);
    let d = up.put_blob(&data);
    up.set_blob_mode(BlobMode::Truncate(400_000));
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(
        r.status(),
        200,
        "headers go out as soon as upstream's arrive"
    );
    let got = r.bytes().await;
    assert!(
        got.is_err(),
        "body completed with {:?} bytes",
        got.map(|b| b.len())
    );
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_gets_of_a_cold_blob_cost_one_upstream_fetch() {
    let (up, w, _d) = setup("").await;
    let data = bytes_of(8 << 20, 11);
    let d = up.put_blob(&data);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(2)));
    let url = w.url(&format!("/v2/app/blobs/{d}"));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, url) = (client(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.get(&url).sent().await;
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["content-length"],
                (8 << 20).to_string().as_str()
            );
            read_body(r).await
        }));
    }
    for t in tasks {
        let body = t.await.unwrap();
        assert_eq!(sha256(&body), d, "every body is the verified blob");
    }
    assert_eq!(up.count("GET", "/blobs/"), 1, "exactly one upstream GET");
}

#[tokio::test]
async fn a_fill_finishes_after_its_client_goes_away() {
    let (up, w, dir) = setup("").await;
    let data = bytes_of(2 << 20, 12);
    let d = up.put_blob(&data);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(5)));
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.status(), 200);
    drop(r);
    let path = dir.path().join("blobs/sha256").join(&d[7..9]).join(&d[7..]);
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(up.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn push_and_delete_are_unsupported() {
    let (up, w, _d) = setup("").await;
    let c = client();
    for (m, path) in [
        ("POST", "/v2/app/blobs/uploads/"),
        ("PUT", "/v2/app/manifests/v1"),
        ("DELETE", "/v2/app/manifests/v1"),
        ("PATCH", "/v2/app/blobs/uploads/x"),
    ] {
        let r = c.request(m.parse().unwrap(), w.url(path)).sent().await;
        assert_eq!(r.status(), 405, "{m} {path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn hostile_paths_get_4xx_and_no_upstream_request_or_file() {
    let (up, w, dir) = setup("").await;
    let before = stored_files(dir.path()).len();
    let long = "a".repeat(300);
    let cases = [
        ("/v2/../etc/passwd/manifests/latest", 400),
        ("/v2/a/..%2f..%2fetc/manifests/latest", 400),
        ("/v2/%2e%2e/x/manifests/latest", 400),
        ("/v2/a%5cb/manifests/latest", 400),
        ("/v2/UPPER/manifests/latest", 400),
        (&format!("/v2/{long}/manifests/latest"), 400),
        ("/v2/app/blobs/sha256:../../x", 404),
        ("/v2/app/blobs/sha256:ABCDEF", 400),
        ("/v2/app/blobs/md5:abc", 400),
        ("/v2/app/manifests/-bad-tag", 404),
        ("/v2/app/referrers/x", 400),
    ];
    for (path, status) in cases {
        let (got, body) = raw_get(w.addr, path).await;
        assert_eq!(got, status, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["errors"][0]["code"].is_string(), "{path}: {v}");
    }
    assert_eq!(up.total(), 0, "no upstream request for invalid input");
    assert_eq!(stored_files(dir.path()).len(), before, "no file created");
    assert_eq!(status_of(w.url("/v2/")).await, 200);
}

#[tokio::test]
async fn upstream_is_chosen_by_ns_then_name_prefix_then_default() {
    let up = FakeRegistry::start().await;
    let other = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    up.put_image("team/app", "v1", &[bytes_of(10, 1)]);
    let (od, _) = other.put_image("library/alpine", "3", &[bytes_of(10, 2)]);
    let config = WharfConfig::new(dir.path())
        .upstream("fake.test", &up.url())
        .upstream("hub.test", &other.url())
        .upstream_keys("library_prefix = true");
    let w = Wharf::serve(config).await;
    // containerd: ?ns=, single-component names get library/ on a library_prefix upstream.
    let r = get(w.url("/v2/alpine/manifests/3?ns=hub.test")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["oci-namespace"], "hub.test");
    assert_eq!(r.headers()["docker-content-digest"], od.as_str());
    // podman/skopeo mirror: host as the first name component.
    let r = get(w.url("/v2/hub.test/library/alpine/manifests/3")).await;
    assert_eq!(r.status(), 200);
    // Docker registry-mirrors: bare name, default upstream.
    assert_eq!(status_of(w.url("/v2/team/app/manifests/v1")).await, 200);
    assert_eq!(other.count("GET", "/v2/team/app"), 0);
    // Unknown namespace: clear 404, nothing sent anywhere.
    let (a, b) = (up.total(), other.total());
    let r = get(w.url("/v2/team/app/manifests/v1?ns=evil.example")).await;
    assert_eq!(r.status(), 404);
    let text = read_text(r).await;
    assert!(
        text.contains("NAME_UNKNOWN") && text.contains("evil.example"),
        "{text}"
    );
    assert_eq!((up.total(), other.total()), (a, b));
}

#[tokio::test]
async fn oversized_manifest_is_refused_and_not_stored() {
    let (up, w, dir) = setup("").await;
    let big = format!(r#"{{"layers":[],"pad":"{}"}}"#, "x".repeat(4 << 20));
    up.put_manifest("app", Some("big"), big.as_bytes(), OCI_MANIFEST);
    let r = get(w.url("/v2/app/manifests/big")).await;
    assert_eq!(r.status(), 502);
    assert!(read_text(r).await.contains("limit"));
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn manifest_whose_media_type_contradicts_its_content_type_is_refused() {
    let (up, w, dir) = setup("").await;
    let doc = r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let d = up.put_manifest("app", Some("v1"), doc.as_bytes(), OCI_MANIFEST);
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 502);
    assert_eq!(
        status_of(w.url(&format!("/v2/app/manifests/{d}"))).await,
        502
    );
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn manifest_whose_bytes_do_not_match_the_requested_digest_is_refused() {
    let (up, w, dir) = setup("").await;
    let real = br#"{"layers":[]}"#;
    let fake_digest = sha256(b"something else");
    up.state.manifests.lock().unwrap().insert(
        ("app".into(), fake_digest.clone()),
        (real.to_vec(), OCI_MANIFEST.into()),
    );
    let r = get(w.url(&format!("/v2/app/manifests/{fake_digest}"))).await;
    assert_eq!(r.status(), 502);
    assert!(read_text(r).await.contains("does not match"));
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

/// The background loop's first round (eviction measures the whole store on the blocking pool)
/// is under way when the server stops: the next server of this process must still open the
/// store (it found the index locked while an aborted round still walked the store).
#[tokio::test]
async fn a_server_stopped_during_its_first_background_round_releases_the_store() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    Wharf::start(&up.url(), dir.path(), "").await.stop().await;
    // Enough objects that measuring them takes a while.
    let blobs = dir.path().join("blobs").join("sha256");
    for i in 0..6000u32 {
        let hex = format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
        std::fs::write(blobs.join(&hex[..2]).join(&hex), b"x").unwrap();
    }
    for _ in 0..3 {
        Wharf::start(&up.url(), dir.path(), "").await.stop().await;
    }
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    assert_eq!(status_of(w.url("/v2/")).await, StatusCode::OK);
}

#[tokio::test]
async fn the_cache_survives_a_restart() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = bytes_of(100_000, 4);
    let bd = up.put_blob(&data);
    let (md, body) = up.put_image("app", "v1", std::slice::from_ref(&data));
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    get(w.url("/v2/app/manifests/v1")).await;
    get(w.url(&format!("/v2/app/blobs/{bd}")))
        .await
        .body()
        .await;
    w.stop().await;
    up.fail_with(Some(503));
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    let r = get(w.url(&format!("/v2/app/manifests/{md}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, body);
    assert_eq!(
        status_of(w.url("/v2/app/manifests/v1")).await,
        StatusCode::OK
    );
    let r = get(w.url(&format!("/v2/app/blobs/{bd}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, data);
}

#[tokio::test]
async fn content_from_a_private_upstream_is_not_served_to_another_repository_unconfirmed() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = bytes_of(20_000, 8);
    let d = up.put_blob(&data);
    let w = with_credentials(&up, dir.path()).await;
    let c = client();
    let get = |repo: &str| c.get(w.url(&format!("/v2/{repo}/blobs/{d}"))).send();
    assert_eq!(get("team/a").await.unwrap().bytes().await.unwrap(), data);
    // team/b does not hold it upstream: the cached copy must not leak to it.
    up.state.hidden_repos.lock().unwrap().push("team/b".into());
    let r = get("team/b").await.unwrap();
    assert_eq!(r.status(), 404);
    // team/c holds it: confirmed with a HEAD, then served from the cache.
    let heads = up.count("HEAD", "/v2/team/c/blobs/");
    let r = get("team/c").await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, data);
    assert_eq!(up.count("HEAD", "/v2/team/c/blobs/"), heads + 1);
    assert_eq!(up.count("GET", "/blobs/"), 1, "bytes were fetched once");
    // Confirmed once is enough.
    get("team/c").await.unwrap().bytes().await.unwrap();
    assert_eq!(up.count("HEAD", "/v2/team/c/blobs/"), heads + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_flight_for_one_repository_is_not_joined_by_another_unconfirmed() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = bytes_of(1 << 20, 12);
    let d = up.put_blob(&data);
    // 16 chunks, 50 ms apart: the fill for team/a is still running when team/b asks.
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(50)));
    let w = with_credentials(&up, dir.path()).await;
    up.state.hidden_repos.lock().unwrap().push("team/b".into());
    let a = get(w.url(&format!("/v2/team/a/blobs/{d}"))).await;
    assert_eq!(a.status(), 200);
    let b = get(w.url(&format!("/v2/team/b/blobs/{d}"))).await;
    assert_eq!(b.status(), 404, "joined another repository's fill");
    assert_eq!(up.count("HEAD", "/v2/team/b/blobs/"), 1);
    assert_eq!(read_body(a).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_or_many_workers_serve_the_same_answers() {
    let up = FakeRegistry::start().await;
    let layer = bytes_of(300_000, 21);
    let ld = sha256(&layer);
    let (d, _) = up.put_image("app", "v1", &[layer]);
    for workers in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let server = format!("[server]\nworkers = {workers}\n");
        let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(&server)).await;
        let c = client();
        // More connections than workers, all at once.
        let gets = (0..16).map(|i| {
            let c = c.clone();
            let url = if i % 2 == 0 {
                w.url("/v2/app/manifests/v1")
            } else {
                w.url(&format!("/v2/app/blobs/{ld}"))
            };
            async move { c.get(url).sent().await.body().await }
        });
        let bodies = futures_util::future::join_all(gets).await;
        for (i, b) in bodies.iter().enumerate() {
            let want = if i % 2 == 0 { &d } else { &ld };
            assert_eq!(&sha256(b), want, "workers = {workers}, request {i}");
        }
    }
}

/// A config whose upstream wharf logs in to (so content is private per repository).
async fn with_credentials(up: &FakeRegistry, dir: &std::path::Path) -> Wharf {
    Wharf::serve(WharfConfig::fake(&up.url(), dir).login(&dir.join("pw"), "secret")).await
}

// ---------------------------------------------------------------- negotiation

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A Docker manifest list of an amd64 and an arm64 Docker schema 2 manifest, plus an OCI
/// manifest on its own; returns (list digest, amd64 digest, arm64 digest, oci digest).
fn negotiation_fixture(up: &FakeRegistry) -> (String, String, String, String) {
    let image = |arch: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
            sha256(arch.as_bytes())
        )
    };
    let (amd, arm) = (image("amd64"), image("arm64"));
    let amd_d = up.put_manifest("app", None, amd.as_bytes(), DOCKER_MANIFEST);
    let arm_d = up.put_manifest("app", None, arm.as_bytes(), DOCKER_MANIFEST);
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
          {{"mediaType":"{DOCKER_MANIFEST}","digest":"{arm_d}","size":{},"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
          {{"mediaType":"{DOCKER_MANIFEST}","digest":"{amd_d}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        arm.len(),
        amd.len()
    );
    let list_d = up.put_manifest("app", Some("multi"), list.as_bytes(), DOCKER_LIST);
    let oci = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let oci_d = up.put_manifest("app", Some("oci"), oci.as_bytes(), OCI_MANIFEST);
    (list_d, amd_d, arm_d, oci_d)
}

/// GET and HEAD of `path` with `accept` (None: no header); both must agree on every header.
async fn negotiated(w: &Wharf, path: &str, accept: Option<&str>) -> Answer {
    let got = w.get(path, accept).await;
    let mut head = client().head(w.url(path));
    if let Some(a) = accept {
        head = head.header("accept", a);
    }
    let head = head.sent().await;
    assert_eq!(head.status().as_u16(), got.status, "HEAD and GET of {path}");
    for name in ["content-type", "docker-content-digest", "content-length"] {
        assert_eq!(
            head.headers().get(name),
            got.headers.get(name),
            "{name} of HEAD and GET of {path} with {accept:?}"
        );
    }
    got
}

#[tokio::test]
async fn a_client_that_reads_no_index_gets_the_default_platforms_manifest() {
    let (up, w, _dir) = setup("").await;
    let (list_d, amd_d, _arm_d, _) = negotiation_fixture(&up);
    // Everything accepted, or nothing said: the list as stored.
    for accept in [Some(MANIFEST_ACCEPT), None, Some("*/*")] {
        let a = negotiated(&w, "/v2/app/manifests/multi", accept).await;
        assert_eq!(a.status, 200, "{}", a.describe());
        assert_eq!(a.header("content-type"), Some(DOCKER_LIST));
        assert_eq!(a.header("docker-content-digest"), Some(list_d.as_str()));
    }
    // Schema 2 only: the linux/amd64 manifest, with its own type and digest, by tag and by digest.
    for path in [
        "/v2/app/manifests/multi".to_string(),
        format!("/v2/app/manifests/{list_d}"),
    ] {
        let a = negotiated(&w, &path, Some(&format!("{DOCKER_MANIFEST}; q=0.5"))).await;
        assert_eq!(a.status, 200, "{}", a.describe());
        assert_eq!(a.header("content-type"), Some(DOCKER_MANIFEST));
        assert_eq!(a.header("docker-content-digest"), Some(amd_d.as_str()));
        assert_eq!(sha256(&a.body), amd_d, "the body is the manifest named");
    }
}

#[tokio::test]
async fn the_default_platform_is_configurable() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path()).registry("default_platform = \"linux/arm64/v8\""),
    )
    .await;
    let (_, _, arm_d, _) = negotiation_fixture(&up);
    let a = negotiated(&w, "/v2/app/manifests/multi", Some(DOCKER_MANIFEST)).await;
    assert_eq!(a.header("docker-content-digest"), Some(arm_d.as_str()));
}

#[tokio::test]
async fn a_client_that_reads_none_of_the_types_gets_manifest_unknown_naming_them() {
    let (up, w, _dir) = setup("").await;
    let (_, _, _, _) = negotiation_fixture(&up);
    // An OCI manifest to a Docker-only client.
    let a = negotiated(&w, "/v2/app/manifests/oci", Some(DOCKER_MANIFEST)).await;
    assert_eq!(a.status, 404, "{}", a.describe());
    let text = String::from_utf8_lossy(&a.body);
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
    assert!(
        text.contains(OCI_MANIFEST) && text.contains(DOCKER_MANIFEST),
        "the message names the stored type and the accepted ones: {text}"
    );
    // A Docker list to a client that takes only OCI types: its amd64 entry is Docker schema 2.
    let a = negotiated(
        &w,
        "/v2/app/manifests/multi",
        Some(&format!("{OCI_INDEX}, {OCI_MANIFEST}")),
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.describe());
    assert!(String::from_utf8_lossy(&a.body).contains("linux/amd64"));
}

#[tokio::test]
async fn an_unparsable_default_platform_is_refused_by_the_config() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["amd64", "linux/", "linux/amd64/v8/x", "linux/amd 64"] {
        let toml = WharfConfig::fake("http://127.0.0.1:9", dir.path())
            .registry(&format!("default_platform = \"{bad}\""))
            .toml();
        let err = wharf::config::Config::from_toml_str(&toml)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(err.to_string().contains("default_platform"), "{err}");
    }
}

// ---------------------------------------------------------------- path-prefixed mirrors

#[tokio::test]
async fn a_path_prefixed_mirror_request_goes_to_the_upstream_it_names() {
    let a = FakeRegistry::start().await;
    let b = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&a.url(), dir.path()).upstream("other.test", &b.url()))
        .await;
    let layer = bytes_of(50_000, 21);
    let (digest, _) = b.put_image("team/app", "v1", std::slice::from_ref(&layer));
    let layer_d = sha256(&layer);

    assert_eq!(status_of(w.url("/other.test/v2/")).await, 200);
    assert_eq!(status_of(w.url("/other.test/v2")).await, 200);
    let m = w
        .get(
            "/other.test/v2/team/app/manifests/v1",
            Some(MANIFEST_ACCEPT),
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.describe());
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    let blob = w
        .get(&format!("/other.test/v2/team/app/blobs/{layer_d}"), None)
        .await;
    assert!(blob.status == 200 && blob.body == layer);
    // The same repository by its ?ns= spelling is the same cached content.
    let again = w
        .get(&format!("/v2/team/app/blobs/{layer_d}?ns=other.test"), None)
        .await;
    assert_eq!(again.cache(), "HIT");
    assert_eq!(
        a.total(),
        0,
        "the default upstream was asked: {:?}",
        a.seen()
    );

    // A prefix that names no upstream, or contradicts ?ns=, is refused in the registry format.
    for path in [
        "/nowhere.test/v2/team/app/manifests/v1",
        "/other.test/v2/team/app/manifests/v1?ns=fake.test",
    ] {
        let r = w.get(path, Some(MANIFEST_ACCEPT)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.describe());
        assert!(String::from_utf8_lossy(&r.body).contains("NAME_UNKNOWN"));
    }
    assert_eq!(a.total(), 0);
}

#[tokio::test]
async fn a_tag_list_is_kept_for_the_tag_ttl_and_paginated_from_it() {
    let (up, w, _d) = setup("").await;
    for t in ["b", "a", "c"] {
        up.put_image("app", t, &[bytes_of(5, 1)]);
    }
    let first = w.get("/v2/app/tags/list", None).await;
    assert_eq!(first.cache(), "MISS");
    let again = w.get("/v2/app/tags/list", None).await;
    assert_eq!(again.cache(), "HIT");
    assert_eq!(again.body, first.body);
    let page = w.get("/v2/app/tags/list?n=1&last=a", None).await;
    assert_eq!(page.cache(), "HIT");
    let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["b"]));
    assert!(page.header("link").is_some_and(|l| l.contains("last=b")));
    assert_eq!(up.count("GET", "/tags/list"), 1, "{:?}", up.seen());
}

#[tokio::test]
async fn a_low_pull_quota_is_exported_and_stretches_the_tag_ttl() {
    let (up, w, _d) = setup("tag_ttl = \"1s\"").await;
    up.put_image("app", "v1", &[bytes_of(5, 1)]);
    *up.state.rate_limit.lock().unwrap() = Some((100, 60));
    assert_eq!(
        w.get("/v2/app/manifests/v1", Some(MANIFEST_ACCEPT))
            .await
            .status,
        200
    );
    let metrics = String::from_utf8(w.get("/metrics", None).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("wharf_upstream_ratelimit_limit{upstream=\"fake.test\"} 100")
            && metrics.contains("wharf_upstream_ratelimit_remaining{upstream=\"fake.test\"} 60"),
        "{metrics}"
    );
    // Plenty left: after the TTL the tag is asked again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let heads = up.count("HEAD", "/manifests/v1");
    assert_eq!(
        w.get("/v2/app/manifests/v1", Some(MANIFEST_ACCEPT))
            .await
            .status,
        200
    );
    assert_eq!(up.count("HEAD", "/manifests/v1"), heads + 1);
    // 2 of 100 left (under the 20% headroom): the tag is trusted for about 9x the TTL.
    *up.state.rate_limit.lock().unwrap() = Some((100, 2));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        w.get("/v2/app/manifests/v1", Some(MANIFEST_ACCEPT))
            .await
            .status,
        200
    );
    let heads = up.count("HEAD", "/manifests/v1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let a = w.get("/v2/app/manifests/v1", Some(MANIFEST_ACCEPT)).await;
    assert_eq!(a.cache(), "HIT");
    assert_eq!(
        up.count("HEAD", "/manifests/v1"),
        heads,
        "revalidated despite the low quota"
    );
}

// ---------------------------------------------------------------- saturation

/// wharf allowing one fill at a time, queueing the next for `queue`; two blobs upstream whose
/// bodies take about a second each.
async fn one_fill_at_a_time(queue: &str) -> (FakeRegistry, Wharf, tempfile::TempDir, [String; 2]) {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(&format!(
        "[server]\nmax_concurrent_fills = 1\nfill_queue_timeout = \"{queue}\"\n"
    )))
    .await;
    let a = up.put_blob(&bytes_of(640 << 10, 31));
    let b = up.put_blob(&bytes_of(640 << 10, 32));
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(100)));
    (up, w, dir, [a, b])
}

async fn queue_metric(w: &Wharf, name: &str) -> u64 {
    let text = String::from_utf8(w.get("/metrics", None).await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .parse()
        .unwrap()
}

/// GETs blob `a`, and 200 ms later (while `a` still fills) blob `b`; both answers.
async fn two_fills(w: &Wharf, a: &str, b: &str) -> (Answer, Answer) {
    let path_a = format!("/v2/app/blobs/{a}");
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.get(&format!("/v2/app/blobs/{b}"), None).await
    };
    tokio::join!(w.get(&path_a, None), second)
}

#[tokio::test]
async fn a_fill_over_the_limit_waits_for_a_permit_instead_of_failing() {
    let (_up, w, _d, [a, b]) = one_fill_at_a_time("10s").await;
    let (first, second) = two_fills(&w, &a, &b).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200, "{}", second.describe());
    assert_eq!(sha256(&second.body), b);
    assert_eq!(queue_metric(&w, "wharf_fill_queued_total").await, 1);
    assert_eq!(queue_metric(&w, "wharf_fill_queue_timeouts_total").await, 0);
    assert_eq!(queue_metric(&w, "wharf_fill_queue_waiting").await, 0);
}

#[tokio::test]
async fn a_fill_that_waits_too_long_gets_503_with_retry_after() {
    let (_up, w, _d, [a, b]) = one_fill_at_a_time("200ms").await;
    let (first, second) = two_fills(&w, &a, &b).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 503, "{}", second.describe());
    assert!(second.header("retry-after").is_some());
    assert_eq!(queue_metric(&w, "wharf_fill_queue_timeouts_total").await, 1);
}

// ---------------------------------------------------------------- lazy pulling: cold ranges

/// A slow 8 MiB blob (about 0.6 s to fill) and a GET of its last 4 KiB while it is cold.
async fn cold_tail(
    registry_keys: &str,
    answer: RangeAnswer,
    mode: BlobMode,
) -> (
    FakeRegistry,
    Wharf,
    tempfile::TempDir,
    String,
    Vec<u8>,
    reqwest::Response,
) {
    let (up, w, dir) = setup(registry_keys).await;
    let data = bytes_of(8 << 20, 21);
    let d = up.put_blob(&data);
    up.set_blob_mode(mode);
    *up.state.range_answer.lock().unwrap() = answer;
    let r = client()
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .header("range", format!("bytes={}-", (8 << 20) - 4096))
        .sent()
        .await;
    (up, w, dir, d, data, r)
}

async fn wait_until_cached(w: &Wharf, d: &str) -> reqwest::Response {
    for _ in 0..200 {
        let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
        if r.headers()["x-cache"] == "HIT" {
            return r;
        }
        drop(r);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fill never completed");
}

/// A 206 of the tail, marked unverified as `unverified` says (`None`: not marked).
fn assert_tail(r: &reqwest::Response, unverified: Option<&str>) {
    assert_eq!(r.status(), 206);
    let size = 8u64 << 20;
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {}-{}/{size}", size - 4096, size - 1).as_str()
    );
    assert_eq!(r.headers()["content-length"], "4096");
    let marked = r
        .headers()
        .get("x-wharf-unverified")
        .map(|v| v.to_str().unwrap());
    assert_eq!(marked, unverified, "{:?}", r.headers());
}

#[tokio::test]
async fn a_range_the_fill_has_not_reached_is_forwarded_upstream_while_the_one_fill_continues() {
    let slow = BlobMode::Slow(Duration::from_millis(5));
    let (up, w, dir, d, data, r) = cold_tail("", RangeAnswer::Exact, slow).await;
    assert_tail(&r, Some("upstream-range"));
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(read_body(r).await, data[(8 << 20) - 4096..]);
    assert_eq!(up.state.range_requests.load(Ordering::SeqCst), 1);

    // The full fill went on: the blob is stored whole and verified, fetched once in full.
    let r = wait_until_cached(&w, &d).await;
    assert_eq!(read_body(r).await, data);
    // A HIT may be served from the verified fill just before the commit renames it in place.
    let path = dir.path().join("blobs/sha256").join(&d[7..9]).join(&d[7..]);
    for _ in 0..100 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(up.count("GET", "/blobs/"), 2, "one full GET and one range");

    // Cached now: ranges come from the file, verified.
    let r = client()
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .header("range", format!("bytes={}-", (8 << 20) - 4096))
        .sent()
        .await;
    assert_tail(&r, None);
    assert_eq!(up.state.range_requests.load(Ordering::SeqCst), 1);
    let m = read_text(get(w.url("/metrics")).await).await;
    assert!(
        m.contains("wharf_registry_cold_ranges_total{via=\"upstream\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn cold_ranges_wait_answers_only_verified_bytes_from_the_fill() {
    let slow = BlobMode::Slow(Duration::from_millis(2));
    let keys = "cold_ranges = \"wait\"";
    let (up, _w, _dir, _d, data, r) = cold_tail(keys, RangeAnswer::Exact, slow).await;
    assert_tail(&r, None);
    assert_eq!(read_body(r).await, data[(8 << 20) - 4096..]);
    assert_eq!(up.state.range_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_upstream_that_answers_a_range_otherwise_leaves_it_to_the_fill() {
    let slow = BlobMode::Slow(Duration::from_millis(2));
    for answer in [RangeAnswer::Ignore, RangeAnswer::WrongTotal] {
        let (up, _w, _dir, _d, data, r) = cold_tail("", answer, slow.clone()).await;
        // From the fill, without waiting for the whole blob's digest.
        assert_tail(&r, Some("fill-range"));
        assert_eq!(read_body(r).await, data[(8 << 20) - 4096..], "{answer:?}");
        assert_eq!(up.state.range_requests.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_range_the_fill_is_about_to_reach_is_not_forwarded() {
    let (up, w, _d) = setup("").await;
    let data = bytes_of(8 << 20, 22);
    let d = up.put_blob(&data);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(5)));
    *up.state.range_answer.lock().unwrap() = RangeAnswer::Exact;
    let r = client()
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .header("range", "bytes=100-199")
        .sent()
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-wharf-unverified"], "fill-range");
    assert_eq!(read_body(r).await, data[100..200]);
    assert_eq!(up.state.range_requests.load(Ordering::SeqCst), 0);
    // It did not wait for the whole blob: the fill is still running.
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(
        r.headers()["x-cache"],
        "MISS",
        "joined the fill still in flight"
    );
}

#[tokio::test]
async fn a_forwarded_range_never_makes_a_corrupt_blob_stored() {
    let (up, w, _dir, d, _data, r) = cold_tail("", RangeAnswer::Exact, BlobMode::Corrupt).await;
    // The fill of a corrupt 8 MiB blob may already have failed; either way nothing is stored.
    drop(r);
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.set_blob_mode(BlobMode::Normal);
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(
        r.headers()["x-cache"],
        "MISS",
        "not stored from the range or the corrupt fill"
    );
}

// ---------------------------------------------------------------- OCI referrers

fn index_of(entries: &[String]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

async fn referrers_of(
    w: &Wharf,
    subject: &str,
    query: &str,
) -> (reqwest::Response, serde_json::Value) {
    let r = get(w.url(&format!("/v2/app/referrers/{subject}{query}"))).await;
    let headers = r.headers().clone();
    let status = r.status();
    let body = read_body(r).await;
    let mut rebuilt = http::Response::builder().status(status);
    for (k, v) in &headers {
        rebuilt = rebuilt.header(k, v);
    }
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (reqwest::Response::from(rebuilt.body(body).unwrap()), json)
}

fn digests(list: &serde_json::Value) -> Vec<String> {
    list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn referrers_come_from_the_upstream_api_filtered_cached_and_stale_on_failure() {
    let (up, w, _d) = setup("tag_ttl = \"0s\"").await;
    let (subject, _) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let sig = up.put_referrer(
        "app",
        &subject,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
    );
    let sbom = up.put_referrer("app", &subject, "application/spdx+json");
    let list = index_of(&[sig.clone(), sbom.clone()]);
    let lists = HashMap::from([(("app".to_string(), subject.clone()), list)]);
    *up.state.referrers.lock().unwrap() = Some(lists);
    // Lists are kept for manifests this cache holds.
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);

    let (r, all) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert!(r.headers().get("oci-filters-applied").is_none());
    assert_eq!(all["schemaVersion"], 2);
    assert_eq!(all["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        all["manifests"][0]["artifactType"],
        "application/vnd.dev.cosign.artifact.sig.v1+json"
    );

    let (r, some) = referrers_of(&w, &subject, "?artifactType=application/spdx%2Bjson").await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    assert_eq!(digests(&some).len(), 1);
    assert_eq!(
        some["manifests"][0]["artifactType"],
        "application/spdx+json"
    );

    // Each referrer is a manifest like any other: fetched, verified, cached.
    for d in digests(&all) {
        let r = get(w.url(&format!("/v2/app/manifests/{d}"))).await;
        assert_eq!(r.status(), 200, "{d}");
        assert_eq!(sha256(&read_body(r).await), d);
    }

    // The upstream fails: the last list answers, marked stale.
    up.fail_with(Some(503));
    let (r, stale) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(digests(&stale), digests(&all));
}

#[tokio::test]
async fn referrers_are_kept_for_the_tag_ttl_only_for_cached_manifests() {
    let (up, w, _d) = setup("").await;
    let (subject, _) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    *up.state.referrers.lock().unwrap() = Some(HashMap::new());
    // Not a manifest this cache holds: answered, never kept (arbitrary digests fill nothing).
    let (r, list) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(digests(&list), Vec::<String>::new());
    let (r, _) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(up.count("GET", "/referrers/"), 2);
    // Cached: kept for the tag TTL.
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    let (r, _) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    let (r, _) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(up.count("GET", "/referrers/"), 3);
}

#[tokio::test]
async fn without_the_api_referrers_come_from_the_fallback_tag_or_are_empty() {
    let (up, w, _d) = setup("").await;
    let (subject, _) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let (other, _) = up.put_image("app", "v2", &[bytes_of(10, 2)]);
    let sig = up.put_referrer(
        "app",
        &subject,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
    );
    let tag = format!("sha256-{}", &subject[7..]);
    up.put_manifest(
        "app",
        Some(&tag),
        &index_of(std::slice::from_ref(&sig)),
        "application/vnd.oci.image.index.v1+json",
    );
    assert!(up.state.referrers.lock().unwrap().is_none(), "no API");

    let (r, list) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(list["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["manifests"][0]["artifactType"],
        "application/vnd.dev.cosign.artifact.sig.v1+json"
    );
    // The fallback tag is an ordinary cached tag now: served when the upstream is gone.
    drop(up);
    let (r, again) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(digests(&again), digests(&list));

    // No fallback tag either: an empty list, never a 404.
    let (up, w, _d) = setup("").await;
    up.put_image("app", "v2", &[bytes_of(10, 2)]);
    let (r, none) = referrers_of(&w, &other, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(digests(&none), Vec::<String>::new());
}

#[tokio::test]
async fn a_referrers_list_that_is_not_an_index_of_descriptors_is_refused_and_not_kept() {
    let (up, w, _d) = setup("").await;
    let (subject, _) = up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let bad = br#"{"manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]}"#.to_vec();
    let lists = HashMap::from([(("app".to_string(), subject.clone()), bad)]);
    *up.state.referrers.lock().unwrap() = Some(lists);
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    let (r, _) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 502);
    // Fixed upstream: asked again, since nothing was kept.
    *up.state.referrers.lock().unwrap() = Some(HashMap::new());
    let (r, list) = referrers_of(&w, &subject, "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(digests(&list), Vec::<String>::new());
    let r = get(w.url("/v2/app/referrers/sha256:nothex")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}
