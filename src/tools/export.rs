//! `wharf export`: asks wharf what a selection holds (`POST /admin/export`), then writes the
//! bundle: `wharf-bundle.json`, an OCI image layout under `oci/`, the go command's download
//! layout under `go/`. Every blob is re-hashed on its way into the tar, so a damaged cache file
//! fails the export instead of producing a bundle that import would refuse. Checksum-database
//! tiles a proof needs and the cache lacks are fetched through wharf first (the plan names
//! them). The tar, compressed or not (`source::Codec`), is written to `<file>.partial`, checked
//! as import would check it (`check`), and renamed only then.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};
use wharf_storage::{Digest, Hasher};

use super::client::{Client, Via};
use super::progress::{self, Progress};
use super::source::Codec;
use crate::bundle::{
    BundleManifest, ExportRequest, Item, MANIFEST_FILE, ModuleRef, REF_NAME, collect_items,
};
use crate::config::Config;
use crate::error::Error;
use crate::goproxy::path::escape;
use crate::registry::manifest::OCI_INDEX;

/// What `wharf export` was asked for.
pub struct ExportArgs {
    pub items: Vec<String>,
    pub lists: Vec<PathBuf>,
    pub all: bool,
    pub pinned: bool,
    pub output: PathBuf,
    pub codec: Codec,
}

/// Rounds of fetching missing checksum-database files and planning again (each proof step
/// may name one more tile).
const SUMDB_ROUNDS: usize = 8;

