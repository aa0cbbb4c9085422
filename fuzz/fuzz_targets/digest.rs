//! `Digest::parse` (and its serde form) and the blob paths built from digests. Checks, beyond "no
//! panic": exactly `sha256:<64 lowercase hex>` is accepted; an accepted digest prints back
//! unchanged; its `Layout::blob_path` is `<root>/blobs/sha256/<2 hex>/<64 hex>` with only plain
//! components, and maps back to the same digest.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use wharf_storage::{Digest, Layout};

const ROOT: &str = "/var/lib/wharf";

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Digest>(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let layout = Layout::new(ROOT);
    // Any file name under the blob directory: only an exact blob path maps to a digest.
    if let Some(d) = layout.digest_of_blob_path(&layout.blobs_dir().join(s)) {
        assert_eq!(layout.blob_path(&d), layout.blobs_dir().join(s), "{s:?}");
    }
    let canonical = s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    let Ok(d) = Digest::parse(s) else {
        assert!(!canonical, "{s:?} refused");
        return;
    };
    assert!(canonical, "{s:?} accepted");
    assert_eq!(d.to_string(), s);
    assert_eq!(Digest::parse(d.as_str()).as_ref(), Ok(&d));
    let path = layout.blob_path(&d);
    let rest = path.strip_prefix(Path::new(ROOT)).expect("under the root");
    let hex = d.hex();
    let want = [
        Component::Normal("blobs".as_ref()),
        Component::Normal("sha256".as_ref()),
        Component::Normal(hex[..2].as_ref()),
        Component::Normal(hex.as_ref()),
    ];
    assert!(rest.components().eq(want), "{}", path.display());
    assert_eq!(layout.digest_of_blob_path(&path), Some(d));
});
