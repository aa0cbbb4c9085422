//! `wharf prefetch`: fills the cache ahead of need and pins what it fetched, so an air-gapped
//! export (or a flaky network later) finds it. Everything goes through wharf's public protocol
//! endpoints, exactly as a client's pull would (so every byte is verified by the same code), and
//! only the pins go through the admin API. Works against a running server or in-process.
//!
//! Images: the manifest (index or single), each child manifest (those of `--platform` only, if
//! given), then config and layers, a few at a time. Go modules: `.info`, `.mod`, `.zip` of a
//! canonical version (`@latest` and other queries are resolved first); wharf checks them
//! against the checksum database while filling.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderName, StatusCode, header};
use wharf_storage::Digest;

use crate::bundle::{
    ImageRef, Item, ModuleRef, PinReply, PinRequest, Platform, children_of, collect_items, short,
};
use crate::config::Config;
use crate::error::Error;
use crate::goproxy::path::{escape, is_canonical};
use crate::registry::manifest;
use crate::tools::client::{Client, Reply, Via};
use crate::tools::progress::{self, Progress};

/// Blobs fetched at once for one image.
const PARALLEL_BLOBS: usize = 4;
/// Largest manifest read (the registry's own limit is at least 4 MiB).
const MAX_MANIFEST: usize = 16 << 20;
/// Tries of a request wharf answers 503 (too many fills at once).
const BUSY_TRIES: u32 = 10;

/// How images are prefetched: one platform only, and whether with their referrers.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    pub platform: Option<&'a Platform>,
    pub referrers: bool,
}

/// What one item cost.
#[derive(Default)]
struct Stats {
    bytes: AtomicU64,
    /// Bytes wharf had to fetch upstream (`X-Cache: MISS`).
    fetched: AtomicU64,
    objects: AtomicUsize,
}

