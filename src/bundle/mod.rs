//! Air-gap tooling: `wharf prefetch` (in `crate::prefetch`), `wharf export` and `wharf import`.
//!
//! Owns the bundle format and the wire types of the admin API (`crate::admin`). The commands are
//! clients: they talk HTTP to a running wharf, or drive the same router in-process when none
//! answers (`client`), so there is one code path and sled's single-process lock is respected.
//!
//! A bundle is one uncompressed tar:
//!
//! ```text
//! wharf-bundle.json                 BundleManifest: what it holds, every digest and h1: hash
//! oci/oci-layout, oci/index.json    an OCI image layout; ref.name = docker.io/library/alpine:3.20
//! oci/blobs/sha256/<hex>            manifests, configs, layers
//! go/<module>/@v/list|<v>.info|.mod|.zip   the go command's cache/download layout (escaped)
//! go/sumdb/<db>/supported|lookup/...|tile/...  checksum-database answers that prove the hashes
//! ```
//!
//! | module     | owns                                                                      |
//! |------------|---------------------------------------------------------------------------|
//! | `client`   | finding the server (or opening the data dir), requests, credentials       |
//! | `progress` | progress bars on a terminal, plain lines otherwise                        |
//! | `plan`     | server side of export: what a selection contains, h1 hashes, sumdb proofs  |
//! | `apply`    | server side of import: verify everything, then index and pin               |
//! | `sumdb`    | checksum-database proofs from stored lookups and tiles                      |
//! | `content`  | what the check reads: this wharf's storage, or a bundle file (`--check`)    |
//! | `mirror`   | what the server side reads and writes (`Mirror`: storage, config, private) |
//! | `error`    | how the server side fails (`BundleError`), mapped to HTTP by `admin`       |
//! | `export`   | `wharf export`: plan, then stream blobs into the tar, then check it        |
//! | `check`    | `wharf export --check`: a bundle file checked as `import` would            |
//! | `source`   | reading bundles, OCI layouts, go caches and `docker save` tarballs         |
//! | `import`   | `wharf import`: upload verified blobs, then ask the server to index them   |

pub mod apply;
mod content;
mod error;
mod mirror;
pub mod plan;
pub mod sumdb;

pub use content::{Content, Stored};
pub use error::BundleError;
pub use mirror::Mirror;

use serde::{Deserialize, Serialize};
use wharf_storage::Digest;

use crate::config::{Config, DOCKER_HUB_NAME};
use crate::goproxy::path::{ModulePath, is_canonical};
use crate::registry::manifest::{self, Role};
use crate::registry::routes::{RepoName, Tag};

/// `format` of `wharf-bundle.json`.
pub const FORMAT: &str = "wharf-bundle";
/// Bumped when a reader of the previous version would misread a bundle.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "wharf-bundle.json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd (and `docker save` since Docker 25) put the full image name here.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// `wharf-bundle.json`, and the body of export plans and import requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: String,
    pub version: u32,
    /// RFC 3339, UTC.
    pub created: String,
    pub created_unix: u64,
    /// The wharf that wrote it.
    pub wharf: String,
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    /// Every blob under `oci/blobs` (manifests carry their media type).
    #[serde(default)]
    pub blobs: Vec<BlobEntry>,
    #[serde(default)]
    pub modules: Vec<ModuleEntry>,
    #[serde(default)]
    pub sumdb: Vec<SumdbEntry>,
    /// The OCI referrers lists of exported manifests (signatures, SBOMs, attestations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<ReferrersEntry>,
    /// What the exporter skipped, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// In an export plan only: checksum-database files (`<db>/<path>`) that a proof needs and
    /// the cache lacks. `wharf export` fetches them through wharf and plans again; never
    /// written into a bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_sumdb: Vec<String>,
}

