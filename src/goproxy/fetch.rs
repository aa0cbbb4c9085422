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
    /// The checksum-database lookup `check` needs, started by `open` to run during the download.
    lookup: Option<verify::PendingLookup>,
}

/// A clone (a continuation of the transfer) starts its own checksum-database lookup if it
/// needs one: a started lookup belongs to the fetch that will check the file.
impl Clone for ModuleFileFetch {
    fn clone(&self) -> Self {
        ModuleFileFetch {
            app: self.app.clone(),
            module: self.module.clone(),
            version: self.version.clone(),
            kind: self.kind,
            found: self.found.clone(),
            known: self.known.clone(),
            lookup: None,
        }
    }
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
            lookup: None,
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
    if matches!(e, UpstreamError::Down(_)) {
        return FillError::Unavailable(e.summary());
    }
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
            // The checksum-database lookup its check needs runs while the body downloads:
            // public modules only (a private name never reaches the database), and only for a
            // file a source has (made-up names cost the database nothing).
            if self.lookup.is_none()
                && self.kind != FileKind::Info
                && src.public
                && go.private_rule(&self.module).is_none()
            {
                self.lookup = verify::start_lookup(&self.app, &self.module, &self.version);
            }
            return Ok(Some(incoming));
        }
        Ok(None)
    }

    fn known(&self) -> Option<Digest> {
        self.known.clone()
    }

    /// The owner replica's bytes get the same checks: the checksum database's for a public module.
    fn found_at_peer(&mut self) {
        let public = self.app.go.private_rule(&self.module).is_none();
        self.found = Some(("the owner replica".into(), public));
    }

    /// Public `.mod` and `.zip` only: a private module comes from its own source (the owner's
    /// copy could not be checked against anything), and an `.info` is too small to matter.
    fn peer_path(&self) -> Option<String> {
        if self.kind == FileKind::Info || self.app.go.private_rule(&self.module).is_some() {
            return None;
        }
        Some(format!(
            "/go/{}/@v/{}.{}",
            escape(self.module.as_str()),
            escape(&self.version),
            self.kind.ext()
        ))
    }

    /// `.mod` and `.info` files: thousands of tiny ones, kept in the index.
    fn small(&self) -> bool {
        self.kind != FileKind::Zip
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
                self.lookup.take(),
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use futures_util::StreamExt as _;

    use super::*;
    use crate::cache::Engine;
    use crate::config::Config;
    use crate::upstream::EgressPolicy;
    use wharf_storage::Storage;

    const MODULE: &str = "corp.test/m";
    const VERSION: &str = "v1.0.0";
    const INFO: &str = r#"{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}"#;

    /// A Go proxy whose `corp.test` modules come from a directory (no network), and a store.
    struct Setup {
        app: Arc<GoProxy>,
        src: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn setup(extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let config: Config = toml::from_str(&format!(
            "[egress]\nallow = [\"127.0.0.1\"]\n[go]\n{extra}\n[[go.private]]\n\
             pattern = \"corp.test\"\ndir = \"{}\"\n",
            src.display()
        ))
        .expect("test config");
        let policy = Arc::new(EgressPolicy::from_config(&config.egress).expect("policy"));
        let go = super::super::source::GoState::new(&config, policy, |_| None).expect("go");
        let storage = Storage::open(dir.path().join("data")).expect("storage");
        let app = Arc::new(GoProxy {
            config: Arc::new(config),
            engine: Engine::new(storage.clone(), 2, false),
            storage,
            metrics: Arc::default(),
            go,
        });
        Setup {
            app,
            src,
            _dir: dir,
        }
    }

    impl Setup {
        fn put(&self, kind: FileKind, bytes: &[u8]) {
            let dir = self.src.join(MODULE).join("@v");
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(format!("{VERSION}.{}", kind.ext())), bytes).expect("write");
        }

        fn fetch(&self, module: &str, kind: FileKind) -> ModuleFileFetch {
            let m = ModulePath::parse(module).expect("module path");
            ModuleFileFetch::new(self.app.clone(), m, VERSION.into(), kind)
        }

        /// Opens `kind` from the directory source and runs its checks on what it read.
        async fn open_and_check(&self, kind: FileKind) -> Result<(), FillError> {
            let mut f = self.fetch(MODULE, kind);
            let incoming = f.open().await?.ok_or(FillError::NotFound)?;
            let bytes = collect(incoming).await;
            f.check(&file_of(&bytes), bytes.len() as u64).await
        }
    }

    async fn collect(incoming: Incoming) -> Vec<u8> {
        let mut body = incoming.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    fn file_of(bytes: &[u8]) -> Arc<std::fs::File> {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        Arc::new(f)
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, body) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("zip entry");
            w.write_all(body).expect("zip write");
        }
        w.finish().expect("zip").into_inner()
    }

    fn message(r: Result<(), FillError>) -> String {
        match r {
            Err(FillError::Upstream(m)) => m,
            other => panic!("not an upstream failure: {other:?}"),
        }
    }

    #[tokio::test]
    async fn info_must_be_json_for_the_requested_canonical_version() {
        let s = setup("");
        s.put(FileKind::Info, INFO.as_bytes());
        s.open_and_check(FileKind::Info).await.expect("good .info");
        for (body, why) in [
            (
                r#"{"Version":"v1.0.1"}"#,
                "info is for version v1.0.1 instead of requested v1.0.0",
            ),
            (r#"{"Version":"v1.0"}"#, "Version \"v1.0\" is not canonical"),
            ("not json", "invalid JSON"),
            (r#"{"Time":"2024-01-01T00:00:00Z"}"#, "invalid JSON"),
        ] {
            s.put(FileKind::Info, body.as_bytes());
            let m = message(s.open_and_check(FileKind::Info).await);
            assert!(
                m.starts_with("bad .info from private source for corp.test: ") && m.contains(why),
                "{body}: {m}"
            );
        }
    }

    #[tokio::test]
    async fn zip_must_follow_the_module_zip_rules() {
        let s = setup("");
        let good = zip_of(&[
            ("corp.test/m@v1.0.0/go.mod", b"module corp.test/m\n"),
            ("corp.test/m@v1.0.0/m.go", b"package m\n"),
        ]);
        s.put(FileKind::Zip, &good);
        s.open_and_check(FileKind::Zip).await.expect("good zip");
        let bad: [&[u8]; 3] = [
            &zip_of(&[("corp.test/other@v1.0.0/m.go", b"package m\n")]),
            &zip_of(&[("corp.test/m@v1.0.0/../m.go", b"package m\n")]),
            b"not a zip at all",
        ];
        for bytes in bad {
            s.put(FileKind::Zip, bytes);
            let m = message(s.open_and_check(FileKind::Zip).await);
            assert!(m.starts_with("invalid module zip: "), "{m}");
        }
    }

    #[test]
    fn only_public_mod_and_zip_files_are_asked_of_an_owner_replica() {
        let s = setup("");
        assert_eq!(s.fetch(MODULE, FileKind::Mod).peer_path(), None, "private");
        assert_eq!(s.fetch(MODULE, FileKind::Zip).peer_path(), None, "private");
        assert_eq!(s.fetch("example.com/m", FileKind::Info).peer_path(), None);
        assert_eq!(
            s.fetch("example.com/Up", FileKind::Zip)
                .peer_path()
                .as_deref(),
            Some("/go/example.com/!up/@v/v1.0.0.zip")
        );
        // A public file from the owner gets the checksum database's check.
        let mut f = s.fetch("example.com/m", FileKind::Mod);
        f.found_at_peer();
        assert_eq!(f.found.as_ref().map(|(_, public)| *public), Some(true));
    }

    #[tokio::test]
    async fn a_private_mod_is_not_sent_to_the_checksum_database() {
        // go.verify is on by default; a private module must pass without any sumdb request
        // (egress here refuses sum.golang.org, so asking would fail).
        let s = setup("");
        assert!(s.app.config.go.verify);
        s.put(FileKind::Mod, b"module corp.test/m\n");
        s.open_and_check(FileKind::Mod).await.expect("private .mod");
    }

    #[tokio::test]
    async fn a_public_file_is_checked_against_the_checksum_database_when_verify_is_on() {
        let bytes = b"module example.com/m\n";
        let mut f = setup("").fetch("example.com/m", FileKind::Mod);
        f.found = Some(("https://proxy.golang.org".into(), true));
        let m = message(f.check(&file_of(bytes), bytes.len() as u64).await);
        assert!(
            m.starts_with("cannot verify example.com/m@v1.0.0 with sum.golang.org"),
            "{m}"
        );
        let mut f = setup("verify = false").fetch("example.com/m", FileKind::Mod);
        f.found = Some(("https://proxy.golang.org".into(), true));
        f.check(&file_of(bytes), bytes.len() as u64)
            .await
            .expect("not verified when go.verify = false");
    }

    #[tokio::test]
    async fn each_kind_has_its_size_limit_and_a_larger_file_is_refused() {
        let s = setup("");
        for kind in [FileKind::Info, FileKind::Mod, FileKind::Zip] {
            assert_eq!(s.fetch(MODULE, kind).limit(), kind.max_size());
        }
        s.put(FileKind::Info, &vec![b' '; (1 << 20) + 1]);
        let m = message(s.open_and_check(FileKind::Info).await);
        assert_eq!(m, "the .info is larger than the 1048576-byte limit");
    }

    #[tokio::test]
    async fn a_file_no_source_has_is_not_found() {
        let s = setup("");
        let mut f = s.fetch(MODULE, FileKind::Mod);
        assert!(f.open().await.expect("an answer").is_none());
        assert!(f.found.is_none());
    }

    #[tokio::test]
    async fn through_the_engine_a_file_is_stored_recorded_and_its_negative_entry_dropped() {
        let s = setup("");
        s.put(FileKind::Info, INFO.as_bytes());
        let key = ModuleFileFetch::key(
            &ModulePath::parse(MODULE).expect("path"),
            VERSION,
            FileKind::Info,
        );
        assert_eq!(key, "corp.test/m@v1.0.0.info");
        s.app.go.remember_not_found(&key);
        let served = s
            .app
            .engine
            .fill(
                &s.app.go.flights,
                &key,
                || s.fetch(MODULE, FileKind::Info),
                tracing::Span::none,
            )
            .await
            .expect("served");
        let mut stream = served.into_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("complete body"));
        }
        assert_eq!(out, INFO.as_bytes());
        s.app
            .engine
            .finish_fills(std::time::Duration::from_secs(10))
            .await;
        let rec = s
            .app
            .storage
            .index
            .get_go_file(MODULE, VERSION, "info")
            .expect("index")
            .expect("a record");
        assert_eq!(
            (rec.digest, rec.size),
            (Digest::of(INFO.as_bytes()), INFO.len() as u64)
        );
        assert!(!s.app.go.known_not_found(&key));
        assert_eq!(
            s.app.metrics.upstream_bytes().get("go"),
            Some(&(INFO.len() as u64))
        );
    }

    #[tokio::test]
    async fn through_the_engine_a_bad_file_is_not_stored() {
        let s = setup("");
        s.put(FileKind::Info, br#"{"Version":"v9.9.9"}"#);
        let key = "corp.test/m@v1.0.0.info".to_string();
        let r = s
            .app
            .engine
            .fill(
                &s.app.go.flights,
                &key,
                || s.fetch(MODULE, FileKind::Info),
                tracing::Span::none,
            )
            .await;
        // Waited for whole, the fill's verdict is the refusal and its reason.
        let verdict = match r {
            Ok(served) => served.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let m = message(verdict);
        assert!(
            m.contains("info is for version v9.9.9 instead of requested v1.0.0"),
            "{m}"
        );
        s.app
            .engine
            .finish_fills(std::time::Duration::from_secs(10))
            .await;
        let rec = s
            .app
            .storage
            .index
            .get_go_file(MODULE, VERSION, "info")
            .expect("index");
        assert!(rec.is_none(), "nothing unverified is recorded");
    }
}
