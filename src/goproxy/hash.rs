//! The go command's `h1:` hashes (golang.org/x/mod/sumdb/dirhash `Hash1`) of module zips and
//! go.mod files, and the module-zip rules of golang.org/x/mod/zip `CheckZip`.
//!
//! Pure functions over a reader the caller owns; nothing here touches the store. A zip that
//! fails `check_zip` must not be stored or served: the go command would reject it anyway, and
//! the sumdb hash is only meaningful for zips that obey these rules.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::unzip::{Cursor, Entry, ReadAt, hash_entries};

/// Largest module zip, compressed or uncompressed (`zip.MaxZipFile`).
pub const MAX_ZIP_FILE: u64 = 500 << 20;
/// Largest go.mod (`zip.MaxGoMod`).
pub const MAX_GO_MOD: u64 = 16 << 20;
/// Largest LICENSE at the module root (`zip.MaxLICENSE`).
pub const MAX_LICENSE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModZipError {
    #[error("reading zip: {0}")]
    Read(#[from] zip::result::ZipError),
    #[error("reading zip entry {name:?}: {source}")]
    Entry {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The zip reader keeps one entry per name, so duplicates cannot be hashed as Go does.
    #[error("zip has duplicate file names")]
    DuplicateNames,
    #[error("dirhash: filenames with newlines are not supported")]
    NewlineInName,
    #[error("zip entry {name:?} holds {actual} bytes but declares {declared}")]
    SizeMismatch {
        name: String,
        declared: u64,
        actual: u64,
    },
    #[error("module zip file is too large ({0} bytes; limit is {MAX_ZIP_FILE} bytes)")]
    ZipTooLarge(u64),
    #[error(
        "total uncompressed size of module contents too large (max size is {MAX_ZIP_FILE} bytes)"
    )]
    ContentTooLarge,
    #[error("{name:?}: {reason}")]
    InvalidFile { name: String, reason: String },
    /// Not laid out as Go's zip writer lays out a module zip (`zipdir`).
    #[error("zip layout: {0}")]
    Layout(String),
}