impl BundleManifest {
    pub fn new(created_unix: u64) -> BundleManifest {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(created_unix);
        BundleManifest {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            created: humantime::format_rfc3339_seconds(time).to_string(),
            created_unix,
            wharf: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }

    /// Bytes of every blob, module file and sumdb answer.
    pub fn total_bytes(&self) -> u64 {
        let blobs: u64 = self.blobs.iter().map(|b| b.size).sum();
        let files: u64 = self
            .modules
            .iter()
            .flat_map(|m| m.files())
            .map(|(_, f)| f.size)
            .sum();
        let sumdb: u64 = self.sumdb.iter().map(|s| s.size).sum();
        blobs + files + sumdb
    }
}

/// A tag (or a bare digest) and the manifest it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// As a person writes it: `docker.io/library/alpine:3.20`.
    pub reference: String,
    /// The `[[registry.upstream]]` name.
    pub upstream: String,
    /// The repository as that upstream knows it (`library/alpine`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Digest,
    pub media_type: String,
}

/// A manifest's referrers in one repository, as the exporting wharf last learned them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrersEntry {
    pub upstream: String,
    pub repository: String,
    pub subject: Digest,
    pub referrers: Vec<wharf_storage::Referrer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    /// Set for manifests and indexes; `None` for configs and layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

/// One Go module version: its files and their `h1:` hashes as go.sum writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub path: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<FileEntry>,
    #[serde(rename = "mod", default, skip_serializing_if = "Option::is_none")]
    pub go_mod: Option<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip: Option<FileEntry>,
    /// `h1:` of the zip (go.sum's `<path> <version> h1:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip_h1: Option<String>,
    /// `h1:` of the go.mod (go.sum's `<path> <version>/go.mod h1:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_h1: Option<String>,
}

impl ModuleEntry {
    /// `(extension, file)` for each file present.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &FileEntry)> {
        [
            ("info", self.info.as_ref()),
            ("mod", self.go_mod.as_ref()),
            ("zip", self.zip.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, f)| f.map(|f| (k, f)))
    }

    pub fn name(&self) -> String {
        format!("{}@{}", self.path, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub digest: Digest,
    pub size: u64,
}

/// A checksum-database answer: `lookup/<module>@<version>` or a tile, below `/sumdb/<db>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumdbEntry {
    pub db: String,
    pub path: String,
    pub digest: Digest,
    pub size: u64,
}

/// `POST /admin/pins`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinRequest {
    pub reason: String,
    #[serde(default)]
    pub digests: Vec<Digest>,
    /// Module versions whose cached files are pinned.
    #[serde(default)]
    pub modules: Vec<ModuleRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    pub path: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinReply {
    pub pinned: usize,
    /// Digests (or `module@version`) that are not in the cache, so were not pinned.
    pub missing: Vec<String>,
}

/// `POST /admin/export`: what to put in a bundle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Every tag and module version in the cache.
    #[serde(default)]
    pub all: bool,
    /// Every pinned tag, manifest and module version.
    #[serde(default)]
    pub pinned: bool,
    /// Image references (`docker.io/library/alpine:3.20`, `alpine@sha256:...`).
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub modules: Vec<ModuleRef>,
}

/// `POST /admin/import`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportRequest {
    /// Recorded with every pin, e.g. `import bundle.tar`.
    pub reason: String,
    pub contents: BundleManifest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportReply {
    pub tags: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub modules: usize,
    /// Module versions whose hashes were proven by a checksum database in the bundle.
    pub modules_sumdb_verified: usize,
    pub sumdb_files: usize,
    pub pinned: usize,
    pub warnings: Vec<String>,
}

/// An error answer of the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminErrorBody {
    pub error: String,
}

