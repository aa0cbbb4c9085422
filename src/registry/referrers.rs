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
use std::sync::atomic::Ordering;

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

/// Every referrer of `subject` in `t`'s repository, unfiltered. A list is kept (for the tag
/// TTL, then revalidated) only for a manifest this cache holds, so asking about arbitrary
/// digests stores nothing; that the upstream has no API is remembered per upstream.
async fn list(app: &Registry, t: &Target, subject: &Digest) -> Result<(Vec<Referrer>, Outcome)> {
    let index = &app.storage.index;
    let (up, repo) = (t.up.name.as_str(), t.name.as_str());
    let now = unix_now();
    let ttl = tag_ttl(app, t);
    let no_api = t.up.no_referrers_api.load(Ordering::Relaxed);
    if no_api != 0 && now.saturating_sub(no_api) < ttl.as_secs() {
        return from_fallback_or_empty(app, t, subject, Outcome::Hit).await;
    }
    let cached = index
        .get_referrers(up, repo, subject)
        .map_err(internal)?
        .map(|rec| Cached {
            learned_unix: rec.fetched_unix,
            value: rec.referrers,
        });
    let keep = index.get_blob(subject).map_err(internal)?.is_some();
    let fetch = async {
        let referrers = from_api(app, t, subject).await?;
        if keep {
            let rec = ReferrersRecord {
                referrers: referrers.clone(),
                fetched_unix: now,
            };
            index
                .put_referrers(up, repo, subject, &rec)
                .map_err(|e| Miss::Local(internal(e)))?;
        }
        Ok((referrers, Outcome::Miss))
    };
    let key = format!("{up}/{repo} referrers of {subject}");
    let stale_if = |e: &Miss| e.serves_stale(&app.config.registry.serve_stale_on);
    let what = format!("referrers of {subject}");
    match revalidate(&key, cached, Some(ttl), now, fetch, stale_if).await {
        Ok(answer) => Ok(answer),
        // No referrers API here (a supporting registry never answers 404): the fallback tag.
        Err(Miss::NotFound) => {
            t.up.no_referrers_api.store(now.max(1), Ordering::Relaxed);
            from_fallback_or_empty(app, t, subject, Outcome::Miss).await
        }
        // Nothing kept and the upstream unreachable (or offline): a cached fallback tag still
        // answers.
        Err(Miss::Failed(e)) => match from_fallback_tag(app, t, subject).await {
            Ok(Some(answer)) => Ok(answer),
            _ => Err(Miss::Failed(e).into_error(t, &what, ErrorCode::ManifestUnknown)),
        },
        Err(m) => Err(m.into_error(t, &what, ErrorCode::ManifestUnknown)),
    }
}

async fn from_fallback_or_empty(
    app: &Registry,
    t: &Target,
    subject: &Digest,
    outcome: Outcome,
) -> Result<(Vec<Referrer>, Outcome)> {
    Ok(from_fallback_tag(app, t, subject)
        .await?
        .unwrap_or((Vec::new(), outcome)))
}

/// The upstream's referrers API, every page (`Link` on the same list only, each page once),
/// without duplicates. `Miss::NotFound`: it has no such API (a 404 for the first page).
async fn from_api(
    app: &Registry,
    t: &Target,
    subject: &Digest,
) -> std::result::Result<Vec<Referrer>, Miss> {
    let limit = usize::try_from(app.config.registry.max_manifest_size.0).unwrap_or(usize::MAX);
    let first = format!("/v2/{}/referrers/{subject}", t.name);
    let mut path = first.clone();
    let mut all: Vec<Referrer> = Vec::new();
    let mut read = 0usize;
    let mut seen = std::collections::HashSet::new();
    let mut list_path: Option<String> = None;
    for page in 0..MAX_PAGES {
        let headers = accept_headers(&[manifest::OCI_INDEX]);
        let resp =
            t.up.send_with(http::Method::GET, &path, headers, &t.scope())
                .await?;
        match classify(resp.status()) {
            Err(Miss::NotFound) if page > 0 => {
                return Err(Miss::Failed(UpstreamError::Protocol(format!(
                    "page {} of the referrers list of {subject} is gone",
                    page + 1
                ))));
            }
            other => other?,
        }
        // The list's own path as the upstream sees it (a base path included).
        let own = list_path
            .get_or_insert_with(|| resp.url().path().to_string())
            .clone();
        let next = next_page(resp.headers(), resp.url(), &own);
        let url = resp.url().clone();
        let body = read_limited(resp, limit.saturating_sub(read), &url).await?;
        read += body.len();
        let entries = parse_list(&body).map_err(|e| {
            Miss::Failed(UpstreamError::Protocol(format!(
                "the referrers list of {subject} is not an OCI index: {e}"
            )))
        })?;
        for r in entries {
            if !all.iter().any(|a| a.digest == r.digest) {
                all.push(r);
            }
        }
        match next.filter(|q| seen.insert(q.clone())) {
            Some(query) => path = format!("{first}?{query}"),
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

/// The query of the next page of a paginated list: a `Link: <...>; rel="next"` that resolves,
/// against the page's URL, to the same origin and exactly the same list path `own` (dot
/// segments and encodings normalised first); anything else is not followed.
fn next_page(h: &http::HeaderMap, page: &reqwest::Url, own: &str) -> Option<String> {
    let link = h.get(header::LINK)?.to_str().ok()?;
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    let next = page.join(target).ok()?;
    let same_origin = next.scheme() == page.scheme()
        && next.host_str() == page.host_str()
        && next.port_or_known_default() == page.port_or_known_default();
    (same_origin && next.path() == own)
        .then(|| next.query().map(str::to_string))
        .flatten()
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
        let page_url =
            reqwest::Url::parse(&format!("http://up.test:5000/base/v2/a/b/referrers/{D}")).unwrap();
        let own = page_url.path().to_string();
        let page = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::LINK, v.parse().unwrap());
            next_page(&h, &page_url, &own)
        };
        let p = format!("/base/v2/a/b/referrers/{D}?n=1&last=x");
        assert_eq!(
            page(&format!("<{p}>; rel=\"next\"")).as_deref(),
            Some("n=1&last=x")
        );
        assert_eq!(
            page("<?n=2>; rel=\"next\"").as_deref(),
            Some("n=2"),
            "relative"
        );
        assert_eq!(page(&format!("<{p}>; rel=\"prev\"")), None);
        for hostile in [
            format!("<https://elsewhere.example{p}>; rel=\"next\""),
            format!("<http://up.test:5001{p}>; rel=\"next\""),
            format!(
                "</base/v2/a/b/referrers/{D}/../../../../secret/repo/referrers/{D}?x=1>; rel=\"next\""
            ),
            "</base/v2/a/b/referrers/%2e%2e/x?x=1>; rel=\"next\"".to_string(),
            "</base/v2/a/b/referrers/sha256:0000?x=1>; rel=\"next\"".to_string(),
            "</admin/gc?x=1>; rel=\"next\"".to_string(),
            format!("</base/v2/a/b/referrers/{D}>; rel=\"next\""),
        ] {
            assert_eq!(page(&hostile), None, "{hostile}");
        }
    }
}
