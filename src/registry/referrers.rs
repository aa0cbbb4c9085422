//! OCI 1.1 referrers: `GET /v2/<name>/referrers/<digest>[?artifactType=]`, the signatures, SBOMs
//! and attestations whose `subject` is a manifest. Answered from the upstream's referrers API
//! when it has one (cached per upstream and repository for the tag TTL, stale on failure like a
//! tag); when it has none (it answers 404, which the spec forbids a supporting registry), from
//! the fallback tag `sha256-<hex>` the spec defines, fetched and verified like any tag. Neither:
//! an empty index, never a 404. The list is parsed into descriptors before it is stored or
//! served; each referrer is a manifest fetched, verified and checked for visibility like any
//! other when a client asks for it.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use wharf_storage::{Digest, Referrer, ReferrersRecord, unix_now};

use super::errors::{ErrorCode, RegistryError};
use super::handlers::{Miss, Target, classify, internal, manifest_by_tag, tag_ttl};
use super::manifest;
use super::routes::{Tag, query_param};
use super::service::Registry;
use crate::cache::{Cached, Outcome, revalidate};
use crate::upstream::UpstreamError;
use crate::upstream::client::{accept_headers, read_limited};

type Result<T> = std::result::Result<T, RegistryError>;

/// Pages of an upstream's referrers list followed through `Link` headers.
const MAX_PAGES: usize = 16;

/// The `sha256-<hex>` tag under which a registry without the API keeps a digest's referrers.
pub fn fallback_tag(subject: &Digest) -> String {
    subject.as_str().replacen(':', "-", 1)
}

pub(super) async fn referrers(
    app: &Registry,
    t: &Target,
    subject: &Digest,
    query: Option<&str>,
    head: bool,
) -> Result<Response> {
    let (list, outcome) = list(app, t, subject).await?;
    let filter = query_param(query, "artifactType").filter(|a| !a.is_empty());
    let list: Vec<&Referrer> = list
        .iter()
        .filter(|r| {
            filter
                .as_deref()
                .is_none_or(|a| r.artifact_type.as_deref() == Some(a))
        })
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": list,
    })
    .to_string();
    let len = body.len();
    let mut resp = if head {
        Body::empty()
    } else {
        Body::from(body)
    }
    .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(manifest::OCI_INDEX),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if filter.is_some() {
        h.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    outcome.mark(&mut resp);
    Ok(resp)
}

/// Every referrer of `subject` in `t`'s repository, unfiltered.
async fn list(app: &Registry, t: &Target, subject: &Digest) -> Result<(Vec<Referrer>, Outcome)> {
    let index = &app.storage.index;
    let (up, repo) = (t.up.name.as_str(), t.name.as_str());
    let cached = index
        .get_referrers(up, repo, subject)
        .map_err(internal)?
        .map(|rec| Cached {
            learned_unix: rec.fetched_unix,
            value: rec,
        });
    let now = unix_now();
    let fetch = async {
        let rec = match from_api(app, t, subject).await {
            Ok(referrers) => ReferrersRecord {
                referrers,
                fetched_unix: now,
                fallback: false,
            },
            // No referrers API here: remember that, and read the fallback tag.
            Err(Miss::NotFound) => ReferrersRecord {
                referrers: Vec::new(),
                fetched_unix: now,
                fallback: true,
            },
            Err(e) => return Err(e),
        };
        index
            .put_referrers(up, repo, subject, &rec)
            .map_err(|e| Miss::Local(internal(e)))?;
        Ok((rec, Outcome::Miss))
    };
    let key = format!("{up}/{repo} referrers of {subject}");
    let stale_if = |e: &Miss| e.serves_stale(&app.config.registry.serve_stale_on);
    let what = format!("referrers of {subject}");
    let (rec, outcome) =
        match revalidate(&key, cached, Some(tag_ttl(app, t)), now, fetch, stale_if).await {
            Ok(answer) => answer,
            // Nothing cached and the upstream unreachable (or offline): a fallback tag that is
            // cached still answers.
            Err(Miss::Failed(e)) => match from_fallback_tag(app, t, subject).await {
                Ok(Some(answer)) => return Ok(answer),
                _ => return Err(Miss::Failed(e).into_error(t, &what, ErrorCode::ManifestUnknown)),
            },
            Err(m) => return Err(m.into_error(t, &what, ErrorCode::ManifestUnknown)),
        };
    if !rec.fallback {
        return Ok((rec.referrers, outcome));
    }
    match from_fallback_tag(app, t, subject).await? {
        Some(answer) => Ok(answer),
        None => Ok((Vec::new(), outcome)),
    }
}

