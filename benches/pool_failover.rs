//! What a pool's failover costs a fill: a cold blob (64 MiB by default) pulled through wharf
//! from a pool whose first endpoint ends the body halfway, so the fill continues on the second
//! endpoint with a `Range` from the byte where it stopped, against the same blob from a single
//! healthy endpoint.
//!
//! wharf runs in-process (`tests/support`'s `Wharf::serve`) with fake upstreams on 127.0.0.1,
//! port 0; each sample is a fresh data directory (a cold fill) and one client GET read to the
//! end and checked against the digest.
//!
//! Run: `cargo bench --bench pool_failover` (`-- --mib N --samples N`). Prints the median and
//! the spread of each case in milliseconds.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use support::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One cold pull of `digest` through a wharf whose default upstream has `urls`.
async fn pull(urls: &str, digest: &str, body: &[u8]) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Wharf::serve(
        WharfConfig::new(dir.path())
            .upstream_pool("pool.test", urls)
            .timeouts(),
    )
    .await;
    let start = Instant::now();
    let r = get(w.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(r.status(), 200);
    let got = read_body(r).await;
    let took = start.elapsed();
    assert_eq!(got.len(), body.len());
    assert_eq!(sha256(&got), digest, "complete and verified");
    w.stop().await;
    took
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    println!(
        "{name:<34} median {median:8.1} ms   min {:8.1}   max {:8.1}   ({} samples)",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

#[tokio::main]
async fn main() {
    let mib = arg("--mib", 64);
    let samples = arg("--samples", 5);
    let body = bytes_of(mib << 20, 64);
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let digest = a.put_blob(&body);
    b.put_blob(&body);
    // The second endpoint answers a continuation with the exact 206 a registry sends.
    *b.state.range_hook.lock().unwrap() = Some(Arc::new(|blob: Vec<u8>, start: usize| {
        Box::pin(async move {
            let total = blob.len();
            (
                http::StatusCode::PARTIAL_CONTENT,
                [(
                    http::header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{total}", total - 1),
                )],
                blob[start.min(total)..].to_vec(),
            )
                .into_response()
        })
    }));
    let q = |u: String| format!("\"{u}\"");

    let mut single = Vec::new();
    let mut failover = Vec::new();
    for _ in 0..samples {
        single.push(pull(&q(b.url()), &digest, &body).await.as_secs_f64() * 1e3);
        a.set_blob_mode(BlobMode::Truncate(body.len() / 2));
        let urls = format!("{{ url = {}, weight = 100 }}, {}", q(a.url()), q(b.url()));
        failover.push(pull(&urls, &digest, &body).await.as_secs_f64() * 1e3);
    }
    println!("{mib} MiB blob, cold fill, one client:");
    summary("single healthy endpoint", single);
    summary("pool, first endpoint cut at 50%", failover);
    let ranges = b
        .state
        .range_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    println!("Range continuations served by the second endpoint: {ranges}");
}
