//! Manifest checks before anything is stored: size cap, JSON shape, and the media type agreeing
//! between `Content-Type` and the document (CVE-2021-41190 type confusion). Bytes are never
//! rewritten. Also the one walker over a manifest's descriptors (`descriptors`), which the
//! registry (`children`, `contents`) and the bundle commands (`bundle::children_of`) project.

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What wharf asks upstream for, most specific first.
pub const ACCEPT: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// Checks a manifest document and returns the media type to serve it with.
/// `content_type` is the upstream's header, without parameters.
pub fn check(body: &[u8], content_type: Option<&str>) -> Result<String, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| "manifest is not a JSON object".to_string())?;
    if obj.contains_key("layers") && obj.contains_key("manifests") {
        return Err("manifest has both \"layers\" and \"manifests\"".into());
    }
    let declared = match obj.get("mediaType") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("manifest mediaType is not a string".into()),
    };
    if let Some(d) = declared
        && !is_media_type(d)
    {
        return Err(format!(
            "manifest mediaType {:?} is not a media type",
            d.chars().take(80).collect::<String>()
        ));
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && !is_generic(c));
    if let Some(h) = header
        && !is_media_type(h)
    {
        return Err("upstream Content-Type is not a media type".into());
    }
    match (header, declared) {
        (Some(h), Some(d)) if h != d => Err(format!(
            "Content-Type {h:?} disagrees with the manifest's mediaType {d:?}"
        )),
        (Some(h), _) => Ok(h.to_string()),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Ok(sniff(obj).to_string()),
    }
}

/// `type/subtype` of RFC 6838 token characters (no spaces, quotes or control characters), and
/// not one a browser would render.
fn is_media_type(t: &str) -> bool {
    let tok = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let Some((ty, sub)) = t.split_once('/') else {
        return false;
    };
    tok(ty) && tok(sub) && !t.eq_ignore_ascii_case("text/html") && !ty.eq_ignore_ascii_case("text")
}

fn is_generic(ct: &str) -> bool {
    matches!(
        ct,
        "application/json" | "text/plain" | "application/octet-stream"
    )
}

fn sniff(obj: &serde_json::Map<String, serde_json::Value>) -> &'static str {
    if obj.contains_key("manifests") {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    }
}

/// Where a descriptor sits in a manifest document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `config` of an image manifest.
    Config,
    /// `subject`: the manifest this one is about (a signature's image). A pointer, not content:
    /// a repository holding this manifest need not hold its subject.
    Subject,
    /// `layers` of an image manifest.
    Layer,
    /// `manifests` of an index: child manifests, with `mediaType` and `platform`.
    Manifest,
    /// `blobs` of an OCI artifact manifest.
    Blob,
    /// `fsLayers` of a schema 1 manifest: `blobSum`, no size.
    FsLayer,
}

impl Role {
    /// The member that holds the descriptor's digest.
    pub fn digest_key(self) -> &'static str {
        match self {
            Role::FsLayer => "blobSum",
            _ => "digest",
        }
    }
}

/// Every descriptor of a parsed manifest document, in one fixed order: config, subject, layers,
/// manifests, blobs, fsLayers. `config` and `subject` count only when they are objects; every
/// element of the lists is yielded (callers decide whether a broken one is skipped or refused).
/// The one manifest walker: `children`, `contents` and the bundle's `children_of` project it.
pub fn descriptors(
    doc: &serde_json::Value,
) -> impl Iterator<Item = (Role, &serde_json::Value)> + '_ {
    const KEYS: [(Role, &str); 6] = [
        (Role::Config, "config"),
        (Role::Subject, "subject"),
        (Role::Layer, "layers"),
        (Role::Manifest, "manifests"),
        (Role::Blob, "blobs"),
        (Role::FsLayer, "fsLayers"),
    ];
    KEYS.into_iter().flat_map(move |(role, key)| {
        let items: &[serde_json::Value] = match (role, doc.get(key)) {
            (Role::Config | Role::Subject, Some(v)) if v.is_object() => std::slice::from_ref(v),
            (Role::Config | Role::Subject, _) => &[],
            (_, Some(serde_json::Value::Array(list))) => list,
            _ => &[],
        };
        items.iter().map(move |d| (role, d))
    })
}

/// A descriptor's digest, if it names a valid one (digests in a manifest are untrusted input).
fn valid_digest(role: Role, d: &serde_json::Value) -> Option<wharf_storage::Digest> {
    let s = d.get(role.digest_key())?.as_str()?;
    wharf_storage::Digest::parse(s).ok()
}

/// The blobs a manifest refers to: its config and layers, or an index's child manifests (and a
/// `subject`, and an artifact's `blobs`). Not schema 1 `fsLayers`. Digests inside a manifest are
/// untrusted input: invalid ones are skipped.
pub fn children(body: &[u8]) -> Vec<wharf_storage::Digest> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    descriptors(&doc)
        .filter(|(role, _)| *role != Role::FsLayer)
        .filter_map(|(role, d)| valid_digest(role, d))
        .collect()
}

/// What a manifest holds, for visibility: its config and layers (with the sizes it declares),
/// or an index's child manifests. Not its `subject`: that is a pointer to another manifest,
/// which a repository may not hold. Invalid digests are skipped.
pub fn contents(body: &[u8]) -> Vec<(wharf_storage::Digest, Option<u64>)> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    descriptors(&doc)
        .filter(|(role, _)| !matches!(role, Role::Subject | Role::FsLayer))
        .filter_map(|(role, d)| {
            valid_digest(role, d).map(|digest| (digest, d.get("size").and_then(|s| s.as_u64())))
        })
        .collect()
}