/// The upstream's referrers API, every page. `Miss::NotFound`: it has none.
async fn from_api(
    app: &Registry,
    t: &Target,
    subject: &Digest,
) -> std::result::Result<Vec<Referrer>, Miss> {
    let limit = usize::try_from(app.config.registry.max_manifest_size.0).unwrap_or(usize::MAX);
    let mut path = format!("/v2/{}/referrers/{subject}", t.name);
    let mut all = Vec::new();
    let mut read = 0usize;
    for _ in 0..MAX_PAGES {
        let headers = accept_headers(&[manifest::OCI_INDEX]);
        let resp =
            t.up.send_with(http::Method::GET, &path, headers, &t.scope())
                .await?;
        classify(resp.status())?;
        let next = next_page(resp.headers(), &t.name.to_string());
        let url = resp.url().clone();
        let body = read_limited(resp, limit.saturating_sub(read), &url).await?;
        read += body.len();
        all.extend(parse_list(&body).map_err(|e| {
            Miss::Failed(UpstreamError::Protocol(format!(
                "the referrers list of {subject} is not an OCI index: {e}"
            )))
        })?);
        match next {
            Some(p) => path = p,
            None => return Ok(all),
        }
    }
    tracing::warn!(upstream = %t.up.name, repo = %t.name, %subject,
        "the referrers list has more than {MAX_PAGES} pages; serving the first ones");
    Ok(all)
}

/// The fallback tag's index, if the upstream (or the cache) has it.
async fn from_fallback_tag(
    app: &Registry,
    t: &Target,
    subject: &Digest,
) -> Result<Option<(Vec<Referrer>, Outcome)>> {
    let Ok(tag) = Tag::parse(&fallback_tag(subject)) else {
        return Ok(None);
    };
    let (m, outcome) = match manifest_by_tag(app, t, &tag).await {
        Ok(answer) => answer,
        Err(e) if e.code == ErrorCode::ManifestUnknown || e.code == ErrorCode::NameUnknown => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    match parse_list(&m.body) {
        Ok(list) => Ok(Some((list, outcome))),
        Err(e) => {
            tracing::warn!(upstream = %t.up.name, repo = %t.name, tag = tag.as_str(),
                error = %e, "the referrers fallback tag is not an index; ignored");
            Ok(None)
        }
    }
}

/// The descriptors of an OCI index body; any entry that is not a descriptor refuses the whole.
fn parse_list(body: &[u8]) -> std::result::Result<Vec<Referrer>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Referrer>,
    }
    serde_json::from_slice::<Index>(body)
        .map(|i| i.manifests)
        .map_err(|e| e.to_string())
}

/// The next page of a paginated list: a `Link: <...>; rel="next"` on the same repository's
/// referrers path (anything else is not followed).
fn next_page(h: &http::HeaderMap, name: &str) -> Option<String> {
    let link = h.get(header::LINK)?.to_str().ok()?;
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    let path = match target.find("://") {
        // Absolute: only the path and query are used, against the same upstream.
        Some(i) => &target[target[i + 3..].find('/')? + i + 3..],
        None => target,
    };
    path.starts_with(&format!("/v2/{name}/referrers/"))
        .then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn the_fallback_tag_is_the_digest_with_a_dash() {
        let d = Digest::parse(D).unwrap();
        assert_eq!(fallback_tag(&d), format!("sha256-{}", &D[7..]));
        assert!(Tag::parse(&fallback_tag(&d)).is_ok());
    }

    #[test]
    fn a_list_entry_that_is_not_a_descriptor_refuses_the_list() {
        let good = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"m","digest":"{D}","size":3,"artifactType":"a"}}]}}"#
        );
        let list = parse_list(good.as_bytes()).unwrap();
        assert_eq!(list[0].artifact_type.as_deref(), Some("a"));
        assert_eq!(parse_list(br#"{"manifests":[]}"#).unwrap(), vec![]);
        for bad in [
            r#"{"manifests":[{"mediaType":"m","digest":"sha256:nothex","size":3}]}"#.to_string(),
            format!(r#"{{"manifests":[{{"mediaType":"m","digest":"{D}"}}]}}"#),
            format!(r#"{{"manifests":[{{"mediaType":"m","digest":"{D}","size":-1}}]}}"#),
            "not json".to_string(),
        ] {
            assert!(parse_list(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_next_pages_of_the_same_list_are_followed() {
        let page = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::LINK, v.parse().unwrap());
            next_page(&h, "a/b")
        };
        let p = format!("/v2/a/b/referrers/{D}?n=1&last=x");
        assert_eq!(page(&format!("<{p}>; rel=\"next\"")), Some(p.clone()));
        assert_eq!(
            page(&format!("<https://elsewhere.example{p}>; rel=\"next\"")),
            Some(p.clone())
        );
        assert_eq!(page(&format!("<{p}>; rel=\"prev\"")), None);
        assert_eq!(page("</v2/other/referrers/x>; rel=\"next\""), None);
        assert_eq!(page("</admin/gc>; rel=\"next\""), None);
    }
}
