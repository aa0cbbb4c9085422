//! `[traces]`: a `wharf serve` process exports its request and fill spans as OTLP/HTTP JSON to
//! a collector (an in-process fake on port 0), through the egress policy: a request that joined
//! a fill links to the fill's span, so a slow pull can be followed from any waiting client to
//! the upstream. Without `[traces]` nothing is sent anywhere.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// A fake collector: every body POSTed to `/v1/traces`, parsed.
async fn collector() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let keep = keep.clone();
            async move {
                let v = serde_json::from_slice(&body).expect("OTLP/HTTP JSON");
                keep.lock().unwrap().push(v);
                "{}"
            }
        }),
    );
    let (addr, _task) = serve_router("127.0.0.1:0", app).await;
    (format!("http://{addr}/v1/traces"), got)
}

/// Every exported span: (name, span id, links' span ids, attributes as `key=value`).
fn spans(bodies: &[serde_json::Value]) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let links = s["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| l["spanId"].as_str().unwrap_or("").to_string())
                        .collect();
                    let attrs = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| format!("{}={}", a["key"], a["value"]))
                        .collect();
                    out.push((
                        s["name"].as_str().unwrap_or("").to_string(),
                        s["spanId"].as_str().unwrap_or("").to_string(),
                        links,
                        attrs,
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn request_and_fill_spans_reach_the_collector_and_joiners_link_to_the_fill() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(1 << 20, 51);
    let d = up.put_blob(&blob);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(20)));
    let (endpoint, got) = collector().await;
    let (server, dir) = start_with(
        &up,
        &format!("[traces]\nendpoint = \"{endpoint}\"\nservice_name = \"wharf-test\"\n"),
    )
    .await;
    // Two clients of one fill: the second joins the first's.
    let url = server.url(&format!("/v2/app/blobs/{d}"));
    let first = tokio::spawn(read_body_of(url.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn(read_body_of(url));
    assert!(first.await.unwrap() == blob);
    assert!(second.await.unwrap() == blob);
    // Spans still buffered are sent at shutdown.
    server.stop().await;
    let logs = log_of(&dir);

    let bodies = got.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "nothing reached the collector");
    let text = serde_json::to_string(&bodies).unwrap();
    assert!(text.contains("wharf-test"), "service.name: {text}");
    let all = spans(&bodies);
    let fills: Vec<_> = all.iter().filter(|s| s.0 == "fill").collect();
    assert_eq!(fills.len(), 1, "one fill for two clients: {all:?}\n{logs}");
    let requests: Vec<_> = all.iter().filter(|s| s.0 == "request").collect();
    assert!(requests.len() >= 2, "{all:?}");
    let fill_id = &fills[0].1;
    assert!(
        requests.iter().any(|r| r.2.contains(fill_id)),
        "the request that joined links to the fill's span: {all:?}"
    );
    // Nothing of the request log is exported.
    assert!(!text.contains("wharf::access"), "{text}");
}

#[tokio::test]
async fn a_collector_not_in_egress_allow_gets_nothing_and_lines_follow_the_log_level() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(10_000, 52);
    let d = up.put_blob(&blob);
    let (endpoint, got) = collector().await;
    // Named by a host the egress policy does not allow (pinned to loopback).
    let endpoint = endpoint.replace("127.0.0.1", "collector.test");
    let (server, dir) = start_and_get_blob(
        &up,
        &format!("[log]\nlevel = \"warn\"\n[traces]\nendpoint = \"{endpoint}\"\n"),
        &d,
        &blob,
    )
    .await;
    server.stop().await;
    assert!(got.lock().unwrap().is_empty());
    // The traces layer does not turn on the request lines `[log] level = "warn"` keeps off.
    let logs = log_of(&dir);
    assert!(!logs.contains("wharf::access"), "{logs}");
    assert!(
        logs.contains("collector.test"),
        "the refusal is logged: {logs}"
    );
}

/// wharf in front of `up` with `tables` added to its config; the directory holds its data and
/// its log (`log_of`).
async fn start_with(up: &FakeRegistry, tables: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = WharfConfig::fake(&up.url(), &dir.path().join("data"))
        .tables(tables)
        .write(&dir.path().join("wharf.toml"));
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    (server, dir)
}

