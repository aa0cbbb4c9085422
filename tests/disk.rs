//! Faults of the machine's disk: a data directory on a small tmpfs (mounted by the test, which
//! needs root; skipped with a reason otherwise unless `WHARF_REQUIRE_INTEROP` is set). An object
//! larger than the disk, and any object while the disk is below `cache.min_free`, still reach
//! the client whole and verified, unstored (`X-Cache: BYPASS`); `/healthz` names the disk; once
//! space returns, fills are stored again.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// A tmpfs of `mib` MiB mounted under a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(test: &str, mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let why = match Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
        {
            Ok(out) if out.status.success() => return Some(Tmpfs { dir }),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        let why = format!("{test}: cannot mount a tmpfs (needs root): {why}");
        if std::env::var_os("WHARF_REQUIRE_INTEROP").is_some() {
            panic!("{why}; WHARF_REQUIRE_INTEROP is set, so this is a failure, not a skip");
        }
        eprintln!("skipping {why}");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system at `dir` until less than `leave` bytes are free.
fn fill_disk(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let st = rustix::fs::statvfs(dir).unwrap();
    let free = st.f_bavail * st.f_frsize;
    let n = free.saturating_sub(leave) as usize;
    std::fs::write(&path, vec![0u8; n]).unwrap();
    path
}

async fn health(w: &Wharf) -> serde_json::Value {
    let r = get(w.url("/healthz")).await;
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&read_body(r).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_passes_verified_objects_through_and_recovers() {
    let test = "a_full_disk_passes_verified_objects_through_and_recovers";
    let Some(disk) = Tmpfs::mount(test, 24) else {
        return;
    };
    let up = FakeRegistry::start().await;
    let big = bytes_of(40 << 20, 31);
    let big_d = up.put_blob(&big);
    let small = bytes_of(300_000, 32);
    let small_d = up.put_blob(&small);
    let kept = bytes_of(200_000, 33);
    let kept_d = up.put_blob(&kept);
    let data = disk.path().join("data");
    let w =
        Wharf::serve(WharfConfig::fake(&up.url(), &data).tables("[cache]\nmin_free = \"2MiB\"\n"))
            .await;
    assert_eq!(health(&w).await["status"], "ok");
    let r = get(w.url(&format!("/v2/app/blobs/{kept_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(read_body(r).await, kept);

    // Larger than the whole disk: whole and verified, not stored.
    let r = get(w.url(&format!("/v2/app/blobs/{big_d}"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    assert_eq!(
        r.headers()["content-length"],
        (40u64 << 20).to_string().as_str()
    );
    assert_eq!(read_body(r).await, big);
    let r = get(w.url(&format!("/v2/app/blobs/{big_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "BYPASS", "never stored");
    assert_eq!(read_body(r).await, big);
    assert_eq!(up.count("GET", &big_d), 2, "each pass is one upstream GET");
    // Evicting could not have made room for it: nothing was evicted.
    let r = get(w.url(&format!("/v2/app/blobs/{kept_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");

    // Corrupt bytes passed through are cut, never completed.
    up.set_blob_mode(BlobMode::Corrupt);
    let r = get(w.url(&format!("/v2/app/blobs/{big_d}"))).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a corrupt pass-through must not end cleanly"
    );
    up.set_blob_mode(BlobMode::Normal);

    // Below min_free: /healthz names the disk, and even a small object passes through.
    let filler = fill_disk(disk.path(), 1 << 20);
    let h = health(&w).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["disk"]["problem"], "below min_free", "{h}");
    let r = get(w.url(&format!("/v2/app/blobs/{small_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    assert_eq!(read_body(r).await, small);
    let m = read_text(get(w.url("/metrics")).await).await;
    assert!(m.contains("wharf_disk_full 1"), "{m}");
    assert!(
        m.contains("wharf_requests_total{protocol=\"registry\",outcome=\"bypass\"} 4"),
        "{m}"
    );
    let r = get(w.url(&format!("/v2/app/blobs/{kept_d}"))).await;
    assert_eq!(
        r.headers()["x-cache"],
        "HIT",
        "not evicted for what eviction could not fit"
    );

    // Space returns: stored again.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(health(&w).await["status"], "ok");
    let r = get(w.url(&format!("/v2/app/blobs/{small_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(read_body(r).await, small);
    let r = get(w.url(&format!("/v2/app/blobs/{small_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, small);
    let m = read_text(get(w.url("/metrics")).await).await;
    assert!(m.contains("wharf_passthrough_total 4"), "{m}");
    assert!(m.contains("wharf_disk_full 0"), "{m}");
    // Nothing half-written was left behind.
    assert_eq!(fill_files(&data), Vec::<PathBuf>::new());
}

/// A fill of unknown size (no `Content-Length`, so nothing can be reserved) of a blob larger
/// than the tmpfs: the disk runs full halfway. Two clients pull it at once (bodies sent with
/// `sendfile` and the source's rest, or all through hyper without `zero_copy`); returns their
/// bodies (or why each failed), the upstream, the wharf and its disk.
async fn fill_that_runs_full(
    test: &str,
    ranges: RangeAnswer,
    corrupt_at: Option<usize>,
    zero_copy: bool,
) -> Option<(
    Vec<Result<Vec<u8>, String>>,
    FakeRegistry,
    Wharf,
    Tmpfs,
    String,
    Vec<u8>,
)> {
    let disk = Tmpfs::mount(test, 24)?;
    let up = FakeRegistry::start().await;
    let big = bytes_of(40 << 20, 35);
    let d = up.put_blob(&big);
    up.set_blob_mode(BlobMode::Chunked { corrupt_at });
    *up.state.range_answer.lock().unwrap() = ranges;
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), &disk.path().join("data")).tables(&format!(
            "[cache]\nmin_free = \"1MiB\"\n[server]\nzero_copy = {zero_copy}\n"
        )),
    )
    .await;
    let url = w.url(&format!("/v2/app/blobs/{d}"));
    let pulls = (0..2).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let r = get(url).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-cache"], "MISS");
            r.bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        })
    });
    let bodies = futures_util::future::join_all(pulls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    Some((bodies, up, w, disk, d, big))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_runs_full_mid_fill_finishes_every_client_from_the_source() {
    let test = "a_disk_that_runs_full_mid_fill_finishes_every_client_from_the_source";
    let Some((bodies, up, w, disk, d, big)) =
        fill_that_runs_full(test, RangeAnswer::Exact, None, true).await
    else {
        return;
    };
    for body in bodies {
        assert!(body.unwrap() == big, "a complete, verified body");
    }
    let ranges = up
        .state
        .range_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&ranges),
        "each client asks the rest once: {ranges}"
    );
    assert_eq!(up.count("GET", &d) - ranges, 1, "one fill");
    let m = read_text(get(w.url("/metrics")).await).await;
    assert!(m.contains("wharf_passthrough_total 1"), "{m}");
    let h = health(&w).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["disk"]["problem"], "disk full", "{h}");
    // Nothing half-written stays; the space is back for objects of known size.
    let tmp = std::fs::read_dir(disk.path().join("data/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);
    let small = bytes_of(300_000, 36);
    let small_d = up.put_blob(&small);
    up.set_blob_mode(BlobMode::Normal);
    let r = get(w.url(&format!("/v2/app/blobs/{small_d}"))).await;
    assert_eq!(read_body(r).await, small);
    let r = get(w.url(&format!("/v2/app/blobs/{small_d}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    // The big one was never stored.
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    assert!(read_body(r).await == big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_runs_full_finishes_from_an_upstream_without_ranges() {
    // Through hyper's body path this time.
    let test = "a_fill_that_runs_full_finishes_from_an_upstream_without_ranges";
    let Some((bodies, ..)) = fill_that_runs_full(test, RangeAnswer::Ignore, None, false).await
    else {
        return;
    };
    let big = bytes_of(40 << 20, 35);
    for body in bodies {
        assert!(
            body.unwrap() == big,
            "the rest from a whole GET, its start skipped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_runs_full_with_bad_bytes_is_cut_for_every_client() {
    let test = "a_fill_that_runs_full_with_bad_bytes_is_cut_for_every_client";
    // The flipped byte is in the part that reached the disk; the rest asked by range is fine.
    let Some((bodies, ..)) = fill_that_runs_full(test, RangeAnswer::Exact, Some(1000), true).await
    else {
        return;
    };
    for body in bodies {
        assert!(body.is_err(), "a corrupt fill must not end cleanly");
    }
}

/// A wharf whose disk never has room (`min_free` larger than any disk): every fill passes
/// through. Needs no mount.
async fn never_room(keys: &str) -> (FakeRegistry, Wharf, tempfile::TempDir, String, Vec<u8>) {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(2 << 20, 34);
    let d = up.put_blob(&blob);
    *up.state.range_answer.lock().unwrap() = RangeAnswer::Exact;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path())
            .registry(keys)
            .tables("[cache]\nmin_free = \"1000TiB\"\n[server]\nmax_concurrent_fills = 1\nfill_queue_timeout = \"0s\"\n"),
    )
    .await;
    (up, w, dir, d, blob)
}

#[tokio::test]
async fn with_cold_ranges_wait_a_passed_through_range_is_only_verified_bytes() {
    let ranged = |w: &Wharf, d: &str| {
        client()
            .get(w.url(&format!("/v2/app/blobs/{d}")))
            .header("range", "bytes=1000-1999")
    };
    // Default ("upstream"): the range is asked of the upstream, marked, and BYPASS.
    let (_up, w, _dir, d, blob) = never_room("").await;
    let r = ranged(&w, &d).sent().await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-wharf-unverified"], "upstream-range");
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    assert_eq!(read_body(r).await, blob[1000..2000]);

    let (up, w, _dir, d, _) = never_room("cold_ranges = \"wait\"").await;
    let r = ranged(&w, &d).sent().await;
    assert_eq!(r.status(), 200, "the verified whole instead");
    assert!(r.headers().get("x-wharf-unverified").is_none());
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    assert_eq!(sha256(&read_body(r).await), d);
    assert_eq!(
        up.state
            .range_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn passing_through_takes_fill_permits_like_a_fill() {
    let (up, w, _dir, d, blob) = never_room("").await;
    up.set_blob_mode(BlobMode::Slow(std::time::Duration::from_millis(20)));
    let first = client()
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .sent()
        .await;
    assert_eq!(first.headers()["x-cache"], "BYPASS");
    // The first is still streaming: no permit for a second.
    let second = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(second.status(), 503);
    assert_eq!(read_body(first).await, blob);
    // Released when the first body ended.
    up.set_blob_mode(BlobMode::Normal);
    let third = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(third.status(), 200);
    assert_eq!(read_body(third).await, blob);
}

// ------------------------------------------------------------------ review17: attacks on spills

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;

/// One client's view of a spilled fill: status, `X-Cache`, body (or why it failed), when it ended.
#[derive(Debug)]
struct Pulled {
    status: u16,
    cache: String,
    body: Result<Vec<u8>, String>,
    took: Duration,
}

struct SpillRun {
    pulls: Vec<Pulled>,
    up: FakeRegistry,
    /// Kept serving until the run is dropped.
    _w: Wharf,
    disk: Tmpfs,
    d: String,
    big: Vec<u8>,
}

/// A 40 MiB blob of unknown size through a 24 MiB tmpfs, sent slowly enough that `clients`
/// requests (each with its own extra headers) all join the one fill; the rest is asked of the
/// upstream through `hook` when given.
async fn spill_run(
    test: &str,
    clients: Vec<Vec<(&'static str, String)>>,
    config: impl FnOnce(WharfConfig) -> WharfConfig,
    hook: Option<RangeHook>,
) -> Option<SpillRun> {
    let disk = Tmpfs::mount(test, 24)?;
    let up = FakeRegistry::start().await;
    let big = bytes_of(40 << 20, 35);
    let d = up.put_blob(&big);
    up.set_blob_mode(BlobMode::Chunked { corrupt_at: None });
    *up.state.chunk_delay.lock().unwrap() = Some(Duration::from_millis(2));
    *up.state.range_answer.lock().unwrap() = RangeAnswer::Exact;
    *up.state.range_hook.lock().unwrap() = hook;
    let w = Wharf::serve(config(
        WharfConfig::fake(&up.url(), &disk.path().join("data"))
            .tables("[cache]\nmin_free = \"1MiB\"\n"),
    ))
    .await;
    let url = w.url(&format!("/v2/app/blobs/{d}"));
    let pulls = clients.into_iter().map(|headers| {
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut req = client().get(url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.sent().await;
            let status = r.status().as_u16();
            let cache = r
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = match tokio::time::timeout(Duration::from_secs(90), r.bytes()).await {
                Ok(b) => b.map(|b| b.to_vec()).map_err(|e| format!("{e:?}")),
                Err(_) => Err("still hanging after 90 s".into()),
            };
            Pulled {
                status,
                cache,
                body,
                took: started.elapsed(),
            }
        })
    });
    let pulls = futures_util::future::join_all(pulls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    Some(SpillRun {
        pulls,
        up,
        _w: w,
        disk,
        d,
        big,
    })
}

fn plain(n: usize) -> Vec<Vec<(&'static str, String)>> {
    vec![Vec::new(); n]
}

fn hook(
    f: impl Fn(Vec<u8>, usize) -> axum::response::Response + Send + Sync + 'static,
) -> RangeHook {
    Arc::new(move |b, a| {
        let r = f(b, a);
        Box::pin(async move { r })
    })
}

fn partial(body: Vec<u8>, content_range: String) -> axum::response::Response {
    (
        http::StatusCode::PARTIAL_CONTENT,
        [(http::header::CONTENT_RANGE, content_range)],
        body,
    )
        .into_response()
}

/// Every body that ended cleanly is the blob; returns how many did.
fn none_complete_but_the_blob(run: &SpillRun, case: &str) -> usize {
    let mut ok = 0;
    for p in &run.pulls {
        if let Ok(b) = &p.body {
            assert!(
                *b == run.big,
                "{case}: a body ended cleanly with {} bytes that are not the blob ({p:?})",
                b.len()
            );
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_hostile_continuations_never_complete_a_body() {
    let test = "review_hostile_continuations_never_complete_a_body";
    let flip = |mut v: Vec<u8>, at: usize| {
        v[at] ^= 1;
        v
    };
    let cases: Vec<(&str, RangeHook, bool)> = vec![
        (
            "206, other bytes",
            hook(move |b, a| {
                let n = b.len();
                partial(
                    flip(b[a..].to_vec(), 1234),
                    format!("bytes {a}-{}/{n}", n - 1),
                )
            }),
            false,
        ),
        (
            "206, a total one larger",
            hook(|b, a| {
                let n = b.len();
                partial(b[a..].to_vec(), format!("bytes {a}-{}/{}", n - 1, n + 1))
            }),
            false,
        ),
        (
            "206, a shorter object (consistent header)",
            hook(|b, a| {
                let n = b.len() - 1;
                partial(b[a..n].to_vec(), format!("bytes {a}-{}/{n}", n - 1))
            }),
            false,
        ),
        (
            "206, a longer object (consistent header)",
            hook(|b, a| {
                let mut v = b[a..].to_vec();
                v.push(0);
                let n = b.len() + 1;
                partial(v, format!("bytes {a}-{}/{n}", n - 1))
            }),
            false,
        ),
        (
            "206, no total",
            hook(|b, a| partial(b[a..].to_vec(), format!("bytes {a}-{}/*", b.len() - 1))),
            false,
        ),
        (
            "206, one byte earlier than asked",
            hook(|b, a| {
                let n = b.len();
                partial(
                    b[a - 1..].to_vec(),
                    format!("bytes {}-{}/{n}", a - 1, n - 1),
                )
            }),
            false,
        ),
        (
            "206, one byte later than asked",
            hook(|b, a| {
                let n = b.len();
                partial(
                    b[a + 1..].to_vec(),
                    format!("bytes {}-{}/{n}", a + 1, n - 1),
                )
            }),
            false,
        ),
        (
            "206, body longer than its range",
            hook(|b, a| {
                let n = b.len();
                let mut v = b[a..].to_vec();
                v.extend_from_slice(b"trailing junk");
                partial(v, format!("bytes {a}-{}/{n}", n - 1))
            }),
            false,
        ),
        (
            "206, empty",
            hook(|b, a| partial(Vec::new(), format!("bytes {a}-{}/{}", b.len() - 1, b.len()))),
            false,
        ),
        (
            "200, one KiB short",
            hook(|b, _| b[..b.len() - 1024].to_vec().into_response()),
            false,
        ),
        (
            "200, shorter than the part on disk",
            hook(|b, a| b[..a / 2].to_vec().into_response()),
            false,
        ),
        (
            "200, longer",
            hook(|b, _| {
                let mut v = b;
                v.extend_from_slice(&[7; 5000]);
                v.into_response()
            }),
            false,
        ),
        (
            "200, a byte flipped after the disk's part",
            hook(move |b, a| flip(b, a + 10).into_response()),
            false,
        ),
        (
            "200, a byte flipped in the last byte",
            hook(move |b, _| {
                let n = b.len();
                flip(b, n - 1).into_response()
            }),
            false,
        ),
        (
            "200, a byte flipped only in the part already on disk (ignored: fine)",
            hook(move |b, a| flip(b, a / 2).into_response()),
            true,
        ),
        (
            "416",
            hook(|_, _| http::StatusCode::RANGE_NOT_SATISFIABLE.into_response()),
            false,
        ),
        (
            "404",
            hook(|_, _| http::StatusCode::NOT_FOUND.into_response()),
            false,
        ),
    ];
    for (case, h, whole) in cases {
        let Some(run) = spill_run(test, plain(2), |c| c, Some(h)).await else {
            return;
        };
        let asked = run.up.state.range_requests.load(Ordering::SeqCst);
        let ok = none_complete_but_the_blob(&run, case);
        eprintln!(
            "{case}: {ok} of {} complete; range requests {asked}; {:?}",
            run.pulls.len(),
            run.pulls
                .iter()
                .map(|p| (p.status, p.cache.clone(), p.took, p.body.as_ref().err()))
                .collect::<Vec<_>>()
        );
        assert!(asked >= 1, "{case}: the fill must have spilled");
        if whole {
            assert_eq!(ok, run.pulls.len(), "{case}");
        } else {
            assert_eq!(ok, 0, "{case}");
        }
        let tmp = std::fs::read_dir(run.disk.path().join("data/tmp"))
            .unwrap()
            .count();
        assert_eq!(tmp, 0, "{case}: nothing left in tmp/");
        drop(run);
    }
}

/// Descriptors of this process open on temp files under `dir` (live or deleted).
fn fds_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| {
            p.strip_prefix(&*dir.to_string_lossy())
                .is_some_and(|rest| rest.contains("/tmp/") || rest.ends_with("(deleted)"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rests_of_a_spilled_fill_take_fill_permits() {
    let test = "the_rests_of_a_spilled_fill_take_fill_permits";
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (n2, m2, s2) = (now.clone(), most.clone(), sent.clone());
    // The rest, slowly, counting how many rests stream at once.
    let h: RangeHook = Arc::new(move |b: Vec<u8>, a: usize| {
        let (now, most, sent) = (n2.clone(), m2.clone(), s2.clone());
        Box::pin(async move {
            struct Live(Arc<AtomicUsize>);
            impl Drop for Live {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let n = b.len();
            let live = Live(now.clone());
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            let chunks: Vec<Vec<u8>> = b[a..].chunks(256 << 10).map(<[u8]>::to_vec).collect();
            let s = futures_util::stream::unfold(
                (chunks.into_iter(), live, sent),
                |(mut it, live, sent)| async move {
                    let c = it.next()?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    sent.fetch_add(c.len() as u64, Ordering::SeqCst);
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from(c)),
                        (it, live, sent),
                    ))
                },
            );
            (
                http::StatusCode::PARTIAL_CONTENT,
                [(
                    http::header::CONTENT_RANGE,
                    format!("bytes {a}-{}/{n}", n - 1),
                )],
                axum::body::Body::from_stream(s),
            )
                .into_response()
        })
    });
    let clients = 6;
    let Some(run) = spill_run(
        test,
        plain(clients),
        |c| c.tables("[server]\nmax_concurrent_fills = 1\nfill_queue_timeout = \"0s\"\n"),
        Some(h),
    )
    .await
    else {
        return;
    };
    let ok = none_complete_but_the_blob(&run, "amplification");
    let asked = run.up.state.range_requests.load(Ordering::SeqCst);
    let whole = run.up.count("GET", &run.d) - asked;
    let rest = (run.big.len() - 24 * (1 << 20)) as u64;
    eprintln!(
        "{clients} clients: {ok} complete, caches {:?}; whole GETs {whole}, range GETs {asked}, \
         at most {} rests at once, {} MiB of rests (vs ~{} MiB once)",
        run.pulls
            .iter()
            .map(|p| p.cache.clone())
            .collect::<Vec<_>>(),
        most.load(Ordering::SeqCst),
        sent.load(Ordering::SeqCst) >> 20,
        rest >> 20,
    );
    assert_eq!(ok, clients);
    assert!(
        most.load(Ordering::SeqCst) <= 1,
        "server.max_concurrent_fills = 1, yet {} upstream transfers ran at once for one blob",
        most.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_stalled_continuation_cuts_every_client_after_read_timeout() {
    let test = "review_a_stalled_continuation_cuts_every_client_after_read_timeout";
    // Headers, then nothing.
    let body_stall = hook(|b, a| {
        let n = b.len();
        (
            http::StatusCode::PARTIAL_CONTENT,
            [(
                http::header::CONTENT_RANGE,
                format!("bytes {a}-{}/{n}", n - 1),
            )],
            axum::body::Body::from_stream(futures_util::stream::pending::<
                Result<bytes::Bytes, std::io::Error>,
            >()),
        )
            .into_response()
    });
    // No headers at all.
    let head_stall: RangeHook = Arc::new(|_, _| Box::pin(futures_util::future::pending()));
    for (case, h) in [("body stall", body_stall), ("header stall", head_stall)] {
        let Some(run) = spill_run(test, plain(3), |c| c, Some(h)).await else {
            return;
        };
        let ok = none_complete_but_the_blob(&run, case);
        eprintln!(
            "{case}: {:?}",
            run.pulls
                .iter()
                .map(|p| (p.took, p.body.as_ref().err()))
                .collect::<Vec<_>>()
        );
        assert_eq!(ok, 0, "{case}");
        for p in &run.pulls {
            assert!(
                p.took < Duration::from_secs(30),
                "{case}: a client waited {:?} (egress.read_timeout is 5 s)",
                p.took
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_continuation_redirected_off_the_allow_list_is_not_followed() {
    let test = "review_a_continuation_redirected_off_the_allow_list_is_not_followed";
    let other = FakeRegistry::start().await;
    let port = other.addr.port();
    let off = hook(move |_, _| {
        (
            http::StatusCode::TEMPORARY_REDIRECT,
            [(
                http::header::LOCATION,
                format!("http://localhost:{port}/elsewhere"),
            )],
        )
            .into_response()
    });
    let Some(run) = spill_run(test, plain(2), |c| c, Some(off)).await else {
        return;
    };
    assert_eq!(none_complete_but_the_blob(&run, "redirect off the list"), 0);
    assert_eq!(
        other.state.connections.load(Ordering::SeqCst),
        0,
        "egress must refuse localhost"
    );
    // On the list (127.0.0.1), a CDN that ignores the range: the rest from its whole body.
    let other_blob = run.big.clone();
    other.put_blob(&other_blob);
    let d = run.d.clone();
    drop(run);
    let on = hook(move |_, _| {
        (
            http::StatusCode::TEMPORARY_REDIRECT,
            [(
                http::header::LOCATION,
                format!("http://127.0.0.1:{port}/final/app/blobs/{d}"),
            )],
        )
            .into_response()
    });
    let Some(run) = spill_run(test, plain(2), |c| c, Some(on)).await else {
        return;
    };
    assert_eq!(none_complete_but_the_blob(&run, "redirect on the list"), 2);
    assert!(other.state.connections.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_an_endless_continuation_stops_at_max_blob_size() {
    let test = "review_an_endless_continuation_stops_at_max_blob_size";
    let sent = Arc::new(AtomicU64::new(0));
    let s2 = sent.clone();
    // The whole blob, then junk without end, no length: a 200 to the range request.
    let endless = hook(move |b, _| {
        let sent = s2.clone();
        let first = futures_util::stream::iter(
            b.chunks(1 << 20)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let junk = futures_util::stream::repeat_with(move || {
            sent.fetch_add(64 << 10, Ordering::SeqCst);
            Ok(bytes::Bytes::from(vec![0x5a; 64 << 10]))
        });
        axum::body::Body::from_stream(futures_util::StreamExt::chain(first, junk)).into_response()
    });
    let Some(run) = spill_run(
        test,
        plain(2),
        |c| c.registry("max_blob_size = \"48MiB\""),
        Some(endless),
    )
    .await
    else {
        return;
    };
    assert_eq!(none_complete_but_the_blob(&run, "endless"), 0);
    // The rests are let go: what was pulled stops growing (within a few seconds on a loaded
    // machine; the rests take fill permits one after another).
    let mut junk = sent.load(Ordering::SeqCst);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == junk {
            break;
        }
        junk = now;
    }
    eprintln!(
        "junk pulled: {} MiB for 2 clients; {:?}",
        junk >> 20,
        run.pulls
            .iter()
            .map(|p| p.body.as_ref().err())
            .collect::<Vec<_>>()
    );
    // Per client at most (48 - 40) MiB of junk taken, plus what socket buffers hold; and the
    // source stops being read.
    assert!(junk <= 2 * ((8 << 20) + (32 << 20)), "{junk}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        junk,
        "the endless rests were let go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_clients_leaving_a_spill_leak_nothing() {
    let test = "review_clients_leaving_a_spill_leak_nothing";
    let Some(disk) = Tmpfs::mount(test, 24) else {
        return;
    };
    let up = FakeRegistry::start().await;
    let big = bytes_of(40 << 20, 35);
    let d = up.put_blob(&big);
    up.set_blob_mode(BlobMode::Chunked { corrupt_at: None });
    *up.state.chunk_delay.lock().unwrap() = Some(Duration::from_millis(2));
    *up.state.range_answer.lock().unwrap() = RangeAnswer::Exact;
    let data = disk.path().join("data");
    let w =
        Wharf::serve(WharfConfig::fake(&up.url(), &data).tables("[cache]\nmin_free = \"1MiB\"\n"))
            .await;
    let url = w.url(&format!("/v2/app/blobs/{d}"));
    let free = || {
        let st = rustix::fs::statvfs(disk.path()).unwrap();
        st.f_bavail * st.f_frsize
    };
    let before = free();
    // The first leaves after its headers, the second after 30 MiB (in the rest), a third
    // reads it all, a fourth asks a range and a fifth HEAD while the fill runs.
    let leave_at = [Some(0usize), Some(30 << 20), None];
    let mut tasks = Vec::new();
    for at in leave_at {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = get(url).await;
            let mut got = 0;
            loop {
                if at.is_some_and(|at| got >= at) {
                    return (r.status().as_u16(), None);
                }
                match r.chunk().await {
                    Ok(Some(c)) => got += c.len(),
                    Ok(None) => return (200, Some(Ok(got))),
                    Err(e) => return (200, Some(Err(e.to_string()))),
                }
            }
        }));
    }
    let ranged = {
        let url = url.clone();
        tokio::spawn(async move {
            let r = client()
                .get(url)
                .header("range", "bytes=100-199")
                .sent()
                .await;
            let status = r.status().as_u16();
            let unverified = r.headers().get("x-wharf-unverified").cloned();
            (status, unverified, r.bytes().await.map(|b| b.to_vec()))
        })
    };
    let head = {
        let url = url.clone();
        tokio::spawn(async move { client().head(url).sent().await.status().as_u16() })
    };
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let (rs, unverified, rb) = ranged.await.unwrap();
    let hs = head.await.unwrap();
    eprintln!("outcomes {outcomes:?}; range {rs} {unverified:?}; head {hs}");
    assert_eq!(outcomes[2].1.clone().unwrap().unwrap(), big.len());
    let rb = rb.unwrap();
    match rs {
        200 => assert!(rb == big, "a range answered whole must be the blob"),
        206 => assert_eq!(rb, big[100..200]),
        s => panic!("range answered {s}"),
    }
    assert_eq!(hs, 200);
    assert!(
        up.state.range_requests.load(Ordering::SeqCst) >= 1,
        "spilled"
    );
    // Every descriptor on the spilled file is closed and its space is back.
    let mut waited = 0;
    while !fds_under(disk.path()).is_empty() && waited < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(
        fds_under(disk.path()),
        Vec::<String>::new(),
        "no descriptor left open"
    );
    assert!(
        free() + (2 << 20) >= before,
        "the spilled file's space is back: {} of {before}",
        free()
    );
    assert_eq!(fill_files(&data), Vec::<PathBuf>::new());
    assert!(support::files_under(&data.join("blobs")).is_empty());
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.headers()["x-cache"], "BYPASS", "never stored nor indexed");
    assert!(read_body(r).await == big);
}

/// `GET path` as HTTP/1.0 over a raw socket: the head, the body bytes after it, and whether
/// the connection ended in an error (a reset) rather than a plain close.
async fn http10_get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0; 1 << 20];
    let reset = loop {
        match s.read(&mut buf).await {
            Ok(0) => break false,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(_) => break true,
        }
    };
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = all.split_off(at);
    (String::from_utf8_lossy(&all).into_owned(), body, reset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_never_sees_a_cut_spill_as_complete() {
    let test = "an_http10_client_never_sees_a_cut_spill_as_complete";
    let Some(disk) = Tmpfs::mount(test, 24) else {
        return;
    };
    let up = FakeRegistry::start().await;
    let big = bytes_of(40 << 20, 35);
    let d = up.put_blob(&big);
    up.set_blob_mode(BlobMode::Chunked { corrupt_at: None });
    *up.state.chunk_delay.lock().unwrap() = Some(Duration::from_millis(2));
    // The rest from the source has one byte flipped.
    *up.state.range_hook.lock().unwrap() = Some(hook(|b, a| {
        let n = b.len();
        let mut v = b[a..].to_vec();
        v[100] ^= 1;
        partial(v, format!("bytes {a}-{}/{n}", n - 1))
    }));
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), &disk.path().join("data"))
            .tables("[cache]\nmin_free = \"1MiB\"\n"),
    )
    .await;
    let (head, body, reset) = http10_get(w.addr, &format!("/v2/app/blobs/{d}")).await;
    eprintln!(
        "{}\n{} body bytes of {}, reset {reset}; digest matches: {}",
        head.trim(),
        body.len(),
        big.len(),
        sha256(&body) == d
    );
    // Waiting for the verdict, the spilled fill has none to give: an error status, not a body.
    assert!(head.contains(" 503 "), "{head}");
    let delimited = head.to_ascii_lowercase().contains("content-length")
        || head.to_ascii_lowercase().contains("chunked");
    assert!(
        reset || delimited,
        "a close-delimited body cut by wharf reads as complete: {} bytes, not the blob",
        body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_never_sees_a_cut_fill_as_complete() {
    // No disk fault: a fill of unknown size whose bytes are bad (the same framing as a spill).
    let up = FakeRegistry::start().await;
    let big = bytes_of(4 << 20, 36);
    let d = up.put_blob(&big);
    up.set_blob_mode(BlobMode::Chunked {
        corrupt_at: Some(1000),
    });
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path())).await;
    let (head, body, reset) = http10_get(w.addr, &format!("/v2/app/blobs/{d}")).await;
    eprintln!("{}\n{} body bytes, reset {reset}", head.trim(), body.len());
    let delimited = head.to_ascii_lowercase().contains("content-length")
        || head.to_ascii_lowercase().contains("chunked");
    assert!(
        reset
            || delimited
            || !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200"),
        "a close-delimited body cut by wharf reads as complete: {} bytes, not the blob",
        body.len()
    );
}
