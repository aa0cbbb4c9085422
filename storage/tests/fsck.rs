//! fsck over every index tree: Go file and checksum-database records own blobs that have no blob
//! record, references to blobs that are gone are dangling, caches of gone blobs are harmless, and
//! an undecodable entry in any tree is reported by its key and dropped by repair.

mod support;
use support::{open, plant_raw_record};

use std::fs;
use std::os::unix::fs::PermissionsExt;

use wharf_storage::{
    AtimeRecord, BlobRecord, Digest, GoFileRecord, GoListRecord, PinRecord, RefsRecord, Storage,
    SumdbRecord, TagListRecord, TagRecord, TrustRecord, fsck,
};

const ZIP: &[u8] = b"PK\x03\x04 a module zip";

/// Stores `bytes` as a blob and gives it a blob record, as the registry does.
fn put_indexed(storage: &Storage, bytes: &[u8]) -> Digest {
    let digest = put_file(storage, bytes);
    let record = BlobRecord {
        size: bytes.len() as u64,
        media_type: None,
        created_unix: 1,
    };
    storage.index.put_blob(&digest, &record).unwrap();
    digest
}

/// Stores `bytes` as a blob with no blob record, as the Go proxy does.
fn put_file(storage: &Storage, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    storage.blobs.put_bytes(&digest, bytes).unwrap();
    digest
}

/// A Go file record for `bytes`, stored as its blob.
fn put_go_file(storage: &Storage, module: &str, kind: &str, bytes: &[u8]) -> Digest {
    let digest = put_file(storage, bytes);
    let record = GoFileRecord {
        digest: digest.clone(),
        size: bytes.len() as u64,
        fetched_unix: 1,
    };
    storage
        .index
        .put_go_file(module, "v1.0.0", kind, &record)
        .unwrap();
    digest
}

fn put_sumdb(storage: &Storage, path: &str, bytes: &[u8]) -> Digest {
    let digest = put_file(storage, bytes);
    let record = SumdbRecord {
        digest: digest.clone(),
        fetched_unix: 1,
        verified: true,
    };
    storage
        .index
        .put_sumdb("sum.golang.org", path, &record)
        .unwrap();
    digest
}

fn pin(reason: &str) -> PinRecord {
    PinRecord {
        reason: reason.into(),
        pinned_unix: 1,
    }
}

/// Replaces a committed (read-only) blob file's content.
fn overwrite(storage: &Storage, digest: &Digest, bytes: &[u8]) {
    let path = storage.blobs.path(digest);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, bytes).unwrap();
}

/// One store with something in every tree, all of it consistent.
fn fill_every_tree(storage: &Storage) -> Digest {
    let index = &storage.index;
    let layer = Digest::of(b"a layer never pulled");
    let manifest = put_indexed(storage, b"{\"manifest\":1}");
    let tag = TagRecord {
        digest: manifest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        learned_unix: 1,
    };
    index.put_tag("docker.io", "library/x", "1", &tag).unwrap();
    let list = TagListRecord {
        tags: vec!["1".into()],
        fetched_unix: 1,
    };
    index.put_tag_list("docker.io", "library/x", &list).unwrap();
    let refs = RefsRecord {
        children: vec![layer.clone()],
    };
    index.put_refs(&manifest, &refs).unwrap();
    index.put_link("docker.io", "library/x", &manifest).unwrap();
    index.put_link("docker.io", "library/x", &layer).unwrap();
    index.put_atimes(&[(manifest.clone(), 5)]).unwrap();

    let m = "example.com/m";
    put_go_file(storage, m, "info", br#"{"Version":"v1.0.0"}"#);
    put_go_file(storage, m, "mod", b"module example.com/m\n");
    let zip = put_go_file(storage, m, "zip", ZIP);
    let go_list = GoListRecord {
        body: "v1.0.0\n".into(),
        fetched_unix: 1,
    };
    index.put_go_list(m, "list", &go_list).unwrap();
    put_sumdb(
        storage,
        "lookup/example.com/m@v1.0.0",
        b"7\nexample.com/m v1.0.0 h1:x=\n",
    );
    let trust = TrustRecord {
        size: 7,
        hash: "00".repeat(32),
        note: "a signed note".into(),
        learned_unix: 1,
    };
    index.put_trust("sum.golang.org", &trust).unwrap();
    index.put_pin(&zip, &pin("prefetch example.com/m")).unwrap();
    index.mark_done("links-from-tags").unwrap();
    manifest
}

#[test]
fn a_store_with_go_content_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    fill_every_tree(&storage);

    let report = fsck(&storage, false).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.checked, report.ok), (1, 1));
    assert_eq!(report.go_owned, 4, "three Go files and one sumdb response");
    assert!(report.orphans.is_empty(), "{report}");
    assert_eq!(
        report.links_without_blob, 1,
        "the link of a layer never pulled"
    );
    assert_eq!(report.atimes_without_blob, 0);
    assert!(report.to_string().ends_with("clean"), "{report}");

    let repaired = fsck(&storage, true).unwrap();
    assert!(repaired.is_clean(), "{repaired}");
    assert!(repaired.repaired.is_empty(), "{repaired}");
    let zip = Digest::of(ZIP);
    assert_eq!(
        storage.index.get_blob(&zip).unwrap(),
        None,
        "Go blobs are not indexed as orphans"
    );
}