fn invalid(name: &str, reason: impl Into<String>) -> ModZipError {
    ModZipError::InvalidFile {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// `Hash1` over (file name, SHA-256 of contents) pairs: sort names bytewise, hash the lines
/// `hex(sha256) + "  " + name + "\n"`, return `"h1:" + base64(sha256(lines))`.
pub fn h1_from_digests(mut files: Vec<(Vec<u8>, [u8; 32])>) -> Result<String, ModZipError> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = Sha256::new();
    for (name, digest) in &files {
        if name.contains(&b'\n') {
            return Err(ModZipError::NewlineInName);
        }
        summary.update(hex::encode(digest).as_bytes());
        summary.update(b"  ");
        summary.update(name);
        summary.update(b"\n");
    }
    Ok(format!("h1:{}", STANDARD.encode(summary.finalize())))
}

/// The `/go.mod` hash in go.sum: `Hash1` over a single file named `go.mod`.
pub fn h1_of_gomod(bytes: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    // One fixed name without a newline: this cannot fail.
    h1_from_digests(vec![(b"go.mod".to_vec(), digest)]).unwrap_or_default()
}

/// The zip hash in go.sum (`dirhash.HashZip`): `Hash1` over every entry, named exactly as
/// stored (`module@version/...`). Directory entries count as empty files, as in Go.
pub fn h1_of_zip<S: ReadAt + ?Sized>(src: &S) -> Result<String, ModZipError> {
    scan(src, None)
}

/// Checks a module zip against the rules of `zip.CheckZip` (see `check_and_hash_zip`).
pub fn check_zip<S: ReadAt + ?Sized>(
    src: &S,
    module_path: &str,
    version: &str,
) -> Result<(), ModZipError> {
    scan(src, Some((module_path, version))).map(|_| ())
}

/// Checks a module zip and returns its `h1:` hash, reading it once.
///
/// The checks (golang.org/x/mod/zip `checkZip`, plus what `Unzip` enforces):
/// * the zip is at most 500 MiB, and so is the sum of declared uncompressed sizes;
/// * every entry starts with the unescaped `module@version/`;
/// * each path below it is clean and a valid file path (no `..`, no empty elements, no
///   backslash or shell-special characters, no Windows-reserved names);
/// * no two paths are equal under case folding, and none is both file and directory;
/// * `go.mod` appears only at the root, spelled exactly so, at most 16 MiB (LICENSE too);
/// * no symlinks, no encryption, stored or deflated only, and each entry holds exactly its
///   declared number of bytes with its declared CRC-32 (and its data descriptor's, if any);
/// * the archive reads one way only: its directory as Go reads it, entries back to back from
///   the first byte, then the directory, then the end records (`zipdir`).
///
/// The module path and version are taken as given; validating them is the caller's job.
pub fn check_and_hash_zip<S: ReadAt + ?Sized>(
    src: &S,
    module_path: &str,
    version: &str,
) -> Result<String, ModZipError> {
    scan(src, Some((module_path, version)))
}

fn scan<S: ReadAt + ?Sized>(src: &S, check: Option<(&str, &str)>) -> Result<String, ModZipError> {
    let io_err = zip::result::ZipError::from;
    let len = src.size().map_err(io_err)?;
    if len > MAX_ZIP_FILE {
        return Err(ModZipError::ZipTooLarge(len));
    }
    // The directory as Go reads it, in the one layout accepted; the zip crate must agree.
    let layout = super::zipdir::read(src)?;
    let reader = std::io::BufReader::new(Cursor::new(src).map_err(io_err)?);
    let archive = zip::ZipArchive::new(reader)?;
    if archive.has_duplicate_names() {
        return Err(ModZipError::DuplicateNames);
    }
    if archive.len() != layout.entries.len() {
        return Err(ModZipError::Layout(format!(
            "{} entries one way, {} the other",
            layout.entries.len(),
            archive.len()
        )));
    }

    // 1. Names and declared sizes, before decompressing anything.
    let mut collisions = Collisions::default();
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive.by_index_data(i)?;
        let name = entry.name_raw();
        let go = layout.entries.get(i);
        if go.is_none_or(|g| {
            g.name != name
                || g.size != entry.size()
                || g.stored != entry.compressed_size()
                || g.crc != entry.crc32()
                || g.header != entry.header_start()
        }) {
            return Err(ModZipError::Layout(format!(
                "entry {i} ({:?}) reads differently depending on the reader",
                String::from_utf8_lossy(name)
            )));
        }
        if name.contains(&b'\n') {
            return Err(ModZipError::NewlineInName);
        }
        let size = entry.size();
        // As Go's reader since 1.21 (`dirReader`): a directory holds no data. go1.19 hashed
        // it as a file, so the two would not agree on such a zip's hash.
        if name.ends_with(b"/") && size != 0 {
            return Err(invalid(
                &String::from_utf8_lossy(name),
                "directory entry holds data",
            ));
        }
        if let Some((module_path, version)) = check {
            check_entry(
                name,
                module_path,
                version,
                size,
                entry.is_symlink(),
                &mut collisions,
            )?;
        }
        // Also when only hashing: never decompress more than a valid module can hold.
        total = total.saturating_add(size);
        if total > MAX_ZIP_FILE {
            return Err(ModZipError::ContentTooLarge);
        }
    }

    // 2. The contents: each entry decompressed from where the layout says its data is,
    //    counted against its declared size and CRC, and hashed.
    //    The names are the layout's, equal to the zip crate's (checked above).
    let mut entries = Vec::with_capacity(layout.entries.len());
    for (e, data) in layout.entries.into_iter().zip(layout.data) {
        let lossy = String::from_utf8_lossy(&e.name).into_owned();
        let deflated = match e.method {
            0 => false,
            8 => true,
            other => {
                return Err(invalid(
                    &lossy,
                    format!("unsupported compression method {other}"),
                ));
            }
        };
        if e.flags & 1 != 0 {
            return Err(invalid(&lossy, "encrypted entries are not allowed"));
        }
        entries.push(Entry {
            data,
            stored: e.stored,
            deflated,
            size: e.size,
            crc: e.crc,
            name: e.name,
        });
    }
    let hashes = hash_entries(src, &entries)?;
    h1_from_digests(entries.into_iter().map(|e| e.name).zip(hashes).collect())
}