/// An image reference resolved against the configured upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub upstream: String,
    pub repository: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// `docker.io/library/alpine:3.20`, `ghcr.io/org/app@sha256:...`, `alpine` (default upstream,
    /// tag `latest`). A first component that looks like a host (has `.` or `:`, or is
    /// `localhost`) must be a configured upstream.
    pub fn parse(config: &Config, s: &str) -> Result<ImageRef, String> {
        let s = s.trim();
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|e| format!("{s:?}: bad digest: {e}"))?),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a host may have a port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(Tag::parse(t).map_err(|e| format!("{s:?}: {e}"))?),
            (None, None) => Some(Tag::parse("latest").map_err(|e| format!("{s:?}: {e}"))?),
            (None, Some(_)) => None,
        };
        let (first, after) = name.split_once('/').unwrap_or((name, ""));
        let host_like = first.contains(['.', ':']) || first == "localhost";
        let (upstream, repo) = if host_like && !after.is_empty() {
            let canonical = match first {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_NAME,
                other => other,
            };
            let up = config.upstream(canonical).ok_or_else(|| {
                format!(
                    "{s:?}: no [[registry.upstream]] is named {first:?}; add one to reach it through wharf"
                )
            })?;
            (up, after)
        } else if let Some(up) = config.upstream(first).filter(|_| !after.is_empty()) {
            (up, after)
        } else {
            let up = config
                .upstream(&config.registry.default_upstream)
                .ok_or_else(|| format!("{s:?}: no default upstream is configured"))?;
            (up, name)
        };
        let mut repository = RepoName::parse(repo).map_err(|e| format!("{s:?}: {e}"))?;
        if upstream.library_prefix() && repository.is_single_component() {
            repository = repository.with_library();
        }
        Ok(ImageRef {
            upstream: upstream.name.clone(),
            repository,
            tag,
            digest,
        })
    }

    /// The manifest reference: the digest if given, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.as_str().to_string(),
            (None, None) => "latest".into(),
        }
    }

    /// `/v2/<upstream>/<repository>`: the path prefix that selects this upstream explicitly.
    pub fn v2_base(&self) -> String {
        format!("/v2/{}/{}", self.upstream, self.repository)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{}", t.as_str())?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One thing to prefetch or export, as given on the command line or in a list file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Item {
    Image(String),
    /// `path@version`; the version may be a query such as `latest` (prefetch resolves it).
    /// `mod_only`: a go.sum names only its go.mod, so the build needs no zip.
    Module {
        path: String,
        version: String,
        mod_only: bool,
    },
}

/// Parses a list: one item per line, `#` comments, blank lines ignored. `path@v...` is a Go
/// module, anything else an image reference.
pub fn parse_items(text: &str) -> Result<Vec<Item>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_item(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(out)
}

/// `golang.org/x/text@v0.14.0` (or `@latest`) is a module; anything else an image.
pub fn parse_item(s: &str) -> Result<Item, String> {
    if let Some((path, version)) = s.rsplit_once('@')
        && !version.starts_with("sha256:")
        && (version.starts_with('v') || version == "latest")
    {
        ModulePath::parse(path).map_err(|e| format!("{s:?}: {e}"))?;
        return Ok(Item::Module {
            path: path.into(),
            version: version.into(),
            mod_only: false,
        });
    }
    Ok(Item::Image(s.into()))
}

/// The module versions a `go.sum` or `go.mod` names. A go.sum line with only `/go.mod` means the
/// build needs only that version's go.mod (`mod_only`).
pub fn modules_of_go_file(name: &str, text: &str) -> Result<Vec<(ModuleRef, bool)>, String> {
    let mut out: Vec<(ModuleRef, bool)> = Vec::new();
    let mut add = |path: &str, version: &str, mod_only: bool| {
        let r = ModuleRef {
            path: path.into(),
            version: version.into(),
        };
        match out.iter_mut().find(|(m, _)| *m == r) {
            Some((_, only)) => *only &= mod_only,
            None => out.push((r, mod_only)),
        }
    };
    if name.ends_with(".sum") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [path, version, _hash] = f[..] {
                match version.strip_suffix("/go.mod") {
                    Some(v) => add(path, v, true),
                    None => add(path, version, false),
                }
            }
        }
        return Ok(out);
    }
    // go.mod: `require` lines and blocks, and `replace ... => path version`.
    let mut block: Option<&str> = None;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(b) = block {
            if line == ")" {
                block = None;
                continue;
            }
            directive(b, line, &mut add);
            continue;
        }
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        if rest == "(" {
            block = Some(match verb {
                "require" => "require",
                "replace" => "replace",
                _ => "other",
            });
            continue;
        }
        directive(verb, rest, &mut add);
    }
    Ok(out)
}

