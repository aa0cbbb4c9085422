//! `registry::manifest::check` on arbitrary bodies and `Content-Type` values. The first byte picks
//! the header (none, a manifest type, a generic type, or the text up to the first newline); the
//! rest is the body. Checks, beyond "no panic": an accepted document is a JSON object without both
//! `layers` and `manifests`, and the served type equals its `mediaType` whenever it declares one;
//! `children` (the digests the garbage collector keeps) yields only valid digests.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::manifest::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use wharf_storage::Digest;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixed = [
        None,
        Some(OCI_MANIFEST),
        Some(OCI_INDEX),
        Some(DOCKER_MANIFEST),
        Some(DOCKER_LIST),
        Some("application/json"),
        Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    ];
    let (content_type, body) = match fixed.get(usize::from(selector % 8)) {
        Some(ct) => (ct.map(str::to_string), rest),
        None => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let ct = String::from_utf8_lossy(&rest[..end]).into_owned();
            (Some(ct), rest.get(end + 1..).unwrap_or(&[]))
        }
    };
    for child in manifest::children(body) {
        assert_eq!(Digest::parse(child.as_str()).as_ref(), Ok(&child));
    }
    let result = manifest::check(body, content_type.as_deref());
    let _ = manifest::media_type_of_stored(body);
    let Ok(served) = result else {
        return;
    };
    let doc: serde_json::Value = serde_json::from_slice(body).expect("accepted body is JSON");
    let obj = doc.as_object().expect("accepted body is an object");
    assert!(!(obj.contains_key("layers") && obj.contains_key("manifests")));
    match obj.get("mediaType") {
        Some(serde_json::Value::String(declared)) => assert_eq!(&served, declared),
        Some(other) => panic!("non-string mediaType {other:?} accepted"),
        None => {}
    }
});
