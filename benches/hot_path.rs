//! Micro-benchmarks of the pieces on wharf's request path (criterion):
//!
//! - `routes`: `wharf::registry::routes::parse` (everything after `/v2/`) and
//!   `wharf::goproxy::path::parse` (everything after `/go/`), on the paths clients really send
//!   and on a few they should be refused for;
//! - `index`: `wharf_storage::Index::get_blob` / `get_tag` in a sled database holding many
//!   records (hits and misses);
//! - `fill`: `BlobWriter::write_all` (pwrite into a temp file plus sha256), against sha256 alone
//!   and `Hasher` alone, so the hashing share of a fill is visible;
//! - `memory`: the in-memory manifest and tag lookups of a warm manifest hit
//!   (`wharf::registry::hot`), and a pooled 256 KiB buffer taken and returned
//!   (`wharf::cache::pool`) against allocating one;
//! - `log`: a warm manifest's answer with its request line (`wharf::web::log`: the body wrapped,
//!   the line written into the buffer when the body is done) against the same answer without.
//!   The lines go to stderr: run with `2>/dev/null`.
//! - `gozip`: `wharf::goproxy::hash::check_and_hash_zip` on module zips shaped like the
//!   comparison's generated tree (a dozen deflated source files of 1-24 KiB, and 16 files of
//!   300 KiB), from a file, against reading the same entries through the `zip` crate and
//!   hashing them on one thread (what the check did before).
//!
//! Run: `cargo bench --bench hot_path` (add `-- routes` etc. to pick a group). Files go to a
//! temporary directory that is removed afterwards.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest as _, Sha256};
use wharf_storage::{BlobRecord, Digest, Hasher, Storage, TagRecord};

/// Records in the index benchmark: a large mirror's worth of blobs and tags.
const RECORDS: usize = 100_000;
/// Bytes per `write_all` call: what one upstream read typically hands the fill.
const WRITE_CHUNK: usize = 256 * 1024;
/// Bytes per fill iteration.
const FILL_BYTES: usize = 64 * 1024 * 1024;

fn hex_digest(n: u64) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(n.to_le_bytes())))
}

fn routes(c: &mut Criterion) {
    let digest = hex_digest(1);
    let registry = [
        (
            "manifest_by_tag",
            "library/alpine/manifests/3.20".to_owned(),
        ),
        (
            "manifest_by_digest",
            format!("library/alpine/manifests/{digest}"),
        ),
        ("blob", format!("ghcr.io/org/team/app/blobs/{digest}")),
        ("tags_list", "org/app/tags/list".to_owned()),
        (
            "bad_traversal",
            "library/%2e%2e/manifests/latest".to_owned(),
        ),
        ("bad_digest", "library/alpine/blobs/sha256:../x".to_owned()),
    ];
    let mut group = c.benchmark_group("routes/registry");
    for (name, path) in &registry {
        group.bench_function(*name, |b| {
            b.iter(|| wharf::registry::routes::parse(black_box(path)))
        });
    }
    group.finish();

    let go = [
        ("zip", "golang.org/x/text/@v/v0.14.0.zip"),
        (
            "mod_escaped",
            "github.com/!azure/azure-sdk-for-go/sdk/azcore/@v/v1.11.1.mod",
        ),
        (
            "info_pseudo",
            "github.com/example/mod/@v/v0.0.0-20240101000000-0123456789ab.info",
        ),
        ("list", "github.com/sirupsen/logrus/@v/list"),
        ("latest", "github.com/sirupsen/logrus/@latest"),
        (
            "sumdb_lookup",
            "sumdb/sum.golang.org/lookup/golang.org/x/text@v0.14.0",
        ),
        ("sumdb_tile", "sumdb/sum.golang.org/tile/8/0/x123/456.p/7"),
        ("bad_traversal", "golang.org/x/%2e%2e/@v/v1.0.0.zip"),
    ];
    let mut group = c.benchmark_group("routes/go");
    for (name, path) in go {
        group.bench_function(name, |b| {
            b.iter(|| wharf::goproxy::path::parse(black_box(path)))
        });
    }
    group.finish();

    c.bench_function("routes/digest_parse", |b| {
        b.iter(|| Digest::parse(black_box(&digest)))
    });
}

