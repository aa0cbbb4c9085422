//! Eviction: LRU order, pins, manifests with the blobs only they reference, dry runs.

use std::collections::HashMap;

use wharf_storage::{BlobRecord, Digest, PinRecord, RefsRecord, Storage, collect};

fn put(s: &Storage, bytes: &[u8], created: u64) -> Digest {
    let d = Digest::of(bytes);
    s.blobs.put_bytes(&d, bytes).unwrap();
    s.index
        .put_blob(
            &d,
            &BlobRecord {
                size: bytes.len() as u64,
                media_type: None,
                created_unix: created,
            },
        )
        .unwrap();
    d
}

fn on_disk(s: &Storage, d: &Digest) -> bool {
    s.blobs.contains(d)
}

#[test]
fn nothing_is_removed_under_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    put(&s, &[1; 100], 1);
    let r = collect(&s, 1000, &HashMap::new(), false).unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(r.total_before, 100);
}

#[test]
fn least_recently_used_goes_first_and_recent_access_counts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let old = put(&s, &[1; 100], 10);
    let mid = put(&s, &[2; 100], 20);
    let new = put(&s, &[3; 100], 30);
    // `old` was read recently (in memory, not yet flushed): it is now the youngest.
    let recent = HashMap::from([(old.clone(), 99)]);
    let r = collect(&s, 150, &recent, false).unwrap();
    assert_eq!(
        r.removed.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        vec![mid.clone(), new.clone()]
    );
    assert!(on_disk(&s, &old) && !on_disk(&s, &mid) && !on_disk(&s, &new));
    assert!(
        s.index.get_blob(&mid).unwrap().is_none(),
        "records go with the blob"
    );
    assert!(r.total_after() <= 150);
}

#[test]
fn pinned_content_and_everything_below_it_survive() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let layer = put(&s, &[1; 500], 1);
    let manifest = put(&s, b"{\"pinned\":1}", 1);
    s.index
        .put_refs(
            &manifest,
            &RefsRecord {
                children: vec![layer.clone()],
            },
        )
        .unwrap();
    s.index
        .put_pin(
            &manifest,
            &PinRecord {
                reason: "test".into(),
                pinned_unix: 1,
            },
        )
        .unwrap();
    let other = put(&s, &[2; 500], 50);
    let r = collect(&s, 0, &HashMap::new(), false).unwrap();
    assert!(
        on_disk(&s, &layer) && on_disk(&s, &manifest),
        "pinned image kept"
    );
    assert!(!on_disk(&s, &other));
    assert_eq!(r.pinned_objects, 2);
}

#[test]
fn a_manifest_goes_with_the_blobs_only_it_references() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let shared = put(&s, &[7; 300], 1);
    let only_a = put(&s, &[8; 300], 1);
    let a = put(&s, b"{\"a\":1}", 1);
    let b = put(&s, b"{\"b\":1}", 100);
    s.index
        .put_refs(
            &a,
            &RefsRecord {
                children: vec![shared.clone(), only_a.clone()],
            },
        )
        .unwrap();
    s.index
        .put_refs(
            &b,
            &RefsRecord {
                children: vec![shared.clone()],
            },
        )
        .unwrap();
    // Layers are old, but they are not candidates of their own: image a is the oldest root.
    let r = collect(&s, 400, &HashMap::new(), false).unwrap();
    assert!(!on_disk(&s, &a) && !on_disk(&s, &only_a), "{r}");
    assert!(
        on_disk(&s, &b) && on_disk(&s, &shared),
        "shared layer stays with b: {r}"
    );
}

#[test]
fn a_dry_run_removes_nothing_but_says_what_it_would_free() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let d = put(&s, &[1; 100], 1);
    let r = collect(&s, 0, &HashMap::new(), true).unwrap();
    assert_eq!(r.freed, 100);
    assert!(on_disk(&s, &d));
    assert!(r.to_string().contains("would remove"), "{r}");
}
