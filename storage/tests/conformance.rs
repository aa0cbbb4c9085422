//! Black-box tests of the storage crate through its public API, on real temp directories.

mod support;
use support::{open, plant_raw_record};

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use wharf_storage::{
    BlobCheck, BlobRecord, Digest, DiskEntry, GoListRecord, SMALL_MAX, Storage, StorageError,
    SumdbRecord, TagListRecord, TagRecord, TrustRecord, fsck,
};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn blob_record(size: usize) -> BlobRecord {
    BlobRecord {
        size: size as u64,
        media_type: None,
        created_unix: 1,
    }
}

/// Stores `bytes` as a blob and indexes it.
fn put_indexed(storage: &Storage, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    storage.blobs.put_bytes(&digest, bytes).unwrap();
    storage
        .index
        .put_blob(&digest, &blob_record(bytes.len()))
        .unwrap();
    digest
}

/// `digest` is stored with exactly `bytes`: present, its size, read back whole, and verified.
fn assert_stored(storage: &Storage, digest: &Digest, bytes: &[u8]) {
    assert!(storage.blobs.contains(digest));
    assert_eq!(
        storage.blobs.size(digest).unwrap(),
        Some(bytes.len() as u64)
    );
    let mut read = Vec::new();
    storage
        .blobs
        .open_blob(digest)
        .unwrap()
        .read_to_end(&mut read)
        .unwrap();
    assert_eq!(read, bytes);
    assert_eq!(
        storage.blobs.verify(digest).unwrap(),
        BlobCheck::Ok {
            size: bytes.len() as u64
        }
    );
}

fn make_writable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn committed_blob_reads_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&bytes);

    let mut writer = storage.blobs.writer().unwrap();
    for chunk in bytes.chunks(4096) {
        writer.write_all(chunk).unwrap();
    }
    assert_eq!(writer.written(), bytes.len() as u64);
    let committed = writer.commit(&digest, Some(bytes.len() as u64)).unwrap();

    assert_eq!(committed.digest, digest);
    assert_eq!(committed.size, bytes.len() as u64);
    assert_eq!(committed.path, storage.layout.blob_path(&digest));
    assert_stored(&storage, &digest, &bytes);
    assert!(files_in(&storage.layout.tmp_dir()).is_empty());
}

#[test]
fn committed_blob_file_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let committed = storage.blobs.put_bytes(&Digest::of(b"ro"), b"ro").unwrap();
    let mode = fs::metadata(&committed.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444);
}

#[test]
fn dropping_a_writer_removes_its_temp_file_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut writer = storage.blobs.writer().unwrap();
    writer.write_all(b"half a layer").unwrap();
    let temp = writer.temp_path().to_owned();
    assert!(temp.exists());
    drop(writer);

    assert!(!temp.exists());
    assert!(files_in(&storage.layout.tmp_dir()).is_empty());
    assert!(files_in(&storage.layout.blobs_dir()).is_empty());
    assert!(!storage.blobs.contains(&Digest::of(b"half a layer")));

    let writer = storage.blobs.writer().unwrap();
    let temp = writer.temp_path().to_owned();
    writer.abort();
    assert!(!temp.exists());
}

#[test]
fn two_writers_of_the_same_digest_both_commit_and_leave_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let bytes = b"the same layer, fetched twice".to_vec();
    let digest = Digest::of(&bytes);
    let barrier = Arc::new(Barrier::new(2));

    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (blobs, barrier, bytes, digest) = (
                storage.blobs.clone(),
                barrier.clone(),
                bytes.clone(),
                digest.clone(),
            );
            std::thread::spawn(move || {
                let mut writer = blobs.writer().unwrap();
                writer.write_all(&bytes).unwrap();
                barrier.wait();
                writer.commit(&digest, Some(bytes.len() as u64))
            })
        })
        .collect();
    for handle in handles {
        let committed = handle.join().unwrap().unwrap();
        assert_eq!(committed.path, storage.blobs.path(&digest));
    }

    assert_eq!(
        files_in(&storage.layout.blobs_dir()),
        vec![storage.blobs.path(&digest)]
    );
    assert!(files_in(&storage.layout.tmp_dir()).is_empty());

    // A third, sequential writer finds the blob already there and keeps it.
    let again = storage.blobs.put_bytes(&digest, &bytes).unwrap();
    assert_eq!(again.size, bytes.len() as u64);
    assert_eq!(
        storage.blobs.read_small(&digest, 1024).unwrap().unwrap(),
        bytes
    );
}

