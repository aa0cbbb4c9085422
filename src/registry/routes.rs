//! The `/v2/` URL grammar as a pure function: raw path + query -> typed `Route`, or the spec
//! error to answer with. Nothing here touches disk or network, so hostile paths are rejected
//! before any work is done (table-tested below).

use std::fmt;

use wharf_storage::Digest;

use super::errors::{ErrorCode, RegistryError};

/// Longest repository name accepted (clients cap `host/name` at 255).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name in the spec's grammar: `/`-separated components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, String> {
        if s.is_empty() {
            return Err("empty repository name".into());
        }
        if s.len() > MAX_NAME_LEN {
            return Err(format!(
                "repository name longer than {MAX_NAME_LEN} characters"
            ));
        }
        for comp in s.split('/') {
            if !valid_component(comp) {
                return Err(format!(
                    "repository name component {:?} does not match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*",
                    truncate(comp, 64)
                ));
            }
        }
        Ok(RepoName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first `/`-separated component.
    pub fn first(&self) -> &str {
        self.0.split('/').next().unwrap_or("")
    }

    /// The name without its first component, if it has more than one.
    pub fn strip_first(&self) -> Option<RepoName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RepoName(rest.to_string()))
    }

    pub fn is_single_component(&self) -> bool {
        !self.0.contains('/')
    }

    /// `library/<name>`, Docker Hub's namespace for official images.
    pub fn with_library(&self) -> RepoName {
        RepoName(format!("library/{}", self.0))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", always followed by an alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, String> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(format!("{:?} is not a valid tag", truncate(s, 64)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`
    Base,
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
    TagsList {
        name: RepoName,
    },
    /// `GET /v2/<name>/referrers/<digest>` (OCI 1.1): the artifacts whose subject it is.
    Referrers {
        name: RepoName,
        digest: Digest,
    },
    Catalog,
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses the raw (still percent-encoded) path after `/v2/`. Percent signs never appear in a
/// valid name, tag or digest, so no decoding happens and `%2e%2e` / `%2f` are simply invalid.
pub fn parse(rest: &str) -> Result<Route, RegistryError> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let not_found = || RegistryError::new(ErrorCode::NotFound, "no such registry endpoint");
    let name_invalid = |m: String| RegistryError::new(ErrorCode::NameInvalid, m);
    let (head, last) = rest.rsplit_once('/').ok_or_else(not_found)?;
    let (name, kind) = head.rsplit_once('/').ok_or_else(not_found)?;
    let parse_name = |n: &str| RepoName::parse(n).map_err(name_invalid);
    match kind {
        "manifests" => {
            let name = parse_name(name)?;
            let reference = if last.contains(':') {
                Reference::Digest(parse_digest(last)?)
            } else {
                Reference::Tag(
                    Tag::parse(last)
                        .map_err(|m| RegistryError::new(ErrorCode::ManifestUnknown, m))?,
                )
            };
            Ok(Route::Manifest { name, reference })
        }
        "blobs" => {
            let name = parse_name(name)?;
            Ok(Route::Blob {
                name,
                digest: parse_digest(last)?,
            })
        }
        "tags" if last == "list" => Ok(Route::TagsList {
            name: parse_name(name)?,
        }),
        "referrers" => Ok(Route::Referrers {
            name: parse_name(name)?,
            digest: parse_digest(last)?,
        }),
        _ => Err(not_found()),
    }
}

fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    Digest::parse(s).map_err(|e| RegistryError::new(ErrorCode::DigestInvalid, e.to_string()))
}

/// Reads one query parameter from a raw query string (values are percent-decoded).
/// A path-prefixed mirror request (`/<upstream>/v2/...`, what Docker's `registry-mirrors` and
/// containerd send for a mirror URL with a path) as the `?ns=` form wharf routes:
/// `/v2/...?ns=<upstream>`. `None` when the path has no such prefix; `Err` (a message for the
/// client) when the prefix names no upstream or the query already names another one.
pub fn unprefix(
    path: &str,
    query: Option<&str>,
    is_upstream: impl Fn(&str) -> bool,
) -> Option<Result<String, String>> {
    let rest = path.strip_prefix('/')?;
    let (prefix, tail) = rest.split_once('/')?;
    let after = tail.strip_prefix("v2")?;
    if !(after.is_empty() || after.starts_with('/')) || prefix.is_empty() || prefix == "v2" {
        return None;
    }
    let prefix = percent_decode(prefix);
    if !is_upstream(&prefix) {
        return Some(Err(format!(
            "no upstream named {prefix:?}: a mirror path prefix must be the name of a registry.upstream"
        )));
    }
    if let Some(ns) = query_param(query, "ns")
        && ns != prefix
    {
        return Some(Err(format!(
            "the path prefix names upstream {prefix:?} and ?ns= names {ns:?}"
        )));
    }
    let mut out = format!("/v2{after}?ns={prefix}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('&');
        out.push_str(q);
    }
    Some(Ok(out))
}

pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    let q = query?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |x: u8| (x as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn valid_routes_parse() {
        assert_eq!(parse("").unwrap(), Route::Base);
        assert_eq!(parse("_catalog").unwrap(), Route::Catalog);
        let r = parse("library/alpine/manifests/3.20").unwrap();
        assert!(
            matches!(r, Route::Manifest { ref name, reference: Reference::Tag(ref t) }
            if name.as_str() == "library/alpine" && t.as_str() == "3.20")
        );
        let r = parse(&format!("a/b/c/blobs/{D}")).unwrap();
        assert!(matches!(r, Route::Blob { ref name, .. } if name.as_str() == "a/b/c"));
        let r = parse(&format!("ghcr.io/org/app/manifests/{D}")).unwrap();
        assert!(matches!(
            r,
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            parse("x/tags/list").unwrap(),
            Route::TagsList { .. }
        ));
        assert!(
            matches!(parse(&format!("a/b/referrers/{D}")).unwrap(), Route::Referrers { ref name, ref digest } if name.as_str() == "a/b" && digest.as_str() == D)
        );
        // A repository may itself be called "blobs" or "manifests".
        assert!(
            matches!(parse("blobs/manifests/latest").unwrap(), Route::Manifest { ref name, .. } if name.as_str() == "blobs")
        );
    }

    #[test]
    fn hostile_paths_are_rejected_with_spec_codes() {
        let cases: &[(&str, ErrorCode)] = &[
            ("../etc/manifests/latest", ErrorCode::NameInvalid),
            ("a/../b/manifests/latest", ErrorCode::NameInvalid),
            ("%2e%2e/x/manifests/latest", ErrorCode::NameInvalid),
            ("a%2fb/manifests/latest", ErrorCode::NameInvalid),
            ("a\\b/manifests/latest", ErrorCode::NameInvalid),
            ("a;b/manifests/latest", ErrorCode::NameInvalid),
            ("a//b/manifests/latest", ErrorCode::NameInvalid),
            ("/a/manifests/latest", ErrorCode::NameInvalid),
            ("Upper/manifests/latest", ErrorCode::NameInvalid),
            ("a./manifests/latest", ErrorCode::NameInvalid),
            ("a___b/manifests/latest", ErrorCode::NameInvalid),
            ("a/manifests/-bad", ErrorCode::ManifestUnknown),
            ("a/manifests/..", ErrorCode::ManifestUnknown),
            ("a/blobs/sha256:../x", ErrorCode::NotFound),
            ("a/blobs/sha256:ABC", ErrorCode::DigestInvalid),
            ("a/blobs/latest", ErrorCode::DigestInvalid),
            ("a/manifests/sha256:e3b0", ErrorCode::DigestInvalid),
            ("a/tags/other", ErrorCode::NotFound),
            ("a/referrers/x", ErrorCode::DigestInvalid),
            ("a/referrers/sha256:../x", ErrorCode::NotFound),
            ("justname", ErrorCode::NotFound),
        ];
        for (path, code) in cases {
            let err = parse(path).expect_err(path);
            assert_eq!(err.code, *code, "{path}");
        }
        let long = format!("{}/manifests/latest", "a".repeat(256));
        assert_eq!(parse(&long).unwrap_err().code, ErrorCode::NameInvalid);
        let long_tag = format!("a/manifests/{}", "t".repeat(129));
        assert_eq!(
            parse(&long_tag).unwrap_err().code,
            ErrorCode::ManifestUnknown
        );
    }

    #[test]
    fn name_grammar_accepts_separators() {
        for ok in [
            "a", "a.b", "a_b", "a__b", "a-b", "a---b", "0", "a/b/c", "ghcr.io",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a._b", "A", "a b", "a/", "é"] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixed_mirror_paths_become_the_ns_form() {
        let up = |n: &str| n == "ghcr.io" || n == "docker.io";
        let u = |p: &str, q: Option<&str>| unprefix(p, q, up);
        assert_eq!(
            u("/ghcr.io/v2/org/app/manifests/v1", None),
            Some(Ok("/v2/org/app/manifests/v1?ns=ghcr.io".into()))
        );
        assert_eq!(
            u("/docker.io/v2/", None),
            Some(Ok("/v2/?ns=docker.io".into()))
        );
        assert_eq!(
            u("/docker.io/v2", None),
            Some(Ok("/v2?ns=docker.io".into()))
        );
        assert_eq!(
            u("/ghcr.io/v2/a/tags/list", Some("n=5&ns=ghcr.io")),
            Some(Ok("/v2/a/tags/list?ns=ghcr.io&n=5&ns=ghcr.io".into()))
        );
        assert!(matches!(
            u("/quay.io/v2/a/manifests/v1", None),
            Some(Err(_))
        ));
        assert!(matches!(
            u("/ghcr.io/v2/a/manifests/v1", Some("ns=docker.io")),
            Some(Err(_))
        ));
        for not_prefixed in [
            "/v2/a/manifests/v1",
            "/go/x/v2/@v/list",
            "/ghcr.io/v2x",
            "/x",
            "/",
        ] {
            assert_eq!(u(not_prefixed, None), None, "{not_prefixed}");
        }
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("ns=docker.io&n=5"), "ns").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            query_param(Some("last=a%2Fb"), "last").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_param(Some("x=%zz"), "x").as_deref(), Some("%zz"));
        assert_eq!(query_param(None, "ns"), None);
    }
}
