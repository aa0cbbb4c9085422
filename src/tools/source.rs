//! What `wharf import` reads: a wharf bundle, an OCI image layout, a go command module cache
//! (`$GOPATH/pkg/mod/cache/download`), or a `docker save` tarball; each a directory or a tar,
//! plain or compressed (zstd, gzip: `Codec`, told by its first bytes). Nothing is extracted: a
//! plain tar is scanned once for where each member's bytes are, and uploads read those ranges; a
//! compressed one is decompressed once to list it (keeping its small JSON documents in memory)
//! and once more, front to back, to read what is uploaded (`read_in_order`). Parsing turns any
//! of them into a `BundleManifest` plus the list of uploads; the server then verifies and
//! indexes (`apply`).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use wharf_storage::{Digest, unix_now};

use crate::bundle::{
    BlobEntry, BundleManifest, CONTAINERD_NAME, FORMAT, FORMAT_VERSION, FileEntry, ImageEntry,
    ImageRef, MANIFEST_FILE, ModuleEntry, REF_NAME, SumdbEntry, children_of,
};
use crate::config::Config;
use crate::goproxy::path::{ModulePath, is_canonical, unescape};
use crate::registry::manifest::{self, OCI_MANIFEST};
use crate::registry::routes::Tag;

/// Largest manifest or JSON file read into memory.
const MAX_DOC: u64 = 16 << 20;
/// Most bytes of documents a compressed input keeps in memory.
const MAX_DOCS_TOTAL: u64 = 512 << 20;

/// How a bundle file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

impl Codec {
    /// `none`, `gzip` (`gz`), `zstd` (`zst`): the `--compress` flag.
    pub fn parse(s: &str) -> Result<Codec, String> {
        match s {
            "none" => Ok(Codec::None),
            "gzip" | "gz" => Ok(Codec::Gzip),
            "zstd" | "zst" => Ok(Codec::Zstd),
            _ => Err(format!("--compress {s:?}: use zstd, gzip or none")),
        }
    }

    /// From a file name: `.tar.zst`/`.tzst`, `.tar.gz`/`.tgz`, anything else plain.
    pub fn of_name(path: &Path) -> Codec {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".zst") || name.ends_with(".tzst") {
            Codec::Zstd
        } else if name.ends_with(".gz") || name.ends_with(".tgz") {
            Codec::Gzip
        } else {
            Codec::None
        }
    }

    /// From the first bytes of a file (its magic number), whatever its name.
    pub fn sniff(path: &Path) -> Result<Codec, String> {
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut magic = [0u8; 4];
        let mut n = 0;
        while n < magic.len() {
            match f.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(match &magic[..n] {
            [0x28, 0xb5, 0x2f, 0xfd] => Codec::Zstd,
            [0x1f, 0x8b, ..] => Codec::Gzip,
            _ => Codec::None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "uncompressed",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// A reader of the decompressed stream.
    pub fn decoder(self, file: std::fs::File) -> Result<Box<dyn Read + Send>, String> {
        let buffered = io::BufReader::with_capacity(256 << 10, file);
        Ok(match self {
            Codec::None => Box::new(buffered),
            Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Codec::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| format!("cannot start zstd: {e}"))?,
            ),
        })
    }

    /// A writer that compresses into `file`; `Encoder::finish` completes the stream.
    pub fn encoder(self, file: std::fs::File) -> Result<Encoder, String> {
        let w = io::BufWriter::with_capacity(1 << 20, file);
        Ok(match self {
            Codec::None => Encoder::Plain(w),
            Codec::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, 3)
                    .map_err(|e| format!("cannot start zstd: {e}"))?;
                // A checksum, so damage is found while listing, before anything is uploaded.
                e.include_checksum(true)
                    .map_err(|e| format!("cannot start zstd: {e}"))?;
                Encoder::Zstd(e)
            }
        })
    }
}

/// A bundle file being written, compressed or not.
pub enum Encoder {
    Plain(io::BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<io::BufWriter<std::fs::File>>),
    Zstd(zstd::stream::write::Encoder<'static, io::BufWriter<std::fs::File>>),
}

impl Encoder {
    /// Ends the compressed stream and flushes; returns the file.
    pub fn finish(self) -> io::Result<std::fs::File> {
        let w = match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Zstd(e) => e.finish()?,
        };
        w.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// Where one file's bytes are: a whole file, or a range of a tar (of the decompressed stream,
/// for a compressed one).
#[derive(Debug, Clone)]
pub struct Loc {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub codec: Codec,
}

/// The files of an input, by `/`-separated relative path.
pub struct Tree {
    files: BTreeMap<String, Loc>,
    /// For a compressed input: the documents kept in memory while it was listed.
    docs: HashMap<String, Vec<u8>>,
    pub codec: Codec,
}

impl Tree {
    /// A directory (walked, symlinks ignored) or a tar, plain (scanned, nothing extracted) or
    /// compressed (decompressed once, nothing written).
    pub fn open(path: &Path) -> Result<Tree, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut files = BTreeMap::new();
        let mut docs = HashMap::new();
        let mut codec = Codec::None;
        if meta.is_dir() {
            walk_dir(path, path, &mut files)?;
        } else {
            codec = Codec::sniff(path)?;
            match codec {
                Codec::None => scan_tar(path, &mut files)?,
                c => scan_compressed(path, c, &mut files, &mut docs)?,
            }
        }
        Ok(Tree { files, docs, codec })
    }