#[test]
fn blob_with_wrong_digest_is_rejected_and_leaves_nothing_in_blobs_or_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let claimed = Digest::of(b"what the upstream promised");
    let mut writer = storage.blobs.writer().unwrap();
    writer.write_all(b"what the upstream sent").unwrap();

    let err = writer.commit(&claimed, None).unwrap_err();
    match &err {
        StorageError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &claimed);
            assert_eq!(actual, &Digest::of(b"what the upstream sent"));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(claimed.as_str()), "{err}");
    assert!(files_in(&storage.layout.blobs_dir()).is_empty());
    assert!(files_in(&storage.layout.tmp_dir()).is_empty());
}

#[test]
fn truncated_blob_is_rejected_as_a_size_mismatch_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let full = b"0123456789";
    let mut writer = storage.blobs.writer().unwrap();
    writer.write_all(&full[..6]).unwrap();

    let err = writer
        .commit(&Digest::of(full), Some(full.len() as u64))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::SizeMismatch {
                expected: 10,
                actual: 6
            }
        ),
        "{err:?}"
    );
    assert!(files_in(&storage.layout.blobs_dir()).is_empty());
    assert!(files_in(&storage.layout.tmp_dir()).is_empty());
}

#[test]
fn right_digest_with_wrong_announced_size_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut writer = storage.blobs.writer().unwrap();
    writer.write_all(b"abc").unwrap();
    let err = writer.commit(&Digest::of(b"abc"), Some(4)).unwrap_err();
    assert!(matches!(
        err,
        StorageError::SizeMismatch {
            expected: 4,
            actual: 3
        }
    ));
    assert!(files_in(&storage.layout.blobs_dir()).is_empty());
}

#[test]
fn leftover_temp_files_are_swept_when_storage_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let tmp = storage.layout.tmp_dir();
    drop(storage);

    fs::write(tmp.join("fill-1-0-dead"), b"half a fill").unwrap();
    fs::create_dir(tmp.join("leftover-dir")).unwrap();
    fs::write(tmp.join("leftover-dir").join("x"), b"x").unwrap();
    let read_only = tmp.join("committed-but-not-renamed");
    fs::write(&read_only, b"y").unwrap();
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o444)).unwrap();

    let storage = open(dir.path());
    assert_eq!(fs::read_dir(storage.layout.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn second_open_of_a_data_dir_in_use_fails_and_leaves_its_fills_alone() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut writer = storage.blobs.writer().unwrap();
    writer.write_all(b"in flight").unwrap();

    let err = Storage::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::InUse { .. }), "{err:?}");
    assert!(writer.temp_path().exists());
    writer.commit(&Digest::of(b"in flight"), Some(9)).unwrap();
}

