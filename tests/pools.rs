//! Upstream pools: one upstream, several endpoints serving the same content. Requests spread
//! by weight, failing endpoints are skipped and come back, a fill cut on one endpoint
//! continues on another with a `Range`, and a pool that is all down serves stale like a lone
//! upstream. Fake upstreams on port 0; nothing here measures time.

mod support;
use support::*;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;

/// Blob GETs an upstream saw.
fn blob_gets(up: &FakeRegistry) -> usize {
    up.count("GET", "/blobs/")
}

/// A wharf whose default upstream `pool.test` is a pool over `urls` (the TOML array's content),
/// with short ejections and probes.
async fn pool_wharf(urls: &str, dir: &std::path::Path, registry: &str) -> Wharf {
    Wharf::serve(
        WharfConfig::new(dir)
            .upstream_pool("pool.test", urls)
            .registry(registry)
            .timeouts()
            .egress(
                "ejection_time = \"300ms\"\nmax_ejection_time = \"1s\"\nprobe_interval = \"100ms\"",
            ),
    )
    .await
}

fn q(url: &str) -> String {
    format!("\"{url}\"")
}

/// The same `n` blobs on every fake; their digests.
fn same_blobs(fakes: &[&FakeRegistry], n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let body = bytes_of(4096 + i, seed + i as u64);
            let mut digest = String::new();
            for f in fakes {
                digest = f.put_blob(&body);
            }
            (digest, body)
        })
        .collect()
}

