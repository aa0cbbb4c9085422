//! Offline mode and fail-fast upstreams: answers come from the cache, misses are clear 404s, and
//! no connection is attempted (offline) or only a bounded number (upstream down).

mod support;
use support::*;

use std::sync::atomic::Ordering;
use std::time::Duration;

fn conns(f: &FakeRegistry) -> usize {
    f.state.connections.load(Ordering::SeqCst)
}

fn config(reg: &str, go: &str, dir: &std::path::Path, top: &str, egress: &str) -> WharfConfig {
    WharfConfig::fakes(reg, go, dir)
        .top(top)
        .registry("tag_ttl = \"0s\"")
        .go_keys("list_ttl = \"0s\"")
        .egress("connect_timeout = \"1s\"\nread_timeout = \"1s\"")
        .egress(egress)
}

#[tokio::test]
async fn offline_mode_serves_the_cache_and_never_connects() {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layer = bytes_of(100_000, 1);
    let bd = reg.put_blob(&layer);
    let (md, body) = reg.put_image("team/app", "v1", std::slice::from_ref(&layer));
    let zip = module_zip(
        "example.com/m",
        "v1.0.0",
        &[("go.mod", "module example.com/m\n")],
    );
    go.put_module(
        "example.com/m",
        "v1.0.0",
        "module example.com/m\n",
        zip.clone(),
    );
    // Warm the cache online.
    let w = Wharf::serve(config(&reg.url(), &go.url(), dir.path(), "", "")).await;
    assert_eq!(status_of(w.url("/v2/team/app/manifests/v1")).await, 200);
    get(w.url(&format!("/v2/team/app/blobs/{bd}")))
        .await
        .body()
        .await;
    for p in version_files("v1.0.0") {
        let r = get(w.url(&format!("/go/example.com/m/{p}"))).await;
        assert_eq!(r.status(), 200, "{p}");
        read_body(r).await;
    }
    w.stop().await;

    let (reg_before, go_seen) = (conns(&reg), go.seen().len());
    let w = Wharf::serve(config(
        &reg.url(),
        &go.url(),
        dir.path(),
        "offline = true",
        "",
    ))
    .await;
    let r = get(w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-cache"],
        "STALE",
        "an expired tag answered from the index"
    );
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    assert_eq!(read_body(r).await, body);
    let r = get(w.url(&format!("/v2/team/app/blobs/{bd}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, layer);
    let r = get(w.url("/go/example.com/m/@v/list")).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache"].to_str().unwrap()
        ),
        (200, "STALE")
    );
    let r = get(w.url("/go/example.com/m/@v/v1.0.0.zip")).await;
    assert_eq!(read_body(r).await, zip);
    // Misses: clear 404s that say why.
    let r = get(w.url("/v2/team/app/manifests/v2")).await;
    assert_eq!(r.status(), 404);
    assert!(read_text(r).await.contains("offline cache"));
    let r = get(w.url(&format!("/v2/team/app/blobs/{}", sha256(b"other")))).await;
    assert_eq!(r.status(), 404);
    assert!(read_text(r).await.contains("offline cache"));
    let r = get(w.url("/go/example.com/other/@v/v1.0.0.mod")).await;
    assert_eq!(r.status(), 404);
    assert!(read_text(r).await.contains("offline cache"));
    assert_eq!(status_of(w.url("/go/example.com/other/@v/list")).await, 404);
    let health: serde_json::Value = get(w.url("/healthz")).await.json().await.unwrap();
    assert_eq!(health["offline"], true);
    assert_eq!(
        conns(&reg),
        reg_before,
        "offline wharf connected to the registry"
    );
    assert_eq!(
        go.seen().len(),
        go_seen,
        "offline wharf asked the Go upstream"
    );
}

#[tokio::test]
async fn a_dead_upstream_is_marked_down_and_answered_from_cache_at_once() {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (md, _) = reg.put_image("app", "v1", &[bytes_of(10, 1)]);
    let egress = "failure_threshold = 3\nprobe_interval = \"1h\"";
    let w = Wharf::serve(config(&reg.url(), &go.url(), dir.path(), "", egress)).await;
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    // The upstream black-holes: every attempt costs a read timeout, until it is marked down.
    reg.state.hang.store(true, Ordering::SeqCst);
    let before = conns(&reg);
    for i in 0..20 {
        let r = get(w.url("/v2/app/manifests/v1")).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-cache"], "STALE");
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    }
    let attempts = conns(&reg) - before;
    assert!(
        attempts <= 3,
        "{attempts} connection attempts for 20 requests"
    );
    let (health, up) = health_of(&w.url(""), "fake.test").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(up["up"], false);
    let metrics = get(w.url("/metrics")).await.body_text().await;
    assert!(
        metrics.contains("wharf_upstream_up{kind=\"registry\",upstream=\"fake.test\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wharf_requests_total{protocol=\"registry\",outcome=\"stale\"} 20"),
        "{metrics}"
    );
    // An uncached tag or blob while down: a quick 503 that says so, not a timeout.
    let r = get(w.url("/v2/app/manifests/uncached")).await;
    assert_eq!(r.status(), 503);
    assert!(read_text(r).await.contains("down"));
    let blob = reg.put_blob(&bytes_of(1000, 2));
    let r = get(w.url(&format!("/v2/app/blobs/{blob}"))).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    let text = read_text(r).await;
    assert!(
        text.contains("UNAVAILABLE") && text.contains("down"),
        "{text}"
    );
}

#[tokio::test]
async fn a_down_upstream_comes_back_after_a_successful_probe() {
    let reg = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    reg.put_image("app", "v1", &[bytes_of(10, 1)]);
    let egress = "failure_threshold = 1\nprobe_interval = \"200ms\"";
    let w = Wharf::serve(config(
        &reg.url(),
        "http://127.0.0.1:9",
        dir.path(),
        "",
        egress,
    ))
    .await;
    reg.state.hang.store(true, Ordering::SeqCst);
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 502);
    assert_eq!(
        status_of(w.url("/v2/app/manifests/v1")).await,
        503,
        "down: answered at once"
    );
    reg.state.hang.store(false, Ordering::SeqCst);
    let mut up = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if status_of(w.url("/v2/app/manifests/v1")).await == 200 {
            up = true;
            break;
        }
    }
    assert!(up, "the probe never marked the upstream up again");
}

#[tokio::test]
async fn a_stalled_upstream_costs_a_cached_tag_seconds_not_the_read_timeout() {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (md, _) = reg.put_image("app", "v1", &[bytes_of(10, 1)]);
    // The upstream would be waited on for a minute per request.
    let egress = "read_timeout = \"60s\"";
    let w = Wharf::serve(config(&reg.url(), &go.url(), dir.path(), "", egress)).await;
    assert_eq!(status_of(w.url("/v2/app/manifests/v1")).await, 200);
    reg.state.hang.store(true, Ordering::SeqCst);
    // Accepts connections, never answers: the cached tag is served once patience runs out.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for i in 0..3 {
        let r = patient
            .get(w.url("/v2/app/manifests/v1"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} waited for the upstream: {e}"));
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-cache"], "STALE");
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    }
    // Giving up is not a failure of the upstream's: only its own timeouts mark it down (a
    // client that abandons slow requests must not take an upstream down for everyone).
    let (_, up) = health_of(&w.url(""), "fake.test").await;
    assert_eq!(up["up"], true, "{up}");
}