/// Runs `wharf prefetch`.
pub async fn command(
    config: &Config,
    via: Via<'_>,
    args: &[String],
    lists: &[PathBuf],
    platform: Option<Platform>,
    referrers: bool,
) -> Result<ExitCode, Error> {
    let items = match collect_items(args, lists) {
        Ok(i) if i.is_empty() => {
            eprintln!(
                "wharf: nothing to prefetch: name images, module@version, a go.mod / go.sum, or -f LIST"
            );
            return Ok(ExitCode::from(2));
        }
        Ok(i) => i,
        Err(e) => {
            eprintln!("wharf: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let client = match Client::connect(config, via).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    eprintln!(
        "wharf: prefetching {} item(s) through {}",
        items.len(),
        client.describe()
    );
    let progress = Progress::new("prefetch", 0);
    let mut totals = Totals::default();
    for item in &items {
        let stats = Stats::default();
        let with = Options {
            platform: platform.as_ref(),
            referrers,
        };
        let (label, pinned) = one(&client, config, item, with, &progress, &stats).await;
        match pinned {
            Ok(n) => totals.add(item, n, &stats, &label, &progress),
            Err(e) => {
                progress.println(&format!("FAILED {label}: {e}"));
                totals.failed.push(label);
            }
        }
    }
    progress.finish();
    if let Err(e) = client.finish().await {
        eprintln!("wharf: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(totals.report(&progress))
}

/// What the whole run did.
#[derive(Default)]
struct Totals {
    images: usize,
    modules: usize,
    pinned: usize,
    failed: Vec<String>,
    stats: Stats,
}

impl Totals {
    /// Counts an item that was fetched and pinned, and says so.
    fn add(&mut self, item: &Item, pinned: usize, stats: &Stats, label: &str, progress: &Progress) {
        self.pinned += pinned;
        match item {
            Item::Image(_) => self.images += 1,
            Item::Module { .. } => self.modules += 1,
        }
        let (b, f) = (
            stats.bytes.load(Ordering::Relaxed),
            stats.fetched.load(Ordering::Relaxed),
        );
        progress.println(&format!(
            "ok {label}: {} objects, {} ({} from upstream)",
            stats.objects.load(Ordering::Relaxed),
            progress::bytes(b),
            progress::bytes(f)
        ));
        self.stats.bytes.fetch_add(b, Ordering::Relaxed);
        self.stats.fetched.fetch_add(f, Ordering::Relaxed);
    }

    /// The summary line (and the failed items); failure if any item failed.
    fn report(&self, progress: &Progress) -> ExitCode {
        let elapsed = progress.elapsed();
        let bytes = self.stats.bytes.load(Ordering::Relaxed);
        println!(
            "prefetch: {} image(s), {} module version(s), {} ({} fetched upstream, {}), {} object(s) pinned, {} failed, in {:.1} s",
            self.images,
            self.modules,
            progress::bytes(bytes),
            progress::bytes(self.stats.fetched.load(Ordering::Relaxed)),
            progress::rate(bytes, elapsed),
            self.pinned,
            self.failed.len(),
            elapsed.as_secs_f64()
        );
        if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            println!("failed: {}", self.failed.join(", "));
            ExitCode::FAILURE
        }
    }
}

/// One item as `wharf prefetch` fetches and pins it, without output: the label, and how many
/// objects were pinned or why it failed, and the bytes fetched upstream. The server's
/// scheduled prefetch (`tools::sync`) runs this.
pub async fn fetch_item(
    client: &Client,
    config: &Config,
    item: &Item,
    with: Options<'_>,
) -> (String, Result<usize, String>, u64) {
    let stats = Stats::default();
    let (label, result) = one(client, config, item, with, &Progress::quiet(), &stats).await;
    (label, result, stats.fetched.load(Ordering::Relaxed))
}

/// Fetches one item through wharf and pins it: its label, and how many objects were pinned or
/// why it failed.
async fn one(
    client: &Client,
    config: &Config,
    item: &Item,
    with: Options<'_>,
    progress: &Progress,
    stats: &Stats,
) -> (String, Result<usize, String>) {
    let (label, result) = match item {
        Item::Image(r) => {
            progress.message(r);
            let res = image(client, config, r, with, progress, stats).await;
            (r.clone(), res)
        }
        Item::Module {
            path,
            version,
            mod_only,
        } => {
            let label = format!("{path}@{version}");
            progress.message(&label);
            let res = module(client, path, version, *mod_only, progress, stats).await;
            (label, res)
        }
    };
    let pins = match result {
        Ok(p) => p,
        Err(e) => return (label, Err(e)),
    };
    match client.post_json::<_, PinReply>("/admin/pins", &pins).await {
        Ok(r) => (label, Ok(r.pinned)),
        Err(e) => (label, Err(format!("fetched, but pinning failed: {e}"))),
    }
}

/// GET (or HEAD) through wharf, retrying while it is busy with other fills.
async fn get_retrying(
    client: &Client,
    method: http::Method,
    path: &str,
    headers: &[(HeaderName, &str)],
) -> Result<Reply, String> {
    let mut tries = 0;
    loop {
        let reply = client
            .request(
                method.clone(),
                path,
                headers,
                crate::tools::client::Body::Empty,
            )
            .await?;
        tries += 1;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE || tries >= BUSY_TRIES {
            return Ok(reply);
        }
        let wait = reply
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(2)
            .min(30);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// A manifest as wharf serves it, checked against its digest.
async fn manifest_at(
    client: &Client,
    base: &str,
    reference: &str,
) -> Result<(Digest, Vec<u8>), String> {
    let accept = manifest::ACCEPT.join(", ");
    let path = format!("{base}/manifests/{reference}");
    let reply = get_retrying(
        client,
        http::Method::GET,
        &path,
        &[(header::ACCEPT, accept.as_str())],
    )
    .await?;
    if reply.status != StatusCode::OK {
        return Err(format!("manifest {reference}: {}", reply.error().await));
    }
    let advertised = reply
        .header("docker-content-digest")
        .and_then(|d| Digest::parse(d).ok());
    let body = reply.bytes(MAX_MANIFEST).await?;
    let digest = Digest::of(&body);
    if advertised.is_some_and(|a| a != digest) {
        return Err(format!(
            "manifest {reference}: body does not match its digest"
        ));
    }
    Ok((digest, body))
}

/// Fetches one image (with `referrers`, also the artifacts that refer to its manifests:
/// OCI referrers and cosign's `sha256-<hex>.sig` / `.att` / `.sbom` tags); returns the pins.
async fn image(
    client: &Client,
    config: &Config,
    reference: &str,
    with: Options<'_>,
    progress: &Progress,
    stats: &Stats,
) -> Result<PinRequest, String> {
    let r = ImageRef::parse(config, reference)?;
    let (mut pins, manifest_count) =
        image_at(client, &r, reference, with.platform, progress, stats).await?;
    if with.referrers && !config.offline {
        let manifests: Vec<Digest> = pins.digests[..manifest_count].to_vec();
        for d in referrers(client, &r, &manifests).await {
            let art = ImageRef {
                digest: Some(d.clone()),
                tag: None,
                ..r.clone()
            };
            let label = format!("{reference} (referrer {d})");
            let (more, _) = Box::pin(image_at(client, &art, &label, None, progress, stats)).await?;
            pins.digests.extend(more.digests);
        }
        for tag in cosign_tags(&manifests) {
            let art = ImageRef {
                tag: Some(tag),
                digest: None,
                ..r.clone()
            };
            let label = format!("{reference} ({art})");
            // Most images have none of these tags: a missing one is no failure.
            if let Ok((more, _)) =
                Box::pin(image_at(client, &art, &label, None, progress, stats)).await
            {
                pins.digests.extend(more.digests);
            }
        }
    }
    Ok(pins)
}

/// The referrers wharf lists for each of `manifests` (its referrers API), deduplicated.
async fn referrers(client: &Client, r: &ImageRef, manifests: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::new();
    for m in manifests {
        let path = format!("{}/referrers/{m}", r.v2_base());
        let Ok(reply) = get_retrying(client, http::Method::GET, &path, &[]).await else {
            continue;
        };
        if reply.status != StatusCode::OK {
            continue;
        }
        let Ok(body) = reply.bytes(MAX_MANIFEST).await else {
            continue;
        };
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        for d in list["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = d["digest"].as_str().and_then(|d| Digest::parse(d).ok())
                && !out.contains(&d)
                && !manifests.contains(&d)
            {
                out.push(d);
            }
        }
    }
    out
}

/// cosign's tags for signatures, attestations and SBOMs of each manifest.
fn cosign_tags(manifests: &[Digest]) -> Vec<crate::registry::routes::Tag> {
    let mut out = Vec::new();
    for m in manifests {
        let base = crate::registry::referrers::fallback_tag(m);
        for suffix in [".sig", ".att", ".sbom"] {
            if let Ok(t) = crate::registry::routes::Tag::parse(&format!("{base}{suffix}")) {
                out.push(t);
            }
        }
    }
    out
}

/// Fetches the image `r` names: its manifests (of `platform` only, if given), then its blobs.
/// Returns the pins, manifests first, and how many of them are manifests.
async fn image_at(
    client: &Client,
    r: &ImageRef,
    reference: &str,
    platform: Option<&Platform>,
    progress: &Progress,
    stats: &Stats,
) -> Result<(PinRequest, usize), String> {
    let base = r.v2_base();
    let (top, body) = manifest_at(client, &base, &r.reference()).await?;
    if let Some(d) = &r.digest
        && *d != top
    {
        return Err(format!("wharf served {top} for {d}"));
    }
    let mut digests = vec![top.clone()];
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut queue = vec![(top, body)];
    while let Some((digest, body)) = queue.pop() {
        stats.objects.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        let children = children_of(&body).map_err(|e| format!("manifest {digest}: {e}"))?;
        let mut wanted = Vec::new();
        for (d, _media, _size, plat) in &children.manifests {
            match platform {
                Some(p) if !p.matches(plat) => {}
                _ => wanted.push(d.clone()),
            }
        }
        if let Some(p) = platform
            && !children.manifests.is_empty()
            && wanted.is_empty()
        {
            let have: Vec<String> = children
                .manifests
                .iter()
                .filter_map(|(_, _, _, pl)| {
                    Some(format!(
                        "{}/{}",
                        pl.get("os")?.as_str()?,
                        pl.get("architecture")?.as_str()?
                    ))
                })
                .collect();
            return Err(format!(
                "no manifest for {}/{} in {reference} (it has {})",
                p.os,
                p.architecture,
                have.join(", ")
            ));
        }
        for d in wanted {
            let (cd, cbody) = manifest_at(client, &base, d.as_str()).await?;
            if cd != d {
                return Err(format!("wharf served {cd} for {d}"));
            }
            digests.push(cd.clone());
            queue.push((cd, cbody));
        }
        for b in children.blobs {
            if !blobs.iter().any(|(d, _)| *d == b.0) {
                blobs.push(b);
            }
        }
    }
    progress.add_total(blobs.iter().map(|(_, s)| s).sum());
    let results = futures_util::stream::iter(blobs.iter().cloned())
        .map(|(d, size)| blob(client, &base, d, size, reference, progress, stats))
        .buffer_unordered(PARALLEL_BLOBS)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    let manifests = digests.len();
    digests.extend(blobs.into_iter().map(|(d, _)| d));
    let pins = PinRequest {
        reason: format!("prefetch {reference}"),
        digests,
        modules: Vec::new(),
    };
    Ok((pins, manifests))
}

async fn blob(
    client: &Client,
    base: &str,
    digest: Digest,
    size: u64,
    reference: &str,
    progress: &Progress,
    stats: &Stats,
) -> Result<(), String> {
    let path = format!("{base}/blobs/{digest}");
    let started = std::time::Instant::now();
    // Cached already: a HEAD says so without reading the blob.
    let head = get_retrying(client, http::Method::HEAD, &path, &[]).await?;
    if head.status == StatusCode::OK && head.header("x-cache") == Some("HIT") {
        progress.inc(size);
        stats.objects.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(size, Ordering::Relaxed);
        progress.done(&format!(
            "  cached {} {}",
            short(&digest),
            progress::bytes(size)
        ));
        return Ok(());
    }
    let reply = get_retrying(client, http::Method::GET, &path, &[]).await?;
    if reply.status != StatusCode::OK {
        return Err(format!("blob {digest}: {}", reply.error().await));
    }
    let outcome = reply.header("x-cache").unwrap_or("").to_string();
    let got = reply
        .drain(|n| progress.inc(n))
        .await
        .map_err(|e| format!("blob {digest} of {reference}: {e}"))?;
    if size > 0 && got != size {
        return Err(format!(
            "blob {digest} of {reference}: got {got} bytes, the manifest says {size}"
        ));
    }
    stats.objects.fetch_add(1, Ordering::Relaxed);
    stats.bytes.fetch_add(got, Ordering::Relaxed);
    if outcome != "HIT" {
        stats.fetched.fetch_add(got, Ordering::Relaxed);
    }
    progress.done(&format!(
        "  {} {} {} ({})",
        if outcome == "HIT" {
            "cached"
        } else {
            "fetched"
        },
        short(&digest),
        progress::bytes(got),
        progress::rate(got, started.elapsed())
    ));
    Ok(())
}

/// The version `query` names in the module's `@v/list`.
async fn from_list(client: &Client, path: &str, esc: &str, query: &str) -> Result<String, String> {
    let url = format!("/go/{esc}/@v/list");
    let reply = get_retrying(client, http::Method::GET, &url, &[]).await?;
    if reply.status != StatusCode::OK {
        return Err(format!("{path}@{query}: {}", reply.error().await));
    }
    let list = String::from_utf8_lossy(&reply.bytes(1 << 20).await?).into_owned();
    crate::goproxy::path::newest_in_list(&list, query)
        .ok_or_else(|| format!("{path}@{query}: no version in its @v/list matches"))
}

/// Fetches one module version (a query is resolved to its canonical version first).
async fn module(
    client: &Client,
    path: &str,
    version: &str,
    mod_only: bool,
    progress: &Progress,
    stats: &Stats,
) -> Result<PinRequest, String> {
    let esc = escape(path);
    let version = if is_canonical(version) {
        version.to_string()
    } else {
        let url = if version == "latest" {
            format!("/go/{esc}/@latest")
        } else {
            format!("/go/{esc}/@v/{}.info", escape(version))
        };
        let reply = get_retrying(client, http::Method::GET, &url, &[]).await?;
        if reply.status == StatusCode::NOT_FOUND {
            // `@latest` is optional in the protocol, and a plain file tree answers no queries:
            // pick from `@v/list` as the go command does.
            from_list(client, path, &esc, version).await?
        } else if reply.status != StatusCode::OK {
            return Err(reply.error().await);
        } else {
            let info: serde_json::Value = serde_json::from_slice(&reply.bytes(1 << 20).await?)
                .map_err(|e| format!("{path}@{version}: bad .info: {e}"))?;
            info["Version"]
                .as_str()
                .filter(|v| is_canonical(v))
                .ok_or_else(|| format!("{path}@{version}: .info has no canonical Version"))?
                .to_string()
        }
    };
    let kinds: &[&str] = if mod_only {
        &["info", "mod"]
    } else {
        &["info", "mod", "zip"]
    };
    for kind in kinds {
        let url = format!("/go/{esc}/@v/{}.{kind}", escape(&version));
        let started = std::time::Instant::now();
        let reply = get_retrying(client, http::Method::GET, &url, &[]).await?;
        if reply.status != StatusCode::OK {
            return Err(format!("{path}@{version} .{kind}: {}", reply.error().await));
        }
        let outcome = reply.header("x-cache").unwrap_or("").to_string();
        if let Some(n) = reply
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            progress.add_total(n);
        }
        let got = reply
            .drain(|n| progress.inc(n))
            .await
            .map_err(|e| format!("{path}@{version} .{kind}: {e}"))?;
        stats.objects.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(got, Ordering::Relaxed);
        if outcome != "HIT" {
            stats.fetched.fetch_add(got, Ordering::Relaxed);
        }
        progress.done(&format!(
            "  {} {path}@{version}.{kind} {} ({})",
            if outcome == "HIT" {
                "cached"
            } else {
                "fetched"
            },
            progress::bytes(got),
            progress::rate(got, started.elapsed())
        ));
    }
    Ok(PinRequest {
        reason: format!("prefetch {path}@{version}"),
        digests: Vec::new(),
        modules: vec![ModuleRef {
            path: path.into(),
            version,
        }],
    })
}
