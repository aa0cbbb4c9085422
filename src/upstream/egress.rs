//! The egress policy: which hosts wharf may contact, and which addresses. Two layers:
//! 1. the host allowlist, checked on the URL of every outbound request (registry, token realm,
//!    every redirect hop) before anything is sent. An entry is a host (every port) or
//!    `host:port` (that port only); `check_credentials` decides whether an upstream's
//!    credentials may go to a token realm on another scheme or port;
//! 2. the address check, applied by `PolicyResolver` to every address a name resolves to, before
//!    connecting. The connection goes to a vetted address only: there is no second lookup that a
//!    rebinding DNS answer could change.
//!
//! Loopback, private, link-local (cloud metadata), CGNAT, unique-local, multicast and the IPv6
//! forms that embed IPv4 are refused unless `egress.allow_cidrs` covers them, or the operator
//! listed that very address in `egress.allow`. The policy only decides; `upstream::client`
//! enforces it. The entries are parsed by `config` (into `net`'s types), the address classes
//! come from `net`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::Url;

use crate::config::{EgressConfig, parse_egress_allow};
use crate::net::normalize_host;
// The parsed forms of the `[egress]` entries and the address classes live in `net`; these
// paths are kept for `main` and the property tests.
pub use crate::net::{AddrClass, AllowEntry, Cidr, HostPattern, canonical_ip, classify};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    #[error(
        "egress to host {host:?} is not allowed; add it to egress.allow in the config if wharf should contact it"
    )]
    HostNotAllowed { host: String },
    #[error(
        "egress to port {port} of host {host:?} is not allowed: egress.allow lists that host only with other ports; add \"{host}:{port}\" if wharf should contact it"
    )]
    PortNotAllowed { host: String, port: u16 },
    #[error(
        "the upstream's credentials are not sent to {target}: its scheme or port differs from the upstream's{why}"
    )]
    CredentialsRefused { target: String, why: String },
    #[error(
        "egress to the Unix socket {path} is not allowed; add \"unix:{path}\" to egress.allow if wharf should connect to it"
    )]
    SocketNotAllowed { path: String },
    #[error("egress to {url} refused: only http and https URLs with a host are fetched")]
    BadUrl { url: String },
}

#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<AllowEntry>,
    allow_cidrs: Vec<Cidr>,
    /// Addresses listed literally in `egress.allow`: the operator allowed exactly these.
    literal_ips: Vec<IpAddr>,
    /// `egress.resolve`: names pinned to addresses, bypassing DNS.
    pinned: HashMap<String, Vec<IpAddr>>,
    /// The corporate proxy's host: its addresses are the operator's choice, not classified.
    proxy_host: Option<String>,
    /// Unix sockets listed in `egress.allow` (`unix:/path`): exactly these paths.
    sockets: Vec<std::path::PathBuf>,
    /// What this policy refused, for `/metrics`.
    pub refusals: Arc<Refusals>,
}

/// Connections the policy refused, by reason: a host (or socket, port, URL) not allowed; a
/// name that resolved only to forbidden addresses; a redirect to somewhere not allowed;
/// credentials kept from a token service.
#[derive(Debug, Default)]
pub struct Refusals {
    pub host: AtomicU64,
    pub address: AtomicU64,
    pub redirect: AtomicU64,
    pub credentials: AtomicU64,
}

