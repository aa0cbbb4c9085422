//! Replicas sharing a real S3 store: Garage (a single-node cluster on loopback) as the shared
//! tier, Debian's `docker-registry` as the origin, and the real skopeo and go commands as
//! clients. Upstream requests are counted where they land (the origin's access log, the Go
//! helper's request log).
//!
//! Without garage, skopeo, docker-registry or go the tests print why and pass, unless
//! `WHARF_REQUIRE_INTEROP` is set (CI sets it).

mod support;
use support::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt as _;
use support::garage::{Garage, find_garage};
use support::gotools::{self, GoClient, Upstream};
use support::oci::{Image, ImageSpec, Layout, LayoutReader, gzip_layer};
use support::origin::{Origin, Skopeo, require_tools};
use tempfile::TempDir;
use wharf_storage::{Digest, PinRecord};

const UPSTREAM: &str = "origin.test";
const REPO: &str = "test/app";
const TAG: &str = "v1";

/// Garage, an origin holding one image (a 20 MiB layer among them: a multipart upload), skopeo.
struct Fleet {
    garage: Garage,
    origin: Option<Origin>,
    /// The origin's URL, which outlives it (a replica configured after it stopped).
    origin_url: String,
    skopeo: std::sync::Arc<Skopeo>,
    image: Image,
    work: TempDir,
}

impl Fleet {
    async fn start(test: &str) -> Option<Fleet> {
        Self::start_with(
            test,
            &[gzip_layer(4096), gzip_layer(20 << 20), gzip_layer(100_000)],
        )
        .await
    }

    async fn start_with(test: &str, layers: &[support::oci::LayerSpec]) -> Option<Fleet> {
        let layers = layers.to_vec();
        let garage = find_garage(test)?;
        let tools = require_tools(test, &["skopeo", "docker-registry"])?;
        Some(
            blocking(move || {
                let garage = Garage::start(&garage);
                let origin = Origin::start(&tools[1]);
                let skopeo = Skopeo::new(&tools[0]);
                let work = work_dir("wharf-shared-");
                let mut layout = Layout::create(&work.path().join("generated"));
                let image = layout.add_image(&ImageSpec::linux("amd64", 7, &layers));
                layout.tag(&image.manifest, TAG);
                skopeo.push_layout(layout.root(), TAG, &origin, REPO, false);
                Fleet {
                    garage,
                    origin_url: format!("http://{}", origin.host()),
                    origin: Some(origin),
                    skopeo: std::sync::Arc::new(skopeo),
                    image,
                    work,
                }
            })
            .await,
        )
    }

    fn origin(&self) -> &Origin {
        self.origin.as_ref().expect("origin is running")
    }

    /// Requests the origin has answered so far.
    fn origin_requests(&self) -> usize {
        self.origin().access_log().lines().count()
    }

    /// A replica named `id` with an empty data directory, sharing the bucket.
    async fn replica(&self, id: &str, registry_keys: &str) -> Wharf {
        let url = self.origin_url.clone();
        let shared = self.garage.shared_table(id);
        Wharf::in_temp_dir(|data| {
            WharfConfig::new(data)
                .upstream(UPSTREAM, &url)
                .registry(registry_keys)
                .egress("probe_interval = \"200ms\"\nfailure_threshold = 2")
                .timeouts()
                .tables(&shared)
        })
        .await
    }

    /// Like `replica`, with more `[shared]` keys (eviction settings).
    async fn replica_with(&self, id: &str, shared_keys: &str) -> Wharf {
        let url = self.origin_url.clone();
        let shared = format!("{}{shared_keys}\n", self.garage.shared_table(id));
        Wharf::in_temp_dir(|data| {
            WharfConfig::new(data)
                .upstream(UPSTREAM, &url)
                .egress("probe_interval = \"200ms\"\nfailure_threshold = 2")
                .timeouts()
                .tables(&shared)
        })
        .await
    }

    /// skopeo copies `reference` (`:tag` or `@digest`) through `w` into a new layout and checks
    /// it holds the image byte for byte.
    async fn pull(&self, w: &Wharf, reference: &str, out: &str) {
        let source = format!("docker://{}/{UPSTREAM}/{REPO}{reference}", w.host());
        let dest = self.work.path().join(out);
        let skopeo = self.skopeo.clone();
        let image = self.image.clone();
        blocking(move || {
            skopeo.copy_to_layout(&source, &dest, TAG);
            let reader = LayoutReader::open(&dest);
            assert_eq!(reader.resolve(TAG), image.manifest, "manifest via {source}");
            for blob in image.blobs() {
                assert_eq!(reader.blob(&blob.digest).len() as u64, blob.size);
            }
        })
        .await;
    }
}