pub async fn command(config: &Config, via: Via<'_>, args: ExportArgs) -> Result<ExitCode, Error> {
    let items = match collect_items(&args.items, &args.lists) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("wharf: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if items.is_empty() && !args.all && !args.pinned {
        eprintln!(
            "wharf: nothing to export: name images and module@version, or give --all or --pinned"
        );
        return Ok(ExitCode::from(2));
    }
    let mut req = ExportRequest {
        all: args.all,
        pinned: args.pinned,
        ..Default::default()
    };
    for i in items {
        match i {
            Item::Image(r) => req.images.push(r),
            Item::Module { path, version, .. } => req.modules.push(ModuleRef { path, version }),
        }
    }
    let client = match Client::connect(config, via).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("wharf: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut plan: BundleManifest = match plan_with_proofs(&client, &req).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wharf: export refused: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    plan.missing_sumdb.clear();
    for w in &plan.warnings {
        eprintln!("wharf: warning: {w}");
    }
    if plan.images.is_empty() && plan.modules.is_empty() {
        eprintln!("wharf: the selection is empty: nothing cached matches it");
        return Ok(ExitCode::FAILURE);
    }
    let progress = Arc::new(Progress::new("export", plan.total_bytes()));
    let result = write_bundle(
        client.clone(),
        plan.clone(),
        &args.output,
        args.codec,
        progress.clone(),
    )
    .await;
    progress.finish();
    let _ = client.finish().await;
    let result = match result {
        Ok((size, partial)) => checked(config, &partial, &args.output).await.map(|()| size),
        Err(e) => Err(e),
    };
    match result {
        Ok(size) => {
            let elapsed = progress.elapsed();
            let manifests = plan.blobs.iter().filter(|b| b.media_type.is_some()).count();
            println!(
                "export: {} image(s) ({manifests} manifests, {} blobs), {} module version(s), {} checksum-database file(s): {} in {} ({:.1} s, {})",
                plan.images.len(),
                plan.blobs.len() - manifests,
                plan.modules.len(),
                plan.sumdb.len(),
                progress::bytes(size),
                args.output.display(),
                elapsed.as_secs_f64(),
                progress::rate(size, elapsed)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("wharf: export failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The plan, after fetching (through wharf, which caches them) the checksum-database files its
/// proofs lack. What cannot be fetched stays missing; the check at the end then says why.
async fn plan_with_proofs(client: &Client, req: &ExportRequest) -> Result<BundleManifest, String> {
    let mut tried = std::collections::HashSet::new();
    let mut plan: BundleManifest = client.post_json("/admin/export", req).await?;
    for _ in 0..SUMDB_ROUNDS {
        let new: Vec<String> = plan
            .missing_sumdb
            .iter()
            .filter(|p| tried.insert(p.to_string()))
            .cloned()
            .collect();
        if new.is_empty() {
            break;
        }
        let mut fetched = 0;
        for p in &new {
            match client.get(&format!("/go/sumdb/{p}"), &[]).await {
                Ok(r) if r.status.is_success() => {
                    r.drain(|_| {}).await?;
                    fetched += 1;
                }
                Ok(r) => {
                    let e = r.error().await;
                    eprintln!("wharf: warning: cannot fetch checksum-database file {p}: {e}");
                }
                Err(e) => {
                    eprintln!("wharf: warning: cannot fetch checksum-database file {p}: {e}")
                }
            }
        }
        if fetched == 0 {
            break;
        }
        plan = client.post_json("/admin/export", req).await?;
    }
    Ok(plan)
}

/// Checks the written bundle as import would, then puts it in place; a bundle import would
/// refuse is removed.
async fn checked(config: &Config, partial: &Path, output: &Path) -> Result<(), String> {
    if let Err(e) = super::check::check_file(config, partial).await {
        let _ = std::fs::remove_file(partial);
        return Err(format!("import would refuse the bundle: {e}"));
    }
    std::fs::rename(partial, output).map_err(|e| {
        let _ = std::fs::remove_file(partial);
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            output.display()
        )
    })
}

/// Where an entry's bytes come from.
enum Data {
    Bytes(Vec<u8>),
    /// A stored blob, checked against its digest and size while copied.
    Blob(Digest, u64),
}

/// The bundle's entries, in order: manifest first, so an importer knows what follows.
fn entries(plan: &BundleManifest) -> Result<Vec<(String, Data)>, String> {
    let mut out = Vec::new();
    let json = serde_json::to_vec_pretty(plan).map_err(|e| e.to_string())?;
    out.push((MANIFEST_FILE.to_string(), Data::Bytes(json)));
    if !plan.images.is_empty() {
        let manifests: Vec<serde_json::Value> = plan
            .images
            .iter()
            .map(|i| {
                let size = plan
                    .blobs
                    .iter()
                    .find(|b| b.digest == i.digest)
                    .map_or(0, |b| b.size);
                let mut d = json!({"mediaType": i.media_type, "digest": i.digest, "size": size});
                if i.tag.is_some() {
                    d["annotations"] = json!({ REF_NAME: i.reference });
                }
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        out.push((
            "oci/oci-layout".into(),
            Data::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ));
        out.push((
            "oci/index.json".into(),
            Data::Bytes(serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?),
        ));
        for b in &plan.blobs {
            out.push((
                format!("oci/blobs/sha256/{}", b.digest.hex()),
                Data::Blob(b.digest.clone(), b.size),
            ));
        }
    }
    let mut lists: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in &plan.modules {
        lists.entry(&m.path).or_default().push(&m.version);
        let base = format!("go/{}/@v/{}", escape(&m.path), escape(&m.version));
        for (kind, f) in m.files() {
            out.push((
                format!("{base}.{kind}"),
                Data::Blob(f.digest.clone(), f.size),
            ));
        }
    }
    for (module, versions) in lists {
        let body: String = versions.iter().map(|v| format!("{v}\n")).collect();
        out.push((
            format!("go/{}/@v/list", escape(module)),
            Data::Bytes(body.into_bytes()),
        ));
    }
    let mut dbs = std::collections::BTreeSet::new();
    for s in &plan.sumdb {
        if dbs.insert(s.db.as_str()) {
            out.push((
                format!("go/sumdb/{}/supported", s.db),
                Data::Bytes(Vec::new()),
            ));
        }
        out.push((
            format!("go/sumdb/{}/{}", s.db, s.path),
            Data::Blob(s.digest.clone(), s.size),
        ));
    }
    Ok(out)
}

/// Writes the tar into `<output>.partial`; returns its size and that path.
async fn write_bundle(
    client: Arc<Client>,
    plan: BundleManifest,
    output: &Path,
    codec: Codec,
    progress: Arc<Progress>,
) -> Result<(u64, PathBuf), String> {
    let entries = entries(&plan)?;
    let partial = partial_path(output);
    let file = std::fs::File::create(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let handle = tokio::runtime::Handle::current();
    let mtime = plan.created_unix;
    let p = partial.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let mut tar = tar::Builder::new(codec.encoder(file)?);
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            let result = match data {
                Data::Bytes(b) => {
                    header.set_size(b.len() as u64);
                    tar.append_data(&mut header, &path, &b[..])
                }
                Data::Blob(digest, size) => {
                    header.set_size(size);
                    let reply =
                        handle.block_on(client.get(&format!("/admin/blobs/{digest}"), &[]))?;
                    if !reply.status.is_success() {
                        let e = handle.block_on(reply.error());
                        return Err(format!("{path}: {e}"));
                    }
                    let reader = SyncIoBridge::new_with_handle(
                        StreamReader::new(reply.into_stream()),
                        handle.clone(),
                    );
                    let checked = Checked::new(reader, digest, size, &progress);
                    tar.append_data(&mut header, &path, checked)
                }
            };
            result.map_err(|e| format!("{path}: {e}"))?;
        }
        let mut w = tar
            .into_inner()
            .map_err(|e| format!("{}: {e}", p.display()))?;
        w.flush().map_err(|e| format!("{}: {e}", p.display()))?;
        let f = w.finish().map_err(|e| format!("{}: {e}", p.display()))?;
        f.sync_all().map_err(|e| format!("{}: {e}", p.display()))?;
        f.metadata()
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", p.display()))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match written {
        Ok(n) => Ok((n, partial)),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// A reader that fails at the end unless exactly `size` bytes hashing to `digest` went by.
struct Checked<'a, R> {
    inner: R,
    digest: Digest,
    size: u64,
    read: u64,
    hasher: Hasher,
    progress: &'a Progress,
}

impl<'a, R: Read> Checked<'a, R> {
    fn new(inner: R, digest: Digest, size: u64, progress: &'a Progress) -> Self {
        Checked {
            inner,
            digest,
            size,
            read: 0,
            hasher: Hasher::new(),
            progress,
        }
    }
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::other(format!(
                "{} holds more than {} bytes",
                self.digest, self.size
            )));
        }
        if n == 0 {
            let actual = std::mem::take(&mut self.hasher).finish();
            if self.read != self.size || actual != self.digest {
                return Err(io::Error::other(format!(
                    "the cached copy of {} is damaged ({} bytes hashing to {actual}); run wharf fsck",
                    self.digest, self.read
                )));
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.progress.inc(n as u64);
        Ok(n)
    }
}