#[test]
fn dangling_go_file_record_is_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let m = "example.com/m";
    let info = put_go_file(&storage, m, "info", br#"{"Version":"v1.0.0"}"#);
    let gone = put_go_file(&storage, m, "mod", b"module example.com/m\n");
    let flipped = put_go_file(&storage, m, "zip", ZIP);
    let tile = put_sumdb(&storage, "tile/8/0/000", &[1u8; 32]);
    fs::remove_file(storage.blobs.path(&gone)).unwrap();
    overwrite(&storage, &flipped, b"PK\x03\x04 a module zap");
    fs::remove_file(storage.blobs.path(&tile)).unwrap();

    let report = fsck(&storage, false).unwrap();
    assert!(!report.is_clean());
    let key = |kind: &str| (m.to_owned(), "v1.0.0".to_owned(), kind.to_owned());
    assert_eq!(report.dangling_go_files, vec![key("mod"), key("zip")]);
    assert_eq!(
        report.dangling_sumdb,
        vec![("sum.golang.org".to_owned(), "tile/8/0/000".to_owned())]
    );
    assert_eq!(report.corrupt.len(), 1, "{report}");
    assert_eq!(report.corrupt[0].0, flipped);
    assert_eq!(report.go_owned, 1);
    assert!(report.orphans.is_empty(), "{report}");
    let text = report.to_string();
    assert!(text.contains("example.com/m@v1.0.0.mod"), "{text}");
    assert!(text.contains("sum.golang.org tile/8/0/000"), "{text}");
    assert!(
        storage
            .index
            .get_go_file(m, "v1.0.0", "mod")
            .unwrap()
            .is_some(),
        "nothing changes without repair"
    );

    let repaired = fsck(&storage, true).unwrap();
    assert_eq!(repaired.dangling_go_files, report.dangling_go_files);
    assert!(
        !storage.blobs.contains(&flipped),
        "the corrupt blob is deleted"
    );
    for kind in ["mod", "zip"] {
        assert_eq!(storage.index.get_go_file(m, "v1.0.0", kind).unwrap(), None);
    }
    assert_eq!(
        storage.index.get_go_file(m, "v1.0.0", "info").unwrap(),
        Some(GoFileRecord {
            digest: info,
            size: 20,
            fetched_unix: 1
        })
    );
    assert_eq!(
        storage
            .index
            .get_sumdb("sum.golang.org", "tile/8/0/000")
            .unwrap(),
        None
    );
    let again = fsck(&storage, false).unwrap();
    assert!(again.is_clean(), "{again}");
}

#[test]
fn go_file_record_with_the_wrong_size_is_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let digest = put_file(&storage, ZIP);
    let wrong = GoFileRecord {
        digest: digest.clone(),
        size: 3,
        fetched_unix: 1,
    };
    storage
        .index
        .put_go_file("example.com/m", "v1.0.0", "zip", &wrong)
        .unwrap();

    let report = fsck(&storage, true).unwrap();
    assert_eq!(report.size_mismatch.len(), 1, "{report}");
    assert_eq!(report.size_mismatch[0].0, digest);
    let fixed = storage
        .index
        .get_go_file("example.com/m", "v1.0.0", "zip")
        .unwrap()
        .unwrap();
    assert_eq!(fixed.size, ZIP.len() as u64);
    assert!(fsck(&storage, false).unwrap().is_clean());
}