#[test]
fn reader_sees_bytes_through_file_while_the_writer_is_still_writing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut writer = storage.blobs.writer().unwrap();
    let file = writer.file();

    writer.write_all(b"first chunk;").unwrap();
    let mut buf = vec![0u8; writer.written() as usize];
    file.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"first chunk;");

    writer.write_all(b"second chunk").unwrap();
    let mut buf = vec![0u8; 12];
    file.read_at(&mut buf, 12).unwrap();
    assert_eq!(buf, b"second chunk");

    // The handle stays readable after commit: same inode, now under blobs/.
    writer
        .commit(&Digest::of(b"first chunk;second chunk"), Some(24))
        .unwrap();
    let mut all = vec![0u8; 24];
    file.read_exact_at(&mut all, 0).unwrap();
    assert_eq!(all, b"first chunk;second chunk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reader_follows_a_fill_running_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let chunks: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 10_000]).collect();
    let all: Vec<u8> = chunks.concat();
    let digest = Digest::of(&all);

    let writer = storage.blobs.writer().unwrap();
    let file = writer.file();
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(0u64);
    let expected = digest.clone();
    let fill = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        for chunk in &chunks {
            writer.write_all(chunk).unwrap();
            progress_tx.send_replace(writer.written());
        }
        writer.commit(&expected, None)
    });

    let mut read = Vec::new();
    while (read.len() as u64) < all.len() as u64 {
        progress_rx.changed().await.unwrap();
        let available = *progress_rx.borrow_and_update();
        let mut buf = vec![0u8; available as usize - read.len()];
        file.read_exact_at(&mut buf, read.len() as u64).unwrap();
        read.extend_from_slice(&buf);
    }
    assert_eq!(read, all);
    assert_eq!(fill.await.unwrap().unwrap().digest, digest);
}

#[test]
fn read_small_refuses_blobs_over_the_limit_and_reports_absent_ones_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let digest = Digest::of(b"a manifest");
    storage.blobs.put_bytes(&digest, b"a manifest").unwrap();

    assert_eq!(
        storage.blobs.read_small(&digest, 10).unwrap().unwrap(),
        b"a manifest"
    );
    let err = storage.blobs.read_small(&digest, 9).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(digest.as_str()), "{err}");

    let absent = Digest::of(b"absent");
    assert_eq!(storage.blobs.read_small(&absent, 10).unwrap(), None);
    assert_eq!(storage.blobs.size(&absent).unwrap(), None);
    assert_eq!(
        storage.blobs.open_blob(&absent).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(storage.blobs.verify(&absent).unwrap(), BlobCheck::Missing);
}

#[test]
fn removed_blob_is_gone_and_removing_again_reports_false() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let digest = Digest::of(b"gc me");
    storage.blobs.put_bytes(&digest, b"gc me").unwrap();
    assert!(storage.blobs.remove(&digest).unwrap());
    assert!(!storage.blobs.contains(&digest));
    assert!(!storage.blobs.remove(&digest).unwrap());
}

#[test]
fn listing_reports_blobs_with_sizes_and_misplaced_files_as_strays() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let a = Digest::of(b"aaa");
    storage.blobs.put_bytes(&a, b"aaa").unwrap();
    let b = Digest::of(b"bbbb");
    storage.blobs.put_bytes(&b, b"bbbb").unwrap();

    let blobs_dir = storage.layout.blobs_dir();
    let misplaced = blobs_dir.join("00").join(a.hex());
    fs::create_dir_all(misplaced.parent().unwrap()).unwrap();
    fs::write(&misplaced, b"aaa").unwrap();
    let junk = blobs_dir.join("README");
    fs::write(&junk, b"hi").unwrap();

    let mut want = vec![
        DiskEntry::Blob(a, 3),
        DiskEntry::Blob(b, 4),
        DiskEntry::Stray(misplaced),
        DiskEntry::Stray(junk),
    ];
    want.sort();
    assert_eq!(storage.blobs.list().unwrap(), want);
}

