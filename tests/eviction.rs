//! Eviction under a disk budget: the store stays under it, pinned content survives, and pulls
//! during eviction still get verified bytes.

mod support;
use support::*;

use std::time::Duration;

use wharf_storage::{Digest, PinRecord};

fn disk_bytes(dir: &std::path::Path) -> u64 {
    files_under(&dir.join("blobs"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Waits (at most 30 s) until no fill is running, as `/metrics` reports it.
async fn wait_for_fills(w: &Wharf) {
    for _ in 0..300 {
        let m = get(w.url("/metrics")).await.body_text().await;
        if m.contains("wharf_fills_in_flight 0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fills still running after 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stays_under_budget_and_pinned_content_survives() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = "[cache]\nmax_size = \"1MiB\"\nlow_watermark_percent = 80\ngc_interval = \"100ms\"\natime_flush_interval = \"50ms\"\n";
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(keys)).await;
    let blobs: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            let b = bytes_of(300_000, i + 1);
            (up.put_blob(&b), b)
        })
        .collect();
    // Pin the first one, as prefetch would.
    let pinned = Digest::parse(&blobs[0].0).unwrap();
    for (d, b) in &blobs {
        let got = get(w.url(&format!("/v2/app/blobs/{d}"))).await.body().await;
        assert_eq!(&got[..], &b[..]);
        if d == &blobs[0].0 {
            w.state
                .storage
                .index
                .put_pin(
                    &pinned,
                    &PinRecord {
                        reason: "test".into(),
                        pinned_unix: 0,
                    },
                )
                .unwrap();
        }
        // Pulls keep coming while eviction runs: every body is verified.
        let (d0, b0) = &blobs[0];
        let again = get(w.url(&format!("/v2/app/blobs/{d0}")))
            .await
            .body()
            .await;
        assert_eq!(sha256(&again), *d0);
        assert_eq!(&again[..], &b0[..]);
    }
    // Clients get their last bytes before the fsync; wait until every fill is committed, so
    // the budget is measured over committed content (a busy disk can take seconds).
    wait_for_fills(&w).await;
    let mut under = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if disk_bytes(dir.path()) <= 1 << 20 {
            under = true;
            break;
        }
    }
    assert!(
        under,
        "store is {} bytes, budget 1 MiB",
        disk_bytes(dir.path())
    );
    assert!(
        w.state.storage.blobs.contains(&pinned),
        "pinned blob was evicted"
    );
    // Evicted content is simply fetched again on the next pull.
    let (dl, bl) = &blobs[9];
    let got = get(w.url(&format!("/v2/app/blobs/{dl}")))
        .await
        .body()
        .await;
    assert_eq!(&got[..], &bl[..]);
    wait_for_fills(&w).await;
    let metrics = get(w.url("/metrics")).await.body_text().await;
    assert!(
        metrics.contains("wharf_upstream_bytes_total{upstream=\"fake.test\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn gc_dry_run_and_stats_answer_on_loopback() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    let c = client();
    let (d, _) = up.put_image("app", "v1", &[bytes_of(50_000, 3)]);
    get(w.url("/v2/app/manifests/v1")).await;
    get(w.url(&format!("/v2/app/manifests/{d}"))).await;
    let r = c
        .post(w.url("/admin/gc?dry_run=true&target=0"))
        .header("x-wharf-admin-token", w.admin_secret())
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    let text = read_text(r).await;
    assert!(text.contains("would remove") && text.contains(&d), "{text}");
    assert!(
        w.state.storage.blobs.contains(&Digest::parse(&d).unwrap()),
        "dry run removed something"
    );
    let stats: serde_json::Value = c
        .get(w.url("/admin/stats"))
        .header("x-wharf-admin-token", w.admin_secret())
        .sent()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["tags"], 1);
    assert!(stats["bytes"].as_u64().unwrap() > 0);
    assert!(stats["hit_ratio"].as_f64().is_some(), "{stats}");
}

#[test]
fn gc_and_stats_commands_work_on_a_stopped_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let s = wharf_storage::Storage::open(&data).unwrap();
        let b = bytes_of(10_000, 1);
        s.blobs.put_bytes(&Digest::of(&b), &b).unwrap();
    }
    let cfg = dir.path().join("wharf.toml");
    // A port nothing listens on: the commands fall back to the data directory.
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:9\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = wharf_command()
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        (out.status.success(), stdout(&out))
    };
    let (ok, text) = run(&["gc", "--dry-run", "--target", "0"]);
    assert!(ok && text.contains("would remove 1 objects"), "{text}");
    let (ok, text) = run(&["stats"]);
    assert!(ok && text.contains("1 objects"), "{text}");
    let (ok, text) = run(&["gc", "--target", "0"]);
    assert!(ok && text.contains("removed 1 objects"), "{text}");
}

#[tokio::test]
async fn manifests_gone_from_the_store_are_not_answered_from_memory() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    let c = client();
    let (d, _) = up.put_image("app", "v1", &[bytes_of(10_000, 4)]);
    let by_digest = w.url(&format!("/v2/app/manifests/{d}"));
    let get = |url: String| c.get(url).send();
    assert_eq!(
        get(by_digest.clone()).await.unwrap().headers()["x-cache"],
        "MISS"
    );
    let r = get(by_digest.clone()).await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(sha256(&read_body(r).await), d);
    let fetched = up.count("GET", "/manifests/");
    // Evict everything: the in-memory copy must go with the file.
    let r = c
        .post(w.url("/admin/gc?target=0"))
        .header("x-wharf-admin-token", w.admin_secret())
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert!(!w.state.storage.blobs.contains(&Digest::parse(&d).unwrap()));
    let r = get(by_digest).await.unwrap();
    assert_eq!(
        r.headers()["x-cache"],
        "MISS",
        "served from memory after eviction"
    );
    assert_eq!(sha256(&read_body(r).await), d);
    assert_eq!(up.count("GET", "/manifests/"), fetched + 1);
}
