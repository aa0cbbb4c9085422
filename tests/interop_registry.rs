//! Real clients against wharf: skopeo pulls through wharf from a real origin registry (Debian's
//! `docker-registry`, CNCF distribution 2.8), with images generated here so every digest is known.
//!
//! Each test starts its own origin and wharf on loopback ports. Without skopeo or docker-registry
//! on PATH the tests print why and pass, unless `WHARF_REQUIRE_INTEROP` is set (CI sets it).

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::oci::{
    Descriptor, Image, ImageSpec, Layout, LayoutReader, MultiArch, gzip_layer, sha256_digest,
};
use support::origin::{Origin, Skopeo, http_status, require_tools};
use support::{MANIFEST_ACCEPT, Wharf, WharfConfig};
use tempfile::TempDir;

/// The upstream name wharf knows the origin by; it does not resolve, so a client that reaches the
/// image under this name can only have gone through wharf.
const UPSTREAM: &str = "origin.test";
const APP_REPO: &str = "test/app";
const MULTI_REPO: &str = "test/multi";
const TAG: &str = "v1";

/// An origin holding a three-layer image (`test/app:v1`, one layer of several MiB) and a
/// two-platform index (`test/multi:v1`), and skopeo set up to talk to it.
struct Origined {
    origin: Option<Origin>,
    skopeo: Skopeo,
    image: Image,
    multi: MultiArch,
    work: TempDir,
}

impl Origined {
    /// `None` when the tools are missing and the test should be skipped.
    async fn start(test: &str) -> Option<Origined> {
        let tools = require_tools(test, &["skopeo", "docker-registry"])?;
        let fixture = blocking(move || {
            let origin = Origin::start(&tools[1]);
            let skopeo = Skopeo::new(&tools[0]);
            let work = work_dir("wharf-interop-");

            let mut layout = Layout::create(&work.path().join("generated"));
            let image = layout.add_image(&ImageSpec::linux(
                "amd64",
                1,
                &[gzip_layer(4096), gzip_layer(6 << 20), gzip_layer(100_000)],
            ));
            layout.tag(&image.manifest, TAG);
            skopeo.push_layout(layout.root(), TAG, &origin, APP_REPO, false);

            let mut layout = Layout::create(&work.path().join("generated-multi"));
            let multi = layout.add_index(&[
                ImageSpec::linux("amd64", 2, &[gzip_layer(70_000), gzip_layer(3000)]),
                ImageSpec::linux("arm64", 3, &[gzip_layer(80_000), gzip_layer(2000)]),
            ]);
            layout.tag(&multi.index, TAG);
            skopeo.push_layout(layout.root(), TAG, &origin, MULTI_REPO, true);

            Origined {
                origin: Some(origin),
                skopeo,
                image,
                multi,
                work,
            }
        })
        .await;
        Some(fixture)
    }

    fn origin(&self) -> &Origin {
        self.origin.as_ref().expect("origin is running")
    }

    /// Serves wharf with the origin as upstream `origin.test`.
    async fn wharf(&self) -> Wharf {
        let url = format!("http://{}", self.origin().host());
        Wharf::in_temp_dir(|data| {
            WharfConfig::new(data)
                .upstream(UPSTREAM, &url)
                .offline(false)
        })
        .await
    }

