//! The egress policy: which hosts wharf may contact. Every outbound request (registry, token
//! realm, every redirect hop) is checked here before a connection is made. The policy only
//! decides; the client in `upstream::client` enforces it.

use reqwest::Url;

/// One entry of `egress.allow`: an exact host or `*.suffix` (subdomains only, not the apex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let raw = text.trim();
        let bracketed = raw.starts_with('[') && raw.ends_with(']');
        if raw.contains(['/', '@', ' ', '?', '#']) || (raw.contains(':') && !bracketed) {
            return Err("write a bare host name (no scheme, port or path)".into());
        }
        let t = normalize_host(raw);
        if let Some(rest) = t.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err("a wildcard must be a leading \"*.\" followed by a domain".into());
            }
            return Ok(HostPattern::Suffix(rest.to_string()));
        }
        if t.is_empty() || t == "*" {
            return Err("empty host".into());
        }
        if t.contains('*') {
            return Err("only a leading \"*.\" wildcard is allowed".into());
        }
        Ok(HostPattern::Exact(t))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => {
                host.len() > s.len() + 1
                    && host.ends_with(s.as_str())
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
            }
        }
    }
}

/// Lower-case, trailing dot stripped, IDNA (Punycode) applied the way URLs are parsed.
fn normalize_host(text: &str) -> String {
    let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
    match t.strip_prefix("*.") {
        Some(rest) => format!("*.{}", idna(rest)),
        None => idna(&t),
    }
}

fn idna(host: &str) -> String {
    if host.is_empty() || host.contains('*') {
        return host.to_string();
    }
    match Url::parse(&format!("http://{host}/")) {
        Ok(u) => u.host_str().unwrap_or(host).to_string(),
        Err(_) => host.to_string(),
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    #[error(
        "egress to host {host:?} is not allowed; add it to egress.allow in the config if wharf should contact it"
    )]
    HostNotAllowed { host: String },
    #[error("egress to {url} refused: only http and https URLs with a host are fetched")]
    BadUrl { url: String },
}

#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allow: Vec<HostPattern>,
}

impl EgressPolicy {
    pub fn new(allow: &[String]) -> Result<EgressPolicy, String> {
        let allow = allow
            .iter()
            .map(|p| HostPattern::parse(p).map_err(|e| format!("egress.allow {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy { allow })
    }

    /// Decides whether `url` may be fetched.
    pub fn check(&self, url: &Url) -> Result<(), EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::BadUrl { url: redact(url) });
        }
        let Some(host) = url.host_str() else {
            return Err(EgressError::BadUrl { url: redact(url) });
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if self.allow.iter().any(|p| match p {
            HostPattern::Exact(h) => h.trim_start_matches('[').trim_end_matches(']') == host,
            HostPattern::Suffix(_) => p.matches(host),
        }) {
            Ok(())
        } else {
            Err(EgressError::HostNotAllowed {
                host: host.to_string(),
            })
        }
    }
}

/// A URL safe to log: no userinfo, no query (signed CDN URLs carry credentials there).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.query().is_some() {
        u.set_query(Some("REDACTED"));
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn allowed(p: &EgressPolicy, url: &str) -> bool {
        p.check(&Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn exact_hosts_match_case_and_trailing_dot_insensitively() {
        let p = policy(&["Registry-1.Docker.IO."]);
        assert!(allowed(&p, "https://registry-1.docker.io/v2/"));
        assert!(allowed(&p, "https://REGISTRY-1.docker.io./v2/"));
        assert!(!allowed(&p, "https://docker.io/v2/"));
        assert!(!allowed(&p, "https://registry-1.docker.io.evil.com/v2/"));
    }

    #[test]
    fn wildcards_match_subdomains_but_not_the_apex() {
        let p = policy(&["*.r2.cloudflarestorage.com"]);
        assert!(allowed(&p, "https://abc.r2.cloudflarestorage.com/x"));
        assert!(allowed(&p, "https://a.b.r2.cloudflarestorage.com/x"));
        assert!(!allowed(&p, "https://r2.cloudflarestorage.com/x"));
        assert!(!allowed(&p, "https://evilr2.cloudflarestorage.com/x"));
    }

    #[test]
    fn unicode_hosts_are_compared_as_punycode() {
        let p = policy(&["bücher.example"]);
        assert!(allowed(&p, "https://xn--bcher-kva.example/"));
        let p = policy(&["*.bücher.example"]);
        assert!(allowed(&p, "https://a.xn--bcher-kva.example/"));
    }

    #[test]
    fn ip_literals_must_be_listed_exactly() {
        let p = policy(&["127.0.0.1", "[::1]"]);
        assert!(allowed(&p, "http://127.0.0.1:8080/"));
        assert!(allowed(&p, "http://[::1]:8080/"));
        assert!(!allowed(&p, "http://127.0.0.2/"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in [
            "",
            "*.",
            "a.*.com",
            "*com",
            "https://x.com",
            "x.com/path",
            "x.com:443",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusal_names_the_host_and_the_key() {
        let p = policy(&["a.example"]);
        let e = p
            .check(&Url::parse("https://b.example/x").unwrap())
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("b.example") && msg.contains("egress.allow"),
            "{msg}"
        );
    }

    #[test]
    fn redaction_drops_userinfo_and_query() {
        let u = Url::parse("https://user:pw@cdn.example/blob?X-Amz-Signature=abc").unwrap();
        let r = redact(&u);
        assert!(
            !r.contains("pw") && !r.contains("abc") && !r.contains("user"),
            "{r}"
        );
    }
}