impl Fleet {
    /// A fleet whose replica `a` (with `registry_keys`) pulled the image and uploaded all of it.
    async fn filled(test: &str, registry_keys: &str) -> Option<(Fleet, Wharf)> {
        let fleet = Fleet::start(test).await?;
        let a = fleet.replica("a", registry_keys).await;
        fleet.pull(&a, &format!(":{TAG}"), "via-a").await;
        settled(&a).await;
        Some((fleet, a))
    }
}

fn tier(w: &Wharf) -> &wharf::shared::Shared {
    w.state
        .shared
        .as_deref()
        .expect("a shared tier is configured")
}

/// Waits until everything `w` committed is in the bucket.
async fn settled(w: &Wharf) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tier(w).report().pending > 0 {
        assert!(
            Instant::now() < deadline,
            "uploads still pending after 60 s: {:?}",
            tier(w).report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(w: &Wharf) -> serde_json::Value {
    health_at(&w.url("")).await
}

/// `/healthz` of the replica at `base`, parsed.
async fn health_at(base: &str) -> serde_json::Value {
    let text = read_text(client().get(format!("{base}/healthz")).sent().await).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("healthz: {e}: {text}"))
}

/// `GET` of the image's manifest by tag on `w`: 200 with the image's digest.
async fn manifest_by_tag(w: &Wharf, digest: &str) -> Answer {
    let m = w
        .manifest(&format!("/v2/{UPSTREAM}/{REPO}/manifests/{TAG}"))
        .await;
    assert_eq!(m.header("docker-content-digest"), Some(digest));
    m
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{UPSTREAM}/{REPO}/blobs/{digest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_an_image_one_of_them_filled_with_no_upstream_request() {
    let Some((fleet, _a)) = Fleet::filled("replicas_serve_an_image_one_of_them_filled", "").await
    else {
        return;
    };
    for blob in fleet.image.blobs().chain([&fleet.image.manifest]) {
        let key = object_key(&blob.digest);
        let stored = fleet.garage.get(&key).await;
        assert_eq!(
            stored.map(|b| b.len() as u64),
            Some(blob.size),
            "{key} in the bucket"
        );
    }
    let before = fleet.origin_requests();
    // Replicas with empty disks, started after A's records are in the bucket.
    let b = fleet.replica("b", "").await;
    let c = fleet.replica("c", "").await;
    fleet.pull(&b, &format!(":{TAG}"), "via-b").await;
    fleet
        .pull(&c, &format!("@{}", fleet.image.manifest.digest), "via-c")
        .await;
    assert_eq!(
        fleet.origin_requests(),
        before,
        "B and C asked the origin:\n{}",
        fleet.origin().access_log()
    );
    // The next hit on B is its own disk.
    let layer = &fleet.image.layers[1];
    let again = b.get(&blob_path(&layer.digest), None).await;
    assert_eq!((again.status, again.cache()), (200, "HIT"));
    assert_eq!(again.body.len() as u64, layer.size);
    let m = tier(&b)
        .stats
        .hits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        m >= 4,
        "B filled the manifest, config and layers from the tier ({m})"
    );
}

/// A replica's shared-tier loops (copying, reading the bucket, housekeeping) end with its
/// server: started again in the same process, it finds its store free (they held it open, so
/// the index was still locked) and its content where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_and_started_again_in_one_process_finds_its_store_free() {
    let Some((fleet, a)) = Fleet::filled("a_replica_stopped_and_started_again", "").await else {
        return;
    };
    let before = fleet.origin_requests();
    let a = a.restart().await;
    let layer = &fleet.image.layers[1];
    let again = a.get(&blob_path(&layer.digest), None).await;
    assert_eq!((again.status, again.cache()), (200, "HIT"));
    assert_eq!(again.body.len() as u64, layer.size);
    assert_eq!(
        fleet.origin_requests(),
        before,
        "the restarted replica asked the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_serves_stale_tags_from_the_bucket_when_the_upstream_is_down() {
    let Some((mut fleet, _a)) =
        Fleet::filled("a_new_replica_serves_stale_tags", "tag_ttl = \"1s\"").await
    else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(fleet.origin.take());
    let d = fleet.replica("d", "tag_ttl = \"1s\"").await;
    let m = manifest_by_tag(&d, &fleet.image.manifest.digest).await;
    assert_eq!(m.cache(), "STALE", "past tag_ttl with the origin gone");
    fleet.pull(&d, &format!(":{TAG}"), "via-d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_in_the_bucket_is_never_served_whole_and_is_replaced() {
    let Some((fleet, _a)) = Fleet::filled("a_corrupt_object_in_the_bucket", "").await else {
        return;
    };
    let layer = &fleet.image.layers[2];
    let key = object_key(&layer.digest);
    let good = fleet.garage.get(&key).await.expect("A uploaded the layer");
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    fleet.garage.put(&key, bad.clone()).await;

    let b = fleet.replica("b", "").await;
    let path = blob_path(&layer.digest);
    let r = client().get(b.url(&path)).sent().await;
    let status = r.status().as_u16();
    let body = r.bytes().await;
    assert!(
        status != 200
            || body
                .as_ref()
                .map_or(true, |b| b.as_ref() != good.as_slice()),
        "the corrupt copy must not end as a complete, valid body"
    );
    assert!(
        !matches!(&body, Ok(b) if b.as_ref() == bad.as_slice()),
        "the corrupt bytes were served as a complete body"
    );
    // Removed from the bucket, then refetched from the origin and uploaded again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = b.get(&path, None).await;
        if got.status == 200 && got.body.as_ref() == good.as_slice() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no good body: {}",
            got.describe()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tier(&b)
            .stats
            .discarded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    settled(&b).await;
    assert_eq!(
        fleet.garage.get(&key).await.as_deref(),
        Some(good.as_slice()),
        "the bucket holds the verified object again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_serving_while_the_store_is_down_and_use_it_again_when_it_returns() {
    let Some(mut fleet) = Fleet::start("replicas_keep_serving_while_the_store_is_down").await
    else {
        return;
    };
    let a = fleet.replica("a", "").await;
    let b = fleet.replica("b", "").await;
    fleet.pull(&a, &format!(":{TAG}"), "via-a").await;
    settled(&a).await;
    // Stopping and resuming take a moment; blocking this runtime's thread for it is fine.
    fleet.garage.stop();
    // A serves from its disk; B, which never had the image, from the origin.
    fleet.pull(&a, &format!(":{TAG}"), "via-a-again").await;
    fleet.pull(&b, &format!(":{TAG}"), "via-b").await;
    let h = health(&b).await;
    assert_eq!(h["shared"]["up"], false, "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    // Back without a restart: the probe marks it up and B's commits reach the bucket.
    fleet.garage.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&b).await["shared"]["up"] != true {
        assert!(Instant::now() < deadline, "the tier never came back up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(&b).await;
    assert_eq!(health(&b).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_a_module_graph_one_of_them_filled_with_no_upstream_request() {
    let test = "replicas_serve_a_module_graph";
    let Some(garage) = find_garage(test) else {
        return;
    };
    let Some(go) = gotools::find_go(test) else {
        return;
    };
    let garage = blocking(move || Garage::start(&garage)).await;
    let work = work_dir("wharf-shared-go-");
    let helper = go.build_helper(&work.path().join("helper")).await;
    let src = work.path().join("modules");
    for (path, version, files) in MODULES {
        let dir = src.join(format!("{path}@{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in *files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let up = Upstream::start(&helper, &src, &[]).await;
    let replica = |id: &str| {
        let shared = garage.shared_table(id);
        let (proxy, sumdb) = (up.url("/mod"), up.url("/sumdb"));
        let vkey = up.vkey.clone();
        move |data: &Path| {
            WharfConfig::new(data)
                .go(&proxy)
                .sumdb("sum.test", &vkey, &sumdb)
                .egress("connect_timeout = \"2s\"\nread_timeout = \"10s\"")
                .tables(&shared)
        }
    };
    let versions: Vec<String> = MODULES.iter().map(|(p, v, _)| format!("{p}@{v}")).collect();
    let mut args = vec!["mod", "download", "-json"];
    args.extend(versions.iter().map(String::as_str));

    let a = Wharf::in_temp_dir(replica("a")).await;
    let client = GoClient::new(&go, &a.url("/go"), &up.vkey);
    client.run(&client.outside_module(), &args).await.ok();
    settled(&a).await;
    let before = up.requests();
    for id in ["b", "c"] {
        let w = Wharf::in_temp_dir(replica(id)).await;
        let client = GoClient::new(&go, &w.url("/go"), &up.vkey);
        let run = client.run(&client.outside_module(), &args).await.ok();
        for v in &versions {
            assert!(
                run.stdout.contains(&format!(
                    "\"Version\": \"{}\"",
                    v.split('@').nth(1).unwrap()
                )),
                "{v} in {}",
                run.stdout
            );
        }
        assert!(!run.stdout.contains("\"Error\""), "{}", run.stdout);
    }
    assert_eq!(
        up.requests(),
        before,
        "replicas b and c asked the Go upstream"
    );
}

const MODULES: &[gotools::ModuleSource] = &[
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
        "example.com/lib",
        "v1.0.0",
        &[
            (
                "go.mod",
                "module example.com/lib\n\ngo 1.19\n\nrequire example.com/util v1.0.0\n",
            ),
            (
                "lib.go",
                "package lib\n\nimport \"example.com/util\"\n\nfunc Name() string { return util.Name() }\n",
            ),
        ],
    ),
];

/// `n` replicas as processes on fixed loopback ports, knowing each other (`[peers]`), each with
/// its own data directory; `config` gives each its config (data directory in, config out).
struct Replicas {
    servers: Vec<Option<Server>>,
    urls: Vec<String>,
    dir: TempDir,
}

impl Replicas {
    async fn start(n: usize, config: impl Fn(&Path, usize) -> WharfConfig) -> Replicas {
        let dir = work_dir("wharf-replicas-");
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let secret = dir.path().join("peer.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let members: Vec<String> = urls.iter().map(|u| quote(u)).collect();
        let mut servers = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let data: PathBuf = dir.path().join(format!("data-{i}"));
            let peers = format!(
                "[peers]\nmembers = [{}]\nadvertise = {}\nsecret_file = {}\n",
                members.join(", "),
                quote(&urls[i]),
                quote(&secret.display().to_string()),
            );
            let file = config(&data, i)
                .tables(&peers)
                .write(&dir.path().join(format!("wharf-{i}.toml")));
            let log = dir.path().join(format!("wharf-{i}.log"));
            servers.push(Some(Server::start_on(&file, &log, *addr).await));
        }
        Replicas { servers, urls, dir }
    }

    /// Replica `i`'s committed file of `digest`.
    fn blob_file(&self, i: usize, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self.dir
            .path()
            .join(format!("data-{i}/blobs/sha256"))
            .join(&hex[..2])
            .join(hex)
    }

    fn index_of(&self, url: &str) -> usize {
        self.urls.iter().position(|u| u == url).expect("a member")
    }

    fn logs(&self) -> String {
        self.servers
            .iter()
            .flatten()
            .map(|s| s.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// GETs `url` and returns the body's digest, or why it failed.
async fn digest_of(url: String) -> Result<String, String> {
    let r = client().get(&url).sent().await;
    if r.status() != 200 {
        return Err(format!("{url}: {}", r.status()));
    }
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("{url}: body cut: {e}"))?;
    Ok(sha256(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_eight_cold_gets_each_cost_one_upstream_get() {
    let Some(fleet) = Fleet::start_with(
        "three_replicas_of_eight_cold_gets_each",
        &[gzip_layer(64 << 20)],
    )
    .await
    else {
        return;
    };
    let origin = fleet.origin_url.clone();
    let replicas = Replicas::start(3, |data, i| {
        WharfConfig::new(data)
            .upstream(UPSTREAM, &origin)
            .timeouts()
            .tables(&fleet.garage.shared_table(&format!("r{i}")))
    })
    .await;
    let layer = fleet.image.layers[0].clone();
    let path = blob_path(&layer.digest);
    let gets: Vec<_> = (0..24)
        .map(|i| {
            let url = format!("{}{path}", replicas.urls[i % 3]);
            tokio::spawn(digest_of(url))
        })
        .collect();
    for g in gets {
        let got = g.await.unwrap();
        assert_eq!(
            got.as_deref(),
            Ok(layer.digest.as_str()),
            "{}",
            replicas.logs()
        );
    }
    let origin_path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    assert_eq!(
        fleet.origin().requests("GET", &origin_path),
        1,
        "24 cold GETs over 3 replicas fetch the blob once:\n{}",
        fleet.origin().access_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_fill_leaves_the_other_replicas_clients_complete_bodies() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(4 << 20, 21);
    let digest = up.put_blob(&blob);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(10)));
    let url = up.url();
    let mut replicas = Replicas::start(3, |data, _| WharfConfig::fake(&url, data)).await;
    let owner_url =
        wharf::shared::peers::owner_of(replicas.urls.iter().map(String::as_str), &digest)
            .expect("an owner")
            .to_string();
    let owner = replicas.index_of(&owner_url);
    let path = format!("/v2/team/app/blobs/{digest}");
    let clients: Vec<_> = (0..3)
        .filter(|&i| i != owner)
        .flat_map(|i| [i, i])
        .map(|i| tokio::spawn(digest_of(format!("{}{path}", replicas.urls[i]))))
        .collect();
    // Both others asked the owner, which is fetching upstream and streaming to them: kill it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&replicas.urls[owner], "wharf_peer_served_total").await < 2 {
        assert!(
            Instant::now() < deadline,
            "the others never asked the owner:\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.count("GET", "/blobs/") >= 1, "the owner is filling");
    let killed = replicas.servers[owner].take().expect("the owner runs");
    killed.signal("KILL");
    drop(killed);
    for c in clients {
        assert_eq!(
            c.await.unwrap().as_deref(),
            Ok(digest.as_str()),
            "{}",
            replicas.logs()
        );
    }
    assert!(
        up.count("GET", "/blobs/") <= 3,
        "the owner once, then each survivor finished from upstream at most once"
    );
    let mut failovers = 0;
    for (i, u) in replicas.urls.iter().enumerate() {
        if i != owner {
            failovers += metric(u, "wharf_peer_failovers_total").await;
        }
    }
    assert!(failovers >= 1, "a survivor finished a fill the owner began");
}

/// The value of an unlabelled counter on `/metrics` of the replica at `base` (0 when absent).
async fn metric(base: &str, name: &str) -> u64 {
    let text = match client().get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_replica_reads_the_bucket_and_never_an_upstream() {
    let Some((fleet, _a)) = Fleet::filled("an_offline_replica_reads_the_bucket", "").await else {
        return;
    };
    let before = fleet.origin_requests();
    let url = fleet.origin_url.clone();
    let shared = fleet.garage.shared_table("o");
    let o = Wharf::in_temp_dir(|data| {
        WharfConfig::new(data)
            .upstream(UPSTREAM, &url)
            .offline(true)
            .tables(&shared)
    })
    .await;
    fleet.pull(&o, &format!(":{TAG}"), "via-offline").await;
    assert_eq!(
        fleet.origin_requests(),
        before,
        "an offline replica asked the origin"
    );
    // What the bucket lacks is refused as offline, not fetched.
    let missing = o
        .get(&blob_path(&format!("sha256:{}", "0".repeat(64))), None)
        .await;
    assert_ne!(missing.status, 200, "{}", missing.describe());
    assert_eq!(fleet.origin_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_one_replica_is_served_by_another_offline() {
    let Some(garage) = find_garage("an_import_into_one_replica") else {
        return;
    };
    let garage = blocking(move || Garage::start(&garage)).await;
    let dir = work_dir("wharf-shared-import-");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = WharfConfig::new(&dir.path().join("data-a"))
        .upstream(UPSTREAM, "http://127.0.0.1:9")
        .offline(true)
        .listen(addr)
        .tables(&garage.shared_table("a"))
        .write(&dir.path().join("a.toml"));
    let a = Server::start_on(&config, &dir.path().join("a.log"), addr).await;

    let mut layout = Layout::create(&dir.path().join("layout"));
    let image = layout.add_image(&ImageSpec::linux("amd64", 9, &[gzip_layer(300_000)]));
    layout.tag(&image.manifest, "v9");
    let name = format!("{UPSTREAM}/gen/app");
    let root = layout.root().display().to_string();
    let cfg = config.display().to_string();
    let out = run_wharf(&["import", "--config", &cfg, "--name", &name, &root]).await;
    assert!(out.status.success(), "{}\n{}", describe(&out), a.logs());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health_at(&a.url("")).await;
        if h["shared"]["pending"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never uploaded the import: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let shared = garage.shared_table("b");
    let b = Wharf::in_temp_dir(|data| {
        WharfConfig::new(data)
            .upstream(UPSTREAM, "http://127.0.0.1:9")
            .offline(true)
            .tables(&shared)
    })
    .await;
    let m = b
        .get(&format!("/v2/{name}/manifests/v9"), Some(MANIFEST_ACCEPT))
        .await;
    assert_eq!(m.status, 200, "{}", m.describe());
    assert_eq!(
        m.header("docker-content-digest"),
        Some(image.manifest.digest.as_str())
    );
    let layer = &image.layers[0];
    let l = b
        .get(&format!("/v2/{name}/blobs/{}", layer.digest), None)
        .await;
    assert_eq!((l.status, sha256(&l.body)), (200, layer.digest.clone()));
}

#[tokio::test]
async fn check_config_names_what_is_wrong_with_the_shared_tier_and_peers() {
    let dir = work_dir("wharf-shared-config-");
    let write = |name: &str, tables: &str| {
        WharfConfig::new(&dir.path().join("data"))
            .upstream(UPSTREAM, "http://127.0.0.1:9")
            .tables(tables)
            .write(&dir.path().join(name))
            .display()
            .to_string()
    };
    let check = |cfg: String| async move { run_wharf(&["check-config", "--config", &cfg]).await };

    let far = write(
        "far.toml",
        "[shared]\nendpoint = \"http://store.example.net:3900\"\nbucket = \"wharf\"\n",
    );
    let out = check(far).await;
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "shared.endpoint");
    expect_stderr(&out, "store.example.net");

    // No credentials: the check warns, serve refuses; neither prints a secret it never had.
    let anon = write(
        "anon.toml",
        "[shared]\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"wharf\"\n",
    );
    let out = check(anon.clone()).await;
    assert!(out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "WHARF_SHARED_ACCESS_KEY_ID");
    let out = run_wharf(&["serve", "--config", &anon, "--listen", "127.0.0.1:0"]).await;
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "WHARF_SHARED_ACCESS_KEY_ID");

    let peers = write(
        "peers.toml",
        "[peers]\nmembers = [\"http://127.0.0.1:5001\"]\nadvertise = \"http://127.0.0.1:5002\"\n\
         secret_file = \"/nonexistent\"\n",
    );
    let out = check(peers).await;
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "peers.advertise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_bound_of_one_repository_never_deletes_the_fleets_object() {
    let Some(garage) = find_garage("a_size_bound_of_one_repository") else {
        return;
    };
    let garage = blocking(move || Garage::start(&garage)).await;
    let up = FakeRegistry::start().await;
    let layer = bytes_of(300_000, 41);
    up.put_image("good/app", "v1", std::slice::from_ref(&layer));
    let digest = sha256(&layer);
    // Another repository's manifest declares the same layer one byte long.
    let lying = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":1}}]}}"#
    );
    up.put_manifest(
        "evil/x",
        Some("latest"),
        lying.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let replica = |id: &str| {
        let (url, shared) = (up.url(), garage.shared_table(id));
        move |data: &Path| WharfConfig::fake(&url, data).tables(&shared)
    };
    let a = Wharf::in_temp_dir(replica("a")).await;
    let got = a.get(&format!("/v2/good/app/blobs/{digest}"), None).await;
    assert_eq!(got.status, 200, "{}", got.describe());
    settled(&a).await;
    let key = object_key(&digest);
    assert!(garage.get(&key).await.is_some(), "A uploaded the layer");

    let c = Wharf::in_temp_dir(replica("c")).await;
    let m = c
        .get("/v2/evil/x/manifests/latest", Some(MANIFEST_ACCEPT))
        .await;
    assert_eq!(m.status, 200, "{}", m.describe());
    let refused = c.get(&format!("/v2/evil/x/blobs/{digest}"), None).await;
    assert_ne!(refused.status, 200, "{}", refused.describe());
    assert_eq!(
        garage.get(&key).await.map(|b| b.len()),
        Some(layer.len()),
        "the bucket's good copy is still there"
    );
    assert_eq!(
        tier(&c)
            .stats
            .discarded
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_on_the_owner_does_not_block_the_others() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(500_000, 42);
    let digest = up.put_blob(&blob);
    let url = up.url();
    let replicas = Replicas::start(2, |data, _| WharfConfig::fake(&url, data)).await;
    let owner_url =
        wharf::shared::peers::owner_of(replicas.urls.iter().map(String::as_str), &digest)
            .expect("an owner")
            .to_string();
    let owner = replicas.index_of(&owner_url);
    let other = 1 - owner;
    let path = format!("/v2/team/app/blobs/{digest}");
    assert_eq!(
        digest_of(format!("{}{path}", replicas.urls[owner]))
            .await
            .as_deref(),
        Ok(digest.as_str())
    );
    // Bit rot on the owner's disk.
    let file = replicas.blob_file(owner, &digest);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(Instant::now() < deadline, "the owner never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let first = digest_of(format!("{}{path}", replicas.urls[other])).await;
    assert_ne!(
        first.as_deref(),
        Ok(sha256(&bytes).as_str()),
        "corrupt bytes served whole"
    );
    let second = digest_of(format!("{}{path}", replicas.urls[other])).await;
    assert_eq!(
        second.as_deref(),
        Ok(digest.as_str()),
        "the next request fetches elsewhere:\n{}",
        replicas.logs()
    );
}

/// A listener that accepts connections, keeps what they send, and closes them.
async fn trap() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt as _;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await
                {
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_secret_never_goes_through_the_egress_proxy() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(100_000, 43);
    let digest = up.put_blob(&blob);
    let (proxy, seen) = trap().await;
    let url = up.url();
    let replicas = Replicas::start(2, |data, _| {
        WharfConfig::fake(&url, data).egress(&format!("proxy = {}", quote(&proxy)))
    })
    .await;
    let owner_url =
        wharf::shared::peers::owner_of(replicas.urls.iter().map(String::as_str), &digest)
            .expect("an owner")
            .to_string();
    let other = 1 - replicas.index_of(&owner_url);
    let _ = digest_of(format!(
        "{}/v2/team/app/blobs/{digest}",
        replicas.urls[other]
    ))
    .await;
    assert!(
        metric(&owner_url, "wharf_peer_served_total").await >= 1,
        "the owner was asked directly:\n{}",
        replicas.logs()
    );
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(!text.is_empty(), "upstream requests go through the proxy");
    assert!(
        !text.contains("x-wharf-peer"),
        "the proxy saw the peer secret:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_listed_under_two_names_owns_both_shares() {
    let up = FakeRegistry::start().await;
    let dir = work_dir("wharf-twice-");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let names = [
        format!("http://127.0.0.1:{}", addr.port()),
        format!("http://localhost:{}", addr.port()),
    ];
    // A blob the second name owns.
    let (blob, digest) = (0..64)
        .map(|seed| {
            let b = bytes_of(50_000, 100 + seed);
            let d = sha256(&b);
            (b, d)
        })
        .find(|(_, d)| {
            wharf::shared::peers::owner_of(names.iter().map(String::as_str), d)
                == Some(names[1].as_str())
        })
        .expect("one of 64 digests scores highest for the second name");
    up.put_blob(&blob);
    std::fs::write(dir.path().join("secret"), "0123456789abcdef0123").unwrap();
    let config = WharfConfig::fake(&up.url(), &dir.path().join("data"))
        .allow(&["127.0.0.1", "localhost"])
        .tables(&format!(
            "[peers]\nmembers = [{}, {}]\nadvertise = {}\nsecret_file = {}\n",
            quote(&names[0]),
            quote(&names[1]),
            quote(&names[0]),
            quote(&dir.path().join("secret").display().to_string()),
        ))
        .write(&dir.path().join("wharf.toml"));
    let server = Server::start_on(&config, &dir.path().join("wharf.log"), addr).await;
    let path = format!("/v2/team/app/blobs/{digest}");
    for _ in 0..2 {
        assert_eq!(
            digest_of(server.url(&path)).await.as_deref(),
            Ok(digest.as_str()),
            "{}",
            server.logs()
        );
    }
    let h = health_at(&server.url("")).await;
    let peers = h["peers"].as_array().expect("peers in /healthz");
    assert!(
        peers.iter().all(|p| p["self"] == true),
        "both names are this replica: {h}"
    );
}

/// `POST /admin/gc?shared=true...` on `w` (what `wharf gc --shared` sends): the report.
async fn shared_gc(w: &Wharf, query: &str) -> String {
    let r = client()
        .post(w.url(&format!("/admin/gc?shared=true{query}")))
        .header("x-wharf-admin-token", w.admin_secret())
        .sent()
        .await;
    let status = r.status().as_u16();
    let text = read_text(r).await;
    assert_eq!(status, 200, "{text}");
    text
}

fn object_key(digest: &str) -> String {
    format!("blobs/sha256/{}", &digest["sha256:".len()..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_over_budget_loses_its_least_recently_used_unpinned_objects_first() {
    let Some(fleet) = Fleet::start("a_bucket_over_budget_loses_its_least_recently_used").await
    else {
        return;
    };
    let img = &fleet.image;
    let (small, big, medium) = (&img.layers[0], &img.layers[1], &img.layers[2]);
    let all: Vec<_> = img.blobs().chain([&img.manifest]).cloned().collect();
    let total: u64 = all.iter().map(|b| b.size).sum();
    // Budget: what stays once the two least recently used unpinned layers are gone.
    let budget = total - small.size - medium.size;

    // B fills the bucket, notes when each object was last served and pins the big layer.
    let b = fleet.replica("b", "").await;
    fleet.pull(&b, &format!(":{TAG}"), "via-b").await;
    b.state.flush_atimes().await;
    let now = wharf_storage::unix_now();
    let index = &b.state.storage.index;
    let at = |d: &str, t: u64| (Digest::parse(d).unwrap(), t);
    index
        .put_atimes(&[
            at(&big.digest, 500),
            at(&small.digest, 1000),
            at(&medium.digest, 2000),
            // Later than any upload (an upload counts as a use, to the second).
            at(&img.config.digest, now + 60),
            at(&img.manifest.digest, now + 60),
        ])
        .unwrap();
    let pin = PinRecord {
        reason: "test".into(),
        pinned_unix: now,
    };
    index
        .put_pin(&Digest::parse(&big.digest).unwrap(), &pin)
        .unwrap();
    settled(&b).await;
    tier(&b).publish_atimes().await.unwrap();

    // A, the gc replica, never served anything: it learns the pin from the journal and the
    // access times from B's published ones.
    let a = fleet
        .replica_with(
            "a",
            &format!(
                "gc = true\ngc_interval = \"1h\"\nmax_size = {budget}\nlow_watermark_percent = 100"
            ),
        )
        .await;
    health(&a).await; // answered once A has joined (read the journal)
    assert!(
        a.state
            .storage
            .index
            .get_pin(&Digest::parse(&big.digest).unwrap())
            .unwrap()
            .is_some(),
        "the pin reached A through the journal"
    );

    let dry = shared_gc(&a, "&dry_run=true").await;
    assert!(
        dry.contains("would remove 2 objects")
            && dry.contains(&small.digest)
            && dry.contains(&medium.digest),
        "{dry}"
    );
    for blob in &all {
        assert!(
            fleet.garage.get(&object_key(&blob.digest)).await.is_some(),
            "the dry run removed {}",
            blob.digest
        );
    }

    let real = shared_gc(&a, "").await;
    assert!(real.contains("removed 2 objects"), "{real}");
    let gone = [&small.digest, &medium.digest];
    for blob in &all {
        let held = fleet.garage.get(&object_key(&blob.digest)).await.is_some();
        assert_eq!(
            held,
            !gone.contains(&&blob.digest),
            "{} after eviction: {real}",
            blob.digest
        );
    }
    assert!(
        !fleet.garage.keys("journal/").await.is_empty()
            && !fleet.garage.keys("atime/").await.is_empty(),
        "eviction touches only blobs/"
    );
    let metrics = a.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("wharf_shared_evictions_total 2")
            && text.contains(&format!(
                "wharf_shared_evicted_bytes_total {}",
                small.size + medium.size
            ))
            && text.contains(&format!("wharf_shared_bucket_bytes {budget}")),
        "{text}"
    );
    // Under budget now: another pass removes nothing.
    let again = shared_gc(&a, "").await;
    assert!(again.contains("removed 0 objects"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_snapshot_and_journal_truncation_serves_tags_from_the_bucket() {
    let Some(fleet) = Fleet::start("a_replica_started_after_a_snapshot").await else {
        return;
    };
    let a = fleet
        .replica_with("a", "gc = true\ngc_interval = \"1h\"")
        .await;
    fleet.pull(&a, &format!(":{TAG}"), "via-a").await;
    settled(&a).await;
    // B joins before the snapshot: its cursor is past what the snapshot covers.
    let b = fleet.replica("b", "").await;
    health(&b).await;
    // A batch and a snapshot from long ago: the snapshot replaces both.
    let ancient = "journal/000000000001000-zz-00000000";
    let batch = br#"{"replica":"zz","records":[]}"#.to_vec();
    fleet.garage.put(ancient, batch).await;
    fleet
        .garage
        .put("snapshot/000000000000500-zz", b"{}".to_vec())
        .await;

    let report = tier(&a).snapshot().await.unwrap();
    let name = report.name.clone().expect("a snapshot was written");
    assert!(report.records > 0, "{report:?}");
    assert!(
        report.journal_deleted >= 1 && report.snapshots_deleted == 1,
        "{report:?}"
    );
    assert_eq!(fleet.garage.get(ancient).await, None);
    assert_eq!(
        fleet.garage.keys("snapshot/").await,
        [format!("snapshot/{name}")]
    );
    let recent = fleet.garage.keys("journal/").await;
    assert!(!recent.is_empty(), "batches inside the skew window stay");
    // Nothing new since: no second snapshot.
    assert_eq!(tier(&a).snapshot().await.unwrap().name, None);

    // The window has passed: the rest of the journal goes too.
    let bucket = fleet.garage.client();
    for key in recent {
        bucket
            .delete(&object_store::path::Path::from(key))
            .await
            .unwrap();
    }
    assert!(!tier(&b).load_snapshot().await.unwrap(), "B is past it");
    assert_eq!(
        tier(&b)
            .stats
            .snapshots_loaded
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    let before = fleet.origin_requests();
    let c = fleet.replica("c", "").await;
    manifest_by_tag(&c, &fleet.image.manifest.digest).await;
    assert_eq!(
        tier(&c)
            .stats
            .snapshots_loaded
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    fleet.pull(&c, &format!(":{TAG}"), "via-c").await;
    assert_eq!(
        fleet.origin_requests(),
        before,
        "C asked the origin:\n{}",
        fleet.origin().access_log()
    );
}
