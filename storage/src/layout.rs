//! `Layout`: the only place that builds (or parses back) paths under the data directory. Must not
//! do I/O: callers create, open and remove what these paths name.
//!
//! ```text
//! <root>/blobs/sha256/<hex[..2]>/<hex>   committed blobs, read-only
//! <root>/tmp/<fill-pid-n-random>         fills in progress (same filesystem, so rename is atomic)
//! <root>/spare/<spare-pid-n-random>      empty files made ahead for fills (`spare`)
//! <root>/index/                          sled
//! <root>/admin.token                      the running server's admin secret (mode 0600)
//! <root>/admin.token.new                  the next one, while it is written
//! ```

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;

/// Paths under one data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/blobs/sha256`: parent of the fan-out directories.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// `<root>/blobs/sha256/<first 2 hex>`: the directory `blob_path(digest)` lives in.
    pub fn fanout_dir(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(&digest.hex()[..2])
    }

    /// `<root>/blobs/sha256/<first 2 hex>/<full hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.fanout_dir(digest).join(digest.hex())
    }

    /// The digest whose `blob_path` is exactly `path`, or `None` if `path` is not a blob path.
    pub fn digest_of_blob_path(&self, path: &Path) -> Option<Digest> {
        let name = path.file_name()?.to_str()?;
        let digest = Digest::parse(&format!("sha256:{name}")).ok()?;
        (self.blob_path(&digest) == path).then_some(digest)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn spare_dir(&self) -> PathBuf {
        self.root.join("spare")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// `<root>/admin.token`: the secret every `/admin/` request must carry, written by the
    /// process that opens the directory to serve it (its format belongs to the wharf crate's
    /// `admin::secret`).
    pub fn admin_token_path(&self) -> PathBuf {
        self.root.join("admin.token")
    }

    /// `<root>/admin.token.new`: where a new secret is written before it is renamed over
    /// `admin_token_path`. Not in `tmp/`, which holds fills only (and is swept at start).
    pub fn admin_token_temp_path(&self) -> PathBuf {
        self.root.join("admin.token.new")
    }

    /// A fresh name in `tmp/`: `fill-<pid>-<counter>-<random>`. Unique within this process by the
    /// counter; the random part guards against a reused pid meeting a file a crash left behind.
    pub fn new_temp_path(&self) -> PathBuf {
        self.tmp_dir().join(unique_name("fill"))
    }

    /// A path in `spare/` that no other call (in any process) returns.
    pub fn new_spare_path(&self) -> PathBuf {
        self.spare_dir().join(unique_name("spare"))
    }
}

/// `<what>-<pid>-<n>-<random>`: unique in this process by `n`, across processes by pid and hash.
fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one(n);
    let pid = std::process::id();
    format!("{what}-{pid}-{n}-{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_path_fans_out_on_the_first_two_hex_digits() {
        let layout = Layout::new("/data");
        let d = Digest::of(b"");
        assert_eq!(
            layout.blob_path(&d),
            Path::new("/data/blobs/sha256/e3").join(d.hex())
        );
        assert_eq!(layout.digest_of_blob_path(&layout.blob_path(&d)), Some(d));
    }

    #[test]
    fn paths_outside_the_fan_out_scheme_are_not_blob_paths() {
        let layout = Layout::new("/data");
        let d = Digest::of(b"");
        let wrong_fanout = Path::new("/data/blobs/sha256/00").join(d.hex());
        let flat = Path::new("/data/blobs/sha256").join(d.hex());
        let upper = Path::new("/data/blobs/sha256/e3").join(d.hex().to_uppercase());
        for path in [
            wrong_fanout,
            flat,
            upper,
            PathBuf::from("/data/blobs/sha256/e3/x"),
        ] {
            assert_eq!(
                layout.digest_of_blob_path(&path),
                None,
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn temp_paths_are_unique_and_inside_tmp() {
        let layout = Layout::new("/data");
        let a = layout.new_temp_path();
        let b = layout.new_temp_path();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/data/tmp")));
    }
}
