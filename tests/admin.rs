//! The admin API's one guard, from the outside: every `/admin/` route (gc and stats included)
//! refuses a foreign `Host`, a relayed request, and any request without the admin secret (what
//! a bare reverse proxy or a web page in a browser would send), and nothing is written or
//! evicted when it refuses.

mod support;
use support::*;

use wharf_storage::Digest;

const SECRET_HEADER: &str = "x-wharf-admin-token";

/// A wharf with one manifest cached from the fake upstream; its digest.
async fn cached_wharf(up: &FakeRegistry, dir: &std::path::Path) -> (Wharf, Digest) {
    let w = Wharf::start(&up.url(), dir, "").await;
    let (d, _) = up.put_image("app", "v1", &[bytes_of(20_000, 7)]);
    let r = get(w.url(&format!("/v2/app/manifests/{d}"))).await;
    assert_eq!(r.status(), 200);
    let d = Digest::parse(&d).unwrap();
    assert!(w.state.storage.blobs.contains(&d));
    (w, d)
}

/// `Host` as a reverse proxy that rewrites it to its upstream would send it.
fn loopback_host(w: &Wharf) -> String {
    w.addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_gc_refuses_a_foreign_host_header() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (w, d) = cached_wharf(&up, dir.path()).await;
    // Even with the secret: a DNS name in Host is a rebinding page, not this machine's CLI.
    let r = client()
        .post(w.url("/admin/gc?target=0"))
        .header("host", "evil.example")
        .header(SECRET_HEADER, w.admin_secret())
        .sent()
        .await;
    assert_eq!(r.status(), 403);
    assert!(
        w.state.storage.blobs.contains(&d),
        "a refused gc evicted the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stats_refuses_a_foreign_host_header() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = cached_wharf(&up, dir.path()).await;
    for host in ["evil.example", "evil.example:5000", "wharf.internal"] {
        let r = client()
            .get(w.url("/admin/stats"))
            .header("host", host)
            .header(SECRET_HEADER, w.admin_secret())
            .sent()
            .await;
        assert_eq!(r.status(), 403, "{host}");
        let body = read_text(r).await;
        assert!(
            !body.contains("app") && !body.contains("top_repositories"),
            "{body}"
        );
    }
    // Relayed by a proxy that says so: refused too.
    let r = client()
        .get(w.url("/admin/stats"))
        .header("x-forwarded-for", "203.0.113.9")
        .header(SECRET_HEADER, w.admin_secret())
        .sent()
        .await;
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_requests_without_the_admin_secret() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (w, cached) = cached_wharf(&up, dir.path()).await;
    let c = client();
    let host = loopback_host(&w);
    let blob = bytes_of(1000, 99);
    let digest = sha256(&blob);

    // A bare `proxy_pass`: loopback peer, Host rewritten to loopback, no forwarding header, and
    // no secret (or a wrong one). The write the issue reported first.
    for secret in [None, Some("0".repeat(64)), Some(String::new())] {
        let mut r = c
            .put(w.url(&format!("/admin/blobs/{digest}?size=1000")))
            .header("host", &host)
            .body(blob.clone());
        if let Some(s) = &secret {
            r = r.header(SECRET_HEADER, s);
        }
        let r = r.sent().await;
        assert_eq!(r.status(), 403, "secret {secret:?}");
    }
    assert!(
        !w.state
            .storage
            .blobs
            .contains(&Digest::parse(&digest).unwrap())
    );

    // Every route under /admin/, whatever the method, behind the same guard.
    let json = r#"{"reason":"x","digests":[]}"#;
    let routes = [
        ("GET", format!("/admin/blobs/{cached}")),
        ("HEAD", format!("/admin/blobs/{cached}")),
        ("POST", "/admin/blobs".to_string()),
        ("POST", "/admin/pins".to_string()),
        ("POST", "/admin/export".to_string()),
        ("POST", "/admin/import".to_string()),
        ("GET", "/admin/stats".to_string()),
        ("POST", "/admin/gc?target=0".to_string()),
        ("GET", "/admin/gc".to_string()),
        ("GET", "/admin/no-such-route".to_string()),
        ("GET", "/admin/".to_string()),
    ];
    for (method, path) in &routes {
        let r = c
            .request(method.parse().unwrap(), w.url(path))
            .header("host", &host)
            .header("content-type", "application/json")
            .body(json)
            .sent()
            .await;
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    assert!(w.state.storage.blobs.contains(&cached), "gc ran unguarded");
    assert_eq!(w.state.storage.index.pins().count(), 0);

    // With the secret, the same upload is stored.
    let r = c
        .put(w.url(&format!("/admin/blobs/{digest}?size=1000")))
        .header("host", &host)
        .header(SECRET_HEADER, w.admin_secret())
        .body(blob.clone())
        .sent()
        .await;
    assert_eq!(r.status(), 201);
    assert!(
        w.state
            .storage
            .blobs
            .contains(&Digest::parse(&digest).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_post_without_custom_header_is_refused() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (w, cached) = cached_wharf(&up, dir.path()).await;
    let c = client();
    // What a page in a browser on this machine can send without a CORS preflight: a form post
    // to http://127.0.0.1:<port>/..., or a no-cors fetch with a text/plain body.
    let form = c
        .post(w.url("/admin/gc?target=0"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("dry_run=false")
        .sent()
        .await;
    assert_eq!(form.status(), 403);
    assert!(
        w.state.storage.blobs.contains(&cached),
        "a form post ran gc"
    );

    let before = files_under(&dir.path().join("blobs")).len();
    let fetch = c
        .post(w.url("/admin/blobs"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body("written by a web page")
        .sent()
        .await;
    assert_eq!(fetch.status(), 403);
    assert_eq!(files_under(&dir.path().join("blobs")).len(), before);

    let pins = c
        .post(w.url("/admin/pins"))
        .header("content-type", "text/plain")
        .body(format!(r#"{{"reason":"x","digests":["{cached}"]}}"#))
        .sent()
        .await;
    assert_eq!(pins.status(), 403);
    assert_eq!(w.state.storage.index.pins().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_internal_errors_do_not_leak_paths_or_os_errors() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = cached_wharf(&up, dir.path()).await;
    // No temp or spare directory to write into: storing fails inside wharf.
    let layout = &w.state.storage.layout;
    for d in [layout.tmp_dir(), layout.spare_dir()] {
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::write(&d, b"not a directory").unwrap();
    }
    let r = client()
        .post(w.url("/admin/blobs"))
        .header(SECRET_HEADER, w.admin_secret())
        .body("bytes")
        .sent()
        .await;
    assert_eq!(r.status(), 500);
    let body = read_text(r).await;
    assert!(
        !body.contains(&dir.path().display().to_string())
            && !body.contains("tmp")
            && !body.to_lowercase().contains("directory"),
        "{body}"
    );
}