    pub fn get(&self, rel: &str) -> Option<&Loc> {
        self.files.get(rel)
    }

    pub fn contains(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }

    /// Reads a small file whole.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, String> {
        let loc = self.get(rel).ok_or_else(|| format!("{rel} is missing"))?;
        if let Some(d) = self.docs.get(rel) {
            return Ok(d.clone());
        }
        if loc.codec != Codec::None {
            return Err(format!(
                "{rel}: not a document this command reads from a compressed input; decompress it first"
            ));
        }
        read_loc(loc, MAX_DOC).map_err(|e| format!("{rel}: {e}"))
    }

    fn paths(&self) -> impl Iterator<Item = (&String, &Loc)> {
        self.files.iter()
    }
}

pub fn read_loc(loc: &Loc, max: u64) -> Result<Vec<u8>, String> {
    if loc.len > max {
        return Err(format!("{} bytes, more than the {max}-byte limit", loc.len));
    }
    let f = std::fs::File::open(&loc.file).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; loc.len as usize];
    f.read_exact_at(&mut buf, loc.offset)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

fn walk_dir(root: &Path, dir: &Path, out: &mut BTreeMap<String, Loc>) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in rd {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            walk_dir(root, &path, out)?;
        } else if meta.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            out.insert(
                rel.replace(std::path::MAIN_SEPARATOR, "/"),
                Loc {
                    file: path.clone(),
                    offset: 0,
                    len: meta.len(),
                    codec: Codec::None,
                },
            );
        }
    }
    Ok(())
}

fn scan_tar(path: &Path, out: &mut BTreeMap<String, Loc>) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| format!("{}: not a tar: {e}", path.display()))?;
    for (n, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| {
            format!(
                "{}: member {} is damaged: {e} (a tar, plain or compressed with zstd or gzip, is expected)",
                path.display(),
                n + 1
            )
        })?;
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("{}: member {}: {e}", path.display(), n + 1))?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./").to_string();
        if name.starts_with('/') || name.split('/').any(|c| c == "..") {
            continue;
        }
        out.insert(
            name,
            Loc {
                file: path.to_path_buf(),
                offset: entry.raw_file_position(),
                len: entry.size(),
                codec: Codec::None,
            },
        );
    }
    Ok(())
}

/// A member's name, if it is one an import reads (relative, no `..`).
fn member_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Option<String>, String> {
    if !matches!(
        entry.header().entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    ) {
        return Ok(None);
    }
    let name = entry.path().map_err(|e| e.to_string())?;
    let name = name.to_string_lossy();
    let name = name.trim_start_matches("./");
    if name.starts_with('/') || name.split('/').any(|c| c == "..") {
        return Ok(None);
    }
    Ok(Some(name.to_string()))
}

/// Whether a compressed input's member may be a document `parse` reads: named like one, or a
/// blob that starts like JSON (a manifest or config; layers are not kept).
fn maybe_document(name: &str) -> Option<bool> {
    let file = name.rsplit('/').next().unwrap_or(name);
    if file.ends_with(".json") || file == "oci-layout" || file.ends_with(".ziphash") {
        Some(true)
    } else if name.contains("blobs/sha256/") {
        None
    } else {
        Some(false)
    }
}

