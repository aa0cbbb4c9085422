//! `wharf import`: reads an input (`source`), uploads every file the server does not have yet
//! (each checked against its digest as it is stored), then asks the server to verify the whole
//! and index it (`POST /admin/import`). A refusal names the object and indexes nothing; stored
//! blobs stay, so running the command again resumes where it stopped, and importing the same
//! input twice changes nothing. A plain input is uploaded a few files at once, each read by
//! range; a compressed one is decompressed front to back on one thread and streamed to the
//! server one file at a time (`upload_in_order`), with nothing written to disk here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use wharf_storage::Digest;

use super::client::{Body, Client, Via};
use super::progress::{self, Progress};
use super::source::{self, Data, Naming, Parsed, Tree, Upload};
use crate::bundle::{ImportReply, ImportRequest};
use crate::config::Config;
use crate::error::Error;

/// Uploads at once.
const PARALLEL: usize = 4;

pub struct ImportArgs {
    pub inputs: Vec<PathBuf>,
    /// Image name for OCI layouts whose `ref.name` is only a tag.
    pub name: Option<String>,
}

#[derive(serde::Deserialize)]
struct Stored {
    digest: Digest,
    size: u64,
}

#[derive(Default)]
struct Counts {
    uploaded: AtomicU64,
    present: AtomicU64,
}

