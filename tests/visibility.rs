//! Who may read what: content is stored once by digest, but served for an (upstream,
//! repository) pair only when that pair is known to hold it. A digest learned elsewhere opens
//! nothing, whichever upstream, repository or spelling it is asked under. Also: a blob fill
//! never writes more than the blob can be.

mod support;
use support::*;

use std::path::Path;
use std::sync::atomic::Ordering;

const USER: &str = "ci";
const PASSWORD: &str = "visibility pass";

/// `private.test` (wharf logs in to it; an access rule protects it) and `public.test` (the
/// default upstream, anonymous).
fn two_upstreams(private: &FakeRegistry, public: &FakeRegistry, dir: &Path) -> WharfConfig {
    let hash = wharf::access::hash_password(PASSWORD).unwrap();
    WharfConfig::new(dir)
        .timeouts()
        .default_upstream("public.test")
        .upstream("private.test", &private.url())
        .login(&dir.join("upstream-password"), "mirror-secret")
        .upstream("public.test", &public.url())
        .tables(&format!(
            "[access]\n[[access.user]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n\
             [[access.rule]]\nprotocol = \"registry\"\nprefix = \"private.test/\"\nrequire_auth = true\n"
        ))
}

/// An OCI image manifest whose config and one layer are both `digest` with the sizes given;
/// `layer_extra` is added to the layer descriptor (e.g. foreign-layer `urls`).
fn manifest_naming(digest: &str, config_size: u64, layer_size: u64, layer_extra: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":{layer_size}{layer_extra}}}]}}"#
    )
}

/// An authorised client pulls `paths` (each must answer 200): they are cached.
async fn pull_as_user(w: &Wharf, paths: &[String]) {
    for path in paths {
        let r = client()
            .get(w.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .sent()
            .await;
        assert_eq!(r.status(), 200, "{path}");
        read_body(r).await;
    }
}

#[tokio::test]
async fn private_content_is_not_served_through_another_upstream_or_repository() {
    let private = FakeRegistry::start().await;
    let public = FakeRegistry::start().await;
    let secret = bytes_of(50_000, 31);
    let layer = sha256(&secret);
    let (manifest, _) = private.put_image("team/secret", "v1", std::slice::from_ref(&secret));
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(two_upstreams(&private, &public, dir.path())).await;
    let c = client();
    // An authorised client pulls the private image: it is cached.
    pull_as_user(
        &w,
        &[
            "/v2/private.test/team/secret/manifests/v1".to_string(),
            format!("/v2/private.test/team/secret/blobs/{layer}"),
        ],
    )
    .await;
    // Anonymous clients ask for the same digests through every other path.
    for (path, kind) in [
        (format!("/v2/public.test/any/repo/blobs/{layer}"), "blob"),
        (format!("/v2/library/x/blobs/{layer}"), "blob"),
        (format!("/v2/x/blobs/{layer}?ns=public.test"), "blob"),
        (
            format!("/v2/public.test/any/repo/manifests/{manifest}"),
            "manifest",
        ),
        (format!("/v2/library/x/manifests/{manifest}"), "manifest"),
    ] {
        for head in [false, true] {
            let req = if head {
                c.head(w.url(&path))
            } else {
                c.get(w.url(&path))
            };
            let r = req.sent().await;
            assert_eq!(r.status(), 404, "{path} (head: {head}) was served");
            assert_ne!(
                r.headers().get("x-cache").map(|v| v.as_bytes()),
                Some(&b"HIT"[..])
            );
            let body = read_body(r).await;
            assert!(
                !body
                    .windows(64)
                    .any(|w| secret.windows(64).next() == Some(w))
            );
        }
        let _ = kind;
    }
    // The public upstream was asked whether it holds them (it does not); the private one was
    // never asked on an anonymous client's behalf.
    assert!(public.count("HEAD", &layer) >= 2, "{:?}", public.seen());
    assert_eq!(private.count("HEAD", "/v2/team/secret/blobs/"), 0);
    // The protected upstream's other repositories stay behind the rule.
    let r = get(w.url(&format!("/v2/private.test/other/repo/blobs/{layer}"))).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn content_of_an_anonymous_upstream_is_confirmed_per_repository() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = bytes_of(20_000, 32);
    let d = up.put_blob(&data);
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    let c = client();
    let get = |repo: &str| c.get(w.url(&format!("/v2/{repo}/blobs/{d}"))).send();
    assert_eq!(get("team/a").await.unwrap().bytes().await.unwrap(), data);
    up.state.hidden_repos.lock().unwrap().push("team/b".into());
    let r = get("team/b").await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "served to a repository that does not hold it"
    );
    let heads = up.count("HEAD", "/v2/team/c/blobs/");
    let r = get("team/c").await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(read_body(r).await, data);
    assert_eq!(up.count("HEAD", "/v2/team/c/blobs/"), heads + 1);
    get("team/c").await.unwrap().bytes().await.unwrap();
    assert_eq!(
        up.count("HEAD", "/v2/team/c/blobs/"),
        heads + 1,
        "confirmed once is enough"
    );
    assert_eq!(up.count("GET", "/blobs/"), 1, "bytes were fetched once");
}