/// Lists a compressed tar in one pass, keeping its small documents; reads the stream to its
/// end, so a damaged or truncated one fails here, before anything is uploaded.
fn scan_compressed(
    path: &Path,
    codec: Codec,
    out: &mut BTreeMap<String, Loc>,
    docs: &mut HashMap<String, Vec<u8>>,
) -> Result<(), String> {
    let damaged = |e: &dyn std::fmt::Display| {
        format!(
            "{}: the {} stream is damaged or truncated: {e}",
            path.display(),
            codec.name()
        )
    };
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut decoder = codec.decoder(file)?;
    let mut kept = 0u64;
    {
        let mut archive = tar::Archive::new(&mut decoder);
        let entries = archive.entries().map_err(|e| damaged(&e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| damaged(&e))?;
            let Some(name) = member_name(&entry).map_err(|e| damaged(&e))? else {
                continue;
            };
            let len = entry.size();
            let body = match maybe_document(&name) {
                _ if len > MAX_DOC => None,
                Some(false) => None,
                Some(true) => {
                    let mut body = Vec::with_capacity(len as usize);
                    entry.read_to_end(&mut body).map_err(|e| damaged(&e))?;
                    Some(body)
                }
                None => {
                    let mut first = [0u8; 1];
                    let n = entry.read(&mut first).map_err(|e| damaged(&e))?;
                    if n == 1 && first[0] == b'{' {
                        let mut body = first.to_vec();
                        entry.read_to_end(&mut body).map_err(|e| damaged(&e))?;
                        Some(body)
                    } else {
                        None
                    }
                }
            };
            if let Some(body) = body {
                kept += body.len() as u64;
                docs.insert(name.clone(), body);
            }
            if kept > MAX_DOCS_TOTAL {
                return Err(format!(
                    "{}: more than {} of JSON documents; decompress it first",
                    path.display(),
                    MAX_DOCS_TOTAL
                ));
            }
            out.insert(
                name,
                Loc {
                    file: path.to_path_buf(),
                    offset: entry.raw_file_position(),
                    len,
                    codec,
                },
            );
        }
    }
    // The rest of the stream (the tar's padding, gzip's checksum) must be whole too.
    io::copy(&mut decoder, &mut io::sink()).map_err(|e| damaged(&e))?;
    Ok(())
}

/// Reads each upload's bytes, one at a time, in the order the input holds them: `f(i, reader)`
/// for `uploads[i]`. A compressed input is decompressed front to back (once, unless uploads
/// name the same range twice); a plain one is read by range. Blocking.
pub fn read_in_order(
    uploads: &[Upload],
    mut f: impl FnMut(usize, &mut dyn Read) -> Result<(), String>,
) -> Result<(), String> {
    let mut order: Vec<usize> = (0..uploads.len()).collect();
    order.sort_by(|&a, &b| match (&uploads[a].data, &uploads[b].data) {
        (Data::Loc(x), Data::Loc(y)) => (&x.file, x.offset).cmp(&(&y.file, y.offset)),
        (Data::Memory(_), Data::Loc(_)) => std::cmp::Ordering::Less,
        (Data::Loc(_), Data::Memory(_)) => std::cmp::Ordering::Greater,
        (Data::Memory(_), Data::Memory(_)) => std::cmp::Ordering::Equal,
    });
    // The open decompressed stream: its file and how far it has been read.
    let mut stream: Option<(PathBuf, u64, Box<dyn Read + Send>)> = None;
    for i in order {
        let loc = match &uploads[i].data {
            Data::Memory(m) => {
                f(i, &mut io::Cursor::new(m))?;
                continue;
            }
            Data::Loc(loc) => loc,
        };
        let label = &uploads[i].label;
        if loc.codec == Codec::None {
            let mut file = std::fs::File::open(&loc.file)
                .map_err(|e| format!("{label}: {}: {e}", loc.file.display()))?;
            file.seek(io::SeekFrom::Start(loc.offset))
                .map_err(|e| format!("{label}: {}: {e}", loc.file.display()))?;
            f(i, &mut io::BufReader::new(file).take(loc.len))?;
            continue;
        }
        let reuse = matches!(&stream, Some((p, at, _)) if *p == loc.file && *at <= loc.offset);
        if !reuse {
            let file = std::fs::File::open(&loc.file)
                .map_err(|e| format!("{}: {e}", loc.file.display()))?;
            stream = Some((loc.file.clone(), 0, loc.codec.decoder(file)?));
        }
        let Some((_, at, reader)) = stream.as_mut() else {
            continue;
        };
        let skip = loc.offset - *at;
        let skipped = io::copy(&mut reader.take(skip), &mut io::sink())
            .map_err(|e| format!("{}: {e}", loc.file.display()))?;
        if skipped != skip {
            return Err(format!("{}: ends early", loc.file.display()));
        }
        let mut member = reader.take(loc.len);
        let result = f(i, &mut member);
        // Whatever `f` left unread of the member is skipped, so the position stays known.
        let rest = io::copy(&mut member, &mut io::sink());
        *at = loc.offset + loc.len;
        result?;
        rest.map_err(|e| format!("{}: {e}", loc.file.display()))?;
    }
    Ok(())
}

/// Bytes to upload.
#[derive(Debug, Clone)]
pub enum Data {
    Loc(Loc),
    Memory(Vec<u8>),
}