fn index(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(dir.path()).expect("open storage");
    let index = &storage.index;
    let digests: Vec<Digest> = (0..RECORDS as u64)
        .map(|n| Digest::parse(&hex_digest(n)).expect("digest"))
        .collect();
    for (n, digest) in digests.iter().enumerate() {
        let record = BlobRecord {
            size: n as u64 * 1000,
            media_type: (n % 10 == 0)
                .then(|| "application/vnd.oci.image.manifest.v1+json".to_owned()),
            created_unix: 1_700_000_000,
        };
        index.put_blob(digest, &record).expect("put_blob");
        let tag = TagRecord {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.index.v1+json".to_owned(),
            learned_unix: 1_700_000_000,
        };
        index
            .put_tag(
                "docker.io",
                &format!("library/repo{}", n / 20),
                &format!("v{n}"),
                &tag,
            )
            .expect("put_tag");
    }
    index.flush().expect("flush");
    let missing = Digest::parse(&hex_digest(u64::MAX)).expect("digest");

    let mut group = c.benchmark_group("index");
    // A cheap LCG walks the keys so lookups are not all in one leaf.
    let mut k: u64 = 1;
    let mut next = move || {
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (k >> 33) as usize % RECORDS
    };
    group.bench_function("get_blob_hit", |b| {
        b.iter(|| {
            index
                .get_blob(black_box(&digests[next()]))
                .expect("get_blob")
        })
    });
    group.bench_function("get_blob_miss", |b| {
        b.iter(|| index.get_blob(black_box(&missing)).expect("get_blob"))
    });
    let tags: Vec<(String, String)> = (0..RECORDS)
        .map(|n| (format!("library/repo{}", n / 20), format!("v{n}")))
        .collect();
    group.bench_function("get_tag_hit", |b| {
        b.iter(|| {
            let (repo, tag) = &tags[next()];
            index
                .get_tag("docker.io", black_box(repo), black_box(tag))
                .expect("get_tag")
        })
    });
    group.bench_function("get_tag_miss", |b| {
        b.iter(|| {
            index
                .get_tag("docker.io", black_box("library/nope"), black_box("latest"))
                .expect("get_tag")
        })
    });
    group.finish();
}

fn fill(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(dir.path()).expect("open storage");
    let chunk: Vec<u8> = (0..WRITE_CHUNK)
        .map(|n| (n as u32).wrapping_mul(2654435761).to_le_bytes()[3])
        .collect();

    let mut group = c.benchmark_group("fill");
    group.throughput(Throughput::Bytes(FILL_BYTES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("blob_writer_write_all_64MiB", |b| {
        b.iter_batched(
            || storage.blobs.writer().expect("writer"),
            |mut writer| {
                for _ in 0..FILL_BYTES / WRITE_CHUNK {
                    writer.write_all(black_box(&chunk)).expect("write_all");
                }
                // Dropping without commit removes the temp file (no fsync, no rename).
                writer
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Bytes(WRITE_CHUNK as u64));
    group.bench_function("sha2_sha256_256KiB", |b| {
        let mut hasher = Sha256::new();
        b.iter(|| hasher.update(black_box(&chunk)))
    });
    group.bench_function("wharf_storage_hasher_256KiB", |b| {
        let mut hasher = Hasher::new();
        b.iter(|| hasher.update(black_box(&chunk)))
    });
    group.finish();
}

fn memory(c: &mut Criterion) {
    use bytes::Bytes;
    use wharf::registry::hot::{HotManifest, HotManifests};
    let mut group = c.benchmark_group("memory");
    let hot = HotManifests::new(32 << 20);
    let n = 10_000usize;
    let digests: Vec<Digest> = (0..n as u64)
        .map(|i| {
            let body = Bytes::from(format!("{{\"schemaVersion\":2,\"n\":{i}}}").repeat(20));
            let m = std::sync::Arc::new(HotManifest::new(
                Digest::of(&body),
                body,
                http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
            ));
            hot.put_tag(
                "docker.io",
                &format!("library/repo{}", i / 10),
                &format!("v{i}"),
                &m.digest,
                1000,
            );
            let d = m.digest.clone();
            hot.put_manifest(m);
            d
        })
        .collect();
    let mut i = 0usize;
    group.bench_function("hot_manifest_by_digest", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            black_box(hot.manifest(black_box(&digests[i])))
        })
    });
    group.bench_function("hot_manifest_by_tag", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            let (repo, tag) = (format!("library/repo{}", i / 10), format!("v{i}"));
            black_box(hot.tag("docker.io", black_box(&repo), black_box(&tag), 0))
        })
    });
    group.throughput(Throughput::Bytes(wharf::cache::CHUNK as u64));
    group.bench_function("pooled_chunk_take_freeze_drop", |b| {
        b.iter(|| {
            let buf = wharf::cache::pool::take();
            drop(black_box(wharf::cache::pool::freeze(
                buf,
                wharf::cache::CHUNK,
            )))
        })
    });
    group.bench_function("fresh_zeroed_chunk", |b| {
        b.iter(|| drop(black_box(Bytes::from(vec![0u8; wharf::cache::CHUNK]))))
    });
    group.finish();
}