/// Whether `media` is an index (OCI image index or Docker manifest list).
pub fn is_index(media: &str) -> bool {
    media == OCI_INDEX || media == DOCKER_LIST
}

/// The manifest types a request's `Accept` values name (parameters and `q` dropped); `None` when
/// the request takes anything: no `Accept`, or a wildcard.
pub fn accepted<'a>(values: impl Iterator<Item = &'a str>) -> Option<Vec<String>> {
    let mut types = Vec::new();
    for v in values {
        for item in v.split(',') {
            let t = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if t == "*/*" || t == "application/*" {
                return None;
            }
            if !t.is_empty() {
                types.push(t);
            }
        }
    }
    (!types.is_empty()).then_some(types)
}

/// The child of an index for `os/architecture[/variant]`: the first entry whose platform
/// matches (and its variant, when one is named). Digests are untrusted input: invalid ones are
/// skipped.
pub fn platform_child(body: &[u8], platform: &str) -> Option<wharf_storage::Digest> {
    let mut want = platform.split('/');
    let (os, arch, variant) = (want.next()?, want.next()?, want.next());
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    descriptors(&doc)
        .filter(|(role, _)| *role == Role::Manifest)
        .filter(|(_, d)| {
            let p = &d["platform"];
            p["os"].as_str() == Some(os)
                && p["architecture"].as_str() == Some(arch)
                && variant.is_none_or(|v| p["variant"].as_str() == Some(v))
        })
        .find_map(|(role, d)| valid_digest(role, d))
}

/// The media type of a stored manifest whose index record lacks one (rebuilt by fsck).
pub fn media_type_of_stored(body: &[u8]) -> String {
    check(body, None).unwrap_or_else(|_| OCI_MANIFEST.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_are_types_without_parameters_and_wildcards_take_anything() {
        assert_eq!(accepted(std::iter::empty()), None);
        assert_eq!(
            accepted(
                [
                    "application/vnd.docker.distribution.manifest.v2+json; q=0.9",
                    "Application/JSON, ",
                ]
                .into_iter()
            ),
            Some(vec![
                DOCKER_MANIFEST.to_string(),
                "application/json".to_string()
            ])
        );
        assert_eq!(accepted([DOCKER_MANIFEST, "*/*"].into_iter()), None);
    }

    #[test]
    fn an_index_child_is_picked_by_platform_and_variant() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let doc = format!(
            r#"{{"manifests":[
              {{"digest":"{}","platform":{{"os":"unknown","architecture":"unknown"}}}},
              {{"digest":"{}","platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
              {{"digest":"{}","platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"digest":"not-a-digest","platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"digest":"{}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('d')
        );
        let pick = |p: &str| platform_child(doc.as_bytes(), p).map(|x| x.to_string());
        assert_eq!(pick("linux/amd64"), Some(d('d')));
        assert_eq!(pick("linux/arm/v7"), Some(d('c')));
        assert_eq!(pick("linux/arm"), Some(d('b')));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("linux"), None);
    }

    #[test]
    fn media_type_comes_from_header_or_document() {
        let doc = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[]}}"#);
        assert_eq!(
            check(doc.as_bytes(), Some(DOCKER_MANIFEST)).unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(check(doc.as_bytes(), None).unwrap(), DOCKER_MANIFEST);
        assert_eq!(
            check(doc.as_bytes(), Some("application/json")).unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(check(br#"{"manifests":[]}"#, None).unwrap(), OCI_INDEX);
        assert_eq!(
            check(
                br#"{"layers":[]}"#,
                Some("application/vnd.oci.image.manifest.v1+json; charset=x")
            )
            .unwrap(),
            OCI_MANIFEST
        );
    }

    #[test]
    fn children_are_config_layers_and_child_manifests() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let doc = format!(
            r#"{{"config":{{"digest":"{d1}"}},"layers":[{{"digest":"{d2}"}},{{"digest":"sha256:bad"}}]}}"#
        );
        let c = children(doc.as_bytes());
        assert_eq!(c.len(), 2);
        assert!(children(b"not json").is_empty());
    }

    #[test]
    fn contents_leave_out_the_subject_and_keep_declared_sizes() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let doc = format!(
            r#"{{"subject":{{"digest":"{}"}},"config":{{"digest":"{}","size":3}},"blobs":[{{"digest":"{}"}}]}}"#,
            d('1'),
            d('2'),
            d('3')
        );
        let digest = |c| wharf_storage::Digest::parse(&d(c)).unwrap();
        assert_eq!(
            contents(doc.as_bytes()),
            [(digest('2'), Some(3)), (digest('3'), None)]
        );
        assert_eq!(children(doc.as_bytes()).len(), 3);
    }

    #[test]
    fn confused_or_broken_manifests_are_refused() {
        let doc = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(check(doc.as_bytes(), Some(OCI_MANIFEST)).is_err());
        assert!(check(br#"{"layers":[],"manifests":[]}"#, None).is_err());
        assert!(check(b"not json", None).is_err());
        assert!(check(b"[1,2]", None).is_err());
        assert!(check(br#"{"mediaType":5}"#, None).is_err());
        for bad in ["text/html", "", "a\r\nX-Evil: 1", "no-slash"] {
            let doc = serde_json::json!({"mediaType": bad, "layers": []}).to_string();
            assert!(
                check(doc.as_bytes(), Some("application/json")).is_err(),
                "{bad:?}"
            );
        }
    }
}