fn directive(verb: &str, rest: &str, add: &mut impl FnMut(&str, &str, bool)) {
    let unquote = |s: &str| s.trim_matches('"').to_string();
    match verb {
        "require" => {
            let f: Vec<String> = rest.split_whitespace().map(unquote).collect();
            if let [path, version, ..] = &f[..]
                && is_canonical(version)
            {
                add(path, version, false);
            }
        }
        "replace" => {
            if let Some((_, new)) = rest.split_once("=>") {
                let f: Vec<String> = new.split_whitespace().map(unquote).collect();
                if let [path, version] = &f[..]
                    && is_canonical(version)
                {
                    add(path, version, false);
                }
            }
        }
        _ => {}
    }
}

/// Everything named on a command line: items, list files (`-f`), go.mod / go.sum paths.
pub fn collect_items(args: &[String], lists: &[std::path::PathBuf]) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    for l in lists {
        let text = read(l)?;
        items.extend(parse_items(&text).map_err(|e| format!("{}: {e}", l.display()))?);
    }
    for a in args {
        let p = std::path::Path::new(a);
        let file = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (file.ends_with("go.sum") || file.ends_with("go.mod")) && p.is_file() {
            let text = read(p)?;
            for (m, mod_only) in modules_of_go_file(file, &text)? {
                items.push(Item::Module {
                    path: m.path,
                    version: m.version,
                    mod_only,
                });
            }
        } else {
            items.push(parse_item(a)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.clone()));
    Ok(items)
}

/// `linux/amd64`, `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: Some(v.into()),
            }),
            _ => Err(format!("{s:?} is not a platform such as linux/amd64")),
        }
    }
}

impl Platform {
    /// Whether an index entry's `platform` object is this platform (a variant given here must
    /// match; one absent here matches any).
    pub fn matches(&self, p: &serde_json::Value) -> bool {
        let field = |k: &str| p.get(k).and_then(|v| v.as_str());
        field("os") == Some(self.os.as_str())
            && field("architecture") == Some(self.architecture.as_str())
            && self
                .variant
                .as_deref()
                .is_none_or(|v| field("variant") == Some(v))
    }
}

/// What a manifest refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Children {
    /// Child manifests of an index: digest, media type, size, platform.
    pub manifests: Vec<(Digest, String, u64, serde_json::Value)>,
    /// Config and layers of an image manifest (schema 1 `fsLayers`, size 0), each once: digest,
    /// size.
    pub blobs: Vec<(Digest, u64)>,
}

/// Children of a manifest document, as the bundle commands walk it (`manifest::descriptors`):
/// child manifests apart from config and layers, schema 1 `fsLayers` as layers without sizes,
/// and neither `subject` (another manifest's) nor artifact `blobs` (wharf does not pull them).
/// Unlike the registry's projections, a descriptor without a valid digest is an error.
pub fn children_of(body: &[u8]) -> Result<Children, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut out = Children::default();
    let mut seen = std::collections::HashSet::new();
    for (role, d) in manifest::descriptors(&doc) {
        if matches!(role, Role::Subject | Role::Blob) {
            continue;
        }
        let s = d
            .get(role.digest_key())
            .and_then(|v| v.as_str())
            .ok_or_else(|| "descriptor without a digest".to_string())?;
        let digest = Digest::parse(s).map_err(|e| format!("descriptor digest {s:?}: {e}"))?;
        let size = match role {
            Role::FsLayer => 0,
            _ => d.get("size").and_then(|v| v.as_u64()).unwrap_or(0),
        };
        if role == Role::Manifest {
            let media = d
                .get("mediaType")
                .and_then(|v| v.as_str())
                .unwrap_or(manifest::OCI_MANIFEST)
                .to_string();
            let platform = d.get("platform").cloned().unwrap_or_default();
            out.manifests.push((digest, media, size, platform));
        } else if seen.insert(digest.clone()) {
            out.blobs.push((digest, size));
        }
    }
    Ok(out)
}