fn log(c: &mut Criterion) {
    use http_body_util::BodyExt as _;
    use wharf::web::log;
    log::init(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let uri: http::Uri = "/v2/library/alpine/manifests/3.20?ns=docker.io"
        .parse()
        .unwrap();
    let metrics = std::sync::Arc::new(wharf::metrics::Metrics::default());
    let labels = wharf::metrics::RequestLabels {
        protocol: "registry",
        kind: "manifest",
        outcome: "hit",
    };
    let answer_body = || {
        axum::response::Response::new(axum::body::Body::from(bytes::Bytes::from_static(
            &[b'{'; 1500],
        )))
    };
    let mut group = c.benchmark_group("log");
    group.bench_function("answer_without_line", |b| {
        b.iter(|| rt.block_on(answer_body().into_body().collect()).unwrap())
    });
    group.bench_function("answer_with_line", |b| {
        b.iter(|| {
            let line = log::Line {
                method: http::Method::GET,
                uri: uri.clone(),
                client: Some(wharf::net::Client::Ip(std::net::IpAddr::from([
                    10, 1, 2, 3,
                ]))),
            };
            let answer = log::Answer {
                started: std::time::Instant::now(),
                labels: labels.clone(),
                metrics: metrics.clone(),
            };
            let resp = log::attach(Some(line), answer, answer_body(), Some("HIT"));
            rt.block_on(resp.into_body().collect()).unwrap()
        })
    });
    group.finish();
}

/// A module zip of `files` deflated files of hex text (what deflate compresses least well).
fn module_zip(files: usize, size: impl Fn(usize) -> usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut seed = 1u64;
    for n in 0..files {
        w.start_file(
            format!("bench.example/m@v1.0.0/f{n:02}.go"),
            zip::write::SimpleFileOptions::default(),
        )
        .expect("zip entry");
        let mut body = String::from("package m\n\n// ");
        while body.len() < size(n) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            body.push_str(&format!("{seed:016x}"));
        }
        w.write_all(body.as_bytes()).expect("zip write");
    }
    w.finish().expect("zip").into_inner()
}

fn gozip(c: &mut Criterion) {
    use std::io::Read as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("gozip");
    for (name, zip) in [
        ("small_12_files", module_zip(12, |n| 1024 + n * 2048)),
        ("large_16x300KiB", module_zip(16, |_| 300 * 1024)),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &zip).expect("write zip");
        let file = std::fs::File::open(&path).expect("open zip");
        group.throughput(Throughput::Bytes(zip.len() as u64));
        group.bench_function(format!("{name}/check_and_hash_zip"), |b| {
            b.iter(|| {
                wharf::goproxy::hash::check_and_hash_zip(&file, "bench.example/m", "v1.0.0")
                    .expect("check")
            })
        });
        group.bench_function(format!("{name}/zip_crate_one_thread"), |b| {
            b.iter(|| {
                let f = std::fs::File::open(&path).expect("open");
                let mut archive = zip::ZipArchive::new(std::io::BufReader::new(f)).expect("zip");
                let mut buf = vec![0u8; 64 * 1024];
                for i in 0..archive.len() {
                    let mut entry = archive.by_index(i).expect("entry");
                    let mut hasher = Sha256::new();
                    loop {
                        let n = entry.read(&mut buf).expect("read");
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                    }
                    black_box(hasher.finalize());
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = routes, index, fill, memory, log, gozip
}
criterion_main!(benches);
