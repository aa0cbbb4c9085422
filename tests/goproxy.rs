//! Black-box tests of the Go module proxy over real sockets, against a fake GOPROXY on port 0.

mod support;
use support::*;

const SUM_GOLANG_ORG_KEY: &str =
    "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

async fn setup(go_keys: &str) -> (GoFake, Wharf, tempfile::TempDir) {
    let up = GoFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::go_only(&up.url(), dir.path()).go_keys(go_keys)).await;
    (up, w, dir)
}

fn publish(up: &GoFake) -> Vec<u8> {
    let zip = module_zip(
        "example.com/Mod",
        "v1.2.0",
        &[
            ("go.mod", "module example.com/Mod\n"),
            ("a.go", "package mod\n"),
        ],
    );
    up.put_module(
        "example.com/!mod",
        "v1.2.0",
        "module example.com/Mod\n",
        zip.clone(),
    );
    up.put(
        "example.com/!mod/@latest",
        r#"{"Version":"v1.2.0","Time":"2024-01-02T03:04:05Z"}"#,
    );
    zip
}

#[tokio::test]
async fn every_endpoint_is_served_and_immutable_files_are_fetched_once() {
    let (up, w, _d) = setup("").await;
    let zip = publish(&up);
    let base = w.url("/go/example.com/!mod");
    for (path, ct) in [
        ("/@v/list", "text/plain; charset=utf-8"),
        ("/@latest", "application/json"),
        ("/@v/v1.2.0.info", "application/json"),
        ("/@v/v1.2.0.mod", "text/plain; charset=utf-8"),
        ("/@v/v1.2.0.zip", "application/zip"),
    ] {
        let r = get(format!("{base}{path}")).await;
        expect_status(&r, 200, "{path}");
        assert_eq!(r.headers()["content-type"], ct, "{path}");
        assert_eq!(r.headers()["x-cache"], "MISS", "{path}");
        assert!(!read_body(r).await.is_empty(), "{path}");
    }
    let r = get(format!("{base}/@v/v1.2.0.zip")).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, zip);
    for kind in ["info", "mod", "zip"] {
        assert_eq!(
            up.count(&format!("v1.2.0.{kind}")),
            1,
            "{kind} fetched once"
        );
    }
}

#[tokio::test]
async fn lists_are_revalidated_after_their_ttl_and_served_stale_when_upstream_fails() {
    let (up, w, _d) = setup("list_ttl = \"0s\"").await;
    publish(&up);
    let url = w.url("/go/example.com/!mod/@v/list");
    assert_eq!(get(&url).await.body_text().await, "v1.2.0\n");
    up.put("example.com/!mod/@v/list", "v1.2.0\nv1.3.0\n");
    let r = get(&url).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(read_text(r).await, "v1.2.0\nv1.3.0\n");
    up.fail_with(Some(503));
    let r = get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(read_text(r).await, "v1.2.0\nv1.3.0\n");
}

#[tokio::test]
async fn fresh_lists_do_not_go_upstream() {
    let (up, w, _d) = setup("list_ttl = \"1h\"").await;
    publish(&up);
    let url = w.url("/go/example.com/!mod/@v/list");
    get(&url).await;
    let r = get(&url).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(up.count("@v/list"), 1);
}

#[tokio::test]
async fn not_found_is_404_and_cached_and_upstream_failure_is_5xx() {
    let (up, w, _d) = setup("").await;
    for _ in 0..3 {
        let r = get(w.url("/go/example.com/nope/@v/list")).await;
        assert_eq!(r.status(), 404);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
    }
    assert_eq!(
        up.count("example.com/nope"),
        1,
        "negative answers are cached"
    );
    *up.state.missing_status.lock().unwrap() = Some(410);
    let r = get(w.url("/go/example.com/gone/@v/v1.0.0.mod")).await;
    expect_status(&r, 404, "410 upstream is 'not found' too");
    up.fail_with(Some(500));
    let r = get(w.url("/go/example.com/other/@v/v1.0.0.mod")).await;
    expect_status(&r, 502, "a broken upstream must not look like 'not found'");
    let text = read_text(r).await;
    assert!(
        text.lines().count() <= 8 && text.contains("example.com/other"),
        "{text}"
    );
}