impl Data {
    pub fn len(&self) -> u64 {
        match self {
            Data::Loc(l) => l.len,
            Data::Memory(m) => m.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an uploaded file's digest goes once the server has computed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The digest is known in advance.
    Known,
    GoFile {
        module: usize,
        kind: &'static str,
    },
    Sumdb(usize),
    /// A layer of a `docker save` image (legacy format): image, layer.
    Layer(usize, usize),
}

/// One upload: what it is (for messages), its bytes, and its digest if known.
#[derive(Debug, Clone)]
pub struct Upload {
    pub label: String,
    pub data: Data,
    pub digest: Option<Digest>,
    pub slot: Slot,
}

/// A `docker save` image in the legacy format, whose manifest is built after its layers are
/// stored (their digests are only known then).
#[derive(Debug, Clone)]
pub struct LegacyImage {
    pub tags: Vec<String>,
    pub config: (Digest, u64),
    pub layers: Vec<Option<(Digest, u64)>>,
}

/// An input, parsed.
pub struct Parsed {
    pub kind: &'static str,
    pub contents: BundleManifest,
    pub uploads: Vec<Upload>,
    pub legacy: Vec<LegacyImage>,
}

/// Options of the import that shape how names are read.
pub struct Naming<'a> {
    pub config: &'a Config,
    /// For OCI layouts whose `ref.name` is only a tag: the image name to put it under.
    pub name: Option<&'a str>,
}

/// Recognises and parses an input.
pub fn parse(tree: &Tree, naming: &Naming) -> Result<Parsed, String> {
    if tree.contains(MANIFEST_FILE) {
        return bundle(tree);
    }
    if tree.contains("index.json") && tree.contains("oci-layout") {
        return oci(tree, "", naming, "OCI image layout");
    }
    if tree.contains("manifest.json") {
        return docker_legacy(tree, naming);
    }
    let go = go_cache(tree, go_prefix(tree), "go module cache")?;
    if go.contents.modules.is_empty() {
        return Err(
            "not a wharf bundle, an OCI image layout, a docker save tarball or a go module cache"
                .into(),
        );
    }
    Ok(go)
}

/// `cache/download/` (a `$GOPATH/pkg/mod`), or nothing (a `cache/download` itself).
fn go_prefix(tree: &Tree) -> &'static str {
    if tree.paths().any(|(p, _)| p.starts_with("cache/download/")) {
        "cache/download/"
    } else {
        ""
    }
}

fn bundle(tree: &Tree) -> Result<Parsed, String> {
    let text = tree.read(MANIFEST_FILE)?;
    let mut m: BundleManifest =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST_FILE} is damaged: {e}"))?;
    if m.format != FORMAT || m.version > FORMAT_VERSION {
        return Err(format!(
            "{MANIFEST_FILE}: format {:?} version {} is not one this wharf reads ({FORMAT} {FORMAT_VERSION})",
            m.format, m.version
        ));
    }
    m.warnings.clear();
    let labels = labels(tree, "oci/", &m.images);
    let mut uploads = Vec::new();
    for b in &m.blobs {
        let rel = format!("oci/blobs/sha256/{}", b.digest.hex());
        let loc = tree.get(&rel).ok_or_else(|| {
            format!(
                "{rel} ({}) is listed in {MANIFEST_FILE} but missing",
                b.digest
            )
        })?;
        if loc.len != b.size {
            return Err(format!(
                "{rel} is {} bytes, {MANIFEST_FILE} says {}",
                loc.len, b.size
            ));
        }
        let label = labels
            .get(&b.digest)
            .cloned()
            .unwrap_or_else(|| format!("blob {}", b.digest));
        uploads.push(Upload {
            label,
            data: Data::Loc(loc.clone()),
            digest: Some(b.digest.clone()),
            slot: Slot::Known,
        });
    }
    for (i, md) in m.modules.iter().enumerate() {
        let base = format!(
            "go/{}/@v/{}",
            crate::goproxy::path::escape(&md.path),
            crate::goproxy::path::escape(&md.version)
        );
        for (kind, f) in md.files() {
            let rel = format!("{base}.{kind}");
            let loc = tree
                .get(&rel)
                .ok_or_else(|| format!("{rel} is listed in {MANIFEST_FILE} but missing"))?;
            uploads.push(Upload {
                label: format!("{} .{kind}", md.name()),
                data: Data::Loc(loc.clone()),
                digest: Some(f.digest.clone()),
                slot: Slot::GoFile { module: i, kind },
            });
        }
    }
    for (i, s) in m.sumdb.iter().enumerate() {
        let rel = format!("go/sumdb/{}/{}", s.db, s.path);
        let loc = tree
            .get(&rel)
            .ok_or_else(|| format!("{rel} is listed in {MANIFEST_FILE} but missing"))?;
        uploads.push(Upload {
            label: format!("checksum-database file {}/{}", s.db, s.path),
            data: Data::Loc(loc.clone()),
            digest: Some(s.digest.clone()),
            slot: Slot::Sumdb(i),
        });
    }
    Ok(Parsed {
        kind: "wharf bundle",
        contents: m,
        uploads,
        legacy: Vec::new(),
    })
}