pub async fn command(config: &Config, via: Via<'_>, args: ImportArgs) -> Result<ExitCode, Error> {
    if args.inputs.is_empty() {
        eprintln!(
            "wharf: name a bundle, OCI layout, go module cache or docker save tarball to import"
        );
        return Ok(ExitCode::from(2));
    }
    let client = match Client::connect(config, via).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let naming = Naming {
        config,
        name: args.name.as_deref(),
    };
    let mut code = ExitCode::SUCCESS;
    for input in &args.inputs {
        if let Err(e) = one(&client, &naming, input).await {
            eprintln!("wharf: import of {} refused: {e}", input.display());
            eprintln!(
                "wharf: nothing from it was indexed; files already stored are kept, so running the import again resumes"
            );
            code = ExitCode::FAILURE;
        }
    }
    if let Err(e) = client.finish().await {
        eprintln!("wharf: {e}");
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

async fn one(client: &Client, naming: &Naming<'_>, input: &std::path::Path) -> Result<(), String> {
    let path = input.to_path_buf();
    let tree = tokio::task::spawn_blocking(move || Tree::open(&path))
        .await
        .map_err(|e| e.to_string())??;
    let mut parsed = source::parse(&tree, naming)?;
    let c = &parsed.contents;
    let total: u64 = parsed.uploads.iter().map(|u| u.data.len()).sum();
    eprintln!(
        "wharf: importing {} ({}) into {}: {} image name(s), {} blobs, {} module version(s), {} checksum-database file(s), {}",
        input.display(),
        parsed.kind,
        client.describe(),
        c.images.len(),
        c.blobs.len(),
        c.modules.len(),
        c.sumdb.len(),
        progress::bytes(total)
    );
    for w in &parsed.contents.warnings {
        eprintln!("wharf: warning: {w}");
    }
    let progress = Progress::new("import", total);
    let counts = Counts::default();
    let uploads = std::mem::take(&mut parsed.uploads);
    let result = upload_all(client, &mut parsed, uploads, &progress, &counts).await;
    let result = match result {
        Ok(()) if !parsed.legacy.is_empty() => {
            let more = source::finish_legacy(&mut parsed, naming)?;
            progress.add_total(more.iter().map(|u| u.data.len()).sum());
            upload_all(client, &mut parsed, more, &progress, &counts).await
        }
        r => r,
    };
    progress.finish();
    result?;
    let name = input.file_name().map_or_else(
        || input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let req = ImportRequest {
        reason: format!("import {name}"),
        contents: parsed.contents,
    };
    let reply: ImportReply = client.post_json("/admin/import", &req).await?;
    for w in &reply.warnings {
        eprintln!("wharf: warning: {w}");
    }
    let elapsed = progress.elapsed();
    let uploaded = counts.uploaded.load(Ordering::Relaxed);
    println!(
        "import: {}: {} tag(s), {} manifest(s), {} blob(s), {} module version(s) ({} proven by a checksum database), {} checksum-database file(s), {} pinned; stored {} ({} already present) in {:.1} s ({})",
        input.display(),
        reply.tags,
        reply.manifests,
        reply.blobs,
        reply.modules,
        reply.modules_sumdb_verified,
        reply.sumdb_files,
        reply.pinned,
        progress::bytes(uploaded),
        progress::bytes(counts.present.load(Ordering::Relaxed)),
        elapsed.as_secs_f64(),
        progress::rate(uploaded, elapsed)
    );
    Ok(())
}

async fn upload_all(
    client: &Client,
    parsed: &mut Parsed,
    uploads: Vec<Upload>,
    progress: &Progress,
    counts: &Counts,
) -> Result<(), String> {
    let compressed = uploads
        .iter()
        .any(|u| matches!(&u.data, Data::Loc(l) if l.codec != source::Codec::None));
    if compressed {
        return upload_in_order(client, parsed, uploads, progress, counts).await;
    }
    let results: Vec<Result<(Upload, Digest, u64), String>> = futures_util::stream::iter(uploads)
        .map(|u| async move {
            let (d, n) = upload(client, &u, progress, counts)
                .await
                .map_err(|e| format!("{}: {e}", u.label))?;
            Ok((u, d, n))
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    // The first failure in input order, so the message does not depend on timing.
    let mut first_err = None;
    for r in results {
        match r {
            Ok((u, d, n)) => source::fill_slot(parsed, &u.slot, d, n),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Uploads of a compressed input, in the order it holds them: a blocking thread decompresses it
/// once and hands each file's bytes over a channel to the upload of that file.
async fn upload_in_order(
    client: &Client,
    parsed: &mut Parsed,
    uploads: Vec<Upload>,
    progress: &Progress,
    counts: &Counts,
) -> Result<(), String> {
    type Chunks = tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>;
    let uploads = std::sync::Arc::new(uploads);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Chunks)>(1);
    let all = uploads.clone();
    let reader = tokio::task::spawn_blocking(move || {
        source::read_in_order(&all, |i, r| {
            let (chunks, body) = tokio::sync::mpsc::channel(4);
            tx.blocking_send((i, body))
                .map_err(|_| "the upload stopped".to_string())?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let msg = format!("{}: {e}", all[i].label);
                        let _ = chunks.blocking_send(Err(e));
                        return Err(msg);
                    }
                };
                let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                if chunks.blocking_send(Ok(chunk)).is_err() {
                    // The server has it already: the rest of this file is skipped.
                    return Ok(());
                }
            }
        })
    });
    let mut first_err = None;
    while let Some((i, body)) = rx.recv().await {
        let u = &uploads[i];
        let stream = futures_util::stream::unfold(body, |mut body| async move {
            body.recv().await.map(|chunk| (chunk, body))
        });
        match upload_body(client, u, progress, counts, Some(stream.boxed())).await {
            Ok((d, n)) => source::fill_slot(parsed, &u.slot, d, n),
            Err(e) => {
                first_err = Some(format!("{}: {e}", u.label));
                break;
            }
        }
    }
    drop(rx);
    let read = reader.await.map_err(|e| e.to_string())?;
    match (first_err, read) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(()),
    }
}

/// Stores one file unless the server has it; returns its digest and size.
async fn upload(
    client: &Client,
    u: &Upload,
    progress: &Progress,
    counts: &Counts,
) -> Result<(Digest, u64), String> {
    upload_body(client, u, progress, counts, None).await
}

/// `upload`, with the bytes of a `Data::Loc` from `stream` when given (else read by range).
async fn upload_body(
    client: &Client,
    u: &Upload,
    progress: &Progress,
    counts: &Counts,
    stream: Option<super::client::ByteStream>,
) -> Result<(Digest, u64), String> {
    let len = u.data.len();
    if let Some(d) = &u.digest {
        let head = client
            .request(Method::HEAD, &format!("/admin/blobs/{d}"), &[], Body::Empty)
            .await?;
        if head.status == StatusCode::OK {
            progress.inc(len);
            counts.present.fetch_add(len, Ordering::Relaxed);
            return Ok((d.clone(), len));
        }
        if head.status != StatusCode::NOT_FOUND {
            return Err(head.error().await);
        }
    }
    let (method, path) = match &u.digest {
        Some(d) => (Method::PUT, format!("/admin/blobs/{d}?size={len}")),
        None => (Method::POST, format!("/admin/blobs?size={len}")),
    };
    let body = match &u.data {
        Data::Memory(b) => {
            progress.inc(len);
            Body::Bytes(b.clone())
        }
        Data::Loc(loc) => match stream {
            Some(stream) => {
                let tick = progress.ticker();
                Body::Stream(
                    stream
                        .inspect_ok(move |chunk| tick(chunk.len() as u64))
                        .boxed(),
                )
            }
            None => {
                let mut f = tokio::fs::File::open(&loc.file)
                    .await
                    .map_err(|e| format!("{}: {e}", loc.file.display()))?;
                f.seek(std::io::SeekFrom::Start(loc.offset))
                    .await
                    .map_err(|e| format!("{}: {e}", loc.file.display()))?;
                let tick = progress.ticker();
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(f.take(loc.len), 256 << 10)
                        .inspect_ok(move |chunk| tick(chunk.len() as u64));
                Body::Stream(stream.boxed())
            }
        },
    };
    let reply = client.request(method, &path, &[], body).await?;
    if !reply.status.is_success() {
        return Err(reply.error().await);
    }
    let stored: Stored = serde_json::from_slice(&reply.bytes(1 << 20).await?)
        .map_err(|e| format!("unexpected answer: {e}"))?;
    counts.uploaded.fetch_add(stored.size, Ordering::Relaxed);
    progress.done(&format!(
        "  stored {} {}",
        crate::bundle::short(&stored.digest),
        progress::bytes(stored.size)
    ));
    Ok((stored.digest, stored.size))
}