/// Short form of a digest for progress lines: `sha256:0123456789ab`.
pub fn short(d: &Digest) -> String {
    d.as_str().chars().take(19).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml_str(
            r#"
[registry]
default_upstream = "docker.io"
[[registry.upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
[[registry.upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
"#,
        )
        .unwrap()
    }

    #[test]
    fn image_references_resolve_to_an_upstream_and_repository() {
        let c = config();
        let r = ImageRef::parse(&c, "docker.io/library/alpine:3.20").unwrap();
        assert_eq!(
            (r.upstream.as_str(), r.repository.as_str()),
            ("docker.io", "library/alpine")
        );
        assert_eq!(r.reference(), "3.20");
        let r = ImageRef::parse(&c, "alpine").unwrap();
        assert_eq!(r.repository.as_str(), "library/alpine");
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&c, &format!("ghcr.io/org/app@{d}")).unwrap();
        assert_eq!(r.upstream, "ghcr.io");
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), d);
        assert_eq!(r.v2_base(), "/v2/ghcr.io/org/app");
        assert!(ImageRef::parse(&c, "quay.io/x/y:1").is_err());
        assert!(ImageRef::parse(&c, "Upper/x").is_err());
    }

    #[test]
    fn items_are_modules_or_images() {
        assert_eq!(
            parse_item("golang.org/x/text@v0.14.0").unwrap(),
            Item::Module {
                path: "golang.org/x/text".into(),
                version: "v0.14.0".into(),
                mod_only: false,
            }
        );
        let d = format!("alpine@sha256:{}", "0".repeat(64));
        assert_eq!(parse_item(&d).unwrap(), Item::Image(d.clone()));
        let list = parse_items("# images\nalpine:3.20\n\nexample.com/m@latest # go\n").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn go_sum_and_go_mod_name_their_modules() {
        let sum =
            "a.com/x v1.0.0 h1:zip=\na.com/x v1.0.0/go.mod h1:mod=\nb.com/y v0.1.0/go.mod h1:m=\n";
        let m = modules_of_go_file("go.sum", sum).unwrap();
        assert_eq!(m.len(), 2);
        assert!(!m[0].1 && m[1].1);
        let gomod = "module x\n\nrequire a.com/x v1.0.0\nrequire (\n\tb.com/y v0.1.0 // indirect\n\t\"c.com/z\" v2.0.0+incompatible\n)\nreplace d.com/q => e.com/q v1.2.3\nreplace f.com/r => ../local\n";
        let names: Vec<String> = modules_of_go_file("go.mod", gomod)
            .unwrap()
            .into_iter()
            .map(|(m, _)| format!("{}@{}", m.path, m.version))
            .collect();
        assert_eq!(
            names,
            [
                "a.com/x@v1.0.0",
                "b.com/y@v0.1.0",
                "c.com/z@v2.0.0+incompatible",
                "e.com/q@v1.2.3"
            ]
        );
    }

    #[test]
    fn platforms_match_index_entries() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        let entry = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        assert!(p.matches(&entry));
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert!(!amd.matches(&entry));
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn manifest_children_are_listed() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let image = format!(
            r#"{{"config":{{"digest":"{}","size":3}},"layers":[{{"digest":"{}","size":5}}]}}"#,
            d('a'),
            d('b')
        );
        let c = children_of(image.as_bytes()).unwrap();
        assert_eq!(c.blobs.len(), 2);
        let index = format!(
            r#"{{"manifests":[{{"digest":"{}","size":9,"mediaType":"x","platform":{{"os":"linux"}}}}]}}"#,
            d('c')
        );
        let c = children_of(index.as_bytes()).unwrap();
        assert_eq!(c.manifests[0].1, "x");
        assert!(children_of(b"[").is_err());
    }

    #[test]
    fn schema1_layers_are_children_but_subjects_and_artifact_blobs_are_not() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let doc = format!(
            r#"{{"subject":{{"digest":"{}"}},"blobs":[{{"digest":"{}"}}],"fsLayers":[{{"blobSum":"{}"}},{{"blobSum":"{}"}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('c')
        );
        let c = children_of(doc.as_bytes()).unwrap();
        assert_eq!(c.blobs, [(Digest::parse(&d('c')).unwrap(), 0)]);
        assert!(c.manifests.is_empty());
        assert!(children_of(br#"{"layers":[{"size":1}]}"#).is_err());
        assert!(children_of(br#"{"layers":[{"digest":"sha256:bad"}]}"#).is_err());
    }
}
