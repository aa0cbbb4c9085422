//! How the Go proxy fills one immutable module file (`.info`, `.mod`, `.zip`) for the cache
//! engine: the module's sources in order (the next only on "not found", like a GOPROXY list),
//! the size limit of its kind, and the whole-file checks before anything is stored: the
//! `.info` shape, the zip rules and the checksum database's `h1:` for public modules.

use std::sync::Arc;

use wharf_storage::{Digest, GoFileRecord, Index, StorageError, unix_now};

use super::handlers::check_info;
use super::path::{FileKind, ModulePath, escape};
use super::service::GoProxy;
use super::source::Fetched;
use super::verify;
use crate::cache::{Fetch, FillError, Incoming};
use crate::upstream::UpstreamError;
use crate::upstream::client::into_incoming;

pub struct ModuleFileFetch {
    pub app: Arc<GoProxy>,
    pub module: ModulePath,
    pub version: String,
    pub kind: FileKind,
    /// The source that had it: its label (for messages) and whether it is public.
    found: Option<(String, bool)>,
    /// The digest a record names (another replica stored it): the shared tier is asked first.
    known: Option<Digest>,
}

impl ModuleFileFetch {
    pub fn new(app: Arc<GoProxy>, module: ModulePath, version: String, kind: FileKind) -> Self {
        ModuleFileFetch {
            app,
            module,
            version,
            kind,
            found: None,
            known: None,
        }
    }

    /// The file as a record names it, so the shared tier may have it.
    pub fn known_as(mut self, digest: Option<Digest>) -> Self {
        self.known = digest;
        self
    }

    /// The negative-cache and flight key of this file.
    pub fn key(module: &ModulePath, version: &str, kind: FileKind) -> String {
        format!("{module}@{version}.{}", kind.ext())
    }
}

fn upstream(e: UpstreamError) -> FillError {
    tracing::warn!(error = %e, "upstream failed");
    FillError::Upstream(e.summary())
}

impl Fetch for ModuleFileFetch {
    async fn open(&mut self) -> Result<Option<Incoming>, FillError> {
        let go = &self.app.go;
        let rest = format!("@v/{}.{}", escape(&self.version), self.kind.ext());
        for src in go.sources(&self.module) {
            let incoming = match go.fetch(src, &self.module, &rest).await.map_err(upstream)? {
                Fetched::NotFound => continue,
                Fetched::Found(resp) => into_incoming(resp),
                Fetched::File(p) => {
                    let size = std::fs::metadata(&p)
                        .map_err(|e| {
                            tracing::error!(error = %e, "cannot read a private module file");
                            FillError::Local
                        })?
                        .len();
                    if size > self.limit() {
                        return Err(self.too_large(self.limit()));
                    }
                    let data = tokio::fs::read(&p).await.map_err(|e| {
                        tracing::error!(error = %e, "cannot read a private module file");
                        FillError::Local
                    })?;
                    Incoming::from_bytes(data)
                }
            };
            self.found = Some((src.label.clone(), src.public));
            return Ok(Some(incoming));
        }
        Ok(None)
    }

    fn known(&self) -> Option<Digest> {
        self.known.clone()
    }

    fn limit(&self) -> u64 {
        self.kind.max_size()
    }

    fn too_large(&self, limit: u64) -> FillError {
        FillError::Upstream(format!(
            "the .{} is larger than the {limit}-byte limit",
            self.kind.ext()
        ))
    }

    async fn check(&mut self, file: &Arc<std::fs::File>, size: u64) -> Result<(), FillError> {
        let (label, public) = self.found.clone().unwrap_or_default();
        match self.kind {
            FileKind::Info => {
                let text = read_back(file, size).map_err(|e| {
                    tracing::error!(error = %e, "cannot reread the download");
                    FillError::Local
                })?;
                check_info(&String::from_utf8_lossy(&text), Some(&self.version))
                    .map_err(|e| FillError::Upstream(format!("bad .info from {label}: {e}")))
            }
            FileKind::Mod | FileKind::Zip => Ok(verify::check_module_file(
                &self.app,
                &self.module,
                &self.version,
                self.kind,
                file,
                public,
            )
            .await?),
        }
    }

    fn record(&self, index: &Index, digest: &Digest, size: u64) -> Result<(), StorageError> {
        let rec = GoFileRecord {
            digest: digest.clone(),
            size,
            fetched_unix: unix_now(),
        };
        index.put_go_file(self.module.as_str(), &self.version, self.kind.ext(), &rec)
    }

    fn committed(&self, size: u64, shared: bool) {
        if !shared {
            self.app.metrics.add_upstream_bytes("go", size);
        }
        let key = Self::key(&self.module, &self.version, self.kind);
        self.app.go.forget_not_found(&key);
    }
}

fn read_back(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}
