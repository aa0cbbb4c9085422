//! The air-gap round trip with the real tools: a connected wharf (A) prefetches images from a real
//! registry (Debian's `docker-registry`) and Go modules from a real GOPROXY with a signed checksum
//! database (`tests/support/gosumdb`, built from golang.org/x/mod), and exports one bundle. Every
//! upstream is then stopped, the bundle is imported into a fresh wharf (B) that runs with
//! `offline = true`, and skopeo and the go command pull everything through B: same manifest
//! digests, same blobs, same `h1:` hashes, the go command checking them against the checksum
//! database that B serves from the bundle. skopeo also reads the bundle's OCI layout directly, and
//! the go command reads its `go/` directory with `GOPROXY=file://`.
//!
//! Without skopeo, docker-registry or go on PATH the test prints why and passes, unless
//! `WHARF_REQUIRE_INTEROP` is set (CI sets it).

use support::gotools;
mod support;
use support::*;

use std::collections::BTreeMap;
use std::path::Path;

use gotools::{GoClient, ModuleSource};
use support::oci::{Compression, ImageSpec, LayerSpec, Layout, LayoutReader};
use support::origin::{Origin, Skopeo, require_tools};

const UPSTREAM: &str = "origin.test";

const MODULES: &[ModuleSource] = &[
    (
        "example.com/util",
        "v1.0.0",
        &[
            ("go.mod", "module example.com/util\n\ngo 1.19\n"),
            (
                "util.go",
                "package util\n\nfunc Name() string { return \"util\" }\n",
            ),
        ],
    ),
    (
        "example.com/Upper/thing",
        "v1.1.0-Pre.1",
        &[
            ("go.mod", "module example.com/Upper/thing\n\ngo 1.19\n"),
            (
                "thing.go",
                "package thing\n\nfunc Name() string { return \"thing\" }\n",
            ),
        ],
    ),
    (
        "example.com/lib",
        "v1.0.0",
        &[
            (
                "go.mod",
                "module example.com/lib\n\ngo 1.19\n\nrequire example.com/util v1.0.0\n",
            ),
            (
                "lib.go",
                "package lib\n\nimport \"example.com/util\"\n\nfunc Name() string { return \"lib \" + util.Name() }\n",
            ),
        ],
    ),
];

fn gzip(size: usize) -> LayerSpec {
    LayerSpec {
        size,
        compression: Compression::Gzip,
    }
}

/// A wharf config: `registry` and `goproxy`/`sumdb` URLs, `vkey` the checksum database's key.
fn config(
    data: &Path,
    registry: &str,
    goproxy: &str,
    sumdb: &str,
    vkey: &str,
    offline: bool,
) -> String {
    WharfConfig::new(data)
        .listen_anywhere()
        .offline(offline)
        .upstream(UPSTREAM, registry)
        .go(goproxy)
        .sumdb("sum.test", vkey, sumdb)
        .egress("connect_timeout = \"2s\"\nread_timeout = \"10s\"")
        .toml()
}