impl Refusals {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason, count)` of each.
    pub fn read(&self) -> [(&'static str, u64); 4] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("host", l(&self.host)),
            ("address", l(&self.address)),
            ("redirect", l(&self.redirect)),
            ("credentials", l(&self.credentials)),
        ]
    }
}

impl EgressPolicy {
    pub fn new(allow: &[String]) -> Result<EgressPolicy, String> {
        let mut p = EgressPolicy::of_allow(parse_egress_allow(allow)?);
        p.sockets = crate::config::parse_egress_sockets(allow)?;
        Ok(p)
    }

    /// Decides whether the Unix socket at `path` may be connected to: only when `egress.allow`
    /// names that very path (as written; no host entry or wildcard admits a socket).
    pub fn check_socket(&self, path: &std::path::Path) -> Result<(), EgressError> {
        if self.sockets.iter().any(|s| s == path) {
            Ok(())
        } else {
            Refusals::count(&self.refusals.host);
            Err(EgressError::SocketNotAllowed {
                path: path.display().to_string(),
            })
        }
    }

    /// The policy of parsed `egress.allow` entries alone.
    fn of_allow(allow: Vec<AllowEntry>) -> EgressPolicy {
        let literal_ips = allow
            .iter()
            .filter_map(|p| match &p.host {
                HostPattern::Exact(h) => {
                    h.trim_start_matches('[').trim_end_matches(']').parse().ok()
                }
                HostPattern::Suffix(_) => None,
            })
            .map(canonical_ip)
            .collect();
        EgressPolicy {
            allow,
            literal_ips,
            ..EgressPolicy::default()
        }
    }

    /// The policy of a whole `[egress]` section. Every entry is parsed (and refused) by
    /// `EgressConfig::parse`, the same function `Config::validate` runs.
    pub fn from_config(cfg: &EgressConfig) -> Result<EgressPolicy, String> {
        let parsed = cfg.parse()?;
        let mut p = EgressPolicy::of_allow(parsed.allow);
        p.allow_cidrs = parsed.allow_cidrs;
        p.sockets = parsed.allow_sockets;
        for (host, ips) in parsed.resolve {
            p.pinned.insert(normalize_host(&host), ips);
        }
        // As `resolve` is asked for it: an IPv6 address without its brackets.
        p.proxy_host = parsed
            .proxy
            .as_ref()
            .and_then(crate::net::url_host_port)
            .map(|(host, _)| host);
        Ok(p)
    }

    /// The gateway's policy: `egress`'s address classes (`allow_cidrs`) and pinned names
    /// (`resolve`) with `allow` (`gateway.allow`) as the host list. No sockets; the
    /// `egress.proxy` host trusted only when the gateway goes through it (`via_proxy`).
    pub fn for_gateway(
        egress: &EgressConfig,
        allow: &[String],
        via_proxy: bool,
    ) -> Result<EgressPolicy, String> {
        let cfg = EgressConfig {
            allow: allow
                .iter()
                .filter(|e| !e.starts_with("unix:"))
                .cloned()
                .collect(),
            proxy: egress.proxy.clone().filter(|_| via_proxy),
            ..egress.clone()
        };
        // Parsed here first, so a bad entry is named by its own key.
        crate::config::parse_allow("gateway.allow", &cfg.allow)?;
        EgressPolicy::from_config(&cfg)
    }

    /// The `egress.allow` entry that admits `url`'s host and port, as written in the config.
    pub fn matching_rule(&self, url: &Url) -> Option<String> {
        self.check(url).ok()?;
        let (host, port) = host_and_port(url)?;
        self.allow
            .iter()
            .find(|e| e.admits(&host, port))
            .map(|e| e.to_string())
    }

    /// Whether `host` is pinned by `egress.resolve`.
    pub fn is_pinned(&self, host: &str) -> bool {
        self.pinned.contains_key(&normalize_host(host))
    }

    /// Whether connecting to `ip` is allowed, or the class that forbids it.
    pub fn check_addr(&self, ip: IpAddr) -> Result<AddrClass, AddrClass> {
        let ip = canonical_ip(ip);
        let class = classify(ip);
        if class == AddrClass::Public
            || self.literal_ips.contains(&ip)
            || self.allow_cidrs.iter().any(|c| c.contains(ip))
        {
            Ok(class)
        } else {
            Err(class)
        }
    }

    /// What `name` resolves to: pinned addresses, else DNS. Each address with its verdict.
    pub async fn resolve(
        &self,
        name: &str,
    ) -> std::io::Result<Vec<(IpAddr, Result<AddrClass, AddrClass>)>> {
        let name = normalize_host(name);
        let ips: Vec<IpAddr> = match self.pinned.get(&name) {
            Some(ips) => ips.clone(),
            None => tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .map(|a| canonical_ip(a.ip()))
                .collect(),
        };
        let trusted = self.proxy_host.as_deref() == Some(name.as_str());
        Ok(ips
            .into_iter()
            .map(|ip| {
                let verdict = if trusted {
                    Ok(classify(ip))
                } else {
                    self.check_addr(ip)
                };
                (ip, verdict)
            })
            .collect())
    }

    /// Decides whether `url` may be fetched (and counts a refusal).
    pub fn check(&self, url: &Url) -> Result<(), EgressError> {
        let verdict = self.decide(url);
        if verdict.is_err() {
            Refusals::count(&self.refusals.host);
        }
        verdict
    }

    fn decide(&self, url: &Url) -> Result<(), EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::BadUrl { url: redact(url) });
        }
        let Some((host, port)) = host_and_port(url) else {
            return Err(EgressError::BadUrl { url: redact(url) });
        };
        if self.allow.iter().any(|e| e.admits(&host, port)) {
            return Ok(());
        }
        match port {
            Some(port) if self.allow.iter().any(|e| e.host.matches(&host)) => {
                Err(EgressError::PortNotAllowed {
                    host: bracketed(&host),
                    port,
                })
            }
            _ => Err(EgressError::HostNotAllowed { host }),
        }
    }

    /// Whether the credentials configured for the upstream at `origin` may go to `target`, a
    /// token realm its challenge named (already admitted by `check`). They may when `target`
    /// has the upstream's scheme and port, or when an `egress.allow` entry names `target`'s
    /// port explicitly (`host:port`), so the operator chose that service; never from an https
    /// upstream to a plain-http realm. A bare host entry opens every port for contacting a host,
    /// not for handing it the upstream's password.
    pub fn check_credentials(&self, origin: &Url, target: &Url) -> Result<(), EgressError> {
        let verdict = self.credentials_may_go(origin, target);
        if verdict.is_err() {
            Refusals::count(&self.refusals.credentials);
        }
        verdict
    }

    fn credentials_may_go(&self, origin: &Url, target: &Url) -> Result<(), EgressError> {
        let port = target.port_or_known_default();
        if target.scheme() == origin.scheme() && port == origin.port_or_known_default() {
            return Ok(());
        }
        let (host, _) = host_and_port(target).ok_or_else(|| EgressError::BadUrl {
            url: redact(target),
        })?;
        let written = match port {
            Some(p) => format!("{}:{p}", bracketed(&host)),
            None => bracketed(&host),
        };
        let downgrade = origin.scheme() == "https" && target.scheme() != "https";
        if downgrade {
            return Err(EgressError::CredentialsRefused {
                target: format!("{}://{written}", target.scheme()),
                why: " (https -> http is never allowed)".into(),
            });
        }
        if self
            .allow
            .iter()
            .any(|e| e.port.is_some() && e.admits(&host, port))
        {
            return Ok(());
        }
        Err(EgressError::CredentialsRefused {
            target: format!("{}://{written}", target.scheme()),
            why: format!(
                "; add \"{written}\" to egress.allow if it is the upstream's token service"
            ),
        })
    }
}

/// `url`'s host, lower-case without trailing dot or IPv6 brackets, and its port (explicit or
/// the scheme's default).
fn host_and_port(url: &Url) -> Option<(String, Option<u16>)> {
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Some((host, url.port_or_known_default()))
}

/// A host as written in `egress.allow`: IPv6 addresses in brackets.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// reqwest's resolver hook: resolves (or takes pinned addresses), keeps only the addresses the
/// policy allows, and fails naming the refused ones when none is left. reqwest then connects to
/// exactly these addresses.
#[derive(Debug, Clone)]
pub struct PolicyResolver(pub Arc<EgressPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let results = policy.resolve(&host).await.map_err(|e| {
                Box::new(std::io::Error::other(format!("cannot resolve {host}: {e}")))
                    as Box<dyn std::error::Error + Send + Sync>
            })?;
            let allowed: Vec<SocketAddr> = results
                .iter()
                .filter(|(_, v)| v.is_ok())
                .map(|(ip, _)| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                let refused: Vec<String> = results
                    .iter()
                    .map(|(ip, v)| format!("{ip} ({})", v.unwrap_or_else(|c| c)))
                    .collect();
                let msg = if refused.is_empty() {
                    format!("{host} has no addresses")
                } else {
                    format!(
                        "egress to {host} refused: it resolves only to forbidden addresses {}; add a range to egress.allow_cidrs if wharf should connect there",
                        refused.join(", ")
                    )
                };
                if !refused.is_empty() {
                    Refusals::count(&policy.refusals.address);
                }
                tracing::warn!(%host, "{msg}");
                return Err(Box::new(std::io::Error::other(msg))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Removes `user:password@` from `url`; returns whether there was any. Credentials go only
/// where the config puts them, never where a URL from an upstream (a redirect `Location`, a
/// token realm) says; left in, reqwest would send them as Basic auth.
pub fn strip_userinfo(url: &mut Url) -> bool {
    if url.username().is_empty() && url.password().is_none() {
        return false;
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    true
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
    fn port_entries_admit_their_port_only() {
        let p = policy(&["reg.example:5000", "[::1]:8080", "*.cdn.example:443"]);
        assert!(allowed(&p, "http://reg.example:5000/v2/"));
        assert!(allowed(&p, "https://reg.example:5000/v2/"));
        assert!(!allowed(&p, "http://reg.example/v2/"));
        assert!(!allowed(&p, "http://reg.example:5001/v2/"));
        assert!(allowed(&p, "http://[::1]:8080/"));
        assert!(!allowed(&p, "http://[::1]:8081/"));
        assert!(
            allowed(&p, "https://a.cdn.example/blob"),
            "443 is https's default"
        );
        assert!(!allowed(&p, "http://a.cdn.example/blob"), "80 is not 443");
        let e = p
            .check(&Url::parse("http://reg.example:5001/").unwrap())
            .unwrap_err();
        assert!(
            matches!(e, EgressError::PortNotAllowed { port: 5001, .. })
                && e.to_string().contains("\"reg.example:5001\""),
            "{e}"
        );
        let e = p
            .check(&Url::parse("http://[::1]:1/").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("\"[::1]:1\""), "{e}");
        assert_eq!(
            p.matching_rule(&Url::parse("http://reg.example:5000/").unwrap()),
            Some("reg.example:5000".into())
        );
        // A bare entry still opens every port of its host.
        let bare = policy(&["reg.example"]);
        assert!(allowed(&bare, "http://reg.example:5001/v2/"));
        let both = policy(&["reg.example", "reg.example:5000"]);
        assert!(allowed(&both, "http://reg.example:6000/v2/"));
    }

    #[test]
    fn credentials_stay_on_the_upstreams_scheme_and_port() {
        let u = |s: &str| Url::parse(s).unwrap();
        let creds = |p: &EgressPolicy, origin: &str, realm: &str| {
            p.check_credentials(&u(origin), &u(realm))
        };
        let hub = "https://registry-1.docker.io";
        let p = policy(&["registry-1.docker.io", "auth.docker.io"]);
        assert!(creds(&p, hub, "https://auth.docker.io/token").is_ok());
        assert!(creds(&p, hub, "https://auth.docker.io:443/token").is_ok());
        let e = creds(&p, hub, "https://auth.docker.io:8443/token").unwrap_err();
        assert!(
            e.to_string().contains("\"auth.docker.io:8443\"")
                && e.to_string().contains("egress.allow"),
            "{e}"
        );
        assert!(creds(&p, hub, "http://auth.docker.io/token").is_err());
        let p = policy(&["reg.internal", "reg.internal:5001", "auth.internal:80"]);
        assert!(creds(&p, "http://reg.internal:5000", "http://reg.internal:5001/t").is_ok());
        assert!(creds(&p, "http://reg.internal:5000", "http://reg.internal:5002/t").is_err());
        assert!(creds(&p, "https://reg.internal", "https://reg.internal:5001/t").is_ok());
        let e = creds(&p, "https://reg.internal", "http://auth.internal/t").unwrap_err();
        assert!(e.to_string().contains("https -> http"), "{e}");
    }

    #[test]
    fn a_socket_is_allowed_only_by_its_own_entry() {
        let p = policy(&["unix:/run/registry/registry.sock", "*.example", "localhost"]);
        let path = std::path::Path::new;
        assert!(p.check_socket(path("/run/registry/registry.sock")).is_ok());
        let refused = p
            .check_socket(path("/run/registry/other.sock"))
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("\"unix:/run/registry/other.sock\" to egress.allow"),
            "{refused}"
        );
        assert!(
            policy(&["*.sock", "run"])
                .check_socket(path("/run/x.sock"))
                .is_err()
        );
        // A socket entry opens no host.
        assert!(!allowed(&p, "http://unix/"));
        assert!(EgressPolicy::new(&["unix:relative.sock".into()]).is_err());
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
    fn ipv4_translated_addresses_are_classified_by_their_ipv4() {
        let c = |s: &str| classify(s.parse().unwrap());
        assert_eq!(c("::ffff:0:127.0.0.1"), AddrClass::Loopback);
        assert_eq!(c("::ffff:0:10.1.2.3"), AddrClass::Private);
        assert_eq!(c("::ffff:0:169.254.169.254"), AddrClass::LinkLocal);
        assert_eq!(c("::ffff:0:100.64.0.1"), AddrClass::Cgnat);
        assert_eq!(c("::ffff:0:0.0.0.0"), AddrClass::Unspecified);
        assert_eq!(c("::ffff:0:8.8.8.8"), AddrClass::Public);
        let p = policy(&[]);
        assert_eq!(
            p.check_addr("::ffff:0:169.254.169.254".parse().unwrap()),
            Err(AddrClass::LinkLocal)
        );
        assert!(p.check_addr("::ffff:0:8.8.8.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn cidrs_and_literal_entries_open_exactly_what_they_say() {
        let mut p = policy(&["127.0.0.1", "registry.example"]);
        assert!(p.check_addr("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_addr("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(
            p.check_addr("127.0.0.2".parse().unwrap()),
            Err(AddrClass::Loopback)
        );
        p.allow_cidrs.push(Cidr::parse("10.0.0.0/8").unwrap());
        assert!(p.check_addr("10.9.9.9".parse().unwrap()).is_ok());
        assert!(p.check_addr("11.0.0.1".parse().unwrap()).is_ok(), "public");
        assert!(p.check_addr("192.168.0.1".parse().unwrap()).is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(
            Cidr::parse("::ffff:10.0.0.0/104")
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
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
