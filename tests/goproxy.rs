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
async fn mod_and_info_files_are_kept_in_the_index_and_served_from_it_after_a_restart() {
    let (up, w, dir) = setup("").await;
    let zip = publish(&up);
    let base = w.url("/go/example.com/!mod/@v/v1.2.0");
    let mut bodies = Vec::new();
    for kind in ["info", "mod", "zip"] {
        let r = get(format!("{base}.{kind}")).await;
        expect_status(&r, 200, kind);
        bodies.push(read_body(r).await);
    }
    assert_eq!(bodies[1], b"module example.com/Mod\n");
    // Three objects (committed just after their last bytes went out), one file: the zip.
    for _ in 0..200 {
        if w.state.storage.blobs.list().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(w.state.storage.blobs.list().unwrap().len(), 3);
    let files = files_under(&dir.path().join("blobs"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), zip);
    let w = w.restart().await;
    let base = w.url("/go/example.com/!mod/@v/v1.2.0");
    for (kind, body) in ["info", "mod", "zip"].iter().zip(&bodies) {
        let r = get(format!("{base}.{kind}")).await;
        expect_status(&r, 200, kind);
        assert_eq!(r.headers()["x-cache"], "HIT", "{kind}");
        assert_eq!(&read_body(r).await, body, "{kind}");
        assert_eq!(
            up.count(&format!("v1.2.0.{kind}")),
            1,
            "{kind} fetched once"
        );
    }
    drop(w);
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

/// `n` GETs of `url` at once, each answer fully read (a body cut short fails the test).
async fn all_at_once(url: &str, n: usize) -> Vec<Answer> {
    let requests = (0..n).map(|_| Answer::read(client().get(url)));
    futures_util::future::join_all(requests).await
}

/// Asserts a refusal as the go command reads it: 502, `text/plain`, one line: `reason`.
#[track_caller]
fn expect_refused(a: &Answer, reason: &str) {
    assert_eq!(a.status, 502, "{}", a.describe());
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{}",
        a.describe()
    );
    let text = String::from_utf8_lossy(&a.body);
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(text.trim_end().starts_with(reason), "{text:?}");
}

#[tokio::test]
async fn a_zip_breaking_the_zip_rules_is_refused_with_its_reason_once_for_every_request() {
    let (up, w, dir) = setup("").await;
    publish(&up);
    // Its files sit under another module's prefix.
    let zip = module_zip(
        "example.com/other",
        "v1.0.0",
        &[("go.mod", "module example.com/other\n")],
    );
    up.put("example.com/bad/@v/v1.0.0.zip", zip);
    up.delay(Some(std::time::Duration::from_millis(300)));
    let url = w.url("/go/example.com/bad/@v/v1.0.0.zip");
    for a in all_at_once(&url, 8).await {
        expect_refused(
            &a,
            "wharf: example.com/bad@v1.0.0.zip: invalid module zip: \
             \"example.com/other@v1.0.0/go.mod\": path does not have prefix \
             \"example.com/bad@v1.0.0/\"",
        );
    }
    assert_eq!(up.count("bad/@v/v1.0.0.zip"), 1, "one upstream fetch for 8");
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    // Still serving, and what is good is cached as before.
    up.delay(None);
    let r = get(w.url("/go/example.com/!mod/@v/v1.2.0.mod")).await;
    expect_status(&r, 200, "a good file after the refusals");
    assert_eq!(read_text(r).await, "module example.com/Mod\n");
}

#[tokio::test]
async fn a_mod_over_the_size_limit_is_refused_with_its_reason_with_or_without_a_length() {
    let (up, w, dir) = setup("").await;
    let big = format!("module example.com/big\n// {}\n", "x".repeat(16 << 20));
    up.put("example.com/big/@v/v1.0.0.mod", big);
    up.delay(Some(std::time::Duration::from_millis(300)));
    let url = w.url("/go/example.com/big/@v/v1.0.0.mod");
    for (n, chunked) in [(1, false), (2, true)] {
        // Without a Content-Length the limit is only found while the bytes stream in.
        up.chunked(chunked);
        for a in all_at_once(&url, 4).await {
            expect_refused(
                &a,
                "wharf: example.com/big@v1.0.0.mod: the .mod is larger than the 16777216-byte limit",
            );
        }
        assert_eq!(up.count("big/@v/v1.0.0.mod"), n, "chunked: {chunked}");
    }
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

/// `tests/fixtures/sumdb/tree.json` (written by x/mod's sumdb packages) as a checksum database
/// of 300 records on `db`; returns its name and verifier key. Its records hold made-up hashes,
/// so no real file of `example.com/mod0@v1.0.0` matches them.
fn fixture_sumdb(db: &GoFake) -> (String, String, serde_json::Value) {
    use base64::Engine as _;
    let tree: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/sumdb/tree.json")).unwrap();
    for (path, data) in tree["tiles"].as_object().unwrap() {
        let data = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        db.put(path, data);
    }
    for (key, body) in tree["lookups"].as_object().unwrap() {
        if let Some(m) = key.strip_prefix("300 ") {
            db.put(&format!("lookup/{m}"), body.as_str().unwrap());
        }
    }
    let vkey = tree["vkey"].as_str().unwrap().to_owned();
    let name = vkey.split('+').next().unwrap().to_owned();
    (name, vkey, tree)
}

#[tokio::test]
async fn a_zip_the_checksum_database_disagrees_with_is_refused_naming_both_hashes() {
    let (up, db) = (GoFake::start().await, GoFake::start().await);
    let (name, vkey, tree) = fixture_sumdb(&db);
    let recorded = tree["modules"][0]["zip_hash"].as_str().unwrap();
    assert_eq!(tree["modules"][0]["path"], "example.com/mod0");
    let zip = module_zip(
        "example.com/mod0",
        "v1.0.0",
        &[("go.mod", "module example.com/mod0\n")],
    );
    let served =
        wharf::goproxy::hash::check_and_hash_zip(zip.as_slice(), "example.com/mod0", "v1.0.0")
            .unwrap();
    assert_ne!(served, recorded);
    up.put_module(
        "example.com/mod0",
        "v1.0.0",
        "module example.com/mod0\n",
        zip.clone(),
    );
    up.delay(Some(std::time::Duration::from_millis(300)));
    let dir = tempfile::tempdir().unwrap();
    let config = WharfConfig::go_only(&up.url(), dir.path()).sumdb(&name, &vkey, &db.url());
    let w = Wharf::serve(config).await;
    let url = w.url("/go/example.com/mod0/@v/v1.0.0.zip");
    let reason = format!(
        "wharf: example.com/mod0@v1.0.0.zip: checksum mismatch: {name} says {recorded}, \
         upstream served {served}"
    );
    for a in all_at_once(&url, 8).await {
        expect_refused(&a, &reason);
    }
    assert_eq!(
        up.count("mod0/@v/v1.0.0.zip"),
        1,
        "one upstream fetch for 8"
    );
    // Nothing was stored: the next request asks upstream again and is refused again.
    expect_refused(&Answer::read(client().get(&url)).await, &reason);
    assert_eq!(up.count("mod0/@v/v1.0.0.zip"), 2);
    let stored: Vec<_> = files_under(&dir.path().join("blobs"))
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b == zip))
        .collect();
    assert!(stored.is_empty(), "the refused zip is stored: {stored:?}");
    // The go.mod disagrees with its record too.
    let a = Answer::read(client().get(w.url("/go/example.com/mod0/@v/v1.0.0.mod"))).await;
    expect_refused(
        &a,
        &format!(
            "wharf: example.com/mod0@v1.0.0.mod: checksum mismatch: {name} says {}, upstream served h1:",
            tree["modules"][0]["mod_hash"].as_str().unwrap()
        ),
    );
    let refused_mod = wharf_storage::Digest::of(b"module example.com/mod0\n");
    assert!(
        !w.state.storage.blobs.contains(&refused_mod),
        "the refused .mod is kept"
    );
    // A version no source has is a 404 that costs the checksum database nothing.
    let asked = db.count("/lookup/");
    let r = get(w.url("/go/example.com/mod0/@v/v9.9.9.zip")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(db.count("/lookup/"), asked, "{:?}", db.seen());
}

#[tokio::test]
async fn info_for_another_version_is_refused() {
    let (up, w, dir) = setup("").await;
    up.put("example.com/m/@v/v1.0.0.info", r#"{"Version":"v9.9.9"}"#);
    let r = get(w.url("/go/example.com/m/@v/v1.0.0.info")).await;
    let served = r.status() == 200 && r.bytes().await.is_ok();
    assert!(!served, "a mismatched .info must never be served complete");
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert!(
        w.state.storage.blobs.list().unwrap().is_empty(),
        "nor kept in the index"
    );
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
    let before = stored_files(dir.path()).len();
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
    assert_eq!(stored_files(dir.path()).len(), before);
}