#[tokio::test]
async fn a_pulled_image_serves_shared_blobs_after_one_confirmation_and_offline_after_a_restart() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layer = bytes_of(30_000, 33);
    let ld = sha256(&layer);
    up.put_image("team/app", "v1", std::slice::from_ref(&layer));
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    assert_eq!(status_of(w.url("/v2/team/app/manifests/v1")).await, 200);
    // Cache the layer through another repository of the same upstream first.
    up.state
        .blobs
        .lock()
        .unwrap()
        .insert(ld.clone(), layer.clone());
    get(w.url(&format!("/v2/team/other/blobs/{ld}")))
        .await
        .body()
        .await;
    // team/app's manifest lists it: a listing is not proof (foreign layers), so the upstream
    // confirms once, and the cached bytes are served.
    let r = get(w.url(&format!("/v2/team/app/blobs/{ld}"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(
        up.count("HEAD", "/v2/team/app/blobs/"),
        1,
        "{:?}",
        up.seen()
    );
    assert_eq!(up.count("GET", "/blobs/"), 1, "bytes fetched once");
    w.stop().await;
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).offline(true)).await;
    let r = get(w.url(&format!("/v2/team/app/blobs/{ld}"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_body(r).await, layer);
    let r = get(w.url(&format!("/v2/team/never/blobs/{ld}"))).await;
    assert_eq!(
        r.status(),
        404,
        "offline, an unlinked repository gets nothing"
    );
}

#[tokio::test]
async fn blob_fill_stops_at_the_size_its_manifest_declares() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layer = bytes_of(100_000, 34);
    let ld = sha256(&layer);
    up.put_image("team/app", "v1", &[layer]);
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    get(w.url("/v2/team/app/manifests/v1")).await.body().await;
    up.set_blob_mode(BlobMode::Endless);
    let r = get(w.url(&format!("/v2/team/app/blobs/{ld}"))).await;
    assert!(
        read_at_most(r, 200_000).await <= 100_000,
        "more than the declared size reached the client"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = up.state.endless_sent.load(Ordering::SeqCst);
    assert!(sent < 32 << 20, "wharf kept reading junk: {sent} bytes");
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert!(
        !files_under(&dir.path().join("blobs"))
            .iter()
            .any(|p| p.ends_with(&ld[7..]))
    );
}

#[tokio::test]
async fn blob_fill_without_a_declared_size_stops_at_max_blob_size() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = bytes_of(10_000, 35);
    let d = up.put_blob(&blob);
    up.set_blob_mode(BlobMode::Endless);
    let w = Wharf::start(&up.url(), dir.path(), "max_blob_size = \"1MiB\"").await;
    let r = get(w.url(&format!("/v2/team/app/blobs/{d}"))).await;
    assert!(read_at_most(r, 2 << 20).await <= 1 << 20);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = up.state.endless_sent.load(Ordering::SeqCst);
    assert!(sent < 32 << 20, "wharf kept reading junk: {sent} bytes");
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

/// Reads a body until it ends, fails or passes `cap` bytes; returns how many arrived.
async fn read_at_most(mut r: reqwest::Response, cap: usize) -> usize {
    let mut n = 0;
    while let Ok(Some(chunk)) = r.chunk().await {
        n += chunk.len();
        if n > cap {
            break;
        }
    }
    n
}

#[tokio::test]
async fn a_manifest_listing_a_private_digest_does_not_open_it() {
    let private = FakeRegistry::start().await;
    let public = FakeRegistry::start().await;
    let secret = bytes_of(40_000, 36);
    let layer = sha256(&secret);
    let (pm, _) = private.put_image("team/secret", "v1", std::slice::from_ref(&secret));
    // The attacker's repository on an honest public registry: a manifest whose "foreign" layer
    // is the private layer, and an index listing the private manifest. The registry never held
    // either (it answers 404 for them in that repository).
    let evil = manifest_naming(
        &layer,
        40_000,
        40_000,
        r#","urls":["https://example.com/x"]"#,
    );
    public.put_manifest(
        "evil/e",
        Some("latest"),
        evil.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{pm}","size":400,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
    );
    public.put_manifest(
        "evil/i",
        Some("latest"),
        index.as_bytes(),
        "application/vnd.oci.image.index.v1+json",
    );
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(two_upstreams(&private, &public, dir.path())).await;
    // An authorised client pulls the private image: it is cached.
    pull_as_user(
        &w,
        &[
            "/v2/private.test/team/secret/manifests/v1".to_string(),
            format!("/v2/private.test/team/secret/blobs/{layer}"),
        ],
    )
    .await;
    for tag in ["/v2/evil/e/manifests/latest", "/v2/evil/i/manifests/latest"] {
        assert_eq!(status_of(w.url(tag)).await, 200, "{tag}");
    }
    for path in [
        format!("/v2/evil/e/blobs/{layer}"),
        format!("/v2/evil/i/manifests/{pm}"),
    ] {
        assert_eq!(
            status_of(w.url(&path)).await,
            404,
            "{path}: listed by a public manifest, served"
        );
    }
}

#[tokio::test]
async fn a_declared_size_cannot_lift_max_blob_size() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = bytes_of(10_000, 37);
    let d = up.put_blob(&blob);
    let manifest = manifest_naming(&d, 10_000, 10_000_000_000_000, "");
    up.put_manifest(
        "team/app",
        Some("v1"),
        manifest.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let w = Wharf::start(&up.url(), dir.path(), "max_blob_size = \"1MiB\"").await;
    get(w.url("/v2/team/app/manifests/v1")).await;
    up.set_blob_mode(BlobMode::Endless);
    let r = get(w.url(&format!("/v2/team/app/blobs/{d}"))).await;
    assert!(read_at_most(r, 2 << 20).await <= 1 << 20);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = up.state.endless_sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 << 20,
        "a 10 TB declaration lifted the cap: {sent} bytes read"
    );
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn a_tag_naming_a_digest_cached_elsewhere_must_hand_over_the_bytes() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (m, body) = up.put_image("team/a", "v1", &[bytes_of(1_000, 38)]);
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    assert_eq!(status_of(w.url("/v2/team/a/manifests/v1")).await, 200);
    // team/b's tag names that digest in its HEAD answer, but team/b cannot serve the bytes.
    up.put_manifest(
        "team/b",
        Some("latest"),
        &body,
        "application/vnd.oci.image.manifest.v1+json",
    );
    up.state
        .manifests
        .lock()
        .unwrap()
        .remove(&("team/b".to_string(), m.clone()));
    assert_eq!(
        status_of(w.url("/v2/team/b/manifests/latest")).await,
        404,
        "a digest header opened content cached from team/a"
    );
    assert_eq!(up.count("GET", &format!("/v2/team/b/manifests/{m}")), 1);
}

#[tokio::test]
async fn another_repositorys_manifest_cannot_lower_a_blobs_size_limit() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layer = bytes_of(200_000, 39);
    let ld = sha256(&layer);
    up.put_image("team/app", "v1", std::slice::from_ref(&layer));
    // evil/x declares the same layer as 1 byte long.
    let evil = manifest_naming(&ld, 1, 1, "");
    up.put_manifest(
        "evil/x",
        Some("latest"),
        evil.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let w = Wharf::start(&up.url(), dir.path(), "").await;
    get(w.url("/v2/evil/x/manifests/latest")).await;
    // A client that knows team/app's layer (from its own manifest) pulls it.
    let r = get(w.url(&format!("/v2/team/app/blobs/{ld}"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        read_body(r).await,
        layer,
        "evil/x's declaration cut team/app's blob"
    );
}