#[test]
fn pins_and_refs_of_gone_blobs_dangle_but_access_times_and_links_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let index = &storage.index;
    let kept = put_indexed(&storage, b"kept manifest");
    let gone = Digest::of(b"a manifest gc removed");
    index.put_pin(&kept, &pin("import")).unwrap();
    index.put_pin(&gone, &pin("import")).unwrap();
    let refs = RefsRecord {
        children: vec![Digest::of(b"child")],
    };
    index.put_refs(&kept, &refs).unwrap();
    index.put_refs(&gone, &refs).unwrap();
    index
        .put_atimes(&[(kept.clone(), 5), (gone.clone(), 6)])
        .unwrap();
    index.put_link("docker.io", "library/x", &gone).unwrap();

    let report = fsck(&storage, false).unwrap();
    assert_eq!(report.dangling_pins, vec![gone.clone()]);
    assert_eq!(report.dangling_refs, vec![gone.clone()]);
    assert_eq!(
        (report.atimes_without_blob, report.links_without_blob),
        (1, 1)
    );
    assert!(report.to_string().contains("harmless"), "{report}");

    let repaired = fsck(&storage, true).unwrap();
    assert!(!repaired.repaired.is_empty());
    assert_eq!(index.get_pin(&gone).unwrap(), None);
    assert_eq!(index.get_refs(&gone).unwrap(), None);
    assert_eq!(index.get_atime(&gone).unwrap(), None, "repair prunes it");
    assert!(
        index.has_link("docker.io", "library/x", &gone).unwrap(),
        "a link is upstream knowledge and stays"
    );
    assert!(index.get_pin(&kept).unwrap().is_some());
    assert_eq!(
        index.get_atime(&kept).unwrap(),
        Some(AtimeRecord {
            last_access_unix: 5
        })
    );

    let again = fsck(&storage, false).unwrap();
    assert!(again.is_clean(), "{again}");
    assert_eq!(
        (again.atimes_without_blob, again.links_without_blob),
        (0, 1)
    );
}

#[test]
fn undecodable_record_in_any_tree_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(dir.path());
        fill_every_tree(&storage);
        storage.index.flush().unwrap();
    }
    let digest = Digest::of(b"some blob");
    let d = digest.as_str().as_bytes();
    let garbage = b"\x01{oops";
    let planted: [(&str, &[u8], &[u8]); 14] = [
        ("blobs", d, garbage),
        ("tags", b"docker.io\0library/x\0bad", garbage),
        ("taglists", b"docker.io\0library/bad", garbage),
        ("gofiles", b"example.com/bad\0v1.0.0\0zip", garbage),
        ("golists", b"example.com/bad\0list", garbage),
        ("sumdb", b"sum.golang.org\0tile/bad", garbage),
        ("gotrust", b"bad.example", garbage),
        ("pins", d, garbage),
        ("refs", d, garbage),
        ("atime", d, b"\x02{\"last_access_unix\":1}"),
        (
            "links",
            b"docker.io\0library/x\0not-a-digest",
            b"\x01{\"linked_unix\":1}",
        ),
        (
            "links",
            b"docker.io\0library/bad",
            b"\x01{\"linked_unix\":1}",
        ),
        ("meta", b"done/some-step", b"short"),
        ("meta", b"what is this", b""),
    ];
    for (tree, key, value) in planted {
        plant_raw_record(dir.path(), tree, key, value);
    }
    let storage = open(dir.path());

    let report = fsck(&storage, false).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.bad_records.len(), planted.len(), "{report}");
    for (tree, _, _) in planted {
        let prefix = format!("{tree}:");
        assert!(
            report.bad_records.iter().any(|r| r.contains(&prefix)),
            "no undecodable record reported in {tree}: {report}"
        );
    }
    assert!(
        report
            .bad_records
            .iter()
            .any(|r| r.contains("example.com/bad") && r.contains("gofiles")),
        "the report names the key: {report}"
    );
    assert!(report.orphans.is_empty(), "{report}");

    let repaired = fsck(&storage, true).unwrap();
    assert_eq!(repaired.bad_records.len(), planted.len());
    let dropped = repaired
        .repaired
        .iter()
        .filter(|line| line.starts_with("dropped undecodable record"))
        .count();
    assert_eq!(dropped, planted.len(), "{repaired}");
    let again = fsck(&storage, false).unwrap();
    assert!(again.is_clean(), "{again}");
    assert_eq!(again.go_owned, 4);
    assert!(
        storage.index.done("links-from-tags").unwrap(),
        "intact meta entries are kept"
    );
}