/// Names for messages: `manifest of X`, `config or layer of X`, from whatever parses.
fn labels(tree: &Tree, prefix: &str, images: &[ImageEntry]) -> HashMap<Digest, String> {
    let mut out = HashMap::new();
    for i in images {
        let mut queue = vec![(i.digest.clone(), "manifest")];
        while let Some((d, what)) = queue.pop() {
            if out.contains_key(&d) {
                continue;
            }
            out.insert(d.clone(), format!("{what} {d} of {}", i.reference));
            let Ok(body) = tree.read(&format!("{prefix}blobs/sha256/{}", d.hex())) else {
                continue;
            };
            if Digest::of(&body) != d {
                continue;
            }
            let Ok(c) = children_of(&body) else { continue };
            queue.extend(c.manifests.into_iter().map(|m| (m.0, "manifest")));
            queue.extend(c.blobs.into_iter().map(|b| (b.0, "layer or config")));
        }
    }
    out
}

/// An OCI image layout at `prefix` (`""` or `oci/`): roots from `index.json`, named by their
/// annotations, every manifest checked against its digest before it is read.
fn oci(tree: &Tree, prefix: &str, naming: &Naming, kind: &'static str) -> Result<Parsed, String> {
    let index_path = format!("{prefix}index.json");
    let index: Value = serde_json::from_slice(&tree.read(&index_path)?)
        .map_err(|e| format!("{index_path} is damaged: {e}"))?;
    let roots = index["manifests"]
        .as_array()
        .ok_or_else(|| format!("{index_path} has no manifests"))?;
    let mut contents = BundleManifest::new(unix_now());
    let mut blobs: BTreeMap<Digest, BlobEntry> = BTreeMap::new();
    let mut labels: HashMap<Digest, String> = HashMap::new();
    for r in roots {
        let digest = r["digest"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .ok_or_else(|| format!("{index_path}: an entry has no valid digest"))?;
        let media = r["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
        let annotations = &r["annotations"];
        let name = annotations[CONTAINERD_NAME]
            .as_str()
            .or(annotations[REF_NAME].as_str());
        let what = name.map_or_else(|| digest.to_string(), str::to_string);
        walk_oci(
            tree,
            prefix,
            &digest,
            &media,
            &what,
            &mut blobs,
            &mut labels,
            &mut contents.warnings,
        )?;
        if let Some(name) = name {
            match image_name(naming, name) {
                Ok(r) => contents.images.push(ImageEntry {
                    reference: r.to_string(),
                    upstream: r.upstream.clone(),
                    repository: r.repository.to_string(),
                    tag: r.tag.map(|t| t.as_str().to_string()),
                    digest: digest.clone(),
                    media_type: media.clone(),
                }),
                Err(e) => contents
                    .warnings
                    .push(format!("{name}: imported by digest only ({digest}): {e}")),
            }
        }
    }
    let mut uploads = Vec::new();
    for b in blobs.values() {
        let rel = format!("{prefix}blobs/sha256/{}", b.digest.hex());
        let Some(loc) = tree.get(&rel) else { continue };
        uploads.push(Upload {
            label: labels
                .get(&b.digest)
                .cloned()
                .unwrap_or_else(|| format!("blob {}", b.digest)),
            data: Data::Loc(loc.clone()),
            digest: Some(b.digest.clone()),
            slot: Slot::Known,
        });
    }
    contents.blobs = blobs.into_values().collect();
    Ok(Parsed {
        kind,
        contents,
        uploads,
        legacy: Vec::new(),
    })
}

/// A `ref.name`: a full reference, or a tag put under `--name`.
fn image_name(naming: &Naming, name: &str) -> Result<ImageRef, String> {
    if Tag::parse(name).is_ok() && !name.contains(['/', ':']) {
        let Some(base) = naming.name else {
            return Err(
                "its name is only a tag; give --name REPOSITORY to import it as REPOSITORY:tag"
                    .into(),
            );
        };
        return ImageRef::parse(naming.config, &format!("{base}:{name}"));
    }
    ImageRef::parse(naming.config, name)
}

#[allow(clippy::too_many_arguments)]
fn walk_oci(
    tree: &Tree,
    prefix: &str,
    root: &Digest,
    root_media: &str,
    what: &str,
    blobs: &mut BTreeMap<Digest, BlobEntry>,
    labels: &mut HashMap<Digest, String>,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let mut queue = vec![(root.clone(), root_media.to_string(), true)];
    while let Some((d, media, is_root)) = queue.pop() {
        let rel = format!("{prefix}blobs/sha256/{}", d.hex());
        if !tree.contains(&rel) {
            if is_root {
                return Err(format!("manifest {d} of {what} is missing ({rel})"));
            }
            warnings.push(format!(
                "{what}: manifest {d} is not in the layout; left out"
            ));
            continue;
        }
        let body = tree.read(&rel)?;
        if Digest::of(&body) != d {
            return Err(format!(
                "manifest {d} of {what} does not match its digest (it hashes to {}): the input is damaged",
                Digest::of(&body)
            ));
        }
        let media = manifest::check(&body, Some(&media))
            .map_err(|e| format!("manifest {d} of {what}: {e}"))?;
        labels.insert(d.clone(), format!("manifest {d} of {what}"));
        blobs.insert(
            d.clone(),
            BlobEntry {
                digest: d.clone(),
                size: body.len() as u64,
                media_type: Some(media),
            },
        );
        let c = children_of(&body).map_err(|e| format!("manifest {d} of {what}: {e}"))?;
        for (cd, cm, _, _) in c.manifests {
            queue.push((cd, cm, false));
        }
        for (bd, size) in c.blobs {
            let rel = format!("{prefix}blobs/sha256/{}", bd.hex());
            let loc = tree
                .get(&rel)
                .ok_or_else(|| format!("{what}: blob {bd} is missing ({rel})"))?;
            if size > 0 && loc.len != size {
                return Err(format!(
                    "{what}: blob {bd} is {} bytes, its manifest says {size}",
                    loc.len
                ));
            }
            labels
                .entry(bd.clone())
                .or_insert_with(|| format!("layer or config {bd} of {what}"));
            blobs.entry(bd.clone()).or_insert(BlobEntry {
                digest: bd,
                size: loc.len,
                media_type: None,
            });
        }
    }
    Ok(())
}

/// `docker save` without an OCI layout: `manifest.json` lists config and layer files and tags.
/// The manifest is rebuilt from them (an OCI manifest of uncompressed layers), so its digest is
/// not the one the registry had.
fn docker_legacy(tree: &Tree, naming: &Naming) -> Result<Parsed, String> {
    let list: Value = serde_json::from_slice(&tree.read("manifest.json")?)
        .map_err(|e| format!("manifest.json is damaged: {e}"))?;
    let list = list
        .as_array()
        .ok_or("manifest.json is not a docker save manifest")?;
    let mut parsed = Parsed {
        kind: "docker save tarball",
        contents: BundleManifest::new(unix_now()),
        uploads: Vec::new(),
        legacy: Vec::new(),
    };
    for (i, img) in list.iter().enumerate() {
        let config_path = img["Config"].as_str().ok_or("manifest.json: no Config")?;
        let config = tree.read(config_path)?;
        let config_digest = Digest::of(&config);
        let tags: Vec<String> = img["RepoTags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for t in &tags {
            if let Err(e) = ImageRef::parse(naming.config, t) {
                parsed
                    .contents
                    .warnings
                    .push(format!("{t}: not tagged: {e}"));
            }
        }
        let what = tags
            .first()
            .cloned()
            .unwrap_or_else(|| format!("image {}", i + 1));
        parsed.uploads.push(Upload {
            label: format!("config of {what}"),
            data: Data::Memory(config.clone()),
            digest: Some(config_digest.clone()),
            slot: Slot::Known,
        });
        let layers = img["Layers"].as_array().ok_or("manifest.json: no Layers")?;
        for (j, l) in layers.iter().enumerate() {
            let p = l.as_str().ok_or("manifest.json: a layer is not a path")?;
            let loc = tree
                .get(p)
                .ok_or_else(|| format!("{what}: layer {p} is missing"))?;
            parsed.uploads.push(Upload {
                label: format!("layer {p} of {what}"),
                data: Data::Loc(loc.clone()),
                digest: None,
                slot: Slot::Layer(i, j),
            });
        }
        parsed.legacy.push(LegacyImage {
            tags,
            config: (config_digest, config.len() as u64),
            layers: vec![None; layers.len()],
        });
    }
    Ok(parsed)
}

/// Builds the manifests of legacy `docker save` images once their layers are stored; returns
/// the manifest uploads.
pub fn finish_legacy(parsed: &mut Parsed, naming: &Naming) -> Result<Vec<Upload>, String> {
    let mut uploads = Vec::new();
    for img in &parsed.legacy {
        let mut layers = Vec::new();
        for l in &img.layers {
            let (d, size) = l.clone().ok_or("a layer was not stored")?;
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size
            }));
            parsed.contents.blobs.push(BlobEntry {
                digest: d,
                size,
                media_type: None,
            });
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": img.config.0, "size": img.config.1
            },
            "layers": layers,
        }))
        .map_err(|e| e.to_string())?;
        let digest = Digest::of(&body);
        parsed.contents.blobs.push(BlobEntry {
            digest: img.config.0.clone(),
            size: img.config.1,
            media_type: None,
        });
        parsed.contents.blobs.push(BlobEntry {
            digest: digest.clone(),
            size: body.len() as u64,
            media_type: Some(OCI_MANIFEST.into()),
        });
        for t in &img.tags {
            if let Ok(r) = ImageRef::parse(naming.config, t) {
                parsed.contents.images.push(ImageEntry {
                    reference: r.to_string(),
                    upstream: r.upstream.clone(),
                    repository: r.repository.to_string(),
                    tag: r.tag.map(|t| t.as_str().to_string()),
                    digest: digest.clone(),
                    media_type: OCI_MANIFEST.into(),
                });
            }
        }
        uploads.push(Upload {
            label: format!(
                "manifest of {}",
                img.tags.first().map_or("an image", String::as_str)
            ),
            data: Data::Memory(body),
            digest: Some(digest),
            slot: Slot::Known,
        });
    }
    let mut seen = std::collections::HashSet::new();
    parsed
        .contents
        .blobs
        .retain(|b| seen.insert(b.digest.clone()));
    Ok(uploads)
}

