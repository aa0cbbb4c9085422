//! The egress policy: which hosts wharf may contact, and which addresses. Two layers:
//! 1. the host allowlist, checked on the URL of every outbound request (registry, token realm,
//!    every redirect hop) before anything is sent;
//! 2. the address check, applied by `PolicyResolver` to every address a name resolves to, before
//!    connecting. The connection goes to a vetted address only: there is no second lookup that a
//!    rebinding DNS answer could change.
//!
//! Loopback, private, link-local (cloud metadata), CGNAT, unique-local, multicast and the IPv6
//! forms that embed IPv4 are refused unless `egress.allow_cidrs` covers them, or the operator
//! listed that very address in `egress.allow`. The policy only decides; `upstream::client`
//! enforces it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

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
        if raw.contains(['\\', '%']) || raw.chars().any(|c| c.is_control()) {
            return Err("write a bare host name (no escapes or control characters)".into());
        }
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

#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<HostPattern>,
    allow_cidrs: Vec<Cidr>,
    /// Addresses listed literally in `egress.allow`: the operator allowed exactly these.
    literal_ips: Vec<IpAddr>,
    /// `egress.resolve`: names pinned to addresses, bypassing DNS.
    pinned: HashMap<String, Vec<IpAddr>>,
    /// The corporate proxy's host: its addresses are the operator's choice, not classified.
    proxy_host: Option<String>,
}