#[test]
fn a_small_object_lives_in_the_index_with_no_file_and_reads_like_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"module example.com/m\n\ngo 1.21\n";
    let digest = Digest::of(body);
    {
        let storage = open(dir.path());
        let mut w = storage
            .blobs
            .small_writer(body.len() as u64)
            .unwrap()
            .unwrap();
        // Readers of the growing object see its bytes as they are written.
        let reader = w.file();
        w.write_all(&body[..10]).unwrap();
        let mut head = [0u8; 10];
        reader.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, &body[..10]);
        w.write_all(&body[10..]).unwrap();
        let committed = w.commit(&digest, Some(body.len() as u64)).unwrap();
        assert_eq!(committed.size, body.len() as u64);
        assert!(files_in(&storage.layout.blobs_dir()).is_empty());
        assert!(files_in(&storage.layout.tmp_dir()).is_empty());
        // A larger one is not taken.
        assert!(storage.blobs.small_writer(SMALL_MAX + 1).is_none());
        let other = storage
            .blobs
            .put_small(b"a checksum-database record")
            .unwrap();
        assert_eq!(other, Digest::of(b"a checksum-database record"));
        assert!(files_in(&storage.layout.blobs_dir()).is_empty());
    }
    // Durable with the index: after a reopen it opens, reads, stats, lists and verifies.
    let storage = open(dir.path());
    assert_stored(&storage, &digest, body);
    assert_eq!(
        storage.blobs.read_small(&digest, 1024).unwrap().unwrap(),
        body
    );
    assert!(storage.blobs.read_small(&digest, 4).is_err());
    assert!(
        storage
            .blobs
            .list()
            .unwrap()
            .contains(&DiskEntry::Blob(digest.clone(), body.len() as u64))
    );
    assert!(storage.blobs.remove(&digest).unwrap());
    assert!(!storage.blobs.contains(&digest));
    assert!(storage.blobs.open_blob(&digest).is_err());
}

#[test]
fn an_object_kept_both_as_a_file_and_in_the_index_is_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let body = b"module example.com/twice\n";
    let digest = Digest::of(body);
    storage.blobs.put_bytes(&digest, body).unwrap();
    storage.blobs.put_small(body).unwrap();
    assert_eq!(
        storage.blobs.list().unwrap(),
        vec![DiskEntry::Blob(digest.clone(), body.len() as u64)]
    );
    // A corrupt file behind a sound small copy is found.
    let path = storage.blobs.path(&digest);
    make_writable(&path);
    fs::write(&path, b"module example.com/twicE\n").unwrap();
    assert!(matches!(
        storage.blobs.verify(&digest).unwrap(),
        BlobCheck::Corrupt { .. }
    ));
    // Removing it removes both.
    assert!(storage.blobs.remove(&digest).unwrap());
    assert!(!storage.blobs.contains(&digest));
    assert!(!path.exists());
    assert!(storage.blobs.list().unwrap().is_empty());
}

#[test]
fn a_small_object_with_the_wrong_digest_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut w = storage.blobs.small_writer(5).unwrap().unwrap();
    w.write_all(b"wrong").unwrap();
    let right = Digest::of(b"right");
    assert!(matches!(
        w.commit(&right, Some(5)),
        Err(StorageError::DigestMismatch { .. })
    ));
    assert!(!storage.blobs.contains(&right));
    assert!(!storage.blobs.contains(&Digest::of(b"wrong")));
    assert!(storage.blobs.list().unwrap().is_empty());
}

