//! Manifest checks before anything is stored: size cap, JSON shape, and the media type agreeing
//! between `Content-Type` and the document (CVE-2021-41190 type confusion). Bytes are never
//! rewritten.

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

/// The blobs a manifest refers to: its config and layers, or an index's child manifests (and a
/// `subject`). Digests inside a manifest are untrusted input: invalid ones are skipped.
pub fn children(body: &[u8]) -> Vec<wharf_storage::Digest> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |v: &serde_json::Value| {
        if let Some(d) = v.get("digest").and_then(|d| d.as_str())
            && let Ok(d) = wharf_storage::Digest::parse(d)
        {
            out.push(d);
        }
    };
    for key in ["config", "subject"] {
        if let Some(v) = doc.get(key) {
            push(v);
        }
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(arr) = doc.get(key).and_then(|a| a.as_array()) {
            arr.iter().for_each(&mut push);
        }
    }
    out
}

/// What a manifest holds, for visibility: its config and layers (with the sizes it declares),
/// or an index's child manifests. Not its `subject`: that is a pointer to another manifest,
/// which a repository may not hold. Invalid digests are skipped.
pub fn contents(body: &[u8]) -> Vec<(wharf_storage::Digest, Option<u64>)> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |v: &serde_json::Value| {
        if let Some(d) = v.get("digest").and_then(|d| d.as_str())
            && let Ok(d) = wharf_storage::Digest::parse(d)
        {
            out.push((d, v.get("size").and_then(|s| s.as_u64())));
        }
    };
    if let Some(v) = doc.get("config") {
        push(v);
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(arr) = doc.get(key).and_then(|a| a.as_array()) {
            arr.iter().for_each(&mut push);
        }
    }
    out
}

/// The media type of a stored manifest whose index record lacks one (rebuilt by fsck).
pub fn media_type_of_stored(body: &[u8]) -> String {
    check(body, None).unwrap_or_else(|_| OCI_MANIFEST.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