fn check_entry(
    raw: &[u8],
    module_path: &str,
    version: &str,
    size: u64,
    symlink: bool,
    collisions: &mut Collisions,
) -> Result<(), ModZipError> {
    let full = std::str::from_utf8(raw)
        .map_err(|_| invalid(&String::from_utf8_lossy(raw), "invalid UTF-8"))?;
    let prefix = format!("{module_path}@{version}/");
    let name = full
        .strip_prefix(&prefix)
        .ok_or_else(|| invalid(full, format!("path does not have prefix {prefix:?}")))?;
    if name.is_empty() {
        return Ok(());
    }
    let (name, is_dir) = match name.strip_suffix('/') {
        Some(dir) => (dir, true),
        None => (name, false),
    };
    check_file_path(name).map_err(|reason| invalid(full, reason))?;
    collisions
        .check(name, is_dir)
        .map_err(|reason| invalid(full, reason))?;
    if is_dir {
        return Ok(());
    }
    if symlink {
        return Err(invalid(full, "symlinks are not allowed in module zips"));
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.eq_ignore_ascii_case("go.mod") {
        if base != name {
            return Err(invalid(full, "go.mod file not in module root directory"));
        }
        if name != "go.mod" {
            return Err(invalid(full, "go.mod files must have lowercase names"));
        }
    }
    if name == "go.mod" && size > MAX_GO_MOD {
        return Err(invalid(
            full,
            format!("go.mod file too large (max size is {MAX_GO_MOD} bytes)"),
        ));
    }
    if name == "LICENSE" && size > MAX_LICENSE {
        return Err(invalid(
            full,
            format!("LICENSE file too large (max size is {MAX_LICENSE} bytes)"),
        ));
    }
    Ok(())
}

/// Reserved file names on Windows, compared case-insensitively before the first dot.
const BAD_WINDOWS_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// `path.Clean(p) == p` plus `module.CheckFilePath(p)`: slash-separated, every element
/// non-empty, not all dots, no trailing dot, only allowed characters, not Windows-reserved.
fn check_file_path(p: &str) -> Result<(), String> {
    for elem in p.split('/') {
        if elem.is_empty() {
            return Err("empty path element (absolute path or double slash)".into());
        }
        if elem.bytes().all(|b| b == b'.') {
            return Err(format!("invalid path element {elem:?}"));
        }
        if elem.ends_with('.') {
            return Err("trailing dot in path element".into());
        }
        if let Some(c) = elem.chars().find(|c| !file_name_ok(*c)) {
            return Err(format!("invalid char {c:?}"));
        }
        let short = elem.split('.').next().unwrap_or(elem);
        if BAD_WINDOWS_NAMES
            .iter()
            .any(|bad| bad.eq_ignore_ascii_case(short))
        {
            return Err(format!(
                "{short:?} disallowed as path element component on Windows"
            ));
        }
    }
    Ok(())
}

/// `module.fileNameOK`: ASCII letters, digits, space and `!#$%&()+,-.=@[]^_{}~`, or any
/// Unicode letter (approximated by `char::is_alphabetic`).
fn file_name_ok(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&()+,-.=@[]^_{}~ ".contains(c)
    } else {
        // Go's `unicode.IsLetter`: general category L (not every alphabetic character: Ⅰ, Ⓐ
        // and combining marks are alphabetic but not letters).
        use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory as _};
        c.general_category_group() == GeneralCategoryGroup::Letter
    }
}