#[test]
fn records_round_trip_through_the_index_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let digest = Digest::of(b"manifest");
    let blob = BlobRecord {
        size: 8,
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        created_unix: 1_700_000_000,
    };
    let tag = TagRecord {
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        learned_unix: 1_700_000_001,
    };
    let list = TagListRecord {
        tags: vec!["3.19".into(), "3.20".into(), "latest".into()],
        fetched_unix: 1_700_000_002,
    };
    {
        let storage = open(dir.path());
        let index = &storage.index;
        index.put_blob(&digest, &blob).unwrap();
        index
            .put_tag("docker.io", "library/alpine", "latest", &tag)
            .unwrap();
        index
            .put_tag("docker.io", "library/alpine", "3.20", &tag)
            .unwrap();
        index.put_tag("ghcr.io", "org/app", "v1", &tag).unwrap();
        index
            .put_tag_list("docker.io", "library/alpine", &list)
            .unwrap();
        assert_eq!(index.get_blob(&digest).unwrap().as_ref(), Some(&blob));
        index.flush().unwrap();
    }

    let storage = open(dir.path());
    let index = &storage.index;
    assert_eq!(index.get_blob(&digest).unwrap(), Some(blob.clone()));
    assert_eq!(
        index
            .get_tag("docker.io", "library/alpine", "latest")
            .unwrap(),
        Some(tag.clone())
    );
    assert_eq!(
        index
            .get_tag("docker.io", "library/alpine", "edge")
            .unwrap(),
        None
    );
    assert_eq!(
        index.get_tag_list("docker.io", "library/alpine").unwrap(),
        Some(list)
    );
    assert_eq!(
        index.blobs().collect::<Result<Vec<_>, _>>().unwrap(),
        vec![(digest.clone(), blob)]
    );
    let tags: Vec<_> = index
        .tags()
        .map(|t| t.unwrap().0)
        .map(|(u, r, t)| format!("{u} {r}:{t}"))
        .collect();
    assert_eq!(
        tags,
        [
            "docker.io library/alpine:3.20",
            "docker.io library/alpine:latest",
            "ghcr.io org/app:v1"
        ]
    );
    let in_repo: Vec<_> = index
        .tags_in_repo("docker.io", "library/alpine")
        .unwrap()
        .map(|t| t.unwrap().0)
        .collect();
    assert_eq!(in_repo, ["3.20", "latest"]);

    assert!(
        index
            .remove_tag("docker.io", "library/alpine", "latest")
            .unwrap()
    );
    assert!(
        !index
            .remove_tag("docker.io", "library/alpine", "latest")
            .unwrap()
    );
    assert!(index.remove_blob(&digest).unwrap());
    assert_eq!(index.get_blob(&digest).unwrap(), None);
}

#[test]
fn go_list_sumdb_trust_and_link_records_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let index = &storage.index;
    let digest = Digest::of(b"tile");
    let list = GoListRecord {
        body: "v1.0.0\n".into(),
        fetched_unix: 1,
    };
    index.put_go_list("example.com/m", "list", &list).unwrap();
    let sumdb = SumdbRecord {
        digest: digest.clone(),
        fetched_unix: 1,
        verified: false,
    };
    index
        .put_sumdb("sum.golang.org", "tile/8/0/000", &sumdb)
        .unwrap();
    let trust = TrustRecord {
        size: 1,
        hash: "00".into(),
        note: "note".into(),
        learned_unix: 1,
    };
    index.put_trust("sum.golang.org", &trust).unwrap();
    index.put_link("docker.io", "library/x", &digest).unwrap();

    assert!(index.remove_go_list("example.com/m", "list").unwrap());
    assert!(
        index
            .remove_sumdb("sum.golang.org", "tile/8/0/000")
            .unwrap()
    );
    assert!(index.remove_trust("sum.golang.org").unwrap());
    assert!(
        index
            .remove_link("docker.io", "library/x", &digest)
            .unwrap()
    );
    assert_eq!(index.get_go_list("example.com/m", "list").unwrap(), None);
    assert_eq!(
        index.get_sumdb("sum.golang.org", "tile/8/0/000").unwrap(),
        None
    );
    assert_eq!(index.get_trust("sum.golang.org").unwrap(), None);
    assert!(!index.has_link("docker.io", "library/x", &digest).unwrap());
    assert!(
        !index
            .remove_sumdb("sum.golang.org", "tile/8/0/000")
            .unwrap()
    );
}

#[test]
fn tag_name_with_a_nul_byte_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let tag = TagRecord {
        digest: Digest::of(b""),
        media_type: "x".into(),
        learned_unix: 0,
    };
    let err = storage
        .index
        .put_tag("docker.io", "a\0b", "latest", &tag)
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey(_)), "{err:?}");
    assert!(
        storage
            .index
            .get_tag("docker.io", "a\0b", "latest")
            .is_err()
    );
}

