//! Addresses and host patterns, parsed: what an IP address is (`classify`, `canonical_ip`), the
//! address ranges of `egress.allow_cidrs` and `access.allow_clients` (`Cidr`), and the host
//! patterns of `egress.allow` (`AllowEntry`, `HostPattern`); who sent a request (`Client`,
//! `UnixPeer`).
//!
//! A leaf: it imports nothing from the crate, so `config` can parse with it and `access` and
//! `upstream::egress` can decide with it without importing each other. It owns no policy: which
//! classes are refused, and what a pattern admits for a request, is `upstream::egress`'s call.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;

/// One entry of `egress.allow`: a host pattern and, in the `host:port` form, the one port it
/// opens. A bare host opens every port of that host (what entries always meant); a port entry
/// opens only its port, and is what lets upstream credentials go to a token realm whose scheme
/// or port differs from the upstream's (`EgressPolicy::check_credentials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub host: HostPattern,
    pub port: Option<u16>,
}

impl AllowEntry {
    /// `host`, `*.suffix`, `[v6]`, each optionally followed by `:port`.
    pub fn parse(text: &str) -> Result<AllowEntry, String> {
        let raw = text.trim();
        if let Some(e) = forbidden_chars(raw) {
            return Err(e.into());
        }
        let (host, port) = if let Some(close) = raw.strip_prefix('[').and_then(|r| r.find(']')) {
            let (host, rest) = raw.split_at(close + 2);
            match rest.strip_prefix(':') {
                Some(p) => (host, Some(parse_port(p)?)),
                None if rest.is_empty() => (host, None),
                None => return Err("write \"[address]\" or \"[address]:port\"".into()),
            }
        } else {
            match raw.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(
                        "write an IPv6 address in brackets: \"[2001:db8::1]\" or \"[2001:db8::1]:5000\""
                            .into(),
                    );
                }
                Some((host, p)) => (host, Some(parse_port(p)?)),
                None => (raw, None),
            }
        };
        Ok(AllowEntry {
            host: HostPattern::parse(host)?,
            port,
        })
    }

    /// Whether this entry admits `host` (normalised, brackets removed) on `port`.
    pub fn admits(&self, host: &str, port: Option<u16>) -> bool {
        self.host.matches(host) && (self.port.is_none() || self.port == port)
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(h) => f.write_str(h)?,
            HostPattern::Suffix(s) => write!(f, "*.{s}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("port {text:?} must be a number from 1 to 65535"))
}

/// Why `raw` cannot be a host pattern whatever its port: escapes, control characters, or the
/// parts of a URL other than host and port.
fn forbidden_chars(raw: &str) -> Option<&'static str> {
    if raw.contains(['\\', '%']) || raw.chars().any(|c| c.is_control()) {
        return Some("write a bare host name (no escapes or control characters)");
    }
    if raw.contains(['/', '@', ' ', '?', '#']) {
        return Some("write a host name, optionally with :port (no scheme, path or userinfo)");
    }
    None
}

/// The host part of an `egress.allow` entry: an exact host or `*.suffix` (subdomains only, not
/// the apex). Never a port: `AllowEntry` splits that off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let raw = text.trim();
        if let Some(e) = forbidden_chars(raw) {
            return Err(e.into());
        }
        let bracketed = raw.starts_with('[') && raw.ends_with(']');
        if raw.contains(':') && !bracketed {
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

    /// `host` is normalised, without IPv6 brackets.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.trim_start_matches('[').trim_end_matches(']') == host,
            HostPattern::Suffix(s) => {
                host.len() > s.len() + 1
                    && host.ends_with(s.as_str())
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
            }
        }
    }
}

/// A URL's host as the egress checks compare it (`normalize_host`, an IPv6 address without its
/// brackets) and its port (the scheme's default when none is given).
pub fn url_host_port(url: &Url) -> Option<(String, u16)> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((normalize_host(host), url.port_or_known_default()?))
}

/// Lower-case, trailing dot stripped, IDNA (Punycode) applied the way URLs are parsed.
pub fn normalize_host(text: &str) -> String {
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
    } else if s[0] & 0xffc0 == 0xfec0 {
        // Site-local (deprecated by RFC 3879, still routed inside some sites): private.
        AddrClass::UniqueLocal
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
    /// Whether the range is a whole address family (`0.0.0.0/0`, `::/0`).
    pub fn is_everything(&self) -> bool {
        self.bits == 0
    }

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

/// A `Host` header naming this machine: `localhost`, `127.0.0.1:5000`, `[::1]:5000`.
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_slash_zero_ranges_are_everything() {
        for (range, all) in [
            ("0.0.0.0/0", true),
            ("::/0", true),
            ("10.0.0.0/8", false),
            ("127.0.0.1", false),
        ] {
            assert_eq!(
                super::Cidr::parse(range).unwrap().is_everything(),
                all,
                "{range}"
            );
        }
    }

    #[test]
    fn only_loopback_hosts_are_admin_hosts() {
        for ok in [
            "localhost",
            "127.0.0.1:5000",
            "[::1]:5000",
            "LOCALHOST:1",
            "127.9.9.9",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "wharf:5000",
            "evil.example",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn site_local_ipv6_is_not_public() {
        let ip: std::net::IpAddr = "fec0::1".parse().unwrap();
        assert_ne!(classify(ip), AddrClass::Public);
    }

    use super::*;

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
    fn allow_entries_take_an_optional_port() {
        let e = |s: &str| AllowEntry::parse(s).map(|e| (e.to_string(), e.port));
        assert_eq!(
            e("Reg.Example:5000"),
            Ok(("reg.example:5000".into(), Some(5000)))
        );
        assert_eq!(e("reg.example"), Ok(("reg.example".into(), None)));
        assert_eq!(
            e("*.cdn.example:443"),
            Ok(("*.cdn.example:443".into(), Some(443)))
        );
        assert_eq!(e("[::1]:8080"), Ok(("[::1]:8080".into(), Some(8080))));
        assert_eq!(e("[::1]"), Ok(("[::1]".into(), None)));
        for bad in [
            "x.com:",
            "x.com:0",
            "x.com:65536",
            "x.com:+80",
            "x.com:80:80",
            "::1",
            "::1:80",
            "[::1]x",
            "[::1]:",
            ":80",
            "https://x.com",
            "x.com:443/v2",
            "user@x.com:443",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad}");
        }
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

/// Marks a request that came over a Unix socket (`listen = "unix:..."`): it has no address,
/// and the socket file's permissions decided who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer;

/// Who sent a request, as logs and access control see it: an address, or a Unix socket's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Ip(IpAddr),
    Unix,
}

impl Client {
    /// The client of a request, from what the server put in its extensions.
    pub fn of(ext: &http::Extensions) -> Option<Client> {
        if ext.get::<UnixPeer>().is_some() {
            return Some(Client::Unix);
        }
        ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| Client::Ip(c.0.ip()))
    }

    pub fn ip(self) -> Option<IpAddr> {
        match self {
            Client::Ip(ip) => Some(ip),
            Client::Unix => None,
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Ip(ip) => write!(f, "{ip}"),
            Client::Unix => f.write_str("unix"),
        }
    }
}