#[tokio::test]
async fn upstreams_are_tried_in_order_on_not_found_only() {
    let first = GoFake::start().await;
    let second = GoFake::start().await;
    publish(&second);
    let dir = tempfile::tempdir().unwrap();
    let config = WharfConfig::go_only(&first.url(), dir.path());
    let w = Wharf::serve(config.go_upstreams(&[&first.url(), &second.url()])).await;
    let r = get(w.url("/go/example.com/!mod/@v/v1.2.0.mod")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(first.count("v1.2.0.mod"), 1);
    assert_eq!(second.count("v1.2.0.mod"), 1);
    first.fail_with(Some(500));
    let r = get(w.url("/go/example.com/!mod/@v/v1.2.0.info")).await;
    expect_status(
        &r,
        502,
        "an error on the first upstream is not a fall-through",
    );
    assert_eq!(second.count("v1.2.0.info"), 0);
}

#[tokio::test]
async fn oversize_go_mod_is_refused_and_not_cached() {
    let (up, w, dir) = setup("").await;
    let big = format!("module example.com/big\n// {}\n", "x".repeat(16 << 20));
    up.put("example.com/big/@v/v1.0.0.mod", big);
    let r = get(w.url("/go/example.com/big/@v/v1.0.0.mod")).await;
    assert!(r.status() == 502 || r.bytes().await.is_err());
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn info_for_another_version_is_refused() {
    let (up, w, dir) = setup("").await;
    up.put("example.com/m/@v/v1.0.0.info", r#"{"Version":"v9.9.9"}"#);
    let r = get(w.url("/go/example.com/m/@v/v1.0.0.info")).await;
    let served = r.status() == 200 && r.bytes().await.is_ok();
    assert!(!served, "a mismatched .info must never be served complete");
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn private_modules_come_from_their_source_and_never_reach_public_services() {
    let public = GoFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let vdir = store.path().join("corp.example.com/tool/@v");
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::write(vdir.join("list"), "v0.1.0\n").unwrap();
    std::fs::write(vdir.join("v0.1.0.info"), r#"{"Version":"v0.1.0"}"#).unwrap();
    std::fs::write(vdir.join("v0.1.0.mod"), "module corp.example.com/tool\n").unwrap();
    let zip = module_zip(
        "corp.example.com/tool",
        "v0.1.0",
        &[("go.mod", "module corp.example.com/tool\n")],
    );
    std::fs::write(vdir.join("v0.1.0.zip"), &zip).unwrap();
    let private = format!(
        "[[go.private]]\npattern = \"corp.example.com\"\ndir = {}\n",
        quote(&store.path().to_string_lossy())
    );
    let config = WharfConfig::go_only(&public.url(), dir.path())
        .sumdb("sum.golang.org", SUM_GOLANG_ORG_KEY, &public.url())
        .tables(&private);
    let w = Wharf::serve(config).await;
    for p in version_files("v0.1.0") {
        let r = get(w.url(&format!("/go/corp.example.com/tool/{p}"))).await;
        expect_status(&r, 200, "{p}");
    }
    assert_eq!(
        get(w.url("/go/corp.example.com/tool/@v/v0.1.0.zip"))
            .await
            .body()
            .await,
        zip
    );
    let r = get(w.url("/go/corp.example.com/missing/@v/list")).await;
    assert_eq!(r.status(), 404);
    let r = get(w.url("/go/sumdb/sum.golang.org/lookup/corp.example.com/tool@v0.1.0")).await;
    assert_eq!(r.status(), 403);
    assert!(
        public.seen().is_empty(),
        "public upstream saw {:?}",
        public.seen()
    );
}

#[tokio::test]
async fn sumdb_supported_lookup_and_tiles_are_proxied_and_cached() {
    let db = GoFake::start().await;
    db.put(
        "lookup/example.com/m@v1.0.0",
        "7\nexample.com/m v1.0.0 h1:x=\n\nnote\n",
    );
    db.put("tile/8/0/000", vec![1u8; 32 * 256]);
    db.put("tile/8/0/001.p/5", vec![2u8; 32 * 5]);
    let dir = tempfile::tempdir().unwrap();
    let config = WharfConfig::go_only(&db.url(), dir.path())
        .sumdb("sum.golang.org", SUM_GOLANG_ORG_KEY, &db.url())
        .go_keys("sumdb_ttl = \"0s\"\nverify = false");
    let w = Wharf::serve(config).await;
    assert_eq!(
        status_of(w.url("/go/sumdb/sum.golang.org/supported")).await,
        200
    );
    assert_eq!(
        status_of(w.url("/go/sumdb/other.example/supported")).await,
        404
    );
    for p in [
        "lookup/example.com/m@v1.0.0",
        "tile/8/0/000",
        "tile/8/0/001.p/5",
    ] {
        let r = get(w.url(&format!("/go/sumdb/sum.golang.org/{p}"))).await;
        expect_status(&r, 200, "{p}");
    }
    db.fail_with(Some(503));
    for p in ["lookup/example.com/m@v1.0.0", "tile/8/0/000"] {
        let r = get(w.url(&format!("/go/sumdb/sum.golang.org/{p}"))).await;
        assert_eq!(r.headers()["x-cache"], "HIT", "{p} is immutable");
    }
    let r = get(w.url("/go/sumdb/sum.golang.org/tile/8/0/001.p/5")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(db.count("tile/8/0/000"), 1);
}

#[tokio::test]
async fn hostile_go_paths_get_4xx_and_no_upstream_request() {
    let (up, w, dir) = setup("").await;
    let before = files_under(dir.path()).len();
    for (path, status) in [
        ("/go/example.com/m/@v/../../../etc/passwd", 400),
        ("/go/example.com/m/@v/%2e%2e.zip", 400),
        ("/go/Example.com/m/@v/list", 400),
        ("/go/example.com/!/@v/list", 400),
        ("/go/example.com/m!X/@v/list", 400),
        ("/go/example.com/m/@v/-v1.0.0.info", 400),
        ("/go/example.com/m/@v/master.zip", 400),
        ("/go/nodot/@v/list", 400),
        ("/go/example.com/m/@v/v1.0.0.exe", 404),
        ("/go/sumdb/sum.golang.org/latest", 404),
        ("/go/sumdb/sum.golang.org/tile/8/0/../../x", 400),
    ] {
        let (got, body) = raw_get(w.addr, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(!body.is_empty(), "{path}: errors say why");
    }
    assert!(up.seen().is_empty(), "no upstream request: {:?}", up.seen());
    assert_eq!(files_under(dir.path()).len(), before);
}
