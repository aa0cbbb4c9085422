//! Client access control, off by default: a client address allowlist, HTTP basic auth against
//! argon2 password hashes, static bearer tokens (stored as SHA-256), and rules that require
//! authentication per protocol and path prefix. Refusals are rendered in each protocol's own
//! error format by the middleware in `app`.
//!
//! Empty or blank passwords and tokens are refused before anything is hashed, whatever the HTTP
//! version: hyper trims the trailing space of an HTTP/1 `Authorization: Bearer ` but passes it
//! through in HTTP/2, where it used to leave an empty token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::upstream::egress::Cidr;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Client address ranges allowed at all; empty means every client.
    pub allow_clients: Vec<String>,
    /// Require authentication for every request (except `/healthz`).
    pub require_auth: bool,
    /// The realm named in `WWW-Authenticate: Basic realm=...`.
    pub realm: String,
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    #[serde(rename = "token")]
    pub tokens: Vec<TokenConfig>,
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            allow_clients: Vec::new(),
            require_auth: false,
            realm: "wharf".into(),
            users: Vec::new(),
            tokens: Vec::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An argon2 PHC string from `wharf hash-password`.
    pub password_hash: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A label for logs.
    pub name: String,
    /// SHA-256 of the token, lower-case hex (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `registry` (paths under /v2/) or `go` (paths under /go/).
    pub protocol: Protocol,
    /// A prefix of the path after `/v2/` or `/go/`, as clients send it (Go paths case-escaped).
    pub prefix: String,
    pub require_auth: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Registry,
    Go,
}

impl Protocol {
    pub fn of_path(path: &str) -> Option<(Protocol, &str)> {
        if let Some(rest) = path.strip_prefix("/v2/") {
            Some((Protocol::Registry, rest))
        } else if path == "/v2" {
            Some((Protocol::Registry, ""))
        } else {
            path.strip_prefix("/go/").map(|rest| (Protocol::Go, rest))
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The client address is not in `access.allow_clients`: 403.
    Address,
    /// No or wrong credentials where they are required: 401 with a challenge.
    Unauthorized(&'static str),
}

/// `verify`'s answer for empty basic credentials: treated as no credentials at all.
const ANONYMOUS: &str = "anonymous";

/// Most remembered successful password checks (argon2 is slow on purpose; Docker sends basic
/// auth on every request).
const MAX_VERIFIED: usize = 4096;

pub struct AccessControl {
    allow_clients: Vec<Cidr>,
    require_auth: bool,
    pub realm: String,
    users: HashMap<String, String>,
    tokens: Vec<[u8; 32]>,
    rules: Vec<RuleConfig>,
    /// SHA-256 of `user:password` strings that verified.
    verified: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl AccessControl {
    /// `upstreams` are the registry upstream names and `default` the default one: a registry
    /// rule prefix that does not start with an upstream name is taken to be on the default.
    pub fn new(
        cfg: &AccessConfig,
        upstreams: &[&str],
        default: &str,
    ) -> Result<AccessControl, String> {
        let allow_clients = cfg
            .allow_clients
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("access.allow_clients {c:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let mut users = HashMap::new();
        for u in &cfg.users {
            if u.name.trim().is_empty() || u.name.contains(':') {
                return Err(format!(
                    "access.user {:?}: name must not be blank or contain ':' (basic auth could not carry it)",
                    u.name
                ));
            }
            argon2::password_hash::phc::PasswordHash::new(&u.password_hash).map_err(|e| {
                format!("access.user {:?}: password_hash is not a PHC string from `wharf hash-password`: {e}", u.name)
            })?;
            if users
                .insert(u.name.clone(), u.password_hash.clone())
                .is_some()
            {
                return Err(format!("access.user {:?} appears twice", u.name));
            }
        }
        let empty: [u8; 32] = Sha256::digest(b"").into();
        let tokens = cfg
            .tokens
            .iter()
            .map(|t| {
                let bytes = hex::decode(t.sha256.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        format!("access.token {:?}: sha256 must be 64 hex digits", t.name)
                    })?;
                if bytes == empty {
                    return Err(format!(
                        "access.token {:?}: sha256 is the SHA-256 of the empty string, a token \
                         no client may use; set it to `printf %s \"$TOKEN\" | sha256sum` of a real token",
                        t.name
                    ));
                }
                Ok(bytes)
            })
            .collect::<Result<_, String>>()?;
        Ok(AccessControl {
            allow_clients,
            require_auth: cfg.require_auth,
            realm: cfg.realm.clone(),
            users,
            tokens,
            rules: cfg
                .rules
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    let first = r.prefix.split('/').next().unwrap_or("");
                    if r.protocol == Protocol::Registry
                        && !r.prefix.is_empty()
                        && !upstreams.contains(&first)
                    {
                        r.prefix = format!("{default}/{}", r.prefix);
                    }
                    r
                })
                .collect(),
            verified: Mutex::new(Default::default()),
        })
    }

    /// Whether any check is configured at all (the fast path skips everything otherwise).
    pub fn is_open(&self) -> bool {
        self.allow_clients.is_empty()
            && !self.require_auth
            && self.rules.is_empty()
            && self.users.is_empty()
            && self.tokens.is_empty()
    }

    pub fn check(
        &self,
        peer: Option<IpAddr>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        if !self.allow_clients.is_empty() {
            let ok = peer.is_some_and(|ip| self.allow_clients.iter().any(|c| c.contains(ip)));
            if !ok {
                return Err(Denied::Address);
            }
        }
        let authenticated = match headers.get(http::header::AUTHORIZATION) {
            None => false,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| Denied::Unauthorized("malformed Authorization header"))?;
                // Credentials that are sent must be right, even where none are required.
                match self.verify(v) {
                    Ok(()) => true,
                    Err(ANONYMOUS) => false,
                    Err(why) => return Err(Denied::Unauthorized(why)),
                }
            }
        };
        if authenticated || !self.requires_auth(path) {
            Ok(())
        } else {
            Err(Denied::Unauthorized("authentication required"))
        }
    }