/// A file of the go command's download cache, by its path under the cache root.
#[derive(Debug, PartialEq, Eq)]
enum GoCachePath {
    /// `sumdb/<db>/lookup/...` or `sumdb/<db>/tile/...`.
    Sumdb { db: String, path: String },
    /// `<module>/@v/<version>.<kind>`, unescaped: a valid module path and a canonical version.
    File {
        module: String,
        version: String,
        kind: &'static str,
    },
}

/// What a path under the cache root is, if wharf imports it: `info`, `mod`, `zip` or `ziphash`
/// files of canonical versions, and checksum-database lookups and tiles.
fn go_cache_path(rel: &str) -> Option<GoCachePath> {
    if let Some(s) = rel.strip_prefix("sumdb/") {
        let (db, p) = s.split_once('/')?;
        return (p.starts_with("lookup/") || p.starts_with("tile/")).then(|| GoCachePath::Sumdb {
            db: db.into(),
            path: p.into(),
        });
    }
    let (m, file) = rel.rsplit_once("/@v/")?;
    let (v, ext) = file.rsplit_once('.')?;
    let kind: &'static str = match ext {
        "info" => "info",
        "mod" => "mod",
        "zip" => "zip",
        "ziphash" => "ziphash",
        _ => return None,
    };
    let (Ok(module), Ok(version)) = (unescape(m), unescape(v)) else {
        return None;
    };
    if ModulePath::parse(&module).is_err() || !is_canonical(&version) {
        return None;
    }
    Some(GoCachePath::File {
        module,
        version,
        kind,
    })
}

