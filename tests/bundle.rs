//! The air-gap commands as an operator runs them: `wharf prefetch` and `wharf export` against a
//! running wharf (A) with fake upstreams, `wharf import` into a fresh data directory (B) whose
//! upstreams do not exist, then B serving everything offline with the same bytes. Also: a
//! damaged bundle is refused naming the damaged object, imports are idempotent and resume, the
//! admin API answers only to this machine, and the other import formats (OCI layout, go module
//! cache, docker save) load.

mod support;
use support::oci;
use support::*;

use std::path::{Path, PathBuf};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
const GO_MOD: &str = "module example.com/Mod\n";

/// The standard config with both fakes, listening on a free loopback port (so no command finds
/// someone else's server).
fn config_text(data: &Path, registry: &str, go: &str, offline: bool) -> String {
    WharfConfig::fakes(registry, go, data)
        .listen_anywhere()
        .offline(offline)
        .toml()
}

/// wharf in front of the fakes, online, with its data in `dir/<data>` and its config written
/// to `dir/a.toml` (for the commands).
async fn serve_online(
    dir: &Path,
    data: &str,
    reg: &FakeRegistry,
    go: &GoFake,
) -> (PathBuf, support::Wharf) {
    let data = dir.join(data);
    let text = config_text(&data, &reg.url(), &go.url(), false);
    let config = dir.join("a.toml");
    std::fs::write(&config, &text).unwrap();
    (
        config,
        support::Wharf::start_with_config(&text, &data).await,
    )
}

/// Upstreams with one image, a two-platform index and a Go module; wharf A in front of them,
/// prefetched and exported.
struct Exported {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    app: (String, Vec<u8>),
    layers: Vec<Vec<u8>>,
    index: String,
    arm64: String,
    amd64: String,
    zip: Vec<u8>,
}

async fn prefetch_and_export() -> Exported {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let layers = vec![bytes_of(300_000, 1), bytes_of(5000, 2)];
    let app = reg.put_image("test/app", "v1", &layers);
    let (amd64, b1) = reg.put_image("test/multi", "amd64", &[bytes_of(2000, 3)]);
    let (arm64, b2) = reg.put_image("test/multi", "arm64", &[bytes_of(2000, 4)]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{amd64}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{arm64}","size":{},"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
        b1.len(),
        b2.len()
    );
    let index = reg.put_manifest("test/multi", Some("v1"), index.as_bytes(), OCI_INDEX);
    let zip = module_zip(
        "example.com/Mod",
        "v1.2.0",
        &[("go.mod", GO_MOD), ("a.go", "package mod\n")],
    );
    go.put_module("example.com/!mod", "v1.2.0", GO_MOD, zip.clone());
    go.put(
        "example.com/!mod/@latest",
        r#"{"Version":"v1.2.0","Time":"2024-01-02T03:04:05Z"}"#,
    );

    let dir = tempfile::tempdir().unwrap();
    let (config, a) = serve_online(dir.path(), "a-data", &reg, &go).await;
    let server = a.url("");
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        "# what the air-gapped site needs\nfake.test/test/app:v1\nexample.com/Mod@latest  # resolved to v1.2.0\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = ok(run_wharf(&[
        "prefetch",
        "--config",
        cfg,
        "--server",
        &server,
        "--platform",
        "linux/arm64",
        "-f",
        list.to_str().unwrap(),
        "test/multi:v1",
    ])
    .await);
    let summary = stdout(&out);
    assert!(
        summary.contains("2 image(s), 1 module version(s)") && summary.contains("0 failed"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        reg.count("GET", &format!("/blobs/{}", sha256(&layers[0]))),
        1
    );
    assert_eq!(
        reg.count("GET", &format!("/manifests/{amd64}")),
        0,
        "--platform ignored"
    );
    assert_eq!(go.count("example.com/!mod/@v/v1.2.0.zip"), 1);

    // Again: everything is cached already, nothing goes upstream.
    let blob_gets = reg.count("GET", "/blobs/");
    let out = ok(run_wharf(&[
        "prefetch",
        "--config",
        cfg,
        "--server",
        &server,
        "-f",
        list.to_str().unwrap(),
    ])
    .await);
    assert!(
        stdout(&out).contains("(0 B fetched upstream"),
        "{}",
        describe(&out)
    );
    assert_eq!(reg.count("GET", "/blobs/"), blob_gets);

    let bundle = dir.path().join("site.tar");
    let out = ok(run_wharf(&[
        "export",
        "--config",
        cfg,
        "--server",
        &server,
        "--pinned",
        "-o",
        bundle.to_str().unwrap(),
    ])
    .await);
    expect_stdout(&out, "export: 2 image(s)");
    expect_stderr(&out, "is not cached; left out");
    a.stop().await;
    Exported {
        dir,
        bundle,
        app,
        layers,
        index,
        arm64,
        amd64,
        zip,
    }
}