    fn requires_auth(&self, path: &str) -> bool {
        if self.require_auth {
            return true;
        }
        let Some((proto, rest)) = Protocol::of_path(path) else {
            return false;
        };
        // The most specific (longest) matching prefix decides.
        self.rules
            .iter()
            .filter(|r| r.protocol == proto && rest.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .is_some_and(|r| r.require_auth)
            // /v2/ itself must challenge when any registry rule needs auth, so `docker login` works.
            || (proto == Protocol::Registry && rest.is_empty() && self.rules.iter().any(|r| r.protocol == proto && r.require_auth))
    }

    fn verify(&self, header: &str) -> Result<(), &'static str> {
        let header = header.trim();
        let (scheme, value) = match header.split_once([' ', '\t']) {
            Some((scheme, value)) => (scheme, value.trim()),
            None => (header, ""),
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if value.is_empty() {
                return Err("empty token");
            }
            let h: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            // Every configured token is compared, so the time does not tell which one matched.
            let matched = self
                .tokens
                .iter()
                .fold(false, |m, t| m | constant_time_eq(t, &h));
            return if matched {
                Ok(())
            } else {
                Err("invalid token")
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(if scheme.is_empty() {
                "malformed Authorization header"
            } else {
                "unsupported authorization scheme"
            });
        }
        let raw = base64_decode(value).ok_or("malformed basic credentials")?;
        let text = String::from_utf8(raw).map_err(|_| "malformed basic credentials")?;
        let (user, password) = text.split_once(':').ok_or("malformed basic credentials")?;
        if user.is_empty() && password.is_empty() {
            // containers/image sends `Basic Og==` (":") once a registry has challenged: that
            // is an anonymous client, not a wrong password.
            return Err(ANONYMOUS);
        }
        if password.trim().is_empty() {
            return Err("empty password");
        }
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        let hash = self.users.get(user).ok_or("invalid user or password")?;
        use argon2::password_hash::PasswordVerifier;
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .map_err(|_| "invalid user or password")?;
        let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= MAX_VERIFIED {
            v.clear();
        }
        v.insert(key);
        Ok(())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// An argon2id PHC string for `password`, for `access.user.password_hash`. Empty and blank
/// passwords are refused: wharf never accepts them.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    if password.trim().is_empty() {
        return Err("the password is empty or blank".into());
    }
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pw: &str) -> HeaderMap {
        use base64::Engine as _;
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {v}").parse().unwrap(),
        );
        h
    }

    fn control(extra: impl FnOnce(&mut AccessConfig)) -> AccessControl {
        let mut cfg = AccessConfig::default();
        cfg.users.push(UserConfig {
            name: "ci".into(),
            password_hash: hash_password("s3cret").unwrap(),
        });
        cfg.tokens.push(TokenConfig {
            name: "farm".into(),
            sha256: hex::encode(Sha256::digest(b"tok")),
        });
        extra(&mut cfg);
        AccessControl::new(&cfg, &["docker.io"], "docker.io").unwrap()
    }

    #[test]
    fn passwords_and_tokens_are_checked() {
        let a = control(|c| c.require_auth = true);
        assert_eq!(
            a.check(None, "/v2/x/manifests/1", &HeaderMap::new()),
            Err(Denied::Unauthorized("authentication required"))
        );
        assert!(a.check(None, "/v2/", &basic("ci", "s3cret")).is_ok());
        assert!(
            a.check(None, "/v2/", &basic("ci", "s3cret")).is_ok(),
            "cached"
        );
        assert_eq!(
            a.check(None, "/v2/", &basic("ci", "wrong")),
            Err(Denied::Unauthorized("invalid user or password"))
        );
        assert!(a.check(None, "/v2/", &basic("nobody", "s3cret")).is_err());
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(a.check(None, "/go/x.com/@v/list", &h).is_ok());
        h.insert(http::header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(a.check(None, "/go/x.com/@v/list", &h).is_err());
    }

    #[test]
    fn blank_tokens_and_passwords_are_refused() {
        let a = control(|_| {});
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer \t ",
            "bearer\t",
            "Basic",
            "Basic  ",
        ] {
            let mut h = HeaderMap::new();
            // What an HTTP/2 client can send: the value exactly, trailing blanks included.
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).unwrap(),
            );
            assert!(
                matches!(a.check(None, "/v2/", &h), Err(Denied::Unauthorized(_))),
                "{value:?}"
            );
        }
        for pw in ["", " ", "\t \t"] {
            assert_eq!(
                a.check(None, "/v2/", &basic("ci", pw)),
                Err(Denied::Unauthorized("empty password")),
                "{pw:?}"
            );
        }
        assert!(hash_password("").is_err());
        assert!(hash_password(" \t").is_err());
    }

    #[test]
    fn token_hash_of_the_empty_string_is_refused_with_its_name() {
        let mut cfg = AccessConfig::default();
        cfg.tokens.push(TokenConfig {
            name: "build-farm".into(),
            sha256: "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855".into(),
        });
        let e = AccessControl::new(&cfg, &["docker.io"], "docker.io")
            .err()
            .expect("refused");
        assert!(e.contains("access.token \"build-farm\": sha256"), "{e}");
        assert!(e.contains("empty string"), "{e}");
    }

    #[test]
    fn user_names_must_fit_basic_auth() {
        let hash = hash_password("x").unwrap();
        for name in ["", " ", "a:b"] {
            let mut cfg = AccessConfig::default();
            cfg.users.push(UserConfig {
                name: name.into(),
                password_hash: hash.clone(),
            });
            assert!(
                AccessControl::new(&cfg, &["docker.io"], "docker.io").is_err(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn rules_protect_prefixes_per_protocol() {
        let a = control(|c| {
            c.rules.push(RuleConfig {
                protocol: Protocol::Go,
                prefix: "corp.example.com/".into(),
                require_auth: true,
            });
        });
        let none = HeaderMap::new();
        assert!(
            a.check(None, "/go/golang.org/x/text/@v/list", &none)
                .is_ok()
        );
        assert!(
            a.check(None, "/go/corp.example.com/tool/@v/list", &none)
                .is_err()
        );
        assert!(
            a.check(
                None,
                "/go/corp.example.com/tool/@v/list",
                &basic("ci", "s3cret")
            )
            .is_ok()
        );
        assert!(
            a.check(None, "/v2/corp.example.com/x/manifests/1", &none)
                .is_ok(),
            "rules are per protocol"
        );
        let mut anon = HeaderMap::new();
        anon.insert(http::header::AUTHORIZATION, "Basic Og==".parse().unwrap());
        assert!(
            a.check(None, "/go/golang.org/x/text/@v/list", &anon)
                .is_ok(),
            "empty basic is anonymous"
        );
        assert!(
            a.check(None, "/go/corp.example.com/tool/@v/list", &anon)
                .is_err()
        );
    }

    #[test]
    fn registry_rules_without_an_upstream_are_on_the_default_one() {
        let mut cfg = AccessConfig::default();
        cfg.rules.push(RuleConfig {
            protocol: Protocol::Registry,
            prefix: "private/".into(),
            require_auth: true,
        });
        let a = AccessControl::new(&cfg, &["hub.test", "ghcr.io"], "hub.test").unwrap();
        let none = HeaderMap::new();
        assert!(a.check(None, "/v2/hub.test/private/app/", &none).is_err());
        assert!(a.check(None, "/v2/hub.test/public/app/", &none).is_ok());
        assert!(a.check(None, "/v2/ghcr.io/private/app/", &none).is_ok());
    }

    #[test]
    fn client_ranges_are_enforced() {
        let a = control(|c| c.allow_clients.push("10.0.0.0/8".into()));
        let none = HeaderMap::new();
        assert!(
            a.check(Some("10.1.2.3".parse().unwrap()), "/v2/", &none)
                .is_ok()
        );
        assert_eq!(
            a.check(Some("192.168.1.1".parse().unwrap()), "/v2/", &none),
            Err(Denied::Address)
        );
        assert_eq!(a.check(None, "/v2/", &none), Err(Denied::Address));
    }
}