#[test]
fn record_with_an_unknown_version_byte_is_a_corrupt_record_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let digest = Digest::of(b"from the future");
    plant_raw_record(
        dir.path(),
        "blobs",
        digest.as_str().as_bytes(),
        b"\x02{\"size\":1}",
    );
    let json_garbage = Digest::of(b"garbage");
    plant_raw_record(
        dir.path(),
        "blobs",
        json_garbage.as_str().as_bytes(),
        b"\x01{oops",
    );

    let storage = open(dir.path());
    match storage.index.get_blob(&digest).unwrap_err() {
        StorageError::CorruptRecord { key, reason } => {
            assert!(key.contains(digest.as_str()), "{key}");
            assert!(reason.contains("version 2"), "{reason}");
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    let err = storage.index.get_blob(&json_garbage).unwrap_err();
    assert!(matches!(err, StorageError::CorruptRecord { .. }), "{err:?}");
    let errors = storage.index.blobs().filter(Result::is_err).count();
    assert_eq!(errors, 2);
}

#[test]
fn fsck_of_an_intact_store_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let d = put_indexed(&storage, b"fine");
    let tag = TagRecord {
        digest: d,
        media_type: "m".into(),
        learned_unix: 0,
    };
    storage
        .index
        .put_tag("docker.io", "library/x", "latest", &tag)
        .unwrap();

    let report = fsck(&storage, false).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.checked, report.ok), (1, 1));
    assert!(report.to_string().ends_with("clean"), "{report}");
}

#[test]
fn fsck_finds_missing_truncated_flipped_and_orphan_blobs_and_repair_leaves_a_clean_index() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let good = put_indexed(&storage, b"good blob");
    let missing = put_indexed(&storage, b"missing blob");
    let truncated = put_indexed(&storage, b"truncated blob");
    let flipped = put_indexed(&storage, b"flipped blob");
    let orphan = Digest::of(b"orphan blob");
    storage.blobs.put_bytes(&orphan, b"orphan blob").unwrap();
    let corrupt_orphan = Digest::of(b"corrupt orphan");
    storage
        .blobs
        .put_bytes(&corrupt_orphan, b"corrupt orphan")
        .unwrap();
    let tag = |digest: &Digest| TagRecord {
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        learned_unix: 0,
    };
    storage
        .index
        .put_tag("docker.io", "library/a", "ok", &tag(&good))
        .unwrap();
    storage
        .index
        .put_tag("docker.io", "library/a", "gone", &tag(&missing))
        .unwrap();
    storage
        .index
        .put_tag("docker.io", "library/a", "orphaned", &tag(&orphan))
        .unwrap();
    storage.index.flush().unwrap();
    drop(storage);
    plant_raw_record(dir.path(), "taglists", b"docker.io\0library/a", b"\x01[]");
    let storage = open(dir.path());

    fs::remove_file(storage.blobs.path(&missing)).unwrap();
    let path = storage.blobs.path(&truncated);
    make_writable(&path);
    fs::write(&path, b"truncated").unwrap();
    let path = storage.blobs.path(&flipped);
    make_writable(&path);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let path = storage.blobs.path(&corrupt_orphan);
    make_writable(&path);
    fs::write(&path, b"CORRUPT orphan").unwrap();

    let report = fsck(&storage, false).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.checked, 4);
    assert_eq!(report.ok, 1);
    assert_eq!(report.missing, vec![missing.clone()]);
    assert_eq!(digests(&report.size_mismatch), vec![truncated.clone()]);
    let mut corrupt = vec![flipped.clone(), corrupt_orphan.clone()];
    corrupt.sort();
    let mut found = digests(&report.corrupt);
    found.sort();
    assert_eq!(found, corrupt);
    assert_eq!(report.orphans, vec![orphan.clone()]);
    assert_eq!(
        report.dangling_tags,
        vec![("docker.io".into(), "library/a".into(), "gone".into())]
    );
    assert_eq!(report.bad_records.len(), 1);
    assert!(report.repaired.is_empty());
    // Without repair nothing changed.
    assert!(storage.index.get_blob(&missing).unwrap().is_some());
    assert!(storage.blobs.contains(&flipped));

    let repaired = fsck(&storage, true).unwrap();
    assert_eq!(repaired.missing, report.missing);
    assert!(!repaired.repaired.is_empty());
    let text = repaired.to_string();
    assert!(
        text.contains(missing.as_str()) && text.contains("repaired"),
        "{text}"
    );

    let again = fsck(&storage, false).unwrap();
    assert!(again.is_clean(), "{again}");
    assert_eq!((again.checked, again.ok), (2, 2));
    for gone in [&missing, &truncated, &flipped] {
        assert_eq!(storage.index.get_blob(gone).unwrap(), None);
    }
    assert!(!storage.blobs.contains(&flipped) && !storage.blobs.contains(&corrupt_orphan));
    assert_eq!(
        storage.index.get_blob(&orphan).unwrap().map(|r| r.size),
        Some(b"orphan blob".len() as u64)
    );
    assert!(
        storage
            .index
            .get_tag("docker.io", "library/a", "gone")
            .unwrap()
            .is_none()
    );
    assert!(
        storage
            .index
            .get_tag("docker.io", "library/a", "orphaned")
            .unwrap()
            .is_some()
    );
}