/// Config of a wharf B whose upstreams do not exist.
fn offline_config(dir: &Path, name: &str) -> (PathBuf, String, PathBuf) {
    let data = dir.join(format!("{name}-data"));
    let text = config_text(&data, "http://127.0.0.1:9", "http://127.0.0.1:9", true);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &text).unwrap();
    (path, text, data)
}

async fn get(w: &support::Wharf, path: &str) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let r = support::client()
        .get(w.url(path))
        .header("accept", ACCEPT)
        .sent()
        .await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, read_body(r).await.to_vec(), headers)
}

/// Scans a tar for a member; returns where its bytes start.
fn member_offset(tar_path: &Path, name: &str) -> u64 {
    let mut a = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    for e in a.entries_with_seek().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            return e.raw_file_position();
        }
    }
    panic!("{name} not in {}", tar_path.display());
}

fn flipped_copy(bundle: &Path, member: &str, to: &Path) {
    std::fs::copy(bundle, to).unwrap();
    let at = member_offset(to, member) + 7;
    let mut bytes = std::fs::read(to).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(to, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_content_exports_and_imports_into_an_offline_wharf_with_the_same_digests() {
    let e = prefetch_and_export().await;
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&e.bundle).unwrap())
        .entries()
        .unwrap()
        .map(|m| m.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[0], "wharf-bundle.json");
    for n in [
        "oci/oci-layout",
        "oci/index.json",
        "go/example.com/!mod/@v/v1.2.0.zip",
        "go/example.com/!mod/@v/list",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }

    let (config, text, data) = offline_config(e.dir.path(), "b");
    let bundle = e.bundle.to_str().unwrap();
    let out = ok(run_wharf(&["import", "--config", config.to_str().unwrap(), bundle]).await);
    expect_stdout(&out, "import:");
    // Idempotent: the second run stores nothing new.
    let out = ok(run_wharf(&["import", "--config", config.to_str().unwrap(), bundle]).await);
    expect_stdout(&out, "stored 0 B");

    // In-process (B is not running): prefetch finds everything cached, export writes it again.
    let cfg = config.to_str().unwrap();
    let out = ok(run_wharf(&[
        "prefetch",
        "--config",
        cfg,
        "fake.test/test/app:v1",
        "example.com/Mod@v1.2.0",
    ])
    .await);
    assert!(
        stdout(&out).contains("(0 B fetched upstream"),
        "{}",
        describe(&out)
    );
    let again = e.dir.path().join("again.tar");
    let out = ok(run_wharf(&[
        "export",
        "--config",
        cfg,
        "--all",
        "-o",
        again.to_str().unwrap(),
    ])
    .await);
    expect_stdout(
        &out,
        "export: 2 image(s) (3 manifests, 4 blobs), 1 module version(s)",
    );

    let b = support::Wharf::start_with_config(&text, &data).await;
    let (s, body, h) = get(&b, "/v2/fake.test/test/app/manifests/v1").await;
    assert_eq!(s, 200);
    assert_eq!(h["docker-content-digest"], e.app.0.as_str());
    assert_eq!(body, e.app.1);
    for l in &e.layers {
        let (s, body, _) = get(&b, &format!("/v2/fake.test/test/app/blobs/{}", sha256(l))).await;
        assert_eq!((s, body.len()), (200, l.len()));
        assert_eq!(&body, l);
    }
    let (s, _, h) = get(&b, "/v2/fake.test/test/multi/manifests/v1").await;
    assert_eq!(
        (s, h["docker-content-digest"].to_str().unwrap()),
        (200, e.index.as_str())
    );
    let (s, _, _) = get(
        &b,
        &format!("/v2/fake.test/test/multi/manifests/{}", e.arm64),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = get(
        &b,
        &format!("/v2/fake.test/test/multi/manifests/{}", e.amd64),
    )
    .await;
    assert_eq!(
        s, 404,
        "a platform that was never prefetched cannot be served offline"
    );
    let (s, body, _) = get(&b, "/go/example.com/!mod/@v/v1.2.0.zip").await;
    assert_eq!((s, body), (200, e.zip.clone()));
    let (s, body, _) = get(&b, "/go/example.com/!mod/@v/v1.2.0.mod").await;
    assert_eq!((s, body), (200, GO_MOD.as_bytes().to_vec()));
    let (s, body, _) = get(&b, "/go/example.com/!mod/@v/list").await;
    assert_eq!(
        (s, String::from_utf8(body).unwrap()),
        (200, "v1.2.0\n".to_string())
    );

    // Imported into a running server: it goes through the admin API, and B serves it at once.
    let out = ok(run_wharf(&[
        "import",
        "--config",
        config.to_str().unwrap(),
        "--server",
        &b.url(""),
        bundle,
    ])
    .await);
    expect_stdout(&out, "stored 0 B");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_one_flipped_byte_is_refused_naming_the_object_and_a_good_one_resumes() {
    let e = prefetch_and_export().await;
    let (config, text, data) = offline_config(e.dir.path(), "b");
    let cfg = config.to_str().unwrap();

    let layer = sha256(&e.layers[0]);
    let bad = e.dir.path().join("bad-layer.tar");
    flipped_copy(
        &e.bundle,
        &format!("oci/blobs/sha256/{}", &layer[7..]),
        &bad,
    );
    let out = run_wharf(&["import", "--config", cfg, bad.to_str().unwrap()]).await;
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&layer)
            && err.contains("fake.test/test/app:v1")
            && err.contains("does not match"),
        "the refusal does not name the layer:\n{err}"
    );

    // (Into another wharf: the first refusal stored the good zip, so this one would skip it.)
    let (other, _, _) = offline_config(e.dir.path(), "b2");
    let bad_zip = e.dir.path().join("bad-zip.tar");
    flipped_copy(&e.bundle, "go/example.com/!mod/@v/v1.2.0.zip", &bad_zip);
    let out = run_wharf(&[
        "import",
        "--config",
        other.to_str().unwrap(),
        bad_zip.to_str().unwrap(),
    ])
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("example.com/Mod@v1.2.0 .zip"),
        "the refusal does not name the zip:\n{}",
        describe(&out)
    );

    // Nothing was indexed.
    let b = support::Wharf::start_with_config(&text, &data).await;
    let (s, _, _) = get(&b, "/v2/fake.test/test/app/manifests/v1").await;
    assert_eq!(s, 404);
    b.stop().await;

    // The good bundle resumes: what the refused runs stored is not sent again.
    let out = ok(run_wharf(&["import", "--config", cfg, e.bundle.to_str().unwrap()]).await);
    let summary = stdout(&out);
    assert!(!summary.contains("(0 B already present)"), "{summary}");
    let b = support::Wharf::start_with_config(&text, &data).await;
    let (s, body, _) = get(&b, &format!("/v2/fake.test/test/app/blobs/{layer}")).await;
    assert_eq!((s, body), (200, e.layers[0].clone()));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_to_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = config_text(&data, "http://127.0.0.1:9", "http://127.0.0.1:9", true);
    let w = support::Wharf::start_with_config(&text, &data).await;
    let c = support::client();
    let pins = r#"{"reason":"test","digests":[]}"#;
    let secret = w.admin_secret();
    let post = |host: Option<&str>, fwd: bool| {
        let mut r = c
            .post(w.url("/admin/pins"))
            .header("content-type", "application/json")
            .header("x-wharf-admin-token", &secret)
            .body(pins);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        if fwd {
            r = r.header("x-forwarded-for", "203.0.113.9");
        }
        r.send()
    };
    assert_eq!(post(None, false).await.unwrap().status(), 200);
    assert_eq!(
        post(Some("localhost:5000"), false).await.unwrap().status(),
        200
    );
    // A DNS name (a rebinding page in a browser), or a request relayed by a proxy: refused.
    assert_eq!(
        post(Some("wharf.example:5000"), false)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(post(None, true).await.unwrap().status(), 403);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layouts_go_module_caches_and_docker_save_tarballs_import() {
    let dir = tempfile::tempdir().unwrap();
    let (config, text, data) = offline_config(dir.path(), "b");
    let cfg = config.to_str().unwrap();

    // An OCI layout whose ref.name is a bare tag: filed under --name.
    let mut layout = oci::Layout::create(&dir.path().join("layout"));
    let spec = oci::ImageSpec::linux(
        "amd64",
        7,
        &[oci::LayerSpec {
            size: 10_000,
            compression: oci::Compression::Gzip,
        }],
    );
    let image = layout.add_image(&spec);
    layout.tag(&image.manifest, "v7");
    let root = layout.root().to_str().unwrap().to_string();
    let out = ok(run_wharf(&[
        "import",
        "--config",
        cfg,
        "--name",
        "fake.test/gen/app",
        &root,
    ])
    .await);
    expect_stdout(&out, "1 tag(s)");

    // A go module cache, with the .ziphash the go command writes.
    let zip = module_zip(
        "example.com/Mod",
        "v1.2.0",
        &[("go.mod", GO_MOD), ("a.go", "package mod\n")],
    );
    let h1 = wharf::goproxy::hash::h1_of_zip(zip.as_slice()).unwrap();
    let cache = dir.path().join("gopath/pkg/mod");
    let v = cache.join("cache/download/example.com/!mod/@v");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("v1.2.0.info"), r#"{"Version":"v1.2.0"}"#).unwrap();
    std::fs::write(v.join("v1.2.0.mod"), GO_MOD).unwrap();
    std::fs::write(v.join("v1.2.0.zip"), &zip).unwrap();
    std::fs::write(
        v.join("v1.2.0.ziphash"),
        "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let out = run_wharf(&["import", "--config", cfg, cache.to_str().unwrap()]).await;
    assert!(
        !out.status.success(),
        "a wrong .ziphash must be refused: {}",
        describe(&out)
    );
    expect_stderr(&out, "example.com/Mod@v1.2.0 .zip");
    std::fs::write(v.join("v1.2.0.ziphash"), format!("{h1}\n")).unwrap();
    let out = ok(run_wharf(&["import", "--config", cfg, cache.to_str().unwrap()]).await);
    expect_stdout(&out, "1 module version(s)");

    // A docker save tarball in the format before Docker 25 (no OCI layout inside).
    let config_json =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = oci::single_file_tar("hello.txt", b"hello from docker save\n");
    let saved = dir.path().join("saved.tar");
    {
        let mut t = tar::Builder::new(std::fs::File::create(&saved).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            t.append_data(&mut h, name, bytes).unwrap();
        };
        add(
            "manifest.json",
            br#"[{"Config":"cfg.json","RepoTags":["fake.test/test/saved:1"],"Layers":["abc/layer.tar"]}]"#,
        );
        add("cfg.json", config_json);
        add("abc/layer.tar", &layer);
        t.finish().unwrap();
    }
    let out = ok(run_wharf(&["import", "--config", cfg, saved.to_str().unwrap()]).await);
    expect_stdout(&out, "1 tag(s)");

    let b = support::Wharf::start_with_config(&text, &data).await;
    let (s, _, h) = get(&b, "/v2/fake.test/gen/app/manifests/v7").await;
    assert_eq!(
        (s, h["docker-content-digest"].to_str().unwrap()),
        (200, image.manifest.digest.as_str())
    );
    let (s, body, _) = get(&b, "/go/example.com/!mod/@v/v1.2.0.zip").await;
    assert_eq!((s, body), (200, zip));
    let (s, body, _) = get(&b, "/v2/fake.test/test/saved/manifests/1").await;
    assert_eq!(s, 200);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["config"]["digest"], sha256(config_json));
    assert_eq!(m["layers"][0]["digest"], sha256(&layer));
    let (s, body, _) = get(
        &b,
        &format!("/v2/fake.test/test/saved/blobs/{}", sha256(&layer)),
    )
    .await;
    assert_eq!((s, body), (200, layer));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_resolves_latest_and_minor_queries_from_the_version_list_alone() {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    for v in ["v1.1.0", "v1.2.0", "v1.3.0-rc.1"] {
        let zip = module_zip(
            "example.com/Mod",
            v,
            &[("go.mod", GO_MOD), ("a.go", "package mod\n")],
        );
        go.put_module("example.com/!mod", v, GO_MOD, zip);
    }
    // No @latest and no query answers: a plain file tree.
    let dir = tempfile::tempdir().unwrap();
    let (config, a) = serve_online(dir.path(), "data", &reg, &go).await;
    let server = a.url("");
    let cfg = config.to_str().unwrap();
    let out = ok(run_wharf(&[
        "prefetch",
        "--config",
        cfg,
        "--server",
        &server,
        "example.com/Mod@latest",
        "example.com/Mod@v1.1",
    ])
    .await);
    let summary = stdout(&out);
    assert!(
        summary.contains("2 module version(s)"),
        "{}",
        describe(&out)
    );
    for (v, want) in [("v1.2.0", 1), ("v1.1.0", 1), ("v1.3.0-rc.1", 0)] {
        assert_eq!(
            go.count(&format!("/@v/{v}.zip")),
            want,
            "{v}: {:?}",
            go.seen()
        );
    }
}

/// wharf A (online, `go.verify = false`) and wharf B (offline), both knowing the checksum
/// database `sum.fake` served by `db`; A holds example.com/Mod@v1.2.0 and its lookup, fetched
/// the way a go command with its own tiles asks (the lookup alone), so no tile is cached.
async fn module_with_a_lookup_but_no_tiles()
-> (tempfile::TempDir, GoFake, support::Wharf, PathBuf, PathBuf) {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let db = GoFake::start().await;
    let zip = module_zip(
        "example.com/Mod",
        "v1.2.0",
        &[("go.mod", GO_MOD), ("a.go", "package mod\n")],
    );
    go.put_module("example.com/!mod", "v1.2.0", GO_MOD, zip.clone());
    let vkey = serve_sumdb(
        &db,
        "sum.fake",
        &[SumRecord {
            escaped: "example.com/!mod",
            path: "example.com/Mod",
            version: "v1.2.0",
            zip: &zip,
            go_mod: GO_MOD,
        }],
    );
    let sumdb = format!(
        "[[go.sumdb]]\nname = \"sum.fake\"\nkey = {}\nurl = {}\n",
        quote(&vkey),
        quote(&db.url())
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a-data");
    let text = WharfConfig::fakes(&reg.url(), &go.url(), &data)
        .listen_anywhere()
        .tables(&sumdb)
        .toml();
    let a_config = dir.path().join("a.toml");
    std::fs::write(&a_config, &text).unwrap();
    let a = support::Wharf::start_with_config(&text, &data).await;
    let b_data = dir.path().join("b-data");
    let b_text = WharfConfig::fakes("http://127.0.0.1:9", "http://127.0.0.1:9", &b_data)
        .listen_anywhere()
        .offline(true)
        .go_keys("verify = true")
        .tables(&sumdb)
        .toml();
    let b_config = dir.path().join("b.toml");
    std::fs::write(&b_config, &b_text).unwrap();
    for path in [
        "/go/example.com/!mod/@v/v1.2.0.info",
        "/go/example.com/!mod/@v/v1.2.0.mod",
        "/go/example.com/!mod/@v/v1.2.0.zip",
        "/go/sumdb/sum.fake/lookup/example.com/!mod@v1.2.0",
    ] {
        let (s, _, _) = get(&a, path).await;
        assert_eq!(s, 200, "{path}");
    }
    assert_eq!(db.count("tile/"), 0, "{:?}", db.seen());
    (dir, db, a, a_config, b_config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_fetches_the_tiles_import_needs_or_fails_with_the_import_s_message() {
    let (dir, db, a, a_config, b_config) = module_with_a_lookup_but_no_tiles().await;
    let (acfg, bcfg) = (a_config.to_str().unwrap(), b_config.to_str().unwrap());
    let server = a.url("");
    let bundle = dir.path().join("m.tar");
    let export = |out: PathBuf| {
        let server = server.clone();
        async move {
            run_wharf(&[
                "export",
                "--config",
                acfg,
                "--server",
                &server,
                "example.com/Mod@v1.2.0",
                "-o",
                out.to_str().unwrap(),
            ])
            .await
        }
    };

    // The checksum database is down: no tile can be fetched, and the export says what import
    // would say, leaving no bundle behind.
    db.fail_with(Some(503));
    let out = export(bundle.clone()).await;
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("import would refuse the bundle")
            && err.contains("example.com/Mod@v1.2.0: cannot verify with sum.fake"),
        "{err}"
    );
    assert!(!bundle.exists() && !dir.path().join("m.tar.partial").exists());

    // It is back: export fetches the tile through A, and B proves the module offline.
    db.fail_with(None);
    ok(export(bundle.clone()).await);
    assert!(db.count("tile/8/0/000.p/2") >= 1, "{:?}", db.seen());
    let out = ok(run_wharf(&[
        "export",
        "--config",
        bcfg,
        "--check",
        bundle.to_str().unwrap(),
    ])
    .await);
    expect_stdout(
        &out,
        "1 module version(s) (1 proven by a checksum database)",
    );
    expect_stdout(&out, "import would accept it");
    let out = ok(run_wharf(&["import", "--config", bcfg, bundle.to_str().unwrap()]).await);
    expect_stdout(
        &out,
        "1 module version(s) (1 proven by a checksum database)",
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_check_refuses_what_import_refuses_and_writes_nothing() {
    let e = prefetch_and_export().await;
    let (config, _, data) = offline_config(e.dir.path(), "b");
    let cfg = config.to_str().unwrap();
    let out = ok(run_wharf(&[
        "export",
        "--config",
        cfg,
        "--check",
        e.bundle.to_str().unwrap(),
    ])
    .await);
    expect_stdout(&out, "2 image name(s)");
    expect_stdout(&out, "import would accept it");

    let layer = sha256(&e.layers[0]);
    let bad = e.dir.path().join("bad-layer.tar");
    flipped_copy(
        &e.bundle,
        &format!("oci/blobs/sha256/{}", &layer[7..]),
        &bad,
    );
    let out = run_wharf(&["export", "--config", cfg, "--check", bad.to_str().unwrap()]).await;
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("would be refused")
            && err.contains(&layer)
            && err.contains("fake.test/test/app:v1")
            && err.contains("does not match"),
        "{err}"
    );
    // A zip that fails its h1: check, as import's server-side check says it.
    let bad_zip = e.dir.path().join("bad-zip.tar");
    flipped_copy(&e.bundle, "go/example.com/!mod/@v/v1.2.0.zip", &bad_zip);
    let out = run_wharf(&[
        "export",
        "--config",
        cfg,
        "--check",
        bad_zip.to_str().unwrap(),
    ])
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "example.com/Mod@v1.2.0 .zip");
    assert!(
        files_under(&data).is_empty(),
        "--check wrote into the data directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bundles_export_by_name_or_flag_and_import_by_their_magic_bytes() {
    let e = prefetch_and_export().await;
    let a = e.dir.path().join("a.toml");
    let acfg = a.to_str().unwrap();
    let plain_len = std::fs::metadata(&e.bundle).unwrap().len();
    let zst = e.dir.path().join("site.tar.zst");
    // gzip by the flag, under a name that says nothing (import goes by the first bytes).
    let gz = e.dir.path().join("site.bundle");
    for (out, extra) in [(&zst, None), (&gz, Some("gzip"))] {
        let mut args = vec![
            "export",
            "--config",
            acfg,
            "--pinned",
            "-o",
            out.to_str().unwrap(),
        ];
        if let Some(c) = extra {
            args.extend(["--compress", c]);
        }
        let out = ok(run_wharf(&args).await);
        expect_stdout(&out, "export: 2 image(s)");
    }
    let magic = |p: &Path| std::fs::read(p).unwrap()[..4].to_vec();
    assert_eq!(magic(&zst), [0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(magic(&gz)[..2], [0x1f, 0x8b]);
    assert!(std::fs::metadata(&zst).unwrap().len() < plain_len);

    for (name, bundle) in [("z", &zst), ("g", &gz)] {
        let (config, text, data) = offline_config(e.dir.path(), name);
        let cfg = config.to_str().unwrap();
        let out = ok(run_wharf(&[
            "export",
            "--config",
            cfg,
            "--check",
            bundle.to_str().unwrap(),
        ])
        .await);
        expect_stdout(&out, "import would accept it");
        let out = ok(run_wharf(&["import", "--config", cfg, bundle.to_str().unwrap()]).await);
        expect_stdout(&out, "2 tag(s)");
        let out = ok(run_wharf(&["import", "--config", cfg, bundle.to_str().unwrap()]).await);
        expect_stdout(&out, "stored 0 B");
        let b = support::Wharf::start_with_config(&text, &data).await;
        for l in &e.layers {
            let (s, body, _) =
                get(&b, &format!("/v2/fake.test/test/app/blobs/{}", sha256(l))).await;
            assert_eq!((s, &body), (200, l), "{name}");
        }
        let (s, body, _) = get(&b, "/go/example.com/!mod/@v/v1.2.0.zip").await;
        assert_eq!((s, body), (200, e.zip.clone()));
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_damaged_compressed_bundle_is_refused_in_one_line_and_nothing_is_indexed() {
    let e = prefetch_and_export().await;
    let a = e.dir.path().join("a.toml");
    let zst = e.dir.path().join("site.tar.zst");
    let gz = e.dir.path().join("site.tgz");
    for out in [&zst, &gz] {
        ok(run_wharf(&[
            "export",
            "--config",
            a.to_str().unwrap(),
            "--pinned",
            "-o",
            out.to_str().unwrap(),
        ])
        .await);
    }
    let (config, text, data) = offline_config(e.dir.path(), "b");
    let cfg = config.to_str().unwrap();
    let mut bad = Vec::new();
    for (src, ext) in [(&zst, "tar.zst"), (&gz, "tgz")] {
        let bytes = std::fs::read(src).unwrap();
        let cut = e.dir.path().join(format!("cut.{ext}"));
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let mut flipped = bytes.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x55;
        flipped[at + 1] ^= 0x55;
        let damaged = e.dir.path().join(format!("damaged.{ext}"));
        std::fs::write(&damaged, &flipped).unwrap();
        bad.extend([cut, damaged]);
    }
    for b in &bad {
        for args in [
            vec!["import", "--config", cfg, b.to_str().unwrap()],
            vec!["export", "--config", cfg, "--check", b.to_str().unwrap()],
        ] {
            let out = run_wharf(&args).await;
            assert!(!out.status.success(), "{}", describe(&out));
            let err = stderr(&out);
            assert!(!err.contains("panicked"), "{err}");
            // One line says why, naming the file; the stream's own check finds it first.
            let why = err
                .lines()
                .find(|l| l.contains("refused"))
                .unwrap_or_default();
            assert!(
                why.contains(b.file_name().unwrap().to_str().unwrap())
                    && why.contains("damaged or truncated"),
                "{}: {err}",
                b.display()
            );
        }
    }
    // Nothing of them was indexed.
    let w = support::Wharf::start_with_config(&text, &data).await;
    let (s, _, _) = get(&w, "/v2/fake.test/test/app/manifests/v1").await;
    assert_eq!(s, 404);
    let (s, _, _) = get(&w, "/go/example.com/!mod/@v/v1.2.0.zip").await;
    assert_eq!(s, 404);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_attestations_are_prefetched_with_referrers_and_served_offline() {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let (subject, _) = reg.put_image("test/app", "v1", &[bytes_of(4000, 41)]);
    // An OCI referrer (an SBOM) through the referrers API, and a cosign signature tag.
    let sbom = reg.put_referrer("test/app", &subject, "application/spdx+json");
    let sbom_digest = serde_json::from_str::<serde_json::Value>(&sbom).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let list = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{sbom}]}}"#);
    *reg.state.referrers.lock().unwrap() = Some(std::collections::HashMap::from([(
        ("test/app".to_string(), subject.clone()),
        list.into_bytes(),
    )]));
    let sig_tag = format!("sha256-{}.sig", &subject[7..]);
    let (sig, _) = reg.put_image("test/app", &sig_tag, &[bytes_of(300, 42)]);

    let dir = tempfile::tempdir().unwrap();
    let (config, a) = serve_online(dir.path(), "a-data", &reg, &go).await;
    let (server, cfg) = (a.url(""), config.to_str().unwrap().to_string());
    let out = ok(run_wharf(&[
        "prefetch",
        "--config",
        &cfg,
        "--server",
        &server,
        "--referrers",
        "fake.test/test/app:v1",
    ])
    .await);
    assert!(stdout(&out).contains("0 failed"), "{}", describe(&out));
    assert_eq!(reg.count("GET", &format!("/manifests/{sbom_digest}")), 1);
    assert_eq!(
        reg.count("GET", &format!("/manifests/{sig}")),
        1,
        "the .sig tag's manifest"
    );
    let bundle = dir.path().join("signed.tar.zst");
    ok(run_wharf(&[
        "export",
        "--config",
        &cfg,
        "--server",
        &server,
        "--pinned",
        "-o",
        bundle.to_str().unwrap(),
    ])
    .await);
    a.stop().await;

    let (config, text, data) = offline_config(dir.path(), "b");
    ok(run_wharf(&[
        "import",
        "--config",
        config.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ])
    .await);
    let b = support::Wharf::start_with_config(&text, &data).await;
    let (status, body, _) = get(&b, &format!("/v2/fake.test/test/app/referrers/{subject}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["manifests"][0]["digest"], sbom_digest.as_str(), "{doc}");
    assert_eq!(doc["manifests"][0]["artifactType"], "application/spdx+json");
    for reference in [sbom_digest.as_str(), sig_tag.as_str()] {
        let (status, body, h) =
            get(&b, &format!("/v2/fake.test/test/app/manifests/{reference}")).await;
        assert_eq!(
            status,
            200,
            "{reference}: {}",
            String::from_utf8_lossy(&body)
        );
        if reference == sig_tag {
            assert_eq!(h["docker-content-digest"], sig.as_str());
        }
    }
}
