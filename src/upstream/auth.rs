//! Registry token auth, client side: the `WWW-Authenticate` challenge parser and the token
//! response. Fetching and caching tokens is the client's job (`upstream::client`); this module
//! is pure parsing so it can be table-tested and fuzzed.

use std::time::Duration;

use serde::Deserialize;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer(BearerChallenge),
    Basic { realm: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses one challenge (`Bearer realm="...",service="...",scope="..."` or `Basic realm=...`).
/// Returns `None` for anything else or anything malformed; never panics.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        let realm = get("realm").filter(|r| !r.is_empty())?;
        Some(Challenge::Bearer(BearerChallenge {
            realm,
            service: get("service"),
            scope: get("scope"),
        }))
    } else if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic {
            realm: get("realm"),
        })
    } else {
        None
    }
}

/// `name=value` or `name="quoted \" value"` pairs separated by commas.
fn parse_params(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return None;
        }
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(body) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = body.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            s = &body[end?..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        out.push((name.to_string(), value));
        if out.len() > 32 {
            return None;
        }
    }
}

/// The token service's answer; `token` and `access_token` are equivalent.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn token(&self) -> Option<&str> {
        self.token
            .as_deref()
            .or(self.access_token.as_deref())
            .filter(|t| !t.is_empty())
    }

    /// How long to reuse the token: the spec's default of 60 s when absent, minus a little skew.
    pub fn lifetime(&self) -> Duration {
        let secs = self.expires_in.unwrap_or(60).clamp(1, 24 * 3600);
        Duration::from_secs(secs.saturating_sub(secs.min(10) / 2).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge_parses() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }))
        );
    }

    #[test]
    fn quoted_commas_and_escapes_survive() {
        let c = parse_challenge(
            r#"bearer realm="https://a/t",scope="repository:x:pull,push", error="in\"valid""#,
        );
        let Some(Challenge::Bearer(b)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(b.scope.as_deref(), Some("repository:x:pull,push"));
    }

    #[test]
    fn basic_and_garbage() {
        assert_eq!(
            parse_challenge(r#"Basic realm="wharf""#),
            Some(Challenge::Basic {
                realm: Some("wharf".into())
            })
        );
        for bad in [
            "",
            "Bearer",
            "Bearer service=x",
            "Bearer realm=\"unterminated",
            "Negotiate abc",
            "Bearer =x",
            "Bearer realm=\"a\\",
        ] {
            assert!(
                !matches!(parse_challenge(bad), Some(Challenge::Bearer(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_lifetime_defaults_to_sixty_seconds() {
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"x"}"#).unwrap();
        assert_eq!(t.token(), Some("x"));
        assert!(t.lifetime() <= Duration::from_secs(60) && t.lifetime() >= Duration::from_secs(50));
    }
}