async fn fetch_blob(w: &Wharf, digest: &str, body: &[u8]) {
    let r = get(w.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    expect_status(&r, 200, digest);
    assert_eq!(read_body(r).await, body, "{digest}");
}

#[tokio::test]
async fn requests_spread_over_the_endpoints_by_weight() {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let urls = format!("{}, {{ url = {}, weight = 3 }}", q(&a.url()), q(&b.url()));
    let w = pool_wharf(&urls, dir.path(), "").await;

    // One at a time: the shares follow the weights (1 : 3).
    for (digest, body) in same_blobs(&[&a, &b], 40, 1) {
        fetch_blob(&w, &digest, &body).await;
    }
    let (na, nb) = (blob_gets(&a), blob_gets(&b));
    assert_eq!(na + nb, 40, "one upstream GET per blob");
    assert!(
        (5..=15).contains(&na) && (25..=35).contains(&nb),
        "a {na}, b {nb}"
    );

    // Under load (all at once): both endpoints serve, the heavier one more.
    let blobs = same_blobs(&[&a, &b], 60, 1000);
    let w = Arc::new(w);
    let tasks: Vec<_> = blobs
        .into_iter()
        .map(|(digest, body)| {
            let w = w.clone();
            tokio::spawn(async move { fetch_blob(&w, &digest, &body).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (la, lb) = (blob_gets(&a) - na, blob_gets(&b) - nb);
    assert_eq!(la + lb, 60);
    assert!(la > 0 && lb > la, "under load: a {la}, b {lb}");

    // Each endpoint is in /metrics and /healthz by its host, under its upstream.
    let metrics = read_text(get(w.url("/metrics")).await).await;
    for f in [&a, &b] {
        let line = format!(
            "wharf_upstream_endpoint_requests_total{{kind=\"registry\",upstream=\"pool.test\",endpoint=\"{}\"}}",
            f.addr
        );
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
    let (_, up) = health_of(&w.url(""), "pool.test").await;
    let eps = up["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{up}");
    assert_eq!(eps[1]["weight"], 3, "{up}");
}

#[tokio::test]
async fn an_endpoint_answering_503_is_skipped_then_used_again_after_its_backoff() {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let w = pool_wharf(&format!("{}, {}", q(&a.url()), q(&b.url())), dir.path(), "").await;
    b.fail_with(Some(503));
    let blobs = same_blobs(&[&a, &b], 12, 7);
    for (digest, body) in &blobs {
        fetch_blob(&w, digest, body).await;
    }
    assert_eq!(
        blob_gets(&a),
        12,
        "every blob came from the healthy endpoint"
    );
    let tried = blob_gets(&b);
    assert!(
        (1..12).contains(&tried),
        "the failing endpoint was tried, then skipped: {tried}"
    );
    let (_, up) = health_of(&w.url(""), "pool.test").await;
    assert!(
        up["endpoints"][1]["ejections"].as_u64().unwrap() >= 1,
        "{up}"
    );
    assert_eq!(up["up"], true, "{up}");

    // Healthy again: once its backoff ends, it gets requests again.
    b.fail_with(None);
    let served_before = b.count("GET", "/blobs/") - tried;
    assert_eq!(served_before, 0);
    let more = same_blobs(&[&a, &b], 200, 99);
    let mut back = false;
    for (digest, body) in &more {
        fetch_blob(&w, digest, body).await;
        if blob_gets(&b) > tried {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the endpoint never got a request after its backoff");
}

#[tokio::test]
async fn an_endpoint_refusing_connections_is_skipped_then_probed_back() {
    let a = FakeRegistry::start().await;
    // A port with nothing listening (for now).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let w = pool_wharf(&format!("{}, {}", q(&a.url()), q(&dead)), dir.path(), "").await;
    for (digest, body) in same_blobs(&[&a], 10, 3) {
        fetch_blob(&w, &digest, &body).await;
    }
    assert_eq!(blob_gets(&a), 10);
    let (health, up) = health_of(&w.url(""), "pool.test").await;
    let ep = &up["endpoints"][1];
    assert_eq!(ep["endpoint"], format!("127.0.0.1:{port}"), "{up}");
    assert!(ep["ejections"].as_u64().unwrap() >= 1, "{up}");
    assert!(
        ep["last_error"].as_str().unwrap().contains("connect"),
        "{up}"
    );
    assert_eq!(
        up["up"], true,
        "one endpoint answering keeps the upstream up: {up}"
    );
    let _ = health;

    // It starts answering: the probe (or the end of its backoff) brings it back.
    let b = FakeRegistry::start_on(&format!("127.0.0.1:{port}")).await;
    let more = same_blobs(&[&a, &b], 200, 300);
    let mut back = false;
    for (digest, body) in &more {
        fetch_blob(&w, digest, body).await;
        if blob_gets(&b) > 0 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the endpoint never came back");
}

#[tokio::test]
async fn a_fill_cut_on_one_endpoint_continues_on_another_from_the_right_byte() {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    // `a` is chosen first (weight), sends half the blob and ends the body.
    let urls = format!("{{ url = {}, weight = 100 }}, {}", q(&a.url()), q(&b.url()));
    let w = pool_wharf(&urls, dir.path(), "").await;
    let body = bytes_of(1 << 20, 42);
    let digest = a.put_blob(&body);
    b.put_blob(&body);
    let cut = 512 * 1024;
    a.set_blob_mode(BlobMode::Truncate(cut));
    let starts: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = starts.clone();
    *b.state.range_hook.lock().unwrap() = Some(Arc::new(move |blob: Vec<u8>, start: usize| {
        seen.lock().unwrap().push(start);
        Box::pin(async move {
            let total = blob.len();
            let range = format!("bytes {start}-{}/{total}", total - 1);
            (
                http::StatusCode::PARTIAL_CONTENT,
                [(http::header::CONTENT_RANGE, range)],
                blob[start.min(total)..].to_vec(),
            )
                .into_response()
        })
    }));

    let r = get(w.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    expect_status(&r, 200, "the client's pull");
    let got = read_body(r).await;
    assert_eq!(sha256(&got), digest, "complete and verified");
    assert_eq!(got, body);
    assert_eq!(blob_gets(&a), 1, "the cut endpoint was asked once");
    assert_eq!(
        *starts.lock().unwrap(),
        vec![cut],
        "one Range from the byte where it stopped"
    );
    assert_eq!(
        b.count("GET", "/blobs/"),
        1,
        "no whole refetch on the second endpoint"
    );
    // Stored: the next pull is a hit.
    let r = get(w.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, body);
}

#[tokio::test]
async fn a_pool_with_every_endpoint_down_serves_cached_tags_stale() {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let urls = format!("{}, {}", q(&a.url()), q(&b.url()));
    let w = pool_wharf(&urls, dir.path(), "tag_ttl = \"0s\"").await;
    let layers = [bytes_of(100, 5)];
    let (digest, manifest) = a.put_image("app", "v1", &layers);
    b.put_image("app", "v1", &layers);
    let r = get(w.url("/v2/app/manifests/v1")).await;
    expect_status(&r, 200, "first pull");

    // Both answering 503, then both gone: the cached tag is served, marked STALE.
    a.fail_with(Some(503));
    b.fail_with(Some(503));
    let r = get(w.url("/v2/app/manifests/v1")).await;
    expect_status(&r, 200, "both 503");
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(read_body(r).await, manifest);
    drop((a, b));
    for _ in 0..5 {
        let r = get(w.url("/v2/app/manifests/v1")).await;
        expect_status(&r, 200, "both gone");
        assert_eq!(r.headers()["x-cache"], "STALE");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    }
    let r = get(w.url("/v2/app/manifests/uncached")).await;
    assert!(r.status().is_server_error(), "{}", r.status());
}

#[tokio::test]
async fn a_go_source_with_two_endpoints_spreads_and_fails_over() {
    let (a, b) = (GoFake::start().await, GoFake::start().await);
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(
        WharfConfig::go_only(&a.url(), dir.path())
            .go_keys(&format!("upstreams = [[{}, {}]]", q(&a.url()), q(&b.url())))
            .egress("ejection_time = \"300ms\"\nmax_ejection_time = \"1s\""),
    )
    .await;
    let versions: Vec<String> = (0..8).map(|i| format!("v1.0.{i}")).collect();
    for up in [&a, &b] {
        for v in &versions {
            let zip = module_zip("example.com/m", v, &[("go.mod", "module example.com/m\n")]);
            up.put_module("example.com/m", v, "module example.com/m\n", zip);
        }
    }
    for v in &versions[..4] {
        let r = get(w.url(&format!("/go/example.com/m/@v/{v}.mod"))).await;
        expect_status(&r, 200, v);
    }
    assert!(
        a.count(".mod") > 0 && b.count(".mod") > 0,
        "both endpoints served"
    );

    // One endpoint failing: every file still comes, from the other.
    a.fail_with(Some(503));
    for v in &versions[4..] {
        for ext in ["info", "mod", "zip"] {
            let r = get(w.url(&format!("/go/example.com/m/@v/{v}.{ext}"))).await;
            expect_status(&r, 200, &format!("{v}.{ext}"));
        }
    }
    let (_, up) = health_of(&w.url(""), &format!("{}|{}", a.url(), b.url())).await;
    assert_eq!(up["kind"], "go", "{up}");
    assert!(
        up["endpoints"][0]["ejections"].as_u64().unwrap() >= 1,
        "{up}"
    );
}

#[tokio::test]
async fn check_config_names_each_pool_endpoint_the_egress_policy_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let urls = "\"http://127.0.0.1:5001\", { url = \"https://mirror-b.example\", weight = 2 }";
    let path = WharfConfig::new(&dir.path().join("data"))
        .upstream_pool("pool.test", urls)
        .write(&dir.path().join("wharf.toml"));
    let out = run_wharf(&["check-config", "--config", path.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, "endpoint https://mirror-b.example weight 2");
    expect_stdout(&out, "endpoint https://mirror-b.example REFUSED by egress");
    expect_stderr(
        &out,
        "pool.test endpoint https://mirror-b.example is refused",
    );
    assert!(
        !stdout(&out).contains("endpoint http://127.0.0.1:5001 REFUSED"),
        "{}",
        describe(&out)
    );
}
