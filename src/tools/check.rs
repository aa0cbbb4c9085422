//! `wharf export --check <bundle>` (and the end of every export): a bundle file checked as
//! `wharf import` would check it, without importing or writing anything. The file is read as
//! import reads it (`source`), every file is hashed against its digest as the upload would, and
//! then the import's own check (`bundle::apply::verify`) runs over the file's bytes
//! (`FileContent`), with this config's checksum-database keys and private rules and without
//! this wharf's cache: what an empty wharf would accept.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use wharf_storage::{Digest, Hasher};

use super::source::{self, Naming, Parsed, Slot, Tree};
use crate::bundle::apply::{self, Inputs, Verified};
use crate::bundle::{BundleError, Content};
use crate::config::Config;
use crate::goproxy::path::ModulePath;

/// Largest file (other than a zip) the check reads whole: manifests, `.info`, `.mod`, sumdb.
const MAX_READ: u64 = 16 << 20;

/// What the bundle holds, counted, and what the import would warn about.
pub struct Report {
    pub kind: &'static str,
    pub images: usize,
    pub blobs: usize,
    pub modules: usize,
    pub sumdb_files: usize,
    pub verified: Verified,
}

/// Runs `wharf export --check`.
pub async fn command(config: &Config, bundle: &Path) -> ExitCode {
    match check_file(config, bundle).await {
        Ok(r) => {
            for w in &r.verified.warnings {
                eprintln!("wharf: warning: {w}");
            }
            println!(
                "check: {}: {}: {} image name(s), {} blobs, {} module version(s) ({} proven by a checksum database), {} checksum-database file(s): import would accept it",
                bundle.display(),
                r.kind,
                r.images,
                r.blobs,
                r.modules,
                r.verified.modules_sumdb_verified,
                r.sumdb_files
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "wharf: import of {} would be refused: {e}",
                bundle.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Reads, hashes and checks a bundle file; the error is the message import would give.
pub async fn check_file(config: &Config, bundle: &Path) -> Result<Report, String> {
    let path = bundle.to_path_buf();
    let naming_config = config.clone();
    let (parsed, content) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let tree = Tree::open(&path)?;
        let naming = Naming {
            config: &naming_config,
            name: None,
        };
        let mut parsed = source::parse(&tree, &naming)?;
        let mut content = FileContent::default();
        hash_all(&mut parsed, &mut content)?;
        if !parsed.legacy.is_empty() {
            let more = source::finish_legacy(&mut parsed, &naming)?;
            parsed.uploads = more;
            hash_all(&mut parsed, &mut content)?;
        }
        Ok((parsed, content))
    })
    .await
    .map_err(|e| e.to_string())??;
    let content: Arc<dyn Content> = Arc::new(content);
    let is_private = |m: &ModulePath| crate::goproxy::is_private(&config.go, m);
    let inputs = Inputs {
        config,
        is_private: &is_private,
        content: &content,
    };
    let c = &parsed.contents;
    let verified = apply::verify(inputs, c).await.map_err(|e| match e {
        BundleError::Refused(m) => m,
        BundleError::Local(e) => e.to_string(),
    })?;
    Ok(Report {
        kind: parsed.kind,
        images: c.images.len(),
        blobs: c.blobs.len(),
        modules: c.modules.len(),
        sumdb_files: c.sumdb.len(),
        verified,
    })
}

/// A bundle file's bytes as the check reads them: every file's size by digest, the small ones
/// it reads, and each zip's `h1:` (computed while the zip went by).
#[derive(Default)]
struct FileContent {
    sizes: HashMap<Digest, u64>,
    small: HashMap<Digest, Vec<u8>>,
    zips: HashMap<(Digest, String, String), Result<String, String>>,
}

impl Content for FileContent {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, BundleError> {
        Ok(self.sizes.get(digest).copied())
    }

    fn read_small(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, String> {
        match self.small.get(digest) {
            Some(b) if b.len() as u64 > max => {
                Err(format!("{} bytes, more than the {max}-byte limit", b.len()))
            }
            Some(b) => Ok(Some(b.clone())),
            None => Ok(None),
        }
    }

    fn zip_h1(&self, digest: &Digest, path: &str, version: &str) -> Result<String, String> {
        self.zips
            .get(&(digest.clone(), path.to_string(), version.to_string()))
            .cloned()
            .unwrap_or_else(|| Err("is not in the bundle".into()))
    }

    fn cached_sumdb(&self, _db: &str, _path: &str) -> Result<Option<Digest>, String> {
        Ok(None)
    }
}

/// Hashes every upload as the server would store it (a known digest must match), fills in the
/// digests the server would name, and keeps what the check reads.
fn hash_all(parsed: &mut Parsed, content: &mut FileContent) -> Result<(), String> {
    let manifests: HashSet<Digest> = parsed
        .contents
        .blobs
        .iter()
        .filter(|b| b.media_type.is_some())
        .map(|b| b.digest.clone())
        .collect();
    let uploads = std::mem::take(&mut parsed.uploads);
    let mut filled = Vec::new();
    source::read_in_order(&uploads, |i, reader| {
        let u = &uploads[i];
        let zip_of = match &u.slot {
            Slot::GoFile {
                module,
                kind: "zip",
            } => parsed
                .contents
                .modules
                .get(*module)
                .map(|m| (m.path.clone(), m.version.clone())),
            _ => None,
        };
        let keep = zip_of.is_some()
            || matches!(u.slot, Slot::GoFile { .. } | Slot::Sumdb(_))
            || u.digest.as_ref().is_some_and(|d| manifests.contains(d));
        let limit = if zip_of.is_some() {
            crate::goproxy::hash::MAX_ZIP_FILE
        } else {
            MAX_READ
        };
        let (digest, size, body) =
            hash(reader, keep && u.data.len() <= limit).map_err(|e| format!("{}: {e}", u.label))?;
        if size != u.data.len() {
            return Err(format!(
                "{}: ends after {size} of {} bytes",
                u.label,
                u.data.len()
            ));
        }
        if let Some(want) = &u.digest
            && *want != digest
        {
            return Err(format!(
                "{}: does not match its digest: {size} bytes hashing to {digest}",
                u.label
            ));
        }
        if let (Some((path, version)), Some(b)) = (zip_of, &body) {
            let h1 = crate::goproxy::hash::check_and_hash_zip(b.as_slice(), &path, &version)
                .map_err(|e| e.to_string());
            content.zips.insert((digest.clone(), path, version), h1);
        } else if let Some(b) = body {
            content.small.insert(digest.clone(), b);
        }
        content.sizes.insert(digest.clone(), size);
        filled.push((i, digest, size));
        Ok(())
    })?;
    for (i, digest, size) in filled {
        source::fill_slot(parsed, &uploads[i].slot, digest, size);
    }
    parsed.uploads = uploads;
    Ok(())
}

/// Digest and length of a reader's bytes, and the bytes themselves if `keep`.
fn hash(reader: &mut dyn Read, keep: bool) -> std::io::Result<(Digest, u64, Option<Vec<u8>>)> {
    let mut hasher = Hasher::new();
    let mut kept = keep.then(Vec::new);
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..k]);
        if let Some(v) = kept.as_mut() {
            v.extend_from_slice(&buf[..k]);
        }
        n += k as u64;
    }
    Ok((hasher.finish(), n, kept))
}