    fn out(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// `docker://<wharf>/origin.test/<repo><reference>` as podman/skopeo mirrors spell it.
fn via_wharf(wharf: &Wharf, repo: &str, reference: &str) -> String {
    format!("docker://{}/{UPSTREAM}/{repo}{reference}", wharf.host())
}

/// Asserts that the layout at `dir` names `tag` as `image`'s manifest and holds every blob of it,
/// byte for byte.
fn assert_layout_holds_image(dir: &Path, tag: &str, image: &Image) {
    let reader = LayoutReader::open(dir);
    let top = reader.resolve(tag);
    assert_eq!(
        top,
        image.manifest,
        "manifest descriptor in {}",
        dir.display()
    );
    assert_image_blobs(&reader, image);
}

/// How many times the origin logged `GET <path>`, waiting up to five seconds for the first line:
/// the registry writes a request's access-log line just after the response.
fn origin_gets(origin: &Origin, path: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.requests("GET", path) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    origin.requests("GET", path)
}

fn assert_image_blobs(reader: &LayoutReader, image: &Image) {
    let expected: Vec<Descriptor> = image.blobs().cloned().collect();
    assert_eq!(
        reader.manifest_blobs(&image.manifest.digest),
        expected,
        "config and layers listed by the copied manifest"
    );
    for blob in &expected {
        let bytes = reader.blob(&blob.digest);
        assert_eq!(bytes.len() as u64, blob.size, "size of {}", blob.digest);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_accepts_generated_layouts() {
    let Some(fx) = Origined::start("origin_accepts_generated_layouts").await else {
        return;
    };
    blocking(move || {
        let host = fx.origin().host();
        let app = format!("{host}/{APP_REPO}:{TAG}");
        assert_eq!(fx.skopeo.inspect_digest(&app), fx.image.manifest.digest);
        let raw = fx.skopeo.inspect_raw(&format!("{host}/{MULTI_REPO}:{TAG}"));
        assert_eq!(
            sha256_digest(raw.as_bytes()),
            fx.multi.index.digest,
            "origin serves the generated index bytes unchanged"
        );
        let out = fx.out("from-origin");
        fx.skopeo
            .copy_to_layout(&format!("docker://{app}"), &out, TAG);
        assert_layout_holds_image(&out, TAG, &fx.image);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copy_through_wharf_preserves_digests() {
    let Some(fx) = Origined::start("skopeo_copy_through_wharf_preserves_digests").await else {
        return;
    };
    let wharf = fx.wharf().await;
    let through = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let out = fx.out("through-wharf");
    let fx = blocking(move || {
        let origin_digest = fx
            .skopeo
            .inspect_digest(&format!("{}/{APP_REPO}:{TAG}", fx.origin().host()));
        assert_eq!(origin_digest, fx.image.manifest.digest);
        let wharf_digest = fx
            .skopeo
            .inspect_digest(through.trim_start_matches("docker://"));
        assert_eq!(
            wharf_digest, origin_digest,
            "skopeo inspect through wharf reports the origin's digest"
        );
        fx.skopeo.copy_to_layout(&through, &out, TAG);
        assert_layout_holds_image(&out, TAG, &fx.image);
        fx
    })
    .await;

    let manifest = wharf
        .manifest(&format!("/v2/{UPSTREAM}/{APP_REPO}/manifests/{TAG}"))
        .await;
    assert_eq!(
        manifest.header("content-type"),
        Some(fx.image.manifest.media_type.as_str()),
        "{}",
        manifest.describe()
    );
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(fx.image.manifest.digest.as_str()),
        "{}",
        manifest.describe()
    );
    assert_eq!(sha256_digest(&manifest.body), fx.image.manifest.digest);
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copy_all_pulls_every_platform_of_an_index() {
    let Some(fx) = Origined::start("skopeo_copy_all_pulls_every_platform_of_an_index").await else {
        return;
    };
    let wharf = fx.wharf().await;
    let through = via_wharf(&wharf, MULTI_REPO, &format!(":{TAG}"));
    let out = fx.out("through-wharf-all");
    blocking(move || {
        fx.skopeo.run(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &through,
            &format!("oci:{}:{TAG}", out.display()),
        ]);
        let reader = LayoutReader::open(&out);
        assert_eq!(
            reader.resolve(TAG),
            fx.multi.index,
            "the copied layout names the origin's index, same digest"
        );
        let children: Vec<String> = reader
            .index_children(&fx.multi.index.digest)
            .into_iter()
            .map(|child| child.digest)
            .collect();
        let expected: Vec<String> = fx
            .multi
            .children
            .iter()
            .map(|child| child.manifest.digest.clone())
            .collect();
        assert_eq!(children, expected, "child manifests listed by the index");
        for child in &fx.multi.children {
            assert!(
                reader.has_blob(&child.manifest.digest),
                "{}/{} manifest {} was not copied",
                child.os,
                child.architecture,
                child.manifest.digest
            );
            assert_image_blobs(&reader, child);
        }
    })
    .await;
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registries_conf_mirror_pulls_through_wharf() {
    let Some(fx) = Origined::start("registries_conf_mirror_pulls_through_wharf").await else {
        return;
    };
    let wharf = fx.wharf().await;
    let conf = fx.skopeo.write_registries_conf(
        "mirror.conf",
        &format!(
            "unqualified-search-registries = []\n\
             \n\
             [[registry]]\n\
             prefix = \"{UPSTREAM}\"\n\
             location = \"{UPSTREAM}\"\n\
             \n\
             [[registry.mirror]]\n\
             location = \"{}/{UPSTREAM}\"\n\
             insecure = true\n",
            wharf.host()
        ),
    );
    let out = fx.out("through-mirror");
    let fx = blocking(move || {
        // origin.test does not resolve: success means the mirror entry was used.
        fx.skopeo.run_with_registries_conf(
            &conf,
            &[
                "copy",
                &format!("docker://{UPSTREAM}/{APP_REPO}:{TAG}"),
                &format!("oci:{}:{TAG}", out.display()),
            ],
        );
        assert_layout_holds_image(&out, TAG, &fx.image);
        fx
    })
    .await;

    let manifest = wharf
        .get(
            &format!(
                "/v2/{UPSTREAM}/{APP_REPO}/manifests/{}",
                fx.image.manifest.digest
            ),
            Some(MANIFEST_ACCEPT),
        )
        .await;
    assert_eq!(manifest.status, 200, "{}", manifest.describe());
    assert_eq!(
        manifest.cache(),
        "HIT",
        "the mirror pull stored the manifest in wharf: {}",
        manifest.describe()
    );
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_pull_is_served_from_cache_without_origin() {
    let Some(mut fx) = Origined::start("second_pull_is_served_from_cache_without_origin").await
    else {
        return;
    };
    let wharf = fx.wharf().await;
    let by_tag = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let by_digest = via_wharf(&wharf, APP_REPO, &format!("@{}", fx.image.manifest.digest));
    let (first, by_tag_again, by_digest_again) = (
        fx.out("first"),
        fx.out("second-tag"),
        fx.out("second-digest"),
    );

    let origin_addr = fx.origin().addr;
    let fx = blocking(move || {
        let copy = |source: &str, dest: &Path| {
            fx.skopeo.copy_to_layout(source, dest, TAG);
        };
        copy(&by_tag, &first);
        assert_layout_holds_image(&first, TAG, &fx.image);

        drop(fx.origin.take());
        assert_eq!(
            http_status(origin_addr, "/v2/"),
            None,
            "the origin still answers after being stopped"
        );

        copy(&by_tag, &by_tag_again);
        assert_layout_holds_image(&by_tag_again, TAG, &fx.image);
        copy(&by_digest, &by_digest_again);
        assert_layout_holds_image(&by_digest_again, TAG, &fx.image);
        fx
    })
    .await;

    let manifests = format!("/v2/{UPSTREAM}/{APP_REPO}/manifests");
    let by_digest = wharf
        .get(
            &format!("{manifests}/{}", fx.image.manifest.digest),
            Some(MANIFEST_ACCEPT),
        )
        .await;
    assert_eq!(by_digest.status, 200, "{}", by_digest.describe());
    assert_eq!(by_digest.cache(), "HIT", "{}", by_digest.describe());
    assert_eq!(sha256_digest(&by_digest.body), fx.image.manifest.digest);

    let by_tag = wharf
        .get(&format!("{manifests}/{TAG}"), Some(MANIFEST_ACCEPT))
        .await;
    assert_eq!(by_tag.status, 200, "{}", by_tag.describe());
    assert!(
        matches!(by_tag.cache(), "HIT" | "STALE"),
        "a tag with its origin down is answered from the cache: {}",
        by_tag.describe()
    );
    assert_eq!(
        by_tag.header("docker-content-digest"),
        Some(fx.image.manifest.digest.as_str()),
        "{}",
        by_tag.describe()
    );

    for blob in fx.image.blobs() {
        let answer = wharf
            .get(
                &format!("/v2/{UPSTREAM}/{APP_REPO}/blobs/{}", blob.digest),
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.describe());
        assert_eq!(answer.cache(), "HIT", "{}", answer.describe());
        assert_eq!(sha256_digest(&answer.body), blob.digest);
    }
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_pulls_fetch_each_blob_from_origin_once() {
    let Some(fx) = Origined::start("concurrent_cold_pulls_fetch_each_blob_from_origin_once").await
    else {
        return;
    };
    let wharf = fx.wharf().await;
    let through = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let fx = Arc::new(fx);
    let pulls: Vec<_> = (0..4)
        .map(|n| {
            let (fx, through) = (fx.clone(), through.clone());
            tokio::task::spawn_blocking(move || {
                let out = fx.out(&format!("concurrent-{n}"));
                fx.skopeo.copy_to_layout(&through, &out, TAG);
                assert_layout_holds_image(&out, TAG, &fx.image);
            })
        })
        .collect();
    for pull in pulls {
        pull.await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    }

    let counts = blocking({
        let fx = fx.clone();
        move || {
            fx.image
                .blobs()
                .map(|blob| {
                    let path = format!("/v2/{APP_REPO}/blobs/{}", blob.digest);
                    (origin_gets(fx.origin(), &path), path)
                })
                .collect::<Vec<_>>()
        }
    })
    .await;
    for (count, path) in counts {
        assert_eq!(
            count,
            1,
            "four concurrent pulls through wharf made the origin serve GET {path} {count} times; \
             origin access log:\n{}",
            fx.origin().access_log()
        );
    }
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_survives_a_wharf_restart_with_the_origin_down() {
    let Some(fx) = Origined::start("cache_survives_a_wharf_restart_with_the_origin_down").await
    else {
        return;
    };
    let wharf = fx.wharf().await;
    let source = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let first = fx.out("before-restart");
    let mut fx = blocking(move || {
        fx.skopeo.copy_to_layout(&source, &first, TAG);
        assert_layout_holds_image(&first, TAG, &fx.image);
        fx
    })
    .await;
    drop(fx.origin.take());

    let wharf = wharf.restart().await;
    let by_digest = via_wharf(&wharf, APP_REPO, &format!("@{}", fx.image.manifest.digest));
    let by_tag = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let (after_digest, after_tag) = (fx.out("after-restart-digest"), fx.out("after-restart-tag"));
    blocking(move || {
        fx.skopeo.copy_to_layout(&by_digest, &after_digest, TAG);
        assert_layout_holds_image(&after_digest, TAG, &fx.image);
        fx.skopeo.copy_to_layout(&by_tag, &after_tag, TAG);
        assert_layout_holds_image(&after_tag, TAG, &fx.image);
    })
    .await;
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_restart_pulls_by_tag_with_no_origin_request() {
    let Some(fx) = Origined::start("offline_restart_pulls_by_tag_with_no_origin_request").await
    else {
        return;
    };
    let wharf = fx.wharf().await;
    let source = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let warm = fx.out("warm");
    let fx = blocking(move || {
        fx.skopeo.copy_to_layout(&source, &warm, TAG);
        fx
    })
    .await;
    // The origin keeps running: an offline wharf must not ask it anything.
    let wharf = wharf.restart_offline().await;
    let origin_requests = fx.origin.as_ref().map(|o| o.access_log().lines().count());
    let by_tag = via_wharf(&wharf, APP_REPO, &format!(":{TAG}"));
    let out = fx.out("offline-tag");
    let fx = blocking(move || {
        fx.skopeo.copy_to_layout(&by_tag, &out, TAG);
        assert_layout_holds_image(&out, TAG, &fx.image);
        fx
    })
    .await;
    let miss = wharf
        .get(
            &format!("/v2/{UPSTREAM}/{APP_REPO}/manifests/not-cached"),
            None,
        )
        .await;
    assert_eq!(miss.status, 404);
    assert!(String::from_utf8_lossy(&miss.body).contains("offline cache"));
    let after = fx.origin.as_ref().map(|o| o.access_log().lines().count());
    assert_eq!(
        after, origin_requests,
        "the offline wharf contacted the origin"
    );
}

/// The origin holds the two-platform image as an OCI index (`test/multi`) and, converted by
/// skopeo, as a Docker manifest list (`test/multi-docker`); clients that read only some manifest
/// types get what they can read through wharf, with headers that describe the bytes sent.
#[tokio::test(flavor = "multi_thread")]
async fn manifests_are_negotiated_against_the_real_origin() {
    const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let Some(fx) = Origined::start("manifests_are_negotiated_against_the_real_origin").await else {
        return;
    };
    let host = fx.origin().host();
    tokio::task::block_in_place(|| {
        fx.skopeo.run(&[
            "copy",
            "--all",
            "--format",
            "v2s2",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/{MULTI_REPO}:{TAG}"),
            &format!("docker://{host}/{MULTI_REPO}-docker:{TAG}"),
        ]);
    });
    let wharf = fx.wharf().await;
    let get = |repo: &str, accept: &str| {
        let path = format!("/v2/{UPSTREAM}/{repo}/manifests/{TAG}");
        let accept = accept.to_string();
        let wharf = &wharf;
        async move { wharf.get(&path, Some(&accept)).await }
    };

    // The OCI index, to every kind of client.
    let all = get(MULTI_REPO, MANIFEST_ACCEPT).await;
    assert_eq!(all.header("content-type"), Some(OCI_INDEX));
    assert_eq!(
        all.header("docker-content-digest"),
        Some(fx.multi.index.digest.as_str())
    );
    let amd64 = &fx.multi.children[0];
    assert_eq!(amd64.architecture, "amd64");
    let oci_only = get(MULTI_REPO, OCI_MANIFEST).await;
    assert_eq!(oci_only.status, 200, "{}", oci_only.describe());
    assert_eq!(oci_only.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        oci_only.header("docker-content-digest"),
        Some(amd64.manifest.digest.as_str())
    );
    let docker_only = get(MULTI_REPO, DOCKER_MANIFEST).await;
    assert_eq!(docker_only.status, 404, "{}", docker_only.describe());
    assert!(String::from_utf8_lossy(&docker_only.body).contains(DOCKER_MANIFEST));

    // The Docker manifest list.
    let list = get(&format!("{MULTI_REPO}-docker"), MANIFEST_ACCEPT).await;
    assert_eq!(list.status, 200, "{}", list.describe());
    assert_eq!(list.header("content-type"), Some(DOCKER_LIST));
    let doc: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let amd64_entry = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .and_then(|m| m["digest"].as_str())
        .unwrap()
        .to_string();
    let v2_only = get(&format!("{MULTI_REPO}-docker"), DOCKER_MANIFEST).await;
    assert_eq!(v2_only.status, 200, "{}", v2_only.describe());
    assert_eq!(v2_only.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(
        v2_only.header("docker-content-digest"),
        Some(amd64_entry.as_str())
    );
    assert_eq!(support::sha256(&v2_only.body), amd64_entry);
    let oci_index_only = get(&format!("{MULTI_REPO}-docker"), OCI_INDEX).await;
    assert_eq!(oci_index_only.status, 404, "{}", oci_index_only.describe());
    wharf.stop_cleanly().await;
}

/// `wharf client-config --out` for a wharf with `default.test` (another origin holding a different
/// image under the same name) as its default upstream and `origin.test` beside it; returns the
/// output directory and the default origin, which must outlive the test's pulls.
async fn client_config_fixture(fx: &Origined) -> (Wharf, Origin, Image, PathBuf) {
    let other = fx.out("default-origin");
    let (default_origin, default_image) = {
        let skopeo_program = support::origin::find_tool("skopeo").expect("skopeo");
        let registry = support::origin::find_tool("docker-registry").expect("docker-registry");
        blocking(move || {
            let origin = Origin::start(&registry);
            let skopeo = Skopeo::new(&skopeo_program);
            let mut layout = Layout::create(&other);
            let image = layout.add_image(&ImageSpec::linux(
                "amd64",
                9,
                &[gzip_layer(5000), gzip_layer(20_000)],
            ));
            layout.tag(&image.manifest, TAG);
            skopeo.push_layout(layout.root(), TAG, &origin, APP_REPO, false);
            (origin, image)
        })
        .await
    };
    let data = fx.out("client-config-data");
    let config = WharfConfig::new(&data)
        .upstream("default.test", &format!("http://{}", default_origin.host()))
        .upstream(UPSTREAM, &format!("http://{}", fx.origin().host()));
    let wharf = Wharf::serve(config.clone()).await;
    let file = config.write(&fx.out("wharf.toml"));
    let out = fx.out("client-config");
    let run = wharf_command_async()
        .args(["client-config", "--config"])
        .arg(&file)
        .arg("--url")
        .arg(wharf.url(""))
        .arg("--out")
        .arg(&out)
        .output()
        .await
        .expect("run wharf client-config");
    assert!(run.status.success(), "{}", describe(&run));
    (wharf, default_origin, default_image, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_through_the_registries_conf_client_config_writes() {
    let Some(fx) =
        Origined::start("skopeo_pulls_through_the_registries_conf_client_config_writes").await
    else {
        return;
    };
    let (wharf, default_origin, default_image, out) = client_config_fixture(&fx).await;
    let conf = out.join("etc/containers/registries.conf");
    let layout = fx.out("via-client-config");
    let fx = blocking(move || {
        // Neither name resolves: each answer came through its mirror entry. The same repository
        // name holds a different image on each registry, so a mirror without its /<registry> path
        // would answer with the default upstream's.
        let inspect = |reference: &str| {
            let out = fx.skopeo.run_with_registries_conf(
                &conf,
                &["inspect", "--no-tags", &format!("docker://{reference}")],
            );
            let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
            v["Digest"].as_str().expect("a Digest").to_string()
        };
        assert_eq!(
            inspect(&format!("{UPSTREAM}/{APP_REPO}:{TAG}")),
            fx.image.manifest.digest
        );
        assert_eq!(
            inspect(&format!("default.test/{APP_REPO}:{TAG}")),
            default_image.manifest.digest
        );
        fx.skopeo.run_with_registries_conf(
            &conf,
            &[
                "copy",
                &format!("docker://{UPSTREAM}/{APP_REPO}:{TAG}"),
                &format!("oci:{}:{TAG}", layout.display()),
            ],
        );
        assert_layout_holds_image(&layout, TAG, &fx.image);
        drop(default_origin);
        fx
    })
    .await;
    let manifest = wharf
        .get(
            &format!(
                "/v2/{UPSTREAM}/{APP_REPO}/manifests/{}",
                fx.image.manifest.digest
            ),
            Some(MANIFEST_ACCEPT),
        )
        .await;
    assert_eq!(manifest.cache(), "HIT", "{}", manifest.describe());
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_through_the_hosts_toml_client_config_writes() {
    let test = "containerd_pulls_through_the_hosts_toml_client_config_writes";
    let Some(containerd) = blocking(move || support::containerd::Containerd::start(test)).await
    else {
        return;
    };
    let Some(fx) = Origined::start(test).await else {
        return;
    };
    let (wharf, default_origin, default_image, out) = client_config_fixture(&fx).await;
    let hosts = out.join("etc/containerd/certs.d");
    let hosts = hosts.to_string_lossy().into_owned();
    let (fx, containerd) = blocking(move || {
        // `origin.test` does not resolve: containerd reaches it only through hosts.toml, and wharf
        // picks the upstream from the ?ns= containerd adds.
        for (reference, image) in [
            (format!("{UPSTREAM}/{APP_REPO}:{TAG}"), &fx.image),
            (format!("default.test/{APP_REPO}:{TAG}"), &default_image),
        ] {
            let fetch = containerd.ctr(&["content", "fetch", "--hosts-dir", &hosts, &reference]);
            assert!(
                fetch.status.success(),
                "ctr content fetch {reference} failed ({})\n--- stdout\n{}\n--- stderr\n{}\n--- containerd\n{}",
                fetch.status,
                String::from_utf8_lossy(&fetch.stdout),
                String::from_utf8_lossy(&fetch.stderr),
                containerd.log()
            );
            let listed = containerd.ctr(&["content", "ls", "-q"]);
            let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
            for d in std::iter::once(&image.manifest).chain(image.blobs()) {
                assert!(
                    listed.contains(&d.digest),
                    "{reference}: {} not fetched; content store:\n{listed}",
                    d.digest
                );
            }
        }
        drop(default_origin);
        (fx, containerd)
    })
    .await;
    drop(containerd);
    let manifest = wharf
        .get(
            &format!(
                "/v2/{UPSTREAM}/{APP_REPO}/manifests/{}",
                fx.image.manifest.digest
            ),
            Some(MANIFEST_ACCEPT),
        )
        .await;
    assert_eq!(manifest.cache(), "HIT", "{}", manifest.describe());
    wharf.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_of_an_origin_without_the_api_come_from_the_fallback_tag() {
    let test = "referrers_of_an_origin_without_the_api_come_from_the_fallback_tag";
    let Some(fx) = Origined::start(test).await else {
        return;
    };
    let host = fx.origin().host();
    let subject = fx.image.manifest.digest.clone();
    let referrers_path = format!("/v2/{APP_REPO}/referrers/{subject}");
    let addr = fx.origin().addr;
    let origin_status = blocking(move || http_status(addr, &referrers_path)).await;
    assert_eq!(
        origin_status,
        Some(404),
        "docker-registry has no referrers API"
    );
    // An index under the spec's fallback tag, next to its subject (its entries stand in for
    // signatures: any descriptor is a referrer).
    let fallback = format!("sha256-{}", &subject[7..]);
    tokio::task::block_in_place(|| {
        fx.skopeo.run(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/{MULTI_REPO}:{TAG}"),
            &format!("docker://{host}/{APP_REPO}:{fallback}"),
        ]);
    });
    let wharf = fx.wharf().await;
    let list = wharf
        .get(
            &format!("/v2/{UPSTREAM}/{APP_REPO}/referrers/{subject}"),
            None,
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.describe());
    assert_eq!(
        list.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let doc: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let mut got: Vec<&str> = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = fx
        .multi
        .children
        .iter()
        .map(|c| c.manifest.digest.as_str())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // A manifest with no fallback tag has no referrers: an empty index, not a 404.
    let child = &fx.multi.children[0].manifest.digest;
    let none = wharf
        .get(
            &format!("/v2/{UPSTREAM}/{MULTI_REPO}/referrers/{child}"),
            None,
        )
        .await;
    assert_eq!(none.status, 200, "{}", none.describe());
    let doc: serde_json::Value = serde_json::from_slice(&none.body).unwrap();
    assert_eq!(doc["manifests"], serde_json::json!([]));
}