/// `zip.strToFold`: maps each character to a canonical member of its case-folding class: the
/// smallest character reached by single-character case mappings from it (Go: the minimum of its
/// `unicode.SimpleFold` orbit, which those mappings reach: Å U+212B and U+00C5, ϑ and ϴ), with
/// A-Z as a-z.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut class = vec![c];
            let mut i = 0;
            // Case classes have at most four members; the bound only stops a runaway.
            while let Some(&x) = class.get(i)
                && class.len() < 8
            {
                for y in [single(x.to_lowercase()), single(x.to_uppercase())]
                    .into_iter()
                    .flatten()
                {
                    if !class.contains(&y) {
                        class.push(y);
                    }
                }
                i += 1;
            }
            class.into_iter().min().unwrap_or(c).to_ascii_lowercase()
        })
        .collect()
}

/// The only character of a case mapping, if it maps to exactly one.
fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    let first = it.next()?;
    it.next().is_none().then_some(first)
}

/// Paths seen so far, keyed by their case fold (`zip.collisionChecker`).
#[derive(Default)]
struct Collisions(HashMap<String, (String, bool)>);

impl Collisions {
    fn check(&mut self, p: &str, is_dir: bool) -> Result<(), String> {
        let mut p = p;
        let mut is_dir = is_dir;
        loop {
            match self.0.get(&fold(p)) {
                Some((other, other_dir)) => {
                    if other != p {
                        return Err(format!(
                            "case-insensitive file name collision: {other:?} and {p:?}"
                        ));
                    }
                    if *other_dir != is_dir {
                        return Err(format!("entry {p:?} is both a file and a directory"));
                    }
                    if !is_dir {
                        return Err(format!("multiple entries for file {p:?}"));
                    }
                }
                None => {
                    self.0.insert(fold(p), (p.to_string(), is_dir));
                }
            }
            match p.rsplit_once('/') {
                Some((parent, _)) => {
                    p = parent;
                    is_dir = true;
                }
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    const HELLO_ZIP: &[u8] = include_bytes!("../../tests/fixtures/sumdb/hello.zip");
    const DIRS_ZIP: &[u8] = include_bytes!("../../tests/fixtures/sumdb/dirs.zip");

    #[test]
    fn zip_hashes_match_the_go_implementation() {
        // From tests/fixtures/sumdb/gen.go (dirhash.HashZip).
        assert_eq!(
            h1_of_zip(HELLO_ZIP).unwrap(),
            "h1:O7hDq4Q2YAAmFx+TIuqbo/FqqyHkYm3E82ZVuDRZ1vU="
        );
        // Unsorted entries, stored and deflated, and a directory entry, which Go hashes too.
        assert_eq!(
            h1_of_zip(DIRS_ZIP).unwrap(),
            "h1:LOgK4d5IGQ37nRhMbkjBPvrKvxhiLF/V9JwrxMfwk8Q="
        );
    }

    #[test]
    fn gomod_hashes_match_the_go_implementation() {
        assert_eq!(
            h1_of_gomod(b"module example.com/hello\n\ngo 1.19\n"),
            "h1:RslnPMa/nR3RpskRbvoDBlr6/b2RhFS0EEnq72RQTo0="
        );
        assert_eq!(
            h1_of_gomod(b"module example.com/Dirs\n"),
            "h1:2KSOOb+eKRraWLWL93CexqeUadvmoVgP3k8JPSHlJU4="
        );
    }

    #[test]
    fn fixture_zips_pass_the_checks_with_the_same_hash() {
        assert_eq!(
            check_and_hash_zip(HELLO_ZIP, "example.com/hello", "v1.0.0").unwrap(),
            "h1:O7hDq4Q2YAAmFx+TIuqbo/FqqyHkYm3E82ZVuDRZ1vU="
        );
        check_zip(DIRS_ZIP, "example.com/Dirs", "v0.1.0-RC1").unwrap();
        // The prefix is the unescaped module path.
        assert!(check_zip(DIRS_ZIP, "example.com/!dirs", "v0.1.0-!r!c1").is_err());
        assert!(check_zip(HELLO_ZIP, "example.com/hello", "v1.0.1").is_err());
    }

    fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body) in entries {
            if let Some(dir) = name.strip_suffix('/') {
                w.add_directory(dir, SimpleFileOptions::default()).unwrap();
            } else {
                w.start_file(*name, SimpleFileOptions::default()).unwrap();
                w.write_all(body).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn check(entries: &[(&str, &[u8])]) -> Result<(), ModZipError> {
        check_zip(make_zip(entries).as_slice(), "example.com/m", "v1.0.0")
    }

    #[test]
    fn well_formed_zip_passes() {
        check(&[
            ("example.com/m@v1.0.0/go.mod", b"module example.com/m\n"),
            ("example.com/m@v1.0.0/a/", b""),
            ("example.com/m@v1.0.0/a/b c+(1).go", b"package a\n"),
            ("example.com/m@v1.0.0/LICENSE", b"MIT\n"),
            ("example.com/m@v1.0.0/ünïcode.txt", b"x"),
            ("example.com/m@v1.0.0/-dash", b"x"),
        ])
        .unwrap();
    }

    #[test]
    fn directory_entries_with_data_are_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("example.com/m@v1.0.0/a/", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"hidden").unwrap();
        let zip = w.finish().unwrap().into_inner();
        for result in [
            check_zip(zip.as_slice(), "example.com/m", "v1.0.0").map(|_| String::new()),
            h1_of_zip(zip.as_slice()),
        ] {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("directory entry holds data"), "{err}");
        }
    }

    #[test]
    fn zip_breaking_a_module_rule_is_rejected() {
        let cases: &[&[(&str, &[u8])]] = &[
            &[("example.com/other@v1.0.0/x.go", b"")],
            &[("example.com/m@v1.0.1/x.go", b"")],
            &[("x.go", b"")],
            &[("example.com/m@v1.0.0/../x.go", b"")],
            &[("example.com/m@v1.0.0/a/../x.go", b"")],
            &[("example.com/m@v1.0.0/./x.go", b"")],
            &[("example.com/m@v1.0.0//x.go", b"")],
            &[("example.com/m@v1.0.0/a\\b.go", b"")],
            &[("example.com/m@v1.0.0/a:b.go", b"")],
            &[("example.com/m@v1.0.0/a*.go", b"")],
            &[("example.com/m@v1.0.0/x.", b"")],
            &[("example.com/m@v1.0.0/CON", b"")],
            &[("example.com/m@v1.0.0/sub/aux.txt", b"")],
            &[
                ("example.com/m@v1.0.0/README", b""),
                ("example.com/m@v1.0.0/readme", b""),
            ],
            &[
                ("example.com/m@v1.0.0/a/x", b""),
                ("example.com/m@v1.0.0/A/y", b""),
            ],
            &[
                ("example.com/m@v1.0.0/a", b""),
                ("example.com/m@v1.0.0/a/b", b""),
            ],
            &[("example.com/m@v1.0.0/sub/go.mod", b"")],
            &[("example.com/m@v1.0.0/GO.MOD", b"")],
        ];
        for entries in cases {
            assert!(
                matches!(check(entries), Err(ModZipError::InvalidFile { .. })),
                "{entries:?} should be rejected, got {:?}",
                check(entries)
            );
        }
    }

    #[test]
    fn duplicate_entries_are_rejected() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        // zip refuses duplicate names, so rename the second entry in the bytes afterwards.
        for name in ["example.com/m@v1.0.0/a.go", "example.com/m@v1.0.0/b.go"] {
            w.start_file(name, SimpleFileOptions::default()).unwrap();
            w.write_all(b"package m\n").unwrap();
        }
        let mut bytes = w.finish().unwrap().into_inner();
        let from = b"example.com/m@v1.0.0/b.go";
        let to = b"example.com/m@v1.0.0/a.go";
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
            }
            i += 1;
        }
        let err = check_zip(bytes.as_slice(), "example.com/m", "v1.0.0");
        assert!(matches!(err, Err(ModZipError::DuplicateNames)), "{err:?}");
        assert!(matches!(
            h1_of_zip(bytes.as_slice()),
            Err(ModZipError::DuplicateNames)
        ));
    }

    #[test]
    fn symlinks_are_rejected() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_symlink(
            "example.com/m@v1.0.0/link",
            "/etc/passwd",
            SimpleFileOptions::default(),
        )
        .unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let err = check_zip(bytes.as_slice(), "example.com/m", "v1.0.0");
        assert!(
            matches!(err, Err(ModZipError::InvalidFile { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn entry_whose_data_disagrees_with_its_declared_size_is_rejected() {
        // A stored entry: patch both size fields (local header and central directory) down by one.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("example.com/m@v1.0.0/x.txt", opts).unwrap();
        w.write_all(b"0123456789").unwrap();
        let mut bytes = w.finish().unwrap().into_inner();
        let ten = 10u32.to_le_bytes();
        let nine = 9u32.to_le_bytes();
        let mut patched = 0;
        for i in 0..bytes.len() - 8 {
            if bytes[i..i + 4] == ten && bytes[i + 4..i + 8] == ten {
                bytes[i + 4..i + 8].copy_from_slice(&nine);
                patched += 1;
            }
        }
        assert_eq!(patched, 2);
        assert!(check_zip(bytes.as_slice(), "example.com/m", "v1.0.0").is_err());
        assert!(h1_of_zip(bytes.as_slice()).is_err());
    }

    /// `n` stored or deflated entries of distinct, partly incompressible contents.
    fn contents(n: usize, each: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let body: Vec<u8> = (0..each.div_ceil(32))
                    .flat_map(|j| Sha256::digest(format!("{i}/{j}")))
                    .take(each)
                    .collect();
                (format!("example.com/m@v1.0.0/f{i:02}.go"), body)
            })
            .collect()
    }

    fn zip_of(files: &[(String, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(method);
        for (name, body) in files {
            w.start_file(name.as_str(), opts).unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Bytes `from` replaced by `to` wherever they occur; how many times.
    fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
        let mut n = 0;
        for i in 0..=bytes.len() - from.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn entries_hashed_on_several_threads_give_the_one_thread_hash() {
        // 24 x 40 KiB: past the size where the entries are spread over threads.
        let files = contents(24, 40 * 1024);
        let want = h1_from_digests(
            files
                .iter()
                .map(|(n, b)| (n.clone().into_bytes(), Sha256::digest(b).into()))
                .collect(),
        )
        .unwrap();
        for method in [
            zip::CompressionMethod::Deflated,
            zip::CompressionMethod::Stored,
        ] {
            let bytes = zip_of(&files, method);
            assert_eq!(
                check_and_hash_zip(bytes.as_slice(), "example.com/m", "v1.0.0").unwrap(),
                want
            );
            // From a file too, as a fill checks it.
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&bytes).unwrap();
            assert_eq!(
                check_and_hash_zip(&f, "example.com/m", "v1.0.0").unwrap(),
                want
            );
        }
        // One small entry: one thread, the same rule.
        let one = contents(1, 100);
        assert_eq!(
            h1_of_zip(zip_of(&one, zip::CompressionMethod::Deflated).as_slice()).unwrap(),
            h1_from_digests(vec![(
                one[0].0.clone().into_bytes(),
                Sha256::digest(&one[0].1).into()
            )])
            .unwrap()
        );
    }

    #[test]
    fn contents_that_fail_their_crc_are_rejected_on_any_thread() {
        for n in [1, 24] {
            let files = contents(n, 40 * 1024);
            let mut bytes = zip_of(&files, zip::CompressionMethod::Stored);
            // Change the last entry's contents, not its headers.
            let last = &files[n - 1].1;
            let at = bytes.windows(64).position(|w| w == &last[..64]).unwrap();
            bytes[at + 1000] ^= 0x55;
            let err = check_zip(bytes.as_slice(), "example.com/m", "v1.0.0").unwrap_err();
            assert!(
                err.to_string().contains(&files[n - 1].0) && err.to_string().contains("CRC"),
                "{err}"
            );
        }
    }

    #[test]
    fn corrupt_or_cut_deflate_data_is_rejected() {
        let files = contents(1, 40 * 1024);
        let good = zip_of(&files, zip::CompressionMethod::Deflated);
        let name = files[0].0.as_bytes();
        let data = good.windows(name.len()).position(|w| w == name).unwrap() + name.len();
        // Garbage in the middle of the stream.
        let mut bad = good.clone();
        for b in &mut bad[data + 100..data + 400] {
            *b = 0xff;
        }
        assert!(h1_of_zip(bad.as_slice()).is_err());
        // The stored length cut in both headers: the stream ends outside its entry.
        let stored = {
            let mut a = zip::ZipArchive::new(Cursor::new(&good)).unwrap();
            a.by_index_raw(0).unwrap().compressed_size() as u32
        };
        let mut cut = good.clone();
        assert_eq!(
            patch(&mut cut, &stored.to_le_bytes(), &(stored / 2).to_le_bytes()),
            2
        );
        // The entry now ends before the next begins: refused by the layout before inflating.
        let err = h1_of_zip(cut.as_slice()).unwrap_err();
        assert!(err.to_string().contains("bytes between its data"), "{err}");
    }

    #[test]
    fn only_stored_and_deflated_entries_are_read() {
        let files = contents(1, 1000);
        let mut bytes = zip_of(&files, zip::CompressionMethod::Stored);
        // Method 12 (bzip2) in the local header and the central directory.
        let mut n = 0;
        for sig in [&b"PK\x03\x04"[..], &b"PK\x01\x02"[..]] {
            let at = bytes.windows(4).position(|w| w == sig).unwrap();
            let field = at + if sig[2] == 3 { 8 } else { 10 };
            assert_eq!(bytes[field..field + 2], [0, 0]);
            bytes[field] = 12;
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(check_zip(bytes.as_slice(), "example.com/m", "v1.0.0").is_err());
    }

    /// Archives built to be read one way by the `zip` crate and another by Go (count wraps,
    /// earlier end records, two zip64 fields, a Unicode path field, shared or prefixed data,
    /// data descriptors that are missing or wrong): all refused before anything is inflated.
    /// Each was checked against go1.19's archive/zip and golang.org/x/mod/zip when found.
    #[test]
    fn archives_that_read_two_ways_are_refused() {
        macro_rules! fixture {
            ($name:literal) => {
                (
                    $name,
                    &include_bytes!(concat!("../../tests/fixtures/zips/", $name))[..],
                )
            };
        }
        for (name, bytes, why) in [
            (
                fixture!("eocd_count_lie2.zip"),
                "the end record names 1 entries",
            ),
            (
                fixture!("eocd_fallback_z64count.zip"),
                "the end record names 65538",
            ),
            (
                fixture!("z64_double_forged.zip"),
                "zip64 fields missing or repeated",
            ),
            (fixture!("upath_evil.zip"), "Unicode path"),
            (fixture!("shared_lh.zip"), "overlaps the next entry"),
            (
                fixture!("dd_wrong_crc.zip"),
                "data descriptor's CRC-32 differs",
            ),
            (fixture!("dd_missing.zip"), "malformed data descriptor"),
            (
                fixture!("eocd_appended_bogus.zip"),
                "does not end where the end record",
            ),
            (
                fixture!("base_offset.zip"),
                "does not end where the end record",
            ),
            (
                fixture!("prefix_relative.zip"),
                "does not end where the end record",
            ),
            (
                fixture!("eocd_two_rel.zip"),
                "does not end where the end record",
            ),
            (
                fixture!("z64_dirsize_ffff.zip"),
                "a zip64 locator that not every reader",
            ),
            (
                fixture!("z64_locator_disks0.zip"),
                "a zip64 locator that not every reader",
            ),
            (fixture!("z64_recsize_overflow.zip"), "zip64"),
        ]
        .map(|((name, bytes), why)| (name, bytes, why))
        {
            let err = h1_of_zip(bytes).expect_err(name);
            assert!(
                matches!(err, ModZipError::Layout(_)) && err.to_string().contains(why),
                "{name}: {err}"
            );
        }
        // What Go's writer makes (descriptors with and without their signature, zip64 records
        // and fields) still passes, with Go's hashes.
        for ((name, bytes), want) in [
            (
                fixture!("dd_ok.zip"),
                "h1:ph3iphZ9862CDbYMD3W+0eWGNc0hmv3dPGy8gvUVqy8=",
            ),
            (
                fixture!("dd_nosig_ok.zip"),
                "h1:ph3iphZ9862CDbYMD3W+0eWGNc0hmv3dPGy8gvUVqy8=",
            ),
            (
                fixture!("zip64_count_ok.zip"),
                "h1:ph3iphZ9862CDbYMD3W+0eWGNc0hmv3dPGy8gvUVqy8=",
            ),
            (
                fixture!("z64_double_legit.zip"),
                "h1:NazcYISiQidV8uS2p69j5y8H+IfMsmGmT4L9UKuKclc=",
            ),
            (
                fixture!("count_wrap_legit.zip"),
                "h1:NazcYISiQidV8uS2p69j5y8H+IfMsmGmT4L9UKuKclc=",
            ),
            // Made by golang.org/x/mod/zip itself; the second has a directory of exactly
            // 65,535 bytes, which Go's end-record reading treats like a zip64 hint.
            (
                fixture!("real_tiny.zip"),
                "h1:CJDoQhaUYSGLr9VtoaVU5oYnGzKtMQneRjmoXbazDcE=",
            ),
            (
                fixture!("real_cd65535.zip"),
                "h1:3oKsxKUHledLbwztrhunqCfDx5yLPnEPS+8jwIb+aLQ=",
            ),
        ] {
            assert_eq!(h1_of_zip(bytes).expect(name), want, "{name}");
        }
    }

    #[test]
    fn names_with_newlines_cannot_be_hashed() {
        let bytes = make_zip(&[("example.com/m@v1.0.0/a\nb", b"")]);
        assert!(matches!(
            h1_of_zip(bytes.as_slice()),
            Err(ModZipError::NewlineInName)
        ));
    }

    #[test]
    fn garbage_is_not_a_zip() {
        assert!(matches!(
            h1_of_zip(&b"not a zip"[..]),
            Err(ModZipError::Layout(_))
        ));
    }

    #[test]
    fn case_folding_matches_go_for_common_letters() {
        assert_eq!(fold("ABC-xyz"), "abc-xyz");
        assert_eq!(fold("\u{212A}"), fold("k")); // Kelvin sign folds with k
        assert_eq!(fold("ÄÖÜ"), fold("äöü"));
        assert_eq!(fold("\u{17F}"), fold("S")); // long s folds with s
        // Classes of three or four, where one mapping step does not reach the minimum.
        assert_eq!(fold("\u{212B}"), fold("\u{C5}")); // Angstrom sign and Å
        assert_eq!(fold("\u{2126}"), fold("\u{3A9}")); // Ohm sign and Ω
        assert_eq!(fold("\u{3F4}"), fold("\u{3D1}")); // ϴ and ϑ
        assert_ne!(fold("a"), fold("b"));
    }

    #[test]
    fn only_letters_outside_ascii_are_allowed_in_names() {
        for ok in ['é', 'ß', 'ж', '中'] {
            assert!(file_name_ok(ok), "{ok}");
        }
        // Alphabetic but not letters, which the go command refuses.
        for bad in ['\u{2160}', '\u{24B6}', '\u{345}', '٣'] {
            assert!(!file_name_ok(bad), "{bad:?}");
        }
    }
}