/// A module version: path, version.
type VersionKey = (String, String);

/// The go command's download layout under `prefix`: `<module>/@v/<version>.info|.mod|.zip`,
/// `.ziphash` (the zip's `h1:`), and `sumdb/<db>/...` answers it cached.
fn go_cache(tree: &Tree, prefix: &str, kind: &'static str) -> Result<Parsed, String> {
    let mut modules: BTreeMap<VersionKey, ModuleEntry> = BTreeMap::new();
    let mut files: Vec<(VersionKey, &'static str, Loc)> = Vec::new();
    let mut sumdb: Vec<(String, String, Loc)> = Vec::new();
    for (path, loc) in tree.paths() {
        let Some(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        let (module, version, file_kind) = match go_cache_path(rel) {
            Some(GoCachePath::Sumdb { db, path }) => {
                sumdb.push((db, path, loc.clone()));
                continue;
            }
            Some(GoCachePath::File {
                module,
                version,
                kind,
            }) => (module, version, kind),
            None => continue,
        };
        let key = (module.clone(), version.clone());
        let entry = modules.entry(key.clone()).or_insert_with(|| ModuleEntry {
            path: module,
            version,
            ..Default::default()
        });
        if file_kind == "ziphash" {
            let text = tree.read(path)?;
            let h = String::from_utf8_lossy(&text).trim().to_string();
            if h.starts_with("h1:") {
                entry.zip_h1 = Some(h);
            }
            continue;
        }
        files.push((key, file_kind, loc.clone()));
    }
    // A version needs its .mod; the go command also keeps .info of versions it only listed.
    let has_mod: std::collections::HashSet<VersionKey> = files
        .iter()
        .filter(|(_, k, _)| *k == "mod")
        .map(|(key, _, _)| key.clone())
        .collect();
    modules.retain(|k, _| has_mod.contains(k));
    let mut contents = BundleManifest::new(unix_now());
    let mut uploads = go_file_uploads(&mut contents, modules, files);
    uploads.extend(sumdb_uploads(&mut contents, sumdb));
    Ok(Parsed {
        kind,
        contents,
        uploads,
        legacy: Vec::new(),
    })
}

/// Puts the module versions into `contents` and one upload per file; the server names each
/// file's digest (`fill_slot`).
fn go_file_uploads(
    contents: &mut BundleManifest,
    modules: BTreeMap<VersionKey, ModuleEntry>,
    files: Vec<(VersionKey, &'static str, Loc)>,
) -> Vec<Upload> {
    let position: HashMap<VersionKey, usize> = modules
        .keys()
        .cloned()
        .enumerate()
        .map(|(i, k)| (k, i))
        .collect();
    contents.modules = modules.into_values().collect();
    let mut uploads = Vec::new();
    let placeholder = Digest::of(b"");
    for (key, kind, loc) in files {
        let Some(&i) = position.get(&key) else {
            continue;
        };
        let f = FileEntry {
            digest: placeholder.clone(),
            size: loc.len,
        };
        let m = &mut contents.modules[i];
        match kind {
            "info" => m.info = Some(f),
            "mod" => m.go_mod = Some(f),
            _ => m.zip = Some(f),
        }
        uploads.push(Upload {
            label: format!("{}@{} .{kind}", key.0, key.1),
            data: Data::Loc(loc),
            digest: None,
            slot: Slot::GoFile { module: i, kind },
        });
    }
    uploads
}

/// Puts the checksum-database files into `contents`, one upload each.
fn sumdb_uploads(contents: &mut BundleManifest, sumdb: Vec<(String, String, Loc)>) -> Vec<Upload> {
    let placeholder = Digest::of(b"");
    let mut uploads = Vec::new();
    for (db, p, loc) in sumdb {
        let i = contents.sumdb.len();
        contents.sumdb.push(SumdbEntry {
            db: db.clone(),
            path: p.clone(),
            digest: placeholder.clone(),
            size: loc.len,
        });
        uploads.push(Upload {
            label: format!("checksum-database file {db}/{p}"),
            data: Data::Loc(loc),
            digest: None,
            slot: Slot::Sumdb(i),
        });
    }
    uploads
}

/// Records a digest the server computed for an upload.
pub fn fill_slot(parsed: &mut Parsed, slot: &Slot, digest: Digest, size: u64) {
    match slot {
        Slot::Known => {}
        Slot::GoFile { module, kind } => {
            if let Some(m) = parsed.contents.modules.get_mut(*module) {
                let f = Some(FileEntry { digest, size });
                match *kind {
                    "info" => m.info = f,
                    "mod" => m.go_mod = f,
                    _ => m.zip = f,
                }
            }
        }
        Slot::Sumdb(i) => {
            if let Some(s) = parsed.contents.sumdb.get_mut(*i) {
                s.digest = digest;
                s.size = size;
            }
        }
        Slot::Layer(i, j) => {
            if let Some(l) = parsed
                .legacy
                .get_mut(*i)
                .and_then(|img| img.layers.get_mut(*j))
            {
                *l = Some((digest, size));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_cache_paths_name_module_files_and_checksum_database_answers() {
        assert_eq!(
            go_cache_path("github.com/!azure/x/@v/v1.2.0.zip"),
            Some(GoCachePath::File {
                module: "github.com/Azure/x".into(),
                version: "v1.2.0".into(),
                kind: "zip",
            })
        );
        assert_eq!(
            go_cache_path("sumdb/sum.golang.org/lookup/a.com/x@v1.0.0"),
            Some(GoCachePath::Sumdb {
                db: "sum.golang.org".into(),
                path: "lookup/a.com/x@v1.0.0".into(),
            })
        );
        for skipped in [
            "sumdb/sum.golang.org/latest",
            "a.com/x/@v/list",
            "a.com/x/@v/v1.0.0.lock",
            "a.com/x/@v/master.info",
            "a.com/x/@v/v1.0.0.partial",
        ] {
            assert_eq!(go_cache_path(skipped), None, "{skipped}");
        }
    }
}