#[test]
fn fsck_reports_strays_but_leaves_them_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let stray = storage.layout.blobs_dir().join("notes.txt");
    fs::write(&stray, b"do not delete").unwrap();

    let report = fsck(&storage, true).unwrap();
    assert_eq!(report.stray, vec![stray.clone()]);
    assert!(stray.exists());
    assert!(!report.is_clean());
}

#[test]
fn fsck_corrects_a_record_whose_size_is_wrong_when_the_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let digest = Digest::of(b"twelve bytes");
    storage.blobs.put_bytes(&digest, b"twelve bytes").unwrap();
    storage.index.put_blob(&digest, &blob_record(99)).unwrap();

    let report = fsck(&storage, true).unwrap();
    assert_eq!(digests(&report.size_mismatch), vec![digest.clone()]);
    assert_eq!(storage.index.get_blob(&digest).unwrap().unwrap().size, 12);
    assert!(storage.blobs.contains(&digest));
    assert!(fsck(&storage, false).unwrap().is_clean());
}

fn digests(items: &[(Digest, String)]) -> Vec<Digest> {
    items.iter().map(|(d, _)| d.clone()).collect()
}

#[test]
fn a_large_object_hashed_on_another_thread_has_the_digest_of_its_bytes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    // 12 MiB in uneven chunks, through both write paths, past the point where hashing moves to
    // a thread of its own.
    let bytes: Vec<u8> = (0..12u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut writer = storage.blobs.writer().unwrap();
    let mut at = 0;
    for (i, len) in [1usize << 20, 3 << 20, 7, 65_536, 1 << 22]
        .iter()
        .cycle()
        .enumerate()
    {
        if at == bytes.len() {
            break;
        }
        let end = (at + len).min(bytes.len());
        if i % 3 == 2 {
            writer.write_all(&bytes[at..end]).unwrap();
        } else {
            writer
                .write_bytes(bytes::Bytes::copy_from_slice(&bytes[at..end]))
                .unwrap();
        }
        at = end;
    }
    // The running digest can be read mid-way, and writing goes on after it.
    assert_eq!(writer.digest().unwrap(), Digest::of(&bytes));
    writer
        .write_bytes(bytes::Bytes::from_static(b"tail"))
        .unwrap();
    let mut all = bytes.clone();
    all.extend_from_slice(b"tail");
    let committed = writer
        .commit(&Digest::of(&all), Some(all.len() as u64))
        .unwrap();
    assert_eq!(fs::read(&committed.path).unwrap(), all);

    // One wrong byte anywhere is a mismatch, and nothing is stored.
    let mut writer = storage.blobs.writer().unwrap();
    let mut bad = bytes.clone();
    bad[9 << 20] ^= 1;
    for part in bad.chunks(1 << 20) {
        writer
            .write_bytes(bytes::Bytes::copy_from_slice(part))
            .unwrap();
    }
    assert!(matches!(
        writer.commit(&Digest::of(&bytes), None),
        Err(StorageError::DigestMismatch { .. })
    ));
    assert!(!storage.blobs.contains(&Digest::of(&bytes)));
    assert!(!storage.blobs.contains(&Digest::of(&bad)));
}