/// `start_with`, then one GET of blob `d`, whose body must be `blob`.
async fn start_and_get_blob(
    up: &FakeRegistry,
    tables: &str,
    d: &str,
    blob: &[u8],
) -> (Server, tempfile::TempDir) {
    let (server, dir) = start_with(up, tables).await;
    assert_eq!(
        read_body_of(server.url(&format!("/v2/app/blobs/{d}"))).await,
        blob
    );
    (server, dir)
}

fn log_of(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("serve.log")).unwrap()
}

async fn read_body_of(url: String) -> Vec<u8> {
    read_body(get(url).await).await
}

/// A collector whose answer never ends (or is huge) is not read whole: the exporter stops at a
/// bound and drops the connection, so wharf's memory does not grow with what it is sent.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_answer_from_the_collector_is_not_read_whole() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let up = FakeRegistry::start().await;
    let blob = bytes_of(10_000, 53);
    let d = up.put_blob(&blob);
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |_body: bytes::Bytes| {
            let count = count.clone();
            async move {
                let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
                let endless = futures_util::stream::repeat_with(move || {
                    count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                axum::body::Body::from_stream(endless)
            }
        }),
    );
    let (addr, _task) = serve_router("127.0.0.1:0", app).await;
    let (server, _dir) = start_and_get_blob(
        &up,
        &format!("[traces]\nendpoint = \"http://{addr}/v1/traces\"\n"),
        &d,
        &blob,
    )
    .await;
    // Shutdown sends the spans and reads the answer (for up to 5 s before the fix).
    server.stop().await;
    let n = sent.load(Ordering::Relaxed);
    assert!(n > 0, "the spans reached the collector");
    assert!(n < 16 << 20, "{n} bytes of the answer were read");
}

/// A collector answering with a redirect is not followed, even to an allowed address; the
/// failure is logged once.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_from_the_collector_is_not_followed() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let up = FakeRegistry::start().await;
    let blob = bytes_of(10_000, 54);
    let d = up.put_blob(&blob);
    // The trap: any connection to it is counted.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok(_c) = trap.accept().await {
            h.fetch_add(1, Ordering::Relaxed);
        }
    });
    let posts = Arc::new(AtomicU64::new(0));
    let p = posts.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |_body: bytes::Bytes| {
            let p = p.clone();
            async move {
                p.fetch_add(1, Ordering::Relaxed);
                (
                    http::StatusCode::TEMPORARY_REDIRECT,
                    [(
                        http::header::LOCATION,
                        format!("http://{trap_addr}/v1/traces"),
                    )],
                )
            }
        }),
    );
    let (addr, _task) = serve_router("127.0.0.1:0", app).await;
    let (server, dir) = start_and_get_blob(
        &up,
        &format!("[traces]\nendpoint = \"http://{addr}/v1/traces\"\n"),
        &d,
        &blob,
    )
    .await;
    server.stop().await;
    let logs = log_of(&dir);
    assert!(posts.load(Ordering::Relaxed) > 0, "{logs}");
    assert_eq!(hits.load(Ordering::Relaxed), 0, "the redirect was followed");
    assert_eq!(logs.matches("answered 307").count(), 1, "{logs}");
}

/// A request's path goes into its span bounded: a client's overlong URL (refused with 414,
/// after the span is made) does not make spans the size of the request head.
#[tokio::test(flavor = "multi_thread")]
async fn an_overlong_path_is_exported_bounded() {
    let up = FakeRegistry::start().await;
    let (endpoint, got) = collector().await;
    let (server, _dir) = start_with(&up, &format!("[traces]\nendpoint = \"{endpoint}\"\n")).await;
    let long = format!("/v2/app/manifests/{}", "a".repeat(40_000));
    assert_eq!(status_of(server.url(&long)).await, 414);
    server.stop().await;
    let bodies = got.lock().unwrap().clone();
    let all = spans(&bodies);
    let path = all
        .iter()
        .filter(|s| s.0 == "request")
        .flat_map(|s| s.3.iter())
        .find(|a| a.starts_with("\"path\"="))
        .unwrap_or_else(|| panic!("no path attribute: {all:?}"));
    assert!(path.len() < 2048, "a path of {} bytes exported", path.len());
}
