//! The uploader: copies the index's outbox to the bucket in order. Objects go up first (a plain
//! PUT, or multipart above `SMALL`), skipped when the bucket already has them (the key is the
//! content); the records queued with them then go up as one journal batch. An entry is dropped
//! from the outbox only once it is in the bucket, so a restart or an outage resumes.

use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStoreExt as _, WriteMultipart};
use tokio::io::AsyncReadExt as _;
use wharf_storage::{Digest, Pending};

use super::Shared;
use super::journal::{self, Rec};

const BATCH: usize = 256;
/// Objects up to this size go up in one PUT; larger ones in parts of this size.
const SMALL: u64 = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// Copies until told to stop, between passes (what is left stays in the outbox for the next
/// start).
pub(super) async fn run(s: Arc<Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        let wait = match drain(&s).await {
            Ok(0) => Duration::from_millis(250),
            Ok(_) => {
                failing = false;
                Duration::ZERO
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "copying to the shared tier failed; retrying");
                    failing = true;
                }
                Duration::from_secs(1)
            }
        };
        if !super::pause(&mut stopped, wait).await {
            break;
        }
    }
}

/// One pass over the oldest outbox entries. Returns how many were copied.
pub(super) async fn drain(s: &Shared) -> Result<usize, String> {
    if s.health.check().is_err() {
        return Err("the shared tier is down".into());
    }
    let index = &s.storage.index;
    let batch = index.outbox_batch(BATCH).map_err(|e| e.to_string())?;
    let (mut done, mut records, mut record_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = None;
    for (id, pending) in batch {
        match pending {
            None => {
                tracing::warn!(id, "an outbox entry does not decode; dropped");
                done.push(id);
            }
            Some(Pending::Blob(d)) => match upload_blob(s, &d).await {
                Ok(()) => done.push(id),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            },
            Some(Pending::Record { tree, key, value }) => {
                records.push(Rec::new(&tree, &key, &value));
                record_ids.push(id);
            }
        }
    }
    // Every object queued before these records is in the bucket now.
    if !records.is_empty() {
        match journal::write(s, records).await {
            Ok(()) => done.extend(record_ids),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    index.outbox_done(&done).map_err(|e| e.to_string())?;
    match failed {
        Some(e) => Err(e),
        None => Ok(done.len()),
    }
}

async fn upload_blob(s: &Shared, d: &Digest) -> Result<(), object_store::Error> {
    // Evicted since it was queued: nothing to copy.
    let Ok(file) = s.storage.blobs.open_blob(d) else {
        return Ok(());
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let path = s.blob_path(d);
    match s.record(s.store.head(&path).await) {
        Ok(meta) if meta.size == size => return Ok(()),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let io = |e: std::io::Error| object_store::Error::Generic {
        store: "local disk",
        source: Box::new(e),
    };
    let mut file = tokio::fs::File::from_std(file);
    if size <= SMALL {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(io)?;
        s.record(s.store.put(&path, bytes.into()).await)?;
    } else {
        let upload = s.record(s.store.put_multipart(&path).await)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, SMALL as usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]);
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                // An unfinished upload is never visible; abort frees its parts.
                let _ = w.abort().await;
                return s.record(Err(e));
            }
        }
        s.record(w.finish().await)?;
    }
    s.stats
        .uploads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.stats
        .bytes_uploaded
        .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