impl EgressPolicy {
    pub fn new(allow: &[String]) -> Result<EgressPolicy, String> {
        let allow: Vec<HostPattern> = allow
            .iter()
            .map(|p| HostPattern::parse(p).map_err(|e| format!("egress.allow {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let literal_ips = allow
            .iter()
            .filter_map(|p| match p {
                HostPattern::Exact(h) => {
                    h.trim_start_matches('[').trim_end_matches(']').parse().ok()
                }
                HostPattern::Suffix(_) => None,
            })
            .map(canonical_ip)
            .collect();
        Ok(EgressPolicy {
            allow,
            literal_ips,
            ..EgressPolicy::default()
        })
    }

    /// The policy of a whole `[egress]` section.
    pub fn from_config(cfg: &crate::config::EgressConfig) -> Result<EgressPolicy, String> {
        let mut p = EgressPolicy::new(&cfg.allow)?;
        p.allow_cidrs = cfg
            .allow_cidrs
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("egress.allow_cidrs {c:?}: {e}")))
            .collect::<Result<_, _>>()?;
        for (host, addrs) in &cfg.resolve {
            let ips = addrs
                .iter()
                .map(|a| {
                    a.parse::<IpAddr>()
                        .map(canonical_ip)
                        .map_err(|_| format!("egress.resolve {host:?}: {a:?} is not an IP address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            p.pinned.insert(normalize_host(host), ips);
        }
        if let Some(proxy) = &cfg.proxy {
            let url = Url::parse(proxy).map_err(|e| format!("egress.proxy {proxy:?}: {e}"))?;
            p.proxy_host = url.host_str().map(normalize_host);
        }
        Ok(p)
    }

    /// The `egress.allow` entry that admits `url`'s host, as written in the config.
    pub fn matching_rule(&self, url: &Url) -> Option<String> {
        self.check(url).ok()?;
        let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow.iter().find_map(|p| match p {
            HostPattern::Exact(h) if h.trim_start_matches('[').trim_end_matches(']') == host => {
                Some(h.clone())
            }
            HostPattern::Suffix(s) if p.matches(host) => Some(format!("*.{s}")),
            _ => None,
        })
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

/// What kind of address this is, for the egress check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Cgnat,
    UniqueLocal,
    Multicast,
    Broadcast,
    Reserved,
    /// An IPv6 address that embeds an IPv4 one (NAT64, 6to4, Teredo).
    EmbedsIpv4,
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            AddrClass::Public => "public",
            AddrClass::Unspecified => "unspecified / this network",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private (RFC 1918)",
            AddrClass::LinkLocal => "link-local (incl. cloud metadata)",
            AddrClass::Cgnat => "carrier-grade NAT (100.64/10)",
            AddrClass::UniqueLocal => "unique-local (fc00::/7)",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
            AddrClass::EmbedsIpv4 => "IPv6 embedding IPv4 (NAT64 / 6to4 / Teredo)",
        })
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An explicit range table (`IpAddr::is_global` is unstable).
pub fn classify(ip: IpAddr) -> AddrClass {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let o = ip.octets();
    match o {
        [0, ..] => AddrClass::Unspecified,
        [127, ..] => AddrClass::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => AddrClass::Private,
        [169, 254, ..] => AddrClass::LinkLocal,
        [100, 64..=127, ..] => AddrClass::Cgnat,
        [224..=239, ..] => AddrClass::Multicast,
        [255, 255, 255, 255] => AddrClass::Broadcast,
        [240..=255, ..] | [192, 0, 0, _] | [198, 18..=19, ..] => AddrClass::Reserved,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddrClass::UniqueLocal
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if (s[0] == 0x64 && s[1] == 0xff9b) || s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0) {
        AddrClass::EmbedsIpv4
    } else if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated (RFC 2765, ::ffff:0:a.b.c.d): it reaches the IPv4 address it embeds,
        // like the IPv4-mapped form (which `canonical_ip` has already unwrapped).
        let ([a, b], [c, d]) = (s[6].to_be_bytes(), s[7].to_be_bytes());
        classify_v4(Ipv4Addr::new(a, b, c, d))
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) ::a.b.c.d
        AddrClass::EmbedsIpv4
    } else {
        AddrClass::Public
    }
}

/// An address range of `egress.allow_cidrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("prefix length must be 0..={max}"))?,
            None => max,
        };
        // `::ffff:a.b.c.d/n` means the IPv4 range: addresses are compared in canonical form.
        if let IpAddr::V6(v6) = net
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Ok(Cidr {
                net: IpAddr::V4(v4),
                bits: bits.saturating_sub(96),
            });
        }
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
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
    fn address_classes_cover_the_forbidden_ranges() {
        let c = |s: &str| classify(s.parse().unwrap());
        assert_eq!(c("8.8.8.8"), AddrClass::Public);
        assert_eq!(c("127.0.0.2"), AddrClass::Loopback);
        assert_eq!(c("10.1.2.3"), AddrClass::Private);
        assert_eq!(c("172.31.0.1"), AddrClass::Private);
        assert_eq!(c("172.32.0.1"), AddrClass::Public);
        assert_eq!(c("192.168.1.1"), AddrClass::Private);
        assert_eq!(c("169.254.169.254"), AddrClass::LinkLocal);
        assert_eq!(c("100.64.0.1"), AddrClass::Cgnat);
        assert_eq!(c("0.1.2.3"), AddrClass::Unspecified);
        assert_eq!(c("224.0.0.1"), AddrClass::Multicast);
        assert_eq!(c("::1"), AddrClass::Loopback);
        assert_eq!(c("fd00:ec2::254"), AddrClass::UniqueLocal);
        assert_eq!(c("fe80::1"), AddrClass::LinkLocal);
        assert_eq!(c("::ffff:10.0.0.1"), AddrClass::Private);
        assert_eq!(c("::ffff:127.0.0.1"), AddrClass::Loopback);
        assert_eq!(c("64:ff9b::a9fe:a9fe"), AddrClass::EmbedsIpv4);
        assert_eq!(c("2002:a9fe:a9fe::1"), AddrClass::EmbedsIpv4);
        assert_eq!(c("2001:0:4136:e378::1"), AddrClass::EmbedsIpv4);
        assert_eq!(c("2606:4700::1111"), AddrClass::Public);
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

#[cfg(test)]
mod pattern_escapes {
    use super::*;

    #[test]
    fn patterns_with_escapes_or_control_characters_are_refused() {
        for bad in [
            "a.example\\evil.com",
            "%2a.example.com",
            "regis\ntry.example",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