/// `wharf <args>`, which must succeed.
async fn wharf(args: &[&str]) -> std::process::Output {
    ok(run_wharf(args).await)
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Downloaded {
    path: String,
    version: String,
    error: Option<String>,
    sum: Option<String>,
    go_mod_sum: Option<String>,
}

/// `go mod download -json` of every module through `client`; each hash must be the published one.
async fn download_and_check(client: &GoClient, up: &gotools::Upstream, via: &str) {
    let versions: Vec<String> = MODULES.iter().map(|(p, v, _)| format!("{p}@{v}")).collect();
    let mut args = vec!["mod", "download", "-json"];
    args.extend(versions.iter().map(String::as_str));
    let run = client.run(&client.outside_module(), &args).await;
    let got: BTreeMap<String, Downloaded> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter::<Downloaded>()
        .map(|d| {
            let d = d.expect("go mod download -json output");
            (format!("{}@{}", d.path, d.version), d)
        })
        .collect();
    assert!(run.success, "through {via}: {}", run.describe());
    for key in &versions {
        let d = got
            .get(key)
            .unwrap_or_else(|| panic!("{via}: no result for {key}"));
        assert_eq!(d.error, None, "{via}: {key}");
        up.module(key).assert_sums(
            d.sum.as_deref(),
            d.go_mod_sum.as_deref(),
            &format!("{via}: {key}"),
        );
    }
}

fn extract(bundle: &Path, to: &Path) {
    tar::Archive::new(std::fs::File::open(bundle).unwrap())
        .unpack(to)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_carries_images_and_modules_to_an_offline_wharf_with_identical_digests_and_hashes()
{
    let Some(tools) = require_tools("interop_bundle", &["skopeo", "docker-registry"]) else {
        return;
    };
    let Some(go) = gotools::find_go("interop_bundle") else {
        return;
    };
    let work = work_dir("wharf-interop-bundle-");
    let w = work.path().to_path_buf();

    // Upstreams: a registry holding an image and a two-platform index, a GOPROXY with sumdb.
    let (origin, skopeo, image, multi) = blocking({
        let w = w.clone();
        move || {
            let origin = Origin::start(&tools[1]);
            let skopeo = Skopeo::new(&tools[0]);
            let mut layout = Layout::create(&w.join("gen-app"));
            let image = layout.add_image(&ImageSpec::linux(
                "amd64",
                11,
                &[gzip(4096), gzip(24 << 20), gzip(100_000)],
            ));
            layout.tag(&image.manifest, "v1");
            skopeo.push_layout(layout.root(), "v1", &origin, "test/app", false);
            let mut layout = Layout::create(&w.join("gen-multi"));
            let multi = layout.add_index(&[
                ImageSpec::linux("amd64", 12, &[gzip(70_000)]),
                ImageSpec::linux("arm64", 13, &[gzip(80_000)]),
            ]);
            layout.tag(&multi.index, "v1");
            skopeo.push_layout(layout.root(), "v1", &origin, "test/multi", true);
            (origin, skopeo, image, multi)
        }
    })
    .await;
    let helper = go.build_helper(&w.join("helper")).await;
    let src = w.join("modules");
    for (path, version, files) in MODULES {
        let dir = src.join(format!("{path}@{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in *files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut up = gotools::Upstream::start(&helper, &src, &[]).await;

    // A: connected; prefetch everything, export what is pinned.
    let a_data = w.join("a-data");
    let a_text = config(
        &a_data,
        &format!("http://{}", origin.host()),
        &up.url("/mod"),
        &up.url("/sumdb"),
        &up.vkey,
        false,
    );
    let a_config = w.join("a.toml");
    std::fs::write(&a_config, &a_text).unwrap();
    let a = Wharf::start_with_config(&a_text, &a_data).await;
    let list = w.join("site.list");
    let mut text = format!("{UPSTREAM}/test/app:v1\n{UPSTREAM}/test/multi:v1\n");
    for (p, v, _) in MODULES {
        text += &format!("{p}@{v}\n");
    }
    std::fs::write(&list, text).unwrap();
    let server = a.url("");
    let cfg = a_config.to_str().unwrap();
    wharf(&[
        "prefetch",
        "--config",
        cfg,
        "--server",
        &server,
        "-f",
        list.to_str().unwrap(),
    ])
    .await;
    let bundle = w.join("site.tar");
    let out = wharf(&[
        "export",
        "--config",
        cfg,
        "--server",
        &server,
        "--pinned",
        "-o",
        bundle.to_str().unwrap(),
    ])
    .await;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    a.stop().await;

    // Every upstream gone.
    up.kill().await;
    drop(origin);

    // B: fresh, offline, its upstreams pointing nowhere; the bundle imported in-process.
    let b_data = w.join("b-data");
    let nowhere = "http://127.0.0.1:9";
    let b_text = config(&b_data, nowhere, nowhere, nowhere, &up.vkey, true);
    let b_config = w.join("b.toml");
    std::fs::write(&b_config, &b_text).unwrap();
    let out = wharf(&[
        "import",
        "--config",
        b_config.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ])
    .await;
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "bundle: {} bytes\n{summary}{}",
        std::fs::metadata(&bundle).unwrap().len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.contains(&format!(
            "{} module version(s) ({} proven by a checksum database)",
            MODULES.len(),
            MODULES.len()
        )),
        "every module's hashes must be proven by the bundle's checksum-database files: {summary}"
    );
    let b = Wharf::start_with_config(&b_text, &b_data).await;
    let b_host = b.addr.to_string();

    // skopeo through B: the same digests as at the origin.
    let out_dir = w.join("pulled");
    let image2 = image.clone();
    let multi2 = multi.clone();
    let skopeo = blocking(move || {
        let app = format!("{b_host}/{UPSTREAM}/test/app:v1");
        assert_eq!(skopeo.inspect_digest(&app), image2.manifest.digest);
        skopeo.run(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{app}"),
            &format!("oci:{}:v1", out_dir.display()),
        ]);
        let reader = LayoutReader::open(&out_dir);
        assert_eq!(reader.resolve("v1"), image2.manifest);
        for blob in image2.blobs() {
            assert_eq!(reader.blob(&blob.digest).len() as u64, blob.size);
        }
        let multi_ref = format!("{b_host}/{UPSTREAM}/test/multi:v1");
        let all = out_dir.with_file_name("pulled-all");
        skopeo.run(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{multi_ref}"),
            &format!("oci:{}:v1", all.display()),
        ]);
        assert_eq!(LayoutReader::open(&all).resolve("v1"), multi2.index);
        skopeo
    })
    .await;

    // skopeo reads the bundle's own OCI layout.
    let extracted = w.join("extracted");
    extract(&bundle, &extracted);
    let oci_dir = extracted.join("oci");
    let image3 = image.clone();
    blocking(move || {
        let out = skopeo.run(&[
            "inspect",
            &format!("oci:{}:{UPSTREAM}/test/app:v1", oci_dir.display()),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Digest"], image3.manifest.digest.as_str(), "{out}");
    })
    .await;

    // The go command through B, checking every hash against sum.test as B serves it.
    let client = GoClient::new(&go, &b.url("/go"), &up.vkey);
    download_and_check(&client, &up, "wharf B").await;
    assert!(
        client
            .modcache()
            .join("cache/download/sumdb/sum.test/lookup/example.com/!upper/thing@v1.1.0-!pre.1")
            .is_file(),
        "the go command did not consult the checksum database through wharf B"
    );
    // And straight from the extracted bundle.
    let file_proxy = format!("file://{}", extracted.join("go").display());
    let client = GoClient::new(&go, &file_proxy, &up.vkey);
    download_and_check(&client, &up, "GOPROXY=file://").await;
    b.stop().await;
}
